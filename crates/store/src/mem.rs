//! The memory store: the shared engine over blocks held in `Vec<u8>`s, so both stores keep the
//! same semantics; nothing persists and every receipt is durable at once.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::engine::{Backend, Engine, Parts};
use crate::shared::Shared;
use crate::subjects::Subjects;
use crate::{Limits, Result, StoreError};

/// Bytes per in-memory block: small enough that removed messages free memory soon.
const BLOCK_SIZE: u64 = 1 << 20;

pub(crate) struct MemBackend {
    name: Arc<str>,
    blocks: BTreeMap<u64, Vec<u8>>,
}

impl MemBackend {
    fn block(&mut self, start: u64) -> Result<&mut Vec<u8>> {
        self.blocks.get_mut(&start).ok_or(StoreError::NotFound)
    }
}

impl Backend for MemBackend {
    fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn create_block(&mut self, start: u64) -> Result<()> {
        self.blocks.insert(start, Vec::new());
        Ok(())
    }

    fn write(&mut self, start: u64, at: u32, rec: &[u8]) -> Result<()> {
        let b = self.block(start)?;
        b.truncate(at as usize);
        b.extend_from_slice(rec);
        Ok(())
    }

    fn block_path(&self, _start: u64) -> std::path::PathBuf {
        std::path::PathBuf::from("memory")
    }

    fn read_raw(&self, start: u64, at: u32, len: u32) -> Result<bytes::Bytes> {
        self.read(start, at, len)
    }

    fn deleted_in(&self, _start: u64) -> Result<rustc_hash::FxHashSet<u64>> {
        // Memory blocks are never evicted, so their index (with what was removed) is never read
        // back from the block.
        Ok(rustc_hash::FxHashSet::default())
    }

    fn evictable(&self) -> bool {
        false
    }

    fn read(&self, start: u64, at: u32, len: u32) -> Result<bytes::Bytes> {
        let b = self.blocks.get(&start).ok_or(StoreError::NotFound)?;
        let (at, len) = (at as usize, len as usize);
        b.get(at..at + len)
            .map(bytes::Bytes::copy_from_slice)
            .ok_or(StoreError::NotFound)
    }

    fn overwrite(&mut self, start: u64, at: u32, rec: &[u8]) -> Result<()> {
        let at = at as usize;
        let dst = self
            .block(start)?
            .get_mut(at..at + rec.len())
            .ok_or(StoreError::NotFound)?;
        dst.copy_from_slice(rec);
        Ok(())
    }

    fn note_deleted(&mut self, _start: u64, _seq: u64) -> Result<()> {
        Ok(())
    }

    fn remove_block(&mut self, start: u64) -> Result<()> {
        self.blocks.remove(&start);
        Ok(())
    }

    fn seal(&mut self, start: u64) -> Result<()> {
        if let Some(b) = self.blocks.get_mut(&start) {
            b.shrink_to_fit();
        }
        Ok(())
    }

    fn written(&mut self, _seq: u64) {}

    fn sync_meta(&mut self, _explicit: bool) -> Result<()> {
        Ok(())
    }

    fn sync_all(&mut self, _through: u64) -> Result<()> {
        Ok(())
    }

    fn close(&mut self, _blocks: Vec<(u64, u64, u64)>) {
        self.blocks.clear();
    }

    fn destroy(&mut self) -> Result<()> {
        self.blocks.clear();
        Ok(())
    }
}

/// A stream store in memory.
pub struct MemStore {
    shared: Shared<MemBackend>,
}

impl MemStore {
    pub fn new(limits: Limits) -> Result<MemStore> {
        let backend = MemBackend {
            name: crate::store_name(None),
            blocks: BTreeMap::new(),
        };
        let parts = Parts {
            blocks: Vec::new(),
            subjects: Subjects::default(),
            bytes: 0,
            last_seq: 0,
            last_ts: 0,
            lost: Default::default(),
            roll: false,
        };
        Ok(MemStore {
            shared: Shared {
                engine: Mutex::new(Engine::new(backend, limits, BLOCK_SIZE, usize::MAX, parts)?),
                durable: None,
            },
        })
    }
}

crate::shared::forward_stream_store!(MemStore, shared);
