//! Clusters of Natrium and nats-server, against every nats-server version `common::goserver`
//! finds (Debian's 2.9; 2.10+ from `NATRIUM_NATS_SERVER_MODERN`, which pool routes, pin accounts
//! and ask for s2 compression): messages with headers, queue groups (each message once),
//! request-reply and interest withdrawal cross every pair of nodes; clients learn every server;
//! routes re-form after a node of either kind restarts; gossip introduces nodes to each other.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use natrium::Server;

use crate::common::eventually;
use crate::common::goserver::{nats_servers, GoBin, GoServer};
use crate::common::traffic::{natrium, next, request, responder, silent, until_flowing};

/// A `cluster` block in cluster `c1` on a random port of 127.0.0.1, dialling `routes`, with
/// `extra` keys.
fn cluster_conf(routes: &[u16], extra: &str) -> String {
    let urls: Vec<String> = routes
        .iter()
        .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
        .collect();
    format!(
        "cluster {{ name: c1, listen: \"127.0.0.1:-1\", routes: [{}]{extra} }}\n",
        urls.join(", ")
    )
}

/// What a nats-server 2.10+ node adds to its cluster block: it asks for s2 compression, which
/// Natrium (no s2) turns down, leaving the routes uncompressed.
fn go_extra(bin: &GoBin) -> &'static str {
    if bin.at_least(2, 10) {
        ", compression: s2_fast"
    } else {
        ""
    }
}

/// nats-server node `name` of cluster `c1` dialling `routes`, with monitoring.
fn go_node(bin: &GoBin, dir: &std::path::Path, name: &str, routes: &[u16]) -> GoServer {
    let conf = format!(
        "http: \"127.0.0.1:-1\"\n{}",
        cluster_conf(routes, go_extra(bin))
    );
    GoServer::start(bin, dir, name, &conf)
}

async fn rs_node(dir: &std::path::Path, name: &str, routes: &[u16]) -> Server {
    natrium(dir, name, &cluster_conf(routes, "")).await
}

