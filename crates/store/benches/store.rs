//! File store benchmark: appends/s of 128-byte messages under `SyncPolicy::Always` (1, 16, 256
//! threads each waiting for its receipt; one thread pipelining with callbacks) and `Interval`,
//! then open/recovery time and peak RSS with N messages (default 10 million).
//!
//! `cargo bench -p natrium-store --bench store [-- MSGS]`; data goes to `$STORE_BENCH_DIR` or a
//! temp dir (kept with `STORE_BENCH_KEEP=1`; `store recover DIR` then times one open).
//! `-- subjects N` measures per-subject state instead: N messages on N subjects, then a reopen;
//! `-- read N` the read path: N messages read back in order, by subject and at random.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use natrium_store::{FileStore, FileStoreConfig, Limits, StreamStore, SyncPolicy};

const PAYLOAD: [u8; 128] = [b'x'; 128];
const RUN: Duration = Duration::from_secs(3);

fn open(dir: &Path, sync: SyncPolicy) -> FileStore {
    let mut c = FileStoreConfig::new(dir);
    c.sync = sync;
    // What the high-water mark costs: `STORE_BENCH_NO_MARK=1` runs without it.
    c.high_water_mark = std::env::var_os("STORE_BENCH_NO_MARK").is_none();
    FileStore::open(c, Limits::default()).expect("open")
}

