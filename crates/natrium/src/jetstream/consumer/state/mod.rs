//! A consumer's state as a pure state machine (cursor, ack floor, pending, pull requests,
//! redeliveries, pause): events in, commands out; no clock, no I/O. The tick is in `tick.rs`.

mod log;
mod tick;
mod waiting;

pub(crate) use log::{Delta, LogProgress};

#[cfg(test)]
pub(crate) use tick::TICK_MSGS;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use natrium_store::StreamStore;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::start::{count_pending, initial_cursor, parse_time};
use super::wire::{status, status_msg, AckKind, Command, Save};
use crate::jetstream::config::Retention;
use crate::jetstream::consumer_config::{AckPolicy, ConsumerConfig};
use waiting::{Pin, PullRequest};

/// The time an event happens at: monotonic for deadlines, wall clock for `pause_until`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct At {
    pub mono: Instant,
    pub wall: SystemTime,
}

impl At {
    pub(crate) fn now() -> At {
        At {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// What a consumer is, besides its config: names, and what its stream decides for it.
pub(crate) struct Identity<'a> {
    pub stream: &'a str,
    pub name: &'a str,
    pub retention: Retention,
    /// The stream's default dead-letter subject (its `dead_letter_subject` metadata).
    pub dead_letter: Option<String>,
    /// Whether the state is saved (durable consumers of file streams).
    pub persisted: bool,
    /// Whether its progress goes through a replicated stream's log (`take_delta`) instead.
    pub replicated: bool,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    dseq: u64,
    /// When the message is due for redelivery (not persisted; now + ack_wait on restart).
    deadline: Instant,
}

/// What is persisted of a consumer's progress (the body of its state document).
#[derive(Debug, Default, Serialize, Deserialize)]
struct SavedState {
    sseq: u64,
    dseq: u64,
    floor_s: u64,
    floor_d: u64,
    pending: Vec<(u64, u64)>,
    deliveries: Vec<(u64, u64)>,
    start_list: Vec<u64>,
}

/// A consumer's figures, for its info document and monitoring.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Progress {
    /// (consumer sequence, stream sequence) of the last delivery.
    pub delivered: (u64, u64),
    /// (consumer sequence, stream sequence) below which everything is acknowledged.
    pub ack_floor: (u64, u64),
    pub num_ack_pending: u64,
    pub num_redelivered: u64,
    pub num_waiting: u64,
    pub num_pending: u64,
    pub paused_until: Option<SystemTime>,
    /// When a message was last delivered, and last acknowledged.
    pub last_delivered: Option<SystemTime>,
    pub last_ack: Option<SystemTime>,
    /// The first priority group, with the pin id and since when (pinned_client).
    pub priority_group: Option<(String, Option<(String, SystemTime)>)>,
}

/// What a tick decided: the save to make first, then the commands in order.
#[derive(Debug)]
pub(crate) struct TickOutput {
    pub save: Option<Save>,
    pub commands: Vec<Command>,
}

pub(crate) struct ConsumerState {
    cfg: Arc<ConsumerConfig>,
    filters: Vec<String>,
    /// The push consumer's deliver subject.
    push_route: Option<Arc<str>>,
    stream: String,
    name: String,
    /// `$JS.ACK.<stream>.<consumer>.`, completed per delivery.
    ack_prefix: String,
    /// Whether retention (interest, work queue) needs to hear of messages it is done with.
    releases: bool,
    stream_dead_letter: Option<String>,
    persisted: bool,

