//! Leafnodes: a Natrium leaf joins a Natrium hub and nats-server hubs, nats-server leaves join a
//! Natrium hub; messages (with headers), request-reply, queue groups and interest withdrawal cross
//! both ways; a leaf bound to a tenant's account sees only that tenant's traffic; a leaf attached
//! to a node of a cluster reaches the whole cluster, with no duplicates and no echo; a loop of
//! leafnode connections is detected; a lost hub is redialled and the leaf's interest sent again.
//! The nats-server scenarios run against every version `common::goserver` finds (Debian's 2.9 and
//! those `NATRIUM_NATS_SERVER_MODERN` names; 2.10+ ask for s2 compression, which Natrium turns
//! down).

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use natrium::{Options, Server};

use crate::common::goserver::{nats_servers, GoBin, GoServer};
use crate::common::traffic::{drain, natrium, next, silent, until_flowing};
use crate::common::{eventually, get_json};

/// A port free now (bound, then released), for servers whose leafnode port must be known
/// before they start.
pub(crate) fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

pub(crate) async fn connect(url: &str) -> async_nats::Client {
    async_nats::connect(url).await.expect("client connects")
}

pub(crate) async fn connect_as(url: &str, user: &str, pass: &str) -> async_nats::Client {
    async_nats::ConnectOptions::with_user_and_password(user.into(), pass.into())
        .connect(url)
        .await
        .expect("client connects")
}

