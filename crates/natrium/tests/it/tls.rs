//! TLS through real clients: the plaintext INFO with `tls_required` and the upgrade after it,
//! `handshake_first` (with and without the fallback), client certificates checked with
//! `verify`, users mapped from certificates with `verify_and_map`, `pinned_certs` (also changed
//! by a reload), and clients that never finish the handshake. Certificates are made in the test
//! with rcgen (`crate::common::pki`: a CA, a server certificate for 127.0.0.1/localhost, client
//! certificates).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::pki::Pki;
use crate::common::{opts, start};
use futures::StreamExt;
use natrium::options::{Permissions, SubjectPermission, TlsOptions, User};
use natrium::Server;
use rcgen::DnType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn tls_server(tls: TlsOptions) -> Server {
    let mut o = opts();
    o.tls = Some(tls);
    start(o).await
}

fn client_opts(pki: &Pki) -> async_nats::ConnectOptions {
    async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(pki.ca_file())
}

async fn connect(url: &str, o: async_nats::ConnectOptions) -> Result<async_nats::Client, String> {
    let c = o
        .connection_timeout(Duration::from_secs(3))
        .connect(url)
        .await
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(3), c.flush()).await {
        Ok(Ok(())) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("flush timed out".into()),
    }
}

/// Subscribes and publishes once on `c`, returning whether the message came back.
async fn round_trip(c: &async_nats::Client, subject: &str) -> bool {
    let mut sub = c.subscribe(subject.to_string()).await.expect("sub");
    c.flush().await.expect("flush");
    c.publish(subject.to_string(), "hi".into())
        .await
        .expect("pub");
    matches!(
        tokio::time::timeout(Duration::from_secs(3), sub.next()).await,
        Ok(Some(m)) if &m.payload[..] == b"hi"
    )
}

/// Reads the plaintext INFO line of a TLS server.
async fn plain_info(s: &Server) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(s.addr()).await.expect("tcp");
    let mut buf = Vec::new();
    while !buf.ends_with(b"\r\n") {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut b))
            .await
            .expect("INFO in time")
            .expect("read");
        assert!(n > 0, "closed before INFO");
        buf.push(b[0]);
    }
    (stream, String::from_utf8(buf).expect("utf8"))
}

/// Waits until the server closes `stream`; returns how long that took and what arrived.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> (Duration, Vec<u8>) {
    let t0 = Instant::now();
    let mut got = Vec::new();
    let fut = async {
        loop {
            let mut b = [0u8; 1024];
            match stream.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
        }
    };
    tokio::time::timeout(limit, fut)
        .await
        .expect("server closes the connection");
    (t0.elapsed(), got)
}

#[tokio::test]
async fn info_in_plaintext_then_tls_upgrade() {
    let pki = Pki::new();
    let s = tls_server(pki.tls()).await;
    let (_stream, info) = plain_info(&s).await;
    assert!(info.starts_with("INFO {"), "{info}");
    assert!(info.contains("\"tls_required\":true"), "{info}");
    assert!(!info.contains("tls_verify"), "{info}");

    let c = connect(&s.client_url(), client_opts(&pki))
        .await
        .expect("TLS client connects");
    assert!(round_trip(&c, "tls.hello").await);
    // A second client sees the first one's messages over TLS too.
    let c2 = connect(&s.client_url(), client_opts(&pki))
        .await
        .expect("second client");
    let mut sub = c2.subscribe("fan").await.expect("sub");
    c2.flush().await.expect("flush");
    c.publish("fan", "x".into()).await.expect("pub");
    c.flush().await.expect("flush");
    assert!(tokio::time::timeout(Duration::from_secs(3), sub.next())
        .await
        .is_ok());
    // Without the CA the server's certificate is not trusted.
    assert!(connect(
        &s.client_url(),
        async_nats::ConnectOptions::new().require_tls(true)
    )
    .await
    .is_err());
    s.shutdown().await;
}

