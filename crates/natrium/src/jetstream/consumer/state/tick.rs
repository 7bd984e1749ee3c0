//! The consumer state machine's tick: ack deadlines become redeliveries (or run out), pull
//! requests expire or get heartbeats, and up to `TICK_MSGS` messages are delivered.

use std::time::{Duration, Instant};

use natrium_store::{StoredMsg, StreamStore};

use super::{At, ConsumerState, Pending, TickOutput};
use crate::jetstream::consumer::start::next_matching;
use crate::jetstream::consumer::wire::{ack_subject, status, status_msg, Command, Outgoing};
use crate::jetstream::consumer_config::{AckPolicy, ConsumerConfig, PriorityPolicy, ReplayPolicy};

/// Deliveries decided per tick; the task publishes them and comes back for more.
pub(crate) const TICK_MSGS: usize = 1024;

/// Where a message to deliver came from (and goes back to if it is not delivered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Redelivery,
    StartList,
    New,
}

/// A message's header block without its closing blank line (a bare `NATS/1.0` line if it has
/// none), ready for more headers.
fn open_headers(h: Option<&[u8]>) -> String {
    match h {
        Some(orig) => {
            String::from_utf8_lossy(orig)
                .trim_end_matches("\r\n")
                .to_string()
                + "\r\n"
        }
        None => "NATS/1.0\r\n".to_string(),
    }
}

/// `h` with a `Nats-Pin-Id` header added.
fn with_pin(h: Option<&[u8]>, pin: &str) -> bytes::Bytes {
    let mut s = open_headers(h);
    s.push_str("Nats-Pin-Id: ");
    s.push_str(pin);
    s.push_str("\r\n\r\n");
    bytes::Bytes::from(s)
}

/// A stand-in pin id for sizing a delivery before its request (and pin) is chosen.
const PIN_PLACEHOLDER: &str = "0000000000000000000000";

/// Deliveries to a push consumer between two flow-control requests.
const FLOW_CONTROL_EVERY: u64 = 512;

impl ConsumerState {
    /// The earliest time a tick has something to do without another event. Interest coming
    /// to a push consumer's deliver subject is an event (the task watches it; see `task.rs`).
    pub(crate) fn next_deadline(&self, at: At) -> Option<Instant> {
        let cfg = &self.cfg;
        let now = at.mono;
        let mut t: Option<Instant> = None;
        let mut min = |x: Instant| t = Some(t.map_or(x, |y| y.min(x)));
        if let Some((_, p)) = self
            .pending
            .iter()
            .filter(|(s, _)| !self.redeliver.contains(s))
            .min_by_key(|(_, p)| p.deadline)
        {
            min(p.deadline);
        }
        for r in &self.waiting {
            if let Some(e) = r.expires {
                min(e);
            }
            if let Some(h) = r.next_heartbeat {
                min(h);
            }
        }
        if let Some(nb) = self.not_before {
            min(nb);
        }
        if let Some(p) = self.pin_deadline() {
            min(p);
        }
        if cfg.idle_heartbeat > 0 {
            min(self.last_delivery + Duration::from_nanos(cfg.idle_heartbeat as u64));
        }
        if !cfg.is_durable() && cfg.inactive_threshold > 0 {
            let threshold = Duration::from_nanos(cfg.inactive_threshold as u64);
            if cfg.deliver_subject.is_some() {
                // The task is woken when its deliver subject's last subscriber goes: only
                // without interest is there a time to look at.
                if !self.was_bound {
                    min(self.last_active + threshold);
                }
            } else {
                min(now + threshold.min(Duration::from_secs(1)));
            }
        }
        if let Some(p) = self.paused_until {
            if let Ok(d) = p.duration_since(at.wall) {
                min(now + d);
            }
        }
        t
    }

