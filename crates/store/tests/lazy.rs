//! The costs that must not grow with the message count: opening reads sealed blocks' summaries
//! only (the unsealed tail is read and checked whole), record indexes are loaded on demand into a
//! bounded cache, and damage in old blocks is found when a message is read or by the scrub (and
//! by `verify_dir`, offline).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use natrium_store::record;
use natrium_store::{
    verify_dir, DocFile, FileStore, FileStoreConfig, Limits, Scrub, StoreError, StreamStore,
};

fn cfg(dir: &Path) -> FileStoreConfig {
    let mut c = FileStoreConfig::new(dir);
    c.block_size = 4096;
    c.cache_blocks = 2;
    c.scrub = None;
    c
}

fn open(c: &FileStoreConfig) -> FileStore {
    FileStore::open(c.clone(), Limits::default()).unwrap()
}

fn subject(i: u64) -> String {
    format!("s.{}", i % 3)
}

fn payload(i: u64) -> String {
    format!("message {i:08}")
}

fn fill(s: &dyn StreamStore, from: u64, to: u64) {
    for i in from..=to {
        let r = s
            .store_msg(subject(i).as_bytes(), None, payload(i).as_bytes(), i as i64)
            .unwrap();
        assert_eq!(r.seq, i);
    }
}

fn blocks(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "blk"))
        .collect();
    v.sort();
    v
}

fn block_start(p: &Path) -> u64 {
    p.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

/// Byte offsets of the payloads of message records in a block file, by sequence.
fn payload_offsets(path: &Path) -> BTreeMap<u64, usize> {
    let buf = fs::read(path).unwrap();
    let mut out = BTreeMap::new();
    let mut pos = 0;
    while let Ok(r) = record::decode(&buf[pos..]) {
        if !r.is_marker() {
            out.insert(r.seq, pos + r.len - 4 - r.payload.len());
        }
        pos += r.len;
    }
    out
}

fn flip(path: &Path, at: usize) {
    let mut b = fs::read(path).unwrap();
    b[at] ^= 0x01;
    fs::write(path, b).unwrap();
}

type View = (
    natrium_store::StreamState,
    Vec<u64>,
    BTreeMap<Vec<u8>, u64>,
    Option<u64>,
);

fn view(s: &dyn StreamStore) -> View {
    (
        s.state(),
        s.deleted(),
        s.subjects_state(b">"),
        s.load_last_by_subject(b"s.1").ok().map(|m| m.seq),
    )
}

#[test]
fn restart_reads_summaries_not_records() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let s = open(&c);
    fill(&s, 1, 3000);
    for seq in [500, 501, 777, 1500] {
        assert!(s.remove_msg(seq).unwrap());
    }
    s.purge_ex(b"s.2", 2000, 0).unwrap();
    let before = view(&s);
    drop(s);

    // Damage every message of every sealed block (not their seals): a store that opens from
    // the summaries does not notice, and reports exactly what it reported before.
    let files = blocks(dir.path());
    assert!(files.len() > 20, "{} blocks", files.len());
    let (sealed, tail) = files.split_at(files.len() - 1);
    for f in sealed {
        let mut b = fs::read(f).unwrap();
        for at in payload_offsets(f).values() {
            b[*at] ^= 0x01;
        }
        fs::write(f, b).unwrap();
    }
    let s = open(&c);
    let r = s.recovery();
    assert!(r.corruption.is_empty(), "{:?}", r.corruption);
    assert_eq!((r.blocks_scanned, r.blocks_summarized), (1, sealed.len()));
    assert_eq!(view(&s), before);
    // Only the tail block's index is in memory after opening and reading the state.
    let st = s.cache_stats();
    assert!(st.loaded <= 1 + 2, "{st:?}");

    // Messages of the tail block are intact; those of sealed blocks fail their checksum when
    // read, and are never served.
    let tail_start = block_start(&tail[0]);
    let m = s.load_msg(tail_start).unwrap();
    assert_eq!(m.payload, payload(tail_start).as_bytes());
    assert!(matches!(
        s.load_msg(10),
        Err(StoreError::Corrupt { seq: 10, .. })
    ));
    // Verifying finds every damaged message: they are lost, and no longer counted.
    let found = s.verify_now().unwrap();
    assert!(found.iter().all(|c| sealed.contains(&c.file)));
    let st = s.state();
    assert_eq!(st.lost, (1..tail_start).collect::<Vec<u64>>());
    assert_eq!(st.first_seq, tail_start);
    assert_eq!(st.msgs, 3000 - tail_start + 1 - s.deleted().len() as u64);
    let per_subject: u64 = s.subjects_state(b">").values().sum();
    assert_eq!(per_subject, st.msgs);
}