/// Messages, headers, request-reply and a queue group across one leafnode connection between
/// `a` and `b` (clients of the two sides, in the same account).
pub(crate) async fn exchange(a: &async_nats::Client, b: &async_nats::Client) {
    // a -> b with headers, b -> a.
    let mut at_b = b.subscribe("to.b.>").await.expect("sub");
    let mut at_a = a.subscribe("to.a.>").await.expect("sub");
    b.flush().await.expect("flush");
    a.flush().await.expect("flush");
    until_flowing(a, "to.b.probe", &mut at_b).await;
    until_flowing(b, "to.a.probe", &mut at_a).await;
    let mut h = async_nats::HeaderMap::new();
    h.insert("Origin", "side-a");
    a.publish_with_headers("to.b.x", h, "hello b".into())
        .await
        .expect("publish");
    let m = next(&mut at_b).await;
    assert_eq!(m.subject.as_str(), "to.b.x");
    assert_eq!(&m.payload[..], b"hello b");
    assert_eq!(
        m.headers
            .as_ref()
            .and_then(|h| h.get("Origin"))
            .map(|v| v.as_str()),
        Some("side-a")
    );
    b.publish("to.a.y", "hello a".into())
        .await
        .expect("publish");
    let m = next(&mut at_a).await;
    assert_eq!(
        (m.subject.as_str(), &m.payload[..]),
        ("to.a.y", &b"hello a"[..])
    );

    // Request-reply both ways.
    for (asker, responder, subject) in [(a, b, "svc.on.b"), (b, a, "svc.on.a")] {
        let mut svc = responder.subscribe(subject).await.expect("sub");
        responder.flush().await.expect("flush");
        let r2 = responder.clone();
        let task = tokio::spawn(async move {
            while let Some(m) = svc.next().await {
                if let Some(reply) = m.reply {
                    let mut body = b"re: ".to_vec();
                    body.extend_from_slice(&m.payload);
                    r2.publish(reply, body.into()).await.expect("reply");
                    r2.flush().await.expect("flush");
                }
            }
        });
        let mut answer = None;
        for _ in 0..100 {
            match tokio::time::timeout(
                Duration::from_millis(500),
                asker.request(subject.to_string(), "ping".into()),
            )
            .await
            {
                Ok(Ok(m)) => {
                    answer = Some(m);
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let m = answer.expect("an answer across the leafnode connection");
        assert_eq!(&m.payload[..], b"re: ping");
        task.abort();
    }

    // A queue group with a member on each side: every message delivered once.
    let mut qa = a.queue_subscribe("jobs", "w".into()).await.expect("qsub");
    let mut qb = b.queue_subscribe("jobs", "w".into()).await.expect("qsub");
    a.flush().await.expect("flush");
    b.flush().await.expect("flush");
    // Until each side's member is known on the other side: a probe group on the same subject
    // shape makes sure the link carried the queue interest.
    let mut qprobe = b
        .queue_subscribe("jobs.probe", "w".into())
        .await
        .expect("qsub");
    b.flush().await.expect("flush");
    until_flowing(a, "jobs.probe", &mut qprobe).await;
    let mut qprobe_a = a
        .queue_subscribe("jobs.probe2", "w".into())
        .await
        .expect("qsub");
    a.flush().await.expect("flush");
    until_flowing(b, "jobs.probe2", &mut qprobe_a).await;
    const N: usize = 60;
    for i in 0..N {
        let from = if i % 2 == 0 { a } else { b };
        from.publish("jobs", format!("{i}").into())
            .await
            .expect("publish");
    }
    a.flush().await.expect("flush");
    b.flush().await.expect("flush");
    let mut seen = std::collections::BTreeSet::new();
    let mut total = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while total < N && tokio::time::Instant::now() < deadline {
        tokio::select! {
            Some(m) = qa.next() => { total += 1; seen.insert(m.payload.to_vec()); }
            Some(m) = qb.next() => { total += 1; seen.insert(m.payload.to_vec()); }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    assert_eq!(seen.len(), N, "every queued message delivered");
    // And none twice.
    assert!(
        silent(&mut qa, 300).await && silent(&mut qb, 1).await,
        "a message delivered twice"
    );
    assert_eq!(total, N);
}

#[tokio::test]
async fn natrium_leaf_joins_natrium_hub() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = natrium(
        dir.path(),
        "hub",
        "http: \"127.0.0.1:-1\"\nleafnodes { host: 127.0.0.1, port: -1 }\n",
    )
    .await;
    let port = hub.leafnode_port().expect("leafnode port");
    let leaf = natrium(
        dir.path(),
        "leaf",
        &format!(
            "http: \"127.0.0.1:-1\"\nleafnodes {{ reconnect: \"100ms\", remotes [ {{ url: \"nats-leaf://127.0.0.1:{port}\" }} ] }}\n"
        ),
    )
    .await;
    eventually(|| hub.num_leafnodes() == 1 && leaf.num_leafnodes() == 1).await;
    let a = connect(&leaf.client_url()).await;
    let b = connect(&hub.client_url()).await;
    exchange(&a, &b).await;

    // A message published on the leaf with a local subscriber is not echoed back to it.
    let mut echo = a.subscribe("echo").await.expect("sub");
    let mut echo_hub = b.subscribe("echo").await.expect("sub");
    b.flush().await.expect("flush");
    until_flowing(&a, "echo", &mut echo_hub).await;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), echo.next()).await {}
    a.publish("echo", "once".into()).await.expect("publish");
    assert_eq!(&next(&mut echo).await.payload[..], b"once");
    assert_eq!(&next(&mut echo_hub).await.payload[..], b"once");
    assert!(
        silent(&mut echo, 300).await,
        "echoed back over the leafnode connection"
    );

    // Monitoring on both sides.
    let lz = get_json(&hub, "/leafz?subs=1").await;
    assert_eq!(lz["leafnodes"], 1, "{lz}");
    let l = &lz["leafs"][0];
    assert_eq!(l["account"], "$G");
    assert_eq!(l["name"], "leaf");
    assert_eq!(l["is_spoke"], false);
    assert!(l["in_msgs"].as_u64().unwrap_or(0) > 0, "{l}");
    assert!(l["out_msgs"].as_u64().unwrap_or(0) > 0, "{l}");
    let subs = l["subscriptions_list"].as_array().expect("list");
    assert!(subs.iter().any(|s| s == "echo"), "{subs:?}");
    let lz = get_json(&leaf, "/leafz").await;
    assert_eq!(lz["leafs"][0]["is_spoke"], true, "{lz}");
    assert_eq!(lz["leafs"][0]["name"], "hub");
    let varz = get_json(&hub, "/varz").await;
    assert_eq!(varz["leafnodes"], 1);
    assert_eq!(varz["leaf"]["port"], port);
    let varz = get_json(&leaf, "/varz").await;
    assert_eq!(varz["leaf"]["remotes"][0]["local_account"], "$G");
    let metrics = reqwest::get(format!("{}/metrics", hub.monitor_url().expect("http")))
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("natrium_leafnodes 1"), "{metrics}");
    assert!(
        metrics.contains("natrium_leafnode_in_msgs_total{remote=\"leaf\",account=\"$G\"}"),
        "{metrics}"
    );

    // The leaf's interest goes when its client does.
    let ic = hub.internal_client("$G").expect("internal");
    let _gone = a.subscribe("gone.>").await.expect("sub");
    a.flush().await.expect("flush");
    eventually(|| ic.has_interest("gone.x")).await;
    a.drain().await.expect("drain");
    eventually(|| !ic.has_interest("gone.x")).await;
    leaf.shutdown().await;
    eventually(|| hub.num_leafnodes() == 0).await;
    hub.shutdown().await;
}

#[tokio::test]
async fn leaf_sees_only_its_tenants_traffic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = natrium(
        dir.path(),
        "hub",
        "accounts {\n  A { users [ {user: a, password: pa}, {user: edge_a, password: ea} ] }\n  B { users [ {user: b, password: pb} ] }\n}\nleafnodes { host: 127.0.0.1, port: -1 }\n",
    )
    .await;
    let port = hub.leafnode_port().expect("port");
    // The leaf logs in as a user of account A: its traffic is bound to A on the hub.
    let leaf = natrium(
        dir.path(),
        "edge",
        &format!(
            "leafnodes {{ remotes [ {{ url: \"nats-leaf://edge_a:ea@127.0.0.1:{port}\" }} ] }}\n"
        ),
    )
    .await;
    eventually(|| hub.num_leafnodes() == 1).await;
    let on_edge = connect(&leaf.client_url()).await;
    let hub_a = connect_as(&hub.client_url(), "a", "pa").await;
    let hub_b = connect_as(&hub.client_url(), "b", "pb").await;

    let mut edge_sub = on_edge.subscribe("orders.>").await.expect("sub");
    on_edge.flush().await.expect("flush");
    let ia = hub.internal_client("A").expect("A");
    let ib = hub.internal_client("B").expect("B");
    eventually(|| ia.has_interest("orders.new")).await;
    assert!(
        !ib.has_interest("orders.new"),
        "the leaf's interest leaked into account B"
    );
    // Account B publishes first: had it leaked, it would arrive before A's.
    hub_b
        .publish("orders.new", "from B".into())
        .await
        .expect("publish");
    hub_b.flush().await.expect("flush");
    hub_a
        .publish("orders.new", "from A".into())
        .await
        .expect("publish");
    hub_a.flush().await.expect("flush");
    assert_eq!(&next(&mut edge_sub).await.payload[..], b"from A");
    assert!(
        silent(&mut edge_sub, 300).await,
        "account B's message reached the leaf"
    );

    // The other way: the edge's messages land in A only.
    let mut in_a = hub_a.subscribe("telemetry").await.expect("sub");
    let mut in_b = hub_b.subscribe("telemetry").await.expect("sub");
    hub_a.flush().await.expect("flush");
    hub_b.flush().await.expect("flush");
    until_flowing(&on_edge, "telemetry", &mut in_a).await;
    on_edge
        .publish("telemetry", "t1".into())
        .await
        .expect("publish");
    assert_eq!(&next(&mut in_a).await.payload[..], b"t1");
    assert!(
        silent(&mut in_b, 300).await,
        "the leaf's message reached account B"
    );
    let lz = get_json_opt(&hub).await;
    if let Some(lz) = lz {
        assert_eq!(lz["leafs"][0]["account"], "A");
    }
    leaf.shutdown().await;
    hub.shutdown().await;
}

async fn get_json_opt(s: &Server) -> Option<serde_json::Value> {
    if s.monitor_url().is_some() {
        Some(get_json(s, "/leafz").await)
    } else {
        None
    }
}

