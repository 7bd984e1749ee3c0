//! Monitoring endpoints over real HTTP with traffic from real clients in two accounts: JSON field
//! names as nats-server's, and Prometheus series parsed with a Prometheus text parser.

use std::collections::HashMap;

use bytes::Bytes;
use futures::StreamExt;
use natrium::{Options, Server};
use serde_json::Value;

const CONF: &str = r#"
accounts {
  TENANT_A: { users: [ {user: a, password: a} ] }
  TENANT_B: { users: [ {user: b, password: b} ] }
}
"#;

async fn start_monitored() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.conf");
    std::fs::write(&path, CONF).expect("write");
    let (mut o, _) = Options::from_file(&path).expect("loads");
    o.host = "127.0.0.1".into();
    o.port = -1;
    o.http_host = "127.0.0.1".into();
    o.http_port = Some(-1);
    (dir, crate::common::start(o).await)
}

async fn get(s: &Server, path: &str) -> Value {
    let url = format!("{}{path}", s.monitor_url().expect("monitoring on"));
    let r = reqwest::get(&url).await.expect("http get");
    assert_eq!(r.status(), 200, "{url}");
    r.json().await.expect("json")
}

async fn login(s: &Server, u: &str) -> async_nats::Client {
    async_nats::ConnectOptions::with_user_and_password(u.into(), u.into())
        .name(format!("client-{u}"))
        .connect(s.client_url())
        .await
        .expect("connect")
}

