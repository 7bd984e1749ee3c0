//! Multi-tenancy: accounts isolate subject spaces, exports/imports bridge them, and per-user
//! permissions are enforced with nats-server's errors while the connection stays open.

use std::time::Duration;

use crate::common::{start, Raw};
use bytes::Bytes;
use futures::StreamExt;
use natrium::{Options, Server};

const TENANT_A: &str = "5f0c3a52-8d51-4b4e-9f2a-0c6a1f3e7b11";
const TENANT_B: &str = "c2d9e8f7-1a2b-4c3d-8e9f-a0b1c2d3e4f5";

/// Seed 000's authorization block, verbatim in its JSON form, with two tenants filled in.
fn seed_000_config(dir: &std::path::Path) -> std::path::PathBuf {
    let user = |t: &str| {
        format!(
            r#"      {{
        "user": "tenant_{t}",
        "password": "pw-{t}",
        "permissions": {{
          "publish": ["tenant.{t}.>"],
          "subscribe": ["tenant.{t}.>"]
        }}
      }}"#
        )
    };
    let json = format!(
        "{{\n  \"authorization\": {{\n    \"users\": [\n{},\n{}\n    ]\n  }}\n}}\n",
        user(TENANT_A),
        user(TENANT_B)
    );
    let path = dir.join("tenants.json");
    std::fs::write(&path, json).expect("write config");
    path
}

async fn start_file(path: &std::path::Path) -> Server {
    let (mut o, warnings) = Options::from_file(path).expect("config loads");
    assert!(warnings.is_empty(), "{warnings:?}");
    o.host = "127.0.0.1".into();
    o.port = -1;
    start(o).await
}

async fn login(s: &Server, user: &str, pass: &str) -> async_nats::Client {
    async_nats::ConnectOptions::with_user_and_password(user.into(), pass.into())
        .connect(s.client_url())
        .await
        .expect("login")
}

#[tokio::test]
async fn seed_000_tenants_are_isolated_by_permissions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start_file(&seed_000_config(dir.path())).await;
    let a = login(&s, &format!("tenant_{TENANT_A}"), &format!("pw-{TENANT_A}")).await;
    let b = login(&s, &format!("tenant_{TENANT_B}"), &format!("pw-{TENANT_B}")).await;
    let mut b_sub = b
        .subscribe(format!("tenant.{TENANT_B}.>"))
        .await
        .expect("own subjects");
    b.flush().await.expect("flush");
    // A cannot reach B's subjects; B sees nothing of A's attempt.
    a.publish(
        format!("tenant.{TENANT_B}.device.d1.command"),
        Bytes::from_static(b"x"),
    )
    .await
    .expect("client-side publish");
    a.flush().await.expect("A stays connected");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), b_sub.next())
            .await
            .is_err()
    );
    // B's own traffic flows.
    b.publish(
        format!("tenant.{TENANT_B}.device.d1.heartbeat"),
        Bytes::from_static(b"hb"),
    )
    .await
    .expect("pub");
    let m = tokio::time::timeout(Duration::from_secs(5), b_sub.next())
        .await
        .expect("in time")
        .expect("msg");
    assert_eq!(&m.payload[..], b"hb");

    // The exact errors, over a raw socket; the connection stays open after each.
    let mut r = Raw::connect(&s).await;
    r.send(&format!(
        "CONNECT {{\"verbose\":false,\"user\":\"tenant_{TENANT_A}\",\"pass\":\"pw-{TENANT_A}\"}}\r\n\
         PUB tenant.{TENANT_B}.device.d1.heartbeat 2\r\nhi\r\nSUB tenant.{TENANT_B}.> 1\r\nSUB > 2\r\n\
         SUB tenant.{TENANT_A}.> 3\r\nPUB tenant.{TENANT_A}.device.d1.status 2\r\nok\r\nPING\r\n"
    ))
    .await;
    assert_eq!(
        r.read_until("\r\n").await,
        format!("-ERR 'Permissions Violation for Publish to \"tenant.{TENANT_B}.device.d1.heartbeat\"'\r\n")
    );
    assert_eq!(
        r.read_until("\r\n").await,
        format!("-ERR 'Permissions Violation for Subscription to \"tenant.{TENANT_B}.>\"'\r\n")
    );
    assert_eq!(
        r.read_until("\r\n").await,
        "-ERR 'Permissions Violation for Subscription to \">\"'\r\n"
    );
    assert_eq!(
        r.read_until("ok\r\n").await,
        format!("MSG tenant.{TENANT_A}.device.d1.status 3 2\r\nok\r\n")
    );
    assert_eq!(r.read_until("\r\n").await, "PONG\r\n");
    s.shutdown().await;
}

const ACCOUNTS_CONF: &str = r#"
accounts {
  A: {
    users: [ {user: a, password: a}, {user: a_limited, password: x, permissions: { publish: { deny: ["secret.>"] }, subscribe: { allow: ["jobs workers", "public.>"] } } } ]
    exports: [ {stream: "events.>"}, {service: "time.now"}, {stream: "private.>", accounts: [C]} ]
  }
  B: {
    users: [ {user: b, password: b} ]
    imports: [
      {stream: {account: A, subject: "events.>"}, prefix: "from_a"}
      {service: {account: A, subject: "time.now"}, to: "clock"}
    ]
  }
  C: { users: [ {user: c, password: c} ] }
}
authorization {
  users: [ {user: responder, password: r, permissions: { publish: { deny: ">" }, subscribe: "svc.>", allow_responses: true } }, {user: asker, password: q} ]
}
"#;

async fn start_conf(conf: &str) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("accounts.conf");
    std::fs::write(&path, conf).expect("write");
    let s = start_file(&path).await;
    (dir, s)
}