#[tokio::test]
async fn leafnode_authorization_binds_the_account_and_refuses_strangers() {
    let dir = tempfile::tempdir().expect("tempdir");
    // site2's password is a bcrypt hash, as nats-server allows.
    let hash = bcrypt::hash("pw2", 4).expect("hash");
    let hub = natrium(
        dir.path(),
        "hub",
        &format!("accounts {{ T {{ users [ {{user: t, password: pt}} ] }} }}\nleafnodes {{ host: 127.0.0.1, port: -1, authorization {{ users [ {{user: site1, password: s3cret, account: T}}, {{user: site2, password: \"{hash}\", account: T}} ] }} }}\n"),
    )
    .await;
    let port = hub.leafnode_port().expect("port");
    let bad = natrium(
        dir.path(),
        "bad",
        &format!(
            "leafnodes {{ remotes [ {{ url: \"nats-leaf://site1:wrong@127.0.0.1:{port}\" }} ] }}\n"
        ),
    )
    .await;
    let good = natrium(
        dir.path(),
        "good",
        &format!("leafnodes {{ remotes [ {{ url: \"nats-leaf://site1:s3cret@127.0.0.1:{port}\" }} ] }}\n"),
    )
    .await;
    let hashed = natrium(
        dir.path(),
        "hashed",
        &format!(
            "leafnodes {{ remotes [ {{ url: \"nats-leaf://site2:pw2@127.0.0.1:{port}\" }} ] }}\n"
        ),
    )
    .await;
    eventually(|| good.num_leafnodes() == 1 && hashed.num_leafnodes() == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bad.num_leafnodes(), 0, "wrong password admitted");
    assert_eq!(hub.num_leafnodes(), 2);
    hashed.shutdown().await;
    let on_good = connect(&good.client_url()).await;
    let mut s = on_good.subscribe("t.x").await.expect("sub");
    on_good.flush().await.expect("flush");
    let it = hub.internal_client("T").expect("T");
    eventually(|| it.has_interest("t.x")).await;
    let hub_t = connect_as(&hub.client_url(), "t", "pt").await;
    hub_t.publish("t.x", "hi".into()).await.expect("publish");
    assert_eq!(&next(&mut s).await.payload[..], b"hi");
    bad.shutdown().await;
    good.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn leaf_attached_to_a_cluster_node_reaches_the_cluster_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n1 = natrium(
        dir.path(),
        "n1",
        "cluster { name: c1, host: 127.0.0.1, port: -1 }\nleafnodes { host: 127.0.0.1, port: -1 }\n",
    )
    .await;
    let route = n1.cluster_port().expect("cluster port");
    let n2 = natrium(
        dir.path(),
        "n2",
        &format!("cluster {{ name: c1, host: 127.0.0.1, port: -1, routes [ \"nats://127.0.0.1:{route}\" ] }}\n"),
    )
    .await;
    eventually(|| n1.num_routes() == 1 && n2.num_routes() == 1).await;
    let port = n1.leafnode_port().expect("leaf port");
    let leaf = natrium(
        dir.path(),
        "edge",
        &format!("leafnodes {{ remotes [ {{ url: \"nats-leaf://127.0.0.1:{port}\" }} ] }}\n"),
    )
    .await;
    eventually(|| n1.num_leafnodes() == 1).await;
    let on_leaf = connect(&leaf.client_url()).await;
    let on_n2 = connect(&n2.client_url()).await;
    let on_n1 = connect(&n1.client_url()).await;
    // Leaf -> hub cluster's other node, and back; everything once.
    exchange(&on_leaf, &on_n2).await;
    // A message from n2 reaches the leaf's subscriber and n1's, once each.
    let mut at_leaf = on_leaf.subscribe("fan").await.expect("sub");
    let mut at_n1 = on_n1.subscribe("fan").await.expect("sub");
    on_leaf.flush().await.expect("flush");
    on_n1.flush().await.expect("flush");
    until_flowing(&on_n2, "fan", &mut at_leaf).await;
    until_flowing(&on_n2, "fan", &mut at_n1).await;
    drain(&mut at_leaf).await;
    on_n2.publish("fan", "x".into()).await.expect("publish");
    assert_eq!(&next(&mut at_leaf).await.payload[..], b"x");
    assert_eq!(&next(&mut at_n1).await.payload[..], b"x");
    assert!(silent(&mut at_leaf, 300).await, "duplicate at the leaf");
    assert!(silent(&mut at_n1, 1).await, "duplicate at n1");
    // A message from the leaf reaches n1 and n2 once, and never comes back to the leaf.
    let mut at_n2 = on_n2.subscribe("up").await.expect("sub");
    let mut at_n1 = on_n1.subscribe("up").await.expect("sub");
    let mut back = on_leaf.subscribe("up").await.expect("sub");
    on_n2.flush().await.expect("flush");
    on_n1.flush().await.expect("flush");
    on_leaf.flush().await.expect("flush");
    until_flowing(&on_leaf, "up", &mut at_n2).await;
    until_flowing(&on_leaf, "up", &mut at_n1).await;
    drain(&mut back).await;
    drain(&mut at_n2).await;
    on_leaf.publish("up", "y".into()).await.expect("publish");
    assert_eq!(&next(&mut at_n2).await.payload[..], b"y");
    assert_eq!(&next(&mut at_n1).await.payload[..], b"y");
    assert_eq!(&next(&mut back).await.payload[..], b"y");
    assert!(
        silent(&mut back, 300).await,
        "the message came back to the leaf"
    );
    assert!(
        silent(&mut at_n2, 1).await && silent(&mut at_n1, 1).await,
        "duplicate"
    );
    leaf.shutdown().await;
    n2.shutdown().await;
    n1.shutdown().await;
}

