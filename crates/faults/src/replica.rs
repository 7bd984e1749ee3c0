//! Reading a replica's copy of a stream for the checker: through a node's JetStream API
//! (`STREAM.INFO`, then `STREAM.MSG.GET` for every sequence), or offline from a stopped node's
//! store files with the store crate (on a copy, so the node's own files are never touched).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt as _;
use natrium_store::{FileStore, FileStoreConfig, Limits, StoreError, StreamStore, SyncPolicy};
use serde_json::{json, Value};

use crate::checker::{ReplicaContents, StoredMessage};

/// The value of header `name` in a NATS header block (`NATS/1.0\r\nName: value\r\n...`).
pub fn header_value(block: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(block).ok()?;
    text.split("\r\n").skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

async fn api(client: &async_nats::Client, subject: String, body: Value) -> Result<Value, String> {
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(subject.clone(), Bytes::from(body.to_string())),
    )
    .await
    .map_err(|_| format!("{subject}: timed out"))?
    .map_err(|e| format!("{subject}: {e}"))?;
    serde_json::from_slice(&r.payload).map_err(|e| format!("{subject}: {e}"))
}

/// `STREAM.INFO` of `stream` through `client`.
pub async fn stream_info(client: &async_nats::Client, stream: &str) -> Result<Value, String> {
    let v = api(client, format!("$JS.API.STREAM.INFO.{stream}"), json!({})).await?;
    if v.get("error").is_some() {
        return Err(format!("STREAM.INFO {stream}: {}", v["error"]));
    }
    Ok(v)
}

/// Reads every message of `stream` through `client` (whichever node answers), up to 64 gets in
/// flight. Sequences that answer with an error other than "no message found" are unreadable.
pub async fn read_via_api(
    client: &async_nats::Client,
    stream: &str,
    source: &str,
) -> Result<ReplicaContents, String> {
    let info = stream_info(client, stream).await?;
    let state = &info["state"];
    let first = state["first_seq"].as_u64().unwrap_or(0);
    let last = state["last_seq"].as_u64().unwrap_or(0);
    let reported_lost: BTreeSet<u64> = state["lost"]["msgs"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let mut out = ReplicaContents {
        source: source.to_string(),
        first_seq: first,
        last_seq: last,
        reported_lost,
        ..ReplicaContents::default()
    };
    if last == 0 || first > last {
        return Ok(out);
    }
    let subject = format!("$JS.API.STREAM.MSG.GET.{stream}");
    let mut gets = futures::stream::iter(first..=last)
        .map(|seq| {
            let subject = subject.clone();
            async move { (seq, api(client, subject, json!({ "seq": seq })).await) }
        })
        .buffered(64);
    while let Some((seq, r)) = gets.next().await {
        match r {
            Ok(v) if v.get("message").is_some() => match decode_api_message(&v["message"]) {
                Some(m) => out.messages.push(m),
                None => {
                    out.unreadable.insert(seq, format!("undecodable: {v}"));
                }
            },
            Ok(v) => {
                // 10037 is "no message found": a removed sequence, not damage.
                if v["error"]["err_code"].as_u64() != Some(10037) {
                    out.unreadable.insert(seq, v["error"].to_string());
                }
            }
            Err(e) => {
                out.unreadable.insert(seq, e);
            }
        }
    }
    Ok(out)
}

fn decode_api_message(m: &Value) -> Option<StoredMessage> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let seq = m["seq"].as_u64()?;
    let subject = m["subject"].as_str()?.to_string();
    let payload = match m["data"].as_str() {
        Some(d) => b64.decode(d).ok()?,
        None => Vec::new(),
    };
    let msg_id = match m["hdrs"].as_str() {
        Some(h) => header_value(&b64.decode(h).ok()?, "Nats-Msg-Id"),
        None => None,
    };
    Some(StoredMessage {
        seq,
        subject,
        msg_id,
        payload: Bytes::from(payload),
    })
}

/// Directories named `stream` holding a `msgs` directory anywhere under `store_dir` (the file
/// store of that stream, whatever the layout above it).
pub fn find_stream_dirs(store_dir: &Path, stream: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![store_dir.to_path_buf()];
    let mut budget = 100_000usize;
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            budget = budget.saturating_sub(1);
            if budget == 0 {
                return out;
            }
            let p = e.path();
            if !p.is_dir() {
                continue;
            }
            if p.file_name().is_some_and(|n| n == stream) && p.join("msgs").is_dir() {
                out.push(p.join("msgs"));
            } else {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), target)?;
        }
    }
    Ok(())
}

