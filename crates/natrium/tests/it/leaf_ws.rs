//! Leafnode remotes over WebSocket (`ws://`): a Natrium leaf to a Natrium hub's WebSocket
//! listener and to nats-server's, a nats-server leaf to Natrium's, with and without
//! `ws_compression` and `ws_no_masking`; messages, headers, request-reply and a queue group
//! cross as over TCP.

use crate::common::eventually;
use crate::common::goserver::{nats_servers, GoBin, GoServer};
use crate::common::traffic::natrium;
use crate::leaf::{connect, exchange, free_port};

/// A hub with a plaintext WebSocket listener (compressing) and a leafnode listener.
const WS_HUB: &str = "websocket { listen: \"127.0.0.1:-1\", no_tls: true, compression: true }\nleafnodes { host: 127.0.0.1, port: -1 }\n";

/// The remote's WebSocket options: none, or both.
fn ws_opts(extras: bool) -> &'static str {
    if extras {
        ", ws_compression: true, ws_no_masking: true"
    } else {
        ""
    }
}

#[tokio::test]
async fn natrium_leaf_over_websocket_to_a_natrium_hub() {
    for extras in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = natrium(dir.path(), "hub", WS_HUB).await;
        let port = hub.websocket_port().expect("websocket port");
        let leaf = natrium(
            dir.path(),
            "leaf",
            &format!(
                "leafnodes {{ reconnect: \"100ms\", remotes [ {{ url: \"ws://127.0.0.1:{port}\"{} }} ] }}\n",
                ws_opts(extras)
            ),
        )
        .await;
        eventually(|| hub.num_leafnodes() == 1 && leaf.num_leafnodes() == 1).await;
        let a = connect(&leaf.client_url()).await;
        let b = connect(&hub.client_url()).await;
        exchange(&a, &b).await;
        leaf.shutdown().await;
        hub.shutdown().await;
    }
}

#[tokio::test]
async fn a_websocket_listener_without_leafnodes_takes_no_leaf() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = natrium(
        dir.path(),
        "hub",
        "websocket { listen: \"127.0.0.1:-1\", no_tls: true }\n",
    )
    .await;
    let port = hub.websocket_port().expect("websocket port");
    let leaf = natrium(
        dir.path(),
        "leaf",
        &format!("leafnodes {{ reconnect: \"100ms\", remotes [ {{ url: \"ws://127.0.0.1:{port}\" }} ] }}\n"),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!((hub.num_leafnodes(), leaf.num_leafnodes()), (0, 0));
    leaf.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn natrium_and_nats_server_leaves_over_websocket_both_ways() {
    for bin in nats_servers("the leafnode-over-websocket interop test") {
        eprintln!("nats-server {}", bin.version);
        for extras in [false, true] {
            natrium_leaf_on_go_ws_hub(&bin, extras).await;
            go_leaf_on_natrium_ws_hub(&bin, extras).await;
        }
    }
}

async fn natrium_leaf_on_go_ws_hub(bin: &GoBin, extras: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = free_port();
    let go = GoServer::start(
        bin,
        dir.path(),
        "gohub",
        &format!(
            "websocket {{ listen: \"127.0.0.1:{ws}\", no_tls: true, compression: true }}\nleafnodes {{ listen: \"127.0.0.1:-1\" }}\n"
        ),
    );
    let leaf = natrium(
        dir.path(),
        "leaf",
        &format!(
            "leafnodes {{ reconnect: \"100ms\", remotes [ {{ url: \"ws://127.0.0.1:{ws}\"{} }} ] }}\n",
            ws_opts(extras)
        ),
    )
    .await;
    eventually(|| leaf.num_leafnodes() == 1).await;
    let a = connect(&leaf.client_url()).await;
    let b = connect(&go.client_url()).await;
    exchange(&a, &b).await;
    // The hub goes first: a Natrium leaf that closes sends its close frame and closes the
    // socket without waiting for the hub's answer, which nats-server then logs as an error.
    drop(go);
    eventually(|| leaf.num_leafnodes() == 0).await;
    leaf.shutdown().await;
}

async fn go_leaf_on_natrium_ws_hub(bin: &GoBin, extras: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = natrium(dir.path(), "hub", WS_HUB).await;
    let port = hub.websocket_port().expect("websocket port");
    let go = GoServer::start(
        bin,
        dir.path(),
        "goleaf",
        &format!(
            "leafnodes {{ reconnect: 1, remotes [ {{ url: \"ws://127.0.0.1:{port}\"{} }} ] }}\n",
            ws_opts(extras)
        ),
    );
    eventually(|| hub.num_leafnodes() == 1).await;
    let a = connect(&go.client_url()).await;
    let b = connect(&hub.client_url()).await;
    exchange(&a, &b).await;
    drop(go);
    hub.shutdown().await;
}

#[tokio::test]
async fn leaves_over_secure_websocket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = crate::common::pki::Pki::new();
    let (cert, key) = pki.server_cert();
    let ca = pki.ca_file();
    let hub = natrium(
        dir.path(),
        "hub",
        &format!(
            "websocket {{ listen: \"127.0.0.1:-1\", tls {{ cert_file: {cert:?}, key_file: {key:?} }} }}\nleafnodes {{ host: 127.0.0.1, port: -1 }}\n"
        ),
    )
    .await;
    let port = hub.websocket_port().expect("websocket port");
    // Without a CA that signed the hub's certificate the leaf cannot join.
    let other = crate::common::pki::Pki::new();
    let stranger = natrium(
        dir.path(),
        "stranger",
        &format!(
            "leafnodes {{ reconnect: \"100ms\", remotes [ {{ url: \"wss://127.0.0.1:{port}\", tls {{ ca_file: {:?} }} }} ] }}\n",
            other.ca_file()
        ),
    )
    .await;
    let leaf = natrium(
        dir.path(),
        "leaf",
        &format!(
            "leafnodes {{ reconnect: \"100ms\", remotes [ {{ url: \"wss://127.0.0.1:{port}\", tls {{ ca_file: {ca:?} }} }} ] }}\n"
        ),
    )
    .await;
    eventually(|| leaf.num_leafnodes() == 1).await;
    let a = connect(&leaf.client_url()).await;
    let b = connect(&hub.client_url()).await;
    exchange(&a, &b).await;
    assert_eq!(
        stranger.num_leafnodes(),
        0,
        "a leaf joined with an unknown CA"
    );
    assert_eq!(hub.num_leafnodes(), 1);
    for bin in nats_servers("the leafnode-over-wss interop test") {
        let go = GoServer::start(
            &bin,
            dir.path(),
            "goleaf",
            &format!(
                "leafnodes {{ reconnect: 1, remotes [ {{ url: \"wss://127.0.0.1:{port}\", tls {{ ca_file: {ca:?} }} }} ] }}\n"
            ),
        );
        eventually(|| hub.num_leafnodes() == 2).await;
        let g = connect(&go.client_url()).await;
        exchange(&g, &b).await;
        drop(go);
        eventually(|| hub.num_leafnodes() == 1).await;
    }
    stranger.shutdown().await;
    leaf.shutdown().await;
    hub.shutdown().await;
}
