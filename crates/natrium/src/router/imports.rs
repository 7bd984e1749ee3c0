//! Imports between accounts: the `exports`/`imports` config entries, how an import renames
//! subjects on the way (`SubjectMap`), and the forwarding subscriptions that carry messages from
//! one account's trie into another (stream imports live in the exporter's trie, service imports
//! in the importer's; each forwarded request installs a one-shot reply route back).

use std::sync::Arc;
use std::time::{Duration, Instant};

use natrium_subjects::{FWC, PWC, SEP};

use super::account::Account;
use super::subscription::{SubRef, Subscription};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    Stream,
    Service,
}

/// An account's `exports` entry: a subject others may import; `accounts` empty means public.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub kind: ExportKind,
    pub subject: String,
    pub accounts: Vec<String>,
}

/// An account's `imports` entry: `subject` of `account`, seen locally as `to` (or with `prefix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    pub kind: ExportKind,
    pub account: String,
    pub subject: String,
    pub to: Option<String>,
    pub prefix: Option<String>,
}

/// An import the exporter does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "account {importer:?}: import of {subject:?} from account {exporter:?} is not exported to it"
)]
pub struct NotExported {
    pub importer: String,
    pub subject: String,
    pub exporter: String,
}

/// Whether `exports` (of another account) allow `importer` to import `imp`.
pub fn allowed(exports: &[Export], importer: &str, imp: &Import) -> bool {
    exports.iter().any(|x| {
        x.kind == imp.kind
            && natrium_subjects::is_subset(imp.subject.as_bytes(), x.subject.as_bytes())
            && (x.accounts.is_empty() || x.accounts.iter().any(|a| a == importer))
    })
}

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

/// An installed import: the forwarding subscription and the account whose trie holds it, so it
/// can be taken out again (an account JWT's imports change when the JWT does).
pub struct Installed {
    pub holder: Arc<Account>,
    pub sub: SubRef,
}

impl Installed {
    /// Removes the import's subscription: messages stop crossing it at once.
    pub fn remove(&self) {
        self.holder.remove(&self.sub);
    }
}

/// Installs one import of `importer` from `exporter` as a forwarding subscription (a service
/// export's answers as `Responses::default()`: one per request).
pub fn install(importer: &Arc<Account>, exporter: &Arc<Account>, imp: &Import) -> Installed {
    install_with(importer, exporter, imp, Responses::default())
}

/// Installs one import, its service answers handled as `responses` says.
pub fn install_with(
    importer: &Arc<Account>,
    exporter: &Arc<Account>,
    imp: &Import,
    responses: Responses,
) -> Installed {
    match imp.kind {
        ExportKind::Stream => {
            let map = SubjectMap::new(&imp.subject, imp.to.as_deref(), imp.prefix.as_deref());
            let sub = Subscription::forward(
                imp.subject.as_bytes(),
                Forward {
                    to: importer.clone(),
                    map,
                    kind: ForwardKind::Stream,
                },
                0,
            );
            exporter.insert(sub.clone());
            Installed {
                holder: exporter.clone(),
                sub,
            }
        }
        ExportKind::Service => {
            let local = imp.to.clone().unwrap_or_else(|| imp.subject.clone());
            // Local subjects may name the wildcards they capture (`$1`); they subscribe as `*`.
            let pattern = wildcard_pattern(&local);
            let map = SubjectMap::new(&local, Some(&imp.subject), None);
            let sub = Subscription::forward(
                pattern.as_bytes(),
                Forward {
                    to: exporter.clone(),
                    map,
                    kind: ForwardKind::Service {
                        importer: importer.clone(),
                        responses,
                    },
                },
                0,
            );
            importer.insert(sub.clone());
            Installed {
                holder: importer.clone(),
                sub,
            }
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

/// Routes the answers published in `exporter` on `reply` back to `importer` (a service import's
/// reply path: one answer, or any number until the threshold), and sweeps the exporter's reply
/// routes whose time is up.
pub fn add_response_route(
    exporter: &Account,
    reply: &[u8],
    importer: Arc<Account>,
    responses: Responses,
) {
    let route = Subscription::forward(
        reply,
        Forward {
            to: importer,
            map: SubjectMap::Identity,
            kind: ForwardKind::Response,
        },
        if responses.multiple { 0 } else { 1 },
    );
    exporter.insert(route.clone());
    let now = Instant::now();
    let mut expired = Vec::new();
    {
        let mut q = exporter.responses.lock();
        while q.front().is_some_and(|(until, _)| *until <= now) {
            if let Some((_, s)) = q.pop_front() {
                expired.push(s);
            }
        }
        q.push_back((now + responses.threshold, route));
    }
    for s in &expired {
        exporter.remove(s);
    }
}

/// What an import's internal subscription does with a message.
pub struct Forward {
    /// The account the message is published into.
    pub to: Arc<Account>,
    pub map: SubjectMap,
    pub kind: ForwardKind,
}

impl Forward {
    /// Whether this forwards service requests (resolved where they are published).
    pub fn is_service(&self) -> bool {
        matches!(self.kind, ForwardKind::Service { .. })
    }
}

pub enum ForwardKind {
    /// A stream import: messages flow from exporter to importer.
    Stream,
    /// A service import: requests flow from importer to exporter; answers come back to `importer`.
    Service {
        importer: Arc<Account>,
        responses: Responses,
    },
    /// The reply path of a service request.
    Response,
}

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
