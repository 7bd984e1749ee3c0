//! Key-value and object stores through async-nats's own APIs: both are built on stream features
//! (per-subject history, rollups, direct get, delete/purge markers, ordered consumers).

use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store};
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn key_value_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let js = jetstream::new(crate::common::client(&s).await);
    let kv = js
        .create_key_value(kv::Config {
            bucket: "settings".into(),
            history: 5,
            ..Default::default()
        })
        .await
        .expect("bucket");
    let r1 = kv
        .put("theme", Bytes::from_static(b"dark"))
        .await
        .expect("put");
    assert_eq!(
        kv.get("theme").await.expect("get"),
        Some(Bytes::from_static(b"dark"))
    );
    let r2 = kv
        .update("theme", Bytes::from_static(b"light"), r1)
        .await
        .expect("update at revision");
    assert!(r2 > r1);
    assert!(
        kv.update("theme", Bytes::from_static(b"x"), r1)
            .await
            .is_err(),
        "stale revision refused"
    );
    assert!(
        kv.create("theme", Bytes::from_static(b"x")).await.is_err(),
        "create refuses an existing key"
    );
    kv.put("lang", Bytes::from_static(b"en"))
        .await
        .expect("put");
    let entry = kv.entry("theme").await.expect("entry").expect("present");
    assert_eq!(entry.revision, r2);
    assert_eq!(&entry.value[..], b"light");

    let mut history = kv.history("theme").await.expect("history");
    let mut values = Vec::new();
    while let Some(e) = history.next().await {
        values.push(String::from_utf8_lossy(&e.expect("entry").value).into_owned());
    }
    assert_eq!(values, vec!["dark", "light"]);

    let mut keys: Vec<String> = kv
        .keys()
        .await
        .expect("keys")
        .map(|k| k.expect("key"))
        .collect()
        .await;
    keys.sort();
    assert_eq!(keys, vec!["lang", "theme"]);

    // Watch sees updates and deletes.
    let mut watch = kv.watch("theme").await.expect("watch");
    kv.put("theme", Bytes::from_static(b"solar"))
        .await
        .expect("put");
    let e = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("entry");
    assert_eq!(&e.value[..], b"solar");
    kv.delete("theme").await.expect("delete");
    let e = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("entry");
    assert_eq!(e.operation, kv::Operation::Delete);
    assert_eq!(kv.get("theme").await.expect("get"), None);

    // Purge leaves one marker and drops the history.
    kv.purge("lang").await.expect("purge");
    assert_eq!(kv.get("lang").await.expect("get"), None);
    let mut history = kv.history("lang").await.expect("history");
    let mut n = 0;
    while let Some(e) = history.next().await {
        assert_eq!(e.expect("entry").operation, kv::Operation::Purge);
        n += 1;
    }
    assert_eq!(n, 1, "only the purge marker remains");
    s.shutdown().await;
}

#[tokio::test]
async fn object_store_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let js = jetstream::new(crate::common::client(&s).await);
    let bucket = js
        .create_object_store(object_store::Config {
            bucket: "files".into(),
            ..Default::default()
        })
        .await
        .expect("bucket");
    // Large enough to span several chunks.
    let data: Vec<u8> = (0..400_000u32).map(|i| (i % 251) as u8).collect();
    let info = bucket
        .put("blob.bin", &mut data.as_slice())
        .await
        .expect("put");
    assert_eq!(info.size, data.len());
    let mut obj = bucket.get("blob.bin").await.expect("get");
    let mut back = Vec::new();
    obj.read_to_end(&mut back).await.expect("read");
    assert_eq!(back, data);
    let mut list = bucket.list().await.expect("list");
    let first = list.next().await.expect("one").expect("info");
    assert_eq!(first.name, "blob.bin");
    bucket.delete("blob.bin").await.expect("delete");
    assert!(bucket.get("blob.bin").await.is_err(), "deleted");
    s.shutdown().await;
}
