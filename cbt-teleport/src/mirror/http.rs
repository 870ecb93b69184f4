//! The HTTP side of a mirror: one blocking `ureq` agent with bounded
//! timeouts and redirects, the proxy from the environment, and a body
//! reader that never accepts more bytes than the caller allows.

use std::io::Read;
use std::time::Duration;

use super::{MirrorError, MirrorOptions};

/// Bytes read from the network per call (also the copy buffer).
const CHUNK: usize = 64 << 10;

/// A configured HTTP client.
#[derive(Debug, Clone)]
pub(crate) struct Http {
    agent: ureq::Agent,
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
            .timeout_resolve(Some(options.connect_timeout.max(Duration::from_secs(1))))
            .max_redirects(options.max_redirects)
            .http_status_as_error(false)
            .user_agent(concat!("cbt/", env!("CARGO_PKG_VERSION")))
            .proxy(ureq::Proxy::try_from_env())
            .build();
        Http {
            agent: ureq::Agent::new_with_config(config),
        }
    }

    /// GETs `url` and feeds its body, in order, to `sink`; at most `limit`
    /// bytes are accepted (a larger `Content-Length` is refused before
    /// reading, a longer body as soon as it passes the limit). Returns the
    /// number of bytes read. A non-2xx status is [`MirrorError::Status`].
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
        loop {
            let n = match reader.read(&mut buf) {
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
