//! Replicated JetStream on three embedded servers (one process, real routes on loopback, a
//! store directory each), driven by async-nats: the meta group forms, R3 streams are created
//! through any server and placed on three, PubAcks come from the leader after a majority
//! commit, the leader can go away (stream, consumer and KV keep working, de-duplication holds),
//! and placement refuses what the cluster can not hold.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, kv, stream};
use futures::StreamExt;
use natrium::options::{ClusterOptions, RouteUrl};
use natrium::{Options, Server};
use serde_json::json;

use crate::common::{api, js_opts, start};

pub(crate) fn node_opts(name: &str, dir: &std::path::Path, routes: &[u16]) -> Options {
    Options {
        server_name: Some(name.into()),
        cluster: Some(ClusterOptions {
            name: Some("c1".into()),
            host: "127.0.0.1".into(),
            port: -1,
            routes: routes
                .iter()
                .map(|p| RouteUrl::parse(&format!("nats://127.0.0.1:{p}")).expect("url"))
                .collect(),
            ..ClusterOptions::default()
        }),
        http_port: Some(-1),
        http_host: "127.0.0.1".into(),
        ..js_opts(&dir.join(name))
    }
}

async fn get_json(s: &Server, path: &str) -> (u16, serde_json::Value) {
    let r = reqwest::get(format!("{}{path}", s.monitor_url().expect("monitor")))
        .await
        .expect("http");
    let code = r.status().as_u16();
    (code, r.json().await.expect("json"))
}

pub(crate) struct Cluster {
    _dir: tempfile::TempDir,
    /// `n1..`, in start order.
    pub(crate) names: Vec<String>,
    nodes: Vec<Option<Server>>,
    opts: NodeOpts,
}

/// How a cluster's servers are configured: `opts(name, dir, routes)`.
pub(crate) type NodeOpts =
    std::sync::Arc<dyn Fn(&str, &std::path::Path, &[u16]) -> Options + Send + Sync>;

impl Cluster {
    /// `n` JetStream servers `n1..` made by `opts(name, dir, routes)`: the others route to n1;
    /// waits (at most `within`) for the meta group of `n`.
    pub(crate) async fn start(
        n: usize,
        within: Duration,
        opts: impl Fn(&str, &std::path::Path, &[u16]) -> Options + Send + Sync + 'static,
    ) -> Cluster {
        let opts: NodeOpts = std::sync::Arc::new(opts);
        let dir = tempfile::tempdir().expect("tempdir");
        let n1 = start(opts("n1", dir.path(), &[])).await;
        let p1 = n1.cluster_port().expect("cluster port");
        let mut nodes = vec![Some(n1)];
        for i in 2..=n {
            nodes.push(Some(start(opts(&format!("n{i}"), dir.path(), &[p1])).await));
        }
        let c = Cluster {
            _dir: dir,
            names: (1..=n).map(|i| format!("n{i}")).collect(),
            nodes,
            opts,
        };
        wait(within, &format!("the meta group of {n}"), || {
            let views: Vec<_> = c.running().map(|s| s.jetstream_meta()).collect();
            let leader = views[0].as_ref().and_then(|v| v.leader.clone());
            leader.is_some()
                && views.iter().all(|v| {
                    v.as_ref()
                        .is_some_and(|v| v.leader == leader && v.members.len() == n)
                })
        })
        .await;
        c
    }

    pub(crate) fn node(&self, name: &str) -> &Server {
        let i = self
            .names
            .iter()
            .position(|n| n == name)
            .expect("node name");
        self.nodes[i].as_ref().expect("node running")
    }

    pub(crate) fn running(&self) -> impl Iterator<Item = &Server> {
        self.nodes.iter().flatten()
    }

