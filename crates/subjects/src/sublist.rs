//! `Sublist`: a trie of subscriptions keyed by subject tokens, with `*` and `>` branches at each
//! level. Matching walks literal, `*` and `>` branches; `generation` changes on every insert or
//! removal so callers can cache match results and know when the cache is stale.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{FWC, PWC, SEP};

/// All subscriptions matching one subject: plain ones, and queue subscriptions grouped by queue
/// name (one group may gather members subscribed on different patterns).
#[derive(Debug, Clone)]
pub struct Matches<T> {
    pub plain: Vec<T>,
    pub queues: Vec<(Box<[u8]>, Vec<T>)>,
}

impl<T> Default for Matches<T> {
    fn default() -> Self {
        Matches {
            plain: Vec::new(),
            queues: Vec::new(),
        }
    }
}

impl<T> Matches<T> {
    pub fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.queues.is_empty()
    }
}

struct Level<T> {
    literal: HashMap<Box<[u8]>, Node<T>>,
    pwc: Option<Box<Node<T>>>,
    fwc: Option<Box<Node<T>>>,
}

impl<T> Default for Level<T> {
    fn default() -> Self {
        Level {
            literal: HashMap::new(),
            pwc: None,
            fwc: None,
        }
    }
}

impl<T> Level<T> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.pwc.is_none() && self.fwc.is_none()
    }
}

struct Node<T> {
    next: Option<Box<Level<T>>>,
    plain: Vec<T>,
    queues: Vec<(Box<[u8]>, Vec<T>)>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            next: None,
            plain: Vec::new(),
            queues: Vec::new(),
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.queues.is_empty() && self.next.is_none()
    }
}

/// The subscription trie. Not synchronised itself: owners wrap it in a lock and read
/// `generation()` without it.
pub struct Sublist<T> {
    root: Level<T>,
    count: usize,
    generation: AtomicU64,
}

impl<T> Default for Sublist<T> {
    fn default() -> Self {
        Sublist {
            root: Level::default(),
            count: 0,
            generation: AtomicU64::new(0),
        }
    }
}

impl<T: Clone + PartialEq> Sublist<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of subscriptions held.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Changes whenever the set of subscriptions changes.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Adds `item` under `subject` (assumed valid), in queue group `queue` if given.
    pub fn insert(&mut self, subject: &[u8], queue: Option<&[u8]>, item: T) {
        let mut level = &mut self.root;
        let mut tokens = subject.split(|c| *c == SEP).peekable();
        loop {
            let Some(token) = tokens.next() else { return };
            let node = if token == [PWC] {
                level.pwc.get_or_insert_with(Box::default).as_mut()
            } else if token == [FWC] {
                level.fwc.get_or_insert_with(Box::default).as_mut()
            } else {
                level.literal.entry(token.into()).or_default()
            };
            if tokens.peek().is_none() {
                match queue {
                    None => node.plain.push(item),
                    Some(q) => match node.queues.iter_mut().find(|(name, _)| &**name == q) {
                        Some((_, members)) => members.push(item),
                        None => node.queues.push((q.into(), vec![item])),
                    },
                }
                self.count += 1;
                self.generation.fetch_add(1, Ordering::AcqRel);
                return;
            }
            level = node.next.get_or_insert_with(Box::default);
        }
    }

    /// Removes `item` from `subject`/`queue`; returns whether it was there. Empty nodes are pruned.
    pub fn remove(&mut self, subject: &[u8], queue: Option<&[u8]>, item: &T) -> bool {
        let tokens: Vec<&[u8]> = subject.split(|c| *c == SEP).collect();
        let removed = remove_in(&mut self.root, &tokens, queue, item);
        if removed {
            self.count -= 1;
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        removed
    }

    /// Every subscription matching the literal `subject`.
    pub fn matches(&self, subject: &[u8]) -> Matches<T> {
        let mut out = Matches::default();
        let tokens: Vec<&[u8]> = subject.split(|c| *c == SEP).collect();
        match_level(&self.root, &tokens, &mut out);
        out
    }

    /// Visits every subscription with its subject pattern and queue.
    pub fn for_each(&self, mut f: impl FnMut(&[u8], Option<&[u8]>, &T)) {
        let mut path = Vec::new();
        walk(&self.root, &mut path, &mut f);
    }
}

