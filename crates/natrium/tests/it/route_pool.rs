//! Pooled and per-account routes as nats-server 2.10 runs them: each account's interest and
//! messages on the connection its name hashes to (or on its own dedicated connection, the
//! account left out of the protocol), `pool_size: -1` and the one-connection fallback, and the
//! errors a peer gets for a pool it cannot join — checked on the wire with a hand-driven peer.

use std::time::Duration;

use futures::StreamExt;
use natrium::options::{AccountOptions, ClusterOptions, RouteUrl, User};
use natrium::{Options, Server};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::common::proxy::Proxy;
use crate::common::{eventually, get_json, opts, start};

/// Accounts chosen for where FNV-1a puts them in a pool of 3: A -> 0, C -> 1, TWO -> 2.
const ACCOUNTS: [&str; 4] = ["A", "C", "TWO", "PINNED"];

/// A node of cluster `p1` with `ACCOUNTS` (user = password = account name, lower case),
/// `PINNED` on a dedicated route, routing to `routes`.
fn node(name: &str, routes: &[u16], pool_size: i32) -> Options {
    Options {
        server_name: Some(name.into()),
        http_port: Some(-1),
        cluster: Some(ClusterOptions {
            name: Some("p1".into()),
            host: "127.0.0.1".into(),
            port: -1,
            routes: routes
                .iter()
                .map(|p| RouteUrl::parse(&format!("nats://127.0.0.1:{p}")).expect("url"))
                .collect(),
            pool_size,
            accounts: if pool_size > 0 {
                vec!["PINNED".into()]
            } else {
                Vec::new()
            },
            ..ClusterOptions::default()
        }),
        accounts: ACCOUNTS
            .iter()
            .map(|a| AccountOptions {
                name: (*a).into(),
                ..Default::default()
            })
            .collect(),
        auth: natrium::options::AuthOptions {
            users: ACCOUNTS
                .iter()
                .map(|a| User {
                    user: a.to_lowercase(),
                    password: a.to_lowercase(),
                    account: Some((*a).into()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        },
        ..opts()
    }
}

async fn login(s: &Server, account: &str) -> async_nats::Client {
    let u = account.to_lowercase();
    async_nats::ConnectOptions::with_user_and_password(u.clone(), u)
        .connect(s.client_url())
        .await
        .expect("login")
}

/// Keeps a client connected for the rest of the test (its subscriptions stay).
fn keep_clients(c: async_nats::Client) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(c);
    });
}

/// Every account's messages, requests and queue groups cross between `a` and `b`.
async fn every_account_crosses(a: &Server, b: &Server) {
    for acc in ACCOUNTS {
        let on_b = login(b, acc).await;
        let mut sub = on_b.subscribe("pool.>").await.expect("sub");
        let mut q = on_b
            .queue_subscribe("pool.q", "workers".into())
            .await
            .expect("queue sub");
        let responder = on_b.clone();
        let mut svc = responder.subscribe("pool.svc").await.expect("svc");
        on_b.flush().await.expect("flush");
        tokio::spawn(async move {
            if let Some(m) = svc.next().await {
                let _ = responder
                    .publish(m.reply.expect("reply"), "pong".into())
                    .await;
            }
        });
        let on_a = login(a, acc).await;
        let internal = a.internal_client(acc).expect("internal");
        eventually(|| internal.has_interest("pool.svc") && internal.has_interest("pool.q")).await;
        on_a.publish("pool.x", acc.into()).await.expect("pub");
        on_a.publish("pool.q", "q".into()).await.expect("pub");
        let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("in time")
            .expect("open");
        assert_eq!(&m.payload[..], acc.as_bytes());
        let m = tokio::time::timeout(Duration::from_secs(5), q.next())
            .await
            .expect("queue message in time")
            .expect("open");
        assert_eq!(&m.payload[..], b"q");
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            on_a.request("pool.svc", "ping".into()),
        )
        .await
        .expect("reply in time")
        .expect("reply");
        assert_eq!(&reply.payload[..], b"pong", "{acc}");
    }
}

