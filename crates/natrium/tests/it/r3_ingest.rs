//! The R3 leader's ingest: messages published together go into one log entry (a group), and
//! each still gets its own PubAck, sequence and de-duplication, the same on every replica.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use serde_json::json;

use crate::replication::{cluster, connect, leader_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_together_are_each_acknowledged_in_order_on_every_replica() {
    let c = cluster().await;
    let nc = connect(c.node("n1")).await;
    let js = jetstream::new(nc);
    js.create_stream(stream::Config {
        name: "GRP".into(),
        subjects: vec!["grp.>".into()],
        num_replicas: 3,
        allow_direct: true,
        ..Default::default()
    })
    .await
    .expect("created");
    let leader = leader_of(&c, "GRP", "grp.x", None).await;
    // On the leader's own server, 600 publishes written before any PubAck is awaited arrive
    // together and are proposed in groups. Every 50th repeats the previous message's id.
    let pjs = jetstream::new(connect(c.node(&leader)).await);
    let mut pending = Vec::new();
    for i in 0..600u64 {
        let id = if i % 50 == 7 { i - 1 } else { i };
        let msg = jetstream::message::PublishMessage::build()
            .payload(format!("m{i}").into())
            .message_id(format!("id-{id}"));
        let fut = pjs
            .send_publish(format!("grp.{}", i % 7), msg)
            .await
            .expect("sent");
        pending.push((i, fut));
    }
    let mut held: Vec<(u64, String)> = Vec::new();
    let mut by_id = std::collections::HashMap::new();
    for (i, fut) in pending {
        let ack = fut.await.expect("acknowledged");
        let id = if i % 50 == 7 { i - 1 } else { i };
        if i % 50 == 7 {
            assert!(ack.duplicate, "message {i} repeats id-{id}: {ack:?}");
            assert_eq!(Some(&ack.sequence), by_id.get(&id), "message {i}");
        } else {
            assert!(!ack.duplicate, "message {i}: {ack:?}");
            // In publication order, one sequence each.
            assert_eq!(ack.sequence, held.len() as u64 + 1, "message {i}");
            by_id.insert(id, ack.sequence);
            held.push((ack.sequence, format!("m{i}")));
        }
    }
    assert_eq!(held.len(), 588);
    // Each server answers for every message (a follower from its own replica once it holds it).
    for s in c.running() {
        let nc = connect(s).await;
        let start = Instant::now();
        'again: loop {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "a replica lacks acknowledged messages"
            );
            for (seq, payload) in &held {
                let m = nc
                    .request(
                        "$JS.API.DIRECT.GET.GRP",
                        json!({ "seq": seq }).to_string().into(),
                    )
                    .await
                    .expect("direct get");
                if m.payload != payload.as_bytes() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue 'again;
                }
            }
            break;
        }
    }
    c.shutdown().await;
}