#[test]
fn flipped_bit_in_an_old_block_is_found_on_read_and_by_verification() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let s = open(&c);
    fill(&s, 1, 1000);
    drop(s);
    let files = blocks(dir.path());
    let second = &files[1];
    let offsets = payload_offsets(second);
    let (&seq, &at) = offsets.iter().nth(3).unwrap();
    flip(second, at);

    let s = open(&c);
    assert!(s.recovery().corruption.is_empty());
    let subject_count =
        |s: &FileStore| s.subjects_state(subject(seq).as_bytes())[subject(seq).as_bytes()];
    let before = subject_count(&s);
    // On read: refused with the sequence, never served; the neighbours are fine.
    match s.load_msg(seq) {
        Err(StoreError::Corrupt { seq: q, store, .. }) => {
            assert_eq!(q, seq);
            assert!(store.contains(&*dir.path().display().to_string()));
        }
        other => panic!("damaged message served: {other:?}"),
    }
    assert_eq!(
        s.load_msg(seq + 1).unwrap().payload,
        payload(seq + 1).as_bytes()
    );
    assert_eq!(
        s.load_msg(seq - 1).unwrap().payload,
        payload(seq - 1).as_bytes()
    );
    // Verification records it: reported with the file and sequence, lost, not counted.
    let found = s.verify_now().unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].first_seq, found[0].last_seq), (seq, seq));
    assert_eq!(found[0].file, *second);
    assert_eq!(s.damage(), found);
    let st = s.state();
    assert_eq!((st.msgs, st.lost.clone()), (999, vec![seq]));
    assert_eq!(subject_count(&s), before - 1);
    assert_eq!(s.load_next_msg(b">", seq).unwrap().seq, seq + 1);
    assert!(matches!(s.load_msg(seq), Err(StoreError::Corrupt { .. })));
    // Verifying again finds nothing new.
    assert!(s.verify_now().unwrap().is_empty());
    assert_eq!(s.state().msgs, 999);
    // Appends go on.
    assert_eq!(s.store_msg(b"s.0", None, b"x", 1).unwrap().seq, 1001);
}

fn wait_for_damage(s: &FileStore) -> Vec<natrium_store::Corruption> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let d = s.damage();
        if !d.is_empty() {
            return d;
        }
        assert!(Instant::now() < deadline, "the scrub found nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_background_scrub_finds_damage_in_old_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    let s = open(&c);
    fill(&s, 1, 1000);
    drop(s);
    let files = blocks(dir.path());
    let (&seq, &at) = payload_offsets(&files[2]).iter().next().unwrap();
    flip(&files[2], at);
    c.scrub = Some(Scrub {
        rate: 64 << 20,
        delay: Duration::ZERO,
        interval: Duration::from_secs(3600),
    });
    let s = open(&c);
    let d = wait_for_damage(&s);
    assert_eq!((d[0].first_seq, d[0].last_seq), (seq, seq));
    assert_eq!(s.state().lost, vec![seq]);
    // Every sealed block was checked.
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.cache_stats().verified < files.len() - 1 {
        assert!(Instant::now() < deadline, "{:?}", s.cache_stats());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_failed_read_sends_the_scrub_to_that_block_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    let s = open(&c);
    fill(&s, 1, 1000);
    drop(s);
    let files = blocks(dir.path());
    let (&seq, &at) = payload_offsets(&files[4]).iter().last().unwrap();
    flip(&files[4], at);
    // The first pass would start only in an hour.
    c.scrub = Some(Scrub {
        rate: 64 << 20,
        delay: Duration::from_secs(3600),
        interval: Duration::from_secs(3600),
    });
    let s = open(&c);
    assert!(matches!(s.load_msg(seq), Err(StoreError::Corrupt { .. })));
    let d = wait_for_damage(&s);
    assert_eq!((d[0].first_seq, d[0].last_seq), (seq, seq));
    assert_eq!(s.cache_stats().verified, 1);
}

#[test]
fn the_index_cache_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let s = open(&c);
    fill(&s, 1, 5000);
    let blocks_n = s.cache_stats().blocks;
    assert!(blocks_n > 40, "{blocks_n} blocks");
    // Read everything in order, then at random: at most 2 sealed indexes plus the tail's.
    let mut max_loaded = 0;
    let mut max_bytes = 0;
    let mut at = 1;
    while let Ok(m) = s.load_next_msg(b">", at) {
        assert_eq!(m.payload, payload(m.seq).as_bytes());
        at = m.seq + 1;
        let st = s.cache_stats();
        max_loaded = max_loaded.max(st.loaded);
        max_bytes = max_bytes.max(st.index_bytes);
    }
    assert_eq!(at, 5001);
    // Reading in order loaded every sealed block's index once (each dropped for the next).
    let loads = s.cache_stats().loads;
    assert!(loads + 3 >= blocks_n as u64, "{:?}", s.cache_stats());
    // Single messages of blocks from which nothing was removed are read on their own, without
    // loading an index.
    for k in 0..500u64 {
        let seq = k * 7919 % 5000 + 1;
        assert_eq!(s.load_msg(seq).unwrap().payload, payload(seq).as_bytes());
        let st = s.cache_stats();
        max_loaded = max_loaded.max(st.loaded);
        max_bytes = max_bytes.max(st.index_bytes);
    }
    assert!(max_loaded <= 3, "{max_loaded} indexes loaded");
    // A block of 4 KiB holds about 100 of these records: a few KiB of index each.
    assert!(max_bytes < 3 * 4096, "{max_bytes} bytes of index");
    assert_eq!(s.cache_stats().loads, loads);
    // Once a block had a removal, its index is needed (to know what was removed).
    s.remove_msg(100).unwrap();
    assert_eq!(s.load_msg(101).unwrap().payload, payload(101).as_bytes());
    assert_eq!(s.load_msg(100), Err(StoreError::NotFound));
    // Filtered reads see the same messages as a full scan.
    let mut at = 1;
    let mut n = 0;
    while let Ok(m) = s.load_next_msg(b"s.2", at) {
        assert_eq!(m.seq % 3, 2);
        n += 1;
        at = m.seq + 1;
    }
    assert_eq!(n, (1..=5000).filter(|i| i % 3 == 2).count());
}

