//! Sources and mirrors through async-nats and raw `$JS.API` requests: a mirror keeps the
//! origin's sequences (gaps included) as the origin grows, restarts and is recreated, STREAM.INFO
//! reports it, promotion by removing the mirror; sources with filters and transforms and the
//! `Nats-Stream-Source` header, surviving a restart without duplicates; sourcing from another
//! account through an external API prefix; nats-server's config errors.

use std::time::Duration;

use crate::common::api;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use natrium::{Options, Server};
use serde_json::{json, Value};

async fn publish(js: &jetstream::Context, subject: &str, body: &str) -> u64 {
    js.publish(subject.to_string(), Bytes::from(body.to_string()))
        .await
        .expect("publish")
        .await
        .expect("ack")
        .sequence
}

async fn info(c: &async_nats::Client, name: &str) -> Value {
    api(c, &format!("$JS.API.STREAM.INFO.{name}"), Value::Null).await
}

/// Polls STREAM.INFO until `pred` holds (10 s at most, then fails with the last info).
async fn wait_info(c: &async_nats::Client, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..200 {
        last = info(c, name).await;
        if pred(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("stream {name} never reached the expected state: {last}");
}

async fn get(c: &async_nats::Client, stream: &str, seq: u64) -> Value {
    api(
        c,
        &format!("$JS.API.STREAM.MSG.GET.{stream}"),
        json!({ "seq": seq }),
    )
    .await
}

fn header_value(hdrs_b64: &Value, name: &str) -> Option<String> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(hdrs_b64.as_str()?)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(String::from))
}

