//! A TCP fault proxy: forwards every connection accepted on its loopback listener to a target
//! address and can, at any moment, pass, delay, drop one direction of, or cut its traffic.
//!
//! "Up" is the direction from the dialling side to the target, "down" the way back. A cut resets
//! every open connection and refuses new ones (accepted, then reset at once). Dropped bytes are
//! gone: a TCP stream cannot carry a hole, so a connection that lost bytes in a direction is reset
//! when that direction is healed (real TCP would have given up on it by then too).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What happens to the bytes of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Flow {
    /// Forwarded (after the direction's delay).
    #[default]
    Pass,
    /// Read and thrown away.
    Drop,
}

/// The faults applied to a proxy's traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Dialler to target.
    pub up: Flow,
    /// Target to dialler.
    pub down: Flow,
    /// Added latency on the way up.
    pub up_delay: Duration,
    /// Added latency on the way down.
    pub down_delay: Duration,
    /// New connections are reset as soon as they are accepted.
    pub refuse: bool,
}

impl Faults {
    /// Everything passes at once.
    pub fn pass() -> Self {
        Self::default()
    }
}

/// A direction of a proxied connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Up,
    Down,
}

/// Counters of a proxy since it was bound.
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
    pub resets: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub dropped_up: AtomicU64,
    pub dropped_down: AtomicU64,
}

/// A snapshot of `Stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub accepted: u64,
    pub refused: u64,
    pub resets: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub dropped_up: u64,
    pub dropped_down: u64,
}

/// Largest read forwarded as one chunk.
const CHUNK: usize = 64 * 1024;
/// Chunks waiting out their delay per direction; past this the reader stops reading (the
/// sender's socket buffer fills, as a slow path would make it).
const QUEUE: usize = 256;
/// How long a dial to the target may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Per connection: which directions lost bytes.
#[derive(Default)]
struct Damage {
    up: AtomicBool,
    down: AtomicBool,
}

struct Conn {
    task: JoinHandle<()>,
    damage: Arc<Damage>,
}

struct Shared {
    target: watch::Sender<Option<SocketAddr>>,
    faults: watch::Sender<Faults>,
    conns: Mutex<HashMap<u64, Conn>>,
    next_id: AtomicU64,
    stats: Stats,
}

impl Shared {
    /// Resets the connections `pick` selects (all when it returns true for every one).
    fn reset_where(&self, pick: impl Fn(&Damage) -> bool) -> usize {
        let victims: Vec<Conn> = {
            let mut conns = self.conns.lock();
            let ids: Vec<u64> = conns
                .iter()
                .filter(|(_, c)| pick(&c.damage))
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| conns.remove(id)).collect()
        };
        for c in &victims {
            // Aborting drops both sockets, which carry SO_LINGER 0: the peers see a reset.
            c.task.abort();
        }
        self.stats
            .resets
            .fetch_add(victims.len() as u64, Ordering::Relaxed);
        victims.len()
    }
}

