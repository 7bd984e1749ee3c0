//! `js-pub` and `js-info`: JetStream publishing acknowledged by PubAcks, and a stream's state.
//!
//! `js-pub` (re)creates a stream over the `$JS.API` (delete if present, then create), and P
//! publishers publish their share of N messages to its subject, each message with its own reply
//! subject `_INBOX.<pid>.<publisher>.<n>` under the publisher's wildcard subscription. PubAcks are
//! scanned in place: one with an `"error"` field counts as an error, any other as acknowledged.
//! `--sync` keeps one publish outstanding per publisher, otherwise up to `--window`. Latency runs
//! from before the PUB is written to when its PubAck is complete (the `<n>` of the reply subject
//! finds the send time in a ring of `window` slots). Frames are encoded into one reused buffer, so
//! the hot loop allocates nothing per message. At the end STREAM.INFO must report exactly the
//! acknowledged messages.
//!
//! `js-info` polls STREAM.INFO, connecting again while the server is not listening yet, until the
//! stream holds at least `--wait-msgs` messages: how long a restarted server takes to serve its
//! recovered stream.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use memchr::memmem;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::{sleep, timeout_at, Instant};

use crate::conn::{Conn, BIG_BUF, HANDSHAKE_TIMEOUT, SMALL_BUF};
use crate::proto::{self, Frame};
use crate::report::{group, nanos_histogram, Cpu, CpuWindow, Latency, Rate};

/// How long one `$JS.API` request may take (deleting a large stream is the slow one).
const API_TIMEOUT: Duration = Duration::from_secs(30);
/// JetStream's error code for "stream not found".
const STREAM_NOT_FOUND: u64 = 10059;

// --- the $JS.API -------------------------------------------------------------------------------

/// A connection for `$JS.API` requests: one wildcard inbox, one request at a time.
pub struct Api {
    conn: Conn,
    /// `_INBOX.<pid>.api.`; request k replies to `<inbox>k`.
    inbox: String,
    next: u64,
}

pub enum ApiReply {
    Json(Value),
    /// Nobody subscribes to the API subject: JetStream is off, or not up yet.
    NoResponders,
}

impl Api {
    pub async fn connect(addr: &str) -> Result<Api> {
        let mut conn = Conn::connect_with_headers(addr, "bench-js-api", SMALL_BUF).await?;
        let inbox = format!("_INBOX.{}.api.", std::process::id());
        let mut cmd = Vec::new();
        proto::push_sub(&mut cmd, format!("{inbox}*").as_bytes(), None, 1);
        cmd.extend_from_slice(proto::PING);
        conn.write_all(&cmd).await?;
        conn.until_pong(Instant::now() + HANDSHAKE_TIMEOUT).await?;
        Ok(Api {
            conn,
            inbox,
            next: 0,
        })
    }

    /// Sends one request and waits up to `wait` for its answer; answers to earlier requests that
    /// timed out are skipped.
    pub async fn request(
        &mut self,
        subject: &str,
        body: &[u8],
        wait: Duration,
    ) -> Result<ApiReply> {
        self.next += 1;
        let reply = format!("{}{}", self.inbox, self.next);
        let mut frame = Vec::with_capacity(subject.len() + reply.len() + body.len() + 32);
        proto::push_pub(&mut frame, subject.as_bytes(), Some(reply.as_bytes()), body);
        let deadline = Instant::now() + wait;
        timeout_at(deadline, self.conn.write_all(&frame))
            .await
            .map_err(|_| anyhow!("timed out sending {subject}"))??;
        loop {
            let mut pings = 0;
            let mut answer = None;
            while let Some(f) = self.conn.next_frame()? {
                match f {
                    Frame::Msg {
                        subject: to,
                        payload,
                        ..
                    } if to == reply.as_bytes() => {
                        answer = Some(
                            api_reply(payload).with_context(|| format!("answer to {subject}"))?,
                        );
                        break;
                    }
                    Frame::Ping => pings += 1,
                    Frame::Err(e) => bail!("server error: {}", String::from_utf8_lossy(e)),
                    Frame::Msg { .. } | Frame::Pong | Frame::Ok | Frame::Info(_) => {}
                }
            }
            for _ in 0..pings {
                self.conn.write_all(proto::PONG).await?;
            }
            if let Some(a) = answer {
                return Ok(a);
            }
            self.conn
                .fill_until(deadline)
                .await
                .with_context(|| format!("no answer to {subject}"))?;
        }
    }

