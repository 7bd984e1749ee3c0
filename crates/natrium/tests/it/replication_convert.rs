//! Conversions between R1 and replicated streams cut by restarts, on three embedded servers
//! driven by async-nats: an R1 -> R3 conversion paused at each of its steps (the test hook
//! `conversion_pause`) and its server restarted there, or another server restarted meanwhile,
//! and an R3 stream shrunk to one replica across a restart: every acknowledged message and
//! the consumers' progress survive, and publishing goes on at the next sequence.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use serde_json::{json, Value};

use crate::common::{api, test_log};
use crate::replication::{connect, durable_with_acked, leader_of, node_opts, wait, Cluster};

/// Messages in the converted stream; the durable consumer has acknowledged the first `ACKED`.
const N: u64 = 400;
const ACKED: usize = 100;

/// Three servers whose conversions started through the API pause before `step`.
async fn cluster_pausing(step: &'static str) -> Cluster {
    Cluster::start(3, Duration::from_secs(30), move |name, dir, routes| {
        let mut o = node_opts(name, dir, routes);
        if let Some(js) = o.jetstream.as_mut() {
            js.conversion_pause = Some(step.into());
        }
        o
    })
    .await
}

/// R1 stream CONV on n2 with `N` messages and durable consumer D that acknowledged `ACKED`.
async fn r1_stream(c: &Cluster) {
    let js = jetstream::new(connect(c.node("n2")).await);
    let s = js
        .create_stream(stream::Config {
            name: "CONV".into(),
            subjects: vec!["conv.>".into()],
            ..Default::default()
        })
        .await
        .expect("created on n2");
    let mut acks = Vec::new();
    for i in 0..N {
        acks.push(
            js.publish(format!("conv.{}", i % 5), format!("m-{i:05}").into())
                .await
                .expect("published"),
        );
    }
    for a in acks {
        a.await.expect("acknowledged");
    }
    durable_with_acked(&s, "D", ACKED).await;
}

fn update_body(replicas: u64) -> bytes::Bytes {
    json!({"name": "CONV", "subjects": ["conv.>"], "num_replicas": replicas})
        .to_string()
        .into()
}

/// Asks n2 to make CONV R3 (the answer is not awaited) and waits until its conversion is
/// paused before `step`.
async fn convert_until_paused(c: &Cluster, step: &str) {
    let asker = connect(c.node("n2")).await;
    tokio::spawn(async move {
        let _ = asker
            .request("$JS.API.STREAM.UPDATE.CONV", update_body(3))
            .await;
    });
    wait(
        Duration::from_secs(30),
        &format!("the conversion paused before {step}"),
        || c.node("n2").stream_conversion("$G", "CONV") == Some((step.to_string(), true)),
    )
    .await;
}

