//! End-to-end tests of `cbt teleport --functional`: a package-level
//! rebuild of a source guest on a different local candidate, with the
//! guest's own dpkg run in a chroot of the clone, packages from a real apt
//! repository served on 127.0.0.1, and the user data pulled from a daemon
//! through the block engine.
//!
//! The guests (`common::dpkg_guest`) carry the host's dpkg and its
//! libraries, so the package manager really runs. The source has `tool`
//! and `webby` and user data under /srv and /home; the candidate has
//! `tool`, `junk` and user data of its own (one file the source lacks,
//! one with other content). Every check reads the result independently
//! of the rebuild's own report: `cbt describe` of the output (packages,
//! user-data manifest with digests, modes, owners), the candidate's
//! digest before and after, the output directory and the mount table.

// Test code: a panic with its message is the failure report.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use common::aptrepo::{index_repo, json_of, run_tool, Server};
use common::dpkg_guest::{base_tree, build_deb, install, require_rebuild_support};
use common::guest::random;
use common::proc::Proc;
use common::{assert_code, stderr, TestEnv};

/// Bytes of the source's pseudo-random site file.
const SITE_BYTES: usize = 300_000;

struct World {
    env: TestEnv,
    source: PathBuf,
    candidate: PathBuf,
    repo: PathBuf,
    server: Server,
    cache: PathBuf,
}

/// A postinst that fails, saying so.
const FAILING_POSTINST: &str = "#!/bin/sh\necho 'postinst says no' >&2\nexit 1\n";

/// `webby` is in the repository at `webby_in_repo`; `broken_in_repo`
/// puts a `broken` 1.0 whose postinst fails there, while the source has
/// a working `broken` 1.0 installed.
fn world(webby_in_repo: &str, with_broken: bool) -> Option<World> {
    world_with(webby_in_repo, with_broken, &|_| {})
}

/// [`world`], with `extra` adding to the source's tree before its image
/// is made; `None` when the test is skipped (not root, outside CI).
fn world_with(webby_in_repo: &str, with_broken: bool, extra: &dyn Fn(&Path)) -> Option<World> {
    if !require_rebuild_support() {
        return None;
    }
    let env = TestEnv::new();
    let debs = env.dir("debs-built");
    let tool_deb = build_deb(
        &env,
        &debs,
        "tool",
        "1.0",
        &[("/usr/share/tool/data", random(1, 50_000))],
        None,
    );
    let webby = |v: &str| {
        build_deb(
            &env,
            &debs.join(v),
            "webby",
            v,
            &[("/usr/share/webby/data", random(2, 200_000))],
            None,
        )
    };
    let webby_source = webby("2.0");
    let junk = build_deb(
        &env,
        &debs,
        "junk",
        "1.0",
        &[("/usr/share/junk/data", random(3, 30_000))],
        None,
    );

    let source_tree = base_tree(&env, "source-tree");
    let mut source_debs = vec![tool_deb.clone(), webby_source];
    if with_broken {
        let good = build_deb(
            &env,
            &debs.join("good"),
            "broken",
            "1.0",
            &[("/usr/share/broken/x", b"x".to_vec())],
            Some("#!/bin/sh\nexit 0\n"),
        );
        source_debs.push(good);
    }
    install(&source_tree, &source_debs);
    fs::create_dir_all(source_tree.join("srv/site")).unwrap();
    fs::create_dir_all(source_tree.join("home/user")).unwrap();
    fs::write(source_tree.join("srv/site/index.html"), random(10, SITE_BYTES)).unwrap();
    fs::write(source_tree.join("home/user/notes.txt"), b"the source's notes\n").unwrap();
    std::os::unix::fs::symlink("site/index.html", source_tree.join("srv/current")).unwrap();
    run_tool(
        Command::new("chown")
            .args(["-R", "1000:1000"])
            .arg(source_tree.join("home/user")),
        "chown",
    );
    run_tool(
        Command::new("chmod")
            .arg("640")
            .arg(source_tree.join("home/user/notes.txt")),
        "chmod",
    );
    run_tool(
        Command::new("touch")
            .args(["-d", "2021-03-04 05:06:07"])
            .arg(source_tree.join("home/user/notes.txt")),
        "touch",
    );
    extra(&source_tree);
    let source = env.ext4(&source_tree, "export/source.img", 64);

    let candidate_tree = base_tree(&env, "candidate-tree");
    install(&candidate_tree, &[tool_deb, junk]);
    fs::create_dir_all(candidate_tree.join("srv")).unwrap();
    fs::create_dir_all(candidate_tree.join("home/user")).unwrap();
    fs::write(
        candidate_tree.join("srv/old.txt"),
        b"only the candidate has this\n",
    )
    .unwrap();
    fs::write(
        candidate_tree.join("home/user/notes.txt"),
        b"the candidate's notes\n",
    )
    .unwrap();
    let candidate = env.ext4(&candidate_tree, "seeds/candidate.img", 64);

    let repo = env.dir("repo");
    let pool = repo.join("pool/main");
    let repo_webby = if webby_in_repo == "2.0" {
        debs.join("2.0/webby_2.0_amd64.deb")
    } else {
        webby(webby_in_repo)
    };
    fs::create_dir_all(&pool).unwrap();
    fs::copy(&repo_webby, pool.join(repo_webby.file_name().unwrap())).unwrap();
    if with_broken {
        let bad = build_deb(
            &env,
            &debs.join("bad"),
            "broken",
            "1.0",
            &[("/usr/share/broken/x", b"x".to_vec())],
            Some(FAILING_POSTINST),
        );
        fs::copy(&bad, pool.join("broken_1.0_amd64.deb")).unwrap();
    }
    index_repo(&repo);
    let server = Server::start(&repo);
    let cache = env.root().join("packages");
    Some(World {
        env,
        source,
        candidate,
        repo,
        server,
        cache,
    })
}

