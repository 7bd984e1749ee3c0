//! Message delivery: match a subject in an account (through a per-publisher cache while the
//! account's generation holds), then hand the message to every plain match and to one member of
//! each queue group: appended as MSG/HMSG to a connection's outbound buffer, carried across an
//! import into another account, or offered to an internal sink. Writers are woken once per
//! batch, not per message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use natrium_protocol::encode;
use natrium_subjects::{matches, Matches};
use rustc_hash::FxHashMap;

use super::account::Account;
use super::imports::{self, Forward, ForwardKind};
use super::outbound::{CloseReason, Outbound, STALL_MAX};
use super::subscription::{SubRef, Target};

/// One message to deliver. `subject` is the subject receivers see; what it is matched on may
/// differ (see [`publish_batch`]).
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    pub subject: &'a [u8],
    pub reply: Option<&'a [u8]>,
    pub headers: Option<&'a [u8]>,
    pub payload: &'a [u8],
}

/// A publisher's cache of match results, valid while the account's generation holds.
struct MatchCache {
    generation: u64,
    results: FxHashMap<Box<[u8]>, Matches<SubRef>>,
    /// Lookups and hits since the last `Publisher::flush` reported them to the account.
    lookups: u64,
    hits: u64,
    /// Fan-out (plain matches plus queue groups) summed over the cached results, and its max.
    fanout_sum: u64,
    fanout_max: u64,
}

/// What a connection's match cache holds, as its publisher last reported it (once per read),
/// for nats-server's sublist statistics.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub entries: AtomicU64,
    pub fanout_sum: AtomicU64,
    pub fanout_max: AtomicU64,
}

const MATCH_CACHE_MAX: usize = 4096;

impl MatchCache {
    fn new() -> Self {
        MatchCache {
            generation: u64::MAX,
            results: FxHashMap::default(),
            lookups: 0,
            hits: 0,
            fanout_sum: 0,
            fanout_max: 0,
        }
    }

    fn clear(&mut self) {
        self.results.clear();
        self.fanout_sum = 0;
        self.fanout_max = 0;
    }

    fn lookup(&mut self, account: &Account, subject: &[u8]) -> &Matches<SubRef> {
        let generation = account.generation();
        if generation != self.generation {
            self.clear();
            self.generation = generation;
        }
        self.lookups += 1;
        if self.results.contains_key(subject) {
            self.hits += 1;
        } else {
            if self.results.len() >= MATCH_CACHE_MAX {
                self.clear();
            }
            let found = account.matches(subject);
            let fanout = (found.plain.len() + found.queues.len()) as u64;
            self.fanout_sum += fanout;
            self.fanout_max = self.fanout_max.max(fanout);
            self.results.insert(subject.into(), found);
        }
        // Present: inserted just above if it was missing.
        &self.results[subject]
    }
}

/// How deep forwarding between accounts may go (import cycles end here).
const MAX_FORWARD_DEPTH: u8 = 4;

/// Per-batch delivery bookkeeping: which writers to wake, which subscriptions hit their max,
/// which receivers fell behind.
struct Delivery {
    /// The publishing connection (0 for none), for `echo: false`.
    cid: u64,
    echo: bool,
    flush: Vec<Arc<Outbound>>,
    /// Subscriptions that reached their max, with the account whose trie holds them.
    expired: Vec<(Arc<Account>, SubRef)>,
    /// Receivers past their stall threshold during this batch.
    stall: Vec<Arc<Outbound>>,
    rng: fastrand::Rng,
}

impl Delivery {
    fn new(cid: u64) -> Self {
        Delivery {
            cid,
            echo: true,
            flush: Vec::new(),
            expired: Vec::new(),
            stall: Vec::new(),
            rng: fastrand::Rng::new(),
        }
    }

    /// Delivers to every plain match and one member of each queue group. Returns whether anything
    /// was delivered.
    fn deliver_all(
        &mut self,
        account: &Arc<Account>,
        found: &Matches<SubRef>,
        m: &Msg<'_>,
        depth: u8,
    ) -> bool {
        let mut delivered = false;
        for sub in &found.plain {
            delivered |= self.deliver(account, sub, m, depth);
        }
        for (_, members) in &found.queues {
            let n = members.len();
            let start = self.rng.usize(..n);
            for i in 0..n {
                if self.deliver(account, &members[(start + i) % n], m, depth) {
                    delivered = true;
                    break;
                }
            }
        }
        delivered
    }

