//! The client side and the one-shot receiver: connect (or accept one
//! connection), run the handshake, then hand the link to the sender or the
//! receiver. Push and pull differ only in which role each end takes.

use std::sync::Arc;
use std::time::Duration;

use cbt_core::Image;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::connection::{Counters, FrameReader, FrameWriter, Link, Shutdown, Timeouts};
use crate::error::{Error, Result};
use crate::frame::{Frame, Mode};
use crate::handshake::{self, Secret};
use crate::preauth::{authenticate, PreAuth, PreAuthLimits};
use crate::receiver::{receive, ReceiveOptions};
use crate::sender::{send, SendOptions};
use crate::tls::{self, Accepted, BoxRead, BoxWrite, TlsClient, TlsServer};
use crate::TransferReport;

/// The port used when an address has none.
pub const DEFAULT_PORT: u16 = 4730;

/// Connection settings of a client or a one-shot receiver.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The shared secret, if any (required when the peer has one).
    pub secret: Option<Secret>,
    /// Idle and keepalive timing.
    pub timeouts: Timeouts,
    /// Limit on the whole handshake.
    pub handshake_timeout: Duration,
    /// Bytes per second this side may write (`--bwlimit`), when it sends.
    pub bwlimit: Option<u64>,
    /// A client: connect with TLS, trusting these certificates.
    pub tls: Option<TlsClient>,
    /// A one-shot receiver: accept only TLS clients, with this certificate.
    pub tls_server: Option<TlsServer>,
    /// A push: ask the daemon to update its image in place.
    pub push_in_place: bool,
    /// A push: ask the daemon to replace an existing image of that name
    /// (`--force`; a daemon refuses a plain push to an existing name unless
    /// it allows overwriting).
    pub push_replace: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            secret: None,
            timeouts: Timeouts::default(),
            handshake_timeout: Duration::from_secs(30),
            bwlimit: None,
            tls: None,
            tls_server: None,
            push_in_place: false,
            push_replace: false,
        }
    }
}

/// `HOST:PORT[/NAME]`, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `HOST:PORT`, as given (resolved when connecting).
    pub addr: String,
    /// The image's name at a daemon.
    pub name: Option<String>,
}

/// Parses `HOST:PORT`, `HOST:PORT/NAME`, `[V6]:PORT/NAME`; a missing port
/// is [`DEFAULT_PORT`].
pub fn parse_target(s: &str) -> std::result::Result<Target, String> {
    let (addr, name) = match s.split_once('/') {
        Some((a, n)) => (a, Some(n.to_string())),
        None => (s, None),
    };
    if addr.is_empty() {
        return Err(format!("{s:?}: no host"));
    }
    let has_port = if let Some(rest) = addr.strip_prefix('[') {
        let Some((_, after)) = rest.split_once(']') else {
            return Err(format!("{s:?}: unclosed '['"));
        };
        after.starts_with(':')
    } else {
        addr.contains(':')
    };
    let addr = if has_port {
        addr.to_string()
    } else {
        format!("{addr}:{DEFAULT_PORT}")
    };
    if let Some((_, port)) = addr.rsplit_once(':') {
        port.parse::<u16>()
            .map_err(|_| format!("{s:?}: bad port {port:?}"))?;
    }
    if name.as_deref() == Some("") {
        return Err(format!("{s:?}: empty image name after '/'"));
    }
    Ok(Target { addr, name })
}

pub(crate) type Halves = (FrameReader<BoxRead>, FrameWriter<BoxWrite>);

fn framed(r: BoxRead, w: BoxWrite, peer: &str) -> Halves {
    let counters = Arc::new(Counters::default());
    (
        FrameReader::new(r, Arc::clone(&counters), peer.to_string()),
        FrameWriter::new(w, counters, peer.to_string()),
    )
}

