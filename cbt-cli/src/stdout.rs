//! Standard output for results. A reader that stops early (`cbt ... | head`)
//! closes the pipe; that is not a failure of cbt, so writes here mark such
//! an error as [`StdoutClosed`], and `main` treats exactly that one as
//! success. A broken pipe anywhere else (a socket to a peer that died) is a
//! failed transfer and must never look like success.

use std::io::{self, StdoutLock, Write};

/// Marks an error as "stdout was closed by its reader".
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Locked standard output whose broken-pipe errors are marked.
pub struct Stdout(StdoutLock<'static>);

/// Standard output, for results.
pub fn stdout() -> Stdout {
    Stdout(io::stdout().lock())
}

fn mark(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        io::Error::new(io::ErrorKind::BrokenPipe, StdoutClosed)
    } else {
        e
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).map_err(mark)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().map_err(mark)
    }
}

/// Prints `value` as pretty JSON and a newline on standard output.
///
/// serde_json wraps write errors in its own type, whose `source()` skips
/// the marked `io::Error`; converting back to `io::Error` unwraps the
/// original, so a reader that closed the pipe stays recognisable.
pub fn print_json<T: serde::Serialize + ?Sized>(value: &T) -> io::Result<()> {
    let mut out = stdout();
    serde_json::to_writer_pretty(&mut out, value).map_err(io::Error::from)?;
    writeln!(out)?;
    out.flush()
}

/// True if `err` is a closed standard output (and nothing else).
pub fn is_stdout_closed(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.is::<StdoutClosed>()
            || c.downcast_ref::<io::Error>()
                .and_then(|e| e.get_ref())
                .is_some_and(|inner| inner.is::<StdoutClosed>())
    })
}

/// `1 archive`, `2 archives`: a count with its noun in the right number.
pub fn counted(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_closed_stdout_counts() {
        let socket = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe)).context("send to peer");
        assert!(!is_stdout_closed(&socket));
        let out = anyhow::Error::new(mark(io::Error::from(io::ErrorKind::BrokenPipe))).context("print");
        assert!(is_stdout_closed(&out));
        let other = anyhow::Error::new(mark(io::Error::from(io::ErrorKind::Other)));
        assert!(!is_stdout_closed(&other));
    }

    #[test]
    fn a_closed_stdout_survives_serde_json() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(mark(io::Error::from(io::ErrorKind::BrokenPipe)))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let e = serde_json::to_writer(Closed, &[1, 2, 3]).unwrap_err();
        let wrapped = anyhow::Error::new(e);
        assert!(!is_stdout_closed(&wrapped), "serde_json hides the marker");
        let e = serde_json::to_writer(Closed, &[1, 2, 3]).unwrap_err();
        let unwrapped = anyhow::Error::new(io::Error::from(e)).context("print");
        assert!(is_stdout_closed(&unwrapped));
    }
}
