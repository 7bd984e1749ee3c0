//! Cluster operations on replicated streams, on 3-5 embedded servers (real routes on loopback,
//! a store directory each) driven by async-nats: `STREAM.PEER.REMOVE` (a replacement caught up
//! from a snapshot and the leader's messages), `num_replicas` changes (R1 -> R3 with the
//! existing messages and consumers, R3 -> R5 -> R1 -> R3), `SERVER.REMOVE`,
//! `CONSUMER.LEADER.STEPDOWN`, consumer `num_replicas` and the quorum-lost advisory. After
//! each operation every acknowledged message is checked on the servers that hold the stream.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use natrium::{Options, Server};
use serde_json::{json, Value};

use crate::common::api;
use crate::replication::{self, wait, Cluster};

/// Snapshots every this many entries: a new replica gets a snapshot, not the whole log.
const SNAPSHOT_EVERY: u64 = 64;

/// replication.rs's node with a small snapshot interval and no monitoring port.
fn node_opts(name: &str, dir: &std::path::Path, routes: &[u16]) -> Options {
    let mut o = Options {
        http_port: None,
        http_host: String::new(),
        ..replication::node_opts(name, dir, routes)
    };
    if let Some(js) = o.jetstream.as_mut() {
        js.raft_snapshot_every = Some(SNAPSHOT_EVERY);
    }
    o
}

/// `n` servers of `node_opts`; waits for the meta group of `n`.
async fn start_cluster(n: usize) -> Cluster {
    Cluster::start(n, Duration::from_secs(40), node_opts).await
}

async fn connect(s: &Server) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(20)))
        .connect(s.client_url())
        .await
        .expect("connect")
}

