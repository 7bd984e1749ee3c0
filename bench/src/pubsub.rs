//! `pub`: N publishers flood one subject with pipelined PUB frames; M optional subscribers (fan-out,
//! or one queue group) count what arrives.
//!
//! Publishers write pre-built batches of whole frames (no allocation per message) and finish with
//! PING/PONG, so a publisher's time ends when the server has read everything it sent. Subscribers
//! scan MSG frames in place and count them. Everything is connected and subscribed (confirmed by
//! PONG) before the clock starts; the subscriber window runs from that start to the last message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout_at, Instant};

use crate::conn::{Conn, BIG_BUF, HANDSHAKE_TIMEOUT};
use crate::proto::{self, Frame, PubBatch};
use crate::report::{Cpu, CpuWindow, Rate};

/// Bytes of PUB frames handed to the socket per write.
const BATCH_BYTES: usize = 256 * 1024;

pub struct PubOpts {
    pub server: String,
    /// Where the subscribers connect (round robin); empty: `server` (a cluster's other nodes).
    pub sub_servers: Vec<String>,
    /// With subscribers elsewhere, how long to let their interest reach `server` first.
    pub settle: Duration,
    pub subject: String,
    pub msgs: u64,
    pub size: usize,
    pub pubs: usize,
    pub subs: usize,
    pub queue: Option<String>,
    pub timeout: Duration,
    /// Measure this process's CPU use too.
    pub server_pid: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct PubReport {
    pub mode: &'static str,
    pub server: String,
    pub pubs: usize,
    pub subs: usize,
    pub queue: Option<String>,
    pub size: usize,
    /// Messages asked for; `publish.msgs` says how many were sent.
    pub msgs: u64,
    pub publish: Rate,
    pub subscribe: Option<Rate>,
    /// Messages all subscribers together should receive.
    pub expected: u64,
    pub received: u64,
    pub cpu: Cpu,
    pub complete: bool,
    pub errors: Vec<String>,
}

impl PubReport {
    pub fn human(&self) -> String {
        let mut s = format!(
            "pub {}x{} B -> {} sub{}{}: publish {}",
            self.pubs,
            self.size,
            self.subs,
            if self.subs == 1 { "" } else { "s" },
            self.queue
                .as_ref()
                .map(|q| format!(" (queue {q})"))
                .unwrap_or_default(),
            self.publish
        );
        if let Some(sub) = &self.subscribe {
            s.push_str(&format!("; subscribe {sub}"));
        }
        if self.received != self.expected {
            s.push_str(&format!(
                "; INCOMPLETE: received {} of {}",
                self.received, self.expected
            ));
        }
        s.push_str(&format!("; {}", self.cpu));
        for e in &self.errors {
            s.push_str(&format!("; error: {e}"));
        }
        s
    }
}

pub async fn run(o: &PubOpts) -> Result<PubReport> {
    if o.pubs == 0 {
        bail!("--pubs must be at least 1");
    }
    let queue = o.queue.as_deref().map(str::as_bytes);
    let mut sub_conns = Vec::with_capacity(o.subs);
    for i in 0..o.subs {
        let addr = match o.sub_servers.len() {
            0 => &o.server,
            n => &o.sub_servers[i % n],
        };
        let mut conn = Conn::connect(addr, &format!("bench-sub-{i}"), BIG_BUF).await?;
        let mut cmd = Vec::new();
        proto::push_sub(&mut cmd, o.subject.as_bytes(), queue, 1);
        cmd.extend_from_slice(proto::PING);
        conn.write_all(&cmd).await?;
        conn.until_pong(Instant::now() + HANDSHAKE_TIMEOUT).await?;
        sub_conns.push(conn);
    }
    if !o.sub_servers.is_empty() {
        // Interest crosses a cluster asynchronously.
        tokio::time::sleep(o.settle).await;
    }
    let mut pub_conns = Vec::with_capacity(o.pubs);
    for i in 0..o.pubs {
        let conn = Conn::connect(&o.server, &format!("bench-pub-{i}"), BIG_BUF).await?;
        conn.check_payload(o.size)?;
        pub_conns.push(conn);
    }

    let (per_sub, expected) = match (o.subs, &o.queue) {
        (0, _) => (0, 0),
        (_, Some(_)) => (u64::MAX, o.msgs),
        (subs, None) => (o.msgs, o.msgs * subs as u64),
    };
    let batch = Arc::new(PubBatch::new(o.subject.as_bytes(), o.size, BATCH_BYTES));
    let received = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = watch::channel(false);
    let done_tx = Arc::new(done_tx);

    let cpu = CpuWindow::start(o.server_pid);
    let t0 = Instant::now();
    let deadline = t0 + o.timeout;
    let subs: Vec<_> = sub_conns
        .into_iter()
        .map(|conn| {
            let shared = Shared {
                size: o.size,
                received: received.clone(),
                expected,
                done_tx: done_tx.clone(),
                done_rx: done_rx.clone(),
            };
            tokio::spawn(subscriber(conn, per_sub, shared, deadline))
        })
        .collect();
    let pubs: Vec<_> = pub_conns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            let share = o.msgs / o.pubs as u64 + u64::from((i as u64) < o.msgs % o.pubs as u64);
            tokio::spawn(publisher(conn, batch.clone(), share, deadline))
        })
        .collect();

    let mut errors = Vec::new();
    let mut pub_end = t0;
    let mut published = 0;
    for task in pubs {
        let (sent, result) = task.await?;
        published += sent;
        match result {
            Ok(end) => pub_end = pub_end.max(end),
            Err(e) => {
                pub_end = pub_end.max(Instant::now());
                errors.push(format!("publisher: {e:#}"));
            }
        }
    }
    let mut sub_end = t0;
    let mut sub_msgs = 0;
    let mut sub_bytes = 0;
    for task in subs {
        let r = task.await?;
        sub_msgs += r.msgs;
        sub_bytes += r.bytes;
        if let Some(last) = r.last {
            sub_end = sub_end.max(last);
        }
        if let Some(e) = r.error {
            errors.push(format!("subscriber: {e}"));
        }
    }

    let cpu = cpu.stop();
    let publish = Rate::new(published, published * o.size as u64, pub_end - t0);
    let subscribe = (o.subs > 0).then(|| Rate::new(sub_msgs, sub_bytes, sub_end - t0));
    Ok(PubReport {
        mode: "pub",
        server: o.server.clone(),
        pubs: o.pubs,
        subs: o.subs,
        queue: o.queue.clone(),
        size: o.size,
        msgs: o.msgs,
        publish,
        subscribe,
        expected,
        received: sub_msgs,
        cpu,
        complete: errors.is_empty() && sub_msgs == expected,
        errors,
    })
}

