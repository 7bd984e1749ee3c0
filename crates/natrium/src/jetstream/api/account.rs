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
        let streams = self.catalog.streams();
        for s in &streams {
            let bytes = s.store.state().bytes;
            match s.config().storage {
                Storage::Memory => memory += bytes,
                Storage::File => storage += bytes,
            }
        }
        let limits = self.catalog.limits();
        json!({
            "memory": memory,
            "storage": storage,
            "reserved_memory": 0,
            "reserved_storage": 0,
            "streams": streams.len(),
            "consumers": streams.iter().map(|s| s.consumers.len()).sum::<usize>(),
            "limits": {
                "max_memory": limits.max_memory,
                "max_storage": limits.max_file,
                "max_streams": limits.max_streams,
                "max_consumers": limits.max_consumers,
                "max_ack_pending": -1,
                "memory_max_stream_bytes": -1,
                "storage_max_stream_bytes": -1,
                "max_bytes_required": self.catalog.reservations() && (limits.max_file > 0 || limits.max_memory > 0),
            },
            "api": {
                "total": self.total.load(Ordering::Relaxed),
                "errors": self.errors.load(Ordering::Relaxed),
            },
        })
    }
}
