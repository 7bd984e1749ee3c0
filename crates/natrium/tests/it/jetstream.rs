//! JetStream streams through the async-nats `jetstream` API and raw `$JS.API` requests: stream
//! lifecycle, PubAcks, limits, de-duplication, expectations, purge, get, delete, direct get,
//! error codes, and persistence across restarts.

use std::time::Duration;

use crate::common::api;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use natrium::{Options, Server};
use serde_json::{json, Value};

fn err_code(v: &Value) -> u64 {
    v["error"]["err_code"]
        .as_u64()
        .unwrap_or_else(|| panic!("expected an error, got {v}"))
}

#[tokio::test]
async fn stream_lifecycle_and_publish_acks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let c = crate::common::client(&s).await;
    assert!(c.server_info().jetstream, "INFO advertises JetStream");
    let js = jetstream::new(c.clone());
    let mut st = js
        .create_stream(stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["orders.>".into()],
            ..Default::default()
        })
        .await
        .expect("create");
    for i in 1..=5u64 {
        let ack = js
            .publish(format!("orders.{i}"), Bytes::from(format!("o{i}")))
            .await
            .expect("publish")
            .await
            .expect("ack");
        assert_eq!(ack.stream, "ORDERS");
        assert_eq!(ack.sequence, i);
        assert!(!ack.duplicate);
    }
    let info = st.info().await.expect("info");
    assert_eq!(info.state.messages, 5);
    assert_eq!(info.state.first_sequence, 1);
    assert_eq!(info.state.last_sequence, 5);
    assert_eq!(info.config.max_messages, -1);
    let m = st.get_raw_message(3).await.expect("get by seq");
    assert_eq!(m.subject.as_str(), "orders.3");
    assert_eq!(&m.payload[..], b"o3");
    let m = st
        .get_last_raw_message_by_subject("orders.5")
        .await
        .expect("get last");
    assert_eq!(m.sequence, 5);
    assert!(st.delete_message(2).await.expect("delete"));
    let info = st.info().await.expect("info");
    assert_eq!(info.state.messages, 4);
    assert_eq!(info.state.deleted_count, Some(1), "one interior delete");

    // Names and list.
    js.create_stream(stream::Config {
        name: "EVENTS".into(),
        subjects: vec!["events.*".into()],
        storage: stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .expect("second stream");
    let names = api(&c, "$JS.API.STREAM.NAMES", Value::Null).await;
    assert_eq!(
        names["type"],
        "io.nats.jetstream.api.v1.stream_names_response"
    );
    assert_eq!(names["streams"], json!(["EVENTS", "ORDERS"]));
    let filtered = api(&c, "$JS.API.STREAM.NAMES", json!({"subject": "events.x"})).await;
    assert_eq!(filtered["streams"], json!(["EVENTS"]));
    let list = api(&c, "$JS.API.STREAM.LIST", Value::Null).await;
    assert_eq!(list["total"], 2);
    assert_eq!(list["streams"][1]["config"]["name"], "ORDERS");
    let acct = api(&c, "$JS.API.INFO", Value::Null).await;
    assert_eq!(
        acct["type"],
        "io.nats.jetstream.api.v1.account_info_response"
    );
    assert_eq!(acct["streams"], 2);
    assert!(acct["storage"].as_u64().expect("storage") > 0);

    js.delete_stream("EVENTS").await.expect("delete stream");
    let gone = api(&c, "$JS.API.STREAM.INFO.EVENTS", Value::Null).await;
    assert_eq!(err_code(&gone), 10059);
    assert_eq!(gone["error"]["code"], 404);
    s.shutdown().await;
}

#[tokio::test]
async fn limits_dedupe_and_expectations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let c = crate::common::client(&s).await;
    let js = jetstream::new(c.clone());
    // max_msgs with discard old keeps the newest.
    let mut old = js
        .create_stream(stream::Config {
            name: "OLD".into(),
            subjects: vec!["old".into()],
            max_messages: 3,
            ..Default::default()
        })
        .await
        .expect("create");
    for i in 0..5 {
        js.publish("old", Bytes::from(i.to_string()))
            .await
            .expect("pub")
            .await
            .expect("ack");
    }
    let info = old.info().await.expect("info");
    assert_eq!(
        (
            info.state.messages,
            info.state.first_sequence,
            info.state.last_sequence
        ),
        (3, 3, 5)
    );
    // Discard new refuses once full, with the store's error.
    js.create_stream(stream::Config {
        name: "NEW".into(),
        subjects: vec!["new".into()],
        max_messages: 2,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .expect("create");
    for _ in 0..2 {
        js.publish("new", Bytes::from_static(b"x"))
            .await
            .expect("pub")
            .await
            .expect("ack");
    }
    let err = js
        .publish("new", Bytes::from_static(b"x"))
        .await
        .expect("pub")
        .await
        .expect_err("full");
    assert!(
        err.to_string().contains("maximum messages exceeded"),
        "{err}"
    );
    // Per-subject limit.
    let mut per = js
        .create_stream(stream::Config {
            name: "PER".into(),
            subjects: vec!["per.*".into()],
            max_messages_per_subject: 1,
            ..Default::default()
        })
        .await
        .expect("create");
    for subj in ["per.a", "per.a", "per.b"] {
        js.publish(subj, Bytes::from_static(b"v"))
            .await
            .expect("pub")
            .await
            .expect("ack");
    }
    assert_eq!(per.info().await.expect("info").state.messages, 2);

    // De-duplication by Nats-Msg-Id.
    let first = js
        .send_publish(
            "old",
            jetstream::message::PublishMessage::build()
                .message_id("id-1")
                .payload("a".into()),
        )
        .await
        .expect("pub")
        .await
        .expect("ack");
    let again = js
        .send_publish(
            "old",
            jetstream::message::PublishMessage::build()
                .message_id("id-1")
                .payload("a".into()),
        )
        .await
        .expect("pub")
        .await
        .expect("ack");
    assert!(again.duplicate);
    assert_eq!(again.sequence, first.sequence);

    // Expected last sequence / stream.
    let err = js
        .send_publish(
            "old",
            jetstream::message::PublishMessage::build()
                .expected_last_sequence(1)
                .payload("x".into()),
        )
        .await
        .expect("pub")
        .await
        .expect_err("wrong last sequence");
    assert!(err.to_string().contains("wrong last sequence"), "{err}");
    let ok = js
        .send_publish(
            "old",
            jetstream::message::PublishMessage::build()
                .expected_last_sequence(first.sequence)
                .payload("x".into()),
        )
        .await
        .expect("pub")
        .await
        .expect("right last sequence");
    assert_eq!(ok.sequence, first.sequence + 1);
    let err = js
        .send_publish(
            "old",
            jetstream::message::PublishMessage::build()
                .expected_stream("OTHER")
                .payload("x".into()),
        )
        .await
        .expect("pub")
        .await
        .expect_err("wrong stream");
    assert!(
        err.to_string().contains("expected stream does not match"),
        "{err}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn max_age_expires_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let js = jetstream::new(crate::common::client(&s).await);
    let mut st = js
        .create_stream(stream::Config {
            name: "AGED".into(),
            subjects: vec!["aged".into()],
            max_age: Duration::from_millis(300),
            duplicate_window: Duration::from_millis(100),
            ..Default::default()
        })
        .await
        .expect("create");
    js.publish("aged", Bytes::from_static(b"x"))
        .await
        .expect("pub")
        .await
        .expect("ack");
    assert_eq!(st.info().await.expect("info").state.messages, 1);
    let mut gone = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if st.info().await.expect("info").state.messages == 0 {
            gone = true;
            break;
        }
    }
    assert!(gone, "message expired by max_age");
    s.shutdown().await;
}

#[tokio::test]
async fn purge_direct_get_and_subjects_filter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let c = crate::common::client(&s).await;
    let js = jetstream::new(c.clone());
    let st = js
        .create_stream(stream::Config {
            name: "KVISH".into(),
            subjects: vec!["kv.>".into()],
            allow_direct: true,
            ..Default::default()
        })
        .await
        .expect("create");
    for (subj, v) in [
        ("kv.a", "1"),
        ("kv.b", "2"),
        ("kv.a", "3"),
        ("kv.c", "4"),
        ("kv.a", "5"),
    ] {
        js.publish(subj, Bytes::from(v))
            .await
            .expect("pub")
            .await
            .expect("ack");
    }
    let m = st
        .direct_get_last_for_subject("kv.a")
        .await
        .expect("direct get");
    assert_eq!(&m.payload[..], b"5");
    assert_eq!(m.sequence, 5);
    let m = st.direct_get(2).await.expect("direct get by seq");
    assert_eq!(m.subject.as_str(), "kv.b");
    let info = api(
        &c,
        "$JS.API.STREAM.INFO.KVISH",
        json!({"subjects_filter": "kv.*"}),
    )
    .await;
    assert_eq!(
        info["state"]["subjects"],
        json!({"kv.a": 3, "kv.b": 1, "kv.c": 1})
    );
    // Purge keeping the newest kv.a only.
    let r = api(
        &c,
        "$JS.API.STREAM.PURGE.KVISH",
        json!({"filter": "kv.a", "keep": 1}),
    )
    .await;
    assert_eq!(r["success"], true);
    assert_eq!(r["purged"], 2);
    let r = api(&c, "$JS.API.STREAM.PURGE.KVISH", Value::Null).await;
    assert_eq!(r["purged"], 3);
    let info = api(&c, "$JS.API.STREAM.INFO.KVISH", Value::Null).await;
    assert_eq!(info["state"]["messages"], 0);
    assert_eq!(
        info["state"]["first_seq"], 6,
        "sequences continue after a purge"
    );
    let m = api(&c, "$JS.API.STREAM.MSG.GET.KVISH", json!({"seq": 1})).await;
    assert_eq!(err_code(&m), 10037);
    s.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_nats_error_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let c = crate::common::client(&s).await;
    let ok = api(
        &c,
        "$JS.API.STREAM.CREATE.A",
        json!({"name": "A", "subjects": ["a.>"]}),
    )
    .await;
    assert_eq!(
        ok["type"],
        "io.nats.jetstream.api.v1.stream_create_response"
    );
    assert_eq!(ok["config"]["retention"], "limits");
    assert_eq!(ok["config"]["duplicate_window"], 120_000_000_000u64);
    let r = c
        .request("$JS.API.STREAM.CREATE.B", Bytes::from_static(b"{not json"))
        .await
        .expect("reply");
    let v: Value = serde_json::from_slice(&r.payload).expect("json");
    assert_eq!(err_code(&v), 10025);
    assert_eq!(
        err_code(
            &api(
                &c,
                "$JS.API.STREAM.CREATE.B",
                json!({"name": "B", "subjects": ["a.b"]})
            )
            .await
        ),
        10065
    );
    assert_eq!(
        err_code(&api(&c, "$JS.API.STREAM.CREATE.B", json!({"name": "C"})).await),
        10056
    );
    assert_eq!(
        err_code(
            &api(
                &c,
                "$JS.API.STREAM.CREATE.R",
                json!({"name": "R", "num_replicas": 3})
            )
            .await
        ),
        10074
    );
    assert_eq!(
        err_code(
            &api(
                &c,
                "$JS.API.STREAM.CREATE.A",
                json!({"name": "A", "subjects": ["other"]})
            )
            .await
        ),
        10058
    );
    let same = api(
        &c,
        "$JS.API.STREAM.CREATE.A",
        json!({"name": "A", "subjects": ["a.>"]}),
    )
    .await;
    assert!(
        same["error"].is_null(),
        "re-creating with the same config succeeds: {same}"
    );
    assert_eq!(
        err_code(&api(&c, "$JS.API.STREAM.INFO.NOPE", Value::Null).await),
        10059
    );
    assert_eq!(
        err_code(&api(&c, "$JS.API.STREAM.MSG.DELETE.A", json!({"seq": 99})).await),
        10057
    );
    // Deny flags.
    api(
        &c,
        "$JS.API.STREAM.CREATE.D",
        json!({"name": "D", "deny_delete": true, "deny_purge": true}),
    )
    .await;
    assert_eq!(
        err_code(&api(&c, "$JS.API.STREAM.PURGE.D", Value::Null).await),
        10110
    );
    assert_eq!(
        err_code(&api(&c, "$JS.API.STREAM.MSG.DELETE.D", json!({"seq": 1})).await),
        10057
    );
    // A sealed stream refuses publishes.
    api(
        &c,
        "$JS.API.STREAM.CREATE.S",
        json!({"name": "S", "subjects": ["sealed"]}),
    )
    .await;
    let sealed = api(
        &c,
        "$JS.API.STREAM.UPDATE.S",
        json!({"name": "S", "subjects": ["sealed"], "sealed": true}),
    )
    .await;
    assert_eq!(sealed["config"]["sealed"], true);
    let r = c
        .request("sealed", Bytes::from_static(b"x"))
        .await
        .expect("reply");
    let v: Value = serde_json::from_slice(&r.payload).expect("json");
    assert_eq!(err_code(&v), 10109);
    // Other streams were not disturbed.
    let info = api(&c, "$JS.API.STREAM.INFO.A", Value::Null).await;
    assert_eq!(info["config"]["subjects"], json!(["a.>"]));
    s.shutdown().await;
}

#[tokio::test]
async fn streams_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = crate::common::start(crate::common::js_opts(dir.path())).await;
        let js = jetstream::new(crate::common::client(&s).await);
        js.create_stream(stream::Config {
            name: "KEEP".into(),
            subjects: vec!["keep.>".into()],
            ..Default::default()
        })
        .await
        .expect("create");
        for i in 0..100 {
            js.publish(format!("keep.{}", i % 7), Bytes::from(format!("m{i}")))
                .await
                .expect("pub")
                .await
                .expect("ack");
        }
        s.shutdown().await;
    }
    let s: Server = crate::common::start(crate::common::js_opts(dir.path())).await;
    let js = jetstream::new(crate::common::client(&s).await);
    let mut st = js.get_stream("KEEP").await.expect("stream recovered");
    let info = st.info().await.expect("info");
    assert_eq!(info.state.messages, 100);
    assert_eq!(info.state.last_sequence, 100);
    let m = st.get_raw_message(42).await.expect("message 42");
    assert_eq!(&m.payload[..], b"m41");
    let ack = js
        .publish("keep.x", Bytes::from_static(b"after"))
        .await
        .expect("pub")
        .await
        .expect("ack");
    assert_eq!(ack.sequence, 101, "sequences continue after restart");
    s.shutdown().await;
}

