//! The consumer API: `CONSUMER.CREATE`, `CONSUMER.DURABLE.CREATE`, `INFO`, `DELETE`, `NAMES`,
//! `LIST`, `PAUSE`, and pull requests (`CONSUMER.MSG.NEXT`), with nats-server's JSON.

use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse, Api, PagedRequest};
use crate::jetstream::catalog::Action;
use crate::jetstream::consumer::{parse_time, Consumer};
use crate::jetstream::consumer_config::{ConsumerConfig, ConsumerLimits};
use crate::jetstream::errors::ApiError;
use crate::util::time::rfc3339;

impl Api {
    pub(super) fn consumer_request(
        &self,
        tokens: &[&str],
        reply: Option<&str>,
        payload: &[u8],
    ) -> bool {
        match tokens {
            ["CONSUMER", "CREATE", stream, rest] => {
                let (name, filter) = match rest.split_once('.') {
                    Some((n, f)) => (Some(n), Some(f)),
                    None => (Some(*rest), None),
                };
                let r = self.consumer_create(stream, name, filter, false, payload);
                self.respond(reply, "consumer_create_response", r)
            }
            ["CONSUMER", "CREATE", stream] => {
                let r = self.consumer_create(stream, None, None, false, payload);
                self.respond(reply, "consumer_create_response", r)
            }
            ["CONSUMER", "DURABLE", "CREATE", rest] => {
                let r = match rest.split_once('.') {
                    Some((stream, durable)) => {
                        self.consumer_create(stream, Some(durable), None, true, payload)
                    }
                    None => Err(ApiError::bad_request()),
                };
                self.respond(reply, "consumer_create_response", r)
            }
            ["CONSUMER", "INFO", stream, name] => {
                let r = self
                    .catalog
                    .consumer(stream, name)
                    .map(|(_, c)| self.consumer_info(&c));
                self.respond(reply, "consumer_info_response", r)
            }
            ["CONSUMER", "DELETE", stream, name] => self.respond(
                reply,
                "consumer_delete_response",
                self.consumer_delete(stream, name),
            ),
            ["CONSUMER", "NAMES", stream] => self.respond(
                reply,
                "consumer_names_response",
                self.consumer_names(stream, payload, false),
            ),
            ["CONSUMER", "LIST", stream] => self.respond(
                reply,
                "consumer_list_response",
                self.consumer_names(stream, payload, true),
            ),
            ["CONSUMER", "PAUSE", stream, name] => self.respond(
                reply,
                "consumer_pause_response",
                self.consumer_pause(stream, name, payload),
            ),
            ["CONSUMER", "UNPIN", stream, name] => self.respond(
                reply,
                "consumer_unpin_response",
                self.consumer_unpin(stream, name, payload),
            ),
            ["CONSUMER", "RESET", stream, name] => self.respond(
                reply,
                "consumer_reset_response",
                self.consumer_reset(stream, name, payload),
            ),
            ["CONSUMER", "MSG", "NEXT", rest] => match rest
                .split_once('.')
                .and_then(|(s, c)| self.catalog.consumer(s, c).ok())
            {
                Some((_, c)) => c.pull(reply, payload),
                None => {
                    if let Some(r) = reply {
                        let _ = self
                            .client
                            .publish(r, None, Some(b"NATS/1.0 503\r\n\r\n"), b"");
                    }
                }
            },
            _ => return false,
        }
        true
    }

