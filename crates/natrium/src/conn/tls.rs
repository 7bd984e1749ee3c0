//! TLS for client connections (rustls, ring provider): the acceptor built from the `tls {}`
//! options, the handshake (after the plaintext INFO as NATS clients expect, or first with
//! `handshake_first`) bounded by `tls.timeout`, `pinned_certs` enforced after it, and what
//! `/connz` reports of a TLS session. The same certificate also serves HTTPS monitoring.
//! Certificates and keys are read when the server starts or reloads.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::auth::certs::{
    cert_names, is_pinned, is_version_1, key_id, peer_cert, verify_v1_chain, verify_v1_handshake,
    CertNames, ChainError, PeerCert,
};
use crate::router::CloseReason;

/// The `tls {}` block (and the `--tls*` flags) for the client listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Certificate authorities client certificates are checked against (with `verify`).
    pub ca_file: Option<PathBuf>,
    /// Require a client certificate signed by `ca_file`.
    pub verify: bool,
    /// Require a client certificate and take the user name from it (email, DNS name, URI, or DN).
    pub verify_and_map: bool,
    /// How long a client has to finish the handshake.
    pub timeout: Duration,
    /// Expect the TLS handshake right away and send INFO inside TLS.
    pub handshake_first: bool,
    /// With `handshake_first`: when the client sends nothing for this long, fall back to the
    /// plaintext INFO first (`handshake_first: auto` or a duration).
    pub handshake_first_fallback: Option<Duration>,
    /// `pinned_certs`: lower-case hex SHA-256 digests of the DER SubjectPublicKeyInfo of the
    /// client certificates accepted; when set, any other client (or one without a certificate)
    /// is closed after the handshake.
    pub pinned_certs: Vec<String>,
    /// For connections this server dials (routes): do not check the peer's certificate.
    pub insecure: bool,
    /// `allow_non_tls` (a top-level setting in nats-server's config): TLS is offered, not
    /// required. INFO goes out in plaintext saying `tls_available`; a client that starts a TLS
    /// handshake gets one, any other continues in plaintext.
    pub allow_non_tls: bool,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            ca_file: None,
            verify: false,
            verify_and_map: false,
            timeout: Duration::from_secs(2),
            handshake_first: false,
            handshake_first_fallback: None,
            pinned_certs: Vec::new(),
            insecure: false,
            allow_non_tls: false,
        }
    }
}

/// What a client chose when TLS is offered: a TLS session, or (with `allow_non_tls`) plaintext.
pub enum Accepted {
    Tls(Box<Handshake>),
    /// The INFO already went out in plaintext.
    Plain(TcpStream),
}

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Why the TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls: can not load {what} {path:?}: {msg}")]
    Load {
        what: &'static str,
        path: String,
        msg: String,
    },
    #[error("tls: {0}")]
    Config(String),
}

/// A loaded TLS configuration: the acceptors and the options they came from.
pub struct TlsServer {
    acceptor: TlsAcceptor,
    /// For HTTPS monitoring: the same certificate, never asking for a client certificate (as
    /// nats-server does).
    monitor: TlsAcceptor,
    pub opts: TlsOptions,
    /// Expiry of the server certificate, for `/varz` (`tls_cert_not_after`).
    pub not_after: Option<std::time::SystemTime>,
}

fn load_err(what: &'static str, path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Load {
        what,
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}

fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| load_err(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| load_err(what, path, e))?;
    if certs.is_empty() {
        return Err(load_err(what, path, "no certificate found"));
    }
    Ok(certs)
}

impl TlsServer {
    /// Reads the certificate, key and CA files and builds the rustls configuration.
    pub fn new(opts: &TlsOptions) -> Result<TlsServer, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = load_certs("certificate", &opts.cert_file)?;
        let key = PrivateKeyDer::from_pem_file(&opts.key_file)
            .map_err(|e| load_err("private key", &opts.key_file, e))?;
        let builder = || {
            ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Config(e.to_string()))
        };
        let monitor = builder()?
            .with_no_client_auth()
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let not_after = not_after(certs[0].as_ref());
        let builder = builder()?;
        let builder = if opts.verify || opts.verify_and_map {
            let ca_path = opts.ca_file.as_deref().ok_or_else(|| {
                TlsError::Config("verify needs a ca_file to check client certificates".into())
            })?;
            let mut roots = RootCertStore::empty();
            let anchors = load_certs("CA certificate", ca_path)?;
            for ca in &anchors {
                roots
                    .add(ca.clone())
                    .map_err(|e| load_err("CA certificate", ca_path, e))?;
            }
            let webpki =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(Arc::new(ClientVerifier {
                webpki,
                anchors,
                algs: provider.signature_verification_algorithms,
            }))
        } else {
            builder.with_no_client_auth()
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(TlsServer {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            monitor: TlsAcceptor::from(Arc::new(monitor)),
            opts: opts.clone(),
            not_after,
        })
    }

    /// The acceptor with this configuration's client-certificate checks (routes use it).
    pub fn route_acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// The acceptor for HTTPS monitoring connections.
    pub fn monitor_acceptor(&self) -> TlsAcceptor {
        self.monitor.clone()
    }

    /// Whether clients must present a certificate.
    pub fn verify(&self) -> bool {
        self.opts.verify || self.opts.verify_and_map
    }
}

