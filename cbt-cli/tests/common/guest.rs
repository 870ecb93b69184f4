//! Debian-like guests for the functional-copy tests: a tree with a
//! hand-made dpkg database and merged `/usr`, its packages as real `.deb`
//! archives (`dpkg-deb --build`), and ext4 images of it (`mkfs.ext4 -d`).
// Test helpers: a failed unwrap is a test failure with its cause printed.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::{assert_success, copy_into, sparse_file, tool, TestEnv, XorShift, MIB};

/// One package: its control fields and files (absolute paths as shipped).
pub struct Pkg {
    pub name: &'static str,
    pub version: &'static str,
    pub arch: &'static str,
    pub multi_arch_same: bool,
    pub installed_kib: u64,
    pub files: Vec<(&'static str, Vec<u8>)>,
    pub conffiles: Vec<&'static str>,
    /// `dpkg-deb -Z` value.
    pub compression: &'static str,
}

impl Pkg {
    pub fn new(
        name: &'static str,
        version: &'static str,
        arch: &'static str,
        compression: &'static str,
    ) -> Pkg {
        Pkg {
            name,
            version,
            arch,
            multi_arch_same: false,
            installed_kib: 0,
            files: Vec::new(),
            conffiles: Vec::new(),
            compression,
        }
    }

    pub fn file(mut self, path: &'static str, data: Vec<u8>) -> Pkg {
        self.installed_kib += (data.len() as u64).div_ceil(1024);
        self.files.push((path, data));
        self
    }

    pub fn conffile(mut self, path: &'static str, data: &[u8]) -> Pkg {
        self.conffiles.push(path);
        self.file(path, data.to_vec())
    }

    /// Directories to list in `.list`, then files.
    pub fn list(&self) -> String {
        let mut dirs = BTreeSet::new();
        for (p, _) in &self.files {
            let mut d = Path::new(p).parent();
            while let Some(x) = d {
                dirs.insert(x.to_string_lossy().into_owned());
                d = x.parent();
            }
        }
        let mut out = String::new();
        for d in dirs {
            out += if d == "/" { "/." } else { &d };
            out.push('\n');
        }
        for (p, _) in &self.files {
            out += p;
            out.push('\n');
        }
        out
    }

    /// Builds the `.deb` in `dir` with `dpkg-deb --build`.
    pub fn build_deb(&self, env: &TestEnv, dir: &Path) -> PathBuf {
        let src = env.dir(&format!("pkgsrc/{}-{}", self.name, self.version));
        fs::create_dir_all(src.join("DEBIAN")).unwrap();
        let multi = if self.multi_arch_same {
            "Multi-Arch: same\n"
        } else {
            ""
        };
        fs::write(
            src.join("DEBIAN/control"),
            format!(
                "Package: {}\nVersion: {}\nArchitecture: {}\n{multi}Maintainer: Test <t@example.invalid>\nInstalled-Size: {}\nDescription: test package\n",
                self.name, self.version, self.arch, self.installed_kib
            ),
        )
        .unwrap();
        for (p, data) in &self.files {
            let f = src.join(p.trim_start_matches('/'));
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(f, data).unwrap();
        }
        if !self.conffiles.is_empty() {
            fs::write(src.join("DEBIAN/conffiles"), self.conffiles.join("\n") + "\n").unwrap();
        }
        fs::write(src.join("DEBIAN/md5sums"), self.md5sums()).unwrap();
        let deb = dir.join(format!("{}_{}_{}.deb", self.name, self.version, self.arch));
        let mut cmd = Command::new(tool("dpkg-deb", "dpkg"));
        cmd.arg(format!("-Z{}", self.compression))
            .arg("--root-owner-group")
            .arg("--build")
            .arg(&src)
            .arg(&deb);
        let out = cmd.output().expect("run dpkg-deb");
        assert_success(&out, "dpkg-deb", &args![src, deb]);
        deb
    }

    pub fn md5sums(&self) -> String {
        self.files
            .iter()
            .filter(|(p, _)| !self.conffiles.contains(p))
            .map(|(p, d)| format!("{}  {}\n", md5_hex(d), p.trim_start_matches('/')))
            .collect()
    }

