//! `$JS.API.INFO`: the account's usage, limits and API counters.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use super::Api;
use crate::jetstream::config::Storage;

impl Api {
    pub(super) fn account_request(&self, tokens: &[&str], reply: Option<&str>) -> bool {
        match tokens {
            ["INFO"] => self.respond(reply, "account_info_response", Ok(self.account_info())),
            _ => return false,
        }
        true
    }

    fn account_info(&self) -> Value {
        let (mut memory, mut storage) = (0u64, 0u64);
        let (mut reserved_memory, mut reserved_storage) = (0u64, 0u64);
        let streams = self.catalog.streams();
        for s in &streams {
            let bytes = s.store.state().bytes;
            let reserve = s.config().max_bytes.max(0) as u64;
            match s.config().storage {
                Storage::Memory => {
                    memory += bytes;
                    reserved_memory += reserve;
                }
                Storage::File => {
                    storage += bytes;
                    reserved_storage += reserve;
                }
            }
        }
        let l = self.catalog.limits();
        let limits = json!({
            "max_memory": l.max_memory,
            "max_storage": l.max_file,
            "max_streams": l.max_streams,
            "max_consumers": l.max_consumers,
            "max_ack_pending": l.max_ack_pending,
            "memory_max_stream_bytes": l.memory_max_stream_bytes,
            "storage_max_stream_bytes": l.storage_max_stream_bytes,
            "max_bytes_required": l.max_bytes_required,
        });
        let consumers = streams.iter().map(|s| s.consumers.len()).sum::<usize>();
        let mut v = json!({
            "memory": memory,
            "storage": storage,
            "reserved_memory": reserved_memory,
            "reserved_storage": reserved_storage,
            "streams": streams.len(),
            "consumers": consumers,
            "limits": limits,
            "api": {
                "total": self.total.load(Ordering::Relaxed),
                "errors": self.errors.load(Ordering::Relaxed),
            },
        });
        if l.tiered {
            // Tiered JWT limits: usage and limits per tier (only `R1` here), none at the top.
            let mut tier = v.clone();
            if let Some(t) = tier.as_object_mut() {
                t.remove("api");
            }
            v["limits"] = json!({
                "max_memory": 0, "max_storage": 0, "max_streams": 0, "max_consumers": 0,
                "max_ack_pending": 0, "memory_max_stream_bytes": 0,
                "storage_max_stream_bytes": 0, "max_bytes_required": false,
            });
            v["tiers"] = if l.no_tier {
                json!({})
            } else {
                json!({"R1": tier})
            };
        }
        v
    }
}
