//! Each seed system runs against an embedded Natrium (started from the example's own
//! configuration) and must show what its README says: every check passes, and the figures that
//! prove the behaviour are asserted here by name.

use std::future::Future;
use std::time::Duration;

use natrium::Options;
use natrium_examples::common::server::find_metric;
use natrium_examples::common::{logs, Checks, Natrium};
use natrium_examples::{chat, streamspace, tapio, wegweiser};

/// The most one system may take (they take seconds): a hang fails the test instead of holding
/// up CI.
const LIMIT: Duration = Duration::from_secs(60);

/// Runs `scenario` within `LIMIT`.
async fn bounded<T>(what: &str, scenario: impl Future<Output = anyhow::Result<T>>) -> T {
    tokio::time::timeout(LIMIT, scenario)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {LIMIT:?}"))
        .unwrap_or_else(|e| panic!("{what} failed: {e:#}"))
}

async fn embedded(config: &str, base: Options) -> Natrium {
    logs::install(std::env::var_os("EXAMPLES_LOG").is_some());
    Natrium::embedded(config, base)
        .await
        .expect("server starts")
}

/// An embedded cluster of three (n1..n3) started from `config` over `base`.
async fn cluster(config: &str, base: Options) -> Natrium {
    logs::install(std::env::var_os("EXAMPLES_LOG").is_some());
    Natrium::embedded_cluster(config, base, 3)
        .await
        .expect("cluster starts")
}

/// No check failed, and each of `expected` was made (a check that was skipped cannot pass).
fn passed(c: &Checks, expected: &[&str]) {
    let failed = c.failures();
    assert!(failed.is_empty(), "failed checks: {failed:#?}");
    for what in expected {
        assert!(
            c.get(what).is_some(),
            "check {what:?} was not made; made: {:#?}",
            c.list
        );
    }
}

#[tokio::test]
async fn wegweiser_tenants_receiver_ring_buffer_dlq_replay_and_refusals() {
    let mut n = embedded(wegweiser::CONFIG, Options::default()).await;
    let c = bounded("wegweiser", wegweiser::run(&mut n)).await;
    n.shutdown().await;
    let a = wegweiser::TENANTS[0].uuid;
    let b = wegweiser::TENANTS[1].uuid;
    passed(
        &c,
        &[
            &format!("tenant {a} heartbeats and monitoring processed"),
            &format!("tenant {b} queue group shares the work"),
            &format!("tenant {a} commands answered / timed out"),
            "metrics kept per device and metric",
            "UI window is the newest points",
            "browsers receive their own tenant's live points over WebSocket",
            "the UI's user cannot publish",
            "the UI's user is refused on the NATS port (WebSocket only)",
            "malformed heartbeat refused by the receivers",
            "dead letter subject and headers",
            &format!("tenant {a} replayed after the outage, each once"),
            &format!("tenant {b} replayed after the outage, each once"),
            &format!(
                "tenant {a} state after the restart (messages, ack floor, KV, unacknowledged)"
            ),
            "dead letter kept across the restart",
            &format!("tenant {b} delivered after the restart: only the new, each once"),
            "cross-tenant publish refused",
            "cross-tenant subscribe refused",
            "login with another tenant's user refused",
            "tenant B received nothing from tenant A (commands run, stream messages)",
            "audited in /metrics (A's permission violations, B's auth failures)",
            "audited in /accountz",
            "audited in the server log (violations, failed login)",
            &format!("tenant {a} traffic in /metrics"),
            &format!("tenant {b} traffic in /metrics"),
        ],
    );
}

/// Wegweiser on three nodes: every tenant's streams and bucket with 3 replicas, and everything
/// the single server shows (the whole service restarting included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wegweiser_on_a_cluster_with_replicated_streams_and_bucket() {
    let mut n = cluster(wegweiser::CONFIG, Options::default()).await;
    let c = bounded("wegweiser on a cluster", wegweiser::run(&mut n)).await;
    n.shutdown().await;
    let a = wegweiser::TENANTS[0].uuid;
    let b = wegweiser::TENANTS[1].uuid;
    passed(
        &c,
        &[
            &format!("tenant {a} streams and bucket replicated"),
            &format!("tenant {b} streams and bucket replicated"),
            &format!("tenant {a} heartbeats and monitoring processed"),
            "dead letter subject and headers",
            &format!("tenant {a} replayed after the outage, each once"),
            &format!(
                "tenant {a} state after the restart (messages, ack floor, KV, unacknowledged)"
            ),
            &format!("tenant {b} delivered after the restart: only the new, each once"),
            "browsers receive their own tenant's live points over WebSocket",
            "audited in /metrics (A's permission violations, B's auth failures)",
            "audited in /accountz",
            &format!("tenant {a} traffic in /metrics"),
            &format!("tenant {b} traffic in /metrics"),
        ],
    );
}

#[tokio::test]
async fn tapio_collectors_engine_siem_permissions_and_replay() {
    let mut n = embedded(tapio::CONFIG, Options::default()).await;
    let c = bounded("tapio", tapio::run(&mut n)).await;
    n.shutdown().await;
    passed(
        &c,
        &[
            "round 1: every event acknowledged once, in sequence",
            "correlations found and exported to the SIEM",
            "per-service permissions refuse other services' subjects",
            "violations counted in /metrics",
            "violation in the server log",
            "events waiting for the engine during its outage",
            "caught up after the outage: every correlation exported once",
            "replayed history gives the same correlations",
            "replay complete (v2 delivered, acknowledged)",
            "/metrics: stream messages, engine's unacknowledged events",
        ],
    );
}

