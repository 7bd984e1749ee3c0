//! A leaf cluster attached to a mixed hub (Natrium + nats-server): the hub tells its peers of a
//! leaf's interest with the leaf's cluster as origin (`LS+ origin account subject [queue
//! weight]`), so no hub node hands that interest back to another leaf of the same cluster, and it
//! keeps a peer's `RS+` and `LS+` for the same subject and queue group apart. A queue group with
//! members on both sides gets each message once, before and after members leave. The same
//! per-origin path over an account's dedicated route between Natrium hub nodes.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use natrium::Server;

use crate::common::goserver::{nats_servers, GoBin};
use crate::common::traffic::drain;
use crate::leaf::{go_leaf_subs, go_leaf_subs_until, mixed_hub_with_leaf_cluster, MixedHub};

#[tokio::test]
async fn a_queue_group_across_a_leaf_cluster_and_a_mixed_hub_gets_each_message_once() {
    // 2.9 takes `LS+` with an origin but sends `LS-` without it (no `lnocu`).
    for bin in nats_servers("the leaf-origin interop test") {
        eprintln!("nats-server {}", bin.version);
        queue_group_on_mixed_hub(&bin).await;
    }
}

/// Whether a `/leafz` subscription entry (`subject` or `subject queue`) is for `subject`.
fn names(entry: &str, subject: &str) -> bool {
    entry.split(' ').next() == Some(subject)
}

/// Publishes `n` numbered messages on `jobs` from each of `from` and collects what the members
/// receive within a bounded time: message -> how many times it arrived.
async fn spread(
    from: &[async_nats::Client],
    members: &mut [async_nats::Subscriber],
    n: usize,
    tag: &str,
) -> BTreeMap<String, usize> {
    for (k, c) in from.iter().enumerate() {
        for i in 0..n {
            c.publish("jobs", format!("{tag}-{k}-{i}").into())
                .await
                .expect("publish");
        }
        c.flush().await.expect("flush");
    }
    let mut got = BTreeMap::new();
    let want = from.len() * n;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut total = 0;
    while tokio::time::Instant::now() < deadline {
        let taken = take(members, &mut got).await;
        total += taken;
        // Everything arrived and nothing more for a while: done.
        if total >= want && taken == 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            take(members, &mut got).await;
            break;
        }
    }
    got
}

/// Adds what `members` hold now (each until 5 ms pass without a message) to `got`; how many.
async fn take(members: &mut [async_nats::Subscriber], got: &mut BTreeMap<String, usize>) -> usize {
    let mut n = 0;
    for m in members.iter_mut() {
        while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(5), m.next()).await {
            *got.entry(String::from_utf8_lossy(&msg.payload).into_owned())
                .or_insert(0) += 1;
            n += 1;
        }
    }
    n
}

fn assert_once(got: &BTreeMap<String, usize>, nodes: usize, n: usize, what: &str) {
    let twice: Vec<_> = got.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        twice.is_empty(),
        "{what}: delivered more than once: {twice:?}"
    );
    assert_eq!(
        got.len(),
        nodes * n,
        "{what}: every message delivered ({got:?})"
    );
}

/// Hub: Natrium `rs` and nats-server `gh` routed; edge cluster: nats-server `e1` (leaf of `gh`)
/// and `e2` (leaf of `rs`).
async fn queue_group_on_mixed_hub(bin: &GoBin) {
    let dir = tempfile::tempdir().expect("tempdir");
    let MixedHub {
        rs,
        gh,
        e1,
        e2,
        nodes,
    } = mixed_hub_with_leaf_cluster(bin, dir.path(), true).await;

    // 1. Only e2 (a leaf of the Natrium node) has a member of `jobs`, and the Natrium node a
    // member of `ctrl`. The nats-server hub node tells its leaf e1 of `ctrl` (the hub's own)
    // but not of `jobs`: that interest came from the edge cluster itself (origin `edge`).
    let only_e2 = nodes[1]
        .queue_subscribe("jobs", "w".into())
        .await
        .expect("qsub");
    let mut ctrl = nodes[2]
        .queue_subscribe("ctrl", "w".into())
        .await
        .expect("qsub");
    nodes[1].flush().await.expect("flush");
    nodes[2].flush().await.expect("flush");
    go_leaf_subs_until(
        &e1,
        &format!("{}: the hub's own queue interest reaches e1", bin.version),
        |seen| seen.iter().any(|s| names(s, "ctrl")),
    )
    .await;
    // The hub node learned of e2's member over its route (it delivers there), yet never told
    // e1 of it.
    let mut routed = serde_json::Value::Null;
    for _ in 0..200 {
        routed = gh.monitor("/routez?subs=1").await;
        if routed["routes"].to_string().contains("jobs") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        routed["routes"].to_string().contains("jobs"),
        "{}: the nats-server hub node knows of e2's member: {routed}",
        bin.version
    );
    assert!(
        !go_leaf_subs(&e1).await.iter().any(|s| names(s, "jobs")),
        "{}: e2's interest came back to its own cluster through the hub: {:?}",
        bin.version,
        go_leaf_subs(&e1).await
    );
    drop(ctrl.unsubscribe().await);

    // 2. Members everywhere: each message once, from every node.
    let mut members = vec![
        nodes[0]
            .queue_subscribe("jobs", "w".into())
            .await
            .expect("qsub"),
        nodes[2]
            .queue_subscribe("jobs", "w".into())
            .await
            .expect("qsub"),
        nodes[3]
            .queue_subscribe("jobs", "w".into())
            .await
            .expect("qsub"),
    ];
    for c in &nodes {
        c.flush().await.expect("flush");
    }
    members.push(only_e2);
    // Until every member is known everywhere (routes and leaf links carried the interest).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = spread(&nodes, &mut members, 40, "all").await;
    assert_once(
        &got,
        nodes.len(),
        40,
        &format!("{} members everywhere", bin.version),
    );

    // 3. The edge members and the Natrium one leave: the nats-server hub node's own member
    // stays, and the Natrium node still routes to it (its `RS+` is not withdrawn by the `LS-`
    // of e1's member for the same subject and group).
    let only_e2 = members.pop().expect("e2's member");
    drop(only_e2);
    let gh_member = members.pop().expect("gh's member");
    for m in members.drain(..) {
        drop(m);
    }
    for c in &nodes {
        c.flush().await.expect("flush");
    }
    let mut members = vec![gh_member];
    tokio::time::sleep(Duration::from_millis(800)).await;
    drain(&mut members[0]).await;
    let got = spread(&nodes, &mut members, 20, "hub").await;
    assert_once(
        &got,
        nodes.len(),
        20,
        &format!("{} only the nats-server hub's member", bin.version),
    );

    drop((e1, e2, gh));
    rs.shutdown().await;
}

