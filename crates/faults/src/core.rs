//! The `core` scenario: core NATS across routes under link faults and node kills. Each node has
//! a publisher and a subscriber (to `core.>`) connected to it alone; faults come and go.
//!
//! Core NATS is at most once, so a fault may lose messages; what must hold is that no
//! subscriber gets a message twice, out of its publisher's order, or altered, and that while
//! the cluster is whole (healed, routes up and messages seen flowing end to end) every message
//! reaches every subscriber.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use parking_lot::Mutex;

use crate::cluster::{Cluster, ClusterConfig, NodeState};
use crate::report::{CoreVerdict, Report};
use crate::scenario::RunConfig;
use crate::workload;

/// Messages published within this long before a fault may be caught in it.
const FAULT_MARGIN: Duration = Duration::from_millis(300);

fn body(p: usize, i: u64) -> Bytes {
    Bytes::from(format!("{p}-{i}:{}", "x".repeat((i % 64) as usize)))
}

fn parse(b: &[u8]) -> Option<(usize, u64)> {
    let s = std::str::from_utf8(b).ok()?;
    let (head, _) = s.split_once(':')?;
    let (p, i) = head.split_once('-')?;
    Some((p.parse().ok()?, i.parse().ok()?))
}

/// What a subscriber got: (publisher, index, intact) in arrival order.
type Received = Arc<Mutex<Vec<(usize, u64, bool)>>>;
/// What a publisher published: the time (since start) of each index.
type Published = Arc<Mutex<Vec<Duration>>>;

struct Side {
    received: Vec<Received>,
    published: Vec<Published>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Side {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn start_clients(cluster: &Cluster, start: Instant, pace: Duration) -> Result<Side, String> {
    let n = cluster.len();
    let stop = Arc::new(AtomicBool::new(false));
    let mut side = Side {
        received: Vec::new(),
        published: Vec::new(),
        stop: stop.clone(),
        tasks: Vec::new(),
    };
    for i in 0..n {
        let url = vec![cluster.client_url(i)];
        let sub_client = workload::connect(&url)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut sub = sub_client
            .subscribe("core.>")
            .await
            .map_err(|e| format!("subscribe: {e}"))?;
        let rec: Received = Arc::default();
        side.received.push(rec.clone());
        let s = stop.clone();
        side.tasks.push(tokio::spawn(async move {
            let _keep = sub_client;
            while !s.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
                    Ok(Some(m)) => {
                        if let Some((p, idx)) = parse(&m.payload) {
                            rec.lock().push((p, idx, m.payload == body(p, idx)));
                        } else {
                            rec.lock().push((usize::MAX, 0, false));
                        }
                    }
                    Ok(None) => return,
                    Err(_) => {}
                }
            }
        }));
        let pub_client = workload::connect(&url)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let published: Published = Arc::default();
        side.published.push(published.clone());
        let s = stop.clone();
        side.tasks.push(tokio::spawn(async move {
            let mut idx = 0u64;
            while !s.load(Ordering::Relaxed) {
                let at = start.elapsed();
                let sent = tokio::time::timeout(
                    Duration::from_secs(1),
                    pub_client.publish(format!("core.{i}"), body(i, idx)),
                )
                .await;
                if matches!(sent, Ok(Ok(()))) {
                    published.lock().push(at);
                    idx += 1;
                }
                tokio::time::sleep(pace).await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), pub_client.flush()).await;
        }));
    }
    Ok(side)
}

