//! The meta group's replicated state: which replicated streams exist, with their config,
//! their peers (server names) and Raft group. Operations are decided again when applied (so two
//! racing creates can not both win) and reported to this node's reconciler as events; nothing
//! removes a stream's assignment but a committed delete.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::jetstream::config::StreamConfig;
use crate::jetstream::errors::ApiError;

/// A replicated stream as the meta group assigns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StreamAssignment {
    pub account: String,
    pub config: StreamConfig,
    /// Server names of its replicas.
    pub peers: Vec<String>,
    pub created_ns: i64,
    /// Its Raft group's name.
    pub group: String,
}

impl StreamAssignment {
    pub(crate) fn key(&self) -> String {
        key(&self.account, &self.config.name)
    }
}

pub(crate) fn key(account: &str, stream: &str) -> String {
    format!("{account} {stream}")
}

/// An operation proposed to the meta group.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum MetaOp {
    AddStream {
        sa: StreamAssignment,
    },
    UpdateStream {
        account: String,
        config: StreamConfig,
        /// New peers when `num_replicas` changes (chosen by the meta leader).
        #[serde(default)]
        peers: Option<Vec<String>>,
    },
    DeleteStream {
        account: String,
        name: String,
    },
    /// Changes a stream's peers (peer removal, replacement).
    SetPeers {
        account: String,
        name: String,
        peers: Vec<String>,
    },
    /// A server removed from the meta group (`SERVER.REMOVE`): never placed on again nor
    /// added back by the meta leader.
    RemoveServer {
        name: String,
    },
}

/// What applying a meta operation changed, for this node's reconciler.
#[derive(Debug, Clone)]
pub(crate) enum MetaEvent {
    /// A stream assigned (or, after a snapshot, still assigned).
    Assigned(StreamAssignment),
    Updated(StreamAssignment),
    Deleted(StreamAssignment),
}

/// The meta state: every replicated stream by `key`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct MetaState {
    pub streams: BTreeMap<String, StreamAssignment>,
    /// Servers removed with `SERVER.REMOVE`.
    #[serde(default)]
    pub removed: BTreeSet<String>,
}

impl MetaState {
    fn overlaps(&self, account: &str, cfg: &StreamConfig) -> bool {
        self.streams.values().any(|sa| {
            sa.account == account
                && sa.config.name != cfg.name
                && sa.config.subjects.iter().any(|a| {
                    cfg.subjects
                        .iter()
                        .any(|b| natrium_subjects::overlaps(a.as_bytes(), b.as_bytes()))
                })
        })
    }

    /// Decides and applies `op`; the answer for its proposer and the event, if anything changed.
    pub(crate) fn apply(&mut self, op: MetaOp) -> (Result<Value, ApiError>, Option<MetaEvent>) {
        match op {
            MetaOp::AddStream { sa } => {
                if let Some(existing) = self.streams.get(&sa.key()) {
                    if existing.config == sa.config {
                        return (Ok(json!({"created": false})), None);
                    }
                    return (Err(ApiError::stream_name_exists()), None);
                }
                if self.overlaps(&sa.account, &sa.config) {
                    return (Err(ApiError::subjects_overlap()), None);
                }
                self.streams.insert(sa.key(), sa.clone());
                (Ok(json!({"created": true})), Some(MetaEvent::Assigned(sa)))
            }
            MetaOp::UpdateStream {
                account,
                config,
                peers,
            } => {
                let k = key(&account, &config.name);
                let Some(existing) = self.streams.get(&k) else {
                    return (Err(ApiError::stream_not_found()), None);
                };
                // The replica count may change here, with the peers that go with it.
                let same_count = StreamConfig {
                    num_replicas: existing.config.num_replicas,
                    ..config.clone()
                };
                if let Err(e) = existing.config.check_update(&same_count) {
                    return (Err(e), None);
                }
                let rescale = config.num_replicas != existing.config.num_replicas;
                match &peers {
                    Some(p) if p.len() as i64 == config.num_replicas.max(1) && !p.is_empty() => {}
                    None if !rescale => {}
                    _ => return (Err(ApiError::replicas_not_updatable()), None),
                }
                if self.overlaps(&account, &config) {
                    return (Err(ApiError::subjects_overlap()), None);
                }
                let mut sa = existing.clone();
                sa.config = config;
                if let Some(p) = peers {
                    sa.peers = p;
                }
                self.streams.insert(k, sa.clone());
                (Ok(json!({"updated": true})), Some(MetaEvent::Updated(sa)))
            }
            MetaOp::DeleteStream { account, name } => {
                match self.streams.remove(&key(&account, &name)) {
                    Some(sa) => (Ok(json!({"deleted": true})), Some(MetaEvent::Deleted(sa))),
                    None => (Err(ApiError::stream_not_found()), None),
                }
            }
            MetaOp::SetPeers {
                account,
                name,
                peers,
            } => match self.streams.get_mut(&key(&account, &name)) {
                Some(sa) => {
                    sa.peers = peers;
                    (
                        Ok(json!({"updated": true})),
                        Some(MetaEvent::Updated(sa.clone())),
                    )
                }
                None => (Err(ApiError::stream_not_found()), None),
            },
            MetaOp::RemoveServer { name } => {
                self.removed.insert(name);
                (Ok(json!({"success": true})), None)
            }
        }
    }
}

