//! Publish and subscribe permissions: the configured lists (`Permissions`, as the config file
//! and user JWTs give them) compiled for one connection (allow/deny, queue-aware for subscribe,
//! a per-connection publish decision cache), and the reply subjects a client may answer under
//! `allow_responses`. Below the router: it imports nothing from the rest of the crate.

use std::time::{Duration, Instant};

use natrium_subjects::{is_subset, matches, overlaps};
use rustc_hash::FxHashMap;

/// Allow and deny lists for one direction. `allow: None` allows everything not denied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectPermission {
    pub allow: Option<Vec<String>>,
    pub deny: Vec<String>,
}

/// Permission to publish to the reply subjects of requests received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponsePermission {
    /// Responses allowed per request.
    pub max: usize,
    /// How long a reply subject stays open; zero means until used.
    pub expires: Duration,
}

/// A user's permissions, as configured (`permissions {}`) or granted by a user JWT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Option<SubjectPermission>,
    pub subscribe: Option<SubjectPermission>,
    pub allow_responses: Option<ResponsePermission>,
}

/// One permission entry: a subject pattern and, for subscribe entries, an optional queue pattern.
#[derive(Debug, Clone)]
struct Entry {
    subject: Box<[u8]>,
    queue: Option<Box<[u8]>>,
}

impl Entry {
    fn parse(s: &str) -> Entry {
        let mut parts = s.split_whitespace();
        let subject = parts.next().unwrap_or("").as_bytes().into();
        let queue = parts.next().map(|q| q.as_bytes().into());
        Entry { subject, queue }
    }

    /// Whether this entry covers a subscription's queue (an entry without a queue covers all).
    fn covers_queue(&self, queue: Option<&[u8]>) -> bool {
        match (&self.queue, queue) {
            (None, _) => true,
            (Some(pq), Some(q)) => matches(pq, q),
            (Some(_), None) => false,
        }
    }
}

#[derive(Debug, Clone)]
struct Set {
    allow: Option<Vec<Entry>>,
    deny: Vec<Entry>,
}

impl Set {
    fn compile(p: &SubjectPermission) -> Set {
        Set {
            allow: p
                .allow
                .as_ref()
                .map(|a| a.iter().map(|s| Entry::parse(s)).collect()),
            deny: p.deny.iter().map(|s| Entry::parse(s)).collect(),
        }
    }
}

/// The outcome of a subscribe check.
#[derive(Debug, PartialEq, Eq)]
pub enum SubDecision {
    Allowed,
    Denied,
    /// Allowed, but messages on these denied subjects must not be delivered to it.
    AllowedExcept(Vec<Box<[u8]>>),
}

const PUB_CACHE_MAX: usize = 1024;

/// A connection's permissions.
#[derive(Debug)]
pub struct ClientPerms {
    publish: Option<Set>,
    subscribe: Option<Set>,
    pub responses: Option<ResponsePermission>,
    pub_cache: FxHashMap<Box<[u8]>, bool>,
}

impl ClientPerms {
    pub fn new(p: &Permissions) -> ClientPerms {
        ClientPerms {
            publish: p.publish.as_ref().map(Set::compile),
            subscribe: p.subscribe.as_ref().map(Set::compile),
            responses: p.allow_responses.clone(),
            pub_cache: FxHashMap::default(),
        }
    }

    /// Whether the client may publish to literal `subject` (response permissions checked apart).
    pub fn can_publish(&mut self, subject: &[u8]) -> bool {
        let Some(set) = &self.publish else {
            return true;
        };
        if let Some(ok) = self.pub_cache.get(subject) {
            return *ok;
        }
        let allowed = set
            .allow
            .as_ref()
            .is_none_or(|a| a.iter().any(|e| matches(&e.subject, subject)))
            && !set.deny.iter().any(|e| matches(&e.subject, subject));
        if self.pub_cache.len() >= PUB_CACHE_MAX {
            self.pub_cache.clear();
        }
        self.pub_cache.insert(subject.into(), allowed);
        allowed
    }

    /// Whether a publish permission list exists at all (response tracking only matters then).
    pub fn restricts_publish(&self) -> bool {
        self.publish.is_some()
    }

