//! Leafnode remotes over WebSocket (`ws://`): a Natrium leaf to a Natrium hub's WebSocket
//! listener and to nats-server's, a nats-server leaf to Natrium's, with and without
//! `ws_compression` and `ws_no_masking`; messages, headers, request-reply and a queue group
//! cross as over TCP.

use std::time::Duration;

use crate::common::goserver::{nats_servers, GoBin, GoServer};
use crate::common::traffic::natrium;
use crate::common::{eventually, get_json};
use crate::leaf::{connect, exchange, free_port};

/// Monitoring on a random port.
const HTTP: &str = "http: \"127.0.0.1:-1\"\n";

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
        let hub = natrium(dir.path(), "hub", &format!("{HTTP}{WS_HUB}")).await;
        let port = hub.websocket_port().expect("websocket port");
        let leaf = natrium(
            dir.path(),
            "leaf",
            &format!(
                "{HTTP}leafnodes {{ reconnect: \"100ms\", remotes [ {{ url: \"ws://127.0.0.1:{port}\"{} }} ] }}\n",
                ws_opts(extras)
            ),
        )
        .await;
        eventually(|| hub.num_leafnodes() == 1 && leaf.num_leafnodes() == 1).await;
        let a = connect(&leaf.client_url()).await;
        let b = connect(&hub.client_url()).await;
        exchange(&a, &b).await;
        // `/leafz` shows a WebSocket link with nats-server 2.10's fields: its id, and no s2
        // (nats-server has no WebSocket marker there; its TCP peer is the ip and port).
        for (side, s) in [("hub", &hub), ("leaf", &leaf)] {
            let lz = get_json(s, "/leafz").await;
            let l = &lz["leafs"][0];
            assert!(l["id"].as_u64().is_some_and(|id| id > 0), "{side}: {lz}");
            assert_eq!(l["compression"], "not supported", "{side}: {lz}");
            assert_eq!(l["ip"], "127.0.0.1", "{side}: {lz}");
            assert!(l["in_msgs"].as_u64().is_some_and(|n| n > 0), "{side}: {lz}");
        }
        let lz = get_json(&leaf, "/leafz").await;
        assert_eq!(
            lz["leafs"][0]["port"], port,
            "the leaf shows the hub's WebSocket port"
        );
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
            "{HTTP}websocket {{ listen: \"127.0.0.1:{ws}\", no_tls: true, compression: true }}\nleafnodes {{ listen: \"127.0.0.1:-1\" }}\n"
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
    // The leaf goes first: it sends its close frame and waits for nats-server's answer
    // before closing the socket, so nats-server logs no error (checked when `go` drops).
    leaf.shutdown().await;
    let mut gone = false;
    for _ in 0..100 {
        if go.monitor("/leafz").await["leafnodes"] == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "nats-server still lists the leaf");
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(go);
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

/// A hub that speaks just enough of the WebSocket leafnode protocol to take one leaf: the
/// upgrade, its INFO as the first frame, then frames read and unmasked one by one.
mod fake_hub {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Answers the upgrade and sends the hub's INFO (no `info_on_connect`: the leaf is up once
    /// it sent CONNECT).
    pub async fn accept(s: &mut TcpStream) {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.expect("upgrade request");
            head.push(b[0]);
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let key = text
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .expect("a key")
            .trim()
            .to_string();
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let answer = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
        s.write_all(answer.as_bytes()).await.expect("answer");
        let info = "INFO {\"server_id\":\"NFAKEHUB\",\"server_name\":\"fake\",\"version\":\"2.9.10\",\"proto\":1,\"headers\":true,\"max_payload\":1048576,\"client_id\":7,\"leafnode_urls\":[]}\r\n";
        send(s, 0x82, info.as_bytes()).await;
    }

    /// Sends one unmasked frame.
    pub async fn send(s: &mut TcpStream, first: u8, payload: &[u8]) {
        assert!(payload.len() < 65536);
        let mut f = vec![first];
        if payload.len() < 126 {
            f.push(payload.len() as u8);
        } else {
            f.push(126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(payload);
        s.write_all(&f).await.expect("frame");
    }

    /// Reads one frame: (opcode, unmasked payload); `None` at the end of the stream.
    pub async fn frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).await.ok()?;
        let mut len = (h[1] & 0x7f) as u64;
        if len == 126 {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).await.ok()?;
            len = u16::from_be_bytes(b) as u64;
        } else if len == 127 {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).await.ok()?;
            len = u64::from_be_bytes(b);
        }
        let mut mask = [0u8; 4];
        if h[1] & 0x80 != 0 {
            s.read_exact(&mut mask).await.ok()?;
        }
        let mut p = vec![0u8; len as usize];
        s.read_exact(&mut p).await.ok()?;
        for (i, b) in p.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        Some((h[0] & 0x0f, p))
    }

    /// Reads frames until the close frame; returns its status.
    pub async fn until_close(s: &mut TcpStream) -> u16 {
        let read = async {
            loop {
                match frame(s).await {
                    Some((8, p)) => return u16::from_be_bytes([p[0], p[1]]),
                    Some(_) => {}
                    None => panic!("the stream ended without a close frame"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("a close frame")
    }

    /// Whether the stream ends (EOF or reset) within `ms`.
    pub async fn ends_within(s: &mut TcpStream, ms: u64) -> bool {
        let mut b = [0u8; 256];
        let read = async {
            loop {
                match s.read(&mut b).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_millis(ms), read)
            .await
            .is_ok()
    }
}

#[tokio::test]
async fn a_natrium_leaf_closing_a_websocket_link_waits_for_the_close_reply() {
    use std::time::Instant;
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = hub.local_addr().expect("addr").port();
    let conf = format!(
        "leafnodes {{ reconnect: \"100ms\", remotes [ {{ url: \"ws://127.0.0.1:{port}\" }} ] }}\n"
    );
    // The hub answers the close frame: the leaf keeps the socket open until the answer came.
    let leaf = natrium(dir.path(), "leaf", &conf).await;
    let (mut s, _) = hub.accept().await.expect("the leaf dials");
    fake_hub::accept(&mut s).await;
    eventually(|| leaf.num_leafnodes() == 1).await;
    let closing = tokio::spawn(leaf.shutdown());
    assert_eq!(
        fake_hub::until_close(&mut s).await,
        1001,
        "going away, as nats-server says at shutdown"
    );
    assert!(
        !fake_hub::ends_within(&mut s, 300).await,
        "the leaf closed the socket without waiting for the close reply"
    );
    fake_hub::send(&mut s, 0x88, &1001u16.to_be_bytes()).await;
    let answered = Instant::now();
    assert!(
        fake_hub::ends_within(&mut s, 2000).await,
        "the leaf closes once the reply came"
    );
    assert!(answered.elapsed() < Duration::from_millis(900));
    closing.await.expect("shutdown");

    // A hub that never answers: the wait is bounded.
    let leaf = natrium(dir.path(), "leaf2", &conf).await;
    let (mut s, _) = hub.accept().await.expect("the leaf dials");
    fake_hub::accept(&mut s).await;
    eventually(|| leaf.num_leafnodes() == 1).await;
    let closing = tokio::spawn(leaf.shutdown());
    fake_hub::until_close(&mut s).await;
    let sent = Instant::now();
    assert!(
        fake_hub::ends_within(&mut s, 5000).await,
        "the wait for a close reply is bounded"
    );
    assert!(
        sent.elapsed() >= Duration::from_millis(300),
        "{:?}",
        sent.elapsed()
    );
    closing.await.expect("shutdown");
}