#[tokio::test]
async fn a_loop_of_leafnode_connections_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pa, pb) = (free_port(), free_port());
    let conf = |own: u16, other: u16| {
        format!(
            "leafnodes {{ host: 127.0.0.1, port: {own}, reconnect: \"100ms\", remotes [ {{ url: \"nats-leaf://127.0.0.1:{other}\" }} ] }}\n"
        )
    };
    let a = natrium(dir.path(), "a", &conf(pa, pb)).await;
    let b = natrium(dir.path(), "b", &conf(pb, pa)).await;
    // Two connections make a loop (A -> B -> A): each server's loop-detection subject comes
    // back to it over the other connection, which it then refuses; the leaf that dialled it
    // waits 30 s before dialling again. Without detection each server would keep two.
    let mut cut = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if a.num_leafnodes() < 2 && b.num_leafnodes() < 2 {
            cut = true;
            break;
        }
    }
    assert!(
        cut,
        "the loop was not cut: a={} b={}",
        a.num_leafnodes(),
        b.num_leafnodes()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        a.num_leafnodes() < 2 && b.num_leafnodes() < 2,
        "the loop came back: a={} b={}",
        a.num_leafnodes(),
        b.num_leafnodes()
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn leaf_redials_a_restarted_hub_and_sends_its_interest_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let hub_conf = format!("leafnodes {{ host: 127.0.0.1, port: {port} }}\n");
    let hub = natrium(dir.path(), "hub", &hub_conf).await;
    let leaf = natrium(
        dir.path(),
        "leaf",
        &format!("leafnodes {{ reconnect: \"100ms\", remotes [ {{ url: \"nats-leaf://127.0.0.1:{port}\" }} ] }}\n"),
    )
    .await;
    eventually(|| leaf.num_leafnodes() == 1).await;
    let on_leaf = connect(&leaf.client_url()).await;
    let mut sub = on_leaf.subscribe("kept.>").await.expect("sub");
    on_leaf.flush().await.expect("flush");
    let ic = hub.internal_client("$G").expect("internal");
    eventually(|| ic.has_interest("kept.a")).await;
    hub.shutdown().await;
    eventually(|| leaf.num_leafnodes() == 0).await;
    // Messages published on the leaf meanwhile still reach its own subscribers.
    on_leaf
        .publish("kept.local", "l".into())
        .await
        .expect("publish");
    assert_eq!(&next(&mut sub).await.payload[..], b"l");
    let hub = natrium(dir.path(), "hub", &hub_conf).await;
    let ic = hub.internal_client("$G").expect("internal");
    eventually(|| ic.has_interest("kept.a")).await;
    let on_hub = connect(&hub.client_url()).await;
    on_hub
        .publish("kept.a", "again".into())
        .await
        .expect("publish");
    assert_eq!(&next(&mut sub).await.payload[..], b"again");
    leaf.shutdown().await;
    hub.shutdown().await;
}

#[test]
fn leafnode_config_is_read_as_nats_server_reads_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("l.conf");
    std::fs::write(
        &path,
        "leafnodes {\n  listen: \"127.0.0.1:7422\"\n  advertise: \"edge.example:7422\"\n  no_advertise: true\n  reconnect: 2\n  min_version: \"2.8.0\"\n  authorization { user: u, password: p, account: A, timeout: 3 }\n  remotes [\n    { url: \"nats-leaf://hub1:7422\", account: A, deny_imports: [\"secret.>\"], deny_exports: \"private.*\" }\n    { urls: [\"nats://h2\", \"h3:7000\"], credentials: \"/etc/site.creds\", hub: true }\n  ]\n}\naccounts { A {} }\n",
    )
    .expect("write");
    let (o, warnings) = Options::from_file(&path).expect("parses");
    let l = o.leafnodes.expect("leafnodes");
    assert_eq!((l.host.as_str(), l.port), ("127.0.0.1", Some(7422)));
    assert_eq!(l.advertise.as_deref(), Some("edge.example:7422"));
    assert!(l.no_advertise);
    assert_eq!(l.reconnect, Duration::from_secs(2));
    assert_eq!(l.auth.user.as_deref(), Some("u"));
    assert_eq!(l.auth.account.as_deref(), Some("A"));
    assert_eq!(l.auth.timeout, Duration::from_secs(3));
    assert_eq!(l.remotes.len(), 2);
    assert_eq!(l.remotes[0].account.as_deref(), Some("A"));
    assert_eq!(l.remotes[0].deny_imports, vec!["secret.>".to_string()]);
    assert_eq!(l.remotes[0].deny_exports, vec!["private.*".to_string()]);
    assert_eq!(l.remotes[1].urls.len(), 2);
    assert_eq!(l.remotes[1].urls[0].port, 7422, "the default leafnode port");
    assert_eq!(l.remotes[1].urls[1].port, 7000);
    assert!(l.remotes[1].hub);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("min_version") && w.contains("not supported")),
        "{warnings:?}"
    );
    // TLS: the listener needs a certificate; a tls:// remote needs a tls block.
    std::fs::write(&path, "leafnodes { port: 7422, tls { ca_file: a } }\n").expect("write");
    let e = Options::from_file(&path).expect_err("refused").to_string();
    assert!(e.contains("cert_file and key_file are required"), "{e}");
    std::fs::write(
        &path,
        "leafnodes { remotes [ { url: \"tls://hub:7422\" } ] }\n",
    )
    .expect("write");
    let e = Options::from_file(&path).expect_err("refused").to_string();
    assert!(e.contains("needs a tls block"), "{e}");
    std::fs::write(
        &path,
        "leafnodes { remotes [ { url: \"tls://hub:7422\", tls { ca_file: \"/ca.pem\", timeout: 3 } } ] }\n",
    )
    .expect("write");
    let (o, _) = Options::from_file(&path).expect("parses");
    let t = o.leafnodes.expect("leafnodes").remotes[0]
        .tls
        .clone()
        .expect("tls");
    assert_eq!(t.ca_file.as_deref(), Some(Path::new("/ca.pem")));
    assert_eq!(t.timeout, Duration::from_secs(3));
    // WebSocket remotes: ws_compression and ws_no_masking; no mix of ws and other URLs.
    std::fs::write(
        &path,
        "leafnodes { remotes [ { urls: [\"ws://hub\", \"ws://h2:8080\"], ws_compression: true, ws_no_masking: true } ] }\n",
    )
    .expect("write");
    let (o, _) = Options::from_file(&path).expect("parses");
    let r = &o.leafnodes.expect("leafnodes").remotes[0];
    assert!(r.ws && r.ws_compression && r.ws_no_masking);
    assert_eq!((r.urls[0].port, r.urls[1].port), (80, 8080));
    std::fs::write(
        &path,
        "leafnodes { remotes [ { urls: [\"ws://hub:80\", \"nats-leaf://h2\"] } ] }\n",
    )
    .expect("write");
    let e = Options::from_file(&path).expect_err("refused").to_string();
    assert!(e.contains("mix of websocket and non-websocket"), "{e}");
    std::fs::write(&path, "leafnodes { remotes [ { url: \"wss://hub\" } ] }\n").expect("write");
    let e = Options::from_file(&path).expect_err("refused").to_string();
    assert!(e.contains("needs a tls block"), "{e}");
    std::fs::write(&path, "leafnodes { remotes [ { account: A } ] }\n").expect("write");
    let e = Options::from_file(&path).expect_err("refused").to_string();
    assert!(e.contains("needs a url"), "{e}");
}

