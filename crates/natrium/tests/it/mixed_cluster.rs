//! A cluster of Natrium and nats-server (Debian's `nats-server`, 2.9.10 in CI): the route
//! protocol is the same on both sides, so messages, headers, queue groups and request-reply
//! cross both ways, and clients learn both servers. Skipped with a notice when nats-server is
//! not installed, unless `NATRIUM_REQUIRE_NATS_SERVER` is set (as CI does).

use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use natrium::options::ClusterOptions;
use natrium::Options;

use crate::common::goserver::{nats_server_binary, GoServer};
use crate::common::{eventually, opts, start};

/// Starts nats-server in cluster `c1`, routing to `route_port`, on random ports.
fn go_server(bin: &str, route_port: u16, dir: &std::path::Path) -> GoServer {
    let child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", "-1", "-n", "go-node"])
        .args(["--cluster", "nats://127.0.0.1:-1", "--cluster_name", "c1"])
        .arg("--routes")
        .arg(format!("nats://127.0.0.1:{route_port}"))
        .arg("--ports_file_dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nats-server");
    let ports = dir.join(format!("nats-server_{}.ports", child.id()));
    let mut doc = None;
    for _ in 0..500 {
        if let Some(v) = std::fs::read(&ports)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        {
            doc = Some(v);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let doc = doc.expect("nats-server wrote its ports file");
    let url = doc["nats"][0].as_str().expect("client url").to_string();
    let client_port = url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    GoServer { child, client_port }
}

#[tokio::test]
async fn natrium_and_nats_server_form_one_cluster() {
    let Some(bin) = nats_server_binary("the mixed-cluster test") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let rs = start(Options {
        server_name: Some("rs-node".into()),
        cluster: Some(ClusterOptions {
            name: Some("c1".into()),
            host: "127.0.0.1".into(),
            port: -1,
            ..ClusterOptions::default()
        }),
        ..opts()
    })
    .await;
    let go = go_server(&bin, rs.cluster_port().expect("port"), dir.path());
    eventually(|| rs.num_routes() == 1).await;
    let go_url = format!("nats://127.0.0.1:{}", go.client_port);
    let on_go = async_nats::connect(&go_url)
        .await
        .expect("connect to nats-server");
    let on_rs = async_nats::connect(rs.client_url())
        .await
        .expect("connect to natrium");

    // Both ways, with headers.
    let mut from_rs = on_go.subscribe("to.go.>").await.expect("sub");
    let mut from_go = on_rs.subscribe("to.rs.*").await.expect("sub");
    // Queue group with members on both servers; responders on both.
    let mut q_go = on_go
        .queue_subscribe("jobs", "w".into())
        .await
        .expect("qsub");
    let mut q_rs = on_rs
        .queue_subscribe("jobs", "w".into())
        .await
        .expect("qsub");
    let mut svc_go = on_go.subscribe("svc.go").await.expect("sub");
    let mut svc_rs = on_rs.subscribe("svc.rs").await.expect("sub");
    on_go.flush().await.expect("flush");
    on_rs.flush().await.expect("flush");
    let ic = rs.internal_client("$G").expect("internal");
    eventually(|| ic.has_interest("to.go.x") && ic.has_interest("svc.go")).await;
    // nats-server learns Natrium's interest too: wait until a probe published there arrives.
    let mut probe = on_rs.subscribe("probe").await.expect("sub");
    on_rs.flush().await.expect("flush");
    let mut arrived = false;
    for _ in 0..100 {
        on_go.publish("probe", "p".into()).await.expect("publish");
        on_go.flush().await.expect("flush");
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), probe.next()).await {
            arrived = true;
            break;
        }
    }
    assert!(arrived, "nats-server routes to natrium");

    let mut h = async_nats::HeaderMap::new();
    h.insert("Origin", "natrium");
    on_rs
        .publish_with_headers("to.go.a", h, "hello go".into())
        .await
        .expect("publish");
    on_go
        .publish("to.rs.b", "hello rs".into())
        .await
        .expect("publish");
    on_rs.flush().await.expect("flush");
    on_go.flush().await.expect("flush");
    let m = tokio::time::timeout(Duration::from_secs(5), from_rs.next())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(m.payload.as_ref(), b"hello go");
    assert_eq!(
        m.headers
            .as_ref()
            .and_then(|h| h.get("Origin"))
            .map(|v| v.as_str()),
        Some("natrium")
    );
    let m = tokio::time::timeout(Duration::from_secs(5), from_go.next())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(m.payload.as_ref(), b"hello rs");

    // Each job once, whichever server it was published on.
    for i in 0..100 {
        let c = if i % 2 == 0 { &on_rs } else { &on_go };
        c.publish("jobs", format!("{i}").into())
            .await
            .expect("publish");
    }
    on_rs.flush().await.expect("flush");
    on_go.flush().await.expect("flush");
    let mut seen = std::collections::HashSet::new();
    let mut per = [0usize; 2];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < 100 && tokio::time::Instant::now() < deadline {
        for (i, q) in [&mut q_go, &mut q_rs].into_iter().enumerate() {
            while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(20), q.next()).await
            {
                assert!(seen.insert(m.payload.clone()), "twice: {:?}", m.payload);
                per[i] += 1;
            }
        }
    }
    assert_eq!(seen.len(), 100, "{per:?}");
    assert!(per[0] > 0 && per[1] > 0, "both servers' members: {per:?}");

    // Request-reply both ways.
    let (g, r) = (on_go.clone(), on_rs.clone());
    tokio::spawn(async move {
        if let Some(m) = svc_go.next().await {
            let _ = g
                .publish(m.reply.expect("reply"), "go answers".into())
                .await;
            let _ = g.flush().await;
        }
    });
    tokio::spawn(async move {
        if let Some(m) = svc_rs.next().await {
            let _ = r
                .publish(m.reply.expect("reply"), "rs answers".into())
                .await;
            let _ = r.flush().await;
        }
    });
    let a = on_rs
        .request("svc.go", "?".into())
        .await
        .expect("answer from nats-server");
    assert_eq!(a.payload.as_ref(), b"go answers");
    let a = on_go
        .request("svc.rs", "?".into())
        .await
        .expect("answer from natrium");
    assert_eq!(a.payload.as_ref(), b"rs answers");

    // Clients of either server learn both.
    let urls = on_rs.server_info().connect_urls;
    assert!(
        urls.iter()
            .any(|u| u.ends_with(&format!(":{}", go.client_port))),
        "{urls:?}"
    );
    drop(go);
    eventually(|| rs.num_routes() == 0).await;
    rs.shutdown().await;
}