    /// A request that must be answered with JSON.
    pub async fn json(&mut self, subject: &str, body: &[u8]) -> Result<Value> {
        match self.request(subject, body, API_TIMEOUT).await? {
            ApiReply::Json(v) => Ok(v),
            ApiReply::NoResponders => {
                bail!("no responders for {subject}: JetStream is not enabled on this server (-js)")
            }
        }
    }
}

/// An API answer: a status-only header block (`NATS/1.0 503`) or a JSON document.
fn api_reply(payload: &[u8]) -> Result<ApiReply> {
    if payload.starts_with(b"NATS/1.0") {
        let status = payload.get(9..12).unwrap_or_default();
        if status == b"503" {
            return Ok(ApiReply::NoResponders);
        }
        bail!("unexpected status {:?}", String::from_utf8_lossy(status));
    }
    Ok(ApiReply::Json(serde_json::from_slice(payload)?))
}

/// The `error` object of an API answer, if it has one.
pub fn api_error(v: &Value) -> Option<&Value> {
    v.get("error").filter(|e| !e.is_null())
}

/// Deletes the stream if it exists, then creates it with one subject.
pub async fn recreate_stream(
    api: &mut Api,
    name: &str,
    subject: &str,
    storage: &str,
) -> Result<()> {
    recreate_replicated_stream(api, name, subject, storage, 1).await
}

/// JetStream's "temporarily unavailable" (10008) and "insufficient resources" (10023) codes,
/// which a cluster answers while its meta group or its peers are still forming.
const CLUSTER_FORMING: [u64; 2] = [10008, 10023];
/// How long [`recreate_replicated_stream`] keeps asking while a cluster forms.
const FORMING_WAIT: Duration = Duration::from_secs(30);

/// Deletes the stream if it exists, then creates it with one subject and `replicas` copies. In
/// a cluster that is still forming (no responders yet, 10008, 10023) both requests are asked
/// again every 250 ms, for up to 30 s.
pub async fn recreate_replicated_stream(
    api: &mut Api,
    name: &str,
    subject: &str,
    storage: &str,
    replicas: usize,
) -> Result<()> {
    let until = Instant::now() + FORMING_WAIT;
    let deleted =
        ask_while_forming(api, &format!("$JS.API.STREAM.DELETE.{name}"), b"", until).await?;
    if let Some(e) = api_error(&deleted) {
        if e.get("err_code").and_then(Value::as_u64) != Some(STREAM_NOT_FOUND) {
            bail!("deleting stream {name}: {e}");
        }
    }
    let config = json!({"name": name, "subjects": [subject], "storage": storage,
                        "num_replicas": replicas});
    let created = ask_while_forming(
        api,
        &format!("$JS.API.STREAM.CREATE.{name}"),
        config.to_string().as_bytes(),
        until,
    )
    .await?;
    if let Some(e) = api_error(&created) {
        bail!("creating stream {name}: {e}");
    }
    Ok(())
}

/// One API request, asked again every 250 ms until `until` while the answer says the cluster
/// is still forming.
async fn ask_while_forming(
    api: &mut Api,
    subject: &str,
    body: &[u8],
    until: Instant,
) -> Result<Value> {
    loop {
        let answer = match api.request(subject, body, API_TIMEOUT).await? {
            ApiReply::Json(v) => {
                let code = api_error(&v)
                    .and_then(|e| e.get("err_code"))
                    .and_then(Value::as_u64);
                if !code.is_some_and(|c| CLUSTER_FORMING.contains(&c)) {
                    return Ok(v);
                }
                v.to_string()
            }
            ApiReply::NoResponders => "no responders".to_string(),
        };
        if Instant::now() >= until {
            bail!("{subject}: the cluster did not form within {FORMING_WAIT:?}: {answer}");
        }
        sleep(Duration::from_millis(250)).await;
    }
}

/// The figures of a stream's `state` the generator checks.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamState {
    pub messages: u64,
    pub bytes: u64,
    pub first_seq: u64,
    pub last_seq: u64,
}

impl StreamState {
    fn from_info(v: &Value) -> Result<StreamState> {
        let state = v
            .get("state")
            .ok_or_else(|| anyhow!("STREAM.INFO answer without a state: {v}"))?;
        let field = |k: &str| state.get(k).and_then(Value::as_u64).unwrap_or(0);
        Ok(StreamState {
            messages: field("messages"),
            bytes: field("bytes"),
            first_seq: field("first_seq"),
            last_seq: field("last_seq"),
        })
    }
}

