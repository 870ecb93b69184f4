//! The handshake: preambles (magic and version), the client's request, and
//! a mutual challenge-response proof of a shared secret.
//!
//! ```text
//! client                                         server
//!   preamble ───────────────────────────────────▶
//!   ◀─────────────────────────────────────────── preamble
//!   HELLO {mode, name, nonce_c} ────────────────▶
//!   ◀──────────────────────── CHALLENGE {nonce_s, auth}
//!   AUTH {mac(key, "client", nonce_s, nonce_c, mode, name)} ▶
//!                         (wrong or missing proof: ERROR, close)
//!   ◀──────── ACCEPT {mac(key, "server", nonce_c, nonce_s, mode, name)}
//!             (or ERROR if the request is refused)
//! ```
//!
//! The key is derived from the secret with BLAKE3's key derivation; the
//! secret itself never crosses the wire. The server speaks its proof only
//! after the client proved itself, so a peer without the secret learns
//! nothing but a refusal. A client with a secret refuses a server that
//! cannot prove it knows the same one.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::connection::{FrameReader, FrameWriter};
use crate::error::{Error, Result};
use crate::frame::{Frame, Mode, NONCE_LEN};

/// Context string of the key derivation (BLAKE3 `derive_key`).
const KDF_CONTEXT: &str = "cbt-net 2025-01 shared-secret authentication key v1";

/// The start of the server's ERROR message when a client's proof fails;
/// the client recognises it to tell a wrong secret from a refused request.
const AUTH_FAILED: &str = "authentication failed";
/// Why a client without a secret cannot use a server that requires one.
const NO_SECRET: &str =
    "this server needs a secret and none was given (--secret-file FILE, or CBT_SECRET_FILE)";
/// Why a client's proof was refused.
const WRONG_SECRET: &str =
    "wrong secret: the server did not accept our proof (both ends need the same secret file)";

/// A shared secret, reduced to its derived key. Never printed.
#[derive(Clone)]
pub struct Secret {
    key: [u8; 32],
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A secret from its bytes (at least 8 after trimming trailing whitespace).
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Secret, String> {
        let end = bytes
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        let bytes = &bytes[..end];
        if bytes.len() < 8 {
            return Err("the secret must be at least 8 bytes long".into());
        }
        Ok(Secret {
            key: blake3::derive_key(KDF_CONTEXT, bytes),
        })
    }

    /// Reads a secret file (its trailing newline is not part of the secret).
    pub fn from_file(path: &Path) -> Result<Secret> {
        let bytes = std::fs::read(path).map_err(|e| Error::Secret {
            path: path.into(),
            reason: e.to_string(),
        })?;
        Secret::from_bytes(&bytes).map_err(|reason| Error::Secret {
            path: path.into(),
            reason,
        })
    }

    fn proof(
        &self,
        label: &[u8],
        first: &[u8; NONCE_LEN],
        second: &[u8; NONCE_LEN],
        mode: Mode,
        name: &str,
    ) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(label);
        h.update(first);
        h.update(second);
        h.update(&[mode as u8]);
        h.update(&(name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.finalize()
    }
}

fn nonce() -> Result<[u8; NONCE_LEN]> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).map_err(|e| Error::Internal(format!("no randomness for the handshake: {e}")))?;
    Ok(n)
}

/// Constant-time comparison (through `blake3::Hash`'s `PartialEq`).
fn proof_matches(expected: &blake3::Hash, got: &Option<[u8; NONCE_LEN]>) -> bool {
    got.is_some_and(|g| *expected == blake3::Hash::from(g))
}

