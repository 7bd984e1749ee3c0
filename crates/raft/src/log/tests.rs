use std::io::Write;
use std::sync::mpsc as std_mpsc;

use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload};

use super::*;
use crate::state::SmStore;
use crate::{Data, StateMachine};

/// A state machine that keeps what it applied.
#[derive(Default)]
struct Applied(Vec<(u64, Vec<u8>)>);

impl StateMachine for Applied {
    fn apply(&mut self, index: u64, data: &[u8]) -> Vec<u8> {
        self.0.push((index, data.to_vec()));
        index.to_le_bytes().to_vec()
    }
    fn snapshot(&mut self) -> Result<Vec<u8>, String> {
        serde_json::to_vec(&self.0).map_err(|e| e.to_string())
    }
    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        self.0 = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        Ok(())
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, SmStore<Applied>, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, SmStore<Applied>), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = LogStore::open(&dir.path().join("log")).expect("open log");
        let sm = SmStore::open(dir.path(), Applied::default()).expect("open sm");
        Ok((dir, log, sm))
    }
}

/// openraft's own conformance suite for log stores and state machines.
#[test]
fn passes_openraft_storage_suite() {
    Suite::test_all(Builder).expect("suite");
}

/// The same log keeping no entry in memory: every read goes to the segments.
struct Uncached;

impl StoreBuilder<TypeConfig, LogStore, SmStore<Applied>, tempfile::TempDir> for Uncached {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, SmStore<Applied>), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = LogStore::open_with_cache(&dir.path().join("log"), 0).expect("open log");
        let sm = SmStore::open(dir.path(), Applied::default()).expect("open sm");
        Ok((dir, log, sm))
    }
}

#[test]
fn passes_openraft_storage_suite_reading_every_entry_from_disk() {
    Suite::test_all(Uncached).expect("suite");
}

/// Only the newest bodies stay in memory; older entries read back equal what was appended,
/// across truncation, purge and a reopen, and a damaged one is an error, not a wrong entry.
#[test]
fn old_entries_are_read_back_from_their_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("log");
    let body = |i: u64| vec![(i % 251) as u8; 1000 + i as usize];
    let (log, _) = LogStore::open_with_cache(&path, 5_000).expect("open");
    append(&log, (1..=40).map(|i| entry(1, i, &body(i))).collect());
    {
        let mem = log.inner.mem.lock();
        assert!(mem.cache.len() < 6, "cache holds {}", mem.cache.len());
        assert!(mem.cache_bytes <= 5_000);
    }
    let check = |log: &LogStore, range: std::ops::Range<u64>| {
        let got = log.entries(range.clone()).expect("read");
        let want: Vec<u64> = range.collect();
        assert_eq!(got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), want);
        for e in &got {
            let EntryPayload::Normal(Data(d)) = &e.payload else {
                panic!("normal entry");
            };
            assert_eq!(*d, body(e.log_id.index));
        }
    };
    check(&log, 1..41);
    check(&log, 10..12);
    log.truncate_from(30).expect("truncate");
    append(&log, (30..=35).map(|i| entry(2, i, &body(i))).collect());
    check(&log, 25..36);
    log.purge_upto(LogId::new(CommittedLeaderId::new(1, 1), 9))
        .expect("purge");
    check(&log, 10..36);
    assert_eq!(log.entries(1..5).expect("read").len(), 0);
    drop(log);
    let (log, rec) = LogStore::open_with_cache(&path, 5_000).expect("reopen");
    assert_eq!(rec.entries, 26);
    check(&log, 10..36);
    // A record damaged after it was read at open: the read fails.
    let (seg, off, _) = log.inner.mem.lock().pos[2];
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(seg_path(&path, seg))
        .expect("segment");
    f.write_all_at(&[0xff], off + 20).expect("flip");
    assert!(log.entries(12..13).is_err());
}

fn entry(term: u64, index: u64, data: &[u8]) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(Data(data.to_vec())),
    }
}

/// Appends and waits for the sync.
fn append(log: &LogStore, entries: Vec<Entry<TypeConfig>>) {
    let (tx, rx) = std_mpsc::channel();
    log.append_entries(
        entries,
        Box::new(move |r| {
            let _ = tx.send(r.is_ok());
        }),
    )
    .expect("append");
    assert!(rx.recv().expect("flushed"), "sync succeeded");
}

