//! A leaf cluster attached to a mixed hub (Natrium + nats-server): the hub tells its peers of a
//! leaf's interest with the leaf's cluster as origin (`LS+ origin account subject [queue
//! weight]`), so no hub node hands that interest back to another leaf of the same cluster, and it
//! keeps a peer's `RS+` and `LS+` for the same subject and queue group apart. A queue group with
//! members on both sides gets each message once, before and after members leave.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;

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