    /// The status paragraph for `state` (e.g. `install ok installed`).
    pub fn status(&self, state: &str) -> String {
        let mut s = format!("Package: {}\nStatus: {state}\nPriority: optional\n", self.name);
        s += &format!(
            "Installed-Size: {}\nMaintainer: Test <t@example.invalid>\nArchitecture: {}\n",
            self.installed_kib, self.arch
        );
        if self.multi_arch_same {
            s += "Multi-Arch: same\n";
        }
        s += &format!("Version: {}\n", self.version);
        if !self.conffiles.is_empty() {
            s += "Conffiles:\n";
            for c in &self.conffiles {
                let data = &self.files.iter().find(|(p, _)| p == c).unwrap().1;
                s += &format!(" {c} {}\n", md5_hex(data));
            }
        }
        s + "Description: test package\n long description\n .\n more\n\n"
    }

    pub fn info_stem(&self) -> String {
        if self.multi_arch_same {
            format!("{}:{}", self.name, self.arch)
        } else {
            self.name.to_string()
        }
    }
}

pub fn md5_hex(data: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("x");
    fs::write(&f, data).unwrap();
    let out = Command::new("md5sum").arg(&f).output().expect("run md5sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

pub fn random(seed: u64, len: usize) -> Vec<u8> {
    XorShift::new(seed).bytes(len)
}

/// Where a shipped path lives on a merged-/usr system.
pub fn merged(path: &str) -> String {
    for d in ["/bin/", "/sbin/", "/lib/"] {
        if let Some(rest) = path.strip_prefix(d) {
            return format!("/usr{d}{rest}");
        }
    }
    path.to_string()
}

/// A guest: its tree, its packages, and what the manifest must say.
pub struct Guest {
    pub root: PathBuf,
    pub packages: Vec<Pkg>,
    /// (state, package) for the status file; state as in `Status:`.
    pub states: BTreeMap<&'static str, &'static str>,
    /// Package files (real paths) whose content was changed, with their package and kind.
    pub modified: BTreeMap<String, (&'static str, &'static str)>,
    /// Package files (real paths) absent from the tree.
    pub missing: Vec<String>,
}

/// The packages of the reference guest. `hello_version` and the extras let
/// candidates differ from it.
pub fn base_packages(hello_version: &'static str) -> Vec<Pkg> {
    let mut libfoo = Pkg::new("libfoo", "2.1-3", "amd64", "zstd")
        .file("/lib/x86_64-linux-gnu/libfoo.so.2", random(2, 100_000));
    libfoo.multi_arch_same = true;
    vec![
        Pkg::new("base-files", "12.4+deb12u5", "amd64", "xz")
            .file(
                "/usr/lib/os-release",
                b"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n"
                    .to_vec(),
            )
            .conffile("/etc/debian_version", b"12.5\n"),
        Pkg::new("dpkg", "1.21.22", "amd64", "gzip").file("/usr/bin/dpkg", random(9, 30_000)),
        Pkg::new("hello", hello_version, "amd64", "xz")
            .file("/bin/hello", random(if hello_version == "1.0-1" { 1 } else { 11 }, 40_000))
            .file("/usr/share/doc/hello/README", b"hello: prints a greeting\n".to_vec())
            .conffile("/etc/hello.conf", b"greeting=hello\n"),
        libfoo,
        Pkg::new("tool", "0.5", "all", "none")
            .file("/usr/bin/tool", random(3, 8_000))
            .file("/usr/share/tool/data.bin", random(4, 64_000))
            .file("/usr/share/tool/README", b"tool readme\n".to_vec()),
    ]
}

/// Writes the reference guest (or a variant) into `rel`.
/// `user_files` adds the user data; `extra` adds packages.
pub fn make_guest(env: &TestEnv, rel: &str, packages: Vec<Pkg>, user_files: bool, os_version: &str) -> Guest {
    let root = env.dir(rel);
    for d in [
        "usr/bin",
        "usr/sbin",
        "usr/lib",
        "etc/apt/sources.list.d",
        "etc/apt/trusted.gpg.d",
        "var/lib/dpkg/info",
        "home",
        "tmp",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    symlink("usr/bin", root.join("bin")).unwrap();
    symlink("usr/sbin", root.join("sbin")).unwrap();
    symlink("usr/lib", root.join("lib")).unwrap();
    symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
    fs::write(
        root.join("etc/apt/sources.list"),
        format!("deb http://deb.debian.org/debian {} main\n", codename(os_version)),
    )
    .unwrap();
    let mut g = Guest {
        root: root.clone(),
        packages,
        states: BTreeMap::new(),
        modified: BTreeMap::new(),
        missing: Vec::new(),
    };
    let mut status = String::new();
    // A purged package stays in the status file only for its selection.
    status += "Package: purged\nStatus: purge ok not-installed\nPriority: optional\nArchitecture: amd64\n\n";
    for p in &g.packages {
        for (path, data) in &p.files {
            let mut data = data.clone();
            if path == &"/usr/lib/os-release" && os_version != "12" {
                data = format!(
                    "PRETTY_NAME=\"Debian GNU/Linux {os_version}\"\nID=debian\nVERSION_ID=\"{os_version}\"\n"
                )
                .into_bytes();
            }
            let real = root.join(merged(path).trim_start_matches('/'));
            fs::create_dir_all(real.parent().unwrap()).unwrap();
            fs::write(real, data).unwrap();
        }
        fs::write(
            root.join(format!("var/lib/dpkg/info/{}.list", p.info_stem())),
            p.list(),
        )
        .unwrap();
        fs::write(
            root.join(format!("var/lib/dpkg/info/{}.md5sums", p.info_stem())),
            p.md5sums(),
        )
        .unwrap();
        if !p.conffiles.is_empty() {
            fs::write(
                root.join(format!("var/lib/dpkg/info/{}.conffiles", p.info_stem())),
                p.conffiles.join("\n") + "\n",
            )
            .unwrap();
        }
        status += &p.status("install ok installed");
        g.states.insert(p.name, "installed");
    }
    if os_version != "12" {
        // The os-release of another release no longer matches base-files' md5sums.
        g.modified
            .insert("/usr/lib/os-release".into(), ("base-files", "modified"));
    }
    // A removed package whose conffile stays behind, unmodified.
    let old = Pkg::new("oldpkg", "0.1", "all", "none").conffile("/etc/oldpkg.conf", b"old=1\n");
    fs::write(root.join("etc/oldpkg.conf"), b"old=1\n").unwrap();
    fs::write(
        root.join("var/lib/dpkg/info/oldpkg.list"),
        "/etc\n/etc/oldpkg.conf\n",
    )
    .unwrap();
    status += &old.status("deinstall ok config-files");
    g.states.insert("oldpkg", "config-files");
    fs::write(root.join("var/lib/dpkg/status"), status).unwrap();
    fs::write(root.join("var/lib/dpkg/available"), "").unwrap();

    if user_files {
        fs::write(root.join("etc/hostname"), "web1\n").unwrap();
        fs::write(
            root.join("etc/apt/sources.list.d/extra.sources"),
            "Types: deb\nURIs: https://extra.example/apt\nSuites: stable\nComponents: main contrib\nSigned-By: /etc/apt/trusted.gpg.d/extra.gpg\n",
        )
        .unwrap();
        fs::write(root.join("etc/apt/trusted.gpg.d/extra.gpg"), random(5, 1_200)).unwrap();
        fs::create_dir_all(root.join("home/alice/.ssh")).unwrap();
        fs::write(root.join("home/alice/notes.txt"), "remember the milk\n").unwrap();
        fs::write(
            root.join("home/alice/.ssh/authorized_keys"),
            "ssh-ed25519 AAAA test\n",
        )
        .unwrap();
        fs::create_dir_all(root.join("srv/www")).unwrap();
        fs::write(root.join("srv/www/index.html"), random(6, 30_000)).unwrap();
        fs::write(root.join("srv/www/empty.txt"), "").unwrap();
        symlink("/srv/www/index.html", root.join("home/alice/site")).unwrap();
        // The admin changed a shipped file and a conffile.
        fs::write(
            root.join("usr/share/doc/hello/README"),
            "hello: prints a greeting (patched)\n",
        )
        .unwrap();
        g.modified
            .insert("/usr/share/doc/hello/README".into(), ("hello", "modified"));
        fs::write(root.join("etc/hello.conf"), "greeting=bonjour\n").unwrap();
        g.modified
            .insert("/etc/hello.conf".into(), ("hello", "modified_conffile"));
        // The admin removed a shipped file.
        fs::remove_file(root.join("usr/share/tool/README")).unwrap();
        g.missing.push("/usr/share/tool/README".into());
        // A local diversion: the package's /usr/bin/tool moved aside, the
        // admin's own /usr/bin/tool in its place.
        fs::rename(root.join("usr/bin/tool"), root.join("usr/bin/tool.distrib")).unwrap();
        fs::write(root.join("usr/bin/tool"), "#!/bin/sh\necho wrapped\n").unwrap();
        fs::write(
            root.join("var/lib/dpkg/diversions"),
            "/usr/bin/tool\n/usr/bin/tool.distrib\n:\n",
        )
        .unwrap();
    }
    g
}

pub fn codename(version: &str) -> &'static str {
    match version {
        "11" => "bullseye",
        _ => "bookworm",
    }
}

impl Guest {
    /// Real paths of package files present and unmodified.
    pub fn intact_package_files(&self) -> BTreeSet<String> {
        let diverted = |p: &str| {
            if p == "/usr/bin/tool" && self.root.join("usr/bin/tool.distrib").exists() {
                "/usr/bin/tool.distrib".to_string()
            } else {
                merged(p)
            }
        };
        let mut out: BTreeSet<String> = self
            .packages
            .iter()
            .flat_map(|p| p.files.iter().map(|(path, _)| diverted(path)))
            .filter(|p| !self.modified.contains_key(p) && !self.missing.contains(p))
            .collect();
        out.insert("/etc/oldpkg.conf".into());
        out
    }

    /// The exact manifest expected: (path, kind, size, blake3, package).
    pub fn expected_manifest(&self) -> Vec<(String, String, u64, String, Option<String>)> {
        let owned = self.intact_package_files();
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let ft = e.file_type().unwrap();
                if ft.is_dir() {
                    stack.push(e.path());
                } else if ft.is_file() {
                    let guest = format!("/{}", e.path().strip_prefix(&self.root).unwrap().display());
                    if owned.contains(&guest) {
                        continue;
                    }
                    let data = fs::read(e.path()).unwrap();
                    let (kind, package) = match self.modified.get(&guest) {
                        Some((p, k)) => (k.to_string(), Some(p.to_string())),
                        None if guest.starts_with("/var/lib/dpkg/") => ("package_state".to_string(), None),
                        None => ("unowned".to_string(), None),
                    };
                    out.push((
                        guest,
                        kind,
                        data.len() as u64,
                        cbt_core::Digest::of(&data).to_hex(),
                        package,
                    ));
                }
            }
        }
        out.sort();
        out
    }
}

/// The manifest of a `describe --json` output, in the shape of `expected_manifest`.
pub fn manifest_of(v: &Value) -> Vec<(String, String, u64, String, Option<String>)> {
    let mut out: Vec<_> = v["user_data"]["files"]
        .as_array()
        .expect("user_data.files")
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["kind"].as_str().unwrap().to_string(),
                f["size"].as_u64().unwrap(),
                f["blake3"].as_str().unwrap().to_string(),
                f.get("package").and_then(|p| p.as_str()).map(String::from),
            )
        })
        .collect();
    out.sort();
    out
}

pub fn packages_of(v: &Value) -> Vec<(String, String, String, String)> {
    v["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap().to_string();
            (s("name"), s("version"), s("architecture"), s("state"))
        })
        .collect()
}

/// An ext4 image of `tree` inside a GPT partition starting at 1 MiB.
pub fn gpt_image(env: &TestEnv, tree: &Path, rel: &str, fs_mib: u64) -> PathBuf {
    let fs_img = env.ext4(tree, &format!("{rel}.fs"), fs_mib);
    let disk = env.path(rel);
    sparse_file(&disk, (fs_mib + 2) * MIB);
    env.sfdisk(
        &disk,
        &format!(
            "label: gpt\nstart=2048, size={}, type=linux\n",
            fs_mib * MIB / 512
        ),
    );
    copy_into(&fs_img, &disk, MIB);
    fs::remove_file(fs_img).unwrap();
    disk
}
