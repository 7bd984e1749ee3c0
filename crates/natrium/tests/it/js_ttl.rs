//! Per-message TTLs (`allow_msg_ttl`, `Nats-TTL`, `never`) and subject delete markers
//! (`subject_delete_marker_ttl`) through async-nats, with nats-server's errors; TTLs survive a
//! restart.

use std::time::Duration;

use crate::common::api;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use serde_json::{json, Value};

async fn publish_ttl(
    js: &jetstream::Context,
    subject: &str,
    ttl: Option<&str>,
) -> Result<u64, String> {
    let mut h = async_nats::HeaderMap::new();
    if let Some(t) = ttl {
        h.insert("Nats-TTL", t);
    }
    match js
        .publish_with_headers(subject.to_string(), h, Bytes::from_static(b"x"))
        .await
        .expect("publish")
        .await
    {
        Ok(a) => Ok(a.sequence),
        Err(e) => Err(e.to_string()),
    }
}

async fn state(c: &async_nats::Client, name: &str) -> Value {
    api(c, &format!("$JS.API.STREAM.INFO.{name}"), Value::Null).await["state"].clone()
}

#[tokio::test]
async fn messages_expire_by_their_own_ttl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let c = crate::common::client(&s).await;
    let js = jetstream::new(c.clone());
    js.create_stream(stream::Config {
        name: "T".into(),
        subjects: vec!["t.>".into()],
        allow_message_ttl: true,
        ..Default::default()
    })
    .await
    .expect("create");
    publish_ttl(&js, "t.short", Some("1s")).await.expect("1s");
    publish_ttl(&js, "t.plain", None).await.expect("plain");
    publish_ttl(&js, "t.long", Some("1h")).await.expect("1h");
    publish_ttl(&js, "t.never", Some("never"))
        .await
        .expect("never");
    let e = publish_ttl(&js, "t.bad", Some("100ms"))
        .await
        .expect_err("too short");
    assert!(e.contains("invalid per-message TTL"), "{e}");
    assert_eq!(state(&c, "T").await["messages"], 4);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let st = state(&c, "T").await;
    assert_eq!(st["messages"], 3, "the 1 s message is gone: {st}");
    assert_eq!(st["first_seq"], 2);

    // A stream without TTLs refuses them.
    js.create_stream(stream::Config {
        name: "N".into(),
        subjects: vec!["n.>".into()],
        ..Default::default()
    })
    .await
    .expect("create");
    let e = publish_ttl(&js, "n.x", Some("5s"))
        .await
        .expect_err("disabled");
    assert!(e.contains("per-message TTL is disabled"), "{e}");
    s.shutdown().await;
}

