//! Pull consumers and acks exactly as nats-server answers them, through async-nats and raw
//! `$JS.API` requests: requests whose client went away are dropped, every sync ack is answered,
//! expiry and request limits answer with nats-server's statuses, fetch heartbeats, priority
//! groups (pinned client, overflow, prioritized), consumer reset, `last_active`, and streams
//! created from `{}` or `[]` refused.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::common::{api, client, js_opts, start};

async fn setup(s: &natrium::Server, consumer: Value) -> (async_nats::Client, jetstream::Context) {
    let nc = client(s).await;
    let js = jetstream::new(nc.clone());
    js.create_stream(stream::Config {
        name: "S".into(),
        subjects: vec!["s.>".into()],
        ..Default::default()
    })
    .await
    .expect("stream");
    let r = api(
        &nc,
        "$JS.API.CONSUMER.CREATE.S.C",
        json!({"stream_name": "S", "config": consumer}),
    )
    .await;
    assert!(r.get("error").is_none(), "consumer create: {r}");
    (nc, js)
}

async fn publish(js: &jetstream::Context, n: usize) {
    for i in 0..n {
        js.publish("s.a", Bytes::from(format!("m{i}")))
            .await
            .expect("publish")
            .await
            .expect("puback");
    }
}

/// What a pull request's inbox receives within `wait` (at most `max` messages): each message
/// as (status code or "msg", payload, headers).
struct Reply {
    status: Option<String>,
    description: Option<String>,
    payload: Bytes,
    headers: Option<HeaderMap>,
    reply: Option<String>,
}

async fn pull_raw(
    nc: &async_nats::Client,
    body: &str,
    max: usize,
    wait: Duration,
) -> (async_nats::Subscriber, Vec<Reply>) {
    let inbox = nc.new_inbox();
    let mut sub = nc.subscribe(inbox.clone()).await.expect("subscribe");
    nc.publish_with_reply(
        "$JS.API.CONSUMER.MSG.NEXT.S.C",
        inbox,
        Bytes::from(body.to_string()),
    )
    .await
    .expect("request");
    let got = collect(&mut sub, max, wait).await;
    (sub, got)
}

async fn collect(sub: &mut async_nats::Subscriber, max: usize, wait: Duration) -> Vec<Reply> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while out.len() < max {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(m)) => out.push(Reply {
                status: m.status.map(|s| s.as_u16().to_string()),
                description: m.description.clone(),
                payload: m.payload.clone(),
                headers: m.headers.clone(),
                reply: m.reply.as_ref().map(|r| r.to_string()),
            }),
            _ => break,
        }
    }
    out
}

fn status_of(r: &Reply) -> String {
    format!(
        "{} {}",
        r.status.as_deref().unwrap_or("msg"),
        r.description.as_deref().unwrap_or("")
    )
    .trim()
    .to_string()
}

fn header(r: &Reply, name: &str) -> Option<String> {
    r.headers
        .as_ref()?
        .get(name)
        .map(|v| v.as_str().to_string())
}

