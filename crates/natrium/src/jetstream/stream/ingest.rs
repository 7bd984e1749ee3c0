//! A stream's ingest: each published message is transformed (`subject_transform`), decided
//! (`check`), then applied (append, rollup, de-dup window, TTL and schedule timers, republish,
//! consumers); its PubAck leaves when a sync covers it (lazy or async persist mode: at once).
//! Every writer (the ingest task, sources and the mirror, markers and schedules from the
//! timers) applies under the ingest lock, so the stream has one writer at a time.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use natrium_store::{StoreError, StoredMsg};
use serde_json::json;

use super::check::{check, Dedupe, Incoming, Rollup, Verdict, Write};
use super::{headers, Stream};
use crate::jetstream::config::StreamConfig;
use crate::jetstream::errors::ApiError;
use crate::router::{InternalMsg, InternalSubscription};
use crate::util::time::now_nanos;

/// What the ingest lock guards: the de-dup window and atomic batches being assembled.
#[derive(Default)]
pub(crate) struct IngestState {
    pub dedupe: Dedupe,
    pub batches: super::batch::Batches,
}

/// A message to store, whoever sent it.
pub(crate) struct Inbound<'a> {
    pub subject: &'a str,
    pub headers: Option<&'a [u8]>,
    pub payload: &'a [u8],
    pub reply: Option<&'a str>,
    pub sourced: bool,
}

/// What became of a message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Stored(u64),
    Duplicate(u64),
    Refused(ApiError),
}

impl Stream {
    /// The ingest task: messages published on the stream's subjects.
    pub(super) async fn ingest(self: Arc<Self>, mut sub: InternalSubscription) {
        // The de-dup window as the stored messages leave it (a restart must not forget the ids
        // of messages whose PubAck it swallowed).
        let window = self.config.read().duplicate_window();
        self.ingest_state.lock().dedupe = Dedupe::rebuild(self.store.as_ref(), now_nanos(), window);
        loop {
            let msg = tokio::select! {
                m = sub.next() => m,
                _ = self.stop.notified() => None,
            };
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
            let Some(msg) = msg else { return };
            self.publish_in(&msg);
        }
    }

    /// One message published by a client.
    fn publish_in(&self, msg: &InternalMsg) {
        let cfg = Arc::clone(&self.config.read());
        let reply = if cfg.no_ack {
            None
        } else {
            msg.reply.as_deref()
        };
        if cfg.mirror.is_some() {
            // A mirror stores only what its origin has (nats-server does not listen on a
            // mirror's subjects: it has none).
            return;
        }
        let transformed = self
            .transforms
            .read()
            .input
            .as_ref()
            .and_then(|t| t.apply(&msg.subject));
        let subject = transformed.as_deref().unwrap_or(&msg.subject);
        let inbound = Inbound {
            subject,
            headers: msg.headers.as_deref(),
            payload: &msg.payload,
            reply,
            sourced: false,
        };
        let mut state = self.ingest_state.lock();
        if headers::get(inbound.headers, headers::BATCH_ID).is_some() {
            self.batch_in(&cfg, &mut state, &inbound);
            return;
        }
        self.store_one(&cfg, &mut state, &inbound, None);
    }

    /// Decides on one message and applies the decision, answering `reply`; with `ts` (a
    /// replica applying its leader's marker or scheduled message), at that time.
    pub(crate) fn store_one(
        &self,
        cfg: &StreamConfig,
        state: &mut IngestState,
        m: &Inbound<'_>,
        ts: Option<i64>,
    ) -> Outcome {
        // A replica decides at its leader's time, so every replica decides the same.
        let now = ts.unwrap_or_else(now_nanos);
        let incoming = Incoming {
            subject: m.subject.as_bytes(),
            headers: m.headers,
            payload: m.payload,
            sourced: m.sourced,
        };
        match check(cfg, self.store.as_ref(), &state.dedupe, &incoming, now) {
            Verdict::Refuse(e) => {
                self.reply_error(m.reply, e.clone());
                Outcome::Refused(e)
            }
            Verdict::Duplicate(seq) => {
                if let Some(r) = m.reply {
                    let body = json!({"stream": self.name, "seq": seq, "duplicate": true});
                    let _ = self
                        .client
                        .publish(r, None, None, body.to_string().as_bytes());
                }
                Outcome::Duplicate(seq)
            }
            Verdict::Accept(write) => {
                match self.apply(cfg, state, m, write, ts.unwrap_or(now), None) {
                    Ok(seq) => Outcome::Stored(seq),
                    Err(e) => Outcome::Refused(e),
                }
            }
        }
    }

