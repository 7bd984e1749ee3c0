//! Monitoring as nats-server serves it: the monitor listens on the client host unless `http`
//! names another; `/varz` `cpu` is the current use, sampled each second; `/connz` `rtt` is
//! measured with the server's PING; `/subsz` has the sublist statistics and per-subscription
//! counts; and every endpoint has at least the fields nats-server 2.9.10 has (key sets taken
//! from the real server with the same clients, JetStream's aside).

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{get_json, start};
use natrium::Options;

const BIN: &str = env!("CARGO_BIN_EXE_natrium");

/// Every key path of a document (`a.b`, `list[].c`), as the capture was made.
fn key_paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(p.clone());
                key_paths(x, &p, out);
            }
        }
        Value::Array(items) => {
            for x in items {
                key_paths(x, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

/// The key paths of nats-server 2.9.10's answers (Debian's build) with two users of accounts
/// `A` and `B` connected by nats-py, each with a plain and a queue subscription. Left out:
/// `http_req_stats`'s entries (they depend on what was asked before) and the system imports
/// nats-server adds to every account (Natrium has no such imports).
const NATS_SERVER_KEYS: &[(&str, &[&str])] = &[
    (
        "/varz",
        &[
            "auth_required",
            "auth_timeout",
            "cluster",
            "config_load_time",
            "connections",
            "cores",
            "cpu",
            "gateway",
            "go",
            "gomaxprocs",
            "host",
            "http_base_path",
            "http_host",
            "http_port",
            "http_req_stats",
            "https_port",
            "in_bytes",
            "in_msgs",
            "jetstream",
            "leaf",
            "leafnodes",
            "max_connections",
            "max_control_line",
            "max_payload",
            "max_pending",
            "mem",
            "mqtt",
            "now",
            "out_bytes",
            "out_msgs",
            "ping_interval",
            "ping_max",
            "port",
            "proto",
            "remotes",
            "routes",
            "server_id",
            "server_name",
            "slow_consumers",
            "start",
            "subscriptions",
            "system_account",
            "tls_timeout",
            "total_connections",
            "uptime",
            "version",
            "websocket",
            "write_deadline",
        ],
    ),
    (
        "/connz?subs=detail&auth=1",
        &[
            "connections",
            "connections[].account",
            "connections[].authorized_user",
            "connections[].cid",
            "connections[].idle",
            "connections[].in_bytes",
            "connections[].in_msgs",
            "connections[].ip",
            "connections[].kind",
            "connections[].lang",
            "connections[].last_activity",
            "connections[].name",
            "connections[].out_bytes",
            "connections[].out_msgs",
            "connections[].pending_bytes",
            "connections[].port",
            "connections[].rtt",
            "connections[].start",
            "connections[].subscriptions",
            "connections[].subscriptions_list_detail",
            "connections[].subscriptions_list_detail[].cid",
            "connections[].subscriptions_list_detail[].msgs",
            "connections[].subscriptions_list_detail[].qgroup",
            "connections[].subscriptions_list_detail[].sid",
            "connections[].subscriptions_list_detail[].subject",
            "connections[].type",
            "connections[].uptime",
            "connections[].version",
            "limit",
            "now",
            "num_connections",
            "offset",
            "server_id",
            "total",
        ],
    ),
    (
        "/subsz?subs=1",
        &[
            "avg_fanout",
            "cache_hit_rate",
            "limit",
            "max_fanout",
            "now",
            "num_cache",
            "num_inserts",
            "num_matches",
            "num_removes",
            "num_subscriptions",
            "offset",
            "server_id",
            "subscriptions_list",
            "subscriptions_list[].account",
            "subscriptions_list[].cid",
            "subscriptions_list[].msgs",
            "subscriptions_list[].qgroup",
            "subscriptions_list[].sid",
            "subscriptions_list[].subject",
            "total",
        ],
    ),
    (
        "/accountz?acc=A",
        &[
            "account_detail",
            "account_detail.account_name",
            "account_detail.client_connections",
            "account_detail.complete",
            "account_detail.expired",
            "account_detail.jetstream_enabled",
            "account_detail.leafnode_connections",
            "account_detail.sublist_stats",
            "account_detail.sublist_stats.avg_fanout",
            "account_detail.sublist_stats.cache_hit_rate",
            "account_detail.sublist_stats.max_fanout",
            "account_detail.sublist_stats.num_cache",
            "account_detail.sublist_stats.num_inserts",
            "account_detail.sublist_stats.num_matches",
            "account_detail.sublist_stats.num_removes",
            "account_detail.sublist_stats.num_subscriptions",
            "account_detail.subscriptions",
            "account_detail.update_time",
            "now",
            "server_id",
            "system_account",
        ],
    ),
    (
        "/accstatz?unused=1",
        &[
            "account_statz",
            "account_statz[].acc",
            "account_statz[].conns",
            "account_statz[].leafnodes",
            "account_statz[].received",
            "account_statz[].received.bytes",
            "account_statz[].received.msgs",
            "account_statz[].sent",
            "account_statz[].sent.bytes",
            "account_statz[].sent.msgs",
            "account_statz[].slow_consumers",
            "account_statz[].total_conns",
            "now",
            "server_id",
        ],
    ),
    ("/routez", &["now", "num_routes", "routes", "server_id"]),
    (
        "/gatewayz",
        &["inbound_gateways", "now", "outbound_gateways", "server_id"],
    ),
    ("/leafz", &["leafnodes", "leafs", "now", "server_id"]),
    ("/healthz", &["status"]),
    (
        "/accountz",
        &["accounts", "now", "server_id", "system_account"],
    ),
];

async fn monitored() -> natrium::Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.conf");
    std::fs::write(
        &path,
        "accounts {\n  A: { users: [ {user: a, password: a} ] }\n  B: { users: [ {user: b, password: b} ] }\n}\n",
    )
    .expect("write");
    let (mut o, _) = Options::from_file(&path).expect("loads");
    o.host = "127.0.0.1".into();
    o.port = -1;
    o.http_port = Some(-1);
    start(o).await
}

async fn login(s: &natrium::Server, u: &str) -> async_nats::Client {
    async_nats::ConnectOptions::with_user_and_password(u.into(), u.into())
        .name(format!("client-{u}"))
        .connect(s.client_url())
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_has_nats_servers_fields() {
    let s = monitored().await;
    let mut subs = Vec::new();
    let mut clients = Vec::new();
    for u in ["a", "b"] {
        let c = login(&s, u).await;
        subs.push(c.subscribe("foo.>").await.expect("sub"));
        subs.push(c.queue_subscribe("bar", "q".into()).await.expect("qsub"));
        c.publish("foo.x", "hi".into()).await.expect("pub");
        c.flush().await.expect("flush");
        clients.push(c);
    }
    // The first PING (about 2 s after CONNECT) measures the RTT.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (path, want) in NATS_SERVER_KEYS {
        let doc = get_json(&s, path).await;
        let mut have = BTreeSet::new();
        key_paths(&doc, "", &mut have);
        let missing: Vec<&&str> = want.iter().filter(|k| !have.contains(**k)).collect();
        assert!(missing.is_empty(), "{path}: missing {missing:?} in {doc}");
    }
    s.shutdown().await;
}

/// `-m` with `-a 127.0.0.1` listens on 127.0.0.1, not every interface.
#[test]
fn monitor_listens_on_the_client_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("m.log");
    let mut child = Command::new(BIN)
        .args(["-a", "127.0.0.1", "-p", "-1", "-m", "-1", "-l"])
        .arg(&log)
        .spawn()
        .expect("spawn");
    let t0 = Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("Server is ready") {
            break text;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "not ready:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().expect("exit");
    assert!(
        text.contains("Starting http monitor on 127.0.0.1:"),
        "{text}"
    );
}

#[tokio::test]
async fn monitor_host_follows_the_client_host_unless_http_names_one() {
    let s = start(Options {
        host: "127.0.0.1".into(),
        port: -1,
        http_port: Some(-1),
        ..Options::default()
    })
    .await;
    assert_eq!(get_json(&s, "/varz").await["http_host"], "127.0.0.1");
    s.shutdown().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("h.conf");
    std::fs::write(&path, "listen: 127.0.0.1:-1\nhttp: \"0.0.0.0:-1\"\n").expect("write");
    let (o, _) = Options::from_file(&path).expect("loads");
    let s = start(o).await;
    assert_eq!(get_json(&s, "/varz").await["http_host"], "0.0.0.0");
    s.shutdown().await;
}

/// `/connz` `rtt` is measured with the server's first PING, about two seconds after CONNECT,
/// and printed as Go prints durations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connz_reports_the_round_trip_time() {
    let s = start(Options {
        host: "127.0.0.1".into(),
        port: -1,
        http_port: Some(-1),
        ..Options::default()
    })
    .await;
    let c = async_nats::connect(s.client_url()).await.expect("connect");
    c.flush().await.expect("flush");
    let first = get_json(&s, "/connz").await;
    let rtt = first["connections"][0]["rtt"]
        .as_str()
        .expect("rtt")
        .to_string();
    assert_ne!(rtt, "0s", "estimated from the time to CONNECT");
    // After the first PING's PONG the value is a measurement.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let doc = get_json(&s, "/connz").await;
    let rtt = doc["connections"][0]["rtt"].as_str().expect("rtt");
    let units = ["ns", "µs", "ms", "s"];
    // The longer units first: "µs" also ends with "s".
    let unit = units.iter().find(|u| rtt.ends_with(**u)).expect("a unit");
    let n: f64 = rtt.trim_end_matches(unit).parse().expect("a number");
    assert!(n > 0.0 && (*unit != "s" || n < 1.0), "{rtt}");
    drop(c);
    s.shutdown().await;
}

/// `/subsz` has nats-server's sublist statistics, and subscriptions their sid and message
/// count (in `/connz?subs=detail` too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subsz_has_sublist_statistics_and_counts() {
    let s = monitored().await;
    let c = login(&s, "a").await;
    let _sub = c.subscribe("orders.*").await.expect("sub");
    let _q = c
        .queue_subscribe("orders.new", "workers".into())
        .await
        .expect("qsub");
    c.flush().await.expect("flush");
    for _ in 0..5 {
        c.publish("orders.new", "x".into()).await.expect("pub");
    }
    c.flush().await.expect("flush");
    let doc = get_json(&s, "/subsz?subs=1&acc=A").await;
    assert_eq!(doc["num_subscriptions"], 2, "{doc}");
    assert!(doc["num_inserts"].as_u64() >= Some(2), "{doc}");
    assert!(doc["num_matches"].as_u64() >= Some(5), "{doc}");
    // One lookup missed the cache, the four after it hit.
    assert!(doc["cache_hit_rate"].as_f64() >= Some(0.5), "{doc}");
    assert_eq!(doc["num_cache"], 1, "{doc}");
    assert_eq!(doc["max_fanout"], 2, "{doc}");
    assert_eq!(doc["avg_fanout"], 2.0, "{doc}");
    let list = doc["subscriptions_list"].as_array().expect("list");
    let plain = list
        .iter()
        .find(|e| e["subject"] == "orders.*")
        .expect("plain sub");
    assert_eq!(plain["msgs"], 5, "{doc}");
    assert_eq!(plain["sid"], "1", "{doc}");
    assert_eq!(plain["account"], "A", "{doc}");
    assert!(plain.get("qgroup").is_none(), "{doc}");
    let connz = get_json(&s, "/connz?subs=detail").await;
    let detail = connz["connections"][0]["subscriptions_list_detail"]
        .as_array()
        .expect("detail");
    let q = detail
        .iter()
        .find(|e| e["qgroup"] == "workers")
        .expect("queue sub");
    assert_eq!(q["msgs"], 5, "{connz}");
    assert!(q.get("account").is_none(), "{connz}");
    s.shutdown().await;
}