fn indexes(log: &LogStore) -> Vec<u64> {
    log.entries(..)
        .expect("read")
        .iter()
        .map(|e| e.log_id.index)
        .collect()
}

fn only_segment(dir: &Path) -> PathBuf {
    let segs = segments(dir).expect("segments");
    assert_eq!(segs.len(), 1);
    seg_path(dir, segs[0])
}

#[test]
fn entries_and_vote_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    {
        let (mut log, rec) = LogStore::open(dir.path()).expect("open");
        assert_eq!(rec, Recovered::default());
        append(
            &log,
            (1..=50).map(|i| entry(1, i, &[i as u8; 40])).collect(),
        );
        rt.block_on(log.save_vote(&Vote::new(3, 2))).expect("vote");
        log.close();
    }
    let (mut log, rec) = LogStore::open(dir.path()).expect("reopen");
    assert_eq!(rec.entries, 50);
    assert_eq!(rec.damaged_at, None);
    assert_eq!(indexes(&log), (1..=50).collect::<Vec<_>>());
    assert_eq!(
        rt.block_on(log.read_vote()).expect("vote"),
        Some(Vote::new(3, 2))
    );
    let e = &log.entries(7..8).expect("read")[0];
    assert_eq!(e.payload, EntryPayload::Normal(Data(vec![7; 40])));
    assert!(!log.vote_guarded());
}

#[test]
fn a_log_starting_at_index_zero_reopens_whole() {
    // openraft writes a new group's first membership at index 0.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (log, _) = LogStore::open(dir.path()).expect("open");
        append(&log, (0..=5).map(|i| entry(1, i, b"m")).collect());
        log.close();
    }
    let (log, rec) = LogStore::open(dir.path()).expect("reopen");
    assert_eq!(rec.damaged_at, None);
    assert_eq!(indexes(&log), (0..=5).collect::<Vec<_>>());
    assert!(!log.vote_guarded());
}

#[test]
fn a_torn_last_record_is_cut_and_is_not_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (log, _) = LogStore::open(dir.path()).expect("open");
        append(&log, (1..=10).map(|i| entry(1, i, b"payload")).collect());
        log.close();
    }
    let seg = only_segment(dir.path());
    let len = std::fs::metadata(&seg).expect("meta").len();
    // Half of the last record was never written.
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open seg")
        .set_len(len - 9)
        .expect("cut");
    let (log, rec) = LogStore::open(dir.path()).expect("reopen");
    assert_eq!(rec.entries, 9);
    assert!(rec.torn_bytes > 0);
    assert_eq!(rec.damaged_at, None);
    assert!(!log.vote_guarded());
    // New entries continue after the cut.
    append(&log, vec![entry(1, 10, b"again")]);
    log.close();
    let (log, rec) = LogStore::open(dir.path()).expect("third open");
    assert_eq!(rec.torn_bytes, 0);
    assert_eq!(indexes(&log), (1..=10).collect::<Vec<_>>());
}

#[test]
fn a_flipped_bit_in_the_middle_is_damage_and_guards_the_vote() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (log, _) = LogStore::open(dir.path()).expect("open");
        append(&log, (1..=20).map(|i| entry(2, i, &[0xab; 100])).collect());
        log.close();
    }
    let seg = only_segment(dir.path());
    let mut bytes = std::fs::read(&seg).expect("read");
    let pos = bytes.len() / 2;
    bytes[pos] ^= 0x10;
    std::fs::write(&seg, &bytes).expect("write");
    let (log, rec) = LogStore::open(dir.path()).expect("reopen");
    let at = rec.damaged_at.expect("damage found");
    assert!(at > 1 && at < 20, "damage at {at}");
    assert_eq!(
        indexes(&log),
        (1..at).collect::<Vec<_>>(),
        "cut at the damage"
    );
    assert!(log.vote_guarded());
    log.close();
    // The guard is durable: a restart does not forget it.
    let (log, _) = LogStore::open(dir.path()).expect("third open");
    assert!(log.vote_guarded());
    // A leader of a later term replicating to this node lifts it.
    append(&log, vec![entry(3, at, b"repaired")]);
    assert!(!log.vote_guarded());
    log.close();
    let (log, _) = LogStore::open(dir.path()).expect("fourth open");
    assert!(!log.vote_guarded());
}

