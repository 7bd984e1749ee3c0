//! A connection's outbound side: the queue of segments publishers hand their frames to (one
//! short lock per batch), its `max_pending` cut-off, closing, the wake-ups of its writer and reader, its
//! subscriptions by sid and its traffic counters. The connection layer owns the socket and the
//! writer task that drains this queue; everything that delivers to a connection goes through
//! here.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use natrium_protocol::encode;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tokio::sync::Notify;

use super::subscription::SubRef;
use crate::perms::{ResponseGrants, ResponsePermission};
use crate::util::time::{from_unix_nanos, unix_nanos};

/// Why a connection ended; the names follow nats-server's closed-connection reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    ClientClosed,
    ReadError,
    WriteError,
    SlowConsumerPendingBytes,
    SlowConsumerWriteDeadline,
    ProtocolViolation,
    AuthenticationTimeout,
    AuthenticationViolation,
    AuthenticationExpired,
    StaleConnection,
    MaxPayloadExceeded,
    MaxControlLineExceeded,
    MaxConnectionsExceeded,
    MaxAccountConnectionsExceeded,
    MaxSubscriptionsExceeded,
    Revocation,
    TlsHandshakeError,
    ServerShutdown,
    /// A second route to a peer already connected (or to this server itself).
    DuplicateRoute,
    ClusterNameConflict,
    DuplicateServerName,
    /// A client that dialled the cluster port.
    WrongPort,
    /// A dedicated route for an account this server does not have.
    MissingAccount,
}

impl CloseReason {
    pub fn is_slow_consumer(self) -> bool {
        matches!(
            self,
            CloseReason::SlowConsumerPendingBytes | CloseReason::SlowConsumerWriteDeadline
        )
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            CloseReason::ClientClosed => "Client Closed",
            CloseReason::ReadError => "Read Error",
            CloseReason::WriteError => "Write Error",
            CloseReason::SlowConsumerPendingBytes => "Slow Consumer (Pending Bytes)",
            CloseReason::SlowConsumerWriteDeadline => "Slow Consumer (Write Deadline)",
            CloseReason::ProtocolViolation => "Protocol Violation",
            CloseReason::AuthenticationTimeout => "Authentication Timeout",
            CloseReason::AuthenticationViolation => "Authentication Failure",
            CloseReason::AuthenticationExpired => "Authentication Expired",
            CloseReason::StaleConnection => "Stale Connection",
            CloseReason::MaxPayloadExceeded => "Maximum Payload Exceeded",
            CloseReason::MaxControlLineExceeded => "Maximum Control Line Exceeded",
            CloseReason::MaxConnectionsExceeded => "Maximum Connections Exceeded",
            CloseReason::MaxAccountConnectionsExceeded => "Maximum Account Connections Exceeded",
            CloseReason::MaxSubscriptionsExceeded => "Maximum Subscriptions Exceeded",
            CloseReason::Revocation => "Credentials Revoked",
            CloseReason::TlsHandshakeError => "TLS Handshake Failure",
            CloseReason::ServerShutdown => "Server Shutdown",
            CloseReason::DuplicateRoute => "Duplicate Route",
            CloseReason::ClusterNameConflict => "Cluster Name Conflict",
            CloseReason::DuplicateServerName => "Duplicate Server Name",
            CloseReason::WrongPort => "Wrong Port",
            CloseReason::MissingAccount => "Missing Account",
        };
        f.write_str(s)
    }
}

/// A consistent-enough snapshot of a connection's counters for monitoring.
#[derive(Debug, Clone, Default)]
pub struct ClientStats {
    pub in_msgs: u64,
    pub in_bytes: u64,
    pub out_msgs: u64,
    pub out_bytes: u64,
    pub pending_bytes: usize,
    pub subscriptions: usize,
}

/// The frames queued for a connection's writer: a chain of segments, oldest first, written with
/// vectored writes. A publisher's staged frames join the chain whole (no copy, no growth of one
/// large buffer: growing and dropping multi-megabyte buffers cost a fifth of the server's time
/// in page faults and realloc copies under fan-out, measured with perf); small appends go into
/// the last segment's spare room. Written segments come back to `free` for reuse.
pub(super) struct OutBuf {
    segs: VecDeque<Vec<u8>>,
    /// Bytes in `segs`.
    len: usize,
    /// Emptied segments, reused by appends and given to publishers in exchange for theirs.
    free: Vec<Vec<u8>>,
    pub(super) closed: bool,
    /// Messages and bytes delivered to this connection (counted under the lock the append takes).
    pub(super) out_msgs: u64,
    pub(super) out_bytes: u64,
}

