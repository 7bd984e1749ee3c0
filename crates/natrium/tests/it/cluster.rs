//! Clusters of embedded servers on loopback, joined by routes, driven by async-nats clients on
//! different nodes: the mesh forms (gossip), interest and messages cross it, queue groups pick
//! one member cluster-wide, clients learn the other servers and fail over, and a route that goes
//! away takes its interest with it.

use std::time::Duration;

use futures::StreamExt;
use natrium::options::{ClusterOptions, RouteUrl};
use natrium::{Options, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{eventually, opts, start};

/// A node of cluster `c1` routing to the given cluster ports.
fn node_opts(name: &str, routes: &[u16]) -> Options {
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
        ..opts()
    }
}

/// Three nodes: B and C route to A only; they find each other through A.
async fn three_nodes() -> (Server, Server, Server) {
    let a = start(node_opts("A", &[])).await;
    let pa = a.cluster_port().expect("cluster port");
    let b = start(node_opts("B", &[pa])).await;
    let c = start(node_opts("C", &[pa])).await;
    for _ in 0..1000 {
        if [&a, &b, &c].iter().all(|s| s.num_routes() == 2) {
            return (a, b, c);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "mesh did not form: {} {} {}",
        a.num_routes(),
        b.num_routes(),
        c.num_routes()
    );
}

async fn client(s: &Server) -> async_nats::Client {
    async_nats::connect(s.client_url()).await.expect("connect")
}

/// Waits until `s` knows of interest in `subject` (in the global account).
async fn interest(s: &Server, subject: &str) {
    let c = s.internal_client("$G").expect("internal");
    eventually(|| c.has_interest(subject)).await;
}

async fn next(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("message in time")
        .expect("subscription open")
}

#[tokio::test]
async fn a_full_mesh_forms_through_gossip() {
    let (a, b, c) = three_nodes().await;
    assert_eq!((a.num_routes(), b.num_routes(), c.num_routes()), (2, 2, 2));
    for s in [a, b, c] {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn messages_cross_the_cluster_once_per_subscription_with_headers() {
    let (a, b, c) = three_nodes().await;
    let (pubc, subc) = (client(&a).await, client(&c).await);
    let mut all = subc.subscribe("orders.>").await.expect("sub");
    let mut new = subc.subscribe("orders.*.new").await.expect("sub");
    subc.flush().await.expect("flush");
    interest(&a, "orders.eu.new").await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Trace", "t-1");
    pubc.publish_with_headers("orders.eu.new", headers, "o1".into())
        .await
        .expect("publish");
    pubc.publish("orders.eu.old", "o2".into())
        .await
        .expect("publish");
    pubc.flush().await.expect("flush");
    let m = next(&mut all).await;
    assert_eq!(m.subject.as_str(), "orders.eu.new");
    assert_eq!(
        m.headers
            .as_ref()
            .and_then(|h| h.get("Trace"))
            .map(|v| v.as_str()),
        Some("t-1")
    );
    assert_eq!(next(&mut all).await.payload.as_ref(), b"o2");
    assert_eq!(next(&mut new).await.payload.as_ref(), b"o1");
    // Nothing twice (one routed message per peer, however many subscriptions match there).
    assert!(
        tokio::time::timeout(Duration::from_millis(300), all.next())
            .await
            .is_err(),
        "no duplicate"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), new.next())
            .await
            .is_err(),
        "no duplicate"
    );
    for s in [a, b, c] {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn a_queue_group_gets_each_message_once_cluster_wide() {
    let (a, b, c) = three_nodes().await;
    let clients = [client(&a).await, client(&b).await, client(&c).await];
    let mut subs = Vec::new();
    for cl in &clients {
        subs.push(
            cl.queue_subscribe("jobs", "workers".into())
                .await
                .expect("qsub"),
        );
        cl.flush().await.expect("flush");
    }
    // Every node knows the group's members on the others.
    for s in [&a, &b, &c] {
        interest(s, "jobs").await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let n = 300;
    for i in 0..n {
        clients[0]
            .publish("jobs", i.to_string().into())
            .await
            .expect("publish");
    }
    clients[0].flush().await.expect("flush");
    let mut counts = [0usize; 3];
    let mut seen = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < n && tokio::time::Instant::now() < deadline {
        for (i, s) in subs.iter_mut().enumerate() {
            while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(20), s.next()).await
            {
                assert!(
                    seen.insert(m.payload.clone()),
                    "delivered twice: {:?}",
                    m.payload
                );
                counts[i] += 1;
            }
        }
    }
    assert_eq!(seen.len(), n, "every message once: {counts:?}");
    assert!(
        counts.iter().all(|c| *c > 0),
        "spread over the nodes: {counts:?}"
    );
    for s in [a, b, c] {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn request_reply_crosses_nodes_and_unsubscribe_is_withdrawn() {
    let (a, b, c) = three_nodes().await;
    let (requester, responder) = (client(&a).await, client(&b).await);
    let mut svc = responder.subscribe("time.now").await.expect("sub");
    responder.flush().await.expect("flush");
    interest(&a, "time.now").await;
    let r = responder.clone();
    let serving = tokio::spawn(async move {
        if let Some(m) = svc.next().await {
            r.publish(m.reply.expect("reply"), "12:00".into())
                .await
                .expect("respond");
            r.flush().await.expect("flush");
        }
        svc
    });
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        requester.request("time.now", "?".into()),
    )
    .await
    .expect("in time")
    .expect("answered");
    assert_eq!(answer.payload.as_ref(), b"12:00");
    let mut svc = serving.await.expect("responder");
    svc.unsubscribe().await.expect("unsubscribe");
    responder.flush().await.expect("flush");
    let ic = a.internal_client("$G").expect("internal");
    eventually(|| !ic.has_interest("time.now")).await;
    // Nobody listens anywhere now: the requester hears so at once.
    let err = requester
        .request("time.now", "?".into())
        .await
        .expect_err("no responders");
    assert_eq!(err.kind(), async_nats::RequestErrorKind::NoResponders);
    for s in [a, b, c] {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn clients_learn_the_other_servers_and_fail_over() {
    let (a, b, c) = three_nodes().await;
    let urls = [a.client_url(), b.client_url(), c.client_url()];
    let watcher = client(&a).await;
    let advertised = watcher.server_info().connect_urls;
    for u in &urls {
        let hp = u.trim_start_matches("nats://");
        assert!(advertised.iter().any(|x| x == hp), "{hp} in {advertised:?}");
    }
    // A client that only knew A reconnects to a server it learned about when A goes away.
    let moving = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(urls[0].clone())
        .await
        .expect("connect");
    let mut sub = moving.subscribe("after.failover").await.expect("sub");
    moving.flush().await.expect("flush");
    a.shutdown().await;
    let other = client(&b).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut got = None;
    while got.is_none() && tokio::time::Instant::now() < deadline {
        other
            .publish("after.failover", "still here".into())
            .await
            .expect("publish");
        other.flush().await.expect("flush");
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            got = Some(m);
        }
    }
    assert_eq!(
        got.expect("the moved client receives again")
            .payload
            .as_ref(),
        b"still here"
    );
    for s in [b, c] {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn a_route_that_goes_away_takes_its_interest_with_it() {
    let (a, b, c) = three_nodes().await;
    let subc = client(&c).await;
    let _s = subc.subscribe("only.on.c").await.expect("sub");
    subc.flush().await.expect("flush");
    interest(&a, "only.on.c").await;
    c.shutdown().await;
    let ic = a.internal_client("$G").expect("internal");
    eventually(|| !ic.has_interest("only.on.c")).await;
    eventually(|| a.num_routes() == 1).await;
    for s in [a, b] {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn accounts_keep_their_subjects_apart_across_the_cluster() {
    let conf = |name: &str, routes: &[u16]| {
        let mut o = node_opts(name, routes);
        o.accounts = vec![
            natrium::options::AccountOptions {
                name: "TEAM_A".into(),
                ..Default::default()
            },
            natrium::options::AccountOptions {
                name: "TEAM_B".into(),
                ..Default::default()
            },
        ];
        o.auth.users = vec![
            natrium::options::User {
                user: "a".into(),
                password: "pa".into(),
                account: Some("TEAM_A".into()),
                ..Default::default()
            },
            natrium::options::User {
                user: "b".into(),
                password: "pb".into(),
                account: Some("TEAM_B".into()),
                ..Default::default()
            },
        ];
        o
    };
    let n1 = start(conf("N1", &[])).await;
    let n2 = start(conf("N2", &[n1.cluster_port().expect("port")])).await;
    eventually(|| n1.num_routes() == 1 && n2.num_routes() == 1).await;
    let login = |s: &Server, u: &str, p: &str| {
        let url = s.client_url();
        let (u, p) = (u.to_string(), p.to_string());
        async move {
            async_nats::ConnectOptions::with_user_and_password(u, p)
                .connect(url)
                .await
                .expect("login")
        }
    };
    let a_sub = login(&n2, "a", "pa").await;
    let b_sub = login(&n2, "b", "pb").await;
    let mut a_msgs = a_sub.subscribe("shared.subject").await.expect("sub");
    let mut b_msgs = b_sub.subscribe("shared.subject").await.expect("sub");
    a_sub.flush().await.expect("flush");
    b_sub.flush().await.expect("flush");
    let ia = n1.internal_client("TEAM_A").expect("account");
    let ib = n1.internal_client("TEAM_B").expect("account");
    eventually(|| ia.has_interest("shared.subject") && ib.has_interest("shared.subject")).await;
    let a_pub = login(&n1, "a", "pa").await;
    a_pub
        .publish("shared.subject", "for A".into())
        .await
        .expect("publish");
    a_pub.flush().await.expect("flush");
    assert_eq!(next(&mut a_msgs).await.payload.as_ref(), b"for A");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), b_msgs.next())
            .await
            .is_err(),
        "another account never sees it"
    );
    for s in [n1, n2] {
        s.shutdown().await;
    }
}

/// Reads what a server says to a raw socket until it closes it.
async fn said_before_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let read = async {
        let mut b = [0u8; 4096];
        loop {
            match stream.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&b[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("closed in time");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn the_cluster_port_refuses_clients_strangers_and_bad_credentials() {
    let mut o = node_opts("GUARDED", &[]);
    if let Some(c) = o.cluster.as_mut() {
        c.user = Some("ruser".into());
        c.password = Some("rpass".into());
    }
    let s = start(o).await;
    let port = s.cluster_port().expect("port");
    let cases = [
        (
            r#"CONNECT {"verbose":false,"lang":"rust","version":"1"}"#,
            "attempted to connect to route port",
        ),
        (
            r#"CONNECT {"name":"NFAKE","cluster":"other","user":"ruser","pass":"rpass"}"#,
            "does not match",
        ),
        (
            r#"CONNECT {"name":"NFAKE","cluster":"c1","user":"ruser","pass":"wrong"}"#,
            "Authorization Violation",
        ),
        ("GARBAGE\r\nMORE", "Unknown Protocol Operation"),
    ];
    for (line, want) in cases {
        let mut t = TcpStream::connect(("127.0.0.1", port)).await.expect("dial");
        t.write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("send");
        let said = said_before_close(&mut t).await;
        assert!(said.starts_with("INFO {"), "{said}");
        assert!(said.contains(want), "{line:?}: {said}");
    }
    // A peer with the credentials is accepted: after its INFO the server sends interest.
    let mut t = TcpStream::connect(("127.0.0.1", port)).await.expect("dial");
    t.write_all(b"CONNECT {\"name\":\"NPEER\",\"cluster\":\"c1\",\"user\":\"ruser\",\"pass\":\"rpass\",\"headers\":true}\r\nINFO {\"server_id\":\"NPEER\",\"server_name\":\"peer\",\"cluster\":\"c1\",\"headers\":true,\"port\":1}\r\nPING\r\n")
        .await
        .expect("send");
    let mut got = Vec::new();
    let pong = async {
        let mut b = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("PONG") {
            let n = t.read(&mut b).await.expect("read");
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&b[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), pong)
        .await
        .expect("PONG in time");
    eventually(|| s.num_routes() == 1).await;
    s.shutdown().await;
}

#[tokio::test]
async fn a_route_to_itself_is_dropped_and_not_retried() {
    // A node whose route list names its own cluster port (as in a shared config).
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
    let port = probe.local_addr().expect("addr").port();
    drop(probe);
    let mut o = node_opts("SELF", &[port]);
    if let Some(c) = o.cluster.as_mut() {
        c.port = i32::from(port);
    }
    let s = start(o).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(s.num_routes(), 0);
    s.shutdown().await;
}

#[tokio::test]
async fn every_node_answers_system_pings() {
    let (a, b, c) = three_nodes().await;
    // The system account's request goes to every server of the cluster.
    let ic = a.internal_client("$SYS").expect("system account");
    let mut inbox = ic.subscribe("_INBOX.ping.*", None, 16).expect("inbox");
    for s in [&b, &c] {
        let probe = s.internal_client("$SYS").expect("system account");
        eventually(|| probe.has_interest("_INBOX.ping.x")).await;
    }
    ic.publish("$SYS.REQ.SERVER.PING", Some("_INBOX.ping.x"), None, b"")
        .expect("publish");
    let mut names = std::collections::BTreeSet::new();
    while names.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(5), inbox.next())
            .await
            .expect("an answer from every node")
            .expect("open");
        let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("json");
        names.insert(v["server"]["name"].as_str().expect("name").to_string());
    }
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec!["A".to_string(), "B".into(), "C".into()]
    );
    for s in [a, b, c] {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn routez_varz_and_metrics_describe_the_routes() {
    let monitored = |name: &str, routes: &[u16]| Options {
        http_port: Some(-1),
        ..node_opts(name, routes)
    };
    let a = start(monitored("A", &[])).await;
    let b = start(monitored("B", &[a.cluster_port().expect("port")])).await;
    eventually(|| a.num_routes() == 1 && b.num_routes() == 1).await;
    let sub = client(&b).await;
    let _s = sub.subscribe("seen.on.b").await.expect("sub");
    sub.flush().await.expect("flush");
    interest(&a, "seen.on.b").await;
    let pubc = client(&a).await;
    pubc.publish("seen.on.b", "x".into())
        .await
        .expect("publish");
    pubc.flush().await.expect("flush");
    let http = reqwest::Client::new();
    let base = a.monitor_url().expect("monitor");
    let get = |path: String| {
        let http = http.clone();
        async move {
            http.get(path)
                .send()
                .await
                .expect("get")
                .text()
                .await
                .expect("body")
        }
    };
    let routez: serde_json::Value =
        serde_json::from_str(&get(format!("{base}/routez?subs=1")).await).expect("json");
    // Pooled as nats-server 2.10: three connections plus the system account's own.
    assert_eq!(routez["num_routes"], 4, "{routez}");
    let routes = routez["routes"].as_array().expect("routes");
    let mut pool: Vec<u64> = routes
        .iter()
        .filter_map(|r| r["pool_idx"].as_u64())
        .collect();
    pool.sort_unstable();
    assert_eq!(pool, [0, 1, 2], "{routez}");
    assert_eq!(
        routes.iter().filter(|r| r["account"] == "$SYS").count(),
        1,
        "{routez}"
    );
    // `$G` hashes (FNV-1a) to pool index 2: its interest is there and nowhere else.
    let r = routes
        .iter()
        .find(|r| r["pool_idx"] == 2)
        .expect("pool index 2");
    for other in routes.iter().filter(|o| o["pool_idx"] != 2) {
        assert!(
            !other.to_string().contains("seen.on.b"),
            "interest on the wrong connection: {other}"
        );
    }
    assert_eq!(r["remote_name"], "B");
    assert_eq!(r["did_solicit"], false, "B dialled A");
    for key in [
        "rid",
        "remote_id",
        "ip",
        "port",
        "start",
        "pending_size",
        "in_msgs",
        "out_msgs",
    ] {
        assert!(r.get(key).is_some(), "{key} in {r}");
    }
    assert!(
        r["subscriptions_list"]
            .as_array()
            .expect("list")
            .iter()
            .any(|s| s == "$G seen.on.b"),
        "{r}"
    );
    let varz: serde_json::Value =
        serde_json::from_str(&get(format!("{base}/varz")).await).expect("json");
    assert_eq!(varz["routes"], 4);
    assert_eq!(varz["cluster"]["name"], "c1");
    assert_eq!(
        varz["cluster"]["cluster_port"],
        a.cluster_port().expect("port")
    );
    let metrics = get(format!("{base}/metrics")).await;
    assert!(metrics.contains("natrium_routes 1"), "{metrics}");
    let out_line = metrics
        .lines()
        .find(|l| {
            l.starts_with("natrium_route_out_msgs_total{remote=\"B\"}")
                || l.starts_with("natrium_route_out_msgs{remote=\"B\"}")
        })
        .unwrap_or_else(|| panic!("route series in {metrics}"));
    let n: f64 = out_line
        .rsplit(' ')
        .next()
        .expect("value")
        .parse()
        .expect("number");
    assert!(n >= 1.0, "{out_line}");
    for s in [a, b] {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn account_connection_limits_hold_across_the_cluster() {
    let conf = |name: &str, routes: &[u16]| {
        let mut o = node_opts(name, routes);
        o.accounts = vec![natrium::options::AccountOptions {
            name: "TEAM".into(),
            limits: natrium::options::Limits {
                max_connections: Some(2),
                ..Default::default()
            },
            ..Default::default()
        }];
        o.auth.users = vec![natrium::options::User {
            user: "t".into(),
            password: "pt".into(),
            account: Some("TEAM".into()),
            ..Default::default()
        }];
        o
    };
    let a = start(conf("A", &[])).await;
    let b = start(conf("B", &[a.cluster_port().expect("port")])).await;
    eventually(|| a.num_routes() == 1 && b.num_routes() == 1).await;
    let login = |s: &Server| {
        let url = s.client_url();
        async move {
            async_nats::ConnectOptions::with_user_and_password("t".into(), "pt".into())
                .max_reconnects(Some(0))
                .connect(url)
                .await
        }
    };
    let first = login(&a).await.expect("first");
    let second = login(&a).await.expect("second");
    // B learns that A holds the account's two connections, and refuses a third.
    let mut refused = false;
    for _ in 0..100 {
        match login(&b).await {
            Err(_) => {
                refused = true;
                break;
            }
            Ok(c) => {
                // Accepted before B heard of A's count: closed by the limit or let go here.
                drop(c);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(refused, "the cluster-wide limit was never applied on B");
    drop(first);
    // Once A reports one connection fewer, B admits one.
    let mut admitted = None;
    for _ in 0..100 {
        if let Ok(c) = login(&b).await {
            admitted = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        admitted.is_some(),
        "B admits a connection once A has one fewer"
    );
    drop(second);
    for s in [a, b] {
        s.shutdown().await;
    }
}

#[tokio::test]
async fn routes_run_over_tls_and_refuse_a_peer_the_ca_did_not_sign() {
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose};
    let pki = crate::common::pki::Pki::new();
    let node_cert = |name: &str| {
        let mut p = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("params");
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        pki.issue(name, p)
    };
    let tls_node = |name: &str, routes: &[u16], cert: (std::path::PathBuf, std::path::PathBuf)| {
        let mut o = node_opts(name, routes);
        if let Some(c) = o.cluster.as_mut() {
            c.tls = Some(natrium::options::TlsOptions {
                cert_file: cert.0,
                key_file: cert.1,
                ca_file: Some(pki.ca_file()),
                verify: true,
                ..Default::default()
            });
        }
        o
    };
    let a = start(tls_node("A", &[], node_cert("a"))).await;
    let pa = a.cluster_port().expect("port");
    let b = start(tls_node("B", &[pa], node_cert("b"))).await;
    eventually(|| a.num_routes() == 1 && b.num_routes() == 1).await;
    let (ca, cb) = (client(&a).await, client(&b).await);
    let mut sub = cb.subscribe("over.tls").await.expect("sub");
    cb.flush().await.expect("flush");
    interest(&a, "over.tls").await;
    ca.publish("over.tls", "secret".into())
        .await
        .expect("publish");
    ca.flush().await.expect("flush");
    assert_eq!(next(&mut sub).await.payload.as_ref(), b"secret");
    // A node with a certificate from another CA never gets a route.
    let other = crate::common::pki::Pki::new();
    let mut p = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let stranger_cert = other.issue("stranger", p);
    let mut so = node_opts("STRANGER", &[pa]);
    if let Some(c) = so.cluster.as_mut() {
        c.tls = Some(natrium::options::TlsOptions {
            cert_file: stranger_cert.0,
            key_file: stranger_cert.1,
            ca_file: Some(other.ca_file()),
            verify: true,
            ..Default::default()
        });
    }
    let stranger = start(so).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(stranger.num_routes(), 0);
    assert_eq!(a.num_routes(), 1, "still only B");
    for s in [a, b, stranger] {
        s.shutdown().await;
    }
}