#[tokio::test]
async fn plaintext_client_and_silent_client_are_closed_by_the_tls_timeout() {
    let pki = Pki::new();
    let mut tls = pki.tls();
    tls.timeout = Duration::from_millis(500);
    let s = tls_server(tls).await;
    // A client that answers the INFO in plaintext fails the handshake right away.
    let (mut stream, _) = plain_info(&s).await;
    stream
        .write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
        .await
        .expect("write");
    let (took, got) = closed_within(&mut stream, Duration::from_secs(3)).await;
    assert!(
        !got.windows(4).any(|w| w == b"PONG"),
        "no plaintext service"
    );
    assert!(
        took < Duration::from_millis(500),
        "closed at once: {took:?}"
    );
    // A client that never starts the handshake is closed after tls.timeout.
    let (mut stream, _) = plain_info(&s).await;
    let (took, _) = closed_within(&mut stream, Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(2),
        "closed after the TLS timeout: {took:?}"
    );
    crate::common::eventually(|| s.num_clients() == 0).await;
    s.shutdown().await;
}

#[tokio::test]
async fn handshake_first() {
    let pki = Pki::new();
    let mut tls = pki.tls();
    tls.handshake_first = true;
    tls.timeout = Duration::from_millis(500);
    let s = tls_server(tls).await;
    let c = connect(&s.client_url(), client_opts(&pki).tls_first())
        .await
        .expect("TLS-first client connects");
    assert!(round_trip(&c, "first").await);
    // Nothing is sent in plaintext: a client waiting for INFO gets nothing and is closed.
    let mut stream = TcpStream::connect(s.addr()).await.expect("tcp");
    let (took, got) = closed_within(&mut stream, Duration::from_secs(5)).await;
    assert!(
        got.is_empty(),
        "no plaintext INFO: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(took >= Duration::from_millis(400), "{took:?}");
    s.shutdown().await;

    // With a fallback delay, a client that waits gets the plaintext INFO and upgrades as usual.
    let mut tls = pki.tls();
    tls.handshake_first = true;
    tls.handshake_first_fallback = Some(Duration::from_millis(50));
    let s = tls_server(tls).await;
    let c = connect(&s.client_url(), client_opts(&pki))
        .await
        .expect("classic client connects through the fallback");
    assert!(round_trip(&c, "fallback.classic").await);
    let c = connect(&s.client_url(), client_opts(&pki).tls_first())
        .await
        .expect("TLS-first client connects too");
    assert!(round_trip(&c, "fallback.first").await);
    s.shutdown().await;
}

#[tokio::test]
async fn verify_requires_a_certificate_from_the_ca() {
    let pki = Pki::new();
    let mut tls = pki.tls();
    tls.verify = true;
    let s = tls_server(tls).await;
    let (_stream, info) = plain_info(&s).await;
    assert!(info.contains("\"tls_verify\":true"), "{info}");

    let (cert, key) = pki.client_cert("client", &[(DnType::CommonName, "client")], None);
    let c = connect(
        &s.client_url(),
        client_opts(&pki).add_client_certificate(cert, key),
    )
    .await
    .expect("client with a certificate connects");
    assert!(round_trip(&c, "verified").await);

    assert!(
        connect(&s.client_url(), client_opts(&pki)).await.is_err(),
        "no client certificate"
    );

    // A certificate from another CA is refused.
    let other = Pki::new();
    let (cert, key) = other.client_cert("stranger", &[(DnType::CommonName, "x")], None);
    assert!(
        connect(
            &s.client_url(),
            client_opts(&pki).add_client_certificate(cert, key)
        )
        .await
        .is_err(),
        "certificate from an unknown CA"
    );
    s.shutdown().await;
}

fn publish_only(subject: &str) -> Permissions {
    Permissions {
        publish: Some(SubjectPermission {
            allow: Some(vec![subject.to_string()]),
            deny: Vec::new(),
        }),
        ..Permissions::default()
    }
}

/// Connects with raw TLS (tokio-rustls) and a client certificate; returns the stream after the
/// INFO line.
async fn raw_tls(
    s: &Server,
    pki: &Pki,
    cert: &Path,
    key: &Path,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let (stream, _) = plain_info(s).await;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(pki.ca_file()).expect("ca"))
        .expect("add ca");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_file(cert).expect("cert")],
            PrivateKeyDer::from_pem_file(key).expect("key"),
        )
        .expect("client auth");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("127.0.0.1").expect("name");
    connector.connect(name, stream).await.expect("handshake")
}