/// `threads` publishers, each storing and waiting for durability, for `RUN`.
fn synchronous(dir: &Path, sync: SyncPolicy, threads: usize) -> (f64, u64) {
    let s = Arc::new(open(dir, sync));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (s, done) = (s.clone(), done.clone());
            std::thread::spawn(move || {
                let subject = format!("bench.{t}");
                while start.elapsed() < RUN {
                    let r = s
                        .store_msg(subject.as_bytes(), None, &PAYLOAD, 0)
                        .expect("store");
                    if matches!(sync, SyncPolicy::Always) {
                        s.wait_durable(r.sync_token).expect("durable");
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("join");
    }
    let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    (rate, s.sync_stats().syncs)
}

/// One publisher that does not wait: acks arrive through callbacks (an async client's pattern).
fn pipelined(dir: &Path) -> (f64, u64) {
    let s = open(dir, SyncPolicy::Always);
    let acked = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut last = None;
    let mut n = 0u64;
    while start.elapsed() < RUN {
        for _ in 0..1000 {
            let r = s.store_msg(b"bench", None, &PAYLOAD, 0).expect("store");
            let a = acked.clone();
            s.on_durable(
                r.sync_token,
                Box::new(move |res| {
                    res.expect("durable");
                    a.fetch_add(1, Ordering::Relaxed);
                }),
            );
            last = Some(r.sync_token);
            n += 1;
        }
    }
    if let Some(t) = last {
        s.wait_durable(t).expect("durable");
    }
    while acked.load(Ordering::Relaxed) < n {
        std::thread::yield_now();
    }
    (
        n as f64 / start.elapsed().as_secs_f64(),
        s.sync_stats().syncs,
    )
}

/// `publishers` clients, each with one publish in flight (a synchronous client), served by one
/// store thread that learns of acks through callbacks (how the server drives the store).
fn one_in_flight(dir: &Path, publishers: usize) -> (f64, u64) {
    let s = open(dir, SyncPolicy::Always);
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    for p in 0..publishers {
        tx.send(p).expect("send");
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < RUN {
        let Ok(p) = rx.recv_timeout(Duration::from_secs(1)) else {
            break;
        };
        let r = s.store_msg(b"bench", None, &PAYLOAD, 0).expect("store");
        let tx = tx.clone();
        s.on_durable(
            r.sync_token,
            Box::new(move |res| {
                res.expect("durable");
                let _ = tx.send(p);
            }),
        );
        n += 1;
    }
    (
        n as f64 / start.elapsed().as_secs_f64(),
        s.sync_stats().syncs,
    )
}

/// CPU time this thread has used (user + system), so that other work on the machine does not
/// count against a measurement.
fn cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let (Some("recover"), Some(dir)) = (args.get(1).map(String::as_str), args.get(2)) {
        // Child process: measure one open from a cold process.
        let before = rss_kib("VmRSS:");
        let t = Instant::now();
        let s = open(Path::new(dir), SyncPolicy::Always);
        let took = t.elapsed();
        let st = s.state();
        println!(
            "recover: {} msgs, {} bytes in {:.2}s; RSS {} MiB (+{} MiB over the empty process), peak {} MiB",
            st.msgs,
            st.bytes,
            took.as_secs_f64(),
            rss_kib("VmRSS:") / 1024,
            (rss_kib("VmRSS:") - before) / 1024,
            rss_kib("VmHWM:") / 1024
        );
        return;
    }
    let total: u64 = args
        .iter()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let root = match std::env::var("STORE_BENCH_DIR") {
        Ok(d) => tempfile::tempdir_in(d).expect("tempdir"),
        Err(_) => tempfile::tempdir().expect("tempdir"),
    };
    if args.get(1).map(String::as_str) == Some("read") {
        // The consume path: N messages of 128 bytes on 16 subjects, then read back in order
        // (everything, and one subject), and at random; best of 3 passes each,
        // in messages per second of this thread's CPU time.
        let dir = root.path().join("read");
        let s = open(&dir, SyncPolicy::Interval(Duration::from_secs(120)));
        let c = cpu_secs();
        for i in 0..total {
            let subject = format!("bench.{}", i % 16);
            s.store_msg(subject.as_bytes(), None, &PAYLOAD, i as i64)
                .expect("store");
        }
        println!(
            "append: {:.0} msgs per CPU second",
            total as f64 / (cpu_secs() - c)
        );
        let pass = |filter: &[u8]| {
            let c = cpu_secs();
            let (mut at, mut n) = (1, 0u64);
            while let Ok(m) = s.load_next_msg(filter, at) {
                at = m.seq + 1;
                n += 1;
            }
            n as f64 / (cpu_secs() - c)
        };
        let best = |f: &dyn Fn() -> f64| (0..3).map(|_| f()).fold(0.0, f64::max);
        println!(
            "read all in order: {:.0} msgs per CPU second",
            best(&|| pass(b">"))
        );
        println!(
            "read one subject of 16: {:.0} msgs per CPU second",
            best(&|| pass(b"bench.3"))
        );
        let random = || {
            let c = cpu_secs();
            let n = 20_000u64;
            for k in 0..n {
                let seq = k.wrapping_mul(2_654_435_761) % total + 1;
                s.load_msg(seq).expect("load");
            }
            n as f64 / (cpu_secs() - c)
        };
        println!("read at random: {:.0} msgs per CPU second", best(&random));
        return;
    }
    if args.get(1).map(String::as_str) == Some("subjects") {
        // What per-subject state costs: N messages, each on its own subject (a KV bucket of N
        // keys), then a reopen in a fresh process.
        let dir = root.path().join("subjects");
        let before = rss_kib("VmRSS:");
        let t = Instant::now();
        let s = open(&dir, SyncPolicy::Interval(Duration::from_secs(120)));
        for i in 0..total {
            let subject = format!("kv.bucket.key{i:010}");
            s.store_msg(subject.as_bytes(), None, &PAYLOAD[..16], i as i64)
                .expect("store");
        }
        println!(
            "wrote {total} msgs on {} subjects in {:.1}s; RSS +{} MiB while open",
            s.state().num_subjects,
            t.elapsed().as_secs_f64(),
            (rss_kib("VmRSS:") - before) / 1024
        );
        s.stop().expect("stop");
        drop(s);
        let exe = std::env::current_exe().expect("exe");
        let out = std::process::Command::new(exe)
            .arg("recover")
            .arg(&dir)
            .output()
            .expect("child");
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if std::env::var_os("STORE_BENCH_KEEP").is_some() {
            println!("kept {}", dir.display());
            std::mem::forget(root);
        }
        return;
    }
    let fresh = |name: &str| root.path().join(name);

    for threads in [1, 16, 256] {
        let (rate, syncs) = synchronous(
            &fresh(&format!("always-{threads}")),
            SyncPolicy::Always,
            threads,
        );
        println!(
            "always, {threads:>3} threads waiting for acks: {rate:>10.0} msgs/s ({syncs} fsyncs)"
        );
    }
    for publishers in [16, 256] {
        let (rate, syncs) = one_in_flight(&fresh(&format!("inflight-{publishers}")), publishers);
        println!("always, {publishers:>3} publishers x 1 in flight (callbacks): {rate:>10.0} msgs/s ({syncs} fsyncs)");
    }
    let (rate, syncs) = pipelined(&fresh("always-pipelined"));
    println!("always,   1 thread, acks by callback:   {rate:>10.0} msgs/s ({syncs} fsyncs)");
    if args.get(1).map(String::as_str) == Some("durable") {
        // The acknowledged paths only (`durable`): no lazy rows, no recovery.
        return;
    }
    for threads in [1, 16] {
        let (rate, syncs) = synchronous(
            &fresh(&format!("interval-{threads}")),
            SyncPolicy::Interval(Duration::from_secs(120)),
            threads,
        );
        println!(
            "interval 2m, {threads:>2} threads, no waiting:   {rate:>10.0} msgs/s ({syncs} fsyncs)"
        );
    }

    let dir = fresh("recovery");
    let t = Instant::now();
    {
        let s = open(&dir, SyncPolicy::Interval(Duration::from_secs(120)));
        for i in 0..total {
            let subject = format!("bench.{}", i % 16);
            s.store_msg(subject.as_bytes(), None, &PAYLOAD, i as i64)
                .expect("store");
        }
        s.stop().expect("stop");
    }
    let on_disk: u64 = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "wrote {total} msgs ({} MiB on disk) in {:.1}s",
        on_disk >> 20,
        t.elapsed().as_secs_f64()
    );
    let exe = std::env::current_exe().expect("exe");
    let out = std::process::Command::new(exe)
        .arg("recover")
        .arg(&dir)
        .output()
        .expect("child");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if std::env::var_os("STORE_BENCH_KEEP").is_some() {
        println!("kept {}", dir.display());
        std::mem::forget(root);
    }
}
