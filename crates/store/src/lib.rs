//! JetStream stream storage: the `StreamStore` trait every stream store implements, its types and
//! errors, and two implementations sharing one engine: `MemStore` and the durable `FileStore`.
//!
//! Invariants every store keeps: sequences start at 1 and only grow; a removed message never comes
//! back; a message that fails its checksum is never returned as good data. On-disk integers are
//! little-endian (see `docs/STORE.md`).

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

mod block;
pub mod conformance;
mod docfile;
mod durable;
mod engine;
mod file;
mod lock;
mod mem;
pub mod record;
mod scan;
mod scrub;
mod seal;
mod shared;
mod subjects;
mod verify;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub use docfile::DocFile;
pub use durable::{IoHook, SyncStats};
pub use engine::CacheStats;
pub use file::{create_dir_durable, FileStore, FileStoreConfig, Recovery, Scrub};
pub use lock::{LockError, StoreDirLock, LOCK_FILE};
pub use mem::MemStore;
pub use verify::{verify_dir, Problem, Report, StreamReport};

/// Result of a store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Called once when a stored message is durable (or the sync covering it failed).
pub type DurableCallback = Box<dyn FnOnce(Result<()>) + Send>;

/// Store errors. The texts of the limit errors are nats-server's.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("maximum messages exceeded")]
    MaxMsgs,
    #[error("maximum bytes exceeded")]
    MaxBytes,
    #[error("maximum messages per subject exceeded")]
    MaxMsgsPerSubject,
    #[error("message size exceeds maximum allowed")]
    MsgTooLarge,
    #[error("invalid subject")]
    InvalidSubject,
    #[error("no message found")]
    NotFound,
    #[error("stream store EOF")]
    Eof,
    #[error("sequence > 1 && keep > 0 not allowed")]
    PurgeArgMismatch,
    #[error("store is closed")]
    Closed,
    /// A message failed its checksum (or could not be read back): it is never served.
    #[error("corrupt message {seq} in stream store {store}: {reason}")]
    Corrupt {
        store: Arc<str>,
        seq: u64,
        reason: Arc<str>,
    },
    /// An I/O error; fsync failures are sticky: the store refuses writes afterwards.
    #[error("stream store {store}: {what}: {error}")]
    Io {
        store: Arc<str>,
        what: &'static str,
        error: Arc<str>,
    },
}

/// Damage found in a stream store: sequences `first_seq ..= last_seq` (none when `first_seq >
/// last_seq`) are lost: loading them returns `StoreError::Corrupt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    pub file: PathBuf,
    pub offset: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub reason: String,
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at byte {}: {} (messages {}..={})",
            self.file.display(),
            self.offset,
            self.reason,
            self.first_seq,
            self.last_seq
        )
    }
}

/// What happens when a limit would be exceeded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Discard {
    /// Remove the oldest messages to make room (nats-server's default).
    #[default]
    Old,
    /// Refuse the new message.
    New,
}

/// Stream limits the store enforces. Zero or negative counts mean unlimited, as in nats-server's
/// stream config (`-1`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_msgs: i64,
    pub max_bytes: i64,
    /// Zero means no age limit. Enforced by [`StreamStore::expire`].
    pub max_age: Duration,
    pub max_msgs_per_subject: i64,
    /// Limit on headers + payload of one message.
    pub max_msg_size: i64,
    pub discard: Discard,
    /// With `Discard::New`, refuse a message whose subject is at `max_msgs_per_subject`.
    pub discard_new_per_subject: bool,
}

/// When the file store makes appended records durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SyncPolicy {
    /// A dedicated thread fdatasyncs as soon as records are unsynced (group commit); receipts
    /// resolve only after the sync that covers them. The default.
    #[default]
    Always,
    /// Sync at this interval (nats-server's lazy mode); receipts resolve at the next sync.
    Interval(Duration),
}

/// Opaque position in the store's write order; durable once a sync covers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SyncToken(pub u64);

/// What `store_msg` returns: the assigned sequence and timestamp, and the token to wait on before
/// acknowledging the publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreReceipt {
    pub seq: u64,
    pub ts: i64,
    pub sync_token: SyncToken,
}