#[test]
fn memory_after_open_does_not_grow_with_the_message_count() {
    let mut after_open = Vec::new();
    for n in [2_000u64, 20_000] {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        let s = open(&c);
        fill(&s, 1, n);
        drop(s);
        let s = open(&c);
        let st = s.state();
        assert_eq!(st.msgs, n);
        let mut at = 1;
        while let Ok(m) = s.load_next_msg(b">", at) {
            at = m.seq + 1;
        }
        after_open.push(s.cache_stats());
    }
    let (small, big) = (after_open[0], after_open[1]);
    assert!(big.blocks > 5 * small.blocks, "{small:?} {big:?}");
    assert!(big.loaded <= 3 && small.loaded <= 3, "{small:?} {big:?}");
    assert!(
        big.index_bytes <= small.index_bytes + 4096,
        "index memory grew: {small:?} {big:?}"
    );
}

/// Blocks as an older version wrote them: sealed with an empty marker, no index or summary.
#[test]
fn blocks_from_before_summaries_are_read_whole_once_then_summarized() {
    let dir = tempfile::tempdir().unwrap();
    let mut seq = 1u64;
    for b in 0..4 {
        let start = seq;
        let mut buf = Vec::new();
        for _ in 0..50 {
            record::encode(
                &mut buf,
                seq,
                seq as i64,
                subject(seq).as_bytes(),
                b"",
                payload(seq).as_bytes(),
            );
            seq += 1;
        }
        if b < 3 {
            record::encode_marker(&mut buf, seq - 1, (seq - 1) as i64);
        }
        fs::write(dir.path().join(format!("{start:020}.blk")), buf).unwrap();
    }
    // One removal in the first block, in the delete record format of every version.
    let mut dlt = 7u64.to_le_bytes().to_vec();
    dlt.extend_from_slice(&crc32c::crc32c(&7u64.to_le_bytes()).to_le_bytes());
    fs::write(dir.path().join(format!("{:020}.dlt", 1)), dlt).unwrap();

    let c = cfg(dir.path());
    let s = open(&c);
    assert_eq!(
        (s.recovery().blocks_scanned, s.recovery().blocks_summarized),
        (4, 0)
    );
    let before = view(&s);
    assert_eq!((before.0.msgs, before.0.last_seq), (199, 200));
    drop(s);
    let s = open(&c);
    assert_eq!(
        (s.recovery().blocks_scanned, s.recovery().blocks_summarized),
        (1, 3)
    );
    assert!(s.recovery().corruption.is_empty());
    assert_eq!(view(&s), before);
    for q in (1..=200).filter(|q| *q != 7) {
        assert_eq!(s.load_msg(q).unwrap().payload, payload(q).as_bytes());
    }
    assert!(verify_dir(dir.path()).unwrap().is_clean());
}

