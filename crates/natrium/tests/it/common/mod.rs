//! Test harness: in-process servers on random loopback ports, and a raw protocol socket for the
//! cases a well-behaved client library cannot produce.
#![allow(dead_code)]

pub mod goserver;
pub mod jwt;
pub mod pki;
pub mod proxy;
pub mod traffic;

use std::time::Duration;

use natrium::{Options, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Options for a test server: loopback, random port.
pub fn opts() -> Options {
    Options {
        host: "127.0.0.1".into(),
        port: -1,
        ..Options::default()
    }
}

pub async fn start(o: Options) -> Server {
    Server::start(o).await.expect("server starts")
}

pub async fn client(s: &Server) -> async_nats::Client {
    async_nats::connect(s.client_url())
        .await
        .expect("client connects")
}

/// Options for a test server with JetStream storing under `dir`.
pub fn js_opts(dir: &std::path::Path) -> Options {
    Options {
        jetstream: Some(natrium::jetstream::JetStreamOptions {
            store_dir: dir.to_path_buf(),
            ..Default::default()
        }),
        ..opts()
    }
}

/// A raw `$JS.API` request; `Null` sends an empty body.
pub async fn api(
    c: &async_nats::Client,
    subject: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let payload = if body.is_null() {
        bytes::Bytes::new()
    } else {
        bytes::Bytes::from(body.to_string())
    };
    let r = c
        .request(subject.to_string(), payload)
        .await
        .expect("api reply");
    serde_json::from_slice(&r.payload).expect("api json")
}

/// A publish with headers made as a request, answered within `within`: the reply's JSON
/// (`Null` for an empty reply).
pub async fn request_with_headers(
    c: &async_nats::Client,
    subject: &str,
    hdrs: &[(&str, &str)],
    body: &str,
    within: Duration,
) -> serde_json::Value {
    let mut h = async_nats::HeaderMap::new();
    for (k, v) in hdrs {
        h.insert(*k, *v);
    }
    let r = tokio::time::timeout(
        within,
        c.request_with_headers(subject.to_string(), h, body.to_string().into()),
    )
    .await
    .expect("reply in time")
    .expect("reply");
    if r.payload.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_slice(&r.payload).expect("json")
}

/// A `Nats-Schedule` firing once, `secs` whole seconds from now: `@at <RFC 3339>`.
pub fn schedule_at(secs: i64) -> String {
    let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs);
    let at = at
        .replace_nanosecond(0)
        .expect("whole seconds")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("rfc3339");
    format!("@at {at}")
}

/// A raw TCP connection speaking the protocol by hand.
pub struct Raw {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

impl Raw {
    /// Connects and consumes the INFO line.
    pub async fn connect(s: &Server) -> Raw {
        let stream = TcpStream::connect(s.addr()).await.expect("tcp connect");
        let mut r = Raw {
            stream,
            buf: Vec::new(),
        };
        let info = r.read_until("\r\n").await;
        assert!(info.starts_with("INFO {"), "got {info:?}");
        r
    }

    pub async fn send(&mut self, bytes: &str) {
        self.stream
            .write_all(bytes.as_bytes())
            .await
            .expect("write");
    }

    /// Reads until `pat` appears; returns everything read up to and including it.
    pub async fn read_until(&mut self, pat: &str) -> String {
        let fut = async {
            loop {
                if let Some(i) = find(&self.buf, pat.as_bytes()) {
                    let out: Vec<u8> = self.buf.drain(..i + pat.len()).collect();
                    return String::from_utf8_lossy(&out).into_owned();
                }
                let mut chunk = [0u8; 4096];
                let n = self.stream.read(&mut chunk).await.expect("read");
                assert!(
                    n > 0,
                    "connection closed while waiting for {pat:?}; had {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                self.buf.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out waiting for {pat:?}; had {:?}",
                    String::from_utf8_lossy(&self.buf)
                )
            })
    }

    /// Reads until the server closes the connection; returns what arrived.
    pub async fn read_to_close(&mut self) -> String {
        let fut = async {
            loop {
                let mut chunk = [0u8; 4096];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return String::from_utf8_lossy(&self.buf).into_owned(),
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .expect("server closes the connection")
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Waits until `f` holds, polling; panics after 10 s.
pub async fn eventually(mut f: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in time");
}

/// GETs a monitoring endpoint of `s` (started with `http_port`) and decodes its JSON.
pub async fn get_json(s: &Server, path: &str) -> serde_json::Value {
    let url = format!("{}{path}", s.monitor_url().expect("monitoring on"));
    let r = reqwest::get(&url).await.expect("http get");
    assert_eq!(r.status(), 200, "{url}");
    r.json().await.expect("json")
}

/// With `NATRIUM_TEST_LOG` set (an env filter such as `info` or `natrium=debug`), the servers'
/// log goes to the test's captured output (shown when it fails, or with `--nocapture`).
pub fn test_log() {
    if let Ok(filter) = std::env::var("NATRIUM_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}