/// The meta group's state machine.
pub(crate) struct MetaSm {
    pub state: Arc<RwLock<MetaState>>,
    pub events: mpsc::UnboundedSender<MetaEvent>,
}

impl natrium_raft::StateMachine for MetaSm {
    fn apply(&mut self, _index: u64, data: &[u8]) -> Vec<u8> {
        let answer = match serde_json::from_slice::<MetaOp>(data) {
            Ok(op) => {
                let (answer, event) = self.state.write().apply(op);
                if let Some(e) = event {
                    let _ = self.events.send(e);
                }
                answer
            }
            Err(e) => Err(ApiError::invalid_json(e)),
        };
        match answer {
            Ok(v) => v.to_string().into_bytes(),
            Err(e) => json!({ "error": e }).to_string().into_bytes(),
        }
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, String> {
        serde_json::to_vec(&*self.state.read()).map_err(|e| e.to_string())
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        let st: MetaState = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        for sa in st.streams.values() {
            let _ = self.events.send(MetaEvent::Assigned(sa.clone()));
        }
        *self.state.write() = st;
        Ok(())
    }
}

/// The answer of a meta operation as its proposer gets it.
pub(crate) fn answer(bytes: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(bytes).map_err(ApiError::invalid_json)?;
    match v.get("error") {
        Some(e) => Err(serde_json::from_value::<ErrorBody>(e.clone())
            .map(|b| b.into_api())
            .unwrap_or_else(|_| ApiError::bad_request())),
        None => Ok(v),
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    code: u16,
    err_code: u16,
    description: String,
}

impl ErrorBody {
    fn into_api(self) -> ApiError {
        ApiError {
            code: self.code,
            err_code: self.err_code,
            description: self.description,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(acc: &str, name: &str, subjects: &[&str]) -> StreamAssignment {
        let mut config: StreamConfig =
            serde_json::from_value(json!({"name": name, "subjects": subjects, "num_replicas": 3}))
                .expect("config");
        config.normalize();
        StreamAssignment {
            account: acc.into(),
            config,
            peers: vec!["a".into(), "b".into(), "c".into()],
            created_ns: 1,
            group: format!("S-{acc}-{name}"),
        }
    }

    #[test]
    fn creates_are_decided_when_applied() {
        let mut st = MetaState::default();
        let (r, e) = st.apply(MetaOp::AddStream {
            sa: sa("A", "S1", &["x.>"]),
        });
        assert_eq!(r.expect("created")["created"], true);
        assert!(matches!(e, Some(MetaEvent::Assigned(_))));
        // The same again is not a change; another config under the name is refused.
        let (r, e) = st.apply(MetaOp::AddStream {
            sa: sa("A", "S1", &["x.>"]),
        });
        assert_eq!(r.expect("exists")["created"], false);
        assert!(e.is_none());
        let (r, _) = st.apply(MetaOp::AddStream {
            sa: sa("A", "S1", &["y"]),
        });
        assert_eq!(r.expect_err("name taken").err_code, 10058);
        // Overlap within an account is refused, across accounts it is not.
        let (r, _) = st.apply(MetaOp::AddStream {
            sa: sa("A", "S2", &["x.y"]),
        });
        assert_eq!(r.expect_err("overlap").err_code, 10065);
        let (r, _) = st.apply(MetaOp::AddStream {
            sa: sa("B", "S2", &["x.y"]),
        });
        assert!(r.is_ok());
        let (r, e) = st.apply(MetaOp::DeleteStream {
            account: "A".into(),
            name: "S1".into(),
        });
        assert!(r.is_ok());
        assert!(matches!(e, Some(MetaEvent::Deleted(_))));
        let (r, _) = st.apply(MetaOp::DeleteStream {
            account: "A".into(),
            name: "S1".into(),
        });
        assert_eq!(r.expect_err("gone").err_code, 10059);
    }

    #[test]
    fn answers_round_trip() {
        let ok = br#"{"created":true}"#;
        assert_eq!(answer(ok).expect("ok")["created"], true);
        let err = json!({"error": ApiError::stream_not_found()}).to_string();
        assert_eq!(answer(err.as_bytes()).expect_err("err").err_code, 10059);
    }
}