/// The per-origin path on a dedicated route: a Natrium hub cluster whose account `A` has its
/// own route (`cluster { accounts: [A] }`, the account left out of the protocol), and a Natrium
/// leaf cluster `edge` whose two nodes are leaves of the two hub nodes, bound to `A`. A leaf's
/// interest crosses that route as `LS+ edge subject ...`, a message from a leaf as `LMSG edge
/// ...`: each message reaches each plain subscriber once and each queue group once, never
/// coming back to the leaf cluster it came from through the hub.
#[tokio::test]
async fn a_leaf_cluster_on_a_hub_with_a_dedicated_account_route_gets_each_message_once() {
    use crate::common::traffic::natrium;
    use crate::common::{eventually, get_json};
    use crate::leaf::{connect, connect_as};
    let dir = tempfile::tempdir().expect("tempdir");
    let hub_conf = |routes: &str| {
        format!(
            "http: \"127.0.0.1:-1\"\ncluster {{ name: hub, listen: \"127.0.0.1:-1\", accounts: [A]{routes} }}\naccounts {{ A {{ users [ {{user: a, password: a}} ] }} }}\nleafnodes {{ host: 127.0.0.1, port: -1, authorization {{ users [ {{user: edge, password: e, account: A}} ] }} }}\n"
        )
    };
    let h1 = natrium(dir.path(), "h1", &hub_conf("")).await;
    let h1_route = h1.cluster_port().expect("cluster port");
    let h2 = natrium(
        dir.path(),
        "h2",
        &hub_conf(&format!(
            ", routes: [\"nats-route://127.0.0.1:{h1_route}\"]"
        )),
    )
    .await;
    eventually(|| h1.num_routes() > 0 && h2.num_routes() > 0).await;
    let leaf_conf = |hub: &Server, routes: &str| {
        format!(
            "http: \"127.0.0.1:-1\"\ncluster {{ name: edge, listen: \"127.0.0.1:-1\"{routes} }}\nleafnodes {{ reconnect: \"100ms\", remotes [ {{ url: \"nats-leaf://edge:e@127.0.0.1:{}\" }} ] }}\n",
            hub.leafnode_port().expect("leafnode port")
        )
    };
    let e1 = natrium(dir.path(), "e1", &leaf_conf(&h1, "")).await;
    let e1_route = e1.cluster_port().expect("cluster port");
    let e2 = natrium(
        dir.path(),
        "e2",
        &leaf_conf(
            &h2,
            &format!(", routes: [\"nats-route://127.0.0.1:{e1_route}\"]"),
        ),
    )
    .await;
    eventually(|| h1.num_leafnodes() == 1 && h2.num_leafnodes() == 1 && e1.num_routes() > 0).await;
    let nodes = [
        connect(&e1.client_url()).await,
        connect(&e2.client_url()).await,
        connect_as(&h1.client_url(), "a", "a").await,
        connect_as(&h2.client_url(), "a", "a").await,
    ];

    // e2's interest reaches h1 over A's dedicated route, with its cluster as origin.
    let mut on_e2 = nodes[1].subscribe("news").await.expect("sub");
    nodes[1].flush().await.expect("flush");
    let mut routez = serde_json::Value::Null;
    for _ in 0..200 {
        routez = get_json(&h1, "/routez?subs=1").await;
        let dedicated = routez["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["account"] == "A");
        if dedicated.is_some_and(|r| r["subscriptions_list"].to_string().contains("news")) {
            break;
        }
        routez = serde_json::Value::Null;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        !routez.is_null(),
        "e2's interest never reached h1 over A's dedicated route"
    );
    // h1 knows it came from the edge cluster: it tells e1 of a hub client's interest but not
    // of e2's (which e1 has through its own cluster).
    let mut ctrl = nodes[3].subscribe("ctrl").await.expect("sub");
    nodes[3].flush().await.expect("flush");
    let mut told = Vec::new();
    for _ in 0..200 {
        told = leaf_subs(&e1).await;
        if told.iter().any(|s| names(s, "ctrl")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(told.iter().any(|s| names(s, "ctrl")), "{told:?}");
    assert!(
        !told.iter().any(|s| names(s, "news")),
        "e2's interest came back to its own cluster through the hub: {told:?}"
    );
    drop(ctrl.unsubscribe().await);

    // A plain subscriber on e2 gets what e1 publishes once: through the edge cluster's own
    // route, not again through h1 -> h2 -> e2.
    let ie1 = e1.internal_client("$G").expect("internal");
    eventually(|| ie1.has_interest("news")).await;
    for i in 0..30 {
        nodes[0]
            .publish("news", format!("n-{i}").into())
            .await
            .expect("publish");
    }
    nodes[0].flush().await.expect("flush");
    let mut got = BTreeMap::new();
    take_until(&mut on_e2, &mut got, 30).await;
    assert_once(&got, 1, 30, "news from e1 to e2");
    // A hub client's message reaches e2 once too.
    let mut on_hub = nodes[3].subscribe("news").await.expect("sub");
    nodes[3].flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..10 {
        nodes[2]
            .publish("news", format!("h-{i}").into())
            .await
            .expect("publish");
    }
    nodes[2].flush().await.expect("flush");
    let mut got = BTreeMap::new();
    take_until(&mut on_e2, &mut got, 10).await;
    assert_once(&got, 1, 10, "news from h1 to e2");
    let mut got = BTreeMap::new();
    take_until(&mut on_hub, &mut got, 10).await;
    assert_once(&got, 1, 10, "news from h1 to h2");
    // With a member on h2 too, e1's messages go to the hub as well (`LMSG edge ...` from h1 to
    // h2): h2 delivers them to its client but not to e2, which had them from e1.
    for i in 0..10 {
        nodes[0]
            .publish("news", format!("e-{i}").into())
            .await
            .expect("publish");
    }
    nodes[0].flush().await.expect("flush");
    let mut got = BTreeMap::new();
    take_until(&mut on_e2, &mut got, 10).await;
    assert_once(&got, 1, 10, "news from e1 to e2 with a hub member");
    let mut got = BTreeMap::new();
    take_until(&mut on_hub, &mut got, 10).await;
    assert_once(&got, 1, 10, "news from e1 to h2");
    drop(on_hub);

    // A queue group with a member on every node: each message once, from every node.
    let mut members = Vec::new();
    for c in &nodes {
        members.push(c.queue_subscribe("jobs", "w".into()).await.expect("qsub"));
        c.flush().await.expect("flush");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = spread(&nodes, &mut members, 30, "ded").await;
    assert_once(
        &got,
        nodes.len(),
        30,
        "a queue group across a dedicated route",
    );
    // Only the edge members stay: hub publishers reach them once, edge publishers too.
    let e_members: Vec<_> = members.drain(..2).collect();
    drop(members);
    for c in &nodes {
        c.flush().await.expect("flush");
    }
    let mut members = e_members;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = spread(&nodes, &mut members, 20, "edge-only").await;
    assert_once(&got, nodes.len(), 20, "edge members only");

    e2.shutdown().await;
    e1.shutdown().await;
    h2.shutdown().await;
    h1.shutdown().await;
}

/// What a Natrium leaf's hub told it over its one leafnode connection (its `/leafz?subs=1`).
async fn leaf_subs(leaf: &Server) -> Vec<String> {
    let lz = crate::common::get_json(leaf, "/leafz?subs=1").await;
    lz["leafs"][0]["subscriptions_list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(String::from))
        .collect()
}

/// Takes messages from `sub` into `got` until `want` arrived, then 300 ms more (stray copies).
async fn take_until(
    sub: &mut async_nats::Subscriber,
    got: &mut BTreeMap<String, usize>,
    want: usize,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut n = 0;
    while n < want && tokio::time::Instant::now() < deadline {
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
            *got.entry(String::from_utf8_lossy(&m.payload).into_owned())
                .or_insert(0) += 1;
            n += 1;
        }
    }
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        *got.entry(String::from_utf8_lossy(&m.payload).into_owned())
            .or_insert(0) += 1;
    }
}
