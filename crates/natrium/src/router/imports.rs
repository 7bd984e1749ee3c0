//! Imports between accounts: the `exports`/`imports` config entries and the forwarding
//! subscriptions (`Forward`, with the renaming of `mapping`) that carry messages from one
//! account's trie into another (stream imports live in the exporter's trie, service imports
//! in the importer's; each forwarded request installs a one-shot reply route back).

use std::sync::Arc;
use std::time::Instant;

use super::account::Account;
pub use super::mapping::{wildcard_pattern, Responses, SubjectMap};
pub use super::subscription::{Forward, ForwardKind};
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
