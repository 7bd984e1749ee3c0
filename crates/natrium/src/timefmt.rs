//! Timestamps as nats-server writes them in JSON: RFC 3339 in UTC with nanoseconds.

use std::time::SystemTime;

/// Nanoseconds since the Unix epoch as RFC 3339 (empty if out of range).
pub(crate) fn rfc3339_nanos(ns: i128) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ns)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    let ns = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    rfc3339_nanos(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_nanos() {
        assert_eq!(rfc3339_nanos(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_nanos(1_500_000_000), "1970-01-01T00:00:01.5Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
