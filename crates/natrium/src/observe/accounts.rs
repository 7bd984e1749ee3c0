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
    let mut count = 0;
    for a in o.accounts() {
        if q.acc.as_ref().is_some_and(|acc| acc != &a.name) {
            continue;
        }
        count += a.subscription_count();
        for (subject, queue, cid) in a.subscriptions() {
            if let Some(t) = &q.test {
                if !natrium_subjects::matches(subject.as_bytes(), t.as_bytes()) {
                    continue;
                }
            }
            list.push(json!({"account": a.name, "subject": subject, "qgroup": queue, "cid": cid}));
        }
    }
    let total = list.len();
    let offset = q.offset.unwrap_or(0).min(total);
    let limit = q.limit.unwrap_or(1024);
    let mut body = json!({
        "server_id": o.id(),
        "now": rfc3339(SystemTime::now()),
        "num_subscriptions": count,
        "total": total,
        "offset": offset,
        "limit": limit,
    });
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
        let (conns, _) = account_usage(&a, &o.clients());
        return Ok(json!({
            "server_id": o.id(),
            "now": now,
            "system_account": system,
            "account_detail": {
                "account_name": a.name,
                "is_system": a.name == system,
                "num_connections": conns,
                "subscriptions": a.subscription_count(),
                "auth_failures": a.auth_failures.load(Ordering::Relaxed),
                "permission_violations": a.permission_violations.load(Ordering::Relaxed),
            }
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
            if conns == 0 && !include_unused && q.acc.is_none() {
                return None;
            }
            Some(json!({
                "acc": a.name,
                "conns": conns,
                "leafnodes": 0,
                "total_conns": conns,
                "num_subscriptions": a.subscription_count(),
                "sent": {"msgs": t.out_msgs, "bytes": t.out_bytes},
                "received": {"msgs": t.in_msgs, "bytes": t.in_bytes},
                "slow_consumers": a.slow_consumers.load(Ordering::Relaxed),
            }))
        })
        .collect();
    json!({"server_id": o.id(), "now": rfc3339(SystemTime::now()), "account_statz": stats})
}
