//! A connect flood: 1,000 connection attempts with a wrong (bcrypt-checked) password from one
//! address (127.0.0.2) while a legitimate client from another (127.0.0.1) connects and exchanges
//! requests and replies. bcrypt runs off the reader tasks, a few at a time server-wide and per
//! address, so the flood queues behind itself and the legitimate client gets through. Every bad
//! attempt ends with an error and a closed connection. Timings are printed (`--nocapture`).
//! Also: connections from one address that never send CONNECT are capped
//! (`max_unauthenticated_per_ip`), so they can not fill `max_connections`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{opts, start};
use futures::StreamExt;
use natrium::options::User;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

const ATTEMPTS: usize = 1000;
const IN_FLIGHT: usize = 100;
/// bcrypt cost of the password (nats-server's tooling defaults to 11; this keeps the test short).
const COST: u32 = 5;

#[derive(Default)]
struct Outcomes {
    violation: AtomicUsize,
    timeout: AtomicUsize,
    closed: AtomicUsize,
    accepted: AtomicUsize,
}

/// One bad login from 127.0.0.2: returns once the server has closed the connection.
async fn bad_login(server: SocketAddr, out: &Outcomes) {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind("127.0.0.2:0".parse().expect("addr"))
        .expect("bind 127.0.0.2");
    let Ok(mut stream) = sock.connect(server).await else {
        out.closed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let _ = stream
        .write_all(b"CONNECT {\"verbose\":false,\"user\":\"legit\",\"pass\":\"wrong\"}\r\nPING\r\n")
        .await;
    let mut got = Vec::new();
    let mut b = [0u8; 1024];
    let read_all = async {
        loop {
            match stream.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read_all).await;
    let text = String::from_utf8_lossy(&got);
    let counter = if text.contains("PONG") {
        &out.accepted
    } else if text.contains("Authorization Violation") {
        &out.violation
    } else if text.contains("Authentication Timeout") {
        &out.timeout
    } else {
        &out.closed
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_flood_leaves_room_for_a_legitimate_client() {
    let t = Instant::now();
    let hash = bcrypt::hash("right", COST).expect("hash");
    let cost = t.elapsed();
    let t = Instant::now();
    assert!(bcrypt::verify("right", &hash).expect("verify"));
    let verify_cost = t.elapsed();
    let mut o = opts();
    o.auth.users = vec![User {
        user: "legit".into(),
        password: hash,
        ..User::default()
    }];
    let s = start(o).await;
    let url = s.client_url();
    let legit = || {
        async_nats::ConnectOptions::with_user_and_password("legit".into(), "right".into())
            .connection_timeout(Duration::from_secs(5))
    };
    let responder = legit().connect(&url).await.expect("responder connects");
    let mut requests = responder.subscribe("svc.echo").await.expect("sub");
    responder.flush().await.expect("flush");
    let answering = tokio::spawn(async move {
        while let Some(m) = requests.next().await {
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, m.payload).await;
            }
        }
    });

    // The flood: ATTEMPTS bad logins, IN_FLIGHT at a time.
    let outcomes = Arc::new(Outcomes::default());
    let started = Arc::new(AtomicUsize::new(0));
    let addr = s.addr();
    let flood_start = Instant::now();
    let flood = {
        let outcomes = outcomes.clone();
        let started = started.clone();
        tokio::spawn(async move {
            let gate = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
            let mut tasks = Vec::with_capacity(ATTEMPTS);
            for _ in 0..ATTEMPTS {
                let permit = gate.clone().acquire_owned().await.expect("gate");
                let outcomes = outcomes.clone();
                started.fetch_add(1, Ordering::Relaxed);
                tasks.push(tokio::spawn(async move {
                    bad_login(addr, &outcomes).await;
                    drop(permit);
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
            flood_start.elapsed()
        })
    };

    // Meanwhile: a legitimate client connects and makes requests.
    while started.load(Ordering::Relaxed) < 2 * IN_FLIGHT {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t = Instant::now();
    let client = legit()
        .connect(&url)
        .await
        .expect("legit client connects during the flood");
    client.flush().await.expect("flush");
    let connect_time = t.elapsed();
    let mut latencies = Vec::new();
    for i in 0..100 {
        let t = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            client.request("svc.echo", format!("{i}").into()),
        )
        .await
        .expect("reply in time")
        .expect("reply");
        assert_eq!(r.payload, format!("{i}").as_bytes());
        latencies.push(t.elapsed());
    }
    let during = started.load(Ordering::Relaxed);
    let flood_time = flood.await.expect("flood");
    latencies.sort();
    let o = &outcomes;
    let (violation, timeout, closed, accepted) = (
        o.violation.load(Ordering::Relaxed),
        o.timeout.load(Ordering::Relaxed),
        o.closed.load(Ordering::Relaxed),
        o.accepted.load(Ordering::Relaxed),
    );
    eprintln!(
        "flood: bcrypt cost {COST} hash {cost:?}, verify {verify_cost:?}; {ATTEMPTS} bad logins ({IN_FLIGHT} in flight) took {flood_time:?}: \
         {violation} Authorization Violation, {timeout} Authentication Timeout, {closed} closed otherwise, {accepted} accepted; \
         legit connect {connect_time:?} with {during} attempts started; 100 requests p50 {:?} p99 {:?} max {:?}",
        latencies[50], latencies[98], latencies[99]
    );
    assert_eq!(accepted, 0, "no bad login gets in");
    assert_eq!(violation + timeout + closed, ATTEMPTS);
    assert_eq!(
        closed, 0,
        "every bad login gets the NATS error before the close"
    );
    assert!(
        connect_time < Duration::from_secs(2),
        "legit client connected in {connect_time:?}"
    );
    // The server is still fully usable afterwards and holds no flood connection.
    crate::common::eventually(|| s.num_clients() == 2).await;
    answering.abort();
    s.shutdown().await;
}

/// A TCP connection from `from` that reads the INFO line and then says nothing.
async fn silent(server: SocketAddr, from: &str) -> tokio::net::TcpStream {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(format!("{from}:0").parse().expect("addr"))
        .expect("bind");
    let mut stream = sock.connect(server).await.expect("connect");
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut b))
            .await
            .expect("server answers")
            .expect("read");
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&line));
        line.push(b[0]);
    }
    assert!(
        line.starts_with(b"INFO "),
        "{:?}",
        String::from_utf8_lossy(&line)
    );
    stream
}

/// Reads what the server sends until it closes the connection.
async fn until_closed(stream: &mut tokio::net::TcpStream) -> String {
    let mut got = Vec::new();
    let mut b = [0u8; 256];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut b))
            .await
            .expect("server closes")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&b[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn silent_connections_from_one_address_are_capped() {
    let mut o = opts();
    o.max_unauthenticated_per_ip = 3;
    o.max_connections = 10;
    let s = start(o).await;
    let addr = s.addr();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(silent(addr, "127.0.0.2").await);
    }
    // The fourth silent connection from 127.0.0.2 is refused at once...
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind("127.0.0.2:0".parse().expect("addr"))
        .expect("bind");
    let mut fourth = sock.connect(addr).await.expect("connect");
    assert_eq!(
        until_closed(&mut fourth).await,
        "-ERR 'maximum unauthenticated connections per address exceeded'\r\n"
    );
    // ...while another address connects normally.
    let other = async_nats::connect(s.client_url())
        .await
        .expect("127.0.0.1 connects");
    other.flush().await.expect("flush");
    // A connection that completes CONNECT frees its address's slot.
    held[0]
        .write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
        .await
        .expect("write");
    let mut b = [0u8; 6];
    held[0].read_exact(&mut b).await.expect("PONG");
    assert_eq!(&b, b"PONG\r\n");
    let _fourth = silent(addr, "127.0.0.2").await;
    // So does one that closes.
    drop(held.pop());
    let mut ok = false;
    for _ in 0..100 {
        let sock = TcpSocket::new_v4().expect("socket");
        sock.bind("127.0.0.2:0".parse().expect("addr"))
            .expect("bind");
        let mut c = sock.connect(addr).await.expect("connect");
        let mut b = [0u8; 5];
        if c.read_exact(&mut b).await.is_ok() && &b == b"INFO " {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "a closed silent connection frees its slot");
    s.shutdown().await;
}
