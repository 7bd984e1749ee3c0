//! Figures every mode reports, in one shape for `--json` and one line for people.
//!
//! Throughput counts payload bytes only (not the protocol framing), in MiB/s (2^20 bytes).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Messages moved in a time window.
#[derive(Debug, Clone, Serialize)]
pub struct Rate {
    pub msgs: u64,
    pub bytes: u64,
    pub secs: f64,
    pub msgs_per_sec: f64,
    pub mib_per_sec: f64,
}

impl Rate {
    pub fn new(msgs: u64, bytes: u64, elapsed: Duration) -> Rate {
        let secs = elapsed.as_secs_f64().max(1e-9);
        Rate {
            msgs,
            bytes,
            secs,
            msgs_per_sec: msgs as f64 / secs,
            mib_per_sec: bytes as f64 / secs / (1024.0 * 1024.0),
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} msgs in {:.3} s = {} msgs/s, {:.1} MiB/s",
            group(self.msgs as f64),
            self.secs,
            group(self.msgs_per_sec),
            self.mib_per_sec
        )
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Latency {
    /// From a histogram of nanoseconds.
    pub fn from_nanos(h: &Histogram<u64>) -> Latency {
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            count: h.len(),
            min_us: us(h.min()),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.1} us, p90 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us",
            self.p50_us, self.p90_us, self.p99_us, self.p999_us, self.max_us
        )
    }
}

/// CPU the generator and the server used during a measured window, in cores (1.0 = one core busy
/// the whole time). Tells which side was the bottleneck.
#[derive(Debug, Clone, Serialize)]
pub struct Cpu {
    pub generator: Option<f64>,
    pub server: Option<f64>,
    /// All processes on the machine (from `/proc/stat`): much more than generator plus server
    /// means something else was running and the figures are noisy.
    pub machine: Option<f64>,
}

impl std::fmt::Display for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: Option<f64>| v.map_or("?".to_string(), |v| format!("{v:.2}"));
        write!(
            f,
            "cpu: generator {} / server {} / machine {} cores",
            show(self.generator),
            show(self.server),
            show(self.machine)
        )
    }
}

/// Starts measuring CPU time of this process and, if given, of the server process.
pub struct CpuWindow {
    start: Instant,
    generator: Option<Duration>,
    server_pid: Option<u32>,
    server: Option<Duration>,
    machine: Option<Duration>,
}

impl CpuWindow {
    pub fn start(server_pid: Option<u32>) -> CpuWindow {
        CpuWindow {
            start: Instant::now(),
            generator: process_cpu("self"),
            server_pid,
            server: server_pid.and_then(|p| process_cpu(&p.to_string())),
            machine: machine_cpu(),
        }
    }

    pub fn stop(&self) -> Cpu {
        let wall = self.start.elapsed().as_secs_f64().max(1e-9);
        let cores = |before: Option<Duration>, now: Option<Duration>| {
            before
                .zip(now)
                .map(|(b, n)| n.saturating_sub(b).as_secs_f64() / wall)
        };
        Cpu {
            generator: cores(self.generator, process_cpu("self")),
            server: cores(
                self.server,
                self.server_pid.and_then(|p| process_cpu(&p.to_string())),
            ),
            machine: cores(self.machine, machine_cpu()),
        }
    }
}

/// Time on CPU of all live threads of a process: the first field of each
/// `/proc/<pid>/task/<tid>/schedstat` (nanoseconds). `None` where `/proc` does not say.
fn process_cpu(pid: &str) -> Option<Duration> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    for task in tasks.flatten() {
        // A thread may exit between listing and reading; skip it.
        if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
            total += stat
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Some(Duration::from_nanos(total))
}

/// Busy time of all CPUs: the `cpu` line of `/proc/stat` without idle and iowait, in the kernel's
/// fixed 100 ticks per second.
fn machine_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    Some(Duration::from_millis(busy * 10))
}

/// A histogram of nanoseconds from 1 ns to 100 s with three significant digits.
pub fn nanos_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("static histogram bounds are valid")
}

/// `1234567.8` as `1,234,568`.
pub fn group(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(group(0.0), "0");
        assert_eq!(group(999.4), "999");
        assert_eq!(group(1000.0), "1,000");
        assert_eq!(group(1234567.8), "1,234,568");
    }

    #[test]
    fn measures_own_cpu() {
        let w = CpuWindow::start(None);
        let mut x = 0u64;
        // black_box every step: in a release build the loop would otherwise fold to nothing.
        for i in 0..10_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let cpu = w.stop();
        assert!(cpu.generator.is_some_and(|c| c > 0.0));
        assert!(cpu.server.is_none());
    }

    #[test]
    fn rate_divides_by_elapsed() {
        let r = Rate::new(1000, 1024 * 1024, Duration::from_millis(500));
        assert_eq!(r.msgs_per_sec, 2000.0);
        assert_eq!(r.mib_per_sec, 2.0);
    }
}
