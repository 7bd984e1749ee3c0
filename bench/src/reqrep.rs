//! `req`: request-reply latency. R requesters, each with its own inbox subscription and one request
//! outstanding at a time; S responders in one queue group echo each request's payload to its reply
//! subject. Latency is measured per request, from before the PUB is written to when the reply's
//! MSG frame is complete, into an HDR histogram of nanoseconds.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{watch, Barrier};
use tokio::time::{timeout_at, Instant};

use crate::conn::{Conn, BIG_BUF, HANDSHAKE_TIMEOUT};
use crate::proto::{self, Frame};
use crate::report::{nanos_histogram, Cpu, CpuWindow, Latency, Rate};

const QUEUE_GROUP: &[u8] = b"bench-responders";

pub struct ReqOpts {
    pub server: String,
    pub subject: String,
    pub requesters: usize,
    pub responders: usize,
    /// Measured requests across all requesters.
    pub requests: u64,
    /// Unmeasured requests each requester sends first.
    pub warmup: u64,
    pub size: usize,
    pub timeout: Duration,
    /// Measure this process's CPU use too.
    pub server_pid: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct ReqReport {
    pub mode: &'static str,
    pub server: String,
    pub requesters: usize,
    pub responders: usize,
    pub size: usize,
    pub requests: u64,
    pub rate: Rate,
    pub latency: Latency,
    pub cpu: Cpu,
    pub complete: bool,
    pub errors: Vec<String>,
}

impl ReqReport {
    pub fn human(&self) -> String {
        let mut s = format!(
            "req {} requester{} -> {} responder{}, {} B: {} req/s; {}",
            self.requesters,
            if self.requesters == 1 { "" } else { "s" },
            self.responders,
            if self.responders == 1 { "" } else { "s" },
            self.size,
            crate::report::group(self.rate.msgs_per_sec),
            self.latency
        );
        s.push_str(&format!("; {}", self.cpu));
        for e in &self.errors {
            s.push_str(&format!("; error: {e}"));
        }
        s
    }
}

pub async fn run(o: &ReqOpts) -> Result<ReqReport> {
    if o.requesters == 0 || o.responders == 0 {
        bail!("--requesters and --responders must be at least 1");
    }
    let setup = Instant::now() + HANDSHAKE_TIMEOUT;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut responders = Vec::with_capacity(o.responders);
    for i in 0..o.responders {
        let mut conn = Conn::connect(&o.server, &format!("bench-responder-{i}"), BIG_BUF).await?;
        let mut cmd = Vec::new();
        proto::push_sub(&mut cmd, o.subject.as_bytes(), Some(QUEUE_GROUP), 1);
        cmd.extend_from_slice(proto::PING);
        conn.write_all(&cmd).await?;
        conn.until_pong(setup).await?;
        responders.push(tokio::spawn(responder(conn, stop_rx.clone())));
    }

    let barrier = Arc::new(Barrier::new(o.requesters + 1));
    let deadline = Instant::now() + o.timeout;
    let mut requesters = Vec::with_capacity(o.requesters);
    for i in 0..o.requesters {
        let mut conn = Conn::connect(&o.server, &format!("bench-requester-{i}"), BIG_BUF).await?;
        conn.check_payload(o.size)?;
        let inbox = format!("_INBOX.bench.{}.{i}", std::process::id());
        let mut cmd = Vec::new();
        proto::push_sub(&mut cmd, inbox.as_bytes(), None, 1);
        cmd.extend_from_slice(proto::PING);
        conn.write_all(&cmd).await?;
        conn.until_pong(setup).await?;
        let mut request = Vec::new();
        proto::push_pub(
            &mut request,
            o.subject.as_bytes(),
            Some(inbox.as_bytes()),
            &proto::payload(o.size),
        );
        let share = o.requests / o.requesters as u64
            + u64::from((i as u64) < o.requests % o.requesters as u64);
        let job = Job {
            request,
            size: o.size,
            warmup: o.warmup,
            measured: share,
            deadline,
        };
        requesters.push(tokio::spawn(requester(conn, job, barrier.clone())));
    }

    barrier.wait().await;
    let cpu = CpuWindow::start(o.server_pid);
    let t0 = Instant::now();
    let mut hist = nanos_histogram();
    let mut end = t0;
    let mut errors = Vec::new();
    for task in requesters {
        let (h, done_at, error) = task.await?;
        hist.add(&h)?;
        end = end.max(done_at);
        if let Some(e) = error {
            errors.push(format!("requester: {e}"));
        }
    }
    let cpu = cpu.stop();
    stop_tx.send_replace(true);
    for task in responders {
        if let Err(e) = task.await? {
            errors.push(format!("responder: {e:#}"));
        }
    }
    let done = hist.len();
    Ok(ReqReport {
        mode: "req",
        server: o.server.clone(),
        requesters: o.requesters,
        responders: o.responders,
        size: o.size,
        requests: o.requests,
        rate: Rate::new(done, done * o.size as u64, end - t0),
        latency: Latency::from_nanos(&hist),
        cpu,
        complete: errors.is_empty() && done == o.requests,
        errors,
    })
}

struct Job {
    /// The whole PUB frame of one request, reply subject included.
    request: Vec<u8>,
    size: usize,
    warmup: u64,
    measured: u64,
    deadline: Instant,
}

/// Runs the warm-up, meets the others at the barrier (even after a failure, so nobody waits
/// forever), then the measured requests.
async fn requester(
    mut conn: Conn,
    job: Job,
    barrier: Arc<Barrier>,
) -> (Histogram<u64>, Instant, Option<String>) {
    let mut hist = nanos_histogram();
    let warm = requests(&mut conn, &job, job.warmup, None).await;
    barrier.wait().await;
    let result = match warm {
        Ok(()) => requests(&mut conn, &job, job.measured, Some(&mut hist)).await,
        Err(e) => Err(e),
    };
    (hist, Instant::now(), result.err().map(|e| format!("{e:#}")))
}

async fn requests(
    conn: &mut Conn,
    job: &Job,
    n: u64,
    mut hist: Option<&mut Histogram<u64>>,
) -> Result<()> {
    for _ in 0..n {
        let sent = std::time::Instant::now();
        timeout_at(job.deadline, conn.write_all(&job.request))
            .await
            .map_err(|_| anyhow::anyhow!("timed out sending a request"))??;
        reply(conn, job.size, job.deadline).await?;
        if let Some(h) = hist.as_deref_mut() {
            h.saturating_record(sent.elapsed().as_nanos() as u64);
        }
    }
    Ok(())
}

/// Waits for one reply on the inbox, answering the server's PINGs meanwhile.
async fn reply(conn: &mut Conn, size: usize, deadline: Instant) -> Result<()> {
    loop {
        let mut pings = 0;
        let mut got = false;
        while let Some(frame) = conn.next_frame()? {
            match frame {
                Frame::Msg { payload, .. } if payload.len() == size => {
                    got = true;
                    break;
                }
                Frame::Msg { payload, .. } => {
                    bail!("reply of {} bytes, expected {size}", payload.len())
                }
                Frame::Ping => pings += 1,
                Frame::Err(e) => bail!("server error: {}", String::from_utf8_lossy(e)),
                Frame::Pong | Frame::Ok | Frame::Info(_) => {}
            }
        }
        for _ in 0..pings {
            conn.write_all(proto::PONG).await?;
        }
        if got {
            return Ok(());
        }
        conn.fill_until(deadline).await?;
    }
}

/// Echoes every request to its reply subject, answering all requests of one read with one write.
async fn responder(mut conn: Conn, mut stop: watch::Receiver<bool>) -> Result<u64> {
    let mut out = Vec::with_capacity(64 * 1024);
    let mut served = 0;
    loop {
        while let Some(frame) = conn.next_frame()? {
            match frame {
                Frame::Msg {
                    reply: Some(reply),
                    payload,
                    ..
                } => {
                    proto::push_pub(&mut out, reply, None, payload);
                    served += 1;
                }
                Frame::Ping => out.extend_from_slice(proto::PONG),
                Frame::Err(e) => bail!("server error: {}", String::from_utf8_lossy(e)),
                Frame::Msg { .. } | Frame::Pong | Frame::Ok | Frame::Info(_) => {}
            }
        }
        if !out.is_empty() {
            conn.write_all(&out).await?;
            out.clear();
        }
        tokio::select! {
            filled = conn.fill() => filled?,
            _ = stop.wait_for(|stop| *stop) => return Ok(served),
        }
    }
}
