//! An S3 server for the block-store tests: moto's (`moto_server`, a real
//! implementation of the S3 protocol), started on a free port of
//! 127.0.0.1 as a child process and killed when dropped; raw HTTP
//! requests to it (bucket creation, listings, object reads, overwrites and
//! deletions: moto does not check signatures); `cbt` runs with the AWS
//! credentials in their environment; and [`Gate`], a proxy in front of the
//! server that holds chosen requests, so a test can stop a push at an
//! exact step (a pack upload, its lease) and act while it waits there;
//! and [`Tap`], a listener that records every connection made to it (an
//! endpoint or metadata service that must not be contacted).
//!
//! moto is required, never optional: without `moto_server` the tests fail
//! with the command that installs it.
#![allow(clippy::unwrap_used)] // Test helpers fail loudly on any unexpected error.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::proc::show;
use super::TestEnv;

/// The access key id every `cbt` run gets unless a test chooses its own.
pub const ACCESS_KEY: &str = "AKIACBTSTORETEST0001";
/// The secret access key every `cbt` run gets unless a test chooses its own.
pub const SECRET_KEY: &str = "cbt-store-test-secret-0001";
/// The region the tests use.
pub const REGION: &str = "us-east-1";

/// What moto needs to take a request as an authenticated one (it checks
/// no signature): object reads and writes are refused anonymously.
const FAKE_AUTH: &str =
    "AWS4-HMAC-SHA256 Credential=AKIACBTSTORETEST0001/20260101/us-east-1/s3/aws4_request, \
                         SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=0000";

/// How long moto may take to answer its first request.
const STARTUP: Duration = Duration::from_secs(60);

