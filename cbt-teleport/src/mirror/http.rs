//! The HTTP side of a mirror: one blocking `ureq` agent with bounded
//! timeouts and redirects, the proxy from the environment, and a body
//! reader that never accepts more bytes than the caller allows and gives
//! up on a body that arrives too slowly.
//!
//! **Why a minimum rate.** A per-read timeout only catches silence: a
//! server that drips one byte a second (a `Content-Length: 5000` body, or
//! a chunked body that never ends) keeps every read short and a download
//! alive for ever. So every body is also held to
//! [`MirrorOptions::min_rate`] once a grace period of
//! [`MirrorOptions::read_timeout`] has passed: after `t` seconds it must
//! have delivered at least `(t - grace) × min_rate` bytes. A body of `N`
//! bytes therefore has at most `grace + N / min_rate` (plus one read
//! timeout for a read already blocked), whether its size is known or not,
//! and the response headers have one read timeout in all. A download cut
//! short this way fails like any other; its package then crosses the link.

use std::io::Read;
use std::time::{Duration, Instant};

use super::{MirrorError, MirrorOptions};

/// Bytes read from the network per call (also the copy buffer).
const CHUNK: usize = 64 << 10;

/// A configured HTTP client.
#[derive(Debug, Clone)]
pub(crate) struct Http {
    agent: ureq::Agent,
    pace: Pace,
}

/// The slowest a body may arrive (see the module's doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pace {
    /// Time before the rate is enforced.
    pub(crate) grace: Duration,
    /// Bytes per second, on average since the headers arrived (0: no minimum).
    pub(crate) min_rate: u64,
}

impl Pace {
    /// True if `received` bytes after `elapsed` is below the minimum.
    pub(crate) fn too_slow(&self, received: u64, elapsed: Duration) -> bool {
        if self.min_rate == 0 || elapsed <= self.grace {
            return false;
        }
        let owed = (elapsed - self.grace).as_secs_f64() * self.min_rate as f64;
        (received as f64) < owed
    }
}

impl Http {
    /// An agent for `options`: connect and per-read timeouts, at most
    /// `max_redirects` redirects, statuses handled by the caller, the proxy
    /// from `ALL_PROXY`/`HTTPS_PROXY`/`HTTP_PROXY` (either case) with
    /// `NO_PROXY` exceptions, and no transparent decompression (sizes and
    /// digests are those of the files as published).
    pub(crate) fn new(options: &MirrorOptions) -> Http {
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(options.connect_timeout))
            .timeout_per_read(Some(options.read_timeout))
            .timeout_per_write(Some(options.read_timeout))
            // Headers dripped a byte at a time are no better than silence.
            .timeout_recv_response(Some(options.read_timeout))
            .timeout_resolve(Some(options.connect_timeout.max(Duration::from_secs(1))))
            .max_redirects(options.max_redirects)
            .http_status_as_error(false)
            .user_agent(concat!("cbt/", env!("CARGO_PKG_VERSION")))
            .proxy(ureq::Proxy::try_from_env())
            .build();
        Http {
            agent: ureq::Agent::new_with_config(config),
            pace: Pace {
                grace: options.read_timeout,
                min_rate: options.min_rate,
            },
        }
    }

    /// GETs `url` and feeds its body, in order, to `sink`; at most `limit`
    /// bytes are accepted (a larger `Content-Length` is refused before
    /// reading, a longer body as soon as it passes the limit). Returns the
    /// number of bytes read. A non-2xx status is [`MirrorError::Status`]; a
    /// body slower than the minimum rate is [`MirrorError::TooSlow`].
    pub(crate) fn get(
        &self,
        url: &str,
        limit: u64,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), MirrorError>,
    ) -> Result<u64, MirrorError> {
        let transfer = |e: ureq::Error| MirrorError::Transfer {
            url: url.to_string(),
            source: Box::new(e),
        };
        let response = self.agent.get(url).call().map_err(transfer)?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(MirrorError::Status {
                url: url.to_string(),
                status,
            });
        }
        let body = response.into_body();
        if body.content_length().is_some_and(|n| n > limit) {
            return Err(MirrorError::TooLarge {
                url: url.to_string(),
                limit,
            });
        }
        let mut reader = body.into_reader();
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        let started = Instant::now();
        loop {
            let read = reader.read(&mut buf);
            let elapsed = started.elapsed();
            let n = match read {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(MirrorError::Transfer {
                        url: url.to_string(),
                        source: Box::new(e),
                    })
                }
            };
            total += n as u64;
            if self.pace.too_slow(total, elapsed) {
                return Err(MirrorError::TooSlow {
                    url: url.to_string(),
                    received: total,
                    seconds: elapsed.as_secs_f64(),
                    min_rate: self.pace.min_rate,
                });
            }
            if total > limit {
                return Err(MirrorError::TooLarge {
                    url: url.to_string(),
                    limit,
                });
            }
            sink(&buf[..n])?;
        }
    }

    /// GETs `url` into memory, at most `limit` bytes.
    pub(crate) fn get_vec(&self, url: &str, limit: u64) -> Result<Vec<u8>, MirrorError> {
        let mut out = Vec::new();
        self.get(url, limit, &mut |chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_allows_a_grace_then_an_average_rate() {
        let p = Pace {
            grace: Duration::from_secs(2),
            min_rate: 1000,
        };
        // Nothing is owed during the grace period.
        assert!(!p.too_slow(0, Duration::from_secs(2)));
        // 3 s in, 1 000 bytes are owed.
        assert!(!p.too_slow(1000, Duration::from_secs(3)));
        assert!(p.too_slow(999, Duration::from_secs(3)));
        // A drip: one byte every 2 s is below any sane rate after the grace.
        assert!(p.too_slow(3, Duration::from_secs(6)));
        // A body of N bytes has at most grace + N / min_rate.
        assert!(!p.too_slow(5000, Duration::from_secs(7)));
        assert!(p.too_slow(5000, Duration::from_millis(7001)));
        let off = Pace { min_rate: 0, ..p };
        assert!(!off.too_slow(0, Duration::from_secs(3600)));
    }
}
