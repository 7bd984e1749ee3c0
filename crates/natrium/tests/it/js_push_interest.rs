//! A push consumer made before anyone subscribes to its deliver subject (nats-py creates the
//! consumer, then subscribes; a client reconnects; a subscriber comes back) delivers as soon as
//! a matching subscription appears: a literal one, a wildcard one, one on another server of
//! the cluster (over the route), nats-py's plain and ordered push subscriptions; an ephemeral
//! one lives while subscribed and expires after its last subscriber went. The servers
//! here never poll for that interest (`push_interest_poll` of an hour): only the router's watch
//! on the deliver subject can wake the consumer.

use std::process::Command;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::push, consumer::AckPolicy, stream};
use bytes::Bytes;
use futures::StreamExt;
use natrium::{Options, Server};
use serde_json::json;

use crate::common::{api, eventually, js_opts, start};

/// Longer than any test runs: the consumers' interest poll never fires.
const NO_POLL: Duration = Duration::from_secs(3600);

/// How long a message may take once its subscription is there.
const WITHIN: Duration = Duration::from_secs(10);

/// `o` with the interest poll switched off.
fn no_poll(mut o: Options) -> Options {
    o.jetstream
        .as_mut()
        .expect("jetstream on")
        .push_interest_poll = Some(NO_POLL);
    o
}

/// A stream `S` on `push.>` holding one message, `first`, and a durable push consumer on it
/// delivering to `deliver` that nobody subscribes to yet.
async fn stream_and_consumer(js: &jetstream::Context, deliver: &str) {
    let st = js
        .create_stream(stream::Config {
            name: "S".into(),
            subjects: vec!["push.>".into()],
            ..Default::default()
        })
        .await
        .expect("stream");
    publish(js, "first").await;
    st.create_consumer(push::Config {
        durable_name: Some("C".into()),
        deliver_subject: deliver.into(),
        ack_policy: AckPolicy::None,
        ..Default::default()
    })
    .await
    .expect("push consumer");
}

async fn publish(js: &jetstream::Context, payload: &'static str) {
    js.publish("push.a", Bytes::from_static(payload.as_bytes()))
        .await
        .expect("publish")
        .await
        .expect("puback");
}

/// The next message of `sub`, which must come within `WITHIN`.
async fn next(sub: &mut async_nats::Subscriber, what: &str) -> async_nats::Message {
    tokio::time::timeout(WITHIN, sub.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: no message within {WITHIN:?}"))
        .expect("subscription open")
}

/// Waits until `s` sees interest in `subject` in the global account, or none (`want`).
async fn interest(s: &Server, subject: &str, want: bool) {
    let c = s.internal_client("$G").expect("internal client");
    eventually(|| c.has_interest(subject) == want).await;
}

#[tokio::test]
async fn a_subscription_made_after_the_consumer_gets_its_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(no_poll(js_opts(dir.path()))).await;
    let nc = crate::common::client(&s).await;
    let js = jetstream::new(nc.clone());
    stream_and_consumer(&js, "deliver.c").await;
    // Give the consumer's first tick (which finds nobody) time to pass.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut sub = nc.subscribe("deliver.c").await.expect("subscribe");
    let m = next(&mut sub, "first message after SUB").await;
    assert_eq!(&m.payload[..], b"first");

    // The subscriber goes away, a message is stored meanwhile, then it comes back.
    sub.unsubscribe().await.expect("unsubscribe");
    interest(&s, "deliver.c", false).await;
    publish(&js, "second").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = nc.subscribe("deliver.c").await.expect("subscribe again");
    let m = next(&mut again, "message stored while nobody listened").await;
    assert_eq!(&m.payload[..], b"second");
    s.shutdown().await;
}

#[tokio::test]
async fn a_wildcard_subscription_covering_the_deliver_subject_wakes_the_consumer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(no_poll(js_opts(dir.path()))).await;
    let nc = crate::common::client(&s).await;
    let js = jetstream::new(nc.clone());
    stream_and_consumer(&js, "deliver.w.c").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Subscriptions that do not cover it change nothing.
    let mut beside = nc.subscribe("deliver.*.x").await.expect("subscribe");
    let mut sub = nc.subscribe("deliver.>").await.expect("subscribe");
    let m = next(&mut sub, "first message after a wildcard SUB").await;
    assert_eq!(&m.payload[..], b"first");
    assert_eq!(m.subject.as_str(), "push.a");
    let stray = tokio::time::timeout(Duration::from_millis(200), beside.next()).await;
    assert!(stray.is_err(), "nothing for deliver.*.x: {stray:?}");
    s.shutdown().await;
}