/// Appends grow the last segment up to this size, then start a new one (a segment is never
/// grown past it: small connections keep small buffers, busy ones no growing copies).
const SEG_GROW_MAX: usize = 64 * 1024;
/// Staged frames up to this size are copied into the last segment when they fit its spare room
/// (many small hand-overs would otherwise make many small segments).
const COPY_MAX: usize = 4 * 1024;
/// Written segments kept for reuse: at most this many, each at most `SEG_MAX_FREE` bytes.
const MAX_FREE: usize = 8;
const SEG_MAX_FREE: usize = 1 << 20;

impl OutBuf {
    fn new() -> Self {
        OutBuf {
            segs: VecDeque::new(),
            len: 0,
            free: Vec::new(),
            closed: false,
            out_msgs: 0,
            out_bytes: 0,
        }
    }

    /// Bytes queued.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends what `f` writes (about `need` bytes) to the last segment: within its room, or
    /// growing it while it stays under `SEG_GROW_MAX`; else to a new segment.
    pub(super) fn append_with(&mut self, need: usize, f: impl FnOnce(&mut Vec<u8>)) {
        let fits = self.segs.back().is_some_and(|last| {
            last.capacity() - last.len() >= need || last.len() + need <= SEG_GROW_MAX
        });
        if !fits {
            let seg = self.free.pop().unwrap_or_default();
            self.segs.push_back(seg);
        }
        let last = self.segs.back_mut().expect("a segment");
        let before = last.len();
        f(last);
        self.len += last.len() - before;
    }

    /// Appends `bytes`.
    pub(super) fn extend(&mut self, bytes: &[u8]) {
        self.append_with(bytes.len(), |seg| seg.extend_from_slice(bytes));
    }

    /// Queues a publisher's staged frames: the buffer itself joins the chain and `staged` gets
    /// an empty one in exchange (small amounts are copied instead, when the last segment has
    /// room).
    pub(super) fn push_staged(&mut self, staged: &mut Vec<u8>) {
        let n = staged.len();
        if n == 0 {
            return;
        }
        let room = self
            .segs
            .back()
            .map_or(0, |last| last.capacity() - last.len());
        if n <= COPY_MAX && room >= n {
            self.extend(staged);
            staged.clear();
            return;
        }
        let empty = self.free.pop().unwrap_or_default();
        self.segs.push_back(std::mem::replace(staged, empty));
        self.len += n;
    }

    /// Drops everything queued (a slow consumer's backlog).
    pub(super) fn discard(&mut self) {
        self.segs.clear();
        self.free.clear();
        self.len = 0;
    }
}

/// What a connection's match cache holds, as its publisher last reported it (once per read),
/// for nats-server's sublist statistics.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub entries: AtomicU64,
    pub fanout_sum: AtomicU64,
    pub fanout_max: AtomicU64,
}

/// What adding a subscription to a connection's sid map did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubAdded {
    Added,
    /// The sid is in use; nats-server ignores such a SUB.
    SidInUse,
    /// The connection holds its maximum already.
    TooMany,
}

/// A publisher stalled on a lagging receiver waits at most `STALL_STEP` for each sign of progress
/// and `STALL_MAX` in all, per read. Like nats-server's stall it is bounded; a 5 ms total alone
/// let a fan-out benchmark cut live subscribers off as slow consumers on a busy machine.
pub const STALL_STEP: Duration = Duration::from_millis(5);
pub const STALL_MAX: Duration = Duration::from_millis(250);