    /// The names of the servers running, in start order.
    pub(crate) fn running_names(&self) -> Vec<String> {
        self.names
            .iter()
            .zip(&self.nodes)
            .filter(|(_, s)| s.is_some())
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub(crate) async fn stop(&mut self, name: &str) {
        let i = self
            .names
            .iter()
            .position(|n| n == name)
            .expect("node name");
        if let Some(s) = self.nodes[i].take() {
            s.shutdown().await;
        }
    }

    /// The store directory of server `name`.
    pub(crate) fn store_dir(&self, name: &str) -> std::path::PathBuf {
        self._dir.path().join(name)
    }

    /// Starts stopped server `name` again on its store, routed to a running server.
    pub(crate) async fn restart(&mut self, name: &str) {
        let i = self
            .names
            .iter()
            .position(|n| n == name)
            .expect("node name");
        assert!(self.nodes[i].is_none(), "{name} is running");
        let route = self
            .running()
            .find_map(|s| s.cluster_port())
            .expect("a running server");
        self.nodes[i] = Some(start((self.opts)(name, self._dir.path(), &[route])).await);
    }

    pub(crate) async fn shutdown(mut self) {
        for s in self.nodes.iter_mut().filter_map(Option::take) {
            s.shutdown().await;
        }
    }
}

/// Three JetStream servers: n2 and n3 route to n1; waits for the meta group of three.
pub(crate) async fn cluster() -> Cluster {
    Cluster::start(3, Duration::from_secs(30), node_opts).await
}

/// A durable pull consumer `name` on `stream` (30 s ack wait) that has been handed its first
/// `n` messages and acknowledged each.
pub(crate) async fn durable_with_acked(
    stream: &stream::Stream,
    name: &str,
    n: usize,
) -> consumer::PullConsumer {
    let durable: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.into()),
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut msgs = durable
        .fetch()
        .max_messages(n)
        .messages()
        .await
        .expect("fetch");
    for _ in 0..n {
        let m = tokio::time::timeout(Duration::from_secs(10), msgs.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("message");
        m.double_ack().await.expect("ack");
    }
    durable
}

/// Polls `f` every 50 ms until it holds; panics after `within`.
pub(crate) async fn wait(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < within, "not in {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn connect(s: &Server) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(10)))
        .connect(s.client_url())
        .await
        .expect("connect")
}

/// The stream's leader (other than `not`) as all running servers agree on it, once every
/// running server sees its interest in `subject`.
pub(crate) async fn leader_of(
    c: &Cluster,
    stream: &str,
    subject: &str,
    not: Option<&str>,
) -> String {
    let mut agreed = None;
    wait(
        Duration::from_secs(20),
        "a stream leader all agree on",
        || {
            let seen: Vec<Option<String>> =
                c.running().map(|s| s.stream_leader("$G", stream)).collect();
            agreed = seen[0]
                .clone()
                .filter(|l| seen.iter().all(|x| x.as_ref() == Some(l)))
                .filter(|l| Some(l.as_str()) != not);
            agreed.is_some()
                && c.running().all(|s| {
                    s.internal_client("$G")
                        .expect("account")
                        .has_interest(subject)
                })
        },
    )
    .await;
    agreed.expect("leader")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_meta_group_forms_and_every_server_knows_its_leader() {
    let c = cluster().await;
    let views: Vec<_> = c
        .running()
        .map(|s| s.jetstream_meta().expect("clustered"))
        .collect();
    assert_eq!(views[0].members, vec!["n1", "n2", "n3"]);
    assert!(views.iter().all(|v| v.leader == views[0].leader));
    // /jsz in cluster form, /healthz?js-enabled-only=1 healthy on every server.
    for s in c.running() {
        let (code, v) = get_json(s, "/jsz").await;
        assert_eq!(code, 200);
        let m = &v["meta_cluster"];
        assert_eq!(m["name"], "c1", "{v}");
        assert_eq!(m["leader"], json!(views[0].leader), "{v}");
        assert_eq!(m["cluster_size"], 3, "{v}");
        assert_eq!(m["replicas"].as_array().map(Vec::len), Some(2), "{v}");
        let (code, v) = get_json(s, "/healthz?js-enabled-only=1").await;
        assert_eq!((code, &v["status"]), (200, &json!("ok")), "{v}");
    }
    c.shutdown().await;
}

/// A server of a JetStream cluster whose peers never come is not healthy: no meta leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_a_meta_leader_is_unhealthy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = free.local_addr().expect("addr").port();
    drop(free);
    let s = start(node_opts("n1", dir.path(), &[dead])).await;
    let (code, v) = get_json(&s, "/healthz?js-enabled-only=1").await;
    assert_eq!(code, 503, "{v}");
    assert_eq!(
        v["error"], "JetStream has not established contact with a meta leader",
        "{v}"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_r3_stream_is_placed_on_three_servers_and_acknowledged_by_its_leader() {
    let c = cluster().await;
    let nc = connect(c.node("n2")).await;
    let js = jetstream::new(nc.clone());
    let info = js
        .create_stream(stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["orders.>".into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("created")
        .cached_info()
        .clone();
    assert_eq!(info.config.num_replicas, 3);
    let ci = info.cluster.expect("cluster section");
    assert_eq!(ci.name.as_deref(), Some("c1"));
    let leader = leader_of(&c, "ORDERS", "orders.x", None).await;
    // Publish through a server that may not be the leader: PubAcks come back all the same.
    let pubc = connect(c.node("n3")).await;
    let pjs = jetstream::new(pubc);
    for i in 0..50 {
        let ack = pjs
            .publish(format!("orders.{i}"), format!("order {i}").into())
            .await
            .expect("published")
            .await
            .expect("acknowledged");
        assert_eq!(ack.sequence, i + 1);
        assert_eq!(ack.stream, "ORDERS");
    }
    // Info from any server names the leader and the two other replicas.
    for s in c.running() {
        let nc = connect(s).await;
        let v = api(&nc, "$JS.API.STREAM.INFO.ORDERS", serde_json::Value::Null).await;
        assert_eq!(v["state"]["messages"], 50, "{v}");
        assert_eq!(v["cluster"]["leader"], json!(leader), "{v}");
        assert_eq!(v["cluster"]["name"], "c1");
        let replicas = v["cluster"]["replicas"].as_array().expect("replicas");
        assert_eq!(replicas.len(), 2, "{v}");
        assert!(replicas.iter().all(|r| r["name"] != json!(leader)));
    }
    // NAMES from every server lists it.
    for s in c.running() {
        let nc = connect(s).await;
        let v = api(&nc, "$JS.API.STREAM.NAMES", serde_json::Value::Null).await;
        assert_eq!(v["streams"], json!(["ORDERS"]), "{v}");
    }
    // Purge goes through the group.
    let v = api(
        &nc,
        "$JS.API.STREAM.PURGE.ORDERS",
        json!({"filter": "orders.1"}),
    )
    .await;
    assert_eq!(v["purged"], 1, "{v}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_refuses_more_replicas_than_servers() {
    let c = cluster().await;
    let nc = connect(c.node("n1")).await;
    let v = api(
        &nc,
        "$JS.API.STREAM.CREATE.BIG",
        json!({"name": "BIG", "subjects": ["big"], "num_replicas": 5}),
    )
    .await;
    assert_eq!(v["error"]["err_code"], 10005, "{v}");
    assert!(
        v["error"]["description"]
            .as_str()
            .is_some_and(|d| d.starts_with("no suitable peers for placement")),
        "{v}"
    );
    let v = api(
        &nc,
        "$JS.API.STREAM.CREATE.TAGGED",
        json!({"name": "TAGGED", "num_replicas": 3, "placement": {"tags": ["ssd"]}}),
    )
    .await;
    assert_eq!(v["error"]["err_code"], 10005, "{v}");
    assert!(
        v["error"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("tags not matched ['ssd']")),
        "{v}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_survives_its_leader_and_deduplicates_across_the_change() {
    let mut c = cluster().await;
    let nc = connect(c.node("n1")).await;
    let js = jetstream::new(nc);
    js.create_stream(stream::Config {
        name: "EV".into(),
        subjects: vec!["ev.>".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .expect("created");
    let old = leader_of(&c, "EV", "ev.x", None).await;
    // A client on a server that stays.
    let stay = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != old)
        .expect("another server");
    let nc = connect(c.node(stay)).await;
    let js = jetstream::new(nc.clone());
    let publish = |id: String| {
        let js = js.clone();
        async move {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", id.as_str());
            js.publish_with_headers("ev.x", h, "data".into())
                .await
                .expect("sent")
                .await
        }
    };
    for i in 0..20 {
        publish(format!("id-{i}")).await.expect("acknowledged");
    }
    let durable = js
        .get_stream("EV")
        .await
        .expect("stream")
        .create_consumer(consumer::pull::Config {
            durable_name: Some("work".into()),
            // Delivered but unacknowledged messages come again after this, on any leader.
            ack_wait: Duration::from_secs(2),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut msgs = durable.messages().await.expect("messages");
    for _ in 0..10 {
        let m = tokio::time::timeout(Duration::from_secs(10), msgs.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("message");
        m.ack().await.expect("ack");
    }
    drop(msgs);
    // The consumer's progress reaches the replicas within a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = Instant::now();
    c.stop(&old).await;
    let new = leader_of(&c, "EV", "ev.x", Some(&old)).await;
    assert_ne!(new, old);
    // Retries of already stored ids are duplicates on the new leader too; new ids are stored.
    let ack = loop {
        match publish("id-5".into()).await {
            Ok(a) => break a,
            Err(_) => {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "no PubAck after failover"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(ack.duplicate, "retry of id-5 is a duplicate");
    assert_eq!(ack.sequence, 6);
    let ack = publish("id-20".into()).await.expect("stored");
    assert!(!ack.duplicate);
    assert_eq!(ack.sequence, 21);
    // The consumer resumes on the new leader where its replicated progress left it.
    let stream = js.get_stream("EV").await.expect("stream");
    let durable: consumer::PullConsumer = stream.get_consumer("work").await.expect("consumer");
    let mut msgs = durable.messages().await.expect("messages");
    let mut seen = Vec::new();
    while seen.len() < 11 {
        let m = tokio::time::timeout(Duration::from_secs(10), msgs.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("message");
        seen.push(m.info().expect("info").stream_sequence);
        m.ack().await.expect("ack");
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (11..=21).collect::<Vec<u64>>(),
        "no acked message again"
    );
    c.shutdown().await;
}

/// `STREAM.LEADER.STEPDOWN` through a server that may not lead: another server leads the
/// stream, de-duplication and the consumer's acknowledged progress carry over at once (no wait
/// for the periodic progress sync); `META.LEADER.STEPDOWN` from a system-account client moves
/// the meta leadership.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stepdowns_hand_stream_and_meta_leadership_to_another_server() {
    let c = cluster().await;
    let nc = connect(c.node("n2")).await;
    let js = jetstream::new(nc.clone());
    js.create_stream(stream::Config {
        name: "SD".into(),
        subjects: vec!["sd.>".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .expect("created");
    let old = leader_of(&c, "SD", "sd.x", None).await;
    let publish = |id: String| {
        let js = js.clone();
        async move {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", id.as_str());
            js.publish_with_headers("sd.x", h, "data".into())
                .await
                .expect("sent")
                .await
        }
    };
    for i in 1..=5 {
        publish(format!("id-{i}")).await.expect("acknowledged");
    }
    // Exactly three delivered (and acknowledged): none pending when the leader changes.
    durable_with_acked(&js.get_stream("SD").await.expect("stream"), "w", 3).await;

    let v = api(
        &connect(c.node("n3")).await,
        "$JS.API.STREAM.LEADER.STEPDOWN.SD",
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(v["success"], true, "{v}");
    assert_eq!(
        v["type"], "io.nats.jetstream.api.v1.stream_leader_stepdown_response",
        "{v}"
    );
    let new = leader_of(&c, "SD", "sd.x", Some(&old)).await;
    assert_ne!(new, old);
    let ack = publish("id-5".into()).await.expect("acknowledged");
    assert!(ack.duplicate, "id-5 again is a duplicate on the new leader");
    assert_eq!(ack.sequence, 5);
    let ack = publish("id-6".into()).await.expect("acknowledged");
    assert_eq!((ack.sequence, ack.duplicate), (6, false));
    let durable: consumer::PullConsumer = js
        .get_stream("SD")
        .await
        .expect("stream")
        .get_consumer("w")
        .await
        .expect("consumer");
    let mut msgs = durable.messages().await.expect("messages");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(10), msgs.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("message");
        seen.push(m.info().expect("info").stream_sequence);
        m.double_ack().await.expect("ack");
    }
    assert_eq!(
        seen,
        vec![4, 5, 6],
        "acked messages are not delivered again"
    );
    drop(msgs);

    // The meta leader steps down on a system-account request made through any server.
    let meta_old = c
        .node("n1")
        .jetstream_meta()
        .and_then(|v| v.leader)
        .expect("meta leader");
    let sys = c.node("n1").internal_client("$SYS").expect("system");
    let mut inbox = sys.subscribe("_INBOX.meta-sd", None, 8).expect("inbox");
    sys.publish(
        "$JS.API.META.LEADER.STEPDOWN",
        Some("_INBOX.meta-sd"),
        None,
        b"",
    )
    .expect("request");
    let m = tokio::time::timeout(Duration::from_secs(15), inbox.next())
        .await
        .expect("answer in time")
        .expect("answer");
    let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("json");
    assert_eq!(v["success"], true, "{v}");
    assert_eq!(
        v["type"],
        "io.nats.jetstream.api.v1.meta_leader_stepdown_response"
    );
    wait(
        Duration::from_secs(10),
        "a new meta leader all agree on",
        || {
            let views: Vec<_> = c.running().filter_map(|s| s.jetstream_meta()).collect();
            let l = views[0].leader.clone();
            l.is_some() && l.as_deref() != Some(&meta_old) && views.iter().all(|v| v.leader == l)
        },
    )
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kv_bucket_with_three_replicas() {
    let mut c = cluster().await;
    let nc = connect(c.node("n3")).await;
    let js = jetstream::new(nc);
    let bucket = js
        .create_key_value(kv::Config {
            bucket: "cfg".into(),
            history: 3,
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("bucket");
    bucket.put("a", "1".into()).await.expect("put");
    bucket.put("a", "2".into()).await.expect("put");
    bucket.put("b", "x".into()).await.expect("put");
    let v = api(
        &connect(c.node("n1")).await,
        "$JS.API.STREAM.INFO.KV_cfg",
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(v["config"]["num_replicas"], 3, "{v}");
    let old = leader_of(&c, "KV_cfg", "$KV.cfg.a", None).await;
    let stay = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != old)
        .expect("another server");
    let nc = connect(c.node(stay)).await;
    c.stop(&old).await;
    leader_of(&c, "KV_cfg", "$KV.cfg.a", Some(&old)).await;
    let js = jetstream::new(nc);
    let bucket = js.get_key_value("cfg").await.expect("bucket");
    let started = Instant::now();
    loop {
        match bucket.get("a").await {
            Ok(Some(v)) => {
                assert_eq!(&v[..], b"2");
                break;
            }
            other => {
                assert!(started.elapsed() < Duration::from_secs(20), "{other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    bucket
        .put("b", "y".into())
        .await
        .expect("put after failover");
    assert_eq!(
        bucket.get("b").await.expect("get").as_deref(),
        Some(&b"y"[..])
    );
    c.shutdown().await;
}

/// Three `natrium` processes: the stream leader is killed with SIGKILL while a client publishes
/// with `Nats-Msg-Id` and retries; every acknowledged message is there exactly once after the
/// failover, and the killed server, restarted on its files, catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_process_is_killed_and_nothing_acknowledged_is_lost() {
    use std::process::{Child, Command, Stdio};
    const BIN: &str = env!("CARGO_BIN_EXE_natrium");
    struct Proc(Child);
    impl Drop for Proc {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let read_port = |log: &std::path::Path, what: &str| -> u16 {
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(line) = text.lines().rev().find(|l| l.contains(what)) {
                return line
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.trim().parse().ok())
                    .expect("port");
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no {what:?} in {text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let spawn = |name: &str, routes: &[u16]| -> (Proc, u16, u16) {
        let routes: Vec<String> = routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        let conf = dir.path().join(format!("{name}.conf"));
        std::fs::write(
            &conf,
            format!(
                "server_name: {name}\nlisten: 127.0.0.1:-1\njetstream {{ store_dir: {:?} }}\ncluster {{ name: c1, listen: 127.0.0.1:-1, routes: [{}] }}\n",
                dir.path().join(name),
                routes.join(", ")
            ),
        )
        .expect("config");
        let log = dir.path().join(format!("{name}.log"));
        let _ = std::fs::remove_file(&log);
        let child = Command::new(BIN)
            .arg("-c")
            .arg(&conf)
            .arg("-l")
            .arg(&log)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let client = read_port(&log, "Listening for client connections on");
        let cluster = read_port(&log, "Listening for route connections on");
        (Proc(child), client, cluster)
    };
    let (p1, c1, r1) = spawn("n1", &[]);
    let (p2, c2, r2) = spawn("n2", &[r1]);
    let (p3, c3, r3) = spawn("n3", &[r1]);
    let mut procs = vec![Some(p1), Some(p2), Some(p3)];
    let ports = [c1, c2, c3];
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect();
    let nc = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(3)))
        .connect(urls.clone())
        .await
        .expect("connect");
    let js = jetstream::new(nc.clone());
    // The meta group needs a moment: retry the create (bounded).
    let started = Instant::now();
    loop {
        let v = api(
            &nc,
            "$JS.API.STREAM.CREATE.K",
            json!({"name": "K", "subjects": ["k.>"], "num_replicas": 3, "allow_direct": true}),
        )
        .await;
        if v.get("error").is_none() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let publish = |i: u64| {
        let js = js.clone();
        async move {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", format!("m-{i}").as_str());
            let ack = js
                .publish_with_headers("k.x", h, format!("{i}").into())
                .await
                .ok()?;
            tokio::time::timeout(Duration::from_secs(3), ack)
                .await
                .ok()?
                .ok()
        }
    };
    // Retry each message until acknowledged (bounded): with ids, retries are harmless.
    let mut acked = Vec::new();
    let send = |i: u64| async move {
        let started = Instant::now();
        loop {
            if let Some(a) = publish(i).await {
                return a;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "message {i} never acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    for i in 1..=100 {
        acked.push(send(i).await.sequence);
    }
    let info = api(&nc, "$JS.API.STREAM.INFO.K", serde_json::Value::Null).await;
    let leader = info["cluster"]["leader"]
        .as_str()
        .expect("leader")
        .to_string();
    let idx: usize = leader[1..].parse::<usize>().expect("n<i>") - 1;
    let killed = Instant::now();
    if let Some(mut p) = procs[idx].take() {
        unsafe { libc::kill(p.0.id() as i32, libc::SIGKILL) };
        let _ = p.0.wait();
    }
    acked.push(send(101).await.sequence);
    let failover = killed.elapsed();
    eprintln!("failover: leader {leader} killed, next PubAck after {failover:?}");
    for i in 102..=150 {
        acked.push(send(i).await.sequence);
    }
    assert_eq!(
        acked,
        (1..=150).collect::<Vec<u64>>(),
        "each message once, in order"
    );
    // The killed server comes back on its files and catches up.
    let others: Vec<u16> = [r1, r2, r3]
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != idx)
        .map(|(_, p)| *p)
        .collect();
    let (back, cport, _) = spawn(&leader, &others);
    procs[idx] = Some(back);
    let local = async_nats::connect(format!("nats://127.0.0.1:{cport}"))
        .await
        .expect("connect");
    let started = Instant::now();
    loop {
        // A direct get is answered from the replica's own store once it holds the message (a
        // replica that lacks it leaves the request to the leader).
        let r = local
            .request(
                "$JS.API.DIRECT.GET.K",
                json!({"seq": 150}).to_string().into(),
            )
            .await;
        if let Ok(m) = &r {
            if m.payload.as_ref() == b"150" {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "restarted replica never caught up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let info = api(&nc, "$JS.API.STREAM.INFO.K", serde_json::Value::Null).await;
    assert_eq!(info["state"]["messages"], 150, "{info}");
    drop(procs);
}

/// nats-py publishes with `Nats-Msg-Id` through a server that stays while the stream's leader
/// (another server) is stopped mid-way, retrying what got no PubAck: every message is stored
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_py_publishes_across_a_leader_loss() {
    let has_nats_py = std::process::Command::new("python3")
        .args(["-c", "import nats"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_nats_py {
        assert!(
            std::env::var_os("NATRIUM_REQUIRE_NATS_PY").is_none(),
            "nats-py is required here (python3 -m pip install nats-py)"
        );
        eprintln!("skipped: python3 with nats-py not found");
        return;
    }
    const SCRIPT: &str = r#"
import asyncio, sys, time
import nats

async def main(url, n):
    nc = await nats.connect(url)
    js = nc.jetstream()
    retries = 0
    for i in range(1, n + 1):
        deadline = time.monotonic() + 30
        while True:
            try:
                ack = await js.publish("fo.x", b"m", headers={"Nats-Msg-Id": f"m-{i}"}, timeout=1)
                break
            except Exception:
                retries += 1
                assert time.monotonic() < deadline, f"message {i}: no PubAck in 30 s"
                await asyncio.sleep(0.1)
        await asyncio.sleep(0.02)
    await nc.close()
    print(f"published {n} retries {retries}")

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"#;
    let mut c = cluster().await;
    let nc = connect(c.node("n1")).await;
    jetstream::new(nc)
        .create_stream(stream::Config {
            name: "FO".into(),
            subjects: vec!["fo.>".into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("created");
    let old = leader_of(&c, "FO", "fo.x", None).await;
    let stay = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != old)
        .expect("another server");
    const N: u32 = 150;
    let py = tokio::process::Command::new("python3")
        .args(["-c", SCRIPT, &c.node(stay).client_url(), &N.to_string()])
        .kill_on_drop(true)
        .output();
    let py = tokio::spawn(py);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.stop(&old).await;
    let out = tokio::time::timeout(Duration::from_secs(120), py)
        .await
        .expect("nats-py in time")
        .expect("joined")
        .expect("ran python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nats-py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("published {N}")), "{stdout}");
    eprintln!("nats-py across a leader loss: {}", stdout.trim());
    let v = api(
        &connect(c.node(stay)).await,
        "$JS.API.STREAM.INFO.FO",
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(v["state"]["messages"], N, "{v}");
    assert_eq!(v["state"]["last_seq"], N, "each message stored once: {v}");
    assert_ne!(v["cluster"]["leader"], json!(old), "{v}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_are_current_under_steady_publishing() {
    // Pipelined publishes keep some entries always in flight. nats-server reports a replica
    // current when it holds what the leader has applied; counting it behind the leader's last
    // log entry instead made `current` false for as long as publishing went on.
    let c = cluster().await;
    let nc = connect(c.node("n1")).await;
    let js = jetstream::new(nc.clone());
    js.create_stream(stream::Config {
        name: "STEADY".into(),
        subjects: vec!["steady.>".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .expect("created");
    leader_of(&c, "STEADY", "steady.x", None).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let js = js.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut acked = 0u64;
            // Bounded: stops when told, or after 60 s.
            let until = Instant::now() + Duration::from_secs(60);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < until {
                let mut window = Vec::with_capacity(8);
                for i in 0..8 {
                    window.push(
                        js.publish(format!("steady.{i}"), "x".into())
                            .await
                            .expect("sent"),
                    );
                }
                for a in window {
                    a.await.expect("acknowledged");
                    acked += 1;
                }
            }
            acked
        })
    };
    let mut samples = 0;
    let mut all_current = 0;
    let mut last_seq = 0;
    let mut seen = Vec::new();
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let v = api(&nc, "$JS.API.STREAM.INFO.STEADY", serde_json::Value::Null).await;
        let seq = v["state"]["last_seq"].as_u64().unwrap_or(0);
        let replicas = v["cluster"]["replicas"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if seq <= last_seq || replicas.len() != 2 {
            continue; // not publishing in between, or no leader's view
        }
        last_seq = seq;
        samples += 1;
        if replicas.iter().all(|r| r["current"] == json!(true)) {
            all_current += 1;
        }
        seen.push(json!(replicas
            .iter()
            .map(|r| (r["current"].clone(), r["lag"].clone()))
            .collect::<Vec<_>>()));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = publisher.await.expect("publisher");
    assert!(acked > 100, "publishing went on: {acked} acknowledged");
    assert!(samples >= 10, "{samples} samples while publishing");
    eprintln!("every replica current in {all_current} of {samples} samples ({acked} acked)");
    assert!(
        all_current * 10 >= samples * 9,
        "every replica current in only {all_current} of {samples} samples while publishing: {seen:?}"
    );
    c.shutdown().await;
}

/// A stream created while a server is away is placed on the others; the server, back, has not
/// applied the stream's assignment yet when its first clients ask: it must not say the stream
/// does not exist (a client told so creates it again); it forwards to the meta leader or
/// answers "temporarily unavailable" until it knows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_back_from_away_never_says_a_new_stream_is_not_found() {
    let mut c = Cluster::start(3, Duration::from_secs(30), node_opts).await;
    let nc = connect(c.node("n1")).await;
    let mut js = jetstream::new(nc.clone());
    js.set_timeout(Duration::from_secs(30));
    // The meta group has committed with all three (a member still being added when n3 stops
    // would leave it without a quorum for the change).
    js.create_stream(stream::Config {
        name: "WARM".into(),
        subjects: vec!["warm".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .expect("an R3 stream");
    c.stop("n3").await;
    let mut created = js
        .create_stream(stream::Config {
            name: "EV".into(),
            subjects: vec!["ev.>".into()],
            num_replicas: 2,
            ..Default::default()
        })
        .await
        .expect("stream on n1 and n2");
    // Not placed on the server that just shut down (its group would wait for it).
    let info = created.info().await.expect("info");
    let cluster = info.cluster.clone().expect("cluster");
    let mut placed: Vec<String> = cluster.replicas.iter().map(|r| r.name.clone()).collect();
    placed.extend(cluster.leader.clone());
    placed.sort();
    assert_eq!(placed, ["n1", "n2"], "{cluster:?}");
    js.publish("ev.1", "x".into())
        .await
        .expect("sent")
        .await
        .expect("acknowledged");

    c.restart("n3").await;
    let n3 = async_nats::ConnectOptions::new()
        .connect(c.node("n3").client_url())
        .await
        .expect("n3");
    // Asked at once and again until n3 answers with the stream (bounded).
    let mut answers = Vec::new();
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            n3.request("$JS.API.STREAM.INFO.EV", "".into()),
        )
        .await;
        let v: Option<serde_json::Value> = match r {
            Ok(Ok(m)) => serde_json::from_slice(&m.payload).ok(),
            _ => None,
        };
        let found = v.as_ref().is_some_and(|v| v["config"]["name"] == "EV");
        answers.push(v);
        if found || Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let not_found: Vec<_> = answers
        .iter()
        .flatten()
        .filter(|v| v["error"]["err_code"] == 10059)
        .collect();
    assert!(not_found.is_empty(), "n3 said not found: {not_found:?}");
    let last = answers.last().cloned().flatten().unwrap_or_default();
    assert_eq!(
        last["config"]["name"], "EV",
        "n3 answers in the end: {last}"
    );
    c.shutdown().await;
}