#[tokio::test]
async fn ttls_outlive_a_restart_and_never_beats_max_age() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let c = crate::common::client(&s).await;
    let js = jetstream::new(c.clone());
    js.create_stream(stream::Config {
        name: "A".into(),
        subjects: vec!["a.>".into()],
        allow_message_ttl: true,
        max_age: Duration::from_secs(1),
        ..Default::default()
    })
    .await
    .expect("create");
    publish_ttl(&js, "a.kept", Some("never"))
        .await
        .expect("never");
    publish_ttl(&js, "a.aged", None).await.expect("plain");
    let created = api(
        &c,
        "$JS.API.STREAM.CREATE.B",
        json!({"name": "B", "subjects": ["b.>"], "allow_msg_ttl": true}),
    )
    .await;
    assert!(created.get("error").is_none(), "{created}");
    publish_ttl(&js, "b.x", Some("2"))
        .await
        .expect("2 s as a number");
    drop(c);
    s.shutdown().await;
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let c = crate::common::client(&s).await;
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let a = state(&c, "A").await;
    assert_eq!(a["messages"], 1, "only the never-expiring one stays: {a}");
    assert_eq!(a["first_seq"], 1);
    let b = state(&c, "B").await;
    assert_eq!(
        b["messages"], 0,
        "a TTL set before the restart still expires: {b}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn subject_delete_markers_replace_a_subjects_last_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let c = crate::common::client(&s).await;
    let js = jetstream::new(c.clone());
    let st = js
        .create_stream(stream::Config {
            name: "M".into(),
            subjects: vec!["m.>".into()],
            max_age: Duration::from_secs(1),
            subject_delete_marker_ttl: Some(Duration::from_secs(1)),
            ..Default::default()
        })
        .await
        .expect("create");
    let info = api(&c, "$JS.API.STREAM.INFO.M", Value::Null).await;
    assert_eq!(
        info["config"]["allow_msg_ttl"], true,
        "markers turn TTLs on"
    );
    assert_eq!(info["config"]["allow_rollup_hdrs"], true, "and roll-ups");
    assert_eq!(
        info["config"]["subject_delete_marker_ttl"],
        1_000_000_000u64
    );
    publish_ttl(&js, "m.a", None).await.expect("a1");
    publish_ttl(&js, "m.a", None).await.expect("a2");
    // Within a second both go by age; the last leaves a marker.
    let mut marker = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(m) = st.get_last_raw_message_by_subject("m.a").await {
            if m.sequence == 3 {
                marker = Some(m);
                break;
            }
        }
    }
    let m = marker.expect("a marker replaced m.a's last message");
    assert!(m.payload.is_empty());
    assert_eq!(
        m.headers.get("Nats-Marker-Reason").map(|v| v.as_str()),
        Some("MaxAge")
    );
    assert_eq!(m.headers.get("Nats-TTL").map(|v| v.as_str()), Some("1s"));
    assert_eq!(
        state(&c, "M").await["messages"],
        1,
        "only the marker is left"
    );
    // The marker expires in its turn and leaves nothing behind.
    let mut left = Value::Null;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = state(&c, "M").await;
        if left["messages"] == 0 {
            break;
        }
    }
    assert_eq!(left["messages"], 0, "{left}");
    assert_eq!(left["last_seq"], 3);
    let bad = api(
        &c,
        "$JS.API.STREAM.CREATE.X",
        json!({"name": "X", "subject_delete_marker_ttl": 500_000_000}),
    )
    .await;
    assert_eq!(
        bad["error"]["description"],
        "subject delete marker TTL must be at least 1 second"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn kv_limit_markers_through_async_nats() {
    use async_nats::jetstream::kv;
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let c = crate::common::client(&s).await;
    let js = jetstream::new(c.clone());
    let info = api(&c, "$JS.API.INFO", Value::Null).await;
    assert_eq!(
        info["api"]["level"], 2,
        "nats-server 2.12's API level: {info}"
    );
    // async-nats asks for API level 1 before it sets limit markers on a bucket.
    let bucket = js
        .create_key_value(kv::Config {
            bucket: "L".into(),
            limit_markers: Some(Duration::from_secs(1)),
            ..Default::default()
        })
        .await
        .expect("a bucket with limit markers");
    let si = api(&c, "$JS.API.STREAM.INFO.KV_L", Value::Null).await;
    assert_eq!(si["config"]["allow_msg_ttl"], true, "{si}");
    assert_eq!(
        si["config"]["subject_delete_marker_ttl"], 1_000_000_000u64,
        "{si}"
    );
    let mut watch = bucket.watch("k").await.expect("watch");
    bucket
        .create_with_ttl("k", "v".into(), Duration::from_secs(1))
        .await
        .expect("create with a TTL");
    let put = next_entry(&mut watch).await;
    assert_eq!(put.operation, kv::Operation::Put);
    // The key's TTL runs out: its marker reaches the watcher as a purge.
    let gone = next_entry(&mut watch).await;
    assert_eq!(gone.operation, kv::Operation::Purge, "{gone:?}");
    assert!(gone.revision > put.revision);
    assert!(bucket.get("k").await.expect("get").is_none());
    s.shutdown().await;
}

async fn next_entry(w: &mut async_nats::jetstream::kv::Watch) -> async_nats::jetstream::kv::Entry {
    use futures::StreamExt;
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("a watch entry in time")
        .expect("the watch goes on")
        .expect("an entry")
}