    /// Stream sequence of the last message delivered for the first time.
    sseq: u64,
    /// Consumer sequence of the last delivery.
    dseq: u64,
    floor_s: u64,
    floor_d: u64,
    pending: BTreeMap<u64, Pending>,
    /// Deliveries so far of each pending message.
    deliveries: FxHashMap<u64, u64>,
    /// Pending messages due for redelivery, by stream sequence.
    redeliver: BTreeSet<u64>,
    /// For `last_per_subject`: the sequences to deliver before continuing after `sseq`.
    start_list: VecDeque<u64>,
    waiting: VecDeque<PullRequest>,
    num_pending: u64,
    last_active: Instant,
    /// A push consumer's deliver subject had interest at the last look (`inactive`).
    was_bound: bool,
    last_delivery: Instant,
    /// Earliest time the next delivery may leave (rate limit, original replay).
    not_before: Option<Instant>,
    /// Original replay: (timestamp of the last message sent, when it was sent).
    replay_mark: Option<(i64, Instant)>,
    delivered_since_fc: u64,
    fc_seq: u64,
    paused_until: Option<SystemTime>,
    /// Messages were removed from inside the stream since `num_pending` was counted.
    stale: bool,
    /// Changed since the last save.
    dirty: bool,
    /// Deliveries were made since the state was last synced: the next save is fsynced before
    /// they leave (a delivery is never forgotten, so no message comes back as new after a crash).
    unsynced_deliveries: bool,
    /// Sync acks to answer after the next save.
    sync_replies: Vec<String>,
    /// Messages acked since the last tick, released to retention after the next save (with
    /// the next delta, when replicated: retention acts when it is applied).
    acked: Vec<u64>,
    /// Replicated: its progress goes to the log as deltas from this base.
    replicated: bool,
    base: Option<log::Base>,
    /// The pinned client of a pinned_client consumer.
    pin: Option<Pin>,
    /// A monotonic instant and the wall time then, to turn event instants into wall times.
    epoch: (Instant, SystemTime),
    /// When a message was last delivered and last acknowledged (`last_active` in the info).
    last_delivered_at: Option<SystemTime>,
    last_ack_at: Option<SystemTime>,
}

impl ConsumerState {
    /// A consumer's state: restored from `saved` (its state document), or starting where its
    /// deliver policy says.
    pub(crate) fn new(
        id: Identity<'_>,
        cfg: ConsumerConfig,
        store: &dyn StreamStore,
        saved: Option<&[u8]>,
        now: Instant,
    ) -> ConsumerState {
        let filters = cfg.filters();
        let mut st = ConsumerState {
            push_route: cfg.deliver_subject.as_deref().map(Arc::from),
            paused_until: cfg.pause_until.as_deref().and_then(parse_time),
            ack_prefix: format!("$JS.ACK.{}.{}.", id.stream, id.name),
            stream: id.stream.to_string(),
            name: id.name.to_string(),
            releases: id.retention != Retention::Limits,
            stream_dead_letter: id.dead_letter,
            persisted: id.persisted,
            replicated: id.replicated,
            base: None,
            sseq: 0,
            dseq: 0,
            floor_s: 0,
            floor_d: 0,
            pending: BTreeMap::new(),
            deliveries: FxHashMap::default(),
            redeliver: BTreeSet::new(),
            start_list: VecDeque::new(),
            waiting: VecDeque::new(),
            num_pending: 0,
            last_active: now,
            was_bound: false,
            last_delivery: now,
            not_before: None,
            replay_mark: None,
            delivered_since_fc: 0,
            fc_seq: 0,
            stale: false,
            dirty: false,
            unsynced_deliveries: false,
            sync_replies: Vec::new(),
            acked: Vec::new(),
            pin: None,
            epoch: (now, SystemTime::now()),
            last_delivered_at: None,
            last_ack_at: None,
            filters,
            cfg: Arc::new(cfg),
        };
        match saved.and_then(|b| serde_json::from_slice::<SavedState>(b).ok()) {
            Some(s) => {
                let deadline = now + st.cfg.ack_wait();
                st.sseq = s.sseq;
                st.dseq = s.dseq;
                st.floor_s = s.floor_s;
                st.floor_d = s.floor_d;
                st.pending = s
                    .pending
                    .into_iter()
                    .map(|(sseq, dseq)| (sseq, Pending { dseq, deadline }))
                    .collect();
                st.deliveries = s.deliveries.into_iter().collect();
                st.start_list = s.start_list.into();
            }
            None => {
                let (sseq, start_list) = initial_cursor(&st.cfg, &st.filters, store);
                st.sseq = sseq;
                st.floor_s = sseq;
                st.start_list = start_list;
            }
        }
        st.num_pending = count_pending(store, &st.filters, st.sseq) + st.start_list.len() as u64;
        if st.replicated && saved.is_some() {
            // What the replicas hold already.
            st.base = Some(log::Base::of(&st));
        }
        st
    }

