//! Optional TLS beneath the framing (rustls with the *ring* provider).
//!
//! A TLS connection carries exactly the bytes a plain one does: preambles,
//! handshake frames, transfer frames. The shared-secret challenge-response
//! runs unchanged inside it, so it is then also bound to a confidential
//! channel whose server was authenticated by its certificate.
//!
//! Mixing the two must fail at once, with a message that says why:
//! - a TLS server peeks at the first byte a client sends. A TLS client
//!   starts with a handshake record (`0x16`); a plain cbt client starts with
//!   its preamble (`C`). The latter is answered in plain framing with an
//!   ERROR frame ("this server requires TLS") and the connection closes.
//! - a plain server answers a TLS client's hello with its preamble, which
//!   is not a TLS record; the client reports that the server does not speak
//!   TLS.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::client::{verify_server_name, WebPkiServerVerifier};
use tokio_rustls::rustls::server::ParsedCertificate;
use tokio_rustls::rustls::{
    self, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::error::{Error, Result};

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;
/// The first byte of a cbt preamble (`"CBTNET\r\n"`).
const CBT_PREAMBLE: u8 = b'C';

/// Where Debian, Fedora and others keep the system's CA bundle.
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_file_error(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::TlsFile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Reads every certificate of a PEM file (at least one).
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_file_error(path, e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_file_error(path, e))?;
    if certs.is_empty() {
        return Err(tls_file_error(path, "no PEM certificate in this file"));
    }
    Ok(certs)
}

/// The server side of TLS: a certificate chain and its private key.
#[derive(Clone)]
pub struct TlsServer {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsServer(..)")
    }
}

impl TlsServer {
    /// Loads a PEM certificate chain (leaf first) and a PEM private key
    /// (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<TlsServer> {
        let chain = read_certificates(cert)?;
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                tls_file_error(key, "no PEM private key in this file")
            }
            e => tls_file_error(key, e),
        })?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS: {e}")))?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(|e| tls_file_error(key, format!("does not suit the certificate: {e}")))?;
        Ok(TlsServer {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

/// The client side of TLS: the certificates it trusts, and the name the
/// server's certificate must carry (the host of the address by default).
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// Trusts the certificates of a PEM file: a CA, or a server's
    /// self-signed certificate. A server presenting exactly one of these
    /// certificates is trusted even where the usual chain rules would refuse
    /// it (a self-signed certificate marked as a CA, as `openssl req -x509`
    /// makes by default); its name is still checked.
    pub fn from_ca_file(ca: &Path) -> Result<TlsClient> {
        let pinned = read_certificates(ca)?;
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(pinned.iter().cloned());
        if added == 0 {
            return Err(tls_file_error(ca, "no usable certificate"));
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| tls_file_error(ca, e))?;
        let verifier = PinnedOrWebPki { webpki, pinned };
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            server_name: None,
        })
    }

    /// Trusts the system's CA bundle (the first of the usual places found).
    pub fn from_system_roots() -> Result<TlsClient> {
        let Some(bundle) = SYSTEM_CA_BUNDLES.iter().map(PathBuf::from).find(|p| p.is_file()) else {
            return Err(Error::Config(
                "TLS: no system CA bundle found; give the certificate to trust with --tls-ca FILE".into(),
            ));
        };
        let mut roots = RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(read_certificates(&bundle)?);
        if added == 0 {
            return Err(tls_file_error(&bundle, "no usable CA certificate"));
        }
        TlsClient::with_roots(roots)
    }

    fn with_roots(roots: RootCertStore) -> Result<TlsClient> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            server_name: None,
        })
    }

    /// Checks the server's certificate against `name` (a DNS name or an IP
    /// address) instead of the host it was reached at.
    pub fn with_server_name(mut self, name: &str) -> Result<TlsClient> {
        self.server_name = Some(parse_server_name(name)?);
        Ok(self)
    }

    /// The name to check: the override, or the host part of `addr`
    /// (`HOST:PORT`, `[V6]:PORT`).
    fn name_for(&self, addr: &str) -> Result<ServerName<'static>> {
        if let Some(n) = &self.server_name {
            return Ok(n.clone());
        }
        let host = match addr.rsplit_once(':') {
            Some((h, _)) => h,
            None => addr,
        };
        parse_server_name(host.trim_start_matches('[').trim_end_matches(']'))
    }
}

