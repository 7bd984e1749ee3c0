//! Internal clients (no socket), the system account's monitoring requests over NATS, and its
//! client events (connect, disconnect, refused login).

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use natrium::Options;
use serde_json::Value;

#[tokio::test]
async fn internal_client_talks_to_socket_clients() {
    let s = crate::common::start(crate::common::opts()).await;
    let internal = s.internal_client("$G").expect("global account");
    let mut inbox = internal.subscribe("svc.>", None, 16).expect("subscribe");
    let c = crate::common::client(&s).await;
    let mut from_inside = c.subscribe("events.internal").await.expect("sub");
    c.flush().await.expect("flush");
    crate::common::eventually(|| s.num_subscriptions() == 2).await;

    c.publish("svc.hello", Bytes::from_static(b"hi"))
        .await
        .expect("pub");
    c.flush().await.expect("flush");
    let m = tokio::time::timeout(Duration::from_secs(5), inbox.next())
        .await
        .expect("in time")
        .expect("msg");
    assert_eq!(m.subject, "svc.hello");
    assert_eq!(&m.payload[..], b"hi");

    assert!(internal
        .publish("events.internal", None, None, b"from inside")
        .expect("valid subject"));
    let m = tokio::time::timeout(Duration::from_secs(5), from_inside.next())
        .await
        .expect("in time")
        .expect("msg");
    assert_eq!(&m.payload[..], b"from inside");
    assert!(
        internal.publish("bad.*", None, None, b"").is_err(),
        "wildcards are not publishable"
    );

    // An internal responder answers a socket client's request.
    tokio::spawn(async move {
        while let Some(m) = inbox.next().await {
            if let Some(reply) = m.reply {
                let _ = internal.publish(&reply, None, None, b"pong");
            }
        }
    });
    let r = c.request("svc.ping", Bytes::new()).await.expect("reply");
    assert_eq!(&r.payload[..], b"pong");
    s.shutdown().await;
}

#[tokio::test]
async fn dropping_an_internal_subscription_unsubscribes() {
    let s = crate::common::start(crate::common::opts()).await;
    let internal = s.internal_client("$G").expect("account");
    let sub = internal.subscribe("x", None, 1).expect("subscribe");
    assert_eq!(s.num_subscriptions(), 1);
    drop(sub);
    assert_eq!(s.num_subscriptions(), 0);
    assert!(s.internal_client("nope").is_err());
}

/// A server with a system account `SYS` (user `admin`) and an account `APP` (user `app`,
/// password `app`), and the admin's connection.
async fn system_server() -> (natrium::Server, async_nats::Client) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sys.conf");
    std::fs::write(
        &path,
        "accounts { SYS: { users: [{user: admin, password: admin}] }, APP: { users: [{user: app, password: app}] } }\nsystem_account: SYS\n",
    )
    .expect("write");
    let (mut o, _) = Options::from_file(&path).expect("loads");
    o.port = -1;
    o.host = "127.0.0.1".into();
    let s = crate::common::start(o).await;
    let admin = async_nats::ConnectOptions::with_user_and_password("admin".into(), "admin".into())
        .connect(s.client_url())
        .await
        .expect("admin");
    (s, admin)
}

#[tokio::test]
async fn system_account_answers_monitoring_requests() {
    let (s, admin) = system_server().await;
    let r = admin
        .request("$SYS.REQ.SERVER.PING.VARZ", Bytes::new())
        .await
        .expect("varz over NATS");
    let v: Value = serde_json::from_slice(&r.payload).expect("json");
    assert_eq!(v["server"]["id"], s.server_id());
    assert_eq!(v["data"]["server_id"], s.server_id());
    assert_eq!(v["data"]["system_account"], "SYS");
    let r = admin
        .request(
            format!("$SYS.REQ.SERVER.{}.CONNZ", s.server_id()),
            Bytes::from_static(b"{\"auth\":true}"),
        )
        .await
        .expect("connz");
    let v: Value = serde_json::from_slice(&r.payload).expect("json");
    assert_eq!(v["data"]["connections"][0]["account"], "SYS");
    let r = admin
        .request("$SYS.REQ.SERVER.PING", Bytes::new())
        .await
        .expect("statsz");
    let v: Value = serde_json::from_slice(&r.payload).expect("json");
    assert_eq!(v["data"]["connections"], 1);

    // Other accounts cannot reach the system account's handlers.
    let app = async_nats::ConnectOptions::with_user_and_password("app".into(), "app".into())
        .connect(s.client_url())
        .await
        .expect("app");
    let err = app
        .request("$SYS.REQ.SERVER.PING.VARZ", Bytes::new())
        .await
        .expect_err("isolated");
    assert_eq!(
        err.kind(),
        async_nats::client::RequestErrorKind::NoResponders
    );
    s.shutdown().await;
}

