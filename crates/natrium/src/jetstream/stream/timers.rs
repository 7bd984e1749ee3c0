//! A stream's timed work, decided in one place (its timer task): max age, per-message TTLs
//! with subject delete markers, and message schedules (`Nats-Schedule: @at <time>`). Markers
//! and scheduled messages are stored through the ingest path like any message.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::hook::{Proposal, Replication};
use super::ingest::Inbound;
use super::{headers, Stream};
use crate::jetstream::config::StreamConfig;
use crate::util::time::now_nanos;

/// Most messages one tick expires by age (the next tick goes on).
const MAX_AGE_BATCH: usize = 100_000;

/// Due times (ns since the epoch) of TTL'd and scheduled messages, by sequence.
#[derive(Default)]
pub(crate) struct Timers {
    pub(super) ttls: Mutex<BTreeSet<(i64, u64)>>,
    pub(super) schedules: Mutex<BTreeSet<(i64, u64)>>,
    wake: Notify,
}

impl Timers {
    pub(crate) fn add_ttl(&self, at: i64, seq: u64) {
        let earlier = {
            let mut t = self.ttls.lock();
            let earlier = t.first().is_none_or(|(first, _)| at < *first);
            t.insert((at, seq));
            earlier
        };
        if earlier {
            self.wake.notify_one();
        }
    }

    pub(crate) fn add_schedule(&self, at: i64, seq: u64) {
        let earlier = {
            let mut s = self.schedules.lock();
            let earlier = s.first().is_none_or(|(first, _)| at < *first);
            s.insert((at, seq));
            earlier
        };
        if earlier {
            self.wake.notify_one();
        }
    }

    /// Wakes the timer task (its due times changed).
    pub(super) fn wake_now(&self) {
        self.wake.notify_one();
    }

    fn next_due(&self) -> Option<i64> {
        let t = self.ttls.lock().first().map(|(at, _)| *at);
        let s = self.schedules.lock().first().map(|(at, _)| *at);
        match (t, s) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(super) fn take_due(set: &Mutex<BTreeSet<(i64, u64)>>, now: i64) -> Vec<u64> {
        let mut s = set.lock();
        let mut due = Vec::new();
        while let Some(&(at, seq)) = s.first() {
            if at > now {
                break;
            }
            s.pop_first();
            due.push(seq);
        }
        due.sort_unstable();
        due
    }
}

/// When a stored schedule (`Nats-Schedule: @at <RFC 3339>`) is due, in ns since the epoch.
pub(crate) fn schedule_time(hdrs: Option<&[u8]>) -> Option<i64> {
    let v = headers::get(hdrs, headers::SCHEDULE)?;
    let at = v.strip_prefix("@at ")?;
    let t = crate::jetstream::consumer::parse_time(at)?;
    Some(crate::util::time::unix_nanos(t))
}

impl Stream {
    /// Rebuilds the TTL and schedule timers from the stored messages (on recovery): one pass
    /// over the stream, only for streams that allow TTLs or schedules.
    pub(super) fn rebuild_timers(&self) {
        self.timers.ttls.lock().clear();
        self.timers.schedules.lock().clear();
        let cfg = self.config();
        if !cfg.allow_msg_ttl && !cfg.allow_msg_schedules {
            return;
        }
        let mut seq = self.store.state().first_seq.max(1);
        while let Ok(m) = self.store.load_next_msg(b">", seq) {
            seq = m.seq + 1;
            let h = m.headers.as_deref();
            if h.is_none() {
                continue;
            }
            if cfg.allow_msg_ttl {
                if let Some(t) = headers::get(h, headers::MSG_TTL)
                    .as_deref()
                    .and_then(headers::parse_ttl)
                    .filter(|t| *t > 0)
                {
                    self.timers.add_ttl(m.ts + t * 1_000_000_000, m.seq);
                }
            }
            if cfg.allow_msg_schedules {
                if let Some(at) = schedule_time(h) {
                    self.timers.add_schedule(at, m.seq);
                }
            }
        }
    }

