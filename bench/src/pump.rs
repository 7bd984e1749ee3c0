//! `pump` and `sink`: the physical ceiling. The pump writes exactly the bytes a publisher of that
//! payload size would (the same pre-built PUB batches) to a sink that reads and discards them: a
//! "server" that does no work at all. No server can ingest faster than this on the same machine and
//! pinning.
//!
//! Protocol between them: the pump writes, then shuts down its write side; the sink reads to end of
//! stream, answers `PONG\r\n` and closes. The pump's time ends when it reads that answer.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::proto::{self, PubBatch};
use crate::report::{Cpu, CpuWindow, Rate};

const BATCH_BYTES: usize = 256 * 1024;
const READ_BYTES: usize = 256 * 1024;

pub struct PumpOpts {
    /// A running `sink`; `None` runs one inside this process.
    pub sink: Option<String>,
    pub msgs: u64,
    pub size: usize,
    pub timeout: Duration,
    /// The sink's process, to measure its CPU use too.
    pub sink_pid: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct PumpReport {
    pub mode: &'static str,
    pub sink: String,
    pub size: usize,
    /// Bytes on the wire per message (the PUB frame).
    pub frame_bytes: usize,
    pub rate: Rate,
    pub wire_mib_per_sec: f64,
    pub cpu: Cpu,
}

impl PumpReport {
    pub fn human(&self) -> String {
        format!(
            "pump {} B ({} B frames) to {}: {}, {:.1} MiB/s on the wire; {}",
            self.size, self.frame_bytes, self.sink, self.rate, self.wire_mib_per_sec, self.cpu
        )
    }
}

pub async fn pump(o: &PumpOpts) -> Result<PumpReport> {
    let (addr, sink) = match &o.sink {
        Some(addr) => (addr.clone(), addr.clone()),
        None => {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?.to_string();
            tokio::spawn(serve(listener));
            (addr, "in-process sink".to_string())
        }
    };
    let batch = PubBatch::new(b"bench.pump", o.size, BATCH_BYTES);
    let mut stream = TcpStream::connect(&addr)
        .await
        .with_context(|| format!("connect to sink {addr}"))?;
    stream.set_nodelay(true)?;

    let cpu = CpuWindow::start(o.sink_pid);
    let t0 = Instant::now();
    let run = async {
        let mut left = o.msgs;
        while left >= batch.frames {
            stream.write_all(&batch.bytes).await?;
            left -= batch.frames;
        }
        if left > 0 {
            stream.write_all(batch.first(left)).await?;
        }
        stream.shutdown().await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        if answer != proto::PONG {
            bail!("sink answered {:?}", String::from_utf8_lossy(&answer));
        }
        Ok(())
    };
    tokio::time::timeout(o.timeout, run)
        .await
        .context("pump timed out")??;
    let elapsed = t0.elapsed();
    let cpu = cpu.stop();

    let rate = Rate::new(o.msgs, o.msgs * o.size as u64, elapsed);
    let wire = (o.msgs * batch.frame_len as u64) as f64 / elapsed.as_secs_f64();
    Ok(PumpReport {
        mode: "pump",
        sink,
        size: o.size,
        frame_bytes: batch.frame_len,
        rate,
        wire_mib_per_sec: wire / (1024.0 * 1024.0),
        cpu,
    })
}

/// Runs a sink on `listen` until the process is killed.
pub async fn sink(listen: &str) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("bind {listen}"))?;
    eprintln!("natrium-bench sink listening on {}", listener.local_addr()?);
    serve(listener).await;
    Ok(())
}

async fn serve(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(discard(stream));
            }
            Err(e) => {
                eprintln!("natrium-bench sink: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn discard(mut stream: TcpStream) {
    let mut buf = vec![0u8; READ_BYTES];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return,
        }
    }
    // The pump may be a readiness probe that already left; nothing to do about a failed answer.
    let _ = stream.write_all(proto::PONG).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pumps_every_byte_through_an_in_process_sink() {
        let opts = PumpOpts {
            sink: None,
            msgs: 100_003,
            size: 16,
            timeout: Duration::from_secs(30),
            sink_pid: None,
        };
        let r = pump(&opts).await.unwrap();
        assert_eq!(r.rate.msgs, 100_003);
        assert_eq!(r.rate.bytes, 100_003 * 16);
        assert_eq!(r.frame_bytes, b"PUB bench.pump 16\r\n".len() + 16 + 2);
    }
}