    pub(crate) fn config(&self) -> &Arc<ConsumerConfig> {
        &self.cfg
    }

    /// The wall time at monotonic instant `t`.
    fn wall(&self, t: Instant) -> SystemTime {
        let (mono, wall) = self.epoch;
        match t.checked_duration_since(mono) {
            Some(d) => wall + d,
            None => wall - mono.duration_since(t),
        }
    }

    /// A new config (an update or a pause); the caller runs a tick.
    pub(crate) fn set_config(&mut self, cfg: ConsumerConfig) {
        self.paused_until = cfg.pause_until.as_deref().and_then(parse_time);
        self.filters = cfg.filters();
        self.push_route = cfg.deliver_subject.as_deref().map(Arc::from);
        self.cfg = Arc::new(cfg);
    }

    /// The push consumer's deliver subject, whose interest the task checks before a tick.
    pub(crate) fn push_route(&self) -> Option<Arc<str>> {
        self.push_route.clone()
    }

    fn matches(&self, subject: &[u8]) -> bool {
        self.filters.is_empty()
            || self
                .filters
                .iter()
                .any(|f| natrium_subjects::matches(f.as_bytes(), subject))
    }

    /// Event: the stream stored message `seq` on `subject`. Whether it is one for this consumer
    /// (then the caller runs a tick). A tick that ran between the store and this event may have
    /// delivered it already (the cursor is at or past `seq`): then it is not pending, and
    /// counting it would leave a caught-up consumer one message behind.
    pub(crate) fn on_stored(&mut self, seq: u64, subject: &[u8]) -> bool {
        if !self.matches(subject) {
            return false;
        }
        if seq > self.sseq {
            self.num_pending += 1;
        }
        true
    }

    /// Whether this consumer still needs message `seq` on `subject` (interest retention).
    pub(crate) fn needs(&self, seq: u64, subject: &[u8]) -> bool {
        if !self.matches(subject) || seq <= self.floor_s {
            return false;
        }
        seq > self.sseq || self.pending.contains_key(&seq) || self.start_list.contains(&seq)
    }

    /// Event: messages below `first_seq` were removed. Only a cursor below it had any of them
    /// still to deliver; then all that is left is after the cursor, which counts cheaply.
    pub(crate) fn removed_front(&mut self, first_seq: u64, store: &dyn StreamStore) {
        if self.sseq + 1 < first_seq {
            self.num_pending =
                count_pending(store, &self.filters, self.sseq) + self.start_list.len() as u64;
        }
    }

    /// Event: messages were removed from inside the stream; `refresh` recounts.
    pub(crate) fn mark_stale(&mut self) {
        self.stale = true;
    }

    /// Recounts what is pending if messages went from inside the stream since the last count.
    pub(crate) fn refresh(&mut self, store: &dyn StreamStore) {
        if std::mem::take(&mut self.stale) {
            self.num_pending =
                count_pending(store, &self.filters, self.sseq) + self.start_list.len() as u64;
        }
    }

