//! Stream subject transforms and republish through async-nats: stored subjects rewritten with
//! nats-server's mapping functions, republished messages with nats-server's headers (and
//! `headers_only`), config errors with nats-server's codes, `first_seq`,
//! `discard_new_per_subject` and `metadata` round trips.

use std::time::Duration;

use crate::common::api;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};

#[tokio::test]
async fn subject_transform_rewrites_stored_subjects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let c = crate::common::client(&s).await;
    let js = jetstream::new(c.clone());
    let st = js
        .create_stream(stream::Config {
            name: "T".into(),
            subjects: vec!["in.>".into()],
            subject_transform: Some(stream::SubjectTransform {
                source: "in.*.*".into(),
                destination: "out.{{wildcard(2)}}.{{partition(3,1)}}.{{splitfromleft(1,2)}}".into(),
            }),
            ..Default::default()
        })
        .await
        .expect("create");
    js.publish("in.abcd.x", Bytes::from_static(b"1"))
        .await
        .expect("pub")
        .await
        .expect("ack");
    // Subjects the transform's source does not match are stored as published.
    js.publish("in.other", Bytes::from_static(b"2"))
        .await
        .expect("pub")
        .await
        .expect("ack");
    let m = st.get_raw_message(1).await.expect("get");
    // fnv32a("abcd") % 3 == 1 in nats-server's partition.
    assert_eq!(m.subject.as_str(), "out.x.1.ab.cd");
    let m = st.get_raw_message(2).await.expect("get");
    assert_eq!(m.subject.as_str(), "in.other");
    let info = api(&c, "$JS.API.STREAM.INFO.T", Value::Null).await;
    assert_eq!(info["config"]["subject_transform"]["src"], "in.*.*");

    let bad = api(
        &c,
        "$JS.API.STREAM.CREATE.BAD",
        json!({"name": "BAD", "subjects": ["b.>"],
               "subject_transform": {"src": "b.*", "dest": "c.{{wildcard(2)}}"}}),
    )
    .await;
    assert_eq!(bad["error"]["err_code"], 10156, "{bad}");
    assert_eq!(
        bad["error"]["description"],
        "stream transform: invalid mapping destination: wildcard index out of range in {{wildcard(2)}}: [2]"
    );
    let bad = api(
        &c,
        "$JS.API.STREAM.CREATE.BAD",
        json!({"name": "BAD", "subjects": ["b.>"],
               "subject_transform": {"src": "b.*", "dest": "c.{{nope(1)}}"}}),
    )
    .await;
    assert_eq!(bad["error"]["err_code"], 10156, "{bad}");
    s.shutdown().await;
}

async fn next(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("republished in time")
        .expect("message")
}

