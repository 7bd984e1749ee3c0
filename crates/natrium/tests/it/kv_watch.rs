//! KV watchers as the clients run them: async-nats's watch and history (the "seen current"
//! marker from each delivery's pending count, delete and purge markers, idle heartbeats), and
//! consumers' pending counts that follow messages the stream removes by itself (per-subject
//! limits, max age, rollups, deletes), which those markers depend on.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::common::{api, client, js_opts, start};

async fn num_pending(nc: &async_nats::Client, stream: &str, consumer: &str) -> Value {
    let info = api(
        nc,
        &format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"),
        Value::Null,
    )
    .await;
    info["num_pending"].clone()
}

#[tokio::test]
async fn pending_counts_follow_what_the_stream_removes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(js_opts(dir.path())).await;
    let nc = client(&s).await;
    let js = jetstream::new(nc.clone());
    let r = api(
        &nc,
        "$JS.API.STREAM.CREATE.K",
        json!({"name": "K", "subjects": ["k.>"], "max_msgs_per_subject": 1, "max_age": 1_500_000_000i64, "allow_rollup_hdrs": true}),
    )
    .await;
    assert!(r.get("error").is_none(), "{r}");
    let r = api(
        &nc,
        "$JS.API.CONSUMER.CREATE.K.C",
        json!({"stream_name": "K", "config": {"durable_name": "C"}}),
    )
    .await;
    assert!(r.get("error").is_none(), "{r}");
    // Five revisions of one key, each replacing the last: one message to deliver.
    for i in 0..5 {
        js.publish("k.a", Bytes::from(format!("{i}")))
            .await
            .expect("pub")
            .await
            .expect("ack");
    }
    js.publish("k.b", Bytes::from_static(b"b"))
        .await
        .expect("pub")
        .await
        .expect("ack");
    assert_eq!(num_pending(&nc, "K", "C").await, 2);
    // A rollup of a subject leaves its last message only.
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Rollup", "sub");
    js.publish_with_headers("k.b", h, Bytes::from_static(b"rolled"))
        .await
        .expect("pub")
        .await
        .expect("ack");
    assert_eq!(num_pending(&nc, "K", "C").await, 2);
    // A deleted message is no longer pending.
    let r = api(&nc, "$JS.API.STREAM.MSG.DELETE.K", json!({"seq": 7})).await;
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(num_pending(&nc, "K", "C").await, 1);
    // Expired by age: nothing left to deliver.
    let mut left = Value::Null;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = num_pending(&nc, "K", "C").await;
        if left == 0 {
            break;
        }
    }
    assert_eq!(left, 0, "expired messages are not pending");
    s.shutdown().await;
}

async fn next_entry(w: &mut kv::Watch) -> kv::Entry {
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("entry in time")
        .expect("open")
        .expect("entry")
}

#[tokio::test]
async fn async_nats_watch_marks_current_and_sees_deletes_and_purges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(js_opts(dir.path())).await;
    let js = jetstream::new(client(&s).await);
    let kv = js
        .create_key_value(kv::Config {
            bucket: "w".into(),
            history: 1,
            ..Default::default()
        })
        .await
        .expect("bucket");
    kv.put("a", Bytes::from_static(b"1")).await.expect("put");
    kv.put("a", Bytes::from_static(b"2")).await.expect("put");
    kv.put("b", Bytes::from_static(b"3")).await.expect("put");
    let mut w = kv.watch_with_history(">").await.expect("watch");
    let e = next_entry(&mut w).await;
    assert_eq!(
        (e.key.as_str(), &e.value[..], e.delta, e.seen_current),
        ("a", &b"2"[..], 1, false)
    );
    let e = next_entry(&mut w).await;
    assert_eq!((e.key.as_str(), e.delta, e.seen_current), ("b", 0, true));
    kv.delete("a").await.expect("delete");
    let e = next_entry(&mut w).await;
    assert_eq!((e.key.as_str(), e.operation), ("a", kv::Operation::Delete));
    kv.purge("b").await.expect("purge");
    let e = next_entry(&mut w).await;
    assert_eq!((e.key.as_str(), e.operation), ("b", kv::Operation::Purge));
    // History of a key ends (the history stream closes) after its last revision.
    let mut hist = kv.history("a").await.expect("history");
    let mut ops = Vec::new();
    while let Some(e) = tokio::time::timeout(Duration::from_secs(10), hist.next())
        .await
        .expect("history ends in time")
    {
        ops.push(e.expect("entry").operation);
    }
    assert_eq!(ops, vec![kv::Operation::Delete]);
    let mut keys = kv.keys().await.expect("keys");
    assert!(
        tokio::time::timeout(Duration::from_secs(10), keys.next())
            .await
            .expect("keys end in time")
            .is_none(),
        "no live keys"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn idle_watches_get_heartbeats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(js_opts(dir.path())).await;
    let nc = client(&s).await;
    let js = jetstream::new(nc.clone());
    js.create_key_value(kv::Config {
        bucket: "hb".into(),
        ..Default::default()
    })
    .await
    .expect("bucket");
    // A watch as the clients make it: an ordered push consumer with heartbeats and flow control.
    let inbox = nc.new_inbox();
    let mut sub = nc.subscribe(inbox.clone()).await.expect("sub");
    let r = api(
        &nc,
        "$JS.API.CONSUMER.CREATE.KV_hb",
        json!({"stream_name": "KV_hb", "config": {
            "deliver_subject": inbox, "deliver_policy": "last_per_subject", "ack_policy": "none",
            "filter_subject": "$KV.hb.>", "flow_control": true, "idle_heartbeat": 300_000_000i64,
            "mem_storage": true, "num_replicas": 1, "headers_only": false,
        }}),
    )
    .await;
    assert!(r.get("error").is_none(), "{r}");
    assert_eq!(r["num_pending"], 0);
    let m = tokio::time::timeout(Duration::from_secs(3), sub.next())
        .await
        .expect("a heartbeat in time")
        .expect("message");
    assert_eq!(m.status.map(|s| s.as_u16()), Some(100));
    let h = m.headers.expect("headers");
    assert_eq!(h.get("Nats-Last-Consumer").map(|v| v.as_str()), Some("0"));
    assert_eq!(h.get("Nats-Last-Stream").map(|v| v.as_str()), Some("0"));
    s.shutdown().await;
}
