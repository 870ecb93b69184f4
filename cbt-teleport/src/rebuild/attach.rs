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
//! [`Attached`] undoes everything on drop (unmount, stop the daemon, and
//! detach the FUSE export should the daemon leave it mounted), so an error
//! at any step leaves no mount behind. Unmounting is umount2(2), not
//! `fusermount` (hosts may lack it, and root needs no helper).
//!
//! The work directory `.OUT.cbt-rebuild` is locked (flock) while a rebuild
//! uses it. One found unlocked was left by a rebuild that died (killed, or
//! an older cbt): its mounts, dead ones included (a FUSE export whose
//! daemon is gone fails every stat with ENOTCONN), are detached and it is
//! reused; one found locked belongs to a running rebuild and is refused.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::UnmountFlags;

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

/// The work directory of a rebuild, locked for as long as it is held.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    // The flock lives as long as this descriptor (close-on-exec: the
    // daemon started from here does not inherit it).
    _lock: OwnedFd,
}

impl WorkDir {
    /// Creates and locks `path`; or, if it exists unlocked (left by a
    /// rebuild that is no longer running), detaches what it left mounted,
    /// stops its daemon, empties it and takes it over. Refused if another
    /// rebuild holds it.
    pub fn claim(path: &Path) -> Result<WorkDir> {
        let created = match std::fs::create_dir(path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(Error::io(path, "create", e).into()),
        };
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(path, "open", e.into()))?;
        match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => {
                return Err(RebuildError::Failed(format!(
                    "{}: another rebuild of this name is running (wait for it, or stop it)",
                    path.display()
                )))
            }
            Err(e) => return Err(Error::io(path, "lock", e.into()).into()),
        }
        let me = WorkDir {
            path: path.to_path_buf(),
            _lock: fd,
        };
        if !created {
            tracing::warn!(
                "{}: left by a rebuild that is no longer running: detaching its mounts and reusing it",
                path.display()
            );
            me.clear_stale()?;
        }
        Ok(me)
    }

    /// Undoes what a dead rebuild left here: its daemon, its mounts (the
    /// system directories, the root, the FUSE export, dead or alive), its
    /// files. Anything that stays mounted is an error: nothing is deleted
    /// through a mount.
    fn clear_stale(&self) -> Result<()> {
        let root = self.path.join("root");
        let export = self.path.join("export");
        for m in [root.join("proc"), root.join("dev"), root.clone()] {
            detach(&m)?;
        }
        let pidfile = self.path.join("qsd.pid");
        if let Some(pid) = read_pid(&pidfile).filter(|&p| is_our_daemon(p, &pidfile)) {
            stop_daemon(pid)?;
        }
        if let Err(e) = std::fs::symlink_metadata(&export) {
            if e.raw_os_error() == Some(Errno::NOTCONN.raw_os_error()) {
                tracing::warn!(
                    "{}: a dead FUSE export (its daemon is gone): detaching it",
                    export.display()
                );
            }
        }
        detach(&export)?;
        remove_entry(&export, false)?;
        remove_entry(&pidfile, false)?;
        remove_entry(&root, true)?;
        Ok(())
    }

    /// Removes the (emptied) directory; the lock goes with the descriptor.
    fn remove(&self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// A clone attached and its root filesystem mounted.
#[derive(Debug)]
pub struct Attached {
    work: WorkDir,
    export: PathBuf,
    root: PathBuf,
    pid: Option<u32>,
    mounted: Vec<PathBuf>,
    /// The export file was given to qemu-storage-daemon as a mount point.
    exported: bool,
}

impl Attached {
    /// Attaches `overlay` and mounts the filesystem at `offset`, `len`
    /// bytes, at `<work>/root`. `work` is an empty claimed directory for
    /// the export file and the mount point.
    pub fn attach(overlay: &Path, offset: u64, len: u64, work: WorkDir) -> Result<Attached> {
        let mut me = Attached {
            export: work.path.join("export"),
            root: work.path.join("root"),
            work,
            pid: None,
            mounted: Vec::new(),
            exported: false,
        };
        std::fs::File::create(&me.export).map_err(|e| Error::io(&me.export, "create", e))?;
        std::fs::create_dir(&me.root).map_err(|e| Error::io(&me.root, "create", e))?;
        let pidfile = me.work.path.join("qsd.pid");
        let blockdev = serde_json::json!({
            "driver": "qcow2",
            "node-name": "clone",
            "file": {"driver": "file", "filename": overlay, "aio": "threads"},
        });
        let mut export =
            std::ffi::OsString::from("type=fuse,id=clone,node-name=clone,writable=on,mountpoint=");
        export.push(&me.export);
        me.exported = true;
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
        let pid = read_pid(&pidfile).ok_or_else(|| {
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
                unmount(&m)?;
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
            if let Err(e) = unmount(&m) {
                // Never leave a mount behind: detach it lazily.
                let _ = detach(&m);
                first.get_or_insert(e);
            }
        }
        if let Some(pid) = self.pid.take() {
            if let Err(e) = stop_daemon(pid) {
                first.get_or_insert(e);
            }
        }
        // qemu-storage-daemon unmounts its export when it stops cleanly;
        // when it does not (killed, or failing after the mount), the FUSE
        // mount stays, dead ("Transport endpoint is not connected").
        if self.exported {
            if let Err(e) = detach(&self.export) {
                first.get_or_insert(e);
            }
        }
        // One entry at a time, never recursively: a mount that would not
        // go away must not have the clone's files deleted through it.
        let _ = std::fs::remove_file(&self.export);
        let _ = std::fs::remove_file(self.work.path.join("qsd.pid"));
        let _ = std::fs::remove_dir(&self.root);
        self.work.remove();
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Unmounts `path` (umount2 without flags: the filesystem is written back
/// before it returns).
fn unmount(path: &Path) -> Result<()> {
    rustix::mount::unmount(path, UnmountFlags::empty())
        .map_err(|e| RebuildError::Failed(format!("{}: cannot unmount: {e}", path.display())))
}

/// Detaches whatever is mounted at `path` (MNT_DETACH, which also works
/// on a FUSE mount whose daemon is gone); nothing mounted there is fine.
fn detach(path: &Path) -> Result<()> {
    loop {
        match rustix::mount::unmount(path, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW) {
            // Mounts may be stacked: detach until none is left.
            Ok(()) => continue,
            Err(Errno::INVAL | Errno::NOENT) => return Ok(()),
            Err(e) => {
                return Err(RebuildError::Failed(format!(
                    "{}: cannot detach the mount: {e}",
                    path.display()
                )))
            }
        }
    }
}

/// Removes a file or an empty directory; absent is fine.
fn remove_entry(path: &Path, dir: bool) -> Result<()> {
    let r = if dir {
        std::fs::remove_dir(path)
    } else {
        std::fs::remove_file(path)
    };
    match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, "remove", e).into()),
        _ => Ok(()),
    }
}

fn read_pid(pidfile: &Path) -> Option<u32> {
    std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
}

/// True if `pid` is a qemu-storage-daemon started with `pidfile` (a pid
/// left in a stale work directory may have been reused since).
fn is_our_daemon(pid: u32, pidfile: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let wanted = pidfile.as_os_str().as_encoded_bytes();
    args.first().is_some_and(|a| a.ends_with(b"qemu-storage-daemon")) && args.contains(&wanted)
}

/// Asks the daemon to stop (SIGTERM: it flushes the overlay's metadata
/// and closes it) and waits for it.
fn stop_daemon(pid: u32) -> Result<()> {
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if Path::new(&format!("/proc/{pid}")).exists() {
        return Err(RebuildError::Failed(format!(
            "qemu-storage-daemon (pid {pid}) did not stop; the clone may be incomplete"
        )));
    }
    Ok(())
}

impl Drop for Attached {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}