/// Kills the server when a test ends, passed or not.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// `/varz` `cpu` is the use of the last second, as nats-server samples it: up while a client
/// floods the server, near zero once it stops (the average since start would stay high).
#[test]
fn varz_cpu_is_current_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("cpu.log");
    let _child = Child(
        Command::new(BIN)
            .args(["-a", "127.0.0.1", "-p", "-1", "-m", "-1", "-l"])
            .arg(&log)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn"),
    );
    let t0 = Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("Server is ready") {
            break text;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "not ready:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let port_after = |needle: &str| -> u16 {
        let line = text.lines().find(|l| l.contains(needle)).expect(needle);
        line.rsplit(':')
            .next()
            .expect("port")
            .trim()
            .parse()
            .expect("port")
    };
    let port = port_after("Listening for client connections on");
    let http = port_after("Starting http monitor on");
    // A plain HTTP/1.0 GET: the answer ends when the server closes.
    let cpu = || -> f64 {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", http)).expect("http");
        c.write_all(b"GET /varz HTTP/1.0\r\nHost: x\r\n\r\n")
            .expect("get");
        let mut text = String::new();
        std::io::Read::read_to_string(&mut c, &mut text).expect("answer");
        let body = text.split_once("\r\n\r\n").expect("body").1;
        let v: Value = serde_json::from_str(body).expect("json");
        v["cpu"].as_f64().expect("cpu")
    };
    // Flood with small messages (the server parses and counts each) until a reading shows the
    // use: at least one full sampling second of flooding first, at most 20 s (a loaded machine
    // may give the server little CPU time).
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")
        .expect("connect");
    let batch = b"PUB flood 8\r\n12345678\r\n".repeat(4096);
    let flood = Instant::now();
    let mut busy = 0.0f64;
    while busy <= 5.0 && flood.elapsed() < Duration::from_secs(20) {
        s.write_all(&batch).expect("publish");
        if flood.elapsed() > Duration::from_millis(2200) {
            busy = cpu();
        }
    }
    drop(s);
    assert!(busy > 5.0, "cpu while flooded: {busy}");
    // Idle: the reading falls back within a few sampling periods (the meter is the last
    // second's use, not the average since start, which would stay high).
    let idle_from = Instant::now();
    let mut idle = cpu();
    while idle >= 5.0 && idle_from.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(250));
        idle = cpu();
    }
    assert!(idle < 5.0, "cpu {idle} 20 s after the flood (busy {busy})");
}
