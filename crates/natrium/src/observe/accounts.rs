//! Per-account documents: `/subsz` (subscriptions), `/accountz` and `/accstatz`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{json, Value};

use super::{truthy, Answer, Observed, Refused};
use crate::conn::Client;
use crate::router::{Account, Totals};
use crate::util::time::rfc3339;

/// Live plus closed traffic and the connection count of one account.
pub fn account_usage(a: &Account, clients: &[Arc<Client>]) -> (usize, Totals) {
    let mut t = *a.closed_totals.lock();
    let mut conns = 0;
    for c in clients.iter().filter(|c| c.meta.lock().account == a.name) {
        conns += 1;
        t.add(&c.out.stats());
    }
    (conns, t)
}

/// nats-server's sublist statistics, over the accounts `accounts`: subscriptions, inserts,
/// removes and matches counted by each account, and the match caches of its connections
/// (Natrium has one per publishing connection, where nats-server has one per account): their
/// entries, hit rate and the fan-out of the cached results.
pub fn sublist_stats(accounts: &[Arc<Account>], clients: &[Arc<Client>]) -> Value {
    let (mut subs, mut inserts, mut removes, mut matches, mut hits) = (0, 0, 0, 0, 0);
    for a in accounts {
        let s = &a.sublist_stats;
        subs += a.subscription_count() as u64;
        inserts += s.inserts.load(Ordering::Relaxed);
        removes += s.removes.load(Ordering::Relaxed);
        matches += s.matches.load(Ordering::Relaxed);
        hits += s.cache_hits.load(Ordering::Relaxed);
    }
    let (mut entries, mut fanout, mut max_fanout) = (0, 0, 0);
    for c in clients {
        let account = c.meta.lock().account.clone();
        if !accounts.iter().any(|a| a.name == account) {
            continue;
        }
        let st = &c.out.cache_stats;
        entries += st.entries.load(Ordering::Relaxed);
        fanout += st.fanout_sum.load(Ordering::Relaxed);
        max_fanout = max_fanout.max(st.fanout_max.load(Ordering::Relaxed));
    }
    let ratio = |a: u64, b: u64| if b > 0 { a as f64 / b as f64 } else { 0.0 };
    json!({
        "num_subscriptions": subs,
        "num_cache": entries,
        "num_inserts": inserts,
        "num_removes": removes,
        "num_matches": matches,
        "cache_hit_rate": ratio(hits, matches),
        "max_fanout": max_fanout,
        "avg_fanout": ratio(fanout, entries),
    })
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct SubszQuery {
    pub subs: Option<String>,
    pub offset: Option<usize>,
    pub limit: Option<usize>,
    pub test: Option<String>,
    pub acc: Option<String>,
}

/// The `/subsz` document.
pub fn subsz(o: &Observed, q: &SubszQuery) -> Answer {
    if let Some(t) = &q.test {
        if !natrium_subjects::is_valid_publish_subject(t.as_bytes()) {
            return Err(Refused::bad_request(format!("invalid test subject {t:?}")));
        }
    }
    let mut list = Vec::new();
    let accounts: Vec<Arc<Account>> = o
        .accounts()
        .into_iter()
        .filter(|a| q.acc.as_ref().is_none_or(|acc| acc == &a.name))
        .collect();
    for a in &accounts {
        for s in a.subscriptions() {
            if let Some(t) = &q.test {
                if !natrium_subjects::matches(s.subject.as_bytes(), t.as_bytes()) {
                    continue;
                }
            }
            list.push(super::conns::sub_detail(&s, Some(&a.name)));
        }
    }
    let total = list.len();
    let offset = q.offset.unwrap_or(0).min(total);
    let limit = q.limit.unwrap_or(1024);
    let mut body = sublist_stats(&accounts, &o.clients());
    body["server_id"] = json!(o.id());
    body["now"] = json!(rfc3339(SystemTime::now()));
    body["total"] = json!(total);
    body["offset"] = json!(offset);
    body["limit"] = json!(limit);
    if truthy(&q.subs) || q.test.is_some() {
        body["subscriptions_list"] =
            Value::Array(list.into_iter().skip(offset).take(limit).collect());
    }
    Ok(body)
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct AccQuery {
    pub acc: Option<String>,
    pub unused: Option<String>,
}

/// The `/accountz` document.
pub fn accountz(o: &Observed, q: &AccQuery) -> Answer {
    let now = rfc3339(SystemTime::now());
    let system = o.options.lock().system_account.clone();
    if let Some(name) = &q.acc {
        let Some(a) = o.conns.accounts.get(name) else {
            return Err(Refused {
                status: 404,
                text: format!("account {name:?} not found"),
            });
        };
        let clients = o.clients();
        let (conns, _) = account_usage(&a, &clients);
        let opts = o.options.lock().clone();
        let configured = opts.accounts.iter().find(|x| x.name == a.name);
        let jetstream = o.jetstream.is_some()
            && (a.name == crate::router::GLOBAL_ACCOUNT || configured.is_some_and(|x| x.jetstream));
        let kind = |k: &crate::options::ExportKind| match k {
            crate::options::ExportKind::Stream => "stream",
            crate::options::ExportKind::Service => "service",
        };
        let imports: Vec<Value> = configured
            .map(|x| x.imports.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|i| {
                json!({
                    "subject": i.subject,
                    "account": i.account,
                    "to": match (&i.to, &i.prefix) {
                        (Some(to), _) => to.clone(),
                        (None, Some(p)) => format!("{p}.{}", i.subject),
                        (None, None) => i.subject.clone(),
                    },
                    "type": kind(&i.kind),
                    "invalid": false,
                    "share": false,
                    "tracking": false,
                })
            })
            .collect();
        let exports: Vec<Value> = configured
            .map(|x| x.exports.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|e| {
                let mut v = json!({"subject": e.subject, "type": kind(&e.kind)});
                if !e.accounts.is_empty() {
                    v["approved_accounts"] = json!(e.accounts);
                }
                v
            })
            .collect();
        let mut detail = json!({
                "account_name": a.name,
                "update_time": rfc3339(a.created),
                "is_system": a.name == system,
                "expired": false,
                "complete": true,
                "jetstream_enabled": jetstream,
                "leafnode_connections": 0,
                "client_connections": conns,
                "num_connections": conns,
                "subscriptions": a.subscription_count(),
                "sublist_stats": sublist_stats(std::slice::from_ref(&a), &clients),
                "auth_failures": a.auth_failures.load(Ordering::Relaxed),
                "permission_violations": a.permission_violations.load(Ordering::Relaxed),
        });
        // As nats-server, only when there are some.
        if !imports.is_empty() {
            detail["imports"] = json!(imports);
        }
        if !exports.is_empty() {
            detail["exports"] = json!(exports);
        }
        return Ok(json!({
            "server_id": o.id(),
            "now": now,
            "system_account": system,
            "account_detail": detail,
        }));
    }
    let names: Vec<String> = o.accounts().iter().map(|a| a.name.clone()).collect();
    Ok(json!({"server_id": o.id(), "now": now, "system_account": system, "accounts": names}))
}

/// The `/accstatz` document.
pub fn accstatz(o: &Observed, q: &AccQuery) -> Value {
    let clients = o.clients();
    let include_unused = truthy(&q.unused);
    let stats: Vec<Value> = o
        .accounts()
        .iter()
        .filter(|a| q.acc.as_ref().is_none_or(|n| n == &a.name))
        .filter_map(|a| {
            let (conns, t) = account_usage(a, &clients);
            let leafs = a.num_leafnodes();
            if conns + leafs == 0 && !include_unused && q.acc.is_none() {
                return None;
            }
            let mut stat = json!({
                "acc": a.name,
                "conns": conns,
                "leafnodes": leafs,
                "total_conns": conns + leafs,
                "num_subscriptions": a.subscription_count(),
                "sent": {"msgs": t.out_msgs, "bytes": t.out_bytes},
                "received": {"msgs": t.in_msgs, "bytes": t.in_bytes},
                "slow_consumers": a.slow_consumers.load(Ordering::Relaxed),
            });
            // Natrium's publish rate limits, for accounts that have them (an extension field).
            let l = a.limits();
            if l.max_msgs_per_sec.is_some() || l.max_bytes_per_sec.is_some() {
                let waited = a.rates.throttled_ns.load(Ordering::Relaxed);
                stat["rate_limits"] = json!({
                    "max_msgs_per_sec": l.max_msgs_per_sec,
                    "max_bytes_per_sec": l.max_bytes_per_sec,
                    "throttled_seconds": waited as f64 / 1e9,
                });
            }
            Some(stat)
        })
        .collect();
    json!({"server_id": o.id(), "now": rfc3339(SystemTime::now()), "account_statz": stats})
}