    /// Delivers one message to one subscription of `account`. Returns whether it did.
    fn deliver(&mut self, account: &Arc<Account>, sub: &SubRef, m: &Msg<'_>, depth: u8) -> bool {
        let s = &sub.0;
        if let Some(deny) = &s.deny {
            if deny.iter().any(|d| matches(d, m.subject)) {
                return false;
            }
        }
        if let Target::Client(client) = &s.target {
            if !self.echo && client.cid == self.cid {
                return false;
            }
        }
        // Every delivery is counted (`msgs` in monitoring); `UNSUB sid max` counts the ones
        // before it too, as nats-server does.
        let n = s.delivered.fetch_add(1, Ordering::Relaxed) + 1;
        let max = s.max.load(Ordering::Relaxed);
        if max > 0 {
            if n > max {
                return false;
            }
            if n == max {
                self.expired.push((account.clone(), sub.clone()));
            }
        }
        let client = match &s.target {
            Target::Client(c) => c,
            Target::Forward(f) => return self.forward(f, m, depth),
            Target::Internal(sink) => return sink.offer(m.subject, m.reply, m.headers, m.payload),
        };
        let headers = if client.headers.load(Ordering::Relaxed) {
            m.headers
        } else {
            None
        };
        if let (Some(reply), true) = (m.reply, client.track_responses.load(Ordering::Relaxed)) {
            if let Some((perm, grants)) = client.responses.lock().as_mut() {
                grants.grant(reply, perm);
            }
        }
        let size = m.subject.len() + m.payload.len() + headers.map_or(0, <[u8]>::len);
        let mut out = client.out.lock();
        if out.closed {
            return false;
        }
        if out.buf.len() + size > client.max_pending {
            drop(out);
            tracing::info!(
                "{} - cid:{} - Slow Consumer Detected: MaxPending of {} Exceeded",
                client.addr,
                client.cid,
                client.max_pending
            );
            client.close(CloseReason::SlowConsumerPendingBytes);
            return false;
        }
        let was_empty = out.buf.is_empty();
        encode::msg(&mut out.buf, m.subject, &s.sid, m.reply, headers, m.payload);
        if crate::logging::protocol_trace() {
            trace_delivery(client, m, &s.sid, headers);
        }
        out.out_msgs += 1;
        out.out_bytes += (m.payload.len() + headers.map_or(0, <[u8]>::len)) as u64;
        let behind = out.buf.len() > client.stall_threshold();
        drop(out);
        if behind && client.cid != self.cid && !self.stall.iter().any(|c| c.cid == client.cid) {
            self.stall.push(client.clone());
        }
        if was_empty {
            self.flush.push(client.clone());
        }
        true
    }

    /// Carries a message across an import into the target account.
    fn forward(&mut self, f: &Forward, m: &Msg<'_>, depth: u8) -> bool {
        if depth >= MAX_FORWARD_DEPTH {
            return false;
        }
        let subject = f.map.apply(m.subject);
        if let (ForwardKind::Service { importer }, Some(reply)) = (&f.kind, m.reply) {
            // The responder answers in the exporter's account; carry that answer back.
            imports::add_response_route(&f.to, reply, importer.clone());
        }
        let fm = Msg {
            subject: &subject,
            ..*m
        };
        let found = f.to.matches(&subject);
        self.deliver_all(&f.to, &found, &fm, depth + 1)
    }

    /// Wakes each writer this batch gave something to write.
    fn flush(&mut self) {
        for c in self.flush.drain(..) {
            c.wake.notify_one();
        }
    }

    /// Removes the subscriptions that reached their max.
    fn remove_expired(&mut self) {
        for (account, sub) in self.expired.drain(..) {
            remove_subscription(&account, &sub);
        }
    }

    fn take_lagging(&mut self) -> Option<Lagging> {
        (!self.stall.is_empty()).then(|| Lagging(std::mem::take(&mut self.stall)))
    }
}

/// A connection's publishing side: its match cache and delivery bookkeeping, reused for every
/// message it publishes (no allocation per message on a cache hit).
pub struct Publisher {
    cache: MatchCache,
    dl: Delivery,
    /// The account the cache's lookups are reported to, and where the cache's size goes.
    account: Option<Arc<Account>>,
    stats: Arc<CacheStats>,
}

impl Publisher {
    /// For the connection `cid` (its own subscriptions are skipped with `echo` off).
    pub fn new(cid: u64) -> Self {
        Publisher {
            cache: MatchCache::new(),
            dl: Delivery::new(cid),
            account: None,
            stats: Arc::default(),
        }
    }

    /// Reports the match cache's size into `stats` (a connection's, read by monitoring).
    pub fn with_stats(mut self, stats: Arc<CacheStats>) -> Self {
        self.stats = stats;
        self
    }

    pub fn set_echo(&mut self, echo: bool) {
        self.dl.echo = echo;
    }