/// Ten entries of 300 bytes synced, then the segment as `damage` leaves it; reopened.
fn reopen_after(damage: impl FnOnce(&mut Vec<u8>)) -> (LogStore, Recovered, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (log, _) = LogStore::open(dir.path()).expect("open");
        append(&log, (1..=10).map(|i| entry(2, i, &[0x5a; 300])).collect());
        log.close();
    }
    let seg = only_segment(dir.path());
    let mut bytes = std::fs::read(&seg).expect("read");
    damage(&mut bytes);
    std::fs::write(&seg, &bytes).expect("write");
    let (log, rec) = LogStore::open(dir.path()).expect("reopen");
    (log, rec, dir)
}

#[test]
fn a_flipped_bit_in_the_last_record_is_damage_not_a_torn_write() {
    // The last record is complete; only its checksum fails: it was written whole, and may
    // have been synced and acknowledged.
    let (log, rec, _dir) = reopen_after(|b| {
        let at = b.len() - 100;
        b[at] ^= 0x01;
    });
    assert_eq!(rec.torn_bytes, 0);
    assert_eq!(rec.damaged_at, Some(10));
    assert_eq!(indexes(&log), (1..=9).collect::<Vec<_>>());
    assert!(log.vote_guarded());
    // A flipped bit in the length field of the last record, either way.
    for bit in [0x01u8, 0x80] {
        let (log, rec, _dir) = reopen_after(|b| {
            // Ten records of one size: the last starts a tenth from the end.
            let last = b.len() - b.len() / 10;
            b[last + 1] ^= bit;
        });
        assert_eq!(rec.damaged_at, Some(10), "length bit {bit:#x}");
        assert!(log.vote_guarded());
    }
}

#[test]
fn a_torn_last_write_is_cut_without_a_guard() {
    // Bytes missing past the end.
    let (log, rec, _dir) = reopen_after(|b| b.truncate(b.len() - 40));
    assert_eq!((rec.damaged_at, rec.entries), (None, 9));
    assert!(rec.torn_bytes > 0);
    assert!(!log.vote_guarded());
    // The file grew but the last sector never reached the disk: zeros.
    let (log, rec, _dir) = reopen_after(|b| {
        let n = b.len();
        let from = (n - 1) / 512 * 512;
        b[from..].fill(0);
    });
    assert_eq!(rec.damaged_at, None);
    assert!(rec.torn_bytes > 0);
    assert!(!log.vote_guarded());
    // A whole zeroed record (its frame too) after the last intact one.
    let (log, rec, _dir) = reopen_after(|b| b.extend_from_slice(&[0; 64]));
    assert_eq!(
        (rec.damaged_at, rec.entries, rec.torn_bytes),
        (None, 10, 64)
    );
    assert!(!log.vote_guarded());
}

#[test]
fn a_vote_slot_cut_to_nothing_guards_the_vote() {
    // Two votes written (terms 1 and 2), then the newest slot cut to nothing: the older vote
    // alone looked like a vote written once, and the node could vote again in term 2.
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    {
        let (mut log, _) = LogStore::open(dir.path()).expect("open");
        rt.block_on(log.save_vote(&Vote::new(1, 1))).expect("vote");
        rt.block_on(log.save_vote(&Vote::new(2, 2))).expect("vote");
        log.close();
    }
    // The slot with the highest generation (header: magic, generation u64 LE, ...).
    let newest = ["vote.0", "vote.1"]
        .iter()
        .map(|n| dir.path().join(n))
        .max_by_key(|p| {
            let b = std::fs::read(p).expect("read");
            u64::from_le_bytes(b[4..12].try_into().expect("generation"))
        })
        .expect("a vote slot");
    std::fs::File::create(&newest).expect("cut");
    let (log, rec) = LogStore::open(dir.path()).expect("reopen");
    assert!(rec.damaged_at.is_some(), "{rec:?}");
    assert!(log.vote_guarded());
    log.close();
    // A vote written once, then its slot cut: guarded too.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut log, _) = LogStore::open(dir.path()).expect("open");
        rt.block_on(log.save_vote(&Vote::new(1, 1))).expect("vote");
        log.close();
    }
    for slot in ["vote.0", "vote.1"] {
        let p = dir.path().join(slot);
        if String::from_utf8_lossy(&std::fs::read(&p).expect("read")).contains("leader_id") {
            std::fs::File::create(&p).expect("cut");
        }
    }
    let (log, _) = LogStore::open(dir.path()).expect("reopen");
    assert!(log.vote_guarded());
    // A new log that never voted opens unguarded, again and again.
    let dir = tempfile::tempdir().expect("tempdir");
    for _ in 0..3 {
        let (log, rec) = LogStore::open(dir.path()).expect("open");
        assert_eq!(rec.damaged_at, None);
        assert!(!log.vote_guarded());
        log.close();
    }
}

