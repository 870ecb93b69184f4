//! `cbt serve --metrics ADDR`: the daemon's counters in the Prometheus
//! (OpenMetrics) text format at `http://ADDR/metrics`.
//!
//! [`Metrics`] is the daemon's [`DaemonObserver`]: `cbt-net` tells it of
//! every transfer's start and end, it keeps prometheus-client counters,
//! and [`serve_http`] answers scrapes with a deliberately tiny HTTP/1.1
//! responder (one GET per connection, then close): a scrape endpoint needs
//! no web framework, and a small one is easy to bound.
//!
//! Byte and block counters add up the reports of finished transfers (a
//! failed transfer has no report); the index the daemon builds per push is
//! not kept between transfers, so there is no index-size metric.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use cbt_net::{DaemonObserver, Direction, FailureReason, PushDetails, TransferReport};

/// One label, as prometheus-client encodes a fixed set.
type Label = [(&'static str, &'static str); 1];

/// Scrapes answered at once; more wait for a place.
const MAX_SCRAPES: usize = 8;
/// A scraper has this long to send its request, and again to read the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head read (a scrape's is a few hundred bytes).
const MAX_REQUEST: usize = 8192;

/// The daemon's metrics.
pub struct Metrics {
    registry: Registry,
    active: Gauge,
    finished: Family<Label, Counter>,
    failed: Family<Label, Counter>,
    wire_received: Counter,
    wire_sent: Counter,
    local_bytes: Counter,
    blocks: Family<Label, Counter>,
    verification_failures: Counter,
    replaced: Counter,
    last_success: Gauge<f64, AtomicU64>,
    rate: Histogram,
    /// The seed index of the last finished push.
    index_images: Gauge,
    index_unique_blocks: Gauge,
    index_memory: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("active", &self.active.get())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric registered, each label value present (at zero) from
    /// the start, so that dashboards and `rate()` see the series at once.
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::with_prefix("cbt"),
            active: Gauge::default(),
            finished: Family::default(),
            failed: Family::default(),
            wire_received: Counter::default(),
            wire_sent: Counter::default(),
            local_bytes: Counter::default(),
            blocks: Family::default(),
            verification_failures: Counter::default(),
            replaced: Counter::default(),
            last_success: Gauge::default(),
            // 64 KiB/s to 128 GiB/s, doubling.
            rate: Histogram::new(exponential_buckets(65536.0, 2.0, 22)),
            index_images: Gauge::default(),
            index_unique_blocks: Gauge::default(),
            index_memory: Gauge::default(),
        };
        // Creating a series is all that is wanted here; the guards unlock at once.
        for d in [Direction::Push, Direction::Pull] {
            let _ = m.finished.get_or_create(&[("direction", d.as_str())]);
        }
        for r in FailureReason::ALL {
            let _ = m.failed.get_or_create(&[("reason", r.as_str())]);
        }
        for k in ["zero", "local", "sent", "repaired"] {
            let _ = m.blocks.get_or_create(&[("kind", k)]);
        }
        m.register()
    }

    fn register(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register("transfers_active", "Transfers running now", self.active.clone());
        r.register(
            "transfers_finished",
            "Transfers that succeeded, by direction (push: the daemon received)",
            self.finished.clone(),
        );
        r.register(
            "transfers_failed",
            "Transfers that failed and connections turned away, by reason",
            self.failed.clone(),
        );
        r.register(
            "wire_received_bytes",
            "Bytes the daemon read from the network in finished transfers",
            self.wire_received.clone(),
        );
        r.register(
            "wire_sent_bytes",
            "Bytes the daemon wrote to the network in finished transfers",
            self.wire_sent.clone(),
        );
        r.register(
            "local_bytes",
            "Image bytes of pushes found in the daemon's seeds instead of sent",
            self.local_bytes.clone(),
        );
        r.register(
            "blocks",
            "Blocks of finished transfers, by how they were settled",
            self.blocks.clone(),
        );
        r.register(
            "verification_failures",
            "Pushes whose received image failed verification",
            self.verification_failures.clone(),
        );
        r.register(
            "images_replaced",
            "Pushes that replaced an existing image",
            self.replaced.clone(),
        );
        r.register(
            "last_success_timestamp_seconds",
            "Unix time of the last successful transfer",
            self.last_success.clone(),
        );
        r.register(
            "transfer_rate_bytes_per_second",
            "Image bytes per second of each finished transfer",
            self.rate.clone(),
        );
        r.register(
            "index_images",
            "Image views (images, backing files, snapshots, package blobs) in the seed index of the last finished push",
            self.index_images.clone(),
        );
        r.register(
            "index_unique_blocks",
            "Distinct non-zero blocks in the seed index of the last finished push",
            self.index_unique_blocks.clone(),
        );
        r.register(
            "index_memory_bytes",
            "Bytes of RAM the seed index of the last finished push held",
            self.index_memory.clone(),
        );
        self
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    fn failed_with(&self, reason: FailureReason) {
        self.failed.get_or_create(&[("reason", reason.as_str())]).inc();
        if reason == FailureReason::Verification {
            self.verification_failures.inc();
        }
    }
}