/// The servers nats-server has routes to, by server id (from `/routez`).
async fn go_peers(go: &GoServer) -> HashSet<String> {
    let rz = go.monitor("/routez").await;
    rz["routes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["remote_id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until nats-server routes to exactly `peers`.
async fn go_peers_are(go: &GoServer, peers: &[&Server]) {
    let want: HashSet<String> = peers.iter().map(|s| s.server_id().to_string()).collect();
    for _ in 0..400 {
        if go_peers(go).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "nats-server routes to {:?}, not {want:?}; its log:\n{}",
        go_peers(go).await,
        go.log_text()
    );
}

/// The subjects nats-server was told of over its routes (`/routez?subs=1`).
async fn go_route_subs(go: &GoServer) -> HashSet<String> {
    let rz = go.monitor("/routez?subs=1").await;
    let mut all = HashSet::new();
    for r in rz["routes"].as_array().into_iter().flatten() {
        for s in r["subscriptions_list"].as_array().into_iter().flatten() {
            if let Some(s) = s.as_str() {
                all.insert(s.to_string());
            }
        }
    }
    all
}

/// Messages with headers, queue groups, request-reply and interest withdrawal between every
/// pair of `clients` (one per node; `rs` the Natrium nodes among them, by index).
async fn traffic(clients: &[&async_nats::Client], rs: &[(usize, &Server)], round: &str) {
    let n = clients.len();
    // Every node to every other, with headers.
    for to in 0..n {
        let mut sub = clients[to]
            .subscribe(format!("{round}.to.{to}.>"))
            .await
            .expect("sub");
        clients[to].flush().await.expect("flush");
        for from in (0..n).filter(|f| *f != to) {
            let subject = format!("{round}.to.{to}.from.{from}");
            until_flowing(clients[from], &subject, &mut sub).await;
            let mut h = async_nats::HeaderMap::new();
            h.insert("Origin", format!("node-{from}").as_str());
            clients[from]
                .publish_with_headers(subject.clone(), h, "hello".into())
                .await
                .expect("publish");
            let m = next(&mut sub).await;
            assert_eq!(m.subject.as_str(), subject, "{round}");
            assert_eq!(&m.payload[..], b"hello");
            assert_eq!(
                m.headers
                    .as_ref()
                    .and_then(|h| h.get("Origin"))
                    .map(|v| v.to_string()),
                Some(format!("node-{from}")),
                "{round}: {from} -> {to}"
            );
        }
    }

    // A queue group with a member on every node: each job once, whichever node it came from.
    let jobs = format!("{round}.jobs");
    let mut members = Vec::new();
    for c in clients {
        members.push(
            c.queue_subscribe(jobs.clone(), "w".into())
                .await
                .expect("qsub"),
        );
        c.flush().await.expect("flush");
    }
    // Every node knows every other's member: a probe group of the same shape answers from each.
    for (i, c) in clients.iter().enumerate() {
        let mut probe = c
            .queue_subscribe(format!("{jobs}.probe.{i}"), "w".into())
            .await
            .expect("qsub");
        c.flush().await.expect("flush");
        for (_, from) in clients.iter().enumerate().filter(|(j, _)| *j != i) {
            until_flowing(from, &format!("{jobs}.probe.{i}"), &mut probe).await;
        }
    }
    for (_, s) in rs {
        let ic = s.internal_client("$G").expect("internal");
        eventually(|| ic.has_interest(&jobs)).await;
    }
    const JOBS: usize = 90;
    for i in 0..JOBS {
        clients[i % n]
            .publish(jobs.clone(), format!("{i}").into())
            .await
            .expect("publish");
    }
    for c in clients {
        c.flush().await.expect("flush");
    }
    let mut seen = HashSet::new();
    let mut per = vec![0usize; n];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < JOBS && tokio::time::Instant::now() < deadline {
        for (i, q) in members.iter_mut().enumerate() {
            while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(20), q.next()).await
            {
                assert!(
                    seen.insert(m.payload.clone()),
                    "{round}: twice: {:?}",
                    m.payload
                );
                per[i] += 1;
            }
        }
    }
    assert_eq!(seen.len(), JOBS, "{round}: {per:?}");
    for q in members.iter_mut() {
        assert!(silent(q, 100).await, "{round}: a job delivered twice");
    }
    assert!(
        per.iter().all(|c| *c > 0),
        "{round}: every node's member: {per:?}"
    );

    // Request-reply from every node to a responder on every other.
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        tasks.push(responder(c, &format!("{round}.svc.{i}")).await);
    }
    for (i, asker) in clients.iter().enumerate() {
        for j in (0..n).filter(|j| *j != i) {
            let m = request(asker, &format!("{round}.svc.{j}"), &format!("from {i}")).await;
            assert_eq!(
                m.payload.as_ref(),
                format!("re: from {i}").as_bytes(),
                "{round}"
            );
        }
    }
    for t in tasks {
        t.abort();
    }

    // Interest withdrawal: a subscription on each node stops being known on the others.
    for (i, c) in clients.iter().enumerate() {
        let subject = format!("{round}.gone.{i}");
        let mut sub = c.subscribe(subject.clone()).await.expect("sub");
        c.flush().await.expect("flush");
        let other = clients[(i + 1) % n];
        until_flowing(other, &subject, &mut sub).await;
        for (_, s) in rs.iter().filter(|(k, _)| *k != i) {
            let ic = s.internal_client("$G").expect("internal");
            eventually(|| ic.has_interest(&subject)).await;
        }
        sub.unsubscribe().await.expect("unsub");
        c.flush().await.expect("flush");
        for (_, s) in rs.iter().filter(|(k, _)| *k != i) {
            let ic = s.internal_client("$G").expect("internal");
            eventually(|| !ic.has_interest(&subject)).await;
        }
    }
}

#[tokio::test]
async fn natrium_and_nats_server_form_one_cluster() {
    for bin in nats_servers("the mixed-cluster test") {
        eprintln!("nats-server {}", bin.version);
        two_nodes(&bin).await;
    }
}

