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

/// True if `err` is a closed standard output (and nothing else).
pub fn is_stdout_closed(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.is::<StdoutClosed>()
            || c.downcast_ref::<io::Error>()
                .and_then(|e| e.get_ref())
                .is_some_and(|inner| inner.is::<StdoutClosed>())
    })
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
}