/// Tapio on the seed's three-node cluster: the events stream gets its 3 replicas, and the
/// stream leader's node goes away while the collectors publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tapio_on_a_cluster_through_the_stream_leaders_loss() {
    let mut n = cluster(tapio::CONFIG, Options::default()).await;
    let c = bounded("tapio on a cluster", tapio::run(&mut n)).await;
    n.shutdown().await;
    passed(
        &c,
        &[
            "events stream created with 3 replicas",
            "round 1: every event acknowledged once, in sequence",
            "correlations found and exported to the SIEM",
            "violations counted in /metrics",
            "caught up after the outage: every correlation exported once",
            "replayed history gives the same correlations",
            "stream info: 3 replicas, a new leader, the returning node current again",
            "leader loss: every acknowledged event in the stream once",
            "leader loss: correlation acknowledged every event",
            "leader loss: correlation-v2 acknowledged every event",
            "leader loss: both engines correlate every incident, each exported once",
            "/metrics: stream messages, engine's unacknowledged events",
        ],
    );
}

#[tokio::test]
async fn chat_pods_queue_group_health_work_queue_and_reconnect() {
    let mut n = embedded(chat::CONFIG, Options::default()).await;
    let c = bounded("chat", chat::run(&mut n)).await;
    n.shutdown().await;
    passed(
        &c,
        &[
            "queue group: each request processed once, by both instances",
            "chunks routed to pod-1, to pod-2 (sess_4 by broadcast), broadcasts pod-1 ignored",
            "core NATS: a request sent while no worker runs is lost",
            "healthy pod answers",
            "hung pod times out",
            "missing pod: no responders",
            "requests kept while no worker runs",
            "work queue: each request processed once, then removed from the stream",
            "pods saw the disconnect and reconnected",
            "requests published during the outage processed",
            "after the restart: chunks routed",
        ],
    );
}

/// Chat on three nodes: the work queue with 3 replicas keeps working while the node that leads
/// it goes away, and through a restart of the whole service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_on_a_cluster_through_a_nodes_loss() {
    let mut n = cluster(chat::CONFIG, Options::default()).await;
    let c = bounded("chat on a cluster", chat::run(&mut n)).await;
    n.shutdown().await;
    passed(
        &c,
        &[
            "queue group: each request processed once, by both instances",
            "requests kept while no worker runs",
            "work queue: each request processed once, then removed from the stream",
            "pods saw the disconnect and reconnected",
            "requests published during the outage processed",
            "node loss: every request processed, the work queue empty after",
            "work queue: 3 replicas, a new leader, the returning node current again",
        ],
    );
}

/// StreamSpace on three nodes: both streams with 3 replicas, monitoring on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamspace_on_a_cluster_with_replicated_streams() {
    let mut n = cluster("", streamspace::compose_options()).await;
    let c = bounded("streamspace on a cluster", streamspace::run(&mut n)).await;
    n.shutdown().await;
    passed(
        &c,
        &[
            "event and dead-letter streams replicated",
            "dead letter: subject, reason, deliveries, install",
            "Docker controller back: healthy again, missed sessions created",
            "/jsz and /healthz",
            "/metrics: dead letters, Docker controller's unacknowledged events",
        ],
    );
}

#[tokio::test]
async fn streamspace_controllers_backoff_dlq_and_circuit_breaker() {
    let mut n = embedded("", streamspace::compose_options()).await;
    let c = bounded("streamspace", streamspace::run(&mut n)).await;
    n.shutdown().await;
    passed(
        &c,
        &[
            "controllers registered by heartbeat",
            "sessions running (status events)",
            "each controller took its platform (k8s created, ignored broadcast; docker created)",
            "dead letter: subject, reason, deliveries, install",
            "retried with exponential backoff before dead-lettering",
            "API marks the silent controller unhealthy",
            "events waiting for the Docker controller",
            "Docker controller back: healthy again, missed sessions created",
            "/metrics: dead letters, Docker controller's unacknowledged events",
        ],
    );
}

/// The seed's own test (chat, "Integration Tests"): an embedded server on a random port, a
/// subscriber, a publish, delivery within a second; written against `natrium::Server` as the
/// seed writes it against nats-server's `server.New`.
#[tokio::test]
async fn chat_seed_embedded_server_test() {
    use futures::StreamExt;
    let s = natrium::Server::start(Options {
        host: "127.0.0.1".into(),
        port: -1,
        ..Options::default()
    })
    .await
    .expect("server starts");
    let nc = async_nats::connect(s.client_url()).await.expect("connects");
    let mut sub = nc
        .subscribe("chat.workflow.execute.test")
        .await
        .expect("sub");
    nc.publish("chat.workflow.execute.test", "test".into())
        .await
        .expect("pub");
    let got = tokio::time::timeout(Duration::from_secs(1), sub.next())
        .await
        .expect("message received within 1 s")
        .expect("subscription open");
    assert_eq!(&got.payload[..], b"test");
    drop(nc);
    s.shutdown().await;
}

#[test]
fn metrics_are_found_by_name_and_labels() {
    let text = "# HELP x y\nnatrium_account_in_msgs_total{account=\"A\"} 12\nnatrium_account_in_msgs_total{account=\"B\"} 3\nnatrium_in_msgs_total 15\n";
    assert_eq!(
        find_metric(text, "natrium_account_in_msgs_total", &[("account", "B")]),
        Some(3.0)
    );
    assert_eq!(find_metric(text, "natrium_in_msgs_total", &[]), Some(15.0));
    assert_eq!(
        find_metric(text, "natrium_account_in_msgs_total", &[("account", "C")]),
        None
    );
}
