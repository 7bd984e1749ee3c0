//! Stream state and message lookups as nats-server answers them: `STREAM.INFO` with
//! `subjects_filter` and `deleted_details`, `MSG.GET` by `next_by_subj`/`last_by_subj` (and
//! conflicting picks refused), direct gets that no stream answers seen as no responders, and KV
//! purges with their markers as nats-py sends them.

use async_nats::client::RequestErrorKind;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::common::{api, client, js_opts, start};

#[tokio::test]
async fn stream_info_details_and_message_lookups() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(js_opts(dir.path())).await;
    let nc = client(&s).await;
    let r = api(
        &nc,
        "$JS.API.STREAM.CREATE.S",
        json!({"name": "S", "subjects": ["s.>"]}),
    )
    .await;
    assert!(r.get("error").is_none(), "{r}");
    let js = async_nats::jetstream::new(nc.clone());
    for subj in ["s.a", "s.a", "s.b", "s.a"] {
        js.publish(subj, Bytes::from_static(b"x"))
            .await
            .expect("pub")
            .await
            .expect("ack");
    }
    let r = api(&nc, "$JS.API.STREAM.MSG.DELETE.S", json!({"seq": 2})).await;
    assert_eq!(r["success"], true, "{r}");
    let info = api(
        &nc,
        "$JS.API.STREAM.INFO.S",
        json!({"subjects_filter": "s.*", "deleted_details": true}),
    )
    .await;
    assert_eq!(
        info["state"]["subjects"],
        json!({"s.a": 2, "s.b": 1}),
        "{info}"
    );
    assert_eq!(info["state"]["deleted"], json!([2]), "{info}");
    assert_eq!(info["total"], 2, "{info}");
    let get = |body: Value| {
        let nc = nc.clone();
        async move { api(&nc, "$JS.API.STREAM.MSG.GET.S", body).await }
    };
    assert_eq!(
        get(json!({"last_by_subj": "s.a"})).await["message"]["seq"],
        4
    );
    assert_eq!(
        get(json!({"next_by_subj": "s.a", "seq": 2})).await["message"]["seq"],
        4
    );
    assert_eq!(
        get(json!({"next_by_subj": "s.b"})).await["message"]["seq"],
        3
    );
    assert_eq!(
        get(json!({"next_by_subj": "s.b", "seq": 4})).await["error"]["err_code"],
        10037
    );
    for conflicting in [
        json!({"seq": 1, "last_by_subj": "s.a"}),
        json!({"last_by_subj": "s.a", "next_by_subj": "s.a"}),
        Value::Null,
    ] {
        let r = get(conflicting.clone()).await;
        assert_eq!(r["error"]["err_code"], 10003, "{conflicting}: {r}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn direct_gets_no_stream_answers_are_no_responders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(js_opts(dir.path())).await;
    let nc = client(&s).await;
    for (name, direct) in [("D", true), ("N", false)] {
        let r = api(
            &nc,
            &format!("$JS.API.STREAM.CREATE.{name}"),
            json!({"name": name, "subjects": [format!("{}.>", name.to_lowercase())], "allow_direct": direct}),
        )
        .await;
        assert!(r.get("error").is_none(), "{r}");
    }
    let js = async_nats::jetstream::new(nc.clone());
    js.publish("d.k", Bytes::from_static(b"v"))
        .await
        .expect("pub")
        .await
        .expect("ack");
    let m = nc
        .request("$JS.API.DIRECT.GET.D.d.k", Bytes::new())
        .await
        .expect("direct get");
    assert_eq!(&m.payload[..], b"v");
    for subject in ["$JS.API.DIRECT.GET.N.n.k", "$JS.API.DIRECT.GET.NOPE.x"] {
        let err = nc
            .request(subject, Bytes::new())
            .await
            .expect_err("no responders");
        assert_eq!(err.kind(), RequestErrorKind::NoResponders, "{subject}");
    }
    s.shutdown().await;
}

/// nats-py's KV purge (a rollup marker) and `purge_deletes(olderthan)` (stream purges that keep
/// recent markers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_py_kv_purge_and_purge_deletes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(js_opts(dir.path())).await;
    let script = format!(
        r#"
import asyncio, nats
from nats.js.kv import KV_PURGE

async def main():
    nc = await nats.connect({url:?})
    js = nc.jetstream()
    kv = await js.create_key_value(bucket="p", history=10)
    for i in range(3):
        await kv.put("a", str(i).encode())
    await kv.put("b", b"x")
    await kv.purge("a")
    info = await js.stream_info("KV_p")
    assert info.state.messages == 2, info.state
    e = await kv.get("b")
    assert e.value == b"x"
    hist = await kv.history("a")
    assert [h.operation for h in hist] == [KV_PURGE], hist
    await kv.delete("b")
    # Markers younger than an hour are kept; with olderthan=-1 they all go.
    await kv.purge_deletes(olderthan=3600)
    info = await js.stream_info("KV_p")
    assert info.state.messages == 2, info.state
    await kv.purge_deletes(olderthan=-1)
    info = await js.stream_info("KV_p")
    assert info.state.messages == 0, info.state
    await nc.close()
    print("purge ok")

asyncio.run(main())
"#,
        url = s.client_url()
    );
    let out = tokio::task::spawn_blocking(move || crate::stock_clients::run_python(&script))
        .await
        .expect("join");
    if let Some(out) = out {
        assert!(out.contains("purge ok"), "{out}");
    }
    s.shutdown().await;
}
