//! JetStream consumers through async-nats: pull and push, ack policies, redelivery with ack_wait
//! and backoff, max_deliver with native dead-letter queues, deliver policies, ordered consumers,
//! work-queue and interest retention, restart, and nats-server's error codes.

use std::time::Duration;

use crate::common::api;
use async_nats::jetstream::consumer::{pull, push, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, stream, AckKind};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};

async fn publish_n(js: &jetstream::Context, subject: &str, n: usize) {
    for i in 0..n {
        js.publish(subject.to_string(), Bytes::from(format!("m{i}")))
            .await
            .expect("pub")
            .await
            .expect("ack");
    }
}

/// A pull that waits up to `wait` for `n` messages.
async fn pull_wait(
    c: &jetstream::consumer::Consumer<pull::Config>,
    n: usize,
    wait: Duration,
) -> Vec<jetstream::Message> {
    let mut msgs = c
        .batch()
        .max_messages(n)
        .expires(wait)
        .messages()
        .await
        .expect("batch");
    let mut out = Vec::new();
    while let Some(m) = msgs.next().await {
        out.push(m.expect("message"));
    }
    out
}

/// A pull that returns at once with what is available (no_wait).
async fn fetch(
    c: &jetstream::consumer::Consumer<pull::Config>,
    n: usize,
) -> Vec<jetstream::Message> {
    let mut msgs = c
        .fetch()
        .max_messages(n)
        .expires(Duration::from_millis(500))
        .messages()
        .await
        .expect("fetch");
    let mut out = Vec::new();
    while let Some(m) = msgs.next().await {
        out.push(m.expect("message"));
    }
    out
}

