//! What an import carries that depends on nothing else in the router: how it renames subjects
//! on the way (`SubjectMap`, with `$N` wildcard references) and how a service export answers.

use std::time::Duration;

use natrium_subjects::{FWC, PWC, SEP};

/// How a service export answers: how many responses a request may get, and how long its
/// reply path stays open (nats-server's `response_type` and `response_threshold`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Responses {
    /// `stream` or `chunked`: any number of responses until the threshold; `singleton`: one.
    pub multiple: bool,
    pub threshold: Duration,
}

impl Default for Responses {
    fn default() -> Self {
        Responses {
            multiple: false,
            threshold: RESPONSE_TTL,
        }
    }
}

/// A subject with `$N` wildcard references written as the `*` they stand for.
pub fn wildcard_pattern(subject: &str) -> String {
    subject
        .split('.')
        .map(|t| {
            if wildcard_ref(t.as_bytes()).is_some() {
                "*"
            } else {
                t
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The wildcard a token refers to: `$N` or `{{wildcard(N)}}` (1-based).
fn wildcard_ref(token: &[u8]) -> Option<usize> {
    let t = std::str::from_utf8(token).ok()?;
    let n = match t.strip_prefix('$') {
        Some(n) => n,
        None => t
            .strip_prefix("{{")?
            .strip_suffix("}}")?
            .trim()
            .strip_prefix("wildcard(")?
            .strip_suffix(')')?
            .trim(),
    };
    n.parse::<usize>().ok().filter(|n| *n > 0)
}

/// How long the reply path of a forwarded service request stays open by default.
const RESPONSE_TTL: Duration = Duration::from_secs(120);

/// How an import renames subjects on the way.
pub enum SubjectMap {
    Identity,
    /// `prefix.` + subject.
    Prefix(Box<[u8]>),
    /// From pattern `from` to pattern `to`: the i-th wildcard token of `from` fills the i-th
    /// wildcard of `to`; a literal `to` replaces the subject outright.
    Pattern {
        from: Box<[u8]>,
        to: Box<[u8]>,
    },
}

impl SubjectMap {
    pub fn new(from: &str, to: Option<&str>, prefix: Option<&str>) -> SubjectMap {
        match (to, prefix) {
            (Some(t), _) if t != from => SubjectMap::Pattern {
                from: from.as_bytes().into(),
                to: t.as_bytes().into(),
            },
            (_, Some(p)) if !p.is_empty() => {
                SubjectMap::Prefix(p.trim_end_matches('.').as_bytes().into())
            }
            _ => SubjectMap::Identity,
        }
    }

    pub fn apply(&self, subject: &[u8]) -> Vec<u8> {
        match self {
            SubjectMap::Identity => subject.to_vec(),
            SubjectMap::Prefix(p) => {
                let mut out = Vec::with_capacity(p.len() + 1 + subject.len());
                out.extend_from_slice(p);
                out.push(SEP);
                out.extend_from_slice(subject);
                out
            }
            SubjectMap::Pattern { from, to } => {
                // Collect what the wildcards of `from` captured in `subject`.
                let mut captured: Vec<&[u8]> = Vec::new();
                let mut tail: &[u8] = b"";
                let mut rest = subject;
                for pt in from.split(|c| *c == SEP) {
                    let (tok, after) = match rest.iter().position(|c| *c == SEP) {
                        Some(i) => (&rest[..i], &rest[i + 1..]),
                        None => (rest, &b""[..]),
                    };
                    if pt == [FWC] {
                        tail = rest;
                        break;
                    }
                    if pt == [PWC] || wildcard_ref(pt).is_some() {
                        captured.push(tok);
                    }
                    rest = after;
                }
                let mut out = Vec::with_capacity(to.len() + subject.len());
                // `*` in `to` takes the captured tokens in order, `$N` the N-th one.
                let mut next = captured.iter();
                for (i, tt) in to.split(|c| *c == SEP).enumerate() {
                    if i > 0 {
                        out.push(SEP);
                    }
                    if let Some(n) = wildcard_ref(tt) {
                        out.extend_from_slice(captured.get(n - 1).copied().unwrap_or(b"*"));
                    } else if tt == [PWC] {
                        out.extend_from_slice(next.next().copied().unwrap_or(b"*"));
                    } else if tt == [FWC] {
                        out.extend_from_slice(tail);
                    } else {
                        out.extend_from_slice(tt);
                    }
                }
                out
            }
        }
    }

    /// The local subject pattern an import's subscription should use.
    pub fn apply_pattern(&self, pattern: &str) -> String {
        match self {
            SubjectMap::Identity => pattern.to_string(),
            SubjectMap::Prefix(p) => format!("{}.{pattern}", String::from_utf8_lossy(p)),
            SubjectMap::Pattern { to, .. } => String::from_utf8_lossy(to).into_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_maps() {
        assert_eq!(SubjectMap::Identity.apply(b"a.b"), b"a.b");
        assert_eq!(
            SubjectMap::new("a.>", None, Some("imp")).apply(b"a.b"),
            b"imp.a.b"
        );
        let m = SubjectMap::new("orders.*.created", Some("in.orders.*"), None);
        assert_eq!(m.apply(b"orders.42.created"), b"in.orders.42");
        let m = SubjectMap::new("src.>", Some("dst.>"), None);
        assert_eq!(m.apply(b"src.x.y"), b"dst.x.y");
        let m = SubjectMap::new("svc.time", Some("time"), None);
        assert_eq!(m.apply(b"svc.time"), b"time");
        // Numbered references, as JWT `local_subject`s write them.
        let m = SubjectMap::new("a.*.*", Some("b.$2.$1"), None);
        assert_eq!(m.apply(b"a.x.y"), b"b.y.x");
        let m = SubjectMap::new("a.*.*", Some("b.{{wildcard(2)}}.*"), None);
        assert_eq!(m.apply(b"a.x.y"), b"b.y.x");
        assert_eq!(wildcard_pattern("req.$1.x"), "req.*.x");
    }
}
