//! Server-wide documents: `varz`, `statsz` (the system account's PING), `jsz`, `healthz`,
//! `routez`, `gatewayz`, `leafz`, the `server` object of system-account answers, and the CPU
//! meter behind `varz`'s `cpu`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use serde_json::{json, Value};

use super::{account_usage, uptime, Answer, Observed, Refused};
use crate::util::time::{rfc3339, since};
use crate::util::{PROTOCOL_VERSION, VERSION};

/// Resident memory of the process in bytes, from /proc.
pub fn memory() -> u64 {
    let page = 4096u64;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |p| p * page)
}

/// CPU time the process has used (user plus system), from /proc.
fn cpu_time() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(Duration::from_secs_f64(ticks as f64 / hz))
}

/// The process's current CPU use as nats-server reports it in `/varz` `cpu`: the percentage of
/// one core used over the last sampling period (`sample` runs each second), not the average
/// since start.
pub struct CpuMeter {
    last: Mutex<Option<(Instant, Duration)>>,
    /// Tenths of a percent, from the last sample.
    tenths: AtomicU64,
}

impl Default for CpuMeter {
    fn default() -> Self {
        CpuMeter {
            last: Mutex::new(cpu_time().map(|t| (Instant::now(), t))),
            tenths: AtomicU64::new(0),
        }
    }
}

impl CpuMeter {
    /// Takes a reading; the use since the previous one becomes the current value.
    pub fn sample(&self) {
        let Some(now_cpu) = cpu_time() else { return };
        let now = Instant::now();
        let mut last = self.last.lock();
        if let Some((at, cpu)) = *last {
            let wall = now.duration_since(at).as_secs_f64();
            if wall > 0.0 {
                let used = now_cpu.saturating_sub(cpu).as_secs_f64();
                let pct = used / wall * 100.0;
                self.tenths
                    .store((pct * 10.0).round() as u64, Ordering::Relaxed);
            }
        }
        *last = Some((now, now_cpu));
    }

    /// Percent of one core, to a tenth.
    pub fn percent(&self) -> f64 {
        self.tenths.load(Ordering::Relaxed) as f64 / 10.0
    }
}

/// Samples `o`'s CPU meter each second until the server shuts down (or is dropped).
pub async fn sample_cpu(o: std::sync::Weak<Observed>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match o.upgrade() {
            Some(o) => o.cpu.sample(),
            None => return,
        }
    }
}

/// The `server` object of nats-server's system-account answers (`seq` counts the sender's
/// messages).
pub fn server_json(o: &Observed, seq: &AtomicU64) -> Value {
    let id = &o.conns.identity;
    json!({
        "name": id.name,
        "host": id.host,
        "id": id.id,
        "ver": PROTOCOL_VERSION,
        "seq": seq.fetch_add(1, Ordering::Relaxed) + 1,
        "jetstream": false,
        "time": rfc3339(SystemTime::now()),
    })
}

/// The STATSZ document of `$SYS.REQ.SERVER.PING`.
pub fn statsz(o: &Observed) -> Value {
    let clients = o.clients();
    let t = o.totals(&clients);
    let (mem, cpu) = (memory(), o.cpu.percent());
    let accounts = o.accounts();
    let active = accounts
        .iter()
        .filter(|a| account_usage(a, &clients).0 > 0)
        .count();
    let reg = &o.conns.registry;
    json!({
        "start": rfc3339(o.start),
        "mem": mem,
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "cpu": cpu,
        "connections": clients.len(),
        "total_connections": reg.total_connections.load(Ordering::Relaxed),
        "active_accounts": active,
        "subscriptions": accounts.iter().map(|a| a.subscription_count()).sum::<usize>(),
        "sent": {"msgs": t.out_msgs, "bytes": t.out_bytes},
        "received": {"msgs": t.in_msgs, "bytes": t.in_bytes},
        "slow_consumers": reg.slow_consumers.load(Ordering::Relaxed),
        "routes": [],
        "gateways": [],
    })
}

