//! The reader task of a client connection: parses what the client sends, authenticates the
//! first CONNECT (bcrypt off the task, bounded by the auth timeout), enforces permissions and
//! limits, publishes through the router, pings, and re-checks itself after a reload.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use natrium_protocol::{
    encode, headers, parse_op, ClientOp, ConnectInfo, Limits, ParseError, Parsed,
};
use natrium_subjects::{is_valid_publish_subject, is_valid_queue, is_valid_subject};
use tokio::io::{AsyncRead, AsyncWrite};

use super::client::{Client, ClientEventKind, ConnSnapshot};
use super::context::{ConnContext, ConnSettings};
use super::registry::Unauthenticated;
use super::tls::TlsConnInfo;
use super::writer::write_loop;
use crate::auth::certs::CertNames;
use crate::auth::jwt::JwtError;
use crate::auth::{AuthError, ConnAuth, Credentials, Identity, Verdict};
use crate::perms::{ClientPerms, Permissions, SubDecision};
use crate::router::{
    remove_subscription, Account, CloseReason, Msg, Outbound, Publisher, SubAdded, Subscription,
    GLOBAL_ACCOUNT,
};
use crate::util::readbuf::ReadBuf;

/// The first PING after CONNECT comes this soon (or at the ping interval if shorter), plus up
/// to a fifth more at random, as nats-server sends it: its PONG measures the round-trip time
/// `/connz` reports.
const FIRST_PING: Duration = Duration::from_secs(2);

/// Smallest and largest read sizes (see `read_loop`). Reads are large so that a busy
/// publisher's socket is drained in few calls: on loopback each read of a full socket sends a
/// window update whose processing (and the sender's next transmit) runs on the reader's core;
/// with 64 KiB reads that kernel work cost 15% of publish-only 128 B throughput (perf).
const MIN_READ: usize = 512;
const MAX_READ: usize = 1024 * 1024;

/// A read is processed in slices of about this many bytes, each ended by `Publisher::end_read`:
/// a slice is one delivery batch, so the frames staged for receivers stay cache-sized.
const BATCH: usize = 64 * 1024;

/// What the reader loop keeps for one connection.
pub struct Conn {
    client: Arc<Client>,
    /// `client.out`, kept at hand: the outbound side every reply goes through.
    out: Arc<Outbound>,
    ctx: Arc<ConnContext>,
    account: Arc<Account>,
    limits: Limits,
    connected: bool,
    verbose: bool,
    pedantic: bool,
    no_responders: bool,
    name: String,
    user: Option<String>,
    perms: Option<ClientPerms>,
    /// Made at the connection's first publish (boxed: a subscriber-only connection, the
    /// common idle case, does not carry its match cache and delivery state).
    publisher: Option<Box<Publisher>>,
    /// `echo` from CONNECT, for the publisher.
    echo: bool,
    pings_out: u32,
    in_msgs: u64,
    in_bytes: u64,
    /// `in_msgs` and `in_bytes` as last charged to the account's publish rates.
    charged: (u64, u64),
    /// The nonce sent in INFO and the client certificate's names (see `auth`).
    auth_ctx: ConnAuth,
    auth_required: bool,
    /// The first CONNECT, parsed; authenticated by the read loop (bcrypt may have to wait).
    pending_connect: Option<ConnectInfo>,
    /// The client's options in force: nats-server's defaults until CONNECT, then what each
    /// CONNECT set over them.
    options: ConnectInfo,
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
    settings: ConnSettings,
    /// `settings.ping_interval` changed: the read loop restarts its ping timer.
    ping_changed: bool,
    /// Counts against `max_unauthenticated_per_ip` until CONNECT succeeds.
    unauthenticated: Option<Unauthenticated>,
    /// A WebSocket client's credentials from cookies, used where CONNECT has none.
    cookies: Option<Credentials>,
    /// When the connection was accepted: the time to CONNECT is the first RTT estimate.
    accepted: tokio::time::Instant,
    /// When the PING whose PONG is awaited went out, for the round-trip time.
    rtt_start: Option<tokio::time::Instant>,
    /// CONNECT succeeded: the read loop schedules the first PING.
    first_ping: bool,
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
    pub fn new(client: Arc<Client>, ctx: Arc<ConnContext>) -> Self {
        let account = ctx.accounts.global().clone();
        let settings = ctx.settings();
        let limits = Limits {
            max_control_line: settings.max_control_line,
            max_payload: settings.max_payload,
        };
        let out = client.out.clone();
        let auth_ctx = ConnAuth {
            ip: Some(out.addr.ip()),
            ..ConnAuth::default()
        };
        Conn {
            publisher: None,
            echo: true,
            client,
            out,
            ctx,
            account,
            limits,
            connected: false,
            // nats-server's defaults hold until CONNECT says otherwise.
            verbose: true,
            pedantic: true,
            no_responders: false,
            name: String::new(),
            user: None,
            perms: None,
            pings_out: 0,
            in_msgs: 0,
            charged: (0, 0),
            in_bytes: 0,
            auth_ctx,
            expires_at: None,
            expiry_changed: false,
            settings,
            ping_changed: false,
            unauthenticated: None,
            accepted: tokio::time::Instant::now(),
            rtt_start: None,
            first_ping: false,
            auth_required: false,
            pending_connect: None,
            options: ConnectInfo::default(),
            creds: None,
            identity: None,
            max_subs: None,
            cookies: None,
        }
    }