#[tokio::test]
async fn leafnode_tls_after_the_plaintext_info() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = crate::common::pki::Pki::new();
    let (cert, key) = pki.server_cert();
    let ca = pki.ca_file();
    let hub = natrium(
        dir.path(),
        "hub",
        &format!(
            "leafnodes {{ host: 127.0.0.1, port: -1, tls {{ cert_file: {cert:?}, key_file: {key:?} }} }}\n"
        ),
    )
    .await;
    let port = hub.leafnode_port().expect("port");
    // Without TLS the leaf cannot join.
    let plain = natrium(
        dir.path(),
        "plain",
        &format!("leafnodes {{ remotes [ {{ url: \"nats-leaf://127.0.0.1:{port}\" }} ] }}\n"),
    )
    .await;
    let leaf = natrium(
        dir.path(),
        "leaf",
        &format!(
            "leafnodes {{ remotes [ {{ url: \"tls://127.0.0.1:{port}\", tls {{ ca_file: {ca:?} }} }} ] }}\n"
        ),
    )
    .await;
    eventually(|| leaf.num_leafnodes() == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        plain.num_leafnodes(),
        0,
        "a plaintext leaf joined a TLS hub"
    );
    assert_eq!(hub.num_leafnodes(), 1);
    let a = connect(&leaf.client_url()).await;
    let b = connect(&hub.client_url()).await;
    let mut at_b = b.subscribe("secure").await.expect("sub");
    b.flush().await.expect("flush");
    until_flowing(&a, "secure", &mut at_b).await;
    a.publish("secure", "over tls".into())
        .await
        .expect("publish");
    assert_eq!(&next(&mut at_b).await.payload[..], b"over tls");
    plain.shutdown().await;
    leaf.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn deny_imports_and_exports_filter_the_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = natrium(
        dir.path(),
        "hub",
        "leafnodes { host: 127.0.0.1, port: -1 }\n",
    )
    .await;
    let port = hub.leafnode_port().expect("port");
    let leaf = natrium(
        dir.path(),
        "leaf",
        &format!(
            "leafnodes {{ remotes [ {{ url: \"nats-leaf://127.0.0.1:{port}\", deny_imports: [\"secret.>\"], deny_exports: [\"private.>\"] }} ] }}\n"
        ),
    )
    .await;
    eventually(|| hub.num_leafnodes() == 1).await;
    let on_leaf = connect(&leaf.client_url()).await;
    let on_hub = connect(&hub.client_url()).await;
    // Imports: the leaf's interest in secret.> is not sent; open.> is.
    let mut secret = on_leaf.subscribe("secret.>").await.expect("sub");
    let mut open = on_leaf.subscribe("open.>").await.expect("sub");
    on_leaf.flush().await.expect("flush");
    let ic = hub.internal_client("$G").expect("internal");
    eventually(|| ic.has_interest("open.x")).await;
    assert!(!ic.has_interest("secret.x"), "denied interest crossed");
    on_hub
        .publish("secret.x", "s".into())
        .await
        .expect("publish");
    on_hub.publish("open.x", "o".into()).await.expect("publish");
    assert_eq!(&next(&mut open).await.payload[..], b"o");
    assert!(silent(&mut secret, 300).await, "a denied import arrived");
    // Exports: the leaf's private.> messages stay on the leaf.
    let mut private = on_hub.subscribe("private.>").await.expect("sub");
    let mut public = on_hub.subscribe("public.>").await.expect("sub");
    on_hub.flush().await.expect("flush");
    let il = leaf.internal_client("$G").expect("internal");
    eventually(|| il.has_interest("public.x") && il.has_interest("private.x")).await;
    on_leaf
        .publish("private.x", "p".into())
        .await
        .expect("publish");
    on_leaf
        .publish("public.x", "q".into())
        .await
        .expect("publish");
    assert_eq!(&next(&mut public).await.payload[..], b"q");
    assert!(
        silent(&mut private, 300).await,
        "a denied export left the leaf"
    );
    leaf.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn an_edge_keeps_its_own_streams_reached_through_its_domain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = natrium(
        dir.path(),
        "hub",
        &format!(
            "jetstream {{ store_dir: {:?}, domain: hub }}\nleafnodes {{ host: 127.0.0.1, port: -1 }}\n",
            dir.path().join("hub-js")
        ),
    )
    .await;
    let port = hub.leafnode_port().expect("port");
    let edge = natrium(
        dir.path(),
        "edge",
        &format!(
            "jetstream {{ store_dir: {:?}, domain: edge }}\nleafnodes {{ remotes [ {{ url: \"nats-leaf://127.0.0.1:{port}\" }} ] }}\n",
            dir.path().join("edge-js")
        ),
    )
    .await;
    eventually(|| hub.num_leafnodes() == 1).await;
    let on_hub = connect(&hub.client_url()).await;
    let on_edge = connect(&edge.client_url()).await;
    // The edge's own API stays local: a stream created there is the edge's.
    let local = async_nats::jetstream::new(on_edge.clone());
    local
        .create_stream(async_nats::jetstream::stream::Config {
            name: "EDGE".into(),
            subjects: vec!["edge.>".into()],
            ..Default::default()
        })
        .await
        .expect("edge stream");
    // From the hub, through the edge's domain.
    let ih = hub.internal_client("$G").expect("internal");
    eventually(|| ih.has_interest("$JS.edge.API.STREAM.INFO.EDGE")).await;
    let remote = async_nats::jetstream::with_domain(on_hub.clone(), "edge");
    let mut info = remote
        .get_stream("EDGE")
        .await
        .expect("edge stream from the hub");
    assert_eq!(info.info().await.expect("info").config.name, "EDGE");
    // The hub's own streams are not the edge's, and the other way round.
    let hub_js = async_nats::jetstream::new(on_hub.clone());
    assert!(
        hub_js.get_stream("EDGE").await.is_err(),
        "the hub has no EDGE stream"
    );
    // A publish on the hub lands in the edge's stream, acknowledged across the link.
    eventually(|| ih.has_interest("edge.x")).await;
    let ack = hub_js
        .publish("edge.x", "from the hub".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    assert_eq!(ack.stream, "EDGE");
    let mut s = local.get_stream("EDGE").await.expect("stream");
    assert_eq!(s.info().await.expect("info").state.messages, 1);
    // The edge reaches the hub's JetStream by the hub's domain.
    hub_js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "HUB".into(),
            subjects: vec!["hub.>".into()],
            ..Default::default()
        })
        .await
        .expect("hub stream");
    let ie = edge.internal_client("$G").expect("internal");
    eventually(|| ie.has_interest("$JS.hub.API.STREAM.INFO.HUB")).await;
    let to_hub = async_nats::jetstream::with_domain(on_edge.clone(), "hub");
    to_hub
        .get_stream("HUB")
        .await
        .expect("hub stream from the edge");
    assert!(
        local.get_stream("HUB").await.is_err(),
        "the edge has no HUB stream"
    );
    edge.shutdown().await;
    hub.shutdown().await;
}

