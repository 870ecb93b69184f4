//! Running one side of a transfer: a child process (possibly inside a network
//! namespace) under `/usr/bin/time`, so that its CPU time and peak resident
//! set come from the kernel's `wait4` accounting of that very process and its
//! children, not from the tool's own report.
//!
//! Stdout is collected; stderr is collected too, line by line, so that the
//! harness can wait for a "listening" line before it starts the other side.

use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The `/usr/bin/time` binary (GNU time; Debian package `time`).
pub const GNU_TIME: &str = "/usr/bin/time";

/// CPU time and memory of one process tree, as `wait4` reported it.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Usage {
    /// User CPU seconds.
    pub user_s: f64,
    /// System CPU seconds.
    pub sys_s: f64,
    /// Peak resident set in KiB (the largest of the process and its waited-for children).
    pub max_rss_kib: u64,
}

impl Usage {
    /// User plus system CPU seconds.
    pub fn cpu_s(&self) -> f64 {
        self.user_s + self.sys_s
    }

    /// Parses the last line of a file written by `time -f "%U %S %M"`
    /// (GNU time puts "Command exited with non-zero status N" before it).
    pub fn parse(text: &str) -> Option<Usage> {
        let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
        let mut it = line.split_whitespace();
        Some(Usage {
            user_s: it.next()?.parse().ok()?,
            sys_s: it.next()?.parse().ok()?,
            max_rss_kib: it.next()?.parse().ok()?,
        })
    }
}

/// What a finished side returned.
#[derive(Debug)]
pub struct Finished {
    /// Exit status of the wrapped command (through `time`).
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
    /// Resource usage, if `time` wrote it.
    pub usage: Option<Usage>,
    /// When it was seen to exit.
    pub ended: Instant,
}

impl Finished {
    /// An error naming `what` unless the command exited with status 0.
    pub fn check(&self, what: &str) -> io::Result<()> {
        if self.status.success() {
            Ok(())
        } else {
            let tail: String = self
                .stderr
                .lines()
                .rev()
                .take(8)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            Err(io::Error::other(format!(
                "{what} failed ({}):\n{tail}",
                self.status
            )))
        }
    }
}

/// A running side.
pub struct Side {
    child: Child,
    time_file: PathBuf,
    lines: Receiver<String>,
    stderr_seen: Vec<String>,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<()>>,
}

/// Builds the command line `prefix... /usr/bin/time -o FILE -f FMT program args...`.
pub fn timed_command(prefix: &[String], time_file: &Path, program: &str, args: &[String]) -> Command {
    let mut all: Vec<String> = prefix.to_vec();
    all.extend([
        GNU_TIME.to_string(),
        "-o".into(),
        time_file.display().to_string(),
        "-f".into(),
        "%U %S %M".into(),
        program.to_string(),
    ]);
    all.extend(args.iter().cloned());
    let mut cmd = Command::new(&all[0]);
    cmd.args(&all[1..]);
    cmd
}

impl Side {
    /// Starts `program args` under `time` (after `prefix`, e.g. `ip netns exec NS`),
    /// its resource usage going to `time_file`.
    pub fn spawn(prefix: &[String], time_file: &Path, program: &str, args: &[String]) -> io::Result<Side> {
        let _ = std::fs::remove_file(time_file);
        Self::start(
            timed_command(prefix, time_file, program, args),
            time_file,
            program,
        )
    }

    /// Starts `prefix... program args` without `time` (killing the [`Side`]
    /// then kills the program itself).
    pub fn spawn_untimed(prefix: &[String], program: &str, args: &[String]) -> io::Result<Side> {
        let mut all: Vec<String> = prefix.to_vec();
        all.push(program.to_string());
        all.extend(args.iter().cloned());
        let mut cmd = Command::new(&all[0]);
        cmd.args(&all[1..]);
        Self::start(cmd, Path::new("/nonexistent"), program)
    }

    fn start(mut cmd: Command, time_file: &Path, program: &str) -> io::Result<Side> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {program}: {e}")))?;
        let mut out = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout pipe"))?;
        let err = child
            .stderr
            .take()
            .ok_or_else(|| io::Error::other("no stderr pipe"))?;
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let (tx, lines) = mpsc::channel();
        let stderr = std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Side {
            child,
            time_file: time_file.to_path_buf(),
            lines,
            stderr_seen: Vec::new(),
            stdout: Some(stdout),
            stderr: Some(stderr),
        })
    }

    /// Waits until a line of stderr contains `needle`.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.stderr_seen.push(line);
                    if hit {
                        return Ok(());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(io::Error::other(format!(
                        "no \"{needle}\" within {timeout:?}; stderr so far:\n{}",
                        self.stderr_seen.join("\n")
                    )))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(io::Error::other(format!(
                        "exited before printing \"{needle}\"; stderr:\n{}",
                        self.stderr_seen.join("\n")
                    )))
                }
            }
        }
    }

    /// Waits for the process and collects its output and usage.
    pub fn wait(mut self) -> io::Result<Finished> {
        let status = self.child.wait()?;
        let ended = Instant::now();
        let stdout = self.stdout.take().and_then(|h| h.join().ok()).unwrap_or_default();
        if let Some(h) = self.stderr.take() {
            let _ = h.join();
        }
        self.stderr_seen.extend(self.lines.try_iter());
        let usage = std::fs::read_to_string(&self.time_file)
            .ok()
            .and_then(|t| Usage::parse(&t));
        Ok(Finished {
            status,
            stdout,
            stderr: self.stderr_seen.join("\n"),
            usage,
            ended,
        })
    }

    /// Kills the process (by its id) and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command to completion and returns its stdout; an error carries stderr.
pub fn run(cmd: &mut Command) -> io::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot start {:?}: {e}", cmd.get_program())))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{:?} {:?} failed ({}): {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `program` can be found on `PATH` (or is an existing path).
pub fn have(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gnu_time_output() {
        let u = Usage::parse("Command exited with non-zero status 1\n0.52 0.10 20480\n").expect("parses");
        assert_eq!(u.max_rss_kib, 20480);
        assert!((u.cpu_s() - 0.62).abs() < 1e-9);
        assert_eq!(Usage::parse(""), None);
    }
}
