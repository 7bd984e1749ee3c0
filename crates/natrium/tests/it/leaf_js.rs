//! JetStream across a leafnode connection between two domains: an edge (leaf) with its own
//! domain sources a hub stream through `$JS.<hub>.API` and keeps every message once across a cut
//! link; a client of the edge uses the hub's JetStream (pull consumer, KV) with
//! `jetstream::with_domain`; the plain `$JS.API`, `$KV` and `$OBJ` subjects never cross, as
//! nats-server keeps them apart; the same sourcing with Debian's nats-server as the hub.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use natrium::Server;
use serde_json::{json, Value};

use crate::common::goserver::{nats_servers, GoServer};
use crate::common::proxy::Proxy;
use crate::common::traffic::{natrium, silent};
use crate::common::{api, eventually};
use crate::leaf::connect;

/// STREAM.INFO through `prefix` (`$JS.API`, or `$JS.<domain>.API`).
async fn info(c: &async_nats::Client, prefix: &str, name: &str) -> Value {
    api(c, &format!("{prefix}.STREAM.INFO.{name}"), Value::Null).await
}

/// Polls STREAM.INFO until the stream holds `n` messages (`secs` at most).
async fn wait_messages(c: &async_nats::Client, name: &str, n: u64, secs: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let i = info(c, "$JS.API", name).await;
        if i["state"]["messages"].as_u64() == Some(n) {
            return i;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream {name} never held {n} messages: {i}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes `orders.<i>` with body `m-<i>` for each `i` through `c`'s JetStream (acked).
async fn publish_orders(c: &async_nats::Client, range: std::ops::Range<usize>) {
    let js = async_nats::jetstream::new(c.clone());
    for i in range {
        js.publish(format!("orders.{i}"), format!("m-{i}").into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
}

/// Checks that stream `name` holds `m-0` .. `m-<n-1>` at sequences 1..=n, in order, each once,
/// each marked as sourced from `ORDERS`.
async fn check_sourced(c: &async_nats::Client, name: &str, n: usize) {
    for seq in 1..=n {
        let r = api(
            c,
            &format!("$JS.API.STREAM.MSG.GET.{name}"),
            json!({ "seq": seq }),
        )
        .await;
        let data = r["message"]["data"].as_str().unwrap_or_default();
        use base64::Engine as _;
        let body = base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap_or_default();
        assert_eq!(
            String::from_utf8_lossy(&body),
            format!("m-{}", seq - 1),
            "sequence {seq} of {name}: {r}"
        );
        let hdrs = base64::engine::general_purpose::STANDARD
            .decode(r["message"]["hdrs"].as_str().unwrap_or_default())
            .unwrap_or_default();
        assert!(
            String::from_utf8_lossy(&hdrs).contains("Nats-Stream-Source: ORDERS"),
            "sequence {seq} not marked as sourced: {r}"
        );
    }
}

/// A Natrium hub (domain `hub`, leafnode port behind `proxy`) and a Natrium edge (domain `edge`)
/// whose leafnode remote dials the proxy.
async fn hub_and_edge(dir: &Path) -> (Server, Server, Proxy) {
    let hub = natrium(
        dir,
        "hub",
        &format!(
            "jetstream {{ store_dir: {:?}, domain: hub }}\nleafnodes {{ host: 127.0.0.1, port: -1 }}\n",
            dir.join("hub-js")
        ),
    )
    .await;
    let proxy = Proxy::start(hub.leafnode_port().expect("leafnode port")).await;
    let edge = natrium(
        dir,
        "edge",
        &format!(
            "jetstream {{ store_dir: {:?}, domain: edge }}\nleafnodes {{ reconnect: \"100ms\", remotes [ {{ url: \"nats-leaf://127.0.0.1:{}\" }} ] }}\n",
            dir.join("edge-js"),
            proxy.port
        ),
    )
    .await;
    eventually(|| hub.num_leafnodes() == 1 && edge.num_leafnodes() == 1).await;
    (hub, edge, proxy)
}

async fn create_orders(c: &async_nats::Client) {
    async_nats::jetstream::new(c.clone())
        .create_stream(async_nats::jetstream::stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["orders.>".into()],
            ..Default::default()
        })
        .await
        .expect("ORDERS on the hub");
}

/// Creates, on the edge, stream `LOCAL` sourcing the hub's `ORDERS` through its domain.
async fn create_local(on_edge: &async_nats::Client, hub_api: &str) {
    let r = api(
        on_edge,
        "$JS.API.STREAM.CREATE.LOCAL",
        json!({"name": "LOCAL", "storage": "file",
               "sources": [{"name": "ORDERS", "external": {"api": hub_api, "deliver": ""}}]}),
    )
    .await;
    assert!(r.get("error").is_none(), "LOCAL created on the edge: {r}");
}

#[tokio::test]
async fn an_edge_stream_sources_a_hub_stream_across_a_cut_link_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hub, edge, proxy) = hub_and_edge(dir.path()).await;
    let on_hub = connect(&hub.client_url()).await;
    let on_edge = connect(&edge.client_url()).await;
    create_orders(&on_hub).await;
    let ie = edge.internal_client("$G").expect("internal");
    eventually(|| ie.has_interest("$JS.hub.API.CONSUMER.CREATE.ORDERS")).await;
    create_local(&on_edge, "$JS.hub.API").await;
    publish_orders(&on_hub, 0..20).await;
    wait_messages(&on_edge, "LOCAL", 20, 10).await;

    // The link goes down; the hub takes more meanwhile.
    proxy.cut();
    eventually(|| hub.num_leafnodes() == 0 && edge.num_leafnodes() == 0).await;
    publish_orders(&on_hub, 20..40).await;
    assert_eq!(
        info(&on_edge, "$JS.API", "LOCAL").await["state"]["messages"],
        20,
        "nothing crosses a cut link"
    );
    // Back up: the source resumes where it left off (its consumer recreated after the silence).
    proxy.restore();
    eventually(|| hub.num_leafnodes() == 1 && edge.num_leafnodes() == 1).await;
    publish_orders(&on_hub, 40..50).await;
    wait_messages(&on_edge, "LOCAL", 50, 40).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_messages(&on_edge, "LOCAL", 50, 1).await;
    check_sourced(&on_edge, "LOCAL", 50).await;
    // The hub's stream is the hub's: the edge has no ORDERS, the hub no LOCAL.
    assert!(info(&on_edge, "$JS.API", "ORDERS")
        .await
        .get("error")
        .is_some());
    assert!(info(&on_hub, "$JS.API", "LOCAL")
        .await
        .get("error")
        .is_some());
    edge.shutdown().await;
    hub.shutdown().await;
    proxy.task.abort();
}

#[tokio::test]
async fn a_client_of_the_edge_uses_the_hub_jetstream_by_domain_and_plain_js_stays_apart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hub, edge, proxy) = hub_and_edge(dir.path()).await;
    let on_hub = connect(&hub.client_url()).await;
    let on_edge = connect(&edge.client_url()).await;
    create_orders(&on_hub).await;
    publish_orders(&on_hub, 0..5).await;
    let ie = edge.internal_client("$G").expect("internal");
    eventually(|| ie.has_interest("$JS.hub.API.CONSUMER.CREATE.ORDERS")).await;

    // A pull consumer on the hub's stream, made and read by a client of the edge.
    let hub_js = async_nats::jetstream::with_domain(on_edge.clone(), "hub");
    let stream = hub_js.get_stream("ORDERS").await.expect("ORDERS by domain");
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("EDGE_READER".into()),
            ..Default::default()
        })
        .await
        .expect("consumer by domain");
    let mut batch = consumer
        .fetch()
        .max_messages(5)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .expect("fetch");
    let mut got = Vec::new();
    while let Some(m) = batch.next().await {
        let m = m.expect("message");
        got.push(String::from_utf8_lossy(&m.payload).into_owned());
        m.ack().await.expect("ack");
    }
    assert_eq!(got, (0..5).map(|i| format!("m-{i}")).collect::<Vec<_>>());
    let on_hub_js = async_nats::jetstream::new(on_hub.clone());
    let mut c: async_nats::jetstream::consumer::PullConsumer = on_hub_js
        .get_consumer_from_stream("EDGE_READER", "ORDERS")
        .await
        .expect("the consumer lives on the hub");
    let mut acked = 0;
    for _ in 0..100 {
        acked = c.info().await.expect("info").ack_floor.stream_sequence;
        if acked == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(acked, 5, "the edge client's acks reached the hub");

    // A KV bucket of the hub, written by a client of the edge through the domain.
    on_hub_js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "cfg".into(),
            ..Default::default()
        })
        .await
        .expect("bucket on the hub");
    let kv = hub_js.get_key_value("cfg").await.expect("bucket by domain");
    kv.put("colour", "blue".into())
        .await
        .expect("put by domain");
    let hub_kv = on_hub_js.get_key_value("cfg").await.expect("bucket");
    assert_eq!(
        hub_kv.get("colour").await.expect("get").as_deref(),
        Some(&b"blue"[..])
    );

    // The plain API, KV and object store subjects never cross: a listener on the edge hears
    // none of the hub's API traffic, and an edge client's plain KV write stays on the edge.
    let mut listener = on_edge.subscribe("$JS.API.>").await.expect("sub");
    let mut kv_listener = on_edge.subscribe("$KV.>").await.expect("sub");
    on_edge.flush().await.expect("flush");
    let mut probe = on_hub.subscribe("probe.edge").await.expect("sub");
    on_hub.flush().await.expect("flush");
    let ih = hub.internal_client("$G").expect("internal");
    eventually(|| ih.has_interest("probe.edge")).await;
    let ie2 = edge.internal_client("$G").expect("internal");
    eventually(|| ie2.has_interest("probe.edge")).await;
    info(&on_hub, "$JS.API", "ORDERS").await;
    hub_kv
        .put("size", "L".into())
        .await
        .expect("put on the hub");
    on_edge
        .publish("$KV.cfg.colour", "red".into())
        .await
        .expect("publish");
    on_edge.flush().await.expect("flush");
    on_edge
        .publish("probe.edge", "after".into())
        .await
        .expect("publish");
    // The probe published after the KV write has crossed: the write would have too.
    crate::common::traffic::next(&mut probe).await;
    assert!(silent(&mut listener, 300).await, "hub API traffic crossed");
    let m = kv_listener.next().await.expect("the edge's own write");
    assert_eq!(m.subject.as_str(), "$KV.cfg.colour");
    assert!(
        silent(&mut kv_listener, 300).await,
        "the hub's KV write crossed"
    );
    assert_eq!(
        hub_kv.get("colour").await.expect("get").as_deref(),
        Some(&b"blue"[..]),
        "a plain $KV write from the edge changed the hub's bucket"
    );
    edge.shutdown().await;
    hub.shutdown().await;
    proxy.task.abort();
}