#[test]
fn a_member_whose_log_vanished_is_guarded_by_its_marker() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("raft");
    let marker = root.path().join("raft.member");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    {
        let (log, _) = LogStore::open(&dir).expect("open");
        assert!(!log.member_marker(&marker).expect("marker"));
        assert!(!marker.exists(), "written at the first vote, not before");
        log.close();
        // Restarted before any vote: still a new member.
        let (mut log, _) = LogStore::open(&dir).expect("open");
        assert!(!log.member_marker(&marker).expect("marker"));
        assert!(!log.vote_guarded());
        rt.block_on(log.save_vote(&Vote::new(1, 7))).expect("vote");
        assert!(marker.exists(), "written with the first vote");
        append(&log, vec![entry(1, 1, b"x")]);
        log.close();
    }
    // Reopened whole: no guard.
    let (log, _) = LogStore::open(&dir).expect("reopen");
    assert!(!log.member_marker(&marker).expect("marker"));
    assert!(!log.vote_guarded());
    log.close();
    // The directory lost whole: guarded, and the guard is durable.
    std::fs::remove_dir_all(&dir).expect("wipe");
    let (log, _) = LogStore::open(&dir).expect("reopen");
    assert!(log.member_marker(&marker).expect("marker"));
    assert!(log.vote_guarded());
    log.close();
    let (log, _) = LogStore::open(&dir).expect("reopen");
    assert!(log.vote_guarded());
    // An entry of a later term does not lift this one (no term was known): only matching a
    // leader up to its commit index does.
    append(&log, vec![entry(5, 1, b"x")]);
    assert!(log.vote_guarded());
    log.leader_matched(Some(1), Some(1));
    assert!(!log.vote_guarded());
}

#[test]
fn an_unreadable_vote_guards_the_vote() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    {
        let (mut log, _) = LogStore::open(dir.path()).expect("open");
        append(&log, vec![entry(1, 1, b"x")]);
        rt.block_on(log.save_vote(&Vote::new(1, 1))).expect("vote");
        log.close();
    }
    for slot in ["vote.0", "vote.1"] {
        let path = dir.path().join(slot);
        let mut bytes = std::fs::read(&path).expect("read");
        if let Some(b) = bytes.get_mut(20) {
            *b ^= 0xff;
        }
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(&bytes))
            .expect("write");
    }
    let (log, rec) = LogStore::open(dir.path()).expect("reopen");
    assert!(rec.damaged_at.is_some());
    assert!(log.vote_guarded());
}

#[test]
fn truncate_and_purge_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (log, _) = LogStore::open(dir.path()).expect("open");
        append(&log, (1..=30).map(|i| entry(1, i, b"a")).collect());
        log.truncate_from(21).expect("truncate");
        append(&log, (21..=25).map(|i| entry(2, i, b"b")).collect());
        log.purge_upto(LogId::new(CommittedLeaderId::new(1, 1), 10))
            .expect("purge");
        log.close();
    }
    let (log, rec) = LogStore::open(dir.path()).expect("reopen");
    assert_eq!(rec.damaged_at, None);
    assert_eq!(indexes(&log), (11..=25).collect::<Vec<_>>());
    assert_eq!(
        log.entries(21..22).expect("read")[0].log_id.leader_id.term,
        2
    );
    assert_eq!(log.last_log_id().map(|l| l.index), Some(25));
}

