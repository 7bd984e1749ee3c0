//! Group commit: the syncer thread that fdatasyncs the file store's active block and resolves the
//! receipts a sync covers, all at once; waiters block on a condvar or register a callback.
//!
//! Invariant: `synced` only moves after `sync_data` returned Ok for a file holding every record up
//! to it (earlier blocks were synced when sealed) and, with a high-water mark, after the mark
//! (the last sequence synced, kept apart from the blocks) was raised to it. A failed
//! sync is sticky: every waiter after it gets the error and the store refuses writes.

use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::{DocFile, DurableCallback, Result, StoreError, SyncPolicy, SyncToken};

/// Observes the file store's data syncs, for tests that prove ordering (a hook may also block to
/// hold a sync back).
pub trait IoHook: Send + Sync {
    /// About to fdatasync a file that holds every message up to `through`.
    fn before_sync(&self, _through: SyncToken) {}
    /// That fdatasync returned.
    fn after_sync(&self, _through: SyncToken, _ok: bool) {}
}

/// Counters of the syncs done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Data syncs completed.
    pub syncs: u64,
    /// Every message up to this sequence is durable.
    pub synced_through: u64,
}

#[derive(Default)]
struct State {
    written: u64,
    synced: u64,
    file: Option<Arc<File>>,
    meta: Vec<Arc<File>>,
    failed: Option<Arc<str>>,
    stopped: bool,
    syncs: u64,
    callbacks: Vec<(u64, DurableCallback)>,
    /// A thread is running callbacks outside the lock; new ones queue behind it so they run
    /// in registration order (a publisher sees its PubAcks in the order it published).
    running: bool,
}

/// The store's high-water mark: the last sequence a sync made durable, in its own document
/// (`hwm.0`/`hwm.1`), so that a last block cut at rest can not hide acknowledged sequences.
/// It is written after the block's fdatasync and before the receipts resolve, and fdatasynced
/// itself at most once per [`MARK_SYNC_EVERY`] (and at a clean close): a process crash keeps
/// every write (the page cache survives it); a power loss may take the raises since its last
/// sync, so a cut after a power loss may hide up to that much.
pub(crate) struct Mark {
    pub doc: DocFile,
    /// The value last written.
    pub value: u64,
    /// When the document was last synced.
    pub synced_at: Option<Instant>,
}

/// How often the high-water mark is fdatasynced (once per this, on the first raise after it).
pub(crate) const MARK_SYNC_EVERY: Duration = Duration::from_secs(1);

impl Mark {
    pub fn new(doc: DocFile, value: u64) -> Mark {
        Mark {
            doc,
            value,
            synced_at: None,
        }
    }

    /// The document's body for `value`.
    pub fn body(value: u64) -> [u8; 8] {
        value.to_le_bytes()
    }

    /// The value a body holds.
    pub fn parse(body: &[u8]) -> Option<u64> {
        Some(u64::from_le_bytes(body.try_into().ok()?))
    }

    /// Raises the mark to `through` (nothing to do when it is there already); synced when
    /// `sync`, or when the last sync is older than [`MARK_SYNC_EVERY`].
    pub fn raise(&mut self, through: u64, sync: bool) -> std::io::Result<()> {
        if through <= self.value {
            return Ok(());
        }
        let sync = sync
            || self
                .synced_at
                .is_none_or(|t| t.elapsed() >= MARK_SYNC_EVERY);
        self.doc.write(&Mark::body(through), sync)?;
        self.value = through;
        if sync {
            self.synced_at = Some(Instant::now());
        }
        Ok(())
    }
}

pub(crate) struct Durable {
    name: Arc<str>,
    mark: Option<Mutex<Mark>>,
    state: Mutex<State>,
    work: Condvar,
    done: Condvar,
    hook: Option<Arc<dyn IoHook>>,
    /// Wake the syncer on every write (`SyncPolicy::Always`).
    eager: bool,
}

