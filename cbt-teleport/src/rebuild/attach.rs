//! The clone: a qcow2 overlay whose backing file is the candidate (no data
//! copied, the candidate never written: qemu opens backing files
//! read-only), attached without booting it and without the `nbd` module:
//! `qemu-storage-daemon` exports the overlay as a raw file over FUSE, and
//! the root filesystem inside it is loop-mounted at its offset. Root is
//! required (FUSE, loop devices, mount, chroot).
//!
//! ```text
//! candidate.raw <─backing── .OUT.cbt-partial (qcow2) ── qemu-storage-daemon ──> export (FUSE file)
//!                                                  mount -o loop,offset=… export root/
//! ```
//!
//! [`Attached`] undoes everything on drop (unmount, stop the daemon), so
//! an error at any step leaves no mount behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cbt_core::{Error, ImageFormat};

use super::{RebuildError, Result};

/// Runs a host tool, and turns a failure into an error naming it and its output.
pub(crate) fn run(cmd: &mut Command, what: &Path) -> Result<Vec<u8>> {
    let name = format!("{:?}", cmd.get_program());
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| RebuildError::Failed(format!("{}: cannot run {name}: {e}", what.display())))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        return Err(RebuildError::Failed(format!(
            "{}: {name} failed ({}): {}",
            what.display(),
            out.status,
            text.trim()
        )));
    }
    Ok(out.stdout)
}

/// Creates the qcow2 overlay `at` over `candidate`.
pub fn create_overlay(candidate: &Path, format: ImageFormat, at: &Path) -> Result<()> {
    let backing = candidate
        .canonicalize()
        .map_err(|e| Error::io(candidate, "resolve", e))?;
    let fmt = match format {
        ImageFormat::Qcow2 => "qcow2",
        _ => "raw",
    };
    run(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", fmt, "-b"])
            .arg(&backing)
            .arg(at),
        at,
    )?;
    Ok(())
}

/// A clone attached and its root filesystem mounted.
#[derive(Debug)]
pub struct Attached {
    work: PathBuf,
    export: PathBuf,
    root: PathBuf,
    pid: Option<u32>,
    mounted: Vec<PathBuf>,
}

impl Attached {
    /// Attaches `overlay` and mounts the filesystem at `offset`, `len`
    /// bytes, at `<work>/root`. `work` is a new directory for the export
    /// file and the mount point.
    pub fn attach(overlay: &Path, offset: u64, len: u64, work: &Path) -> Result<Attached> {
        std::fs::create_dir(work).map_err(|e| Error::io(work, "create", e))?;
        let mut me = Attached {
            work: work.to_path_buf(),
            export: work.join("export"),
            root: work.join("root"),
            pid: None,
            mounted: Vec::new(),
        };
        std::fs::File::create(&me.export).map_err(|e| Error::io(&me.export, "create", e))?;
        std::fs::create_dir(&me.root).map_err(|e| Error::io(&me.root, "create", e))?;
        let pidfile = work.join("qsd.pid");
        let blockdev = serde_json::json!({
            "driver": "qcow2",
            "node-name": "clone",
            "file": {"driver": "file", "filename": overlay, "aio": "threads"},
        });
        let mut export =
            std::ffi::OsString::from("type=fuse,id=clone,node-name=clone,writable=on,mountpoint=");
        export.push(&me.export);
        run(
            Command::new("qemu-storage-daemon")
                .arg("--blockdev")
                .arg(blockdev.to_string())
                .arg("--export")
                .arg(export)
                .arg("--pidfile")
                .arg(&pidfile)
                .arg("--daemonize"),
            overlay,
        )?;
        let pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .ok_or_else(|| {
                RebuildError::Failed(format!("{}: qemu-storage-daemon left no pid", overlay.display()))
            })?;
        me.pid = Some(pid);
        let options = format!("loop,offset={offset},sizelimit={len}");
        run(
            Command::new("mount")
                .args(["-t", "ext4", "-o", &options])
                .arg(&me.export)
                .arg(&me.root),
            overlay,
        )?;
        me.mounted.push(me.root.clone());
        Ok(me)
    }

    /// The mounted root filesystem.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Mounts `/proc` and binds `/dev` inside the root, for maintainer
    /// scripts run in a chroot; undone by [`Attached::detach`] or drop.
    pub fn mount_system_dirs(&mut self) -> Result<()> {
        let proc_dir = self.root.join("proc");
        let dev_dir = self.root.join("dev");
        for d in [&proc_dir, &dev_dir] {
            let meta = std::fs::symlink_metadata(d).map_err(|e| Error::io(d, "stat", e))?;
            if !meta.is_dir() {
                return Err(Error::malformed(d, "is not a directory in the clone").into());
            }
        }
        run(
            Command::new("mount").args(["-t", "proc", "proc"]).arg(&proc_dir),
            &proc_dir,
        )?;
        self.mounted.push(proc_dir);
        run(
            Command::new("mount").arg("--bind").arg("/dev").arg(&dev_dir),
            &dev_dir,
        )?;
        self.mounted.push(dev_dir);
        Ok(())
    }

    /// Unmounts the system directories mounted by [`Attached::mount_system_dirs`].
    pub fn unmount_system_dirs(&mut self) -> Result<()> {
        while self.mounted.len() > 1 {
            if let Some(m) = self.mounted.pop() {
                run(Command::new("umount").arg(&m), &m)?;
            }
        }
        Ok(())
    }

    /// Unmounts everything (writing the filesystem back), stops the export
    /// and removes the work directory.
    pub fn detach(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        let mut first: Option<RebuildError> = None;
        while let Some(m) = self.mounted.pop() {
            if let Err(e) = run(Command::new("umount").arg(&m), &m) {
                // Never leave a mount behind: detach it lazily.
                let _ = run(Command::new("umount").arg("-l").arg(&m), &m);
                first.get_or_insert(e);
            }
        }
        if let Some(pid) = self.pid.take() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if Path::new(&format!("/proc/{pid}")).exists() {
                first.get_or_insert(RebuildError::Failed(format!(
                    "qemu-storage-daemon (pid {pid}) did not stop; the clone may be incomplete"
                )));
            }
        }
        // One entry at a time, never recursively: a mount that would not
        // go away must not have the clone's files deleted through it.
        let _ = std::fs::remove_file(&self.export);
        let _ = std::fs::remove_file(self.work.join("qsd.pid"));
        let _ = std::fs::remove_dir(&self.root);
        let _ = std::fs::remove_dir(&self.work);
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}