/// Waits until every subscriber got, from every publisher, a message published after `since`.
async fn wait_flow(side: &Side, since: Duration, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    loop {
        let firsts: Vec<Option<u64>> = side
            .published
            .iter()
            .map(|p| {
                let p = p.lock();
                let k = p.partition_point(|&t| t < since);
                (k < p.len()).then_some(k as u64)
            })
            .collect();
        let all = side.received.iter().all(|r| {
            let r = r.lock();
            firsts
                .iter()
                .enumerate()
                .all(|(p, f)| f.is_some_and(|f| r.iter().rev().any(|&(q, i, _)| q == p && i >= f)))
        });
        if all {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks what subscribers got against the healthy windows.
pub fn verdict(
    received: &[Vec<(usize, u64, bool)>],
    published: &[Vec<Duration>],
    windows: &[(Duration, Duration)],
) -> CoreVerdict {
    let mut v = CoreVerdict {
        published: published.iter().map(|p| p.len() as u64).sum(),
        ..CoreVerdict::default()
    };
    let note = |v: &mut CoreVerdict, s: String| {
        if v.examples.len() < 20 {
            v.examples.push(s);
        }
    };
    for (s, got) in received.iter().enumerate() {
        v.delivered += got.len() as u64;
        let mut seen: Vec<HashSet<u64>> = vec![HashSet::new(); published.len()];
        let mut last: Vec<Option<u64>> = vec![None; published.len()];
        for &(p, i, intact) in got {
            if p >= published.len() || !intact {
                v.corrupted += 1;
                note(
                    &mut v,
                    format!("subscriber {s}: altered message ({p}, {i})"),
                );
                continue;
            }
            if !seen[p].insert(i) {
                v.duplicated += 1;
                note(&mut v, format!("subscriber {s}: {p}-{i} twice"));
                continue;
            }
            if last[p].is_some_and(|l| i < l) {
                v.reordered += 1;
                note(
                    &mut v,
                    format!("subscriber {s}: {p}-{i} after {p}-{}", last[p].unwrap_or(0)),
                );
            }
            last[p] = Some(last[p].map_or(i, |l| l.max(i)));
        }
        for (p, times) in published.iter().enumerate() {
            for &(from, to) in windows {
                let a = times.partition_point(|&t| t < from);
                let b = times.partition_point(|&t| t <= to);
                for i in a..b {
                    if !seen[p].contains(&(i as u64)) {
                        v.lost_while_healthy += 1;
                        note(
                            &mut v,
                            format!("subscriber {s}: missed {p}-{i} published while healthy"),
                        );
                    }
                }
            }
        }
    }
    v
}

/// Runs the core scenario.
pub async fn run(cfg: RunConfig, mut report: Report) -> Report {
    let started = Instant::now();
    let mut ccfg = ClusterConfig::new(cfg.nodes, &cfg.binary);
    ccfg.jetstream = false;
    ccfg.dir = cfg.dir.clone();
    ccfg.keep = cfg.keep;
    ccfg.extra = cfg.extra_config.clone();
    let mut cluster = match Cluster::start(ccfg).await {
        Ok(c) => c,
        Err(e) => {
            report.errors.push(format!("start: {e}"));
            return report;
        }
    };
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    let progress = |s: &str| {
        if cfg.progress {
            eprintln!("[{:>7.1}s] {s}", started.elapsed().as_secs_f64());
        }
    };
    let mut windows: Vec<(Duration, Duration)> = Vec::new();
    let run = async {
        cluster
            .wait_routes(cfg.iteration_timeout)
            .await
            .map_err(|e| e.to_string())?;
        let side = start_clients(&cluster, started, Duration::from_millis(2)).await?;
        let heal_at = started.elapsed();
        if !wait_flow(&side, heal_at, cfg.iteration_timeout).await {
            return Err("no end-to-end flow at start".to_string());
        }
        let mut window_start = started.elapsed();
        let n = cluster.len();
        for it in 0..cfg.iterations {
            tokio::time::sleep(cfg.interval).await;
            let fault_at = started.elapsed();
            windows.push((window_start, fault_at.saturating_sub(FAULT_MARGIN)));
            let a = rng.usize(..n);
            let b = (a + 1 + rng.usize(..n - 1)) % n;
            let (an, bn) = (cluster.node(a).name.clone(), cluster.node(b).name.clone());
            let mut killed = None;
            let what = match it % 5 {
                0 => {
                    cluster.net.cut(a, b);
                    format!("cut {an} <-> {bn}")
                }
                1 => {
                    cluster.net.isolate(a);
                    format!("{an} cut off from the others")
                }
                2 => {
                    cluster.net.drop_one_way(a, b);
                    format!("bytes from {an} to {bn} dropped")
                }
                3 => {
                    let d = Duration::from_millis(20 + rng.u64(..200));
                    cluster.net.delay(a, b, d);
                    format!("{d:?} of delay each way between {an} and {bn}")
                }
                _ => {
                    cluster.kill(a).map_err(|e| e.to_string())?;
                    killed = Some(a);
                    format!("kill -9 {an}")
                }
            };
            progress(&what);
            report.fault(format!("{:.1}s {what}", started.elapsed().as_secs_f64()));
            tokio::time::sleep(cfg.fault_time).await;
            cluster.net.heal();
            if let Some(k) = killed {
                cluster
                    .start_node(k)
                    .await
                    .map_err(|e| format!("restart: {e}"))?;
            }
            cluster
                .wait_routes(cfg.iteration_timeout)
                .await
                .map_err(|e| format!("after {what}: {e}"))?;
            let healed = started.elapsed();
            if !wait_flow(&side, healed, cfg.iteration_timeout).await {
                return Err(format!(
                    "no end-to-end flow within {:?} after healing {what}",
                    cfg.iteration_timeout
                ));
            }
            window_start = started.elapsed();
            report.iterations = it + 1;
        }
        tokio::time::sleep(cfg.interval).await;
        windows.push((window_start, started.elapsed().saturating_sub(FAULT_MARGIN)));
        Ok(side)
    };
    let side = run.await;
    let side = match side {
        Ok(s) => s,
        Err(e) => {
            report.errors.push(e);
            report.crashes = cluster.crashes();
            cluster.keep();
            report.kept = Some(cluster.dir().display().to_string());
            return report;
        }
    };
    side.stop.store(true, Ordering::Relaxed);
    let mut side = side;
    for t in std::mem::take(&mut side.tasks) {
        let abort = t.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    let received: Vec<Vec<(usize, u64, bool)>> =
        side.received.iter().map(|r| r.lock().clone()).collect();
    let published: Vec<Vec<Duration>> = side.published.iter().map(|p| p.lock().clone()).collect();
    report.core = Some(verdict(&received, &published, &windows));
    for i in 0..cluster.len() {
        if cluster.node(i).state() != NodeState::Down {
            let _ = cluster.stop(i).await;
        }
    }
    report.crashes = cluster.crashes();
    report.elapsed_s = started.elapsed().as_secs_f64();
    if !report.passed() || cfg.keep {
        cluster.keep();
        report.kept = Some(cluster.dir().display().to_string());
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_parse_back() {
        assert_eq!(parse(&body(2, 77)), Some((2, 77)));
        assert_eq!(parse(b"junk"), None);
    }

    #[test]
    fn the_core_verdict_counts_each_anomaly() {
        let ms = Duration::from_millis;
        let published = vec![vec![ms(0), ms(10), ms(20), ms(30)]];
        // Healthy from 5 to 25 ms: indices 1 and 2 must arrive.
        let windows = vec![(ms(5), ms(25))];
        let ok = vec![vec![(0, 0, true), (0, 1, true), (0, 2, true)]];
        assert!(verdict(&ok, &published, &windows).ok());
        let lost = vec![vec![(0, 0, true), (0, 2, true)]];
        assert_eq!(verdict(&lost, &published, &windows).lost_while_healthy, 1);
        let dup = vec![vec![(0, 1, true), (0, 1, true), (0, 2, true)]];
        assert_eq!(verdict(&dup, &published, &windows).duplicated, 1);
        let reorder = vec![vec![(0, 2, true), (0, 1, true)]];
        assert_eq!(verdict(&reorder, &published, &windows).reordered, 1);
        let bad = vec![vec![(0, 1, true), (0, 2, false)]];
        let v = verdict(&bad, &published, &windows);
        assert_eq!(v.corrupted, 1);
        assert!(!v.ok());
    }
}
