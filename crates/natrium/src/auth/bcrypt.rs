//! The bcrypt limiter: bcrypt comparisons, deliberately slow, run on the blocking pool with at
//! most a few at a time server-wide and per client address, so a flood of bad logins from one
//! address cannot starve everyone else.

use std::net::IpAddr;
use std::sync::Arc;

use rustc_hash::FxHashMap;

/// Runs bcrypt comparisons on the blocking pool, at most `global` at a time server-wide and at
/// most `per_ip` at a time for one client address; later ones wait their turn (bounded by the
/// caller's auth timeout). A flood of bad passwords from one address therefore uses at most
/// `per_ip` bcrypt threads, and a client from another address waits only for the comparisons
/// already running.
pub struct BcryptLimiter {
    global: tokio::sync::Semaphore,
    per_ip: usize,
    by_ip: parking_lot::Mutex<FxHashMap<IpAddr, Arc<tokio::sync::Semaphore>>>,
}

/// Drops an address's semaphore from the map when its last user is done (or gave up).
struct IpSlot<'a> {
    limiter: &'a BcryptLimiter,
    ip: IpAddr,
    sem: Option<Arc<tokio::sync::Semaphore>>,
}

impl Drop for IpSlot<'_> {
    fn drop(&mut self) {
        let mut map = self.limiter.by_ip.lock();
        // Clones are only made under this lock: two references are the map's and ours.
        if self.sem.take().is_some_and(|s| Arc::strong_count(&s) == 2) {
            map.remove(&self.ip);
        }
    }
}

impl BcryptLimiter {
    /// Sized from the machine: half the cores server-wide (at least one), and half of that for
    /// one address (at least one).
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let global = (cores / 2).max(1);
        Self::with_limits(global, (global / 2).max(1))
    }

    pub fn with_limits(global: usize, per_ip: usize) -> Self {
        BcryptLimiter {
            global: tokio::sync::Semaphore::new(global.max(1)),
            per_ip: per_ip.max(1),
            by_ip: parking_lot::Mutex::new(FxHashMap::default()),
        }
    }

    /// Whether `given` matches the bcrypt `hash`.
    pub async fn verify(&self, ip: IpAddr, hash: String, given: String) -> bool {
        let sem = self
            .by_ip
            .lock()
            .entry(ip)
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.per_ip)))
            .clone();
        let slot = IpSlot {
            limiter: self,
            ip,
            sem: Some(sem.clone()),
        };
        let Ok(_ip_permit) = sem.acquire().await else {
            return false;
        };
        let Ok(_permit) = self.global.acquire().await else {
            return false;
        };
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(given, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        drop(slot);
        ok
    }

    /// Addresses with a comparison running or waiting (for tests and monitoring).
    pub fn addresses(&self) -> usize {
        self.by_ip.lock().len()
    }
}

impl Default for BcryptLimiter {
    fn default() -> Self {
        Self::new()
    }
}
