//! `js-consume`: JetStream consumers reading a file stream: pull (batches fetched with
//! `MSG.NEXT`), push, or ordered (as the clients build it), with ack none or explicit.
//!
//! The stream `<stream>` on `<subject>.>` is recreated. Without `--pubs` it is filled first (not
//! measured: 4 publishers, 1,000 PubAcks outstanding each) and then `--consumers` consumers each
//! read every message; with `--pubs P` the consumers are created on the empty stream and P
//! publishers publish while they read (the seed-002 shape: publishers async into a file stream,
//! durable consumers each reading everything). Messages are scanned in place; acks (`+ACK`) and
//! flow-control answers are written in one batch per read. A consumer is done when it has seen
//! every stream sequence 1..N; with explicit acks the run ends when CONSUMER.INFO of every
//! consumer shows its ack floor at N and nothing pending, so unprocessed acks are not free.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::{sleep, Instant};

use crate::conn::{Conn, BIG_BUF};
use crate::js::{self, Api};
use crate::proto::{self, Frame};
use crate::report::{group, Cpu, CpuWindow, Rate};

/// Pull requests kept outstanding per pull consumer.
const PULL_REQUESTS: usize = 2;
/// Pull requests expire after this long (the consumer then asks again).
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// Publishers and their window when the stream is filled before consuming.
const FILL_PUBS: usize = 4;
const FILL_WINDOW: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Pull,
    Push,
    Ordered,
}