#[tokio::test]
async fn accounts_cross_on_the_pool_connection_they_hash_to_or_their_own() {
    let a = start(node("PA", &[], 3)).await;
    let b = start(node("PB", &[a.cluster_port().expect("port")], 3)).await;
    // Three pooled connections, PINNED's and the system account's.
    eventually(|| a.num_route_connections() == 5 && b.num_route_connections() == 5).await;
    every_account_crosses(&a, &b).await;
    every_account_crosses(&b, &a).await;
    let mut keep = Vec::new();
    for acc in ACCOUNTS {
        let c = login(&b, acc).await;
        keep.push(c.subscribe("pool.kept").await.expect("sub"));
        c.flush().await.expect("flush");
        let internal = a.internal_client(acc).expect("internal");
        eventually(|| internal.has_interest("pool.kept")).await;
        keep_clients(c);
    }
    let routez = get_json(&a, "/routez?subs=1").await;
    let routes = routez["routes"].as_array().expect("routes");
    assert_eq!(routes.len(), 5, "{routez}");
    let list = |r: &serde_json::Value| -> Vec<String> {
        r["subscriptions_list"]
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|s| s.as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    for (acc, idx) in [("A", 0), ("C", 1), ("TWO", 2)] {
        let holder: Vec<_> = routes
            .iter()
            .filter(|r| list(r).iter().any(|s| s == &format!("{acc} pool.kept")))
            .collect();
        assert_eq!(holder.len(), 1, "{acc} on one connection: {routez}");
        assert_eq!(holder[0]["pool_idx"], idx, "{acc}: {routez}");
    }
    let pinned: Vec<_> = routes.iter().filter(|r| r["account"] == "PINNED").collect();
    assert_eq!(pinned.len(), 1, "{routez}");
    assert!(
        list(pinned[0]).iter().any(|s| s == "PINNED pool.kept"),
        "{routez}"
    );
    assert!(
        routes
            .iter()
            .filter(|r| r["account"] != "PINNED")
            .all(|r| !list(r).iter().any(|s| s.starts_with("PINNED "))),
        "PINNED only on its own route: {routez}"
    );
    for s in [a, b] {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn pool_size_minus_one_is_one_connection_and_a_pooling_peer_falls_back() {
    let a = start(node("NA", &[], -1)).await;
    let b = start(node("NB", &[a.cluster_port().expect("port")], -1)).await;
    eventually(|| a.num_route_connections() == 1 && b.num_route_connections() == 1).await;
    every_account_crosses(&b, &a).await;
    // A pooling node (3, PINNED dedicated) meets one that does not: one connection for all.
    let c = start(node("NC", &[a.cluster_port().expect("port")], 3)).await;
    eventually(|| c.num_routes() == 2 && a.num_routes() == 2).await;
    every_account_crosses(&a, &c).await;
    every_account_crosses(&c, &b).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.num_route_connections(), 2, "one per non-pooling peer");
    let routez = get_json(&c, "/routez").await;
    for r in routez["routes"].as_array().expect("routes") {
        assert!(
            r.get("pool_idx").is_none() && r.get("account").is_none(),
            "{r}"
        );
    }
    for s in [a, b, c] {
        s.shutdown().await;
    }
}

/// A hand-driven peer on `s`'s cluster port: sends CONNECT and an INFO with `fields`, returns
/// the reader (after `s`'s INFO) and the writer.
async fn fake_peer(
    s: &Server,
    fields: serde_json::Value,
) -> (
    BufReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
    serde_json::Value,
) {
    let port = s.cluster_port().expect("port");
    let stream = TcpStream::connect(("127.0.0.1", port)).await.expect("dial");
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = String::new();
    rd.read_line(&mut line).await.expect("info");
    let info: serde_json::Value =
        serde_json::from_str(line.trim_start_matches("INFO ").trim()).expect("json");
    let mut ours = serde_json::json!({
        "server_id": format!("NFAKE{}", fastrand::u32(..)),
        "server_name": "fake",
        "cluster": "p1",
        "headers": true,
        "port": 1,
    });
    for (k, v) in fields.as_object().expect("object") {
        ours[k] = v.clone();
    }
    let hello = format!(
        "CONNECT {{\"echo\":true,\"cluster\":\"p1\",\"headers\":true,\"name\":\"fake\"}}\r\nINFO {ours}\r\nPING\r\n"
    );
    wr.write_all(hello.as_bytes()).await.expect("write");
    (rd, wr, info)
}

/// Lines from `rd` until one starts with `until` (bounded in time).
async fn read_until(
    rd: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    until: &str,
) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout_at(deadline, rd.read_line(&mut line))
            .await
            .unwrap_or_else(|_| panic!("no {until:?} in {seen:?}"))
            .expect("read");
        if n == 0 {
            return seen;
        }
        let done = line.starts_with(until);
        seen.push(line.trim_end().to_string());
        if done {
            return seen;
        }
    }
}

