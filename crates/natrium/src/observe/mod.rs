//! The observe layer: snapshots of the running server as nats-server's monitoring documents
//! (`varz`, `connz`, `subsz`, `accountz`, `accstatz`, `jsz`, `healthz`, `routez`, `statsz`),
//! computed at request time from live state so the message path pays nothing for them. The
//! HTTP endpoints (`monitor`) and the system account's requests (`sys`) both answer with these.

mod accounts;
mod conns;
mod server;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

use crate::cluster::Mesh;
use crate::conn::{Client, ConnContext};
use crate::jetstream::JetStream;
use crate::options::Options;
use crate::router::{Account, Totals};

pub use accounts::{account_usage, accountz, accstatz, subsz, AccQuery, SubszQuery};
pub use conns::{connz, ConnInfo, ConnzQuery};
pub use server::{
    gatewayz, healthz, jsz, leafz, memory, routez, sample_cpu, server_json, statsz, varz, CpuMeter,
    JszParams,
};

/// What the documents are made from: the live parts of a running server.
pub struct Observed {
    pub start: SystemTime,
    pub conns: Arc<ConnContext>,
    pub(crate) jetstream: Option<Arc<JetStream>>,
    /// The options in force (as reloads changed them), shared with the server.
    pub options: Arc<Mutex<Options>>,
    /// The bound monitoring ports, once listening.
    pub http_port: Mutex<Option<u16>>,
    pub https_port: Mutex<Option<u16>>,
    /// The cluster, once its listener is up.
    pub mesh: Mutex<Option<Arc<Mesh>>>,
    /// Leafnode connections, once started.
    pub leafs: Mutex<Option<Arc<crate::leaf::Leafs>>>,
    /// The process's current CPU use, sampled each second.
    pub cpu: CpuMeter,
    /// Monitoring requests served, by endpoint (`http_req_stats` in `/varz`).
    pub http_req_stats: Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl Observed {
    pub fn id(&self) -> &str {
        &self.conns.identity.id
    }

    /// Counts a request to the monitoring endpoint `path`.
    pub fn count_request(&self, path: &'static str) {
        *self.http_req_stats.lock().entry(path).or_default() += 1;
    }

    pub fn options(&self) -> Options {
        self.options.lock().clone()
    }

    fn clients(&self) -> Vec<Arc<Client>> {
        self.conns.registry.clients()
    }

    fn accounts(&self) -> Vec<Arc<Account>> {
        self.conns.accounts.list()
    }

    /// Server-wide totals: closed clients plus live ones.
    pub fn totals(&self, clients: &[Arc<Client>]) -> Totals {
        let mut t = self.conns.registry.closed_totals();
        for c in clients {
            t.add(&c.out.stats());
        }
        t
    }
}

/// A document request refused, with the HTTP status nats-server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub text: String,
}

impl Refused {
    fn bad_request(text: String) -> Self {
        Refused { status: 400, text }
    }
}

pub type Answer = Result<serde_json::Value, Refused>;

/// Query flags as nats-server reads them (`1`, `true`, `detail`).
fn truthy(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("1" | "true" | "detail"))
}

/// Go-style duration text as nats-server prints uptimes and idle times: `1d2h3m4s`.
pub fn uptime(d: Duration) -> String {
    let mut s = d.as_secs();
    let days = s / 86_400;
    s %= 86_400;
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    let mut out = String::new();
    if days > 0 {
        out += &format!("{days}d");
    }
    if days > 0 || h > 0 {
        out += &format!("{h}h");
    }
    if days > 0 || h > 0 || m > 0 {
        out += &format!("{m}m");
    }
    out += &format!("{sec}s");
    out
}

pub use crate::util::time::go_duration;

/// A round-trip time as nats-server shows it: to the microsecond below a millisecond.
pub fn rtt_text(rtt: Option<Duration>) -> String {
    match rtt {
        None => go_duration(Duration::ZERO),
        Some(r) if r > Duration::from_micros(1) && r < Duration::from_millis(1) => {
            go_duration(Duration::from_micros(r.as_micros() as u64))
        }
        Some(r) => go_duration(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_go_prints_them() {
        let ns = Duration::from_nanos;
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(ns(850)), "850ns");
        assert_eq!(go_duration(ns(501_000)), "501µs");
        assert_eq!(go_duration(ns(1_500)), "1.5µs");
        assert_eq!(go_duration(ns(1_234_567)), "1.234567ms");
        assert_eq!(go_duration(ns(2_250_000_000)), "2.25s");
        assert_eq!(go_duration(Duration::from_secs(3723)), "1h2m3s");
        assert_eq!(go_duration(Duration::from_secs(60)), "1m0s");
        assert_eq!(rtt_text(Some(ns(501_234))), "501µs");
        assert_eq!(rtt_text(None), "0s");
    }

    #[test]
    fn uptime_like_nats_server() {
        assert_eq!(uptime(Duration::from_secs(5)), "5s");
        assert_eq!(uptime(Duration::from_secs(65)), "1m5s");
        assert_eq!(uptime(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(uptime(Duration::from_secs(90_061)), "1d1h1m1s");
    }
}
