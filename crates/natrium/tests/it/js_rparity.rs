//! The stream features of nats-server 2.11/2.12 on R3 streams in a three-server cluster, with
//! the answers R1 streams give: counters, TTLs and delete markers, schedules and atomic batches
//! across a leader stepdown (nothing acknowledged lost, nothing twice), subject transforms,
//! republish, `discard_new_per_subject`, `first_seq`, sources and mirrors (of and by replicated
//! streams), KV and object store buckets with three replicas; the `_nats.*` metadata of stream
//! and consumer info and the `Nats-Required-Api-Level` request header.

use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store};
use futures::StreamExt;
use serde_json::{json, Value};

use crate::common::{api, request_with_headers, schedule_at};
use crate::replication::{cluster, connect, leader_of, wait, Cluster};

/// A publish as a raw request with headers (10 s to answer); its answer (`Null` for an empty one).
async fn req(nc: &async_nats::Client, subject: &str, hdrs: &[(&str, &str)], body: &str) -> Value {
    request_with_headers(nc, subject, hdrs, body, Duration::from_secs(10)).await
}

async fn create(nc: &async_nats::Client, cfg: Value) -> Value {
    let name = cfg["name"].as_str().expect("name").to_string();
    let r = api(nc, &format!("$JS.API.STREAM.CREATE.{name}"), cfg).await;
    assert!(r.get("error").is_none(), "{r}");
    r
}

/// Steps the stream's leader down (answered once another server leads) and waits until every
/// server agrees on the leader.
async fn step_down(c: &Cluster, nc: &async_nats::Client, stream: &str, subject: &str) {
    leader_of(c, stream, subject, None).await;
    let r = api(
        nc,
        &format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}"),
        Value::Null,
    )
    .await;
    assert_eq!(r["success"], true, "{r}");
    // Another server led when the stepdown answered; whoever leads now, all must agree.
    leader_of(c, stream, subject, None).await;
}

/// Every server's copy of `stream` as (subject, headers, payload), once all three agree and
/// `f` holds for it.
async fn replicas_agree(
    c: &Cluster,
    stream: &str,
    what: &str,
    f: impl Fn(&[natrium::jetstream::LocalMsg]) -> bool,
) -> Vec<natrium::jetstream::LocalMsg> {
    let mut seen = Vec::new();
    wait(Duration::from_secs(20), what, || {
        let copies: Vec<_> = c
            .running()
            .map(|s| s.local_messages("$G", stream).unwrap_or_default())
            .collect();
        let same = copies.len() == 3 && copies.iter().all(|x| *x == copies[0]);
        seen = copies[0].clone();
        same && f(&copies[0])
    })
    .await;
    seen
}

fn has_header(m: &natrium::jetstream::LocalMsg, line: &str) -> bool {
    m.headers.as_deref().is_some_and(|h| h.contains(line))
}