impl Durable {
    pub fn new(
        name: Arc<str>,
        hook: Option<Arc<dyn IoHook>>,
        policy: SyncPolicy,
        through: u64,
        mark: Option<Mark>,
    ) -> Self {
        Durable {
            eager: policy == SyncPolicy::Always,
            name,
            mark: mark.map(Mutex::new),
            state: Mutex::new(State {
                written: through,
                synced: through,
                ..State::default()
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            hook,
        }
    }

    fn fail_error(&self, why: &Arc<str>) -> StoreError {
        StoreError::Io {
            store: self.name.clone(),
            what: "fdatasync",
            error: why.clone(),
        }
    }

    /// Refuse writes after a failed sync.
    pub fn check(&self) -> Result<()> {
        match &self.state.lock().failed {
            Some(why) => Err(self.fail_error(why)),
            None => Ok(()),
        }
    }

    /// Messages up to `seq` are written to `file` (the last block); wake the syncer.
    pub fn note_written(&self, seq: u64, file: &Arc<File>) {
        let mut st = self.state.lock();
        st.written = st.written.max(seq);
        if !st.file.as_ref().is_some_and(|f| Arc::ptr_eq(f, file)) {
            st.file = Some(file.clone());
        }
        drop(st);
        if self.eager {
            self.work.notify_one();
        }
    }

    /// A file of delete records to sync at the next interval sync.
    pub fn note_meta(&self, file: &Arc<File>) {
        let mut st = self.state.lock();
        if !st.meta.iter().any(|f| Arc::ptr_eq(f, file)) {
            st.meta.push(file.clone());
        }
    }

    /// fdatasync `file`, which holds every message up to `through`, then resolve waiters.
    pub fn sync_file(&self, file: &File, through: u64) -> Result<()> {
        if let Some(h) = &self.hook {
            h.before_sync(SyncToken(through));
        }
        let mut res = file.sync_data();
        if let Some(h) = &self.hook {
            h.after_sync(SyncToken(through), res.is_ok());
        }
        if let (Ok(()), Some(mark)) = (&res, &self.mark) {
            // Only what is synced is marked (so the mark never claims what a power loss may
            // take), and before the receipts resolve (so it covers every acknowledged one).
            res = mark.lock().raise(through, false);
        }
        let mut st = self.state.lock();
        st.syncs += 1;
        match res {
            Ok(()) => st.synced = st.synced.max(through),
            Err(e) => {
                tracing::error!(store = %self.name, error = %e, "fdatasync failed; store is now read-only");
                st.failed = Some(Arc::from(e.to_string()));
            }
        }
        self.resolve(st);
        self.check()
    }

    /// Wake waiters and run the callbacks now covered (outside the lock), oldest first. Only one
    /// thread runs callbacks at a time; it keeps going while more become ready.
    fn resolve<'a>(&'a self, mut st: parking_lot::MutexGuard<'a, State>) {
        self.done.notify_all();
        if st.running {
            return;
        }
        loop {
            let (synced, failed, stopped) = (st.synced, st.failed.clone(), st.stopped);
            let ready = {
                let all = std::mem::take(&mut st.callbacks);
                let (ready, rest): (Vec<_>, Vec<_>) = all
                    .into_iter()
                    .partition(|(t, _)| *t <= synced || failed.is_some() || stopped);
                st.callbacks = rest;
                ready
            };
            if ready.is_empty() {
                st.running = false;
                return;
            }
            st.running = true;
            drop(st);
            for (t, cb) in ready {
                cb(self.outcome(t, synced, &failed));
            }
            st = self.state.lock();
        }
    }

    fn outcome(&self, token: u64, synced: u64, failed: &Option<Arc<str>>) -> Result<()> {
        if token <= synced {
            Ok(())
        } else if let Some(why) = failed {
            Err(self.fail_error(why))
        } else {
            Err(StoreError::Closed)
        }
    }

    pub fn wait(&self, token: SyncToken) -> Result<()> {
        let mut st = self.state.lock();
        while st.synced < token.0 && st.failed.is_none() && !st.stopped {
            self.done.wait(&mut st);
        }
        self.outcome(token.0, st.synced, &st.failed)
    }

    pub fn on_durable(&self, token: SyncToken, cb: DurableCallback) {
        let mut st = self.state.lock();
        let covered = st.synced >= token.0 || st.failed.is_some() || st.stopped;
        if covered && !st.running {
            // Nothing older is waiting: every queued callback has a later token.
            let res = self.outcome(token.0, st.synced, &st.failed);
            drop(st);
            cb(res);
        } else {
            // Not yet durable, or a running thread picks it up after the ones before it.
            st.callbacks.push((token.0, cb));
        }
    }

    pub fn stats(&self) -> SyncStats {
        let st = self.state.lock();
        SyncStats {
            syncs: st.syncs,
            synced_through: st.synced,
        }
    }

    /// Makes the high-water mark durable as it stands (a clean close).
    pub fn sync_mark(&self) -> std::io::Result<()> {
        match &self.mark {
            Some(m) => {
                let mut m = m.lock();
                let value = m.value;
                m.doc.write(&Mark::body(value), true)?;
                m.synced_at = Some(Instant::now());
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Stop the syncer; pending waiters resolve (with `Closed` if not covered).
    pub fn stop(&self) {
        let mut st = self.state.lock();
        st.stopped = true;
        self.work.notify_all();
        self.resolve(st);
    }

    /// The syncer thread's body.
    pub fn run(&self, policy: SyncPolicy) {
        loop {
            let mut st = self.state.lock();
            match policy {
                SyncPolicy::Always => {
                    while !st.stopped && st.failed.is_none() && st.written <= st.synced {
                        self.work.wait(&mut st);
                    }
                }
                SyncPolicy::Interval(every) => {
                    let deadline = Instant::now() + every.max(Duration::from_millis(1));
                    while !st.stopped && Instant::now() < deadline {
                        self.work.wait_until(&mut st, deadline);
                    }
                }
            }
            if st.stopped || st.failed.is_some() {
                return;
            }
            if self.eager {
                // Let publishers woken by the last sync append before this one starts: a
                // bigger group per fdatasync, at the cost of one scheduler round trip.
                drop(st);
                std::thread::yield_now();
                st = self.state.lock();
            }
            let meta = if matches!(policy, SyncPolicy::Interval(_)) {
                std::mem::take(&mut st.meta)
            } else {
                Vec::new()
            };
            let (through, file) = (st.written, st.file.clone());
            let dirty = through > st.synced;
            drop(st);
            for f in meta {
                if let Err(e) = f.sync_data() {
                    tracing::warn!(store = %self.name, error = %e, "syncing delete records failed");
                }
            }
            if let (true, Some(file)) = (dirty, file) {
                // Errors are recorded in the state and reach every waiter.
                let _ = self.sync_file(&file, through);
            }
        }
    }
}
