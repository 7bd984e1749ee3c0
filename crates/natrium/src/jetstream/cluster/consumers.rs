//! A replicated stream's consumers as its log holds them: each one's record (config, creation)
//! and progress rebuilt from the leader's deltas (`ConsumerTable`, in every replica's state
//! machine), and `LogHook`, the way the leader's running consumers append to the log.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use natrium_raft::Group;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::jetstream::consumer::{Committed, ConsumerLog, Delta, LogProgress};
use crate::jetstream::consumer_config::ConsumerConfig;

/// A replicated consumer: its config and (on the wire and in snapshots) its progress as a
/// state document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ConsumerRecord {
    pub(super) config: ConsumerConfig,
    pub(super) created_ns: i64,
    #[serde(default)]
    pub(super) state: Option<Vec<u8>>,
}

/// One consumer in the table: its record (none yet when a delta came first) and progress.
#[derive(Debug)]
struct Entry {
    record: Option<ConsumerRecord>,
    filters: Vec<String>,
    created_ns: i64,
    progress: Option<LogProgress>,
}

/// The replicated consumers of a stream, as applying the log left them (the same on every
/// replica): what a new leader starts its consumers from, and what interest retention asks.
#[derive(Debug, Default)]
pub(super) struct ConsumerTable {
    map: BTreeMap<String, Entry>,
}

impl ConsumerTable {
    /// A consumer created or updated. Its progress stays unless the record brings one, or it
    /// is another consumer by that name (another creation time).
    pub(super) fn set_record(&mut self, name: String, mut record: ConsumerRecord) {
        let state = record.state.take();
        let e = self.map.entry(name).or_insert_with(|| Entry {
            record: None,
            filters: Vec::new(),
            created_ns: record.created_ns,
            progress: None,
        });
        if e.created_ns != record.created_ns {
            e.progress = None;
            e.created_ns = record.created_ns;
        }
        if let Some(s) = state {
            e.progress = LogProgress::decode(&s);
        }
        e.filters = record.config.filters();
        e.record = Some(record);
    }

    pub(super) fn remove(&mut self, name: &str) {
        self.map.remove(name);
    }

    /// A whole state document (the leader's progress as entries before deltas carried it).
    pub(super) fn set_state(&mut self, name: &str, state: &[u8]) {
        if let Some(e) = self.map.get_mut(name) {
            e.progress = LogProgress::decode(state);
        }
    }

    /// A delta of consumer `name` created at `created_ns`. One for a consumer whose record
    /// is not applied yet (the leader runs a consumer as soon as it created it) is kept for it.
    pub(super) fn apply(&mut self, name: &str, created_ns: i64, d: &Delta) {
        let e = self.map.entry(name.to_string()).or_insert_with(|| Entry {
            record: None,
            filters: Vec::new(),
            created_ns,
            progress: None,
        });
        if e.created_ns != created_ns {
            // A delta of another consumer by that name: a late one of a deleted consumer, or
            // the first of a new one whose record comes next.
            if e.record.is_some() {
                return;
            }
            e.created_ns = created_ns;
            e.progress = None;
        }
        e.progress.get_or_insert_with(LogProgress::default).apply(d);
    }

    /// Whether a consumer still needs message `seq` on `subject` (interest retention). A
    /// consumer with no progress yet needs every message its filters match.
    pub(super) fn needed(&self, seq: u64, subject: &[u8]) -> bool {
        self.map
            .values()
            .filter(|e| e.record.is_some())
            .any(|e| match &e.progress {
                Some(p) => p.needs(&e.filters, seq, subject),
                None => LogProgress::default().needs(&e.filters, seq, subject),
            })
    }

    /// Whether consumer `name` has its record here.
    pub(super) fn has_record(&self, name: &str) -> bool {
        self.map.get(name).is_some_and(|e| e.record.is_some())
    }

    /// The consumers with their configs and progress (snapshots, a new leader's start).
    pub(super) fn records(&self) -> BTreeMap<String, ConsumerRecord> {
        self.map
            .iter()
            .filter_map(|(name, e)| {
                let mut r = e.record.clone()?;
                r.state = e.progress.as_ref().map(LogProgress::encode);
                Some((name.clone(), r))
            })
            .collect()
    }

