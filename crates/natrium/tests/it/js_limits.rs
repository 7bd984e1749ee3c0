//! Account JetStream limits from the config (`jetstream { max_mem, max_file, max_streams,
//! max_consumers, max_ack_pending, max_bytes_required }`) enforced with nats-server's errors and
//! shown in `$JS.API.INFO`; a stream's `consumer_limits` applied to its consumers; `/jsz` and
//! `/varz`'s JetStream section in nats-server's shape.

use bytes::Bytes;
use natrium::Options;
use serde_json::{json, Value};

use crate::common::{api, client, get_json, js_opts, start};

fn err_code(v: &Value) -> i64 {
    v["error"]["err_code"].as_i64().unwrap_or(0)
}

async fn server_with(account_js: &str) -> (tempfile::TempDir, natrium::Server) {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("js.conf");
    std::fs::write(
        &conf,
        format!(
            "jetstream {{ store_dir: {:?} }}\naccounts {{\n  A: {{ jetstream: {account_js}, users: [{{user: a, password: a}}] }}\n}}\n",
            dir.path().join("store").display().to_string()
        ),
    )
    .expect("write");
    let (mut o, warnings) = Options::from_file(&conf).expect("loads");
    assert!(warnings.is_empty(), "{warnings:?}");
    o.port = -1;
    o.host = "127.0.0.1".into();
    let s = start(o).await;
    (dir, s)
}

async fn login(s: &natrium::Server) -> async_nats::Client {
    async_nats::ConnectOptions::with_user_and_password("a".into(), "a".into())
        .connect(s.client_url())
        .await
        .expect("login")
}