// ---- With nats-server: Debian's 2.9 and the modern ones (common::goserver) ----

/// What a nats-server 2.10+ side adds to its leafnode block or remote: it asks for s2
/// compression, which Natrium (no s2) must turn down, leaving the link uncompressed.
pub(crate) fn go_compression(bin: &GoBin) -> &'static str {
    if bin.at_least(2, 10) {
        ", compression: s2_fast"
    } else {
        ""
    }
}

/// What `go` received over its one leafnode connection, as it lists it in `/leafz?subs=1`
/// (`subject`, or `subject queue weight`).
pub(crate) async fn go_leaf_subs(go: &GoServer) -> Vec<String> {
    let lz = go.monitor("/leafz?subs=1").await;
    lz["leafs"][0]["subscriptions_list"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until nats-server's view of its one leafnode connection satisfies `f`.
pub(crate) async fn go_leaf_subs_until(go: &GoServer, what: &str, f: impl Fn(&[String]) -> bool) {
    for _ in 0..200 {
        if f(&go_leaf_subs(go).await) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "{what}: nats-server's /leafz shows {:?}",
        go_leaf_subs(go).await
    );
}

#[tokio::test]
async fn natrium_leaf_joins_a_nats_server_hub_and_survives_its_restart() {
    for bin in nats_servers("the leafnode interop test") {
        eprintln!("nats-server {}", bin.version);
        natrium_leaf_on_go_hub(&bin).await;
    }
}

async fn natrium_leaf_on_go_hub(bin: &GoBin) {
    let dir = tempfile::tempdir().expect("tempdir");
    let leaf_port = free_port();
    let hub_conf = format!(
        "http: \"127.0.0.1:-1\"\naccounts {{\n  A {{ users [ {{user: a, password: pa}} ] }}\n  B {{ users [ {{user: b, password: pb}} ] }}\n}}\nleafnodes {{ listen: \"127.0.0.1:{leaf_port}\"{}, authorization {{ users [ {{user: edge, password: e, account: A}} ] }} }}\n",
        go_compression(bin)
    );
    let go = GoServer::start(bin, dir.path(), "gohub", &hub_conf);
    let leaf = natrium(
        dir.path(),
        "rsleaf",
        &format!("leafnodes {{ reconnect: \"100ms\", remotes [ {{ url: \"nats-leaf://edge:e@127.0.0.1:{leaf_port}\" }} ] }}\n"),
    )
    .await;
    eventually(|| leaf.num_leafnodes() == 1).await;
    let lz = go.monitor("/leafz").await;
    assert_eq!(lz["leafnodes"], 1, "{} {lz}", bin.version);
    assert_eq!(lz["leafs"][0]["account"], "A", "{lz}");
    if bin.at_least(2, 10) {
        // Not s2_fast, as the hub asked: Natrium has no s2.
        assert_eq!(lz["leafs"][0]["compression"], "not supported", "{lz}");
    }
    let on_go = connect_as(&go.client_url(), "a", "pa").await;
    let on_leaf = connect(&leaf.client_url()).await;
    exchange(&on_leaf, &on_go).await;

    // The leaf's interest as the hub sees it: a queue group with its weight, then gone when
    // the leaf's clients leave.
    let q1 = on_leaf
        .queue_subscribe("weighted", "wq".into())
        .await
        .expect("qsub");
    let q2 = on_leaf
        .queue_subscribe("weighted", "wq".into())
        .await
        .expect("qsub");
    let plain = on_leaf.subscribe("withdrawn").await.expect("sub");
    on_leaf.flush().await.expect("flush");
    go_leaf_subs_until(&go, "the leaf's interest", |s| {
        s.iter().any(|x| x == "withdrawn") && s.iter().any(|x| x == "weighted")
    })
    .await;
    drop((q1, q2, plain));
    on_leaf.flush().await.expect("flush");
    go_leaf_subs_until(&go, "the leaf's interest withdrawn", |s| {
        !s.iter().any(|x| x == "withdrawn" || x == "weighted")
    })
    .await;

    // Tenant isolation on nats-server's side: account B never reaches the leaf.
    let on_go_b = connect_as(&go.client_url(), "b", "pb").await;
    let mut edge = on_leaf.subscribe("iso").await.expect("sub");
    on_leaf.flush().await.expect("flush");
    until_flowing(&on_go, "iso", &mut edge).await;
    on_go_b.publish("iso", "B".into()).await.expect("publish");
    on_go_b.flush().await.expect("flush");
    on_go.publish("iso", "A".into()).await.expect("publish");
    assert_eq!(&next(&mut edge).await.payload[..], b"A");
    assert!(silent(&mut edge, 300).await, "account B reached the leaf");

    // The hub goes away and comes back on the same port: the leaf redials and its
    // subscription is sent again.
    let mut kept = on_leaf.subscribe("kept").await.expect("sub");
    on_leaf.flush().await.expect("flush");
    until_flowing(&on_go, "kept", &mut kept).await;
    drop(on_go);
    drop(on_go_b);
    drop(go);
    eventually(|| leaf.num_leafnodes() == 0).await;
    let go = GoServer::start(bin, dir.path(), "gohub", &hub_conf);
    eventually(|| leaf.num_leafnodes() == 1).await;
    let on_go = connect_as(&go.client_url(), "a", "pa").await;
    until_flowing(&on_go, "kept", &mut kept).await;
    on_go
        .publish("kept", "after".into())
        .await
        .expect("publish");
    assert_eq!(&next(&mut kept).await.payload[..], b"after");
    leaf.shutdown().await;
}

#[tokio::test]
async fn leafnode_tls_with_nats_server_on_either_side() {
    for bin in nats_servers("the leafnode interop test") {
        eprintln!("nats-server {}", bin.version);
        leafnode_tls_with(&bin).await;
    }
}

async fn leafnode_tls_with(bin: &GoBin) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = crate::common::pki::Pki::new();
    let (cert, key) = pki.server_cert();
    let ca = pki.ca_file();
    // nats-server hub with TLS, Natrium leaf.
    let go_leaf_port = free_port();
    let go_hub = GoServer::start(
        bin,
        dir.path(),
        "gotlshub",
        &format!(
            "leafnodes {{ listen: \"127.0.0.1:{go_leaf_port}\"{}, tls {{ cert_file: {cert:?}, key_file: {key:?} }} }}\n",
            go_compression(bin)
        ),
    );
    let rs_leaf = natrium(
        dir.path(),
        "rstlsleaf",
        &format!(
            "leafnodes {{ reconnect: \"100ms\", remotes [ {{ url: \"tls://127.0.0.1:{go_leaf_port}\", tls {{ ca_file: {ca:?} }} }} ] }}\n"
        ),
    )
    .await;
    eventually(|| rs_leaf.num_leafnodes() == 1).await;
    let on_go = connect(&go_hub.client_url()).await;
    let on_leaf = connect(&rs_leaf.client_url()).await;
    let mut at_go = on_go.subscribe("t1").await.expect("sub");
    on_go.flush().await.expect("flush");
    until_flowing(&on_leaf, "t1", &mut at_go).await;
    let mut at_leaf = on_leaf.subscribe("t2").await.expect("sub");
    on_leaf.flush().await.expect("flush");
    until_flowing(&on_go, "t2", &mut at_leaf).await;
    rs_leaf.shutdown().await;
    drop(go_hub);

    // Natrium hub with TLS, nats-server leaf.
    let rs_hub = natrium(
        dir.path(),
        "rstlshub",
        &format!(
            "leafnodes {{ host: 127.0.0.1, port: -1, tls {{ cert_file: {cert:?}, key_file: {key:?} }} }}\n"
        ),
    )
    .await;
    let port = rs_hub.leafnode_port().expect("port");
    let go_leaf = GoServer::start(
        bin,
        dir.path(),
        "gotlsleaf",
        &format!(
            "leafnodes {{ reconnect: 1, remotes [ {{ url: \"tls://127.0.0.1:{port}\"{}, tls {{ ca_file: {ca:?} }} }} ] }}\n",
            go_compression(bin)
        ),
    );
    eventually(|| rs_hub.num_leafnodes() == 1).await;
    let on_hub = connect(&rs_hub.client_url()).await;
    let on_go = connect(&go_leaf.client_url()).await;
    let mut at_go = on_go.subscribe("t3").await.expect("sub");
    on_go.flush().await.expect("flush");
    until_flowing(&on_hub, "t3", &mut at_go).await;
    let mut at_hub = on_hub.subscribe("t4").await.expect("sub");
    on_hub.flush().await.expect("flush");
    until_flowing(&on_go, "t4", &mut at_hub).await;
    drop(go_leaf);
    rs_hub.shutdown().await;
}

#[tokio::test]
async fn nats_server_leaf_joins_a_natrium_hub() {
    for bin in nats_servers("the leafnode interop test") {
        eprintln!("nats-server {}", bin.version);
        go_leaf_on_natrium_hub(&bin).await;
    }
}

async fn go_leaf_on_natrium_hub(bin: &GoBin) {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = natrium(
        dir.path(),
        "rshub",
        "http: \"127.0.0.1:-1\"\naccounts {\n  A { users [ {user: a, password: pa}, {user: edge, password: e} ] }\n  B { users [ {user: b, password: pb} ] }\n}\nleafnodes { host: 127.0.0.1, port: -1 }\n",
    )
    .await;
    let port = hub.leafnode_port().expect("port");
    let go = GoServer::start(
        bin,
        dir.path(),
        "goleaf",
        &format!(
            "http: \"127.0.0.1:-1\"\nleafnodes {{ reconnect: 1, remotes [ {{ url: \"nats-leaf://edge:e@127.0.0.1:{port}\"{} }} ] }}\n",
            go_compression(bin)
        ),
    );
    eventually(|| hub.num_leafnodes() == 1).await;
    let lz = get_json(&hub, "/leafz").await;
    assert_eq!(lz["leafs"][0]["account"], "A", "{lz}");
    assert_eq!(lz["leafs"][0]["name"], "goleaf", "{lz}");
    let on_go = connect(&go.client_url()).await;
    let on_hub = connect_as(&hub.client_url(), "a", "pa").await;
    exchange(&on_go, &on_hub).await;

    // The hub's interest as the nats-server leaf sees it, and withdrawn.
    let q1 = on_hub
        .queue_subscribe("weighted", "wq".into())
        .await
        .expect("qsub");
    let q2 = on_hub
        .queue_subscribe("weighted", "wq".into())
        .await
        .expect("qsub");
    let plain = on_hub.subscribe("withdrawn").await.expect("sub");
    on_hub.flush().await.expect("flush");
    go_leaf_subs_until(&go, "the hub's interest", |s| {
        s.iter().any(|x| x == "withdrawn") && s.iter().any(|x| x == "weighted")
    })
    .await;
    drop((q1, q2, plain));
    on_hub.flush().await.expect("flush");
    go_leaf_subs_until(&go, "the hub's interest withdrawn", |s| {
        !s.iter().any(|x| x == "withdrawn" || x == "weighted")
    })
    .await;
    // And the leaf's, as the hub sees it.
    let ic = hub.internal_client("A").expect("A");
    let gone = on_go.subscribe("gone.>").await.expect("sub");
    on_go.flush().await.expect("flush");
    eventually(|| ic.has_interest("gone.x")).await;
    drop(gone);
    on_go.flush().await.expect("flush");
    eventually(|| !ic.has_interest("gone.x")).await;

    // Account B's traffic stays on the hub.
    let on_hub_b = connect_as(&hub.client_url(), "b", "pb").await;
    let mut edge = on_go.subscribe("iso").await.expect("sub");
    on_go.flush().await.expect("flush");
    until_flowing(&on_hub, "iso", &mut edge).await;
    on_hub_b.publish("iso", "B".into()).await.expect("publish");
    on_hub_b.flush().await.expect("flush");
    on_hub.publish("iso", "A".into()).await.expect("publish");
    assert_eq!(&next(&mut edge).await.payload[..], b"A");
    assert!(silent(&mut edge, 300).await, "account B reached the leaf");
    drop(go);
    eventually(|| hub.num_leafnodes() == 0).await;
    hub.shutdown().await;
}

#[tokio::test]
async fn a_leaf_cluster_on_a_mixed_hub_gets_each_message_once() {
    for bin in nats_servers("the leaf-cluster interop test") {
        eprintln!("nats-server {}", bin.version);
        leaf_cluster_on_mixed_hub(&bin).await;
    }
}

/// A hub cluster of Natrium and nats-server, an edge cluster of two nats-server nodes with one
/// leafnode connection to each hub node: a message published in the edge reaches the other
/// edge node once (over the edge's own route, not again through the hub), and each hub node
/// once. Needs the origin cluster on routed messages (`LMSG`) in both directions.
async fn leaf_cluster_on_mixed_hub(bin: &GoBin) {
    let dir = tempfile::tempdir().expect("tempdir");
    let MixedHub {
        rs,
        gh,
        e1,
        e2,
        nodes,
    } = mixed_hub_with_leaf_cluster(bin, dir.path(), false).await;
    let mut subs = Vec::new();
    for c in &nodes {
        subs.push(c.subscribe("t.>").await.expect("sub"));
        c.flush().await.expect("flush");
    }
    // Until probes from either edge node reach every subscriber.
    for (from, edge) in nodes[..2].iter().enumerate() {
        let mut reached = [false; 4];
        for i in 0..200 {
            if reached.iter().all(|r| *r) {
                break;
            }
            edge.publish(format!("t.probe.{i}"), "p".into())
                .await
                .expect("publish");
            edge.flush().await.expect("flush");
            tokio::time::sleep(Duration::from_millis(25)).await;
            for (k, s) in subs.iter_mut().enumerate() {
                while let Ok(Some(_)) =
                    tokio::time::timeout(Duration::from_millis(1), s.next()).await
                {
                    reached[k] = true;
                }
            }
        }
        assert!(
            reached.iter().all(|r| *r),
            "from edge node {from}: {reached:?}"
        );
    }
    for s in subs.iter_mut() {
        drain(s).await;
    }
    nodes[0]
        .publish("t.x", "from e1".into())
        .await
        .expect("publish");
    nodes[1]
        .publish("t.y", "from e2".into())
        .await
        .expect("publish");
    nodes[0].flush().await.expect("flush");
    nodes[1].flush().await.expect("flush");
    for (k, s) in subs.iter_mut().enumerate() {
        let mut got = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), s.next()).await {
            got.push(m.subject.to_string());
        }
        got.sort();
        assert_eq!(got, ["t.x", "t.y"], "{} node {k}", bin.version);
    }
    drop((e1, e2, gh));
    rs.shutdown().await;
}