    /// Replaces the table with a snapshot's records.
    pub(super) fn restore(&mut self, records: BTreeMap<String, ConsumerRecord>) {
        self.map.clear();
        for (name, r) in records {
            self.set_record(name, r);
        }
    }

    pub(super) fn names(&self) -> Vec<String> {
        self.map
            .iter()
            .filter(|(_, e)| e.record.is_some())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// (delivered, ack floor, pending) stream figures of `name` as the log holds them.
    #[cfg(test)]
    pub(super) fn figures(&self, name: &str) -> Option<(u64, u64, usize)> {
        self.map
            .get(name)?
            .progress
            .as_ref()
            .map(LogProgress::figures)
    }
}

/// How a stream's running consumers (on its leader) reach its log.
pub(super) struct LogHook {
    pub(super) group: Group,
    pub(super) table: Arc<Mutex<ConsumerTable>>,
    /// Encodes an operation as the group's entry.
    pub(super) encode_delta: fn(&str, i64, Delta) -> Vec<u8>,
    pub(super) encode_delete: fn(&str) -> Vec<u8>,
}

impl ConsumerLog for LogHook {
    fn append(
        &self,
        name: &str,
        created_ns: i64,
        delta: Delta,
    ) -> Pin<Box<dyn Future<Output = Option<Committed>> + Send + '_>> {
        let entry = (self.encode_delta)(name, created_ns, delta);
        Box::pin(async move {
            let committed = self.group.propose_queued(entry).await.ok()?;
            Some(Box::pin(async move { committed.await.is_ok() }) as Committed)
        })
    }

    fn needed(&self, seq: u64, subject: &[u8]) -> bool {
        self.table.lock().needed(seq, subject)
    }

    fn expired(&self, name: &str) {
        let group = self.group.clone();
        let entry = (self.encode_delete)(name);
        tokio::spawn(async move {
            if let Err(e) = group.propose(entry).await {
                tracing::debug!("expired consumer not removed from the log: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(created_ns: i64, filter: &str) -> ConsumerRecord {
        let config: ConsumerConfig = serde_json::from_value(serde_json::json!({
            "durable_name": "d", "ack_policy": "explicit", "filter_subject": filter,
        }))
        .expect("config");
        ConsumerRecord {
            config,
            created_ns,
            state: None,
        }
    }

    #[test]
    fn deltas_rebuild_progress_and_interest() {
        let mut t = ConsumerTable::default();
        // A delta before its record is kept for it.
        t.apply(
            "d",
            7,
            &Delta {
                sseq: 3,
                dseq: 3,
                add: vec![(1, 1, 1), (2, 2, 1), (3, 3, 1)],
                ..Delta::default()
            },
        );
        assert!(!t.needed(9, b"a.x"), "no record yet: not a consumer");
        t.set_record("d".into(), record(7, "a.>"));
        assert_eq!(t.figures("d"), Some((3, 0, 3)));
        t.apply(
            "d",
            7,
            &Delta {
                sseq: 3,
                dseq: 4,
                floor_s: 1,
                floor_d: 1,
                add: vec![(2, 4, 2)],
                del: vec![1, 3],
                released: vec![1, 3],
                ..Delta::default()
            },
        );
        assert_eq!(t.figures("d"), Some((3, 1, 1)));
        assert!(!t.needed(1, b"a.x") && !t.needed(3, b"a.x"));
        assert!(t.needed(2, b"a.x") && t.needed(4, b"a.x"));
        assert!(!t.needed(4, b"b.x"), "filtered out");
        // The state document a new leader starts from carries the redelivery count.
        let r = t.records();
        let doc: serde_json::Value =
            serde_json::from_slice(r["d"].state.as_deref().expect("state")).expect("json");
        assert_eq!(doc["deliveries"], serde_json::json!([[2, 2]]));
        assert_eq!(doc["pending"], serde_json::json!([[2, 4]]));
        // A late delta of an older consumer by that name changes nothing.
        t.apply("d", 1, &Delta::default());
        assert_eq!(t.figures("d"), Some((3, 1, 1)));
        // Another consumer by that name starts over.
        t.set_record("d".into(), record(8, "a.>"));
        assert_eq!(t.figures("d"), None);
        assert!(t.needed(1, b"a.x"));
        let mut back = ConsumerTable::default();
        back.restore(t.records());
        assert_eq!(back.names(), vec!["d".to_string()]);
    }
}