    /// CREATE (`subject_name` and `subject_filter` from the subject) or DURABLE.CREATE
    /// (`durable_api`).
    fn consumer_create(
        &self,
        stream: &str,
        subject_name: Option<&str>,
        subject_filter: Option<&str>,
        durable_api: bool,
        payload: &[u8],
    ) -> Result<Value, ApiError> {
        #[derive(Deserialize)]
        struct CreateRequest {
            #[serde(default)]
            stream_name: String,
            config: Option<ConsumerConfig>,
            #[serde(default)]
            action: String,
        }
        let req: CreateRequest = serde_json::from_slice(payload).map_err(ApiError::invalid_json)?;
        if !req.stream_name.is_empty() && req.stream_name != stream {
            return Err(ApiError::stream_mismatch());
        }
        let mut cfg = req
            .config
            .ok_or_else(|| ApiError::consumer_create("consumer config required"))?;
        // An empty name is no name (nats.js sends `"name": ""` for its ordered consumers).
        cfg.name = cfg.name.filter(|n| !n.is_empty());
        cfg.durable_name = cfg.durable_name.filter(|n| !n.is_empty());
        let s = self.catalog.stream(stream)?;
        if let Some(n) = subject_name {
            if durable_api {
                match &cfg.durable_name {
                    Some(d) if d != n => return Err(ApiError::consumer_durable_mismatch()),
                    _ => cfg.durable_name = Some(n.to_string()),
                }
            } else {
                if cfg.given_name().is_some_and(|g| g != n) {
                    return Err(ApiError::consumer_durable_mismatch());
                }
                cfg.name = Some(n.to_string());
            }
        }
        if let Some(f) = subject_filter {
            if cfg.filter_subject.as_deref() != Some(f) || !cfg.filter_subjects.is_empty() {
                return Err(ApiError::consumer_filter_mismatch());
            }
        }
        let stream_limits = ConsumerLimits::from_json(&s.config().consumer_limits);
        let account_max_ack_pending = self.catalog.limits().max_ack_pending;
        cfg.apply_limits(stream_limits, account_max_ack_pending);
        cfg.normalize();
        crate::jetstream::versioning::consumer_static(&mut cfg);
        let replicas = s.config_arc().num_replicas;
        if replicas > 1 {
            cfg.validate_replicated(replicas)?;
        } else {
            cfg.validate()?;
        }
        cfg.check_limits(stream_limits, account_max_ack_pending)?;
        let action = match req.action.as_str() {
            "create" => Action::Create,
            "update" => Action::Update,
            _ => Action::CreateOrUpdate,
        };
        let (c, created) = self.catalog.add_consumer(&s, cfg, action)?;
        if created {
            self.advisory_consumer("CREATED", stream, &c.name, "create");
        }
        self.replicate_consumer(stream, Some(&c), &c.name);
        Ok(self.consumer_info(&c))
    }

    fn consumer_delete(&self, stream: &str, name: &str) -> Result<Value, ApiError> {
        let s = self.catalog.stream(stream)?;
        self.catalog.delete_consumer(&s, name)?;
        self.replicate_consumer(stream, None, name);
        self.advisory_consumer("DELETED", stream, name, "delete");
        Ok(json!({"success": true}))
    }

    fn consumer_names(&self, stream: &str, payload: &[u8], full: bool) -> Result<Value, ApiError> {
        let req: PagedRequest = parse(payload)?;
        let s = self.catalog.stream(stream)?;
        let consumers = s.consumers.list();
        let total = consumers.len();
        let limit = if full { 256 } else { 1024 };
        let page = consumers.iter().skip(req.offset).take(limit);
        let list: Vec<Value> = if full {
            page.map(|c| self.consumer_info(c)).collect()
        } else {
            page.map(|c| json!(c.name)).collect()
        };
        Ok(json!({"total": total, "offset": req.offset, "limit": limit, "consumers": list}))
    }