/// A running proxy. Dropping it closes the listener and resets its connections.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Binds a listener on 127.0.0.1 (a random port) forwarding to `target` (connections are
    /// reset while there is none). Must be called within a tokio runtime.
    pub async fn bind(target: Option<SocketAddr>) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target: watch::channel(target).0,
            faults: watch::channel(Faults::pass()).0,
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            stats: Stats::default(),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Proxy {
            addr,
            shared,
            accept,
        })
    }

    /// The address clients dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where new connections go (a restarted node listens on a new port). While there is none,
    /// a new connection waits up to `DIAL_TIMEOUT` for one, like a dial to a host still booting.
    pub fn set_target(&self, target: Option<SocketAddr>) {
        self.shared.target.send_replace(target);
    }

    pub fn target(&self) -> Option<SocketAddr> {
        *self.shared.target.borrow()
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        *self.shared.faults.borrow()
    }

    /// Applies `f`. Turning `refuse` on resets every open connection; a direction going from
    /// `Drop` back to `Pass` resets the connections that lost bytes that way.
    pub fn set(&self, f: Faults) {
        let old = self.shared.faults.send_replace(f);
        if f.refuse {
            self.shared.reset_where(|_| true);
            return;
        }
        let heal_up = old.up == Flow::Drop && f.up == Flow::Pass;
        let heal_down = old.down == Flow::Drop && f.down == Flow::Pass;
        if heal_up || heal_down {
            self.shared.reset_where(|d| {
                (heal_up && d.up.load(Ordering::Relaxed))
                    || (heal_down && d.down.load(Ordering::Relaxed))
            });
        }
    }

    /// Changes the faults in force with `edit`.
    pub fn update(&self, edit: impl FnOnce(&mut Faults)) {
        let mut f = self.faults();
        edit(&mut f);
        self.set(f);
    }

    /// Resets every open connection and refuses new ones.
    pub fn cut(&self) {
        self.update(|f| f.refuse = true);
    }

    /// Back to plain forwarding (damaged connections are reset).
    pub fn heal(&self) {
        self.set(Faults::pass());
    }

    /// Resets every open connection now, leaving the faults as they are.
    pub fn reset(&self) -> usize {
        self.shared.reset_where(|_| true)
    }

    /// Open proxied connections.
    pub fn open_connections(&self) -> usize {
        self.shared.conns.lock().len()
    }

    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.shared.stats;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            accepted: g(&s.accepted),
            refused: g(&s.refused),
            resets: g(&s.resets),
            bytes_up: g(&s.bytes_up),
            bytes_down: g(&s.bytes_down),
            dropped_up: g(&s.dropped_up),
            dropped_down: g(&s.dropped_down),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.reset_where(|_| true);
    }
}

/// SO_LINGER with a zero timeout: closing the socket resets the connection at once (it never
/// blocks, unlike a positive linger, and leaves no TIME_WAIT behind).
fn reset_on_close(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            // Out of descriptors or similar: back off briefly rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // Closing with linger 0 sends a reset, and leaves no TIME_WAIT behind.
        reset_on_close(&inbound);
        if shared.faults.borrow().refuse {
            shared.stats.refused.fetch_add(1, Ordering::Relaxed);
            drop(inbound);
            continue;
        }
        shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let damage = Arc::new(Damage::default());
        // Registered under the lock before the task can finish and remove itself.
        let mut conns = shared.conns.lock();
        let task = tokio::spawn(serve(inbound, shared.clone(), damage.clone(), id));
        conns.insert(id, Conn { task, damage });
    }
}

/// The target, waiting up to `DIAL_TIMEOUT` while there is none.
async fn wait_target(shared: &Shared) -> Option<SocketAddr> {
    let mut rx = shared.target.subscribe();
    let found = tokio::time::timeout(DIAL_TIMEOUT, rx.wait_for(|t| t.is_some())).await;
    match found {
        Ok(Ok(t)) => *t,
        _ => None,
    }
}

async fn serve(inbound: TcpStream, shared: Arc<Shared>, damage: Arc<Damage>, id: u64) {
    let dial = async {
        let target = wait_target(&shared).await?;
        tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(target))
            .await
            .ok()?
            .ok()
    };
    let Some(outbound) = dial.await else {
        shared.stats.refused.fetch_add(1, Ordering::Relaxed);
        shared.conns.lock().remove(&id);
        return;
    };
    reset_on_close(&outbound);
    let _ = outbound.set_nodelay(true);
    let _ = inbound.set_nodelay(true);
    let (ir, iw) = inbound.into_split();
    let (or, ow) = outbound.into_split();
    let (up_tx, up_rx) = mpsc::channel(QUEUE);
    let (down_tx, down_rx) = mpsc::channel(QUEUE);
    tokio::join!(
        read_side(ir, up_tx, &shared, &damage, Dir::Up),
        write_side(ow, up_rx),
        read_side(or, down_tx, &shared, &damage, Dir::Down),
        write_side(iw, down_rx),
    );
    shared.conns.lock().remove(&id);
}

