//! A replica's copy stays its leader's: restarted on its files it replays its group's log over
//! a store that already holds what the log stored (entries whose checks depend on the stream's
//! state, and purges, must not be applied again against a store that is ahead of them); back
//! after the log was compacted it drops what the leader removed meanwhile; and a follower
//! keeps what only its leader's consumers may release.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use futures::StreamExt;
use serde_json::json;

use crate::common::api;
use crate::replication::{cluster, connect, leader_of, wait, Cluster};

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
    let follower = follower(&c, &leader);
    let expected: Vec<(u64, String)> = local(&c, &leader, "KV_rp");
    assert_eq!(expected.len(), 10, "one value per key: {expected:?}");
    wait(
        Duration::from_secs(20),
        "the follower holds every value",
        || local(&c, &follower, "KV_rp") == expected,
    )
    .await;
    c.stop(&follower).await;
    c.restart(&follower).await;
    // Once it has replayed and caught up, it holds what the leader holds, at the same
    // sequences, and nothing more.
    let bucket = js.get_key_value("rp").await.expect("bucket");
    bucket.put("k0", "v2".into()).await.expect("put");
    let expected = local(&c, &leader, "KV_rp");
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while local(&c, &follower, "KV_rp") != expected && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And stays so (nothing stored again later).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        local(&c, &follower, "KV_rp"),
        expected,
        "{follower} against {leader}"
    );
    c.shutdown().await;
}

