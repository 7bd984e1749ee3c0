//! A cluster configured as nats-server clusters usually are: every node given the same route
//! list, its own address included (a self route is found out and dropped). The meta group
//! forms and a replicated stream works.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use natrium::options::{ClusterOptions, RouteUrl};

use crate::common::start;
use crate::replication::{connect, node_opts, wait};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_sharing_one_route_list_with_themselves_in_it_form_the_meta_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let routes: Vec<RouteUrl> = ports
        .iter()
        .map(|p| RouteUrl::parse(&format!("nats://127.0.0.1:{p}")).expect("url"))
        .collect();
    let mut nodes = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let mut o = node_opts(&format!("n{}", i + 1), dir.path(), &[]);
        o.cluster = Some(ClusterOptions {
            port: i32::from(*port),
            routes: routes.clone(),
            ..o.cluster.take().expect("cluster")
        });
        nodes.push(start(o).await);
    }
    wait(Duration::from_secs(30), "a meta group of three", || {
        nodes.iter().all(|s| {
            s.jetstream_meta()
                .is_some_and(|v| v.leader.is_some() && v.members.len() == 3)
        })
    })
    .await;
    let js = jetstream::new(connect(&nodes[2]).await);
    js.create_stream(stream::Config {
        name: "SR".into(),
        subjects: vec!["sr".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .expect("replicated stream");
    let ack = js
        .publish("sr", "x".into())
        .await
        .expect("sent")
        .await
        .expect("acknowledged");
    assert_eq!(ack.sequence, 1);
    for s in nodes {
        s.shutdown().await;
    }
}
