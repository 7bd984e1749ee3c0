//! A replicated consumer's progress as the stream's log carries it: the leader's `Delta` (what
//! changed since the last one: cursor, floor, pending added or gone, messages released) and
//! `LogProgress`, the copy each replica keeps by applying them in log order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ConsumerState, SavedState};

/// What the leader's consumer changed since its last delta. Cursor and floor are absolute;
/// pending messages are listed when they became pending or were delivered again, and when
/// they stopped being pending. Applied in log order, deltas rebuild the leader's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Delta {
    pub sseq: u64,
    pub dseq: u64,
    pub floor_s: u64,
    pub floor_d: u64,
    /// (stream sequence, consumer sequence, deliveries) of messages delivered since.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<(u64, u64, u64)>,
    /// Stream sequences no longer pending (acked, terminated, out of deliveries, gone, reset).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub del: Vec<u64>,
    /// The start list (last-per-subject) shrank to its last `n` entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_left: Option<usize>,
    /// Messages the consumer is done with: work-queue and interest retention remove them on
    /// every replica when this delta is applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<u64>,
}

/// What the last delta left the replicas with (the leader diffs against it).
#[derive(Debug, Default)]
pub(super) struct Base {
    cursor: (u64, u64, u64, u64),
    /// Pending stream sequence -> consumer sequence.
    pending: BTreeMap<u64, u64>,
    start_len: usize,
}

impl Base {
    pub(super) fn of(st: &ConsumerState) -> Base {
        Base {
            cursor: (st.sseq, st.dseq, st.floor_s, st.floor_d),
            pending: st.pending.iter().map(|(s, p)| (*s, p.dseq)).collect(),
            start_len: st.start_list.len(),
        }
    }
}

impl ConsumerState {
    /// The change since the last delta (none when nothing changed), which becomes the base of
    /// the next one. Only replicated consumers keep a base.
    pub(crate) fn take_delta(&mut self) -> Option<Delta> {
        let mut base = self.base.take().unwrap_or_default();
        let mut d = Delta {
            sseq: self.sseq,
            dseq: self.dseq,
            floor_s: self.floor_s,
            floor_d: self.floor_d,
            released: std::mem::take(&mut self.acked),
            ..Delta::default()
        };
        // Both maps are in sequence order: one walk finds what came and what went.
        let mut old = base.pending.iter().peekable();
        for (s, p) in &self.pending {
            while let Some((o, _)) = old.next_if(|(o, _)| *o < s) {
                d.del.push(*o);
            }
            match old.next_if(|(o, _)| *o == s) {
                Some((_, dseq)) if *dseq == p.dseq => {}
                _ => d
                    .add
                    .push((*s, p.dseq, self.deliveries.get(s).copied().unwrap_or(1))),
            }
        }
        d.del.extend(old.map(|(o, _)| *o));
        for s in &d.del {
            base.pending.remove(s);
        }
        for (s, dseq, _) in &d.add {
            base.pending.insert(*s, *dseq);
        }
        if self.start_list.len() != base.start_len {
            d.start_left = Some(self.start_list.len());
            base.start_len = self.start_list.len();
        }
        let cursor = (d.sseq, d.dseq, d.floor_s, d.floor_d);
        let moved = cursor != base.cursor;
        base.cursor = cursor;
        self.base = Some(base);
        self.dirty = false;
        let empty = !moved
            && d.add.is_empty()
            && d.del.is_empty()
            && d.released.is_empty()
            && d.start_left.is_none();
        (!empty).then_some(d)
    }
}

/// A replica's copy of a replicated consumer's progress, rebuilt from the deltas.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LogProgress {
    sseq: u64,
    dseq: u64,
    floor_s: u64,
    floor_d: u64,
    /// Stream sequence -> (consumer sequence, deliveries).
    pending: BTreeMap<u64, (u64, u64)>,
    start_list: Vec<u64>,
}

impl LogProgress {
    /// From a state document (`None` when it is not one).
    pub(crate) fn decode(body: &[u8]) -> Option<LogProgress> {
        let s: SavedState = serde_json::from_slice(body).ok()?;
        let deliveries: BTreeMap<u64, u64> = s.deliveries.into_iter().collect();
        Some(LogProgress {
            sseq: s.sseq,
            dseq: s.dseq,
            floor_s: s.floor_s,
            floor_d: s.floor_d,
            pending: s
                .pending
                .into_iter()
                .map(|(sseq, dseq)| (sseq, (dseq, deliveries.get(&sseq).copied().unwrap_or(1))))
                .collect(),
            start_list: s.start_list,
        })
    }

    /// As a state document (what a consumer starts from).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let saved = SavedState {
            sseq: self.sseq,
            dseq: self.dseq,
            floor_s: self.floor_s,
            floor_d: self.floor_d,
            pending: self.pending.iter().map(|(s, (d, _))| (*s, *d)).collect(),
            deliveries: self.pending.iter().map(|(s, (_, n))| (*s, *n)).collect(),
            start_list: self.start_list.clone(),
        };
        serde_json::to_vec(&saved).unwrap_or_default()
    }

    pub(crate) fn apply(&mut self, d: &Delta) {
        self.sseq = d.sseq;
        self.dseq = d.dseq;
        self.floor_s = d.floor_s;
        self.floor_d = d.floor_d;
        for (s, dseq, n) in &d.add {
            self.pending.insert(*s, (*dseq, *n));
        }
        for s in &d.del {
            self.pending.remove(s);
        }
        if let Some(n) = d.start_left {
            let drop = self.start_list.len().saturating_sub(n);
            self.start_list.drain(..drop);
        }
    }

    /// Whether the consumer (with `filters`) still needs message `seq` on `subject`, as
    /// `ConsumerState::needs` decides on the leader.
    pub(crate) fn needs(&self, filters: &[String], seq: u64, subject: &[u8]) -> bool {
        let matches = filters.is_empty()
            || filters
                .iter()
                .any(|f| natrium_subjects::matches(f.as_bytes(), subject));
        if !matches || seq <= self.floor_s {
            return false;
        }
        seq > self.sseq || self.pending.contains_key(&seq) || self.start_list.contains(&seq)
    }

    /// (last delivered stream sequence, ack floor stream sequence, pending count).
    #[cfg(test)]
    pub(crate) fn figures(&self) -> (u64, u64, usize) {
        (self.sseq, self.floor_s, self.pending.len())
    }
}