    /// Marks a client of the WebSocket listener: it authenticates with the websocket block's
    /// overrides (and `cookies`, the credentials its upgrade request carried in cookies) and is
    /// shown as a WebSocket connection.
    pub fn with_websocket(mut self, cookies: Option<Credentials>) -> Self {
        self.auth_ctx.websocket = true;
        self.cookies = cookies;
        self.client.meta.lock().websocket = true;
        self
    }

    /// The nonce sent in this connection's INFO (NKey users sign it).
    pub fn with_nonce(mut self, nonce: Option<String>) -> Self {
        self.auth_ctx.nonce = nonce;
        self
    }

    /// The slot this connection holds among its address's unauthenticated connections.
    pub fn with_slot(mut self, slot: Unauthenticated) -> Self {
        self.unauthenticated = Some(slot);
        self
    }

    /// The client certificate's names, the session `/connz` reports and the key id
    /// `pinned_certs` checks, after a TLS handshake.
    pub fn with_tls(
        mut self,
        cert: Option<CertNames>,
        state: TlsConnInfo,
        key_id: Option<String>,
    ) -> Self {
        self.auth_ctx.cert = cert;
        self.client.meta.lock().tls = Some(Arc::new(state));
        *self.client.tls_key_id.lock() = Some(key_id);
        self
    }

    pub fn peer(&self) -> (SocketAddr, u64) {
        (self.out.addr, self.out.cid)
    }

    /// Resolves when another task closes this connection (shutdown, for one).
    pub async fn killed(&self) {
        self.out.killed().await
    }

    /// Ends a connection that never ran (a failed TLS handshake).
    pub fn abort(mut self, reason: CloseReason) {
        self.out.close(reason);
        self.cleanup();
    }