    fn consumer_pause(&self, stream: &str, name: &str, payload: &[u8]) -> Result<Value, ApiError> {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct PauseRequest {
            pause_until: Option<String>,
        }
        let req: PauseRequest = parse(payload)?;
        let (_, c) = self.catalog.consumer(stream, name)?;
        let mut cfg = c.config();
        cfg.pause_until = req.pause_until.clone();
        c.set_config(cfg);
        let _ = c.save_meta();
        let until = req.pause_until.as_deref().and_then(parse_time);
        let now = SystemTime::now();
        let paused = until.is_some_and(|u| u > now);
        let remaining = until
            .and_then(|u| u.duration_since(now).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(json!({
            "paused": paused,
            "pause_until": req.pause_until.unwrap_or_else(|| rfc3339(SystemTime::UNIX_EPOCH)),
            "pause_remaining": remaining,
        }))
    }

    /// On a replicated stream's leader: replicates a consumer's creation (or, without one, the
    /// deletion of `name`) to the stream's other replicas.
    fn replicate_consumer(&self, stream: &str, c: Option<&Arc<Consumer>>, name: &str) {
        let Some(r) = self
            .cluster
            .get()
            .and_then(|cl| cl.replica(self.client.account(), stream))
        else {
            return;
        };
        let c = c.cloned();
        let name = name.to_string();
        tokio::spawn(async move {
            let res = match c {
                Some(c) => r.consumer_created(&c).await,
                None => r.consumer_deleted(&name).await,
            };
            if let Err(e) = res {
                tracing::warn!("consumer {name}: not replicated: {}", e.description);
            }
        });
    }

    /// `CONSUMER.UNPIN`: `{"group": g}` loses its pinned client.
    fn consumer_unpin(&self, stream: &str, name: &str, payload: &[u8]) -> Result<Value, ApiError> {
        #[derive(Deserialize)]
        struct UnpinRequest {
            #[serde(default)]
            group: String,
        }
        let req: UnpinRequest = serde_json::from_slice(payload).map_err(ApiError::invalid_json)?;
        if req.group.is_empty() {
            return Err(ApiError::invalid_json("consumer group not specified"));
        }
        let valid = req.group.len() <= 16
            && req
                .group
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'=' | b'-'));
        if !valid {
            return Err(ApiError::consumer_invalid_group_name());
        }
        let (_, c) = self.catalog.consumer(stream, name)?;
        if !c.config().priority_groups.contains(&req.group) {
            return Err(ApiError::consumer_invalid_priority_group());
        }
        c.unpin(&req.group);
        Ok(json!({}))
    }

    /// `CONSUMER.RESET`: `{"seq": n}` (or nothing: back to the ack floor); the consumer info
    /// and `reset_seq`.
    fn consumer_reset(&self, stream: &str, name: &str, payload: &[u8]) -> Result<Value, ApiError> {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct ResetRequest {
            seq: u64,
        }
        let req: ResetRequest = if payload.is_empty() {
            ResetRequest::default()
        } else {
            serde_json::from_slice(payload).map_err(ApiError::invalid_json)?
        };
        let (_, c) = self.catalog.consumer(stream, name)?;
        let seq = c.reset(req.seq)?;
        let mut info = self.consumer_info(&c);
        info["reset_seq"] = json!(seq);
        Ok(info)
    }

    /// The consumer info document (`consumer_info_response` minus `type`).
    pub(super) fn consumer_info(&self, c: &Consumer) -> Value {
        let (cfg, p) = c.snapshot();
        let mut v = json!({
            "stream_name": c.stream_name,
            "name": c.name,
            "created": rfc3339(c.created),
            "config": &*cfg,
            "delivered": {"consumer_seq": p.delivered.0, "stream_seq": p.delivered.1},
            "ack_floor": {"consumer_seq": p.ack_floor.0, "stream_seq": p.ack_floor.1},
            "num_ack_pending": p.num_ack_pending,
            "num_redelivered": p.num_redelivered,
            "num_waiting": p.num_waiting,
            "num_pending": p.num_pending,
            "cluster": self.cluster_of(&c.stream_name),
            "ts": rfc3339(SystemTime::now()),
        });
        crate::jetstream::versioning::add_dynamic(&mut v["config"]);
        if let Some(t) = p.last_delivered {
            v["delivered"]["last_active"] = json!(rfc3339(t));
        }
        if let Some(t) = p.last_ack {
            v["ack_floor"]["last_active"] = json!(rfc3339(t));
        }
        if let Some((group, pin)) = &p.priority_group {
            let mut g = json!({"group": group, "pinned_ts": "0001-01-01T00:00:00Z"});
            if let Some((id, since)) = pin {
                g["pinned_client_id"] = json!(id);
                g["pinned_ts"] = json!(rfc3339(*since));
            }
            v["priority_groups"] = json!([g]);
        }
        if let Some(d) = &cfg.deliver_subject {
            v["push_bound"] = json!(c.has_interest(d));
        }
        if let Some(p) = p.paused_until {
            if p > SystemTime::now() {
                v["paused"] = json!(true);
                v["pause_remaining"] = json!(p
                    .duration_since(SystemTime::now())
                    .map_or(0, |d| d.as_nanos() as u64));
            }
        }
        v
    }
}