#[tokio::test]
async fn requests_of_a_client_that_went_away_are_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(js_opts(dir.path())).await;
    let (nc, js) = setup(&s, json!({"durable_name": "C"})).await;
    // A worker asks for 3 messages with a long expiry, then goes away.
    let gone = client(&s).await;
    let inbox = gone.new_inbox();
    let sub = gone.subscribe(inbox.clone()).await.expect("subscribe");
    gone.publish_with_reply(
        "$JS.API.CONSUMER.MSG.NEXT.S.C",
        inbox,
        Bytes::from(r#"{"batch":3,"expires":30000000000}"#),
    )
    .await
    .expect("request");
    gone.flush().await.expect("flush");
    let mut waiting = Value::Null;
    for _ in 0..100 {
        waiting = api(&nc, "$JS.API.CONSUMER.INFO.S.C", Value::Null).await["num_waiting"].clone();
        if waiting == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(waiting, 1, "the request waits");
    drop(sub);
    drop(gone);
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish(&js, 3).await;
    // A live worker's fetch gets them, not the dead request.
    let (_sub, got) = pull_raw(
        &nc,
        r#"{"batch":3,"expires":2000000000}"#,
        3,
        Duration::from_secs(3),
    )
    .await;
    let payloads: Vec<_> = got.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(
        payloads,
        vec!["m0", "m1", "m2"],
        "the live worker gets the messages"
    );
    let info = api(&nc, "$JS.API.CONSUMER.INFO.S.C", Value::Null).await;
    assert_eq!(info["num_waiting"], 0, "{info}");
    s.shutdown().await;
}

#[tokio::test]
async fn every_sync_ack_is_answered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(js_opts(dir.path())).await;
    let (nc, js) = setup(&s, json!({"durable_name": "C"})).await;
    publish(&js, 3).await;
    let (_sub, got) = pull_raw(&nc, "3", 3, Duration::from_secs(3)).await;
    assert_eq!(got.len(), 3);
    let ack_of = |i: usize| got[i].reply.clone().expect("ack subject");
    let sync = |subject: String, body: &'static str| {
        let nc = nc.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(3),
                nc.request(subject, Bytes::from_static(body.as_bytes())),
            )
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false)
        }
    };
    assert!(sync(ack_of(0), "+ACK").await, "first sync ack answered");
    assert!(
        sync(ack_of(0), "+ACK").await,
        "ack of an acked message answered"
    );
    assert!(sync(ack_of(1), "+WPI").await, "progress answered");
    assert!(sync(ack_of(1), "-NAK").await, "nak answered");
    assert!(sync(ack_of(2), "+TERM").await, "term answered");
    assert!(
        sync(ack_of(2), "+TERM").await,
        "term of a terminated message answered"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn expiry_and_request_limits_answer_as_nats_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(js_opts(dir.path())).await;
    let (nc, js) = setup(
        &s,
        json!({"durable_name": "C", "max_batch": 5, "max_expires": 2_000_000_000i64, "max_bytes": 1000}),
    )
    .await;
    let one = |body: &'static str| {
        let nc = nc.clone();
        async move {
            let (_sub, got) = pull_raw(&nc, body, 1, Duration::from_secs(3)).await;
            got.into_iter().next().map(|r| (status_of(&r), r))
        }
    };
    // A negative expiry has passed already: 408 at once, with what the request still had.
    let (st, r) = one(r#"{"batch":2,"expires":-1}"#).await.expect("answered");
    assert_eq!(st, "408 Request Timeout");
    assert_eq!(header(&r, "Nats-Pending-Messages").as_deref(), Some("2"));
    assert_eq!(header(&r, "Nats-Pending-Bytes").as_deref(), Some("0"));
    let (st, _) = one(r#"{"batch":6,"expires":1000000000}"#)
        .await
        .expect("answered");
    assert_eq!(st, "409 Exceeded MaxRequestBatch of 5");
    let (st, _) = one(r#"{"batch":1,"expires":3000000000}"#)
        .await
        .expect("answered");
    assert_eq!(st, "409 Exceeded MaxRequestExpires of 2s");
    let (st, _) = one(r#"{"batch":1,"expires":1000000000,"max_bytes":1001}"#)
        .await
        .expect("answered");
    assert_eq!(st, "409 Exceeded MaxRequestMaxBytes of 1000");
    let (st, _) = one(r#"{"batch":1,"expires":1000000000,"idle_heartbeat":600000000}"#)
        .await
        .expect("answered");
    assert_eq!(st, "400 Bad Request - heartbeat value too large");
    // no_wait with nothing there: 404 at once.
    let (st, _) = one(r#"{"batch":1,"no_wait":true}"#)
        .await
        .expect("answered");
    assert_eq!(st, "404 No Messages");
    // A request that takes its batch and has bytes left ends with 409 Batch Completed.
    publish(&js, 1).await;
    let (_sub, got) = pull_raw(
        &nc,
        r#"{"batch":1,"max_bytes":1000,"expires":1000000000}"#,
        2,
        Duration::from_secs(3),
    )
    .await;
    let st: Vec<_> = got.iter().map(status_of).collect();
    assert_eq!(st, vec!["msg", "409 Batch Completed"]);
    s.shutdown().await;
}

#[tokio::test]
async fn fetch_requests_get_idle_heartbeats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(js_opts(dir.path())).await;
    let (nc, js) = setup(&s, json!({"durable_name": "C"})).await;
    publish(&js, 1).await;
    let (_sub, got) = pull_raw(&nc, "1", 1, Duration::from_secs(3)).await;
    assert_eq!(got.len(), 1);
    let (_sub, got) = pull_raw(
        &nc,
        r#"{"batch":1,"expires":1000000000,"idle_heartbeat":200000000}"#,
        3,
        Duration::from_millis(900),
    )
    .await;
    let hb: Vec<_> = got
        .iter()
        .filter(|r| status_of(r) == "100 Idle Heartbeat")
        .collect();
    assert!(hb.len() >= 2, "heartbeats every 200 ms, got {}", got.len());
    assert_eq!(header(hb[0], "Nats-Last-Consumer").as_deref(), Some("1"));
    assert_eq!(header(hb[0], "Nats-Last-Stream").as_deref(), Some("1"));
    // async-nats's own heartbeating fetch keeps working on an idle stream.
    let c: jetstream::consumer::PullConsumer = js
        .get_stream("S")
        .await
        .expect("stream")
        .get_consumer("C")
        .await
        .expect("consumer");
    let mut batch = c
        .batch()
        .max_messages(5)
        .expires(Duration::from_secs(2))
        .heartbeat(Duration::from_millis(500))
        .messages()
        .await
        .expect("batch");
    let mut n = 0;
    while let Some(m) = batch.next().await {
        m.expect("no missed heartbeat error");
        n += 1;
    }
    assert_eq!(n, 0);
    s.shutdown().await;
}

#[tokio::test]
async fn stream_create_with_an_empty_or_array_body_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(js_opts(dir.path())).await;
    let nc = client(&s).await;
    let r = api(&nc, "$JS.API.STREAM.CREATE.X", json!({})).await;
    assert_eq!(r["error"]["err_code"], 10056, "{r}");
    let r = api(&nc, "$JS.API.STREAM.CREATE.X", json!([])).await;
    assert_eq!(r["error"]["err_code"], 10025, "{r}");
    let r = api(&nc, "$JS.API.STREAM.CREATE.X", Value::Null).await;
    assert_eq!(r["error"]["err_code"], 10025, "{r}");
    let r = api(&nc, "$JS.API.STREAM.NAMES", Value::Null).await;
    assert_eq!(r["total"], 0, "nothing was created: {r}");
    s.shutdown().await;
}

#[tokio::test]
async fn pinned_client_gets_every_message_until_unpinned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(js_opts(dir.path())).await;
    let (nc, js) = setup(
        &s,
        json!({"durable_name": "C", "priority_policy": "pinned_client", "priority_groups": ["jobs"], "priority_timeout": 30_000_000_000i64}),
    )
    .await;
    let info = api(&nc, "$JS.API.CONSUMER.INFO.S.C", Value::Null).await;
    assert_eq!(info["config"]["priority_policy"], "pinned_client");
    assert_eq!(info["config"]["priority_groups"], json!(["jobs"]));
    // No group in a request of a priority consumer: refused.
    let (_s0, got) = pull_raw(
        &nc,
        r#"{"batch":1,"expires":1000000000}"#,
        1,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(
        status_of(&got[0]),
        "400 Bad Request - Priority Group missing"
    );
    let (_s0, got) = pull_raw(
        &nc,
        r#"{"batch":1,"expires":1000000000,"group":"other"}"#,
        1,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(
        status_of(&got[0]),
        "400 Bad Request - Invalid Priority Group"
    );
    publish(&js, 2).await;
    // The first request is pinned: its message carries the pin id.
    let (_a, got) = pull_raw(
        &nc,
        r#"{"batch":1,"expires":2000000000,"group":"jobs"}"#,
        1,
        Duration::from_secs(2),
    )
    .await;
    let pin = header(&got[0], "Nats-Pin-Id").expect("pin id");
    assert_eq!(pin.len(), 22);
    let info = api(&nc, "$JS.API.CONSUMER.INFO.S.C", Value::Null).await;
    assert_eq!(info["priority_groups"][0]["group"], "jobs");
    assert_eq!(info["priority_groups"][0]["pinned_client_id"], pin);
    // Another client (no pin id) gets nothing while the pin holds; a wrong pin id is refused.
    let (_b, got) = pull_raw(
        &nc,
        r#"{"batch":1,"expires":500000000,"group":"jobs"}"#,
        1,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(status_of(&got[0]), "408 Request Timeout");
    let (_b, got) = pull_raw(
        &nc,
        r#"{"batch":1,"expires":500000000,"group":"jobs","id":"WRONG"}"#,
        1,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(status_of(&got[0]), "423 Nats-Pin-Id mismatch");
    // The pinned client with its id gets the next one.
    let body = format!(r#"{{"batch":1,"expires":2000000000,"group":"jobs","id":"{pin}"}}"#);
    let (_a, got) = pull_raw(&nc, &body, 1, Duration::from_secs(2)).await;
    assert_eq!(status_of(&got[0]), "msg");
    assert_eq!(
        header(&got[0], "Nats-Pin-Id").as_deref(),
        Some(pin.as_str())
    );
    // Unpinned by the API: the next request gets a new pin.
    let mut adv = nc
        .subscribe("$JS.EVENT.ADVISORY.CONSUMER.UNPINNED.S.C")
        .await
        .expect("advisory sub");
    nc.flush().await.expect("flush");
    let r = api(&nc, "$JS.API.CONSUMER.UNPIN.S.C", json!({"group": "jobs"})).await;
    assert_eq!(
        r["type"],
        "io.nats.jetstream.api.v1.consumer_unpin_response"
    );
    assert!(r.get("error").is_none(), "{r}");
    let a: Value = serde_json::from_slice(
        &tokio::time::timeout(Duration::from_secs(2), adv.next())
            .await
            .expect("advisory")
            .expect("advisory")
            .payload,
    )
    .expect("json");
    assert_eq!(
        (a["group"].as_str(), a["reason"].as_str()),
        (Some("jobs"), Some("admin"))
    );
    let r = api(&nc, "$JS.API.CONSUMER.UNPIN.S.C", json!({"group": "nope"})).await;
    assert_eq!(r["error"]["err_code"], 10160, "{r}");
    publish(&js, 1).await;
    let (_c, got) = pull_raw(
        &nc,
        r#"{"batch":1,"expires":2000000000,"group":"jobs"}"#,
        1,
        Duration::from_secs(2),
    )
    .await;
    let new_pin = header(&got[0], "Nats-Pin-Id").expect("new pin");
    assert_ne!(new_pin, pin);
    // The old pin id is refused now.
    let (_a, got) = pull_raw(&nc, &body, 1, Duration::from_secs(2)).await;
    assert_eq!(status_of(&got[0]), "423 Nats-Pin-Id mismatch");
    s.shutdown().await;
}

#[tokio::test]
async fn overflow_requests_wait_for_their_marks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(js_opts(dir.path())).await;
    let (nc, js) = setup(
        &s,
        json!({"durable_name": "C", "priority_policy": "overflow", "priority_groups": ["g"]}),
    )
    .await;
    let (_x, got) = pull_raw(
        &nc,
        r#"{"batch":1,"expires":1000000000,"min_pending":1}"#,
        1,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(
        status_of(&got[0]),
        "400 Bad Request - Priority Group missing"
    );
    publish(&js, 3).await;
    // Only 3 pending: a request for when at least 5 are pending gets nothing.
    let (_a, got) = pull_raw(
        &nc,
        r#"{"batch":1,"expires":500000000,"group":"g","min_pending":5}"#,
        1,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(status_of(&got[0]), "408 Request Timeout");
    let (_a, got) = pull_raw(
        &nc,
        r#"{"batch":3,"expires":1000000000,"group":"g","min_pending":2}"#,
        3,
        Duration::from_secs(2),
    )
    .await;
    let st: Vec<_> = got.iter().map(status_of).collect();
    // Pending 3 and 2 pass the mark; with 1 left it no longer does.
    assert_eq!(st, vec!["msg", "msg", "408 Request Timeout"]);
    // Not an overflow consumer: the marks are refused.
    let r = api(
        &nc,
        "$JS.API.CONSUMER.CREATE.S.D",
        json!({"stream_name": "S", "config": {"durable_name": "D"}}),
    )
    .await;
    assert!(r.get("error").is_none());
    let inbox = nc.new_inbox();
    let mut sub = nc.subscribe(inbox.clone()).await.expect("sub");
    nc.publish_with_reply(
        "$JS.API.CONSUMER.MSG.NEXT.S.D",
        inbox,
        Bytes::from(r#"{"batch":1,"min_pending":1}"#),
    )
    .await
    .expect("pub");
    let got = collect(&mut sub, 1, Duration::from_secs(2)).await;
    assert_eq!(
        status_of(&got[0]),
        "400 Bad Request - Not a Overflow Priority consumer"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn prioritized_requests_are_served_lowest_priority_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(js_opts(dir.path())).await;
    let (nc, js) = setup(
        &s,
        json!({"durable_name": "C", "priority_policy": "prioritized", "priority_groups": ["g"]}),
    )
    .await;
    // Two waiting requests: priority 5 first, then priority 1.
    let low = nc.new_inbox();
    let high = nc.new_inbox();
    let mut low_sub = nc.subscribe(low.clone()).await.expect("sub");
    let mut high_sub = nc.subscribe(high.clone()).await.expect("sub");
    for (inbox, prio) in [(&low, 5), (&high, 1)] {
        let body = format!(r#"{{"batch":2,"expires":3000000000,"group":"g","priority":{prio}}}"#);
        nc.publish_with_reply(
            "$JS.API.CONSUMER.MSG.NEXT.S.C",
            inbox.clone(),
            Bytes::from(body),
        )
        .await
        .expect("pub");
    }
    nc.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish(&js, 3).await;
    let high_got = collect(&mut high_sub, 2, Duration::from_secs(2)).await;
    let low_got = collect(&mut low_sub, 1, Duration::from_secs(2)).await;
    let p = |v: &[Reply]| v.iter().map(|r| r.payload.clone()).collect::<Vec<_>>();
    assert_eq!(p(&high_got), vec!["m0", "m1"], "priority 1 first");
    assert_eq!(p(&low_got), vec!["m2"]);
    let (_x, got) = pull_raw(
        &nc,
        r#"{"batch":1,"group":"g","priority":10}"#,
        1,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(
        status_of(&got[0]),
        "400 Bad Request - Priority must be between 0 and 9"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn consumer_reset_starts_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(js_opts(dir.path())).await;
    let (nc, js) = setup(&s, json!({"durable_name": "C"})).await;
    publish(&js, 5).await;
    let (_a, got) = pull_raw(&nc, "3", 3, Duration::from_secs(2)).await;
    for r in &got[..2] {
        nc.publish(r.reply.clone().expect("ack"), Bytes::from_static(b"+ACK"))
            .await
            .expect("ack");
    }
    nc.flush().await.expect("flush");
    // Back to the ack floor: message 3 (delivered, not acked) comes again, as new.
    let r = api(&nc, "$JS.API.CONSUMER.RESET.S.C", Value::Null).await;
    assert_eq!(
        r["type"],
        "io.nats.jetstream.api.v1.consumer_reset_response"
    );
    assert_eq!(r["reset_seq"], 3, "{r}");
    assert_eq!(r["num_ack_pending"], 0, "{r}");
    assert_eq!(r["num_pending"], 3, "{r}");
    let (_a, got) = pull_raw(&nc, "1", 1, Duration::from_secs(2)).await;
    assert_eq!(got[0].payload, "m2");
    // To a given sequence.
    let r = api(&nc, "$JS.API.CONSUMER.RESET.S.C", json!({"seq": 5})).await;
    assert_eq!(r["reset_seq"], 5, "{r}");
    let (_a, got) = pull_raw(&nc, "1", 1, Duration::from_secs(2)).await;
    assert_eq!(got[0].payload, "m4");
    // Not allowed for a deliver-new consumer.
    let r = api(
        &nc,
        "$JS.API.CONSUMER.CREATE.S.N",
        json!({"stream_name": "S", "config": {"durable_name": "N", "deliver_policy": "new"}}),
    )
    .await;
    assert!(r.get("error").is_none());
    let r = api(&nc, "$JS.API.CONSUMER.RESET.S.N", json!({"seq": 2})).await;
    assert_eq!(r["error"]["err_code"], 10204, "{r}");
    assert_eq!(r["error"]["description"], "invalid reset: not allowed");
    s.shutdown().await;
}

#[tokio::test]
async fn consumer_info_shows_last_activity_and_metadata() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(js_opts(dir.path())).await;
    let (nc, js) = setup(
        &s,
        json!({"durable_name": "C", "metadata": {"team": "blue", "tier": "1"}}),
    )
    .await;
    let info = api(&nc, "$JS.API.CONSUMER.INFO.S.C", Value::Null).await;
    assert_eq!(
        info["config"]["metadata"],
        json!({"team": "blue", "tier": "1", "_nats.req.level": "0", "_nats.ver": "2.12.0",
               "_nats.level": "2"})
    );
    assert!(info["delivered"].get("last_active").is_none(), "{info}");
    publish(&js, 1).await;
    let stream = js.get_stream("S").await.expect("stream");
    let c: jetstream::consumer::PullConsumer = stream.get_consumer("C").await.expect("consumer");
    let mut msgs = c.fetch().max_messages(1).messages().await.expect("fetch");
    let m = msgs.next().await.expect("one").expect("message");
    m.ack().await.expect("ack");
    let info = stream.consumer_info("C").await.expect("info");
    assert!(
        info.delivered.last_active.is_some(),
        "delivered.last_active"
    );
    assert!(
        info.ack_floor.last_active.is_some(),
        "ack_floor.last_active"
    );
    assert_eq!(
        info.config.metadata.get("team").map(String::as_str),
        Some("blue")
    );
    let _ = pull::Config::default();
    s.shutdown().await;
}

/// nats-py as workers run it (`tests/compat/nats_py_pull.py`): a worker that disconnects
/// mid-fetch, sync acks, heartbeating fetches, KV watch markers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_py_workers_acks_and_kv_watch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(js_opts(dir.path())).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compat/nats_py_pull.py");
    let code = format!(
        "import runpy, sys; sys.argv = ['nats_py_pull.py', {:?}]; runpy.run_path({:?}, run_name='__main__')",
        s.client_url(),
        script
    );
    let out = tokio::task::spawn_blocking(move || crate::stock_clients::run_python(&code))
        .await
        .expect("join");
    if let Some(out) = out {
        assert!(out.contains("pull ok"), "{out}");
    }
    s.shutdown().await;
}
