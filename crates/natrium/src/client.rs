//! One client connection: a reader task that parses, authenticates and routes what the client
//! sends, and a writer task that drains the client's outbound buffer to its socket.
//!
//! Publish path: parse (zero-copy) → match via the connection's own cache (no lock while the
//! account's generation is unchanged) → append MSG frames straight into each receiver's outbound
//! buffer (one short, per-receiver lock) → after the whole read is processed, wake each touched
//! receiver's writer once. A receiver whose buffer exceeds `max_pending` is cut off as a slow
//! consumer; the publisher never waits on a receiver.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use natrium_protocol::{
    encode, headers, parse_op, ClientOp, ConnectInfo, Limits, ParseError, Parsed,
};
use natrium_subjects::{
    is_valid_publish_subject, is_valid_queue, is_valid_subject, matches, Matches,
};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use crate::account::{Account, Forward, ForwardKind};
use crate::auth::{AuthError, ConnAuth, Credentials, Identity, Verdict};
use crate::perms::{ClientPerms, ResponseGrants, SubDecision};
use crate::server::ServerInner;

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
        };
        f.write_str(s)
    }
}

struct Outbound {
    buf: Vec<u8>,
    closed: bool,
    /// Messages and bytes delivered to this client (counted under the lock the append takes).
    out_msgs: u64,
    out_bytes: u64,
}

/// What the client told us about itself, and who it authenticated as; read by monitoring.
#[derive(Debug, Clone, Default)]
pub struct ConnMeta {
    pub name: String,
    pub lang: String,
    pub version: String,
    pub user: Option<String>,
    pub account: String,
    /// The TLS session, for TLS connections (set once after the handshake).
    pub tls: Option<Arc<crate::tls::TlsConnInfo>>,
}

/// A consistent-enough snapshot of a client's counters for monitoring.
#[derive(Debug, Clone, Default)]
pub struct ClientStats {
    pub in_msgs: u64,
    pub in_bytes: u64,
    pub out_msgs: u64,
    pub out_bytes: u64,
    pub pending_bytes: usize,
    pub subscriptions: usize,
}

/// The part of a client other tasks touch: its outbound buffer and its subscriptions.
pub struct ClientShared {
    pub cid: u64,
    pub addr: SocketAddr,
    out: Mutex<Outbound>,
    /// Wakes the writer when `out` goes from empty to non-empty or closes.
    wake: Notify,
    /// Wakes the reader when another task closes this client.
    kill: Notify,
    /// Wakes the reader after a configuration reload to re-check its credentials.
    reauth: Notify,
    /// Signalled by the writer after each write, for publishers stalled on this client.
    drained: Notify,
    close_reason: Mutex<Option<CloseReason>>,
    /// Whether the client accepts HMSG (set from CONNECT).
    headers: AtomicBool,
    /// After a TLS handshake: the client certificate's key id (`tls::key_id`), if it sent one;
    /// a reload that changes `pinned_certs` checks it again.
    pub(crate) tls_key_id: Mutex<Option<Option<String>>>,
    /// Set once the client counts against its account's connections (`meta.account`).
    registered: AtomicBool,
    /// Subscriptions by sid.
    subs: Mutex<FxHashMap<Box<[u8]>, SubRef>>,
    max_pending: usize,
    /// Set when the client has `allow_responses`: deliveries with a reply then record a grant.
    responses: Mutex<Option<(crate::options::ResponsePermission, ResponseGrants)>>,
    track_responses: AtomicBool,
    /// Bytes the writer has swapped out and not yet written (written only by the writer).
    inflight: std::sync::atomic::AtomicUsize,
    /// Written only by the reader, once per read (plain stores, no contention).
    in_msgs: AtomicU64,
    in_bytes: AtomicU64,
    /// Unix nanoseconds of the last read.
    last_activity: AtomicU64,
    pub start: std::time::SystemTime,
    pub meta: Mutex<ConnMeta>,
}

impl ClientShared {
    pub(crate) fn new(cid: u64, addr: SocketAddr, max_pending: usize) -> Arc<Self> {
        Arc::new(ClientShared {
            cid,
            addr,
            out: Mutex::new(Outbound {
                buf: Vec::new(),
                closed: false,
                out_msgs: 0,
                out_bytes: 0,
            }),
            wake: Notify::new(),
            kill: Notify::new(),
            reauth: Notify::new(),
            drained: Notify::new(),
            close_reason: Mutex::new(None),
            headers: AtomicBool::new(false),
            registered: AtomicBool::new(false),
            tls_key_id: Mutex::new(None),
            subs: Mutex::new(FxHashMap::default()),
            max_pending,
            responses: Mutex::new(None),
            track_responses: AtomicBool::new(false),
            inflight: std::sync::atomic::AtomicUsize::new(0),
            in_msgs: AtomicU64::new(0),
            in_bytes: AtomicU64::new(0),
            last_activity: AtomicU64::new(unix_nanos(std::time::SystemTime::now())),
            start: std::time::SystemTime::now(),
            meta: Mutex::new(ConnMeta {
                account: crate::account::GLOBAL_ACCOUNT.to_string(),
                ..ConnMeta::default()
            }),
        })
    }

    /// Appends protocol bytes (PONG, +OK, -ERR, INFO) and wakes the writer.
    pub(crate) fn send(&self, bytes: &[u8]) {
        if crate::logging::protocol_trace() && !bytes.starts_with(b"INFO ") {
            self.trace_out(bytes.strip_suffix(b"\r\n").unwrap_or(bytes));
        }
        {
            let mut out = self.out.lock();
            if out.closed {
                return;
            }
            out.buf.extend_from_slice(bytes);
        }
        self.wake.notify_one();
    }

    /// Traces one line this server sends the client (`->> [...]`), as nats-server's `-V` does.
    fn trace_out(&self, line: &[u8]) {
        tracing::trace!(
            "{} - cid:{} - \"{}\" - ->> [{}]",
            self.addr,
            self.cid,
            self.meta.lock().name,
            String::from_utf8_lossy(line)
        );
    }

    pub(crate) fn send_err(&self, text: &str) {
        let mut b = Vec::with_capacity(text.len() + 10);
        encode::err(&mut b, text);
        self.send(&b);
    }

