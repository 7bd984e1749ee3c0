//! Atomic batch publish (`allow_atomic`): messages with `Nats-Batch-Id` and
//! `Nats-Batch-Sequence` 1, 2, ... are staged until the one with `Nats-Batch-Commit: 1`; then
//! every message is checked as if the earlier ones were stored, and all are stored or none.
//! Staged messages get an empty reply; the commit gets the PubAck with `batch` and `count`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;

use super::check::{check_with, Incoming, Verdict, Write};
use super::ingest::{Inbound, IngestState};
use super::{headers, Stream};
use crate::jetstream::config::StreamConfig;
use crate::jetstream::errors::ApiError;
use crate::util::time::now_nanos;

/// nats-server's defaults: batches open at once per stream, messages per batch, idle time.
const MAX_INFLIGHT: usize = 50;
const MAX_SIZE: u64 = 1000;
const TIMEOUT: Duration = Duration::from_secs(10);

/// A staged message (its `Nats-Batch-*` headers removed).
pub(crate) struct Staged {
    pub subject: String,
    pub headers: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

struct Batch {
    msgs: Vec<Staged>,
    last: Instant,
}

/// The batches being assembled on a stream.
#[derive(Default)]
pub(crate) struct Batches {
    open: HashMap<String, Batch>,
}

impl Batches {
    fn expire(&mut self, now: Instant) {
        self.open
            .retain(|_, b| now.duration_since(b.last) < TIMEOUT);
    }
}

impl Stream {
    /// One message of an atomic batch.
    pub(super) fn batch_in(&self, cfg: &StreamConfig, state: &mut IngestState, m: &Inbound<'_>) {
        let r = match self.stage(cfg, &mut state.batches, m) {
            Ok(Some((id, msgs))) => self
                .commit(cfg, state, &id, msgs, m.reply, now_nanos())
                .map(|_| ()),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            self.reply_error(m.reply, e);
        }
    }

    /// Stages one message of a batch (staged ones get an empty reply); the whole batch (id
    /// and messages) once its commit arrives.
    pub(crate) fn stage(
        &self,
        cfg: &StreamConfig,
        batches: &mut Batches,
        m: &Inbound<'_>,
    ) -> Result<Option<(String, Vec<Staged>)>, ApiError> {
        if cfg.sealed {
            return Err(ApiError::sealed());
        }
        let size = m.payload.len() + m.headers.map_or(0, <[u8]>::len);
        if cfg.max_msg_size > 0 && size as i64 > cfg.max_msg_size {
            return Err(ApiError::message_too_large());
        }
        if !cfg.allow_atomic {
            return Err(ApiError::atomic_disabled());
        }
        let id = headers::get(m.headers, headers::BATCH_ID).unwrap_or_default();
        if id.is_empty() || id.len() > 64 {
            return Err(ApiError::atomic_invalid_id());
        }
        let Some(seq) =
            headers::get(m.headers, headers::BATCH_SEQ).and_then(|v| v.trim().parse::<u64>().ok())
        else {
            return Err(ApiError::atomic_missing_seq());
        };
        let now = Instant::now();
        batches.expire(now);
        if !batches.open.contains_key(&id) {
            if seq != 1 {
                if seq > MAX_SIZE {
                    return Err(ApiError::atomic_too_large(MAX_SIZE));
                }
                return Err(ApiError::atomic_incomplete());
            }
            if batches.open.len() >= MAX_INFLIGHT {
                return Err(ApiError::atomic_incomplete());
            }
            batches.open.insert(
                id.clone(),
                Batch {
                    msgs: Vec::new(),
                    last: now,
                },
            );
        }
        let commit = match headers::get(m.headers, headers::BATCH_COMMIT) {
            None => false,
            Some(c) if c == "1" => true,
            Some(_) => {
                batches.open.remove(&id);
                return Err(ApiError::atomic_invalid_commit());
            }
        };
        let Some(batch) = batches.open.get_mut(&id) else {
            return Err(ApiError::atomic_incomplete());
        };
        if batch.msgs.len() as u64 + 1 != seq {
            batches.open.remove(&id);
            return Err(ApiError::atomic_incomplete());
        }
        if seq > MAX_SIZE {
            batches.open.remove(&id);
            return Err(ApiError::atomic_too_large(MAX_SIZE));
        }
        batch.last = now;
        batch.msgs.push(Staged {
            subject: m.subject.to_string(),
            headers: headers::without(m.headers, |k| k.starts_with("Nats-Batch-")),
            payload: m.payload.to_vec(),
        });
        if !commit {
            if let Some(r) = m.reply {
                let _ = self.client.publish(r, None, None, b"");
            }
            return Ok(None);
        }
        let Some(batch) = batches.open.remove(&id) else {
            return Err(ApiError::atomic_incomplete());
        };
        Ok(Some((id, batch.msgs)))
    }