    /// Runs the connection until it closes; `info` is the INFO line already encoded.
    pub async fn run<S>(mut self, stream: S, info: Vec<u8>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, wr) = tokio::io::split(stream);
        // Empty when the INFO already went out in plaintext before a TLS handshake.
        if !info.is_empty() {
            self.out.send(&info);
        }
        let writer = tokio::spawn(write_loop(self.out.clone(), wr, self.ctx.clone()));
        let reason = self.read_loop(&mut rd).await;
        self.out.close(reason);
        let reason = self.out.close_reason().unwrap_or(reason);
        self.cleanup();
        let _ = writer.await;
        tracing::debug!(
            "{} - cid:{} - \"{}\" - Client connection closed: {}",
            self.out.addr,
            self.out.cid,
            self.name,
            reason
        );
    }

    async fn read_loop<R: AsyncRead + Unpin>(&mut self, rd: &mut R) -> CloseReason {
        // A busy publisher gets 64 KiB reads and an idle connection keeps 512 bytes.
        let mut rbuf = ReadBuf::new(MIN_READ, MAX_READ);
        let new_ping = |every: Duration| {
            let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            // After a stall, do not fire the missed pings back to back (that would look stale).
            ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ping
        };
        let mut ping = new_ping(self.settings.ping_interval);
        let auth = self.ctx.authenticator(self.auth_ctx.websocket);
        let auth_required = auth.required();
        self.auth_required = auth_required;
        let auth_deadline = tokio::time::sleep(if auth_required {
            auth.timeout()
        } else {
            Duration::from_secs(u32::MAX as u64)
        });
        tokio::pin!(auth_deadline);
        let mut shutdown = self.ctx.shutdown_rx();
        // The wake-ups the loop waits on besides the socket, made once: made anew in each
        // iteration they registered and unregistered with their Notify every read.
        let (out, client) = (self.out.clone(), self.client.clone());
        let mut killed = std::pin::pin!(out.killed());
        let mut shut = std::pin::pin!(shutdown.changed());
        let mut reauth = std::pin::pin!(client.reauthorized());
        loop {
            if std::mem::take(&mut self.ping_changed) {
                ping = new_ping(self.settings.ping_interval);
            }
            if std::mem::take(&mut self.first_ping) {
                let every = self.settings.ping_interval;
                let first = every.min(FIRST_PING);
                let jitter = first.mul_f64(fastrand::f64() / 5.0);
                ping =
                    tokio::time::interval_at(tokio::time::Instant::now() + first + jitter, every);
                ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
            if std::mem::take(&mut self.expiry_changed) {
                if let Some(at) = self.expires_at {
                    auth_deadline.as_mut().reset(at);
                }
            }
            let fatal = tokio::select! {
                biased;
                _ = &mut killed => {
                    return self.out.close_reason().unwrap_or(CloseReason::ServerShutdown);
                }
                _ = &mut shut => return CloseReason::ServerShutdown,
                r = rbuf.read_from(rd) => match r {
                    Ok(0) => return CloseReason::ClientClosed,
                    Err(_) => return CloseReason::ReadError,
                    Ok(_) => loop {
                        let mut r = self.process(&mut rbuf);
                        while matches!(r, Ok(false)) {
                            let Some(info) = self.pending_connect.take() else { break };
                            // Boxed: authentication's futures are large and run once, and held
                            // inline they would make every connection's reader task larger.
                            r = match Box::pin(self.connect_first(info, auth_deadline.deadline())).await {
                                Ok(()) => self.process(&mut rbuf),
                                Err(f) => Err(f),
                            };
                        }
                        self.out.record_in(self.in_msgs, self.in_bytes);
                        if let Some(p) = self.publisher.as_mut() {
                            p.end_read().await;
                        }
                        if let Some(wait) = self.charge_rates() {
                            tokio::select! {
                                _ = &mut killed => {
                                    return self.out.close_reason().unwrap_or(CloseReason::ServerShutdown);
                                }
                                _ = &mut shut => return CloseReason::ServerShutdown,
                                _ = tokio::time::sleep(wait) => {}
                            }
                        }
                        match r {
                            Ok(true) => {}
                            Ok(false) => break None,
                            Err(f) => break Some(f),
                        }
                    },
                },
                _ = ping.tick() => {
                    if self.pings_out + 1 > self.settings.ping_max {
                        Some(Fatal::new(CloseReason::StaleConnection, "Stale Connection"))
                    } else {
                        self.pings_out += 1;
                        self.rtt_start = Some(tokio::time::Instant::now());
                        self.out.send(encode::PING);
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
                _ = &mut reauth => {
                    reauth.set(client.reauthorized());
                    Box::pin(self.reauthorize()).await.err()
                }
            };
            if let Some(f) = fatal {
                if let Some(e) = &f.err {
                    self.out.send_err(e);
                    if f.reason != CloseReason::AuthenticationViolation {
                        tracing::error!("{} - cid:{} - {}", self.out.addr, self.out.cid, e);
                    }
                }
                return f.reason;
            }
            rbuf.settle();
        }
    }

    /// Processes the complete operations in `rbuf`, up to about `BATCH` bytes of them, and
    /// removes them from it. Ok(true): it stopped at the batch's end, and more may follow.
    fn process(&mut self, rbuf: &mut BytesMut) -> Result<bool, Fatal> {
        let mut pos = 0;
        let result = loop {
            if pos >= BATCH {
                break Ok(true);
            }
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
                    break Ok(false);
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
                        let mut info = self.options.clone();
                        match info.update_from_json(json) {
                            Ok(()) => self.pending_connect = Some(info),
                            Err(e) => break Err(self.bad_connect(e)),
                        }
                        break Ok(false);
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
            self.out.addr, self.out.cid, self.name
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
        if let ParseError::BadArgs(what) = e {
            // nats-server closes a connection whose op has malformed arguments without an
            // -ERR, and logs why.
            tracing::error!("{} - cid:{} - {what}", self.out.addr, self.out.cid);
            return Fatal {
                reason: CloseReason::ProtocolViolation,
                err: None,
            };
        }
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
                if headers.is_some() && !self.out.headers() && self.connected {
                    return Err(Fatal::new(
                        CloseReason::ProtocolViolation,
                        "Unknown Protocol Operation",
                    ));
                }
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
            ClientOp::Ping => self.out.send(encode::PONG),
            ClientOp::Pong => {
                self.pings_out = 0;
                if let Some(sent) = self.rtt_start.take() {
                    self.out.set_rtt(sent.elapsed());
                }
            }
            ClientOp::Connect(json) => self.connect(json)?,
            ClientOp::Ignored => {}
        }
        Ok(())
    }

    fn ok(&self) {
        if self.verbose {
            self.out.send(encode::OK);
        }
    }

    /// A CONNECT after the first: updates the client's options, never its identity.
    fn connect(&mut self, json: &[u8]) -> Result<(), Fatal> {
        let mut info = self.options.clone();
        info.update_from_json(json)
            .map_err(|e| self.bad_connect(e))?;
        self.apply_connect(&info);
        Ok(())
    }

    /// A CONNECT whose JSON does not decode (`CONNECT []`) is a protocol error: as nats-server,
    /// the connection is closed without an -ERR and the reason logged.
    fn bad_connect(&self, e: serde_json::Error) -> Fatal {
        tracing::error!(
            "{} - cid:{} - invalid CONNECT options: {e}",
            self.out.addr,
            self.out.cid
        );
        Fatal {
            reason: CloseReason::ProtocolViolation,
            err: None,
        }
    }

    /// The first CONNECT: authenticates (bcrypt, if any, runs off this task and must finish
    /// before `deadline`), joins the user's account and applies the client's options. A close
    /// requested meanwhile (shutdown, max connections) wins.
    async fn connect_first(
        &mut self,
        info: ConnectInfo,
        deadline: tokio::time::Instant,
    ) -> Result<(), Fatal> {
        let mut creds = Credentials::from(&info);
        if let Some(cookies) = &self.cookies {
            creds.fill_from(cookies);
        }
        let out = self.out.clone();
        // Account lookups (URL resolver) and bcrypt both count against the auth timeout.
        let ctx = self.ctx.clone();
        let check = async {
            let verdict = ctx
                .authenticate(&info, &creds, &self.auth_ctx, &self.client)
                .await;
            self.resolve(verdict).await
        };
        let checked = tokio::select! {
            biased;
            _ = out.killed() => {
                return Err(Fatal {
                    reason: out.close_reason().unwrap_or(CloseReason::ServerShutdown),
                    err: None,
                });
            }
            r = tokio::time::timeout_at(deadline, check) => r,
        };
        let identity = match checked {
            Ok(Ok(id)) => id,
            Ok(Err(e)) => {
                self.ctx
                    .audit_auth_failure(&self.out.addr, self.out.cid, &e);
                self.ctx
                    .client_event(ClientEventKind::AuthError, || self.refused(&info));
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
            self.account = self.ctx.accounts.get(acc).ok_or_else(|| {
                Fatal::new(
                    CloseReason::AuthenticationViolation,
                    "Authorization Violation",
                )
            })?;
            if let Some(p) = self.publisher.as_mut() {
                p.forget_matches();
            }
        }
        if self.account.add_connection().is_err() {
            return Err(Fatal::new(
                CloseReason::MaxAccountConnectionsExceeded,
                "maximum account active connections exceeded",
            ));
        }
        self.client.meta.lock().account = self.account.name.clone();
        self.client.set_registered(true);
        self.ctx.connection_count_changed(&self.account);
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
        // As nats-server: the time from accept to CONNECT is the first RTT estimate; the PONG
        // to the first PING, soon after, measures it.
        self.out.set_rtt(self.accepted.elapsed());
        self.first_ping = true;
        self.apply_connect(&info);
        self.ctx
            .client_event(ClientEventKind::Connect, || self.client.snapshot(false));
        Ok(())
    }

    /// The connection as a refused CONNECT left it, for the auth error event: the client's
    /// options and the user it claimed (a token is not repeated: nats-server puts it there).
    fn refused(&self, info: &ConnectInfo) -> ConnSnapshot {
        let mut s = self.client.snapshot(true);
        s.reason = Some(CloseReason::AuthenticationViolation);
        s.name = info.name.clone().unwrap_or_default();
        s.meta.lang = info.lang.clone().unwrap_or_default();
        s.meta.version = info.version.clone().unwrap_or_default();
        s.meta.user = info
            .nkey
            .clone()
            .or_else(|| info.user.clone())
            .or_else(|| info.auth_token.as_ref().map(|_| "[REDACTED]".to_string()));
        s
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
                let ip = self.out.addr.ip();
                if self.ctx.bcrypt.verify(ip, hash, given).await {
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
        let settings = self.ctx.settings();
        if settings.ping_interval != self.settings.ping_interval {
            self.ping_changed = true;
        }
        self.limits.max_control_line = settings.max_control_line;
        self.settings = settings;
        let (Some(creds), Some(before)) = (self.creds.clone(), self.identity.clone()) else {
            return Ok(());
        };
        let verdict = self.ctx.authenticator(self.auth_ctx.websocket).recheck(
            &creds,
            &self.auth_ctx,
            &before,
        );
        let identity = match self.resolve(verdict).await {
            Ok(id) => id,
            Err(AuthError::Jwt(JwtError::Revoked)) => {
                tracing::info!(
                    "{} - cid:{} - user JWT revoked, closing",
                    self.out.addr,
                    self.out.cid
                );
                return Err(Fatal::new(
                    CloseReason::Revocation,
                    "User Authentication Revoked",
                ));
            }
            // A user JWT that expired before the re-check closes as its expiry timer would.
            Err(AuthError::Jwt(JwtError::Expired)) => {
                return Err(Fatal::new(
                    CloseReason::AuthenticationExpired,
                    "User Authentication Expired",
                ));
            }
            Err(e) => {
                self.ctx
                    .audit_auth_failure(&self.out.addr, self.out.cid, &e);
                tracing::info!(
                    "{} - cid:{} - credentials no longer accepted after reload, closing",
                    self.out.addr,
                    self.out.cid
                );
                return Err(Fatal::new(
                    CloseReason::AuthenticationViolation,
                    "Authorization Violation",
                ));
            }
        };
        let account = identity.account.as_deref().unwrap_or(GLOBAL_ACCOUNT);
        if account != self.account.name {
            tracing::info!(
                "{} - cid:{} - user {:?} moved to account {account:?} by reload, closing",
                self.out.addr,
                self.out.cid,
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
        let held = self.out.num_subs();
        if self.max_subs.is_some_and(|max| held > max) {
            tracing::error!(
                "{} - cid:{} - maximum subscriptions exceeded ({held} held) after a limit change",
                self.out.addr,
                self.out.cid
            );
            return Err(Fatal::new(
                CloseReason::MaxSubscriptionsExceeded,
                "maximum subscriptions exceeded",
            ));
        }
        Ok(())
    }

    /// Charges what this read published to the account's publish rates (once per read, not
    /// per message); returns how long to wait before reading again when the account is over
    /// them (the client slows down through TCP back pressure; nothing is dropped).
    fn charge_rates(&mut self) -> Option<Duration> {
        let (msgs, bytes) = (
            self.in_msgs - self.charged.0,
            self.in_bytes - self.charged.1,
        );
        self.charged = (self.in_msgs, self.in_bytes);
        let rates = &self.account.rates;
        if !rates.limited() {
            return None;
        }
        let wait = rates.charge(msgs, bytes);
        (!wait.is_zero()).then_some(wait)
    }

    /// Takes this connection's subscription and payload limits from the server, its account
    /// and its user (see `ServerInner::client_limits`).
    fn apply_limits(&mut self, identity: &Identity) {
        let (subs, payload) = self.ctx.client_limits(&self.account, identity);
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
    fn set_permissions(&mut self, p: Option<&Permissions>) {
        let perms = p.map(ClientPerms::new);
        self.out
            .set_responses(perms.as_ref().and_then(|p| p.responses.clone()));
        self.perms = perms;
    }

    /// Re-applies subscribe permissions to live subscriptions: ones no longer allowed are removed
    /// (with nats-server's error naming the sid), ones whose partial denies changed are replaced.
    fn recheck_subscriptions(&mut self) {
        for sub in self.out.subs() {
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
                        self.out.addr,
                        self.out.cid,
                        self.user.as_deref().unwrap_or("")
                    );
                    self.out.send_err(&text);
                    continue;
                }
            };
            if s.deny() == deny.as_deref() {
                continue;
            }
            let replacement = sub.with_deny(deny);
            if self.out.replace_sub(&sub, &replacement) {
                self.account.remove(&sub);
                self.account.insert(replacement);
            }
        }
    }

    /// Applies CONNECT's client options (flags, name, echo, headers) and acknowledges it.
    fn apply_connect(&mut self, info: &ConnectInfo) {
        {
            let mut meta = self.client.meta.lock();
            meta.lang = info.lang.clone().unwrap_or_default();
            meta.version = info.version.clone().unwrap_or_default();
            meta.user = self.user.clone();
            meta.account = self.account.name.clone();
        }
        self.options = info.clone();
        self.out.set_name(info.name.as_deref().unwrap_or_default());
        self.connected = true;
        self.verbose = info.verbose;
        self.pedantic = info.pedantic;
        self.echo = info.echo;
        if let Some(p) = self.publisher.as_mut() {
            p.set_echo(info.echo);
        }
        self.out.set_headers(info.headers);
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
        // As nats-server: only a pedantic client is told that a publish subject is not a
        // literal one, and even then the message goes on. Clients publish wildcards on purpose
        // (nats-py creates a consumer on `$JS.API.CONSUMER.CREATE.S.C.a.>`); such a message
        // reaches subscriptions that match its tokens, `*` and `>` taken literally except by
        // wildcard subscriptions. A subject that is not one at all (`foo..bar`) matches nothing:
        // the message is counted, acknowledged to a verbose client, answered with no responders
        // and otherwise dropped, without an error unless the client is pedantic.
        if self.pedantic && !is_valid_publish_subject(m.subject) {
            self.out.send_err("Invalid Publish Subject");
        }
        if let Some(perms) = &mut self.perms {
            if !perms.can_publish(m.subject) && !self.out.take_response_grant(m.subject) {
                self.violation("Publish to", m.subject, None);
                return;
            }
        }
        // nats-server acknowledges a verbose PUB once it passed the permission check, before
        // delivering it.
        self.ok();
        let delivered = is_valid_subject(m.subject) && {
            let (out, echo) = (&self.out, self.echo);
            let p = self.publisher.get_or_insert_with(|| {
                let mut p = Publisher::new(out.cid).with_stats(out.cache_stats.clone());
                p.set_echo(echo);
                Box::new(p)
            });
            p.publish(&self.account, m)
        };
        if !delivered && self.no_responders {
            if let Some(reply) = m.reply {
                self.send_no_responders(reply);
            }
        }
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
        self.ctx.audit_violation(
            &self.account,
            self.user.as_deref(),
            &self.out.addr,
            self.out.cid,
            &text,
        );
        self.out.send_err(&text);
    }

    /// The 503 status a requester gets when nobody listens, sent on its own reply subscription.
    fn send_no_responders(&mut self, reply: &[u8]) {
        if let Some(sid) = self.out.sid_matching(reply) {
            let mut b = Vec::new();
            encode::msg(&mut b, reply, &sid, None, Some(headers::NO_RESPONDERS), b"");
            self.out.send(&b);
        }
    }

    fn subscribe(&mut self, subject: &[u8], queue: Option<&[u8]>, sid: &[u8]) {
        if !is_valid_subject(subject) {
            self.out.send_err("Invalid Subject");
            return;
        }
        if let Some(q) = queue {
            if !is_valid_queue(q) {
                self.out.send_err("Invalid Queue Name");
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
        let sub = Subscription::client(self.out.clone(), subject, queue, sid, deny);
        match self.out.add_sub(&sub, self.max_subs) {
            SubAdded::Added => self.account.insert(sub),
            // nats-server ignores a SUB that reuses a live sid.
            SubAdded::SidInUse => {}
            SubAdded::TooMany => {
                tracing::error!(
                    "{} - cid:{} - maximum subscriptions exceeded",
                    self.out.addr,
                    self.out.cid
                );
                self.out.send_err("maximum subscriptions exceeded");
                return;
            }
        }
        self.ok();
    }

    fn unsubscribe(&mut self, sid: &[u8], max: Option<u64>) {
        let Some(sub) = self.out.sub(sid) else { return };
        if sub.0.expire_after(max.unwrap_or(0)) {
            remove_subscription(&self.account, &sub);
        }
    }

    fn cleanup(&mut self) {
        let registered = self.client.set_registered(false);
        if registered {
            self.account.remove_connection();
            self.ctx.connection_count_changed(&self.account);
        }
        let snapshot = self.client.snapshot(true);
        if registered {
            self.ctx
                .client_event(ClientEventKind::Disconnect, || snapshot.clone());
        }
        for sub in self.out.drain_subs() {
            self.account.remove(&sub);
        }
        self.ctx.registry.closed(snapshot, &self.account);
    }
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
