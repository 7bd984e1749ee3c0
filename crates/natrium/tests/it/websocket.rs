//! The WebSocket listener: stock clients over `ws://` and `wss://` (async-nats with its
//! `websockets` feature, nats-py's aiohttp transport, nats.ws in headless Chromium), frames a
//! well-behaved client never sends (written by hand here, checked against the close status and
//! reason the server answers with), permessage-deflate, origin checks, TLS, the websocket
//! block's authentication, and monitoring.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use natrium::options::{User, WebsocketOptions};
use natrium::{Options, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{eventually, js_opts, opts, pki::Pki, start};

/// A WebSocket listener on a random loopback port, without TLS.
fn ws(o: Options) -> Options {
    ws_with(o, WebsocketOptions::default())
}

fn ws_with(o: Options, w: WebsocketOptions) -> Options {
    Options {
        websocket: Some(WebsocketOptions {
            host: "127.0.0.1".into(),
            port: -1,
            no_tls: w.tls.is_none(),
            ..w
        }),
        ..o
    }
}

async fn ws_client(s: &Server) -> async_nats::Client {
    async_nats::connect(s.websocket_url().expect("ws url"))
        .await
        .expect("ws client connects")
}

#[tokio::test]
async fn async_nats_over_websocket_talks_to_tcp_clients() {
    let s = start(ws(opts())).await;
    assert!(s
        .websocket_url()
        .expect("url")
        .starts_with("ws://127.0.0.1:"));
    let w = ws_client(&s).await;
    let t = crate::common::client(&s).await;

    // TCP -> WebSocket, with headers.
    let mut sub = w.subscribe("to.ws").await.expect("sub");
    w.flush().await.expect("flush");
    let mut h = async_nats::HeaderMap::new();
    h.insert("X-Trace", "abc");
    t.publish_with_headers("to.ws", h, Bytes::from_static(b"hello ws"))
        .await
        .expect("pub");
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("in time")
        .expect("message");
    assert_eq!(&m.payload[..], b"hello ws");
    assert_eq!(
        m.headers
            .as_ref()
            .and_then(|h| h.get("X-Trace"))
            .map(|v| v.as_str()),
        Some("abc")
    );

    // WebSocket -> TCP: a large payload (several frames' worth) and request-reply.
    let mut tsub = t.subscribe("to.tcp").await.expect("sub");
    t.flush().await.expect("flush");
    let big = Bytes::from(vec![b'x'; 300_000]);
    w.publish("to.tcp", big.clone()).await.expect("pub");
    let m = tokio::time::timeout(Duration::from_secs(5), tsub.next())
        .await
        .expect("in time")
        .expect("message");
    assert_eq!(m.payload, big);

    let mut svc = t.subscribe("svc").await.expect("sub");
    t.flush().await.expect("flush");
    let responder = t.clone();
    tokio::spawn(async move {
        while let Some(m) = svc.next().await {
            if let Some(r) = m.reply {
                let mut out = b"re: ".to_vec();
                out.extend_from_slice(&m.payload);
                let _ = responder.publish(r, out.into()).await;
            }
        }
    });
    let r = w
        .request("svc", Bytes::from_static(b"ping"))
        .await
        .expect("reply");
    assert_eq!(&r.payload[..], b"re: ping");
    // No responders: the 503 status reaches the WebSocket client.
    let err = w
        .request("nobody.home", Bytes::new())
        .await
        .expect_err("no responders");
    assert_eq!(
        err.kind(),
        async_nats::RequestErrorKind::NoResponders,
        "{err}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn jetstream_and_kv_over_websocket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(ws(js_opts(dir.path()))).await;
    let w = ws_client(&s).await;
    let js = async_nats::jetstream::new(w.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "WS".into(),
        subjects: vec!["ws.>".into()],
        ..Default::default()
    })
    .await
    .expect("stream");
    let ack = js
        .publish("ws.a", Bytes::from_static(b"one"))
        .await
        .expect("publish")
        .await
        .expect("ack");
    assert_eq!(ack.sequence, 1);
    let kv = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "prefs".into(),
            ..Default::default()
        })
        .await
        .expect("kv");
    kv.put("theme", Bytes::from_static(b"dark"))
        .await
        .expect("put");
    // Written over WebSocket, read over TCP.
    let t = crate::common::client(&s).await;
    let kv_tcp = async_nats::jetstream::new(t)
        .get_key_value("prefs")
        .await
        .expect("bucket");
    let v = kv_tcp.get("theme").await.expect("get").expect("value");
    assert_eq!(&v[..], b"dark");
    s.shutdown().await;
}

#[tokio::test]
async fn monitoring_shows_websocket_clients() {
    let s = start(ws(Options {
        http_port: Some(-1),
        ..opts()
    }))
    .await;
    let w = async_nats::ConnectOptions::new()
        .name("browser-ish")
        .connect(s.websocket_url().expect("url"))
        .await
        .expect("connects");
    let _t = crate::common::client(&s).await;
    w.flush().await.expect("flush");
    let base = s.monitor_url().expect("monitor");
    let get = |path: &'static str| {
        let url = format!("{base}{path}");
        async move {
            reqwest::get(url)
                .await
                .expect("get")
                .text()
                .await
                .expect("body")
        }
    };
    let connz: serde_json::Value = serde_json::from_str(&get("/connz").await).expect("json");
    let conns = connz["connections"].as_array().expect("list");
    let types: Vec<(&str, &str)> = conns
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or(""),
                c["type"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert!(types.contains(&("browser-ish", "websocket")), "{types:?}");
    assert!(types.iter().any(|(_, t)| *t == "nats"), "{types:?}");
    let varz: serde_json::Value = serde_json::from_str(&get("/varz").await).expect("json");
    let wsz = &varz["websocket"];
    assert_eq!(wsz["host"], "127.0.0.1");
    assert_eq!(wsz["port"], s.websocket_port().expect("port"));
    assert_eq!(wsz["no_tls"], true);
    assert!(wsz.get("compression").is_none(), "omitted when off: {wsz}");
    let metrics = get("/metrics").await;
    assert!(
        metrics.contains("natrium_websocket_connections 1"),
        "{metrics}"
    );
    assert!(metrics.contains("natrium_connections 2"), "{metrics}");
    s.shutdown().await;
}

