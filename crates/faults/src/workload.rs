//! The publishing workload: publishers (async-nats JetStream clients) that send numbered
//! messages with `Nats-Msg-Id`, keep a window of acks in flight and, on any failure, send every
//! unacknowledged message again with the same id, as a real client retrying would. Each message's
//! first send and its acknowledgement (stream sequence, duplicate flag, time) are recorded.
//!
//! Message `i` of publisher `p` has id `p<p>-<i>`, subject `<prefix>.<p>` and a payload derived
//! from both (length and bytes), so the checker can rebuild what was sent.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishAckFuture};
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::task::JoinHandle;

/// How a workload publishes.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// Subjects are `<prefix>.<publisher>`.
    pub subject_prefix: String,
    pub publishers: usize,
    /// Publishes in flight per publisher (1: each waits for its ack).
    pub inflight: usize,
    /// Payload sizes, inclusive.
    pub min_payload: usize,
    pub max_payload: usize,
    /// How long a publisher waits for an ack before it sends again.
    pub ack_timeout: Duration,
    /// Pause after a failure before sending again.
    pub retry_backoff: Duration,
    /// Messages per publisher at most.
    pub max_messages: u64,
    /// Pause between windows (none: as fast as acks come).
    pub pace: Option<Duration>,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            subject_prefix: "faults".into(),
            publishers: 4,
            inflight: 1,
            min_payload: 16,
            max_payload: 256,
            ack_timeout: Duration::from_secs(1),
            retry_backoff: Duration::from_millis(50),
            max_messages: 1_000_000,
            pace: None,
        }
    }
}

/// The id of message `index` of publisher `publisher`.
pub fn msg_id(publisher: usize, index: u64) -> String {
    format!("p{publisher}-{index}")
}

/// Parses a message id back into (publisher, index).
pub fn parse_msg_id(id: &str) -> Option<(usize, u64)> {
    let (p, i) = id.strip_prefix('p')?.split_once('-')?;
    Some((p.parse().ok()?, i.parse().ok()?))
}