pub async fn stream_state(api: &mut Api, name: &str) -> Result<StreamState> {
    let info = api
        .json(&format!("$JS.API.STREAM.INFO.{name}"), b"")
        .await?;
    if let Some(e) = api_error(&info) {
        bail!("STREAM.INFO {name}: {e}");
    }
    StreamState::from_info(&info)
}

// --- js-pub ------------------------------------------------------------------------------------

pub struct JsPubOpts {
    pub server: String,
    pub stream: String,
    pub subject: String,
    /// `file` or `memory`.
    pub storage: String,
    /// Copies of the stream (`num_replicas`; above 1 needs a JetStream cluster).
    pub replicas: usize,
    pub msgs: u64,
    pub size: usize,
    pub pubs: usize,
    /// Publishes outstanding per publisher (1 with `sync`).
    pub window: usize,
    pub sync: bool,
    /// Stop publishing after this long (and wait for the outstanding PubAcks).
    pub duration: Option<Duration>,
    pub timeout: Duration,
    /// Give up when no PubAck arrived for this long while some were outstanding.
    pub stall: Duration,
    /// Measure this process's CPU use too.
    pub server_pid: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct JsPubReport {
    pub mode: &'static str,
    pub server: String,
    pub stream: String,
    pub storage: String,
    pub replicas: usize,
    pub sync: bool,
    pub window: usize,
    pub pubs: usize,
    pub size: usize,
    /// Messages asked for (fewer are sent if `--duration` ran out first).
    pub msgs: u64,
    pub sent: u64,
    pub acked: u64,
    pub ack_errors: u64,
    pub first_ack_error: Option<String>,
    /// Acknowledged messages from the start until the last PubAck arrived.
    pub publish: Rate,
    /// From writing each PUB to its PubAck.
    pub latency: Latency,
    /// The stream's state from STREAM.INFO after the last PubAck.
    pub stream_state: Option<StreamState>,
    pub cpu: Cpu,
    pub complete: bool,
    pub errors: Vec<String>,
}

impl JsPubReport {
    pub fn human(&self) -> String {
        let mode = if self.sync {
            "sync".to_string()
        } else {
            format!("window {}", self.window)
        };
        let mut s = format!(
            "js-pub {} R{} {} B, {} pub{}, {mode}: {} msgs/s ({} acked in {:.3} s, {:.1} MiB/s); {}",
            self.storage,
            self.replicas,
            self.size,
            self.pubs,
            if self.pubs == 1 { "" } else { "s" },
            group(self.publish.msgs_per_sec),
            group(self.acked as f64),
            self.publish.secs,
            self.publish.mib_per_sec,
            self.latency
        );
        match &self.stream_state {
            Some(st) => s.push_str(&format!(
                "; stream {} holds {} msgs",
                self.stream,
                group(st.messages as f64)
            )),
            None => s.push_str("; stream state unknown"),
        }
        if self.ack_errors > 0 {
            s.push_str(&format!(
                "; {} PubAck errors, first: {}",
                self.ack_errors,
                self.first_ack_error.as_deref().unwrap_or("?")
            ));
        }
        s.push_str(&format!("; {}", self.cpu));
        for e in &self.errors {
            s.push_str(&format!("; error: {e}"));
        }
        s
    }
}

pub async fn run(o: &JsPubOpts) -> Result<JsPubReport> {
    if o.pubs == 0 {
        bail!("--pubs must be at least 1");
    }
    let window = if o.sync { 1 } else { o.window };
    if window == 0 {
        bail!("--window must be at least 1");
    }
    let mut api = Api::connect(&o.server).await?;
    recreate_replicated_stream(&mut api, &o.stream, &o.subject, &o.storage, o.replicas).await?;

    let subjects: Vec<String> = (0..o.pubs).map(|_| o.subject.clone()).collect();
    let publishers = open_publishers(&o.server, &subjects, o.size, o.msgs, window).await?;

    let cpu = CpuWindow::start(o.server_pid);
    let t0 = Instant::now();
    let deadline = t0 + o.timeout;
    let stop_at = o.duration.map(|d| t0 + d);
    let tasks: Vec<_> = publishers
        .into_iter()
        .map(|p| spawn_publisher(p, stop_at, deadline, o.stall))
        .collect();
    let mut hist = nanos_histogram();
    let (mut sent, mut acked, mut ack_errors) = (0, 0, 0);
    let mut first_ack_error = None;
    let mut errors = Vec::new();
    let mut end = t0;
    for task in tasks {
        let r = task.await?;
        sent += r.sent;
        acked += r.acked;
        ack_errors += r.ack_errors;
        first_ack_error = first_ack_error.or(r.first_error);
        hist.add(&r.hist)?;
        end = end.max(r.end);
        if let Some(e) = r.error {
            errors.push(format!("publisher: {e}"));
        }
    }
    let cpu = cpu.stop();

    let stream_state = match stream_state(&mut api, &o.stream).await {
        Ok(st) => {
            if st.messages != acked {
                errors.push(format!(
                    "stream {} holds {} messages, {} were acknowledged",
                    o.stream, st.messages, acked
                ));
            }
            Some(st)
        }
        Err(e) => {
            errors.push(format!("{e:#}"));
            None
        }
    };
    if o.duration.is_none() && sent != o.msgs {
        errors.push(format!("sent {sent} of {} messages", o.msgs));
    }
    if acked + ack_errors != sent {
        errors.push(format!(
            "{} of {sent} publishes got no PubAck",
            sent - (acked + ack_errors).min(sent)
        ));
    }
    Ok(JsPubReport {
        mode: "js-pub",
        server: o.server.clone(),
        stream: o.stream.clone(),
        storage: o.storage.clone(),
        replicas: o.replicas,
        sync: o.sync,
        window,
        pubs: o.pubs,
        size: o.size,
        msgs: o.msgs,
        sent,
        acked,
        ack_errors,
        first_ack_error,
        publish: Rate::new(acked, acked * o.size as u64, end - t0),
        latency: Latency::from_nanos(&hist),
        stream_state,
        cpu,
        complete: errors.is_empty() && ack_errors == 0,
        errors,
    })
}

/// Connects one JetStream publisher per subject, sharing `msgs` between them; each publishes
/// `size`-byte payloads to its subject with up to `window` PubAcks outstanding.
pub async fn open_publishers(
    server: &str,
    subjects: &[String],
    size: usize,
    msgs: u64,
    window: usize,
) -> Result<Vec<Publisher>> {
    let payload = proto::payload(size);
    let mut tail = vec![b' '];
    proto::push_usize(&mut tail, size);
    tail.extend_from_slice(b"\r\n");
    tail.extend_from_slice(&payload);
    tail.extend_from_slice(b"\r\n");
    let pubs = subjects.len() as u64;
    let mut publishers = Vec::with_capacity(subjects.len());
    for (i, subject) in subjects.iter().enumerate() {
        let mut conn = Conn::connect(server, &format!("bench-js-pub-{i}"), BIG_BUF).await?;
        conn.check_payload(size)?;
        let inbox = format!("_INBOX.{}.{i}.", std::process::id());
        let mut cmd = Vec::new();
        proto::push_sub(&mut cmd, format!("{inbox}*").as_bytes(), None, 1);
        cmd.extend_from_slice(proto::PING);
        conn.write_all(&cmd).await?;
        conn.until_pong(Instant::now() + HANDSHAKE_TIMEOUT).await?;
        publishers.push(Publisher {
            conn,
            head: format!("PUB {subject} {inbox}").into_bytes(),
            tail: tail.clone(),
            msgs: msgs / pubs + u64::from((i as u64) < msgs % pubs),
            window,
        });
    }
    Ok(publishers)
}

/// Starts publishing; the task ends when every publish is answered, `stop_at` passed, or it
/// gave up (no PubAck for `stall`, or `deadline`).
pub fn spawn_publisher(
    p: Publisher,
    stop_at: Option<Instant>,
    deadline: Instant,
    stall: Duration,
) -> tokio::task::JoinHandle<PubResult> {
    tokio::spawn(publisher(p, stop_at, deadline, stall))
}

pub struct Publisher {
    conn: Conn,
    /// `PUB <subject> _INBOX.<pid>.<i>.`: a frame up to the message number.
    head: Vec<u8>,
    /// ` <size>\r\n<payload>\r\n`: the frame after the message number.
    tail: Vec<u8>,
    msgs: u64,
    window: usize,
}

pub struct PubResult {
    pub sent: u64,
    pub acked: u64,
    pub ack_errors: u64,
    pub first_error: Option<String>,
    pub hist: Histogram<u64>,
    /// When the last PubAck arrived (or the publisher gave up).
    pub end: Instant,
    pub error: Option<String>,
}

/// A slot of the send-time ring: the outstanding message it belongs to, or `None` once answered.
type Slot = (Option<u64>, std::time::Instant);

async fn publisher(
    mut p: Publisher,
    stop_at: Option<Instant>,
    deadline: Instant,
    stall: Duration,
) -> PubResult {
    let mut r = PubResult {
        sent: 0,
        acked: 0,
        ack_errors: 0,
        first_error: None,
        hist: nanos_histogram(),
        end: Instant::now(),
        error: None,
    };
    if let Err(e) = publish(&mut p, stop_at, deadline, stall, &mut r).await {
        r.error = Some(format!("{e:#}"));
    }
    r.end = Instant::now();
    r
}

/// Keeps up to `window` publishes outstanding until all are sent and answered.
async fn publish(
    p: &mut Publisher,
    stop_at: Option<Instant>,
    deadline: Instant,
    stall: Duration,
    r: &mut PubResult,
) -> Result<()> {
    let error_field = memmem::Finder::new(b"\"error\"");
    let window = p.window as u64;
    let mut slots: Vec<Slot> = vec![(None, std::time::Instant::now()); p.window];
    let mut out = Vec::with_capacity(p.window * (p.head.len() + 20 + p.tail.len()));
    // Lowered to what was sent when `stop_at` passes.
    let mut limit = p.msgs;
    let mut progress = Instant::now();
    loop {
        let answered_before = r.acked + r.ack_errors;
        let mut pings = 0;
        while let Some(frame) = p.conn.next_frame()? {
            match frame {
                Frame::Msg {
                    subject, payload, ..
                } => {
                    let n = msg_number(subject).ok_or_else(|| {
                        anyhow!("PubAck on {:?}", String::from_utf8_lossy(subject))
                    })?;
                    let slot = slots
                        .get_mut((n % window) as usize)
                        .filter(|s| s.0 == Some(n))
                        .ok_or_else(|| {
                            anyhow!("PubAck for message {n}, which is not outstanding")
                        })?;
                    r.hist.saturating_record(slot.1.elapsed().as_nanos() as u64);
                    slot.0 = None;
                    if error_field.find(payload).is_some() {
                        r.ack_errors += 1;
                        if r.first_error.is_none() {
                            r.first_error = Some(String::from_utf8_lossy(payload).into_owned());
                        }
                    } else {
                        r.acked += 1;
                    }
                }
                Frame::Ping => pings += 1,
                Frame::Err(e) => bail!("server error: {}", String::from_utf8_lossy(e)),
                Frame::Pong | Frame::Ok | Frame::Info(_) => {}
            }
        }
        for _ in 0..pings {
            p.conn.write_all(proto::PONG).await?;
        }
        if stop_at.is_some_and(|t| Instant::now() >= t) {
            limit = limit.min(r.sent);
        }
        let answered = r.acked + r.ack_errors;
        if answered == r.sent && r.sent == limit {
            return Ok(());
        }
        if answered > answered_before {
            progress = Instant::now();
        }
        out.clear();
        let now = std::time::Instant::now();
        while r.sent < limit && r.sent - answered < window {
            out.extend_from_slice(&p.head);
            proto::push_usize(&mut out, r.sent as usize);
            out.extend_from_slice(&p.tail);
            if let Some(slot) = slots.get_mut((r.sent % window) as usize) {
                *slot = (Some(r.sent), now);
            }
            r.sent += 1;
        }
        if !out.is_empty() {
            timeout_at(deadline, p.conn.write_all(&out))
                .await
                .map_err(|_| anyhow!("timed out publishing"))??;
        }
        let give_up = deadline.min(progress + stall);
        p.conn.fill_until(give_up).await.with_context(|| {
            let why = if give_up < deadline {
                format!("no PubAck for {:.1} s", stall.as_secs_f64())
            } else {
                "run timeout".to_string()
            };
            format!(
                "waiting for PubAcks ({} of {} answered, {why})",
                r.acked + r.ack_errors,
                r.sent
            )
        })?;
    }
}

/// The `<n>` at the end of a reply subject `..._INBOX.<pid>.<i>.<n>`.
fn msg_number(subject: &[u8]) -> Option<u64> {
    proto::parse_u64(&subject[memchr::memrchr(b'.', subject)? + 1..])
}

// --- js-info -----------------------------------------------------------------------------------

pub struct JsInfoOpts {
    pub server: String,
    pub stream: String,
    /// Keep asking until the stream holds at least this many messages.
    pub wait_msgs: u64,
    /// Pause between attempts (connects and requests).
    pub poll: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Serialize)]