/// The `/varz` document (also answered on `$SYS.REQ.SERVER.PING.VARZ`).
pub fn varz(o: &Observed) -> Value {
    let opts = o.options();
    let id = &o.conns.identity;
    let clients = o.clients();
    let t = o.totals(&clients);
    let up = since(o.start);
    let (mem, cpu) = (memory(), o.cpu.percent());
    let subs: usize = o.accounts().iter().map(|a| a.subscription_count()).sum();
    let tls = o.conns.tls_server();
    let reg = &o.conns.registry;
    let mut v = json!({
        "server_id": id.id,
        "server_name": id.name,
        "version": PROTOCOL_VERSION,
        "natrium_version": VERSION,
        "proto": 1,
        "go": format!("natrium {VERSION}"),
        "host": opts.host,
        "port": id.port,
        "auth_required": o.conns.auth.required(),
        "max_connections": opts.max_connections,
        "ping_interval": opts.ping_interval.as_nanos() as u64,
        "ping_max": opts.ping_max,
        "http_host": opts.monitor_host(),
        "http_port": o.http_port.lock().unwrap_or(0),
        "https_port": o.https_port.lock().unwrap_or(0),
        "auth_timeout": opts.auth_timeout.as_secs_f64(),
        "max_control_line": opts.max_control_line,
        "max_payload": opts.max_payload,
        "max_pending": opts.max_pending,
        "write_deadline": opts.write_deadline.as_nanos() as u64,
        "start": rfc3339(o.start),
        "now": rfc3339(SystemTime::now()),
        "uptime": uptime(up),
        "mem": mem,
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "cpu": cpu,
        "connections": clients.len(),
        "total_connections": reg.total_connections.load(Ordering::Relaxed),
        "routes": o.mesh.lock().as_ref().map_or(0, |m| m.routes().len()),
        "remotes": 0,
        "leafnodes": o.leafs.lock().as_ref().map_or(0, |l| l.totals().connections),
        "in_msgs": t.in_msgs,
        "out_msgs": t.out_msgs,
        "in_bytes": t.in_bytes,
        "out_bytes": t.out_bytes,
        "slow_consumers": reg.slow_consumers.load(Ordering::Relaxed),
        "subscriptions": subs,
        "system_account": opts.system_account,
        "config_load_time": rfc3339(o.start),
        "jetstream": jetstream_summary(o),
    });
    // Set here: the `json!` above is at the macro's recursion limit.
    v["http_base_path"] = json!(opts.http_base_path);
    v["gomaxprocs"] = json!(std::thread::available_parallelism().map_or(1, |n| n.get()));
    // Gateways and MQTT are not configured (Natrium has none yet): nats-server shows them as
    // empty objects then; the cluster, leafnode and WebSocket sections when there are.
    for k in ["gateway", "mqtt"] {
        v[k] = json!({});
    }
    v["leaf"] = leaf_section(o);
    v["cluster"] = cluster_section(o);
    v["websocket"] = websocket_section(o, &opts);
    v["http_req_stats"] = json!(*o.http_req_stats.lock());
    // nats-server 2.10's fields.
    v["slow_consumer_stats"] = json!({
        "clients": reg.slow_consumers.load(Ordering::Relaxed),
        "routes": 0,
        "gateways": 0,
        "leafs": 0,
    });
    if opts.max_subscriptions > 0 {
        v["max_subscriptions"] = json!(opts.max_subscriptions);
    }
    v["tls_timeout"] = json!(tls.as_ref().map_or(2.0, |t| t.opts.timeout.as_secs_f64()));
    // As nats-server, the TLS flags and the certificate's expiry appear only with TLS on.
    if let Some(t) = &tls {
        if !t.opts.allow_non_tls {
            v["tls_required"] = json!(true);
        }
        if t.verify() {
            v["tls_verify"] = json!(true);
        }
        if let Some(exp) = t.not_after {
            v["tls_cert_not_after"] = json!(rfc3339(exp));
        }
    }
    v
}

/// JetStream's section of `/varz` (`config`, `stats`, `limits`): `{}` when JetStream is off.
fn jetstream_summary(o: &Observed) -> Value {
    let Some(js) = &o.jetstream else {
        return json!({});
    };
    json!({
        "config": js.config_json(),
        "stats": js.stats(),
        "limits": {},
    })
}

/// The query of `/jsz`, as nats-server reads it.
#[derive(Debug, Default, serde::Deserialize)]
pub struct JszParams {
    pub acc: Option<String>,
    pub accounts: Option<String>,
    pub streams: Option<String>,
    pub consumers: Option<String>,
    pub config: Option<String>,
    pub leader_only: Option<String>,
    pub raft: Option<String>,
    pub offset: Option<String>,
    pub limit: Option<String>,
}

/// A boolean query parameter as Go's `strconv.ParseBool` reads it; absent is false.
fn go_bool(name: &str, v: &Option<String>) -> Result<bool, Refused> {
    match v.as_deref() {
        None | Some("") => Ok(false),
        Some("1" | "t" | "T" | "TRUE" | "true" | "True") => Ok(true),
        Some("0" | "f" | "F" | "FALSE" | "false" | "False") => Ok(false),
        Some(x) => Err(Refused::bad_request(format!(
            "Error decoding boolean for '{name}': strconv.ParseBool: parsing {x:?}: invalid syntax"
        ))),
    }
}

fn go_int(name: &str, v: &Option<String>) -> Result<usize, Refused> {
    match v.as_deref() {
        None | Some("") => Ok(0),
        Some(x) => x.parse::<i64>().map(|n| n.max(0) as usize).map_err(|_| {
            Refused::bad_request(format!(
                "Error decoding int for '{name}': strconv.Atoi: parsing {x:?}: invalid syntax"
            ))
        }),
    }
}