#[tokio::test]
async fn a_natrium_edge_sources_a_stream_of_a_nats_server_hub_by_domain() {
    for bin in nats_servers("the JetStream domain leafnode test") {
        eprintln!("nats-server {}", bin.version);
        let dir = tempfile::tempdir().expect("tempdir");
        let leaf_port = crate::leaf::free_port();
        let hub = GoServer::start(
            &bin,
            dir.path(),
            "gohub",
            &format!(
                "jetstream {{ store_dir: {:?}, domain: hub }}\nleafnodes {{ listen: \"127.0.0.1:{leaf_port}\"{} }}\n",
                dir.path().join("hub-js"),
                crate::leaf::go_compression(&bin)
            ),
        );
        let edge = natrium(
            dir.path(),
            "edge",
            &format!(
                "jetstream {{ store_dir: {:?}, domain: edge }}\nleafnodes {{ reconnect: \"100ms\", remotes [ {{ url: \"nats-leaf://127.0.0.1:{leaf_port}\" }} ] }}\n",
                dir.path().join("edge-js"),
            ),
        )
        .await;
        eventually(|| edge.num_leafnodes() == 1).await;
        let on_hub = connect(&hub.client_url()).await;
        let on_edge = connect(&edge.client_url()).await;
        create_orders(&on_hub).await;
        publish_orders(&on_hub, 0..10).await;
        let ie = edge.internal_client("$G").expect("internal");
        eventually(|| ie.has_interest("$JS.hub.API.CONSUMER.CREATE.ORDERS")).await;
        // The hub's JetStream by domain, from a client of the edge.
        let i = info(&on_edge, "$JS.hub.API", "ORDERS").await;
        assert_eq!(i["state"]["messages"], 10, "{i}");
        create_local(&on_edge, "$JS.hub.API").await;
        publish_orders(&on_hub, 10..20).await;
        wait_messages(&on_edge, "LOCAL", 20, 15).await;
        check_sourced(&on_edge, "LOCAL", 20).await;
        edge.shutdown().await;
        drop(hub);
    }
}
