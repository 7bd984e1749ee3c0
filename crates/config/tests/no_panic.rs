//! Property tests: arbitrary input never panics the parser, and well-formed generated
//! configurations round-trip their scalar values.

use natrium_config::{parse_duration, parse_size, parse_str_with_env, ConfigError};
use proptest::prelude::*;

/// A stand-in environment, so generated `$NAME`s never read the real one.
fn env(name: &str) -> Option<String> {
    match name {
        "A" => Some("1".into()),
        "B" => Some("$A".into()),
        "C" => Some("$C".into()),
        "M" => Some("{x: [1, $A]}".into()),
        _ => None,
    }
}

/// Pieces of configuration syntax that random concatenations are built from.
const FRAGMENTS: &[&str] = &[
    "a",
    "key",
    "K2",
    "$A",
    "$B",
    "$C",
    "$M",
    "$",
    "$2a$1",
    "include ",
    "include x.conf",
    "true",
    "off",
    "1",
    "-7",
    "1.5",
    "2m",
    "1MB",
    "8EB",
    "99999999999999999999",
    "127.0.0.1:4222",
    "500ms",
    " ",
    "\t",
    "\n",
    "\r\n",
    "{",
    "}",
    "[",
    "]",
    "(",
    ")",
    "\n)\n",
    ":",
    "=",
    ",",
    ";",
    "#",
    "//",
    "/",
    "\"",
    "'",
    "\\",
    "\\x4",
    "\\x41",
    "\\u00e9",
    "\\u",
    "\\q",
    "é",
    "\u{feff}",
    "\0",
];

/// Every error that points somewhere points at a real position.
fn check(result: Result<natrium_config::Map, ConfigError>) {
    if let Err(e) = result {
        let _ = e.to_string();
        if let Some(pos) = e.root_cause().pos() {
            assert!(pos.line >= 1 && pos.col >= 1, "{e}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        check(parse_str_with_env(&text, &env));
    }

    #[test]
    fn config_like_text_never_panics(
        parts in proptest::collection::vec(proptest::sample::select(FRAGMENTS), 0..120)
    ) {
        check(parse_str_with_env(&parts.concat(), &env));
    }

    #[test]
    fn scalar_helpers_never_panic(text in "\\PC{0,40}") {
        let _ = parse_duration(&text);
        let _ = parse_size(&text);
    }

    #[test]
    fn integers_round_trip(n in any::<i64>()) {
        let m = parse_str_with_env(&format!("v: {n}"), &env).unwrap();
        prop_assert_eq!(m.get("v").unwrap().as_i64(), Some(n));
    }

    #[test]
    fn quoted_strings_round_trip(s in "\\PC{0,40}") {
        let escaped: String = s
            .chars()
            .flat_map(|c| match c {
                '"' => vec!['\\', '"'],
                '\\' => vec!['\\', '\\'],
                c => vec![c],
            })
            .collect();
        let m = parse_str_with_env(&format!("v: \"{escaped}\"\n"), &env).unwrap();
        prop_assert_eq!(m.get("v").unwrap().as_str(), Some(s.as_str()));
    }

    #[test]
    fn durations_of_whole_units_parse(n in 0u64..1_000_000, unit in 0usize..6) {
        let (suffix, nanos) = [("ns", 1u64), ("us", 1_000), ("ms", 1_000_000), ("s", 1_000_000_000),
            ("m", 60_000_000_000), ("h", 3_600_000_000_000)][unit];
        let d = parse_duration(&format!("{n}{suffix}")).unwrap();
        prop_assert_eq!(d.as_nanos(), u128::from(n) * u128::from(nanos));
    }
}