    /// Checks every staged message as if those before it were stored, then stores them all
    /// at `now`; the last one's sequence.
    pub(super) fn commit(
        &self,
        cfg: &StreamConfig,
        state: &mut IngestState,
        id: &str,
        msgs: Vec<Staged>,
        reply: Option<&str>,
        now: i64,
    ) -> Result<u64, ApiError> {
        let last = self.store.state().last_seq;
        let mut writes: Vec<Write> = Vec::with_capacity(msgs.len());
        let mut ids = std::collections::HashSet::new();
        // The sequence each subject will have had last, for the batch's later messages.
        let mut subject_last: HashMap<&str, u64> = HashMap::new();
        for (i, s) in msgs.iter().enumerate() {
            let h = s.headers.as_deref();
            if headers::get(h, "Nats-Expected-Last-Msg-Id").is_some() {
                return Err(ApiError::atomic_unsupported_header(
                    "Nats-Expected-Last-Msg-Id",
                ));
            }
            if let Some(mid) = headers::get(h, "Nats-Msg-Id").filter(|v| !v.is_empty()) {
                if !ids.insert(mid) {
                    return Err(ApiError::atomic_duplicate_msg_id());
                }
            }
            let incoming = Incoming {
                subject: s.subject.as_bytes(),
                headers: h,
                payload: &s.payload,
                sourced: false,
            };
            let virtual_last = last + i as u64;
            let subj_last = subject_last.get(s.subject.as_str()).copied();
            match check_with(
                cfg,
                self.store.as_ref(),
                &state.dedupe,
                &incoming,
                now,
                Some(virtual_last),
                subj_last,
            ) {
                Verdict::Accept(w) => writes.push(w),
                Verdict::Duplicate(_) => return Err(ApiError::atomic_duplicate_msg_id()),
                Verdict::Refuse(e) => return Err(e),
            }
            subject_last.insert(s.subject.as_str(), virtual_last + 1);
        }
        // The whole batch fits in the account, or none of it is stored.
        if let Some(gate) = self.account_gate.get() {
            let size: usize = msgs
                .iter()
                .map(|s| {
                    s.subject.len() + s.headers.as_ref().map_or(0, |h| h.len()) + s.payload.len()
                })
                .sum();
            if !gate(cfg.storage, size as u64) {
                return Err(ApiError::account_resources_exceeded());
            }
        }
        let count = msgs.len();
        let mut last_seq = 0;
        let extra = format!(",\"batch\":{},\"count\":{}", json!(id), count);
        for (i, (s, w)) in msgs.iter().zip(writes).enumerate() {
            let last_one = i + 1 == count;
            let inbound = Inbound {
                subject: &s.subject,
                headers: s.headers.as_deref(),
                payload: &s.payload,
                reply: if last_one { reply } else { None },
                sourced: false,
            };
            last_seq = self.apply(
                cfg,
                state,
                &inbound,
                w,
                now,
                last_one.then_some(extra.as_str()),
            )?;
        }
        Ok(last_seq)
    }
}
