//! Leafnode connections in monitoring and system events as nats-server shows them: not clients
//! in `/connz`, counted per account in `/accstatz` (`leafnodes`, `total_conns`) and in `/varz`,
//! and announced on `$SYS.ACCOUNT.<account>.LEAFNODE.CONNECT` (`server`, `acc`) when bound.

use crate::common::traffic::{natrium, next};
use crate::common::{eventually, get_json};
use crate::leaf::connect_as;

#[tokio::test]
async fn leaf_connections_are_counted_per_account_and_announced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = natrium(
        dir.path(),
        "hub",
        "http: \"127.0.0.1:-1\"\naccounts {\n  A { users [ {user: a, password: pa} ] }\n  SYS { users [ {user: sys, password: ps} ] }\n}\nsystem_account: SYS\nleafnodes { host: 127.0.0.1, port: -1, authorization { users [ {user: edge, password: e, account: A} ] } }\n",
    )
    .await;
    let sys = connect_as(&hub.client_url(), "sys", "ps").await;
    let mut events = sys
        .subscribe("$SYS.ACCOUNT.*.LEAFNODE.CONNECT")
        .await
        .expect("sub");
    sys.flush().await.expect("flush");
    let a = connect_as(&hub.client_url(), "a", "pa").await;
    let port = hub.leafnode_port().expect("leafnode port");
    let leaf = natrium(
        dir.path(),
        "leaf",
        &format!(
            "http: \"127.0.0.1:-1\"\nleafnodes {{ reconnect: \"100ms\", remotes [ {{ url: \"nats-leaf://edge:e@127.0.0.1:{port}\" }} ] }}\n"
        ),
    )
    .await;
    eventually(|| hub.num_leafnodes() == 1).await;

    let m = next(&mut events).await;
    assert_eq!(m.subject.as_str(), "$SYS.ACCOUNT.A.LEAFNODE.CONNECT");
    let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("json");
    assert_eq!(v["acc"], "A", "{v}");
    assert_eq!(
        v["server"]["id"].as_str(),
        Some(
            get_json(&hub, "/varz").await["server_id"]
                .as_str()
                .expect("id")
        ),
        "{v}"
    );
    assert!(v["server"]["seq"].as_u64().is_some_and(|s| s > 0), "{v}");

    // Counted per account, beside the clients; not a client in /connz.
    let st = get_json(&hub, "/accstatz?acc=A").await;
    let a_stat = &st["account_statz"][0];
    assert_eq!(
        (
            &a_stat["conns"],
            &a_stat["leafnodes"],
            &a_stat["total_conns"]
        ),
        (
            &serde_json::json!(1),
            &serde_json::json!(1),
            &serde_json::json!(2)
        ),
        "{st}"
    );
    let connz = get_json(&hub, "/connz").await;
    assert_eq!(
        connz["num_connections"], 2,
        "clients a and sys only: {connz}"
    );
    let varz = get_json(&hub, "/varz").await;
    assert_eq!(varz["leafnodes"], 1, "{varz}");
    // The leaf side counts its own connection in its (global) account.
    let st = get_json(&leaf, "/accstatz?acc=$G").await;
    assert_eq!(st["account_statz"][0]["leafnodes"], 1, "{st}");

    // Gone with the connection.
    leaf.shutdown().await;
    eventually(|| hub.num_leafnodes() == 0).await;
    let st = get_json(&hub, "/accstatz?acc=A").await;
    assert_eq!(st["account_statz"][0]["leafnodes"], 0, "{st}");
    assert_eq!(st["account_statz"][0]["total_conns"], 1, "{st}");
    // A leaf that comes back is announced again.
    let leaf = natrium(
        dir.path(),
        "leaf2",
        &format!(
            "leafnodes {{ reconnect: \"100ms\", remotes [ {{ url: \"nats-leaf://edge:e@127.0.0.1:{port}\" }} ] }}\n"
        ),
    )
    .await;
    let m = next(&mut events).await;
    assert_eq!(m.subject.as_str(), "$SYS.ACCOUNT.A.LEAFNODE.CONNECT");
    drop(a);
    leaf.shutdown().await;
    hub.shutdown().await;
}