/// The payload of a message: its length and bytes follow from (publisher, index) alone.
pub fn payload(cfg: &WorkloadConfig, publisher: usize, index: u64) -> Bytes {
    let mut x = (publisher as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(index.wrapping_mul(0xD1B5_4A32_D192_ED03))
        | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let span = (cfg.max_payload.saturating_sub(cfg.min_payload) + 1) as u64;
    let len = cfg.min_payload + (next() % span) as usize;
    let mut v = Vec::with_capacity(len);
    // A readable prefix makes a dump of the stream easy to follow.
    v.extend_from_slice(msg_id(publisher, index).as_bytes());
    v.push(b':');
    while v.len() < len {
        v.push(b'a' + (next() % 26) as u8);
    }
    v.truncate(len.max(1));
    Bytes::from(v)
}

/// FNV-1a, 64 bits: the payload digest kept for each acknowledged message.
pub fn digest(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &c in b {
        h ^= u64::from(c);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// An acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    pub seq: u64,
    pub duplicate: bool,
    /// Nanoseconds since the workload started.
    pub at: u64,
}

/// One message as its publisher saw it.
#[derive(Clone, Debug)]
pub struct Sent {
    pub index: u64,
    /// Nanoseconds since the workload started, first attempt.
    pub first_send: u64,
    pub attempts: u32,
    pub digest: u64,
    pub len: u32,
    pub ack: Option<Ack>,
}

/// What one publisher did.
#[derive(Clone, Debug, Default)]
pub struct PublisherLog {
    pub sent: Vec<Sent>,
    /// Publish or ack failures (each one leads to sending again).
    pub failures: u64,
    /// The last failures' texts (bounded), for the report.
    pub errors: VecDeque<String>,
}

/// The workload's record, shared with its tasks.
pub struct History {
    pub start: Instant,
    pub cfg: WorkloadConfig,
    pub publishers: Vec<Mutex<PublisherLog>>,
    acks: AtomicU64,
    /// Time (ns since start) of every ack, in the order they came.
    ack_times: Mutex<Vec<u64>>,
}

impl History {
    fn new(cfg: WorkloadConfig) -> Self {
        History {
            start: Instant::now(),
            publishers: (0..cfg.publishers)
                .map(|_| Mutex::new(PublisherLog::default()))
                .collect(),
            cfg,
            acks: AtomicU64::new(0),
            ack_times: Mutex::new(Vec::new()),
        }
    }

    pub fn now(&self) -> u64 {
        self.since(Instant::now())
    }

    /// An instant as nanoseconds since the workload started.
    pub fn since(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.start).as_nanos() as u64
    }

    pub fn acks(&self) -> u64 {
        self.acks.load(Ordering::Relaxed)
    }

    /// The first ack at or after `t` (ns since start), if any.
    pub fn first_ack_after(&self, t: u64) -> Option<u64> {
        let times = self.ack_times.lock();
        let i = times.partition_point(|&x| x < t);
        times.get(i).copied()
    }

    fn record_ack(&self, p: usize, slot: usize, ack: Ack) {
        let mut log = self.publishers[p].lock();
        if let Some(s) = log.sent.get_mut(slot) {
            if s.ack.is_none() {
                s.ack = Some(ack);
                self.acks.fetch_add(1, Ordering::Relaxed);
                // Publishers record under their own lock; keep the time list sorted.
                let mut times = self.ack_times.lock();
                let at = times.partition_point(|&x| x <= ack.at);
                times.insert(at, ack.at);
            }
        }
    }

    fn record_failure(&self, p: usize, what: String) {
        let mut log = self.publishers[p].lock();
        log.failures += 1;
        if log.errors.len() >= 8 {
            log.errors.pop_front();
        }
        log.errors.push_back(what);
    }
}

/// A running workload.
pub struct Workload {
    pub history: Arc<History>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Connection options of the harness's clients: every node's URL tried in the order given (so
/// publishers spread over the nodes), no discovered servers (they would bypass the proxies),
/// quick reconnects.
pub fn connect_options() -> async_nats::ConnectOptions {
    async_nats::ConnectOptions::new()
        .retain_servers_order()
        .retry_on_initial_connect()
        .ignore_discovered_servers()
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(2)))
        .reconnect_delay_callback(|attempts| Duration::from_millis((50 * attempts as u64).min(500)))
}

/// Connects a client to `urls` (node order kept as given, first is tried first).
pub async fn connect(urls: &[String]) -> Result<async_nats::Client, async_nats::ConnectError> {
    let addrs: Vec<async_nats::ServerAddr> = urls.iter().filter_map(|u| u.parse().ok()).collect();
    connect_options().connect(addrs).await
}

impl Workload {
    /// Starts `cfg.publishers` publishers, publisher `p` connected first to
    /// `urls[p % urls.len()]` and failing over to the others.
    pub async fn start(urls: &[String], cfg: WorkloadConfig) -> Workload {
        let history = Arc::new(History::new(cfg.clone()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for p in 0..cfg.publishers {
            let mut order = urls.to_vec();
            order.rotate_left(p % urls.len().max(1));
            let h = history.clone();
            let s = stop.clone();
            tasks.push(tokio::spawn(async move { publisher(p, order, h, s).await }));
        }
        Workload {
            history,
            stop,
            tasks,
        }
    }

    pub fn acks(&self) -> u64 {
        self.history.acks()
    }

    /// Waits until `n` acks in all, or `timeout`; true if reached.
    pub async fn wait_acks(&self, n: u64, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while self.acks() < n {
            if Instant::now() > end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Waits for an ack at or after `t` (ns since start); its time, or `None` after `timeout`.
    pub async fn wait_ack_after(&self, t: u64, timeout: Duration) -> Option<u64> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(at) = self.history.first_ack_after(t) {
                return Some(at);
            }
            if Instant::now() > end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops sending; each publisher gets up to `grace` to collect the acks still in flight.
    pub async fn stop(self, grace: Duration) -> Arc<History> {
        self.stop.store(true, Ordering::Relaxed);
        let end = tokio::time::Instant::now() + grace + Duration::from_secs(1);
        for t in self.tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout_at(end, t).await.is_err() {
                abort.abort();
            }
        }
        self.history
    }
}

/// One publisher: a window of `inflight` publishes; any failure sends the whole unacknowledged
/// window again, in order, with the same ids.
async fn publisher(p: usize, urls: Vec<String>, h: Arc<History>, stop: Arc<AtomicBool>) {
    let cfg = h.cfg.clone();
    let client = match connect(&urls).await {
        Ok(c) => c,
        Err(e) => {
            h.record_failure(p, format!("connect: {e}"));
            return;
        }
    };
    let mut js = jetstream::new(client);
    js.set_timeout(cfg.ack_timeout);
    let subject = format!("{}.{p}", cfg.subject_prefix);
    // Indices sent and not yet acknowledged, oldest first, with their ack futures.
    let mut window: VecDeque<(u64, Option<PublishAckFuture>)> = VecDeque::new();
    let mut next = 0u64;
    let mut stopping_since: Option<Instant> = None;
    loop {
        if stop.load(Ordering::Relaxed) && stopping_since.is_none() {
            stopping_since = Some(Instant::now());
        }
        if let Some(s) = stopping_since {
            // Collect what is in flight, but send nothing new and retry nothing.
            if window.is_empty() || s.elapsed() > cfg.ack_timeout {
                return;
            }
        }
        // Fill the window: first the unsent (after a failure), then new messages.
        let mut failed = false;
        if stopping_since.is_none() {
            for (idx, fut) in window.iter_mut() {
                if fut.is_none() {
                    match send(&js, &cfg, &h, p, &subject, *idx).await {
                        Ok(f) => *fut = Some(f),
                        Err(e) => {
                            h.record_failure(p, e);
                            failed = true;
                            break;
                        }
                    }
                }
            }
            while !failed && window.len() < cfg.inflight.max(1) && next < cfg.max_messages {
                let idx = next;
                next += 1;
                {
                    let mut log = h.publishers[p].lock();
                    log.sent.push(Sent {
                        index: idx,
                        first_send: h.now(),
                        attempts: 0,
                        digest: digest(&payload(&cfg, p, idx)),
                        len: payload(&cfg, p, idx).len() as u32,
                        ack: None,
                    });
                }
                match send(&js, &cfg, &h, p, &subject, idx).await {
                    Ok(f) => window.push_back((idx, Some(f))),
                    Err(e) => {
                        window.push_back((idx, None));
                        h.record_failure(p, e);
                        failed = true;
                    }
                }
            }
        }
        if !failed {
            match window.front_mut() {
                Some((idx, Some(_))) => {
                    let idx = *idx;
                    let fut = window.front_mut().and_then(|(_, f)| f.take());
                    let res = match fut {
                        Some(f) => tokio::time::timeout(cfg.ack_timeout, f).await,
                        None => continue,
                    };
                    match res {
                        Ok(Ok(ack)) => {
                            window.pop_front();
                            h.record_ack(
                                p,
                                idx as usize,
                                Ack {
                                    seq: ack.sequence,
                                    duplicate: ack.duplicate,
                                    at: h.now(),
                                },
                            );
                        }
                        Ok(Err(e)) => {
                            h.record_failure(p, format!("ack {}: {e}", msg_id(p, idx)));
                            failed = true;
                        }
                        Err(_) => {
                            h.record_failure(p, format!("ack {}: timed out", msg_id(p, idx)));
                            failed = true;
                        }
                    }
                }
                Some((_, None)) => failed = true,
                None => {
                    if next >= cfg.max_messages || stopping_since.is_some() {
                        return;
                    }
                }
            }
        }
        if failed {
            if stopping_since.is_some() {
                return;
            }
            // Every message of the window is sent again, in order, with its id.
            for (_, f) in window.iter_mut() {
                *f = None;
            }
            tokio::time::sleep(cfg.retry_backoff).await;
        } else if let Some(d) = cfg.pace {
            tokio::time::sleep(d).await;
        }
    }
}

async fn send(
    js: &jetstream::Context,
    cfg: &WorkloadConfig,
    h: &History,
    p: usize,
    subject: &str,
    idx: u64,
) -> Result<PublishAckFuture, String> {
    if let Some(s) = h.publishers[p].lock().sent.get_mut(idx as usize) {
        s.attempts += 1;
    }
    let msg = jetstream::message::PublishMessage::build()
        .payload(payload(cfg, p, idx))
        .message_id(msg_id(p, idx));
    tokio::time::timeout(cfg.ack_timeout, js.send_publish(subject.to_string(), msg))
        .await
        .map_err(|_| format!("publish {}: timed out", msg_id(p, idx)))?
        .map_err(|e| format!("publish {}: {e}", msg_id(p, idx)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_payloads_are_deterministic_within_bounds() {
        assert_eq!(parse_msg_id(&msg_id(3, 1234)), Some((3, 1234)));
        assert_eq!(parse_msg_id("x1-2"), None);
        let cfg = WorkloadConfig {
            min_payload: 10,
            max_payload: 40,
            ..WorkloadConfig::default()
        };
        let mut lens = std::collections::HashSet::new();
        for i in 0..500 {
            let a = payload(&cfg, 1, i);
            assert_eq!(a, payload(&cfg, 1, i));
            assert!((10..=40).contains(&a.len()), "{}", a.len());
            assert_ne!(a, payload(&cfg, 2, i));
            lens.insert(a.len());
        }
        assert!(lens.len() > 10);
        assert_ne!(digest(b"a"), digest(b"b"));
    }
}