/// A listening side's view of a new connection: TLS when `tls` is given,
/// framed. A plain cbt client at a TLS server is told (in plain framing)
/// that TLS is required, and this fails.
pub(crate) async fn accept_stream(
    stream: TcpStream,
    tls: Option<&TlsServer>,
    peer: &str,
    limit: Duration,
) -> Result<Halves> {
    let _ = stream.set_nodelay(true);
    let accepted = tokio::time::timeout(limit, tls::server_stream(stream, tls, peer))
        .await
        .map_err(|_| Error::Timeout {
            peer: peer.to_string(),
            seconds: limit.as_secs(),
        })??;
    match accepted {
        Accepted::Stream(r, w) => Ok(framed(r, w, peer)),
        Accepted::PlainClient(r, w) => {
            let (mut reader, mut writer) = framed(r, w, peer);
            let _ = tokio::time::timeout(limit, async {
                writer.write_preamble().await?;
                writer
                    .send(&Frame::Error {
                        message: "this server requires TLS: connect with --tls".into(),
                    })
                    .await?;
                // Read what the client sends before it sees the error, so
                // closing does not reset the connection under it.
                reader.read_preamble().await?;
                let _ = reader.read_frame().await;
                writer.shutdown().await
            })
            .await;
            Err(Error::Tls {
                peer: peer.to_string(),
                reason: "a client without TLS was turned away".into(),
            })
        }
    }
}

async fn connect(
    addr: &str,
    mode: Mode,
    name: &str,
    options: &ClientOptions,
    shutdown: &Shutdown,
) -> Result<Link> {
    let timeout = || Error::Timeout {
        peer: addr.to_string(),
        seconds: options.handshake_timeout.as_secs(),
    };
    let stream = tokio::time::timeout(options.handshake_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| timeout())?
        .map_err(|e| Error::io(addr, "connect", e))?;
    let _ = stream.set_nodelay(true);
    let peer = stream
        .peer_addr()
        .map_or_else(|_| addr.to_string(), |a| a.to_string());
    let (r, w) = tokio::time::timeout(
        options.handshake_timeout,
        tls::client_stream(stream, options.tls.as_ref(), addr, &peer),
    )
    .await
    .map_err(|_| timeout())??;
    let (mut reader, mut writer) = framed(r, w, &peer);
    handshake::client(
        &mut reader,
        &mut writer,
        &peer,
        mode,
        name,
        options.secret.as_ref(),
        options.handshake_timeout,
    )
    .await?;
    if !mode.is_pull() {
        writer.set_rate_limit(options.bwlimit);
    }
    Ok(Link::spawn(reader, writer, options.timeouts, shutdown.clone()))
}

/// Sends `image` to `addr`: to a one-shot receiver (`name` None) or into a
/// daemon's data directory as `name`.
pub async fn push(
    addr: &str,
    name: Option<&str>,
    image: Arc<dyn Image>,
    send_options: &SendOptions,
    options: &ClientOptions,
    shutdown: Shutdown,
) -> Result<TransferReport> {
    let mode = if options.push_in_place {
        Mode::PushInPlace
    } else if options.push_replace {
        Mode::PushReplace
    } else {
        Mode::Push
    };
    let link = connect(addr, mode, name.unwrap_or(""), options, &shutdown).await?;
    tokio::select! {
        r = send(link, image, send_options) => r,
        _ = wait(shutdown) => Err(Error::Cancelled),
    }
}

/// Receives the image a daemon exports as `name` into `receive_options.output`.
pub async fn pull(
    addr: &str,
    name: &str,
    receive_options: ReceiveOptions,
    options: &ClientOptions,
    shutdown: Shutdown,
) -> Result<TransferReport> {
    pull_in(Mode::Pull, addr, name, receive_options, options, shutdown).await
}

/// A pull in `mode`: every kind of pull is this connection and receive.
async fn pull_in(
    mode: Mode,
    addr: &str,
    name: &str,
    receive_options: ReceiveOptions,
    options: &ClientOptions,
    shutdown: Shutdown,
) -> Result<TransferReport> {
    if mode != Mode::Pull && receive_options.teleporter.is_none() {
        return Err(Error::Config(
            "a teleport or functional pull needs a teleporter to take the description".into(),
        ));
    }
    let link = connect(addr, mode, name, options, &shutdown).await?;
    receive(link, receive_options, shutdown).await
}

/// Receives the image a daemon exports as `name` by teleporting: the daemon
/// describes it first and `receive_options.teleporter` prepares seeds from
/// that description. With `dry_run`, only the plan is made.
pub async fn pull_teleport(
    addr: &str,
    name: &str,
    dry_run: bool,
    receive_options: ReceiveOptions,
    options: &ClientOptions,
    shutdown: Shutdown,
) -> Result<TransferReport> {
    let mode = if dry_run {
        Mode::PullTeleportPlan
    } else {
        Mode::PullTeleport
    };
    pull_in(mode, addr, name, receive_options, options, shutdown).await
}