impl DaemonObserver for Metrics {
    fn transfer_started(&self, _direction: Direction) {
        self.active.inc();
    }

    fn transfer_finished(&self, direction: Direction, r: &TransferReport, details: Option<PushDetails>) {
        self.active.dec();
        self.finished
            .get_or_create(&[("direction", direction.as_str())])
            .inc();
        self.wire_received.inc_by(r.wire_bytes_received);
        self.wire_sent.inc_by(r.wire_bytes_sent);
        for (kind, n) in [
            ("zero", r.blocks_zero),
            ("local", r.blocks_local),
            ("sent", r.blocks_sent),
            ("repaired", r.blocks_repaired),
        ] {
            self.blocks.get_or_create(&[("kind", kind)]).inc_by(n);
        }
        if let Some(d) = details {
            self.local_bytes.inc_by(d.bytes_local);
            if d.replaced {
                self.replaced.inc();
            }
        }
        if !r.dry_run {
            self.rate.observe(r.observed_bandwidth);
        }
        if let Some(i) = &r.index {
            let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            self.index_images.set(gauge(i.images as u64));
            self.index_unique_blocks.set(gauge(i.unique_blocks));
            self.index_memory.set(gauge(i.memory_bytes));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_success.set(now);
    }

    fn transfer_failed(&self, _direction: Direction, error: &cbt_net::Error) {
        self.active.dec();
        self.failed_with(FailureReason::of(error));
    }

    fn connection_refused(&self, error: &cbt_net::Error) {
        self.failed_with(FailureReason::of(error));
    }
}

/// Answers `GET /metrics` on `listener` until the task is dropped.
pub async fn serve_http(listener: TcpListener, metrics: Arc<Metrics>) {
    let places = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(place) = Arc::clone(&places).acquire_owned().await else {
            return;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &metrics).await {
                tracing::debug!("metrics: {e}");
            }
            drop(place);
        });
    }
}

/// Reads one request head and answers it.
async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let read = async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        std::io::Result::Ok(())
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
        Ok(r) => r?,
        Err(_) => return Ok(()),
    }
    let response = respond(&head, metrics);
    // A client that does not read must not keep its place either.
    let write = async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, write).await {
        Ok(r) => r,
        Err(_) => Ok(()),
    }
}

/// The whole response to a request head: the metrics for `GET /metrics`,
/// 404 for another path, 405 for another method.
fn respond(head: &[u8], metrics: &Metrics) -> Vec<u8> {
    let line = head
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    // A query string (`/metrics?x=y`) does not change the answer.
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        ("GET", _) => ("404 Not Found", "text/plain", "not found: try /metrics\n".into()),
        _ => ("405 Method Not Allowed", "text/plain", "only GET\n".into()),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn failures_count_by_reason_and_active_pairs_up() {
        let m = Metrics::new();
        m.transfer_started(Direction::Push);
        assert_eq!(value(&m.encode(), "cbt_transfers_active"), Some(1.0));
        m.transfer_failed(Direction::Push, &cbt_net::Error::Cancelled);
        m.connection_refused(&cbt_net::Error::Refused("busy".into()));
        m.connection_refused(&cbt_net::Error::Refused("bad name".into()));
        let text = m.encode();
        assert_eq!(value(&text, "cbt_transfers_active"), Some(0.0));
        assert_eq!(
            value(&text, "cbt_transfers_failed_total{reason=\"cancelled\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "cbt_transfers_failed_total{reason=\"refused\"}"),
            Some(2.0)
        );
        assert_eq!(
            value(&text, "cbt_transfers_failed_total{reason=\"auth\"}"),
            Some(0.0)
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn only_get_metrics_is_answered() {
        let m = Metrics::new();
        let ok = String::from_utf8(respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &m)).unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("cbt_transfers_finished_total{direction=\"push\"} 0"),
            "{ok}"
        );
        let other = String::from_utf8(respond(b"GET / HTTP/1.1\r\n\r\n", &m)).unwrap();
        assert!(other.starts_with("HTTP/1.1 404 "), "{other}");
        let post = String::from_utf8(respond(b"POST /metrics HTTP/1.1\r\n\r\n", &m)).unwrap();
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        let garbage = String::from_utf8(respond(b"\xff\xfe", &m)).unwrap();
        assert!(garbage.starts_with("HTTP/1.1 405 "), "{garbage}");
    }
}