#[tokio::test]
async fn the_wire_carries_each_account_on_its_pool_index_or_implied() {
    let a = start(node("WA", &[], 3)).await;
    let mut keep = Vec::new();
    for acc in ["A", "C", "TWO", "PINNED"] {
        let c = login(&a, acc).await;
        keep.push(c.subscribe(format!("wire.{acc}")).await.expect("sub"));
        c.flush().await.expect("flush");
        keep_clients(c);
    }
    // A peer's pool connection 1 gets the interest of C (and only C's).
    let (mut rd, mut wr, info) = fake_peer(
        &a,
        serde_json::json!({"route_pool_size": 3, "route_pool_idx": 1}),
    )
    .await;
    assert_eq!(info["route_pool_size"], 3, "{info}");
    let lines = read_until(&mut rd, "RS+ C ").await;
    assert!(
        !lines.iter().any(|l| l.starts_with("RS+ A ")
            || l.starts_with("RS+ TWO ")
            || l.starts_with("RS+ PINNED")),
        "{lines:?}"
    );
    // A routed message for C on that connection reaches C's subscriber.
    let c = login(&a, "C").await;
    let mut sub = c.subscribe("wire.in").await.expect("sub");
    c.flush().await.expect("flush");
    wr.write_all(b"RMSG C wire.in 2\r\nhi\r\nPING\r\n")
        .await
        .expect("write");
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(&m.payload[..], b"hi");

    // A dedicated route for PINNED: interest and messages without the account.
    let (mut rd2, mut wr2, _) = fake_peer(
        &a,
        serde_json::json!({"route_pool_size": 3, "route_account": "PINNED"}),
    )
    .await;
    let lines = read_until(&mut rd2, "RS+ wire.PINNED").await;
    assert!(!lines.iter().any(|l| l.starts_with("RS+ C ")), "{lines:?}");
    let p = login(&a, "PINNED").await;
    let mut psub = p.subscribe("wire.back").await.expect("sub");
    p.flush().await.expect("flush");
    read_until(&mut rd2, "RS+ wire.back").await;
    wr2.write_all(b"RS+ wire.out\r\nRMSG wire.back 3\r\nyes\r\nPING\r\n")
        .await
        .expect("write");
    let m = tokio::time::timeout(Duration::from_secs(5), psub.next())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(&m.payload[..], b"yes");
    let internal = a.internal_client("PINNED").expect("internal");
    eventually(|| internal.has_interest("wire.out")).await;
    p.publish("wire.out", "out".into()).await.expect("pub");
    p.flush().await.expect("flush");
    read_until(&mut rd2, "RMSG wire.out 3").await;
    drop((wr, wr2));
    a.shutdown().await;
}

#[tokio::test]
async fn a_peer_that_cannot_join_the_pool_gets_nats_server_errors() {
    let a = start(node("EA", &[], 3)).await;
    for (fields, err) in [
        (
            serde_json::json!({"route_pool_size": 2, "route_pool_idx": 1}),
            "-ERR 'Mismatch route pool size: 3 vs 2'",
        ),
        (
            serde_json::json!({"route_pool_size": 3, "route_pool_idx": 7}),
            "-ERR 'Invalid route pool index: 7 - pool size is 3'",
        ),
        (
            serde_json::json!({"route_pool_size": 3, "route_account": "NOT_PINNED"}),
            "-ERR 'No route for account \"NOT_PINNED\"'",
        ),
        (
            serde_json::json!({"route_account": "PINNED"}),
            "-ERR 'Not possible to have a dedicated route for account \"PINNED\" between those servers'",
        ),
    ] {
        let (mut rd, _wr, _) = fake_peer(&a, fields.clone()).await;
        let lines = read_until(&mut rd, "-ERR").await;
        assert_eq!(lines.last().map(String::as_str), Some(err), "{fields}: {lines:?}");
    }
    assert_eq!(a.num_routes(), 0);
    // The node still serves its clients.
    let c = login(&a, "A").await;
    c.flush().await.expect("still serving");
    a.shutdown().await;
}

