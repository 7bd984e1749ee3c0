//! Fuzzes the store's record decoder and recovery: any bytes as a block file open without a
//! panic, and whatever the store then serves decodes as a valid record of the right sequence.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natrium_store::{record, FileStore, FileStoreConfig, Limits, StreamStore};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = record::decode(data) {
        assert!(r.len <= data.len());
    }
    let dir = std::env::temp_dir().join(format!("natrium-fuzz-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("00000000000000000001.blk"), data).unwrap();
    let s = FileStore::open(FileStoreConfig::new(&dir), Limits::default()).unwrap();
    let st = s.state();
    assert!(st.msgs <= st.last_seq);
    for seq in st.first_seq..=st.last_seq.min(st.first_seq + 1000) {
        if let Ok(m) = s.load_msg(seq) {
            assert_eq!(m.seq, seq);
        }
    }
    s.store_msg(b"after", None, b"x", 1).unwrap();
});