/// A hub cluster (`hub`) of Natrium `rs` routed to nats-server `gh`, and an edge cluster
/// (`edge`) of nats-server `e1` (leaf of `gh`) and `e2` (routed to `e1`, leaf of `rs`).
pub(crate) struct MixedHub {
    pub(crate) rs: Server,
    pub(crate) gh: GoServer,
    pub(crate) e1: GoServer,
    pub(crate) e2: GoServer,
    /// One client on each of `e1`, `e2`, `rs` and `gh`, in that order.
    pub(crate) nodes: [async_nats::Client; 4],
}

/// Starts a [`MixedHub`] in `dir` once `rs` has its route and its leaf; `monitored` gives `gh`
/// and `e1` an HTTP monitoring port.
pub(crate) async fn mixed_hub_with_leaf_cluster(
    bin: &GoBin,
    dir: &Path,
    monitored: bool,
) -> MixedHub {
    let http = if monitored {
        "http: \"127.0.0.1:-1\"\n"
    } else {
        ""
    };
    let rs = natrium(
        dir,
        "rshub",
        "cluster { name: hub, listen: \"127.0.0.1:-1\" }\nleafnodes { host: 127.0.0.1, port: -1 }\n",
    )
    .await;
    let gh_leaf = free_port();
    let gh = GoServer::start(
        bin,
        dir,
        "gohub",
        &format!(
            "{http}cluster {{ name: hub, listen: \"127.0.0.1:-1\", routes: [\"nats-route://127.0.0.1:{}\"] }}\nleafnodes {{ listen: \"127.0.0.1:{gh_leaf}\" }}\n",
            rs.cluster_port().expect("cluster port")
        ),
    );
    eventually(|| rs.num_routes() == 1).await;
    let e1 = GoServer::start(
        bin,
        dir,
        "edge1",
        &format!(
            "{http}cluster {{ name: edge, listen: \"127.0.0.1:-1\" }}\nleafnodes {{ reconnect: 1, remotes [ {{ url: \"nats-leaf://127.0.0.1:{gh_leaf}\" }} ] }}\n",
        ),
    );
    let e2 = GoServer::start(
        bin,
        dir,
        "edge2",
        &format!(
            "cluster {{ name: edge, listen: \"127.0.0.1:-1\", routes: [\"nats-route://127.0.0.1:{}\"] }}\nleafnodes {{ reconnect: 1, remotes [ {{ url: \"nats-leaf://127.0.0.1:{}\" }} ] }}\n",
            e1.cluster_port.expect("cluster port"),
            rs.leafnode_port().expect("leafnode port")
        ),
    );
    eventually(|| rs.num_leafnodes() == 1).await;
    let nodes = [
        connect(&e1.client_url()).await,
        connect(&e2.client_url()).await,
        connect(&rs.client_url()).await,
        connect(&gh.client_url()).await,
    ];
    MixedHub {
        rs,
        gh,
        e1,
        e2,
        nodes,
    }
}
