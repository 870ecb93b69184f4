//! A real apt repository for the mirror and teleport tests, built at test
//! time (`dpkg-deb --build`, `apt-ftparchive packages` and `release`) and
//! served on 127.0.0.1 by a small HTTP/1.1 file server that can also
//! corrupt one path, stall on another, drip a third a byte at a time or
//! answer 404 for a fourth; a
//! published `Translation-en` and `InRelease` ([`publish_translation`]);
//! ext4 guests whose dpkg status lists those packages (and whose apt lists
//! hold what they are given), and a [`Setup`] running `cbt` without proxy
//! variables.
// Test helpers: a failed unwrap is a test failure with its cause printed.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::guest::md5_hex;
use super::proc::{show, Proc};
use super::{assert_clean_failure, assert_success, tool, write_tree, TestEnv, XorShift};

/// The one apt source of every guest (`/etc/apt/sources.list`).
pub const GUEST_SOURCE: &str = "http://deb.debian.org/debian";

/// What the server does besides serving files.
#[derive(Default)]
pub struct Behaviour {
    /// URL path → bytes served instead of the file.
    pub corrupt: HashMap<String, Vec<u8>>,
    /// URL paths answered with silence.
    pub stall: HashSet<String>,
    /// URL paths answered with 404 although the file exists.
    pub not_found: HashSet<String>,
    /// URL paths answered one byte per interval (for [`DRIP_FOR`] at most).
    pub drip: HashMap<String, (Drip, Duration)>,
    /// Request targets as received (absolute URLs when sent through a proxy).
    pub seen: Vec<String>,
}

/// How [`Server::drip`] frames its answer.
#[derive(Clone, Copy, Debug)]
pub enum Drip {
    /// The file's true `Content-Length`, then its bytes one at a time.
    Sized,
    /// `Transfer-Encoding: chunked`, one-byte chunks, never a last chunk.
    Endless,
}

/// How long a dripped answer lasts before the server closes the
/// connection: long enough that a client without a minimum rate is seen
/// to hang, short enough that its test ends.
pub const DRIP_FOR: Duration = Duration::from_secs(60);

/// A std-only HTTP/1.1 file server: GET only, `Content-Length`, 404,
/// `Connection: close`. URL `/debian/X` serves `root/X`.
pub struct Server {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    behaviour: Arc<Mutex<Behaviour>>,
}

impl Server {
    /// Serves `root` on a free port until the test process ends.
    pub fn start(root: &Path) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let behaviour = Arc::new(Mutex::new(Behaviour::default()));
        let (root, b) = (root.to_path_buf(), Arc::clone(&behaviour));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (root, b) = (root.clone(), Arc::clone(&b));
                std::thread::spawn(move || serve(stream, &root, &b));
            }
        });
        Server { addr, behaviour }
    }

    /// The mirror's base URL.
    pub fn url(&self) -> String {
        format!("http://{}/debian", self.addr)
    }

    /// Serves `data` for URL path `path` from now on.
    pub fn corrupt(&self, path: &str, data: Vec<u8>) {
        self.behaviour
            .lock()
            .unwrap()
            .corrupt
            .insert(path.to_string(), data);
    }

    /// Answers requests for `path` with silence (30 s, then a closed connection).
    pub fn stall(&self, path: &str) {
        self.behaviour.lock().unwrap().stall.insert(path.to_string());
    }

    /// Answers requests for `path` one byte per `interval`, framed as `how`
    /// says, and closes the connection after [`DRIP_FOR`].
    pub fn drip(&self, path: &str, how: Drip, interval: Duration) {
        self.behaviour
            .lock()
            .unwrap()
            .drip
            .insert(path.to_string(), (how, interval));
    }

    /// Answers requests for `path` with 404.
    pub fn not_found(&self, path: &str) {
        self.behaviour.lock().unwrap().not_found.insert(path.to_string());
    }

    /// The requests received so far (`METHOD target`).
    pub fn seen(&self) -> Vec<String> {
        self.behaviour.lock().unwrap().seen.clone()
    }
}

