//! The thread-safe shell around an engine: one mutex over the index (held for the short
//! in-memory and page-cache work of each call), durability waits outside it, and the
//! `StreamStore` implementation both stores forward to.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::durable::Durable;
use crate::engine::{Backend, Engine};
use crate::{
    DurableCallback, Limits, Result, StoreReceipt, StoredMsg, StreamState, StreamStore, SyncToken,
};

pub(crate) struct Shared<B: Backend> {
    pub engine: Mutex<Engine<B>>,
    /// None for the memory store: everything is "durable" at once.
    pub durable: Option<Arc<Durable>>,
}

impl<B: Backend> Shared<B> {
    fn check(&self) -> Result<()> {
        match &self.durable {
            Some(d) => d.check(),
            None => Ok(()),
        }
    }
}

impl<B: Backend> StreamStore for Shared<B> {
    fn store_msg(
        &self,
        subject: &[u8],
        headers: Option<&[u8]>,
        payload: &[u8],
        ts: i64,
    ) -> Result<StoreReceipt> {
        self.check()?;
        let seq = self.engine.lock().store(subject, headers, payload, ts)?;
        Ok(StoreReceipt {
            seq,
            ts,
            sync_token: SyncToken(seq),
        })
    }

    fn wait_durable(&self, token: SyncToken) -> Result<()> {
        match &self.durable {
            Some(d) => d.wait(token),
            None => Ok(()),
        }
    }

    fn on_durable(&self, token: SyncToken, done: DurableCallback) {
        match &self.durable {
            Some(d) => d.on_durable(token, done),
            None => done(Ok(())),
        }
    }

    fn load_msg(&self, seq: u64) -> Result<StoredMsg> {
        self.engine.lock().load(seq)
    }

    fn load_last_by_subject(&self, filter: &[u8]) -> Result<StoredMsg> {
        self.engine.lock().load_last(filter)
    }

    fn load_next_msg(&self, filter: &[u8], start: u64) -> Result<StoredMsg> {
        self.engine.lock().load_next(filter, start)
    }

    fn remove_msg(&self, seq: u64) -> Result<bool> {
        self.check()?;
        let mut e = self.engine.lock();
        let removed = e.remove(seq, false)?;
        e.backend.sync_meta(true)?;
        Ok(removed)
    }

    fn erase_msg(&self, seq: u64) -> Result<bool> {
        self.check()?;
        let mut e = self.engine.lock();
        let removed = e.remove(seq, true)?;
        e.backend.sync_meta(true)?;
        Ok(removed)
    }

    fn purge(&self) -> Result<u64> {
        self.check()?;
        self.engine.lock().compact(0)
    }

    fn purge_ex(&self, filter: &[u8], seq: u64, keep: u64) -> Result<u64> {
        self.check()?;
        self.engine.lock().purge_ex(filter, seq, keep)
    }

    fn compact(&self, seq: u64) -> Result<u64> {
        self.check()?;
        self.engine.lock().compact(seq)
    }

    fn state(&self) -> StreamState {
        self.engine.lock().state()
    }

    fn deleted(&self) -> Vec<u64> {
        self.engine.lock().deleted()
    }

    fn subjects_state(&self, filter: &[u8]) -> BTreeMap<Vec<u8>, u64> {
        self.engine.lock().subjects_state(filter)
    }

    fn update_config(&self, limits: Limits) -> Result<()> {
        self.check()?;
        self.engine.lock().update_limits(limits)
    }

    fn expire(&self, now: i64) -> Result<u64> {
        self.check()?;
        self.engine.lock().expire(now)
    }

    fn sync(&self) -> Result<()> {
        let mut e = self.engine.lock();
        let last = e.last_seq();
        e.backend.sync_all(last)
    }

    fn stop(&self) -> Result<()> {
        let mut e = self.engine.lock();
        if e.closed {
            return Ok(());
        }
        let last = e.last_seq();
        let res = e.backend.sync_all(last);
        let summary = e.block_summary();
        e.backend.close(summary);
        e.closed = true;
        drop(e);
        if let Some(d) = &self.durable {
            d.stop();
        }
        res
    }

    fn delete(&self) -> Result<()> {
        let mut e = self.engine.lock();
        e.closed = true;
        let res = e.backend.destroy();
        drop(e);
        if let Some(d) = &self.durable {
            d.stop();
        }
        res
    }
}

/// Implement `StreamStore` for a wrapper by forwarding to its `Shared` field.
macro_rules! forward_stream_store {
    ($ty:ty, $field:ident) => {
        impl $crate::StreamStore for $ty {
            fn store_msg(
                &self,
                subject: &[u8],
                headers: Option<&[u8]>,
                payload: &[u8],
                ts: i64,
            ) -> $crate::Result<$crate::StoreReceipt> {
                self.$field.store_msg(subject, headers, payload, ts)
            }
            fn wait_durable(&self, token: $crate::SyncToken) -> $crate::Result<()> {
                self.$field.wait_durable(token)
            }
            fn on_durable(&self, token: $crate::SyncToken, done: $crate::DurableCallback) {
                self.$field.on_durable(token, done)
            }
            fn load_msg(&self, seq: u64) -> $crate::Result<$crate::StoredMsg> {
                self.$field.load_msg(seq)
            }
            fn load_last_by_subject(&self, filter: &[u8]) -> $crate::Result<$crate::StoredMsg> {
                self.$field.load_last_by_subject(filter)
            }
            fn load_next_msg(
                &self,
                filter: &[u8],
                start: u64,
            ) -> $crate::Result<$crate::StoredMsg> {
                self.$field.load_next_msg(filter, start)
            }
            fn remove_msg(&self, seq: u64) -> $crate::Result<bool> {
                self.$field.remove_msg(seq)
            }
            fn erase_msg(&self, seq: u64) -> $crate::Result<bool> {
                self.$field.erase_msg(seq)
            }
            fn purge(&self) -> $crate::Result<u64> {
                self.$field.purge()
            }
            fn purge_ex(&self, filter: &[u8], seq: u64, keep: u64) -> $crate::Result<u64> {
                self.$field.purge_ex(filter, seq, keep)
            }
            fn compact(&self, seq: u64) -> $crate::Result<u64> {
                self.$field.compact(seq)
            }
            fn state(&self) -> $crate::StreamState {
                self.$field.state()
            }
            fn deleted(&self) -> Vec<u64> {
                self.$field.deleted()
            }
            fn subjects_state(&self, filter: &[u8]) -> std::collections::BTreeMap<Vec<u8>, u64> {
                self.$field.subjects_state(filter)
            }
            fn update_config(&self, limits: $crate::Limits) -> $crate::Result<()> {
                self.$field.update_config(limits)
            }
            fn expire(&self, now: i64) -> $crate::Result<u64> {
                self.$field.expire(now)
            }
            fn sync(&self) -> $crate::Result<()> {
                self.$field.sync()
            }
            fn stop(&self) -> $crate::Result<()> {
                self.$field.stop()
            }
            fn delete(&self) -> $crate::Result<()> {
                self.$field.delete()
            }
        }
    };
}
pub(crate) use forward_stream_store;
