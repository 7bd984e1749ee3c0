//! `propagate`: how long a cluster takes to learn a burst of subscriptions. One connection
//! subscribes to N distinct subjects on one server (pipelined, confirmed by PONG); from the first
//! SUB, a publisher on another server sends a probe to the last subject every millisecond until
//! it arrives. Interest crosses a route in order, so the last subject's arriving means all N
//! have.

use std::time::Duration;

use anyhow::{bail, Result};
use serde::Serialize;
use tokio::time::Instant;

use crate::conn::{Conn, BIG_BUF};
use crate::proto::{self, Frame};

#[derive(Debug, Serialize)]
pub struct PropagateReport {
    pub mode: &'static str,
    pub server: String,
    pub sub_server: String,
    pub subs: usize,
    /// From the first SUB until the subscribing server confirmed all of them (PONG).
    pub local_secs: f64,
    /// From the first SUB until the other server delivered to the last subject.
    pub cluster_secs: f64,
    pub complete: bool,
}

impl PropagateReport {
    pub fn human(&self) -> String {
        format!(
            "propagate {} subs from {} to {}: registered in {:.3} s, known across the cluster in {:.3} s{}",
            self.subs,
            self.sub_server,
            self.server,
            self.local_secs,
            self.cluster_secs,
            if self.complete { "" } else { "; INCOMPLETE" }
        )
    }
}

pub async fn run(
    server: &str,
    sub_server: &str,
    subs: usize,
    timeout: Duration,
) -> Result<PropagateReport> {
    if subs == 0 {
        bail!("--subs must be at least 1");
    }
    let mut sub = Conn::connect(sub_server, "bench-propagate-sub", BIG_BUF).await?;
    let mut publisher = Conn::connect(server, "bench-propagate-pub", BIG_BUF).await?;
    let mut cmd = Vec::with_capacity(subs * 32);
    for i in 0..subs {
        proto::push_sub(&mut cmd, format!("bench.prop.{i}").as_bytes(), None, i + 1);
    }
    cmd.extend_from_slice(proto::PING);
    let last = format!("bench.prop.{}", subs - 1);
    let mut probe = Vec::new();
    proto::push_pub(&mut probe, last.as_bytes(), None, b"p");
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    sub.write_all(&cmd).await?;
    sub.until_pong(deadline).await?;
    let local = t0.elapsed();
    let mut arrived = None;
    while arrived.is_none() && Instant::now() < deadline {
        publisher.write_all(&probe).await?;
        let wait = Instant::now() + Duration::from_millis(1);
        loop {
            let mut got = false;
            while let Some(f) = sub.next_frame()? {
                if let Frame::Msg { subject, .. } = f {
                    if subject == last.as_bytes() {
                        got = true;
                    }
                }
            }
            if got {
                arrived = Some(t0.elapsed());
                break;
            }
            if tokio::time::timeout_at(wait, sub.fill()).await.is_err() {
                break;
            }
        }
    }
    Ok(PropagateReport {
        mode: "propagate",
        server: server.to_string(),
        sub_server: sub_server.to_string(),
        subs,
        local_secs: local.as_secs_f64(),
        cluster_secs: arrived.map_or(f64::NAN, |d| d.as_secs_f64()),
        complete: arrived.is_some(),
    })
}