fn serve(mut stream: TcpStream, root: &Path, b: &Mutex<Behaviour>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    // A proxy client opens a tunnel first (CONNECT host:port), then sends
    // its request through it: answer the CONNECT and read on.
    let (method, target) = loop {
        let mut request = String::new();
        if reader.read_line(&mut request).is_err() {
            return;
        }
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" || line == "\n" => break,
                Ok(_) => {}
            }
        }
        let mut words = request.split_whitespace();
        let (method, target) = (
            words.next().unwrap_or("").to_string(),
            words.next().unwrap_or("").to_string(),
        );
        b.lock().unwrap().seen.push(format!("{method} {target}"));
        if method != "CONNECT" {
            break (method, target);
        }
        if stream
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .is_err()
        {
            return;
        }
    };
    let (method, target) = (method.as_str(), target.as_str());
    // A proxy may also receive absolute URLs: serve them as if they were ours.
    let path = match target.strip_prefix("http://") {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    // As any web server does: the file is the path percent-decoded.
    let Some(path) = percent_decode(path) else {
        return respond_now(&mut stream, "400 Bad Request", b"bad escape\n");
    };
    let path = path.as_str();
    let respond = |stream: &mut TcpStream, status: &str, body: &[u8]| {
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(body);
    };
    if method != "GET" {
        return respond(&mut stream, "405 Method Not Allowed", b"");
    }
    let (corrupt, stall, not_found, drip) = {
        let b = b.lock().unwrap();
        (
            b.corrupt.get(path).cloned(),
            b.stall.contains(path),
            b.not_found.contains(path),
            b.drip.get(path).copied(),
        )
    };
    if stall {
        std::thread::sleep(Duration::from_secs(30));
        return;
    }
    if not_found {
        return respond(&mut stream, "404 Not Found", b"not found\n");
    }
    if let Some(data) = corrupt {
        return respond(&mut stream, "200 OK", &data);
    }
    let file = path
        .strip_prefix("/debian/")
        .filter(|rel| !rel.split('/').any(|c| c == ".." || c.is_empty()))
        .map(|rel| root.join(rel));
    match (file.and_then(|f| fs::read(f).ok()), drip) {
        (Some(data), Some((how, interval))) => drip_answer(&mut stream, &data, how, interval),
        (Some(data), None) => respond(&mut stream, "200 OK", &data),
        (None, _) => respond(&mut stream, "404 Not Found", b"not found\n"),
    }
}

/// Writes a whole answer with `Content-Length` and `Connection: close`.
fn respond_now(stream: &mut TcpStream, status: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

/// `%XX` escapes decoded (`None` for a bad escape or a result that is not
/// UTF-8); `+` is left alone, as in a URL path.
pub fn percent_decode(path: &str) -> Option<String> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Answers with `data` one byte per `interval` for [`DRIP_FOR`] at most.
fn drip_answer(stream: &mut TcpStream, data: &[u8], how: Drip, interval: Duration) {
    let head = match how {
        Drip::Sized => format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            data.len()
        ),
        Drip::Endless => {
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_string()
        }
    };
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let start = std::time::Instant::now();
    let bytes = match how {
        Drip::Sized => data.len(),
        Drip::Endless => usize::MAX,
    };
    for &byte in data.iter().cycle().take(bytes) {
        if start.elapsed() > DRIP_FOR {
            return;
        }
        let sent = match how {
            Drip::Sized => stream.write_all(&[byte]),
            Drip::Endless => stream.write_all(&[b'1', b'\r', b'\n', byte, b'\r', b'\n']),
        };
        if sent.is_err() {
            return;
        }
        std::thread::sleep(interval);
    }
}

