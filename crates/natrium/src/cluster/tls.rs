//! TLS on routes (`cluster { tls { ... } }`): as in nats-server the handshake comes first, before
//! INFO, on both sides. The accepting side is the client listener's kind of acceptor (a peer's
//! certificate checked against `ca_file` with `verify`); the dialling side checks the peer's
//! certificate against `ca_file` for the host it dialled (unless `insecure`) and presents its
//! own certificate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::conn::{TlsError, TlsOptions, TlsServer};

/// The route TLS of this server, both directions.
pub struct RouteTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    timeout: Duration,
}

/// What a route's TLS handshake gives: the encrypted stream, either way round.
pub enum TlsStream {
    Accepted(tokio_rustls::server::TlsStream<TcpStream>),
    Dialled(tokio_rustls::client::TlsStream<TcpStream>),
}

impl RouteTls {
    /// Reads the certificate, key and CA; `insecure` skips checking peers' certificates when
    /// dialling (as nats-server's option, for tests only).
    pub fn new(opts: &TlsOptions) -> Result<RouteTls, TlsError> {
        let server = TlsServer::new(opts)?;
        let client = client_config(
            opts,
            "cluster tls needs a ca_file to check the peers' certificates",
        )?;
        Ok(RouteTls {
            acceptor: server.route_acceptor(),
            connector: TlsConnector::from(Arc::new(client)),
            timeout: opts.timeout,
        })
    }

    /// The accepting side's handshake.
    pub async fn accept(&self, stream: TcpStream, peer: SocketAddr) -> Option<TlsStream> {
        match tokio::time::timeout(self.timeout, self.acceptor.accept(stream)).await {
            Ok(Ok(s)) => Some(TlsStream::Accepted(s)),
            Ok(Err(e)) => {
                tracing::error!("{peer} - Route TLS handshake error: {e}");
                None
            }
            Err(_) => {
                tracing::error!("{peer} - Route TLS handshake timeout");
                None
            }
        }
    }

    /// The dialling side's handshake, checking the certificate against `host`.
    pub async fn connect(&self, stream: TcpStream, host: &str) -> Option<TlsStream> {
        let name = match ServerName::try_from(host.to_string()) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("Route TLS: {host:?} is not a valid server name: {e}");
                return None;
            }
        };
        match tokio::time::timeout(self.timeout, self.connector.connect(name, stream)).await {
            Ok(Ok(s)) => Some(TlsStream::Dialled(s)),
            Ok(Err(e)) => {
                tracing::error!("Route TLS handshake error with {host}: {e}");
                None
            }
            Err(_) => {
                tracing::error!("Route TLS handshake timeout with {host}");
                None
            }
        }
    }
}

/// The dialling side's TLS (routes, leafnode remotes): the peer's certificate checked against
/// `ca_file` (`missing_ca` is the error without one), or not at all with `insecure`; this
/// server's own certificate presented when `cert_file` is set.
pub(crate) fn client_config(opts: &TlsOptions, missing_ca: &str) -> Result<ClientConfig, TlsError> {
    let load = |what: &'static str,
                path: &std::path::Path|
     -> Result<Vec<CertificateDer<'static>>, TlsError> {
        CertificateDer::pem_file_iter(path)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| TlsError::Load {
                what,
                path: path.display().to_string(),
                msg: e.to_string(),
            })
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = if opts.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify))
    } else {
        let ca = opts
            .ca_file
            .as_deref()
            .ok_or_else(|| TlsError::Config(missing_ca.into()))?;
        let mut roots = RootCertStore::empty();
        for c in load("CA certificate", ca)? {
            roots.add(c).map_err(|e| TlsError::Config(e.to_string()))?;
        }
        builder.with_root_certificates(roots)
    };
    if opts.cert_file.as_os_str().is_empty() {
        return Ok(builder.with_no_client_auth());
    }
    let certs = load("certificate", &opts.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&opts.key_file).map_err(|e| TlsError::Load {
        what: "private key",
        path: opts.key_file.display().to_string(),
        msg: e.to_string(),
    })?;
    builder
        .with_client_auth_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// `insecure`: any certificate is taken (nats-server warns that this is not for production).
#[derive(Debug)]
struct NoVerify;

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl tokio::io::AsyncRead for TlsStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            TlsStream::Accepted(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            TlsStream::Dialled(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for TlsStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            TlsStream::Accepted(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            TlsStream::Dialled(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            TlsStream::Accepted(s) => std::pin::Pin::new(s).poll_flush(cx),
            TlsStream::Dialled(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            TlsStream::Accepted(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            TlsStream::Dialled(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}