impl World {
    fn cbt(&self, args: &[OsString]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_cbt"))
            .arg("--cache")
            .arg(self.env.cache_dir())
            .arg("--package-cache")
            .arg(&self.cache)
            .args(args)
            .env_remove("CBT_LOG")
            .env_remove("http_proxy")
            .output()
            .unwrap()
    }

    fn rebuild_args(&self, src: &dyn AsRef<std::ffi::OsStr>, out: &Path, extra: &[&str]) -> Vec<OsString> {
        let mut a = args![
            "teleport",
            "--functional",
            src,
            out,
            "--seed",
            self.candidate,
            "--mirror",
            self.server.url(),
            "--json",
            "--progress",
            "none"
        ]
        .to_vec();
        a.extend(extra.iter().map(OsString::from));
        a
    }

    fn describe(&self, image: &Path) -> Value {
        let out = self.cbt(&args!["describe", image, "--json"]);
        assert_code(&out, 0);
        json_of(&out)
    }
}

/// `cbt serve` on 127.0.0.1 exporting `export`; the process and its address.
fn exporting_daemon(env: &TestEnv, export: &Path) -> (Proc, String) {
    let data = env.dir("daemon-data");
    let mut daemon = Proc::spawn(
        env,
        &args![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data,
            "--export",
            export
        ],
    );
    let addr = daemon.addr();
    (daemon, addr)
}

fn digest(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn packages(desc: &Value) -> Vec<String> {
    let mut p: Vec<String> = desc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["state"] == "installed")
        .map(|p| {
            format!(
                "{} {}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap()
            )
        })
        .collect();
    p.sort();
    p
}

/// The user files of a description: (path, digest, mode, uid, gid).
fn user_files(desc: &Value) -> Vec<(String, String, u64, u64, u64)> {
    let mut f: Vec<_> = desc["user_data"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] != "package_state")
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["blake3"].as_str().unwrap().to_string(),
                f["mode"].as_u64().unwrap(),
                f["uid"].as_u64().unwrap(),
                f["gid"].as_u64().unwrap(),
            )
        })
        .collect();
    f.sort();
    f
}

/// Nothing of the rebuild is left: no temporary file next to `out`, no
/// mount under the test's directory.
fn assert_clean(env: &TestEnv, out: &Path) {
    let dir = out.parent().unwrap();
    let hidden: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "left next to the output: {hidden:?}");
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let root = env.root().to_string_lossy().into_owned();
    assert!(!mounts.contains(&root), "a mount is left under {root}:\n{mounts}");
}