#[tokio::test]
async fn mirror_keeps_origin_sequences_and_follows_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let c = crate::common::client(&s).await;
    let js = jetstream::new(c.clone());
    let origin = js
        .create_stream(stream::Config {
            name: "ORIGIN".into(),
            subjects: vec!["orders.>".into()],
            allow_direct: true,
            ..Default::default()
        })
        .await
        .expect("origin");
    for i in 1..=6 {
        publish(&js, &format!("orders.{i}"), &format!("o{i}")).await;
    }
    assert!(origin.delete_message(3).await.expect("delete"));
    js.create_stream(stream::Config {
        name: "M".into(),
        mirror: Some(stream::Source {
            name: "ORIGIN".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("mirror");
    let i = wait_info(&c, "M", |v| v["state"]["last_seq"] == 6).await;
    assert_eq!(
        i["state"]["messages"], 5,
        "the origin's gap stays a gap: {i}"
    );
    assert_eq!(i["state"]["first_seq"], 1);
    assert_eq!(i["config"]["mirror"]["name"], "ORIGIN");
    assert!(
        i["config"].get("subjects").is_none(),
        "a mirror has no subjects"
    );
    assert_eq!(
        i["config"]["mirror_direct"], true,
        "inherits the origin's direct get"
    );
    assert_eq!(i["mirror"]["name"], "ORIGIN");
    assert_eq!(i["mirror"]["lag"], 0);
    assert!(i["mirror"]["active"].as_i64().expect("active") >= 0, "{i}");
    let m = get(&c, "M", 4).await;
    assert_eq!(m["message"]["subject"], "orders.4");
    let o = get(&c, "ORIGIN", 4).await;
    assert_eq!(
        m["message"]["time"], o["message"]["time"],
        "origin timestamps kept"
    );
    assert_eq!(get(&c, "M", 3).await["error"]["err_code"], 10037);

    // The origin grows; the mirror follows.
    for i in 7..=9 {
        publish(&js, &format!("orders.{i}"), &format!("o{i}")).await;
    }
    wait_info(&c, "M", |v| v["state"]["last_seq"] == 9).await;

    // A publish on the origin's subjects is not stored twice (the mirror has no subjects).
    assert_eq!(info(&c, "ORIGIN").await["state"]["messages"], 8);

    // Both come back after a restart, and the mirror goes on from where it was.
    drop(c);
    s.shutdown().await;
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let c = crate::common::client(&s).await;
    let js = jetstream::new(c.clone());
    assert_eq!(publish(&js, "orders.10", "o10").await, 10);
    let i = wait_info(&c, "M", |v| v["state"]["last_seq"] == 10).await;
    assert_eq!(i["state"]["messages"], 9, "nothing mirrored twice: {i}");

    // With the origin gone, the mirror answers direct gets for it (mirror_direct).
    js.delete_stream("ORIGIN").await.expect("delete origin");
    let r = c
        .request("$JS.API.DIRECT.GET.ORIGIN.orders.4", Bytes::new())
        .await
        .expect("direct get");
    let h = r.headers.expect("headers");
    assert_eq!(h.get("Nats-Stream").map(|v| v.as_str()), Some("M"));
    assert_eq!(h.get("Nats-Sequence").map(|v| v.as_str()), Some("4"));
    assert_eq!(&r.payload[..], b"o4");
    s.shutdown().await;
}

#[tokio::test]
async fn mirror_waits_for_its_origin_and_follows_a_recreated_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let c = crate::common::client(&s).await;
    let js = jetstream::new(c.clone());
    // The origin does not exist yet: the mirror reports the error and retries.
    let created = api(
        &c,
        "$JS.API.STREAM.CREATE.M",
        json!({"name": "M", "mirror": {"name": "LATER", "opt_start_seq": 2}}),
    )
    .await;
    assert!(created.get("error").is_none(), "{created}");
    let i = wait_info(&c, "M", |v| v["mirror"]["error"]["err_code"] == 10059).await;
    assert_eq!(i["mirror"]["active"], -1, "never heard from the origin");
    js.create_stream(stream::Config {
        name: "LATER".into(),
        subjects: vec!["later.>".into()],
        ..Default::default()
    })
    .await
    .expect("origin");
    for i in 1..=3 {
        publish(&js, &format!("later.{i}"), "x").await;
    }
    // opt_start_seq 2: messages 2 and 3.
    let i = wait_info(&c, "M", |v| v["state"]["messages"] == 2).await;
    assert_eq!(i["state"]["first_seq"], 2);
    assert!(i["mirror"].get("error").is_none(), "{i}");

    // The origin is deleted and made again; the mirror picks up its new messages past its own.
    js.delete_stream("LATER").await.expect("delete origin");
    js.create_stream(stream::Config {
        name: "LATER".into(),
        subjects: vec!["later.>".into()],
        ..Default::default()
    })
    .await
    .expect("origin again");
    for i in 1..=5 {
        publish(&js, &format!("later.{i}"), "y").await;
    }
    let mut last = Value::Null;
    for _ in 0..300 {
        last = info(&c, "M").await;
        if last["state"]["last_seq"] == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last["state"]["last_seq"], 5, "{last}");
    assert_eq!(get(&c, "M", 5).await["message"]["subject"], "later.5");
    s.shutdown().await;
}

#[tokio::test]
async fn a_mirror_is_promoted_by_removing_its_mirror_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let c = crate::common::client(&s).await;
    let js = jetstream::new(c.clone());
    js.create_stream(stream::Config {
        name: "O".into(),
        subjects: vec!["o.>".into()],
        ..Default::default()
    })
    .await
    .expect("origin");
    publish(&js, "o.1", "1").await;
    publish(&js, "o.2", "2").await;
    let created = api(
        &c,
        "$JS.API.STREAM.CREATE.M",
        json!({"name": "M", "mirror": {"name": "O"}}),
    )
    .await;
    assert!(created.get("error").is_none(), "{created}");
    wait_info(&c, "M", |v| v["state"]["messages"] == 2).await;
    // A mirror can not change to another origin.
    let changed = api(
        &c,
        "$JS.API.STREAM.UPDATE.M",
        json!({"name": "M", "mirror": {"name": "OTHER"}}),
    )
    .await;
    assert_eq!(changed["error"]["err_code"], 10055, "{changed}");
    // Removing the mirror promotes it: it takes its own subjects now.
    let promoted = api(
        &c,
        "$JS.API.STREAM.UPDATE.M",
        json!({"name": "M", "subjects": ["m.>"]}),
    )
    .await;
    assert!(promoted.get("error").is_none(), "{promoted}");
    assert!(promoted.get("mirror").is_none(), "{promoted}");
    assert_eq!(publish(&js, "m.x", "mine").await, 3);
    publish(&js, "o.3", "3").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let i = info(&c, "M").await;
    assert_eq!(
        i["state"]["messages"], 3,
        "the old origin no longer feeds it: {i}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn sources_filter_transform_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let c = crate::common::client(&s).await;
    let js = jetstream::new(c.clone());
    for (name, subj) in [("A", "a.>"), ("B", "b.>")] {
        js.create_stream(stream::Config {
            name: name.into(),
            subjects: vec![subj.into()],
            ..Default::default()
        })
        .await
        .expect("origin");
    }
    publish(&js, "a.keep.1", "a1").await;
    publish(&js, "a.drop.1", "a2").await;
    publish(&js, "b.1", "b1").await;
    let agg = js
        .create_stream(stream::Config {
            name: "AGG".into(),
            sources: Some(vec![
                stream::Source {
                    name: "A".into(),
                    filter_subject: Some("a.keep.>".into()),
                    ..Default::default()
                },
                stream::Source {
                    name: "B".into(),
                    subject_transforms: vec![stream::SubjectTransform {
                        source: "b.*".into(),
                        destination: "agg.b.{{wildcard(1)}}".into(),
                    }],
                    ..Default::default()
                },
            ]),
            ..Default::default()
        })
        .await
        .expect("aggregate");
    let i = wait_info(&c, "AGG", |v| v["state"]["messages"] == 2).await;
    let sources = i["sources"].as_array().expect("sources info");
    assert_eq!(sources.len(), 2, "{i}");
    assert_eq!(sources[0]["name"], "A");
    assert_eq!(sources[0]["filter_subject"], "a.keep.>");
    assert_eq!(
        sources[1]["subject_transforms"][0]["dest"],
        "agg.b.{{wildcard(1)}}"
    );
    let subjects: Vec<String> = {
        let mut v = Vec::new();
        for seq in 1..=2 {
            let m = get(&c, "AGG", seq).await;
            v.push(
                m["message"]["subject"]
                    .as_str()
                    .expect("subject")
                    .to_string(),
            );
        }
        v.sort();
        v
    };
    assert_eq!(subjects, vec!["a.keep.1", "agg.b.1"]);
    let m = agg
        .get_last_raw_message_by_subject("agg.b.1")
        .await
        .expect("get");
    let src = m
        .headers
        .get("Nats-Stream-Source")
        .expect("source header")
        .as_str()
        .to_string();
    assert_eq!(src, "B 1 b.* agg.b.{{wildcard(1)}} b.1");

    drop(c);
    s.shutdown().await;
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let c = crate::common::client(&s).await;
    let js = jetstream::new(c.clone());
    publish(&js, "a.keep.2", "a3").await;
    publish(&js, "b.2", "b2").await;
    let i = wait_info(&c, "AGG", |v| v["state"]["messages"] == 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        info(&c, "AGG").await["state"]["messages"],
        4,
        "no duplicates: {i}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn sourcing_from_another_account_through_an_api_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = format!(
        r#"
jetstream {{ store_dir: "{}" }}
accounts {{
  ORIG: {{
    jetstream: enabled
    users: [ {{user: o, password: o}} ]
    exports: [
      {{service: "$JS.API.CONSUMER.CREATE.ORDERS"}}
      {{service: "$JS.API.CONSUMER.CREATE.ORDERS.>"}}
      {{service: "$JS.API.CONSUMER.DELETE.ORDERS.>"}}
      {{stream: "deliver.agg.>"}}
    ]
  }}
  AGG: {{
    jetstream: enabled
    users: [ {{user: g, password: g}} ]
    imports: [
      {{service: {{account: ORIG, subject: "$JS.API.CONSUMER.CREATE.ORDERS"}}, to: "JS.orig.API.CONSUMER.CREATE.ORDERS"}}
      {{service: {{account: ORIG, subject: "$JS.API.CONSUMER.CREATE.ORDERS.>"}}, to: "JS.orig.API.CONSUMER.CREATE.ORDERS.>"}}
      {{service: {{account: ORIG, subject: "$JS.API.CONSUMER.DELETE.ORDERS.>"}}, to: "JS.orig.API.CONSUMER.DELETE.ORDERS.>"}}
      {{stream: {{account: ORIG, subject: "deliver.agg.>"}}}}
    ]
  }}
}}
"#,
        dir.path().display()
    );
    let path = dir.path().join("js.conf");
    std::fs::write(&path, conf).expect("write conf");
    let (mut o, warnings): (Options, _) = Options::from_file(&path).expect("config");
    assert!(warnings.is_empty(), "{warnings:?}");
    o.host = "127.0.0.1".into();
    o.port = -1;
    let s = Server::start(o).await.expect("starts");
    let orig = async_nats::ConnectOptions::with_user_and_password("o".into(), "o".into())
        .connect(s.client_url())
        .await
        .expect("orig user");
    let agg = async_nats::ConnectOptions::with_user_and_password("g".into(), "g".into())
        .connect(s.client_url())
        .await
        .expect("agg user");
    let ojs = jetstream::new(orig.clone());
    ojs.create_stream(stream::Config {
        name: "ORDERS".into(),
        subjects: vec!["orders.>".into()],
        ..Default::default()
    })
    .await
    .expect("origin");
    publish(&ojs, "orders.1", "x").await;
    publish(&ojs, "orders.2", "y").await;
    let created = api(
        &agg,
        "$JS.API.STREAM.CREATE.COPY",
        json!({"name": "COPY", "sources": [{"name": "ORDERS", "filter_subject": "orders.>",
               "external": {"api": "JS.orig.API", "deliver": "deliver.agg"}}]}),
    )
    .await;
    assert!(created.get("error").is_none(), "{created}");
    let i = wait_info(&agg, "COPY", |v| v["state"]["messages"] == 2).await;
    assert_eq!(i["sources"][0]["external"]["api"], "JS.orig.API", "{i}");
    let m = get(&agg, "COPY", 2).await;
    assert_eq!(m["message"]["subject"], "orders.2");
    let src = header_value(&m["message"]["hdrs"], "Nats-Stream-Source").expect("header");
    assert!(
        src.starts_with("ORDERS:") && src.contains(" 2 orders.> > orders.2"),
        "{src}"
    );
    publish(&ojs, "orders.3", "z").await;
    wait_info(&agg, "COPY", |v| v["state"]["messages"] == 3).await;
    s.shutdown().await;
}

#[tokio::test]
async fn source_and_mirror_configs_are_checked_as_nats_server_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let c = crate::common::client(&s).await;
    let create = |body: Value| {
        let c = c.clone();
        async move {
            let name = body["name"].as_str().expect("name").to_string();
            api(&c, &format!("$JS.API.STREAM.CREATE.{name}"), body).await
        }
    };
    let code = |v: Value| v["error"]["err_code"].as_u64().unwrap_or(0);
    assert_eq!(
        code(create(json!({"name": "M", "subjects": ["x"], "mirror": {"name": "O"}})).await),
        10034
    );
    assert_eq!(
        code(
            create(json!({"name": "M", "mirror": {"name": "O"}, "sources": [{"name": "P"}]})).await
        ),
        10031
    );
    assert_eq!(
        code(create(json!({"name": "M", "first_seq": 5, "mirror": {"name": "O"}})).await),
        10143
    );
    assert_eq!(
        code(
            create(
                json!({"name": "M", "mirror": {"name": "O", "opt_start_seq": 1,
            "opt_start_time": "2024-01-01T00:00:00Z"}})
            )
            .await
        ),
        10032
    );
    assert_eq!(
        code(create(json!({"name": "S", "sources": [{"name": "O"}, {"name": "O"}]})).await),
        10140
    );
    assert_eq!(
        code(
            create(
                json!({"name": "S", "sources": [{"name": "O", "filter_subject": "a",
            "subject_transforms": [{"src": "a", "dest": "b"}]}]})
            )
            .await
        ),
        10144
    );
    assert_eq!(
        code(
            create(json!({"name": "S", "sources": [{"name": "O",
            "subject_transforms": [{"src": "a.*", "dest": "b.$2"}]}]}))
            .await
        ),
        10146
    );
    assert_eq!(
        code(
            create(json!({"name": "S", "sources": [{"name": "O",
            "external": {"api": "$JS.API", "deliver": ""}}]}))
            .await
        ),
        10021
    );
    // A stream that sources itself through another is a cycle.
    assert!(create(json!({"name": "X", "subjects": ["x.>"]}))
        .await
        .get("error")
        .is_none());
    assert!(
        create(json!({"name": "Y", "subjects": ["y.>"], "sources": [{"name": "X"}]}))
            .await
            .get("error")
            .is_none()
    );
    let cyc = api(
        &c,
        "$JS.API.STREAM.UPDATE.X",
        json!({"name": "X", "subjects": ["x.>"], "sources": [{"name": "Y"}]}),
    )
    .await;
    assert_eq!(cyc["error"]["description"], "detected cycle", "{cyc}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_kv_bucket_mirrors_another_through_async_nats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let c = crate::common::client(&s).await;
    let js = jetstream::new(c.clone());
    let src = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "cfg".into(),
            history: 3,
            ..Default::default()
        })
        .await
        .expect("source bucket");
    src.put("a", Bytes::from_static(b"1")).await.expect("put");
    src.put("a", Bytes::from_static(b"2")).await.expect("put");
    src.put("b", Bytes::from_static(b"3")).await.expect("put");
    src.delete("b").await.expect("delete");
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: "copy".into(),
        history: 3,
        mirror: Some(stream::Source {
            name: "cfg".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("mirror bucket");
    let i = wait_info(&c, "KV_copy", |v| v["state"]["last_seq"] == 4).await;
    assert_eq!(i["config"]["mirror"]["name"], "KV_cfg");
    assert_eq!(i["config"]["mirror_direct"], true);
    // The mirror holds the origin's keys under the origin's subjects, history and deletes
    // included (async-nats reads a local mirror bucket's keys that way, as from nats-server).
    let copy = js.get_stream("KV_copy").await.expect("mirror stream");
    let a = copy
        .direct_get_last_for_subject("$KV.cfg.a")
        .await
        .expect("latest a");
    assert_eq!(&a.payload[..], b"2");
    assert_eq!(a.sequence, 2);
    let b = copy
        .direct_get_last_for_subject("$KV.cfg.b")
        .await
        .expect("b's delete marker");
    assert_eq!(
        b.headers.get("KV-Operation").map(|v| v.as_str()),
        Some("DEL")
    );
    assert_eq!(i["state"]["messages"], 4, "history kept: {i}");
    s.shutdown().await;
}