    /// Stores an accepted message: appends it, applies its rollup, records its msg id and
    /// timers, republishes it, tells the consumers, and arranges the PubAck (with `extra`
    /// fields, e.g. a batch's) to `m.reply`.
    pub(crate) fn apply(
        &self,
        cfg: &StreamConfig,
        state: &mut IngestState,
        m: &Inbound<'_>,
        write: Write,
        ts: i64,
        extra: Option<&str>,
    ) -> Result<u64, ApiError> {
        let subject = m.subject.as_bytes();
        let hdrs = write.headers.as_deref().or(m.headers);
        let payload = write.payload.as_deref().unwrap_or(m.payload);
        if let Some(gate) = self.account_gate.get() {
            let size = subject.len() + hdrs.map_or(0, <[u8]>::len) + payload.len();
            if !gate(cfg.storage, size as u64) {
                let e = ApiError::account_resources_exceeded();
                self.reply_error(m.reply, e.clone());
                return Err(e);
            }
        }
        // The republished message carries the subject's previous sequence.
        let transforms = Arc::clone(&self.transforms.read());
        // A replicated stream's leader republishes (its followers store the same messages).
        let leads = self.leads();
        let republish_to = transforms
            .republish
            .as_ref()
            .filter(|_| leads)
            .and_then(|t| t.apply(m.subject));
        let last_on_subject = match &republish_to {
            Some(_) => self
                .store
                .load_last_by_subject(subject)
                .map_or(0, |l| l.seq),
            None => 0,
        };
        // With limits the store may remove messages to make room: consumers must hear of it.
        let limited = cfg.max_msgs > 0 || cfg.max_bytes > 0 || cfg.max_msgs_per_subject > 0;
        let before = limited.then(|| self.store.state());
        let receipt = match self.store.store_msg(subject, hdrs, payload, ts) {
            Ok(r) => r,
            Err(e) => {
                let e = store_error(&e);
                self.reply_error(m.reply, e.clone());
                return Err(e);
            }
        };
        // What went to make room or by the rollup: (new first sequence, removed from inside).
        let (mut front, mut inside) = (None, false);
        if let Some(b) = before {
            let a = self.store.state();
            if a.msgs != b.msgs + 1 {
                inside = a.num_deleted > b.num_deleted || cfg.max_msgs_per_subject > 0;
                front = (a.first_seq > b.first_seq).then_some(a.first_seq);
            }
        }
        match write.rollup {
            Some(Rollup::Subject) => {
                inside |= self.store.purge_ex(subject, 0, 1).is_ok_and(|n| n > 0);
            }
            Some(Rollup::All) => {
                let removed = self.store.compact(receipt.seq).is_ok_and(|n| n > 0);
                front = removed.then_some(receipt.seq).or(front);
            }
            None => {}
        }
        if let Some(scheduler) = &write.purge_scheduler {
            inside |= self
                .store
                .purge_ex(scheduler.as_bytes(), 0, 0)
                .is_ok_and(|n| n > 0);
        }
        state.dedupe.expire(ts, cfg.duplicate_window());
        if let Some(id) = write.msg_id {
            state.dedupe.record(id, receipt.seq, ts);
        }
        // Timers run where timed work is decided: a replica's leader (a new one rebuilds them).
        if write.ttl > 0 && cfg.allow_msg_ttl && leads {
            self.timers
                .add_ttl(ts + write.ttl * 1_000_000_000, receipt.seq);
        }
        if cfg.allow_msg_schedules && leads {
            if let Some(at) = super::timers::schedule_time(hdrs) {
                self.timers.add_schedule(at, receipt.seq);
            }
        }
        if let Some(to) = republish_to {
            self.republish(
                cfg,
                &to,
                m.subject,
                hdrs,
                payload,
                receipt.seq,
                ts,
                last_on_subject,
            );
        }
        self.stored(receipt.seq, subject);
        if let Some(first) = front {
            self.consumers.removed_front(first);
        }
        if inside {
            self.consumers.removed_inside();
        }
        let Some(r) = m.reply else {
            return Ok(receipt.seq);
        };
        let client = self.client.clone();
        let reply_to = r.to_string();
        // One allocation, sized for the sequence and what follows it.
        let mut ack = String::with_capacity(self.ack_prefix.len() + 21 + extra.map_or(0, str::len));
        ack.push_str(&self.ack_prefix);
        let _ = write!(ack, "{}", receipt.seq);
        if let Some(extra) = extra {
            ack.push_str(extra);
        } else if let Some(val) = &write.counter {
            let _ = write!(ack, ",\"val\":{}", json!(val));
        }
        ack.push('}');
        if self.ack_before_sync {
            // Lazy mode (`sync_interval: <duration>`, `persist_mode: async`): the PubAck
            // leaves once the message is written, before the periodic sync covers it.
            let _ = client.publish(&reply_to, None, None, ack.as_bytes());
            return Ok(receipt.seq);
        }
        let name = self.name.clone();
        self.store.on_durable(
            receipt.sync_token,
            Box::new(move |res| {
                let body = match res {
                    Ok(()) => ack,
                    Err(e) => json!({"stream": name, "error": store_error(&e)}).to_string(),
                };
                let _ = client.publish(&reply_to, None, None, body.as_bytes());
            }),
        );
        Ok(receipt.seq)
    }

