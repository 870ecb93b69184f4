//! Small network helpers the harness runs as child processes (`harness
//! helper ...`), usually inside one of the link's network namespaces:
//!
//! - [`relay`]: a TCP relay that delays every byte by a fixed time in each
//!   direction. This kernel has no `sch_netem`, so the round-trip time of the
//!   emulated link is added here: each chunk read is stamped with the time it
//!   may leave and sits in a queue until then. Every transfer tool connects
//!   through it, so an application-level round trip costs one RTT. The queue
//!   holds at most [`QUEUE_BYTES`] per direction; a full queue stops reading,
//!   which pushes back on the sender through TCP.
//! - [`inetd`] and [`connect`]: run a command with a TCP connection as its
//!   stdin and/or stdout (one accepted connection, or one made). `cat` under
//!   them is the plain full copy; `rsync --daemon` under `inetd` is an rsync
//!   daemon in inetd mode serving exactly one client.
//! - [`echo`] and [`rtt_probe`]: measure the round-trip time through the relay.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Bytes a relay direction may hold before it stops reading.
pub const QUEUE_BYTES: usize = 8 << 20;

#[derive(Default)]
struct Queue {
    chunks: VecDeque<(Instant, Vec<u8>)>,
    bytes: usize,
    eof: bool,
    dead: bool,
}

/// Copies `from` to `to`, each byte leaving `delay` after it arrived.
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let shared = Arc::new((Mutex::new(Queue::default()), Condvar::new()));
    let reader_side = Arc::clone(&shared);
    let from_clone = from.try_clone();
    let reader = std::thread::spawn(move || {
        let (lock, cv) = &*reader_side;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => 0,
                Ok(n) => n,
            };
            let Ok(mut q) = lock.lock() else { return };
            if n == 0 {
                q.eof = true;
                cv.notify_all();
                return;
            }
            let due = Instant::now() + delay;
            q.chunks.push_back((due, buf[..n].to_vec()));
            q.bytes += n;
            cv.notify_all();
            while q.bytes > QUEUE_BYTES && !q.dead {
                q = match cv.wait(q) {
                    Ok(q) => q,
                    Err(_) => return,
                };
            }
            if q.dead {
                return;
            }
        }
    });
    let (lock, cv) = &*shared;
    loop {
        let next = {
            let Ok(mut q) = lock.lock() else { break };
            loop {
                if let Some(c) = q.chunks.pop_front() {
                    q.bytes -= c.1.len();
                    cv.notify_all();
                    break Some(c);
                }
                if q.eof {
                    break None;
                }
                q = match cv.wait(q) {
                    Ok(q) => q,
                    Err(_) => return,
                };
            }
        };
        let Some((due, data)) = next else {
            let _ = to.shutdown(Shutdown::Write);
            break;
        };
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if to.write_all(&data).is_err() {
            if let Ok(mut q) = lock.lock() {
                q.dead = true;
                cv.notify_all();
            }
            if let Ok(f) = &from_clone {
                let _ = f.shutdown(Shutdown::Read);
            }
            break;
        }
    }
    let _ = reader.join();
}

/// Serves forever: every connection to a listen address of `maps` is relayed
/// to its upstream address, delayed by `one_way` in each direction. Prints
/// "relay: ready" on stderr once every listener is bound.
pub fn relay(maps: &[(String, String)], one_way: Duration) -> io::Result<()> {
    let mut handles = Vec::new();
    for (listen, upstream) in maps {
        let listener = TcpListener::bind(listen)
            .map_err(|e| io::Error::new(e.kind(), format!("relay: bind {listen}: {e}")))?;
        let upstream = upstream.clone();
        handles.push(std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                let upstream = upstream.clone();
                std::thread::spawn(move || {
                    let server = match TcpStream::connect(&upstream) {
                        Ok(s) => s,
                        Err(e) => {
                            eprintln!("relay: connect {upstream}: {e}");
                            return;
                        }
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                        return;
                    };
                    let up = std::thread::spawn(move || pump(client, server, one_way));
                    pump(s2, c2, one_way);
                    let _ = up.join();
                });
            }
        }));
    }
    eprintln!("relay: ready");
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn open_stdio(path: &Option<String>, write: bool) -> io::Result<Option<Stdio>> {
    match path {
        None => Ok(None),
        Some(p) if write => Ok(Some(Stdio::from(File::create(p)?))),
        Some(p) => Ok(Some(Stdio::from(File::open(p)?))),
    }
}