    /// Event: messages were removed in bulk (purge): recounts what is pending and forgets pending
    /// messages that are gone. The caller runs a tick.
    pub(crate) fn recount(&mut self, store: &dyn StreamStore) {
        let start = self.start_list.len() as u64;
        self.num_pending = count_pending(store, &self.filters, self.sseq) + start;
        let first = store.state().first_seq;
        // Pending messages that are gone can no longer be acked or redelivered.
        let gone: Vec<u64> = self
            .pending
            .keys()
            .copied()
            .filter(|s| *s < first)
            .collect();
        for s in gone {
            self.pending.remove(&s);
            self.redeliver.remove(&s);
            self.deliveries.remove(&s);
        }
        self.update_floor();
        self.dirty = true;
    }

    /// Event: an ack of message `sseq`, with the reply subject of a sync ack. Advisories, dead
    /// letters and releases it causes are returned to run at once; acks and sync-ack answers wait
    /// for the next tick's save.
    pub(crate) fn ack(
        &mut self,
        sseq: u64,
        kind: AckKind<'_>,
        reply: Option<&str>,
        now: Instant,
    ) -> Vec<Command> {
        self.last_active = now;
        let mut out = Vec::new();
        // Every ack with a reply is answered (after the save it causes, if any), as nats-server
        // answers them; `+NXT` uses its reply for the pull request instead.
        let answer = reply.filter(|_| !matches!(kind, AckKind::Next(_)));
        if let Some(r) = answer {
            self.sync_replies.push(r.to_string());
        }
        match kind {
            AckKind::Ack => {
                if self.ack_upto(sseq, now) {
                    out.push(Command::Tick);
                }
            }
            AckKind::Next(body) => {
                if self.ack_upto(sseq, now) {
                    out.push(Command::Tick);
                }
                if let Some(r) = reply {
                    out.extend(self.pull(r, body, now));
                }
            }
            AckKind::Nak(delay) => {
                if let Some(p) = self.pending.get_mut(&sseq) {
                    match delay {
                        Some(d) if !d.is_zero() => p.deadline = now + d,
                        _ => {
                            self.redeliver.insert(sseq);
                        }
                    }
                    let dseq = p.dseq;
                    let deliveries = self.deliveries.get(&sseq).copied().unwrap_or(1);
                    out.push(Command::Advisory {
                        kind: "MSG_NAKED",
                        body: json!({"type": "io.nats.jetstream.advisory.v1.nak", "consumer_seq": dseq, "stream_seq": sseq, "deliveries": deliveries}),
                    });
                    out.push(Command::Tick);
                }
            }
            AckKind::Progress => {
                let wait = self.cfg.ack_wait();
                if let Some(p) = self.pending.get_mut(&sseq) {
                    p.deadline = now + wait;
                }
            }
            AckKind::Term(reason) => {
                if let Some(p) = self.pending.remove(&sseq) {
                    self.redeliver.remove(&sseq);
                    let deliveries = self.deliveries.remove(&sseq).unwrap_or(1);
                    self.update_floor();
                    self.dirty = true;
                    self.last_ack_at = Some(self.wall(now));
                    let why = if reason.is_empty() {
                        "terminated".to_string()
                    } else {
                        format!("terminated: {reason}")
                    };
                    out.push(Command::Advisory {
                        kind: "MSG_TERMINATED",
                        body: json!({"type": "io.nats.jetstream.advisory.v1.terminated", "consumer_seq": p.dseq, "stream_seq": sseq, "deliveries": deliveries, "reason": reason}),
                    });
                    out.extend(self.dead_letter(sseq, deliveries, why));
                    self.release(sseq, &mut out);
                    out.push(Command::Tick);
                }
            }
            AckKind::Other => {}
        }
        if answer.is_some() && !out.contains(&Command::Tick) {
            out.push(Command::Tick);
        }
        out
    }

