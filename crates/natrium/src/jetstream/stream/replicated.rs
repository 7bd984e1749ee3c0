//! A replica of a replicated stream: what it applies from its group's log (messages, atomic
//! batches, the expiries and schedules its leader decided, sourced and mirrored messages)
//! through the R1 ingest code, and what its leader does on taking and leaving the lead.

use std::sync::Arc;

use natrium_store::{StoreError, StoredMsg};
use serde_json::json;

use super::batch::Batches;
pub(crate) use super::batch::Staged;
use super::check::{check, Incoming, Verdict};
use super::ingest::Inbound;
use super::{headers, Stream};
use crate::jetstream::errors::ApiError;

/// After a restart (or a snapshot installed under a store that holds more than it covers),
/// the log is replayed over a store that already holds its effects. The leader stamps every
/// entry with a timestamp above all before it and an entry's messages carry it, so an entry
/// stamped at or before the store's last timestamp is already in the store (its messages
/// held, or removed since, or it was refused): it is recognised by its timestamp, never
/// stored again and never checked against a store that is ahead of it (a `Nats-Expected-*`
/// publish would be refused there). Entries stamped later are applied as usual.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Replaying {
    /// The sequence the next stored message had.
    pub next: u64,
    /// The store's last sequence when the replay began, and its timestamp.
    pub held: u64,
    pub held_ts: i64,
}

/// Where the replay stands; `None` once the log is past what the store holds.
pub(crate) type Replay = Option<Replaying>;

/// The replay of the log from sequence `next` over `store`, if it holds anything from there.
pub(crate) fn replay_over(store: &dyn natrium_store::StreamStore, next: u64) -> Replay {
    let st = store.state();
    (st.last_seq >= next).then_some(Replaying {
        next,
        held: st.last_seq,
        held_ts: st.last_ts,
    })
}

/// Moves the replay past sequence `seq` (an entry that names the sequence it stored).
pub(crate) fn replayed_through(replay: &mut Replay, seq: u64) {
    if let Some(r) = *replay {
        *replay = (seq < r.held).then_some(Replaying {
            next: r.next.max(seq + 1),
            ..r
        });
    }
}

/// What the replay found of an entry.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// Stamped after what the store holds: apply it.
    New,
    /// Its messages are held at `first..=last` (a batch, or expiry markers, may be several).
    Held { first: u64, last: u64 },
    /// Nothing of it is held: refused when it was applied, or its messages removed since.
    Gone,
}

/// A message entry of the log.
pub(crate) struct Entry<'a> {
    pub subject: &'a [u8],
    pub headers: Option<&'a [u8]>,
    pub payload: &'a [u8],
    pub ts: i64,
    pub sourced: bool,
}

/// The leader's batches being assembled (a new leader starts with none).
pub(crate) type LeaderBatches = Batches;

/// A batch entry: `B`, timestamp (i64 LE), id (u16 LE length), count (u32 LE), then per
/// message subject (u16 LE length), headers (u32 LE length, `u32::MAX` for none), payload
/// (u32 LE length).
pub(crate) fn encode_batch(ts: i64, id: &str, msgs: &[Staged]) -> Vec<u8> {
    let size: usize = msgs
        .iter()
        .map(|m| 10 + m.subject.len() + m.headers.as_ref().map_or(0, Vec::len) + m.payload.len())
        .sum();
    let mut v = Vec::with_capacity(15 + id.len() + size);
    v.push(b'B');
    v.extend_from_slice(&ts.to_le_bytes());
    v.extend_from_slice(&(id.len() as u16).to_le_bytes());
    v.extend_from_slice(id.as_bytes());
    v.extend_from_slice(&(msgs.len() as u32).to_le_bytes());
    for m in msgs {
        v.extend_from_slice(&(m.subject.len() as u16).to_le_bytes());
        v.extend_from_slice(m.subject.as_bytes());
        match &m.headers {
            Some(h) => {
                v.extend_from_slice(&(h.len() as u32).to_le_bytes());
                v.extend_from_slice(h);
            }
            None => v.extend_from_slice(&u32::MAX.to_le_bytes()),
        }
        v.extend_from_slice(&(m.payload.len() as u32).to_le_bytes());
        v.extend_from_slice(&m.payload);
    }
    v
}

