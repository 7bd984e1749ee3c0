//! Header blocks a stream reads and rewrites: one value by name, a block with a header set,
//! removed or appended, and nats-server's TTL values (`Nats-TTL: 5m`, `30`, `never`).

use natrium_protocol::headers::HeaderView;

pub(crate) const MSG_TTL: &str = "Nats-TTL";
pub(crate) const INCR: &str = "Nats-Incr";
pub(crate) const COUNTER_SOURCES: &str = "Nats-Counter-Sources";
pub(crate) const STREAM_SOURCE: &str = "Nats-Stream-Source";
pub(crate) const MARKER_REASON: &str = "Nats-Marker-Reason";
pub(crate) const ROLLUP: &str = "Nats-Rollup";
pub(crate) const SCHEDULE: &str = "Nats-Schedule";
pub(crate) const SCHEDULE_TARGET: &str = "Nats-Schedule-Target";
pub(crate) const SCHEDULE_TTL: &str = "Nats-Schedule-TTL";
pub(crate) const SCHEDULER: &str = "Nats-Scheduler";
pub(crate) const SCHEDULE_NEXT: &str = "Nats-Schedule-Next";
pub(crate) const BATCH_ID: &str = "Nats-Batch-Id";
pub(crate) const BATCH_SEQ: &str = "Nats-Batch-Sequence";
pub(crate) const BATCH_COMMIT: &str = "Nats-Batch-Commit";

/// The first value of `name` in `block`, as text.
pub(crate) fn get(block: Option<&[u8]>, name: &str) -> Option<String> {
    let h = HeaderView::parse(block?)?;
    h.get(name.as_bytes())
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// `block` without the lines whose name satisfies `drop` (None when nothing is left).
pub(crate) fn without(block: Option<&[u8]>, drop: impl Fn(&str) -> bool) -> Option<Vec<u8>> {
    let block = block?;
    let Some(h) = HeaderView::parse(block) else {
        return Some(block.to_vec());
    };
    let kept: Vec<(&[u8], &[u8])> = h
        .iter()
        .filter(|(k, _)| !drop(&String::from_utf8_lossy(k)))
        .collect();
    if kept.is_empty() && h.status.is_none() {
        return None;
    }
    let mut out = Vec::with_capacity(block.len());
    out.extend_from_slice(b"NATS/1.0\r\n");
    for (k, v) in kept {
        out.extend_from_slice(k);
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Some(out)
}

/// `block` with `pairs` appended (a new block when there is none).
pub(crate) fn with(block: Option<&[u8]>, pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = match block {
        Some(b) if b.ends_with(b"\r\n\r\n") => b[..b.len() - 2].to_vec(),
        _ => b"NATS/1.0\r\n".to_vec(),
    };
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// `block` with header `name` set to `value` (replacing any earlier values).
pub(crate) fn set(block: Option<&[u8]>, name: &str, value: &str) -> Vec<u8> {
    let rest = without(block, |k| k == name);
    with(rest.as_deref(), &[(name, value)])
}

/// A per-message TTL as nats-server reads it: whole seconds (`Some(-1)` for `never`), or None
/// when the value is invalid (shorter than a second, negative, not a duration).
pub(crate) fn parse_ttl(v: &str) -> Option<i64> {
    if v.eq_ignore_ascii_case("never") {
        return Some(-1);
    }
    if let Some(ns) = parse_go_duration(v) {
        if ns < 1_000_000_000 {
            return None;
        }
        return Some((ns / 1_000_000_000) as i64);
    }
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// Go's `time.ParseDuration`, in nanoseconds (negative durations are None here: no caller
/// accepts them).
pub(crate) fn parse_go_duration(s: &str) -> Option<i128> {
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.starts_with('-') {
        return None;
    }
    if s == "0" {
        return Some(0);
    }
    if s.is_empty() {
        return None;
    }
    let mut total: i128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_end);
        if num.is_empty() || num == "." {
            return None;
        }
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        let int: i128 = if int.is_empty() { 0 } else { int.parse().ok()? };
        let mut part = int.checked_mul(scale)?;
        if !frac.is_empty() {
            let digits = frac.len().min(18) as u32;
            let f: i128 = frac[..digits as usize].parse().ok()?;
            part += f * scale / 10i128.pow(digits);
        }
        total = total.checked_add(part)?;
        rest = tail;
    }
    Some(total)
}

/// Whole seconds as Go prints a `time.Duration` (`1s`, `1m0s`, `1h0m0s`).
pub(crate) fn go_duration_secs(secs: i64) -> String {
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_values_as_nats_server_reads_them() {
        assert_eq!(parse_ttl("never"), Some(-1));
        assert_eq!(parse_ttl("NEVER"), Some(-1));
        assert_eq!(parse_ttl("5"), Some(5));
        assert_eq!(parse_ttl("5s"), Some(5));
        assert_eq!(parse_ttl("1m30s"), Some(90));
        assert_eq!(parse_ttl("1.5h"), Some(5400));
        assert_eq!(parse_ttl("1500ms"), Some(1));
        assert_eq!(parse_ttl("500ms"), None);
        assert_eq!(parse_ttl("0"), None);
        assert_eq!(parse_ttl("-5"), None);
        assert_eq!(parse_ttl("soon"), None);
        assert_eq!(parse_ttl(""), None);
        assert_eq!(go_duration_secs(1), "1s");
        assert_eq!(go_duration_secs(300), "5m0s");
        assert_eq!(go_duration_secs(3661), "1h1m1s");
    }

    #[test]
    fn blocks_are_rewritten() {
        let h = b"NATS/1.0\r\nA: 1\r\nNats-Expected-Stream: S\r\nB: 2\r\n\r\n";
        let out = without(Some(h), |k| k.starts_with("Nats-Expected-")).expect("kept");
        assert_eq!(out, b"NATS/1.0\r\nA: 1\r\nB: 2\r\n\r\n");
        assert_eq!(
            without(Some(b"NATS/1.0\r\nA: 1\r\n\r\n"), |k| k == "A"),
            None
        );
        let out = set(Some(&out), "A", "3");
        assert_eq!(out, b"NATS/1.0\r\nB: 2\r\nA: 3\r\n\r\n");
        assert_eq!(get(Some(&out), "A").as_deref(), Some("3"));
        assert_eq!(with(None, &[("X", "y")]), b"NATS/1.0\r\nX: y\r\n\r\n");
    }
}