    /// Publishes a stored message again on `to` with nats-server's headers (`Nats-Stream`,
    /// `Nats-Subject`, `Nats-Sequence`, `Nats-Time-Stamp`, `Nats-Last-Sequence`, and with
    /// `headers_only` `Nats-Msg-Size` instead of the payload).
    #[allow(clippy::too_many_arguments)]
    fn republish(
        &self,
        cfg: &StreamConfig,
        to: &str,
        subject: &str,
        hdrs: Option<&[u8]>,
        payload: &[u8],
        seq: u64,
        ts: i64,
        last: u64,
    ) {
        if !natrium_subjects::is_valid_publish_subject(to.as_bytes()) {
            return;
        }
        let headers_only = cfg.republish.as_ref().is_some_and(|r| r.headers_only);
        let time = crate::util::time::rfc3339_nanos(ts as i128);
        let seq_s = seq.to_string();
        let last_s = last.to_string();
        let size = payload.len().to_string();
        let mut pairs = vec![
            ("Nats-Stream", self.name.as_str()),
            ("Nats-Subject", subject),
            ("Nats-Sequence", seq_s.as_str()),
            ("Nats-Time-Stamp", time.as_str()),
            ("Nats-Last-Sequence", last_s.as_str()),
        ];
        if headers_only {
            pairs.push(("Nats-Msg-Size", size.as_str()));
        }
        let block = headers::with(hdrs, &pairs);
        let body: &[u8] = if headers_only { b"" } else { payload };
        let _ = self.client.publish(to, None, Some(&block), body);
    }

    pub(crate) fn reply_error(&self, reply: Option<&str>, e: ApiError) {
        if let Some(r) = reply {
            let body = json!({"stream": self.name, "error": e});
            let _ = self
                .client
                .publish(r, None, None, body.to_string().as_bytes());
        }
    }

    /// Stores a mirrored message at its origin sequence `seq` with its origin timestamp,
    /// skipping the sequences the origin no longer has. Returns false when it could not.
    pub(crate) fn store_mirrored(&self, seq: u64, ts: i64, m: &StoredMsg) -> bool {
        if let Some(r) = self.replication.get() {
            // Replicated: the leader proposes it; every replica stores it when applied.
            r.propose(super::hook::Proposal::Mirrored {
                seq,
                ts,
                subject: String::from_utf8_lossy(&m.subject).into_owned(),
                headers: m.headers.as_ref().map(|h| h.to_vec()),
                payload: m.payload.to_vec(),
            });
            return true;
        }
        self.apply_mirrored(seq, ts, m)
    }

    /// Stores a mirrored message (see `store_mirrored`), on this server.
    pub(super) fn apply_mirrored(&self, seq: u64, ts: i64, m: &StoredMsg) -> bool {
        let cfg = Arc::clone(&self.config.read());
        let _state = self.ingest_state.lock();
        let last = self.store.state().last_seq;
        if seq <= last {
            return true;
        }
        if seq > last + 1 && !self.skip_to(seq) {
            return false;
        }
        let hdrs = m.headers.as_deref();
        let rollup = headers::get(hdrs, headers::ROLLUP).map(|r| r.to_ascii_lowercase());
        let receipt = match self
            .store
            .store_msg(m.subject.as_ref(), hdrs, &m.payload, ts)
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(
                    "stream {}: storing a mirrored message failed: {e}",
                    self.name
                );
                return false;
            }
        };
        match rollup.as_deref() {
            Some("sub") => {
                let _ = self.store.purge_ex(&m.subject, 0, 1);
            }
            Some("all") => {
                let _ = self.store.compact(receipt.seq);
            }
            _ => {}
        }
        if cfg.allow_msg_ttl && self.leads() {
            if let Some(t) = headers::get(hdrs, headers::MSG_TTL)
                .as_deref()
                .and_then(headers::parse_ttl)
                .filter(|t| *t > 0)
            {
                self.timers.add_ttl(ts + t * 1_000_000_000, receipt.seq);
            }
        }
        self.stored(receipt.seq, &m.subject);
        true
    }

    /// Makes the next stored message get sequence `seq` (the ones between are left deleted).
    pub(super) fn skip_to(&self, seq: u64) -> bool {
        let st = self.store.state();
        if st.msgs == 0 {
            return self.store.compact(seq).is_ok();
        }
        // The store has no gap-making append: write and remove a placeholder per sequence.
        for _ in st.last_seq + 1..seq {
            match self.store.store_msg(b"_skipped", None, b"", now_nanos()) {
                Ok(r) => {
                    let _ = self.store.remove_msg(r.seq);
                }
                Err(_) => return false,
            }
        }
        true
    }
}

/// Maps a store failure to the API error a publisher sees.
pub(crate) fn store_error(e: &StoreError) -> ApiError {
    match e {
        StoreError::MsgTooLarge => ApiError::message_too_large(),
        other => ApiError::store_failed(other.to_string()),
    }
}