/// An answer without its stream name (R1 and R3 answers compared).
fn unnamed(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("stream");
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_counters_sum_in_log_order_across_a_stepdown() {
    let c = cluster().await;
    let nc = connect(c.node("n2")).await;
    for (name, replicas) in [("CNT", 3), ("CNT1", 1)] {
        create(
            &nc,
            json!({"name": name, "subjects": [format!("{}.>", name.to_lowercase())],
                   "num_replicas": replicas, "allow_msg_counter": true}),
        )
        .await;
    }
    leader_of(&c, "CNT", "cnt.a", None).await;
    let a = req(&nc, "cnt.a", &[("Nats-Incr", "5")], "").await;
    assert_eq!(
        (a["seq"].as_u64(), a["val"].as_str()),
        (Some(1), Some("5")),
        "{a}"
    );
    let a = req(&nc, "cnt.a", &[("Nats-Incr", "+3")], "").await;
    assert_eq!(a["val"], "8", "{a}");
    step_down(&c, &nc, "CNT", "cnt.a").await;
    let a = req(&nc, "cnt.a", &[("Nats-Incr", "-2")], "").await;
    assert_eq!(
        (a["seq"].as_u64(), a["val"].as_str()),
        (Some(3), Some("6")),
        "{a}"
    );
    let b = req(&nc, "cnt.b", &[("Nats-Incr", "1")], "").await;
    assert_eq!(b["val"], "1", "{b}");
    // The refusals are R1's.
    for (hdrs, body) in [
        (vec![], ""),
        (vec![("Nats-Incr", "x1")], ""),
        (vec![("Nats-Incr", "1")], "payload"),
    ] {
        let r3 = req(&nc, "cnt.a", &hdrs, body).await;
        let r1 = req(&nc, "cnt1.a", &hdrs, body).await;
        assert!(r3.get("error").is_some(), "{r3}");
        assert_eq!(unnamed(r3), unnamed(r1));
    }
    let copy = replicas_agree(&c, "CNT", "the counters on every replica", |m| m.len() == 4).await;
    assert_eq!(copy[2].payload, br#"{"val":"6"}"#);
    assert_eq!(copy[3].payload, br#"{"val":"1"}"#);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_ttls_expire_once_with_delete_markers_across_a_stepdown() {
    let c = cluster().await;
    let nc = connect(c.node("n3")).await;
    create(
        &nc,
        json!({"name": "TTL", "subjects": ["t.>"], "num_replicas": 3, "allow_msg_ttl": true,
               "subject_delete_marker_ttl": 1_000_000_000u64}),
    )
    .await;
    leader_of(&c, "TTL", "t.a", None).await;
    let a = req(&nc, "t.a", &[("Nats-TTL", "1s")], "short").await;
    assert_eq!(a["seq"], 1, "{a}");
    let b = req(&nc, "t.b", &[("Nats-TTL", "never")], "kept").await;
    assert_eq!(b["seq"], 2, "{b}");
    let bad = req(&nc, "t.c", &[("Nats-TTL", "soon")], "").await;
    assert_eq!(bad["error"]["err_code"], 10165, "{bad}");
    // The leader that saw the TTL goes; the next one expires it.
    step_down(&c, &nc, "TTL", "t.a").await;
    let copy = replicas_agree(&c, "TTL", "t.a replaced by a marker everywhere", |m| {
        m.iter()
            .all(|m| m.subject != "t.a" || has_header(m, "Nats-Marker-Reason"))
            && m.iter().any(|m| m.subject == "t.a")
    })
    .await;
    let markers: Vec<_> = copy.iter().filter(|m| m.subject == "t.a").collect();
    assert_eq!(markers.len(), 1, "one marker: {copy:?}");
    assert!(has_header(markers[0], "Nats-TTL: 1s"), "{:?}", markers[0]);
    // The marker expires in turn; the message whose TTL is `never` stays.
    let copy = replicas_agree(&c, "TTL", "the marker gone everywhere", |m| {
        m.iter().all(|m| m.subject != "t.a")
    })
    .await;
    assert_eq!(copy.len(), 1, "{copy:?}");
    assert_eq!((copy[0].seq, &copy[0].payload[..]), (2, &b"kept"[..]));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_schedules_fire_once_across_a_stepdown() {
    let c = cluster().await;
    let nc = connect(c.node("n1")).await;
    create(
        &nc,
        json!({"name": "SCH", "subjects": ["sch.>", "out.>"], "num_replicas": 3,
               "allow_msg_schedules": true}),
    )
    .await;
    leader_of(&c, "SCH", "sch.a", None).await;
    let pattern = schedule_at(3);
    let a = req(
        &nc,
        "sch.a",
        &[
            ("Nats-Schedule", &pattern),
            ("Nats-Schedule-Target", "out.a"),
        ],
        "later",
    )
    .await;
    assert_eq!(a["seq"], 1, "{a}");
    let bad = req(
        &nc,
        "sch.b",
        &[
            ("Nats-Schedule", "@every 1s"),
            ("Nats-Schedule-Target", "out.b"),
        ],
        "",
    )
    .await;
    assert_eq!(bad["error"]["err_code"], 10189, "{bad}");
    step_down(&c, &nc, "SCH", "sch.a").await;
    let copy = replicas_agree(&c, "SCH", "the schedule fired everywhere", |m| {
        m.iter().any(|m| m.subject == "out.a")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = replicas_agree(&c, "SCH", "still the same", |_| true).await;
    assert_eq!(copy, later, "fired once");
    let fired: Vec<_> = later.iter().filter(|m| m.subject == "out.a").collect();
    assert_eq!(fired.len(), 1, "{later:?}");
    assert_eq!(fired[0].payload, b"later");
    assert!(
        has_header(fired[0], "Nats-Scheduler: sch.a"),
        "{:?}",
        fired[0]
    );
    assert!(
        later.iter().all(|m| m.subject != "sch.a"),
        "the schedule is purged once fired: {later:?}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_atomic_batches_store_all_or_nothing_across_a_stepdown() {
    let c = cluster().await;
    let nc = connect(c.node("n2")).await;
    for (name, replicas) in [("AB", 3), ("AB1", 1)] {
        create(
            &nc,
            json!({"name": name, "subjects": [format!("{}.>", name.to_lowercase())],
                   "num_replicas": replicas, "allow_atomic": true}),
        )
        .await;
    }
    leader_of(&c, "AB", "ab.x", None).await;
    let staged = req(
        &nc,
        "ab.x",
        &[("Nats-Batch-Id", "b1"), ("Nats-Batch-Sequence", "1")],
        "1",
    )
    .await;
    assert_eq!(staged, Value::Null);
    let staged = req(
        &nc,
        "ab.x",
        &[("Nats-Batch-Id", "b1"), ("Nats-Batch-Sequence", "2")],
        "2",
    )
    .await;
    assert_eq!(staged, Value::Null);
    // The leader holding the staged messages goes: the commit finds no batch, nothing stored.
    step_down(&c, &nc, "AB", "ab.x").await;
    let lost = req(
        &nc,
        "ab.x",
        &[
            ("Nats-Batch-Id", "b1"),
            ("Nats-Batch-Sequence", "3"),
            ("Nats-Batch-Commit", "1"),
        ],
        "3",
    )
    .await;
    assert_eq!(lost["error"]["err_code"], 10176, "{lost}");
    for i in 1..=3 {
        let mut h = vec![("Nats-Batch-Id", "b2")];
        let seq = i.to_string();
        h.push(("Nats-Batch-Sequence", &seq));
        if i == 3 {
            h.push(("Nats-Batch-Commit", "1"));
        }
        let r = req(&nc, "ab.y", &h, &format!("m{i}")).await;
        if i < 3 {
            assert_eq!(r, Value::Null);
        } else {
            assert_eq!(
                r,
                json!({"stream": "AB", "seq": 3, "batch": "b2", "count": 3})
            );
        }
    }
    // A batch whose check fails stores nothing, with R1's error.
    let mut answers = Vec::new();
    for stream in ["ab", "ab1"] {
        let subject = format!("{stream}.z");
        req(
            &nc,
            &subject,
            &[("Nats-Batch-Id", "b3"), ("Nats-Batch-Sequence", "1")],
            "",
        )
        .await;
        answers.push(unnamed(
            req(
                &nc,
                &subject,
                &[
                    ("Nats-Batch-Id", "b3"),
                    ("Nats-Batch-Sequence", "2"),
                    ("Nats-Batch-Commit", "1"),
                    ("Nats-Expected-Last-Sequence", "99"),
                ],
                "",
            )
            .await,
        ));
    }
    assert!(answers[0].get("error").is_some(), "{}", answers[0]);
    // The same error (its text names each stream's own last sequence).
    assert_eq!(
        answers[0]["error"]["err_code"],
        answers[1]["error"]["err_code"]
    );
    assert_eq!(answers[0]["error"]["code"], answers[1]["error"]["code"]);
    let copy = replicas_agree(&c, "AB", "the batch everywhere", |m| m.len() == 3).await;
    let bodies: Vec<&[u8]> = copy.iter().map(|m| &m.payload[..]).collect();
    assert_eq!(bodies, [&b"m1"[..], b"m2", b"m3"]);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_transforms_republish_discard_new_per_subject_and_first_seq() {
    let c = cluster().await;
    let nc = connect(c.node("n1")).await;
    let mut republished = nc.subscribe("rp.>").await.expect("subscribe");
    nc.flush().await.expect("flush");
    for (name, replicas) in [("TR", 3), ("TR1", 1)] {
        let lower = name.to_lowercase();
        create(
            &nc,
            json!({"name": name, "subjects": [format!("in{lower}.>")], "num_replicas": replicas,
                   "subject_transform": {"src": format!("in{lower}.>"), "dest": format!("{lower}.>")},
                   "republish": {"src": format!("{lower}.>"), "dest": format!("rp.{lower}.>")},
                   "discard": "new", "discard_new_per_subject": true, "max_msgs_per_subject": 1,
                   "first_seq": 100}),
        )
        .await;
    }
    leader_of(&c, "TR", "intr.a", None).await;
    let a = req(&nc, "intr.a", &[], "one").await;
    assert_eq!(a, json!({"stream": "TR", "seq": 100}));
    let again3 = req(&nc, "intr.a", &[], "two").await;
    assert_eq!(req(&nc, "intr1.a", &[], "one").await["seq"], 100);
    let again1 = req(&nc, "intr1.a", &[], "two").await;
    assert!(again3.get("error").is_some(), "{again3}");
    assert_eq!(unnamed(again3), unnamed(again1));
    let m = tokio::time::timeout(Duration::from_secs(5), republished.next())
        .await
        .expect("republished")
        .expect("open");
    assert_eq!(m.subject.as_str(), "rp.tr.a");
    let h = m.headers.expect("headers");
    assert_eq!(h.get("Nats-Sequence").map(|v| v.as_str()), Some("100"));
    assert_eq!(h.get("Nats-Subject").map(|v| v.as_str()), Some("tr.a"));
    let m = tokio::time::timeout(Duration::from_secs(5), republished.next())
        .await
        .expect("the R1 one")
        .expect("open");
    assert_eq!(m.subject.as_str(), "rp.tr1.a");
    // Republished once, by the leader only.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), republished.next())
            .await
            .is_err(),
        "republished more than once"
    );
    let copy = replicas_agree(&c, "TR", "one message everywhere", |m| m.len() == 1).await;
    assert_eq!((copy[0].seq, copy[0].subject.as_str()), (100, "tr.a"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_streams_source_and_mirror_and_are_sourced() {
    let c = cluster().await;
    let nc = connect(c.node("n2")).await;
    create(
        &nc,
        json!({"name": "ORG", "subjects": ["org.>"], "num_replicas": 3}),
    )
    .await;
    leader_of(&c, "ORG", "org.x", None).await;
    create(
        &nc,
        json!({"name": "SRC", "num_replicas": 3, "sources": [{"name": "ORG"}]}),
    )
    .await;
    create(
        &nc,
        json!({"name": "MIR", "num_replicas": 3, "mirror": {"name": "ORG"}}),
    )
    .await;
    create(&nc, json!({"name": "BACK", "sources": [{"name": "SRC"}]})).await;
    for i in 0..5 {
        let a = req(&nc, "org.x", &[], &format!("m{i}")).await;
        assert!(a.get("error").is_none(), "{a}");
    }
    replicas_agree(&c, "SRC", "5 sourced everywhere", |m| m.len() == 5).await;
    replicas_agree(&c, "MIR", "5 mirrored everywhere", |m| m.len() == 5).await;
    // The sourcing leader goes; the next one resumes where the replicas stand.
    let old = c
        .node("n1")
        .stream_leader("$G", "SRC")
        .expect("leader known");
    let r = api(&nc, "$JS.API.STREAM.LEADER.STEPDOWN.SRC", Value::Null).await;
    assert_eq!(r["success"], true, "{r}");
    let r = api(&nc, "$JS.API.STREAM.LEADER.STEPDOWN.MIR", Value::Null).await;
    assert_eq!(r["success"], true, "{r}");
    wait(Duration::from_secs(20), "a new SRC leader", || {
        c.running()
            .all(|s| s.stream_leader("$G", "SRC").is_some_and(|l| l != old))
    })
    .await;
    for i in 5..10 {
        let a = req(&nc, "org.x", &[], &format!("m{i}")).await;
        assert!(a.get("error").is_none(), "{a}");
    }
    let src = replicas_agree(&c, "SRC", "10 sourced everywhere", |m| m.len() >= 10).await;
    let mir = replicas_agree(&c, "MIR", "10 mirrored everywhere", |m| m.len() >= 10).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (name, copy) in [("SRC", src), ("MIR", mir)] {
        let now = replicas_agree(&c, name, "settled", |_| true).await;
        assert_eq!(copy, now);
        let bodies: Vec<String> = now
            .iter()
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            .collect();
        let want: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
        assert_eq!(bodies, want, "{name}: each once, in order");
    }
    let mir = c.node("n1").local_messages("$G", "MIR").expect("replica");
    assert_eq!(
        mir.last().map(|m| m.seq),
        Some(10),
        "mirrors keep the origin's sequences"
    );
    // An R1 stream sourcing the replicated one.
    let js = jetstream::new(nc.clone());
    let mut back = js.get_stream("BACK").await.expect("stream");
    wait(Duration::from_secs(20), "BACK has sourced SRC", || {
        let s = c.running().find_map(|s| s.local_messages("$G", "BACK"));
        s.is_some_and(|m| m.len() == 10)
    })
    .await;
    let info = back.info().await.expect("info");
    assert_eq!(info.state.messages, 10);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_kv_and_object_store_buckets() {
    let c = cluster().await;
    let nc = connect(c.node("n3")).await;
    let js = jetstream::new(nc.clone());
    let kv = js
        .create_key_value(kv::Config {
            bucket: "cfg".into(),
            history: 5,
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("bucket");
    leader_of(&c, "KV_cfg", "$KV.cfg.k", None).await;
    let mut watch = kv.watch_with_history("k").await.expect("watch");
    for v in ["a", "b", "c"] {
        kv.put("k", v.into()).await.expect("put");
    }
    let history: Vec<_> = kv
        .history("k")
        .await
        .expect("history")
        .map(|e| e.expect("entry").value)
        .collect()
        .await;
    assert_eq!(history, vec!["a", "b", "c"]);
    kv.delete("k").await.expect("delete");
    let mut ops = Vec::new();
    for _ in 0..4 {
        let e = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("entry");
        ops.push(e.operation);
    }
    assert_eq!(ops.last(), Some(&kv::Operation::Delete));
    kv.put("k", "d".into()).await.expect("put");
    kv.purge("k").await.expect("purge");
    let copy = replicas_agree(&c, "KV_cfg", "only the purge marker", |m| m.len() == 1).await;
    assert!(has_header(&copy[0], "KV-Operation: PURGE"), "{copy:?}");
    // Per-key TTLs with limit markers: the leader expires the key, every replica stores the
    // same marker, and the watcher sees it as a purge.
    let ttl = js
        .create_key_value(kv::Config {
            bucket: "ttl".into(),
            num_replicas: 3,
            limit_markers: Some(Duration::from_secs(1)),
            ..Default::default()
        })
        .await
        .expect("bucket with limit markers");
    leader_of(&c, "KV_ttl", "$KV.ttl.k", None).await;
    let mut watch = ttl.watch("k").await.expect("watch");
    ttl.create_with_ttl("k", "v".into(), Duration::from_secs(1))
        .await
        .expect("create with a TTL");
    let mut ops = Vec::new();
    for _ in 0..2 {
        let e = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("entry");
        ops.push(e.operation);
    }
    assert_eq!(ops, [kv::Operation::Put, kv::Operation::Purge]);
    // A get may be answered by a replica that has not applied the marker yet (direct gets are
    // served by every replica, as nats-server's); it catches up.
    let mut gone = false;
    for _ in 0..100 {
        if ttl.get("k").await.expect("get").is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the key is gone");
    let copy = replicas_agree(&c, "KV_ttl", "the marker everywhere", |m| {
        m.len() == 1 && has_header(&m[0], "Nats-Marker-Reason")
    })
    .await;
    assert_eq!(copy[0].subject, "$KV.ttl.k");
    let os = js
        .create_object_store(object_store::Config {
            bucket: "files".into(),
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("object store");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    os.put("blob", &mut &data[..]).await.expect("put object");
    let mut got = Vec::new();
    let mut obj = os.get("blob").await.expect("get");
    tokio::io::AsyncReadExt::read_to_end(&mut obj, &mut got)
        .await
        .expect("read");
    assert_eq!(got, data);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_and_consumer_info_carry_nats_metadata() {
    let c = cluster().await;
    let nc = connect(c.node("n1")).await;
    for (name, replicas) in [("MD", 3), ("MD1", 1)] {
        let cfg = json!({"name": name, "subjects": [format!("{}.>", name.to_lowercase())],
                         "num_replicas": replicas, "allow_msg_ttl": true,
                         "metadata": {"owner": "ops", "_nats.ver": "0.0.1", "_nats.level": "99"}});
        let created = create(&nc, cfg.clone()).await;
        let md = &created["config"]["metadata"];
        assert_eq!(md["owner"], "ops", "{created}");
        assert_eq!(md["_nats.req.level"], "1", "{created}");
        assert_eq!(md["_nats.ver"], "2.12.0", "{created}");
        assert_eq!(md["_nats.level"], "2", "{created}");
        // The same create again is the same stream.
        let again = create(&nc, cfg).await;
        assert_eq!(again["config"]["metadata"], *md);
        let info = api(&nc, &format!("$JS.API.STREAM.INFO.{name}"), Value::Null).await;
        assert_eq!(info["config"]["metadata"], *md, "{info}");
        let js = jetstream::new(nc.clone());
        let s = js.get_stream(name).await.expect("stream");
        let ci = s
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some("d".into()),
                metadata: [("team".to_string(), "a".to_string())].into(),
                ..Default::default()
            })
            .await
            .expect("consumer")
            .info()
            .await
            .expect("info")
            .clone();
        let cm = &ci.config.metadata;
        assert_eq!(cm.get("team").map(String::as_str), Some("a"));
        assert_eq!(cm.get("_nats.req.level").map(String::as_str), Some("0"));
        assert_eq!(cm.get("_nats.ver").map(String::as_str), Some("2.12.0"));
        assert_eq!(cm.get("_nats.level").map(String::as_str), Some("2"));
    }
    // A request asking for a higher API level is refused, as nats-server refuses it.
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Required-Api-Level", "3");
    for subject in [
        "$JS.API.STREAM.INFO.MD",
        "$JS.API.STREAM.INFO.MD1",
        "$JS.API.INFO",
    ] {
        let r = nc
            .request_with_headers(subject.to_string(), h.clone(), "".into())
            .await
            .expect("answer");
        let v: Value = serde_json::from_slice(&r.payload).expect("json");
        assert_eq!(v["error"]["err_code"], 10185, "{subject}: {v}");
        assert_eq!(v["error"]["code"], 412, "{v}");
    }
    let r = nc
        .request_with_headers(
            "$JS.API.DIRECT.GET.MD1".to_string(),
            h.clone(),
            json!({"seq": 1}).to_string().into(),
        )
        .await
        .expect("answer");
    assert_eq!(r.status.map(|s| s.as_u16()), Some(412));
    let mut ok = async_nats::HeaderMap::new();
    ok.insert("Nats-Required-Api-Level", "2");
    let r = nc
        .request_with_headers("$JS.API.INFO".to_string(), ok, "".into())
        .await
        .expect("answer");
    let v: Value = serde_json::from_slice(&r.payload).expect("json");
    assert!(v.get("error").is_none(), "{v}");
    c.shutdown().await;
}
