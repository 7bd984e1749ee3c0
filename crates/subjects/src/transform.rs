//! Subject transforms as nats-server defines them (stream `subject_transform`, source and
//! mirror transforms, republish, account mappings): a source pattern and a destination whose
//! tokens are literals, `$n`, or mapping functions (`{{wildcard(n)}}`, `{{partition(n,...)}}`,
//! `{{split(n,d)}}`, `{{splitFromLeft(n,p)}}`, `{{sliceFromRight(n,s)}}`, `{{left(n,l)}}`,
//! `{{random(n)}}`, ...). Wildcard indexes count the source's `*` tokens from 1.

use std::fmt;

use crate::{is_valid_subject, matches, FWC, PWC};

/// Why a transform can not be built; texts are nats-server's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransformError {
    /// Source or destination is not a valid subject, or `>` is used on one side only, or the
    /// destination holds `*`.
    BadSubject,
    /// nats-server's `mappingDestinationErr`: the reason and the token it is about.
    Destination { reason: &'static str, token: String },
}

const INVALID_TRANSFORM: &str = "invalid mapping destination: invalid transform";
const UNKNOWN_FUNCTION: &str = "invalid mapping destination: unknown function";
const INDEX_OUT_OF_RANGE: &str = "invalid mapping destination: wildcard index out of range";
const NOT_ENOUGH_ARGS: &str =
    "invalid mapping destination: not enough arguments passed to the function";
const INVALID_ARG: &str =
    "invalid mapping destination: function argument is invalid or in the wrong format";
const TOO_MANY_ARGS: &str =
    "invalid mapping destination: too many arguments passed to the function";

impl fmt::Display for TransformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransformError::BadSubject => f.write_str("invalid subject"),
            TransformError::Destination { reason, token } if token.is_empty() => {
                f.write_str(reason)
            }
            TransformError::Destination { reason, token } => write!(f, "{reason} in {token}"),
        }
    }
}

impl std::error::Error for TransformError {}

fn dest_err(reason: &'static str, token: &str) -> TransformError {
    TransformError::Destination {
        reason,
        token: token.to_string(),
    }
}

/// One destination token.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// Source token at this position.
    Wildcard(usize),
    /// FNV-1a hash of the named source tokens (all of the subject when empty) modulo `n`.
    Partition {
        n: u32,
        tokens: Vec<usize>,
    },
    SplitFromLeft {
        token: usize,
        pos: i32,
    },
    SplitFromRight {
        token: usize,
        pos: i32,
    },
    SliceFromLeft {
        token: usize,
        size: i32,
    },
    SliceFromRight {
        token: usize,
        size: i32,
    },
    Split {
        token: usize,
        delim: String,
    },
    Left {
        token: usize,
        len: i32,
    },
    Right {
        token: usize,
        len: i32,
    },
    Random(u32),
}

/// A compiled transform from `src` to `dest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectTransform {
    src: String,
    dest: String,
    /// Number of source tokens (for `>` tails).
    src_tokens: usize,
    parts: Vec<Part>,
    /// The destination ends in `>`: the source's tail is appended.
    tail: bool,
}

