//! A block as the engine sees it: a few always-present figures (`Block`) and, loaded on demand,
//! its record index (`Index`): offsets, each record's subject in the block's local numbering,
//! and a bitmap of removed or lost records.

use std::sync::Arc;

use rustc_hash::FxHashMap;

/// A global subject id that names no subject.
pub(crate) const NO_SUBJECT: u32 = u32::MAX;

/// One of a block's subjects: its name and, while the subject has messages, its global id.
#[derive(Debug, Clone)]
pub(crate) struct Local {
    pub name: Arc<[u8]>,
    pub id: u32,
}

/// The index of one block's records.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// Byte offset of each record, by `seq - start`.
    pub offsets: Vec<u32>,
    /// Local subject of each record, as narrow as the block's subjects allow.
    pub subj: LocalIds,
    pub locals: Vec<Local>,
    /// Bitmap of removed (or lost) records.
    pub dead: Vec<u64>,
    /// End of the last message record.
    pub end: u32,
    /// Lookups for the block taking appends.
    pub appends: Option<Box<AppendMaps>>,
}

/// The block taking appends finds a subject's local by its global id (one integer hash), or by
/// name when the id is not known here or names another subject now (ids are reused).
#[derive(Debug, Default)]
pub(crate) struct AppendMaps {
    by_id: FxHashMap<u32, u32>,
    by_name: FxHashMap<Arc<[u8]>, u32>,
}

impl Index {
    pub fn count(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_dead(&self, i: usize) -> bool {
        self.dead
            .get(i / 64)
            .is_none_or(|w| w & (1 << (i % 64)) != 0)
    }

    /// Marks record `i` dead; returns whether it was live.
    pub fn set_dead(&mut self, i: usize) -> bool {
        match self.dead.get_mut(i / 64) {
            Some(w) if *w & (1 << (i % 64)) == 0 => {
                *w |= 1 << (i % 64);
                true
            }
            _ => false,
        }
    }

    pub fn local(&self, i: usize) -> u32 {
        self.subj.get(i)
    }

    /// Global subject id of record `i` (`NO_SUBJECT` if unknown).
    pub fn subject(&self, i: usize) -> u32 {
        self.locals
            .get(self.local(i) as usize)
            .map_or(NO_SUBJECT, |l| l.id)
    }

    /// Add a record at byte `at`, `size` bytes long, of local subject `local`.
    pub fn push(&mut self, at: u32, local: u32, size: u32, dead: bool) {
        let i = self.count();
        if i & 63 == 0 {
            self.dead.push(0);
        }
        self.offsets.push(at);
        self.subj.push(i, local);
        if dead {
            self.set_dead(i);
        }
        self.end = at + size;
    }

    /// (offset, length) of record `i`.
    pub fn range(&self, i: usize) -> (u32, u32) {
        let at = self.offsets.get(i).copied().unwrap_or(0);
        let end = self.offsets.get(i + 1).copied().unwrap_or(self.end);
        (at, end.saturating_sub(at))
    }

    /// The local for subject `name` (global id `id`), added if new (the block taking appends).
    pub fn local_for(&mut self, name: &Arc<[u8]>, id: u32) -> u32 {
        let locals = &mut self.locals;
        let maps = self.appends.get_or_insert_with(|| {
            let mut m = AppendMaps::default();
            for (l, x) in locals.iter().enumerate() {
                m.by_name.insert(x.name.clone(), l as u32);
                if x.id != NO_SUBJECT {
                    m.by_id.insert(x.id, l as u32);
                }
            }
            Box::new(m)
        });
        if let Some(&l) = maps.by_id.get(&id) {
            if locals
                .get(l as usize)
                .is_some_and(|x| Arc::ptr_eq(&x.name, name))
            {
                return l;
            }
        }
        let l = match maps.by_name.get(name) {
            Some(&l) => {
                if let Some(x) = locals.get_mut(l as usize) {
                    // Share the global table's name (and take the subject's current id).
                    x.id = id;
                    x.name = name.clone();
                }
                l
            }
            None => {
                let l = locals.len() as u32;
                maps.by_name.insert(name.clone(), l);
                locals.push(Local {
                    name: name.clone(),
                    id,
                });
                l
            }
        };
        maps.by_id.insert(id, l);
        l
    }

    /// Approximate heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.offsets.capacity() * 4
            + self.subj.heap_bytes()
            + self.dead.capacity() * 8
            + self.locals.capacity() * std::mem::size_of::<Local>()
            + self
                .appends
                .as_ref()
                .map_or(0, |m| m.by_id.capacity() * 8 + m.by_name.capacity() * 24)
    }
}

