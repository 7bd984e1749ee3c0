//! Monitoring and TLS: the HTTPS monitor (the `tls {}` certificate, the same routes, no plain
//! HTTP on its port) and `http_base_path`. Certificates are made in the test with rcgen
//! (`common::pki`).

mod common;

use common::pki::Pki;
use common::{opts, start};
use natrium::{Options, Server};
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
    let unprefixed = client
        .get(format!("{base}/varz"))
        .send()
        .await
        .expect("get");
    assert_eq!(unprefixed.status(), 404);
    s.shutdown().await;
}