#[tokio::test]
async fn accounts_isolate_and_imports_bridge() {
    let (_dir, s) = start_conf(ACCOUNTS_CONF).await;
    let a = login(&s, "a", "a").await;
    let b = login(&s, "b", "b").await;
    let c = login(&s, "c", "c").await;
    let mut b_same = b.subscribe("events.x").await.expect("sub");
    let mut c_same = c.subscribe("events.x").await.expect("sub");
    let mut b_imported = b.subscribe("from_a.events.>").await.expect("sub");
    b.flush().await.expect("flush");
    c.flush().await.expect("flush");
    a.publish("events.x", Bytes::from_static(b"1"))
        .await
        .expect("pub");
    a.flush().await.expect("flush");
    let m = tokio::time::timeout(Duration::from_secs(5), b_imported.next())
        .await
        .expect("imported in time")
        .expect("msg");
    assert_eq!(m.subject.as_str(), "from_a.events.x");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), b_same.next())
            .await
            .is_err()
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), c_same.next())
            .await
            .is_err()
    );
    // Messages published in B never reach A.
    let mut a_sub = a.subscribe(">").await.expect("sub");
    a.flush().await.expect("flush");
    b.publish("events.y", Bytes::from_static(b"2"))
        .await
        .expect("pub");
    b.flush().await.expect("flush");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), a_sub.next())
            .await
            .is_err()
    );
    s.shutdown().await;
}

#[tokio::test]
async fn service_import_round_trip() {
    let (_dir, s) = start_conf(ACCOUNTS_CONF).await;
    let a = login(&s, "a", "a").await;
    let mut svc = a.subscribe("time.now").await.expect("sub");
    a.flush().await.expect("flush");
    let responder = a.clone();
    tokio::spawn(async move {
        while let Some(m) = svc.next().await {
            if let Some(reply) = m.reply {
                responder
                    .publish(reply, Bytes::from_static(b"noon"))
                    .await
                    .expect("reply");
            }
        }
    });
    let b = login(&s, "b", "b").await;
    for _ in 0..3 {
        let r = b
            .request("clock", Bytes::new())
            .await
            .expect("answer through the import");
        assert_eq!(&r.payload[..], b"noon");
    }
    // C has no import: nobody answers there.
    let c = login(&s, "c", "c").await;
    let err = c
        .request("clock", Bytes::new())
        .await
        .expect_err("no responders");
    assert_eq!(
        err.kind(),
        async_nats::client::RequestErrorKind::NoResponders
    );
    s.shutdown().await;
}

#[tokio::test]
async fn imports_must_be_exported() {
    let conf = "accounts { A: { users: [{user: a, password: a}], exports: [{stream: \"private.>\", accounts: [C]}] }\n\
                B: { imports: [{stream: {account: A, subject: \"private.>\"}}] }\nC: {} }";
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.conf");
    std::fs::write(&path, conf).expect("write");
    let (mut o, _) = Options::from_file(&path).expect("parses");
    o.port = -1;
    let err = Server::start(o).await.err().expect("refused").to_string();
    assert!(err.contains("not exported"), "{err}");
}

#[tokio::test]
async fn deny_lists_queue_permissions_and_responses() {
    let (_dir, s) = start_conf(ACCOUNTS_CONF).await;
    let mut r = Raw::connect(&s).await;
    r.send(
        "CONNECT {\"verbose\":false,\"user\":\"a_limited\",\"pass\":\"x\"}\r\nPUB secret.plans 1\r\nx\r\nSUB jobs 1\r\n\
         SUB jobs others 2\r\nSUB jobs workers 3\r\nSUB public.> 4\r\nPING\r\n",
    )
    .await;
    assert_eq!(
        r.read_until("\r\n").await,
        "-ERR 'Permissions Violation for Publish to \"secret.plans\"'\r\n"
    );
    assert_eq!(
        r.read_until("\r\n").await,
        "-ERR 'Permissions Violation for Subscription to \"jobs\"'\r\n"
    );
    assert_eq!(
        r.read_until("\r\n").await,
        "-ERR 'Permissions Violation for Subscription to \"jobs\" using queue \"others\"'\r\n"
    );
    assert_eq!(r.read_until("\r\n").await, "PONG\r\n");

    // allow_responses: the responder may publish nowhere except to the replies it is owed.
    let mut resp = Raw::connect(&s).await;
    resp.send("CONNECT {\"verbose\":false,\"user\":\"responder\",\"pass\":\"r\"}\r\nSUB svc.> 1\r\nPUB anywhere 1\r\nx\r\nPING\r\n")
        .await;
    assert_eq!(
        resp.read_until("\r\n").await,
        "-ERR 'Permissions Violation for Publish to \"anywhere\"'\r\n"
    );
    resp.read_until("PONG\r\n").await;
    let mut asker = Raw::connect(&s).await;
    asker
        .send("CONNECT {\"verbose\":false,\"user\":\"asker\",\"pass\":\"q\"}\r\nSUB _INBOX.q1 9\r\nPUB svc.ask _INBOX.q1 1\r\n?\r\nPING\r\n")
        .await;
    asker.read_until("PONG\r\n").await;
    resp.read_until("MSG svc.ask 1 _INBOX.q1 1\r\n?\r\n").await;
    resp.send("PUB _INBOX.q1 3\r\nyes\r\nPUB _INBOX.q1 5\r\nagain\r\nPING\r\n")
        .await;
    assert_eq!(
        asker.read_until("yes\r\n").await,
        "MSG _INBOX.q1 9 3\r\nyes\r\n"
    );
    assert_eq!(
        resp.read_until("\r\n").await,
        "-ERR 'Permissions Violation for Publish to \"_INBOX.q1\"'\r\n",
        "one response per request"
    );
    s.shutdown().await;
}
