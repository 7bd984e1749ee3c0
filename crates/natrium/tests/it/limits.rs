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