/// One Natrium node, one nats-server node dialling it.
async fn two_nodes(bin: &GoBin) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rs = rs_node(dir.path(), "rs-node", &[]).await;
    let go = go_node(
        bin,
        dir.path(),
        "go-node",
        &[rs.cluster_port().expect("port")],
    );
    eventually(|| rs.num_routes() == 1).await;
    go_peers_are(&go, &[&rs]).await;
    if bin.at_least(2, 10) {
        // A pool of 3 and the system account's own connection, as nats-server 2.10 keeps them;
        // compression negotiated off.
        eventually(|| rs.num_route_connections() == 4).await;
        let rz = go.monitor("/routez").await;
        for r in rz["routes"].as_array().expect("routes") {
            assert_eq!(r["compression"], "off", "{} {rz}", bin.version);
        }
    }
    let on_go = async_nats::connect(go.client_url())
        .await
        .expect("connect to nats-server");
    let on_rs = async_nats::connect(rs.client_url())
        .await
        .expect("connect to natrium");
    traffic(&[&on_rs, &on_go], &[(0, &rs)], "two").await;

    // What nats-server was told of Natrium's interest.
    let kept = on_rs.subscribe("kept.>").await.expect("sub");
    on_rs.flush().await.expect("flush");
    for _ in 0..200 {
        if go_route_subs(&go)
            .await
            .iter()
            .any(|s| s.contains("kept.>"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        go_route_subs(&go)
            .await
            .iter()
            .any(|s| s.contains("kept.>")),
        "{:?}",
        go_route_subs(&go).await
    );
    drop(kept);
    on_rs.flush().await.expect("flush");
    for _ in 0..200 {
        if !go_route_subs(&go)
            .await
            .iter()
            .any(|s| s.contains("kept.>"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        !go_route_subs(&go)
            .await
            .iter()
            .any(|s| s.contains("kept.>")),
        "withdrawn interest still known to nats-server"
    );

    // Clients of either server learn both.
    let urls = on_rs.server_info().connect_urls;
    assert!(
        urls.iter()
            .any(|u| u.ends_with(&format!(":{}", go.client_port))),
        "{urls:?}"
    );
    drop(go);
    eventually(|| rs.num_routes() == 0).await;
    rs.shutdown().await;
}

#[tokio::test]
async fn three_nodes_with_nats_server_restart_and_regossip() {
    for bin in nats_servers("the three-node mixed-cluster test") {
        eprintln!("nats-server {}", bin.version);
        three_nodes(&bin).await;
    }
}

/// Two Natrium nodes and a nats-server node: the nats-server node and the second Natrium node
/// dial the first, gossip introduces them to each other; then the nats-server node restarts,
/// and the second Natrium node restarts dialling only the nats-server node.
async fn three_nodes(bin: &GoBin) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rs1 = rs_node(dir.path(), "rs1", &[]).await;
    let seed = rs1.cluster_port().expect("port");
    let rs2 = rs_node(dir.path(), "rs2", &[seed]).await;
    let go = go_node(bin, dir.path(), "go", &[seed]);
    eventually(|| rs1.num_routes() == 2 && rs2.num_routes() == 2).await;
    go_peers_are(&go, &[&rs1, &rs2]).await;
    let c1 = async_nats::connect(rs1.client_url()).await.expect("rs1");
    let c2 = async_nats::connect(rs2.client_url()).await.expect("rs2");
    let cg = async_nats::connect(go.client_url()).await.expect("go");
    traffic(&[&c1, &c2, &cg], &[(0, &rs1), (1, &rs2)], "first").await;
    // Clients of a Natrium node learn the nats-server node too.
    let urls = c2.server_info().connect_urls;
    assert!(
        urls.iter()
            .any(|u| u.ends_with(&format!(":{}", go.client_port))),
        "{urls:?}"
    );

    // The nats-server node restarts (new ports): routes re-form, the interest of clients that
    // stayed is sent to it again.
    let mut stayed = c1.subscribe("stayed").await.expect("sub");
    c1.flush().await.expect("flush");
    drop(cg);
    drop(go);
    eventually(|| rs1.num_routes() == 1 && rs2.num_routes() == 1).await;
    let go = go_node(bin, dir.path(), "go", &[seed]);
    eventually(|| rs1.num_routes() == 2 && rs2.num_routes() == 2).await;
    go_peers_are(&go, &[&rs1, &rs2]).await;
    let cg = async_nats::connect(go.client_url()).await.expect("go");
    until_flowing(&cg, "stayed", &mut stayed).await;
    traffic(&[&c1, &c2, &cg], &[(0, &rs1), (1, &rs2)], "second").await;

    // The second Natrium node restarts dialling the nats-server node only: it learns the first
    // through nats-server's gossip.
    drop(c2);
    rs2.shutdown().await;
    eventually(|| rs1.num_routes() == 1).await;
    go_peers_are(&go, &[&rs1]).await;
    let rs2 = rs_node(dir.path(), "rs2", &[go.cluster_port.expect("cluster port")]).await;
    eventually(|| rs1.num_routes() == 2 && rs2.num_routes() == 2).await;
    go_peers_are(&go, &[&rs1, &rs2]).await;
    let c2 = async_nats::connect(rs2.client_url()).await.expect("rs2");
    traffic(&[&c1, &c2, &cg], &[(0, &rs1), (1, &rs2)], "third").await;
    drop(go);
    rs2.shutdown().await;
    rs1.shutdown().await;
}

#[tokio::test]
async fn one_natrium_node_between_two_nats_servers() {
    for bin in nats_servers("the mixed-cluster gossip test") {
        eprintln!("nats-server {}", bin.version);
        natrium_in_the_middle(&bin).await;
    }
}

/// Both nats-server nodes dial the Natrium node only: they meet through the INFO Natrium
/// forwards about each, and the three carry traffic as one cluster.
async fn natrium_in_the_middle(bin: &GoBin) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rs = rs_node(dir.path(), "rs", &[]).await;
    let seed = rs.cluster_port().expect("port");
    let g1 = go_node(bin, dir.path(), "g1", &[seed]);
    let g2 = go_node(bin, dir.path(), "g2", &[seed]);
    eventually(|| rs.num_routes() == 2).await;
    let mut ids = HashSet::new();
    for _ in 0..400 {
        ids = go_peers(&g1).await;
        if ids.len() == 2 && go_peers(&g2).await.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        ids.len(),
        2,
        "g1 routes to {ids:?}; log:\n{}",
        g1.log_text()
    );
    assert_eq!(go_peers(&g2).await.len(), 2, "log:\n{}", g2.log_text());
    let c = async_nats::connect(rs.client_url()).await.expect("rs");
    let c1 = async_nats::connect(g1.client_url()).await.expect("g1");
    let c2 = async_nats::connect(g2.client_url()).await.expect("g2");
    traffic(&[&c, &c1, &c2], &[(0, &rs)], "middle").await;
    drop((g1, g2));
    eventually(|| rs.num_routes() == 0).await;
    rs.shutdown().await;
}

#[tokio::test]
async fn per_account_routes_with_nats_server() {
    for bin in nats_servers("the per-account route test") {
        if !bin.at_least(2, 10) {
            continue;
        }
        eprintln!("nats-server {}", bin.version);
        pinned_account(&bin).await;
    }
}

/// Account A pinned to its own route on both sides, account B pooled: each account's traffic
/// crosses, and only within its account.
async fn pinned_account(bin: &GoBin) {
    let dir = tempfile::tempdir().expect("tempdir");
    let accounts = "accounts {\n  A { users [ {user: a, password: pa} ] }\n  B { users [ {user: b, password: pb} ] }\n}\n";
    let rs = natrium(
        dir.path(),
        "rs",
        &format!("{accounts}{}", cluster_conf(&[], ", accounts: [A]")),
    )
    .await;
    let seed = rs.cluster_port().expect("port");
    let go = GoServer::start(
        bin,
        dir.path(),
        "go",
        &format!(
            "http: \"127.0.0.1:-1\"\n{accounts}{}",
            cluster_conf(&[seed], &format!("{}, accounts: [A]", go_extra(bin)))
        ),
    );
    eventually(|| rs.num_routes() == 1).await;
    // A's dedicated connection as nats-server reports it.
    let mut pinned = false;
    for _ in 0..400 {
        let rz = go.monitor("/routez").await;
        pinned = rz["routes"]
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["account"] == "A"));
        if pinned {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(pinned, "no route for account A; log:\n{}", go.log_text());
    let connect = |url: String, u: &'static str, p: &'static str| async move {
        async_nats::ConnectOptions::with_user_and_password(u.into(), p.into())
            .connect(url)
            .await
            .expect("connect")
    };
    let rs_a = connect(rs.client_url(), "a", "pa").await;
    let rs_b = connect(rs.client_url(), "b", "pb").await;
    let go_a = connect(go.client_url(), "a", "pa").await;
    let go_b = connect(go.client_url(), "b", "pb").await;
    for (acc, on_rs, on_go, other_rs) in [("A", &rs_a, &go_a, &rs_b), ("B", &rs_b, &go_b, &rs_a)] {
        let mut at_rs = on_rs.subscribe("x.>").await.expect("sub");
        let mut leak = other_rs.subscribe("x.>").await.expect("sub");
        on_rs.flush().await.expect("flush");
        other_rs.flush().await.expect("flush");
        until_flowing(on_go, "x.probe", &mut at_rs).await;
        let mut at_go = on_go.subscribe("y.>").await.expect("sub");
        on_go.flush().await.expect("flush");
        until_flowing(on_rs, "y.probe", &mut at_go).await;
        on_go.publish("x.1", acc.into()).await.expect("publish");
        assert_eq!(next(&mut at_rs).await.payload.as_ref(), acc.as_bytes());
        on_rs.publish("y.1", acc.into()).await.expect("publish");
        assert_eq!(next(&mut at_go).await.payload.as_ref(), acc.as_bytes());
        assert!(
            silent(&mut leak, 200).await,
            "{acc}'s messages reached the other account"
        );
        let t = responder(on_rs, "svc").await;
        let m = request(on_go, "svc", acc).await;
        assert_eq!(m.payload.as_ref(), format!("re: {acc}").as_bytes());
        t.abort();
    }
    drop(go);
    eventually(|| rs.num_routes() == 0).await;
    rs.shutdown().await;
}