#[test]
fn removals_in_sealed_blocks_survive_reopen_without_reading_records() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let s = open(&c);
    fill(&s, 1, 2000);
    // Removals spread over sealed blocks, of every subject; an erase; a per-subject limit.
    for q in (3..1800).step_by(37) {
        s.remove_msg(q).unwrap();
    }
    s.erase_msg(1000).unwrap();
    let before = view(&s);
    drop(s);
    let s = open(&c);
    assert_eq!(s.recovery().blocks_scanned, 1);
    assert_eq!(view(&s), before);
    s.update_config(Limits {
        max_msgs_per_subject: 10,
        ..Limits::default()
    })
    .unwrap();
    let after = view(&s);
    assert_eq!(after.0.msgs, 30);
    drop(s);
    let s = FileStore::open(
        c.clone(),
        Limits {
            max_msgs_per_subject: 10,
            ..Limits::default()
        },
    )
    .unwrap();
    assert_eq!(view(&s), after);
}

#[test]
fn verify_dir_reports_damage_and_leaves_the_files_alone() {
    let root = tempfile::tempdir().unwrap();
    let msgs = root.path().join("streams").join("S").join("msgs");
    let c = cfg(&msgs);
    let s = open(&c);
    fill(&s, 1, 1000);
    s.remove_msg(5).unwrap();
    // An erased message (subject and payload zeroed in place) in a sealed block is no damage.
    s.erase_msg(150).unwrap();
    drop(s);
    let obs = root.path().join("streams").join("S").join("obs").join("C");
    fs::create_dir_all(&obs).unwrap();
    let (mut d, _) = DocFile::open(&obs, "state").unwrap();
    d.write(b"{\"one\":1}", true).unwrap();
    d.write(b"{\"two\":2}", true).unwrap();
    drop(d);

    let r = verify_dir(root.path()).unwrap();
    assert!(r.is_clean(), "{r}");
    assert_eq!(r.stores.len(), 2, "{r}");
    // Sorted walk: `msgs` (blocks) before `obs` (consumer state).
    assert_eq!((r.stores[0].messages, r.stores[0].last_seq), (998, 1000));
    assert!(r.stores[0].sealed > 5);
    assert_eq!(r.stores[1].consumer_states, 1);
    assert!(r.to_string().contains("no damage found"), "{r}");

    let files = blocks(&msgs);
    let (&seq, &at) = payload_offsets(&files[3]).iter().nth(2).unwrap();
    flip(&files[3], at);
    fs::write(obs.join("state.1"), b"garbage").unwrap();
    let bytes_before: Vec<Vec<u8>> = files.iter().map(|f| fs::read(f).unwrap()).collect();
    let r = verify_dir(root.path()).unwrap();
    assert!(!r.is_clean());
    let p: Vec<_> = r.problems().collect();
    assert_eq!(p.len(), 1, "{r}");
    assert_eq!((p[0].first_seq, p[0].last_seq), (seq, seq));
    assert_eq!(p[0].file, files[3]);
    assert!(
        r.to_string().contains(&format!("messages {seq}..={seq}")),
        "{r}"
    );
    // One damaged consumer state slot is a note (the other is used); both is damage.
    assert!(
        r.stores[1]
            .notes
            .iter()
            .any(|n| n.file.ends_with("state.1")),
        "{r}"
    );
    fs::write(obs.join("state.0"), b"garbage too").unwrap();
    let r = verify_dir(root.path()).unwrap();
    assert_eq!(r.problems().count(), 2, "{r}");
    // Nothing was changed.
    let bytes_after: Vec<Vec<u8>> = files.iter().map(|f| fs::read(f).unwrap()).collect();
    assert_eq!(bytes_before, bytes_after);
    // A sealed block cut short is damage too.
    let f = fs::OpenOptions::new().write(true).open(&files[6]).unwrap();
    f.set_len(100).unwrap();
    let r = verify_dir(&msgs).unwrap();
    assert!(
        r.problems()
            .any(|p| p.file == files[6] && p.first_seq <= p.last_seq),
        "{r}"
    );
}