/// The outbound side of one connection.
pub struct Outbound {
    pub cid: u64,
    pub addr: SocketAddr,
    pub(super) out: Mutex<OutBuf>,
    /// Wakes the writer when `out` goes from empty to non-empty or closes.
    pub(super) wake: Notify,
    /// Wakes the reader when another task closes this connection.
    kill: Notify,
    /// Signalled by the writer after each write, for publishers stalled on this connection.
    drained: Notify,
    close_reason: Mutex<Option<CloseReason>>,
    /// Set once closed (mirrors `out.closed`), read without a lock by publishers.
    pub(super) closing: AtomicBool,
    /// Whether the client accepts HMSG (set from CONNECT).
    pub(super) headers: AtomicBool,
    /// A route dedicated to one account: routed messages leave the account name out.
    pub(super) account_implied: AtomicBool,
    /// A route whose peer takes `LMSG` with the leafnode cluster a message came from (`lnoc`).
    pub(super) leaf_origin: AtomicBool,
    pub(super) max_pending: usize,
    /// Set when the client has `allow_responses`: deliveries with a reply then record a grant.
    pub(super) responses: Mutex<Option<(ResponsePermission, ResponseGrants)>>,
    pub(super) track_responses: AtomicBool,
    /// Bytes the writer has swapped out and not yet written (written only by the writer).
    inflight: AtomicUsize,
    /// Subscriptions by sid.
    pub(super) subs: Mutex<FxHashMap<Box<[u8]>, SubRef>>,
    /// Written only by the reader, once per read (plain stores, no contention).
    in_msgs: AtomicU64,
    in_bytes: AtomicU64,
    /// Unix nanoseconds of the last read.
    last_activity: AtomicU64,
    /// The client's name from CONNECT, for logs, traces and monitoring.
    name: Mutex<String>,
    /// The size of this connection's match cache, reported by its publisher.
    pub cache_stats: Arc<CacheStats>,
    /// Round-trip time measured with the server's last answered PING, in nanoseconds (0 until
    /// measured).
    rtt_nanos: AtomicU64,
}

impl Outbound {
    pub fn new(cid: u64, addr: SocketAddr, max_pending: usize) -> Arc<Outbound> {
        Arc::new(Outbound {
            cid,
            addr,
            out: Mutex::new(OutBuf::new()),
            wake: Notify::new(),
            kill: Notify::new(),
            drained: Notify::new(),
            close_reason: Mutex::new(None),
            closing: AtomicBool::new(false),
            headers: AtomicBool::new(false),
            account_implied: AtomicBool::new(false),
            leaf_origin: AtomicBool::new(false),
            max_pending,
            responses: Mutex::new(None),
            track_responses: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            subs: Mutex::new(FxHashMap::default()),
            in_msgs: AtomicU64::new(0),
            in_bytes: AtomicU64::new(0),
            last_activity: AtomicU64::new(unix_nanos(SystemTime::now()) as u64),
            name: Mutex::new(String::new()),
            cache_stats: Arc::default(),
            rtt_nanos: AtomicU64::new(0),
        })
    }

    /// Records a round-trip time measurement.
    pub fn set_rtt(&self, rtt: std::time::Duration) {
        let n = (rtt.as_nanos() as u64).max(1);
        self.rtt_nanos.store(n, Ordering::Relaxed);
    }

    /// The last round-trip time measured, if any.
    pub fn rtt(&self) -> Option<std::time::Duration> {
        match self.rtt_nanos.load(Ordering::Relaxed) {
            0 => None,
            n => Some(std::time::Duration::from_nanos(n)),
        }
    }

    /// Appends protocol bytes (PONG, +OK, -ERR, INFO) and wakes the writer.
    pub fn send(&self, bytes: &[u8]) {
        if crate::logging::protocol_trace() && !bytes.starts_with(b"INFO ") {
            self.trace_out(bytes.strip_suffix(b"\r\n").unwrap_or(bytes));
        }
        {
            let mut out = self.out.lock();
            if out.closed {
                return;
            }
            out.extend(bytes);
        }
        self.wake.notify_one();
    }

    /// Traces one line this server sends the client (`->> [...]`), as nats-server's `-V` does.
    pub(super) fn trace_out(&self, line: &[u8]) {
        tracing::trace!(
            "{} - cid:{} - \"{}\" - ->> [{}]",
            self.addr,
            self.cid,
            self.name.lock(),
            String::from_utf8_lossy(line)
        );
    }

    pub fn send_err(&self, text: &str) {
        let mut b = Vec::with_capacity(text.len() + 10);
        encode::err(&mut b, text);
        self.send(&b);
    }

    /// Closes the connection: the writer flushes what is queued (unless the client is a slow
    /// consumer, whose backlog is dropped) and the reader stops. The first reason wins.
    pub fn close(&self, reason: CloseReason) {
        {
            let mut r = self.close_reason.lock();
            if r.is_some() {
                return;
            }
            *r = Some(reason);
        }
        self.closing.store(true, Ordering::Release);
        {
            let mut out = self.out.lock();
            out.closed = true;
            if reason.is_slow_consumer() {
                out.discard();
            }
        }
        self.wake.notify_one();
        self.kill.notify_one();
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        *self.close_reason.lock()
    }

