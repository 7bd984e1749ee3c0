//! Per-subject state: each distinct subject gets a small id (stored per record in the engine's
//! index) and a count with bounds on its first and last sequence.
//!
//! `first` is a lower bound and `last` an upper bound of the subject's live sequences; the engine
//! tightens them lazily by scanning its index, so removals stay O(1).

use std::sync::Arc;

use rustc_hash::FxHashMap;

#[derive(Debug, Clone)]
pub(crate) struct SubjectInfo {
    pub name: Arc<[u8]>,
    pub msgs: u64,
    pub first: u64,
    pub last: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Subjects {
    ids: FxHashMap<Arc<[u8]>, u32>,
    info: Vec<Option<SubjectInfo>>,
    free: Vec<u32>,
}

impl Subjects {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn id(&self, subject: &[u8]) -> Option<u32> {
        self.ids.get(subject).copied()
    }

    pub fn get(&self, id: u32) -> Option<&SubjectInfo> {
        self.info.get(id as usize).and_then(Option::as_ref)
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut SubjectInfo> {
        self.info.get_mut(id as usize).and_then(Option::as_mut)
    }

    /// Count a new message `seq` on `subject`; returns the subject's id.
    pub fn add(&mut self, subject: &[u8], seq: u64) -> u32 {
        if let Some(id) = self.id(subject) {
            if let Some(s) = self.get_mut(id) {
                s.msgs += 1;
                s.last = seq;
                if s.msgs == 1 {
                    s.first = seq;
                }
            }
            return id;
        }
        self.insert(Arc::from(subject), seq)
    }

    /// A new subject with one message, `seq`.
    fn insert(&mut self, name: Arc<[u8]>, seq: u64) -> u32 {
        let info = SubjectInfo {
            name: name.clone(),
            msgs: 1,
            first: seq,
            last: seq,
        };
        let id = match self.free.pop() {
            Some(id) => {
                if let Some(slot) = self.info.get_mut(id as usize) {
                    *slot = Some(info);
                }
                id
            }
            None => {
                self.info.push(Some(info));
                (self.info.len() - 1) as u32
            }
        };
        self.ids.insert(name, id);
        id
    }

    /// Count `n` messages of `subject` whose sequences lie in `first ..= last` (a block's share,
    /// on open); returns the subject's id.
    pub fn add_n(&mut self, subject: &Arc<[u8]>, n: u64, first: u64, last: u64) -> u32 {
        if let Some(id) = self.id(subject) {
            if let Some(s) = self.get_mut(id) {
                if s.msgs == 0 {
                    (s.first, s.last) = (first, last);
                } else {
                    s.first = s.first.min(first);
                    s.last = s.last.max(last);
                }
                s.msgs += n;
            }
            return id;
        }
        let id = self.insert(subject.clone(), first);
        if let Some(s) = self.get_mut(id) {
            s.msgs = n;
            s.last = last;
        }
        id
    }

    /// Room for `n` more subjects.
    pub fn reserve(&mut self, n: usize) {
        self.ids.reserve(n);
        self.info.reserve(n);
    }

    /// Uncount `n` messages of subject `id` (lost to damage found after open); the bounds stay.
    pub fn remove_n(&mut self, id: u32, n: u64) {
        let Some(slot) = self.info.get_mut(id as usize) else {
            return;
        };
        let Some(s) = slot.as_mut() else { return };
        s.msgs = s.msgs.saturating_sub(n);
        if s.msgs == 0 {
            self.ids.remove(&s.name);
            *slot = None;
            self.free.push(id);
        }
    }

    /// Uncount message `seq` of subject `id`.
    pub fn remove(&mut self, id: u32, seq: u64) {
        let Some(slot) = self.info.get_mut(id as usize) else {
            return;
        };
        let Some(s) = slot.as_mut() else { return };
        s.msgs = s.msgs.saturating_sub(1);
        if s.msgs == 0 {
            self.ids.remove(&s.name);
            *slot = None;
            self.free.push(id);
            return;
        }
        if seq == s.first {
            s.first = seq + 1;
        }
        if seq == s.last {
            s.last = seq - 1;
        }
    }

    pub fn clear(&mut self) {
        *self = Subjects::default();
    }

    /// Ids of live subjects matching `filter` (empty or `>` match everything).
    pub fn matching(&self, filter: &[u8]) -> Vec<u32> {
        let all = is_all(filter);
        self.ids
            .iter()
            .filter(|(name, _)| all || natrium_subjects::matches(filter, name))
            .map(|(_, id)| *id)
            .collect()
    }

    /// A bitmap over ids for fast per-record tests.
    pub fn match_mask(&self, filter: &[u8]) -> Vec<bool> {
        let mut mask = vec![false; self.info.len()];
        for id in self.matching(filter) {
            if let Some(m) = mask.get_mut(id as usize) {
                *m = true;
            }
        }
        mask
    }
}

/// Whether a filter selects every subject.
pub(crate) fn is_all(filter: &[u8]) -> bool {
    filter.is_empty() || filter == b">"
}