/// The `/jsz` document; refused (503) when JetStream is off.
pub fn jsz(o: &Observed, p: &JszParams) -> Answer {
    let Some(js) = &o.jetstream else {
        return Err(Refused {
            status: 503,
            text: "JetStream not enabled".into(),
        });
    };
    let q = crate::jetstream::JszQuery {
        account: p.acc.clone().filter(|a| !a.is_empty()),
        accounts: go_bool("accounts", &p.accounts)?,
        streams: go_bool("streams", &p.streams)?,
        consumers: go_bool("consumers", &p.consumers)?,
        config: go_bool("config", &p.config)?,
        leader_only: go_bool("leader_only", &p.leader_only)?,
        raft: go_bool("raft", &p.raft)?,
        offset: go_int("offset", &p.offset)?,
        limit: go_int("limit", &p.limit)?,
    };
    let mut v = js.jsz(&q);
    v["server_id"] = json!(o.id());
    v["now"] = json!(rfc3339(SystemTime::now()));
    Ok(v)
}

/// `/healthz`: ok, or 503 with the reason when JetStream is enabled but cannot write its store
/// directory. `js-enabled-only` and `js-server-only` restrict the check to JetStream.
pub fn healthz(o: &Observed, q: &HashMap<String, String>) -> (u16, Value) {
    let js_only = q.contains_key("js-enabled-only") || q.contains_key("js-server-only");
    let flag = |k: &str| q.get(k).is_some_and(|v| v != "false" && v != "0");
    if js_only && o.jetstream.is_none() && flag("js-enabled-only") {
        return (
            503,
            json!({"status": "unavailable", "error": "JetStream not enabled"}),
        );
    }
    if let Some(js) = &o.jetstream {
        if let Err(e) = crate::jetstream::check_store_writable(&js.options().store_dir) {
            return (
                503,
                json!({"status": "unavailable", "error": format!("JetStream store directory not writable: {e}")}),
            );
        }
        if let Err(e) = js.cluster_health() {
            return (503, json!({"status": "unavailable", "error": e}));
        }
    }
    (200, json!({"status": "ok"}))
}

/// `/routez`: this server's routes (with `subs`, the peers' interest).
pub fn routez(o: &Observed, subs: bool) -> Value {
    let mesh = o.mesh.lock().clone();
    let routes: Vec<Value> = mesh
        .as_ref()
        .map(|m| m.routes())
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let remote = r.remote().unwrap_or_default();
            let stats = r.out.stats();
            let last = r.out.last_activity();
            let mut v = json!({
                "rid": r.rid,
                "remote_id": remote.server_id,
                "remote_name": remote.server_name,
                "did_solicit": r.dialled.is_some(),
                "is_configured": r.dialled.as_ref().is_some_and(|d| d.explicit),
                "ip": r.out.addr.ip().to_string(),
                "port": r.out.addr.port(),
                "start": rfc3339(r.start),
                "last_activity": rfc3339(last),
                "uptime": uptime(since(r.start)),
                "idle": uptime(since(last)),
                "pending_size": stats.pending_bytes,
                "in_msgs": stats.in_msgs,
                "out_msgs": stats.out_msgs,
                "in_bytes": stats.in_bytes,
                "out_bytes": stats.out_bytes,
                "subscriptions": r.num_subs(),
            });
            // The negotiated compression, as nats-server names it: `off` between servers that
            // both know compression (Natrium never compresses), `not supported` otherwise.
            v["compression"] = json!(if remote.compression.is_empty()
                || m_compression_unsupported(o)
            {
                "not supported"
            } else {
                "off"
            });
            // nats-server's `account` (a dedicated route); `pool_idx` is Natrium's, to tell
            // the pooled connections to one peer apart.
            if let Some(slot) = r.slot() {
                match slot.account {
                    Some(a) => v["account"] = json!(a),
                    None if !slot.no_pool => v["pool_idx"] = json!(slot.idx),
                    None => {}
                }
            }
            if subs {
                v["subscriptions_list"] = json!(r.subscription_list());
            }
            v
        })
        .collect();
    let mut v = json!({
        "server_id": o.id(),
        "now": rfc3339(SystemTime::now()),
        "num_routes": routes.len(),
        "routes": routes,
    });
    if let Some(m) = &mesh {
        v["server_name"] = json!(o.conns.identity.name);
        v["import"] = Value::Null;
        v["export"] = Value::Null;
        v["cluster_name"] = json!(m.name());
    }
    v
}

/// Whether this server is configured as one without route compression.
fn m_compression_unsupported(o: &Observed) -> bool {
    o.mesh.lock().as_ref().is_some_and(|m| {
        m.options().compression == crate::cluster::options::Compression::NotSupported
    })
}

