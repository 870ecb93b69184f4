//! A connection: frames read into a `BytesMut` and written through a
//! `BufWriter`, byte counters for the summary, an optional token bucket on
//! writes (`--bwlimit`), and, once the handshake is done, a [`Link`]: a
//! reader task and a writer task joined to the transfer logic by channels.
//!
//! The reader task always drains the socket into an unbounded channel; what
//! keeps that channel small is the protocol's windows (the receiver grants
//! credit for groups and bounds its block requests; the sender answers only
//! what was asked). Because neither side ever stops reading, two writers
//! blocked on full sockets cannot wait on each other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::frame::{self, Decoded, Frame, PREAMBLE_LEN};

/// Bytes sent and received on one connection (headers included).
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes written to the socket.
    pub sent: AtomicU64,
    /// Bytes read from the socket.
    pub received: AtomicU64,
    /// True while the writer task is writing frames out (false while it
    /// waits for one): with the socket's buffer full it stays true, the
    /// sign that the link, not the sender, is what frames wait for.
    pub writing: std::sync::atomic::AtomicBool,
}

/// Asks running transfers to stop; cloned into every task that must notice.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// The other end of [`Shutdown`].
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

impl ShutdownTrigger {
    /// Tells every [`Shutdown`] to stop.
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }

    /// A new receiver.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    /// A trigger and its first receiver.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger(tx), Shutdown(rx))
    }

    /// A receiver that never fires.
    pub fn never() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        // Keep the sender alive forever so `wait` never returns.
        std::mem::forget(tx);
        Shutdown(rx)
    }

    /// True once shutdown was asked for (usable from blocking code).
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves when shutdown is asked for.
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|v| *v).await;
    }
}

/// A token bucket limiting the bytes per second written.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// At most `bytes_per_second` on average, in bursts of about 50 ms.
    pub fn new(bytes_per_second: u64) -> Self {
        let rate = bytes_per_second.max(1) as f64;
        let burst = (rate / 20.0).max(16384.0);
        RateLimiter {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes `n` tokens, sleeping while the bucket is in debt.
    pub async fn take(&mut self, n: usize) {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        self.tokens -= n as f64;
        if self.tokens < 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(-self.tokens / self.rate)).await;
        }
    }
}

/// Reads frames from a byte stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    counters: Arc<Counters>,
    peer: String,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps `inner`, counting bytes into `counters`.
    pub fn new(inner: R, counters: Arc<Counters>, peer: String) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(64 * 1024),
            counters,
            peer,
        }
    }

    /// Reads and checks the peer's preamble.
    pub async fn read_preamble(&mut self) -> Result<()> {
        while self.buf.len() < PREAMBLE_LEN {
            if self.fill().await? == 0 {
                return Err(Error::Closed {
                    peer: self.peer.clone(),
                });
            }
        }
        let mut p = [0u8; PREAMBLE_LEN];
        p.copy_from_slice(&self.buf.split_to(PREAMBLE_LEN));
        frame::check_preamble(&p).map_err(|source| Error::Frame {
            peer: self.peer.clone(),
            source,
        })
    }

    async fn fill(&mut self) -> Result<usize> {
        let n = self
            .inner
            .read_buf(&mut self.buf)
            .await
            .map_err(|e| Error::io(self.peer.clone(), "read", e))?;
        self.counters.received.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    /// The next frame; `Ok(None)` when the peer closed the connection
    /// cleanly between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>> {
        loop {
            match frame::decode(&mut self.buf).map_err(|source| Error::Frame {
                peer: self.peer.clone(),
                source,
            })? {
                Decoded::Frame(f) => return Ok(Some(f)),
                Decoded::Incomplete(total) => {
                    // The header was checked, so `total` is bounded.
                    self.buf.reserve(total.saturating_sub(self.buf.len()));
                }
            }
            if self.fill().await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(Error::Closed {
                        peer: self.peer.clone(),
                    })
                };
            }
        }
    }

    /// Like [`FrameReader::read_frame`], failing after `idle` without a
    /// whole frame, and treating a clean close as [`Error::Closed`].
    pub async fn expect_frame(&mut self, idle: Duration) -> Result<Frame> {
        match tokio::time::timeout(idle, self.read_frame()).await {
            Ok(Ok(Some(f))) => Ok(f),
            Ok(Ok(None)) => Err(Error::Closed {
                peer: self.peer.clone(),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Timeout {
                peer: self.peer.clone(),
                seconds: idle.as_secs(),
            }),
        }
    }
}

/// Writes frames to a byte stream through a buffer.
#[derive(Debug)]
pub struct FrameWriter<W: AsyncWrite> {
    inner: BufWriter<W>,
    buf: BytesMut,
    counters: Arc<Counters>,
    limiter: Option<RateLimiter>,
    peer: String,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps `inner`, counting bytes into `counters`.
    pub fn new(inner: W, counters: Arc<Counters>, peer: String) -> Self {
        FrameWriter {
            inner: BufWriter::with_capacity(256 * 1024, inner),
            buf: BytesMut::new(),
            counters,
            limiter: None,
            peer,
        }
    }

    /// Limits the write rate (bytes per second).
    pub fn set_rate_limit(&mut self, bytes_per_second: Option<u64>) {
        self.limiter = bytes_per_second.map(RateLimiter::new);
    }

    /// Sends our preamble (and flushes it).
    pub async fn write_preamble(&mut self) -> Result<()> {
        let p = frame::preamble();
        self.write_raw_now(&p).await
    }