/// Samples keyed by (metric name, account label or "").
fn parse_metrics(text: &str) -> HashMap<(String, String), f64> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let acc = s.labels.get("account").unwrap_or("").to_string();
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                other => panic!("unexpected sample {other:?}"),
            };
            ((s.metric, acc), v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_report_traffic_per_account() {
    let (_dir, s) = start_monitored().await;
    let a = login(&s, "a").await;
    let b = login(&s, "b").await;
    let mut a_sub = a.subscribe("data.>").await.expect("sub");
    let _b_sub = b.subscribe("other").await.expect("sub");
    a.flush().await.expect("flush");
    b.flush().await.expect("flush");
    // A publishes 10 messages of 100 bytes to itself; B publishes 3 of 10 bytes to nobody.
    for _ in 0..10 {
        a.publish("data.x", Bytes::from(vec![1u8; 100]))
            .await
            .expect("pub");
    }
    for _ in 0..3 {
        b.publish("nowhere", Bytes::from(vec![2u8; 10]))
            .await
            .expect("pub");
    }
    a.flush().await.expect("flush");
    b.flush().await.expect("flush");
    for _ in 0..10 {
        a_sub.next().await.expect("msg");
    }
    crate::common::eventually(|| s.num_clients() == 2).await;

    let varz = get(&s, "/varz").await;
    assert_eq!(varz["server_id"], s.server_id());
    assert_eq!(varz["version"], natrium::PROTOCOL_VERSION);
    assert_eq!(varz["natrium_version"], natrium::VERSION);
    assert_eq!(varz["connections"], 2);
    assert_eq!(varz["in_msgs"], 13);
    assert_eq!(varz["out_msgs"], 10);
    assert_eq!(varz["in_bytes"], 1030);
    assert_eq!(varz["out_bytes"], 1000);
    assert_eq!(varz["max_payload"], 1024 * 1024);
    assert!(varz["mem"].as_u64().expect("mem") > 0);
    for key in [
        "uptime",
        "start",
        "now",
        "ping_interval",
        "write_deadline",
        "total_connections",
        "subscriptions",
    ] {
        assert!(!varz[key].is_null(), "varz lacks {key}");
    }

    let connz = get(&s, "/connz?subs=1&auth=1&sort=msgs_from").await;
    assert_eq!(connz["num_connections"], 2);
    let conns = connz["connections"].as_array().expect("list");
    assert_eq!(conns[0]["in_msgs"], 10, "sorted by msgs_from");
    assert_eq!(conns[0]["account"], "TENANT_A");
    assert_eq!(conns[0]["authorized_user"], "a");
    assert_eq!(conns[0]["name"], "client-a");
    assert_eq!(
        conns[0]["subscriptions_list"],
        serde_json::json!(["data.>"])
    );
    assert_eq!(conns[1]["account"], "TENANT_B");
    let one = get(&s, &format!("/connz?cid={}", conns[1]["cid"])).await;
    assert_eq!(one["num_connections"], 1);
    assert!(
        one["connections"][0]["account"].is_null(),
        "auth details only with auth=1"
    );

    let subsz = get(&s, "/subsz?subs=1&test=data.y").await;
    let list = subsz["subscriptions_list"].as_array().expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["subject"], "data.>");
    assert_eq!(list[0]["account"], "TENANT_A");

    let accountz = get(&s, "/accountz").await;
    let names: Vec<&str> = accountz["accounts"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for n in ["$G", "$SYS", "TENANT_A", "TENANT_B"] {
        assert!(names.contains(&n), "{names:?}");
    }
    let accstatz = get(&s, "/accstatz").await;
    let stats = accstatz["account_statz"].as_array().expect("list");
    let a_stats = stats
        .iter()
        .find(|v| v["acc"] == "TENANT_A")
        .expect("A listed");
    assert_eq!(a_stats["received"]["msgs"], 10);
    assert_eq!(a_stats["sent"]["msgs"], 10);
    let b_stats = stats
        .iter()
        .find(|v| v["acc"] == "TENANT_B")
        .expect("B listed");
    assert_eq!(b_stats["received"]["msgs"], 3);
    assert_eq!(b_stats["received"]["bytes"], 30);
    assert_eq!(b_stats["sent"]["msgs"], 0);

    assert_eq!(get(&s, "/healthz").await["status"], "ok");
    assert_eq!(get(&s, "/routez").await["num_routes"], 0);

    // Prometheus: parsed, not grepped; per-account series match the traffic.
    let url = format!("{}/metrics", s.monitor_url().expect("on"));
    let text = reqwest::get(&url)
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    let m = parse_metrics(&text);
    let v = |name: &str, acc: &str| {
        *m.get(&(name.to_string(), acc.to_string()))
            .unwrap_or_else(|| panic!("{name}{{{acc}}} missing in\n{text}"))
    };
    assert_eq!(v("natrium_connections", ""), 2.0);
    assert_eq!(v("natrium_in_msgs_total", ""), 13.0);
    assert_eq!(v("natrium_account_in_msgs_total", "TENANT_A"), 10.0);
    assert_eq!(v("natrium_account_in_msgs_total", "TENANT_B"), 3.0);
    assert_eq!(v("natrium_account_out_msgs_total", "TENANT_A"), 10.0);
    assert_eq!(v("natrium_account_out_bytes_total", "TENANT_B"), 0.0);
    assert_eq!(v("natrium_account_connections", "TENANT_B"), 1.0);
    assert_eq!(v("natrium_account_subscriptions", "TENANT_A"), 1.0);

    // Counts survive disconnects; closed connections are listed with their reason.
    drop(b);
    drop(_b_sub);
    crate::common::eventually(|| s.num_clients() == 1).await;
    let closed = get(&s, "/connz?state=closed").await;
    assert_eq!(closed["num_connections"], 1);
    assert_eq!(closed["connections"][0]["in_msgs"], 3);
    assert_eq!(closed["connections"][0]["reason"], "Client Closed");
    let text = reqwest::get(&url)
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    let m = parse_metrics(&text);
    assert_eq!(
        m[&(
            "natrium_account_in_msgs_total".to_string(),
            "TENANT_B".to_string()
        )],
        3.0
    );
    s.shutdown().await;
}

#[tokio::test]
async fn auth_failures_and_violations_are_counted_per_account() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("p.conf");
    std::fs::write(
        &path,
        "accounts { T: { users: [ {user: t, password: t, permissions: { publish: \"t.>\" }} ] } }",
    )
    .expect("write");
    let (mut o, _) = Options::from_file(&path).expect("loads");
    o.port = -1;
    o.host = "127.0.0.1".into();
    o.http_port = Some(-1);
    let s = crate::common::start(o).await;
    assert!(
        async_nats::ConnectOptions::with_user_and_password("t".into(), "wrong".into())
            .connect(s.client_url())
            .await
            .is_err()
    );
    let mut r = crate::common::Raw::connect(&s).await;
    r.send("CONNECT {\"user\":\"t\",\"pass\":\"t\"}\r\nPUB x 1\r\n1\r\nPUB y 1\r\n1\r\nPING\r\n")
        .await;
    r.read_until("PONG\r\n").await;
    let url = format!("{}/metrics", s.monitor_url().expect("on"));
    let text = reqwest::get(&url)
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    let m = parse_metrics(&text);
    assert_eq!(
        m[&(
            "natrium_account_auth_failures_total".to_string(),
            "T".to_string()
        )],
        1.0
    );
    assert_eq!(
        m[&(
            "natrium_account_permission_violations_total".to_string(),
            "T".to_string()
        )],
        2.0
    );
    s.shutdown().await;
}

