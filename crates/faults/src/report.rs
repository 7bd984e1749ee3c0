//! A scenario run's report: what was done, what the checker found on each replica, failover
//! times, crashes in the logs, and whether the run passed; as text and as JSON.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::checker::Verdict;

/// p50/p99/max of a set of durations.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles; `None` for no samples.
    pub fn of(samples: &[Duration]) -> Option<Percentiles> {
        if samples.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let i = ((p / 100.0) * v.len() as f64).ceil() as usize;
            v[i.clamp(1, v.len()) - 1]
        };
        Some(Percentiles {
            count: v.len(),
            p50_ms: rank(50.0),
            p99_ms: rank(99.0),
            max_ms: v[v.len() - 1],
        })
    }
}

/// Core NATS over routes: what subscribers received from publishers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CoreVerdict {
    pub published: u64,
    pub delivered: u64,
    /// Messages published while the cluster was whole and healed that some subscriber missed.
    pub lost_while_healthy: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub corrupted: u64,
    pub examples: Vec<String>,
}

impl CoreVerdict {
    pub fn ok(&self) -> bool {
        self.lost_while_healthy == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.corrupted == 0
    }
}

/// Everything a run found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    pub nodes: usize,
    pub replicas: usize,
    pub iterations: usize,
    pub elapsed_s: f64,
    /// Faults injected, in order (the first and last ones if many).
    pub faults: Vec<String>,
    pub faults_total: usize,
    pub acked: u64,
    pub publish_failures: u64,
    pub last_publish_errors: Vec<String>,
    /// One per replica read (through the API, and each node's store offline).
    pub verdicts: Vec<Verdict>,
    /// Differences between replicas.
    pub divergence: Vec<String>,
    pub core: Option<CoreVerdict>,
    /// Kill (or fault) of the leader to the next PubAck.
    pub failover: Option<Percentiles>,
    /// Iterations after which no PubAck came within the iteration's time limit.
    pub unavailable: usize,
    /// Power losses: writes undone and bytes cut, summed.
    pub power_losses: usize,
    pub writes_undone: usize,
    pub bytes_cut: u64,
    pub names_undone: usize,
    /// Damage injected and what the store reported on recovery.
    pub damage: Vec<String>,
    pub damage_findings: Vec<String>,
    /// Losses the store detected and reported are accepted (a lone replica cannot repair).
    pub detected_loss_allowed: bool,
    /// Panics or fatal errors in the nodes' logs.
    pub crashes: Vec<String>,
    /// Problems of the run itself (a node that would not restart, a read that failed).
    pub errors: Vec<String>,
    /// Where the cluster's files were kept, if they were.
    pub kept: Option<String>,
}

impl Report {
    const FAULT_LOG: usize = 40;

    pub fn fault(&mut self, s: String) {
        self.faults_total += 1;
        if self.faults.len() < Self::FAULT_LOG {
            self.faults.push(s);
        } else {
            // Keep the first half and a rolling last half.
            let half = Self::FAULT_LOG / 2;
            self.faults.remove(half);
            self.faults.push(s);
        }
    }

    /// Every check held.
    pub fn passed(&self) -> bool {
        let verdicts_ok = self.verdicts.iter().all(|v| {
            if self.detected_loss_allowed {
                v.ok_with_detected_loss()
            } else {
                v.ok()
            }
        });
        verdicts_ok
            && self.divergence.is_empty()
            && self.core.as_ref().is_none_or(CoreVerdict::ok)
            && self.crashes.is_empty()
            && self.errors.is_empty()
    }