#[test]
fn the_guard_holds_until_the_log_matches_a_leader_up_to_its_commit() {
    // The node acknowledged entries 1..=30 (term 2) and voted in term 4; damage cuts its log.
    // Reaching the damaged index again is not enough: entries it had acknowledged after it may
    // have been counted for a commit.
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    {
        let (mut log, _) = LogStore::open(dir.path()).expect("open");
        append(&log, (1..=30).map(|i| entry(2, i, &[0xcd; 100])).collect());
        rt.block_on(log.save_vote(&Vote::new(4, 1))).expect("vote");
        log.close();
    }
    let seg = only_segment(dir.path());
    let mut bytes = std::fs::read(&seg).expect("read");
    let pos = bytes.len() / 3;
    bytes[pos] ^= 0x01;
    std::fs::write(&seg, &bytes).expect("write");
    let (log, rec) = LogStore::open(dir.path()).expect("reopen");
    let at = rec.damaged_at.expect("damage found");
    assert!(at < 15, "damage at {at}");
    assert!(log.vote_guarded());
    // Entries of terms the node had already seen (<= 4) come back up to the damaged index
    // and past it: still guarded.
    append(&log, (at..=at + 2).map(|i| entry(3, i, b"r")).collect());
    assert!(log.vote_guarded(), "term 3 is not later than the vote's 4");
    // A leader whose commit index is 30 confirms a match up to at + 2: not yet.
    log.leader_matched(Some(at + 2), Some(30));
    assert!(log.vote_guarded(), "the commit index is not reached");
    append(&log, (at + 3..=30).map(|i| entry(3, i, b"r")).collect());
    assert!(
        log.vote_guarded(),
        "appended, but no match with a leader confirmed"
    );
    log.leader_matched(Some(30), Some(30));
    assert!(
        !log.vote_guarded(),
        "matched and synced up to the leader's commit"
    );
    log.close();
    let (log, _) = LogStore::open(dir.path()).expect("third open");
    assert!(!log.vote_guarded(), "lifted durably");
}

#[test]
fn an_entry_of_a_term_after_the_vote_lifts_the_guard() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    {
        let (mut log, _) = LogStore::open(dir.path()).expect("open");
        append(&log, (1..=20).map(|i| entry(2, i, &[0xef; 100])).collect());
        rt.block_on(log.save_vote(&Vote::new(4, 1))).expect("vote");
        log.close();
    }
    let seg = only_segment(dir.path());
    let mut bytes = std::fs::read(&seg).expect("read");
    let pos = bytes.len() / 2;
    bytes[pos] ^= 0x01;
    std::fs::write(&seg, &bytes).expect("write");
    let (log, rec) = LogStore::open(dir.path()).expect("reopen");
    let at = rec.damaged_at.expect("damage");
    append(&log, vec![entry(4, at, b"same term as the vote")]);
    assert!(log.vote_guarded());
    // Only a leader elected after the vote's term writes term 5: its log holds everything
    // committed, and this log now matches it up to that entry.
    append(&log, vec![entry(5, at + 1, b"new leader")]);
    assert!(!log.vote_guarded());
}

#[test]
fn a_damaged_vote_slot_guards_the_vote_even_when_the_other_reads() {
    // The newest vote lost, the older one read back: this node may have voted in the newer
    // term already, so it must not vote on the strength of the older.
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    {
        let (mut log, _) = LogStore::open(dir.path()).expect("open");
        append(&log, vec![entry(1, 1, b"x")]);
        rt.block_on(log.save_vote(&Vote::new(1, 1))).expect("vote");
        rt.block_on(log.save_vote(&Vote::new(2, 2))).expect("vote");
        log.close();
    }
    let newest = ["vote.0", "vote.1"]
        .iter()
        .map(|n| dir.path().join(n))
        .find(|p| String::from_utf8_lossy(&std::fs::read(p).expect("read")).contains("\"term\":2"))
        .expect("the newest slot");
    let mut bytes = std::fs::read(&newest).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&newest, &bytes).expect("write");
    let (mut log, rec) = LogStore::open(dir.path()).expect("reopen");
    assert_eq!(
        rt.block_on(log.read_vote()).expect("vote"),
        Some(Vote::new(1, 1)),
        "the older slot"
    );
    assert!(rec.damaged_at.is_some());
    assert!(log.vote_guarded());
}