/// One package of a repository.
pub struct Deb {
    pub name: &'static str,
    pub version: &'static str,
    pub arch: &'static str,
    /// Its file under the repository root.
    pub pool: String,
    /// Its one data file: the path it installs (no leading `/`) and the bytes.
    pub file: (String, Vec<u8>),
}

impl Deb {
    /// The name `cbt teleport` gives it in a package cache.
    pub fn cache_name(&self) -> String {
        format!(
            "{}_{}_{}.deb",
            self.name,
            self.version.replace(':', "%3a"),
            self.arch
        )
    }

    /// `name:arch version`, as teleport reports name a package.
    pub fn id(&self) -> String {
        format!("{}:{} {}", self.name, self.arch, self.version)
    }

    /// URL path of the archive on a [`Server`].
    pub fn url_path(&self) -> String {
        format!("/debian/{}", self.pool)
    }

    /// Blocks of `block` bytes its data file fills.
    pub fn blocks(&self, block: u64) -> u64 {
        (self.file.1.len() as u64).div_ceil(block)
    }
}

/// The mirror tests' repository: three packages (one `Architecture: all`,
/// one with an epoch).
pub const MAIN_REPO: [(&str, &str, &str, usize); 3] = [
    ("hello", "1:2.0-1", "amd64", 40_000),
    ("tool", "0.5", "all", 9_000),
    ("libbar", "3.1-2", "amd64", 20_000),
];

