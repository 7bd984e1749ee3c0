//! The 2.12 publish features through real sockets: counters (`allow_msg_counter`,
//! `Nats-Incr`, the PubAck's `val`), atomic batches (`allow_atomic`, `Nats-Batch-*`), message
//! schedules (`allow_msg_schedules`, `Nats-Schedule: @at`) and `persist_mode`, with
//! nats-server's errors.

use std::time::Duration;

use crate::common::api;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use serde_json::{json, Value};

/// Publishes with headers as a request (5 s to answer); the reply's JSON (or `Null`).
async fn request(
    c: &async_nats::Client,
    subject: &str,
    hdrs: &[(&str, &str)],
    body: &str,
) -> Value {
    crate::common::request_with_headers(c, subject, hdrs, body, Duration::from_secs(5)).await
}

#[tokio::test]
async fn counters_add_up_and_answer_their_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let c = crate::common::client(&s).await;
    let js = jetstream::new(c.clone());
    let st = js
        .create_stream(stream::Config {
            name: "C".into(),
            subjects: vec!["cnt.>".into()],
            allow_message_counter: true,
            ..Default::default()
        })
        .await
        .expect("create");
    let a = request(&c, "cnt.a", &[("Nats-Incr", "5")], "").await;
    assert_eq!(a, json!({"stream": "C", "seq": 1, "val": "5"}));
    let a = request(&c, "cnt.a", &[("Nats-Incr", "+3")], "").await;
    assert_eq!(a["val"], "8");
    let a = request(&c, "cnt.a", &[("Nats-Incr", "-10")], "").await;
    assert_eq!(a["val"], "-2");
    let a = request(&c, "cnt.b", &[("Nats-Incr", "1")], "").await;
    assert_eq!(a["val"], "1", "each subject counts alone");
    let m = st
        .get_last_raw_message_by_subject("cnt.a")
        .await
        .expect("get");
    assert_eq!(&m.payload[..], br#"{"val":"-2"}"#);

    let err = |v: Value| v["error"]["err_code"].as_u64().unwrap_or(0);
    assert_eq!(
        err(request(&c, "cnt.a", &[("Nats-Incr", "1")], "body").await),
        10170
    );
    assert_eq!(err(request(&c, "cnt.a", &[], "").await), 10169);
    assert_eq!(
        err(request(&c, "cnt.a", &[("Nats-Incr", "x1")], "").await),
        10171
    );
    assert_eq!(
        err(request(
            &c,
            "cnt.a",
            &[("Nats-Incr", "1"), ("Nats-Expected-Stream", "C")],
            ""
        )
        .await),
        10171
    );
    js.create_stream(stream::Config {
        name: "P".into(),
        subjects: vec!["plain.>".into()],
        ..Default::default()
    })
    .await
    .expect("create");
    assert_eq!(
        err(request(&c, "plain.a", &[("Nats-Incr", "1")], "").await),
        10168
    );
    let bad = api(
        &c,
        "$JS.API.STREAM.CREATE.BAD",
        json!({"name": "BAD", "allow_msg_counter": true, "allow_msg_ttl": true}),
    )
    .await;
    assert_eq!(
        bad["error"]["description"],
        "counter stream cannot use message TTLs"
    );
    // The counter setting can not change.
    let upd = api(
        &c,
        "$JS.API.STREAM.UPDATE.C",
        json!({"name": "C", "subjects": ["cnt.>"]}),
    )
    .await;
    assert_eq!(
        upd["error"]["description"],
        "stream configuration update can not change message counter setting"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn atomic_batches_store_all_or_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let c = crate::common::client(&s).await;
    let js = jetstream::new(c.clone());
    js.create_stream(stream::Config {
        name: "B".into(),
        subjects: vec!["b.>".into()],
        allow_atomic_publish: true,
        ..Default::default()
    })
    .await
    .expect("create");
    let staged = request(
        &c,
        "b.1",
        &[("Nats-Batch-Id", "x"), ("Nats-Batch-Sequence", "1")],
        "1",
    )
    .await;
    assert_eq!(staged, Value::Null, "a staged message gets an empty reply");
    request(
        &c,
        "b.2",
        &[("Nats-Batch-Id", "x"), ("Nats-Batch-Sequence", "2")],
        "2",
    )
    .await;
    let count = |c: async_nats::Client| async move {
        api(&c, "$JS.API.STREAM.INFO.B", Value::Null).await["state"]["messages"].clone()
    };
    assert_eq!(
        count(c.clone()).await,
        0,
        "nothing stored before the commit"
    );
    let ack = request(
        &c,
        "b.3",
        &[
            ("Nats-Batch-Id", "x"),
            ("Nats-Batch-Sequence", "3"),
            ("Nats-Batch-Commit", "1"),
        ],
        "3",
    )
    .await;
    assert_eq!(
        ack,
        json!({"stream": "B", "seq": 3, "batch": "x", "count": 3})
    );
    assert_eq!(count(c.clone()).await, 3);

    // A batch whose check fails stores nothing; one with a gap is incomplete.
    request(
        &c,
        "b.4",
        &[("Nats-Batch-Id", "y"), ("Nats-Batch-Sequence", "1")],
        "",
    )
    .await;
    let failed = request(
        &c,
        "b.5",
        &[
            ("Nats-Batch-Id", "y"),
            ("Nats-Batch-Sequence", "2"),
            ("Nats-Batch-Commit", "1"),
            ("Nats-Expected-Last-Sequence", "99"),
        ],
        "",
    )
    .await;
    assert_eq!(failed["error"]["err_code"], 10071, "{failed}");
    assert_eq!(count(c.clone()).await, 3);
    // Expected last sequence inside a batch counts the batch's earlier messages.
    request(
        &c,
        "b.6",
        &[("Nats-Batch-Id", "z"), ("Nats-Batch-Sequence", "1")],
        "",
    )
    .await;
    let ok = request(
        &c,
        "b.7",
        &[
            ("Nats-Batch-Id", "z"),
            ("Nats-Batch-Sequence", "2"),
            ("Nats-Batch-Commit", "1"),
            ("Nats-Expected-Last-Sequence", "4"),
        ],
        "",
    )
    .await;
    assert_eq!(ok["seq"], 5, "{ok}");
    let gap = request(
        &c,
        "b.8",
        &[("Nats-Batch-Id", "w"), ("Nats-Batch-Sequence", "2")],
        "",
    )
    .await;
    assert_eq!(gap["error"]["err_code"], 10176, "{gap}");
    let no_seq = request(&c, "b.8", &[("Nats-Batch-Id", "w")], "").await;
    assert_eq!(no_seq["error"]["err_code"], 10175, "{no_seq}");
    let bad_commit = request(
        &c,
        "b.8",
        &[
            ("Nats-Batch-Id", "v"),
            ("Nats-Batch-Sequence", "1"),
            ("Nats-Batch-Commit", "yes"),
        ],
        "",
    )
    .await;
    assert_eq!(bad_commit["error"]["err_code"], 10200, "{bad_commit}");

    js.create_stream(stream::Config {
        name: "NB".into(),
        subjects: vec!["nb.>".into()],
        ..Default::default()
    })
    .await
    .expect("create");
    let off = request(
        &c,
        "nb.1",
        &[("Nats-Batch-Id", "x"), ("Nats-Batch-Sequence", "1")],
        "",
    )
    .await;
    assert_eq!(off["error"]["err_code"], 10174, "{off}");
    s.shutdown().await;
}

#[tokio::test]
async fn scheduled_messages_are_published_on_their_target_at_their_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let c = crate::common::client(&s).await;
    let js = jetstream::new(c.clone());
    let st = js
        .create_stream(stream::Config {
            name: "S".into(),
            subjects: vec!["sched.>".into(), "target.>".into()],
            allow_message_schedules: true,
            allow_message_ttl: true,
            ..Default::default()
        })
        .await
        .expect("create");
    let pattern = crate::common::schedule_at(1);
    let ack = request(
        &c,
        "sched.a",
        &[
            ("Nats-Schedule", &pattern),
            ("Nats-Schedule-Target", "target.a"),
            ("Nats-Schedule-TTL", "1h"),
            ("X-Mine", "kept"),
        ],
        "later",
    )
    .await;
    assert_eq!(ack["seq"], 1, "{ack}");
    let mut fired = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(m) = st.get_last_raw_message_by_subject("target.a").await {
            fired = Some(m);
            break;
        }
    }
    let m = fired.expect("the schedule fired");
    assert_eq!(&m.payload[..], b"later");
    assert_eq!(
        m.headers.get("Nats-Scheduler").map(|v| v.as_str()),
        Some("sched.a")
    );
    assert_eq!(m.headers.get("Nats-TTL").map(|v| v.as_str()), Some("1h"));
    assert_eq!(m.headers.get("X-Mine").map(|v| v.as_str()), Some("kept"));
    assert!(m.headers.get("Nats-Schedule").is_none());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        st.get_last_raw_message_by_subject("sched.a").await.is_err(),
        "the schedule itself is purged once it fired"
    );
    let err = |v: Value| v["error"]["err_code"].as_u64().unwrap_or(0);
    assert_eq!(
        err(request(
            &c,
            "sched.b",
            &[
                ("Nats-Schedule", "@every 1s"),
                ("Nats-Schedule-Target", "target.b")
            ],
            ""
        )
        .await),
        10189
    );
    assert_eq!(
        err(request(
            &c,
            "sched.b",
            &[
                ("Nats-Schedule", &pattern),
                ("Nats-Schedule-Target", "elsewhere")
            ],
            ""
        )
        .await),
        10190
    );
    assert_eq!(
        err(request(
            &c,
            "sched.b",
            &[
                ("Nats-Schedule", &pattern),
                ("Nats-Schedule-Target", "sched.b")
            ],
            ""
        )
        .await),
        10190,
        "a schedule may not target itself"
    );
    js.create_stream(stream::Config {
        name: "NS".into(),
        subjects: vec!["ns.>".into()],
        ..Default::default()
    })
    .await
    .expect("create");
    assert_eq!(
        err(request(
            &c,
            "ns.a",
            &[
                ("Nats-Schedule", &pattern),
                ("Nats-Schedule-Target", "ns.b")
            ],
            ""
        )
        .await),
        10188
    );
    s.shutdown().await;
}