    /// Event: a timer or a wake-up at `at`. Ack deadlines that passed become redeliveries (or
    /// run out of deliveries), pull requests expire or get heartbeats, and up to `TICK_MSGS`
    /// messages are delivered (a push consumer only while `push_bound`).
    pub(crate) fn tick(&mut self, store: &dyn StreamStore, at: At, push_bound: bool) -> TickOutput {
        let cfg = self.cfg.clone();
        let now = at.mono;
        let mut out = Vec::new();
        self.refresh(store);
        let had_replies = !self.sync_replies.is_empty();
        if !self.replicated {
            out.extend(self.acked.drain(..).map(Command::Release));
        }
        out.extend(self.sync_replies.drain(..).map(Command::AckReply));
        // Ack deadlines that passed: due for redelivery.
        if cfg.ack_policy != AckPolicy::None {
            let due: Vec<u64> = self
                .pending
                .iter()
                .filter(|(_, p)| p.deadline <= now)
                .map(|(s, _)| *s)
                .collect();
            for s in due {
                let deliveries = self.deliveries.get(&s).copied().unwrap_or(1);
                if cfg.max_deliver > 0 && deliveries as i64 >= cfg.max_deliver {
                    // Its last allowed delivery went unacknowledged: it is done.
                    self.pending.remove(&s);
                    self.deliveries.remove(&s);
                    self.exhausted(s, deliveries, &mut out);
                    self.update_floor();
                    self.dirty = true;
                    continue;
                }
                self.redeliver.insert(s);
                if let Some(p) = self.pending.get_mut(&s) {
                    p.deadline = now + Duration::from_secs(3600);
                }
            }
        }
        self.expire_requests(now, &mut out);
        self.expire_pin(now, &mut out);
        let paused = self.paused_until.is_some_and(|p| p > at.wall);
        let more = !paused && self.deliver(&cfg, store, at, push_bound, &mut out);
        // Idle heartbeat for push consumers.
        if cfg.idle_heartbeat > 0 {
            if let Some(d) = &cfg.deliver_subject {
                if now.saturating_duration_since(self.last_delivery)
                    >= Duration::from_nanos(cfg.idle_heartbeat as u64)
                {
                    self.last_delivery = now;
                    out.push(self.heartbeat(d));
                }
            }
        }
        if more {
            out.push(Command::Tick);
        }
        TickOutput {
            save: self.save(had_replies),
            commands: out,
        }
    }

    /// Delivers what is due; whether it stopped at `TICK_MSGS` with more to deliver.
    fn deliver(
        &mut self,
        cfg: &ConsumerConfig,
        store: &dyn StreamStore,
        at: At,
        push_bound: bool,
        out: &mut Vec<Command>,
    ) -> bool {
        let now = at.mono;
        let push_route = match &self.push_route {
            Some(_) if !push_bound => return false,
            r => r.clone(),
        };
        let acked = cfg.ack_policy != AckPolicy::None;
        let mut sent = 0;
        loop {
            if sent == TICK_MSGS {
                // Publish these first (and let a lagging receiver catch up); the task comes
                // straight back for the rest.
                return true;
            }
            if acked && cfg.max_ack_pending > 0 && self.pending.len() as i64 >= cfg.max_ack_pending
            {
                // Redeliveries of already-pending messages may still go.
                if self.redeliver.is_empty() {
                    return false;
                }
            }
            if self.not_before.is_some_and(|t| t > now) {
                return false;
            }
            if push_route.is_none() && !self.has_request() {
                return false;
            }
            // What?
            let cursor = self.sseq;
            let Some((msg, from)) = self.next_message(store) else {
                // The end of the stream: no_wait requests end here.
                self.end_no_wait(out);
                return false;
            };
            let deliveries = if acked {
                self.deliveries.get(&msg.seq).copied().unwrap_or(0) + 1
            } else {
                1
            };
            if cfg.max_deliver > 0 && deliveries as i64 > cfg.max_deliver {
                // Exhausted: no more deliveries.
                self.pending.remove(&msg.seq);
                self.deliveries.remove(&msg.seq);
                self.update_floor();
                self.dirty = true;
                self.exhausted(msg.seq, deliveries - 1, out);
                continue;
            }
            let dseq = self.dseq + 1;
            let reply = ack_subject(
                &self.ack_prefix,
                [
                    deliveries,
                    msg.seq,
                    dseq,
                    msg.ts.max(0) as u64,
                    self.num_pending,
                ],
            );
            let (mut headers, payload) = if cfg.headers_only {
                let mut h = open_headers(msg.headers.as_deref());
                h.push_str(&format!("Nats-Msg-Size: {}\r\n\r\n", msg.payload.len()));
                (Some(bytes::Bytes::from(h)), bytes::Bytes::new())
            } else {
                (msg.headers.clone(), msg.payload.clone())
            };
            // Where to?
            let (route, request) = match &push_route {
                Some(d) => (d.clone(), None),
                None => {
                    let pinned = cfg.priority_policy == PriorityPolicy::PinnedClient;
                    let hdr_len = if pinned {
                        // As it will be with a pin id (all pin ids have the same length).
                        with_pin(headers.as_deref(), PIN_PLACEHOLDER).len()
                    } else {
                        headers.as_ref().map_or(0, |h| h.len())
                    };
                    let size = msg.subject.len() + reply.len() + hdr_len + payload.len();
                    match self.next_request(size as u64, now, at.wall, out) {
                        Some(i) => {
                            if let Some(pin) = self.pin.as_ref().filter(|_| pinned) {
                                headers = Some(with_pin(headers.as_deref(), &pin.id));
                            }
                            (self.waiting[i].reply.clone(), Some((i, size as u64)))
                        }
                        None => {
                            // Nobody can take it now: it waits for the next request.
                            self.put_back(msg.seq, from, cursor);
                            return false;
                        }
                    }
                }
            };
            self.dseq = dseq;
            sent += 1;
            if acked {
                self.deliveries.insert(msg.seq, deliveries);
                self.pending.insert(
                    msg.seq,
                    Pending {
                        dseq,
                        deadline: now + cfg.redelivery_delay(deliveries),
                    },
                );
            } else {
                self.floor_s = self.floor_s.max(msg.seq);
                self.floor_d = dseq;
            }
            self.dirty = true;
            self.unsynced_deliveries |= acked;
            self.last_delivery = now;
            self.last_delivered_at = Some(at.wall);
            // Pacing: original replay holds a message back until its time comes.
            if cfg.replay_policy == ReplayPolicy::Original && from != Source::Redelivery {
                if let Some((last_ts, mark)) = self.replay_mark {
                    let due = mark + Duration::from_nanos((msg.ts - last_ts).max(0) as u64);
                    if due > now {
                        // Take it back; it goes when its time comes.
                        self.dseq -= 1;
                        self.pending.remove(&msg.seq);
                        self.deliveries.remove(&msg.seq);
                        self.put_back(msg.seq, from, cursor);
                        self.not_before = Some(due);
                        return false;
                    }
                }
                self.replay_mark = Some((msg.ts, now));
            }
            let size =
                msg.payload.len() + msg.headers.as_ref().map_or(0, |h| h.len()) + msg.subject.len();
            out.push(Command::Deliver {
                seq: msg.seq,
                msg: Outgoing {
                    route: route.clone(),
                    subject: msg.subject,
                    reply: Some(reply),
                    headers,
                    payload,
                },
            });
            if let Some((i, size)) = request {
                self.served(i, size, now, out);
            }
            if cfg.rate_limit_bps > 0 {
                let secs = (size as f64 * 8.0) / cfg.rate_limit_bps as f64;
                self.not_before = Some(now + Duration::from_secs_f64(secs));
            }
            if cfg.flow_control {
                self.delivered_since_fc += 1;
                if self.delivered_since_fc >= FLOW_CONTROL_EVERY {
                    self.delivered_since_fc = 0;
                    self.fc_seq += 1;
                    let mut m = status_msg(&route, status("100 FlowControl Request", &[]));
                    m.reply = Some(format!(
                        "$JS.FC.{}.{}.{}",
                        self.stream, self.name, self.fc_seq
                    ));
                    out.push(Command::Status(m));
                }
            }
            if self.not_before.is_some() {
                return false;
            }
        }
    }

