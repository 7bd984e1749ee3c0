//! What monitoring reads of an account's JetStream: its usage (bytes used and reserved, API
//! counters) and `/jsz`'s account detail (streams with their state, consumers, configs).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Value};

use super::stream::InfoRequest;
use super::Api;
use crate::jetstream::catalog::Catalog;
use crate::jetstream::config::Storage;
use crate::util::time::rfc3339;

/// An account's bytes by kind and its API counters.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Usage {
    pub memory: u64,
    pub storage: u64,
    pub reserved_memory: u64,
    pub reserved_storage: u64,
    pub api_total: u64,
    pub api_errors: u64,
}

impl Usage {
    pub(crate) fn add(&mut self, o: &Usage) {
        self.memory += o.memory;
        self.storage += o.storage;
        self.reserved_memory += o.reserved_memory;
        self.reserved_storage += o.reserved_storage;
        self.api_total += o.api_total;
        self.api_errors += o.api_errors;
    }
}

impl Api {
    pub(crate) fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Bytes stored and reserved (streams' `max_bytes`) by kind, and the API counters.
    pub(crate) fn usage(&self) -> Usage {
        let mut u = Usage {
            api_total: self.total.load(Ordering::Relaxed),
            api_errors: self.errors.load(Ordering::Relaxed),
            ..Usage::default()
        };
        for s in self.catalog.streams() {
            let cfg = s.config();
            let bytes = s.store.state().bytes;
            let reserve = cfg.max_bytes.max(0) as u64;
            match cfg.storage {
                Storage::Memory => {
                    u.memory += bytes;
                    u.reserved_memory += reserve;
                }
                Storage::File => {
                    u.storage += bytes;
                    u.reserved_storage += reserve;
                }
            }
        }
        u
    }

    /// `/jsz`'s `account_details` entry: usage, and with `streams` each stream's detail (with
    /// the query's `consumers` their info, with `config` the configs, with `raft` the stream's
    /// Raft group; with `leader_only` only the streams this server leads).
    pub(crate) fn account_detail(&self, streams: bool, q: &crate::jetstream::JszQuery) -> Value {
        let (consumers, config) = (q.consumers, q.config);
        let u = self.usage();
        let name = self.catalog.account();
        let mut v = json!({
            "name": name,
            "id": name,
            "memory": u.memory,
            "storage": u.storage,
            "reserved_memory": u.reserved_memory,
            "reserved_storage": u.reserved_storage,
            "accounts": 0,
            "ha_assets": 0,
            "api": {"level": super::API_LEVEL, "total": u.api_total, "errors": u.api_errors},
        });
        if !streams {
            return v;
        }
        let details: Vec<Value> = self
            .catalog
            .streams()
            .iter()
            .filter(|s| !q.leader_only || self.leads(&s.name))
            .map(|s| {
                let info = self.stream_info(s, &InfoRequest::default());
                let mut d = json!({
                    "name": s.name,
                    "created": rfc3339(s.created),
                    "cluster": info["cluster"],
                    "state": info["state"],
                });
                if let Some(g) = info["cluster"]["raft_group"].as_str().filter(|_| q.raft) {
                    d["stream_raft_group"] = json!(g);
                }
                if config {
                    d["config"] = info["config"].clone();
                }
                if consumers {
                    let list: Vec<Value> = s
                        .consumers
                        .list()
                        .iter()
                        .map(|c| {
                            let mut ci = self.consumer_info(c);
                            if !config {
                                if let Some(o) = ci.as_object_mut() {
                                    o.remove("config");
                                }
                            }
                            ci
                        })
                        .collect();
                    if !list.is_empty() {
                        d["consumer_detail"] = Value::Array(list);
                    }
                }
                d
            })
            .collect();
        if !details.is_empty() {
            v["stream_detail"] = Value::Array(details);
        }
        v
    }
}