async fn read_until(s: &mut tokio_rustls::client::TlsStream<TcpStream>, pat: &str) -> String {
    let mut buf = Vec::new();
    let fut = async {
        while !String::from_utf8_lossy(&buf).contains(pat) {
            let mut b = [0u8; 1024];
            let n = s.read(&mut b).await.expect("read");
            assert!(n > 0, "closed; had {:?}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&b[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(3), fut)
        .await
        .expect("in time");
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn verify_and_map_takes_the_user_from_the_certificate() {
    let pki = Pki::new();
    let mut tls = pki.tls();
    tls.verify_and_map = true;
    let mut o = opts();
    o.tls = Some(tls);
    o.auth.users = vec![
        User {
            user: "alice@example.com".into(),
            permissions: Some(publish_only("alice.>")),
            ..User::default()
        },
        User {
            user: "CN=bob,OU=eng,O=Acme".into(),
            permissions: Some(publish_only("bob.>")),
            ..User::default()
        },
    ];
    let s = start(o).await;

    // Email SAN → alice, whatever CONNECT claims.
    let (cert, key) = pki.client_cert(
        "alice",
        &[(DnType::CommonName, "Alice")],
        Some("alice@example.com"),
    );
    let mut t = raw_tls(&s, &pki, &cert, &key).await;
    t.write_all(b"CONNECT {\"verbose\":false,\"user\":\"bob\"}\r\nPUB alice.x 0\r\n\r\nPUB bob.x 0\r\n\r\nPING\r\n")
        .await
        .expect("write");
    let got = read_until(&mut t, "PONG").await;
    assert_eq!(
        got,
        "-ERR 'Permissions Violation for Publish to \"bob.x\"'\r\nPONG\r\n"
    );

    // Subject DN → bob (RDNs in the certificate's order: O, OU, CN).
    let (cert, key) = pki.client_cert(
        "bob",
        &[
            (DnType::OrganizationName, "Acme"),
            (DnType::OrganizationalUnitName, "eng"),
            (DnType::CommonName, "bob"),
        ],
        None,
    );
    let mut t = raw_tls(&s, &pki, &cert, &key).await;
    t.write_all(b"CONNECT {\"verbose\":false}\r\nPUB alice.x 0\r\n\r\nPUB bob.x 0\r\n\r\nPING\r\n")
        .await
        .expect("write");
    let got = read_until(&mut t, "PONG").await;
    assert_eq!(
        got,
        "-ERR 'Permissions Violation for Publish to \"alice.x\"'\r\nPONG\r\n"
    );
    // The same through async-nats.
    let c = connect(
        &s.client_url(),
        client_opts(&pki).add_client_certificate(cert, key),
    )
    .await
    .expect("mapped client connects");
    assert!(round_trip(&c, "bob.news").await);

    // A valid certificate that maps to no user is refused.
    let (cert, key) = pki.client_cert("eve", &[(DnType::CommonName, "eve")], None);
    let mut t = raw_tls(&s, &pki, &cert, &key).await;
    t.write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
        .await
        .expect("write");
    let got = read_until(&mut t, "Authorization Violation").await;
    assert!(got.starts_with("-ERR 'Authorization Violation'"), "{got}");
    s.shutdown().await;
}

#[tokio::test]
async fn tls_block_from_a_config_file() {
    let pki = Pki::new();
    let (cert, key) = pki.server_cert();
    let conf = pki.path("server.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:-1\ntls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  timeout: 0.5\n}}\n",
            cert.display(),
            key.display(),
            pki.ca_file().display()
        ),
    )
    .expect("write conf");
    let (o, warnings) = natrium::Options::from_file(&conf).expect("loads");
    assert!(warnings.is_empty(), "{warnings:?}");
    let t = o.tls.clone().expect("tls");
    assert!(t.verify && !t.handshake_first);
    assert_eq!(t.timeout, Duration::from_millis(500));
    let s = start(o).await;
    let (c, k) = pki.client_cert("c", &[(DnType::CommonName, "c")], None);
    let client = connect(
        &s.client_url(),
        client_opts(&pki).add_client_certificate(c, k),
    )
    .await
    .expect("connects");
    assert!(round_trip(&client, "conf").await);
    s.shutdown().await;

    // A missing key file is an error at start, naming the file.
    let mut o = opts();
    o.tls = Some(TlsOptions {
        cert_file: cert,
        key_file: pki.path("missing.pem"),
        ..TlsOptions::default()
    });
    let err = natrium::Server::start(o).await.err().expect("refused");
    assert!(err.to_string().contains("missing.pem"), "{err}");
}

#[tokio::test]
async fn reload_rotates_the_certificate_and_turns_verify_on() {
    let old = Pki::new();
    let mut o = opts();
    o.tls = Some(old.tls());
    let s = start(o.clone()).await;
    let before = connect(&s.client_url(), client_opts(&old))
        .await
        .expect("connects with the old CA");

    // New certificate from another CA, and client certificates required from now on.
    let new = Pki::new();
    let mut tls = new.tls();
    tls.verify = true;
    o.tls = Some(tls);
    s.reload_options(o.clone()).expect("reload");
    let (_stream, info) = plain_info(&s).await;
    assert!(info.contains("\"tls_verify\":true"), "{info}");
    assert!(
        connect(&s.client_url(), client_opts(&old)).await.is_err(),
        "the old CA no longer vouches for the server"
    );
    let (c, k) = new.client_cert("c", &[(DnType::CommonName, "c")], None);
    let after = connect(
        &s.client_url(),
        client_opts(&new).add_client_certificate(c, k),
    )
    .await
    .expect("connects with the new CA and a client certificate");
    assert!(round_trip(&after, "rotated").await);
    // Connections made before keep running.
    assert!(round_trip(&before, "still.up").await);

    // A reload whose key file is missing is refused and changes nothing.
    let mut broken = new.tls();
    broken.key_file = new.path("nope.pem");
    o.tls = Some(broken);
    assert!(s.reload_options(o).is_err());
    let (_stream, info) = plain_info(&s).await;
    assert!(info.contains("\"tls_verify\":true"), "{info}");
    s.shutdown().await;
}

/// The `pinned_certs` entry for a certificate, computed here from its key file: the hex SHA-256
/// of the DER SubjectPublicKeyInfo.
fn pin_of(key_file: &Path) -> String {
    let key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(key_file).expect("key")).expect("pem");
    ring::digest::digest(&ring::digest::SHA256, &key.public_key_der())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn pinned_certs_admit_only_listed_keys() {
    let pki = Pki::new();
    let (ca, ka) = pki.client_cert("pinned", &[(DnType::CommonName, "pinned")], None);
    let (cb, kb) = pki.client_cert("other", &[(DnType::CommonName, "other")], None);
    let mut tls = pki.tls();
    tls.verify = true;
    // Upper case in the config is accepted and compared in lower case.
    let conf = pki.path("pinned.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:-1\ntls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  pinned_certs: [\"{}\"]\n}}\n",
            tls.cert_file.display(),
            tls.key_file.display(),
            pki.ca_file().display(),
            pin_of(&ka).to_uppercase()
        ),
    )
    .expect("write");
    let (o, warnings) = natrium::Options::from_file(&conf).expect("loads");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        o.tls.as_ref().map(|t| t.pinned_certs.clone()),
        Some(vec![pin_of(&ka)])
    );
    let s = start(o.clone()).await;

    let a = connect(
        &s.client_url(),
        client_opts(&pki).add_client_certificate(ca.clone(), ka.clone()),
    )
    .await
    .expect("the pinned certificate connects");
    assert!(round_trip(&a, "pinned").await);
    assert!(
        connect(
            &s.client_url(),
            client_opts(&pki).add_client_certificate(cb.clone(), kb.clone())
        )
        .await
        .is_err(),
        "a certificate from the same CA that is not pinned"
    );

    // A reload pinning only the other key closes the live connection and admits the other.
    let mut o2 = o.clone();
    if let Some(t) = o2.tls.as_mut() {
        t.pinned_certs = vec![pin_of(&kb)];
    }
    s.reload_options(o2).expect("reload");
    crate::common::eventually(|| a.connection_state() != async_nats::connection::State::Connected)
        .await;
    let b = connect(
        &s.client_url(),
        client_opts(&pki).add_client_certificate(cb, kb),
    )
    .await
    .expect("the newly pinned certificate connects");
    assert!(round_trip(&b, "pinned.b").await);
    s.shutdown().await;

    std::fs::write(
        &conf,
        "tls { cert_file: a, key_file: b, pinned_certs: [\"abc\"] }\n",
    )
    .expect("write");
    let e = natrium::Options::from_file(&conf)
        .expect_err("bad pin")
        .to_string();
    assert!(e.contains("does not look like hex-encoded sha256"), "{e}");
}

/// `allow_non_tls: true` (nats.c's suite relies on it): INFO says `tls_available` and not
/// `tls_required`, a TLS client and a plaintext client both connect, and each reaches the
/// other; `/connz` shows which one is on TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_non_tls_lets_plaintext_clients_in_beside_tls_ones() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("t.conf");
    let (cert, key) = pki.server_cert();
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nallow_non_tls: true\ntls {{ cert_file: {:?}, key_file: {:?} }}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    )
    .expect("write");
    let (o, warnings) = natrium::Options::from_file(&conf).expect("loads");
    assert!(warnings.is_empty(), "{warnings:?}");
    let s = start(o).await;
    let (raw, info) = plain_info(&s).await;
    drop(raw);
    assert!(info.contains("\"tls_available\":true"), "{info}");
    assert!(!info.contains("tls_required"), "{info}");
    let url = s.client_url();
    let secure = connect(&url, client_opts(&pki)).await.expect("TLS client");
    let plain = connect(&url, async_nats::ConnectOptions::new())
        .await
        .expect("plaintext client");
    let mut sub = plain.subscribe("mixed").await.expect("sub");
    plain.flush().await.expect("flush");
    // async-nats's flush does not wait for the server: wait until the SUB is in.
    let t0 = Instant::now();
    while crate::common::get_json(&s, "/subsz?test=mixed").await["total"] != 1 {
        assert!(t0.elapsed() < Duration::from_secs(3), "SUB never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    secure
        .publish("mixed", "over tls".into())
        .await
        .expect("pub");
    let m = tokio::time::timeout(Duration::from_secs(3), sub.next())
        .await
        .expect("delivered")
        .expect("message");
    assert_eq!(&m.payload[..], b"over tls");
    let connz = crate::common::get_json(&s, "/connz").await;
    let conns: Vec<_> = connz["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .filter(|c| c["lang"] == "rust")
        .collect();
    let on_tls = conns
        .iter()
        .filter(|c| c["tls_version"].is_string())
        .count();
    assert_eq!((conns.len(), on_tls), (2, 1), "{connz}");
}

/// Runs openssl in `dir` with `args`; panics when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client certificate made exactly as `openssl x509 -req` makes one without an extensions
/// file (a version 1 certificate), signed by `ca` (`<ca>.pem`, `<ca>-key.pem` in `dir`).
fn openssl_v1_client(dir: &Path, name: &str, subject: &str, ca: &str) -> (PathBuf, PathBuf) {
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            subject,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}-key.pem"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
        ],
    );
    let text = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in", &format!("{name}.pem")])
        .current_dir(dir)
        .output()
        .expect("openssl x509 -text");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("Version: 1 (0x0)"),
        "openssl made a version 1 certificate: {text}"
    );
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    )
}

