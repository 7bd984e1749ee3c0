//! The stream API: `STREAM.CREATE/UPDATE/INFO/DELETE/PURGE/NAMES/LIST/MSG.GET/MSG.DELETE` and
//! `DIRECT.GET`, with nats-server's request and response JSON.

use std::time::SystemTime;

use base64::Engine as _;
use natrium_store::{StoreError, StoredMsg};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse, Api, PagedRequest};
use crate::jetstream::config::StreamConfig;
use crate::jetstream::errors::ApiError;
use crate::jetstream::stream::Stream;
use crate::util::time::rfc3339;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct InfoRequest {
    subjects_filter: Option<String>,
    deleted_details: bool,
    offset: usize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PurgeRequest {
    filter: Option<String>,
    seq: u64,
    keep: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MsgGetRequest {
    seq: u64,
    last_by_subj: Option<String>,
    next_by_subj: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MsgDeleteRequest {
    seq: u64,
    no_erase: bool,
}

fn ts_rfc3339(ns: i64) -> String {
    crate::util::time::rfc3339_nanos(ns as i128)
}

impl Api {
    pub(super) fn stream_request(
        &self,
        tokens: &[&str],
        reply: Option<&str>,
        payload: &[u8],
    ) -> bool {
        match tokens {
            ["STREAM", "CREATE", name] => self.respond(
                reply,
                "stream_create_response",
                self.stream_create(name, payload),
            ),
            ["STREAM", "UPDATE", name] => self.respond(
                reply,
                "stream_update_response",
                self.stream_update(name, payload),
            ),
            ["STREAM", "INFO", name] => self.respond(
                reply,
                "stream_info_response",
                self.stream_info_request(name, payload),
            ),
            ["STREAM", "DELETE", name] => {
                self.respond(reply, "stream_delete_response", self.stream_delete(name))
            }
            ["STREAM", "PURGE", name] => self.respond(
                reply,
                "stream_purge_response",
                self.stream_purge(name, payload),
            ),
            ["STREAM", "NAMES"] => {
                self.respond(reply, "stream_names_response", self.stream_names(payload))
            }
            ["STREAM", "LIST"] => {
                self.respond(reply, "stream_list_response", self.stream_list(payload))
            }
            ["STREAM", "MSG", "GET", name] => self.respond(
                reply,
                "stream_msg_get_response",
                self.msg_get(name, payload),
            ),
            ["STREAM", "MSG", "DELETE", name] => self.respond(
                reply,
                "stream_msg_delete_response",
                self.msg_delete(name, payload),
            ),
            ["DIRECT", "GET", rest @ ..] => self.direct_get(reply, &rest.join("."), payload),
            _ => return false,
        }
        true
    }

    /// A stream config from a CREATE or UPDATE request for stream `name`, normalized and valid.
    fn parse_config(&self, name: &str, payload: &[u8]) -> Result<StreamConfig, ApiError> {
        // A JSON object only (serde would read an array as a struct's fields in order), and its
        // name must be the subject's: `{}` and `[]` are refused, as nats-server refuses them.
        let v: Value = serde_json::from_slice(payload).map_err(ApiError::invalid_json)?;
        if !v.is_object() {
            return Err(ApiError::invalid_json(format!(
                "json: cannot unmarshal {} into Go value of type server.StreamConfigRequest",
                json_kind(&v)
            )));
        }
        let mut cfg: StreamConfig = serde_json::from_value(v).map_err(ApiError::invalid_json)?;
        if cfg.name != name {
            return Err(ApiError::stream_mismatch());
        }
        cfg.normalize();
        cfg.validate()?;
        crate::jetstream::versioning::stream_static(&mut cfg);
        let catalog = &self.catalog;
        cfg.check_origins(&|n: &str| catalog.stream(n).ok().map(|s| s.config()))?;
        Ok(cfg)
    }

    fn stream_create(&self, name: &str, payload: &[u8]) -> Result<Value, ApiError> {
        let cfg = self.parse_config(name, payload)?;
        let (s, created) = self.catalog.create(cfg)?;
        if created {
            self.advisory_stream("CREATED", name, "create");
        }
        let mut info = self.stream_info(&s, &InfoRequest::default());
        info["did_create"] = json!(created);
        Ok(info)
    }

    fn stream_update(&self, name: &str, payload: &[u8]) -> Result<Value, ApiError> {
        let cfg = self.parse_config(name, payload)?;
        let s = self.catalog.update(cfg)?;
        Ok(self.stream_info(&s, &InfoRequest::default()))
    }

    fn stream_info_request(&self, name: &str, payload: &[u8]) -> Result<Value, ApiError> {
        let req: InfoRequest = parse(payload)?;
        let s = self.catalog.stream(name)?;
        let mut info = self.stream_info(&s, &req);
        if req.subjects_filter.is_some() {
            info["total"] = json!(info["state"]["subjects"].as_object().map_or(0, |o| o.len()));
            info["offset"] = json!(req.offset);
            info["limit"] = json!(100_000);
        }
        Ok(info)
    }

    fn stream_delete(&self, name: &str) -> Result<Value, ApiError> {
        let s = self.catalog.remove(name)?;
        self.advisory_stream("DELETED", name, "delete");
        self.catalog.destroy(&s)?;
        Ok(json!({"success": true}))
    }

    fn stream_purge(&self, name: &str, payload: &[u8]) -> Result<Value, ApiError> {
        let req: PurgeRequest = parse(payload)?;
        let s = self.catalog.stream(name)?;
        let purged = s.purge(req.filter.as_deref(), req.seq, req.keep)?;
        Ok(json!({"success": true, "purged": purged}))
    }

    fn stream_names(&self, payload: &[u8]) -> Result<Value, ApiError> {
        let req: PagedRequest = parse(payload)?;
        let matching = self.catalog.streams_matching(req.subject.as_deref());
        let page: Vec<&str> = matching
            .iter()
            .skip(req.offset)
            .take(1024)
            .map(|s| s.name.as_str())
            .collect();
        Ok(json!({"total": matching.len(), "offset": req.offset, "limit": 1024, "streams": page}))
    }

    fn stream_list(&self, payload: &[u8]) -> Result<Value, ApiError> {
        let req: PagedRequest = parse(payload)?;
        let matching = self.catalog.streams_matching(req.subject.as_deref());
        let infos: Vec<Value> = matching
            .iter()
            .skip(req.offset)
            .take(256)
            .map(|s| self.stream_info(s, &InfoRequest::default()))
            .collect();
        Ok(
            json!({"total": matching.len(), "offset": req.offset, "limit": 256, "streams": infos, "missing": []}),
        )
    }

    fn msg_get(&self, name: &str, payload: &[u8]) -> Result<Value, ApiError> {
        let req: MsgGetRequest = parse(payload)?;
        // Conflicting ways to pick the message are refused, as nats-server refuses them.
        if req.last_by_subj.is_some() && (req.seq > 0 || req.next_by_subj.is_some()) {
            return Err(ApiError::bad_request());
        }
        let s = self.catalog.stream(name)?;
        let m = load(&s, &req)?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut message = json!({
            "subject": String::from_utf8_lossy(&m.subject),
            "seq": m.seq,
            "time": ts_rfc3339(m.ts),
        });
        if !m.payload.is_empty() {
            message["data"] = json!(b64.encode(&m.payload));
        }
        if let Some(h) = &m.headers {
            message["hdrs"] = json!(b64.encode(h));
        }
        Ok(json!({"message": message}))
    }

    fn msg_delete(&self, name: &str, payload: &[u8]) -> Result<Value, ApiError> {
        let req: MsgDeleteRequest = parse(payload)?;
        let s = self.catalog.stream(name)?;
        s.delete_msg(req.seq, req.no_erase)?;
        Ok(json!({"success": true}))
    }

    /// The stream info document (`stream_info_response` minus `type`).
    pub(super) fn stream_info(&self, s: &Stream, req: &InfoRequest) -> Value {
        let st = s.store.state();
        let mut state = json!({
            "messages": st.msgs,
            "bytes": st.bytes,
            "first_seq": st.first_seq,
            "first_ts": ts_rfc3339(st.first_ts),
            "last_seq": st.last_seq,
            "last_ts": ts_rfc3339(st.last_ts),
            "num_subjects": st.num_subjects,
            "num_deleted": st.num_deleted,
            "consumer_count": s.consumers.len(),
        });
        if !st.lost.is_empty() {
            state["lost"] = json!({"msgs": st.lost, "bytes": 0});
        }
        if req.deleted_details {
            state["deleted"] = json!(s.store.deleted());
        }
        if let Some(filter) = &req.subjects_filter {
            let subjects: serde_json::Map<String, Value> = s
                .store
                .subjects_state(filter.as_bytes())
                .into_iter()
                .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), json!(v)))
                .collect();
            state["subjects"] = Value::Object(subjects);
        }
        let mut info = json!({
            "config": s.config(),
            "created": rfc3339(s.created),
            "state": state,
            "cluster": self.cluster_of(&s.name),
            "ts": rfc3339(SystemTime::now()),
        });
        crate::jetstream::versioning::add_dynamic(&mut info["config"]);
        if let Some(m) = s.mirror_info() {
            info["mirror"] = m;
        }
        if let Some(srcs) = s.sources_info() {
            info["sources"] = json!(srcs);
        }
        info
    }

    /// The `cluster` section of a stream's (or its consumers') info: the replicas of a
    /// replicated stream, else this server as the leader.
    pub(super) fn cluster_of(&self, stream: &str) -> Value {
        self.cluster
            .get()
            .and_then(|cl| cl.stream_cluster_info(self.client.account(), stream))
            .unwrap_or_else(|| json!({"leader": self.server_name}))
    }

    /// Whether this server leads stream `name`: its replica leads, or it is an R1 stream here.
    pub(crate) fn leads(&self, name: &str) -> bool {
        match self.cluster.get() {
            Some(cl) => cl
                .replica(self.client.account(), name)
                .is_none_or(|r| r.is_leader()),
            None => true,
        }
    }

    /// The info of stream `s` (for the cluster's STREAM.LIST).
    pub(crate) fn stream_info_of(&self, s: &Stream) -> Value {
        self.stream_info(s, &InfoRequest::default())
    }

    /// Names (and, when `full`, infos) of this server's streams on `filter`.
    pub(crate) fn local_stream_infos(
        &self,
        filter: Option<&str>,
        full: bool,
    ) -> Vec<(String, Option<Value>)> {
        self.catalog
            .streams_matching(filter)
            .iter()
            .map(|s| {
                let info = full.then(|| self.stream_info(s, &InfoRequest::default()));
                (s.name.clone(), info)
            })
            .collect()
    }
}

/// How Go's JSON decoder names a value's kind in its errors.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The message a MSG.GET or DIRECT.GET request asks for.
fn load(s: &Stream, req: &MsgGetRequest) -> Result<StoredMsg, ApiError> {
    let found = match (&req.last_by_subj, &req.next_by_subj) {
        (Some(subj), _) => s.store.load_last_by_subject(subj.as_bytes()),
        (None, Some(subj)) => s.store.load_next_msg(subj.as_bytes(), req.seq.max(1)),
        (None, None) if req.seq > 0 => s.store.load_msg(req.seq),
        _ => return Err(ApiError::bad_request()),
    };
    found.map_err(|e| match e {
        StoreError::Corrupt { .. } => ApiError::store_failed(e.to_string()),
        _ => ApiError::no_message_found(),
    })
}