/// Client side: sends the request and proves the secret both ways.
/// Returns once the server accepted.
pub async fn client<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    peer: &str,
    mode: Mode,
    name: &str,
    secret: Option<&Secret>,
    limit: Duration,
) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let run = async {
        writer.write_preamble().await?;
        reader.read_preamble().await?;
        let nonce_c = nonce()?;
        writer
            .send(&Frame::Hello {
                mode,
                name: name.to_string(),
                nonce: nonce_c,
            })
            .await?;
        let (nonce_s, auth) = match reader.expect_frame(limit).await? {
            Frame::Challenge { nonce, auth } => (nonce, auth),
            Frame::Error { message } => {
                return Err(Error::Remote {
                    peer: peer.into(),
                    message,
                })
            }
            f => {
                return Err(Error::protocol(
                    peer,
                    format!("expected CHALLENGE, got {}", f.name()),
                ))
            }
        };
        let proof = match (secret, auth) {
            (Some(s), true) => Some(
                *s.proof(b"cbt client proof", &nonce_s, &nonce_c, mode, name)
                    .as_bytes(),
            ),
            (Some(_), false) => {
                return Err(Error::Auth {
                    peer: peer.into(),
                    reason: "the server does not authenticate; refusing".into(),
                })
            }
            (None, true) => {
                // Tell the server (it logs the refusal) and read its
                // ERROR, so the connection closes cleanly; the reason we
                // give is the one the user can act on.
                writer.send(&Frame::Auth { proof: None }).await?;
                let _ = reader.expect_frame(limit).await;
                return Err(Error::Auth {
                    peer: peer.into(),
                    reason: NO_SECRET.into(),
                });
            }
            (None, false) => None,
        };
        writer.send(&Frame::Auth { proof }).await?;
        match reader.expect_frame(limit).await? {
            Frame::Accept { proof } => {
                if let Some(s) = secret {
                    let expected = s.proof(b"cbt server proof", &nonce_c, &nonce_s, mode, name);
                    if !proof_matches(&expected, &proof) {
                        return Err(Error::Auth {
                            peer: peer.into(),
                            reason: "the server could not prove it knows the secret".into(),
                        });
                    }
                }
                Ok(())
            }
            // Our proof was refused: the secrets differ. (Any other ERROR
            // here is a refusal of the request, reported as the server
            // wrote it.)
            Frame::Error { message } if secret.is_some() && message.starts_with(AUTH_FAILED) => {
                Err(Error::Auth {
                    peer: peer.into(),
                    reason: WRONG_SECRET.into(),
                })
            }
            Frame::Error { message } => Err(Error::Remote {
                peer: peer.into(),
                message,
            }),
            f => Err(Error::protocol(
                peer,
                format!("expected ACCEPT, got {}", f.name()),
            )),
        }
    };
    match tokio::time::timeout(limit, run).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout {
            peer: peer.into(),
            seconds: limit.as_secs(),
        }),
    }
}

/// An authenticated request, waiting for [`Request::accept`] or [`Request::refuse`].
#[derive(Debug)]
pub struct Request {
    /// Push or pull.
    pub mode: Mode,
    /// The image's name (empty if none was given).
    pub name: String,
    proof: Option<[u8; NONCE_LEN]>,
}

impl Request {
    /// Tells the client to go ahead, with the server's proof.
    pub async fn accept<W: AsyncWrite + Unpin>(&self, writer: &mut FrameWriter<W>) -> Result<()> {
        writer.send(&Frame::Accept { proof: self.proof }).await
    }

    /// Tells the client why not (it closes after that).
    pub async fn refuse<W: AsyncWrite + Unpin>(
        &self,
        writer: &mut FrameWriter<W>,
        reason: &str,
    ) -> Result<()> {
        writer
            .send(&Frame::Error {
                message: reason.to_string(),
            })
            .await
    }
}

