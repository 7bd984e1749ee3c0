//! `conns`: open K idle connections with S subscriptions each (CONNECT, SUBs, PING/PONG to confirm)
//! and optionally sample the server's resident memory before and after.
//! `connect-rate`: open and close connections (CONNECT + PING/PONG each) as fast as possible.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::conn::{Conn, HANDSHAKE_TIMEOUT, SMALL_BUF};
use crate::proto;
use crate::report::{group, nanos_histogram, Cpu, CpuWindow, Latency};

/// SUB lines are written in chunks of about this many bytes.
const SUB_CHUNK: usize = 64 * 1024;

pub struct ConnsOpts {
    pub server: String,
    pub conns: usize,
    pub subs_per_conn: usize,
    /// Connections being opened at once.
    pub parallel: usize,
    /// Process whose VmRSS is sampled before opening and after `settle`.
    pub server_pid: Option<u32>,
    pub settle: Duration,
    /// Keep the connections open this long after reporting readiness on stderr.
    pub hold: Duration,
}

#[derive(Debug, Serialize)]
pub struct ConnsReport {
    pub mode: &'static str,
    pub server: String,
    pub conns: usize,
    pub subs_per_conn: usize,
    pub open_secs: f64,
    pub conns_per_sec: f64,
    pub subs_per_sec: f64,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub rss_delta_kib: Option<i64>,
    pub rss_per_conn_bytes: Option<f64>,
    pub rss_per_sub_bytes: Option<f64>,
}

impl ConnsReport {
    pub fn human(&self) -> String {
        let mut s = format!(
            "conns {} x {} sub{}: opened in {:.3} s ({} conns/s, {} subs/s)",
            self.conns,
            self.subs_per_conn,
            if self.subs_per_conn == 1 { "" } else { "s" },
            self.open_secs,
            group(self.conns_per_sec),
            group(self.subs_per_sec)
        );
        if let (Some(before), Some(after), Some(delta)) =
            (self.rss_before_kib, self.rss_after_kib, self.rss_delta_kib)
        {
            s.push_str(&format!(
                "; server RSS {before} KiB -> {after} KiB (+{delta} KiB"
            ));
            if let Some(per) = self.rss_per_conn_bytes {
                s.push_str(&format!(", {per:.0} B/conn"));
            }
            if let Some(per) = self.rss_per_sub_bytes {
                s.push_str(&format!(", {per:.0} B/sub"));
            }
            s.push(')');
        }
        s
    }
}

pub async fn run(o: &ConnsOpts) -> Result<ConnsReport> {
    if o.conns == 0 || o.parallel == 0 {
        bail!("--conns and --parallel must be at least 1");
    }
    let rss_before = o.server_pid.map(vm_rss_kib).transpose()?;
    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..o.parallel.min(o.conns))
        .map(|_| {
            let next = next.clone();
            let server = o.server.clone();
            let (conns, subs) = (o.conns, o.subs_per_conn);
            tokio::spawn(async move {
                let mut held = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= conns {
                        return Ok::<_, anyhow::Error>(held);
                    }
                    let stream = open_idle(&server, i, subs)
                        .await
                        .with_context(|| format!("connection {i}"))?;
                    held.push(stream);
                }
            })
        })
        .collect();
    let mut held = Vec::with_capacity(o.conns);
    for w in workers {
        held.extend(w.await??);
    }
    let open = t0.elapsed();

    tokio::time::sleep(o.settle).await;
    let rss_after = o.server_pid.map(vm_rss_kib).transpose()?;
    if !o.hold.is_zero() {
        eprintln!(
            "natrium-bench: {} connections open, holding for {:?}",
            held.len(),
            o.hold
        );
        tokio::time::sleep(o.hold).await;
    }
    drop(held);

    let secs = open.as_secs_f64().max(1e-9);
    let delta = rss_before.zip(rss_after).map(|(b, a)| a as i64 - b as i64);
    let per = |n: usize| delta.map(|d| d as f64 * 1024.0 / n as f64);
    let subs = o.conns * o.subs_per_conn;
    Ok(ConnsReport {
        mode: "conns",
        server: o.server.clone(),
        conns: o.conns,
        subs_per_conn: o.subs_per_conn,
        open_secs: secs,
        conns_per_sec: o.conns as f64 / secs,
        subs_per_sec: subs as f64 / secs,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        rss_delta_kib: delta,
        rss_per_conn_bytes: per(o.conns),
        rss_per_sub_bytes: (subs > 0).then(|| per(subs)).flatten(),
    })
}

