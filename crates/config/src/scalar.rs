//! Meaning of bare (unquoted) scalars: booleans, integers with size suffixes, floats; plus
//! `parse_size` and `parse_duration` (Go `time.ParseDuration` syntax) for string values.
//!
//! Size suffixes, as nats-server's `conf/parse.go` applies them to integers (case-insensitive):
//!
//! | suffix                 | multiplier | suffix | multiplier |
//! |------------------------|------------|--------|------------|
//! | `kb`, `ki`, `kib`      | 1024       | `k`    | 1000       |
//! | `mb`, `mi`, `mib`      | 1024²      | `m`    | 1000²      |
//! | `gb`, `gi`, `gib`      | 1024³      | `g`    | 1000³      |
//! | `tb`, `ti`, `tib`      | 1024⁴      | `t`    | 1000⁴      |
//! | `pb`, `pi`, `pib`      | 1024⁵      | `p`    | 1000⁵      |
//! | `eb`, `ei`, `eib`      | 1024⁶      | `e`    | 1000⁶      |
//!
//! So a bare `2m` is the integer 2 000 000, not two minutes, and `1MB` is 1 048 576. A bare
//! token that starts like a number but is not exactly one of these forms (`500ms`, `2m30s`,
//! `1h`, `127.0.0.1:4222`, `1.5s`) is a string; durations therefore reach the options layer
//! as strings for [`parse_duration`]. (nats-server itself rejects a few of those shapes, such
//! as `1.5s`, with a lexer error; accepting them as strings is a deliberate leniency.)

use std::time::Duration;

/// What a bare token means once it is known not to be a variable reference.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Bare {
    Bool(bool),
    Integer(i64),
    Float(f64),
    String,
}

/// Classifies a bare token. `Err` carries a message for number-shaped tokens whose value does
/// not fit (an integer beyond `i64`, a size whose product overflows, a float beyond `f64`).
pub(crate) fn classify_bare(text: &str) -> Result<Bare, String> {
    if let Some(b) = bool_word(text) {
        return Ok(Bare::Bool(b));
    }
    match number(text) {
        Number::NotNumeric => Ok(Bare::String),
        Number::Integer(n) => Ok(Bare::Integer(n)),
        Number::Float(x) => Ok(Bare::Float(x)),
        Number::OutOfRange => Err(format!("number '{text}' is out of range")),
    }
}

/// `true`/`false`, `yes`/`no`, `on`/`off`, in any case.
fn bool_word(text: &str) -> Option<bool> {
    const TRUE: [&str; 3] = ["true", "yes", "on"];
    const FALSE: [&str; 3] = ["false", "no", "off"];
    if TRUE.iter().any(|w| w.eq_ignore_ascii_case(text)) {
        Some(true)
    } else if FALSE.iter().any(|w| w.eq_ignore_ascii_case(text)) {
        Some(false)
    } else {
        None
    }
}

enum Number {
    NotNumeric,
    Integer(i64),
    Float(f64),
    OutOfRange,
}

/// `-?digits`, `-?digits.digits`, or `-?digits<size suffix>`.
fn number(text: &str) -> Number {
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let digits = unsigned.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Number::NotNumeric;
    }
    let (int_part, rest) = unsigned.split_at(digits);
    let signed_int = &text[..text.len() - rest.len()];

    if rest.is_empty() {
        return match signed_int.parse::<i64>() {
            Ok(n) => Number::Integer(n),
            Err(_) => Number::OutOfRange,
        };
    }
    if let Some(frac) = rest.strip_prefix('.') {
        if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Number::NotNumeric;
        }
        return match text.parse::<f64>() {
            Ok(x) if x.is_finite() => Number::Float(x),
            _ => Number::OutOfRange,
        };
    }
    let Some(mult) = size_multiplier(rest) else {
        return Number::NotNumeric;
    };
    debug_assert!(!int_part.is_empty());
    match signed_int
        .parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
    {
        Some(n) => Number::Integer(n),
        None => Number::OutOfRange,
    }
}

