//! NATS subjects: validation as nats-server does it, wildcard matching of one pattern against one
//! subject, and `Sublist`, the subscription trie that finds every subscription matching a subject.

mod sublist;
pub mod transform;

pub use sublist::{Matches, Sublist};
pub use transform::{validate_mapping, SubjectTransform, TransformError};

/// Token separator.
pub const SEP: u8 = b'.';
/// Single-token wildcard.
pub const PWC: u8 = b'*';
/// Full (tail) wildcard.
pub const FWC: u8 = b'>';

#[inline]
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c')
}

/// A subject valid for subscribing: non-empty tokens, no whitespace, `>` only as the last token.
/// A token is a wildcard only when it is exactly `*` or `>`; `foo*` is a literal token.
pub fn is_valid_subject(subject: &[u8]) -> bool {
    if subject.is_empty() {
        return false;
    }
    let mut seen_fwc = false;
    for token in subject.split(|c| *c == SEP) {
        if token.is_empty() || seen_fwc {
            return false;
        }
        if token.iter().any(|c| is_space(*c)) {
            return false;
        }
        if token == [FWC] {
            seen_fwc = true;
        }
    }
    true
}

/// Whether a subject has no wildcard tokens.
pub fn is_literal(subject: &[u8]) -> bool {
    subject
        .split(|c| *c == SEP)
        .all(|t| t != [PWC] && t != [FWC])
}

/// A subject valid for publishing: valid and literal.
pub fn is_valid_publish_subject(subject: &[u8]) -> bool {
    is_valid_subject(subject) && is_literal(subject)
}

/// A queue group name: non-empty, no whitespace.
pub fn is_valid_queue(queue: &[u8]) -> bool {
    !queue.is_empty() && !queue.iter().any(|c| is_space(*c))
}

/// Whether literal `subject` matches `pattern` (which may hold wildcards).
pub fn matches(pattern: &[u8], subject: &[u8]) -> bool {
    let mut p = pattern.split(|c| *c == SEP);
    let mut s = subject.split(|c| *c == SEP);
    loop {
        match (p.next(), s.next()) {
            (None, None) => return true,
            (Some(pt), Some(_)) if pt == [FWC] => return true,
            (Some(pt), Some(st)) if pt == [PWC] || pt == st => continue,
            _ => return false,
        }
    }
}

/// Whether every subject matched by `sub` is also matched by `sup` (both may hold wildcards).
pub fn is_subset(sub: &[u8], sup: &[u8]) -> bool {
    let mut a = sub.split(|c| *c == SEP);
    let mut b = sup.split(|c| *c == SEP);
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (_, Some(bt)) if bt == [FWC] => return true,
            (Some(at), Some(bt)) if bt == [PWC] && at != [FWC] => continue,
            (Some(at), Some(bt)) if at == bt => continue,
            _ => return false,
        }
    }
}

/// Whether some literal subject matches both patterns.
pub fn overlaps(a: &[u8], b: &[u8]) -> bool {
    let mut x = a.split(|c| *c == SEP);
    let mut y = b.split(|c| *c == SEP);
    loop {
        match (x.next(), y.next()) {
            (None, None) => return true,
            (Some(t), Some(_)) | (Some(_), Some(t)) if t == [FWC] => return true,
            (Some(s), Some(t)) if s == [PWC] || t == [PWC] || s == t => continue,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_follows_nats_server() {
        for ok in [
            "foo",
            "foo.bar",
            "foo.*",
            "foo.>",
            ">",
            "*",
            "foo*.bar",
            "a.*.c",
            "$JS.API.>",
        ] {
            assert!(is_valid_subject(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "foo.",
            ".foo",
            "foo..bar",
            "foo.>.bar",
            "foo bar",
            "foo\tbar",
            ">.a",
        ] {
            assert!(!is_valid_subject(bad.as_bytes()), "{bad}");
        }
        assert!(is_valid_publish_subject(b"foo.bar*"));
        assert!(!is_valid_publish_subject(b"foo.*"));
        assert!(!is_valid_publish_subject(b"foo.>"));
        assert!(is_valid_queue(b"workers"));
        assert!(!is_valid_queue(b"a b"));
    }

    #[test]
    fn matching() {
        assert!(matches(b"foo.*", b"foo.bar"));
        assert!(!matches(b"foo.*", b"foo.bar.baz"));
        assert!(matches(b"foo.>", b"foo.bar.baz"));
        assert!(!matches(b"foo.>", b"foo"));
        assert!(matches(b">", b"a"));
        assert!(matches(b"*.b.*", b"a.b.c"));
        assert!(!matches(b"a.b", b"a.b.c"));
        assert!(!matches(b"a.b.c", b"a.b"));
    }

    #[test]
    fn subset_and_overlap() {
        assert!(is_subset(b"a.b", b"a.*"));
        assert!(is_subset(b"a.*", b"a.>"));
        assert!(is_subset(b"a.>", b">"));
        assert!(!is_subset(b"a.>", b"a.*"));
        assert!(!is_subset(b"a.*", b"a.b"));
        assert!(overlaps(b"a.*", b"*.b"));
        assert!(overlaps(b"a.>", b"a.b.c"));
        assert!(!overlaps(b"a.*", b"b.*"));
        assert!(!overlaps(b"a.*", b"a.b.c"));
    }
}
