//! The registry of client connections: the live ones by cid (bounded by `max_connections`),
//! the per-address slots of connections that have not completed CONNECT yet
//! (`max_unauthenticated_per_ip`), and what is kept of closed ones for monitoring (their
//! traffic totals, the most recent closed connections).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use super::client::{Client, ConnSnapshot};
use crate::router::{Account, Totals};

/// How many closed connections are remembered, as nats-server's default.
const MAX_CLOSED_CONNS: usize = 10_000;

pub struct Registry {
    clients: Mutex<FxHashMap<u64, Arc<Client>>>,
    next_cid: AtomicU64,
    /// `max_connections` in force (reloadable).
    max_connections: AtomicUsize,
    /// `max_unauthenticated_per_ip` in force (reloadable).
    max_unauthenticated_per_ip: AtomicUsize,
    /// Connections that have not completed CONNECT yet, per address (see `Unauthenticated`).
    unauthenticated: Arc<Mutex<FxHashMap<IpAddr, usize>>>,
    pub total_connections: AtomicU64,
    pub slow_consumers: AtomicU64,
    /// Traffic of disconnected clients, server-wide.
    closed_totals: Mutex<Totals>,
    /// The most recent closed connections, newest last.
    closed: Mutex<VecDeque<ConnSnapshot>>,
}

/// A connection refused because the server is at `max_connections`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl Registry {
    pub fn new(max_connections: usize, max_unauthenticated_per_ip: usize) -> Registry {
        Registry {
            clients: Mutex::new(FxHashMap::default()),
            next_cid: AtomicU64::new(1),
            max_connections: AtomicUsize::new(max_connections),
            max_unauthenticated_per_ip: AtomicUsize::new(max_unauthenticated_per_ip),
            unauthenticated: Arc::new(Mutex::new(FxHashMap::default())),
            total_connections: AtomicU64::new(0),
            slow_consumers: AtomicU64::new(0),
            closed_totals: Mutex::new(Totals::default()),
            closed: Mutex::new(VecDeque::new()),
        }
    }

    pub fn next_cid(&self) -> u64 {
        self.next_cid.fetch_add(1, Ordering::Relaxed)
    }

    /// Applies reloaded limits (a lowered `max_connections` is enforced by the caller).
    pub fn set_limits(&self, max_connections: usize, max_unauthenticated_per_ip: usize) {
        self.max_connections
            .store(max_connections, Ordering::Relaxed);
        self.max_unauthenticated_per_ip
            .store(max_unauthenticated_per_ip, Ordering::Relaxed);
    }

    /// Adds a new connection, unless the server is at `max_connections`.
    pub fn register(&self, c: &Arc<Client>) -> Result<(), Full> {
        let mut clients = self.clients.lock();
        if clients.len() >= self.max_connections.load(Ordering::Relaxed) {
            return Err(Full);
        }
        clients.insert(c.out.cid, c.clone());
        drop(clients);
        self.total_connections.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Every live connection, in no particular order.
    pub fn clients(&self) -> Vec<Arc<Client>> {
        self.clients.lock().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.clients.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.lock().is_empty()
    }

    /// Called once per connection when it ends, with its last snapshot (taken before its
    /// subscriptions went): drops it from the live set, folds its counters into the server's and
    /// its account's totals and remembers it for monitoring.
    pub fn closed(&self, snap: ConnSnapshot, account: &Account) {
        self.clients.lock().remove(&snap.cid);
        if snap.reason.is_some_and(|r| r.is_slow_consumer()) {
            self.slow_consumers.fetch_add(1, Ordering::Relaxed);
            account.slow_consumers.fetch_add(1, Ordering::Relaxed);
        }
        self.closed_totals.lock().add(&snap.stats);
        account.closed_totals.lock().add(&snap.stats);
        let mut closed = self.closed.lock();
        if closed.len() >= MAX_CLOSED_CONNS {
            closed.pop_front();
        }
        closed.push_back(snap);
    }

    /// The most recent closed connections, oldest first.
    pub fn closed_conns(&self) -> Vec<ConnSnapshot> {
        self.closed.lock().iter().cloned().collect()
    }

    /// Traffic of connections that have closed, server-wide.
    pub fn closed_totals(&self) -> Totals {
        *self.closed_totals.lock()
    }

    /// Takes a slot for a connection from `ip` that has not completed CONNECT, unless the
    /// address already holds `max_unauthenticated_per_ip` of them.
    pub fn take_unauthenticated(&self, ip: IpAddr) -> Option<Unauthenticated> {
        let max = self.max_unauthenticated_per_ip.load(Ordering::Relaxed);
        let key = address_key(ip);
        let mut map = self.unauthenticated.lock();
        let n = map.entry(key).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(Unauthenticated {
            map: self.unauthenticated.clone(),
            key,
        })
    }
}

/// The address a per-address limit counts against: an IPv4 address, or the /64 of an IPv6 one
/// (a single host usually holds a whole /64).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.into(),
            None => std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1)).into(),
        },
        v4 => v4,
    }
}

/// One connection from an address that has not completed CONNECT yet; dropped when it does
/// (or closes), which frees the address's slot.
pub struct Unauthenticated {
    map: Arc<Mutex<FxHashMap<IpAddr, usize>>>,
    key: IpAddr,
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        let mut map = self.map.lock();
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_count_per_64() {
        let key = |s: &str| address_key(s.parse::<IpAddr>().expect("ip"));
        assert_eq!(key("10.0.0.1"), key("10.0.0.1"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
    }

    #[test]
    fn unauthenticated_slots_are_capped_per_address_and_freed_on_drop() {
        let r = Registry::new(100, 2);
        let ip: IpAddr = "10.1.2.3".parse().expect("ip");
        let a = r.take_unauthenticated(ip).expect("first");
        let _b = r.take_unauthenticated(ip).expect("second");
        assert!(
            r.take_unauthenticated(ip).is_none(),
            "third is over the cap"
        );
        assert!(r
            .take_unauthenticated("10.1.2.4".parse().expect("ip"))
            .is_some());
        drop(a);
        assert!(
            r.take_unauthenticated(ip).is_some(),
            "a freed slot is reusable"
        );
    }
}