fn run_on(
    stream: TcpStream,
    stdin: &Option<String>,
    stdout: &Option<String>,
    command: &[String],
) -> io::Result<i32> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| io::Error::other("no command"))?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd.stdin(match open_stdio(stdin, false)? {
        Some(s) => s,
        None => Stdio::from(OwnedFd::from(stream.try_clone()?)),
    });
    cmd.stdout(match open_stdio(stdout, true)? {
        Some(s) => s,
        None => Stdio::from(OwnedFd::from(stream.try_clone()?)),
    });
    let mut child = cmd
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot start {program}: {e}")))?;
    // The child holds the only copies of the socket now: its exit closes it.
    drop(stream);
    drop(cmd);
    let status = child.wait()?;
    Ok(status.code().unwrap_or(1))
}

/// Accepts one connection on `listen` and runs `command` on it. Prints
/// "inetd: listening" on stderr once bound. Returns the command's exit code.
pub fn inetd(
    listen: &str,
    stdin: &Option<String>,
    stdout: &Option<String>,
    command: &[String],
) -> io::Result<i32> {
    let listener =
        TcpListener::bind(listen).map_err(|e| io::Error::new(e.kind(), format!("bind {listen}: {e}")))?;
    eprintln!("inetd: listening on {listen}");
    let (stream, _) = listener.accept()?;
    drop(listener);
    let _ = stream.set_nodelay(true);
    run_on(stream, stdin, stdout, command)
}

/// Connects to `to` (retrying for up to 10 s) and runs `command` on the
/// connection. Returns the command's exit code.
pub fn connect(
    to: &str,
    stdin: &Option<String>,
    stdout: &Option<String>,
    command: &[String],
) -> io::Result<i32> {
    let stream = connect_retry(to)?;
    run_on(stream, stdin, stdout, command)
}

fn connect_retry(to: &str) -> io::Result<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(to) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("connect {to}: {e}"))),
        }
    }
}

/// Echoes one connection back to its sender until EOF.
pub fn echo(listen: &str) -> io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    eprintln!("echo: listening on {listen}");
    let (mut stream, _) = listener.accept()?;
    let _ = stream.set_nodelay(true);
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n])?;
    }
}

/// Measures `count` round trips of one byte to an echo server; prints the
/// samples in milliseconds as a JSON array on stdout.
pub fn rtt_probe(to: &str, count: usize) -> io::Result<()> {
    let mut s = connect_retry(to)?;
    let mut samples = Vec::with_capacity(count);
    let mut b = [0u8; 1];
    for i in 0..count {
        let t = Instant::now();
        s.write_all(&[i as u8])?;
        s.read_exact(&mut b)?;
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    s.shutdown(Shutdown::Write)?;
    println!("{}", serde_json::to_string(&samples).map_err(io::Error::other)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pump_delays_and_forwards_eof() {
        let l_in = TcpListener::bind("127.0.0.1:0").expect("bind");
        let l_out = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut writer = TcpStream::connect(l_in.local_addr().expect("addr")).expect("connect");
        let (from, _) = l_in.accept().expect("accept");
        let to = TcpStream::connect(l_out.local_addr().expect("addr")).expect("connect");
        let (mut reader, _) = l_out.accept().expect("accept");
        let t = std::thread::spawn(move || pump(from, to, Duration::from_millis(30)));
        let start = Instant::now();
        writer.write_all(b"hello").expect("write");
        drop(writer);
        let mut got = Vec::new();
        reader.read_to_end(&mut got).expect("read");
        assert_eq!(got, b"hello");
        assert!(start.elapsed() >= Duration::from_millis(30));
        t.join().expect("pump");
    }
}
