//! Replicated consumer progress on three embedded servers, driven by async-nats: an ack the
//! server answered survives the stream leader going away (stopped or stepped down), the
//! redelivery counts of unacknowledged messages carry over, work-queue and interest removals
//! happen on every replica through the log, and the consumer advisories of nats-server
//! (`LEADER_ELECTED`, `QUORUM_LOST`) are published.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use serde_json::Value;

use crate::common::api;
use crate::replication::{cluster, connect, leader_of, Cluster};

/// The sequences server `name`'s own copy of stream `s` holds.
fn held(c: &Cluster, name: &str, s: &str) -> Vec<u64> {
    c.node(name)
        .local_messages("$G", s)
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.seq)
        .collect()
}

/// Waits until every running server's copy of stream `s` holds exactly `want`.
async fn all_hold(c: &Cluster, s: &str, want: &[u64]) {
    let names = c.running_names();
    let start = Instant::now();
    loop {
        let last: Vec<(String, Vec<u64>)> =
            names.iter().map(|n| (n.clone(), held(c, n, s))).collect();
        if last.iter().all(|(_, h)| h == want) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "replicas of {s} hold {last:?}, want {want:?} on each"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A durable pull consumer `name` with a short ack wait (redeliveries come soon).
async fn durable(js: &jetstream::Context, s: &str, name: &str) -> consumer::PullConsumer {
    js.get_stream(s)
        .await
        .expect("stream")
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.into()),
            ack_wait: Duration::from_secs(2),
            ..Default::default()
        })
        .await
        .expect("consumer")
}

/// `n` messages fetched (in one pull request), in order.
async fn fetch(d: &consumer::PullConsumer, n: usize) -> Vec<jetstream::Message> {
    let mut msgs = d.fetch().max_messages(n).messages().await.expect("fetch");
    let mut out = Vec::new();
    while out.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(10), msgs.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("message");
        out.push(m);
    }
    out
}

/// Consumes until `n` messages came (each acked with a reply), then checks nothing else comes
/// within `quiet`: (stream sequence, deliveries) of each.
async fn consume(d: &consumer::PullConsumer, n: usize, quiet: Duration) -> Vec<(u64, i64)> {
    let mut msgs = d.messages().await.expect("messages");
    let mut seen = Vec::new();
    while seen.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(15), msgs.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("message");
        let info = m.info().expect("info");
        seen.push((info.stream_sequence, info.delivered));
        m.double_ack().await.expect("ack");
    }
    if let Ok(Some(Ok(m))) = tokio::time::timeout(quiet, msgs.next()).await {
        let info = m.info().expect("info");
        panic!(
            "unexpected delivery of {} ({} deliveries) after {seen:?}",
            info.stream_sequence, info.delivered
        );
    }
    seen.sort();
    seen
}