/// The multiplier of a size suffix (see the module docs), case-insensitively.
fn size_multiplier(suffix: &str) -> Option<i64> {
    let lower = suffix.to_ascii_lowercase();
    let mut chars = lower.chars();
    let power = match chars.next()? {
        'k' => 1,
        'm' => 2,
        'g' => 3,
        't' => 4,
        'p' => 5,
        'e' => 6,
        _ => return None,
    };
    let base: i64 = match chars.as_str() {
        "" => 1000,
        "b" | "i" | "ib" => 1024,
        _ => return None,
    };
    base.checked_pow(power)
}

/// Parses an integer with an optional size suffix, exactly as a bare config value would be
/// read (see the module docs): `"1MB"` is 1 048 576, `"1M"` and `"1m"` are 1 000 000, `"512"`
/// is 512, `"-1k"` is -1000. Surrounding whitespace is ignored; anything else, or a product
/// beyond `i64`, gives `None`.
///
/// nats-server's JetStream options read *quoted* sizes differently (its `getStorageSize`
/// accepts only a single `K`/`M`/`G`/`T` suffix and treats it as binary, so `"1M"` there is
/// 1 048 576); callers that need that quirk must handle it themselves.
pub fn parse_size(s: &str) -> Option<i64> {
    match number(s.trim()) {
        Number::Integer(n) => Some(n),
        _ => None,
    }
}