    /// Closes the connection: the writer flushes what is queued (unless the client is a slow
    /// consumer, whose backlog is dropped) and the reader stops. The first reason wins.
    pub(crate) fn close(&self, reason: CloseReason) {
        {
            let mut r = self.close_reason.lock();
            if r.is_some() {
                return;
            }
            *r = Some(reason);
        }
        {
            let mut out = self.out.lock();
            out.closed = true;
            if matches!(
                reason,
                CloseReason::SlowConsumerPendingBytes | CloseReason::SlowConsumerWriteDeadline
            ) {
                out.buf = Vec::new();
            }
        }
        self.wake.notify_one();
        self.kill.notify_one();
    }

    /// Asks the reader to re-check its credentials (after a reload); a permit is kept if the
    /// reader is busy, so the request is never lost.
    pub(crate) fn request_reauth(&self) {
        self.reauth.notify_one();
    }

    /// Whether this client is a connection registered with account `name`.
    pub(crate) fn registered_with(&self, name: &str) -> bool {
        self.registered.load(Ordering::Acquire) && self.meta.lock().account == name
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        *self.close_reason.lock()
    }

    pub fn num_subs(&self) -> usize {
        self.subs.lock().len()
    }

    /// Bytes queued plus bytes the writer has taken but not yet written.
    fn pending(&self) -> usize {
        self.out.lock().buf.len() + self.inflight.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> ClientStats {
        let (out_msgs, out_bytes, pending_bytes) = {
            let out = self.out.lock();
            (out.out_msgs, out.out_bytes, out.buf.len())
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

    pub fn last_activity(&self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + Duration::from_nanos(self.last_activity.load(Ordering::Relaxed))
    }

    /// (subject, queue) of every subscription, for monitoring.
    pub fn subscription_list(&self) -> Vec<(String, Option<String>, String)> {
        self.subs
            .lock()
            .values()
            .map(|s| {
                (
                    String::from_utf8_lossy(&s.0.subject).into_owned(),
                    s.0.queue
                        .as_deref()
                        .map(|q| String::from_utf8_lossy(q).into_owned()),
                    String::from_utf8_lossy(&s.0.sid).into_owned(),
                )
            })
            .collect()
    }

    /// Above this many pending bytes a publisher briefly waits for this client's writer.
    fn stall_threshold(&self) -> usize {
        self.max_pending / 2
    }

    /// Waits, at most `STALL_MAX`, until this client's backlog drops below the stall threshold.
    /// Waits until this client's backlog drops below the stall threshold, as long as its writer
    /// keeps making progress: each wait for progress is at most `STALL_STEP`, the whole stall at
    /// most `STALL_MAX`. A receiver that reads, only slower, paces the publisher; one that stops
    /// reading gives no progress, is waited for once, and is cut off at `max_pending`.
    async fn wait_drained(&self, deadline: tokio::time::Instant) {
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
}

/// Smallest and largest read sizes (see `read_loop`).
const MIN_READ: usize = 512;
const MAX_READ: usize = 64 * 1024;

/// A publisher stalled on a lagging receiver waits at most `STALL_STEP` for each sign of progress
/// and `STALL_MAX` in all, per read. Like nats-server's stall it is bounded; a 5 ms total alone
/// let a fan-out benchmark cut live subscribers off as slow consumers on a busy machine.
const STALL_STEP: Duration = Duration::from_millis(5);
const STALL_MAX: Duration = Duration::from_millis(250);

/// Where a subscription's messages go.
pub enum Target {
    /// A connected client's outbound buffer.
    Client(Arc<ClientShared>),
    /// Another account (an import, or the reply path of a service import).
    Forward(Arc<Forward>),
    /// A server component or embedding program (see `internal`).
    Internal(Arc<crate::internal::InternalSink>),
}

pub(crate) fn unix_nanos(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A subscription; shared between its owner and the account's trie.
pub struct Subscription {
    pub target: Target,
    pub subject: Box<[u8]>,
    pub queue: Option<Box<[u8]>>,
    pub sid: Box<[u8]>,
    /// Auto-unsubscribe after this many deliveries; 0 means never.
    max: AtomicU64,
    delivered: AtomicU64,
    /// Subjects this subscription overlaps but its permissions deny; filtered at delivery.
    deny: Option<Vec<Box<[u8]>>>,
}

impl Subscription {
    /// An internal subscription that forwards into another account.
    pub(crate) fn forward(subject: &[u8], forward: Forward, max: u64) -> SubRef {
        SubRef(Arc::new(Subscription {
            target: Target::Forward(Arc::new(forward)),
            subject: subject.into(),
            queue: None,
            sid: Box::default(),
            max: AtomicU64::new(max),
            delivered: AtomicU64::new(0),
            deny: None,
        }))
    }

    /// An internal subscription delivering into `sink`.
    pub(crate) fn internal(
        subject: &[u8],
        queue: Option<&[u8]>,
        sink: Arc<crate::internal::InternalSink>,
    ) -> SubRef {
        SubRef(Arc::new(Subscription {
            target: Target::Internal(sink),
            subject: subject.into(),
            queue: queue.map(Into::into),
            sid: Box::default(),
            max: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            deny: None,
        }))
    }

    fn client(&self) -> Option<&Arc<ClientShared>> {
        match &self.target {
            Target::Client(c) => Some(c),
            Target::Forward(_) | Target::Internal(_) => None,
        }
    }
}

/// A handle on a subscription compared by identity, as the trie stores it.
#[derive(Clone)]
pub struct SubRef(pub Arc<Subscription>);

impl PartialEq for SubRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// The reader's per-connection cache of match results, valid while the account's generation holds.
struct MatchCache {
    generation: u64,
    results: FxHashMap<Box<[u8]>, Matches<SubRef>>,
}

const MATCH_CACHE_MAX: usize = 4096;

impl MatchCache {
    fn lookup(&mut self, account: &Account, subject: &[u8]) -> &Matches<SubRef> {
        let generation = account.generation();
        if generation != self.generation {
            self.results.clear();
            self.generation = generation;
        }
        if !self.results.contains_key(subject) {
            if self.results.len() >= MATCH_CACHE_MAX {
                self.results.clear();
            }
            let found = account.matches(subject);
            self.results.insert(subject.into(), found);
        }
        // Present: inserted just above if it was missing.
        &self.results[subject]
    }
}

/// Per-read delivery bookkeeping: which writers to wake, which subscriptions hit their max.
struct Delivery {
    cid: u64,
    echo: bool,
    flush: Vec<Arc<ClientShared>>,
    /// Subscriptions that reached their max, with the account whose trie holds them.
    expired: Vec<(Arc<Account>, SubRef)>,
    /// A receiver past its stall threshold during this read; the reader waits on it afterwards.
    stall: Vec<Arc<ClientShared>>,
    rng: fastrand::Rng,
}

struct Msg<'a> {
    subject: &'a [u8],
    reply: Option<&'a [u8]>,
    headers: Option<&'a [u8]>,
    payload: &'a [u8],
}

/// How deep forwarding between accounts may go (import cycles end here).
const MAX_FORWARD_DEPTH: u8 = 4;

impl Delivery {
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
        let max = s.max.load(Ordering::Relaxed);
        if max > 0 {
            let n = s.delivered.fetch_add(1, Ordering::Relaxed) + 1;
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
            f.to.add_response_route(reply, importer.clone());
        }
        let fm = Msg {
            subject: &subject,
            reply: m.reply,
            headers: m.headers,
            payload: m.payload,
        };
        let found = f.to.matches(&subject);
        self.deliver_all(&f.to, &found, &fm, depth + 1)
    }

    fn flush(&mut self) {
        for c in self.flush.drain(..) {
            c.wake.notify_one();
        }
    }
}

/// What the reader loop keeps for one connection.
pub(crate) struct Conn {
    shared: Arc<ClientShared>,
    server: Arc<ServerInner>,
    account: Arc<Account>,
    limits: Limits,
    connected: bool,
    verbose: bool,
    pedantic: bool,
    no_responders: bool,
    name: String,
    user: Option<String>,
    perms: Option<ClientPerms>,
    cache: MatchCache,
    dl: Delivery,
    pings_out: u32,
    in_msgs: u64,
    in_bytes: u64,
    /// The nonce sent in INFO and the client certificate's names (see `auth`).
    auth_ctx: ConnAuth,
    auth_required: bool,
    /// The first CONNECT, parsed; authenticated by the read loop (bcrypt may have to wait).
    pending_connect: Option<ConnectInfo>,
    /// What the client authenticated with and as, for the re-check after a reload.
    creds: Option<Credentials>,
    identity: Option<Identity>,
    /// Subscriptions this connection may hold; `None` is unlimited.
    max_subs: Option<usize>,
    /// When the credentials expire (user JWTs); the read loop closes the connection then.
    expires_at: Option<tokio::time::Instant>,
    /// `expires_at` changed: the read loop re-arms its timer.
    expiry_changed: bool,
    /// Ping interval, ping max and control line limit as the last reload left them.
    settings: crate::server::ConnSettings,
    /// `settings.ping_interval` changed: the read loop restarts its ping timer.
    ping_changed: bool,
    /// Counts against `max_unauthenticated_per_ip` until CONNECT succeeds.
    unauthenticated: Option<crate::server::Unauthenticated>,
}

/// An error that ends the connection, with the -ERR text to send first (if any).
struct Fatal {
    reason: CloseReason,
    err: Option<String>,
}

impl Fatal {
    fn new(reason: CloseReason, err: impl Into<String>) -> Self {
        Fatal {
            reason,
            err: Some(err.into()),
        }
    }
}

impl Conn {
    pub(crate) fn new(shared: Arc<ClientShared>, server: Arc<ServerInner>) -> Self {
        let account = server.global_account();
        let settings = server.conn_settings();
        let limits = Limits {
            max_control_line: settings.max_control_line,
            max_payload: settings.max_payload,
        };
        let auth_ctx = ConnAuth {
            ip: Some(shared.addr.ip()),
            ..ConnAuth::default()
        };
        Conn {
            dl: Delivery {
                cid: shared.cid,
                echo: true,
                flush: Vec::new(),
                expired: Vec::new(),
                stall: Vec::new(),
                rng: fastrand::Rng::new(),
            },
            shared,
            server,
            account,
            limits,
            connected: false,
            verbose: false,
            pedantic: false,
            no_responders: false,
            name: String::new(),
            user: None,
            perms: None,
            cache: MatchCache {
                generation: u64::MAX,
                results: FxHashMap::default(),
            },
            pings_out: 0,
            in_msgs: 0,
            in_bytes: 0,
            auth_ctx,
            expires_at: None,
            expiry_changed: false,
            settings,
            ping_changed: false,
            unauthenticated: None,
            auth_required: false,
            pending_connect: None,
            creds: None,
            identity: None,
            max_subs: None,
        }
    }

    /// The nonce sent in this connection's INFO (NKey users sign it).
    pub(crate) fn with_nonce(mut self, nonce: Option<String>) -> Self {
        self.auth_ctx.nonce = nonce;
        self
    }

    /// The slot this connection holds among its address's unauthenticated connections.
    pub(crate) fn with_slot(mut self, slot: crate::server::Unauthenticated) -> Self {
        self.unauthenticated = Some(slot);
        self
    }

    /// The client certificate's names, the session `/connz` reports and the key id
    /// `pinned_certs` checks, after a TLS handshake.
    pub(crate) fn with_tls(
        mut self,
        cert: Option<crate::tls::CertNames>,
        state: crate::tls::TlsConnInfo,
        key_id: Option<String>,
    ) -> Self {
        self.auth_ctx.cert = cert;
        self.shared.meta.lock().tls = Some(Arc::new(state));
        *self.shared.tls_key_id.lock() = Some(key_id);
        self
    }

    pub(crate) fn peer(&self) -> (SocketAddr, u64) {
        (self.shared.addr, self.shared.cid)
    }

    /// Resolves when another task closes this connection (shutdown, for one).
    pub(crate) async fn killed(&self) {
        self.shared.kill.notified().await
    }

    /// Ends a connection that never ran (a failed TLS handshake).
    pub(crate) fn abort(mut self, reason: CloseReason) {
        self.shared.close(reason);
        self.cleanup();
    }

    /// Runs the connection until it closes; `info` is the INFO line already encoded.
    pub(crate) async fn run<S>(mut self, stream: S, info: Vec<u8>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, wr) = tokio::io::split(stream);
        // Empty when the INFO already went out in plaintext before a TLS handshake.
        if !info.is_empty() {
            self.shared.send(&info);
        }
        let writer = tokio::spawn(write_loop(self.shared.clone(), wr, self.server.clone()));
        let reason = self.read_loop(&mut rd).await;
        self.shared.close(reason);
        let reason = self.shared.close_reason().unwrap_or(reason);
        self.cleanup();
        let _ = writer.await;
        tracing::debug!(
            "{} - cid:{} - \"{}\" - Client connection closed: {}",
            self.shared.addr,
            self.shared.cid,
            self.name,
            reason
        );
    }

    async fn read_loop<R: AsyncRead + Unpin>(&mut self, rd: &mut R) -> CloseReason {
        let mut rbuf = BytesMut::with_capacity(MIN_READ);
        // How much room the next read gets: doubled when a read fills it, halved when reads stay
        // small, so a busy publisher gets 64 KiB reads and an idle connection keeps 512 bytes.
        let mut read_size = MIN_READ;
        let new_ping = |every: Duration| {
            let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            // After a stall, do not fire the missed pings back to back (that would look stale).
            ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ping
        };
        let mut ping = new_ping(self.settings.ping_interval);
        let auth_required = self.server.auth.required();
        self.auth_required = auth_required;
        let auth_deadline = tokio::time::sleep(if auth_required {
            self.server.auth.current().timeout()
        } else {
            Duration::from_secs(u32::MAX as u64)
        });
        tokio::pin!(auth_deadline);
        let mut shutdown = self.server.shutdown_rx();
        loop {
            if std::mem::take(&mut self.ping_changed) {
                ping = new_ping(self.settings.ping_interval);
            }
            if std::mem::take(&mut self.expiry_changed) {
                if let Some(at) = self.expires_at {
                    auth_deadline.as_mut().reset(at);
                }
            }
            if rbuf.capacity() - rbuf.len() < read_size {
                rbuf.reserve(read_size);
            }
            let room = rbuf.capacity() - rbuf.len();
            let fatal = tokio::select! {
                biased;
                _ = self.shared.kill.notified() => {
                    return self.shared.close_reason().unwrap_or(CloseReason::ServerShutdown);
                }
                _ = shutdown.changed() => return CloseReason::ServerShutdown,
                r = rd.read_buf(&mut rbuf) => match r {
                    Ok(0) => return CloseReason::ClientClosed,
                    Err(_) => return CloseReason::ReadError,
                    Ok(n) => {
                        if n >= room {
                            read_size = (read_size * 2).min(MAX_READ);
                        } else if n < read_size / 4 {
                            read_size = (read_size / 2).max(MIN_READ);
                        }
                        let mut r = self.process(&mut rbuf);
                        while r.is_ok() {
                            let Some(info) = self.pending_connect.take() else { break };
                            r = self.connect_first(info, auth_deadline.deadline()).await;
                            if r.is_ok() {
                                r = self.process(&mut rbuf);
                            }
                        }
                        self.dl.flush();
                        let sh = &self.shared;
                        sh.in_msgs.store(self.in_msgs, Ordering::Relaxed);
                        sh.in_bytes.store(self.in_bytes, Ordering::Relaxed);
                        sh.last_activity.store(unix_nanos(std::time::SystemTime::now()), Ordering::Relaxed);
                        // Every receiver that fell behind during this read gets its turn.
                        let deadline = tokio::time::Instant::now() + STALL_MAX;
                        for slow in std::mem::take(&mut self.dl.stall) {
                            slow.wait_drained(deadline).await;
                        }
                        r.err()
                    }
                },
                _ = ping.tick() => {
                    if self.pings_out + 1 > self.settings.ping_max {
                        Some(Fatal::new(CloseReason::StaleConnection, "Stale Connection"))
                    } else {
                        self.pings_out += 1;
                        self.shared.send(encode::PING);
                        None
                    }
                }
                _ = &mut auth_deadline, if (auth_required && !self.connected) || (self.connected && self.expires_at.is_some()) => {
                    if self.connected {
                        Some(Fatal::new(CloseReason::AuthenticationExpired, "User Authentication Expired"))
                    } else {
                        Some(Fatal::new(CloseReason::AuthenticationTimeout, "Authentication Timeout"))
                    }
                }
                _ = self.shared.reauth.notified() => self.reauthorize().await.err(),
            };
            if let Some(f) = fatal {
                if let Some(e) = &f.err {
                    self.shared.send_err(e);
                    if f.reason != CloseReason::AuthenticationViolation {
                        tracing::error!("{} - cid:{} - {}", self.shared.addr, self.shared.cid, e);
                    }
                }
                return f.reason;
            }
            if rbuf.is_empty() && rbuf.capacity() > 2 * MAX_READ {
                rbuf = BytesMut::with_capacity(read_size);
            }
        }
    }

    /// Processes every complete operation in `rbuf` and removes them from it.
    fn process(&mut self, rbuf: &mut BytesMut) -> Result<(), Fatal> {
        let mut pos = 0;
        let result = loop {
            let parsed = match parse_op(&rbuf[pos..], &self.limits) {
                Ok(p) => p,
                Err(e) => break Err(self.parse_error(e)),
            };
            match parsed {
                Parsed::Incomplete { total } => {
                    if let Some(total) = total {
                        let have = rbuf.len() - pos;
                        rbuf.reserve(total.saturating_sub(have));
                    }
                    break Ok(());
                }
                Parsed::Op { op, len } => {
                    pos += len;
                    if !self.connected && !matches!(op, ClientOp::Connect(_)) && self.auth_required
                    {
                        break Err(Fatal::new(
                            CloseReason::AuthenticationViolation,
                            "Authorization Violation",
                        ));
                    }
                    if let (ClientOp::Connect(json), false) = (&op, self.connected) {
                        if crate::logging::protocol_trace() {
                            self.trace_in(&op);
                        }
                        // Authentication may wait for bcrypt: the read loop completes it (see
                        // `connect_first`) before the rest of the buffer is processed.
                        match ConnectInfo::from_json(json) {
                            Ok(info) => self.pending_connect = Some(info),
                            Err(_) => {
                                break Err(Fatal::new(
                                    CloseReason::ProtocolViolation,
                                    "Unknown Protocol Operation",
                                ))
                            }
                        }
                        break Ok(());
                    }
                    if let Err(f) = self.handle(op) {
                        break Err(f);
                    }
                }
            }
        };
        rbuf.advance(pos);
        result
    }

    /// Traces an operation the client sent (`<<- [...]`), as nats-server's `-V` does; passwords
    /// and tokens in CONNECT are redacted.
    fn trace_in(&self, op: &ClientOp<'_>) {
        let text = String::from_utf8_lossy;
        let line = match op {
            ClientOp::Pub {
                subject,
                reply,
                headers,
                payload,
            } => {
                let reply = reply.map(|r| format!(" {}", text(r))).unwrap_or_default();
                match headers {
                    Some(h) => format!(
                        "HPUB {}{reply} {} {}",
                        text(subject),
                        h.len(),
                        h.len() + payload.len()
                    ),
                    None => format!("PUB {}{reply} {}", text(subject), payload.len()),
                }
            }
            ClientOp::Sub {
                subject,
                queue,
                sid,
            } => format!(
                "SUB {} {} {}",
                text(subject),
                queue.map(text).unwrap_or_default(),
                text(sid)
            ),
            ClientOp::Unsub { sid, max } => match max {
                Some(m) => format!("UNSUB {} {m}", text(sid)),
                None => format!("UNSUB {}", text(sid)),
            },
            ClientOp::Ping => "PING".into(),
            ClientOp::Pong => "PONG".into(),
            ClientOp::Connect(json) => format!("CONNECT {}", redacted_connect(json)),
            ClientOp::Ignored => return,
        };
        let who = format!(
            "{} - cid:{} - \"{}\"",
            self.shared.addr, self.shared.cid, self.name
        );
        tracing::trace!("{who} - <<- [{line}]");
        if let ClientOp::Pub {
            headers, payload, ..
        } = op
        {
            let mut body = headers.unwrap_or_default().to_vec();
            body.extend_from_slice(payload);
            tracing::trace!("{who} - <<- MSG_PAYLOAD: [{:?}]", text(&body));
        }
    }

    fn parse_error(&self, e: ParseError) -> Fatal {
        let reason = match e {
            ParseError::MaxPayload { .. } => CloseReason::MaxPayloadExceeded,
            ParseError::ControlLineTooLong => CloseReason::MaxControlLineExceeded,
            _ => CloseReason::ProtocolViolation,
        };
        Fatal::new(reason, e.to_string())
    }

    fn handle(&mut self, op: ClientOp<'_>) -> Result<(), Fatal> {
        if crate::logging::protocol_trace() {
            self.trace_in(&op);
        }
        match op {
            ClientOp::Pub {
                subject,
                reply,
                headers,
                payload,
            } => {
                if headers.is_some()
                    && !self.shared.headers.load(Ordering::Relaxed)
                    && self.connected
                {
                    return Err(Fatal::new(
                        CloseReason::ProtocolViolation,
                        "Unknown Protocol Operation",
                    ));
                }
                // nats-server acknowledges a verbose PUB before delivering it.
                self.ok();
                self.in_msgs += 1;
                self.in_bytes += (payload.len() + headers.map_or(0, <[u8]>::len)) as u64;
                self.publish(&Msg {
                    subject,
                    reply,
                    headers,
                    payload,
                });
            }
            ClientOp::Sub {
                subject,
                queue,
                sid,
            } => self.subscribe(subject, queue, sid),
            ClientOp::Unsub { sid, max } => {
                self.unsubscribe(sid, max);
                self.ok();
            }
            ClientOp::Ping => self.shared.send(encode::PONG),
            ClientOp::Pong => self.pings_out = 0,
            ClientOp::Connect(json) => self.connect(json)?,
            ClientOp::Ignored => {}
        }
        Ok(())
    }

    fn ok(&self) {
        if self.verbose {
            self.shared.send(encode::OK);
        }
    }

    /// A CONNECT after the first: updates the client's options, never its identity.
    fn connect(&mut self, json: &[u8]) -> Result<(), Fatal> {
        let info = ConnectInfo::from_json(json).map_err(|_| {
            Fatal::new(CloseReason::ProtocolViolation, "Unknown Protocol Operation")
        })?;
        self.apply_connect(&info);
        Ok(())
    }

    /// The first CONNECT: authenticates (bcrypt, if any, runs off this task and must finish
    /// before `deadline`), joins the user's account and applies the client's options. A close
    /// requested meanwhile (shutdown, max connections) wins.
    async fn connect_first(
        &mut self,
        info: ConnectInfo,
        deadline: tokio::time::Instant,
    ) -> Result<(), Fatal> {
        let creds = Credentials::from(&info);
        let verdict = self.server.auth.current().check(&creds, &self.auth_ctx);
        let shared = self.shared.clone();
        let checked = tokio::select! {
            biased;
            _ = shared.kill.notified() => {
                return Err(Fatal {
                    reason: shared.close_reason().unwrap_or(CloseReason::ServerShutdown),
                    err: None,
                });
            }
            r = tokio::time::timeout_at(deadline, self.resolve(verdict)) => r,
        };
        let identity = match checked {
            Ok(Ok(id)) => id,
            Ok(Err(e)) => {
                self.server
                    .audit_auth_failure(&self.shared.addr, self.shared.cid, &e);
                return Err(Fatal::new(
                    CloseReason::AuthenticationViolation,
                    "Authorization Violation",
                ));
            }
            Err(_) => {
                return Err(Fatal::new(
                    CloseReason::AuthenticationTimeout,
                    "Authentication Timeout",
                ))
            }
        };
        if let Some(acc) = identity.account.as_deref() {
            self.account = self.server.account(acc).ok_or_else(|| {
                Fatal::new(
                    CloseReason::AuthenticationViolation,
                    "Authorization Violation",
                )
            })?;
            self.cache.generation = u64::MAX;
        }
        if self.account.add_connection().is_err() {
            return Err(Fatal::new(
                CloseReason::MaxAccountConnectionsExceeded,
                "maximum account active connections exceeded",
            ));
        }
        self.shared.meta.lock().account = self.account.name.clone();
        self.shared.registered.store(true, Ordering::Release);
        self.unauthenticated = None;
        self.set_permissions(identity.permissions.as_ref());
        self.apply_limits(&identity);
        self.user = identity.user.clone();
        self.set_expiry(identity.expires);
        self.identity = Some(identity);
        self.creds = Some(creds);
        self.account
            .total_connections
            .fetch_add(1, Ordering::Relaxed);
        self.apply_connect(&info);
        Ok(())
    }

    /// Finishes a check, running a bcrypt comparison through the server's limiter.
    async fn resolve(&self, v: Verdict) -> Result<Identity, AuthError> {
        match v {
            Verdict::Accept(id) => Ok(id),
            Verdict::Reject(e) => Err(e),
            Verdict::Bcrypt {
                hash,
                given,
                identity,
                fail,
            } => {
                let ip = self.shared.addr.ip();
                if self.server.bcrypt.verify(ip, hash, given).await {
                    Ok(identity)
                } else {
                    Err(fail)
                }
            }
        }
    }

    /// After a reload or an account JWT update: checks this connection's credentials against
    /// the new configuration. Refused credentials close it (`Authorization Violation`, or
    /// `User Authentication Revoked` for a revoked user JWT); a user moved to another account
    /// is closed to reconnect there; otherwise the new permissions apply from now on and
    /// subscriptions they no longer allow are removed.
    async fn reauthorize(&mut self) -> Result<(), Fatal> {
        let settings = self.server.conn_settings();
        if settings.ping_interval != self.settings.ping_interval {
            self.ping_changed = true;
        }
        self.limits.max_control_line = settings.max_control_line;
        self.settings = settings;
        let (Some(creds), Some(before)) = (self.creds.clone(), self.identity.clone()) else {
            return Ok(());
        };
        let verdict = self
            .server
            .auth
            .current()
            .recheck(&creds, &self.auth_ctx, &before);
        let identity = match self.resolve(verdict).await {
            Ok(id) => id,
            Err(AuthError::Jwt(crate::jwt::JwtError::Revoked)) => {
                tracing::info!(
                    "{} - cid:{} - user JWT revoked, closing",
                    self.shared.addr,
                    self.shared.cid
                );
                return Err(Fatal::new(
                    CloseReason::Revocation,
                    "User Authentication Revoked",
                ));
            }
            Err(e) => {
                self.server
                    .audit_auth_failure(&self.shared.addr, self.shared.cid, &e);
                tracing::info!(
                    "{} - cid:{} - credentials no longer accepted after reload, closing",
                    self.shared.addr,
                    self.shared.cid
                );
                return Err(Fatal::new(
                    CloseReason::AuthenticationViolation,
                    "Authorization Violation",
                ));
            }
        };
        let account = identity
            .account
            .as_deref()
            .unwrap_or(crate::account::GLOBAL_ACCOUNT);
        if account != self.account.name {
            tracing::info!(
                "{} - cid:{} - user {:?} moved to account {account:?} by reload, closing",
                self.shared.addr,
                self.shared.cid,
                identity.user.as_deref().unwrap_or("")
            );
            return Err(Fatal {
                reason: CloseReason::ClientClosed,
                err: None,
            });
        }
        if identity.permissions != before.permissions {
            self.set_permissions(identity.permissions.as_ref());
            self.recheck_subscriptions();
        }
        self.apply_limits(&identity);
        self.set_expiry(identity.expires);
        self.identity = Some(identity);
        let held = self.shared.num_subs();
        if self.max_subs.is_some_and(|max| held > max) {
            tracing::error!(
                "{} - cid:{} - maximum subscriptions exceeded ({held} held) after a limit change",
                self.shared.addr,
                self.shared.cid
            );
            return Err(Fatal::new(
                CloseReason::MaxSubscriptionsExceeded,
                "maximum subscriptions exceeded",
            ));
        }
        Ok(())
    }

    /// Takes this connection's subscription and payload limits from the server, its account
    /// and its user (see `ServerInner::client_limits`).
    fn apply_limits(&mut self, identity: &Identity) {
        let (subs, payload) = self.server.client_limits(&self.account, identity);
        self.max_subs = subs;
        self.limits.max_payload = payload;
    }

    fn set_expiry(&mut self, expires: Option<std::time::SystemTime>) {
        let at = expires.map(|e| {
            let left = e
                .duration_since(std::time::SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::time::Instant::now() + left
        });
        if at != self.expires_at {
            self.expires_at = at;
            self.expiry_changed = true;
        }
    }

    /// Compiles `p` for this connection (`None` lifts all restrictions).
    fn set_permissions(&mut self, p: Option<&crate::options::Permissions>) {
        let perms = p.map(ClientPerms::new);
        let responses = perms.as_ref().and_then(|p| p.responses.clone());
        {
            let mut r = self.shared.responses.lock();
            match (responses, r.as_mut()) {
                (Some(rp), Some((old, _))) => *old = rp,
                (Some(rp), None) => *r = Some((rp, ResponseGrants::default())),
                (None, _) => *r = None,
            }
            self.shared
                .track_responses
                .store(r.is_some(), Ordering::Relaxed);
        }
        self.perms = perms;
    }

    /// Re-applies subscribe permissions to live subscriptions: ones no longer allowed are removed
    /// (with nats-server's error naming the sid), ones whose partial denies changed are replaced.
    fn recheck_subscriptions(&mut self) {
        let subs: Vec<SubRef> = self.shared.subs.lock().values().cloned().collect();
        for sub in subs {
            let s = &sub.0;
            let decision = self.perms.as_ref().map_or(SubDecision::Allowed, |p| {
                p.check_subscribe(&s.subject, s.queue.as_deref())
            });
            let deny = match decision {
                SubDecision::Allowed => None,
                SubDecision::AllowedExcept(d) => Some(d),
                SubDecision::Denied => {
                    remove_subscription(&self.account, &sub);
                    let subject = String::from_utf8_lossy(&s.subject);
                    let sid = String::from_utf8_lossy(&s.sid);
                    let text = match &s.queue {
                        Some(q) => format!(
                            "Permissions Violation for Subscription to \"{subject}\" using queue \"{}\" (sid \"{sid}\")",
                            String::from_utf8_lossy(q)
                        ),
                        None => format!(
                            "Permissions Violation for Subscription to \"{subject}\" (sid \"{sid}\")"
                        ),
                    };
                    tracing::info!(
                        "{} - cid:{} - removed subscription {subject:?} (sid {sid:?}) of user {:?}: not authorized after reload",
                        self.shared.addr,
                        self.shared.cid,
                        self.user.as_deref().unwrap_or("")
                    );
                    self.shared.send_err(&text);
                    continue;
                }
            };
            if deny == s.deny {
                continue;
            }
            let replacement = SubRef(Arc::new(Subscription {
                target: Target::Client(self.shared.clone()),
                subject: s.subject.clone(),
                queue: s.queue.clone(),
                sid: s.sid.clone(),
                max: AtomicU64::new(s.max.load(Ordering::Relaxed)),
                delivered: AtomicU64::new(s.delivered.load(Ordering::Relaxed)),
                deny,
            }));
            {
                let mut map = self.shared.subs.lock();
                if map.get(&s.sid).is_some_and(|cur| cur == &sub) {
                    map.insert(s.sid.clone(), replacement.clone());
                } else {
                    continue;
                }
            }
            self.account.remove(&sub);
            self.account.insert(replacement);
        }
    }

    /// Applies CONNECT's client options (flags, name, echo, headers) and acknowledges it.
    fn apply_connect(&mut self, info: &ConnectInfo) {
        {
            let mut meta = self.shared.meta.lock();
            meta.name = info.name.clone().unwrap_or_default();
            meta.lang = info.lang.clone().unwrap_or_default();
            meta.version = info.version.clone().unwrap_or_default();
            meta.user = self.user.clone();
            meta.account = self.account.name.clone();
        }
        self.connected = true;
        self.verbose = info.verbose;
        self.pedantic = info.pedantic;
        self.dl.echo = info.echo;
        self.shared.headers.store(info.headers, Ordering::Relaxed);
        self.no_responders = info.no_responders && info.headers;
        self.name = format!(
            "{}{}{}",
            info.name.as_deref().unwrap_or(""),
            if info.lang.is_some() { ":" } else { "" },
            info.lang.as_deref().unwrap_or("")
        );
        self.ok();
    }

    fn publish(&mut self, m: &Msg<'_>) {
        // As nats-server: only a pedantic client is held to literal subjects. Clients publish
        // wildcards on purpose (nats-py creates a consumer on `$JS.API.CONSUMER.CREATE.S.C.a.>`);
        // such a message reaches subscriptions that match its tokens, `*` and `>` taken literally
        // except by wildcard subscriptions.
        let valid = if self.pedantic {
            is_valid_publish_subject(m.subject)
        } else {
            is_valid_subject(m.subject)
        };
        if !valid {
            self.shared.send_err("Invalid Publish Subject");
            return;
        }
        if let Some(perms) = &mut self.perms {
            if !perms.can_publish(m.subject) && !self.take_response_grant(m.subject) {
                self.violation("Publish to", m.subject, None);
                return;
            }
        }
        let found = self.cache.lookup(&self.account, m.subject);
        let delivered = self.dl.deliver_all(&self.account, found, m, 0);
        if !delivered && self.no_responders {
            if let Some(reply) = m.reply {
                self.send_no_responders(reply);
            }
        }
        if !self.dl.expired.is_empty() {
            for (account, sub) in std::mem::take(&mut self.dl.expired) {
                remove_subscription(&account, &sub);
            }
        }
    }

    fn take_response_grant(&self, subject: &[u8]) -> bool {
        if !self.shared.track_responses.load(Ordering::Relaxed) {
            return false;
        }
        self.shared
            .responses
            .lock()
            .as_mut()
            .is_some_and(|(_, grants)| grants.take(subject))
    }

    /// Sends nats-server's permissions error (the connection stays) and audits it.
    fn violation(&self, what: &str, subject: &[u8], queue: Option<&[u8]>) {
        let subject = String::from_utf8_lossy(subject);
        let text = match queue {
            Some(q) => format!(
                "Permissions Violation for {what} \"{subject}\" using queue \"{}\"",
                String::from_utf8_lossy(q)
            ),
            None => format!("Permissions Violation for {what} \"{subject}\""),
        };
        self.server.audit_violation(
            &self.account,
            self.user.as_deref(),
            &self.shared.addr,
            self.shared.cid,
            &text,
        );
        self.shared.send_err(&text);
    }

    /// The 503 status a requester gets when nobody listens, sent on its own reply subscription.
    fn send_no_responders(&mut self, reply: &[u8]) {
        let sid = {
            let subs = self.shared.subs.lock();
            subs.values()
                .find(|s| matches(&s.0.subject, reply))
                .map(|s| s.0.sid.clone())
        };
        if let Some(sid) = sid {
            let mut b = Vec::new();
            encode::msg(&mut b, reply, &sid, None, Some(headers::NO_RESPONDERS), b"");
            self.shared.send(&b);
        }
    }

    fn subscribe(&mut self, subject: &[u8], queue: Option<&[u8]>, sid: &[u8]) {
        if !is_valid_subject(subject) {
            self.shared.send_err("Invalid Subject");
            return;
        }
        if let Some(q) = queue {
            if !is_valid_queue(q) {
                self.shared.send_err("Invalid Queue Name");
                return;
            }
        }
        let deny = match self
            .perms
            .as_ref()
            .map(|p| p.check_subscribe(subject, queue))
        {
            None | Some(SubDecision::Allowed) => None,
            Some(SubDecision::AllowedExcept(d)) => Some(d),
            Some(SubDecision::Denied) => {
                self.violation("Subscription to", subject, queue);
                return;
            }
        };
        let sub = SubRef(Arc::new(Subscription {
            target: Target::Client(self.shared.clone()),
            subject: subject.into(),
            queue: queue.map(Into::into),
            sid: sid.into(),
            max: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            deny,
        }));
        {
            let mut subs = self.shared.subs.lock();
            if subs.contains_key(sid) {
                // nats-server ignores a SUB that reuses a live sid.
                drop(subs);
                self.ok();
                return;
            }
            if self.max_subs.is_some_and(|max| subs.len() >= max) {
                drop(subs);
                tracing::error!(
                    "{} - cid:{} - maximum subscriptions exceeded",
                    self.shared.addr,
                    self.shared.cid
                );
                self.shared.send_err("maximum subscriptions exceeded");
                return;
            }
            subs.insert(sid.into(), sub.clone());
        }
        self.account.insert(sub);
        self.ok();
    }

    fn unsubscribe(&mut self, sid: &[u8], max: Option<u64>) {
        let sub = self.shared.subs.lock().get(sid).cloned();
        let Some(sub) = sub else { return };
        if let Some(max) = max {
            let s = &sub.0;
            if max > 0 && s.delivered.load(Ordering::Relaxed) < max {
                s.max.store(max, Ordering::Relaxed);
                // A delivery racing with this store may have pushed `delivered` past `max`.
                if s.delivered.load(Ordering::Relaxed) < max {
                    return;
                }
            }
        }
        remove_subscription(&self.account, &sub);
    }

    fn cleanup(&mut self) {
        if self.shared.registered.swap(false, Ordering::AcqRel) {
            self.account.remove_connection();
        }
        let stats = self.shared.stats();
        let subs: Vec<SubRef> = self.shared.subs.lock().drain().map(|(_, s)| s).collect();
        for sub in &subs {
            self.account.remove(sub);
        }
        self.server
            .client_closed(&self.shared, &self.account, stats);
    }
}

/// Publishes a message that comes from no client (an internal client or the server itself).
pub(crate) fn publish_from(
    account: &Arc<Account>,
    subject: &[u8],
    reply: Option<&[u8]>,
    headers: Option<&[u8]>,
    payload: &[u8],
) -> bool {
    publish_routed(account, subject, subject, reply, headers, payload)
}

/// Like `publish_from`, but routed on `route` while the delivered MSG names `subject`: how
/// JetStream hands a stored message to a consumer's delivery or inbox subject.
pub(crate) fn publish_routed(
    account: &Arc<Account>,
    route: &[u8],
    subject: &[u8],
    reply: Option<&[u8]>,
    headers: Option<&[u8]>,
    payload: &[u8],
) -> bool {
    let m = RoutedMsg {
        subject,
        reply,
        headers,
        payload,
    };
    publish_routed_batch(account, route, [m]).0 > 0
}

/// Traces a delivery (`->> [MSG ...]`) to `client`.
fn trace_delivery(client: &ClientShared, m: &Msg<'_>, sid: &[u8], headers: Option<&[u8]>) {
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

/// A CONNECT's JSON for the trace, with `pass` and `auth_token` replaced as nats-server does.
fn redacted_connect(json: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(json) {
        Ok(mut v) => {
            for key in ["pass", "auth_token"] {
                if let Some(f) = v.get_mut(key) {
                    *f = serde_json::Value::from("[REDACTED]");
                }
            }
            v.to_string()
        }
        Err(_) => "[unparsable]".into(),
    }
}

/// One message of a batch for [`publish_routed_batch`].
pub(crate) struct RoutedMsg<'a> {
    pub subject: &'a [u8],
    pub reply: Option<&'a [u8]>,
    pub headers: Option<&'a [u8]>,
    pub payload: &'a [u8],
}

/// Receivers a batch left past their stall threshold.
pub(crate) struct Lagging(Vec<Arc<ClientShared>>);

impl Lagging {
    /// Waits (bounded like a publisher's stall) while each receiver's writer makes progress.
    pub(crate) async fn wait(self) {
        let deadline = tokio::time::Instant::now() + STALL_MAX;
        for c in self.0 {
            c.wait_drained(deadline).await;
        }
    }
}

/// Publishes a batch of messages to the subscribers of one `route` (a JetStream consumer's
/// deliveries): one subject match and one writer wake-up per receiver for the whole batch,
/// rather than per message. Returns how many messages reached someone, and the receivers now
/// lagging, for the caller to wait on before it sends more.
pub(crate) fn publish_routed_batch<'a>(
    account: &Arc<Account>,
    route: &[u8],
    msgs: impl IntoIterator<Item = RoutedMsg<'a>>,
) -> (usize, Option<Lagging>) {
    let mut dl = Delivery {
        cid: 0,
        echo: true,
        flush: Vec::new(),
        expired: Vec::new(),
        stall: Vec::new(),
        rng: fastrand::Rng::new(),
    };
    let found = account.matches(route);
    let mut delivered = 0;
    for m in msgs {
        let m = Msg {
            subject: m.subject,
            reply: m.reply,
            headers: m.headers,
            payload: m.payload,
        };
        delivered += usize::from(dl.deliver_all(account, &found, &m, 0));
    }
    dl.flush();
    for (account, sub) in std::mem::take(&mut dl.expired) {
        remove_subscription(&account, &sub);
    }
    let lagging = (!dl.stall.is_empty()).then(|| Lagging(std::mem::take(&mut dl.stall)));
    (delivered, lagging)
}

/// Removes a subscription from its client's sid map (if it has a client) and from the account.
fn remove_subscription(account: &Account, sub: &SubRef) {
    if let Some(client) = sub.0.client() {
        let mut subs = client.subs.lock();
        if subs.get(&sub.0.sid).is_some_and(|s| s == sub) {
            subs.remove(&sub.0.sid);
        }
    }
    account.remove(sub);
}

/// Outbound buffer capacity a busy client keeps between writes, and what an idle one keeps.
const MAX_RETAINED_OUT: usize = 8 * 1024 * 1024;
const MIN_RETAINED_OUT: usize = 64 * 1024;
/// How long a writer waits with nothing to write before shrinking its buffers.
const IDLE_SHRINK: Duration = Duration::from_secs(1);

/// Drains the outbound buffer to the socket, one write per batch, until the client closes.
async fn write_loop<W: AsyncWrite>(shared: Arc<ClientShared>, wr: W, server: Arc<ServerInner>) {
    tokio::pin!(wr);
    let mut spare: Vec<u8> = Vec::new();
    loop {
        let deadline = server.write_deadline();
        let closed = {
            let mut out = shared.out.lock();
            if !out.buf.is_empty() {
                std::mem::swap(&mut out.buf, &mut spare);
            }
            out.closed
        };
        if spare.is_empty() {
            if closed {
                break;
            }
            // Idle for a while: give big buffers back (a busy connection keeps them, see below).
            if tokio::time::timeout(IDLE_SHRINK, shared.wake.notified())
                .await
                .is_err()
            {
                if spare.capacity() > MIN_RETAINED_OUT {
                    spare = Vec::new();
                }
                let mut out = shared.out.lock();
                if out.buf.is_empty() && out.buf.capacity() > MIN_RETAINED_OUT {
                    out.buf = Vec::new();
                }
            }
            continue;
        }
        // Write in as many calls as the socket takes, telling stalled publishers about each bit
        // of progress; the write deadline applies to each call.
        let mut off = 0;
        let mut failed = None;
        shared.inflight.store(spare.len(), Ordering::Relaxed);
        while off < spare.len() {
            match tokio::time::timeout(deadline, wr.write(&spare[off..])).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    failed = Some(CloseReason::WriteError);
                    break;
                }
                Ok(Ok(n)) => {
                    off += n;
                    shared.inflight.store(spare.len() - off, Ordering::Relaxed);
                    shared.drained.notify_waiters();
                }
                Err(_) => {
                    tracing::info!(
                        "{} - cid:{} - Slow Consumer Detected: WriteDeadline of {:?} exceeded",
                        shared.addr,
                        shared.cid,
                        deadline
                    );
                    failed = Some(CloseReason::SlowConsumerWriteDeadline);
                    break;
                }
            }
        }
        if let Some(reason) = failed {
            shared.close(reason);
            break;
        }
        spare.clear();
        // Freeing and regrowing multi-megabyte buffers on every burst cost a tenth of the server's
        // time in page faults under fan-out (perf); keep up to this much while the client is busy.
        if spare.capacity() > MAX_RETAINED_OUT {
            spare = Vec::new();
        }
        shared.drained.notify_waiters();
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
}
