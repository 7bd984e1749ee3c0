//! Subscription limits: the server's `max_subscriptions` per connection and an account's
//! `limits { max_subscriptions }`; the extra SUB gets nats-server's error and the connection
//! stays.

mod common;

use common::Raw;
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
    assert_eq!(o.accounts[0].max_subscriptions, 1);
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