/// Parses a Go-style duration: an optionally signed sequence of decimal numbers, each with an
/// optional fraction and a unit, such as `"300ms"`, `"1.5h"` or `"2h45m"`. Units are `ns`,
/// `us` (or `µs`/`μs`), `ms`, `s`, `m`, `h`; `"0"` alone needs no unit. Fractions below a
/// nanosecond are truncated. Returns `None` for malformed input, for negative durations
/// (which `Duration` cannot hold; `-0s` is zero) and for durations beyond `i64::MAX`
/// nanoseconds (about 292 years), the limit Go has.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    const LIMIT: u128 = i64::MAX as u128;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after_int) = rest.split_at(int_len);
        rest = after_int;
        let mut frac_digits = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            let (f, after_frac) = after_dot.split_at(frac_len);
            frac_digits = f;
            rest = after_frac;
        }
        if int_digits.is_empty() && frac_digits.is_empty() {
            return None;
        }
        let unit_len = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (unit, after_unit) = rest.split_at(unit_len);
        rest = after_unit;
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            _ => return None,
        };

        let mut whole: u128 = 0;
        for d in int_digits.bytes() {
            whole = whole.checked_mul(10)?.checked_add(u128::from(d - b'0'))?;
            if whole > LIMIT {
                return None;
            }
        }
        total = total.checked_add(whole.checked_mul(unit_nanos)?)?;

        // Only the first 20 fraction digits can matter at nanosecond resolution.
        let mut frac: u128 = 0;
        let mut scale: u128 = 1;
        for d in frac_digits.bytes().take(20) {
            frac = frac * 10 + u128::from(d - b'0');
            scale *= 10;
        }
        total = total.checked_add(frac * unit_nanos / scale)?;
        if total > LIMIT {
            return None;
        }
    }
    if negative && total != 0 {
        return None;
    }
    u64::try_from(total).ok().map(Duration::from_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bools_in_any_case() {
        for w in ["true", "TRUE", "Yes", "on", "ON"] {
            assert_eq!(classify_bare(w), Ok(Bare::Bool(true)), "{w}");
        }
        for w in ["false", "No", "off", "OFF"] {
            assert_eq!(classify_bare(w), Ok(Bare::Bool(false)), "{w}");
        }
        assert_eq!(classify_bare("truee"), Ok(Bare::String));
    }

    #[test]
    fn integers_floats_and_strings() {
        assert_eq!(classify_bare("4222"), Ok(Bare::Integer(4222)));
        assert_eq!(classify_bare("-17"), Ok(Bare::Integer(-17)));
        assert_eq!(classify_bare("007"), Ok(Bare::Integer(7)));
        assert_eq!(classify_bare("1.5"), Ok(Bare::Float(1.5)));
        assert_eq!(classify_bare("-0.25"), Ok(Bare::Float(-0.25)));
        for s in [
            "1.",
            "1.5s",
            "1.2.3.4",
            "127.0.0.1:4222",
            "500ms",
            "2m30s",
            "1h",
            "10s",
            "3secret",
            "+5",
            "-",
            "-x",
            "1e3",
            "1kbb",
            "2016-05-04T18:53:41Z",
            "1_000",
        ] {
            assert_eq!(classify_bare(s), Ok(Bare::String), "{s}");
        }
        assert!(classify_bare("9223372036854775808").is_err());
        assert_eq!(
            classify_bare("-9223372036854775808"),
            Ok(Bare::Integer(i64::MIN))
        );
    }

    #[test]
    fn size_suffixes_follow_nats_server() {
        let cases: [(&str, i64); 16] = [
            ("1k", 1000),
            ("1K", 1000),
            ("1kb", 1024),
            ("1KB", 1024),
            ("1Kb", 1024),
            ("1KiB", 1024),
            ("1ki", 1024),
            ("2m", 2_000_000),
            ("2M", 2_000_000),
            ("2MB", 2 * 1024 * 1024),
            ("2mib", 2 * 1024 * 1024),
            ("3g", 3_000_000_000),
            ("3GB", 3 << 30),
            ("1t", 1_000_000_000_000),
            ("1TB", 1 << 40),
            ("-1k", -1000),
        ];
        for (s, n) in cases {
            assert_eq!(classify_bare(s), Ok(Bare::Integer(n)), "{s}");
            assert_eq!(parse_size(s), Some(n), "{s}");
        }
        assert_eq!(parse_size("1p"), Some(1_000_000_000_000_000));
        assert_eq!(parse_size("1PB"), Some(1 << 50));
        assert_eq!(parse_size("1e"), Some(1_000_000_000_000_000_000));
        assert_eq!(parse_size("1EB"), Some(1 << 60));
        assert_eq!(parse_size("8EB"), None, "overflows i64");
        assert!(classify_bare("8EB").is_err());
        assert_eq!(parse_size(" 512 "), Some(512));
        assert_eq!(parse_size("1.5MB"), None);
        assert_eq!(parse_size("MB"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("1 MB"), None);
    }

    #[test]
    fn durations_follow_go() {
        let d = |s| parse_duration(s);
        assert_eq!(d("2m"), Some(Duration::from_secs(120)));
        assert_eq!(d("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(d("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(d("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(d("10us"), Some(Duration::from_micros(10)));
        assert_eq!(d("10µs"), Some(Duration::from_micros(10)));
        assert_eq!(d("10μs"), Some(Duration::from_micros(10)));
        assert_eq!(d("100ns"), Some(Duration::from_nanos(100)));
        assert_eq!(d("2h45m30.5s"), Some(Duration::from_millis(9_930_500)));
        assert_eq!(d(".5s"), Some(Duration::from_millis(500)));
        assert_eq!(d("1.s"), Some(Duration::from_secs(1)));
        assert_eq!(d("+3s"), Some(Duration::from_secs(3)));
        assert_eq!(d("0"), Some(Duration::ZERO));
        assert_eq!(d("-0"), Some(Duration::ZERO));
        assert_eq!(d("-0s"), Some(Duration::ZERO));
        assert_eq!(d("1.0000000001s"), Some(Duration::from_secs(1)));
        assert_eq!(
            d("0.333333333333333333333333333h"),
            Some(Duration::from_nanos(1_199_999_999_999))
        );
        assert_eq!(d("2562047h"), Some(Duration::from_secs(2_562_047 * 3600)));
        for bad in [
            "",
            "1",
            "s",
            ".",
            ".s",
            "1x",
            "1m1",
            "-1s",
            "1 s",
            " 1s",
            "1S",
            "1d",
            "--1s",
            "1..5s",
            "2562048h",
            "99999999999999999999999999999999999999999ns",
        ] {
            assert_eq!(d(bad), None, "{bad:?}");
        }
    }
}