    /// The timer task: expires by age and TTL, fires schedules. On a replica of a replicated
    /// stream the leader decides what is due and proposes it (`replicated_tick`).
    pub(super) async fn timer_loop(self: Arc<Self>) {
        // A replica's leader: the highest sequence it proposed to expire by age.
        let mut aged = 0u64;
        loop {
            let cfg = Arc::clone(&self.config.read());
            let max_age = cfg.max_age();
            let mut every = if max_age.is_zero() {
                Duration::from_secs(1)
            } else {
                (max_age / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
            };
            if let (Some(at), true) = (self.timers.next_due(), self.leads()) {
                let wait = (at - now_nanos()).max(0) as u64;
                every = every.min(Duration::from_nanos(wait));
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.timers.wake.notified() => {}
                _ = self.stop.notified() => return,
            }
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
            let cfg = Arc::clone(&self.config.read());
            let now = now_nanos();
            if let Some(r) = self.replication.get() {
                self.replicated_tick(r.as_ref(), &cfg, now, &mut aged);
                continue;
            }
            let first_before = self.store.state().first_seq;
            // The highest sequence this tick removed (consumers hear of removals below).
            let mut removed = 0;
            if !cfg.max_age().is_zero() {
                if cfg.allow_msg_ttl || cfg.subject_delete_marker_ttl > 0 {
                    removed = self.expire_by_age(&cfg, now);
                } else {
                    match self.store.expire(now) {
                        Ok(0) => {}
                        Ok(_) => removed = first_before,
                        Err(e) => {
                            tracing::warn!("stream {}: expiring messages failed: {e}", self.name)
                        }
                    }
                }
            }
            for seq in Timers::take_due(&self.timers.ttls, now) {
                if let Ok(m) = self.store.load_msg(seq) {
                    if self.expire_one(&cfg, &m, None) {
                        removed = removed.max(seq);
                    }
                }
            }
            if removed > 0 {
                self.removed_by_timers(first_before, removed);
            }
            for seq in Timers::take_due(&self.timers.schedules, now) {
                self.fire_schedule(&cfg, seq, None);
            }
        }
    }

    /// A replica's tick. Max age alone (no TTLs, no markers) runs on every replica by its own
    /// clock; the rest is decided by the leader alone and proposed, so every replica applies
    /// the same expiries, markers and scheduled messages at the same place in the log.
    fn replicated_tick(&self, r: &dyn Replication, cfg: &StreamConfig, now: i64, aged: &mut u64) {
        let markers = cfg.allow_msg_ttl || cfg.subject_delete_marker_ttl > 0;
        if !cfg.max_age().is_zero() && !markers {
            match self.store.expire(now) {
                Ok(0) => {}
                Ok(_) => self.consumers.removed_front(self.store.state().first_seq),
                Err(e) => tracing::warn!("stream {}: expiring messages failed: {e}", self.name),
            }
        }
        if !r.leads() {
            *aged = 0;
            return;
        }
        let mut expire = Vec::new();
        if !cfg.max_age().is_zero() && markers {
            let from = self.store.state().first_seq.max(*aged + 1);
            self.past_max_age(cfg, now, from, |m, never| {
                *aged = m.seq;
                if !never {
                    expire.push(m.seq);
                }
            });
        }
        expire.extend(Timers::take_due(&self.timers.ttls, now));
        if !expire.is_empty() {
            expire.sort_unstable();
            expire.dedup();
            r.propose(Proposal::Expire(expire));
        }
        let fire = Timers::take_due(&self.timers.schedules, now);
        if !fire.is_empty() {
            r.propose(Proposal::Fire(fire));
        }
    }

    /// Max age for streams with TTLs: messages whose TTL is `never` stay; a subject's last
    /// message leaves a marker when markers are on.
    /// Returns the highest sequence removed (0: none).
    fn expire_by_age(&self, cfg: &StreamConfig, now: i64) -> u64 {
        let mut removed = 0;
        self.past_max_age(cfg, now, self.store.state().first_seq, |m, never| {
            if !never && self.expire_one(cfg, m, None) {
                removed = m.seq;
            }
        });
        removed
    }

    /// Calls `f` with each message from `from` on that is past the stream's max age (at most
    /// `MAX_AGE_BATCH`), oldest first, and whether its TTL says `never`.
    fn past_max_age(
        &self,
        cfg: &StreamConfig,
        now: i64,
        from: u64,
        mut f: impl FnMut(&natrium_store::StoredMsg, bool),
    ) {
        let horizon = now - cfg.max_age().as_nanos() as i64;
        let mut seq = from.max(1);
        for _ in 0..MAX_AGE_BATCH {
            let Ok(m) = self.store.load_next_msg(b">", seq) else {
                break;
            };
            if m.ts > horizon {
                break;
            }
            seq = m.seq + 1;
            let never = headers::get(m.headers.as_deref(), headers::MSG_TTL)
                .as_deref()
                .and_then(headers::parse_ttl)
                == Some(-1);
            f(&m, never);
        }
    }

    /// Tells the consumers what a tick removed: the stream's front moved, or messages went
    /// from inside it (after a message that stays, e.g. one whose TTL is `never`).
    pub(super) fn removed_by_timers(&self, first_before: u64, highest_removed: u64) {
        let first = self.store.state().first_seq;
        if first > first_before {
            self.consumers.removed_front(first);
        }
        if highest_removed > first {
            self.consumers.removed_inside();
        }
    }

    /// Removes an expired message, or, when it is its subject's last and markers are on,
    /// replaces it with a subject delete marker (`Nats-Marker-Reason: MaxAge`, the marker TTL,
    /// a `sub` rollup that removes it).
    /// Whether the message was removed here (a marker's rollup tells the consumers itself).
    /// `ts`: the marker's timestamp (a replica applies its leader's), else now.
    pub(super) fn expire_one(
        &self,
        cfg: &StreamConfig,
        m: &natrium_store::StoredMsg,
        ts: Option<i64>,
    ) -> bool {
        let marker_ttl = cfg.subject_delete_marker_ttl / 1_000_000_000;
        let is_marker = headers::get(m.headers.as_deref(), headers::MARKER_REASON).is_some();
        let last = marker_ttl > 0
            && !is_marker
            && self
                .store
                .subjects_state(&m.subject)
                .get(m.subject.as_ref())
                .copied()
                == Some(1);
        if last {
            let ttl = headers::go_duration_secs(marker_ttl);
            let hdr = headers::with(
                None,
                &[
                    (headers::MARKER_REASON, "MaxAge"),
                    (headers::MSG_TTL, &ttl),
                    (headers::ROLLUP, "sub"),
                ],
            );
            let subject = String::from_utf8_lossy(&m.subject).into_owned();
            let mut state = self.ingest_state.lock();
            let inbound = Inbound {
                subject: &subject,
                headers: Some(&hdr),
                payload: b"",
                reply: None,
                sourced: false,
            };
            self.store_one(cfg, &mut state, &inbound, ts);
            return false;
        }
        match self.store.remove_msg(m.seq) {
            Ok(removed) => removed,
            Err(e) => {
                tracing::warn!("stream {}: expiring message {}: {e}", self.name, m.seq);
                false
            }
        }
    }

    /// Publishes a due schedule's message on its target (nats-server's scheduled message:
    /// the schedule's headers replaced by `Nats-Scheduler` and `Nats-Schedule-Next: purge`,
    /// which removes the schedule once stored).
    /// `ts`: the message's timestamp (a replica applies its leader's), else now.
    pub(super) fn fire_schedule(&self, cfg: &StreamConfig, seq: u64, ts: Option<i64>) {
        let Ok(m) = self.store.load_msg(seq) else {
            return;
        };
        let h = m.headers.as_deref();
        let Some(target) = headers::get(h, headers::SCHEDULE_TARGET).filter(|t| !t.is_empty())
        else {
            return;
        };
        let ttl = headers::get(h, headers::SCHEDULE_TTL).filter(|t| !t.is_empty());
        let rest = headers::without(h, |k| {
            k.starts_with("Nats-Schedule")
                || k.starts_with("Nats-Expected-")
                || k == "Nats-Msg-Id"
                || k == headers::MSG_TTL
                || k == headers::ROLLUP
        });
        let scheduler = String::from_utf8_lossy(&m.subject).into_owned();
        let mut pairs = vec![
            (headers::SCHEDULER, scheduler.as_str()),
            (headers::SCHEDULE_NEXT, "purge"),
        ];
        if let Some(t) = ttl.as_deref() {
            pairs.push((headers::MSG_TTL, t));
        }
        let hdr = headers::with(rest.as_deref(), &pairs);
        let mut state = self.ingest_state.lock();
        let inbound = Inbound {
            subject: &target,
            headers: Some(&hdr),
            payload: &m.payload,
            reply: None,
            sourced: false,
        };
        self.store_one(cfg, &mut state, &inbound, ts);
    }
}