/// The local subject of each record: nothing while every record has local 0 (one subject),
/// else one byte per record, or two, or four, as the block's subjects need.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) enum LocalIds {
    #[default]
    Zero,
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
}

impl LocalIds {
    /// From one local per record (empty: all 0).
    pub fn from_vec(v: Vec<u32>) -> Self {
        match v.iter().copied().max() {
            None | Some(0) => LocalIds::Zero,
            Some(0..=0xff) => LocalIds::U8(v.into_iter().map(|x| x as u8).collect()),
            Some(0x100..=0xffff) => LocalIds::U16(v.into_iter().map(|x| x as u16).collect()),
            Some(_) => LocalIds::U32(v),
        }
    }

    /// One local per record (empty when all are 0).
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            LocalIds::Zero => Vec::new(),
            LocalIds::U8(v) => v.iter().map(|x| u32::from(*x)).collect(),
            LocalIds::U16(v) => v.iter().map(|x| u32::from(*x)).collect(),
            LocalIds::U32(v) => v.clone(),
        }
    }

    pub fn get(&self, i: usize) -> u32 {
        match self {
            LocalIds::Zero => 0,
            LocalIds::U8(v) => v.get(i).map_or(0, |x| u32::from(*x)),
            LocalIds::U16(v) => v.get(i).map_or(0, |x| u32::from(*x)),
            LocalIds::U32(v) => v.get(i).copied().unwrap_or(0),
        }
    }

    /// Set record `i`'s local (records are added in order: `i` is the count so far).
    pub fn push(&mut self, i: usize, local: u32) {
        let fits = match self {
            LocalIds::Zero => local == 0,
            LocalIds::U8(_) => local <= 0xff,
            LocalIds::U16(_) => local <= 0xffff,
            LocalIds::U32(_) => true,
        };
        if !fits {
            let mut all = self.to_vec();
            all.resize(i, 0);
            all.push(local);
            *self = LocalIds::from_vec(all);
            return;
        }
        match self {
            LocalIds::Zero => {}
            LocalIds::U8(v) => v.push(local as u8),
            LocalIds::U16(v) => v.push(local as u16),
            LocalIds::U32(v) => v.push(local),
        }
    }

    pub fn heap_bytes(&self) -> usize {
        match self {
            LocalIds::Zero => 0,
            LocalIds::U8(v) => v.capacity(),
            LocalIds::U16(v) => v.capacity() * 2,
            LocalIds::U32(v) => v.capacity() * 4,
        }
    }
}

/// What the engine always knows about a block, loaded or not.
#[derive(Debug)]
pub(crate) struct Block {
    pub start: u64,
    /// Records (sequences `start .. start + count`), lost ones included.
    pub count: u32,
    /// Bytes in the block, markers included.
    pub len: u32,
    pub live: u32,
    pub live_bytes: u64,
    /// No live record has a lower sequence.
    pub first_live: u64,
    /// Timestamp of the record at `start`, `i64::MIN` if unknown.
    pub first_ts: i64,
    /// Newest timestamp in the block.
    pub last_ts: i64,
    /// Offset of the index record when the block ends with its seal (index and summary); the
    /// index can then be dropped and read back. 0: not sealed that way.
    pub seal_at: u32,
    /// Every record's checksum was checked since the store was opened.
    pub verified: bool,
    /// A read failed its checksum: verify the whole block soon.
    pub suspect: bool,
    /// While not loaded: global ids of the subjects that may have live records here (None: many
    /// or not known).
    pub few: Option<Vec<u32>>,
    pub index: Option<Box<Index>>,
    /// Last use, for eviction.
    pub used: u64,
}

impl Block {
    /// A new, empty, loaded block.
    pub fn new(start: u64) -> Self {
        Block {
            start,
            count: 0,
            len: 0,
            live: 0,
            live_bytes: 0,
            first_live: start,
            first_ts: i64::MIN,
            last_ts: i64::MIN,
            seal_at: 0,
            verified: true,
            suspect: false,
            few: None,
            index: Some(Box::new(Index {
                appends: Some(Box::default()),
                ..Index::default()
            })),
            used: 0,
        }
    }

    /// Sequence after the block's last record.
    pub fn next_seq(&self) -> u64 {
        self.start + u64::from(self.count)
    }

    pub fn sealed(&self) -> bool {
        self.seal_at > 0
    }
}