pub struct JsInfoReport {
    pub mode: &'static str,
    pub server: String,
    pub stream: String,
    pub wait_msgs: u64,
    pub state: StreamState,
    /// STREAM.INFO requests sent, and connections made, until the answer.
    pub requests: u64,
    pub connects: u64,
    /// From this process's start of polling to the answer.
    pub waited_secs: f64,
    /// Wall-clock time of the answer (ns since the Unix epoch), to compare with when the server
    /// was started.
    pub answered_unix_ns: u64,
}

impl JsInfoReport {
    pub fn human(&self) -> String {
        format!(
            "js-info {}: {} msgs, {} bytes, seq {}..{}; answered after {:.3} s ({} requests, {} connects)",
            self.stream,
            group(self.state.messages as f64),
            group(self.state.bytes as f64),
            self.state.first_seq,
            self.state.last_seq,
            self.waited_secs,
            self.requests,
            self.connects
        )
    }
}

pub async fn info(o: &JsInfoOpts) -> Result<JsInfoReport> {
    let start = Instant::now();
    let deadline = start + o.timeout;
    let subject = format!("$JS.API.STREAM.INFO.{}", o.stream);
    let (mut requests, mut connects) = (0, 0);
    let mut api: Option<Api> = None;
    let mut last = String::from("not tried");
    loop {
        if Instant::now() >= deadline {
            bail!(
                "no STREAM.INFO with {} messages after {:.1} s ({requests} requests, {connects} connects); last: {last}",
                o.wait_msgs,
                o.timeout.as_secs_f64()
            );
        }
        let conn = match api.as_mut() {
            Some(conn) => conn,
            None => match timeout_at(deadline, Api::connect(&o.server)).await {
                Ok(Ok(conn)) => {
                    connects += 1;
                    api.insert(conn)
                }
                Ok(Err(e)) => {
                    last = format!("{e:#}");
                    sleep(o.poll).await;
                    continue;
                }
                Err(_) => continue,
            },
        };
        requests += 1;
        let wait = deadline.saturating_duration_since(Instant::now());
        match conn.request(&subject, b"", wait.min(API_TIMEOUT)).await {
            Ok(ApiReply::Json(v)) => match api_error(&v) {
                None => {
                    let state = StreamState::from_info(&v)?;
                    if state.messages >= o.wait_msgs {
                        let answered_unix_ns = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map_or(0, |d| d.as_nanos() as u64);
                        return Ok(JsInfoReport {
                            mode: "js-info",
                            server: o.server.clone(),
                            stream: o.stream.clone(),
                            wait_msgs: o.wait_msgs,
                            state,
                            requests,
                            connects,
                            waited_secs: start.elapsed().as_secs_f64(),
                            answered_unix_ns,
                        });
                    }
                    last = format!("{} messages", state.messages);
                }
                Some(e) => last = e.to_string(),
            },
            Ok(ApiReply::NoResponders) => last = "no responders (JetStream not up)".into(),
            Err(e) => {
                last = format!("{e:#}");
                api = None;
            }
        }
        sleep(o.poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_message_number() {
        assert_eq!(msg_number(b"_INBOX.12.0.0"), Some(0));
        assert_eq!(msg_number(b"_INBOX.12.3.98765"), Some(98765));
        assert_eq!(msg_number(b"_INBOX.12.3."), None);
        assert_eq!(msg_number(b"_INBOX.12.3.x1"), None);
        assert_eq!(msg_number(b"nodots"), None);
    }

    #[test]
    fn reads_api_replies() {
        assert!(matches!(
            api_reply(b"NATS/1.0 503\r\n\r\n"),
            Ok(ApiReply::NoResponders)
        ));
        assert!(api_reply(b"NATS/1.0 408 Request Timeout\r\n\r\n").is_err());
        let Ok(ApiReply::Json(v)) = api_reply(
            br#"{"error":{"code":404,"err_code":10059,"description":"stream not found"}}"#,
        ) else {
            panic!("not JSON");
        };
        assert_eq!(
            api_error(&v)
                .and_then(|e| e.get("err_code"))
                .and_then(Value::as_u64),
            Some(STREAM_NOT_FOUND)
        );
        let Ok(ApiReply::Json(v)) =
            api_reply(br#"{"state":{"messages":3,"bytes":99,"first_seq":1,"last_seq":3}}"#)
        else {
            panic!("not JSON");
        };
        assert!(api_error(&v).is_none());
        assert_eq!(StreamState::from_info(&v).map(|s| s.messages).ok(), Some(3));
    }
}
