//! Limits: the server's `max_subscriptions` per connection and an account's `limits {}` —
//! `max_subscriptions` (per connection: the extra SUB gets nats-server's error and the
//! connection stays), `max_connections` (across the account: the extra connection is refused
//! and closed), `max_payload` (lowers the connection's limit: a larger PUB closes it) — and a
//! reload that lowers them on live connections.

use crate::common::Raw;
use natrium::{Options, Server};

async fn login(s: &Server, user: &str) -> Raw {
    let mut r = Raw::connect(s).await;
    r.send(&format!(
        "CONNECT {{\"verbose\":false,\"user\":\"{user}\",\"pass\":\"pw\"}}\r\nPING\r\n"
    ))
    .await;
    assert_eq!(r.read_until("\r\n").await, "PONG\r\n");
    r
}

#[tokio::test]
async fn max_subscriptions_per_connection_and_per_account() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("limits.conf");
    std::fs::write(
        &conf,
        "listen: 127.0.0.1:-1\nmax_subs: 3\naccounts {\n  A: { users: [ {user: a, password: pw} ], limits: { max_subscriptions: 1 } }\n}\nauthorization { users: [ {user: g, password: pw} ] }\n",
    )
    .expect("write");
    let (o, warnings) = Options::from_file(&conf).expect("loads");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(o.max_subscriptions, 3);
    assert_eq!(o.accounts[0].limits.max_subscriptions, Some(1));
    let s = Server::start(o).await.expect("starts");

    let mut g = login(&s, "g").await;
    g.send("SUB a 1\r\nSUB b 2\r\nSUB c 3\r\nSUB d 4\r\nUNSUB 1\r\nSUB e 5\r\nPING\r\n")
        .await;
    assert_eq!(
        g.read_until("PONG\r\n").await,
        "-ERR 'maximum subscriptions exceeded'\r\nPONG\r\n"
    );
    // The refused SUB never existed; the one after the UNSUB did.
    g.send("PUB d 1\r\nx\r\nPUB e 1\r\ny\r\nPING\r\n").await;
    assert_eq!(g.read_until("PONG\r\n").await, "MSG e 5 1\r\ny\r\nPONG\r\n");

    let mut a = login(&s, "a").await;
    a.send("SUB x 1\r\nSUB y 2\r\nPING\r\n").await;
    assert_eq!(
        a.read_until("PONG\r\n").await,
        "-ERR 'maximum subscriptions exceeded'\r\nPONG\r\n"
    );
    assert_eq!(s.num_clients(), 2, "both connections stay");
    s.shutdown().await;
}

async fn try_login(s: &Server, user: &str) -> (Raw, String) {
    let mut r = Raw::connect(s).await;
    r.send(&format!(
        "CONNECT {{\"verbose\":false,\"user\":\"{user}\",\"pass\":\"pw\"}}\r\nPING\r\n"
    ))
    .await;
    let line = r.read_until("\r\n").await;
    (r, line)
}

fn limits_conf(dir: &std::path::Path, a_limits: &str) -> std::path::PathBuf {
    let conf = dir.join("acc.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:-1\naccounts {{\n  A: {{ users: [ {{user: a1, password: pw}}, {{user: a2, password: pw}} ], limits: {{ {a_limits} }} }}\n  B: {{ users: [ {{user: b, password: pw}} ] }}\n}}\n"
        ),
    )
    .expect("write");
    conf
}

#[tokio::test]
async fn account_max_connections_and_max_payload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = limits_conf(dir.path(), "max_conn: 2, max_payload: 8, max_leafnodes: 0");
    let (o, warnings) = Options::from_file(&conf).expect("loads");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(o.accounts[0].limits.max_connections, Some(2));
    assert_eq!(o.accounts[0].limits.max_payload, Some(8));
    let s = Server::start(o).await.expect("starts");

    let (_a1, first) = try_login(&s, "a1").await;
    assert_eq!(first, "PONG\r\n");
    let (mut a2, first) = try_login(&s, "a2").await;
    assert_eq!(first, "PONG\r\n");
    // The third connection of A is refused, whoever the user; B is not affected.
    let (mut a3, first) = try_login(&s, "a1").await;
    assert_eq!(
        first,
        "-ERR 'maximum account active connections exceeded'\r\n"
    );
    a3.read_to_close().await;
    let (mut b, first) = try_login(&s, "b").await;
    assert_eq!(first, "PONG\r\n");

    // The account's max_payload (8) is lower than the server's: 8 bytes pass, 9 close the
    // connection as the server limit would; B keeps the server's limit.
    a2.send("SUB p 1\r\nPUB p 8\r\n12345678\r\nPING\r\n").await;
    assert_eq!(
        a2.read_until("PONG\r\n").await,
        "MSG p 1 8\r\n12345678\r\nPONG\r\n"
    );
    a2.send("PUB p 9\r\n123456789\r\n").await;
    assert!(a2
        .read_to_close()
        .await
        .ends_with("-ERR 'Maximum Payload Violation'\r\n"));
    b.send("PUB p 9\r\n123456789\r\nPING\r\n").await;
    assert_eq!(b.read_until("\r\n").await, "PONG\r\n");

    // a2's connection is gone: its slot is free again.
    let mut ok = false;
    for _ in 0..100 {
        let (_r, first) = try_login(&s, "a2").await;
        if first == "PONG\r\n" {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ok, "a closed connection frees its account slot");
    s.shutdown().await;
}