/// A rustls client configuration presenting `cert` (rustls' own builder refuses to load a
/// version 1 certificate, so the key is attached through a resolver) and trusting `ca`.
fn v1_client_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    use rustls::client::ResolvesClientCert;
    use rustls::sign::CertifiedKey;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    #[derive(Debug)]
    struct Always(Arc<CertifiedKey>);
    impl ResolvesClientCert for Always {
        fn resolve(
            &self,
            _hints: &[&[u8]],
            _schemes: &[rustls::SignatureScheme],
        ) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
        fn has_certs(&self) -> bool {
            true
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let signing = provider
        .key_provider
        .load_private_key(PrivateKeyDer::from_pem_file(key).expect("key"))
        .expect("signing key");
    let certified = CertifiedKey::new(
        vec![CertificateDer::from_pem_file(cert).expect("cert")],
        signing,
    );
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).expect("ca"))
        .expect("add ca");
    rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(Always(Arc::new(certified))))
}

/// Version 1 client certificates (`openssl x509 -req` without an extensions file), which
/// nats-server accepts for mutual TLS: admitted over TLS 1.3 (async-nats) and TLS 1.2 when a
/// proper CA in `ca_file` signed them, and mapped to a user by `verify_and_map`; refused when
/// signed by an unknown CA or by a "CA" that is not one (a version 1 self-signed certificate,
/// even though it is in `ca_file`).
#[tokio::test]
async fn version_1_client_certificates() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=v1 test CA",
        ],
    );
    // Not a CA: a version 1 self-signed certificate, listed in ca_file all the same.
    openssl(
        d,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "fake-key.pem",
            "-out",
            "fake.csr",
            "-subj",
            "/CN=not a CA",
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "fake.csr",
            "-signkey",
            "fake-key.pem",
            "-out",
            "fake.pem",
            "-days",
            "2",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "other-key.pem",
            "-out",
            "other.pem",
            "-days",
            "2",
            "-subj",
            "/CN=unknown CA",
        ],
    );
    let trusted = d.join("trusted.pem");
    std::fs::write(
        &trusted,
        format!(
            "{}{}",
            std::fs::read_to_string(d.join("ca.pem")).expect("ca"),
            std::fs::read_to_string(d.join("fake.pem")).expect("fake")
        ),
    )
    .expect("write ca_file");
    let (alice, alice_key) = openssl_v1_client(d, "alice", "/CN=alice/O=Acme", "ca");
    let (forged, forged_key) = openssl_v1_client(d, "forged", "/CN=alice/O=Acme", "fake");
    let (stranger, stranger_key) = openssl_v1_client(d, "stranger", "/CN=alice/O=Acme", "other");

    let mut tls = pki.tls();
    tls.ca_file = Some(trusted.clone());
    tls.verify = true;
    let s = tls_server(tls.clone()).await;
    let tls13 = &[&rustls::version::TLS13];
    let c = connect(
        &s.client_url(),
        async_nats::ConnectOptions::new()
            .require_tls(true)
            .tls_client_config(v1_client_config(&pki.ca_file(), &alice, &alice_key, tls13)),
    )
    .await
    .expect("a version 1 certificate from the CA is accepted");
    assert!(round_trip(&c, "v1").await);
    for (what, cert, key) in [
        (
            "signed by a certificate that is not a CA",
            &forged,
            &forged_key,
        ),
        ("signed by an unknown CA", &stranger, &stranger_key),
    ] {
        assert!(
            connect(
                &s.client_url(),
                async_nats::ConnectOptions::new()
                    .require_tls(true)
                    .tls_client_config(v1_client_config(&pki.ca_file(), cert, key, tls13)),
            )
            .await
            .is_err(),
            "{what}"
        );
    }
    // TLS 1.2: the handshake signature is checked with the version 1 certificate's key too.
    let (stream, _) = plain_info(&s).await;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(v1_client_config(
        &pki.ca_file(),
        &alice,
        &alice_key,
        &[&rustls::version::TLS12],
    )));
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut t = connector.connect(name, stream).await.expect("TLS 1.2");
    t.write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
        .await
        .expect("write");
    assert!(read_until(&mut t, "PONG\r\n").await.ends_with("PONG\r\n"));
    s.shutdown().await;

    // verify_and_map: the user comes from the version 1 certificate's subject.
    tls.verify = false;
    tls.verify_and_map = true;
    let mut o = opts();
    o.tls = Some(tls);
    o.auth.users = vec![User {
        user: "CN=alice,O=Acme".into(),
        permissions: Some(publish_only("alice.>")),
        ..User::default()
    }];
    let s = start(o).await;
    let stream = plain_info(&s).await.0;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(v1_client_config(
        &pki.ca_file(),
        &alice,
        &alice_key,
        tls13,
    )));
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut t = connector.connect(name, stream).await.expect("TLS 1.3");
    t.write_all(
        b"CONNECT {\"verbose\":false}\r\nPUB alice.x 1\r\nx\r\nPUB bob.x 1\r\nx\r\nPING\r\n",
    )
    .await
    .expect("write");
    assert_eq!(
        read_until(&mut t, "PONG\r\n").await,
        "-ERR 'Permissions Violation for Publish to \"bob.x\"'\r\nPONG\r\n"
    );
    s.shutdown().await;
}