#[tokio::test]
async fn pull_consumer_explicit_ack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let js = jetstream::new(crate::common::client(&s).await);
    let st = js
        .create_stream(stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["orders.*".into()],
            ..Default::default()
        })
        .await
        .expect("stream");
    publish_n(&js, "orders.new", 10).await;
    let mut c = st
        .create_consumer(pull::Config {
            durable_name: Some("worker".into()),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let first = fetch(&c, 4).await;
    assert_eq!(first.len(), 4);
    for (i, m) in first.iter().enumerate() {
        assert_eq!(
            m.subject.as_str(),
            "orders.new",
            "the stored subject, not the inbox"
        );
        assert_eq!(&m.payload[..], format!("m{i}").as_bytes());
        let info = m.info().expect("ack metadata");
        assert_eq!(info.stream, "ORDERS");
        assert_eq!(info.consumer, "worker");
        assert_eq!(info.stream_sequence, i as u64 + 1);
        assert_eq!(info.delivered, 1);
        assert_eq!(info.pending, 10 - 1 - i as u64);
        m.ack().await.expect("ack");
    }
    let rest = fetch(&c, 100).await;
    assert_eq!(rest.len(), 6);
    for m in &rest {
        m.double_ack().await.expect("acked and confirmed");
    }
    let info = c.info().await.expect("info").clone();
    assert_eq!(info.delivered.stream_sequence, 10);
    assert_eq!(info.ack_floor.stream_sequence, 10);
    assert_eq!(info.num_ack_pending, 0);
    assert_eq!(info.num_pending, 0);
    // Nothing left: a no-wait fetch ends at once.
    assert!(fetch(&c, 5).await.is_empty());
    s.shutdown().await;
}

#[tokio::test]
async fn redelivery_nak_term_and_max_deliver_to_dead_letter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let client = crate::common::client(&s).await;
    let js = jetstream::new(client.clone());
    let st = js
        .create_stream(stream::Config {
            name: "EVENTS".into(),
            subjects: vec!["streamspace.app.>".into(), "streamspace.session.>".into()],
            ..Default::default()
        })
        .await
        .expect("stream");
    let mut dlq = js
        .create_stream(stream::Config {
            name: "DLQ".into(),
            subjects: vec!["streamspace.dlq.>".into()],
            ..Default::default()
        })
        .await
        .expect("dlq stream");
    let c = st
        .create_consumer(pull::Config {
            durable_name: Some("installer".into()),
            ack_wait: Duration::from_millis(200),
            max_deliver: 3,
            backoff: vec![Duration::from_millis(100), Duration::from_millis(200)],
            metadata: [(
                "dead_letter_subject".to_string(),
                "streamspace.dlq.{subject}".to_string(),
            )]
            .into(),
            ..Default::default()
        })
        .await
        .expect("consumer");
    js.publish(
        "streamspace.app.install",
        Bytes::from_static(b"install firefox"),
    )
    .await
    .expect("pub")
    .await
    .expect("ack");
    // Never acked: delivered max_deliver times, with growing delivery counts.
    let mut counts = Vec::new();
    for _ in 0..20 {
        for m in pull_wait(&c, 1, Duration::from_millis(400)).await {
            counts.push(m.info().expect("info").delivered);
        }
        if counts.len() == 3 {
            break;
        }
    }
    assert_eq!(counts, vec![1, 2, 3]);
    // Then it goes to the dead-letter subject, which the DLQ stream keeps.
    let mut dead = None;
    for _ in 0..50 {
        if dlq.info().await.expect("info").state.messages == 1 {
            dead = Some(dlq.get_raw_message(1).await.expect("dead letter"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead = dead.expect("dead-lettered after max_deliver");
    assert_eq!(
        dead.subject.as_str(),
        "streamspace.dlq.streamspace.app.install"
    );
    assert_eq!(&dead.payload[..], b"install firefox");
    let h = dead.headers;
    assert_eq!(h.get("Nats-DLQ-Stream").map(|v| v.as_str()), Some("EVENTS"));
    assert_eq!(
        h.get("Nats-DLQ-Consumer").map(|v| v.as_str()),
        Some("installer")
    );
    assert_eq!(h.get("Nats-DLQ-Sequence").map(|v| v.as_str()), Some("1"));
    assert_eq!(h.get("Nats-DLQ-Deliveries").map(|v| v.as_str()), Some("3"));
    assert_eq!(
        h.get("Nats-DLQ-Reason").map(|v| v.as_str()),
        Some("max_deliveries")
    );
    assert!(
        pull_wait(&c, 1, Duration::from_millis(600))
            .await
            .is_empty(),
        "no fourth delivery"
    );

    // NAK redelivers at once; TERM dead-letters with the reason.
    js.publish("streamspace.session.create", Bytes::from_static(b"s1"))
        .await
        .expect("pub")
        .await
        .expect("ack");
    let m = fetch(&c, 1).await.pop().expect("delivered");
    m.ack_with(AckKind::Nak(None)).await.expect("nak");
    let again = pull_wait(&c, 1, Duration::from_secs(2))
        .await
        .pop()
        .expect("redelivered after nak");
    assert_eq!(again.info().expect("info").delivered, 2);
    again.ack_with(AckKind::Term).await.expect("term");
    let mut reason = None;
    for _ in 0..50 {
        if dlq.info().await.expect("info").state.messages == 2 {
            let d = dlq.get_raw_message(2).await.expect("second dead letter");
            reason = d
                .headers
                .get("Nats-DLQ-Reason")
                .map(|v| v.as_str().to_string());
            assert_eq!(
                d.subject.as_str(),
                "streamspace.dlq.streamspace.session.create"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reason.as_deref(), Some("terminated"));
    s.shutdown().await;
}

#[tokio::test]
async fn push_consumers_and_queue_groups() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let js = jetstream::new(crate::common::client(&s).await);
    let st = js
        .create_stream(stream::Config {
            name: "PUSH".into(),
            subjects: vec!["push.>".into()],
            ..Default::default()
        })
        .await
        .expect("stream");
    publish_n(&js, "push.a", 5).await;
    let c = st
        .create_consumer(push::Config {
            durable_name: Some("pusher".into()),
            deliver_subject: "deliver.pusher".into(),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("push consumer");
    let mut msgs = c.messages().await.expect("messages");
    for i in 0..5 {
        let m = tokio::time::timeout(Duration::from_secs(5), msgs.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("message");
        assert_eq!(&m.payload[..], format!("m{i}").as_bytes());
        m.ack().await.expect("ack");
    }
    // New messages flow to the bound push consumer too.
    js.publish("push.b", Bytes::from_static(b"live"))
        .await
        .expect("pub")
        .await
        .expect("ack");
    let m = tokio::time::timeout(Duration::from_secs(5), msgs.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("message");
    assert_eq!(&m.payload[..], b"live");
    m.ack().await.expect("ack");
    s.shutdown().await;
}

#[tokio::test]
async fn deliver_policies_and_ordered_consumer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let js = jetstream::new(crate::common::client(&s).await);
    let st = js
        .create_stream(stream::Config {
            name: "POL".into(),
            subjects: vec!["pol.*".into()],
            ..Default::default()
        })
        .await
        .expect("stream");
    for (subj, v) in [
        ("pol.a", "a1"),
        ("pol.b", "b1"),
        ("pol.a", "a2"),
        ("pol.c", "c1"),
        ("pol.b", "b2"),
    ] {
        js.publish(subj, Bytes::from(v))
            .await
            .expect("pub")
            .await
            .expect("ack");
    }
    let payloads = |msgs: Vec<jetstream::Message>| -> Vec<String> {
        msgs.iter()
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            .collect()
    };
    let mk = |name: &str, policy: DeliverPolicy| pull::Config {
        durable_name: Some(name.into()),
        deliver_policy: policy,
        ack_policy: AckPolicy::None,
        ..Default::default()
    };
    let last = st
        .create_consumer(mk("last", DeliverPolicy::Last))
        .await
        .expect("last");
    assert_eq!(payloads(fetch(&last, 10).await), vec!["b2"]);
    let by_seq = st
        .create_consumer(mk(
            "byseq",
            DeliverPolicy::ByStartSequence { start_sequence: 3 },
        ))
        .await
        .expect("by seq");
    assert_eq!(payloads(fetch(&by_seq, 10).await), vec!["a2", "c1", "b2"]);
    let lps = st
        .create_consumer(mk("lps", DeliverPolicy::LastPerSubject))
        .await
        .expect("last per subject");
    assert_eq!(payloads(fetch(&lps, 10).await), vec!["a2", "c1", "b2"]);
    let new = st
        .create_consumer(mk("new", DeliverPolicy::New))
        .await
        .expect("new");
    assert!(fetch(&new, 10).await.is_empty());
    js.publish("pol.d", Bytes::from_static(b"d1"))
        .await
        .expect("pub")
        .await
        .expect("ack");
    assert_eq!(payloads(fetch(&new, 10).await), vec!["d1"]);
    let filtered = st
        .create_consumer(pull::Config {
            durable_name: Some("only_a".into()),
            filter_subject: "pol.a".into(),
            ..Default::default()
        })
        .await
        .expect("filtered");
    assert_eq!(payloads(fetch(&filtered, 10).await), vec!["a1", "a2"]);

    // The client's ordered consumer reads everything in order.
    let ordered = st
        .create_consumer(pull::OrderedConfig::default())
        .await
        .expect("ordered consumer");
    let mut msgs = ordered.messages().await.expect("messages");
    let mut got = Vec::new();
    while got.len() < 6 {
        let m = tokio::time::timeout(Duration::from_secs(5), msgs.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("message");
        got.push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    assert_eq!(got, vec!["a1", "b1", "a2", "c1", "b2", "d1"]);
    s.shutdown().await;
}

#[tokio::test]
async fn work_queue_and_interest_retention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let client = crate::common::client(&s).await;
    let js = jetstream::new(client.clone());
    let mut wq = js
        .create_stream(stream::Config {
            name: "JOBS".into(),
            subjects: vec!["jobs.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .expect("work queue");
    publish_n(&js, "jobs.email", 4).await;
    let workers = wq
        .create_consumer(pull::Config {
            durable_name: Some("workers".into()),
            ..Default::default()
        })
        .await
        .expect("consumer");
    for m in fetch(&workers, 3).await {
        m.double_ack().await.expect("ack");
    }
    assert_eq!(
        wq.info().await.expect("info").state.messages,
        1,
        "acked work is removed"
    );
    // A second unfiltered consumer on a work queue is refused.
    let v = api(
        &client,
        "$JS.API.CONSUMER.CREATE.JOBS.second",
        json!({"stream_name": "JOBS", "config": {"name": "second", "ack_policy": "explicit"}}),
    )
    .await;
    assert_eq!(v["error"]["err_code"], 10099);

    let mut interest = js
        .create_stream(stream::Config {
            name: "FANOUT".into(),
            subjects: vec!["fan.>".into()],
            retention: stream::RetentionPolicy::Interest,
            ..Default::default()
        })
        .await
        .expect("interest stream");
    let a = interest
        .create_consumer(pull::Config {
            durable_name: Some("a".into()),
            ..Default::default()
        })
        .await
        .expect("a");
    let b = interest
        .create_consumer(pull::Config {
            durable_name: Some("b".into()),
            ..Default::default()
        })
        .await
        .expect("b");
    publish_n(&js, "fan.x", 2).await;
    for m in fetch(&a, 2).await {
        m.double_ack().await.expect("ack");
    }
    assert_eq!(
        interest.info().await.expect("info").state.messages,
        2,
        "b still needs them"
    );
    for m in fetch(&b, 2).await {
        m.double_ack().await.expect("ack");
    }
    assert_eq!(
        interest.info().await.expect("info").state.messages,
        0,
        "everyone acked"
    );
    // Deleting a consumer releases what only it still needed.
    publish_n(&js, "fan.y", 3).await;
    for m in fetch(&a, 3).await {
        m.double_ack().await.expect("ack");
    }
    assert_eq!(interest.info().await.expect("info").state.messages, 3);
    interest.delete_consumer("b").await.expect("delete b");
    assert_eq!(
        interest.info().await.expect("info").state.messages,
        0,
        "nobody left needs them"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn consumer_state_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = crate::common::start(crate::common::js_opts(dir.path())).await;
        let js = jetstream::new(crate::common::client(&s).await);
        let st = js
            .create_stream(stream::Config {
                name: "DUR".into(),
                subjects: vec!["dur".into()],
                ..Default::default()
            })
            .await
            .expect("stream");
        publish_n(&js, "dur", 10).await;
        let c = st
            .create_consumer(pull::Config {
                durable_name: Some("d".into()),
                ..Default::default()
            })
            .await
            .expect("consumer");
        let got = fetch(&c, 6).await;
        for m in &got[..4] {
            m.double_ack().await.expect("ack");
        }
        // Messages 5 and 6 were delivered but not acked.
        s.shutdown().await;
    }
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let js = jetstream::new(crate::common::client(&s).await);
    let st = js.get_stream("DUR").await.expect("stream");
    let mut c: jetstream::consumer::Consumer<pull::Config> =
        st.get_consumer("d").await.expect("consumer recovered");
    let info = c.info().await.expect("info").clone();
    assert_eq!(info.ack_floor.stream_sequence, 4);
    assert_eq!(info.num_ack_pending, 2);
    assert_eq!(info.delivered.stream_sequence, 6);
    // The unacked ones come back (as redeliveries) after ack_wait; new ones continue at 7.
    let next = fetch(&c, 4).await;
    let seqs: Vec<u64> = next
        .iter()
        .map(|m| m.info().expect("info").stream_sequence)
        .collect();
    assert_eq!(seqs, vec![7, 8, 9, 10]);
    assert!(next.iter().all(|m| m.info().expect("info").delivered == 1));
    s.shutdown().await;
}

#[tokio::test]
async fn bad_consumer_requests_get_error_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let c = crate::common::client(&s).await;
    api(
        &c,
        "$JS.API.STREAM.CREATE.S",
        json!({"name": "S", "subjects": ["s.>"]}),
    )
    .await;
    // An empty name is no name: the server makes one up (nats.js sends `"name": ""`).
    let v = api(
        &c,
        "$JS.API.CONSUMER.CREATE.S",
        json!({"stream_name": "S", "config": {"name": "", "durable_name": "", "ack_policy": "none",
               "deliver_subject": "_INBOX.empty.name"}}),
    )
    .await;
    assert!(v["error"].is_null(), "{v}");
    assert_eq!(v["name"].as_str().map(str::len), Some(8), "{v}");
    let made_up = v["name"].as_str().unwrap_or_default();
    let v = api(
        &c,
        &format!("$JS.API.CONSUMER.DELETE.S.{made_up}"),
        Value::Null,
    )
    .await;
    assert_eq!(v["success"], true, "{v}");
    let code = |v: Value| {
        v["error"]["err_code"]
            .as_u64()
            .unwrap_or_else(|| panic!("expected error: {v}"))
    };
    assert_eq!(
        code(api(&c, "$JS.API.CONSUMER.INFO.S.nope", json!({})).await),
        10014
    );
    assert_eq!(
        code(api(&c, "$JS.API.CONSUMER.CREATE.NOPE.x", json!({"config": {}})).await),
        10059
    );
    assert_eq!(
        code(
            api(
                &c,
                "$JS.API.CONSUMER.CREATE.S.x",
                json!({"config": {"durable_name": "y"}})
            )
            .await
        ),
        10017
    );
    assert_eq!(
        code(
            api(
                &c,
                "$JS.API.CONSUMER.CREATE.S.x.s.a",
                json!({"config": {"filter_subject": "s.b"}})
            )
            .await
        ),
        10131
    );
    assert_eq!(
        code(
            api(
                &c,
                "$JS.API.CONSUMER.CREATE.S.x",
                json!({"config": {"filter_subject": "other"}})
            )
            .await
        ),
        10093
    );
    assert_eq!(
        code(
            api(
                &c,
                "$JS.API.CONSUMER.CREATE.S.x",
                json!({"config": {"filter_subject": "s.a", "filter_subjects": ["s.b"]}})
            )
            .await
        ),
        10136
    );
    assert_eq!(
        code(
            api(
                &c,
                "$JS.API.CONSUMER.CREATE.S",
                json!({"config": {"durable_name": "a.b"}})
            )
            .await
        ),
        10103
    );
    let ok = api(
        &c,
        "$JS.API.CONSUMER.CREATE.S.x",
        json!({"config": {"ack_policy": "explicit"}, "action": "create"}),
    )
    .await;
    assert_eq!(
        ok["type"],
        "io.nats.jetstream.api.v1.consumer_create_response"
    );
    assert_eq!(ok["name"], "x");
    assert_eq!(ok["config"]["ack_wait"], 30_000_000_000u64);
    assert_eq!(
        code(
            api(
                &c,
                "$JS.API.CONSUMER.CREATE.S.x",
                json!({"config": {"ack_policy": "none"}, "action": "create"})
            )
            .await
        ),
        10148
    );
    assert_eq!(
        code(
            api(
                &c,
                "$JS.API.CONSUMER.CREATE.S.y",
                json!({"config": {}, "action": "update"})
            )
            .await
        ),
        10149
    );
    let bad = c
        .request("$JS.API.CONSUMER.CREATE.S.z", Bytes::from_static(b"{oops"))
        .await
        .expect("reply");
    let v: Value = serde_json::from_slice(&bad.payload).expect("json");
    assert_eq!(code(v), 10025);
    let names = api(&c, "$JS.API.CONSUMER.NAMES.S", json!({})).await;
    assert_eq!(names["consumers"], json!(["x"]));
    let del = api(&c, "$JS.API.CONSUMER.DELETE.S.x", json!({})).await;
    assert_eq!(del["success"], true);
    s.shutdown().await;
}

/// async-nats's `messages()` pulls again when a request expires: the 408 says how much of the
/// batch was left (`Nats-Pending-Messages`, as nats-server says it), the client counts its
/// outstanding batch down by that and sends a new request. With a 408 that says 0 the client
/// kept waiting on the expired request: no new request, "missed idle heartbeat" errors, and
/// messages published later never arrived.
#[tokio::test]
async fn pull_stream_keeps_pulling_across_expired_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let js = jetstream::new(crate::common::client(&s).await);
    let st = js
        .create_stream(stream::Config {
            name: "IDLE".into(),
            subjects: vec!["idle.>".into()],
            ..Default::default()
        })
        .await
        .expect("stream");
    let c = st
        .create_consumer(pull::Config {
            durable_name: Some("svc".into()),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut msgs = c
        .stream()
        .expires(Duration::from_millis(400))
        .heartbeat(Duration::from_millis(100))
        .messages()
        .await
        .expect("messages");
    // Idle across several expiries: nothing but a heartbeat error would arrive.
    let idle = tokio::time::timeout(Duration::from_millis(1_500), msgs.next()).await;
    assert!(idle.is_err(), "nothing expected while idle, got {idle:?}");
    publish_n(&js, "idle.x", 1).await;
    let m = tokio::time::timeout(Duration::from_secs(5), msgs.next())
        .await
        .expect("the message arrives on a fresh pull request")
        .expect("stream open")
        .expect("a message, not an error");
    assert_eq!(&m.payload[..], b"m0");
    m.ack().await.expect("ack");
}