/// Client certificate verification: webpki for version 3 certificates, exactly as rustls
/// configures it; version 1 certificates (which webpki refuses to parse, and which nats-server,
/// through Go's x509, accepts) are verified by `auth::certs::verify_v1_chain` against the same
/// CA file, every issuer on the way required to be a proper CA. The kind of certificate decides
/// the path, never the outcome of the other: a version 3 certificate webpki refuses stays refused.
#[derive(Debug)]
struct ClientVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    /// The `ca_file`'s certificates (the trust anchors).
    anchors: Vec<CertificateDer<'static>>,
    algs: WebPkiSupportedAlgorithms,
}

fn v1_error(e: ChainError) -> rustls::Error {
    let c = match e {
        ChainError::NotVersion1 | ChainError::Malformed => CertificateError::BadEncoding,
        ChainError::NotValidNow => CertificateError::Expired,
        ChainError::UnknownIssuer => CertificateError::UnknownIssuer,
        ChainError::BadSignature => CertificateError::BadSignature,
        ChainError::UnsupportedAlgorithm => {
            CertificateError::Other(rustls::OtherError(Arc::new(e)))
        }
    };
    rustls::Error::InvalidCertificate(c)
}

impl ClientVerifier {
    fn v1_handshake(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
        tls13: bool,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let candidates = self
            .algs
            .mapping
            .iter()
            .find(|(scheme, _)| *scheme == dss.scheme)
            .map(|(_, algs)| *algs)
            .ok_or(rustls::Error::PeerMisbehaved(
                rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
            ))?;
        verify_v1_handshake(cert.as_ref(), message, dss.signature(), candidates, tls13)
            .map(|()| HandshakeSignatureValid::assertion())
            .map_err(v1_error)
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.webpki.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.webpki.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if !is_version_1(end_entity.as_ref()) {
            return self
                .webpki
                .verify_client_cert(end_entity, intermediates, now);
        }
        let inter: Vec<&[u8]> = intermediates.iter().map(|c| c.as_ref()).collect();
        let anchors: Vec<&[u8]> = self.anchors.iter().map(|c| c.as_ref()).collect();
        verify_v1_chain(
            end_entity.as_ref(),
            &inter,
            &anchors,
            now.as_secs(),
            self.algs.all,
        )
        .map(|()| ClientCertVerified::assertion())
        .map_err(v1_error)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if is_version_1(cert.as_ref()) {
            return self.v1_handshake(message, cert, dss, false);
        }
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if is_version_1(cert.as_ref()) {
            use rustls::SignatureScheme as S;
            let tls13 = matches!(
                dss.scheme,
                S::ECDSA_NISTP256_SHA256
                    | S::ECDSA_NISTP384_SHA384
                    | S::ECDSA_NISTP521_SHA512
                    | S::RSA_PSS_SHA256
                    | S::RSA_PSS_SHA384
                    | S::RSA_PSS_SHA512
                    | S::ED25519
                    | S::ED448
            );
            if !tls13 {
                return Err(rustls::Error::PeerMisbehaved(
                    rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
                ));
            }
            return self.v1_handshake(message, cert, dss, true);
        }
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// A completed handshake: the encrypted stream and what it says about the client.
pub struct Handshake {
    pub stream: TlsStream<TcpStream>,
    /// Whether the handshake came before INFO (then INFO still has to be sent, inside TLS).
    pub first: bool,
    /// The client certificate's names (for `verify_and_map`), if it sent one.
    pub names: Option<CertNames>,
    pub state: TlsConnInfo,
    /// The client certificate's key id (for `pinned_certs`).
    pub key_id: Option<String>,
}

impl TlsServer {
    /// Runs the TLS handshake for one accepted client. Without `handshake_first` the INFO line
    /// goes out in plaintext first, as NATS clients expect; with it INFO is left to be sent
    /// inside TLS. A client that does not complete the handshake within `tls.timeout`, or whose
    /// certificate is not pinned, is refused. With `allow_non_tls`, after the plaintext INFO a
    /// client whose first byte does not start a TLS record (or that sends nothing within
    /// `tls.timeout`) stays in plaintext, as nats-server decides it.
    pub async fn handshake(
        &self,
        mut stream: TcpStream,
        info: &[u8],
        (addr, cid): (SocketAddr, u64),
    ) -> Result<Accepted, CloseReason> {
        let o = &self.opts;
        if o.allow_non_tls && !o.handshake_first {
            if stream.write_all(info).await.is_err() {
                return Err(CloseReason::WriteError);
            }
            let mut b = [0u8; 1];
            let tls = matches!(
                tokio::time::timeout(o.timeout, stream.peek(&mut b)).await,
                Ok(Ok(1)) if b[0] == TLS_HANDSHAKE_RECORD
            );
            if !tls {
                return Ok(Accepted::Plain(stream));
            }
            return self
                .finish(stream, None, false, (addr, cid))
                .await
                .map(|h| Accepted::Tls(Box::new(h)));
        }
        let mut first = o.handshake_first;
        if let (true, Some(delay)) = (first, o.handshake_first_fallback) {
            // Fallback: a client that says nothing is waiting for a plaintext INFO.
            let mut b = [0u8; 1];
            first = tokio::time::timeout(delay, stream.peek(&mut b))
                .await
                .is_ok();
        }
        let info = (!first).then_some(info);
        self.finish(stream, info, first, (addr, cid))
            .await
            .map(|h| Accepted::Tls(Box::new(h)))
    }

    /// Writes `info` in plaintext (when given), then runs the handshake bounded by
    /// `tls.timeout` and checks the client's certificate against `pinned_certs`.
    async fn finish(
        &self,
        mut stream: TcpStream,
        info: Option<&[u8]>,
        first: bool,
        (addr, cid): (SocketAddr, u64),
    ) -> Result<Handshake, CloseReason> {
        let o = &self.opts;
        let handshake = async {
            if let Some(info) = info {
                stream.write_all(info).await?;
            }
            self.acceptor.accept(stream).await
        };
        let s = match tokio::time::timeout(o.timeout, handshake).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::error!("{addr} - cid:{cid} - TLS handshake error: {e}");
                return Err(CloseReason::TlsHandshakeError);
            }
            Err(_) => {
                tracing::error!("{addr} - cid:{cid} - TLS handshake timeout");
                return Err(CloseReason::TlsHandshakeError);
            }
        };
        let (_, session) = s.get_ref();
        let leaf = session.peer_certificates().and_then(|c| c.first());
        let names = leaf.map(|c| cert_names(c.as_ref()));
        let key_id = leaf.and_then(|c| key_id(c.as_ref()));
        let state = TlsConnInfo::new(session, first);
        tracing::debug!(
            "{addr} - cid:{cid} - TLS handshake complete (TLS {}, {})",
            state.version,
            state.cipher_suite
        );
        if !o.pinned_certs.is_empty() && !is_pinned(&o.pinned_certs, key_id.as_deref()) {
            tracing::error!(
                "{addr} - cid:{cid} - TLS handshake error: certificate not pinned (key id {})",
                key_id.as_deref().unwrap_or("none: no client certificate")
            );
            return Err(CloseReason::TlsHandshakeError);
        }
        Ok(Handshake {
            stream: s,
            first,
            names,
            state,
            key_id,
        })
    }
}

