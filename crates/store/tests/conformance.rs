//! Both stores pass the same conformance suite; the file store uses tiny blocks so every case
//! also crosses block boundaries, and keeps no sealed block's index cached.

use natrium_store::conformance::Factory;
use natrium_store::{FileStore, FileStoreConfig, MemStore, StreamStore};

fn with_mem(case: &dyn Fn(Factory)) {
    case(&|limits| Box::new(MemStore::new(limits).unwrap()) as Box<dyn StreamStore>);
}

fn with_file(case: &dyn Fn(Factory)) {
    let root = tempfile::tempdir().unwrap();
    let n = std::cell::Cell::new(0);
    case(&|limits| {
        n.set(n.get() + 1);
        let mut cfg = FileStoreConfig::new(root.path().join(n.get().to_string()));
        cfg.block_size = 4096;
        // No sealed block's index stays in memory: every visit reads it back from its seal.
        cfg.cache_blocks = 0;
        Box::new(FileStore::open(cfg, limits).unwrap()) as Box<dyn StreamStore>
    });
}

mod mem {
    natrium_store::conformance_tests!(super::with_mem);
}

mod file {
    natrium_store::conformance_tests!(super::with_file);
}