/// A batch entry's timestamp, id and messages.
pub(crate) fn decode_batch(b: &[u8]) -> Option<(i64, String, Vec<Staged>)> {
    let mut at = 1;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = b.get(at..at + n)?;
        at += n;
        Some(s)
    };
    let ts = i64::from_le_bytes(take(8)?.try_into().ok()?);
    let il = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
    let id = String::from_utf8(take(il)?.to_vec()).ok()?;
    let count = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
    let mut msgs = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let sl = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
        let subject = String::from_utf8(take(sl)?.to_vec()).ok()?;
        let hl = u32::from_le_bytes(take(4)?.try_into().ok()?);
        let headers = if hl == u32::MAX {
            None
        } else {
            Some(take(hl as usize)?.to_vec())
        };
        let pl = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let payload = take(pl)?.to_vec();
        msgs.push(Staged {
            subject,
            headers,
            payload,
        });
    }
    Some((ts, id, msgs))
}

impl Stream {
    /// The subject a published message is stored on (`subject_transform`), when it changes.
    pub(crate) fn transform_subject(&self, subject: &str) -> Option<String> {
        self.transforms
            .read()
            .input
            .as_ref()
            .and_then(|t| t.apply(subject))
    }

    /// On the leader: stages a message of an atomic batch (answering it when it is not the
    /// commit); the whole batch once committed, to propose.
    pub(crate) fn stage_batch(
        &self,
        batches: &mut LeaderBatches,
        subject: &str,
        hdrs: Option<&[u8]>,
        payload: &[u8],
        reply: Option<&str>,
    ) -> Option<(String, Vec<Staged>)> {
        let cfg = self.config_arc();
        let m = Inbound {
            subject,
            headers: hdrs,
            payload,
            reply,
            sourced: false,
        };
        match self.stage(&cfg, batches, &m) {
            Ok(b) => b,
            Err(e) => {
                self.reply_error(reply, e);
                None
            }
        }
    }

    /// The PubAck (or error) document of an applied entry.
    fn ack_doc(&self, seq: u64, extra: Option<serde_json::Value>) -> Vec<u8> {
        let mut v = json!({"stream": self.name, "seq": seq});
        if let (Some(serde_json::Value::Object(extra)), Some(o)) = (extra, v.as_object_mut()) {
            o.extend(extra);
        }
        v.to_string().into_bytes()
    }

    fn error_doc(&self, e: ApiError) -> Vec<u8> {
        json!({"stream": self.name, "error": e})
            .to_string()
            .into_bytes()
    }

    /// During a replay: what the store holds of the entry stamped `ts`.
    fn replayed(&self, replay: &mut Replay, ts: i64) -> Found {
        let Some(r) = *replay else {
            return Found::New;
        };
        if ts > r.held_ts || r.next > r.held {
            *replay = None;
            return Found::New;
        }
        let mut at = r.next;
        let first = loop {
            match self.store.load_next_msg(b">", at) {
                Ok(m) if m.seq <= r.held && m.ts < ts => {
                    // Held, yet no entry before this one stored it.
                    tracing::error!(
                        "stream {}: replayed log and store disagree: message {} is not in the log",
                        self.name,
                        m.seq
                    );
                    at = m.seq + 1;
                }
                Ok(m) if m.seq <= r.held && m.ts == ts => break m.seq,
                _ => {
                    *replay = Some(Replaying { next: at, ..r });
                    return Found::Gone;
                }
            }
        };
        let mut last = first;
        while let Ok(m) = self.store.load_next_msg(b">", last + 1) {
            if m.seq > r.held || m.ts != ts {
                break;
            }
            last = m.seq;
        }
        replayed_through(replay, last);
        Found::Held { first, last }
    }

