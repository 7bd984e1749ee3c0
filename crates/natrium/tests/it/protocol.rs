//! The wire protocol over raw sockets: exact bytes, errors in nats-server's words, the connection
//! closed where nats-server closes it, limits, slow consumers and timeouts.

use std::time::Duration;

use crate::common::{opts, start, Raw};
use bytes::Bytes;
use futures::StreamExt;
use natrium::Options;

#[tokio::test]
async fn ping_pong_verbose_and_exact_msg_bytes() {
    let s = start(opts()).await;
    let mut r = Raw::connect(&s).await;
    r.send("CONNECT {\"verbose\":true,\"headers\":true}\r\n")
        .await;
    assert_eq!(r.read_until("\r\n").await, "+OK\r\n");
    r.send("PING\r\n").await;
    assert_eq!(r.read_until("\r\n").await, "PONG\r\n");
    r.send("sub foo.* 9\r\n").await;
    assert_eq!(r.read_until("\r\n").await, "+OK\r\n");
    r.send("PUB foo.bar rep 5\r\nhello\r\n").await;
    assert_eq!(r.read_until("+OK\r\n").await, "+OK\r\n");
    assert_eq!(
        r.read_until("hello\r\n").await,
        "MSG foo.bar 9 rep 5\r\nhello\r\n"
    );
    // Headers pass through byte-exact, including odd spacing and repeated keys.
    let hdr = "NATS/1.0\r\nA:  b \r\nA: c\r\n\r\n";
    r.send(&format!(
        "HPUB foo.h {} {}\r\n{hdr}xy\r\n",
        hdr.len(),
        hdr.len() + 2
    ))
    .await;
    r.read_until("+OK\r\n").await;
    let want = format!(
        "HMSG foo.h 9 {} {}\r\n{hdr}xy\r\n",
        hdr.len(),
        hdr.len() + 2
    );
    assert_eq!(r.read_until("xy\r\n").await, want);
    // An op split over several writes still parses.
    for part in ["PU", "B foo.s", "plit 3\r", "\nab", "c\r\n"] {
        r.send(part).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    r.read_until("+OK\r\n").await;
    assert_eq!(
        r.read_until("abc\r\n").await,
        "MSG foo.split 9 3\r\nabc\r\n"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn info_advertises_what_clients_read() {
    let s = start(opts()).await;
    let mut stream = tokio::net::TcpStream::connect(s.addr())
        .await
        .expect("connect");
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut b)
            .await
            .expect("read");
        line.push(b[0]);
        if line.ends_with(b"\r\n") {
            break;
        }
    }
    let json: serde_json::Value =
        serde_json::from_slice(&line[5..line.len() - 2]).expect("INFO json");
    assert_eq!(json["version"], natrium::PROTOCOL_VERSION);
    assert_eq!(json["proto"], 1);
    assert_eq!(json["headers"], true);
    assert_eq!(json["max_payload"], 1024 * 1024);
    assert_eq!(json["port"], s.port());
    assert_eq!(json["client_ip"], "127.0.0.1");
    assert!(json["client_id"].as_u64().expect("cid") > 0);
    assert!(json["server_id"].as_str().expect("id").starts_with('N'));
    s.shutdown().await;
}

#[tokio::test]
async fn unknown_operation_is_an_error_and_closes() {
    let s = start(opts()).await;
    let mut r = Raw::connect(&s).await;
    r.send("CONNECT {\"verbose\":false,\"pedantic\":false}\r\nFOO BAR\r\n")
        .await;
    assert_eq!(
        r.read_to_close().await,
        "-ERR 'Unknown Protocol Operation'\r\n"
    );
    let mut r = Raw::connect(&s).await;
    // Malformed arguments close without an -ERR, as nats-server.
    r.send("CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPUB a b c d e\r\n")
        .await;
    assert_eq!(r.read_to_close().await, "");
    let mut r = Raw::connect(&s).await;
    r.send("CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPUB a 3\r\nabcdef\r\n")
        .await;
    assert!(r
        .read_to_close()
        .await
        .starts_with("-ERR 'Unknown Protocol Operation'"));
    let mut r = Raw::connect(&s).await;
    r.send("CONNECT {not json\r\n").await;
    assert_eq!(r.read_to_close().await, "");
    // The server is unharmed.
    let mut r = Raw::connect(&s).await;
    r.send("CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")
        .await;
    r.read_until("PONG\r\n").await;
    s.shutdown().await;
}

/// A pedantic client is told a publish subject is not a literal one, and the message still goes
/// on, as nats-server does it (`-ERR` then `+OK`, then delivery to a wildcard subscriber).
#[tokio::test]
async fn invalid_subjects_get_errors_but_keep_the_connection() {
    let s = start(opts()).await;
    let mut r = Raw::connect(&s).await;
    r.send("CONNECT {\"verbose\":false,\"pedantic\":true}\r\nSUB foo..bar 1\r\nSUB foo.* 2\r\nPUB foo.* 1\r\nx\r\nPING\r\n")
        .await;
    assert_eq!(
        r.read_until("PONG\r\n").await,
        "-ERR 'Invalid Subject'\r\n-ERR 'Invalid Publish Subject'\r\nMSG foo.* 2 1\r\nx\r\nPONG\r\n"
    );
    let mut r = Raw::connect(&s).await;
    r.send("CONNECT {\"verbose\":true,\"pedantic\":true}\r\nPUB foo..bar 1\r\nx\r\nPING\r\n")
        .await;
    assert_eq!(
        r.read_until("PONG\r\n").await,
        "+OK\r\n-ERR 'Invalid Publish Subject'\r\n+OK\r\nPONG\r\n"
    );
    s.shutdown().await;
}

/// A client that is not pedantic gets no error for a subject that is not valid (`foo..bar`, a
/// KV key such as `a..b`): the message is dropped, counted in `/varz`, acknowledged to a
/// verbose client and answered with no responders, as nats-server does. nats-py treats the
/// -ERR as fatal, so it must not come.
#[tokio::test]
async fn invalid_publish_subject_is_dropped_silently_unless_pedantic() {
    let s = start(Options {
        http_host: "127.0.0.1".into(),
        http_port: Some(-1),
        ..opts()
    })
    .await;
    let mut r = Raw::connect(&s).await;
    r.send("CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true}\r\nSUB > 1\r\nSUB _INBOX.a 2\r\nPUB foo..bar 1\r\nx\r\nPUB foo. 1\r\ny\r\nPUB foo..bar _INBOX.a 1\r\nz\r\nPING\r\n")
        .await;
    assert_eq!(
        r.read_until("PONG\r\n").await,
        "HMSG _INBOX.a 2 16 16\r\nNATS/1.0 503\r\n\r\n\r\nPONG\r\n"
    );
    let mut v = Raw::connect(&s).await;
    v.send("CONNECT {\"verbose\":true,\"pedantic\":false}\r\nPUB a..b 1\r\nx\r\nPING\r\n")
        .await;
    assert_eq!(v.read_until("PONG\r\n").await, "+OK\r\n+OK\r\nPONG\r\n");
    let varz = crate::common::get_json(&s, "/varz").await;
    assert_eq!(varz["in_msgs"], 4);
    assert_eq!(varz["in_bytes"], 4);
    s.shutdown().await;
}

/// nats-py publishes to an invalid KV key and keeps its connection.
#[tokio::test]
async fn nats_py_survives_an_invalid_publish_subject() {
    let s = start(opts()).await;
    let script = format!(
        r#"
import asyncio, nats
async def main():
    errors = []
    async def err_cb(e):
        errors.append(e)
    nc = await nats.connect("nats://{}", error_cb=err_cb, allow_reconnect=False)
    sub = await nc.subscribe("ok")
    await nc.publish("kv..key", b"x")
    await nc.publish("ok", b"y")
    msg = await sub.next_msg(timeout=5)
    assert msg.data == b"y", msg
    assert nc.is_connected and not errors, errors
    await nc.close()
    print("ok")
asyncio.run(main())
"#,
        s.addr()
    );
    let out = tokio::task::spawn_blocking(move || crate::stock_clients::run_python(&script))
        .await
        .expect("join");
    let Some(out) = out else { return };
    assert_eq!(out.trim(), "ok");
    s.shutdown().await;
}

/// CONNECT is decoded as nats-server decodes it: an empty object leaves its defaults (verbose
/// and pedantic on), a later CONNECT changes only what it names, and anything but an object
/// is a protocol error that closes the connection without an -ERR.
#[tokio::test]
async fn connect_options_default_as_nats_server() {
    let s = start(opts()).await;
    let mut r = Raw::connect(&s).await;
    r.send("CONNECT {}\r\nPUB a.* 1\r\nx\r\nPING\r\n").await;
    assert_eq!(
        r.read_until("PONG\r\n").await,
        "+OK\r\n-ERR 'Invalid Publish Subject'\r\n+OK\r\nPONG\r\n"
    );
    // Before any CONNECT the defaults hold too (a telnet session).
    let mut t = Raw::connect(&s).await;
    t.send("SUB a 1\r\nPING\r\n").await;
    assert_eq!(t.read_until("PONG\r\n").await, "+OK\r\nPONG\r\n");
    // A second CONNECT keeps what it does not name; names match in any case.
    let mut c = Raw::connect(&s).await;
    c.send("CONNECT {\"VERBOSE\":false}\r\nCONNECT {}\r\nCONNECT null\r\nPING\r\n")
        .await;
    assert_eq!(c.read_until("PONG\r\n").await, "PONG\r\n");
    for bad in ["[]", "\"x\"", "{} x", "{\"verbose\":\"yes\"}", ""] {
        let mut b = Raw::connect(&s).await;
        b.send(&format!("CONNECT {bad}\r\nPING\r\n")).await;
        assert_eq!(b.read_to_close().await, "", "CONNECT {bad}");
    }
    // Also after a first good CONNECT.
    let mut b = Raw::connect(&s).await;
    b.send("CONNECT {\"verbose\":false}\r\nPING\r\nCONNECT []\r\nPING\r\n")
        .await;
    assert_eq!(b.read_to_close().await, "PONG\r\n");
    s.shutdown().await;
}

/// `UNSUB sid max` with a max that is not a number ends the subscription at once, as nats-server
/// (which reads it as no max); the connection stays.
#[tokio::test]
async fn unsub_with_a_bad_max_unsubscribes() {
    let s = start(opts()).await;
    let mut r = Raw::connect(&s).await;
    r.send("CONNECT {\"verbose\":true,\"pedantic\":false}\r\nSUB a 1\r\nSUB b 2\r\nUNSUB 1 abc\r\nUNSUB 2 1234567890\r\nUNSUB 9 x\r\nPUB a 1\r\nx\r\nPUB b 1\r\ny\r\nPING\r\n")
        .await;
    assert_eq!(
        r.read_until("PONG\r\n").await,
        "+OK\r\n".repeat(8) + "PONG\r\n"
    );
    // Too many arguments is malformed: closed without an -ERR.
    r.send("UNSUB 1 2 3\r\n").await;
    assert_eq!(r.read_to_close().await, "");
    s.shutdown().await;
}

/// Without `pedantic`, a publish subject may hold wildcards, as nats-server allows (nats-py puts
/// a consumer's filter, `a.>`, in the consumer create subject): it reaches wildcard subscribers
/// and the connection stays.
#[tokio::test]
async fn wildcard_publish_subjects_are_accepted_without_pedantic() {
    let s = start(opts()).await;
    let mut r = Raw::connect(&s).await;
    r.send("CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB orders.> 1\r\nSUB orders.new 2\r\nPUB orders.> 2\r\nhi\r\nPING\r\n")
        .await;
    assert_eq!(r.read_until("\r\n").await, "MSG orders.> 1 2\r\n");
    assert_eq!(r.read_until("\r\n").await, "hi\r\n");
    // The literal subscription does not match a wildcard token.
    assert_eq!(r.read_until("\r\n").await, "PONG\r\n");
    s.shutdown().await;
}

#[tokio::test]
async fn max_payload_violation_closes() {
    let s = start(Options {
        max_payload: 1024,
        ..opts()
    })
    .await;
    let mut r = Raw::connect(&s).await;
    r.send("CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPUB big 2048\r\n")
        .await;
    assert_eq!(
        r.read_to_close().await,
        "-ERR 'Maximum Payload Violation'\r\n"
    );
    let mut r = Raw::connect(&s).await;
    r.send(&format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {} 1\r\n",
        "x".repeat(5000)
    ))
    .await;
    assert_eq!(
        r.read_to_close().await,
        "-ERR 'Maximum Control Line Exceeded'\r\n"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn max_payload_is_advertised_to_clients() {
    let s = start(Options {
        max_payload: 1024,
        ..opts()
    })
    .await;
    let c = crate::common::client(&s).await;
    assert_eq!(c.server_info().max_payload, 1024);
    let err = c.publish("x", Bytes::from(vec![0u8; 2048])).await;
    assert!(
        err.is_err(),
        "the client refuses what the server would refuse"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_cut_off_and_others_keep_receiving() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let s = start(Options {
        max_pending: 2 * 1024 * 1024,
        max_payload: 64 * 1024,
        ..opts()
    })
    .await;
    // The slow one subscribes and never reads its socket.
    let mut slow = Raw::connect(&s).await;
    slow.send("CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB flood 1\r\nPING\r\n")
        .await;
    slow.read_until("PONG\r\n").await;
    let fast = crate::common::client(&s).await;
    let mut fast_sub = fast.subscribe("flood").await.expect("sub");
    fast.flush().await.expect("flush");
    crate::common::eventually(|| s.num_subscriptions() == 2).await;
    let publisher = crate::common::client(&s).await;
    let payload = Bytes::from(vec![b'x'; 16 * 1024]);
    // ~48 MB in all: far beyond the slow client's pending limit plus its socket buffers. The
    // publisher paces itself on the fast subscriber, which therefore never falls behind.
    const N: usize = 3000;
    const BATCH: usize = 50;
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let reader = tokio::spawn(async move {
        while counter.load(Ordering::Relaxed) < N {
            match tokio::time::timeout(Duration::from_secs(10), fast_sub.next()).await {
                Ok(Some(_)) => counter.fetch_add(1, Ordering::Relaxed),
                _ => break,
            };
        }
    });
    for batch in 0..N / BATCH {
        for _ in 0..BATCH {
            publisher
                .publish("flood", payload.clone())
                .await
                .expect("pub");
        }
        publisher.flush().await.expect("publisher is never blocked");
        let want = (batch + 1) * BATCH;
        crate::common::eventually(|| received.load(Ordering::Relaxed) >= want).await;
    }
    reader.await.expect("join");
    assert_eq!(
        received.load(Ordering::Relaxed),
        N,
        "the fast subscriber gets everything"
    );
    // The slow consumer was disconnected; the other two remain.
    crate::common::eventually(|| s.num_clients() == 2).await;
    // Its socket is closed by the server (read_to_close fails the test on a timeout).
    slow.read_to_close().await;
    s.shutdown().await;
}

#[tokio::test]
async fn auth_timeout_and_violation() {
    let mut o = opts();
    o.auth.token = Some("secret".into());
    o.auth_timeout = Duration::from_millis(200);
    let s = start(o).await;
    // Never sends CONNECT.
    let mut r = Raw::connect(&s).await;
    let started = std::time::Instant::now();
    assert_eq!(r.read_to_close().await, "-ERR 'Authentication Timeout'\r\n");
    assert!(started.elapsed() < Duration::from_secs(3));
    // Sends something other than CONNECT first.
    let mut r = Raw::connect(&s).await;
    r.send("PING\r\n").await;
    assert_eq!(
        r.read_to_close().await,
        "-ERR 'Authorization Violation'\r\n"
    );
    // Wrong token.
    let mut r = Raw::connect(&s).await;
    r.send("CONNECT {\"auth_token\":\"nope\"}\r\n").await;
    assert_eq!(
        r.read_to_close().await,
        "-ERR 'Authorization Violation'\r\n"
    );
    // Right token.
    let mut r = Raw::connect(&s).await;
    r.send("CONNECT {\"verbose\":false,\"auth_token\":\"secret\"}\r\nPING\r\n")
        .await;
    assert_eq!(r.read_until("\r\n").await, "PONG\r\n");
    s.shutdown().await;
}

#[tokio::test]
async fn stale_connection_is_closed() {
    let s = start(Options {
        ping_interval: Duration::from_millis(100),
        ping_max: 2,
        ..opts()
    })
    .await;
    let mut r = Raw::connect(&s).await;
    r.send("CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")
        .await;
    let all = r.read_to_close().await;
    assert_eq!(all, "PING\r\nPING\r\n-ERR 'Stale Connection'\r\n");
    // A client that answers PINGs stays.
    let c = crate::common::client(&s).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.flush().await.expect("still connected");
    s.shutdown().await;
}

#[tokio::test]
async fn max_connections_refuses_the_extra_client() {
    let s = start(Options {
        max_connections: 2,
        ..opts()
    })
    .await;
    let _a = Raw::connect(&s).await;
    let _b = Raw::connect(&s).await;
    let mut c = tokio::net::TcpStream::connect(s.addr()).await.expect("tcp");
    let mut out = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut c, &mut out),
    )
    .await
    .expect("closed")
    .expect("read");
    assert_eq!(
        String::from_utf8_lossy(&out),
        "-ERR 'maximum connections exceeded'\r\n"
    );
    s.shutdown().await;
}

/// `UNSUB sid max` counts the messages the subscription already had, as nats-server does: a
/// max it has reached ends it at once, a higher one lets the difference through.
#[tokio::test]
async fn unsub_max_counts_earlier_deliveries() {
    let s = start(opts()).await;
    let mut r = Raw::connect(&s).await;
    r.send(
        "CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB a 1\r\nPUB a 1\r\nx\r\nPUB a 1\r\ny\r\nPUB a 1\r\nz\r\nUNSUB 1 2\r\nPUB a 1\r\nw\r\n\
         SUB b 2\r\nPUB b 1\r\nx\r\nUNSUB 2 3\r\nPUB b 1\r\ny\r\nPUB b 1\r\nz\r\nPUB b 1\r\nq\r\nPING\r\n",
    )
    .await;
    assert_eq!(
        r.read_until("PONG\r\n").await,
        "MSG a 1 1\r\nx\r\nMSG a 1 1\r\ny\r\nMSG a 1 1\r\nz\r\nMSG b 2 1\r\nx\r\nMSG b 2 1\r\ny\r\nMSG b 2 1\r\nz\r\nPONG\r\n"
    );
    s.shutdown().await;
}