/// Reads one direction and queues each chunk with the time it may be written.
async fn read_side(
    mut r: OwnedReadHalf,
    tx: mpsc::Sender<(Instant, Bytes)>,
    shared: &Shared,
    damage: &Damage,
    dir: Dir,
) {
    let mut buf = BytesMut::with_capacity(CHUNK);
    loop {
        buf.reserve(CHUNK);
        match r.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return, // dropping `tx` ends the writer, which half-closes
            Ok(n) => {
                let chunk = buf.split().freeze();
                let f = *shared.faults.borrow();
                let (flow, delay, bytes, dropped, hurt) = match dir {
                    Dir::Up => (
                        f.up,
                        f.up_delay,
                        &shared.stats.bytes_up,
                        &shared.stats.dropped_up,
                        &damage.up,
                    ),
                    Dir::Down => (
                        f.down,
                        f.down_delay,
                        &shared.stats.bytes_down,
                        &shared.stats.dropped_down,
                        &damage.down,
                    ),
                };
                if flow == Flow::Drop {
                    dropped.fetch_add(n as u64, Ordering::Relaxed);
                    hurt.store(true, Ordering::Relaxed);
                    continue;
                }
                bytes.fetch_add(n as u64, Ordering::Relaxed);
                if tx.send((Instant::now() + delay, chunk)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Writes one direction's chunks, each no earlier than its time; half-closes at the end.
async fn write_side(mut w: OwnedWriteHalf, mut rx: mpsc::Receiver<(Instant, Bytes)>) {
    while let Some((due, chunk)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        if w.write_all(&chunk).await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server that also records what it received; returns its address.
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn read_exact_timeout(s: &mut TcpStream, n: usize, t: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0; n];
        match tokio::time::timeout(t, s.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(buf),
            _ => None,
        }
    }

    /// True if the connection is reset or closed within `t`.
    async fn closed_within(s: &mut TcpStream, t: Duration) -> bool {
        let mut b = [0u8; 64];
        matches!(
            tokio::time::timeout(t, s.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn passes_bytes_both_ways() {
        let p = Proxy::bind(Some(echo().await)).await.unwrap();
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (mut r, mut w) = s.split();
        let (got, _) = tokio::join!(
            async {
                let mut got = vec![0; data.len()];
                r.read_exact(&mut got).await.unwrap();
                got
            },
            async { w.write_all(&data).await.unwrap() }
        );
        assert_eq!(got, data);
        let st = p.stats();
        assert_eq!(st.accepted, 1);
        assert_eq!(st.bytes_up, data.len() as u64);
        assert_eq!(st.bytes_down, data.len() as u64);
    }

    #[tokio::test]
    async fn cut_resets_open_connections_and_refuses_new_ones_until_healed() {
        let p = Proxy::bind(Some(echo().await)).await.unwrap();
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        assert_eq!(
            read_exact_timeout(&mut s, 4, Duration::from_secs(5)).await,
            Some(b"ping".to_vec())
        );
        p.cut();
        assert!(closed_within(&mut s, Duration::from_secs(5)).await);
        // A new connection is accepted by the kernel, then reset: nothing comes back.
        let mut s2 = TcpStream::connect(p.addr()).await.unwrap();
        let _ = s2.write_all(b"x").await;
        assert!(closed_within(&mut s2, Duration::from_secs(5)).await);
        assert!(p.stats().refused >= 1);
        p.heal();
        let mut s3 = TcpStream::connect(p.addr()).await.unwrap();
        s3.write_all(b"back").await.unwrap();
        assert_eq!(
            read_exact_timeout(&mut s3, 4, Duration::from_secs(5)).await,
            Some(b"back".to_vec())
        );
    }

    #[tokio::test]
    async fn one_way_drop_loses_only_that_direction_and_heal_resets_the_damaged() {
        // A target that sends a greeting each time it reads something, and records its input.
        let l = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let target = l.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let rec = received.clone();
        let (greet_tx, mut greet_rx) = mpsc::channel::<()>(8);
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (mut r, mut w) = s.into_split();
            tokio::spawn(async move {
                while greet_rx.recv().await.is_some() {
                    if w.write_all(b"hello").await.is_err() {
                        return;
                    }
                }
            });
            let mut b = [0u8; 1024];
            while let Ok(n) = r.read(&mut b).await {
                if n == 0 {
                    break;
                }
                rec.lock().extend_from_slice(&b[..n]);
            }
        });
        let p = Proxy::bind(Some(target)).await.unwrap();
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        p.update(|f| f.up = Flow::Drop);
        s.write_all(b"lost").await.unwrap();
        // The other direction still flows.
        greet_tx.send(()).await.unwrap();
        assert_eq!(
            read_exact_timeout(&mut s, 5, Duration::from_secs(5)).await,
            Some(b"hello".to_vec())
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.stats().dropped_up < 4 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(p.stats().dropped_up, 4);
        assert!(received.lock().is_empty(), "dropped bytes arrived");
        // Healing resets the connection that lost bytes rather than resume a stream with a hole.
        p.heal();
        assert!(closed_within(&mut s, Duration::from_secs(5)).await);
        assert!(received.lock().is_empty());
        assert_eq!(p.stats().resets, 1);
    }

    #[tokio::test]
    async fn a_healed_direction_without_loss_keeps_its_connection() {
        let p = Proxy::bind(Some(echo().await)).await.unwrap();
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        p.update(|f| f.down = Flow::Drop); // nothing crosses while this is set
        p.heal();
        s.write_all(b"ok").await.unwrap();
        assert_eq!(
            read_exact_timeout(&mut s, 2, Duration::from_secs(5)).await,
            Some(b"ok".to_vec())
        );
        assert_eq!(p.stats().resets, 0);
    }

    #[tokio::test]
    async fn delay_holds_each_chunk_for_at_least_the_delay_in_order() {
        let p = Proxy::bind(Some(echo().await)).await.unwrap();
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        p.update(|f| {
            f.up_delay = Duration::from_millis(150);
            f.down_delay = Duration::from_millis(100);
        });
        let start = Instant::now();
        s.write_all(b"first").await.unwrap();
        s.write_all(b"second").await.unwrap();
        let got = read_exact_timeout(&mut s, 11, Duration::from_secs(5)).await;
        assert_eq!(got, Some(b"firstsecond".to_vec()));
        assert!(
            start.elapsed() >= Duration::from_millis(250),
            "{:?}",
            start.elapsed()
        );
        p.heal();
        let start = Instant::now();
        s.write_all(b"fast").await.unwrap();
        read_exact_timeout(&mut s, 4, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(start.elapsed() < Duration::from_millis(250));
    }

    #[tokio::test]
    async fn a_connection_waits_a_little_for_a_target_then_is_reset() {
        let p = Proxy::bind(None).await.unwrap();
        let start = Instant::now();
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        assert!(closed_within(&mut s, DIAL_TIMEOUT * 3).await);
        assert!(start.elapsed() >= DIAL_TIMEOUT);
        // One that arrives while there is none is served once a target is set.
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        s.write_all(b"early").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        p.set_target(Some(echo().await));
        assert_eq!(
            read_exact_timeout(&mut s, 5, Duration::from_secs(5)).await,
            Some(b"early".to_vec())
        );
    }

    #[tokio::test]
    async fn a_new_target_takes_new_connections_and_a_dead_one_resets_them() {
        let p = Proxy::bind(None).await.unwrap();
        p.set_target(Some(echo().await));
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        s.write_all(b"hi").await.unwrap();
        assert_eq!(
            read_exact_timeout(&mut s, 2, Duration::from_secs(5)).await,
            Some(b"hi".to_vec())
        );
        // A target that is gone: the dial fails and the dialler is reset.
        let l = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let dead = l.local_addr().unwrap();
        drop(l);
        p.set_target(Some(dead));
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        assert!(closed_within(&mut s, Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn end_of_stream_is_passed_on_as_a_half_close() {
        let p = Proxy::bind(Some(echo().await)).await.unwrap();
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        s.write_all(b"bye").await.unwrap();
        s.shutdown().await.unwrap();
        let mut all = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(all, b"bye");
    }
}