    /// Records an acknowledgement (all up to `sseq` under `AckPolicy::All`); whether anything was
    /// pending.
    fn ack_upto(&mut self, sseq: u64, now: Instant) -> bool {
        let acked: Vec<u64> = match self.cfg.ack_policy {
            AckPolicy::All => self.pending.range(..=sseq).map(|(s, _)| *s).collect(),
            _ => self
                .pending
                .contains_key(&sseq)
                .then_some(sseq)
                .into_iter()
                .collect(),
        };
        for s in &acked {
            self.pending.remove(s);
            self.redeliver.remove(s);
            self.deliveries.remove(s);
        }
        if acked.is_empty() {
            return false;
        }
        self.last_ack_at = Some(self.wall(now));
        self.update_floor();
        self.dirty = true;
        if self.releases {
            self.acked.extend(acked);
        }
        true
    }

    /// A dead-letter command for message `sseq`, when a dead-letter subject is configured (the
    /// consumer's `dead_letter_subject` metadata, else the stream's).
    fn dead_letter(&self, seq: u64, deliveries: u64, reason: String) -> Option<Command> {
        let template = self
            .cfg
            .metadata
            .as_ref()
            .and_then(|m| m.get("dead_letter_subject").cloned())
            .or_else(|| self.stream_dead_letter.clone())?;
        Some(Command::DeadLetter {
            seq,
            deliveries,
            reason,
            template,
        })
    }

    /// The consumer is done with message `seq`: retention hears of it now, or (replicated)
    /// when the next delta is applied.
    fn release(&mut self, seq: u64, out: &mut Vec<Command>) {
        if !self.releases {
            return;
        }
        if self.replicated {
            self.acked.push(seq);
            self.dirty = true;
        } else {
            out.push(Command::Release(seq));
        }
    }

    /// Message `seq` ran out of deliveries (`deliveries` made): advisory, dead letter, release.
    fn exhausted(&mut self, seq: u64, deliveries: u64, out: &mut Vec<Command>) {
        out.push(Command::Advisory {
            kind: "MAX_DELIVERIES",
            body: json!({"type": "io.nats.jetstream.advisory.v1.max_deliver", "stream_seq": seq, "deliveries": deliveries}),
        });
        out.extend(self.dead_letter(seq, deliveries, "max_deliveries".into()));
        self.release(seq, out);
    }

    /// Event: `$JS.API.CONSUMER.RESET` to stream sequence `seq` (0: just past the ack floor), as
    /// nats-server 2.14 does: pending acks and redeliveries are forgotten and delivery starts
    /// over from there. The sequence it starts from, or why it can not. The caller runs a tick.
    pub(crate) fn reset(&mut self, seq: u64, store: &dyn StreamStore) -> Result<u64, &'static str> {
        use crate::jetstream::consumer_config::DeliverPolicy;
        let seq = if seq == 0 {
            self.floor_s + 1
        } else {
            match self.cfg.deliver_policy {
                DeliverPolicy::All => seq,
                DeliverPolicy::ByStartSequence => {
                    if seq < self.cfg.opt_start_seq.unwrap_or(0) {
                        return Err("below start seq");
                    }
                    seq
                }
                DeliverPolicy::ByStartTime => {
                    let (cursor, _) = initial_cursor(&self.cfg, &self.filters, store);
                    if seq < cursor + 1 {
                        return Err("below start time");
                    }
                    seq
                }
                _ => return Err("not allowed"),
            }
        }
        .max(1);
        self.pending.clear();
        self.deliveries.clear();
        self.redeliver.clear();
        self.start_list.clear();
        self.sseq = seq - 1;
        self.dseq = 0;
        self.floor_s = seq - 1;
        self.floor_d = 0;
        self.last_delivered_at = None;
        self.last_ack_at = None;
        self.num_pending = count_pending(store, &self.filters, self.sseq);
        self.dirty = true;
        self.unsynced_deliveries = true;
        Ok(seq)
    }

    /// Event: the consumer is deleted; waiting pull requests are told.
    pub(crate) fn close(&mut self) -> Vec<Command> {
        self.waiting
            .drain(..)
            .map(|r| Command::Status(status_msg(&r.reply, status("409 Consumer Deleted", &[]))))
            .collect()
    }