    /// Writes raw bytes and flushes (also used by tests to send garbage).
    pub async fn write_raw_now(&mut self, bytes: &[u8]) -> Result<()> {
        self.put(bytes).await?;
        self.flush().await
    }

    async fn put(&mut self, bytes: &[u8]) -> Result<()> {
        if let Some(l) = self.limiter.as_mut() {
            l.take(bytes.len()).await;
        }
        self.inner
            .write_all(bytes)
            .await
            .map_err(|e| Error::io(self.peer.clone(), "write", e))?;
        self.counters
            .sent
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Buffers one frame (call [`FrameWriter::flush`] to push it out).
    pub async fn write_frame(&mut self, f: &Frame) -> Result<()> {
        self.buf.clear();
        f.encode(&mut self.buf)
            .map_err(|e| Error::protocol(self.peer.clone(), format!("cannot encode {}: {e}", f.name())))?;
        let bytes = std::mem::take(&mut self.buf);
        let r = self.put(&bytes).await;
        self.buf = bytes;
        r
    }

    /// Writes one frame and flushes.
    pub async fn send(&mut self, f: &Frame) -> Result<()> {
        self.write_frame(f).await?;
        self.flush().await
    }

    /// Pushes buffered bytes to the socket.
    pub async fn flush(&mut self) -> Result<()> {
        self.inner
            .flush()
            .await
            .map_err(|e| Error::io(self.peer.clone(), "write", e))
    }

    /// Flushes and closes the write direction.
    pub async fn shutdown(&mut self) -> Result<()> {
        self.inner
            .shutdown()
            .await
            .map_err(|e| Error::io(self.peer.clone(), "close", e))
    }
}

/// Timing of a link.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Fail when nothing arrives for this long.
    pub idle: Duration,
    /// Send a keepalive when nothing was sent for this long.
    pub keepalive: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            idle: Duration::from_secs(120),
            keepalive: Duration::from_secs(10),
        }
    }
}

/// Frames queued for the writer task at most (each at most 2 MiB).
const OUTGOING_QUEUE: usize = 64;

/// An established connection after the handshake: frames in, frames out.
#[derive(Debug)]
pub struct Link {
    /// Frames from the peer (keepalives removed); ends with an error or
    /// when the peer closes.
    pub incoming: mpsc::UnboundedReceiver<Result<Frame>>,
    /// Frames to the peer; dropping every sender closes the connection
    /// once they are written.
    pub outgoing: mpsc::Sender<Frame>,
    /// Byte counters.
    pub counters: Arc<Counters>,
    /// The peer's address.
    pub peer: String,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Link {
    /// Starts the reader and writer tasks.
    pub fn spawn<R, W>(
        mut reader: FrameReader<R>,
        mut writer: FrameWriter<W>,
        timeouts: Timeouts,
        shutdown: Shutdown,
    ) -> Link
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let counters = Arc::clone(&reader.counters);
        let peer = reader.peer.clone();
        let (in_tx, incoming) = mpsc::unbounded_channel();
        let (outgoing, mut out_rx) = mpsc::channel::<Frame>(OUTGOING_QUEUE);
        let write_errors = in_tx.clone();
        let flag = Arc::clone(&counters);
        let mut stop = shutdown.clone();
        let reader = tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    r = reader.expect_frame(timeouts.idle) => r,
                    _ = stop.wait() => Err(Error::Cancelled),
                };
                match next {
                    Ok(Frame::Keepalive) => {}
                    Ok(f) => {
                        if in_tx.send(Ok(f)).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = in_tx.send(Err(e));
                        break;
                    }
                }
            }
        });
        let writer = tokio::spawn(async move {
            let result: Result<()> = async {
                loop {
                    match tokio::time::timeout(timeouts.keepalive, out_rx.recv()).await {
                        Ok(Some(f)) => {
                            flag.writing.store(true, Ordering::Relaxed);
                            writer.write_frame(&f).await?;
                            // Write what is queued, then flush once.
                            while let Ok(f) = out_rx.try_recv() {
                                writer.write_frame(&f).await?;
                            }
                            writer.flush().await?;
                            flag.writing.store(false, Ordering::Relaxed);
                        }
                        Ok(None) => {
                            writer.flush().await?;
                            let _ = writer.shutdown().await;
                            return Ok(());
                        }
                        Err(_) => writer.send(&Frame::Keepalive).await?,
                    }
                }
            }
            .await;
            if let Err(e) = result {
                let _ = write_errors.send(Err(e));
            }
        });
        Link {
            incoming,
            outgoing,
            counters,
            peer,
            reader,
            writer,
        }
    }

    /// Closes our side: waits until everything queued was written (at most
    /// `limit`), then stops the reader.
    pub async fn close(self, limit: Duration) {
        let Link {
            outgoing,
            reader,
            writer,
            ..
        } = self;
        drop(outgoing);
        let _ = tokio::time::timeout(limit, writer).await;
        reader.abort();
    }

    /// After the connection failed under us (a write error, a close): the
    /// peer's own explanation, when its ERROR frame arrived before the
    /// connection went (or arrives within `limit`). A daemon that runs out
    /// of disk says so and closes; our next write then fails with EPIPE,
    /// and the useful message is the one still queued behind it.
    pub async fn peer_error(&mut self, limit: Duration) -> Option<String> {
        tokio::time::timeout(limit, async {
            while let Some(item) = self.incoming.recv().await {
                if let Ok(Frame::Error { message }) = item {
                    return Some(message);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    }

    /// Sends an error to the peer (best effort) and closes.
    pub async fn fail(self, message: String) {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.outgoing.send(Frame::Error { message }),
        )
        .await;
        self.close(Duration::from_secs(5)).await;
    }
}