#[test]
fn a_pull_from_a_daemon_rebuilds_the_guest_on_the_candidate() {
    let Some(w) = world("2.0", false) else {
        return;
    };
    let before = digest(&w.candidate);
    let source_desc = w.describe(&w.source);
    let (daemon, addr) = exporting_daemon(&w.env, &w.env.root().join("export"));
    let out = w.env.dir("out").join("rebuilt.qcow2");
    let run = w.cbt(&w.rebuild_args(&format!("{addr}/source.img"), &out, &[]));
    assert_code(&run, 0);
    let report = json_of(&run);
    assert_eq!(report["functional_match"], true, "{report:#}");
    let installed: Vec<&str> = report["packages"]["installed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["wanted"].as_str().unwrap())
        .collect();
    assert_eq!(installed, ["webby:amd64 2.0"]);
    assert_eq!(
        report["packages"]["removed"],
        serde_json::json!(["junk:amd64 1.0"])
    );
    assert!(
        report["user_data"]["deleted"].as_u64().unwrap() >= 1,
        "{report:#}"
    );

    // The result, read by `cbt describe`: the source's packages and user data.
    let rebuilt = w.describe(&out);
    assert_eq!(packages(&rebuilt), packages(&source_desc));
    assert_eq!(user_files(&rebuilt), user_files(&source_desc));
    let symlinks = |d: &Value| d["user_data"]["symlinks"].clone();
    assert_eq!(symlinks(&rebuilt), symlinks(&source_desc));
    assert!(!user_files(&rebuilt).iter().any(|f| f.0 == "/srv/old.txt"));
    let notes = user_files(&rebuilt)
        .into_iter()
        .find(|f| f.0 == "/home/user/notes.txt")
        .unwrap();
    assert_eq!((notes.2 & 0o7777, notes.3, notes.4), (0o640, 1000, 1000));

    // Only the user data crossed the link (the site file is random): not
    // the packages, nor the host tools both guests hold.
    let wire = report["transfer"]["wire_bytes_received"].as_u64().unwrap();
    assert!(wire > SITE_BYTES as u64, "{wire} bytes cannot hold the site file");
    assert!(
        wire < 2 * SITE_BYTES as u64,
        "{wire} bytes over the link for {SITE_BYTES} of new user data"
    );
    assert_eq!(digest(&w.candidate), before, "the candidate was written");
    assert_clean(&w.env, &out);
    drop(daemon);
}

#[test]
fn only_newer_versions_on_the_mirror_rebuild_with_a_distinct_exit_code() {
    let Some(w) = world("2.1", false) else {
        return;
    };
    let out = w.env.dir("out").join("rebuilt.qcow2");
    let run = w.cbt(&w.rebuild_args(&w.source, &out, &[]));
    assert_code(&run, 6);
    let report = json_of(&run);
    assert_eq!(report["functional_match"], false);
    assert_eq!(
        report["verification"]["version_differences"],
        serde_json::json!([{"package": "webby:amd64", "source": "2.0", "rebuild": "2.1"}])
    );
    assert!(stderr(&run).contains("differ in version"), "{}", stderr(&run));
    assert!(out.exists(), "a rebuild with other versions is still published");
    let rebuilt = w.describe(&out);
    assert!(packages(&rebuilt).contains(&"webby 2.1".to_string()));
    assert_eq!(user_files(&rebuilt), user_files(&w.describe(&w.source)));
    assert_clean(&w.env, &out);
}

#[test]
fn a_failing_maintainer_script_stops_the_rebuild_unless_keep_going() {
    let Some(w) = world("2.0", true) else {
        return;
    };
    let before = digest(&w.candidate);
    let out = w.env.dir("out").join("rebuilt.qcow2");
    let run = w.cbt(&w.rebuild_args(&w.source, &out, &[]));
    assert_code(&run, 1);
    let err = stderr(&run);
    assert!(
        err.contains("broken") && err.contains("postinst says no"),
        "{err}"
    );
    assert!(!out.exists(), "a failed rebuild was published");
    assert_clean(&w.env, &out);
    assert_eq!(digest(&w.candidate), before);

    let run = w.cbt(&w.rebuild_args(&w.source, &out, &["--keep-going"]));
    assert_code(&run, 6);
    let report = json_of(&run);
    let failures = report["packages"]["failures"].as_array().unwrap();
    assert!(
        failures
            .iter()
            .any(|f| f["package"].as_str().unwrap().starts_with("broken")),
        "{report:#}"
    );
    assert!(out.exists());
    assert_clean(&w.env, &out);
    assert_eq!(digest(&w.candidate), before);
    let _ = &w.repo;
}

#[test]
fn refusals_name_what_is_missing() {
    let env = TestEnv::new();
    let img = env.path("x.img");
    fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let cbt = |a: &[OsString]| Command::new(env!("CARGO_BIN_EXE_cbt")).args(a).output().unwrap();
    let out = env.path("out.qcow2");
    let run = cbt(&args![
        "teleport",
        "--functional",
        img,
        out,
        "--package-cache",
        env.path("c")
    ]);
    assert_code(&run, 2);
    assert!(stderr(&run).contains("--seed"), "{}", stderr(&run));
    let run = cbt(&args!["teleport", "--functional", img, out, "--seed", img]);
    assert_code(&run, 2);
    assert!(stderr(&run).contains("--package-cache"), "{}", stderr(&run));
    let run = cbt(&args!["teleport", img, "127.0.0.1:1/x", "--keep-going"]);
    assert_code(&run, 2);
    // A push: the rebuild happens where the image goes, by a pull there.
    let run = cbt(&args![
        "teleport",
        "--functional",
        img,
        "127.0.0.1:1/x",
        "--seed",
        img,
        "--package-cache",
        env.path("c")
    ]);
    assert_code(&run, 2);
    assert!(
        stderr(&run).contains("runs at the destination"),
        "{}",
        stderr(&run)
    );
}

#[test]
fn a_daemon_that_cannot_describe_its_image_says_why_and_nothing_is_left() {
    if !require_rebuild_support() {
        return;
    }
    let env = TestEnv::new();
    let export = env.dir("export");
    fs::write(export.join("noise.img"), random(7, 4 << 20)).unwrap();
    let seed = env.path("seed.img");
    fs::write(&seed, vec![0u8; 1 << 20]).unwrap();
    let (daemon, addr) = exporting_daemon(&env, &export);
    let out = env.dir("out").join("rebuilt.qcow2");
    let run = Command::new(env!("CARGO_BIN_EXE_cbt"))
        .args(args![
            "--package-cache",
            env.path("packages"),
            "teleport",
            "--functional",
            format!("{addr}/noise.img"),
            out,
            "--seed",
            seed,
            "--progress",
            "none"
        ])
        .output()
        .unwrap();
    assert_code(&run, 1);
    let err = stderr(&run);
    assert!(
        err.contains("noise.img") && err.contains("no functional copy"),
        "{err}"
    );
    assert!(!out.exists());
    assert_clean(&env, &out);
    drop(daemon);
}

/// The work directory a rebuild of `out` uses.
fn work_dir(out: &Path) -> PathBuf {
    let name = out.file_name().unwrap().to_string_lossy();
    out.with_file_name(format!(".{name}.cbt-rebuild"))
}

/// Detaches the mount at its path when dropped, so a failing test leaves
/// no dead mount behind.
struct DetachOnDrop(PathBuf);

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

/// Leaves at `work` what a rebuild killed with its daemon leaves: the
/// export file with a FUSE mount on it whose daemon is gone.
#[must_use]
fn dead_rebuild(env: &TestEnv, work: &Path) -> DetachOnDrop {
    fs::create_dir_all(work.join("root")).unwrap();
    let export = work.join("export");
    fs::write(&export, b"").unwrap();
    let pidfile = env.path("dead-qsd.pid");
    run_tool(
        Command::new("qemu-storage-daemon")
            .args([
                "--blockdev",
                "driver=null-co,node-name=n,size=1048576",
                "--export",
            ])
            .arg(format!(
                "type=fuse,id=e,node-name=n,mountpoint={}",
                export.display()
            ))
            .arg("--pidfile")
            .arg(&pidfile)
            .arg("--daemonize"),
        "qemu-storage-daemon",
    );
    let pid = fs::read_to_string(&pidfile).unwrap().trim().to_string();
    run_tool(Command::new("kill").args(["-KILL", &pid]), "kill");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let err = fs::metadata(&export).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::NOTCONN.raw_os_error()),
        "the export should be a dead FUSE mount: {err}"
    );
    DetachOnDrop(export)
}