/// Asks `via` to give CONV `replicas` replicas, again while the answer is an error (a
/// client's retries: the conversion asked first may still be under way, a server just
/// restarted may not be heard from yet), bounded.
async fn update_answered(c: &Cluster, via: &str, replicas: u64) {
    let nc = connect(c.node(via)).await;
    let start = Instant::now();
    loop {
        let r = nc
            .request("$JS.API.STREAM.UPDATE.CONV", update_body(replicas))
            .await;
        if let Ok(m) = &r {
            let v: Value = serde_json::from_slice(&m.payload).expect("json");
            if v.get("error").is_none() {
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "update never answered without an error: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// CONV has `replicas` replicas and `N` messages, D its progress; a publish gets sequence
/// `N + 1`; the servers that hold it (`holders`) hold every message at its sequence, the
/// others none; n2 kept no marker and no R1 files.
async fn check_converted(c: &Cluster, replicas: u64, holders: &[&str]) {
    let nc = connect(c.node("n1")).await;
    let start = Instant::now();
    loop {
        let v = api(&nc, "$JS.API.STREAM.INFO.CONV", Value::Null).await;
        if v["config"]["num_replicas"] == replicas && v["state"]["messages"] == N {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not {replicas} replicas with every message: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let v = api(&nc, "$JS.API.CONSUMER.INFO.CONV.D", Value::Null).await;
    assert_eq!(v["ack_floor"]["stream_seq"], ACKED as u64, "{v}");
    assert_eq!(v["num_pending"], N - ACKED as u64, "{v}");
    let js = jetstream::new(nc.clone());
    let start = Instant::now();
    let ack = loop {
        // The group may be between leaders for a moment while it grows or shrinks.
        match js.publish("conv.new", "after".into()).await {
            Ok(f) => match f.await {
                Ok(a) => break a,
                Err(e) => assert!(start.elapsed() < Duration::from_secs(30), "{e}"),
            },
            Err(e) => assert!(start.elapsed() < Duration::from_secs(30), "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ack.sequence, N + 1);
    wait(
        Duration::from_secs(60),
        "the replicas hold every message, the others none",
        || {
            c.running_names().iter().all(|n| {
                let held = c.node(n).local_messages("$G", "CONV");
                if !holders.contains(&n.as_str()) {
                    return held.is_none();
                }
                held.is_some_and(|m| {
                    m.len() as u64 == N + 1
                        && m.iter().enumerate().all(|(i, x)| x.seq == i as u64 + 1)
                        && m[17].payload == b"m-00017"
                        && m[N as usize].payload == b"after"
                })
            })
        },
    )
    .await;
    let n2 = c.store_dir("n2");
    let replica = n2.join("jetstream-cluster/streams/$G/CONV");
    if replicas > 1 {
        assert!(!replica.join("convert.json").exists(), "marker left");
        assert!(!replica.join("r1.retired").exists(), "retired files left");
    }
    assert!(
        !n2.join("jetstream/$G/streams/CONV").exists(),
        "R1 files left"
    );
}

/// CONV's conversion on n2 paused before `step`, n2 stopped there and started again: the
/// conversion is taken up and finished (cut before its assignment was proposed, the stream
/// stays R1 with its marker, and the update asked again converts it).
async fn cut_by_a_restart_before(step: &'static str) {
    test_log();
    let mut c = cluster_pausing(step).await;
    r1_stream(&c).await;
    convert_until_paused(&c, step).await;
    c.stop("n2").await;
    c.restart("n2").await;
    if step == "assign" {
        // Never assigned: still the R1 stream of n2, every message there.
        let nc = connect(c.node("n2")).await;
        let v = api(&nc, "$JS.API.STREAM.INFO.CONV", Value::Null).await;
        assert_eq!(
            (&v["config"]["num_replicas"], &v["state"]["messages"]),
            (&json!(1), &json!(N)),
            "{v}"
        );
        c.node("n2").continue_conversions();
        update_answered(&c, "n2", 3).await;
    }
    check_converted(&c, 3, &["n1", "n2", "n3"]).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_cut_before_its_assignment_converts_when_asked_again() {
    cut_by_a_restart_before("assign").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_cut_once_assigned_is_finished() {
    cut_by_a_restart_before("take").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_cut_before_its_import_is_finished() {
    cut_by_a_restart_before("import").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_cut_halfway_through_its_import_is_finished() {
    cut_by_a_restart_before("import-half").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_cut_before_its_r1_files_go_is_finished() {
    cut_by_a_restart_before("retire").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_cut_before_it_takes_publishes_is_finished() {
    cut_by_a_restart_before("release").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_cut_before_it_grows_is_finished() {
    cut_by_a_restart_before("grow").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_cut_after_it_grew_forgets_its_marker() {
    cut_by_a_restart_before("forget").await;
}

/// The meta leader (another server than n2, which converts) restarted just as n2 proposes
/// the assignment: the update may fail (the client asks again) but the stream ends R3 with
/// every message and its consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_survives_a_restart_of_the_meta_leader() {
    test_log();
    let mut c = cluster_pausing("assign").await;
    r1_stream(&c).await;
    let meta = c
        .node("n1")
        .jetstream_meta()
        .and_then(|m| m.leader)
        .filter(|l| l != "n2")
        .unwrap_or_else(|| "n1".into());
    convert_until_paused(&c, "assign").await;
    c.stop(&meta).await;
    c.node("n2").continue_conversions();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.restart(&meta).await;
    update_answered(&c, "n2", 3).await;
    check_converted(&c, 3, &["n1", "n2", "n3"]).await;
    c.shutdown().await;
}

/// n3, one of the servers the stream grows onto, stopped as the conversion grows it and
/// started again a second later: the growth waits for it, and it ends with every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_survives_a_restart_of_a_new_replica() {
    test_log();
    let mut c = cluster_pausing("grow").await;
    r1_stream(&c).await;
    convert_until_paused(&c, "grow").await;
    c.stop("n3").await;
    c.node("n2").continue_conversions();
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.restart("n3").await;
    check_converted(&c, 3, &["n1", "n2", "n3"]).await;
    c.shutdown().await;
}

/// An R3 stream CONV with `N` messages and consumer D (`ACKED` acknowledged) shrunk to one
/// replica through n1, then `restarted` (the kept leader, or a removed replica) stopped and
/// started again: one replica with every message and D's progress, the others removed; grown
/// back to three, every server holds every message again.
async fn shrunk_across_a_restart(restarted: Restarted) {
    test_log();
    let mut c = crate::replication::cluster().await;
    let nc = connect(c.node("n1")).await;
    let js = jetstream::new(nc.clone());
    let s = js
        .create_stream(stream::Config {
            name: "CONV".into(),
            subjects: vec!["conv.>".into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("created");
    let leader = leader_of(&c, "CONV", "conv.x", None).await;
    let mut acks = Vec::new();
    for i in 0..N {
        acks.push(
            js.publish(format!("conv.{}", i % 5), format!("m-{i:05}").into())
                .await
                .expect("published"),
        );
    }
    for a in acks {
        a.await.expect("acknowledged");
    }
    let _d: consumer::PullConsumer = durable_with_acked(&s, "D", ACKED).await;
    let v = api(
        &nc,
        "$JS.API.STREAM.UPDATE.CONV",
        json!({"name": "CONV", "subjects": ["conv.>"], "num_replicas": 1}),
    )
    .await;
    assert_eq!(v["config"]["num_replicas"], 1, "{v}");
    let victim = match restarted {
        Restarted::Leader => leader.clone(),
        Restarted::Removed => c
            .names
            .iter()
            .find(|n| **n != leader)
            .expect("a follower")
            .clone(),
    };
    c.stop(&victim).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.restart(&victim).await;
    check_converted(&c, 1, &[leader.as_str()]).await;
    // Grown back: every server holds every message (N + the one check_converted added).
    update_answered(&c, "n1", 3).await;
    wait(
        Duration::from_secs(60),
        "every server holds every message again",
        || {
            c.running().all(|s| {
                s.local_messages("$G", "CONV").is_some_and(|m| {
                    m.len() as u64 == N + 1
                        && m.iter().enumerate().all(|(i, x)| x.seq == i as u64 + 1)
                })
            })
        },
    )
    .await;
    c.shutdown().await;
}

enum Restarted {
    Leader,
    Removed,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_r3_stream_shrunk_to_one_replica_keeps_every_message_across_its_leaders_restart() {
    shrunk_across_a_restart(Restarted::Leader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_r3_stream_shrunk_to_one_replica_drops_a_removed_replica_restarted_meanwhile() {
    shrunk_across_a_restart(Restarted::Removed).await;
}