/// `CONSUMER.INFO` through `nc`, retried (bounded) while the new leader is not serving yet.
async fn consumer_info(nc: &async_nats::Client, s: &str, c: &str) -> Value {
    let start = Instant::now();
    loop {
        let v = api(nc, &format!("$JS.API.CONSUMER.INFO.{s}.{c}"), Value::Null).await;
        if v.get("error").is_none() {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "{v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn publish(js: &jetstream::Context, subject: &str, n: usize) {
    for i in 0..n {
        js.publish(subject.to_string(), format!("{i}").into())
            .await
            .expect("sent")
            .await
            .expect("acknowledged");
    }
}

/// A stream `s` with three replicas (and `extra` config), its leader, and a client of another
/// server (which stays when the leader goes).
async fn r3(
    c: &Cluster,
    s: &str,
    subject: &str,
    retention: stream::RetentionPolicy,
) -> (String, async_nats::Client) {
    let js = jetstream::new(connect(c.node("n1")).await);
    js.create_stream(stream::Config {
        name: s.into(),
        subjects: vec![format!("{subject}.>")],
        num_replicas: 3,
        retention,
        ..Default::default()
    })
    .await
    .expect("created");
    let leader = leader_of(c, s, &format!("{subject}.x"), None).await;
    let other = c
        .names
        .iter()
        .find(|n| **n != leader)
        .expect("another server");
    (leader, connect(c.node(other)).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_stay_acked_when_the_leader_is_stopped() {
    let mut c = cluster().await;
    let (leader, nc) = r3(&c, "RA", "ra", stream::RetentionPolicy::Limits).await;
    let js = jetstream::new(nc.clone());
    publish(&js, "ra.x", 20).await;
    let d = durable(&js, "RA", "d").await;
    let msgs = fetch(&d, 20).await;
    // The first ten acknowledged (each ack answered), the last ten left pending.
    for m in &msgs[..10] {
        m.double_ack().await.expect("ack answered");
    }
    c.stop(&leader).await;
    let new = leader_of(&c, "RA", "ra.x", Some(&leader)).await;
    assert_ne!(new, leader);

    let info = consumer_info(&nc, "RA", "d").await;
    assert_eq!(info["ack_floor"]["stream_seq"], 10, "{info}");
    assert_eq!(info["delivered"]["stream_seq"], 20, "{info}");
    assert_eq!(info["num_ack_pending"], 10, "{info}");
    // Only the unacknowledged come again (after the ack wait), as their second delivery.
    let seen = consume(&d, 10, Duration::from_secs(3)).await;
    assert_eq!(
        seen,
        (11..=20).map(|s| (s, 2)).collect::<Vec<_>>(),
        "acked messages are never delivered again"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_queue_drops_acked_messages_on_every_replica() {
    let c = cluster().await;
    let (leader, nc) = r3(&c, "WQ", "wq", stream::RetentionPolicy::WorkQueue).await;
    let js = jetstream::new(nc.clone());
    publish(&js, "wq.x", 10).await;
    let d = durable(&js, "WQ", "w").await;
    let msgs = fetch(&d, 10).await;
    for m in &msgs[..6] {
        m.double_ack().await.expect("ack answered");
    }
    // Removed through the log: gone from every replica, not only from the leader.
    all_hold(&c, "WQ", &[7, 8, 9, 10]).await;

    let v = api(&nc, "$JS.API.STREAM.LEADER.STEPDOWN.WQ", Value::Null).await;
    assert_eq!(v["success"], true, "{v}");
    let new = leader_of(&c, "WQ", "wq.x", Some(&leader)).await;
    assert_ne!(new, leader);
    all_hold(&c, "WQ", &[7, 8, 9, 10]).await;
    let seen = consume(&d, 4, Duration::from_secs(1)).await;
    assert_eq!(seen, vec![(7, 2), (8, 2), (9, 2), (10, 2)]);
    all_hold(&c, "WQ", &[]).await;
    let info = api(&nc, "$JS.API.STREAM.INFO.WQ", Value::Null).await;
    assert_eq!(info["state"]["messages"], 0, "{info}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interest_stream_keeps_what_a_consumer_needs_on_every_replica() {
    let c = cluster().await;
    let (_, nc) = r3(&c, "IN", "in", stream::RetentionPolicy::Interest).await;
    let js = jetstream::new(nc.clone());
    let d = durable(&js, "IN", "i").await;
    publish(&js, "in.x", 5).await;
    // Every replica keeps what the consumer has still to take (followers run no consumer).
    all_hold(&c, "IN", &[1, 2, 3, 4, 5]).await;
    let msgs = fetch(&d, 5).await;
    for m in &msgs[..3] {
        m.double_ack().await.expect("ack answered");
    }
    all_hold(&c, "IN", &[4, 5]).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_leader_elected_and_quorum_lost_advisories() {
    let mut c = cluster().await;
    let (leader, nc) = r3(&c, "AD", "ad", stream::RetentionPolicy::Limits).await;
    let js = jetstream::new(nc.clone());
    durable(&js, "AD", "a").await;
    let mut adv = nc
        .subscribe("$JS.EVENT.ADVISORY.CONSUMER.>")
        .await
        .expect("subscribe");
    nc.flush().await.expect("flush");
    let v = api(&nc, "$JS.API.STREAM.LEADER.STEPDOWN.AD", Value::Null).await;
    assert_eq!(v["success"], true, "{v}");
    let new = leader_of(&c, "AD", "ad.x", Some(&leader)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let m = tokio::time::timeout_at(deadline.into(), adv.next())
            .await
            .expect("a leader-elected advisory in time")
            .expect("open");
        if m.subject.as_str() == "$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.AD.a" {
            break serde_json::from_slice::<Value>(&m.payload).expect("json");
        }
    };
    assert_eq!(
        body["type"], "io.nats.jetstream.advisory.v1.consumer_leader_elected",
        "{body}"
    );
    assert_eq!(
        (&body["stream"], &body["consumer"], &body["leader"]),
        (
            &Value::from("AD"),
            &Value::from("a"),
            &Value::from(new.as_str())
        ),
        "{body}"
    );
    assert!(
        body["id"].is_string() && body["timestamp"].is_string(),
        "{body}"
    );
    let replicas = body["replicas"].as_array().expect("replicas");
    assert_eq!(replicas.len(), 2, "the other two: {body}");
    assert!(replicas.iter().all(|r| r["name"] != new.as_str()), "{body}");

    // The leader loses both other servers: its consumer has no quorum either.
    let on_leader = connect(c.node(&new)).await;
    let mut lost = on_leader
        .subscribe("$JS.EVENT.ADVISORY.CONSUMER.QUORUM_LOST.AD.a")
        .await
        .expect("subscribe");
    on_leader.flush().await.expect("flush");
    for o in c.names.clone().iter().filter(|n| **n != new) {
        c.stop(o).await;
    }
    let m = tokio::time::timeout(Duration::from_secs(15), lost.next())
        .await
        .expect("a quorum-lost advisory in time")
        .expect("open");
    let body: Value = serde_json::from_slice(&m.payload).expect("json");
    assert_eq!(
        body["type"], "io.nats.jetstream.advisory.v1.consumer_quorum_lost",
        "{body}"
    );
    assert_eq!(
        (&body["stream"], &body["consumer"]),
        (&Value::from("AD"), &Value::from("a")),
        "{body}"
    );
    assert_eq!(body["replicas"].as_array().map(Vec::len), Some(2), "{body}");
    c.shutdown().await;
}