/// Builds an apt repository in `<env>/<rel>` holding `specs` (name,
/// version, architecture, data bytes; `seed` varies the content), with
/// Packages plain/xz/gz and Release for suite `stable`, component `main`.
pub fn build_repo(
    env: &TestEnv,
    rel: &str,
    specs: &[(&'static str, &'static str, &'static str, usize)],
    seed: u64,
) -> (PathBuf, Vec<Deb>) {
    // Debian's pool names leave the epoch out.
    build_repo_named(env, rel, specs, seed, |name, version, arch| {
        let file_version = version.split_once(':').map_or(version, |(_, v)| v);
        format!("{name}_{file_version}_{arch}.deb")
    })
}

/// The name `apt-get download` gives an archive, which offline mirrors
/// built from downloads keep: the epoch's `:` written `%3a`, literally.
pub fn apt_download_name(name: &str, version: &str, arch: &str) -> String {
    format!("{name}_{}_{arch}.deb", version.replace(':', "%3a"))
}

/// [`build_repo`] with the archives' file names in the pool given by
/// `file_name(name, version, architecture)`.
pub fn build_repo_named(
    env: &TestEnv,
    rel: &str,
    specs: &[(&'static str, &'static str, &'static str, usize)],
    seed: u64,
    file_name: impl Fn(&str, &str, &str) -> String,
) -> (PathBuf, Vec<Deb>) {
    let repo = env.dir(rel);
    let mut debs = Vec::new();
    for (i, &(name, version, arch, len)) in specs.iter().enumerate() {
        let src = env.dir(&format!("pkgsrc/{rel}/{name}"));
        fs::create_dir_all(src.join("DEBIAN")).unwrap();
        fs::write(
            src.join("DEBIAN/control"),
            format!(
                "Package: {name}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: Test <t@example.invalid>\nDescription: test package\n"
            ),
        )
        .unwrap();
        let file = (
            format!("usr/share/{name}/data"),
            XorShift::new(seed + i as u64).bytes(len),
        );
        fs::create_dir_all(src.join("usr/share").join(name)).unwrap();
        fs::write(src.join(&file.0), &file.1).unwrap();
        let pool = format!(
            "pool/main/{}/{name}/{}",
            &name[..1],
            file_name(name, version, arch)
        );
        let deb = repo.join(&pool);
        fs::create_dir_all(deb.parent().unwrap()).unwrap();
        run_tool(
            Command::new(tool("dpkg-deb", "dpkg"))
                .args(["-Zxz", "--root-owner-group", "--build"])
                .arg(&src)
                .arg(&deb),
            "dpkg-deb",
        );
        debs.push(Deb {
            name,
            version,
            arch,
            pool,
            file,
        });
    }
    index_repo(&repo);
    (repo, debs)
}

/// (Re)writes the indexes of `repo` from the archives now in its pool.
pub fn index_repo(repo: &Path) {
    let bin = repo.join("dists/stable/main/binary-amd64");
    fs::create_dir_all(&bin).unwrap();
    let packages = run_tool(
        Command::new(tool("apt-ftparchive", "apt-utils"))
            .args(["packages", "pool"])
            .current_dir(repo),
        "apt-ftparchive packages",
    );
    fs::write(bin.join("Packages"), &packages).unwrap();
    for (compressor, package) in [("xz", "xz-utils"), ("gzip", "gzip")] {
        run_tool(
            Command::new(tool(compressor, package))
                .args(["-k", "-f"])
                .arg(bin.join("Packages")),
            compressor,
        );
    }
    write_release(repo);
}

/// (Re)writes `dists/stable/Release` of `repo` from the index files now
/// under `dists/stable`.
pub fn write_release(repo: &Path) {
    // Else the new Release lists the old one among its files.
    let _ = fs::remove_file(repo.join("dists/stable/Release"));
    let release = run_tool(
        Command::new(tool("apt-ftparchive", "apt-utils"))
            .args(["release", "dists/stable"])
            .current_dir(repo),
        "apt-ftparchive release",
    );
    fs::write(repo.join("dists/stable/Release"), release).unwrap();
}

/// What [`publish_translation`] added to a repository.
pub struct Published {
    /// `dists/stable/main/i18n/Translation-en`, as a guest keeps it.
    pub translation: Vec<u8>,
    /// Bytes of `Translation-en.xz`.
    pub translation_xz: u64,
    /// `dists/stable/InRelease`.
    pub in_release: Vec<u8>,
}

impl Published {
    /// Blocks of `block` bytes the guest's `Translation-en` fills.
    pub fn translation_blocks(&self, block: u64) -> u64 {
        (self.translation.len() as u64).div_ceil(block)
    }

    /// Blocks of `block` bytes the guest's `InRelease` fills.
    pub fn in_release_blocks(&self, block: u64) -> u64 {
        (self.in_release.len() as u64).div_ceil(block)
    }

    /// The guest's `/var/lib/apt/lists` files for them, named as apt names
    /// them for [`GUEST_SOURCE`].
    pub fn guest_lists(&self) -> Vec<(String, Vec<u8>)> {
        let dist = format!("{GUEST_SOURCE}/dists/stable");
        vec![
            (
                lists_name(&format!("{dist}/main/i18n/Translation-en")),
                self.translation.clone(),
            ),
            (lists_name(&format!("{dist}/InRelease")), self.in_release.clone()),
        ]
    }
}

/// Publishes in `repo` a `main/i18n/Translation-en` of at least
/// `min_bytes` (plain and `.xz`, generated from `seed`), indexes it in a
/// new Release, and writes an `InRelease`: the Release in a clearsigned
/// frame whose signature is fake (cbt checks none).
pub fn publish_translation(repo: &Path, seed: u64, min_bytes: usize) -> Published {
    let i18n = repo.join("dists/stable/main/i18n");
    fs::create_dir_all(&i18n).unwrap();
    let plain = i18n.join("Translation-en");
    let translation = translation_text(seed, min_bytes);
    fs::write(&plain, &translation).unwrap();
    run_tool(
        Command::new(tool("xz", "xz-utils"))
            .args(["-k", "-f"])
            .arg(&plain),
        "xz",
    );
    let _ = fs::remove_file(repo.join("dists/stable/InRelease"));
    index_repo(repo);
    let release = fs::read_to_string(repo.join("dists/stable/Release")).unwrap();
    assert!(
        release.contains(" main/i18n/Translation-en.xz\n"),
        "the Release lists no Translation:\n{release}"
    );
    let in_release = format!(
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n{release}\
         -----BEGIN PGP SIGNATURE-----\n\niQIzBAEBCgAdFiEEnot+a+real+signature+only+a+test=\n=fake\n\
         -----END PGP SIGNATURE-----\n"
    );
    fs::write(repo.join("dists/stable/InRelease"), &in_release).unwrap();
    Published {
        translation,
        translation_xz: fs::metadata(i18n.join("Translation-en.xz")).unwrap().len(),
        in_release: in_release.into_bytes(),
    }
}

/// Deterministic `Translation-en` text of at least `min_bytes`: stanzas
/// of made-up packages with a `Description-md5` and a long description
/// of pseudo-words (xz makes about a third of it).
fn translation_text(seed: u64, min_bytes: usize) -> Vec<u8> {
    const SYLLABLES: [&str; 24] = [
        "ba", "cor", "de", "fi", "gul", "ha", "ix", "jo", "ka", "lem", "mo", "nu", "pra", "qui", "ros",
        "sta", "tor", "ul", "ven", "wex", "yo", "zan", "ment", "ing",
    ];
    let mut rng = XorShift::new(seed);
    let word = |rng: &mut XorShift| -> String {
        (0..rng.range(1, 4))
            .map(|_| SYLLABLES[rng.range(0, SYLLABLES.len() as u64 - 1) as usize])
            .collect()
    };
    let mut out = String::new();
    let mut n = 0;
    while out.len() < min_bytes {
        let synopsis: Vec<String> = (0..rng.range(3, 7)).map(|_| word(&mut rng)).collect();
        let mut description = synopsis.join(" ") + "\n";
        for paragraph in 0..rng.range(1, 3) {
            if paragraph > 0 {
                description += " .\n";
            }
            for _ in 0..rng.range(2, 6) {
                let line: Vec<String> = (0..rng.range(6, 11)).map(|_| word(&mut rng)).collect();
                description += &format!(" {}\n", line.join(" "));
            }
        }
        out += &format!(
            "Package: {}{n}\nDescription-md5: {}\nDescription-en: {description}\n",
            word(&mut rng),
            md5_hex(description.as_bytes())
        );
        n += 1;
    }
    out.into_bytes()
}

/// apt's name for the list file of `url` in `/var/lib/apt/lists`, as cbt
/// names index files in a package cache: without the scheme, `/` as `_`.
pub fn lists_name(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.replace('/', "_")
}

/// Runs a tool, asserts it succeeded and returns its stdout.
pub fn run_tool(cmd: &mut Command, what: &str) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert_success(&out, what, &[]);
    out.stdout
}

/// What a guest holds.
pub struct GuestSpec<'a> {
    /// Packages installed: their data files, `.list`, `.md5sums` and status.
    pub installed: &'a [&'a Deb],
    /// More status entries (name, version, architecture) with no files.
    pub status_only: &'a [(&'a str, &'a str, &'a str)],
    /// Seed of the user data (pseudo-random files under /home), if any.
    pub user_data: Option<u64>,
    /// Files of `/var/lib/apt/lists` (name, bytes).
    pub apt_lists: &'a [(String, Vec<u8>)],
    /// Size of the ext4 filesystem.
    pub size_mib: u64,
}