/// Reads a stopped node's file store at `msgs_dir` (a copy of it, opened with the store crate:
/// recovery runs on the copy). Damage the store reports is in `reported_lost`/`unreadable`.
pub fn read_offline(msgs_dir: &Path, source: &str) -> Result<ReplicaContents, String> {
    let tmp = tempfile::Builder::new()
        .prefix("natrium-faults-read-")
        .tempdir()
        .map_err(|e| format!("tempdir: {e}"))?;
    let copy = tmp.path().join("msgs");
    copy_dir(msgs_dir, &copy).map_err(|e| format!("copy {}: {e}", msgs_dir.display()))?;
    let store = FileStore::open(
        FileStoreConfig {
            sync: SyncPolicy::Always,
            ..FileStoreConfig::new(&copy)
        },
        Limits::default(),
    )
    .map_err(|e| format!("open {}: {e}", msgs_dir.display()))?;
    let state = store.state();
    let mut out = ReplicaContents {
        source: source.to_string(),
        first_seq: state.first_seq,
        last_seq: state.last_seq,
        reported_lost: state.lost.iter().copied().collect(),
        ..ReplicaContents::default()
    };
    let deleted: BTreeSet<u64> = store.deleted().into_iter().collect();
    if state.last_seq > 0 {
        for seq in state.first_seq.max(1)..=state.last_seq {
            match store.load_msg(seq) {
                Ok(m) => out.messages.push(StoredMessage {
                    seq: m.seq,
                    subject: String::from_utf8_lossy(&m.subject).into_owned(),
                    msg_id: m
                        .headers
                        .as_deref()
                        .and_then(|h| header_value(h, "Nats-Msg-Id")),
                    payload: m.payload,
                }),
                Err(StoreError::NotFound) if deleted.contains(&seq) => {}
                Err(StoreError::NotFound) => {}
                Err(e) => {
                    out.unreadable.insert(seq, e.to_string());
                }
            }
        }
    }
    let _ = store.stop();
    Ok(out)
}

/// One finding of a store's recovery: what and where, and the sequences it lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub text: String,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// The damage a stopped node's store reports when opened (on a copy).
pub fn recovery_findings(msgs_dir: &Path) -> Result<Vec<Finding>, String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let copy = tmp.path().join("msgs");
    copy_dir(msgs_dir, &copy).map_err(|e| e.to_string())?;
    let store = FileStore::open(FileStoreConfig::new(&copy), Limits::default())
        .map_err(|e| e.to_string())?;
    let out = store
        .recovery()
        .corruption
        .iter()
        .map(|c| Finding {
            text: format!(
                "{} at {}: seqs {}..={}: {}",
                c.file.file_name().unwrap_or_default().to_string_lossy(),
                c.offset,
                c.first_seq,
                c.last_seq,
                c.reason
            ),
            first_seq: c.first_seq,
            last_seq: c.last_seq,
        })
        .collect();
    let _ = store.stop();
    Ok(out)
}

/// Gathers `ReplicaContents` into a map by source, for comparisons.
pub fn by_source(rs: &[ReplicaContents]) -> BTreeMap<String, &ReplicaContents> {
    rs.iter().map(|r| (r.source.clone(), r)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_found_in_any_case() {
        let h = b"NATS/1.0\r\nNats-Msg-Id: p1-2\r\nOther: x\r\n\r\n";
        assert_eq!(header_value(h, "nats-msg-id").as_deref(), Some("p1-2"));
        assert_eq!(header_value(h, "Missing"), None);
    }

    #[test]
    fn an_offline_read_sees_what_was_stored_and_the_damage_reported() {
        let dir = tempfile::tempdir().unwrap();
        let msgs = dir.path().join("S").join("msgs");
        {
            let s = FileStore::open(FileStoreConfig::new(&msgs), Limits::default()).unwrap();
            for i in 0..5u64 {
                let hdr = format!("NATS/1.0\r\nNats-Msg-Id: p0-{i}\r\n\r\n");
                s.store_msg(
                    b"t.0",
                    Some(hdr.as_bytes()),
                    format!("body{i}").as_bytes(),
                    0,
                )
                .unwrap();
            }
            s.stop().unwrap();
        }
        assert_eq!(find_stream_dirs(dir.path(), "S"), vec![msgs.clone()]);
        let r = read_offline(&msgs, "x").unwrap();
        assert_eq!(r.messages.len(), 5);
        assert_eq!(r.messages[3].msg_id.as_deref(), Some("p0-3"));
        assert_eq!(&r.messages[3].payload[..], b"body3");
        assert!(recovery_findings(&msgs).unwrap().is_empty());
    }
}
