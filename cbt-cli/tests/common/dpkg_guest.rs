//! Guests whose package manager really runs: a merged-/usr tree holding
//! the host's own `dpkg` (and the few tools dpkg needs: sh, rm, tar,
//! diff, ldconfig, start-stop-daemon) with their shared libraries, a dpkg
//! database filled by installing real `.deb`s with the host's `dpkg
//! --root`, user data, and an ext4 image of it all (`mkfs.ext4 -d`).
//! For the functional-rebuild tests, which run the guest's dpkg in a
//! chroot of a clone.
// Test helpers: a failed unwrap is a test failure with its cause printed.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::aptrepo::run_tool;
use super::{tool, TestEnv};

/// Host tools dpkg runs or checks for on its PATH.
const TOOLS: [&str; 17] = [
    "dpkg",
    "dpkg-deb",
    "dpkg-split",
    "dpkg-query",
    "dpkg-trigger",
    "dash",
    "rm",
    "tar",
    "diff",
    "ldconfig",
    "start-stop-daemon",
    "cat",
    "mkdir",
    "mv",
    "cp",
    "ln",
    "chmod",
];

/// Whether a functional rebuild can run here: false (the test skipped,
/// saying so) when not root outside CI; a failure when root, FUSE, loop
/// devices or qemu-storage-daemon are missing otherwise (never skipped: a
/// CI machine without them must not pass).
#[track_caller]
pub fn require_rebuild_support() -> bool {
    if !super::root_or_skip("FUSE, loop devices, mount and chroot") {
        return false;
    }
    if let Err(why) = rebuild_possible() {
        panic!(
            "a functional rebuild cannot run here: {why} (run the tests as root with qemu-utils installed)"
        );
    }
    true
}

fn rebuild_possible() -> Result<(), String> {
    if !Path::new("/dev/fuse").exists() || !Path::new("/dev/loop-control").exists() {
        return Err("no /dev/fuse or /dev/loop-control".into());
    }
    if Command::new("qemu-storage-daemon")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err("no qemu-storage-daemon".into());
    }
    Ok(())
}

/// A `.deb` with `files` (absolute paths) and, if given, a postinst script.
pub fn build_deb(
    env: &TestEnv,
    out_dir: &Path,
    name: &str,
    version: &str,
    files: &[(&str, Vec<u8>)],
    postinst: Option<&str>,
) -> PathBuf {
    let src = env.dir(&format!("debsrc/{name}-{version}-{}", postinst.is_some()));
    fs::create_dir_all(src.join("DEBIAN")).unwrap();
    fs::write(
        src.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: amd64\nMaintainer: Test <t@example.invalid>\nDescription: test package\n"
        ),
    )
    .unwrap();
    if let Some(script) = postinst {
        let p = src.join("DEBIAN/postinst");
        fs::write(&p, script).unwrap();
        run_tool(Command::new("chmod").arg("755").arg(&p), "chmod");
    }
    for (path, data) in files {
        let f = src.join(path.trim_start_matches('/'));
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(f, data).unwrap();
    }
    fs::create_dir_all(out_dir).unwrap();
    let deb = out_dir.join(format!("{name}_{version}_amd64.deb"));
    run_tool(
        Command::new(tool("dpkg-deb", "dpkg"))
            .args(["-Zxz", "--root-owner-group", "--build"])
            .arg(&src)
            .arg(&deb),
        "dpkg-deb --build",
    );
    deb
}

/// The tree of a Debian 12 guest whose apt source is `stable main`, with
/// the host's dpkg, at `<env>/<rel>`.
pub fn base_tree(env: &TestEnv, rel: &str) -> PathBuf {
    let root = env.dir(rel);
    for d in [
        "usr/bin",
        "usr/sbin",
        "usr/lib",
        "usr/lib64",
        "etc/apt",
        "etc/dpkg",
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
        "var/lib/dpkg/alternatives",
        "var/cache",
        "tmp",
        "proc",
        "dev",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        symlink(target, root.join(link)).unwrap();
    }
    symlink("dash", root.join("usr/bin/sh")).unwrap();
    let mut libs = BTreeSet::new();
    for t in TOOLS {
        let host = tool(t, "dpkg");
        let host = fs::canonicalize(&host).unwrap();
        copy_to_tree(&root, &host);
        let ldd = Command::new("ldd").arg(&host).output().unwrap();
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = line
                .split("=>")
                .last()
                .and_then(|r| r.split_whitespace().next())
                .filter(|p| p.starts_with('/'));
            if let Some(p) = path {
                libs.insert(PathBuf::from(p));
            }
        }
    }
    for lib in libs {
        copy_to_tree(&root, &lib);
    }
    fs::write(
        root.join("etc/os-release"),
        "ID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\nPRETTY_NAME=\"Debian GNU/Linux 12\"\n",
    )
    .unwrap();
    fs::write(
        root.join("etc/apt/sources.list"),
        "deb http://deb.example.invalid/debian stable main\n",
    )
    .unwrap();
    fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    fs::write(root.join("var/lib/dpkg/available"), "").unwrap();
    root
}

/// Copies the host file `host` into `root` at the same path (written
/// through the tree's own relative merged-/usr links).
fn copy_to_tree(root: &Path, host: &Path) {
    let dest = root.join(host.strip_prefix("/").unwrap());
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    if !dest.exists() {
        fs::copy(host, &dest).unwrap();
    }
}

/// Installs `debs` into the tree with the host's dpkg (`--root`).
pub fn install(root: &Path, debs: &[PathBuf]) {
    run_tool(
        Command::new(tool("dpkg", "dpkg"))
            .arg(format!("--root={}", root.display()))
            .args(["--force-script-chrootless", "--install"])
            .args(debs)
            .env("DPKG_ROOT", root),
        "dpkg --root --install",
    );
}