/// Server side: reads the request and checks the client's proof. A client
/// that fails gets an ERROR frame and this returns [`Error::Auth`].
pub async fn server<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    peer: &str,
    secret: Option<&Secret>,
    limit: Duration,
) -> Result<Request>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let run = async {
        writer.write_preamble().await?;
        reader.read_preamble().await?;
        let (mode, name, nonce_c) = match reader.expect_frame(limit).await? {
            Frame::Hello { mode, name, nonce } => (mode, name, nonce),
            f => return Err(Error::protocol(peer, format!("expected HELLO, got {}", f.name()))),
        };
        let nonce_s = nonce()?;
        writer
            .send(&Frame::Challenge {
                nonce: nonce_s,
                auth: secret.is_some(),
            })
            .await?;
        let got = match reader.expect_frame(limit).await? {
            Frame::Auth { proof } => proof,
            f => return Err(Error::protocol(peer, format!("expected AUTH, got {}", f.name()))),
        };
        let proof = match secret {
            Some(s) => {
                let expected = s.proof(b"cbt client proof", &nonce_s, &nonce_c, mode, &name);
                if !proof_matches(&expected, &got) {
                    let reason = if got.is_some() {
                        "wrong secret"
                    } else {
                        "the client gave no secret"
                    };
                    let _ = writer
                        .send(&Frame::Error {
                            message: format!("{AUTH_FAILED}: {reason}"),
                        })
                        .await;
                    return Err(Error::Auth {
                        peer: peer.into(),
                        reason: reason.into(),
                    });
                }
                Some(
                    *s.proof(b"cbt server proof", &nonce_c, &nonce_s, mode, &name)
                        .as_bytes(),
                )
            }
            None => None,
        };
        Ok(Request { mode, name, proof })
    };
    match tokio::time::timeout(limit, run).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout {
            peer: peer.into(),
            seconds: limit.as_secs(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::Counters;
    use std::sync::Arc;

    async fn pair(
        client_secret: Option<&[u8]>,
        server_secret: Option<&[u8]>,
    ) -> (Result<()>, Result<Request>) {
        let (a, b) = tokio::io::duplex(4096);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let cs = client_secret.map(|s| Secret::from_bytes(s).unwrap());
        let ss = server_secret.map(|s| Secret::from_bytes(s).unwrap());
        let limit = Duration::from_secs(5);
        let client = async move {
            let c = Arc::new(Counters::default());
            let mut r = FrameReader::new(ar, c.clone(), "server".into());
            let mut w = FrameWriter::new(aw, c, "server".into());
            client(&mut r, &mut w, "server", Mode::Push, "x.img", cs.as_ref(), limit).await
        };
        let server = async move {
            let c = Arc::new(Counters::default());
            let mut r = FrameReader::new(br, c.clone(), "client".into());
            let mut w = FrameWriter::new(bw, c, "client".into());
            let req = server(&mut r, &mut w, "client", ss.as_ref(), limit).await;
            if let Ok(req) = &req {
                req.accept(&mut w).await.unwrap();
            }
            req
        };
        tokio::join!(client, server)
    }

    #[tokio::test]
    async fn same_secret_both_sides_proven() {
        let (c, s) = pair(Some(b"correct horse"), Some(b"correct horse\n")).await;
        c.unwrap();
        let req = s.unwrap();
        assert_eq!((req.mode, req.name.as_str()), (Mode::Push, "x.img"));
    }

    #[tokio::test]
    async fn wrong_or_missing_secret_is_refused_with_distinct_reasons() {
        let (c, s) = pair(Some(b"wrong horse"), Some(b"correct horse")).await;
        assert!(
            matches!(&s, Err(Error::Auth { reason, .. }) if reason == "wrong secret"),
            "{s:?}"
        );
        assert!(
            matches!(&c, Err(Error::Auth { reason, .. }) if reason == WRONG_SECRET),
            "{c:?}"
        );
        let (c, s) = pair(None, Some(b"correct horse")).await;
        assert!(matches!(s, Err(Error::Auth { .. })));
        assert!(
            matches!(&c, Err(Error::Auth { reason, .. }) if reason == NO_SECRET),
            "{c:?}"
        );
    }

    #[tokio::test]
    async fn client_with_secret_refuses_an_open_server() {
        let (c, _s) = pair(Some(b"correct horse"), None).await;
        assert!(matches!(c, Err(Error::Auth { .. })));
    }

    #[tokio::test]
    async fn no_secrets_anywhere_works() {
        let (c, s) = pair(None, None).await;
        c.unwrap();
        s.unwrap();
    }

    #[test]
    fn short_secrets_are_rejected() {
        assert!(Secret::from_bytes(b"short\n").is_err());
        assert!(Secret::from_bytes(b"long enough").is_ok());
    }
}
