//! Per-account publish rate limits (a Natrium extension; nats-server has none): a rate in
//! messages or bytes per second kept as one atomic "theoretical arrival time" (GCRA), which
//! a connection charges once per read of its socket, never per message.
//!
//! A connection whose read took the account past its rate waits before it reads again: the
//! client slows down through TCP back pressure and nothing is dropped (an `-ERR` would lose
//! messages the client believes were sent). A burst of one second's worth passes at once, and
//! a read's messages are delivered before its wait, so a connection may run one read (at most
//! 64 KiB) ahead of the rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The burst a rate lets through at once, as time at that rate.
const BURST: Duration = Duration::from_secs(1);

/// One rate: units per second (0: unlimited) and the time its budget is spent up to.
#[derive(Debug)]
pub struct RateLimit {
    per_sec: AtomicU64,
    /// Nanoseconds since `base` up to which the rate's budget is spent.
    tat: AtomicU64,
}

impl RateLimit {
    fn new() -> Self {
        RateLimit {
            per_sec: AtomicU64::new(0),
            tat: AtomicU64::new(0),
        }
    }

    fn set(&self, per_sec: Option<u64>) {
        self.per_sec.store(per_sec.unwrap_or(0), Ordering::Relaxed);
    }

    /// Charges `n` units at `now` (nanoseconds since the limiter's base) and returns how long
    /// the charging connection waits before it reads again (zero within the rate and burst).
    fn charge(&self, n: u64, now: u64) -> u64 {
        let rate = self.per_sec.load(Ordering::Relaxed);
        if rate == 0 || n == 0 {
            return 0;
        }
        let cost = (n as u128 * 1_000_000_000 / rate as u128).min(u64::MAX as u128 / 4) as u64;
        let spent = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some(tat.max(now).saturating_add(cost))
            })
            .map(|old| old.max(now).saturating_add(cost))
            .unwrap_or(now);
        spent.saturating_sub(now.saturating_add(BURST.as_nanos() as u64))
    }
}

/// An account's publish rates, and how long its connections were held back by them.
#[derive(Debug)]
pub struct Rates {
    base: Instant,
    msgs: RateLimit,
    bytes: RateLimit,
    /// Nanoseconds connections of the account waited for its rates (a metering counter).
    pub throttled_ns: AtomicU64,
}

impl Default for Rates {
    fn default() -> Self {
        Rates {
            base: Instant::now(),
            msgs: RateLimit::new(),
            bytes: RateLimit::new(),
            throttled_ns: AtomicU64::new(0),
        }
    }
}

impl Rates {
    /// Sets the rates (`None`: unlimited); a reload or a JWT update changes them at run time.
    pub fn set(&self, msgs_per_sec: Option<u64>, bytes_per_sec: Option<u64>) {
        self.msgs.set(msgs_per_sec);
        self.bytes.set(bytes_per_sec);
    }

    /// Whether any rate is set (read once per read of a connection).
    pub fn limited(&self) -> bool {
        self.msgs.per_sec.load(Ordering::Relaxed) != 0
            || self.bytes.per_sec.load(Ordering::Relaxed) != 0
    }

    /// Charges one read's `msgs` messages and `bytes` payload bytes; returns how long the
    /// connection waits before it reads again, and counts that wait.
    pub fn charge(&self, msgs: u64, bytes: u64) -> Duration {
        self.charge_at(msgs, bytes, Instant::now())
    }

    fn charge_at(&self, msgs: u64, bytes: u64, at: Instant) -> Duration {
        let now = at.saturating_duration_since(self.base).as_nanos() as u64;
        let wait = self
            .msgs
            .charge(msgs, now)
            .max(self.bytes.charge(bytes, now));
        if wait > 0 {
            self.throttled_ns.fetch_add(wait, Ordering::Relaxed);
        }
        Duration::from_nanos(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_waits() {
        let r = Rates::default();
        assert!(!r.limited());
        assert_eq!(r.charge(1_000_000, 1 << 40), Duration::ZERO);
    }

    #[test]
    fn a_burst_of_one_second_passes_then_the_rate_holds() {
        let r = Rates::default();
        r.set(Some(1000), None);
        assert!(r.limited());
        let t0 = r.base;
        // One second's worth at once: no wait.
        assert_eq!(r.charge_at(1000, 0, t0), Duration::ZERO);
        // 500 more at the same instant: half a second over the budget.
        assert_eq!(r.charge_at(500, 0, t0), Duration::from_millis(500));
        // After waiting that out, the next 1000 cost one more second.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(r.charge_at(1000, 0, t1), Duration::from_secs(1));
        assert_eq!(
            r.throttled_ns.load(Ordering::Relaxed),
            1_500_000_000,
            "waits are counted"
        );
        // A long idle spell refills the burst, but no more than the burst.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(r.charge_at(1000, 0, t2), Duration::ZERO);
        assert_eq!(r.charge_at(1, 0, t2), Duration::from_millis(1));
    }

    #[test]
    fn the_slower_of_two_rates_decides() {
        let r = Rates::default();
        r.set(Some(1_000_000), Some(1000));
        let t0 = r.base;
        // 10 messages are nothing for the message rate; 3000 bytes are 2 s over the byte burst.
        assert_eq!(r.charge_at(10, 3000, t0), Duration::from_secs(2));
        r.set(None, None);
        assert!(!r.limited());
        assert_eq!(r.charge_at(10, 3000, t0), Duration::ZERO);
    }

    #[test]
    fn connections_share_the_account_budget() {
        let r = Rates::default();
        r.set(Some(100), None);
        let t0 = r.base;
        // Two connections each send 100 at once: the second waits for both.
        assert_eq!(r.charge_at(100, 0, t0), Duration::ZERO);
        assert_eq!(r.charge_at(100, 0, t0), Duration::from_secs(1));
    }
}