/// Connects, subscribes `subs` distinct subjects `bench.idle.<conn>.<n>`, confirms with PING/PONG,
/// and keeps only the socket.
async fn open_idle(server: &str, index: usize, subs: usize) -> Result<TcpStream> {
    let mut conn = Conn::connect(server, "bench-idle", SMALL_BUF).await?;
    let mut cmd = Vec::with_capacity(SUB_CHUNK.min(subs * 32) + 64);
    let mut subject = Vec::with_capacity(48);
    for n in 0..subs {
        subject.clear();
        subject.extend_from_slice(b"bench.idle.");
        proto::push_usize(&mut subject, index);
        subject.push(b'.');
        proto::push_usize(&mut subject, n);
        proto::push_sub(&mut cmd, &subject, None, n + 1);
        if cmd.len() >= SUB_CHUNK {
            conn.write_all(&cmd).await?;
            cmd.clear();
        }
    }
    cmd.extend_from_slice(proto::PING);
    conn.write_all(&cmd).await?;
    // Registering 100,000 subscriptions may take the server longer than a handshake.
    let patience = HANDSHAKE_TIMEOUT + Duration::from_micros(100 * subs as u64);
    conn.until_pong(Instant::now() + patience).await?;
    Ok(conn.into_stream())
}

/// Resident set size of a process, from the `VmRSS:` line of `/proc/<pid>/status`.
pub fn vm_rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

pub struct ConnectRateOpts {
    pub server: String,
    pub duration: Duration,
    pub parallel: usize,
    /// Measure this process's CPU use too.
    pub server_pid: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct ConnectRateReport {
    pub mode: &'static str,
    pub server: String,
    pub parallel: usize,
    pub secs: f64,
    pub connections: u64,
    pub failures: u64,
    pub conns_per_sec: f64,
    /// Time from starting the TCP connect to the handshake's PONG.
    pub latency: Latency,
    pub cpu: Cpu,
    pub errors: Vec<String>,
}

impl ConnectRateReport {
    pub fn human(&self) -> String {
        let mut s = format!(
            "connect-rate x{}: {} connections in {:.3} s = {} conns/s ({} failed); handshake {}",
            self.parallel,
            group(self.connections as f64),
            self.secs,
            group(self.conns_per_sec),
            self.failures,
            self.latency
        );
        s.push_str(&format!("; {}", self.cpu));
        for e in &self.errors {
            s.push_str(&format!("; error: {e}"));
        }
        s
    }
}

/// A worker gives up after this many failures in a row.
const MAX_FAILURES_IN_A_ROW: u32 = 10;

pub async fn connect_rate(o: &ConnectRateOpts) -> Result<ConnectRateReport> {
    if o.parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    let cpu = CpuWindow::start(o.server_pid);
    let t0 = Instant::now();
    let deadline = t0 + o.duration;
    let workers: Vec<_> = (0..o.parallel)
        .map(|_| {
            let server = o.server.clone();
            tokio::spawn(async move {
                let mut hist = nanos_histogram();
                let (mut failures, mut in_a_row, mut last_error) = (0u64, 0u32, None);
                while Instant::now() < deadline && in_a_row < MAX_FAILURES_IN_A_ROW {
                    let start = std::time::Instant::now();
                    match Conn::connect(&server, "bench-rate", SMALL_BUF).await {
                        Ok(conn) => {
                            hist.saturating_record(start.elapsed().as_nanos() as u64);
                            in_a_row = 0;
                            drop(conn);
                        }
                        Err(e) => {
                            failures += 1;
                            in_a_row += 1;
                            last_error = Some(format!("{e:#}"));
                        }
                    }
                }
                (hist, failures, last_error)
            })
        })
        .collect();
    let mut hist = nanos_histogram();
    let mut failures = 0;
    let mut errors = Vec::new();
    for w in workers {
        let (h, f, e) = w.await?;
        hist.add(&h)?;
        failures += f;
        errors.extend(e);
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu.stop();
    Ok(ConnectRateReport {
        mode: "connect-rate",
        server: o.server.clone(),
        parallel: o.parallel,
        secs,
        connections: hist.len(),
        failures,
        conns_per_sec: hist.len() as f64 / secs,
        latency: Latency::from_nanos(&hist),
        cpu,
        errors,
    })
}