/// A running `moto_server`, killed when dropped.
pub struct S3 {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// An object as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Its key (the full key, prefix included).
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Waits until the server at `addr` answers an HTTP request.
fn wait_ready(child: &mut Child, addr: SocketAddr) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("moto_server exited: {status}"));
        }
        if try_request(addr, "GET", "/", &[]).is_ok() {
            return Ok(());
        }
        if start.elapsed() > STARTUP {
            return Err(format!("no answer on {addr} after {STARTUP:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `moto_server` on `PATH`; panics with the command that installs it.
fn moto_server() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for d in std::env::split_paths(&path) {
        let p = d.join("moto_server");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`moto_server` not found on PATH: the block-store tests need a real S3 server; \
         install it with: pip install 'moto[server]'"
    );
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local address").port()
}

impl S3 {
    /// Starts moto on a free port and waits until it answers.
    pub fn start() -> S3 {
        let program = moto_server();
        let dir = tempfile::Builder::new()
            .prefix("cbt-moto-")
            .tempdir()
            .expect("create a directory for moto's log");
        let mut last = String::new();
        // The port may be taken between choosing and binding it: try again.
        for attempt in 0..3 {
            let port = free_port();
            let log = dir.path().join(format!("moto-{attempt}.log"));
            let file = std::fs::File::create(&log).expect("create moto's log");
            let mut child = Command::new(&program)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(file.try_clone().expect("log file"))
                .stderr(file)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run {} ({e}): install moto with: pip install 'moto[server]'",
                        program.display()
                    )
                });
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            match wait_ready(&mut child, addr) {
                Ok(()) => {
                    return S3 {
                        child,
                        addr,
                        log,
                        _dir: dir,
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    last = format!("{e}\n--- moto's log ---\n{text}");
                }
            }
        }
        panic!("moto_server did not start: {last}");
    }

    /// What moto printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The endpoint to give `--endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Creates bucket `name`.
    #[track_caller]
    pub fn create_bucket(&self, name: &str) {
        let (status, body) = self.request("PUT", &format!("/{name}"), &[]);
        assert_eq!(
            status,
            200,
            "create bucket {name}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    /// The objects of `bucket` whose keys start with `prefix`, by key.
    #[track_caller]
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<Object> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut target = format!("/{bucket}?list-type=2&prefix={}", encode(prefix));
            if let Some(t) = &token {
                target.push_str(&format!("&continuation-token={}", encode(t)));
            }
            let (status, body) = self.request("GET", &target, &[]);
            let xml = String::from_utf8_lossy(&body).into_owned();
            assert_eq!(status, 200, "list s3://{bucket}/{prefix}: {xml}");
            for contents in xml.split("<Contents>").skip(1) {
                let key = unescape(&between(contents, "<Key>", "</Key>").unwrap());
                let size = between(contents, "<Size>", "</Size>").unwrap().parse().unwrap();
                out.push(Object { key, size });
            }
            if between(&xml, "<IsTruncated>", "</IsTruncated>").as_deref() == Some("true") {
                token = between(&xml, "<NextContinuationToken>", "</NextContinuationToken>");
                assert!(token.is_some(), "a truncated listing without a token: {xml}");
            } else {
                break;
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// The bytes of an object; `None` if it does not exist.
    #[track_caller]
    pub fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let (status, body) = self.request("GET", &format!("/{bucket}/{}", encode_key(key)), &[]);
        match status {
            200 => Some(body),
            404 => None,
            _ => panic!(
                "GET s3://{bucket}/{key}: {status} {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }

    /// Writes (or overwrites) an object.
    #[track_caller]
    pub fn put(&self, bucket: &str, key: &str, data: &[u8]) {
        let (status, body) = self.request("PUT", &format!("/{bucket}/{}", encode_key(key)), data);
        assert_eq!(
            status,
            200,
            "PUT s3://{bucket}/{key}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(
            self.get(bucket, key).as_deref(),
            Some(data),
            "PUT s3://{bucket}/{key} did not store the bytes sent"
        );
    }

    /// Deletes an object.
    #[track_caller]
    pub fn delete(&self, bucket: &str, key: &str) {
        let (status, body) = self.request("DELETE", &format!("/{bucket}/{}", encode_key(key)), &[]);
        assert!(
            status == 204 || status == 200,
            "DELETE s3://{bucket}/{key}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        assert!(
            self.get(bucket, key).is_none(),
            "s3://{bucket}/{key} still exists"
        );
    }

    #[track_caller]
    fn request(&self, method: &str, target: &str, body: &[u8]) -> (u16, Vec<u8>) {
        try_request(self.addr, method, target, body).unwrap_or_else(|e| {
            panic!(
                "{method} {target} to moto at {}: {e}\n--- moto's log ---\n{}",
                self.addr,
                self.log()
            )
        })
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request (the connection closed after it): status and body.
fn try_request(addr: SocketAddr, method: &str, target: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {FAKE_AUTH}\r\n\
         x-amz-date: 20260101T000000Z\r\nx-amz-content-sha256: UNSIGNED-PAYLOAD\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw).ok_or_else(|| {
        std::io::Error::other(format!(
            "not an HTTP response: {:?}",
            String::from_utf8_lossy(&raw)
        ))
    })
}

fn parse_response(raw: &[u8]) -> Option<(u16, Vec<u8>)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut length = None;
    let mut chunked = false;
    for l in lines {
        let (name, value) = l.split_once(':')?;
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        if name == "content-length" {
            length = value.parse::<usize>().ok();
        } else if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let line_end = at + rest[at..].windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[at..line_end]).ok()?.trim(), 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(at..at + size)?);
            at += size + 2;
        }
        out
    } else if let Some(n) = length {
        rest.get(..n)?.to_vec()
    } else {
        rest.to_vec()
    };
    Some((status, body))
}

fn between(text: &str, open: &str, close: &str) -> Option<String> {
    let start = text.find(open)? + open.len();
    let end = start + text[start..].find(close)?;
    Some(text[start..end].to_string())
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Percent-encodes everything but the unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Percent-encodes a key, keeping its `/`.
fn encode_key(key: &str) -> String {
    key.split('/').map(encode).collect::<Vec<_>>().join("/")
}

/// `cbt --cache <env cache> ARGS...` with the test credentials (and no
/// other AWS setting or proxy from the caller's environment).
pub fn cbt_command(env: &TestEnv, args: &[OsString]) -> Command {
    cbt_command_as(env, ACCESS_KEY, SECRET_KEY, args)
}

/// [`cbt_command`] with these credentials.
pub fn cbt_command_as(env: &TestEnv, access_key: &str, secret_key: &str, args: &[OsString]) -> Command {
    cbt_command_with(
        env,
        &[
            ("AWS_ACCESS_KEY_ID", access_key),
            ("AWS_SECRET_ACCESS_KEY", secret_key),
            ("AWS_REGION", REGION),
        ],
        args,
    )
}

/// `cbt --cache <env cache> ARGS...` with exactly these `AWS_*` variables
/// (none of the caller's, no proxy).
pub fn cbt_command_with(env: &TestEnv, vars: &[(&str, &str)], args: &[OsString]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cbt"));
    cmd.arg("--cache").arg(env.cache_dir()).args(args);
    for (k, _) in std::env::vars_os() {
        let name = k.to_string_lossy();
        if name.starts_with("AWS_") || name.to_ascii_lowercase().ends_with("_proxy") {
            cmd.env_remove(&k);
        }
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.env_remove("CBT_LOG")
        .current_dir(env.root())
        .stdin(Stdio::null());
    cmd
}

/// A listener on 127.0.0.1 that records every connection made to it (the
/// first line of what was sent on it, if any) and answers each with
/// `403 Forbidden`, so that a client that should never have come fails
/// at once instead of waiting.
pub struct Tap {
    listener: TcpListener,
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    closed: Arc<Mutex<bool>>,
}

impl Tap {
    /// A new listener, answering in a thread of its own.
    pub fn start() -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a tap");
        listener.set_nonblocking(true).expect("non-blocking tap");
        let addr = listener.local_addr().expect("tap address");
        let tap = Tap {
            listener: listener.try_clone().expect("clone the tap"),
            addr,
            seen: Arc::new(Mutex::new(Vec::new())),
            closed: Arc::new(Mutex::new(false)),
        };
        let (seen, closed) = (Arc::clone(&tap.seen), Arc::clone(&tap.closed));
        std::thread::spawn(move || {
            while !*closed.lock().unwrap() {
                match listener.accept() {
                    Ok((conn, _)) => Tap::answer(conn, &seen),
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        tap
    }

    /// Records one connection, reads its request head (briefly) and
    /// refuses it.
    fn answer(mut conn: TcpStream, seen: &Arc<Mutex<Vec<String>>>) {
        let at = {
            let mut s = seen.lock().unwrap();
            s.push(String::new());
            s.len() - 1
        };
        let seen = Arc::clone(seen);
        std::thread::spawn(move || {
            let _ = conn.set_nonblocking(false);
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                match conn.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let text = String::from_utf8_lossy(&head);
            let line = text.lines().next().unwrap_or("(nothing sent)").to_string();
            seen.lock().unwrap()[at] = line;
            let _ =
                conn.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = conn.shutdown(Shutdown::Both);
        });
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every connection made so far (a client that has exited made all
    /// of its own: those still waiting to be accepted are taken here), as
    /// the first line sent on it.
    pub fn seen(&self) -> Vec<String> {
        while let Ok((conn, _)) = self.listener.accept() {
            Tap::answer(conn, &self.seen);
        }
        // Let the answering threads read what was sent.
        let start = Instant::now();
        while self.seen.lock().unwrap().iter().any(String::is_empty)
            && start.elapsed() < Duration::from_secs(3)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        *self.closed.lock().unwrap() = true;
    }
}

/// Runs `cmd` to completion (at most `super::proc::HANG`).
pub fn run(mut cmd: Command, what: &str) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run cbt {what}: {e}"));
    // Read both pipes while waiting, with a bound on the whole run.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for cbt") {
            break s;
        }
        if start.elapsed() > super::proc::HANG {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cbt {what} did not finish in {:?} (a hang)", super::proc::HANG);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// Runs `cbt ARGS...` with the test credentials.
pub fn cbt(env: &TestEnv, args: &[OsString]) -> Output {
    run(cbt_command(env, args), &show(args))
}

/// Runs `cbt ARGS...` and asserts it succeeded.
#[track_caller]
pub fn cbt_ok(env: &TestEnv, args: &[OsString]) -> Output {
    let out = cbt(env, args);
    super::assert_success(&out, "cbt", args);
    out
}

/// Runs `cbt ARGS... --json`, asserts it succeeded and parses its output.
#[track_caller]
pub fn cbt_json(env: &TestEnv, args: &[OsString]) -> Value {
    let mut full = args.to_vec();
    full.push("--json".into());
    let out = cbt_ok(env, &full);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "cbt {}: stdout is not JSON ({e}):\n{}",
            show(&full),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// What a [`Gate`] does with the requests it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Matching requests wait.
    Hold,
    /// Everything goes through.
    Forward,
    /// Matching requests (waiting or new) are dropped unanswered.
    Discard,
}

#[derive(Debug)]
struct GateState {
    /// Method and a piece of the target the held requests have.
    rule: Option<(String, String)>,
    /// Matching requests still let through before holding starts.
    pass: usize,
    mode: Mode,
    /// Requests waiting now.
    held: usize,
    /// Every request seen, as "METHOD target".
    seen: Vec<String>,
    closed: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<GateState>,
    changed: Condvar,
}

/// An HTTP proxy on 127.0.0.1 in front of an S3 server that can hold
/// chosen requests (every request goes on a connection of its own, so
/// each one is seen). Dropping it drops the requests it holds.
pub struct Gate {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Gate {
    /// A proxy to `upstream` that lets everything through until told otherwise.
    pub fn start(upstream: SocketAddr) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the gate");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let addr = listener.local_addr().expect("gate address");
        let shared = Arc::new(Shared {
            state: Mutex::new(GateState {
                rule: None,
                pass: 0,
                mode: Mode::Forward,
                held: 0,
                seen: Vec::new(),
                closed: false,
            }),
            changed: Condvar::new(),
        });
        let s = Arc::clone(&shared);
        std::thread::spawn(move || loop {
            if s.state.lock().unwrap().closed {
                return;
            }
            match listener.accept() {
                Ok((conn, _)) => {
                    let s = Arc::clone(&s);
                    std::thread::spawn(move || {
                        let _ = proxy_one(conn, upstream, &s);
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        });
        Gate { addr, shared }
    }

    /// The endpoint to give `--endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Holds the requests with `method` whose target contains `needle`,
    /// after letting the next `pass` of them through.
    pub fn hold(&self, method: &str, needle: &str, pass: usize) {
        let mut st = self.shared.state.lock().unwrap();
        st.rule = Some((method.to_string(), needle.to_string()));
        st.pass = pass;
        st.mode = Mode::Hold;
        self.shared.changed.notify_all();
    }

    /// Lets the held requests (and all later ones) through.
    pub fn open(&self) {
        let mut st = self.shared.state.lock().unwrap();
        st.mode = Mode::Forward;
        self.shared.changed.notify_all();
    }

    /// Drops the held requests (and later matching ones) unanswered.
    pub fn discard(&self) {
        let mut st = self.shared.state.lock().unwrap();
        st.mode = Mode::Discard;
        self.shared.changed.notify_all();
    }

    /// Requests waiting now.
    pub fn held(&self) -> usize {
        self.shared.state.lock().unwrap().held
    }

    /// Every request seen so far, as "METHOD target".
    pub fn seen(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().seen.clone()
    }

    /// Waits until at least `n` requests are held.
    #[track_caller]
    pub fn wait_held(&self, n: usize, limit: Duration) {
        let start = Instant::now();
        let mut st = self.shared.state.lock().unwrap();
        while st.held < n {
            let left = limit.checked_sub(start.elapsed()).unwrap_or_else(|| {
                panic!(
                    "the gate holds {} requests, not {n}, after {limit:?}; seen:\n{}",
                    st.held,
                    st.seen.join("\n")
                )
            });
            st = self.shared.changed.wait_timeout(st, left).unwrap().0;
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock().unwrap();
        st.mode = Mode::Discard;
        st.closed = true;
        self.shared.changed.notify_all();
    }
}

/// Carries one request from `client` to `upstream` (holding it if the
/// gate says so) and the response back.
fn proxy_one(mut client: TcpStream, upstream: SocketAddr, shared: &Shared) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    // The request head, byte by byte up to the blank line.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
    let request_line = lines.next().unwrap_or_default().to_string();
    let mut parts = request_line.split(' ');
    let (method, target) = (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
    );
    let mut forwarded = format!("{request_line}\r\n");
    let mut length = 0usize;
    for l in lines {
        let name = l
            .split(':')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if name == "connection" || name == "keep-alive" {
            continue;
        }
        if name == "transfer-encoding" {
            return Err(std::io::Error::other(
                "the gate does not forward chunked requests",
            ));
        }
        if name == "content-length" {
            length = l.split_once(':').unwrap().1.trim().parse().unwrap_or(0);
        }
        forwarded.push_str(l);
        forwarded.push_str("\r\n");
    }
    forwarded.push_str("Connection: close\r\n\r\n");
    let mut body = vec![0u8; length];
    client.read_exact(&mut body)?;
    {
        let mut st = shared.state.lock().unwrap();
        st.seen.push(format!("{method} {target}"));
        let matches = st
            .rule
            .as_ref()
            .is_some_and(|(m, n)| *m == method && target.contains(n.as_str()));
        if matches && st.mode != Mode::Forward {
            if st.pass > 0 && st.mode == Mode::Hold {
                st.pass -= 1;
            } else {
                st.held += 1;
                shared.changed.notify_all();
                while st.mode == Mode::Hold {
                    st = shared.changed.wait(st).unwrap();
                }
                st.held -= 1;
                shared.changed.notify_all();
                if st.mode == Mode::Discard {
                    drop(st);
                    let _ = client.shutdown(Shutdown::Both);
                    return Ok(());
                }
            }
        }
    }
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(forwarded.as_bytes())?;
    up.write_all(&body)?;
    std::io::copy(&mut up, &mut client)?;
    client.shutdown(Shutdown::Both)?;
    Ok(())
}