    /// The report as text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let what = if self.core.is_some() || self.replicas == 0 {
            "core NATS".to_string()
        } else {
            format!("R{} stream", self.replicas)
        };
        let _ = writeln!(
            s,
            "natrium-faults: scenario {} | {} node(s), {what} | {} iteration(s) in {:.1} s | {}",
            self.scenario,
            self.nodes,
            self.iterations,
            self.elapsed_s,
            if self.passed() { "PASSED" } else { "FAILED" }
        );
        if self.verdicts.is_empty() && self.acked == 0 {
            let _ = writeln!(s, "faults injected: {}", self.faults_total);
        } else {
            let _ = writeln!(
                s,
                "faults injected: {} | acked: {} | publish failures (retried): {}",
                self.faults_total, self.acked, self.publish_failures
            );
        }
        if let Some(f) = &self.failover {
            let _ = writeln!(
                s,
                "failover (fault -> next PubAck): n={} p50={:.0} ms p99={:.0} ms max={:.0} ms | no ack in time: {}",
                f.count, f.p50_ms, f.p99_ms, f.max_ms, self.unavailable
            );
        }
        if self.power_losses > 0 {
            let _ = writeln!(
                s,
                "power losses: {} | unsynced writes undone: {} ({} bytes cut) | names undone: {}",
                self.power_losses, self.writes_undone, self.bytes_cut, self.names_undone
            );
        }
        if !self.damage.is_empty() {
            let _ = writeln!(s, "damage injected: {}", self.damage.len());
            for d in self.damage.iter().take(10) {
                let _ = writeln!(s, "  {d}");
            }
            let _ = writeln!(s, "reported by the store: {}", self.damage_findings.len());
            for d in self.damage_findings.iter().take(10) {
                let _ = writeln!(s, "  {d}");
            }
        }
        if !self.verdicts.is_empty() {
            let _ = writeln!(
                s,
                "{:<24} {:>8} {:>8} {:>6} {:>9} {:>6} {:>9} {:>9} {:>8} {:>7} {:>8}",
                "replica",
                "acked",
                "intact",
                "lost",
                "detected",
                "dups",
                "reordered",
                "corrupted",
                "seq-diff",
                "reused",
                "msgs"
            );
        }
        for v in &self.verdicts {
            let _ = writeln!(
                s,
                "{:<24} {:>8} {:>8} {:>6} {:>9} {:>6} {:>9} {:>9} {:>8} {:>7} {:>8}",
                v.source,
                v.acked,
                v.intact,
                v.lost,
                v.lost_detected,
                v.duplicated,
                v.reordered,
                v.corrupted,
                v.seq_mismatch,
                v.seq_reused,
                v.stream_msgs
            );
            for e in v.examples.iter().take(8) {
                let _ = writeln!(s, "    {e}");
            }
        }
        if let Some(c) = &self.core {
            let _ = writeln!(
                s,
                "core: published {} delivered {} | lost while healthy {} | dups {} | reordered {} | corrupted {}",
                c.published, c.delivered, c.lost_while_healthy, c.duplicated, c.reordered, c.corrupted
            );
            for e in c.examples.iter().take(8) {
                let _ = writeln!(s, "    {e}");
            }
        }
        for (title, list) in [
            ("replicas differ", &self.divergence),
            ("crashes", &self.crashes),
            ("errors", &self.errors),
            ("last publish errors", &self.last_publish_errors),
        ] {
            if !list.is_empty() {
                let _ = writeln!(s, "{title}:");
                for l in list.iter().take(10) {
                    let _ = writeln!(s, "  {l}");
                }
            }
        }
        let _ = writeln!(s, "faults (first and last):");
        for f in &self.faults {
            let _ = writeln!(s, "  {f}");
        }
        if let Some(k) = &self.kept {
            let _ = writeln!(s, "cluster files kept in {k}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(&d).unwrap();
        assert_eq!((p.p50_ms, p.p99_ms, p.max_ms), (50.0, 99.0, 100.0));
        let p = Percentiles::of(&[Duration::from_millis(7)]).unwrap();
        assert_eq!((p.p50_ms, p.p99_ms), (7.0, 7.0));
        assert!(Percentiles::of(&[]).is_none());
    }

    #[test]
    fn a_report_fails_on_any_finding() {
        let mut r = Report::default();
        assert!(r.passed());
        r.verdicts.push(Verdict {
            lost: 1,
            lost_detected: 1,
            ..Verdict::default()
        });
        assert!(!r.passed());
        r.detected_loss_allowed = true;
        assert!(r.passed());
        r.crashes.push("panicked".into());
        assert!(!r.passed());
    }
}