/// nats-server's client events in the system account: a refused login
/// (`$SYS.SERVER.<id>.CLIENT.AUTH.ERR`), then a client's connect and disconnect
/// (`$SYS.ACCOUNT.<account>.CONNECT` / `.DISCONNECT`) with what it sent.
#[tokio::test]
async fn system_account_hears_clients_connect_disconnect_and_fail_to_log_in() {
    let (s, admin) = system_server().await;
    let mut events = admin.subscribe("$SYS.>").await.expect("sub");
    admin.flush().await.expect("flush");

    let refused = async_nats::ConnectOptions::with_user_and_password("app".into(), "wrong".into())
        .name("intruder")
        .max_reconnects(Some(1))
        .connect(s.client_url())
        .await;
    assert!(refused.is_err(), "a wrong password is refused");
    let app = async_nats::ConnectOptions::with_user_and_password("app".into(), "app".into())
        .name("worker")
        .connect(s.client_url())
        .await
        .expect("app");
    app.publish("orders.new", "hello".into())
        .await
        .expect("pub");
    app.flush().await.expect("flush");
    drop(app);

    // Other system traffic (connection counts) may come in between: look for the three.
    let mut seen = std::collections::HashMap::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < 3 {
        let m = tokio::time::timeout_at(until, events.next())
            .await
            .unwrap_or_else(|_| panic!("events seen so far: {:?}", seen.keys()))
            .expect("subscription open");
        let subject = m.subject.to_string();
        let kind = if subject == format!("$SYS.SERVER.{}.CLIENT.AUTH.ERR", s.server_id()) {
            "auth"
        } else if subject == "$SYS.ACCOUNT.APP.CONNECT" {
            "connect"
        } else if subject == "$SYS.ACCOUNT.APP.DISCONNECT" {
            "disconnect"
        } else {
            continue;
        };
        let v: Value = serde_json::from_slice(&m.payload).expect("json");
        seen.insert(kind, v);
    }

    let auth = &seen["auth"];
    assert_eq!(auth["type"], "io.nats.server.advisory.v1.client_disconnect");
    assert_eq!(auth["server"]["id"], s.server_id());
    assert_eq!(auth["client"]["user"], "app");
    assert_eq!(auth["client"]["name"], "intruder");
    assert_eq!(auth["client"]["acc"], "$G");
    assert_eq!(auth["reason"], "Authentication Failure");
    assert!(!auth.to_string().contains("wrong"), "no password in events");

    let connect = &seen["connect"];
    assert_eq!(connect["type"], "io.nats.server.advisory.v1.client_connect");
    assert_eq!(connect["client"]["acc"], "APP");
    assert_eq!(connect["client"]["name"], "worker");
    assert_eq!(connect["client"]["lang"], "rust");
    assert_eq!(connect["client"]["kind"], "Client");
    assert_eq!(connect["client"]["client_type"], "nats");
    assert!(connect.get("reason").is_none());

    let gone = &seen["disconnect"];
    assert_eq!(gone["type"], "io.nats.server.advisory.v1.client_disconnect");
    assert_eq!(gone["client"]["id"], connect["client"]["id"]);
    assert_eq!(gone["reason"], "Client Closed");
    assert_eq!(gone["sent"]["msgs"], 1);
    assert_eq!(gone["sent"]["bytes"], 5);
    assert!(gone["client"]["stop"].is_string());
    s.shutdown().await;
}