#[tokio::test]
async fn a_peer_asking_for_s2_is_told_off_and_runs_uncompressed() {
    let a = start(node("CA", &[], 3)).await;
    // nats-server 2.10 in s2_fast: it offers s2 in its INFO and compresses only if the answer
    // allows it; Natrium answers `off`, so what follows is plain protocol.
    let (mut rd, mut wr, info) = fake_peer(
        &a,
        serde_json::json!({"route_pool_size": 3, "route_pool_idx": 0, "compression": "s2_fast"}),
    )
    .await;
    assert_eq!(info["compression"], "off", "{info}");
    read_until(&mut rd, "PONG").await;
    let c = login(&a, "A").await;
    let mut sub = c.subscribe("plain").await.expect("sub");
    c.flush().await.expect("flush");
    read_until(&mut rd, "RS+ A plain").await;
    wr.write_all(b"RMSG A plain 5\r\nclear\r\n")
        .await
        .expect("write");
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(&m.payload[..], b"clear");
    let routez = get_json(&a, "/routez").await;
    assert_eq!(routez["routes"][0]["compression"], "off", "{routez}");
    a.shutdown().await;
}

#[test]
fn cluster_pool_accounts_and_compression_keys_as_nats_server_reads_them() {
    let dir = tempfile::tempdir().expect("dir");
    let load = |body: &str| {
        let path = dir.path().join("c.conf");
        std::fs::write(&path, body).expect("write");
        Options::from_file(&path)
    };
    let (o, warnings) = load(
        "accounts { T {} }\ncluster { port: -1, pool_size: 5, accounts: [T], compression: accept }\n",
    )
    .expect("loads");
    assert!(warnings.is_empty(), "{warnings:?}");
    let c = o.cluster.expect("cluster");
    assert_eq!(
        (c.pool_size, c.accounts.clone()),
        (5, vec!["T".to_string()])
    );
    let (o, _) = load("cluster { port: -1, pool_size: 0 }\n").expect("loads");
    assert_eq!(o.cluster.expect("cluster").pool_size, 3, "0 is the default");
    let (_, warnings) =
        load("cluster { port: -1, compression: { mode: s2_best } }\n").expect("loads");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("s2_best is not supported")),
        "{warnings:?}"
    );
    let err = load("cluster { port: -1, compression: zstd }\n").expect_err("refused");
    assert!(
        err.to_string().contains("unsupported compression mode"),
        "{err}"
    );
    let err = load("cluster { port: -1, pool_size: -1, accounts: [T] }\n").expect_err("refused");
    assert!(
        err.to_string()
            .contains("pool_size cannot be negative if pinned accounts are specified"),
        "{err}"
    );
    let err = load("cluster { port: -1, accounts: [T, T] }\n").expect_err("refused");
    assert!(err.to_string().contains("duplicate account name"), "{err}");
}