#[tokio::test]
async fn reload_lowers_account_limits_on_live_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = limits_conf(dir.path(), "max_connections: 3, max_subscriptions: 5");
    let (o, _) = Options::from_file(&conf).expect("loads");
    let s = Server::start(o).await.expect("starts");
    let mut old = login(&s, "a1").await;
    let mut subs = login(&s, "a2").await;
    let mut newest = login(&s, "a1").await;
    subs.send("SUB x 1\r\nSUB y 2\r\nSUB z 3\r\nPING\r\n").await;
    assert_eq!(subs.read_until("\r\n").await, "PONG\r\n");

    // Two connections and two subscriptions: the newest connection is closed, the one holding
    // three subscriptions too; the oldest stays.
    assert_eq!(
        limits_conf(dir.path(), "max_connections: 2, max_subscriptions: 2"),
        conf
    );
    s.reload().expect("a reload may change account limits");
    assert!(newest
        .read_to_close()
        .await
        .contains("-ERR 'maximum account active connections exceeded'"));
    assert!(subs
        .read_to_close()
        .await
        .contains("-ERR 'maximum subscriptions exceeded'"));
    old.send("SUB a 1\r\nSUB b 2\r\nSUB c 3\r\nPING\r\n").await;
    assert_eq!(
        old.read_until("PONG\r\n").await,
        "-ERR 'maximum subscriptions exceeded'\r\nPONG\r\n"
    );
    s.shutdown().await;
}

/// Publishes `n` messages of `size` bytes as user `user` on `subject` as fast as the client
/// goes, and returns how long until a subscriber of the same account had them all (each
/// checked: none lost).
async fn publish_through(s: &Server, user: &str, subject: &str, n: usize, size: usize) -> f64 {
    use futures::StreamExt;
    let connect = || {
        async_nats::ConnectOptions::with_user_and_password(user.into(), "pw".into())
            .connect(s.client_url())
    };
    let sub_client = connect().await.expect("subscriber");
    let mut sub = sub_client
        .subscribe(subject.to_string())
        .await
        .expect("sub");
    sub_client.flush().await.expect("flush");
    let publisher = connect().await.expect("publisher");
    let t0 = std::time::Instant::now();
    let body = bytes::Bytes::from(vec![b'x'; size]);
    for _ in 0..n {
        publisher
            .publish(subject.to_string(), body.clone())
            .await
            .expect("publish");
    }
    publisher.flush().await.expect("flush");
    for i in 0..n {
        let m = tokio::time::timeout(std::time::Duration::from_secs(20), sub.next())
            .await
            .unwrap_or_else(|_| panic!("message {i} of {n} never came"))
            .expect("message");
        assert_eq!(m.payload.len(), size);
    }
    t0.elapsed().as_secs_f64()
}

/// Natrium's per-account publish rates (`limits { max_msgs_per_sec, max_bytes_per_sec }`; nats-
/// server has none): a publisher over its account's rate is slowed down (its socket is not read
/// until the account is within the rate) and loses nothing; a burst of one second's worth
/// passes; other accounts are not affected; `/metrics` and `/accstatz` show the limits and the
/// time publishers waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_rates_slow_an_account_down_and_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("rates.conf");
    std::fs::write(
        &conf,
        "listen: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\naccounts {\n\
         A: { users: [ {user: a, password: pw} ], limits: { max_msgs_per_sec: 1000 } }\n\
         B: { users: [ {user: b, password: pw} ] }\n\
         C: { users: [ {user: c, password: pw} ], limits: { max_bytes_per_sec: 64KB } }\n}\n",
    )
    .expect("write");
    let (o, warnings) = Options::from_file(&conf).expect("loads");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(o.accounts[0].limits.max_msgs_per_sec, Some(1000));
    assert_eq!(o.accounts[2].limits.max_bytes_per_sec, Some(65536));
    let s = Server::start(o).await.expect("starts");

    // 5000 messages at 1000/s: a burst of 1000 passes, and the last read's messages (up to
    // 64 KiB, ~2000 of these) are delivered before its wait: the rest takes 2 s at least.
    let a = publish_through(&s, "a", "rated", 5000, 16).await;
    assert!(a >= 1.5, "account A published 5000 messages in {a:.2} s");
    // 256 KiB at 64 KiB/s: 64 KiB burst and up to one 64 KiB read early, 2 s for the rest.
    let c = publish_through(&s, "c", "rated", 256, 1024).await;
    assert!(c >= 1.5, "account C published 256 KiB in {c:.2} s");
    // B has no limit: never held back.
    publish_through(&s, "b", "free", 6000, 16).await;

    let metrics = reqwest::get(format!("{}/metrics", s.monitor_url().expect("http")))
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    let value = |name: &str, account: &str| -> Option<f64> {
        let prefix = format!("{name}{{account=\"{account}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.parse().expect("number"))
    };
    assert_eq!(
        value("natrium_account_max_msgs_per_second", "A"),
        Some(1000.0)
    );
    assert_eq!(
        value("natrium_account_max_bytes_per_second", "C"),
        Some(65536.0)
    );
    assert_eq!(
        value("natrium_account_max_msgs_per_second", "B"),
        None,
        "{metrics}"
    );
    let waited = |acc| value("natrium_account_throttled_seconds_total", acc).expect("counter");
    assert!(waited("A") >= 1.0, "{metrics}");
    assert!(waited("C") >= 2.0, "{metrics}");
    assert_eq!(waited("B"), 0.0);

    let stat = crate::common::get_json(&s, "/accstatz?acc=A").await;
    let a_stat = &stat["account_statz"][0];
    assert_eq!(a_stat["rate_limits"]["max_msgs_per_sec"], 1000, "{stat}");
    assert!(a_stat["rate_limits"]["throttled_seconds"].as_f64() >= Some(1.0));
    assert_eq!(a_stat["received"]["msgs"], 5000, "{stat}");
    let stat = crate::common::get_json(&s, "/accstatz?acc=B").await;
    assert!(
        stat["account_statz"][0].get("rate_limits").is_none(),
        "{stat}"
    );
    s.shutdown().await;
}