/// Purges replayed over a store that holds what was stored after them remove only what was
/// there when they were applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_replays_purges_without_removing_later_messages() {
    let mut c = cluster().await;
    let nc = connect(c.node("n1")).await;
    let js = jetstream::new(nc.clone());
    js.create_stream(stream::Config {
        name: "PG".into(),
        subjects: vec!["pg.>".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .expect("stream");
    let publish = |subject: &'static str, n: usize| {
        let js = js.clone();
        async move {
            for i in 0..n {
                js.publish(subject, format!("{i}").into())
                    .await
                    .expect("sent")
                    .await
                    .expect("acknowledged");
            }
        }
    };
    let purge = |body: serde_json::Value| {
        let nc = nc.clone();
        async move {
            let v = api(&nc, "$JS.API.STREAM.PURGE.PG", body).await;
            assert_eq!(v["success"], true, "{v}");
        }
    };
    publish("pg.a", 5).await;
    purge(serde_json::Value::Null).await;
    publish("pg.a", 6).await;
    publish("pg.b", 4).await;
    purge(json!({"filter": "pg.b"})).await;
    publish("pg.b", 3).await;
    purge(json!({"filter": "pg.a", "keep": 2})).await;
    publish("pg.a", 3).await;
    purge(json!({"seq": 14})).await;
    publish("pg.c", 2).await;
    let leader = leader_of(&c, "PG", "pg.a", None).await;
    let expected = local(&c, &leader, "PG");
    assert!(!expected.is_empty());
    restart_a_follower_and_compare(&mut c, &leader, "PG", expected).await;
    c.shutdown().await;
}

/// An interest stream's followers have no consumers running (they run on the leader): they
/// keep every message, and the new leader after a failover delivers the ones nobody acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_of_an_interest_stream_keep_its_messages_for_the_next_leader() {
    let mut c = cluster().await;
    let nc = connect(c.node("n1")).await;
    let js = jetstream::new(nc);
    let s = js
        .create_stream(stream::Config {
            name: "IN".into(),
            subjects: vec!["in.>".into()],
            retention: stream::RetentionPolicy::Interest,
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("stream");
    s.create_consumer(async_nats::jetstream::consumer::pull::Config {
        durable_name: Some("w".into()),
        ..Default::default()
    })
    .await
    .expect("consumer");
    for i in 0..5 {
        js.publish("in.x", format!("{i}").into())
            .await
            .expect("sent")
            .await
            .expect("acknowledged");
    }
    let leader = leader_of(&c, "IN", "in.x", None).await;
    let expected = local(&c, &leader, "IN");
    assert_eq!(expected.len(), 5);
    for f in c.names.clone().iter().filter(|n| **n != leader) {
        wait(
            Duration::from_secs(10),
            "a follower holds the messages",
            || local(&c, f, "IN") == expected,
        )
        .await;
    }
    let stay = follower(&c, &leader);
    c.stop(&leader).await;
    leader_of(&c, "IN", "in.x", Some(&leader)).await;
    let js = jetstream::new(connect(c.node(&stay)).await);
    let w: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream("IN")
        .await
        .expect("stream")
        .get_consumer("w")
        .await
        .expect("consumer");
    let mut msgs = w.fetch().max_messages(5).messages().await.expect("fetch");
    let mut got = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(10), msgs.next()).await {
        let m = m.expect("message");
        got.push(String::from_utf8_lossy(&m.payload).into_owned());
        m.double_ack().await.expect("ack");
    }
    assert_eq!(got, ["0", "1", "2", "3", "4"]);
    c.shutdown().await;
}

/// A replica small enough to snapshot every 16 entries (the log behind it compacted).
fn compacting_node(name: &str, dir: &std::path::Path, routes: &[u16]) -> natrium::Options {
    let mut o = crate::replication::node_opts(name, dir, routes);
    if let Some(js) = o.jetstream.as_mut() {
        js.raft_snapshot_every = Some(16);
    }
    o
}

/// A follower away while messages are deleted (a work queue's acks, KV purges) and the log is
/// compacted behind a snapshot gets the snapshot when it comes back: what the leader removed
/// in the meantime is removed on it too, not only the new messages fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_back_after_compaction_drops_what_was_removed_while_it_was_away() {
    let mut c = Cluster::start(3, Duration::from_secs(30), compacting_node).await;
    let nc = connect(c.node("n1")).await;
    let js = jetstream::new(nc.clone());
    js.create_stream(stream::Config {
        name: "WQ".into(),
        subjects: vec!["wq.>".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .expect("stream");
    for i in 0..40 {
        js.publish(format!("wq.{}", i % 4), format!("{i}").into())
            .await
            .expect("sent")
            .await
            .expect("acknowledged");
    }
    let leader = leader_of(&c, "WQ", "wq.0", None).await;
    let follower = follower(&c, &leader);
    let all = local(&c, &leader, "WQ");
    wait(
        Duration::from_secs(20),
        "the follower holds every message",
        || local(&c, &follower, "WQ") == all,
    )
    .await;
    c.stop(&follower).await;
    // While it is away: the first ten go (from the front), two in the middle, one subject is
    // purged, and more than a snapshot's worth of entries follow.
    let leader_nc = connect(c.node(&leader)).await;
    let purge = api(&leader_nc, "$JS.API.STREAM.PURGE.WQ", json!({"seq": 11})).await;
    assert_eq!(purge["success"], true, "{purge}");
    for seq in [20, 25] {
        let v = api(
            &leader_nc,
            "$JS.API.STREAM.MSG.DELETE.WQ",
            json!({"seq": seq}),
        )
        .await;
        assert_eq!(v["success"], true, "{v}");
    }
    let purge = api(
        &leader_nc,
        "$JS.API.STREAM.PURGE.WQ",
        json!({"filter": "wq.3"}),
    )
    .await;
    assert_eq!(purge["success"], true, "{purge}");
    for i in 0..40 {
        js.publish("wq.9", format!("late {i}").into())
            .await
            .expect("sent")
            .await
            .expect("acknowledged");
    }
    let expected = local(&c, &leader, "WQ");
    c.restart(&follower).await;
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while local(&c, &follower, "WQ") != expected && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        local(&c, &follower, "WQ"),
        expected,
        "{follower} against {leader}"
    );
    c.shutdown().await;
}

/// Stops a follower of `stream` once it holds `expected`, starts it again on its files and
/// checks that it holds exactly that, at the same sequences, for a while.
async fn restart_a_follower_and_compare(
    c: &mut Cluster,
    leader: &str,
    stream: &str,
    expected: Vec<(u64, String)>,
) {
    let follower = follower(c, leader);
    wait(
        Duration::from_secs(20),
        "the follower holds every message",
        || local(c, &follower, stream) == expected,
    )
    .await;
    c.stop(&follower).await;
    c.restart(&follower).await;
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while local(c, &follower, stream) != expected && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        local(c, &follower, stream),
        expected,
        "{follower} against {leader}"
    );
}

/// A server of the three that does not lead.
fn follower(c: &Cluster, leader: &str) -> String {
    c.names
        .iter()
        .find(|n| *n != leader)
        .expect("a follower")
        .clone()
}

/// Sequence and subject of every message server `on` holds of `stream`.
fn local(c: &Cluster, on: &str, stream: &str) -> Vec<(u64, String)> {
    c.node(on)
        .local_messages("$G", stream)
        .unwrap_or_default()
        .into_iter()
        .map(|m| (m.seq, m.subject))
        .collect()
}
