//! nats-server's API versioning (2.11+): the `_nats.*` metadata of streams and consumers (the
//! level an asset needs, stored; this server's version and level, in responses) and the
//! `Nats-Required-Api-Level` request header.

use std::collections::BTreeMap;

use serde_json::Value;

use super::config::{PersistMode, StreamConfig};
use super::consumer_config::{ConsumerConfig, PriorityPolicy};

/// The JetStream API level this server serves (nats-server 2.12's).
pub(crate) const API_LEVEL: u32 = 2;

/// The API level an asset needs to be served as configured (stored with it).
pub(crate) const REQUIRED_LEVEL: &str = "_nats.req.level";
/// The answering server's version (responses only).
pub(crate) const SERVER_VERSION: &str = "_nats.ver";
/// The answering server's API level (responses only).
pub(crate) const SERVER_LEVEL: &str = "_nats.level";

/// Sets the stored keys of a stream's metadata: the level its features need (TTLs and markers
/// 1; counters, atomic batches, schedules, async persistence 2). The response-only keys a
/// client sent are dropped; a `_nats.req.level` it sent is replaced.
pub(crate) fn stream_static(cfg: &mut StreamConfig) {
    let mut level = 0;
    if cfg.allow_msg_ttl || cfg.subject_delete_marker_ttl > 0 {
        level = 1;
    }
    if cfg.allow_msg_counter
        || cfg.allow_atomic
        || cfg.allow_msg_schedules
        || cfg.persist_mode == PersistMode::Async
    {
        level = 2;
    }
    set_required(&mut cfg.metadata, level);
}

/// As `stream_static`, for a consumer: paused or with priority groups needs level 1.
pub(crate) fn consumer_static(cfg: &mut ConsumerConfig) {
    let paused = cfg.pause_until.as_deref().is_some_and(|p| {
        !p.is_empty()
            && !p.starts_with("0001-01-01T00:00:00")
            && !p.starts_with("1970-01-01T00:00:00Z")
    });
    let priority = cfg.priority_policy != PriorityPolicy::None
        || cfg.priority_timeout != 0
        || !cfg.priority_groups.is_empty();
    let level = u32::from(paused || priority);
    set_required(&mut cfg.metadata, level);
}

fn set_required(metadata: &mut Option<BTreeMap<String, String>>, level: u32) {
    let m = metadata.get_or_insert_with(BTreeMap::new);
    m.remove(SERVER_VERSION);
    m.remove(SERVER_LEVEL);
    m.insert(REQUIRED_LEVEL.to_string(), level.to_string());
}

/// Whether `cfg` asks for what `existing` is, whatever `_nats.req.level` each carries (a
/// create of an existing stream is answered as a success only then).
pub(crate) fn same_stream(existing: &StreamConfig, cfg: &StreamConfig) -> bool {
    let mut want = cfg.clone();
    let level = existing
        .metadata
        .as_ref()
        .and_then(|m| m.get(REQUIRED_LEVEL).cloned());
    let m = want.metadata.get_or_insert_with(BTreeMap::new);
    match level {
        Some(l) => {
            m.insert(REQUIRED_LEVEL.to_string(), l);
        }
        None => {
            m.remove(REQUIRED_LEVEL);
        }
    }
    if m.is_empty() {
        want.metadata = None;
    }
    *existing == want
}

/// Whether a request's `Nats-Required-Api-Level` header asks for more than this server serves
/// (or is not a number): nats-server then refuses the request.
pub(crate) fn refuses(headers: Option<&[u8]>) -> bool {
    let Some(h) = headers.and_then(natrium_protocol::headers::HeaderView::parse) else {
        return false;
    };
    match h.get(b"Nats-Required-Api-Level") {
        None => false,
        Some([]) => false,
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .is_none_or(|l| l > API_LEVEL),
    }
}

/// Whether two consumer configs are the same but for `_nats.req.level`.
pub(crate) fn same_consumer(existing: &ConsumerConfig, cfg: &ConsumerConfig) -> bool {
    if existing == cfg {
        return true;
    }
    let (mut a, mut b) = (existing.clone(), cfg.clone());
    strip_required(&mut a.metadata);
    strip_required(&mut b.metadata);
    a == b
}