#[tokio::test]
async fn account_limits_are_enforced_and_reported() {
    let (_dir, s) = server_with(
        "{ max_mem: 0, max_file: 3000, max_streams: 2, max_consumers: 1, max_ack_pending: 10 }",
    )
    .await;
    let a = login(&s).await;
    let info = api(&a, "$JS.API.INFO", Value::Null).await;
    assert_eq!(
        info["limits"],
        json!({"max_memory": 0, "max_storage": 3000, "max_streams": 2, "max_consumers": 1,
               "max_ack_pending": 10, "memory_max_stream_bytes": -1,
               "storage_max_stream_bytes": -1, "max_bytes_required": false}),
        "{info}"
    );
    // No memory at all; file streams need no max_bytes unless the account says so.
    let r = api(
        &a,
        "$JS.API.STREAM.CREATE.M",
        json!({"name": "M", "storage": "memory"}),
    )
    .await;
    assert_eq!(err_code(&r), 10028, "{r}");
    let r = api(
        &a,
        "$JS.API.STREAM.CREATE.S",
        json!({"name": "S", "subjects": ["s"]}),
    )
    .await;
    assert!(r.get("error").is_none(), "{r}");
    // A reservation beyond what is left is refused.
    let r = api(
        &a,
        "$JS.API.STREAM.CREATE.T",
        json!({"name": "T", "subjects": ["t"], "max_bytes": 3001}),
    )
    .await;
    assert_eq!(err_code(&r), 10047, "{r}");
    let r = api(
        &a,
        "$JS.API.STREAM.CREATE.T",
        json!({"name": "T", "subjects": ["t"], "max_bytes": 100}),
    )
    .await;
    assert!(r.get("error").is_none(), "{r}");
    let info = api(&a, "$JS.API.INFO", Value::Null).await;
    assert_eq!(info["reserved_storage"], 100, "{info}");
    let r = api(
        &a,
        "$JS.API.STREAM.CREATE.U",
        json!({"name": "U", "subjects": ["u"]}),
    )
    .await;
    assert_eq!(err_code(&r), 10027, "{r}");
    // Consumers: max_ack_pending defaults to the account's and may not exceed it; the
    // account's max_consumers counts per stream.
    let r = api(
        &a,
        "$JS.API.CONSUMER.CREATE.S.C1",
        json!({"stream_name": "S", "config": {"durable_name": "C1", "max_ack_pending": 11}}),
    )
    .await;
    assert_eq!(err_code(&r), 10121, "{r}");
    assert_eq!(
        r["error"]["description"],
        "consumer max ack pending exceeds system limit of 10"
    );
    let r = api(
        &a,
        "$JS.API.CONSUMER.CREATE.S.C1",
        json!({"stream_name": "S", "config": {"durable_name": "C1"}}),
    )
    .await;
    assert_eq!(r["config"]["max_ack_pending"], 10, "{r}");
    let r = api(
        &a,
        "$JS.API.CONSUMER.CREATE.S.C2",
        json!({"stream_name": "S", "config": {"durable_name": "C2"}}),
    )
    .await;
    assert_eq!(err_code(&r), 10026, "{r}");
    assert_eq!(r["error"]["description"], "maximum consumers limit reached");
    let r = api(
        &a,
        "$JS.API.CONSUMER.CREATE.T.C2",
        json!({"stream_name": "T", "config": {"durable_name": "C2"}}),
    )
    .await;
    assert!(r.get("error").is_none(), "another stream has room: {r}");
    // Stored bytes: messages past the account's file limit are refused.
    let js = async_nats::jetstream::new(a.clone());
    let mut refused = None;
    for i in 0..10 {
        match js
            .publish("s", Bytes::from(vec![b'x'; 1000]))
            .await
            .expect("pub")
            .await
        {
            Ok(_) => {}
            Err(e) => {
                refused = Some((i, e.to_string()));
                break;
            }
        }
    }
    let (at, why) = refused.expect("a publish past the limit is refused");
    assert!((2..=3).contains(&at), "refused at message {at}");
    assert!(
        why.contains("resource limits exceeded for account"),
        "{why}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn max_bytes_required_and_jetstream_enabled() {
    let (_dir, s) = server_with("{ max_file: 1MB, max_bytes_required: true }").await;
    let a = login(&s).await;
    let r = api(&a, "$JS.API.STREAM.CREATE.S", json!({"name": "S"})).await;
    assert_eq!(err_code(&r), 10113, "{r}");
    let info = api(&a, "$JS.API.INFO", Value::Null).await;
    assert_eq!(info["limits"]["max_bytes_required"], true);
    s.shutdown().await;
    let (_dir, s) = server_with("enabled").await;
    let a = login(&s).await;
    let info = api(&a, "$JS.API.INFO", Value::Null).await;
    assert_eq!(info["limits"]["max_streams"], -1, "{info}");
    let r = api(&a, "$JS.API.STREAM.CREATE.S", json!({"name": "S"})).await;
    assert!(r.get("error").is_none(), "{r}");
    s.shutdown().await;
}

#[tokio::test]
async fn stream_consumer_limits_apply_to_its_consumers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(js_opts(dir.path())).await;
    let nc = client(&s).await;
    let r = api(
        &nc,
        "$JS.API.STREAM.CREATE.S",
        json!({"name": "S", "subjects": ["s"], "consumer_limits": {"inactive_threshold": 2_000_000_000i64, "max_ack_pending": 5}}),
    )
    .await;
    assert!(r.get("error").is_none(), "{r}");
    assert_eq!(r["config"]["consumer_limits"]["max_ack_pending"], 5);
    let r = api(
        &nc,
        "$JS.API.CONSUMER.CREATE.S",
        json!({"stream_name": "S", "config": {}}),
    )
    .await;
    assert_eq!(r["config"]["max_ack_pending"], 5, "{r}");
    assert_eq!(r["config"]["inactive_threshold"], 2_000_000_000i64, "{r}");
    let r = api(
        &nc,
        "$JS.API.CONSUMER.CREATE.S",
        json!({"stream_name": "S", "config": {"max_ack_pending": 6}}),
    )
    .await;
    assert_eq!(err_code(&r), 10121, "{r}");
    let r = api(
        &nc,
        "$JS.API.CONSUMER.CREATE.S",
        json!({"stream_name": "S", "config": {"inactive_threshold": 3_000_000_000i64}}),
    )
    .await;
    assert_eq!(err_code(&r), 10153, "{r}");
    assert_eq!(
        r["error"]["description"],
        "consumer inactive threshold exceeds system limit of 2s"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn jsz_and_varz_in_nats_server_shape() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = Options {
        http_host: "127.0.0.1".into(),
        http_port: Some(-1),
        ..js_opts(dir.path())
    };
    let s = start(o).await;
    let nc = client(&s).await;
    let r = api(
        &nc,
        "$JS.API.STREAM.CREATE.S",
        json!({"name": "S", "subjects": ["s"], "max_bytes": 1_000_000}),
    )
    .await;
    assert!(r.get("error").is_none(), "{r}");
    let js = async_nats::jetstream::new(nc.clone());
    for _ in 0..3 {
        js.publish("s", Bytes::from_static(b"hello"))
            .await
            .expect("pub")
            .await
            .expect("ack");
    }
    let r = api(
        &nc,
        "$JS.API.CONSUMER.CREATE.S.C",
        json!({"stream_name": "S", "config": {"durable_name": "C"}}),
    )
    .await;
    assert!(r.get("error").is_none(), "{r}");
    let _ = api(&nc, "$JS.API.STREAM.INFO.NOPE", Value::Null).await;
    let jsz = get_json(&s, "/jsz").await;
    for k in [
        "memory",
        "storage",
        "reserved_memory",
        "reserved_storage",
        "accounts",
        "ha_assets",
        "api",
        "server_id",
        "now",
        "config",
        "limits",
        "streams",
        "consumers",
        "messages",
        "bytes",
        "total",
    ] {
        assert!(jsz.get(k).is_some(), "/jsz has {k}: {jsz}");
    }
    assert_eq!(
        (
            jsz["streams"].as_u64(),
            jsz["consumers"].as_u64(),
            jsz["messages"].as_u64()
        ),
        (Some(1), Some(1), Some(3))
    );
    assert_eq!(jsz["reserved_storage"], 1_000_000);
    assert!(jsz["storage"].as_u64().unwrap_or(0) > 0);
    assert!(jsz["api"]["total"].as_u64().unwrap_or(0) >= 3, "{jsz}");
    assert!(jsz["api"]["errors"].as_u64().unwrap_or(0) >= 1, "{jsz}");
    assert!(
        jsz.get("account_details").is_none(),
        "only when asked: {jsz}"
    );
    let d = get_json(&s, "/jsz?accounts=1&streams=1&consumers=1&config=true").await;
    let acc = &d["account_details"][0];
    assert_eq!(acc["name"], "$G", "{d}");
    let sd = &acc["stream_detail"][0];
    assert_eq!(sd["name"], "S");
    assert_eq!(sd["state"]["messages"], 3);
    assert_eq!(sd["config"]["name"], "S");
    assert_eq!(sd["consumer_detail"][0]["name"], "C");
    assert_eq!(sd["consumer_detail"][0]["config"]["durable_name"], "C");
    let d = get_json(&s, "/jsz?streams=true").await;
    let sd = &d["account_details"][0]["stream_detail"][0];
    assert!(
        sd.get("config").is_none() && sd.get("consumer_detail").is_none(),
        "{d}"
    );
    let url = format!("{}/jsz?accounts=maybe", s.monitor_url().expect("monitor"));
    assert_eq!(reqwest::get(&url).await.expect("get").status(), 400);
    let varz = get_json(&s, "/varz").await;
    let v = &varz["jetstream"];
    assert_eq!(v["config"]["sync_always"], true, "{v}");
    assert_eq!(v["stats"]["accounts"], 1, "{v}");
    assert_eq!(v["stats"]["reserved_storage"], 1_000_000, "{v}");
    assert!(v["stats"]["api"]["total"].as_u64().is_some(), "{v}");
    assert!(
        v["stats"].get("streams").is_none(),
        "nats-server's stats have no stream count: {v}"
    );
    assert_eq!(v["limits"], json!({}));
    s.shutdown().await;
}

/// Operator mode: account JWTs grant JetStream with their limits (flat, or tiered where tier
/// `R1` applies); an account whose JWT grants none has no JetStream.
#[tokio::test]
async fn account_jwts_grant_jetstream_with_their_limits() {
    use crate::common::jwt::{creds_connect, encode, now, write_creds};
    use nkeys::KeyPair;
    let dir = tempfile::tempdir().expect("tempdir");
    let op = KeyPair::new_operator();
    let claims = |sub: &str, name: &str, nats: Value| json!({"jti": name, "iat": now() - 10, "iss": op.public_key(), "sub": sub, "name": name, "nats": nats});
    let op_jwt = encode(
        claims(
            &op.public_key(),
            "OP",
            json!({"type": "operator", "version": 2}),
        ),
        &op,
    );
    std::fs::write(dir.path().join("op.jwt"), op_jwt).expect("write operator");
    let (flat, tiered, none) = (
        KeyPair::new_account(),
        KeyPair::new_account(),
        KeyPair::new_account(),
    );
    let account = |k: &KeyPair, name: &str, limits: Value| {
        encode(
            claims(
                &k.public_key(),
                name,
                json!({"type": "account", "version": 2, "limits": limits}),
            ),
            &op,
        )
    };
    let flat_jwt = account(
        &flat,
        "FLAT",
        json!({"mem_storage": 0, "disk_storage": 100_000, "streams": 1, "consumer": 2, "max_ack_pending": 50}),
    );
    let tiered_jwt = account(
        &tiered,
        "TIERED",
        json!({"tiered_limits": {"R1": {"disk_storage": 5000, "streams": 3, "consumer": -1}}}),
    );
    let none_jwt = account(&none, "NONE", json!({"subs": -1}));
    let conf = dir.path().join("op.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:-1\noperator: op.jwt\njetstream {{ store_dir: {:?} }}\nresolver: MEMORY\nresolver_preload: {{\n  {}: {}\n  {}: {}\n  {}: {}\n}}\n",
            dir.path().join("store").display().to_string(),
            flat.public_key(), flat_jwt, tiered.public_key(), tiered_jwt, none.public_key(), none_jwt
        ),
    )
    .expect("write config");
    let (o, _) = Options::from_file(&conf).expect("loads");
    let s = start(o).await;
    let user_of = |acc: &KeyPair, name: &str| {
        let u = KeyPair::new_user();
        let jwt = encode(
            json!({"jti": name, "iat": now() - 10, "iss": acc.public_key(), "sub": u.public_key(),
                   "name": name, "nats": {"type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1}}),
            acc,
        );
        write_creds(dir.path(), name, &jwt, &u)
    };
    let f = creds_connect(&s.client_url(), &user_of(&flat, "f"))
        .await
        .expect("login");
    let info = api(&f, "$JS.API.INFO", Value::Null).await;
    assert_eq!(info["limits"]["max_storage"], 100_000, "{info}");
    assert_eq!(info["limits"]["max_streams"], 1, "{info}");
    assert_eq!(info["limits"]["max_ack_pending"], 50, "{info}");
    assert_eq!(info["limits"]["storage_max_stream_bytes"], -1, "{info}");
    let r = api(
        &f,
        "$JS.API.STREAM.CREATE.S",
        json!({"name": "S", "subjects": ["s"]}),
    )
    .await;
    assert!(r.get("error").is_none(), "{r}");
    let r = api(
        &f,
        "$JS.API.STREAM.CREATE.T",
        json!({"name": "T", "subjects": ["t"]}),
    )
    .await;
    assert_eq!(err_code(&r), 10027, "{r}");
    let t = creds_connect(&s.client_url(), &user_of(&tiered, "t"))
        .await
        .expect("login");
    let info = api(&t, "$JS.API.INFO", Value::Null).await;
    assert_eq!(info["tiers"]["R1"]["limits"]["max_storage"], 5000, "{info}");
    assert_eq!(info["limits"]["max_storage"], 0, "{info}");
    let r = api(
        &t,
        "$JS.API.STREAM.CREATE.S",
        json!({"name": "S", "subjects": ["s"]}),
    )
    .await;
    assert!(r.get("error").is_none(), "{r}");
    let info = api(&t, "$JS.API.INFO", Value::Null).await;
    assert_eq!(info["tiers"]["R1"]["streams"], 1, "{info}");
    let n = creds_connect(&s.client_url(), &user_of(&none, "n"))
        .await
        .expect("login");
    let err = n
        .request("$JS.API.INFO", Bytes::new())
        .await
        .expect_err("no JetStream");
    assert_eq!(
        err.kind(),
        async_nats::client::RequestErrorKind::NoResponders
    );
    s.shutdown().await;
}