    pub fn check_subscribe(&self, subject: &[u8], queue: Option<&[u8]>) -> SubDecision {
        let Some(set) = &self.subscribe else {
            return SubDecision::Allowed;
        };
        if let Some(allow) = &set.allow {
            if !allow
                .iter()
                .any(|e| e.covers_queue(queue) && is_subset(subject, &e.subject))
            {
                return SubDecision::Denied;
            }
        }
        let mut partial = Vec::new();
        for e in set.deny.iter().filter(|e| e.covers_queue(queue)) {
            if is_subset(subject, &e.subject) {
                return SubDecision::Denied;
            }
            if overlaps(subject, &e.subject) {
                partial.push(e.subject.clone());
            }
        }
        if partial.is_empty() {
            SubDecision::Allowed
        } else {
            SubDecision::AllowedExcept(partial)
        }
    }
}

/// Reply subjects a client may publish to once (or `max` times) because it received a request.
#[derive(Debug, Default)]
pub struct ResponseGrants {
    grants: FxHashMap<Box<[u8]>, (usize, Option<Instant>)>,
}

const RESPONSE_GRANTS_MAX: usize = 64 * 1024;

impl ResponseGrants {
    pub fn grant(&mut self, reply: &[u8], p: &ResponsePermission) {
        if self.grants.len() >= RESPONSE_GRANTS_MAX {
            let now = Instant::now();
            self.grants
                .retain(|_, (_, exp)| exp.is_none_or(|e| e > now));
        }
        let expiry = (p.expires > Duration::ZERO).then(|| Instant::now() + p.expires);
        self.grants.insert(reply.into(), (p.max, expiry));
    }

    /// Uses one grant for `subject`, if there is a live one.
    pub fn take(&mut self, subject: &[u8]) -> bool {
        let Some((left, expiry)) = self.grants.get_mut(subject) else {
            return false;
        };
        if expiry.is_some_and(|e| e <= Instant::now()) {
            self.grants.remove(subject);
            return false;
        }
        *left -= 1;
        if *left == 0 {
            self.grants.remove(subject);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perms(
        pub_allow: Option<&[&str]>,
        pub_deny: &[&str],
        sub_allow: Option<&[&str]>,
        sub_deny: &[&str],
    ) -> ClientPerms {
        let set = |a: Option<&[&str]>, d: &[&str]| SubjectPermission {
            allow: a.map(|a| a.iter().map(|s| s.to_string()).collect()),
            deny: d.iter().map(|s| s.to_string()).collect(),
        };
        ClientPerms::new(&Permissions {
            publish: Some(set(pub_allow, pub_deny)),
            subscribe: Some(set(sub_allow, sub_deny)),
            allow_responses: None,
        })
    }

    #[test]
    fn publish_allow_and_deny() {
        let mut p = perms(Some(&["tenant.a.>"]), &["tenant.a.secret"], None, &[]);
        assert!(p.can_publish(b"tenant.a.x"));
        assert!(p.can_publish(b"tenant.a.x"), "cached answer is the same");
        assert!(!p.can_publish(b"tenant.b.x"));
        assert!(!p.can_publish(b"tenant.a.secret"));
        let mut p = perms(None, &["admin.>"], None, &[]);
        assert!(p.can_publish(b"anything"));
        assert!(!p.can_publish(b"admin.x"));
    }

    #[test]
    fn subscribe_is_queue_aware_and_filters_partial_denies() {
        let p = perms(None, &[], Some(&["tenant.a.>", "jobs workers"]), &[]);
        assert_eq!(p.check_subscribe(b"tenant.a.*", None), SubDecision::Allowed);
        assert_eq!(p.check_subscribe(b"tenant.>", None), SubDecision::Denied);
        assert_eq!(
            p.check_subscribe(b"jobs", Some(b"workers")),
            SubDecision::Allowed
        );
        assert_eq!(p.check_subscribe(b"jobs", None), SubDecision::Denied);
        assert_eq!(
            p.check_subscribe(b"jobs", Some(b"others")),
            SubDecision::Denied
        );
        let p = perms(None, &[], None, &["secret.>"]);
        assert_eq!(p.check_subscribe(b"secret.x", None), SubDecision::Denied);
        assert_eq!(
            p.check_subscribe(b">", None),
            SubDecision::AllowedExcept(vec![b"secret.>".to_vec().into()])
        );
    }

    #[test]
    fn response_grants_are_used_up() {
        let mut g = ResponseGrants::default();
        let p = ResponsePermission {
            max: 2,
            expires: Duration::ZERO,
        };
        g.grant(b"_INBOX.1", &p);
        assert!(g.take(b"_INBOX.1"));
        assert!(g.take(b"_INBOX.1"));
        assert!(!g.take(b"_INBOX.1"));
        assert!(!g.take(b"_INBOX.2"));
    }
}