/// A parsed mapping function: its kind, wildcard indexes, an integer and a string argument.
enum Func {
    Wildcard(usize),
    Partition(u32, Vec<usize>),
    IndexInt(&'static str, usize, i32),
    Split(usize, String),
    Random(u32),
}

const INDEX_INT_FUNCS: [&str; 6] = [
    "splitfromleft",
    "splitfromright",
    "slicefromleft",
    "slicefromright",
    "left",
    "right",
];

/// Splits `{{ name(args) }}` into the lower-cased name and its raw arguments; None when the
/// token is not shaped as a function call.
fn call_parts(token: &str) -> Option<(String, Vec<&str>)> {
    let inner = token.strip_prefix("{{")?.strip_suffix("}}")?;
    let inner = inner.trim_start().trim_end();
    let open = inner.find('(')?;
    let name = inner[..open].trim_end().to_ascii_lowercase();
    let args = inner[open + 1..].strip_suffix(')')?;
    // nats-server splits the arguments on a comma and the blanks after it.
    let args = args
        .split(',')
        .enumerate()
        .map(|(i, a)| if i == 0 { a } else { a.trim_start() })
        .collect();
    Some((name, args))
}

fn is_function_token(t: &str) -> bool {
    t.len() > 4 && t.starts_with("{{") && t.ends_with("}}")
}

fn parse_int<T: std::str::FromStr>(s: &str, token: &str) -> Result<T, TransformError> {
    s.trim_matches(' ')
        .parse()
        .map_err(|_| dest_err(INVALID_ARG, token))
}

/// Parses a destination token that looks like a function (`{{...}}`) or `$n`; None for a
/// literal.
fn parse_token(token: &str) -> Result<Option<Func>, TransformError> {
    if token.len() > 1 && token.starts_with('$') {
        // `$1` is the old form of `{{wildcard(1)}}`; other `$` tokens are literals.
        return Ok(token[1..].parse::<usize>().ok().map(Func::Wildcard));
    }
    if !is_function_token(token) {
        return Ok(None);
    }
    let Some((name, args)) = call_parts(token) else {
        return Err(dest_err(UNKNOWN_FUNCTION, token));
    };
    match name.as_str() {
        "wildcard" => match args.as_slice() {
            [""] => Err(dest_err(NOT_ENOUGH_ARGS, token)),
            [a] => Ok(Some(Func::Wildcard(parse_int(a, token)?))),
            _ => Err(dest_err(TOO_MANY_ARGS, token)),
        },
        "partition" => {
            let n: i64 = parse_int(args.first().copied().unwrap_or(""), token)?;
            let n = u32::try_from(n)
                .ok()
                .filter(|n| *n <= i32::MAX as u32)
                .ok_or_else(|| dest_err(INVALID_ARG, token))?;
            let tokens = args
                .iter()
                .skip(1)
                .map(|a| parse_int(a, token))
                .collect::<Result<Vec<usize>, _>>()?;
            Ok(Some(Func::Partition(n, tokens)))
        }
        "split" => match args.as_slice() {
            [a, d] => {
                let i = parse_int(a, token)?;
                if d.contains(' ') || d.contains('.') {
                    return Err(dest_err(INVALID_ARG, token));
                }
                Ok(Some(Func::Split(i, d.to_string())))
            }
            [_] | [] => Err(dest_err(NOT_ENOUGH_ARGS, token)),
            _ => Err(dest_err(TOO_MANY_ARGS, token)),
        },
        "random" => match args.as_slice() {
            [a] => {
                let n: i64 = parse_int(a, token)?;
                let n = u32::try_from(n)
                    .ok()
                    .filter(|n| *n <= i32::MAX as u32)
                    .ok_or_else(|| dest_err(INVALID_ARG, token))?;
                Ok(Some(Func::Random(n)))
            }
            _ => Err(dest_err(NOT_ENOUGH_ARGS, token)),
        },
        other => {
            let Some(kind) = INDEX_INT_FUNCS.iter().find(|k| **k == other) else {
                return Err(dest_err(UNKNOWN_FUNCTION, token));
            };
            match args.as_slice() {
                [a, b] => Ok(Some(Func::IndexInt(
                    kind,
                    parse_int(a, token)?,
                    parse_int(b, token)?,
                ))),
                [_] | [] => Err(dest_err(NOT_ENOUGH_ARGS, token)),
                _ => Err(dest_err(TOO_MANY_ARGS, token)),
            }
        }
    }
}

/// Whether `s` is a valid subject; its tokens, number of `*` and whether it ends in `>`.
fn subject_info(s: &str) -> Option<(Vec<&str>, usize, bool)> {
    if s.is_empty() {
        return None;
    }
    let tokens: Vec<&str> = s.split('.').collect();
    let mut pwcs = 0;
    let mut fwc = false;
    for t in &tokens {
        if t.is_empty() || fwc {
            return None;
        }
        if *t == ">" {
            fwc = true;
        } else if *t == "*" {
            pwcs += 1;
        }
    }
    Some((tokens, pwcs, fwc))
}

impl SubjectTransform {
    /// Builds the transform from `src` (empty means `>`) to `dest`; None when `dest` is empty
    /// (no transform), as nats-server.
    pub fn new(src: &str, dest: &str) -> Result<Option<SubjectTransform>, TransformError> {
        if dest.is_empty() {
            return Ok(None);
        }
        let src = if src.is_empty() { ">" } else { src };
        let (stoks, npwcs, sfwc) = subject_info(src).ok_or(TransformError::BadSubject)?;
        let (dtoks, dpwcs, dfwc) = subject_info(dest).ok_or(TransformError::BadSubject)?;
        if dpwcs > 0 || sfwc != dfwc {
            return Err(TransformError::BadSubject);
        }
        // Source position of each `*`, by its 1-based index.
        let positions: Vec<usize> = stoks
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == "*")
            .map(|(i, _)| i)
            .collect();
        let wildcards = npwcs > 0 || sfwc;
        // nats-server maps an index it has no `*` for (0) to the first token.
        let pos = |i: usize, token: &str| -> Result<usize, TransformError> {
            if i > npwcs {
                return Err(dest_err(INDEX_OUT_OF_RANGE, &format!("{token}: [{i}]")));
            }
            Ok(i.checked_sub(1)
                .and_then(|k| positions.get(k).copied())
                .unwrap_or(0))
        };
        let mut parts = Vec::with_capacity(dtoks.len());
        for token in &dtoks {
            let f = parse_token(token)?;
            let part = match f {
                None => Part::Literal(token.to_string()),
                Some(Func::Random(n)) => Part::Random(n),
                Some(Func::Partition(n, ref idx)) if !wildcards || idx.is_empty() => {
                    if !wildcards && !idx.is_empty() {
                        return Err(dest_err(INDEX_OUT_OF_RANGE, token));
                    }
                    Part::Partition {
                        n,
                        tokens: Vec::new(),
                    }
                }
                Some(_) if !wildcards => return Err(dest_err(INDEX_OUT_OF_RANGE, token)),
                Some(Func::Wildcard(i)) => Part::Wildcard(pos(i, token)?),
                Some(Func::Partition(n, idx)) => Part::Partition {
                    n,
                    tokens: idx
                        .into_iter()
                        .map(|i| pos(i, token))
                        .collect::<Result<_, _>>()?,
                },
                Some(Func::Split(i, delim)) => Part::Split {
                    token: pos(i, token)?,
                    delim,
                },
                Some(Func::IndexInt(kind, i, n)) => {
                    let token = pos(i, token)?;
                    match kind {
                        "splitfromleft" => Part::SplitFromLeft { token, pos: n },
                        "splitfromright" => Part::SplitFromRight { token, pos: n },
                        "slicefromleft" => Part::SliceFromLeft { token, size: n },
                        "slicefromright" => Part::SliceFromRight { token, size: n },
                        "left" => Part::Left { token, len: n },
                        _ => Part::Right { token, len: n },
                    }
                }
            };
            parts.push(part);
        }
        Ok(Some(SubjectTransform {
            src: src.to_string(),
            dest: dest.to_string(),
            src_tokens: stoks.len(),
            parts,
            tail: dfwc,
        }))
    }