#[tokio::test]
async fn per_account_enablement_and_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("js.conf");
    std::fs::write(
        &conf,
        format!(
            "jetstream {{ store_dir: {:?} }}\naccounts {{\n  A: {{ jetstream: {{ max_file: 1MB, max_streams: 2, max_bytes_required: true }}, users: [{{user: a, password: a}}] }}\n  B: {{ users: [{{user: b, password: b}}] }}\n}}\n",
            dir.path().join("store").display().to_string()
        ),
    )
    .expect("write");
    let (mut o, warnings) = Options::from_file(&conf).expect("loads");
    assert!(warnings.is_empty(), "{warnings:?}");
    o.port = -1;
    o.host = "127.0.0.1".into();
    let s = crate::common::start(o).await;
    let login = |u: &'static str| {
        let url = s.client_url();
        async move {
            async_nats::ConnectOptions::with_user_and_password(u.into(), u.into())
                .connect(url)
                .await
                .expect("login")
        }
    };
    let a = login("a").await;
    let info = api(&a, "$JS.API.INFO", Value::Null).await;
    assert_eq!(info["limits"]["max_storage"], 1024 * 1024);
    assert_eq!(info["limits"]["max_streams"], 2);
    assert_eq!(info["limits"]["max_bytes_required"], true);
    assert_eq!(
        err_code(&api(&a, "$JS.API.STREAM.CREATE.S1", json!({"name": "S1"})).await),
        10113
    );
    let ok = api(
        &a,
        "$JS.API.STREAM.CREATE.S1",
        json!({"name": "S1", "max_bytes": 600_000}),
    )
    .await;
    assert!(ok["error"].is_null(), "{ok}");
    assert_eq!(
        err_code(
            &api(
                &a,
                "$JS.API.STREAM.CREATE.S2",
                json!({"name": "S2", "max_bytes": 600_000})
            )
            .await
        ),
        10047
    );
    let ok = api(
        &a,
        "$JS.API.STREAM.CREATE.S2",
        json!({"name": "S2", "max_bytes": 300_000}),
    )
    .await;
    assert!(ok["error"].is_null(), "{ok}");
    assert_eq!(
        err_code(
            &api(
                &a,
                "$JS.API.STREAM.CREATE.S3",
                json!({"name": "S3", "max_bytes": 10})
            )
            .await
        ),
        10027
    );
    // B has no JetStream: nobody answers its API requests.
    let b = login("b").await;
    let err = b
        .request("$JS.API.INFO", Bytes::new())
        .await
        .expect_err("not enabled");
    assert_eq!(
        err.kind(),
        async_nats::client::RequestErrorKind::NoResponders
    );
    s.shutdown().await;
}

#[tokio::test]
async fn lazy_sync_interval_acks_on_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut o = crate::common::js_opts(dir.path());
    if let Some(js) = o.jetstream.as_mut() {
        js.sync = natrium_store::SyncPolicy::Interval(Duration::from_secs(120));
    }
    let s = crate::common::start(o).await;
    let js = jetstream::new(crate::common::client(&s).await);
    js.create_stream(stream::Config {
        name: "LAZY".into(),
        subjects: vec!["lazy".into()],
        ..Default::default()
    })
    .await
    .expect("create");
    let started = std::time::Instant::now();
    for _ in 0..10 {
        js.publish("lazy", Bytes::from_static(b"x"))
            .await
            .expect("pub")
            .await
            .expect("ack");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "in lazy mode the PubAck does not wait for the 2-minute sync"
    );
    s.shutdown().await;
}