/// `/varz`'s `websocket` section, with nats-server's fields (empty ones left out, as its
/// `omitempty` does): `{}` without a WebSocket listener.
fn websocket_section(o: &Observed, opts: &crate::options::Options) -> Value {
    let (Some(w), Some(ep)) = (&opts.websocket, o.conns.websocket()) else {
        return json!({});
    };
    let mut v = serde_json::Map::new();
    let mut set = |k: &str, val: Value| {
        let empty = match &val {
            Value::Null => true,
            Value::Bool(b) => !b,
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Number(n) => n.as_f64() == Some(0.0),
            Value::Object(_) => false,
        };
        if !empty {
            v.insert(k.to_string(), val);
        }
    };
    set("host", json!(w.host));
    set("port", json!(ep.port));
    set("advertise", json!(w.advertise));
    set("no_auth_user", json!(w.no_auth_user));
    set("jwt_cookie", json!(w.jwt_cookie));
    set(
        "handshake_timeout",
        json!(w.handshake_timeout.as_nanos() as u64),
    );
    set(
        "auth_timeout",
        json!(w.auth_timeout.map_or(0.0, |t| t.as_secs_f64())),
    );
    set("no_tls", json!(w.no_tls));
    let tls = w.tls.as_ref();
    set("tls_map", json!(tls.is_some_and(|t| t.verify_and_map)));
    set(
        "tls_pinned_certs",
        json!(tls.map(|t| t.pinned_certs.clone()).unwrap_or_default()),
    );
    set("same_origin", json!(w.same_origin));
    set("allowed_origins", json!(w.allowed_origins));
    set("compression", json!(w.compression));
    Value::Object(v)
}

/// `/varz`'s `cluster` section: the cluster's name, listener and configured routes.
fn cluster_section(o: &Observed) -> Value {
    let Some(m) = o.mesh.lock().clone() else {
        return json!({});
    };
    let c = m.options();
    json!({
        "name": m.name(),
        "addr": c.host,
        "cluster_port": m.port(),
        "auth_timeout": c.auth_timeout.as_secs_f64(),
        "urls": c.routes.iter().map(|u| u.address()).collect::<Vec<_>>(),
        "pool_size": c.pool_size,
    })
}

/// `/gatewayz`: Natrium has no gateways yet, so none, in nats-server's form.
pub fn gatewayz(o: &Observed) -> Value {
    json!({
        "server_id": o.id(),
        "now": rfc3339(SystemTime::now()),
        "outbound_gateways": {},
        "inbound_gateways": {},
    })
}

/// `/varz`'s `leaf` section: the leafnode listener and the remotes, as nats-server shows them.
fn leaf_section(o: &Observed) -> Value {
    let Some(l) = o.leafs.lock().clone() else {
        return json!({});
    };
    let opts = l.options();
    json!({
        "host": opts.host,
        "port": l.port().unwrap_or_default(),
        "auth_timeout": opts.auth.timeout.as_secs_f64(),
        "tls_timeout": 0.0,
        "remotes": opts.remotes.iter().map(|r| json!({
            "local_account": r.account.as_deref().unwrap_or(crate::router::GLOBAL_ACCOUNT),
            "urls": r.urls.iter().map(|u| u.address()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// `/leafz`: every leafnode connection that completed its handshake, in nats-server's form
/// (`subs` adds each one's interest; `account` keeps the connections bound to that account).
pub fn leafz(o: &Observed, subs: bool, account: Option<&str>) -> Value {
    let mut leafs = Vec::new();
    if let Some(l) = o.leafs.lock().clone() {
        for c in l.connections() {
            let Some(b) = c.bound() else { continue };
            if account.is_some_and(|a| a != b.account.name) {
                continue;
            }
            let s = c.out.stats();
            let mut v = json!({
                "name": b.remote_name,
                "is_spoke": b.peer.spoke,
                "account": b.account.name,
                "ip": c.out.addr.ip().to_string(),
                "port": c.out.addr.port(),
                "in_msgs": c.in_msgs.load(Ordering::Relaxed),
                "out_msgs": s.out_msgs,
                "in_bytes": c.in_bytes.load(Ordering::Relaxed),
                "out_bytes": s.out_bytes,
                "subscriptions": c.num_subs(),
            });
            if let Some(rtt) = c.out.rtt() {
                v["rtt"] = json!(format!("{rtt:?}"));
            }
            if subs {
                v["subscriptions_list"] = json!(c.subscription_list());
            }
            leafs.push(v);
        }
    }
    json!({
        "server_id": o.id(),
        "now": rfc3339(SystemTime::now()),
        "leafnodes": leafs.len(),
        "leafs": leafs,
    })
}