/// STREAM.INFO's leader and replica names, once the stream has a leader.
async fn members(nc: &async_nats::Client, stream: &str) -> (String, BTreeSet<String>) {
    let start = Instant::now();
    loop {
        let v = api(nc, &format!("$JS.API.STREAM.INFO.{stream}"), Value::Null).await;
        if let Some(l) = v["cluster"]["leader"].as_str() {
            let replicas = v["cluster"]["replicas"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|r| r["name"].as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            return (l.to_string(), replicas);
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no leader: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the stream's members (leader and replicas) are exactly `want`.
async fn wait_members(nc: &async_nats::Client, stream: &str, want: &[&str]) -> String {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let start = Instant::now();
    loop {
        let (leader, mut all) = members(nc, stream).await;
        all.insert(leader.clone());
        if all == want {
            return leader;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "members of {stream}: {all:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A JetStream context that waits up to 15 s for the API: a stream create is answered once
/// its group's first election is done, which on a test machine loaded by the whole suite has
/// passed the clients' default 5 s (`created: TimedOut` in one full run of four).
fn js_context(nc: async_nats::Client) -> jetstream::Context {
    let mut js = jetstream::new(nc);
    js.set_timeout(Duration::from_secs(15));
    js
}

/// Publishes `count` messages `<prefix>-<i>` with their ids and returns the acknowledged
/// sequences (retrying while there is no leader).
async fn publish(js: &jetstream::Context, subject: &str, prefix: &str, count: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    for i in 0..count {
        let id = format!("{prefix}-{i}");
        let start = Instant::now();
        loop {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", id.as_str());
            let r = match js
                .publish_with_headers(subject.to_string(), h, id.clone().into())
                .await
            {
                Ok(f) => f.await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match r {
                Ok(ack) => {
                    seqs.push(ack.sequence);
                    break;
                }
                Err(e) => {
                    assert!(start.elapsed() < Duration::from_secs(30), "{id}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    seqs
}

/// Every `(seq, payload)` is served by server `on` from its own replica (direct get).
async fn held_by(c: &Cluster, on: &str, stream: &str, expect: &[(u64, String)]) {
    let nc = connect(c.node(on)).await;
    let start = Instant::now();
    'again: loop {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{on} does not hold every acknowledged message of {stream}"
        );
        for (seq, payload) in expect {
            let r = nc
                .request(
                    format!("$JS.API.DIRECT.GET.{stream}"),
                    json!({ "seq": seq }).to_string().into(),
                )
                .await;
            let ok = r.as_ref().is_ok_and(|m| {
                m.status.is_none_or(|s| s.is_success()) && m.payload == payload.as_bytes()
            });
            if !ok {
                if start.elapsed() > Duration::from_secs(55) {
                    eprintln!("{on} seq {seq}: {:?}", r.map(|m| (m.status, m.payload)));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue 'again;
            }
        }
        return;
    }
}

/// The next message durable `name` of `stream` delivers, the consumer looked up afresh
/// (`found` names the lookup for a failure).
async fn next_of(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
    found: &str,
) -> jetstream::Message {
    let durable: consumer::PullConsumer = js
        .get_stream(stream)
        .await
        .expect("stream")
        .get_consumer(name)
        .await
        .expect(found);
    let mut msgs = durable.messages().await.expect("messages");
    tokio::time::timeout(Duration::from_secs(15), msgs.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("message")
}

fn expected(seqs: &[u64], prefix: &str) -> Vec<(u64, String)> {
    seqs.iter()
        .enumerate()
        .map(|(i, s)| (*s, format!("{prefix}-{i}")))
        .collect()
}

fn r3(name: &str, subject: &str, replicas: usize) -> stream::Config {
    stream::Config {
        name: name.into(),
        subjects: vec![subject.into()],
        num_replicas: replicas,
        allow_direct: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_peer_is_replaced_and_the_replacement_holds_every_message() {
    let c = start_cluster(4).await;
    let nc = connect(c.node("n1")).await;
    let js = js_context(nc.clone());
    js.create_stream(r3("PR", "pr.>", 3))
        .await
        .expect("created");
    let mut acked = expected(&publish(&js, "pr.x", "a", 200).await, "a");
    let (leader, replicas) = members(&nc, "PR").await;
    let mut peers: Vec<String> = replicas.iter().cloned().collect();
    peers.push(leader.clone());
    let outsider = c
        .names
        .iter()
        .find(|n| !peers.contains(n))
        .expect("a fourth server")
        .clone();

    // nats-server's errors: not a member, no body.
    let v = api(
        &nc,
        "$JS.API.STREAM.PEER.REMOVE.PR",
        json!({"peer": outsider}),
    )
    .await;
    assert_eq!(v["error"]["err_code"], 10040, "{v}");
    assert_eq!(v["error"]["description"], "peer not a member", "{v}");
    let v = api(&nc, "$JS.API.STREAM.PEER.REMOVE.PR", Value::Null).await;
    assert_eq!(v["error"]["err_code"], 10003, "{v}");

    // A follower leaves; the fourth server takes its place, from a snapshot and a fetch.
    let follower = replicas.iter().next().expect("a follower").clone();
    let v = api(
        &nc,
        "$JS.API.STREAM.PEER.REMOVE.PR",
        json!({"peer": follower}),
    )
    .await;
    assert_eq!(v["success"], true, "{v}");
    assert_eq!(
        v["type"],
        "io.nats.jetstream.api.v1.stream_remove_peer_response"
    );
    let want: Vec<&str> = peers
        .iter()
        .filter(|p| **p != follower)
        .map(String::as_str)
        .chain([outsider.as_str()])
        .collect();
    wait_members(&nc, "PR", &want).await;
    held_by(&c, &outsider, "PR", &acked).await;
    let more = publish(&js, "pr.x", "b", 20).await;
    acked.extend(expected(&more, "b"));
    assert_eq!(acked.len(), 220);

    // The leader leaves: another leads, and the server removed first comes back in its place.
    let v = api(
        &nc,
        "$JS.API.STREAM.PEER.REMOVE.PR",
        json!({"peer": leader}),
    )
    .await;
    assert_eq!(v["success"], true, "{v}");
    let want: Vec<&str> = want
        .iter()
        .copied()
        .filter(|p| *p != leader)
        .chain([follower.as_str()])
        .collect();
    let new_leader = wait_members(&nc, "PR", &want).await;
    assert_ne!(new_leader, leader);
    let more = publish(&js, "pr.x", "c", 10).await;
    acked.extend(expected(&more, "c"));
    for p in &want {
        held_by(&c, p, "PR", &acked).await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn num_replicas_grows_and_shrinks_with_every_message_kept() {
    let c = start_cluster(5).await;
    let nc = connect(c.node("n2")).await;
    let js = js_context(nc.clone());
    js.create_stream(r3("RS", "rs.>", 3))
        .await
        .expect("created");
    let mut acked = expected(&publish(&js, "rs.x", "a", 100).await, "a");

    // 3 -> 5: two more servers, caught up.
    let info = js.update_stream(r3("RS", "rs.>", 5)).await.expect("R5");
    assert_eq!(info.config.num_replicas, 5);
    let all: Vec<&str> = c.names.iter().map(String::as_str).collect();
    wait_members(&nc, "RS", &all).await;
    for n in &all {
        held_by(&c, n, "RS", &acked).await;
    }
    // R5 on five servers: nobody can replace a peer.
    let v = api(&nc, "$JS.API.STREAM.PEER.REMOVE.RS", json!({"peer": "n3"})).await;
    assert_eq!(v["error"]["err_code"], 10075, "{v}");
    assert_eq!(v["error"]["code"], 503, "{v}");
    // More than five is refused.
    let v = api(
        &nc,
        "$JS.API.STREAM.UPDATE.RS",
        json!({"name": "RS", "subjects": ["rs.>"], "num_replicas": 7, "allow_direct": true}),
    )
    .await;
    assert_eq!(v["error"]["err_code"], 10052, "{v}");

    // 5 -> 1: the leader keeps the only copy and acknowledges alone.
    let (leader, _) = members(&nc, "RS").await;
    js.update_stream(r3("RS", "rs.>", 1)).await.expect("R1");
    let kept = wait_members(&nc, "RS", &[leader.as_str()]).await;
    assert_eq!(kept, leader);
    acked.extend(expected(&publish(&js, "rs.x", "b", 10).await, "b"));
    held_by(&c, &leader, "RS", &acked).await;

    // 1 -> 3 again.
    js.update_stream(r3("RS", "rs.>", 3)).await.expect("R3");
    let start = Instant::now();
    let holders = loop {
        let (l, r) = members(&nc, "RS").await;
        if r.len() == 2 {
            break [vec![l], r.into_iter().collect()].concat();
        }
        assert!(start.elapsed() < Duration::from_secs(60), "R3 again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    acked.extend(expected(&publish(&js, "rs.x", "c", 10).await, "c"));
    for n in &holders {
        held_by(&c, n, "RS", &acked).await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_r1_stream_becomes_r3_with_its_messages_ids_and_consumers() {
    let c = start_cluster(3).await;
    let nc = connect(c.node("n1")).await;
    let js = js_context(nc.clone());
    js.create_stream(r3("CV", "cv.>", 1))
        .await
        .expect("created");
    let seqs = publish(&js, "cv.x", "a", 30).await;
    assert_eq!(seqs, (1..=30).collect::<Vec<u64>>());
    let s = js.get_stream("CV").await.expect("stream");
    assert!(s.delete_message(10).await.expect("deleted"));
    replication::durable_with_acked(&s, "d", 5).await;

    // An R1 stream asking for more servers than there are stays as it was.
    js.create_stream(r3("CV2", "cv2.>", 1))
        .await
        .expect("created");
    let v = api(
        &nc,
        "$JS.API.STREAM.UPDATE.CV2",
        json!({"name": "CV2", "subjects": ["cv2.>"], "num_replicas": 5}),
    )
    .await;
    assert_eq!(v["error"]["err_code"], 10005, "{v}");
    assert_eq!(publish(&js, "cv2.x", "z", 1).await, vec![1]);

    // R1 -> R3: replicated with its messages (and its gap), ids and consumer.
    let info = js.update_stream(r3("CV", "cv.>", 3)).await.expect("R3");
    assert_eq!(info.config.num_replicas, 3);
    wait_members(&nc, "CV", &["n1", "n2", "n3"]).await;
    let acked: Vec<(u64, String)> = expected(&seqs, "a")
        .into_iter()
        .filter(|(s, _)| *s != 10)
        .collect();
    for n in ["n1", "n2", "n3"] {
        held_by(&c, n, "CV", &acked).await;
    }
    let info = api(&nc, "$JS.API.STREAM.INFO.CV", Value::Null).await;
    assert_eq!(info["state"]["messages"], 29, "{info}");
    assert_eq!(info["state"]["last_seq"], 30, "{info}");
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", "a-2");
    let ack = js
        .publish_with_headers("cv.x", h, "again".into())
        .await
        .expect("sent")
        .await
        .expect("ack");
    assert!(ack.duplicate, "ids survive the change");
    assert_eq!(ack.sequence, 3);
    assert_eq!(publish(&js, "cv.x", "b", 1).await, vec![31]);
    let m = next_of(&js, "CV", "d", "the consumer came along").await;
    assert_eq!(
        m.info().expect("info").stream_sequence,
        6,
        "acked stay acked"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_server_leaves_the_meta_group_and_its_replicas_move() {
    let c = start_cluster(4).await;
    let nc = connect(c.node("n1")).await;
    let js = js_context(nc.clone());
    js.create_stream(r3("SR", "sr.>", 3))
        .await
        .expect("created");
    let acked = expected(&publish(&js, "sr.x", "a", 100).await, "a");
    let (leader, replicas) = members(&nc, "SR").await;
    let meta_leader = c
        .node("n1")
        .jetstream_meta()
        .and_then(|v| v.leader)
        .expect("meta leader");
    let gone = replicas
        .iter()
        .chain([&leader])
        .find(|p| **p != meta_leader && *p != "n1")
        .expect("a stream peer to remove")
        .clone();
    let sys = c.node("n1").internal_client("$SYS").expect("system");
    let mut inbox = sys.subscribe("_INBOX.srv-rm", None, 8).expect("inbox");
    let ask = |body: Value| {
        sys.publish(
            "$JS.API.SERVER.REMOVE",
            Some("_INBOX.srv-rm"),
            None,
            body.to_string().as_bytes(),
        )
        .expect("request");
    };
    ask(json!({"peer": "nobody"}));
    let m = tokio::time::timeout(Duration::from_secs(15), inbox.next())
        .await
        .expect("answer")
        .expect("answer");
    let v: Value = serde_json::from_slice(&m.payload).expect("json");
    assert_eq!(v["error"]["err_code"], 10044, "{v}");
    ask(json!({"peer": gone}));
    let m = tokio::time::timeout(Duration::from_secs(60), inbox.next())
        .await
        .expect("answer")
        .expect("answer");
    let v: Value = serde_json::from_slice(&m.payload).expect("json");
    assert_eq!(v["success"], true, "{v}");
    assert_eq!(
        v["type"],
        "io.nats.jetstream.api.v1.meta_server_remove_response"
    );
    wait(Duration::from_secs(20), "a meta group without it", || {
        c.node("n1").jetstream_meta().is_some_and(|v| {
            v.members.len() == 3 && !v.members.contains(&gone) && v.leader.is_some()
        })
    })
    .await;
    let want: Vec<&str> = c
        .names
        .iter()
        .map(String::as_str)
        .filter(|n| *n != gone)
        .collect();
    wait_members(&nc, "SR", &want).await;
    for n in &want {
        held_by(&c, n, "SR", &acked).await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_stepdown_replicas_and_the_quorum_lost_advisory() {
    let mut c = start_cluster(3).await;
    let nc = connect(c.node("n1")).await;
    let js = js_context(nc.clone());
    js.create_stream(r3("CS", "cs.>", 3))
        .await
        .expect("created");
    let acked = expected(&publish(&js, "cs.x", "a", 10).await, "a");
    let create = |name: &'static str, replicas: i64| {
        let nc = nc.clone();
        async move {
            api(
                &nc,
                &format!("$JS.API.CONSUMER.CREATE.CS.{name}"),
                json!({"stream_name": "CS", "config": {"durable_name": name, "ack_policy": "explicit", "num_replicas": replicas}}),
            )
            .await
        }
    };
    let v = create("inherit", 0).await;
    assert_eq!(v["config"]["num_replicas"], 0, "{v}");
    let v = create("three", 3).await;
    assert_eq!(v["config"]["num_replicas"], 3, "{v}");
    let v = create("four", 4).await;
    assert_eq!(v["error"]["err_code"], 10126, "{v}");

    let (old, _) = members(&nc, "CS").await;
    let v = api(&nc, "$JS.API.CONSUMER.LEADER.STEPDOWN.CS.nope", Value::Null).await;
    assert_eq!(v["error"]["err_code"], 10014, "{v}");
    let v = api(
        &nc,
        "$JS.API.CONSUMER.LEADER.STEPDOWN.CS.three",
        Value::Null,
    )
    .await;
    assert_eq!(v["success"], true, "{v}");
    assert_eq!(
        v["type"],
        "io.nats.jetstream.api.v1.consumer_leader_stepdown_response"
    );
    let start = Instant::now();
    let new = loop {
        let (l, _) = members(&nc, "CS").await;
        if l != old {
            break l;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "a new leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let m = next_of(&js, "CS", "three", "consumer on the new leader").await;
    assert_eq!(m.info().expect("info").stream_sequence, 1);
    held_by(&c, &new, "CS", &acked).await;

    // The leader loses both followers: the advisory in nats-server's shape.
    let watcher = connect(c.node(&new)).await;
    let mut adv = watcher
        .subscribe("$JS.EVENT.ADVISORY.STREAM.QUORUM_LOST.CS")
        .await
        .expect("subscribe");
    watcher.flush().await.expect("flush");
    let others: Vec<String> = c.names.iter().filter(|n| **n != new).cloned().collect();
    for o in &others {
        c.stop(o).await;
    }
    let m = tokio::time::timeout(Duration::from_secs(20), adv.next())
        .await
        .expect("advisory in time")
        .expect("advisory");
    let v: Value = serde_json::from_slice(&m.payload).expect("json");
    assert_eq!(
        v["type"], "io.nats.jetstream.advisory.v1.stream_quorum_lost",
        "{v}"
    );
    assert_eq!(v["stream"], "CS", "{v}");
    assert_eq!(v["replicas"].as_array().map(Vec::len), Some(2), "{v}");
    assert!(v["timestamp"].is_string() && v["id"].is_string(), "{v}");
    c.shutdown().await;
}