/// Publishes `msgs` messages; returns how many were handed to the socket, and when the server
/// confirmed reading them all.
async fn publisher(
    mut conn: Conn,
    batch: Arc<PubBatch>,
    msgs: u64,
    deadline: Instant,
) -> (u64, Result<Instant>) {
    let mut sent = 0;
    let flood = async {
        while msgs - sent >= batch.frames {
            conn.write_all(&batch.bytes).await?;
            sent += batch.frames;
        }
        if msgs > sent {
            conn.write_all(batch.first(msgs - sent)).await?;
            sent = msgs;
        }
        conn.write_all(proto::PING).await?;
        conn.until_pong(deadline).await
    };
    let result = match timeout_at(deadline, flood).await {
        Ok(r) => r.map(|()| Instant::now()),
        Err(_) => Err(anyhow::anyhow!("timed out publishing")),
    };
    (sent, result)
}

/// What the subscribers of one run share: the running total and the "everything arrived" signal.
struct Shared {
    /// Payload size every message must have.
    size: usize,
    received: Arc<AtomicU64>,
    expected: u64,
    done_tx: Arc<watch::Sender<bool>>,
    done_rx: watch::Receiver<bool>,
}

#[derive(Default)]
struct SubResult {
    msgs: u64,
    bytes: u64,
    last: Option<Instant>,
    error: Option<String>,
}

/// Counts messages until this subscriber has `want`, all subscribers together have the expected
/// total, or the deadline passes.
async fn subscriber(mut conn: Conn, want: u64, mut shared: Shared, deadline: Instant) -> SubResult {
    let mut r = SubResult::default();
    if let Err(e) = count(&mut conn, want, &mut shared, deadline, &mut r).await {
        r.error = Some(format!("{e:#}"));
    }
    r
}

async fn count(
    conn: &mut Conn,
    want: u64,
    shared: &mut Shared,
    deadline: Instant,
    r: &mut SubResult,
) -> Result<()> {
    loop {
        let (mut msgs, mut bytes, mut pings) = (0u64, 0u64, 0u32);
        while let Some(frame) = conn.next_frame()? {
            match frame {
                Frame::Msg { payload, .. } => {
                    if payload.len() != shared.size {
                        bail!(
                            "message {} has {} bytes, expected {}",
                            r.msgs + msgs + 1,
                            payload.len(),
                            shared.size
                        );
                    }
                    msgs += 1;
                    bytes += payload.len() as u64;
                }
                Frame::Ping => pings += 1,
                Frame::Err(e) => bail!("server error: {}", String::from_utf8_lossy(e)),
                Frame::Pong | Frame::Ok | Frame::Info(_) => {}
            }
        }
        for _ in 0..pings {
            conn.write_all(proto::PONG).await?;
        }
        if msgs > 0 {
            r.msgs += msgs;
            r.bytes += bytes;
            r.last = Some(Instant::now());
            let total = shared.received.fetch_add(msgs, Ordering::Relaxed) + msgs;
            if total >= shared.expected {
                shared.done_tx.send_replace(true);
            }
        }
        if r.msgs >= want || *shared.done_rx.borrow() {
            return Ok(());
        }
        tokio::select! {
            filled = conn.fill() => filled?,
            _ = shared.done_rx.changed() => {}
            _ = sleep_until(deadline) => bail!("timed out with {} messages", r.msgs),
        }
    }
}