    pub fn source(&self) -> &str {
        &self.src
    }

    pub fn destination(&self) -> &str {
        &self.dest
    }

    /// The transformed subject when literal `subject` matches the source; None otherwise.
    pub fn apply(&self, subject: &str) -> Option<String> {
        if (self.src == ">") && self.dest == ">" {
            return Some(subject.to_string());
        }
        if !matches(self.src.as_bytes(), subject.as_bytes()) {
            return None;
        }
        Some(self.transform(subject))
    }

    /// Transforms a subject known to match the source.
    pub fn transform(&self, subject: &str) -> String {
        let tokens: Vec<&str> = subject.split('.').collect();
        let tok = |i: usize| tokens.get(i).copied().unwrap_or("");
        let mut out = String::with_capacity(subject.len() + 16);
        let last = self.parts.len().saturating_sub(1);
        for (i, part) in self.parts.iter().enumerate() {
            match part {
                Part::Literal(l) if l == ">" => break,
                Part::Literal(l) => out.push_str(l),
                Part::Wildcard(k) => out.push_str(tok(*k)),
                Part::Partition { n, tokens: idx } => {
                    let key: Vec<u8> = if idx.is_empty() {
                        subject.as_bytes().to_vec()
                    } else {
                        idx.iter().flat_map(|k| tok(*k).bytes()).collect()
                    };
                    let p = if *n == 0 { 0 } else { fnv1a32(&key) % n };
                    out.push_str(&p.to_string());
                }
                Part::SplitFromLeft { token, pos } => {
                    let s = tok(*token);
                    let p = *pos as isize;
                    if p > 0 && (p as usize) < s.len() && s.is_char_boundary(p as usize) {
                        let (a, b) = s.split_at(p as usize);
                        out.push_str(a);
                        out.push('.');
                        out.push_str(b);
                    } else {
                        out.push_str(s);
                    }
                }
                Part::SplitFromRight { token, pos } => {
                    let s = tok(*token);
                    let p = *pos as isize;
                    if p > 0 && (p as usize) < s.len() && s.is_char_boundary(s.len() - p as usize) {
                        let (a, b) = s.split_at(s.len() - p as usize);
                        out.push_str(a);
                        out.push('.');
                        out.push_str(b);
                    } else {
                        out.push_str(s);
                    }
                }
                Part::SliceFromLeft { token, size } => {
                    let s = tok(*token).as_bytes();
                    let size = *size as isize;
                    if size > 0 && (size as usize) < s.len() {
                        let pieces: Vec<&[u8]> = s.chunks(size as usize).collect();
                        out.push_str(&String::from_utf8_lossy(&pieces.join(&b'.')));
                    } else {
                        out.push_str(tok(*token));
                    }
                }
                Part::SliceFromRight { token, size } => {
                    let s = tok(*token).as_bytes();
                    let size = *size as isize;
                    if size > 0 && (size as usize) < s.len() {
                        let rem = s.len() % size as usize;
                        let mut pieces: Vec<&[u8]> = Vec::new();
                        if rem > 0 {
                            pieces.push(&s[..rem]);
                        }
                        pieces.extend(s[rem..].chunks(size as usize));
                        out.push_str(&String::from_utf8_lossy(&pieces.join(&b'.')));
                    } else {
                        out.push_str(tok(*token));
                    }
                }
                Part::Split { token, delim } => {
                    let pieces: Vec<&str> = tok(*token)
                        .split(delim.as_str())
                        .filter(|p| !p.is_empty())
                        .collect();
                    out.push_str(&pieces.join("."));
                }
                Part::Left { token, len } => {
                    let s = tok(*token);
                    let l = *len as isize;
                    if l > 0 && (l as usize) < s.len() && s.is_char_boundary(l as usize) {
                        out.push_str(&s[..l as usize]);
                    } else {
                        out.push_str(s);
                    }
                }
                Part::Right { token, len } => {
                    let s = tok(*token);
                    let l = *len as isize;
                    if l > 0 && (l as usize) < s.len() && s.is_char_boundary(s.len() - l as usize) {
                        out.push_str(&s[s.len() - l as usize..]);
                    } else {
                        out.push_str(s);
                    }
                }
                Part::Random(n) => {
                    let p = if *n == 0 { 0 } else { random_u32() % n };
                    out.push_str(&p.to_string());
                }
            }
            if i < last {
                out.push('.');
            }
        }
        if self.tail {
            let from = self.src_tokens.saturating_sub(1);
            let rest: Vec<&str> = tokens.iter().skip(from).copied().collect();
            out.push_str(&rest.join("."));
        }
        out
    }
}

