//! Time as the server exchanges it: nanoseconds and seconds since the Unix epoch, and RFC 3339
//! in UTC with nanoseconds, as nats-server writes timestamps in JSON.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch (0 before it).
pub fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Now, in nanoseconds since the Unix epoch.
pub fn now_nanos() -> i64 {
    unix_nanos(SystemTime::now())
}

/// Now, in whole seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The time `nanos` after the Unix epoch (the epoch itself for negative values).
pub fn from_unix_nanos(nanos: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos.max(0) as u64)
}

/// The time `secs` after the Unix epoch (the epoch itself for negative values).
pub fn from_unix_secs(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)
}

/// How long ago `t` was (zero for a time in the future).
pub fn since(t: SystemTime) -> Duration {
    SystemTime::now().duration_since(t).unwrap_or_default()
}

/// Nanoseconds since the Unix epoch as RFC 3339 (empty if out of range).
pub fn rfc3339_nanos(ns: i128) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ns)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

pub fn rfc3339(t: SystemTime) -> String {
    // i128: certificates expire past what i64 nanoseconds reach (year 2262).
    let ns = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    rfc3339_nanos(ns)
}

/// A duration as Go's `time.Duration.String` prints it (`0s`, `850ns`, `501µs`, `1.5ms`,
/// `2.25s`, `1h2m3s`), for the fields nats-server fills that way (`rtt`).
pub fn go_duration(d: Duration) -> String {
    fn frac(n: u128, unit: u128, width: usize, suffix: &str) -> String {
        let (int, rem) = (n / unit, n % unit);
        if rem == 0 {
            return format!("{int}{suffix}");
        }
        let digits = format!("{rem:0width$}");
        format!("{int}.{}{suffix}", digits.trim_end_matches('0'))
    }
    let n = d.as_nanos();
    match n {
        0 => "0s".into(),
        1..=999 => format!("{n}ns"),
        1_000..=999_999 => frac(n, 1_000, 3, "µs"),
        1_000_000..=999_999_999 => frac(n, 1_000_000, 6, "ms"),
        _ => {
            let secs = n / 1_000_000_000;
            let (h, m) = (secs / 3600, (secs % 3600) / 60);
            let mut out = String::new();
            if h > 0 {
                out += &format!("{h}h");
            }
            if h > 0 || m > 0 {
                out += &format!("{m}m");
            }
            out + &frac(
                (secs % 60) * 1_000_000_000 + n % 1_000_000_000,
                1_000_000_000,
                9,
                "s",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_nanos() {
        assert_eq!(rfc3339_nanos(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_nanos(1_500_000_000), "1970-01-01T00:00:01.5Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let far = UNIX_EPOCH + Duration::from_secs(67_090_118_400);
        assert_eq!(rfc3339(far), "4096-01-01T00:00:00Z");
    }

    #[test]
    fn epoch_conversions_round_trip() {
        let t = from_unix_nanos(1_700_000_000_123_456_789);
        assert_eq!(unix_nanos(t), 1_700_000_000_123_456_789);
        assert_eq!(from_unix_nanos(-5), UNIX_EPOCH);
        assert!(since(SystemTime::now() + Duration::from_secs(60)).is_zero());
    }
}