#[tokio::test]
async fn republish_sends_stored_messages_on_with_nats_server_headers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let c = crate::common::client(&s).await;
    let js = jetstream::new(c.clone());
    js.create_stream(stream::Config {
        name: "R".into(),
        subjects: vec!["r.>".into()],
        republish: Some(stream::Republish {
            source: "r.*".into(),
            destination: "rp.{{wildcard(1)}}".into(),
            headers_only: false,
        }),
        ..Default::default()
    })
    .await
    .expect("create");
    let mut sub = c.subscribe("rp.>").await.expect("sub");
    c.flush().await.expect("flush");
    for body in ["one", "two"] {
        let mut h = async_nats::HeaderMap::new();
        h.insert("X-Mine", "kept");
        js.publish_with_headers("r.a", h, Bytes::from(body))
            .await
            .expect("pub")
            .await
            .expect("ack");
    }
    // r.b.c does not match the republish source r.*.
    js.publish("r.b.c", Bytes::from_static(b"no"))
        .await
        .expect("pub")
        .await
        .expect("ack");
    let m1 = next(&mut sub).await;
    let m2 = next(&mut sub).await;
    assert_eq!(m1.subject.as_str(), "rp.a");
    assert_eq!(&m1.payload[..], b"one");
    let h = m2.headers.expect("headers");
    assert_eq!(h.get("Nats-Stream").map(|v| v.as_str()), Some("R"));
    assert_eq!(h.get("Nats-Subject").map(|v| v.as_str()), Some("r.a"));
    assert_eq!(h.get("Nats-Sequence").map(|v| v.as_str()), Some("2"));
    assert_eq!(h.get("Nats-Last-Sequence").map(|v| v.as_str()), Some("1"));
    assert_eq!(h.get("X-Mine").map(|v| v.as_str()), Some("kept"));
    assert!(h.get("Nats-Time-Stamp").is_some());
    assert!(
        tokio::time::timeout(Duration::from_millis(200), sub.next())
            .await
            .is_err(),
        "r.b.c is not republished"
    );

    // headers_only: the size instead of the payload.
    let created = api(
        &c,
        "$JS.API.STREAM.CREATE.H",
        json!({"name": "H", "subjects": ["h.>"],
               "republish": {"src": "h.>", "dest": "hp.>", "headers_only": true}}),
    )
    .await;
    assert!(created.get("error").is_none(), "{created}");
    let mut hsub = c.subscribe("hp.>").await.expect("sub");
    c.flush().await.expect("flush");
    js.publish("h.x.y", Bytes::from_static(b"12345"))
        .await
        .expect("pub")
        .await
        .expect("ack");
    let m = next(&mut hsub).await;
    assert_eq!(m.subject.as_str(), "hp.x.y");
    assert!(m.payload.is_empty());
    let h = m.headers.expect("headers");
    assert_eq!(h.get("Nats-Msg-Size").map(|v| v.as_str()), Some("5"));

    // A republish onto the stream's own subjects would loop.
    let cyc = api(
        &c,
        "$JS.API.STREAM.CREATE.C",
        json!({"name": "C", "subjects": ["c.>"], "republish": {"src": "c.>", "dest": "c.x.>"}}),
    )
    .await;
    assert_eq!(cyc["error"]["err_code"], 10052, "{cyc}");
    assert_eq!(
        cyc["error"]["description"],
        "stream configuration for republish destination forms a cycle"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn first_seq_discard_new_per_subject_and_metadata() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let c = crate::common::client(&s).await;
    let js = jetstream::new(c.clone());
    let mut metadata = std::collections::HashMap::new();
    metadata.insert("owner".to_string(), "team-a".to_string());
    let mut st = js
        .create_stream(stream::Config {
            name: "F".into(),
            subjects: vec!["f.>".into()],
            first_sequence: Some(100),
            discard: stream::DiscardPolicy::New,
            discard_new_per_subject: true,
            max_messages_per_subject: 1,
            metadata: metadata.clone(),
            ..Default::default()
        })
        .await
        .expect("create");
    let ack = js
        .publish("f.a", Bytes::from_static(b"1"))
        .await
        .expect("pub")
        .await
        .expect("ack");
    assert_eq!(ack.sequence, 100, "first_seq starts the stream");
    let second = js
        .publish("f.a", Bytes::from_static(b"2"))
        .await
        .expect("pub")
        .await;
    assert!(
        second.is_err(),
        "discard new per subject refuses a second f.a"
    );
    let ack = js
        .publish("f.b", Bytes::from_static(b"3"))
        .await
        .expect("pub")
        .await
        .expect("ack");
    assert_eq!(ack.sequence, 101);
    let info = st.info().await.expect("info");
    assert_eq!(
        info.config.metadata.get("owner").map(String::as_str),
        Some("team-a")
    );
    assert_eq!(info.config.first_sequence, Some(100));
    assert_eq!(info.state.first_sequence, 100);
    let bad = api(
        &c,
        "$JS.API.STREAM.CREATE.D",
        json!({"name": "D", "discard_new_per_subject": true, "max_msgs_per_subject": 1}),
    )
    .await;
    assert_eq!(
        bad["error"]["description"],
        "discard new per subject requires discard new policy to be set"
    );
    s.shutdown().await;
}