#[tokio::test]
async fn persist_mode_round_trips_and_is_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let c = crate::common::client(&s).await;
    let js = jetstream::new(c.clone());
    let mut st = js
        .create_stream(stream::Config {
            name: "A".into(),
            subjects: vec!["a.>".into()],
            persist_mode: Some(stream::PersistenceMode::Async),
            ..Default::default()
        })
        .await
        .expect("create");
    let info = st.info().await.expect("info");
    assert_eq!(
        info.config.persist_mode,
        Some(stream::PersistenceMode::Async)
    );
    let ack = js
        .publish("a.1", Bytes::from_static(b"1"))
        .await
        .expect("pub")
        .await
        .expect("ack");
    assert_eq!(ack.sequence, 1);
    let mem = api(
        &c,
        "$JS.API.STREAM.CREATE.M",
        json!({"name": "M", "storage": "memory", "persist_mode": "async"}),
    )
    .await;
    assert_eq!(
        mem["error"]["description"],
        "async persist mode is only supported on file storage"
    );
    let upd = api(
        &c,
        "$JS.API.STREAM.UPDATE.A",
        json!({"name": "A", "subjects": ["a.>"]}),
    )
    .await;
    assert_eq!(
        upd["error"]["description"],
        "stream configuration update can not change persist mode"
    );
    s.shutdown().await;
}