/// Checks a mapping destination as nats-server's `ValidateMapping` does, then that the
/// transform from `src` can be built.
pub fn validate_mapping(src: &str, dest: &str) -> Result<(), TransformError> {
    if dest.is_empty() {
        return Ok(());
    }
    let mut fwc = false;
    for t in dest.split('.') {
        if t.is_empty() || fwc {
            return Err(dest_err(INVALID_TRANSFORM, t));
        }
        if is_function_token(t) {
            match parse_token(t) {
                Err(TransformError::Destination {
                    reason: UNKNOWN_FUNCTION,
                    ..
                }) => return Err(dest_err(UNKNOWN_FUNCTION, t)),
                _ => continue,
            }
        }
        if t.as_bytes() == [FWC] {
            fwc = true;
        } else if t.contains(['\t', '\n', '\x0c', '\r', ' ']) {
            return Err(dest_err(INVALID_TRANSFORM, ""));
        }
    }
    let _ = PWC;
    if !src.is_empty() && !is_valid_subject(src.as_bytes()) {
        return Err(TransformError::BadSubject);
    }
    SubjectTransform::new(src, dest).map(|_| ())
}

/// 32-bit FNV-1a, the hash of nats-server's `partition`.
fn fnv1a32(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// A cheap random number for `{{random(n)}}` (xorshift seeded from the clock and a counter).
fn random_u32() -> u32 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        x = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64)
            | 1;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    (x >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(src: &str, dest: &str) -> SubjectTransform {
        SubjectTransform::new(src, dest)
            .expect("valid transform")
            .expect("a transform")
    }

    #[test]
    fn wildcards_and_tails() {
        assert_eq!(
            tr("foo.*.*", "bar.$2.$1").apply("foo.a.b").as_deref(),
            Some("bar.b.a")
        );
        assert_eq!(
            tr("foo.*.*", "bar.{{wildcard(2)}}.{{ Wildcard(1) }}")
                .apply("foo.a.b")
                .as_deref(),
            Some("bar.b.a")
        );
        assert_eq!(
            tr("foo.>", "bar.>").apply("foo.a.b.c").as_deref(),
            Some("bar.a.b.c")
        );
        assert_eq!(
            tr("foo.*.>", "bar.$1.>").apply("foo.a.b.c").as_deref(),
            Some("bar.a.b.c")
        );
        assert_eq!(tr(">", "x.>").apply("a.b").as_deref(), Some("x.a.b"));
        assert_eq!(tr("", "x.>").apply("a").as_deref(), Some("x.a"));
        assert_eq!(tr("foo", "bar").apply("foo").as_deref(), Some("bar"));
        assert_eq!(tr("foo.*", "bar.$1").apply("baz.a"), None);
        assert_eq!(tr("foo.*", "bar.$1").apply("foo.a.b"), None);
    }

    #[test]
    fn partition_is_nats_servers_fnv() {
        // Values from nats-server's subject_transform_test.go.
        let m = |src: &str, dest: &str, subj: &str| tr(src, dest).apply(subj).expect("matches");
        assert_eq!(m("*", "bar.{{partition(0)}}", "baz"), "bar.0");
        assert_eq!(m("*", "bar.{{partition(10, 0)}}", "foo"), "bar.3");
        assert_eq!(m("*.*", "bar.{{partition(10)}}", "foo.bar"), "bar.6");
        assert_eq!(m("*", "bar.{{partition(10)}}", "foo"), "bar.3");
        assert_eq!(m("*", "bar.{{partition(10)}}", "baz"), "bar.0");
        assert_eq!(m("*", "bar.{{partition(10)}}", "qux"), "bar.9");
        assert_eq!(m("foo.bar", "baz.{{partition(10)}}", "foo.bar"), "baz.6");
        assert_eq!(m("foo.baz", "qux.{{partition(10)}}", "foo.baz"), "qux.4");
        assert_eq!(
            m("test.subject", "result.{{partition(5)}}", "test.subject"),
            "result.0"
        );
        assert_eq!(m("*", "{{ Partition (10,1) }}", "foo"), "3");
    }

    #[test]
    fn string_functions() {
        let t = tr("*", "{{splitfromleft(1,3)}}");
        assert_eq!(t.apply("12345").as_deref(), Some("123.45"));
        let t = tr("*", "{{SplitFromRight(1,3)}}");
        assert_eq!(t.apply("12345").as_deref(), Some("12.345"));
        let t = tr("*", "{{SliceFromLeft(1,3)}}");
        assert_eq!(t.apply("1234567890").as_deref(), Some("123.456.789.0"));
        let t = tr("*", "{{SliceFromRight(1,3)}}");
        assert_eq!(t.apply("1234567890").as_deref(), Some("1.234.567.890"));
        let t = tr("*", "{{split(1,-)}}");
        assert_eq!(t.apply("-abc-def--ghi-").as_deref(), Some("abc.def.ghi"));
        let t = tr("*.*", "{{split(2,-)}}.{{splitfromleft(1,2)}}");
        assert_eq!(
            t.apply("foo.-abc-def--ghij-").as_deref(),
            Some("abc.def.ghij.fo.o")
        );
        let t = tr("*", "{{left(1,2)}}.{{right(1,2)}}");
        assert_eq!(t.apply("12345").as_deref(), Some("12.45"));
        // Too short to cut: the token as it is.
        let t = tr("*", "{{left(1,9)}}");
        assert_eq!(t.apply("12").as_deref(), Some("12"));
        let t = tr("*", "x.{{random(3)}}");
        for _ in 0..20 {
            let got = t.apply("a").expect("matches");
            let n: u32 = got[2..].parse().expect("number");
            assert!(n < 3);
        }
    }

    #[test]
    fn bad_destinations() {
        let err = |s: &str, d: &str| SubjectTransform::new(s, d).expect_err("invalid");
        assert_eq!(err("foo.*", "bar.*"), TransformError::BadSubject);
        assert_eq!(err("foo.>", "bar"), TransformError::BadSubject);
        assert_eq!(
            err("foo.*", "bar.$2").to_string(),
            "invalid mapping destination: wildcard index out of range in $2: [2]"
        );
        assert_eq!(
            err("foo.*", "{{unknown(1)}}").to_string(),
            "invalid mapping destination: unknown function in {{unknown(1)}}"
        );
        assert_eq!(
            err("foo.*", "{{wildcard()}}").to_string(),
            "invalid mapping destination: not enough arguments passed to the function in {{wildcard()}}"
        );
        assert_eq!(
            err("foo.*", "{{wildcard(1,2)}}").to_string(),
            "invalid mapping destination: too many arguments passed to the function in {{wildcard(1,2)}}"
        );
        assert_eq!(
            err("foo.*", "{{left(x,2)}}").to_string(),
            "invalid mapping destination: function argument is invalid or in the wrong format in {{left(x,2)}}"
        );
        // Functions that name a wildcard need the source to have one.
        assert!(SubjectTransform::new("foo", "{{wildcard(1)}}").is_err());
        assert!(SubjectTransform::new("foo", "bar.{{partition(3)}}").is_ok());
        assert_eq!(SubjectTransform::new("foo", "").expect("ok"), None);
        assert!(validate_mapping("foo.*", "bar..x").is_err());
        assert!(validate_mapping("foo.*", "bar.{{nope(1)}}").is_err());
        assert!(validate_mapping("foo.*", "bar.{{wildcard(1)}}").is_ok());
    }
}