/// A WebSocket client written by hand, for frames and requests stock clients never send.
pub(crate) struct RawWs {
    s: TcpStream,
    buf: Vec<u8>,
}

/// What the server answered to an upgrade request: its head (status line and headers).
async fn upgrade_request(port: u16, headers: &[&str]) -> (TcpStream, String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut req = format!(
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("answer in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before answering: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let rest = buf[head_end..].to_vec();
    (s, head, rest)
}

impl RawWs {
    /// Upgrades; the answer must be 101.
    pub(crate) async fn open(port: u16, headers: &[&str]) -> (RawWs, String) {
        let (s, head, rest) = upgrade_request(port, headers).await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        // The accept key of RFC 6455's example key.
        assert!(
            head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{head}"
        );
        (RawWs { s, buf: rest }, head)
    }

    /// Upgrades and reads the INFO frame.
    async fn connect(port: u16) -> RawWs {
        let (mut ws, _) = RawWs::open(port, &[]).await;
        let info = ws.read_text().await;
        assert!(info.starts_with("INFO {"), "{info}");
        ws
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write");
    }

    /// Sends one frame with first byte `b0`, masked unless `mask` is `None`.
    async fn send(&mut self, b0: u8, payload: &[u8], mask: Option<[u8; 4]>) {
        self.send_raw(&frame(b0, payload, mask)).await;
    }

    pub(crate) async fn send_text(&mut self, text: &str) {
        self.send(0x82, text.as_bytes(), Some([1, 2, 3, 4])).await;
    }

    /// The next frame (first byte, payload); `None` once the server closed the socket.
    async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let b1 = self.buf[1];
                assert_eq!(b1 & 0x80, 0, "server frames are not masked");
                let (len, hlen) = match b1 & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        let mut l = [0u8; 8];
                        l.copy_from_slice(&self.buf[2..10]);
                        (u64::from_be_bytes(l) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= hlen + len {
                    let b0 = self.buf[0];
                    let payload = self.buf[hlen..hlen + len].to_vec();
                    self.buf.drain(..hlen + len);
                    return Some((b0, payload));
                }
            }
            let mut chunk = [0u8; 65536];
            let n = tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut chunk))
                .await
                .expect("frame in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The payload of the next data frame, as text.
    pub(crate) async fn read_text(&mut self) -> String {
        loop {
            let (b0, p) = self.read_frame().await.expect("a frame");
            match b0 & 0x0f {
                0x0..=0x2 => return String::from_utf8_lossy(&p).into_owned(),
                _ => continue,
            }
        }
    }

    /// Reads data frames until their text contains `pat`; returns all of it.
    pub(crate) async fn read_until(&mut self, pat: &str) -> String {
        let mut all = String::new();
        while !all.contains(pat) {
            all.push_str(&self.read_text().await);
        }
        all
    }

    /// Reads until the close frame: its status and reason (data frames before it are skipped),
    /// then checks the server closes the socket.
    async fn close_status(&mut self) -> (u16, String) {
        loop {
            let (b0, p) = self.read_frame().await.expect("a close frame");
            if b0 == 0x88 {
                assert!(p.len() >= 2, "close without status");
                let status = u16::from_be_bytes([p[0], p[1]]);
                let reason = String::from_utf8_lossy(&p[2..]).into_owned();
                assert!(
                    self.read_frame().await.is_none(),
                    "closed after the close frame"
                );
                return (status, reason);
            }
        }
    }
}

fn frame(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = vec![b0];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n <= 125 => f.push(m | n as u8),
        n if n <= 65535 => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            f.extend_from_slice(&k);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

#[tokio::test]
async fn frames_fragmented_and_control_frames_are_handled() {
    let s = start(ws(opts())).await;
    let port = s.websocket_port().expect("port");
    let mut ws = RawWs::connect(port).await;
    // CONNECT and a SUB in one frame; PING split over three frames (a text first frame and two
    // continuations) with a ping control frame between them.
    ws.send_text("CONNECT {\"verbose\":false,\"headers\":true}\r\nSUB a 1\r\n")
        .await;
    ws.send(0x01, b"PI", Some([9, 8, 7, 6])).await;
    ws.send(0x89, b"are you there", Some([5, 5, 5, 5])).await;
    ws.send(0x00, b"N", Some([1, 1, 1, 1])).await;
    ws.send(0x80, b"G\r\n", Some([2, 2, 2, 2])).await;
    // The pong echoes the ping's payload, before the PONG of the protocol.
    let (b0, p) = ws.read_frame().await.expect("pong");
    assert_eq!((b0, p.as_slice()), (0x8a, &b"are you there"[..]));
    assert_eq!(ws.read_until("PONG\r\n").await, "PONG\r\n");
    // A PUB whose payload arrives in two frames, delivered to our own SUB.
    ws.send(0x02, b"PUB a 5\r\nhe", Some([3, 1, 4, 1])).await;
    ws.send(0x80, b"llo\r\n", Some([5, 9, 2, 6])).await;
    assert_eq!(ws.read_until("hello\r\n").await, "MSG a 1 5\r\nhello\r\n");
    // A pong from the client is ignored; a close is answered with its own status and reason.
    ws.send(0x8a, b"", Some([1, 2, 3, 4])).await;
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    ws.send(0x88, &close, Some([7, 7, 7, 7])).await;
    assert_eq!(ws.close_status().await, (1000, "bye".into()));
    s.shutdown().await;
}

#[tokio::test]
async fn bad_frames_close_with_protocol_errors() {
    let s = start(ws(opts())).await;
    let port = s.websocket_port().expect("port");
    let m = Some([1, 2, 3, 4]);
    // (frame bytes, status, reason)
    let mut long_len = vec![0x82, 0xff];
    long_len.extend_from_slice(&(1u64 << 63).to_be_bytes());
    long_len.extend_from_slice(&[1, 2, 3, 4]);
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (frame(0x82, b"PING\r\n", None), 1002, "mask bit missing"),
        (frame(0x83, b"x", m), 1002, "unknown opcode 3"),
        (frame(0x8b, b"x", m), 1002, "unknown opcode 11"),
        (frame(0xa2, b"x", m), 1002, "RSV2 and RSV3 must be clear"),
        (
            frame(0xc2, b"x", m),
            1002,
            "compressed frame received without negotiated permessage-deflate",
        ),
        (
            frame(0x89, &[b'x'; 126], m),
            1002,
            "control frame length bigger than maximum allowed of 125 bytes",
        ),
        (
            frame(0x09, b"x", m),
            1002,
            "control frame does not have final bit set",
        ),
        (frame(0x80, b"x", m), 1002, "invalid continuation frame"),
        (
            [frame(0x02, b"PI", m), frame(0x82, b"NG\r\n", m)].concat(),
            1002,
            "new message started before final frame for previous message was received",
        ),
        (long_len, 1002, "invalid 64-bit payload length"),
        (
            frame(0x88, &[0x03], m),
            1002,
            "close frame payload cannot be 1 byte",
        ),
        (
            frame(0x88, &1005u16.to_be_bytes(), m),
            1002,
            "invalid close status code 1005",
        ),
        (
            frame(
                0x88,
                &[&1000u16.to_be_bytes()[..], &[0xff, 0xfe]].concat(),
                m,
            ),
            1007,
            "invalid utf8 body in close frame",
        ),
    ];
    for (bytes, status, reason) in cases {
        let mut ws = RawWs::connect(port).await;
        ws.send_text("CONNECT {\"verbose\":false}\r\n").await;
        ws.send_raw(&bytes).await;
        assert_eq!(
            ws.close_status().await,
            (status, reason.to_string()),
            "frame {:02x?}",
            &bytes[..bytes.len().min(4)]
        );
    }
    // A close frame without a status is answered with an empty close frame.
    let mut ws = RawWs::connect(port).await;
    ws.send(0x88, b"", m).await;
    assert_eq!(ws.read_frame().await, Some((0x88, Vec::new())));
    assert!(ws.read_frame().await.is_none());
    s.shutdown().await;
}

#[tokio::test]
async fn oversized_messages_and_protocol_errors_close_as_nats_server_does() {
    let s = start(ws(Options {
        max_payload: 1024,
        max_pending: 1024 * 1024,
        ..opts()
    }))
    .await;
    let port = s.websocket_port().expect("port");
    // A PUB over max_payload: the protocol's error, then 1009.
    let mut ws = RawWs::connect(port).await;
    ws.send_text("CONNECT {\"verbose\":false}\r\nPUB a 2000\r\n")
        .await;
    assert!(ws.read_until("-ERR").await.contains("Maximum Payload"));
    assert_eq!(
        ws.close_status().await,
        (1009, "Maximum Payload Exceeded".into())
    );
    // An unknown protocol operation: 1002 with the close reason.
    let mut ws = RawWs::connect(port).await;
    ws.send_text("CONNECT {\"verbose\":false}\r\nHELLO\r\n")
        .await;
    assert_eq!(ws.close_status().await.0, 1002);
    s.shutdown().await;
}

#[tokio::test]
async fn permessage_deflate_both_ways() {
    use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
    let deflate = |data: &[u8]| {
        let mut c = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(data.len() + 64);
        c.compress_vec(data, &mut out, FlushCompress::Sync)
            .expect("deflate");
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
        out.truncate(out.len() - 4);
        out
    };
    let inflate = |data: &[u8]| {
        let mut d = Decompress::new(false);
        let mut input = data.to_vec();
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut out = Vec::with_capacity(1 << 20);
        d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .expect("inflate");
        out
    };
    let s = start(ws_with(
        opts(),
        WebsocketOptions {
            compression: true,
            ..WebsocketOptions::default()
        },
    ))
    .await;
    let port = s.websocket_port().expect("port");
    let (mut ws, head) = RawWs::open(
        port,
        &["Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"],
    )
    .await;
    assert!(
        head.contains("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
        "{head}"
    );
    let (b0, info) = ws.read_frame().await.expect("info");
    let info = if b0 & 0x40 != 0 { inflate(&info) } else { info };
    assert!(info.starts_with(b"INFO {"));
    // A compressed message split into two frames (RSV1 on the first only).
    let body = format!(
        "CONNECT {{\"verbose\":false}}\r\nSUB big 1\r\nPUB big 3000\r\n{}\r\nPING\r\n",
        "z".repeat(3000)
    );
    let z = deflate(body.as_bytes());
    let (a, b) = z.split_at(z.len() / 2);
    ws.send(0x42, a, Some([4, 3, 2, 1])).await;
    ws.send(0x80, b, Some([8, 7, 6, 5])).await;
    // The answer comes compressed (it is over 64 bytes), without context takeover: each
    // message inflates on its own.
    let mut got = Vec::new();
    while !got.ends_with(b"PONG\r\n") {
        let (b0, p) = ws.read_frame().await.expect("frame");
        if b0 & 0x40 != 0 {
            got.extend_from_slice(&inflate(&p));
        } else {
            got.extend_from_slice(&p);
        }
    }
    let text = String::from_utf8(got).expect("utf8");
    assert!(
        text.starts_with(&format!("MSG big 1 3000\r\n{}\r\n", "z".repeat(3000))),
        "{}",
        &text[..text.len().min(80)]
    );
    // A compressed control frame is a protocol error.
    ws.send(0xc9, b"", Some([1, 1, 1, 1])).await;
    assert_eq!(
        ws.close_status().await,
        (1002, "control frame must not be compressed".into())
    );
    // Without the offer, no compression.
    let (mut ws, head) = RawWs::open(port, &[]).await;
    assert!(!head.contains("permessage-deflate"), "{head}");
    let (b0, _) = ws.read_frame().await.expect("info");
    assert_eq!(b0, 0x82);
    s.shutdown().await;
}

#[tokio::test]
async fn upgrade_requests_are_checked() {
    let s = start(ws(opts())).await;
    let port = s.websocket_port().expect("port");
    let bad = [
        ("POST / HTTP/1.1\r\nHost: x\r\n\r\n", "405 Method Not Allowed"),
        (
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            "400 Bad Request",
        ),
        (
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n",
            "400 Bad Request",
        ),
        (
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
            "400 Bad Request",
        ),
    ];
    for (req, status) in bad {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.expect("tcp");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .expect("in time")
            .expect("read");
        assert!(out.starts_with(&format!("HTTP/1.1 {status}\r\n")), "{out}");
        assert!(out.contains("Sec-Websocket-Version: 13"), "{out}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn origins_not_allowed_get_403() {
    let s = start(ws_with(
        opts(),
        WebsocketOptions {
            same_origin: true,
            ..WebsocketOptions::default()
        },
    ))
    .await;
    let port = s.websocket_port().expect("port");
    let (_, head, _) = upgrade_request(port, &["Origin: http://evil.example.com"]).await;
    assert!(head.starts_with("HTTP/1.1 403 Forbidden"), "{head}");
    let (_, head, _) = upgrade_request(port, &[&format!("Origin: https://127.0.0.1:{port}")]).await;
    assert!(
        head.starts_with("HTTP/1.1 403 Forbidden"),
        "scheme differs: {head}"
    );
    RawWs::open(port, &[&format!("Origin: http://127.0.0.1:{port}")]).await;
    // No Origin at all: a non-browser client, admitted.
    RawWs::open(port, &[]).await;
    s.shutdown().await;

    let s = start(ws_with(
        opts(),
        WebsocketOptions {
            allowed_origins: vec![
                "https://app.example.com".into(),
                "http://127.0.0.1:8080".into(),
            ],
            ..WebsocketOptions::default()
        },
    ))
    .await;
    let port = s.websocket_port().expect("port");
    for (origin, ok) in [
        ("https://app.example.com", true),
        ("https://app.example.com:443", true),
        ("http://app.example.com", false),
        ("http://127.0.0.1:8080", true),
        ("http://127.0.0.1:8081", false),
        ("https://other.example.com", false),
    ] {
        let (_, head, _) = upgrade_request(port, &[&format!("Origin: {origin}")]).await;
        let want = if ok { "HTTP/1.1 101 " } else { "HTTP/1.1 403 " };
        assert!(head.starts_with(want), "{origin}: {head}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn tls_is_required_unless_no_tls_and_wss_works() {
    // Without tls {} and without no_tls, the server refuses to start, as nats-server.
    let mut o = opts();
    o.websocket = Some(WebsocketOptions {
        host: "127.0.0.1".into(),
        port: -1,
        ..WebsocketOptions::default()
    });
    let err = Server::start(o).await.err().expect("refused");
    assert!(
        err.to_string()
            .contains("websocket requires TLS configuration"),
        "{err}"
    );

    let pki = Pki::new();
    let s = start(ws_with(
        opts(),
        WebsocketOptions {
            tls: Some(pki.tls()),
            ..WebsocketOptions::default()
        },
    ))
    .await;
    let url = s.websocket_url().expect("url");
    assert!(url.starts_with("wss://127.0.0.1:"), "{url}");
    let c = async_nats::ConnectOptions::new()
        .add_root_certificates(pki.ca_file())
        .connect(url.clone())
        .await
        .expect("wss connects");
    let mut sub = c.subscribe("secure").await.expect("sub");
    c.publish("secure", Bytes::from_static(b"over tls"))
        .await
        .expect("pub");
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("in time")
        .expect("msg");
    assert_eq!(&m.payload[..], b"over tls");
    // The INFO a WebSocket client gets names the WebSocket listener and its TLS.
    let info = c.server_info();
    assert_eq!(info.port, s.websocket_port().expect("port"));
    assert!(info.tls_required);
    // Plain ws:// to the wss port gets no upgrade.
    let plain = url.replacen("wss://", "ws://", 1);
    let r = tokio::time::timeout(Duration::from_secs(5), async_nats::connect(plain)).await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "plaintext admitted on the TLS port"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn websocket_block_authentication_overrides() {
    // The server has no auth; the websocket block asks for a user: only WebSocket clients need
    // it, and INFO tells them so.
    let s = start(ws_with(
        opts(),
        WebsocketOptions {
            username: Some("web".into()),
            password: Some("pw".into()),
            ..WebsocketOptions::default()
        },
    ))
    .await;
    let url = s.websocket_url().expect("url");
    crate::common::client(&s).await; // TCP: no credentials needed
    assert!(async_nats::connect(url.clone()).await.is_err());
    let c = async_nats::ConnectOptions::with_user_and_password("web".into(), "wrong".into())
        .connect(url.clone())
        .await;
    assert!(c.is_err(), "wrong password admitted");
    let c = async_nats::ConnectOptions::with_user_and_password("web".into(), "pw".into())
        .connect(url.clone())
        .await
        .expect("right password");
    assert!(c.server_info().auth_required);
    // A raw client is told Authorization Violation, then closed with 1008.
    let mut ws = RawWs::connect(s.websocket_port().expect("port")).await;
    ws.send_text("CONNECT {\"user\":\"web\",\"pass\":\"nope\"}\r\n")
        .await;
    assert!(ws
        .read_until("Authorization Violation")
        .await
        .contains("-ERR"));
    assert_eq!(
        ws.close_status().await,
        (1008, "Authentication Failure".into())
    );
    s.shutdown().await;

    // Server users; the block's no_auth_user admits credential-less WebSocket clients as that
    // user (with its permissions), while TCP clients still need credentials. Token cookies.
    let users = vec![
        User {
            user: "alice".into(),
            password: "a".into(),
            ..User::default()
        },
        User {
            user: "guest".into(),
            password: "g".into(),
            permissions: Some(natrium::perms::Permissions {
                publish: Some(natrium::perms::SubjectPermission {
                    allow: Some(vec!["public.>".into()]),
                    deny: Vec::new(),
                }),
                ..Default::default()
            }),
            ..User::default()
        },
    ];
    let mut o = opts();
    o.auth.users = users;
    let s = start(ws_with(
        o,
        WebsocketOptions {
            no_auth_user: Some("guest".into()),
            auth_timeout: Some(Duration::from_millis(300)),
            ..WebsocketOptions::default()
        },
    ))
    .await;
    assert!(async_nats::connect(s.client_url()).await.is_err());
    let port = s.websocket_port().expect("port");
    let mut ws = RawWs::connect(port).await;
    ws.send_text("CONNECT {\"verbose\":true}\r\nPUB public.x 1\r\na\r\nPUB private.x 1\r\nb\r\n")
        .await;
    let got = ws.read_until("Permissions Violation").await;
    assert!(got.starts_with("+OK\r\n+OK\r\n"), "{got}");
    assert!(got.contains("private.x"), "{got}");
    // The block's auth timeout applies to WebSocket clients.
    let mut ws = RawWs::connect(port).await;
    let started = std::time::Instant::now();
    assert_eq!(
        ws.close_status().await,
        (1008, "Authentication Timeout".into())
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    s.shutdown().await;
}

#[tokio::test]
async fn credentials_from_cookies() {
    let mut o = opts();
    o.auth.token = Some("s3cret".into());
    let s = start(ws_with(
        o,
        WebsocketOptions {
            token_cookie: Some("nats_token".into()),
            ..WebsocketOptions::default()
        },
    ))
    .await;
    let port = s.websocket_port().expect("port");
    let (mut ws, _) = RawWs::open(port, &["Cookie: other=1; nats_token=s3cret"]).await;
    ws.read_text().await;
    ws.send_text("CONNECT {\"verbose\":false}\r\nPING\r\n")
        .await;
    assert_eq!(ws.read_until("PONG").await, "PONG\r\n");
    let (mut ws, _) = RawWs::open(port, &["Cookie: nats_token=wrong"]).await;
    ws.read_text().await;
    ws.send_text("CONNECT {\"verbose\":false}\r\nPING\r\n")
        .await;
    assert!(ws
        .read_until("Authorization Violation")
        .await
        .contains("-ERR"));
    s.shutdown().await;
}

#[tokio::test]
async fn websocket_config_block_as_nats_server_reads_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let load = |text: &str| {
        let p = dir.path().join("ws.conf");
        std::fs::write(&p, text).expect("write");
        Options::from_file(&p)
    };
    let (o, warnings) = load(
        r#"
        authorization { users = [ {user: u, password: p} ] }
        websocket {
            listen: "127.0.0.1:-1"
            no_tls: true
            compression: true
            same_origin: false
            allowed_origins: ["https://a.example.com", "http://b.example.com:8080"]
            handshake_timeout: "3s"
            no_auth_user: u
            authorization { timeout: 1.5 }
            headers { "X-Frame-Options": "DENY" }
            token_cookie: tok
        }
    "#,
    )
    .expect("loads");
    assert!(warnings.is_empty(), "{warnings:?}");
    let w = o.websocket.clone().expect("block");
    assert_eq!((w.host.as_str(), w.port), ("127.0.0.1", -1));
    assert!(w.no_tls && w.compression);
    assert_eq!(w.allowed_origins.len(), 2);
    assert_eq!(w.handshake_timeout, Duration::from_secs(3));
    assert_eq!(w.auth_timeout, Some(Duration::from_millis(1500)));
    assert_eq!(w.headers, vec![("X-Frame-Options".into(), "DENY".into())]);
    o.validate().expect("valid");
    // The extra header is in the upgrade response.
    let s = start(Options {
        host: "127.0.0.1".into(),
        port: -1,
        config_file: None,
        ..o
    })
    .await;
    let (_, head) = RawWs::open(s.websocket_port().expect("port"), &[]).await;
    assert!(head.contains("X-Frame-Options: DENY\r\n"), "{head}");
    s.shutdown().await;

    // Errors as nats-server reports them.
    let err = |text: &str| match load(text) {
        Err(e) => e.to_string(),
        Ok((o, _)) => o.validate().expect_err("invalid").to_string(),
    };
    assert!(
        err("websocket { port: 1, no_tls: true, bogus: 1 }").contains("unknown field \"bogus\"")
    );
    assert!(
        err("websocket { port: 1, no_tls: true, authorization { users: [] } }")
            .contains("unknown field")
    );
    assert!(err("websocket { port: 1 }").contains("websocket requires TLS configuration"));
    assert!(err("websocket { port: 1, no_tls: true, jwt_cookie: jwt }")
        .contains("trusted operators or trusted keys configuration is required"));
    assert!(err(
        "authorization { users = [ {user: u, password: p} ] }\nwebsocket { port: 1, no_tls: true, authorization { username: x, password: y } }"
    )
    .contains("websocket authentication username not compatible with presence of users/nkeys"));
    assert!(
        err("websocket { port: 1, no_tls: true, allowed_origins: [\"ftp://x\"] }")
            .contains("unable to parse allowed origin")
    );
    assert!(
        err("websocket { port: 1, no_tls: true, no_auth_user: nobody }").contains("no_auth_user")
    );
    assert!(
        err("websocket { port: 1, no_tls: true, headers { Upgrade: x } }")
            .contains("invalid header")
    );
    // A port of 0 leaves the listener off (nothing else is checked), as nats-server.
    let (o, _) = load("websocket { port: 0 }").expect("loads");
    o.validate().expect("off");
    // ping_interval (a later nats-server key) is accepted with a warning saying what happens.
    let (_, w) = load("websocket { port: 0, ping_interval: \"30s\" }").expect("loads");
    assert!(w.iter().any(|w| w.contains("ping_interval")), "{w:?}");
}

#[tokio::test]
async fn max_connections_refusal_reaches_websocket_clients() {
    let s = start(ws(Options {
        max_connections: 1,
        ..opts()
    }))
    .await;
    let _first = crate::common::client(&s).await;
    let (mut ws, _) = RawWs::open(s.websocket_port().expect("port"), &[]).await;
    assert!(ws
        .read_until("maximum connections exceeded")
        .await
        .starts_with("-ERR"));
    assert_eq!(
        ws.close_status().await,
        (1008, "Maximum Connections Exceeded".into())
    );
    s.shutdown().await;
}

const COMPAT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compat");

fn nats_py_ws_available() -> bool {
    Command::new("python3")
        .args(["-c", "import nats.js, aiohttp"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_py_over_websocket() {
    if !nats_py_ws_available() {
        assert!(
            std::env::var_os("NATRIUM_REQUIRE_NATS_PY").is_none(),
            "nats-py with aiohttp is required here (python3 -m pip install nats-py aiohttp)"
        );
        eprintln!("skipped: python3 with nats-py and aiohttp not found (python3 -m pip install nats-py aiohttp)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(ws(js_opts(dir.path()))).await;
    let url = s.websocket_url().expect("url");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg("nats_py_ws.py")
            .arg(url)
            .current_dir(COMPAT)
            .output()
            .expect("run python3")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("ws ok"),
        "nats_py_ws.py failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    eventually(|| s.num_clients() == 0).await;
    s.shutdown().await;
}

/// The Chromium binary, when installed (Debian's package).
fn chromium() -> Option<&'static str> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_uses_nats_ws_in_headless_chromium() {
    let bundle = Path::new(COMPAT).join("node_modules/nats.ws/esm/nats.js");
    let (Some(chrome), true) = (chromium(), bundle.exists()) else {
        assert!(
            std::env::var_os("NATRIUM_REQUIRE_BROWSER").is_none(),
            "chromium and nats.ws are required here (apt-get install chromium; npm install --prefix {COMPAT})"
        );
        eprintln!("skipped: chromium or nats.ws not found (apt-get install chromium; npm install --prefix {COMPAT})");
        return;
    };
    browser_session(chrome, &bundle).await;
}

/// The page the browser loads: nats.ws (its browser build, native WebSocket) connects to the
/// server, asks a service, publishes with headers and gets a message back, reads and writes a
/// KV bucket, then posts what it saw to `/result`.
const PAGE: &str = r#"<!doctype html><html><body><script type="module">
import { connect, StringCodec, headers } from "./nats.js";
const sc = StringCodec();
const report = (r) => fetch("/result", { method: "POST", body: JSON.stringify(r) });
try {
  const nc = await connect({ servers: "WS_URL" });
  const reply = sc.decode((await nc.request("browser.svc", sc.encode("chromium"), { timeout: 5000 })).data);
  const sub = nc.subscribe("browser.fanout", { max: 1 });
  await nc.flush();
  const h = headers();
  h.set("X-From", "page");
  nc.publish("browser.to.rust", sc.encode("hi from the page"), { headers: h });
  let fanout = "";
  for await (const m of sub) { fanout = sc.decode(m.data); }
  const kv = await nc.jetstream().views.kv("ui");
  const greeting = sc.decode((await kv.get("greeting")).value);
  await kv.put("seen", sc.encode("yes"));
  await nc.drain();
  await report({ reply, fanout, greeting });
} catch (e) {
  await report({ error: String(e) });
}
</script></body></html>"#;

/// Serves the page and nats.ws to headless Chromium from a small HTTP server on loopback, and
/// checks what the page reports (and what it did, from a TCP client's side).
async fn browser_session(chrome: &str, bundle: &Path) {
    let http = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("http");
    let http_port = http.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    // Compression on (Chromium offers permessage-deflate) and only the page's origin allowed.
    let s = start(ws_with(
        js_opts(dir.path()),
        WebsocketOptions {
            compression: true,
            allowed_origins: vec![format!("http://127.0.0.1:{http_port}")],
            ..WebsocketOptions::default()
        },
    ))
    .await;
    let t = crate::common::client(&s).await;
    let js = async_nats::jetstream::new(t.clone());
    let kv = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "ui".into(),
            ..Default::default()
        })
        .await
        .expect("kv");
    kv.put("greeting", Bytes::from_static(b"from rust"))
        .await
        .expect("put");
    let mut svc = t.subscribe("browser.svc").await.expect("sub");
    let mut inbox = t.subscribe("browser.to.rust").await.expect("sub");
    t.flush().await.expect("flush");
    let responder = t.clone();
    tokio::spawn(async move {
        while let Some(m) = svc.next().await {
            if let Some(r) = m.reply {
                let mut out = b"hello ".to_vec();
                out.extend_from_slice(&m.payload);
                let _ = responder.publish(r, out.into()).await;
            }
        }
    });
    let fanout = t.clone();
    let (header_tx, header_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        if let Some(m) = inbox.next().await {
            let h = m
                .headers
                .as_ref()
                .and_then(|h| h.get("X-From"))
                .map(|v| v.to_string());
            let _ = header_tx.send((h, m.payload.clone()));
            let _ = fanout
                .publish("browser.fanout", Bytes::from_static(b"fanned out"))
                .await;
        }
    });

    let page = PAGE.replace("WS_URL", &s.websocket_url().expect("url"));
    let js_bundle = std::fs::read(bundle).expect("nats.ws bundle");
    let (result_tx, mut result_rx) = tokio::sync::mpsc::channel::<String>(1);
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = http.accept().await else {
                return;
            };
            let (page, js_bundle, result_tx) = (page.clone(), js_bundle.clone(), result_tx.clone());
            tokio::spawn(async move {
                let Some((head, body)) = read_http(&mut c).await else {
                    return;
                };
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let (status, ctype, content): (&str, &str, Vec<u8>) = match path.as_str() {
                    "/" | "/index.html" => ("200 OK", "text/html", page.into_bytes()),
                    "/nats.js" => ("200 OK", "text/javascript", js_bundle),
                    "/result" => {
                        let _ = result_tx
                            .send(String::from_utf8_lossy(&body).into_owned())
                            .await;
                        ("200 OK", "text/plain", b"ok".to_vec())
                    }
                    _ => ("404 Not Found", "text/plain", b"no".to_vec()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    content.len()
                );
                let _ = c.write_all(head.as_bytes()).await;
                let _ = c.write_all(&content).await;
                let _ = c.shutdown().await;
            });
        }
    });

    let profile = tempfile::tempdir().expect("profile dir");
    let mut child = tokio::process::Command::new(chrome)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("http://127.0.0.1:{http_port}/index.html"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");
    let result = tokio::time::timeout(Duration::from_secs(60), result_rx.recv()).await;
    let _ = child.kill().await;
    server.abort();
    let result = result.expect("the page reports in time").expect("a report");
    let r: serde_json::Value = serde_json::from_str(&result).expect("json report");
    assert_eq!(r["error"], serde_json::Value::Null, "{r}");
    assert_eq!(r["reply"], "hello chromium", "{r}");
    assert_eq!(r["fanout"], "fanned out", "{r}");
    assert_eq!(r["greeting"], "from rust", "{r}");
    let (h, payload) = header_rx.await.expect("the page published");
    assert_eq!(h.as_deref(), Some("page"));
    assert_eq!(&payload[..], b"hi from the page");
    let seen = kv.get("seen").await.expect("get").expect("the page wrote");
    assert_eq!(&seen[..], b"yes");
    s.shutdown().await;
}

/// One HTTP/1.1 request: its head and its body (by Content-Length).
async fn read_http(c: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = c.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[end..].to_vec();
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        let n = c.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((head, body))
}

#[tokio::test]
async fn users_allowed_connection_types() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("types.conf");
    std::fs::write(
        &p,
        r#"
        listen: "127.0.0.1:-1"
        authorization { users = [
            {user: web, password: w, allowed_connection_types: ["WEBSOCKET"]}
            {user: tcp, password: t, allowed_connection_types: "standard"}
            {user: any, password: a}
        ] }
        websocket { listen: "127.0.0.1:-1", no_tls: true }
        "#,
    )
    .expect("write");
    let (o, warnings) = Options::from_file(&p).expect("loads");
    assert!(warnings.is_empty(), "{warnings:?}");
    let s = start(o).await;
    let (tcp, ws) = (s.client_url(), s.websocket_url().expect("url"));
    let ok = |url: String, user: &str, pass: &str| {
        let o = async_nats::ConnectOptions::with_user_and_password(user.into(), pass.into());
        async move {
            match o.connect(url).await {
                Ok(c) => c.flush().await.is_ok(),
                Err(_) => false,
            }
        }
    };
    assert!(ok(ws.clone(), "web", "w").await);
    assert!(!ok(tcp.clone(), "web", "w").await);
    assert!(ok(tcp.clone(), "tcp", "t").await);
    assert!(!ok(ws.clone(), "tcp", "t").await);
    assert!(ok(ws, "any", "a").await);
    assert!(ok(tcp, "any", "a").await);
    s.shutdown().await;
    // An unknown type is an error, as in nats-server.
    std::fs::write(
        &p,
        "authorization { users = [ {user: u, password: p, allowed_connection_types: [\"CARRIER_PIGEON\"]} ] }",
    )
    .expect("write");
    let err = Options::from_file(&p).expect_err("refused").to_string();
    assert!(err.contains("unknown connection type"), "{err}");
}

#[tokio::test]
async fn handshake_limits() {
    // A client that never sends its upgrade request is dropped after handshake_timeout.
    let s = start(ws_with(
        Options {
            max_unauthenticated_per_ip: 1,
            ..opts()
        },
        WebsocketOptions {
            handshake_timeout: Duration::from_millis(300),
            ..WebsocketOptions::default()
        },
    ))
    .await;
    let port = s.websocket_port().expect("port");
    let started = std::time::Instant::now();
    let mut silent = TcpStream::connect(("127.0.0.1", port)).await.expect("tcp");
    // While it holds the address's one unauthenticated slot, the next is refused with 503.
    let mut second = TcpStream::connect(("127.0.0.1", port)).await.expect("tcp");
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), second.read_to_string(&mut out))
        .await
        .expect("in time")
        .expect("read");
    assert!(out.starts_with("HTTP/1.1 503 "), "{out}");
    let mut b = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut b))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // The slot is free again.
    RawWs::connect(port).await;
    s.shutdown().await;
}

#[tokio::test]
async fn compressed_messages_over_the_limit_get_1009() {
    use flate2::{Compress, Compression, FlushCompress};
    let s = start(ws_with(
        Options {
            max_payload: 1024,
            max_pending: 1024 * 1024,
            ..opts()
        },
        WebsocketOptions {
            compression: true,
            ..WebsocketOptions::default()
        },
    ))
    .await;
    let port = s.websocket_port().expect("port");
    let (mut ws, _) = RawWs::open(port, &["Sec-WebSocket-Extensions: permessage-deflate"]).await;
    ws.read_frame().await.expect("info");
    // 64 KiB of PINGs inflate past eight times max_payload, from a few hundred bytes.
    let body = "PING\r\n".repeat(11_000);
    let mut c = Compress::new(Compression::best(), false);
    let mut z = Vec::with_capacity(body.len());
    c.compress_vec(body.as_bytes(), &mut z, FlushCompress::Sync)
        .expect("deflate");
    z.truncate(z.len() - 4);
    assert!(z.len() < 1024, "{}", z.len());
    ws.send(0xc2, &z, Some([6, 6, 6, 6])).await;
    assert_eq!(
        ws.close_status().await,
        (1009, "Maximum Payload Exceeded".into())
    );
    s.shutdown().await;
}

#[tokio::test]
async fn reload_keeps_the_websocket_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("r.conf");
    let write = |same_origin: bool| {
        std::fs::write(
            &p,
            format!(
                "listen: \"127.0.0.1:-1\"\nwebsocket {{ listen: \"127.0.0.1:-1\", no_tls: true, same_origin: {same_origin} }}\n"
            ),
        )
        .expect("write")
    };
    write(false);
    let (o, _) = Options::from_file(&p).expect("loads");
    let s = start(o).await;
    s.reload().expect("an unchanged block reloads");
    write(true);
    let err = s.reload().expect_err("refused").to_string();
    assert!(err.contains("websocket"), "{err}");
    // Still serving, with the block it started with.
    let c = ws_client(&s).await;
    c.flush().await.expect("flush");
    s.shutdown().await;
}

#[tokio::test]
async fn cluster_gives_websocket_clients_websocket_urls() {
    use natrium::options::{ClusterOptions, RouteUrl};
    let node = |name: &str, routes: Vec<RouteUrl>| {
        ws(Options {
            server_name: Some(name.into()),
            cluster: Some(ClusterOptions {
                name: Some("wsc".into()),
                host: "127.0.0.1".into(),
                port: -1,
                routes,
                ..ClusterOptions::default()
            }),
            ..opts()
        })
    };
    let a = start(node("A", Vec::new())).await;
    let seed = RouteUrl::parse(&format!(
        "nats://127.0.0.1:{}",
        a.cluster_port().expect("port")
    ))
    .expect("url");
    let b = start(node("B", vec![seed])).await;
    eventually(|| a.num_routes() == 1 && b.num_routes() == 1).await;
    let (mut ws, _) = RawWs::open(a.websocket_port().expect("port"), &[]).await;
    let info = ws.read_text().await;
    let info: serde_json::Value =
        serde_json::from_str(info.trim_start_matches("INFO ").trim()).expect("json");
    let urls: Vec<String> = info["connect_urls"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| u.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let want = |s: &Server| format!("127.0.0.1:{}", s.websocket_port().expect("port"));
    assert!(
        urls.contains(&want(&a)) && urls.contains(&want(&b)),
        "{urls:?}"
    );
    assert_eq!(info["port"], a.websocket_port().expect("port"));
    // A TCP client gets the client URLs, never the WebSocket ones.
    let tcp = crate::common::client(&a).await;
    let tcp_urls = tcp.server_info().connect_urls;
    assert!(
        tcp_urls.contains(&format!("127.0.0.1:{}", b.port())),
        "{tcp_urls:?}"
    );
    assert!(!tcp_urls.contains(&want(&b)), "{tcp_urls:?}");
    a.shutdown().await;
    b.shutdown().await;
}