#[test]
fn a_dead_rebuilds_mount_is_taken_over_and_a_running_one_is_refused() {
    let Some(w) = world("2.0", false) else {
        return;
    };
    let out = w.env.dir("out").join("rebuilt.qcow2");
    let work = work_dir(&out);
    let _left = dead_rebuild(&w.env, &work);

    // A rebuild that holds the work directory is running: refused, and
    // its directory left alone.
    let dir = fs::File::open(&work).unwrap();
    rustix::fs::flock(&dir, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let run = w.cbt(&w.rebuild_args(&w.source, &out, &[]));
    assert_code(&run, 1);
    assert!(stderr(&run).contains("another rebuild"), "{}", stderr(&run));
    assert!(
        work.join("export").symlink_metadata().is_err(),
        "the mount was touched"
    );
    drop(dir);

    // Nobody holds it: what the dead rebuild left is detached, and the
    // rebuild runs.
    let run = w.cbt(&w.rebuild_args(&w.source, &out, &[]));
    assert_code(&run, 0);
    assert!(stderr(&run).contains("no longer running"), "{}", stderr(&run));
    assert_eq!(json_of(&run)["functional_match"], true);
    assert_clean(&w.env, &out);

    // And a failed run (the output exists now) leaves nothing either,
    // so the same name can be rebuilt again at once.
    let out2 = out.with_file_name("again.qcow2");
    let run = w.cbt(&w.rebuild_args(&w.source, &out2, &[]));
    assert_code(&run, 0);
    assert_clean(&w.env, &out2);
}

/// A file name of 255 bytes, the longest Linux allows.
fn longest_name() -> String {
    format!("{}.html", "n".repeat(250))
}

#[test]
fn the_longest_names_and_fifos_are_carried() {
    let Some(w) = world_with("2.0", false, &|tree| {
        fs::write(tree.join("srv/site").join(longest_name()), b"a long name\n").unwrap();
        let fifo = tree.join("srv/pipe");
        run_tool(Command::new("mkfifo").args(["-m", "620"]).arg(&fifo), "mkfifo");
        run_tool(Command::new("chown").arg("1000:1001").arg(&fifo), "chown");
    }) else {
        return;
    };
    let source_desc = w.describe(&w.source);
    let out = w.env.dir("out").join("rebuilt.qcow2");
    let run = w.cbt(&w.rebuild_args(&w.source, &out, &[]));
    assert_code(&run, 0);
    let report = json_of(&run);
    assert_eq!(report["functional_match"], true, "{report:#}");
    assert_eq!(report["user_data"]["fifos"], 1, "{report:#}");
    assert_eq!(report["skipped"], serde_json::json!([]), "{report:#}");

    let rebuilt = w.describe(&out);
    assert_eq!(user_files(&rebuilt), user_files(&source_desc));
    let long = format!("/srv/site/{}", longest_name());
    assert!(user_files(&rebuilt).iter().any(|f| f.0 == long));
    let specials = &rebuilt["user_data"]["specials"];
    assert_eq!(specials, &source_desc["user_data"]["specials"]);
    assert_eq!(specials[0]["path"], "/srv/pipe", "{specials:#}");
    assert_eq!(specials[0]["kind"], "fifo");
    assert_eq!(specials[0]["mode"].as_u64().unwrap() & 0o7777, 0o620);
    assert_eq!(
        (specials[0]["uid"].as_u64(), specials[0]["gid"].as_u64()),
        (Some(1000), Some(1001))
    );
    assert_clean(&w.env, &out);
}

#[test]
fn device_nodes_and_sockets_not_carried_are_reported_and_no_match_is_claimed() {
    let Some(w) = world_with("2.0", false, &|tree| {
        run_tool(
            Command::new("mknod")
                .arg(tree.join("srv/null"))
                .args(["c", "1", "3"]),
            "mknod",
        );
        let sock = tree.join("srv/sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    }) else {
        return;
    };
    let out = w.env.dir("out").join("rebuilt.qcow2");
    let run = w.cbt(&w.rebuild_args(&w.source, &out, &[]));
    assert_code(&run, 6);
    let report = json_of(&run);
    assert_eq!(report["functional_match"], false, "{report:#}");
    let skipped: Vec<&str> = report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(
        skipped
            .iter()
            .any(|s| s.starts_with("/srv/null: character device")),
        "{skipped:?}"
    );
    assert!(
        skipped.iter().any(|s| s.starts_with("/srv/sock: socket")),
        "{skipped:?}"
    );
    assert!(
        stderr(&run).contains("2 user-data entries could not be carried"),
        "{}",
        stderr(&run)
    );
    // Everything else was carried, and the result published.
    assert_eq!(user_files(&w.describe(&out)), user_files(&w.describe(&w.source)));
    assert_clean(&w.env, &out);
}

/// Makes `depth` nested directories of 200-byte names under `base` and a
/// file at the bottom (through descriptors: the path is longer than the
/// host's PATH_MAX); returns the file's path relative to `base`.
fn deep_file(base: &Path, depth: usize, content: &[u8]) -> String {
    use rustix::fs::{Mode, OFlags};
    let name = "d".repeat(200);
    let mut fd = rustix::fs::open(base, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
    let mut rel = String::new();
    for _ in 0..depth {
        rustix::fs::mkdirat(&fd, name.as_str(), Mode::from_raw_mode(0o755)).unwrap();
        fd = rustix::fs::openat(
            &fd,
            name.as_str(),
            OFlags::DIRECTORY | OFlags::RDONLY,
            Mode::empty(),
        )
        .unwrap();
        rel.push_str(&name);
        rel.push('/');
    }
    let f = rustix::fs::openat(
        &fd,
        "deep.txt",
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
        Mode::from_raw_mode(0o644),
    )
    .unwrap();
    std::io::Write::write_all(&mut fs::File::from(f), content).unwrap();
    rel.push_str("deep.txt");
    rel
}

#[test]
fn describe_files_reaches_paths_longer_than_4096_bytes() {
    let env = TestEnv::new();
    let tree = base_tree(&env, "tree");
    fs::create_dir_all(tree.join("srv")).unwrap();
    let rel = deep_file(&tree.join("srv"), 25, b"deep down\n");
    fs::write(tree.join("srv/shallow.txt"), b"deep down\n").unwrap();
    let deep = format!("/srv/{rel}");
    assert!(deep.len() > 5000);
    let cbt = |a: &[OsString]| {
        Command::new(env!("CARGO_BIN_EXE_cbt"))
            .arg("--no-cache")
            .args(a)
            .output()
            .unwrap()
    };

    // A directory: walked with descriptors, every file read.
    let run = cbt(&args!["describe", tree, "--json"]);
    assert_code(&run, 0);
    let desc = json_of(&run);
    let files = desc["user_data"]["files"].as_array().unwrap();
    let digest_of = |path: &str| {
        let f = files.iter().find(|f| f["path"] == path);
        f.unwrap_or_else(|| panic!("{path} not in {files:#?}"))["blake3"].clone()
    };
    assert_eq!(digest_of(&deep), digest_of("/srv/shallow.txt"));

    // An image: the ext4 reader resolves at most 4096 bytes; the rest is
    // described and the deep file named as unreadable, not a failure.
    let img = env.ext4(&tree, "tree.img", 64);
    let run = cbt(&args!["describe", img, "--json"]);
    assert_code(&run, 0);
    let desc = json_of(&run);
    let unreadable = desc["user_data"]["unreadable"].as_array().unwrap();
    assert_eq!(unreadable.len(), 1, "{unreadable:?}");
    assert!(
        unreadable[0].as_str().unwrap().contains("longer than the 4096"),
        "{unreadable:?}"
    );
    let run = cbt(&args!["describe", img, "--files"]);
    assert_code(&run, 0);
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(text.contains("not read:"), "{text}");
}