fn strip_required(metadata: &mut Option<BTreeMap<String, String>>) {
    if let Some(m) = metadata.as_mut() {
        m.remove(REQUIRED_LEVEL);
        if m.is_empty() {
            *metadata = None;
        }
    }
}

/// Adds this server's version and level to a config document's `metadata` (as a response
/// shows it; they are never stored).
pub(crate) fn add_dynamic(config: &mut Value) {
    let Some(obj) = config.as_object_mut() else {
        return;
    };
    let meta = obj
        .entry("metadata")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(serde_json::Map::new());
    }
    if let Some(m) = meta.as_object_mut() {
        m.insert(
            SERVER_VERSION.to_string(),
            Value::from(crate::util::PROTOCOL_VERSION),
        );
        m.insert(SERVER_LEVEL.to_string(), Value::from(API_LEVEL.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(json: &str) -> StreamConfig {
        serde_json::from_str(json).expect("config")
    }

    #[test]
    fn streams_need_the_level_of_their_features() {
        for (json, level) in [
            (r#"{"name":"a"}"#, "0"),
            (r#"{"name":"a","allow_msg_ttl":true}"#, "1"),
            (
                r#"{"name":"a","subject_delete_marker_ttl":1000000000}"#,
                "1",
            ),
            (r#"{"name":"a","allow_msg_counter":true}"#, "2"),
            (r#"{"name":"a","allow_atomic":true}"#, "2"),
            (
                r#"{"name":"a","allow_msg_schedules":true,"allow_msg_ttl":true}"#,
                "2",
            ),
            (r#"{"name":"a","persist_mode":"async"}"#, "2"),
        ] {
            let mut c = stream(json);
            stream_static(&mut c);
            assert_eq!(
                c.metadata.expect("metadata")[REQUIRED_LEVEL],
                level,
                "{json}"
            );
        }
    }

    #[test]
    fn response_only_keys_a_client_sends_are_not_kept() {
        let mut c = stream(
            r#"{"name":"a","metadata":{"owner":"ops","_nats.ver":"9.9.9","_nats.level":"99","_nats.req.level":"7"}}"#,
        );
        stream_static(&mut c);
        let m = c.metadata.expect("metadata");
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m["owner"], "ops");
        assert_eq!(m[REQUIRED_LEVEL], "0");
        let mut v = serde_json::to_value(stream(r#"{"name":"a"}"#)).expect("json");
        add_dynamic(&mut v);
        assert_eq!(v["metadata"][SERVER_LEVEL], "2");
        assert_eq!(v["metadata"][SERVER_VERSION], crate::util::PROTOCOL_VERSION);
    }

    #[test]
    fn requests_asking_for_a_higher_level_are_refused() {
        let h = |v: &str| format!("NATS/1.0\r\nNats-Required-Api-Level: {v}\r\n\r\n");
        assert!(!refuses(None));
        assert!(!refuses(Some(b"NATS/1.0\r\nX: 1\r\n\r\n")));
        for (v, refused) in [("0", false), ("2", false), ("3", true), ("x", true)] {
            assert_eq!(refuses(Some(h(v).as_bytes())), refused, "{v}");
        }
    }

    #[test]
    fn consumers_with_priority_groups_need_level_one() {
        let mut c: ConsumerConfig = serde_json::from_str(
            r#"{"priority_policy":"overflow","priority_groups":["g"],"metadata":{"_nats.ver":"x"}}"#,
        )
        .expect("config");
        consumer_static(&mut c);
        let m = c.metadata.expect("metadata");
        assert_eq!((m.len(), m[REQUIRED_LEVEL].as_str()), (1, "1"));
        let mut c: ConsumerConfig = serde_json::from_str("{}").expect("config");
        consumer_static(&mut c);
        assert_eq!(c.metadata.expect("metadata")[REQUIRED_LEVEL], "0");
    }
}
