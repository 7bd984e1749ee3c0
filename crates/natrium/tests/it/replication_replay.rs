//! A replica restarted on its files replays its group's log over a store that already holds
//! what the log stored: entries whose checks depend on the stream's state (expected sequences,
//! limits) must be recognised as already stored, not checked again against a store that is
//! ahead of them, so the replica keeps the same messages at the same sequences as its peers.

use std::time::Duration;

use async_nats::jetstream::{self, kv};

use crate::replication::{cluster, connect, leader_of, wait};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_replays_expected_sequence_publishes_without_storing_them_again() {
    let mut c = cluster().await;
    let nc = connect(c.node("n1")).await;
    let js = jetstream::new(nc);
    let bucket = js
        .create_key_value(kv::Config {
            bucket: "rp".into(),
            history: 1,
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("bucket");
    // `create` publishes with `Nats-Expected-Last-Subject-Sequence: 0`, `update` with the
    // key's revision: both pass when stored, and neither would pass against a later store.
    for i in 0..10 {
        let rev = bucket
            .create(format!("k{i}"), "v0".into())
            .await
            .expect("create");
        bucket
            .update(format!("k{i}"), "v1".into(), rev)
            .await
            .expect("update");
    }
    js.publish("other", "x".into()).await.ok();
    let leader = leader_of(&c, "KV_rp", "$KV.rp.k0", None).await;
    let follower = c
        .names
        .iter()
        .find(|n| **n != leader)
        .expect("a follower")
        .clone();
    let expected: Vec<(u64, String)> = local(&c, &leader);
    assert_eq!(expected.len(), 10, "one value per key: {expected:?}");
    wait(
        Duration::from_secs(20),
        "the follower holds every value",
        || local(&c, &follower) == expected,
    )
    .await;
    c.stop(&follower).await;
    c.restart(&follower).await;
    // Once it has replayed and caught up, it holds what the leader holds, at the same
    // sequences, and nothing more.
    let bucket = js.get_key_value("rp").await.expect("bucket");
    bucket.put("k0", "v2".into()).await.expect("put");
    let expected = local(&c, &leader);
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while local(&c, &follower) != expected && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And stays so (nothing stored again later).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        local(&c, &follower),
        expected,
        "{follower} against {leader}"
    );
    c.shutdown().await;
}

/// Sequence and subject of every message server `on` holds of `KV_rp`.
fn local(c: &crate::replication::Cluster, on: &str) -> Vec<(u64, String)> {
    c.node(on)
        .local_messages("$G", "KV_rp")
        .unwrap_or_default()
        .into_iter()
        .map(|m| (m.seq, m.subject))
        .collect()
}