fn walk<T>(level: &Level<T>, path: &mut Vec<u8>, f: &mut impl FnMut(&[u8], Option<&[u8]>, &T)) {
    let branches = level
        .literal
        .iter()
        .map(|(k, n)| (&**k, n))
        .chain(level.pwc.as_deref().map(|n| (&[PWC][..], n)))
        .chain(level.fwc.as_deref().map(|n| (&[FWC][..], n)));
    for (token, node) in branches {
        let mark = path.len();
        if !path.is_empty() {
            path.push(SEP);
        }
        path.extend_from_slice(token);
        for item in &node.plain {
            f(path, None, item);
        }
        for (q, members) in &node.queues {
            for item in members {
                f(path, Some(q), item);
            }
        }
        if let Some(next) = &node.next {
            walk(next, path, f);
        }
        path.truncate(mark);
    }
}

fn add_node<T: Clone>(node: &Node<T>, out: &mut Matches<T>) {
    out.plain.extend(node.plain.iter().cloned());
    for (name, members) in &node.queues {
        match out.queues.iter_mut().find(|(n, _)| n == name) {
            Some((_, all)) => all.extend(members.iter().cloned()),
            None => out.queues.push((name.clone(), members.clone())),
        }
    }
}

fn match_level<T: Clone>(level: &Level<T>, tokens: &[&[u8]], out: &mut Matches<T>) {
    let Some((token, rest)) = tokens.split_first() else {
        return;
    };
    if let Some(fwc) = &level.fwc {
        add_node(fwc, out);
    }
    if let Some(pwc) = &level.pwc {
        match_node(pwc, rest, out);
    }
    if let Some(node) = level.literal.get(*token) {
        match_node(node, rest, out);
    }
}

fn match_node<T: Clone>(node: &Node<T>, rest: &[&[u8]], out: &mut Matches<T>) {
    if rest.is_empty() {
        add_node(node, out);
    } else if let Some(next) = &node.next {
        match_level(next, rest, out);
    }
}

fn remove_in<T: PartialEq>(
    level: &mut Level<T>,
    tokens: &[&[u8]],
    queue: Option<&[u8]>,
    item: &T,
) -> bool {
    let Some((token, rest)) = tokens.split_first() else {
        return false;
    };
    let slot: &mut Option<Box<Node<T>>>;
    let node: &mut Node<T> = if *token == [PWC] {
        slot = &mut level.pwc;
        match slot.as_deref_mut() {
            Some(n) => n,
            None => return false,
        }
    } else if *token == [FWC] {
        slot = &mut level.fwc;
        match slot.as_deref_mut() {
            Some(n) => n,
            None => return false,
        }
    } else {
        match level.literal.get_mut(*token) {
            Some(n) => n,
            None => return false,
        }
    };
    let removed = if rest.is_empty() {
        remove_item(node, queue, item)
    } else {
        match node.next.as_deref_mut() {
            Some(next) => {
                let r = remove_in(next, rest, queue, item);
                if next.is_empty() {
                    node.next = None;
                }
                r
            }
            None => false,
        }
    };
    if removed && node.is_empty() {
        if *token == [PWC] {
            level.pwc = None;
        } else if *token == [FWC] {
            level.fwc = None;
        } else {
            level.literal.remove(*token);
        }
    }
    removed
}

