//! The background scrub: a thread per file store re-reads its sealed blocks at a bounded rate
//! (shared by every store in the process) and checks every record; a block that does not check
//! out is verified again under the store's lock, where its damage is recorded (the messages
//! become lost: never served, reported, and no longer counted).
//!
//! The scrub reads without the store's lock (blocks are immutable once sealed, except erase,
//! which rewrites a removed record in place: a block that changed under the read is simply
//! checked again under the lock). A read that fails its checksum makes the block suspect, and
//! the scrub looks at it first, without waiting for its next pass.

use std::fs::File;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::engine::Backend;
use crate::file::FileBackend;
use crate::record::{self, DecodeError, OVERHEAD};
use crate::shared::Shared;
use crate::Scrub;

#[derive(Default)]
struct CtlState {
    stopped: bool,
    kicked: bool,
}

/// Wakes or stops a store's scrub thread.
#[derive(Default)]
pub(crate) struct ScrubCtl {
    state: Mutex<CtlState>,
    cv: Condvar,
}

impl ScrubCtl {
    /// Look at suspect blocks now.
    pub fn kick(&self) {
        self.state.lock().kicked = true;
        self.cv.notify_all();
    }

    pub fn stop(&self) {
        self.state.lock().stopped = true;
        self.cv.notify_all();
    }

    /// Wait until `deadline`, a kick (if `kickable`) or stop.
    fn wait_until(&self, deadline: Instant, kickable: bool) -> Woke {
        let mut st = self.state.lock();
        loop {
            if st.stopped {
                return Woke::Stopped;
            }
            if kickable && st.kicked {
                st.kicked = false;
                return Woke::Kicked;
            }
            if self.cv.wait_until(&mut st, deadline).timed_out() {
                return if st.stopped {
                    Woke::Stopped
                } else {
                    Woke::Timeout
                };
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Woke {
    Stopped,
    Kicked,
    Timeout,
}

/// When the process-wide budget next allows reading.
static NEXT_READ: Mutex<Option<Instant>> = Mutex::new(None);

/// Wait for `bytes` of the shared budget of `rate` bytes per second; false once stopped.
fn throttle(ctl: &ScrubCtl, bytes: usize, rate: u64) -> bool {
    let cost = Duration::from_secs_f64(bytes as f64 / rate.max(1) as f64);
    let at = {
        let mut next = NEXT_READ.lock();
        let now = Instant::now();
        let at = next.map_or(now, |t| t.max(now));
        *next = Some(at + cost);
        at
    };
    ctl.wait_until(at, false) != Woke::Stopped
}

const CHUNK: usize = 256 * 1024;

/// Whether block `start` in `file` (`len` bytes) holds intact records with the expected
/// sequences from its start to its end; None if the scrub was stopped.
pub(crate) fn check_block(
    file: &File,
    start: u64,
    len: u64,
    mut pace: impl FnMut(usize) -> bool,
) -> Option<bool> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; CHUNK];
    let (mut base, mut filled, mut pos) = (0u64, 0usize, 0u64);
    let mut expected = start;
    while pos < len {
        let off = (pos - base) as usize;
        let avail = buf.get(off..filled).unwrap_or_default();
        match record::decode(avail) {
            Ok(r) => {
                if !r.is_marker() {
                    if r.seq != expected {
                        return Some(false);
                    }
                    expected += 1;
                }
                pos += r.len as u64;
            }
            Err(DecodeError::Invalid(_)) => return Some(false),
            Err(DecodeError::Incomplete) => {
                let have = base + filled as u64;
                if have >= len {
                    return Some(false);
                }
                let need = record::peek_len(avail).unwrap_or(OVERHEAD).max(CHUNK);
                if need as u64 > len {
                    return Some(false);
                }
                buf.copy_within(off..filled, 0);
                filled -= off;
                base = pos;
                if buf.len() < need {
                    buf.resize(need, 0);
                }
                let want = (buf.len() - filled).min((len - have) as usize);
                if !pace(want) {
                    return None;
                }
                let dst = buf.get_mut(filled..filled + want).unwrap_or_default();
                if file.read_exact_at(dst, have).is_err() {
                    return Some(false);
                }
                filled += want;
            }
        }
    }
    Some(pos == len)
}

/// Verify blocks until none is left to do (with `suspects_only`, only blocks a read found
/// damaged); false once the store is gone or the scrub stopped.
fn pass(store: &Weak<Shared<FileBackend>>, ctl: &ScrubCtl, rate: u64, suspects_only: bool) -> bool {
    loop {
        let Some(shared) = store.upgrade() else {
            return false;
        };
        let next = {
            let e = shared.engine.lock();
            if e.closed {
                return false;
            }
            e.scrub_next(suspects_only)
                .and_then(|(start, len)| Some((start, len, e.backend.block_file(start)?)))
        };
        drop(shared);
        let Some((start, len, file)) = next else {
            return true;
        };
        let Some(clean) = check_block(&file, start, u64::from(len), |n| throttle(ctl, n, rate))
        else {
            return false;
        };
        let Some(shared) = store.upgrade() else {
            return false;
        };
        let mut e = shared.engine.lock();
        if e.closed {
            return false;
        }
        if let Err(err) = e.scrub_done(start, len, clean) {
            tracing::warn!(store = %e.backend.name(), block = start, error = %err, "scrub could not verify a block");
            e.skip_scrub(start);
        }
    }
}

/// The scrub thread's body: a full pass `delay` after open and then every `interval`; blocks a
/// read found damaged in between at once.
pub(crate) fn run(store: Weak<Shared<FileBackend>>, ctl: Arc<ScrubCtl>, policy: Scrub) {
    let mut full_at = Instant::now() + policy.delay;
    let mut first = true;
    loop {
        match ctl.wait_until(full_at, true) {
            Woke::Stopped => return,
            Woke::Kicked => {
                if !pass(&store, &ctl, policy.rate, true) {
                    return;
                }
            }
            Woke::Timeout => {
                if !first {
                    match store.upgrade() {
                        Some(shared) => shared.engine.lock().unverify_all(),
                        None => return,
                    }
                }
                first = false;
                if !pass(&store, &ctl, policy.rate, false) {
                    return;
                }
                full_at = Instant::now() + policy.interval;
            }
        }
    }
}
