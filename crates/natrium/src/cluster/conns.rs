//! Account connection counts across the cluster, as nats-server exchanges them: each server
//! announces an account's local connection count on `$SYS.ACCOUNT.<account>.SERVER.CONNS` when
//! it changes (and every 30 s while it has any), and learns the others' from the same subject,
//! so an account's `max_connections` holds for the cluster as a whole. A server that leaves
//! takes its counts with it.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustc_hash::FxHashMap;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::mesh::Mesh;
use crate::router::{Account, InternalClient, GLOBAL_ACCOUNT};
use crate::util::time::rfc3339;
use crate::util::PROTOCOL_VERSION;

/// How often a count is announced again while the account has connections here.
const HEARTBEAT: Duration = Duration::from_secs(30);

/// Announces this server's counts and applies the peers', until the server stops.
pub(super) async fn exchange(
    mesh: Arc<Mesh>,
    system: InternalClient,
    mut changed: mpsc::UnboundedReceiver<Arc<Account>>,
) {
    let Ok(mut reports) = system.subscribe("$SYS.ACCOUNT.*.SERVER.CONNS", None, 4096) else {
        return;
    };
    let own = mesh.conns().identity.id.clone();
    let seq = AtomicU64::new(0);
    // Accounts with connections here, announced again on every heartbeat.
    let mut live: FxHashMap<String, Arc<Account>> = FxHashMap::default();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            a = changed.recv() => {
                let Some(a) = a else { return };
                if a.name == GLOBAL_ACCOUNT {
                    continue;
                }
                if a.num_connections() + a.num_leafnodes() == 0 {
                    live.remove(&a.name);
                } else {
                    live.insert(a.name.clone(), a.clone());
                }
                announce(&mesh, &system, &seq, &a);
            }
            m = reports.next() => {
                let Some(m) = m else { return };
                let Ok(v) = serde_json::from_slice::<Value>(&m.payload) else { continue };
                let (Some(server), Some(acc), Some(n)) = (
                    v["server"]["id"].as_str(),
                    v["acc"].as_str(),
                    v["conns"].as_u64(),
                ) else {
                    continue;
                };
                if server == own {
                    continue;
                }
                if let Some(account) = mesh.conns().accounts.get(acc) {
                    account.set_remote_connections(server, n as usize);
                    // Over the limit now: the newest local connections go.
                    if account
                        .limits()
                        .max_connections
                        .is_some_and(|max| account.num_connections() + account.remote_connections() > max)
                    {
                        mesh.conns().enforce_account_limits(&account);
                    }
                }
            }
            _ = heartbeat.tick() => {
                for a in live.values() {
                    announce(&mesh, &system, &seq, a);
                }
            }
        }
    }
}

/// Publishes `account`'s local connection count, in nats-server's event form.
fn announce(mesh: &Mesh, system: &InternalClient, seq: &AtomicU64, account: &Account) {
    let id = &mesh.conns().identity;
    let n = account.num_connections();
    let leafs = account.num_leafnodes();
    let now = rfc3339(SystemTime::now());
    let event = json!({
        "type": "io.nats.server.advisory.v1.account_connections",
        "id": nkeys::KeyPair::new_server().public_key()[1..23].to_string(),
        "timestamp": now,
        "server": {
            "name": id.name,
            "host": id.host,
            "id": id.id,
            "cluster": mesh.name(),
            "ver": PROTOCOL_VERSION,
            "seq": seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
            "jetstream": false,
            "time": now,
        },
        "acc": account.name,
        "conns": n,
        "leafnodes": leafs,
        "total_conns": n + leafs,
        "num_subscriptions": account.subscription_count(),
        "slow_consumers": account.slow_consumers.load(std::sync::atomic::Ordering::Relaxed),
    });
    let body = serde_json::to_vec(&event).unwrap_or_default();
    for subject in [
        format!("$SYS.ACCOUNT.{}.SERVER.CONNS", account.name),
        format!("$SYS.SERVER.ACCOUNT.{}.CONNS", account.name),
    ] {
        let _ = system.publish(&subject, None, None, &body);
    }
}