#[tokio::test]
async fn an_ephemeral_push_consumer_lives_while_subscribed_and_expires_after_its_subscriber() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(no_poll(js_opts(dir.path()))).await;
    let nc = crate::common::client(&s).await;
    let js = jetstream::new(nc.clone());
    js.create_stream(stream::Config {
        name: "E".into(),
        subjects: vec!["eph.>".into()],
        ..Default::default()
    })
    .await
    .expect("stream");
    let mut sub = nc.subscribe("deliver.e").await.expect("subscribe");
    let r = api(
        &nc,
        "$JS.API.CONSUMER.CREATE.E",
        json!({"stream_name": "E", "config": {"deliver_subject": "deliver.e",
            "ack_policy": "none", "inactive_threshold": 1_000_000_000i64}}),
    )
    .await;
    let name = r["name"].as_str().unwrap_or_else(|| panic!("created: {r}"));
    let info = format!("$JS.API.CONSUMER.INFO.E.{name}");
    // Subscribed for longer than its threshold: still there, and delivering.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let r = api(&nc, &info, serde_json::Value::Null).await;
    assert_eq!(r["push_bound"], true, "{r}");
    js.publish("eph.a", Bytes::from_static(b"x"))
        .await
        .expect("publish")
        .await
        .expect("puback");
    assert_eq!(&next(&mut sub, "a delivery").await.payload[..], b"x");
    // The subscriber goes: the consumer hears of it and goes a threshold later.
    sub.unsubscribe().await.expect("unsubscribe");
    let gone = tokio::time::timeout(WITHIN, async {
        loop {
            let r = api(&nc, &info, serde_json::Value::Null).await;
            if r["error"]["code"] == 404 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        gone.is_ok(),
        "consumer {name} still there {WITHIN:?} after its subscriber went"
    );
    s.shutdown().await;
}

/// A JetStream server of cluster `c1` without the interest poll.
fn node(name: &str, dir: &std::path::Path, routes: &[u16]) -> Options {
    no_poll(Options {
        http_port: None,
        http_host: String::new(),
        ..crate::replication::node_opts(name, dir, routes)
    })
}

#[tokio::test]
async fn a_subscription_on_another_server_reaches_the_consumer_over_the_route() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = start(node("n1", dir.path(), &[])).await;
    let b = start(node(
        "n2",
        dir.path(),
        &[a.cluster_port().expect("cluster port")],
    ))
    .await;
    eventually(|| a.num_routes() == 1 && b.num_routes() == 1).await;
    // The stream (R1) and its consumer live on n1, where they were made.
    let js = jetstream::new(crate::common::client(&a).await);
    stream_and_consumer(&js, "deliver.r").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let nb = crate::common::client(&b).await;
    let mut sub = nb.subscribe("deliver.r").await.expect("subscribe on n2");
    let m = next(&mut sub, "first message through the route").await;
    assert_eq!(&m.payload[..], b"first");
    // Both servers are still up with their stream where it was.
    assert_eq!(a.num_routes(), 1);
    b.shutdown().await;
    a.shutdown().await;
}

const COMPAT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compat");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_py_push_and_ordered_subscriptions_get_their_first_message() {
    let available = Command::new("python3")
        .args(["-c", "import nats.js"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        assert!(
            std::env::var_os("NATRIUM_REQUIRE_NATS_PY").is_none(),
            "nats-py is required here (python3 -m pip install nats-py)"
        );
        eprintln!("skipped: python3 with nats-py not found (python3 -m pip install nats-py)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(no_poll(js_opts(dir.path()))).await;
    let url = s.client_url();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg("nats_py_push_interest.py")
            .arg(url)
            .current_dir(COMPAT)
            .output()
            .expect("run nats-py")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("push interest ok"),
        "nats_py_push_interest.py failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    s.shutdown().await;
}