    /// Applies a message entry (published, or sourced) as R1 ingest would at `e.ts`, without
    /// answering anyone: the PubAck, duplicate or error document the leader sends.
    pub(crate) fn apply_entry(&self, e: &Entry<'_>, replay: &mut Replay) -> Vec<u8> {
        let cfg = self.config_arc();
        let Ok(subject) = std::str::from_utf8(e.subject) else {
            return self.error_doc(ApiError::bad_request());
        };
        let mut state = self.ingest_state.lock();
        match self.replayed(replay, e.ts) {
            Found::New => {}
            Found::Held { first, .. } => {
                state.dedupe.expire(e.ts, cfg.duplicate_window());
                if let Some(id) = headers::get(e.headers, "Nats-Msg-Id").filter(|v| !v.is_empty()) {
                    state.dedupe.record(id, first, e.ts);
                }
                return self.ack_doc(first, None);
            }
            // Nobody waits for the answer of a replayed entry.
            Found::Gone => return self.error_doc(ApiError::store_failed("replayed: not held")),
        }
        let incoming = Incoming {
            subject: e.subject,
            headers: e.headers,
            payload: e.payload,
            sourced: e.sourced,
        };
        let write = match check(&cfg, self.store.as_ref(), &state.dedupe, &incoming, e.ts) {
            Verdict::Refuse(err) => {
                if e.sourced {
                    tracing::debug!(
                        "stream {}: sourced message refused: {}",
                        self.name,
                        err.description
                    );
                }
                return self.error_doc(err);
            }
            Verdict::Duplicate(seq) => return self.ack_doc(seq, Some(json!({"duplicate": true}))),
            Verdict::Accept(w) => w,
        };
        let counter = write.counter.clone();
        let inbound = Inbound {
            subject,
            headers: e.headers,
            payload: e.payload,
            reply: None,
            sourced: e.sourced,
        };
        match self.apply(&cfg, &mut state, &inbound, write, e.ts, None) {
            Ok(seq) => self.ack_doc(seq, counter.map(|v| json!({"val": v}))),
            Err(err) => self.error_doc(err),
        }
    }

    /// Applies a committed atomic batch at `ts`: all its messages or none, as R1 commits it.
    pub(crate) fn apply_batch(
        &self,
        id: &str,
        msgs: Vec<Staged>,
        ts: i64,
        replay: &mut Replay,
    ) -> Vec<u8> {
        let count = msgs.len();
        let extra = json!({"batch": id, "count": count});
        match self.replayed(replay, ts) {
            Found::New => {}
            Found::Held { last, .. } => return self.ack_doc(last, Some(extra)),
            Found::Gone => return self.error_doc(ApiError::store_failed("replayed: not held")),
        }
        let cfg = self.config_arc();
        let mut state = self.ingest_state.lock();
        match self.commit(&cfg, &mut state, id, msgs, None, ts) {
            Ok(seq) => self.ack_doc(seq, Some(extra)),
            Err(e) => self.error_doc(e),
        }
    }

    /// Applies due expiries the leader decided at `ts` (removals and subject delete markers).
    pub(crate) fn apply_expire(&self, seqs: &[u64], ts: i64, replay: &mut Replay) {
        let cfg = self.config_arc();
        let first_before = self.store.state().first_seq;
        // Replayed: the markers it left (if any) are held; what it removed may not be yet.
        let replayed = self.replayed(replay, ts) != Found::New;
        let mut removed = 0;
        for &seq in seqs {
            let Ok(m) = self.store.load_msg(seq) else {
                continue;
            };
            let gone = if replayed {
                self.store.remove_msg(seq).unwrap_or(false)
            } else {
                self.expire_one(&cfg, &m, Some(ts))
            };
            if gone {
                removed = removed.max(seq);
            }
        }
        if removed > 0 {
            self.removed_by_timers(first_before, removed);
        }
    }

    /// Applies due schedules the leader decided at `ts`.
    pub(crate) fn apply_fire(&self, seqs: &[u64], ts: i64, replay: &mut Replay) {
        if self.replayed(replay, ts) != Found::New {
            // Fired before the restart: what it stored is held (or removed since).
            return;
        }
        let cfg = self.config_arc();
        for &seq in seqs {
            self.fire_schedule(&cfg, seq, Some(ts));
        }
    }