#[derive(Clone)]
pub struct JsConsumeOpts {
    pub server: String,
    pub stream: String,
    /// The stream holds `<subject>.>`; publisher i publishes to `<subject>.p<i>`.
    pub subject: String,
    pub storage: String,
    /// The stream's `num_replicas`.
    pub replicas: u32,
    pub msgs: u64,
    pub size: usize,
    pub kind: Kind,
    pub ack_explicit: bool,
    /// Messages per pull request.
    pub batch: u64,
    pub consumers: usize,
    /// Publishers running while the consumers read; 0 fills the stream first.
    pub pubs: usize,
    /// PubAcks outstanding per publisher.
    pub window: usize,
    pub timeout: Duration,
    /// Give up when a consumer received nothing for this long.
    pub stall: Duration,
    pub server_pid: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct ConsumerResult {
    pub name: String,
    /// Distinct stream sequences received.
    pub received: u64,
    /// Deliveries of a sequence already seen (redeliveries).
    pub duplicates: u64,
    /// Sequences skipped (a message never delivered before a later one).
    pub gaps: u64,
    pub acks_sent: u64,
    /// Status messages: flow-control requests answered, heartbeats, pull 404/408/409.
    pub flow_control: u64,
    pub heartbeats: u64,
    pub pull_statuses: u64,
    /// From the start to the last message (and, with acks, the PONG after the last ack).
    pub secs: f64,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct JsConsumeReport {
    pub mode: &'static str,
    pub server: String,
    pub stream: String,
    pub kind: Kind,
    pub ack: &'static str,
    pub consumers: usize,
    pub pubs: usize,
    pub size: usize,
    pub msgs: u64,
    /// Filling the stream before consuming (without --pubs).
    pub fill: Option<Rate>,
    /// Publishing while consuming (with --pubs): acknowledged msgs/s.
    pub publish: Option<Rate>,
    /// Messages delivered to all consumers together, from the start until every consumer had
    /// every message (and its acks were settled).
    pub consume: Rate,
    /// Seconds from the last message received to every ack settled (explicit acks).
    pub ack_settle_secs: Option<f64>,
    pub per_consumer: Vec<ConsumerResult>,
    pub cpu: Cpu,
    pub complete: bool,
    pub errors: Vec<String>,
}

impl JsConsumeReport {
    pub fn human(&self) -> String {
        let mut s = format!(
            "js-consume {:?} ack {}, {} consumer{}, {} B: {} msgs/s delivered ({} msgs x {} in {:.3} s)",
            self.kind,
            self.ack,
            self.consumers,
            if self.consumers == 1 { "" } else { "s" },
            self.size,
            group(self.consume.msgs_per_sec),
            group(self.msgs as f64),
            self.consumers,
            self.consume.secs,
        );
        if let Some(p) = &self.publish {
            s.push_str(&format!(
                "; {} pubs published {} msgs/s",
                self.pubs,
                group(p.msgs_per_sec)
            ));
        }
        if let Some(f) = &self.fill {
            s.push_str(&format!("; filled at {} msgs/s", group(f.msgs_per_sec)));
        }
        if let Some(t) = self.ack_settle_secs {
            s.push_str(&format!(
                "; acks settled {:.1} ms after the last message",
                t * 1e3
            ));
        }
        s.push_str(&format!("; {}", self.cpu));
        for e in &self.errors {
            s.push_str(&format!("; error: {e}"));
        }
        s
    }
}

pub async fn run(o: &JsConsumeOpts) -> Result<JsConsumeReport> {
    if o.consumers == 0 || o.batch == 0 || o.window == 0 {
        bail!("--consumers, --batch and --window must be at least 1");
    }
    if o.kind == Kind::Ordered && o.ack_explicit {
        bail!("an ordered consumer does not ack (ack policy none)");
    }
    let mut api = Api::connect(&o.server).await?;
    let subject = format!("{}.>", o.subject);
    if o.replicas > 1 {
        recreate_replicated(&mut api, o, &subject).await?;
    } else {
        js::recreate_stream(&mut api, &o.stream, &subject, &o.storage).await?;
    }
    let mut errors = Vec::new();

    let fill = if o.pubs == 0 {
        let r = publish(o, FILL_PUBS, FILL_WINDOW, None).await?;
        if r.acked != o.msgs {
            bail!(
                "filling the stream: {} of {} acknowledged; {}",
                r.acked,
                o.msgs,
                r.errors.join("; ")
            );
        }
        errors.extend(r.errors);
        Some(r.rate)
    } else {
        None
    };

    let pid = std::process::id();
    let mut readers = Vec::with_capacity(o.consumers);
    for k in 0..o.consumers {
        let name = format!("C{k}");
        let inbox = format!("_INBOX.{pid}.c{k}.");
        let mut conn =
            Conn::connect_with_headers(&o.server, &format!("bench-{name}"), BIG_BUF).await?;
        let mut cmd = Vec::new();
        // Pull replies and push deliveries each on a literal subject: nats-server 2.9 does not
        // see a wildcard subscription as interest in a push consumer's deliver subject.
        proto::push_sub(&mut cmd, format!("{inbox}p").as_bytes(), None, 1);
        proto::push_sub(&mut cmd, format!("{inbox}d").as_bytes(), None, 2);
        cmd.extend_from_slice(proto::PING);
        conn.write_all(&cmd).await?;
        conn.until_pong(Instant::now() + crate::conn::HANDSHAKE_TIMEOUT)
            .await?;
        readers.push(Reader {
            conn,
            kind: o.kind,
            ack: o.ack_explicit,
            want: o.msgs,
            next_subject: format!("$JS.API.CONSUMER.MSG.NEXT.{}.{name}", o.stream).into_bytes(),
            pull_reply: format!("{inbox}p"),
            inbox,
            batch: o.batch,
            name,
        });
    }
    // Consumers exist before the clock starts only when publishers fill the stream meanwhile
    // (nothing to deliver yet); otherwise creating them is part of reading the stream.
    let mut names = Vec::new();
    if o.pubs > 0 {
        for r in &readers {
            names.push(create_consumer(&mut api, o, r).await?);
        }
    }

    let cpu = CpuWindow::start(o.server_pid);
    let t0 = Instant::now();
    let deadline = t0 + o.timeout;
    let publishing = (o.pubs > 0).then(|| {
        let o2 = o.clone();
        tokio::spawn(async move { publish(&o2, o2.pubs, o2.window, Some(deadline)).await })
    });
    if o.pubs == 0 {
        for r in &readers {
            names.push(create_consumer(&mut api, o, r).await?);
        }
    }
    let tasks: Vec<_> = readers
        .into_iter()
        .map(|r| tokio::spawn(r.read(t0, deadline, o.stall)))
        .collect();
    let mut per_consumer = Vec::new();
    for t in tasks {
        per_consumer.push(t.await?);
    }
    let last_message = Instant::now();
    let mut publish_rate = None;
    if let Some(p) = publishing {
        let r = p.await??;
        errors.extend(r.errors);
        if r.acked != o.msgs {
            errors.push(format!("published {} of {} acknowledged", r.acked, o.msgs));
        }
        publish_rate = Some(r.rate);
    }
    let mut ack_settle_secs = None;
    if o.ack_explicit && per_consumer.iter().all(|c| c.error.is_none()) {
        for name in &names {
            if let Err(e) = settled(&mut api, &o.stream, name, o.msgs, deadline).await {
                errors.push(format!("consumer {name}: {e:#}"));
            }
        }
        ack_settle_secs = Some(last_message.elapsed().as_secs_f64());
    }
    let end = Instant::now();
    let cpu = cpu.stop();
    for c in &per_consumer {
        if let Some(e) = &c.error {
            errors.push(format!("consumer {}: {e}", c.name));
        } else if c.received != o.msgs || c.gaps > 0 {
            errors.push(format!(
                "consumer {} received {} of {} (gaps {})",
                c.name, c.received, o.msgs, c.gaps
            ));
        }
    }
    let delivered: u64 = per_consumer.iter().map(|c| c.received).sum();
    Ok(JsConsumeReport {
        mode: "js-consume",
        server: o.server.clone(),
        stream: o.stream.clone(),
        kind: o.kind,
        ack: if o.ack_explicit { "explicit" } else { "none" },
        consumers: o.consumers,
        pubs: o.pubs,
        size: o.size,
        msgs: o.msgs,
        fill,
        publish: publish_rate,
        consume: Rate::new(delivered, delivered * o.size as u64, end - t0),
        ack_settle_secs,
        per_consumer,
        cpu,
        complete: errors.is_empty(),
        errors,
    })
}

struct Published {
    acked: u64,
    rate: Rate,
    errors: Vec<String>,
}

/// Publishes `o.msgs` messages with `pubs` publishers to `<subject>.p<i>`, `window` PubAcks
/// outstanding each; returns what was acknowledged and how fast.
async fn publish(
    o: &JsConsumeOpts,
    pubs: usize,
    window: usize,
    deadline: Option<Instant>,
) -> Result<Published> {
    let subjects: Vec<String> = (0..pubs).map(|i| format!("{}.p{i}", o.subject)).collect();
    let publishers = js::open_publishers(&o.server, &subjects, o.size, o.msgs, window).await?;
    let t0 = Instant::now();
    let deadline = deadline.unwrap_or(t0 + o.timeout);
    let tasks: Vec<_> = publishers
        .into_iter()
        .map(|p| js::spawn_publisher(p, None, deadline, o.stall))
        .collect();
    let (mut acked, mut end, mut errors) = (0, t0, Vec::new());
    for t in tasks {
        let r = t.await?;
        acked += r.acked;
        end = end.max(r.end);
        if let Some(e) = r.error {
            errors.push(format!("publisher: {e}"));
        }
        if let Some(e) = r.first_error {
            errors.push(format!("PubAck error: {e}"));
        }
    }
    Ok(Published {
        acked,
        rate: Rate::new(acked, acked * o.size as u64, end - t0),
        errors,
    })
}

/// Deletes the stream if it exists, then creates it with `--replicas` replicas (a cluster's
/// stream: the create may be answered before every replica serves, so it is retried while the
/// cluster says it is not ready).
async fn recreate_replicated(api: &mut Api, o: &JsConsumeOpts, subject: &str) -> Result<()> {
    let _ = api
        .json(&format!("$JS.API.STREAM.DELETE.{}", o.stream), b"")
        .await?;
    let config = json!({"name": o.stream, "subjects": [subject], "storage": o.storage,
                        "num_replicas": o.replicas});
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let created = api
            .json(
                &format!("$JS.API.STREAM.CREATE.{}", o.stream),
                config.to_string().as_bytes(),
            )
            .await?;
        match js::api_error(&created) {
            None => return Ok(()),
            Some(e) if Instant::now() > deadline => {
                bail!(
                    "creating stream {} with {} replicas: {e}",
                    o.stream,
                    o.replicas
                )
            }
            Some(_) => sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Creates reader `r`'s consumer; returns the name to ask CONSUMER.INFO with.
async fn create_consumer(api: &mut Api, o: &JsConsumeOpts, r: &Reader) -> Result<String> {
    let ack = if o.ack_explicit { "explicit" } else { "none" };
    let deliver = format!("{}d", r.inbox);
    let (subject, config) = match o.kind {
        Kind::Pull => (
            format!("$JS.API.CONSUMER.CREATE.{}.{}", o.stream, r.name),
            json!({"durable_name": r.name, "ack_policy": ack, "deliver_policy": "all"}),
        ),
        Kind::Push => (
            format!("$JS.API.CONSUMER.CREATE.{}.{}", o.stream, r.name),
            json!({"durable_name": r.name, "ack_policy": ack, "deliver_policy": "all",
                   "deliver_subject": deliver}),
        ),
        // What nats.go and async-nats send for an ordered consumer.
        Kind::Ordered => (
            format!("$JS.API.CONSUMER.CREATE.{}", o.stream),
            json!({"deliver_subject": deliver, "deliver_policy": "all", "ack_policy": "none",
                   "max_deliver": 1, "flow_control": true,
                   "idle_heartbeat": 5_000_000_000u64, "mem_storage": true,
                   "replay_policy": "instant", "num_replicas": 1,
                   "inactive_threshold": 300_000_000_000u64}),
        ),
    };
    let body = json!({"stream_name": o.stream, "config": config}).to_string();
    let created = api.json(&subject, body.as_bytes()).await?;
    if let Some(e) = js::api_error(&created) {
        bail!("creating consumer {}: {e}", r.name);
    }
    created
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| anyhow!("consumer create answer without a name: {created}"))
}

/// Polls CONSUMER.INFO until the ack floor reached `last` with nothing pending.
async fn settled(
    api: &mut Api,
    stream: &str,
    name: &str,
    last: u64,
    deadline: Instant,
) -> Result<()> {
    let subject = format!("$JS.API.CONSUMER.INFO.{stream}.{name}");
    loop {
        let info = api.json(&subject, b"").await?;
        if let Some(e) = js::api_error(&info) {
            bail!("CONSUMER.INFO: {e}");
        }
        let floor = info
            .pointer("/ack_floor/stream_seq")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let pending = info
            .get("num_ack_pending")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if floor >= last && pending == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("acks not settled: ack floor {floor} of {last}, {pending} pending");
        }
        sleep(Duration::from_millis(1)).await;
    }
}

struct Reader {
    conn: Conn,
    name: String,
    kind: Kind,
    ack: bool,
    want: u64,
    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<name>` (pull).
    next_subject: Vec<u8>,
    /// `_INBOX.<pid>.c<k>.`: pull requests reply to `<inbox>p`, push delivers to `<inbox>d`.
    inbox: String,
    pull_reply: String,
    batch: u64,
}

/// One delivery's place in the stream, from its `$JS.ACK` reply subject (v1: 9 tokens, v2 with
/// domain and account hash: 11 or 12).
fn stream_seq(reply: &[u8]) -> Option<u64> {
    let tokens = reply.split(|b| *b == b'.').count();
    let at = match tokens {
        9 => 5,
        11 | 12 => 7,
        _ => return None,
    };
    let t = reply.split(|b| *b == b'.').nth(at)?;
    if t.is_empty() || t.len() > 19 {
        return None;
    }
    t.iter().try_fold(0u64, |acc, d| {
        d.is_ascii_digit().then(|| acc * 10 + u64::from(d - b'0'))
    })
}

/// The three-digit status of a header block (`NATS/1.0 408 ...`).
fn status(payload: &[u8]) -> Option<&[u8]> {
    payload
        .strip_prefix(b"NATS/1.0 ")
        .and_then(|p| p.get(..3))
        .filter(|s| s.iter().all(u8::is_ascii_digit))
}

/// The value of header `name` in a header block.
fn header<'a>(payload: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    payload.split(|b| *b == b'\n').skip(1).find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = memchr::memchr(b':', line)?;
        line[..colon]
            .eq_ignore_ascii_case(name)
            .then(|| line[colon + 1..].trim_ascii())
    })
}

impl Reader {
    async fn read(mut self, t0: Instant, deadline: Instant, stall: Duration) -> ConsumerResult {
        let mut r = ConsumerResult {
            name: self.name.clone(),
            received: 0,
            duplicates: 0,
            gaps: 0,
            acks_sent: 0,
            flow_control: 0,
            heartbeats: 0,
            pull_statuses: 0,
            secs: 0.0,
            error: None,
        };
        if let Err(e) = self.consume(&mut r, deadline, stall).await {
            r.error = Some(format!("{e:#}"));
        }
        r.secs = t0.elapsed().as_secs_f64();
        r
    }

    async fn consume(
        &mut self,
        r: &mut ConsumerResult,
        deadline: Instant,
        stall: Duration,
    ) -> Result<()> {
        let mut out = Vec::with_capacity(BIG_BUF);
        // Messages asked for by pull requests and not yet delivered or expired. Deliveries
        // carry the stream's subject, not the request's, so requests are tracked by count: a
        // 408/409 status tells how many of its messages a request still had due.
        let mut due = 0u64;
        let mut highest = 0u64;
        let mut progress = Instant::now();
        let pull_body = format!(
            "{{\"batch\":{},\"expires\":{}}}",
            self.batch,
            PULL_EXPIRES.as_nanos()
        );
        loop {
            let before = r.received;
            let mut pings = 0;
            while let Some(frame) = self.conn.next_frame()? {
                let (subject, reply, payload) = match frame {
                    Frame::Msg {
                        subject,
                        reply,
                        payload,
                    } => (subject, reply, payload),
                    Frame::Ping => {
                        pings += 1;
                        continue;
                    }
                    Frame::Err(e) => bail!("server error: {}", String::from_utf8_lossy(e)),
                    Frame::Pong | Frame::Ok | Frame::Info(_) => continue,
                };
                let data_reply = reply.filter(|rp| rp.starts_with(b"$JS.ACK."));
                let Some(ack_to) = data_reply else {
                    // A status: flow control, heartbeat, or the end of a pull request.
                    match status(payload) {
                        Some(b"100") => match reply {
                            Some(fc) => {
                                r.flow_control += 1;
                                proto::push_pub(&mut out, fc, None, b"");
                            }
                            None => {
                                r.heartbeats += 1;
                                if let Some(s) = header(payload, b"Nats-Consumer-Stalled") {
                                    proto::push_pub(&mut out, s, None, b"");
                                }
                            }
                        },
                        Some(_) if self.kind == Kind::Pull => {
                            r.pull_statuses += 1;
                            due = match header(payload, b"Nats-Pending-Messages")
                                .and_then(proto::parse_u64)
                            {
                                Some(n) => due.saturating_sub(n),
                                None => 0,
                            };
                        }
                        _ => bail!(
                            "unexpected message on {}: {:?}",
                            String::from_utf8_lossy(subject),
                            String::from_utf8_lossy(&payload[..payload.len().min(80)])
                        ),
                    }
                    continue;
                };
                let seq = stream_seq(ack_to).ok_or_else(|| {
                    anyhow!("bad ack subject {:?}", String::from_utf8_lossy(ack_to))
                })?;
                if seq > highest {
                    r.gaps += seq - highest - 1;
                    highest = seq;
                    r.received += 1;
                } else {
                    r.duplicates += 1;
                }
                if self.ack {
                    proto::push_pub(&mut out, ack_to, None, b"+ACK");
                    r.acks_sent += 1;
                }
                due = due.saturating_sub(1);
            }
            for _ in 0..pings {
                out.extend_from_slice(proto::PONG);
            }
            let done = r.received >= self.want || r.gaps > 0;
            if self.kind == Kind::Pull && !done {
                let mut missing = (self.want - r.received).saturating_sub(due);
                while due <= self.batch * (PULL_REQUESTS as u64 - 1) && missing > 0 {
                    let batch = self.batch.min(missing);
                    let body = if batch == self.batch {
                        pull_body.clone()
                    } else {
                        format!(
                            "{{\"batch\":{batch},\"expires\":{}}}",
                            PULL_EXPIRES.as_nanos()
                        )
                    };
                    proto::push_pub(
                        &mut out,
                        &self.next_subject,
                        Some(self.pull_reply.as_bytes()),
                        body.as_bytes(),
                    );
                    due += batch;
                    missing -= batch;
                }
            }
            if done {
                // Make sure the server has read every ack before calling the consumer done.
                out.extend_from_slice(proto::PING);
                self.conn.write_all(&out).await?;
                return self.until_pong(deadline).await;
            }
            if !out.is_empty() {
                self.conn.write_all(&out).await?;
                out.clear();
            }
            if r.received > before {
                progress = Instant::now();
            }
            let give_up = deadline.min(progress + stall);
            self.conn.fill_until(give_up).await.with_context(|| {
                format!(
                    "waiting for messages ({} of {} received)",
                    r.received, self.want
                )
            })?;
        }
    }

    /// Reads until the PONG, ignoring late status messages.
    async fn until_pong(&mut self, deadline: Instant) -> Result<()> {
        loop {
            while let Some(frame) = self.conn.next_frame()? {
                match frame {
                    Frame::Pong => return Ok(()),
                    Frame::Err(e) => bail!("server error: {}", String::from_utf8_lossy(e)),
                    _ => {}
                }
            }
            self.conn.fill_until(deadline).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ack_subjects() {
        assert_eq!(
            stream_seq(b"$JS.ACK.S.C.1.42.7.1700000000000000000.9"),
            Some(42)
        );
        assert_eq!(
            stream_seq(b"$JS.ACK.dom.hash.S.C.1.43.7.1700000000000000000.9.tok"),
            Some(43)
        );
        assert_eq!(stream_seq(b"$JS.ACK.S.C.1.x.7.1.9"), None);
        assert_eq!(stream_seq(b"$JS.ACK.S.C"), None);
    }

    #[test]
    fn reads_statuses_and_headers() {
        let fc = b"NATS/1.0 100 FlowControl Request\r\n\r\n";
        assert_eq!(status(fc), Some(&b"100"[..]));
        assert_eq!(status(b"NATS/1.0\r\nA: b\r\n\r\n"), None);
        let hb = b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 5\r\nNats-Consumer-Stalled: $JS.FC.x\r\n\r\n";
        assert_eq!(header(hb, b"nats-consumer-stalled"), Some(&b"$JS.FC.x"[..]));
        assert_eq!(header(hb, b"Missing"), None);
        assert_eq!(proto::parse_u64(b"17"), Some(17));
        assert_eq!(proto::parse_u64(b"1x"), None);
    }
}