/// The usual chain verification, and the exact certificates of a
/// `--tls-ca` file accepted as they are (after checking the name).
#[derive(Debug)]
struct PinnedOrWebPki {
    webpki: Arc<WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for PinnedOrWebPki {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let chain =
            self.webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        match chain {
            Ok(v) => Ok(v),
            Err(e) if self.pinned.iter().any(|p| p.as_ref() == end_entity.as_ref()) => {
                // Exactly a certificate we were told to trust: only its name matters.
                let parsed = ParsedCertificate::try_from(end_entity).map_err(|_| e)?;
                verify_server_name(&parsed, server_name)?;
                Ok(ServerCertVerified::assertion())
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

fn parse_server_name(name: &str) -> Result<ServerName<'static>> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(name.to_string())
        .map_err(|_| Error::Config(format!("TLS: {name:?} is not a valid server name")))
}

/// A connection's byte stream, plain or TLS.
pub(crate) type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of [`BoxRead`]'s stream.
pub(crate) type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

fn boxed<S: AsyncRead + AsyncWrite + Send + Unpin + 'static>(s: S) -> (BoxRead, BoxWrite) {
    let (r, w) = tokio::io::split(s);
    (Box::new(r), Box::new(w))
}

fn plain(stream: TcpStream) -> (BoxRead, BoxWrite) {
    let (r, w) = stream.into_split();
    (Box::new(r), Box::new(w))
}

/// Explains a failed TLS handshake on the client side.
fn client_error(peer: &str, e: &std::io::Error) -> Error {
    let reason = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidMessage(_)) => {
            format!("the server does not speak TLS (a cbt server without --tls-cert?): {e}")
        }
        Some(rustls::Error::InvalidCertificate(c)) => {
            format!("the server's certificate is not trusted: {c}")
        }
        _ if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            format!("the server closed the connection during the TLS handshake: {e}")
        }
        _ => e.to_string(),
    };
    Error::Tls {
        peer: peer.to_string(),
        reason,
    }
}

/// Client side: wraps `stream` in TLS when `tls` is given (`addr` names the
/// host whose certificate is expected).
pub(crate) async fn client_stream(
    stream: TcpStream,
    tls: Option<&TlsClient>,
    addr: &str,
    peer: &str,
) -> Result<(BoxRead, BoxWrite)> {
    let Some(tls) = tls else {
        return Ok(plain(stream));
    };
    let name = tls.name_for(addr)?;
    let stream = tls
        .connector
        .connect(name, stream)
        .await
        .map_err(|e| client_error(peer, &e))?;
    Ok(boxed(stream))
}

/// What a listening side found on a new connection.
pub(crate) enum Accepted {
    /// A stream ready for the cbt handshake.
    Stream(BoxRead, BoxWrite),
    /// A plain cbt client reached a TLS server: its stream, to tell it so
    /// in plain framing before closing.
    PlainClient(BoxRead, BoxWrite),
}

/// Server side: with `tls`, tells a TLS client from a plain one by its first
/// byte and runs the TLS handshake.
pub(crate) async fn server_stream(
    stream: TcpStream,
    tls: Option<&TlsServer>,
    peer: &str,
) -> Result<Accepted> {
    let Some(tls) = tls else {
        let (r, w) = plain(stream);
        return Ok(Accepted::Stream(r, w));
    };
    let mut first = [0u8; 1];
    let n = stream
        .peek(&mut first)
        .await
        .map_err(|e| Error::io(peer, "read", e))?;
    if n == 0 {
        return Err(Error::Closed { peer: peer.into() });
    }
    if first[0] == CBT_PREAMBLE {
        let (r, w) = plain(stream);
        return Ok(Accepted::PlainClient(r, w));
    }
    if first[0] != TLS_HANDSHAKE {
        return Err(Error::Tls {
            peer: peer.into(),
            reason: format!("neither TLS nor cbt (first byte {:#04x})", first[0]),
        });
    }
    let stream = tls.acceptor.accept(stream).await.map_err(|e| Error::Tls {
        peer: peer.into(),
        reason: format!("handshake failed: {e}"),
    })?;
    let (r, w) = boxed(stream);
    Ok(Accepted::Stream(r, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_from_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let c = TlsClient::from_ca_file(&ca).unwrap();
        assert!(matches!(
            c.name_for("127.0.0.1:4730").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            c.name_for("[::1]:4730").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            c.name_for("example.org:1").unwrap(),
            ServerName::DnsName(_)
        ));
        let c = c.with_server_name("backup.example").unwrap();
        assert!(matches!(
            c.name_for("127.0.0.1:4730").unwrap(),
            ServerName::DnsName(_)
        ));
    }

    #[test]
    fn bad_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        let e = TlsClient::from_ca_file(&empty).unwrap_err().to_string();
        assert!(e.contains("empty.pem") && e.contains("no PEM certificate"), "{e}");
        let missing = dir.path().join("missing.pem");
        let e = TlsServer::from_pem_files(&missing, &missing)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.pem"), "{e}");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert_path = dir.path().join("cert.pem");
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        let e = TlsServer::from_pem_files(&cert_path, &cert_path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no PEM private key"), "{e}");
    }
}