    /// A purge replayed over a store that also holds what was stored after it: only messages
    /// below `below` (the replay's position: every held message stored before the purge is
    /// below it, every one at or above it came later) are in its reach.
    pub(crate) fn purge_replayed(
        &self,
        filter: Option<&str>,
        seq: u64,
        keep: u64,
        below: u64,
    ) -> Result<u64, ApiError> {
        let filter = filter.filter(|f| !f.is_empty()).unwrap_or(">");
        let failed = |e: StoreError| ApiError::purge_failed(e.to_string());
        let purged = if keep == 0 {
            let upto = if seq > 1 { seq.min(below) } else { below };
            if upto <= 1 {
                return Ok(0);
            }
            self.store
                .purge_ex(filter.as_bytes(), upto, 0)
                .map_err(failed)?
        } else {
            let mut matching = Vec::new();
            let mut at = 1;
            while let Ok(m) = self.store.load_next_msg(filter.as_bytes(), at) {
                if m.seq >= below {
                    break;
                }
                matching.push(m.seq);
                at = m.seq + 1;
            }
            let drop = matching.len().saturating_sub(keep as usize);
            for &s in &matching[..drop] {
                self.store.remove_msg(s).map_err(failed)?;
            }
            drop as u64
        };
        self.consumers.recount();
        Ok(purged)
    }

    /// Applies a mirrored message at its origin sequence (nothing when the store has it).
    pub(crate) fn apply_mirror_entry(&self, seq: u64, e: &Entry<'_>, replay: &mut Replay) -> bool {
        replayed_through(replay, seq);
        let m = StoredMsg {
            seq,
            ts: e.ts,
            subject: bytes::Bytes::copy_from_slice(e.subject),
            headers: e.headers.map(bytes::Bytes::copy_from_slice),
            payload: bytes::Bytes::copy_from_slice(e.payload),
        };
        self.apply_mirrored(seq, e.ts, &m)
    }

    /// Records a message's `Nats-Msg-Id` stored at `seq` and `ts` in the de-dup window (an
    /// imported message).
    pub(crate) fn record_msg_id(&self, id: String, seq: u64, ts: i64) {
        let window = self.config_arc().duplicate_window();
        let mut st = self.ingest_state.lock();
        st.dedupe.expire(ts, window);
        st.dedupe.record(id, seq, ts);
    }

    /// The de-dup window as (id, sequence, time) and the last id (for a replica's snapshot).
    pub(crate) fn dedupe_snapshot(&self) -> (Vec<(String, u64, i64)>, Option<String>) {
        let st = self.ingest_state.lock();
        (st.dedupe.entries(), st.dedupe.last_id().map(String::from))
    }

    /// Restores the de-dup window from a snapshot.
    pub(crate) fn restore_dedupe(&self, ids: Vec<(String, u64, i64)>, last_id: Option<String>) {
        self.ingest_state.lock().dedupe = super::check::Dedupe::from_entries(ids, last_id);
    }

    /// This replica now leads: its timers are rebuilt from the store and its sources start.
    pub(crate) fn lead_started(self: &Arc<Self>) {
        self.rebuild_timers();
        self.timers.wake_now();
        let cfg = self.config_arc();
        self.sync_sources(&cfg);
    }

    /// This replica no longer leads: its sources stop.
    pub(crate) fn lead_stopped(&self) {
        self.stop_sources();
    }

    /// Whether a published message belongs to an atomic batch.
    pub(crate) fn in_batch(hdrs: Option<&[u8]>) -> bool {
        headers::get(hdrs, headers::BATCH_ID).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_entries_round_trip() {
        let msgs = vec![
            Staged {
                subject: "a.b".into(),
                headers: Some(b"NATS/1.0\r\nX: y\r\n\r\n".to_vec()),
                payload: b"one".to_vec(),
            },
            Staged {
                subject: "c".into(),
                headers: None,
                payload: Vec::new(),
            },
        ];
        let e = encode_batch(77, "batch-1", &msgs);
        let (ts, id, back) = decode_batch(&e).expect("decodes");
        assert_eq!((ts, id.as_str(), back.len()), (77, "batch-1", 2));
        assert_eq!(back[0].subject, "a.b");
        assert_eq!(back[0].headers.as_deref(), msgs[0].headers.as_deref());
        assert_eq!(back[0].payload, b"one");
        assert_eq!(
            (back[1].headers.is_none(), back[1].payload.len()),
            (true, 0)
        );
        assert!(decode_batch(&e[..e.len() - 1]).is_none());
    }
}