/// What `/connz` shows of a client's TLS session, in nats-server's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConnInfo {
    /// `1.2` or `1.3`.
    pub version: String,
    /// The IANA name of the cipher suite (as Go names them).
    pub cipher_suite: String,
    /// Whether the handshake came before the INFO (`handshake_first`).
    pub first: bool,
    /// The certificates the client presented, its own first.
    pub peer_certs: Vec<PeerCert>,
    /// The same certificates, DER (an auth callout request carries them).
    pub peer_der: Vec<Vec<u8>>,
}

impl TlsConnInfo {
    fn new(session: &rustls::ServerConnection, first: bool) -> TlsConnInfo {
        TlsConnInfo {
            version: session
                .protocol_version()
                .map_or_else(String::new, tls_version),
            cipher_suite: session
                .negotiated_cipher_suite()
                .map_or_else(String::new, |c| cipher_suite_name(c.suite())),
            first,
            peer_certs: session
                .peer_certificates()
                .unwrap_or_default()
                .iter()
                .map(|c| peer_cert(c.as_ref()))
                .collect(),
            peer_der: session
                .peer_certificates()
                .unwrap_or_default()
                .iter()
                .map(|c| c.as_ref().to_vec())
                .collect(),
        }
    }
}

/// `1.2`, `1.3`, as nats-server prints TLS versions.
fn tls_version(v: rustls::ProtocolVersion) -> String {
    match v {
        rustls::ProtocolVersion::TLSv1_2 => "1.2".into(),
        rustls::ProtocolVersion::TLSv1_3 => "1.3".into(),
        other => format!("Unknown [0x{:x}]", u16::from(other)),
    }
}

/// The IANA names of the suites rustls offers (Go's `tls.CipherSuiteName`), or the hex code.
fn cipher_suite_name(s: rustls::CipherSuite) -> String {
    let id = u16::from(s);
    let name = match id {
        0x1301 => "TLS_AES_128_GCM_SHA256",
        0x1302 => "TLS_AES_256_GCM_SHA384",
        0x1303 => "TLS_CHACHA20_POLY1305_SHA256",
        0xc02b => "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        0xc02c => "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        0xc02f => "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        0xc030 => "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        0xcca8 => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        0xcca9 => "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        _ => return format!("0x{id:04X}"),
    };
    name.to_string()
}

/// When a DER certificate expires.
fn not_after(der: &[u8]) -> Option<std::time::SystemTime> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let since_epoch = cert.tbs_certificate.validity.not_after.to_unix_duration();
    Some(std::time::UNIX_EPOCH + since_epoch)
}