    /// Whether an ephemeral consumer has been inactive past its `inactive_threshold` at `now`
    /// (a push consumer is active while its deliver subject has interest, `push_bound`, and
    /// inactive from the first look that found none).
    pub(crate) fn inactive(&mut self, now: Instant, push_bound: bool) -> bool {
        let cfg = &self.cfg;
        if cfg.is_durable() || cfg.inactive_threshold <= 0 {
            return false;
        }
        let threshold = Duration::from_nanos(cfg.inactive_threshold as u64);
        let active = match &cfg.deliver_subject {
            // The first look without interest counts from now: the task looks when the
            // last subscription goes (it is woken then), not only at its next poll.
            Some(_) => std::mem::replace(&mut self.was_bound, push_bound) || push_bound,
            None => !self.waiting.is_empty(),
        };
        if active {
            self.last_active = now;
            return false;
        }
        now.saturating_duration_since(self.last_active) > threshold
    }

    /// Moves the ack floor up to just below the oldest pending message.
    fn update_floor(&mut self) {
        match self.pending.iter().next() {
            Some((s, p)) => {
                self.floor_s = self.floor_s.max(s.saturating_sub(1));
                self.floor_d = self.floor_d.max(p.dseq.saturating_sub(1));
            }
            None => {
                self.floor_s = self.sseq;
                self.floor_d = self.dseq;
            }
        }
    }

    /// The save a tick makes when the state changed: fsynced when it records deliveries about to
    /// leave or sync acks wait for it; other changes (plain acks, ack-none cursors) are written
    /// without a sync: they survive the process being killed, and a power loss can only bring a
    /// message back as a redelivery.
    fn save(&mut self, sync_acks: bool) -> Option<Save> {
        if self.replicated {
            // The task takes the delta (`take_delta`) in log order; sync acks wait for it.
            let due = self.dirty || !self.acked.is_empty() || sync_acks;
            self.unsynced_deliveries = false;
            return due.then(|| Save {
                body: Vec::new(),
                sync: sync_acks,
            });
        }
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        let sync = std::mem::take(&mut self.unsynced_deliveries) || sync_acks;
        if !self.persisted {
            return None;
        }
        let saved = SavedState {
            sseq: self.sseq,
            dseq: self.dseq,
            floor_s: self.floor_s,
            floor_d: self.floor_d,
            pending: self.pending.iter().map(|(s, p)| (*s, p.dseq)).collect(),
            deliveries: self.deliveries.iter().map(|(s, d)| (*s, *d)).collect(),
            start_list: self.start_list.iter().copied().collect(),
        };
        Some(Save {
            body: serde_json::to_vec(&saved).unwrap_or_default(),
            sync,
        })
    }

    /// The state document's body now (replicated consumers send it to their replicas).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let saved = SavedState {
            sseq: self.sseq,
            dseq: self.dseq,
            floor_s: self.floor_s,
            floor_d: self.floor_d,
            pending: self.pending.iter().map(|(s, p)| (*s, p.dseq)).collect(),
            deliveries: self.deliveries.iter().map(|(s, d)| (*s, *d)).collect(),
            start_list: self.start_list.iter().copied().collect(),
        };
        serde_json::to_vec(&saved).unwrap_or_default()
    }

    /// The consumer's figures now.
    pub(crate) fn progress(&self) -> Progress {
        Progress {
            delivered: (self.dseq, self.sseq),
            ack_floor: (self.floor_d, self.floor_s),
            num_ack_pending: self.pending.len() as u64,
            num_redelivered: self.deliveries.values().filter(|d| **d > 1).count() as u64,
            num_waiting: self.waiting.len() as u64,
            num_pending: self.num_pending,
            paused_until: self.paused_until,
            last_delivered: self.last_delivered_at,
            last_ack: self.last_ack_at,
            priority_group: self.priority_groups(),
        }
    }
}