fn remove_item<T: PartialEq>(node: &mut Node<T>, queue: Option<&[u8]>, item: &T) -> bool {
    match queue {
        None => match node.plain.iter().position(|x| x == item) {
            Some(i) => {
                node.plain.swap_remove(i);
                true
            }
            None => false,
        },
        Some(q) => {
            let Some(gi) = node.queues.iter().position(|(n, _)| &**n == q) else {
                return false;
            };
            let members = &mut node.queues[gi].1;
            let Some(i) = members.iter().position(|x| x == item) else {
                return false;
            };
            members.swap_remove(i);
            if members.is_empty() {
                node.queues.swap_remove(gi);
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matches;
    use proptest::prelude::*;

    fn sorted(mut v: Vec<u32>) -> Vec<u32> {
        v.sort_unstable();
        v
    }

    #[test]
    fn insert_match_remove() {
        let mut s = Sublist::new();
        s.insert(b"foo.bar", None, 1);
        s.insert(b"foo.*", None, 2);
        s.insert(b"foo.>", None, 3);
        s.insert(b">", None, 4);
        s.insert(b"foo.bar", Some(b"q"), 5);
        s.insert(b"*.bar", Some(b"q"), 6);
        s.insert(b"foo.bar", Some(b"r"), 7);
        assert_eq!(s.len(), 7);
        let m = s.matches(b"foo.bar");
        assert_eq!(sorted(m.plain.clone()), vec![1, 2, 3, 4]);
        let q: Vec<_> = m
            .queues
            .iter()
            .map(|(n, v)| (n.to_vec(), sorted(v.clone())))
            .collect();
        assert!(q.contains(&(b"q".to_vec(), vec![5, 6])));
        assert!(q.contains(&(b"r".to_vec(), vec![7])));
        assert_eq!(sorted(s.matches(b"foo.baz.x").plain), vec![3, 4]);
        assert_eq!(sorted(s.matches(b"foo").plain), vec![4]);
        let g = s.generation();
        assert!(s.remove(b"foo.*", None, &2));
        assert!(!s.remove(b"foo.*", None, &2));
        assert!(!s.remove(b"nope.x", None, &2));
        assert!(s.generation() > g);
        assert!(s.remove(b"*.bar", Some(b"q"), &6));
        assert_eq!(sorted(s.matches(b"foo.bar").plain), vec![1, 3, 4]);
        for (subj, q, id) in [
            (&b"foo.bar"[..], None, 1),
            (b"foo.>", None, 3),
            (b">", None, 4),
            (b"foo.bar", Some(&b"q"[..]), 5),
            (b"foo.bar", Some(b"r"), 7),
        ] {
            assert!(s.remove(subj, q, &id));
        }
        assert!(s.is_empty());
        assert!(s.root.is_empty(), "empty nodes are pruned");
    }

    #[test]
    fn for_each_reports_patterns() {
        let mut s = Sublist::new();
        s.insert(b"a.*.c", None, 1);
        s.insert(b"a.>", Some(b"g"), 2);
        let mut seen = Vec::new();
        s.for_each(|subj, q, v| seen.push((subj.to_vec(), q.map(<[u8]>::to_vec), *v)));
        seen.sort();
        assert_eq!(
            seen,
            vec![
                (b"a.*.c".to_vec(), None, 1),
                (b"a.>".to_vec(), Some(b"g".to_vec()), 2)
            ]
        );
    }

    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("c".to_string())
        ]
    }

    fn pattern() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec(prop_oneof![token(), Just("*".to_string())], 0..3),
            prop_oneof![token(), Just("*".to_string()), Just(">".to_string())],
        )
            .prop_map(|(mut v, last)| {
                v.push(last);
                v.join(".")
            })
    }

    fn literal() -> impl Strategy<Value = String> {
        proptest::collection::vec(token(), 1..5).prop_map(|v| v.join("."))
    }

    proptest! {
        /// The trie agrees with the naive matcher after random inserts and removals.
        #[test]
        fn agrees_with_naive_matcher(
            subs in proptest::collection::vec((pattern(), proptest::option::of(token())), 1..40),
            removals in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
            subjects in proptest::collection::vec(literal(), 1..20),
        ) {
            let mut trie = Sublist::new();
            let mut live: Vec<(String, Option<String>, u32)> = Vec::new();
            for (i, (p, q)) in subs.iter().enumerate() {
                trie.insert(p.as_bytes(), q.as_deref().map(str::as_bytes), i as u32);
                live.push((p.clone(), q.clone(), i as u32));
            }
            for r in removals {
                if live.is_empty() { break; }
                let (p, q, id) = live.remove(r.index(live.len()));
                prop_assert!(trie.remove(p.as_bytes(), q.as_deref().map(str::as_bytes), &id));
            }
            prop_assert_eq!(trie.len(), live.len());
            for subject in &subjects {
                let m = trie.matches(subject.as_bytes());
                let mut got: Vec<(Option<String>, u32)> = m.plain.iter().map(|id| (None, *id)).collect();
                for (q, members) in &m.queues {
                    let q = String::from_utf8(q.to_vec()).expect("utf8");
                    got.extend(members.iter().map(|id| (Some(q.clone()), *id)));
                }
                got.sort();
                let mut want: Vec<(Option<String>, u32)> = live.iter()
                    .filter(|(p, _, _)| matches(p.as_bytes(), subject.as_bytes()))
                    .map(|(_, q, id)| (q.clone(), *id))
                    .collect();
                want.sort();
                prop_assert_eq!(got, want, "subject {}", subject);
            }
        }
    }
}