    /// Message `seq`, taken from `from` with the cursor at `cursor` before, was not delivered
    /// after all: it goes back where it came from.
    fn put_back(&mut self, seq: u64, from: Source, cursor: u64) {
        match from {
            Source::Redelivery => {
                self.redeliver.insert(seq);
            }
            Source::StartList => {
                self.start_list.push_front(seq);
                self.sseq = cursor;
                self.num_pending += 1;
            }
            Source::New => {
                self.sseq = cursor;
                self.num_pending += 1;
            }
        }
    }

    /// The next message to deliver: a due redelivery first, then the start list, then new ones.
    fn next_message(&mut self, store: &dyn StreamStore) -> Option<(StoredMsg, Source)> {
        while let Some(seq) = self.redeliver.pop_first() {
            if !self.pending.contains_key(&seq) {
                continue;
            }
            match store.load_msg(seq) {
                Ok(m) => return Some((m, Source::Redelivery)),
                Err(_) => {
                    // Gone from the stream (limits, purge): nothing left to redeliver.
                    self.pending.remove(&seq);
                    self.deliveries.remove(&seq);
                    self.update_floor();
                    self.dirty = true;
                }
            }
        }
        while let Some(seq) = self.start_list.pop_front() {
            self.num_pending = self.num_pending.saturating_sub(1);
            if let Ok(m) = store.load_msg(seq) {
                self.sseq = self.sseq.max(seq);
                return Some((m, Source::StartList));
            }
        }
        let m = next_matching(store, &self.filters, self.sseq + 1)?;
        self.sseq = m.seq;
        self.num_pending = self.num_pending.saturating_sub(1);
        Some((m, Source::New))
    }
}