/// A guest built from a [`GuestSpec`].
pub struct Guest {
    /// The unpacked tree.
    pub root: PathBuf,
    /// Its ext4 image.
    pub image: PathBuf,
    /// Bytes of its user data files.
    pub user_bytes: u64,
}

/// Writes the tree of a Debian 12 guest using suite `stable` into
/// `<env>/<rel>` and its ext4 image into `<env>/<rel>.img`.
pub fn guest_image(env: &TestEnv, rel: &str, spec: &GuestSpec<'_>) -> Guest {
    let root = env.dir(rel);
    for d in [
        "etc/apt",
        "usr/bin",
        "usr/lib",
        "var/lib/apt/lists",
        "var/lib/dpkg/info",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(
        root.join("etc/os-release"),
        "ID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Debian GNU/Linux 12\"\n",
    )
    .unwrap();
    fs::write(
        root.join("etc/apt/sources.list"),
        format!("deb {GUEST_SOURCE} stable main\n"),
    )
    .unwrap();
    for (name, data) in spec.apt_lists {
        fs::write(root.join("var/lib/apt/lists").join(name), data).unwrap();
    }
    let mut status = String::new();
    let mut add = |name: &str, version: &str, arch: &str| {
        status += &format!(
            "Package: {name}\nStatus: install ok installed\nArchitecture: {arch}\nVersion: {version}\nDescription: x\n\n"
        );
    };
    for d in spec.installed {
        add(d.name, d.version, d.arch);
        let (path, data) = &d.file;
        fs::create_dir_all(root.join(path).parent().unwrap()).unwrap();
        fs::write(root.join(path), data).unwrap();
        let info = root.join("var/lib/dpkg/info");
        fs::write(
            info.join(format!("{}.list", d.name)),
            format!("/.\n/usr\n/usr/share\n/usr/share/{0}\n/{path}\n", d.name),
        )
        .unwrap();
        fs::write(
            info.join(format!("{}.md5sums", d.name)),
            format!("{}  {path}\n", md5_hex(data)),
        )
        .unwrap();
    }
    for &(name, version, arch) in spec.status_only {
        add(name, version, arch);
    }
    fs::write(root.join("var/lib/dpkg/status"), status).unwrap();
    let user_bytes = spec
        .user_data
        .map_or(0, |seed| write_tree(&root.join("home/user"), seed, 8));
    let image = env.ext4(&root, &format!("{rel}.img"), spec.size_mib);
    Guest {
        root,
        image,
        user_bytes,
    }
}

/// The mirror tests' guest (`<env>/guest.img`): the repository's packages
/// installed, plus `dpkg` (not in the repository) and `newer` at a version
/// the repository lacks, in the status only.
pub fn build_guest(env: &TestEnv, debs: &[Deb]) -> PathBuf {
    let installed: Vec<&Deb> = debs.iter().collect();
    let spec = GuestSpec {
        installed: &installed,
        status_only: &[("dpkg", "1.21.22", "amd64"), ("newer", "9.9", "amd64")],
        user_data: None,
        apt_lists: &[],
        size_mib: 16,
    };
    guest_image(env, "guest", &spec).image
}

/// Repository, served, and guest image.
pub struct Setup {
    pub env: TestEnv,
    /// The repository's root (served as `server.url()`).
    pub repo: PathBuf,
    pub debs: Vec<Deb>,
    pub server: Server,
    pub guest: PathBuf,
    /// `<env>/debs`: the package cache to fill (not created).
    pub cache: PathBuf,
}

/// The mirror tests' set-up: [`MAIN_REPO`] served, and [`build_guest`].
pub fn setup() -> Setup {
    setup_with(&MAIN_REPO, |env, _, debs| build_guest(env, debs))
}

/// A repository of `specs` served, and the guest `guest` builds from its
/// packages (given the repository's root, to publish more in it first).
pub fn setup_with(
    specs: &[(&'static str, &'static str, &'static str, usize)],
    guest: impl FnOnce(&TestEnv, &Path, &[Deb]) -> PathBuf,
) -> Setup {
    let env = TestEnv::new();
    let (repo, debs) = build_repo(&env, "repo", specs, 1);
    let server = Server::start(&repo);
    let guest = guest(&env, &repo, &debs);
    let cache = env.root().join("debs");
    Setup {
        env,
        repo,
        debs,
        server,
        guest,
        cache,
    }
}

/// Proxy variables removed from every run (the tests talk to 127.0.0.1
/// directly unless a test sets one).
pub const PROXY_VARS: [&str; 8] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

impl Setup {
    /// `cbt --cache ... ARGS` without proxy variables, plus `vars`.
    pub fn command(&self, args: &[OsString], vars: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cbt"));
        cmd.arg("--cache")
            .arg(self.env.cache_dir())
            .args(args)
            .current_dir(self.env.root())
            .env_remove("CBT_LOG");
        for v in PROXY_VARS {
            cmd.env_remove(v);
        }
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `cbt --cache ... ARGS` without proxy variables, plus `vars`.
    pub fn cbt_with(&self, args: &[OsString], vars: &[(&str, &str)]) -> Output {
        self.command(args, vars).output().expect("run cbt")
    }

    pub fn cbt(&self, args: &[OsString]) -> Output {
        self.cbt_with(args, &[])
    }

    #[track_caller]
    pub fn cbt_ok(&self, args: &[OsString]) -> Output {
        let out = self.cbt(args);
        assert_success(&out, "cbt", args);
        out
    }

    /// Runs cbt with `--json` appended, asserts success, parses stdout.
    #[track_caller]
    pub fn cbt_json(&self, args: &[OsString]) -> Value {
        let mut full = args.to_vec();
        full.push("--json".into());
        json_of(&self.cbt_ok(&full))
    }

    #[track_caller]
    pub fn cbt_fail(&self, args: &[OsString]) -> Output {
        let out = self.cbt(args);
        assert_clean_failure(&out, args);
        out
    }

    /// Starts `cbt --cache ... ARGS` in the background, without proxy variables.
    pub fn spawn(&self, args: &[OsString]) -> Proc {
        Proc::start(&self.env, self.command(args, &[]), show(args))
    }

    /// Starts `cbt serve --listen 127.0.0.1:0 --data DATA EXTRA...` without
    /// proxy variables; the process and its address.
    pub fn daemon(&self, data: &Path, extra: &[OsString]) -> (Proc, String) {
        let mut a = args!["serve", "--listen", "127.0.0.1:0", "--data", data].to_vec();
        a.extend_from_slice(extra);
        let mut p = self.spawn(&a);
        let addr = p.addr();
        (p, addr)
    }

    /// File names in the package cache, sorted (none when it does not exist).
    pub fn cache_names(&self) -> Vec<String> {
        let mut names: Vec<String> = match fs::read_dir(&self.cache) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }

    /// Archives the mirror was asked for so far.
    pub fn pool_gets(&self) -> usize {
        self.server
            .seen()
            .iter()
            .filter(|r| r.starts_with("GET /debian/pool/"))
            .count()
    }

    /// `.deb` files in the package cache, sorted.
    pub fn cached_debs(&self) -> Vec<String> {
        self.cache_names()
            .into_iter()
            .filter(|n| n.ends_with(".deb"))
            .collect()
    }

    /// Asserts the cache holds exactly the archives of the packages not in
    /// `except`, byte for byte as the repository has them, and no
    /// temporary (hidden) file.
    #[track_caller]
    pub fn assert_cache_holds_all_but(&self, except: &[&str]) {
        let mut expected: Vec<String> = Vec::new();
        for d in self.debs.iter().filter(|d| !except.contains(&d.name)) {
            let cached = fs::read(self.cache.join(d.cache_name()))
                .unwrap_or_else(|e| panic!("{} not in the package cache: {e}", d.cache_name()));
            assert!(
                cached == fs::read(self.repo.join(&d.pool)).unwrap(),
                "{} differs from the repository's",
                d.cache_name()
            );
            expected.push(d.cache_name());
        }
        expected.sort();
        assert_eq!(self.cached_debs(), expected);
        let hidden: Vec<String> = self
            .cache_names()
            .into_iter()
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(hidden.is_empty(), "temporary files left: {hidden:?}");
    }
}

/// A mirror URL on 127.0.0.1 that nothing listens on.
pub fn dead_mirror_url() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}/debian")
}

/// Parses a run's stdout as JSON, showing stdout and stderr when it is not.
pub fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
