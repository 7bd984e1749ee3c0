//! Monitoring and TLS: the HTTPS monitor (the `tls {}` certificate, the same routes, no plain
//! HTTP on its port), `http_base_path`, and the TLS fields of `/varz` and `/connz` for clients
//! on TLS 1.3, TLS 1.2 and `handshake_first`, and their absence for plaintext clients.
//! Certificates are made in the test with rcgen (`crate::common::pki`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::common::pki::Pki;
use crate::common::{opts, start};
use natrium::{Options, Server};
use rcgen::DnType;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

/// An HTTPS client that trusts only the test CA.
fn https_client(pki: &Pki) -> reqwest::Client {
    let ca = std::fs::read(pki.ca_file()).expect("read ca");
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca pem"))
        .build()
        .expect("client")
}

async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    let r = client.get(url).send().await.expect("get");
    assert_eq!(r.status(), 200, "{url}");
    r.json().await.expect("json")
}

fn monitored(mut o: Options) -> Options {
    o.http_host = "127.0.0.1".into();
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_monitor_serves_the_routes_over_tls_only() {
    let pki = Pki::new();
    let mut tls = pki.tls();
    // Clients must present a certificate; the monitor does not ask for one (as nats-server).
    tls.verify = true;
    let mut o = monitored(opts());
    o.tls = Some(tls);
    o.https_port = Some(-1);
    let s = start(o).await;
    assert_eq!(s.http_port(), None);
    let port = s.https_port().expect("https monitor on");
    let base = s.monitor_url().expect("monitor url");
    assert_eq!(base, format!("https://127.0.0.1:{port}"));

    let client = https_client(&pki);
    let varz = get_json(&client, &format!("{base}/varz")).await;
    assert_eq!(varz["https_port"], port);
    assert_eq!(varz["http_port"], 0);
    let health = get_json(&client, &format!("{base}/healthz")).await;
    assert_eq!(health, serde_json::json!({"status": "ok"}));
    let connz = get_json(&client, &format!("{base}/connz")).await;
    assert_eq!(connz["num_connections"], 0);

    // Plain HTTP on the HTTPS port gets no answer.
    let plain = reqwest::get(format!("http://127.0.0.1:{port}/varz")).await;
    assert!(plain.is_err(), "plain http answered: {plain:?}");
    // A client that does not trust the CA refuses the certificate.
    let untrusting = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .build()
        .expect("client");
    let r = untrusting.get(format!("{base}/varz")).send().await;
    assert!(r.is_err(), "certificate accepted without the CA: {r:?}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_needs_tls_and_excludes_http() {
    let mut o = monitored(opts());
    o.https_port = Some(-1);
    let e = Server::start(o).await.err().expect("refused without tls");
    assert!(
        e.to_string()
            .contains("TLS cert and key required for HTTPS"),
        "{e}"
    );

    let pki = Pki::new();
    let mut o = monitored(opts());
    o.tls = Some(pki.tls());
    o.https_port = Some(-1);
    o.http_port = Some(-1);
    let e = Server::start(o).await.err().expect("refused with both");
    assert!(
        e.to_string()
            .contains("can't specify both HTTP (-1) and HTTPs (-1) ports"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_from_a_config_file_with_a_base_path() {
    let pki = Pki::new();
    let (cert, key) = pki.server_cert();
    let conf = pki.path("server.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:-1\nhttps: 127.0.0.1:-1\nhttp_base_path: mon/\n\
             tls {{ cert_file: {:?}, key_file: {:?} }}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    )
    .expect("write conf");
    let (o, warnings) = Options::from_file(&conf).expect("loads");
    assert!(warnings.is_empty(), "{warnings:?}");
    let s = start(o).await;
    let base = s.monitor_url().expect("monitor url");
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    let client = https_client(&pki);
    let varz = get_json(&client, &format!("{base}/mon/varz")).await;
    assert_eq!(varz["http_base_path"], "mon/");
    let index = client.get(format!("{base}/mon")).send().await.expect("get");
    assert_eq!(index.status(), 200);
    let html = index.text().await.expect("body");
    assert!(html.contains("<a href=/mon/connz>"), "{html}");
    let unprefixed = client
        .get(format!("{base}/varz"))
        .send()
        .await
        .expect("get");
    assert_eq!(unprefixed.status(), 404);
    s.shutdown().await;
}

/// A rustls client configuration limited to one protocol version and one cipher suite, with a
/// client certificate.
fn client_config(
    pki: &Pki,
    cert: &Path,
    key: &Path,
    version: &'static rustls::SupportedProtocolVersion,
    suite: rustls::SupportedCipherSuite,
) -> rustls::ClientConfig {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![suite];
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(pki.ca_file()).expect("ca"))
        .expect("add ca");
    let certs = CertificateDer::pem_file_iter(cert)
        .expect("cert")
        .collect::<Result<Vec<_>, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(key).expect("key");
    rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .expect("client config")
}

async fn connect(url: &str, o: async_nats::ConnectOptions) -> async_nats::Client {
    let c = o
        .connection_timeout(Duration::from_secs(3))
        .connect(url)
        .await
        .expect("connect");
    c.flush().await.expect("flush");
    c
}

fn sha256_hex(b: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// The connection named `name` in a `/connz` answer.
fn conn<'a>(connz: &'a Value, name: &str) -> &'a serde_json::Map<String, Value> {
    connz["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .find(|c| c["name"] == name)
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("no connection {name:?} in {connz}"))
}

fn tls_keys(c: &serde_json::Map<String, Value>) -> Vec<&String> {
    c.keys().filter(|k| k.starts_with("tls_")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn varz_and_connz_report_tls_sessions() {
    let pki = Pki::new();
    let mut tls = pki.tls();
    tls.verify = true;
    tls.timeout = Duration::from_secs(3);
    let mut o = monitored(opts());
    o.tls = Some(tls);
    o.http_port = Some(-1);
    let s = start(o).await;
    let (cert, key) = pki.client_cert(
        "alice",
        &[
            (DnType::CountryName, "US"),
            (DnType::OrganizationName, "Acme"),
            (DnType::CommonName, "alice"),
        ],
        None,
    );
    let tls13 = client_config(
        &pki,
        &cert,
        &key,
        &rustls::version::TLS13,
        rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
    );
    let tls12 = client_config(
        &pki,
        &cert,
        &key,
        &rustls::version::TLS12,
        rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    );
    let opts_with = |name: &str, config: rustls::ClientConfig| {
        async_nats::ConnectOptions::new()
            .name(name)
            .require_tls(true)
            .tls_client_config(config)
    };
    let _a = connect(&s.client_url(), opts_with("v13", tls13)).await;
    let _b = connect(&s.client_url(), opts_with("v12", tls12)).await;

    let base = s.monitor_url().expect("monitor url");
    let http = reqwest::Client::new();
    let varz = get_json(&http, &format!("{base}/varz")).await;
    assert_eq!(varz["tls_required"], true);
    assert_eq!(varz["tls_verify"], true);
    assert_eq!(varz["tls_timeout"], 3.0);
    // rcgen's default validity ends at the start of 4096.
    assert_eq!(varz["tls_cert_not_after"], "4096-01-01T00:00:00Z");
    assert!(varz.get("tls_ocsp_peer_verify").is_none());

    let connz = get_json(&http, &format!("{base}/connz")).await;
    let v13 = conn(&connz, "v13");
    assert_eq!(v13["tls_version"], "1.3");
    assert_eq!(v13["tls_cipher_suite"], "TLS_AES_128_GCM_SHA256");
    assert!(!v13.contains_key("tls_first"), "{v13:?}");
    assert!(
        !v13.contains_key("tls_peer_certs"),
        "peer certificates only with auth=1: {v13:?}"
    );
    let v12 = conn(&connz, "v12");
    assert_eq!(v12["tls_version"], "1.2");
    assert_eq!(
        v12["tls_cipher_suite"],
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
    );

    // With auth=1, the client's certificate: subject most specific first, as Go prints it.
    let connz = get_json(&http, &format!("{base}/connz?auth=1")).await;
    let der = CertificateDer::from_pem_file(&cert).expect("cert");
    let key_pair =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(&key).expect("key")).expect("key pem");
    let expected = serde_json::json!([{
        "subject": "CN=alice,O=Acme,C=US",
        "spki_sha256": sha256_hex(&key_pair.public_key_der()),
        "cert_sha256": sha256_hex(der.as_ref()),
    }]);
    assert_eq!(conn(&connz, "v13")["tls_peer_certs"], expected);
    assert_eq!(conn(&connz, "v12")["tls_peer_certs"], expected);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_first_is_reported_and_plain_connections_have_no_tls_fields() {
    let pki = Pki::new();
    let mut tls = pki.tls();
    tls.handshake_first = true;
    let mut o = monitored(opts());
    o.tls = Some(tls);
    o.http_port = Some(-1);
    let s = start(o).await;
    let ca = pki.ca_file();
    let _c = connect(
        &s.client_url(),
        async_nats::ConnectOptions::new()
            .name("first")
            .tls_first()
            .add_root_certificates(ca),
    )
    .await;
    let http = reqwest::Client::new();
    let connz = get_json(
        &http,
        &format!("{}/connz?auth=1", s.monitor_url().expect("url")),
    )
    .await;
    let first = conn(&connz, "first");
    assert_eq!(first["tls_first"], true);
    assert_eq!(first["tls_version"], "1.3");
    assert!(
        !first.contains_key("tls_peer_certs"),
        "no client certificate was sent: {first:?}"
    );
    s.shutdown().await;

    // A plaintext server and client: none of the TLS fields.
    let mut o = monitored(opts());
    o.http_port = Some(-1);
    let s = start(o).await;
    let _p = connect(
        &s.client_url(),
        async_nats::ConnectOptions::new().name("plain"),
    )
    .await;
    let base = s.monitor_url().expect("url");
    let connz = get_json(&http, &format!("{base}/connz?auth=1")).await;
    let plain = conn(&connz, "plain");
    assert!(tls_keys(plain).is_empty(), "{plain:?}");
    let varz = get_json(&http, &format!("{base}/varz")).await;
    let varz_tls: Vec<&String> = varz
        .as_object()
        .expect("object")
        .keys()
        .filter(|k| k.starts_with("tls_"))
        .collect();
    assert_eq!(varz_tls, ["tls_timeout"]);
    assert_eq!(varz["tls_timeout"], 2.0);
    assert_eq!(varz["https_port"], 0);
    s.shutdown().await;
}