/// A message read back from the store. `ts` is nanoseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMsg {
    pub seq: u64,
    pub ts: i64,
    pub subject: Bytes,
    pub headers: Option<Bytes>,
    pub payload: Bytes,
}

/// nats-server's `StreamState` (less `consumer_count`, which the caller owns, and the deleted list,
/// which [`StreamStore::deleted`] gives on demand).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamState {
    pub msgs: u64,
    pub bytes: u64,
    pub first_seq: u64,
    pub first_ts: i64,
    pub last_seq: u64,
    pub last_ts: i64,
    pub num_subjects: u64,
    pub num_deleted: u64,
    /// Sequences found corrupt or missing on recovery (nats-server's `lost.msgs`).
    pub lost: Vec<u64>,
}

/// Bytes a message counts against `max_bytes`: its on-disk record size (30 bytes of framing plus
/// subject, headers and payload), the same in both stores.
pub fn msg_size(subject: &[u8], headers: Option<&[u8]>, payload: &[u8]) -> u64 {
    record::OVERHEAD as u64
        + subject.len() as u64
        + headers.map_or(0, |h| h.len() as u64)
        + payload.len() as u64
}

/// A stream's message store. Synchronous; the server calls it from a blocking context and awaits
/// durability through [`StreamStore::on_durable`]. Filters are subjects that may hold wildcards;
/// an empty filter or `>` means every subject.
pub trait StreamStore: Send + Sync {
    /// Append a message with the caller's timestamp (ns since the epoch), applying the limits.
    fn store_msg(
        &self,
        subject: &[u8],
        headers: Option<&[u8]>,
        payload: &[u8],
        ts: i64,
    ) -> Result<StoreReceipt>;
    /// Block until a sync covers `token`.
    fn wait_durable(&self, token: SyncToken) -> Result<()>;
    /// Call `done` (from the syncer thread, or at once) when a sync covers `token`. `done` must
    /// not block (never `wait_durable` in it): hand the result on, e.g. to a tokio oneshot.
    fn on_durable(&self, token: SyncToken, done: DurableCallback);
    /// The message at `seq`: `NotFound` if removed, `Eof` past the last sequence.
    fn load_msg(&self, seq: u64) -> Result<StoredMsg>;
    /// The newest message whose subject matches `filter`.
    fn load_last_by_subject(&self, filter: &[u8]) -> Result<StoredMsg>;
    /// The first message at or after `start` whose subject matches `filter`; `Eof` if none.
    fn load_next_msg(&self, filter: &[u8], start: u64) -> Result<StoredMsg>;
    /// Remove one message; false if it was not there.
    fn remove_msg(&self, seq: u64) -> Result<bool>;
    /// Remove one message and overwrite its bytes in storage.
    fn erase_msg(&self, seq: u64) -> Result<bool>;
    /// Remove every message; sequences continue after the last one.
    fn purge(&self) -> Result<u64>;
    /// nats-server's purge: matching `filter`, below `seq` (if > 1), or keeping the newest `keep`.
    fn purge_ex(&self, filter: &[u8], seq: u64, keep: u64) -> Result<u64>;
    /// Remove every message below `seq`; past the end, the next message gets `seq`.
    fn compact(&self, seq: u64) -> Result<u64>;
    fn state(&self) -> StreamState;
    /// Interior deleted sequences between first and last.
    fn deleted(&self) -> Vec<u64>;
    /// Message count per subject matching `filter`.
    fn subjects_state(&self, filter: &[u8]) -> BTreeMap<Vec<u8>, u64>;
    /// Apply new limits, removing what they no longer allow (except by age: see `expire`).
    fn update_config(&self, limits: Limits) -> Result<()>;
    /// Remove messages older than `max_age` at `now` (ns); returns how many.
    fn expire(&self, now: i64) -> Result<u64>;
    /// Make everything written so far durable.
    fn sync(&self) -> Result<()>;
    /// Sync and close; later calls fail with `Closed`.
    fn stop(&self) -> Result<()>;
    /// Close and remove all stored data.
    fn delete(&self) -> Result<()>;
}

/// Where a store keeps its data, for messages.
pub(crate) fn store_name(dir: Option<&PathBuf>) -> Arc<str> {
    match dir {
        Some(d) => Arc::from(d.display().to_string()),
        None => Arc::from("memory"),
    }
}