/// Polls `f` every 20 ms for up to `secs` seconds.
async fn within(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} not reached in {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_flapping_peer_is_redialled_with_backoff_and_its_interest_follows_the_link() {
    let a = start(node("FA", &[], 3)).await;
    let proxy = Proxy::start(a.cluster_port().expect("port")).await;
    let b = start(node("FB", &[proxy.port], 3)).await;
    within(10, "pool up", || a.num_route_connections() == 5).await;
    let on_b = login(&b, "C").await;
    let mut remote_sub = on_b.subscribe("flap.remote").await.expect("sub");
    on_b.flush().await.expect("flush");
    let on_a = login(&a, "C").await;
    let mut local_sub = on_a.subscribe("flap.local").await.expect("sub");
    on_a.flush().await.expect("flush");
    let seen_on_a = a.internal_client("C").expect("internal");
    within(10, "interest", || seen_on_a.has_interest("flap.remote")).await;
    for round in 0..3u8 {
        proxy.cut();
        // The peer's interest goes as soon as its connections do.
        within(2, "interest withdrawn", || {
            !seen_on_a.has_interest("flap.remote")
        })
        .await;
        assert_eq!(a.num_routes(), 0, "round {round}");
        // A's own clients never notice.
        on_a.publish("flap.local", vec![round].into())
            .await
            .expect("pub");
        let m = tokio::time::timeout(Duration::from_secs(5), local_sub.next())
            .await
            .expect("local message in time")
            .expect("open");
        assert_eq!(&m.payload[..], &[round]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.restore();
        // Backoff is at most 8 s (plus jitter) between dials.
        within(20, "interest restored", || {
            seen_on_a.has_interest("flap.remote")
        })
        .await;
        on_a.publish("flap.remote", vec![round].into())
            .await
            .expect("pub");
        let m = tokio::time::timeout(Duration::from_secs(5), remote_sub.next())
            .await
            .expect("routed message in time")
            .expect("open");
        assert_eq!(&m.payload[..], &[round]);
    }
    // Cut for 6 s: a peer whose connections keep dying young is dialled less and less often
    // (1 s, 2 s, 4 s, then 8 s apart), not once a second; and it is still redialled after.
    proxy.cut();
    let before = proxy.dials();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let dials = proxy.dials() - before;
    assert!(dials <= 3, "{dials} dials in 6 s");
    proxy.restore();
    // Each lane may be one full backoff (8 s and jitter) away from its next dial, and the
    // lanes after the first dial once it is up: allow two backoffs and a loaded machine. The
    // peer's interest comes back and messages cross again.
    within(40, "interest back after the long cut", || {
        seen_on_a.has_interest("flap.remote") && a.num_routes() == 1
    })
    .await;
    on_a.publish("flap.remote", vec![9].into())
        .await
        .expect("pub");
    let m = tokio::time::timeout(Duration::from_secs(5), remote_sub.next())
        .await
        .expect("routed message in time after the long cut")
        .expect("open");
    assert_eq!(&m.payload[..], &[9]);
    proxy.task.abort();
    for s in [a, b] {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn peers_learned_through_gossip_get_the_whole_pool_too() {
    let a = start(node("GA", &[], 3)).await;
    let pa = a.cluster_port().expect("port");
    let b = start(node("GB", &[pa], 3)).await;
    let c = start(node("GC", &[pa], 3)).await;
    // B and C only know A: they find each other through it and fill the pool between them
    // (three pooled connections, PINNED's and the system account's, per peer).
    within(15, "full pools", || {
        [&a, &b, &c]
            .iter()
            .all(|s| s.num_routes() == 2 && s.num_route_connections() == 10)
    })
    .await;
    every_account_crosses(&b, &c).await;
    every_account_crosses(&c, &b).await;
    for s in [a, b, c] {
        s.shutdown().await;
    }
}

/// A client that subscribes and publishes in one write (a request with a new reply inbox) has
/// its interest reach a peer before the message: RS+ goes out ahead of the RMSG, as nats-server
/// orders them, so a responder on the peer can always answer into the inbox.
#[tokio::test]
async fn interest_reaches_a_peer_before_the_message_that_follows_it() {
    let a = start(node("WO", &[], 3)).await;
    let (mut rd, mut wr, _) = fake_peer(
        &a,
        serde_json::json!({"route_pool_size": 3, "route_pool_idx": 0}),
    )
    .await;
    wr.write_all(b"RS+ A svc\r\nPING\r\n").await.expect("write");
    read_until(&mut rd, "PONG").await;
    eventually(|| a.num_routes() == 1).await;
    let mut c = crate::common::Raw::connect(&a).await;
    c.send("CONNECT {\"verbose\":false,\"user\":\"a\",\"pass\":\"a\"}\r\nPING\r\n")
        .await;
    c.read_until("PONG\r\n").await;
    for i in 0..20 {
        c.send(&format!(
            "SUB _INBOX.order{i} {i}\r\nPUB svc _INBOX.order{i} 2\r\nhi\r\n"
        ))
        .await;
        let lines = read_until(&mut rd, "RMSG A svc").await;
        assert!(
            lines.iter().any(|l| l == &format!("RS+ A _INBOX.order{i}")),
            "request {i}: the inbox's RS+ did not come before the message: {lines:?}"
        );
    }
    a.shutdown().await;
}