/// Receives the user data of the guest a daemon exports as `name` (a
/// functional pull): the daemon describes the guest and sends a pack of
/// its user data, which `receive_options.teleporter` sees described and
/// which is written to `receive_options.output` like any image.
pub async fn pull_functional(
    addr: &str,
    name: &str,
    receive_options: ReceiveOptions,
    options: &ClientOptions,
    shutdown: Shutdown,
) -> Result<TransferReport> {
    pull_in(
        Mode::PullFunctional,
        addr,
        name,
        receive_options,
        options,
        shutdown,
    )
    .await
}

async fn wait(mut s: Shutdown) {
    s.wait().await
}

/// The one-shot receiver: accepts connections on `listener` until a client
/// that passes the handshake pushes an image, and receives that one.
/// Handshakes run side by side under the unauthenticated-connection budget
/// (see `preauth`), so a silent or slow connection never delays a real
/// client; clients that fail the handshake (wrong secret, not cbt) are
/// turned away and the receiver keeps waiting.
pub async fn receive_once(
    listener: TcpListener,
    receive_options: ReceiveOptions,
    options: &ClientOptions,
    shutdown: Shutdown,
) -> Result<TransferReport> {
    let mut stop = shutdown.clone();
    let limits = PreAuthLimits {
        deadline: options.handshake_timeout.min(PreAuthLimits::default().deadline),
        ..PreAuthLimits::default()
    };
    let gate = PreAuth::new(limits);
    let mut handshakes = JoinSet::new();
    let (reader, writer, peer) = loop {
        tokio::select! {
            a = listener.accept() => {
                let (stream, addr) = a.map_err(|e| Error::io("listener", "accept", e))?;
                let peer = addr.to_string();
                let ticket = gate.admit(addr.ip());
                let (tls, secret) = (options.tls_server.clone(), options.secret.clone());
                handshakes.spawn(async move {
                    let r = authenticate(stream, &peer, tls.as_ref(), secret.as_ref(), ticket, limits.deadline).await;
                    (peer, r)
                });
            }
            Some(joined) = handshakes.join_next(), if !handshakes.is_empty() => {
                let Ok((peer, result)) = joined else { continue };
                let ((reader, mut writer), request) = match result {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(%peer, "turned away: {e}");
                        continue;
                    }
                };
                let refusal = match (request.mode, request.name.is_empty()) {
                    // Whether to update in place is the receiver's own choice here.
                    (Mode::Push | Mode::PushInPlace | Mode::PushReplace, true) => None,
                    (Mode::Push | Mode::PushInPlace | Mode::PushReplace, false) => {
                        Some("this is a one-shot receiver: send without a /NAME")
                    }
                    (Mode::Pull | Mode::PullTeleport | Mode::PullTeleportPlan | Mode::PullFunctional, _) => {
                        Some("this is a one-shot receiver: it only accepts pushes")
                    }
                };
                if let Some(reason) = refusal {
                    tracing::warn!(%peer, "refused: {reason}");
                    let _ = request.refuse(&mut writer, reason).await;
                    continue;
                }
                request.accept(&mut writer).await?;
                break (reader, writer, peer);
            }
            _ = stop.wait() => return Err(Error::Cancelled),
        }
    };
    // One client is in: the others waiting in their handshakes are dropped.
    handshakes.abort_all();
    tracing::info!(%peer, "receiving");
    let link = Link::spawn(reader, writer, options.timeouts, shutdown.clone());
    receive(link, receive_options, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = parse_target("host:99/vm.img").unwrap();
        assert_eq!((t.addr.as_str(), t.name.as_deref()), ("host:99", Some("vm.img")));
        assert_eq!(parse_target("127.0.0.1:5").unwrap().name, None);
        assert_eq!(parse_target("host").unwrap().addr, format!("host:{DEFAULT_PORT}"));
        assert_eq!(parse_target("[::1]:7/x").unwrap().addr, "[::1]:7");
        assert_eq!(
            parse_target("[::1]/x").unwrap().addr,
            format!("[::1]:{DEFAULT_PORT}")
        );
        // Everything after the first '/' is the name; the daemon judges it.
        assert_eq!(parse_target("h:1/../x").unwrap().name.as_deref(), Some("../x"));
        assert_eq!(
            parse_target("h:1//etc/x").unwrap().name.as_deref(),
            Some("/etc/x")
        );
        assert!(parse_target("h:x").is_err());
        assert!(parse_target("h:1/").is_err());
        assert!(parse_target("/x").is_err());
    }
}