#[tokio::test]
async fn grafana_dashboard_uses_only_exported_series() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(Options {
        jetstream: Some(natrium::jetstream::JetStreamOptions {
            store_dir: dir.path().to_path_buf(),
            ..Default::default()
        }),
        http_host: "127.0.0.1".into(),
        http_port: Some(-1),
        ..crate::common::opts()
    })
    .await;
    // Traffic, a stream and a consumer so that every family has a sample.
    let c = crate::common::client(&s).await;
    let js = async_nats::jetstream::new(c.clone());
    let stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["orders.>".into()],
            ..Default::default()
        })
        .await
        .expect("stream");
    for i in 0..3 {
        js.publish(format!("orders.{i}"), Bytes::from_static(b"o"))
            .await
            .expect("pub")
            .await
            .expect("ack");
    }
    stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("billing".into()),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let url = format!("{}/metrics", s.monitor_url().expect("on"));
    let text = reqwest::get(&url)
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    let names: std::collections::HashSet<String> =
        parse_metrics(&text).into_keys().map(|(n, _)| n).collect();
    let dash = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/natrium.json"
    ))
    .expect("dashboard");
    let json: Value = serde_json::from_str(&dash).expect("dashboard is JSON");
    let mut used = 0;
    for panel in json["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("natrium_") {
                    used += 1;
                    assert!(
                        names.contains(word),
                        "dashboard uses {word}, which /metrics does not export"
                    );
                }
            }
        }
    }
    assert!(used >= 17, "the dashboard queries natrium series ({used})");
    // The consumer's lag is what the dashboard plots.
    let m = parse_metrics(&text);
    let lag = text
        .lines()
        .find(|l| {
            l.starts_with("natrium_jetstream_consumer_num_pending{")
                && l.contains("consumer=\"billing\"")
        })
        .expect("lag series");
    let value: f64 = lag
        .rsplit(' ')
        .next()
        .expect("value")
        .parse()
        .expect("number");
    assert_eq!(value, 3.0, "{lag}");
    assert!(m.keys().any(|(n, _)| n == "natrium_jetstream_stream_bytes"));
    drop(c);
    s.shutdown().await;
}

#[tokio::test]
async fn healthz_turns_unhealthy_when_the_store_is_not_writable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("js");
    let o = Options {
        jetstream: Some(natrium::jetstream::JetStreamOptions {
            store_dir: store.clone(),
            ..Default::default()
        }),
        http_host: "127.0.0.1".into(),
        http_port: Some(-1),
        ..crate::common::opts()
    };
    let s = crate::common::start(o).await;
    let url = format!("{}/healthz", s.monitor_url().expect("on"));
    let ok = reqwest::get(&url).await.expect("get");
    assert_eq!(ok.status(), 200);
    let jsz = get(&s, "/jsz").await;
    assert_eq!(jsz["accounts"], 1);
    let varz = get(&s, "/varz").await;
    assert_eq!(varz["jetstream"]["config"]["sync_always"], true);
    // The store directory disappears and a file takes its place (a lost mount, say).
    std::fs::remove_dir_all(&store).expect("remove store");
    std::fs::write(&store, b"not a directory").expect("file in its place");
    let bad = reqwest::get(&url).await.expect("get");
    assert_eq!(bad.status(), 503);
    let body: Value = bad.json().await.expect("json");
    assert_eq!(body["status"], "unavailable");
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("not writable"),
        "{body}"
    );
    s.shutdown().await;
}