    pub fn is_closed(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Resolves when another task closes this connection (a permit is kept if nobody waits).
    pub async fn killed(&self) {
        self.kill.notified().await
    }

    /// Whether the client accepts headers (HMSG); set from CONNECT.
    pub fn set_headers(&self, on: bool) {
        self.headers.store(on, Ordering::Relaxed);
    }

    /// Marks a route dedicated to one account (its messages do not name the account).
    pub fn set_account_implied(&self, on: bool) {
        self.account_implied.store(on, Ordering::Relaxed);
    }

    /// Marks a route whose peer takes `LMSG` with a leafnode origin cluster (its INFO's
    /// `lnoc`): messages from a leafnode cluster then name it.
    pub fn set_leaf_origin(&self, on: bool) {
        self.leaf_origin.store(on, Ordering::Relaxed);
    }

    pub fn headers(&self) -> bool {
        self.headers.load(Ordering::Relaxed)
    }

    pub fn name(&self) -> String {
        self.name.lock().clone()
    }

    pub fn set_name(&self, name: &str) {
        *self.name.lock() = name.to_string();
    }

    /// Installs (or removes, with `None`) the `allow_responses` permission: deliveries with a
    /// reply subject then grant a response; grants already given are kept.
    pub fn set_responses(&self, p: Option<ResponsePermission>) {
        let mut r = self.responses.lock();
        match (p, r.as_mut()) {
            (Some(rp), Some((old, _))) => *old = rp,
            (Some(rp), None) => *r = Some((rp, ResponseGrants::default())),
            (None, _) => *r = None,
        }
        self.track_responses.store(r.is_some(), Ordering::Relaxed);
    }

    /// Uses one response grant for a publish to `subject`, if the client holds one.
    pub fn take_response_grant(&self, subject: &[u8]) -> bool {
        if !self.track_responses.load(Ordering::Relaxed) {
            return false;
        }
        self.responses
            .lock()
            .as_mut()
            .is_some_and(|(_, grants)| grants.take(subject))
    }

    /// Records what the reader has received so far (once per read).
    pub fn record_in(&self, msgs: u64, bytes: u64) {
        self.in_msgs.store(msgs, Ordering::Relaxed);
        self.in_bytes.store(bytes, Ordering::Relaxed);
        self.last_activity
            .store(unix_nanos(SystemTime::now()) as u64, Ordering::Relaxed);
    }

    pub fn last_activity(&self) -> SystemTime {
        from_unix_nanos(self.last_activity.load(Ordering::Relaxed) as i64)
    }

    pub fn stats(&self) -> ClientStats {
        let (out_msgs, out_bytes, pending_bytes) = {
            let out = self.out.lock();
            (out.out_msgs, out.out_bytes, out.len())
        };
        ClientStats {
            in_msgs: self.in_msgs.load(Ordering::Relaxed),
            in_bytes: self.in_bytes.load(Ordering::Relaxed),
            out_msgs,
            out_bytes,
            pending_bytes,
            subscriptions: self.subs.lock().len(),
        }
    }

    // --- subscriptions by sid ---

    /// Adds `sub` under its sid, unless the sid is taken or the connection holds `max` already.
    pub fn add_sub(&self, sub: &SubRef, max: Option<usize>) -> SubAdded {
        let mut subs = self.subs.lock();
        if subs.contains_key(&sub.0.sid) {
            return SubAdded::SidInUse;
        }
        if max.is_some_and(|max| subs.len() >= max) {
            return SubAdded::TooMany;
        }
        subs.insert(sub.0.sid.clone(), sub.clone());
        SubAdded::Added
    }

    pub fn sub(&self, sid: &[u8]) -> Option<SubRef> {
        self.subs.lock().get(sid).cloned()
    }

    /// Replaces `old` by `new` under their sid, if `old` is still there.
    pub fn replace_sub(&self, old: &SubRef, new: &SubRef) -> bool {
        let mut map = self.subs.lock();
        if map.get(&old.0.sid).is_some_and(|cur| cur == old) {
            map.insert(old.0.sid.clone(), new.clone());
            true
        } else {
            false
        }
    }

    /// Every subscription, removed from the sid map (the connection is closing).
    pub fn drain_subs(&self) -> Vec<SubRef> {
        self.subs.lock().drain().map(|(_, s)| s).collect()
    }

    /// Every subscription, left in place.
    pub fn subs(&self) -> Vec<SubRef> {
        self.subs.lock().values().cloned().collect()
    }

    pub fn num_subs(&self) -> usize {
        self.subs.lock().len()
    }

    /// The sid of a subscription whose subject matches `subject` (a requester's reply
    /// subscription, for the no-responders status).
    pub fn sid_matching(&self, subject: &[u8]) -> Option<Box<[u8]>> {
        self.subs
            .lock()
            .values()
            .find(|s| natrium_subjects::matches(&s.0.subject, subject))
            .map(|s| s.0.sid.clone())
    }

    /// (subject, queue, sid) of every subscription, for monitoring.
    pub fn subscription_list(&self) -> Vec<super::subscription::SubInfo> {
        self.subs
            .lock()
            .values()
            .map(|s| super::subscription::SubInfo::of(&s.0))
            .collect()
    }

    // --- back pressure ---

    /// Bytes queued plus bytes the writer has taken but not yet written.
    fn pending(&self) -> usize {
        self.out.lock().len() + self.inflight.load(Ordering::Relaxed)
    }

    /// Above this many pending bytes a publisher briefly waits for this connection's writer.
    pub(super) fn stall_threshold(&self) -> usize {
        self.max_pending / 2
    }

    /// Waits until this connection's backlog drops below the stall threshold, as long as its
    /// writer keeps making progress: each wait for progress is at most `STALL_STEP`, the whole
    /// stall at most until `deadline`. A receiver that reads, only slower, paces the publisher;
    /// one that stops reading gives no progress, is waited for once, and is cut off at
    /// `max_pending`.
    pub async fn wait_drained(&self, deadline: tokio::time::Instant) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.pending() <= self.stall_threshold() || self.out.lock().closed {
                return;
            }
            let step = (tokio::time::Instant::now() + STALL_STEP).min(deadline);
            if tokio::time::timeout_at(step, notified).await.is_err() {
                return;
            }
        }
    }

    // --- the writer's side ---

    /// Takes back the segments of `batch` (the last batch, written) for reuse and swaps the
    /// queued ones in, under one lock; tells whether the connection is closed. The bytes count
    /// as in flight until `wrote` says otherwise.
    pub fn take_batch(&self, batch: &mut VecDeque<Vec<u8>>) -> bool {
        let (closed, n) = {
            let mut out = self.out.lock();
            recycle(&mut out, batch);
            let n = out.len;
            if n > 0 {
                std::mem::swap(&mut out.segs, batch);
                out.len = 0;
            }
            (out.closed, n)
        };
        self.inflight.store(n, Ordering::Relaxed);
        closed
    }

    /// Every queued byte, taken out in one piece (tests and tools that read what a
    /// connection was sent).
    pub fn take_bytes(&self) -> Vec<u8> {
        let mut batch = VecDeque::new();
        self.take_batch(&mut batch);
        let bytes = batch.iter().flatten().copied().collect();
        recycle(&mut self.out.lock(), &mut batch);
        self.inflight.store(0, Ordering::Relaxed);
        bytes
    }

    /// The writer has `left` bytes of its batch still to write: stalled publishers may go on.
    pub fn wrote(&self, left: usize) {
        self.inflight.store(left, Ordering::Relaxed);
        self.drained.notify_waiters();
    }

    /// Wakes the writer with nothing queued: a stream that frames what it writes (WebSocket)
    /// has bytes of its own to send, which the writer's flush sends.
    pub fn wake_writer(&self) {
        self.wake.notify_one();
    }

    /// Resolves when there is something to write (or the connection closed).
    pub async fn writable(&self) {
        self.wake.notified().await
    }

    /// After the connection was idle a while: gives the kept segments back.
    pub fn shrink_idle(&self, batch: &mut VecDeque<Vec<u8>>) {
        *batch = VecDeque::new();
        let mut out = self.out.lock();
        out.free = Vec::new();
        if out.segs.is_empty() {
            out.segs = VecDeque::new();
        }
    }
}

/// After a written batch: its segments come back to `out` for reuse (up to a bound), `batch` is
/// left empty.
fn recycle(out: &mut OutBuf, batch: &mut VecDeque<Vec<u8>>) {
    for mut seg in batch.drain(..) {
        if out.free.len() < MAX_FREE && seg.capacity() <= SEG_MAX_FREE {
            seg.clear();
            out.free.push(seg);
        }
    }
}