    /// Forgets cached matches: the publisher now publishes in another account, whose
    /// generation counter may happen to equal the old one's.
    pub fn forget_matches(&mut self) {
        self.report();
        self.cache = MatchCache::new();
        self.account = None;
    }

    /// Adds the lookups since the last report to the account's counters and publishes the
    /// cache's size.
    fn report(&mut self) {
        let c = &mut self.cache;
        if c.lookups > 0 {
            if let Some(a) = &self.account {
                let s = &a.sublist_stats;
                s.matches.fetch_add(c.lookups, Ordering::Relaxed);
                s.cache_hits.fetch_add(c.hits, Ordering::Relaxed);
            }
            c.lookups = 0;
            c.hits = 0;
            let st = &self.stats;
            st.entries.store(c.results.len() as u64, Ordering::Relaxed);
            st.fanout_sum.store(c.fanout_sum, Ordering::Relaxed);
            st.fanout_max.store(c.fanout_max, Ordering::Relaxed);
        }
    }

    /// Delivers `m` to the subscribers of its subject in `account`. Returns whether anyone got
    /// it. Writers are woken by `flush`, once per read.
    pub fn publish(&mut self, account: &Arc<Account>, m: &Msg<'_>) -> bool {
        if !self
            .account
            .as_ref()
            .is_some_and(|a| Arc::ptr_eq(a, account))
        {
            self.report();
            self.account = Some(account.clone());
        }
        let found = self.cache.lookup(account, m.subject);
        let delivered = self.dl.deliver_all(account, found, m, 0);
        if !self.dl.expired.is_empty() {
            self.dl.remove_expired();
        }
        delivered
    }

    /// Wakes the writers of every receiver since the last flush, and reports the match
    /// cache's counters (once per read: two atomic additions, none on the message path).
    pub fn flush(&mut self) {
        self.dl.flush();
        self.report();
    }

    /// Receivers that fell behind since the last call, for the publisher to wait on.
    pub fn take_lagging(&mut self) -> Option<Lagging> {
        self.dl.take_lagging()
    }
}

/// Receivers a batch left past their stall threshold.
pub struct Lagging(Vec<Arc<Outbound>>);

impl Lagging {
    /// Waits (bounded like a publisher's stall) while each receiver's writer makes progress.
    pub async fn wait(self) {
        let deadline = tokio::time::Instant::now() + STALL_MAX;
        for c in self.0 {
            c.wait_drained(deadline).await;
        }
    }
}

/// Publishes a message that comes from no connection (an internal client or the server
/// itself). Returns whether anyone received it.
pub fn publish(account: &Arc<Account>, m: Msg<'_>) -> bool {
    publish_batch(account, m.subject, [m]).0 > 0
}

/// Publishes a batch of messages to the subscribers of subject `to`, whatever subject each
/// message presents (a JetStream consumer's deliveries keep the stored message's subject): one
/// subject match and one writer wake-up per receiver for the whole batch. Returns how many
/// messages reached someone, and the receivers now lagging, for the caller to wait on before it
/// sends more.
pub fn publish_batch<'a>(
    account: &Arc<Account>,
    to: &[u8],
    msgs: impl IntoIterator<Item = Msg<'a>>,
) -> (usize, Option<Lagging>) {
    let mut dl = Delivery::new(0);
    let found = account.matches(to);
    account
        .sublist_stats
        .matches
        .fetch_add(1, Ordering::Relaxed);
    let mut delivered = 0;
    for m in msgs {
        delivered += usize::from(dl.deliver_all(account, &found, &m, 0));
    }
    dl.flush();
    dl.remove_expired();
    (delivered, dl.take_lagging())
}

/// Removes a subscription from its connection's sid map (if it has one) and from the account.
pub fn remove_subscription(account: &Account, sub: &SubRef) {
    if let Some(client) = sub.0.client_out() {
        let mut subs = client.subs.lock();
        if subs.get(&sub.0.sid).is_some_and(|s| s == sub) {
            subs.remove(&sub.0.sid);
        }
    }
    account.remove(sub);
}

/// Traces a delivery (`->> [MSG ...]`) to `client`.
fn trace_delivery(client: &Outbound, m: &Msg<'_>, sid: &[u8], headers: Option<&[u8]>) {
    let text = String::from_utf8_lossy;
    let reply = m.reply.map(|r| format!(" {}", text(r))).unwrap_or_default();
    let line = match headers {
        Some(h) => format!(
            "HMSG {} {}{reply} {} {}",
            text(m.subject),
            text(sid),
            h.len(),
            h.len() + m.payload.len()
        ),
        None => format!(
            "MSG {} {}{reply} {}",
            text(m.subject),
            text(sid),
            m.payload.len()
        ),
    };
    client.trace_out(line.as_bytes());
}
