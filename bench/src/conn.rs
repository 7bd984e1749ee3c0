//! One client connection: a TCP stream and a reusable read buffer that frames are scanned from in
//! place.
//!
//! Invariant: `buf[start..end]` holds bytes read but not yet consumed; a frame returned by
//! [`Conn::next_frame`] borrows from it until the next call that takes `&mut self`.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use crate::proto::{self, Frame};

/// Read buffer of connections that carry messages.
pub const BIG_BUF: usize = 256 * 1024;
/// Read buffer of idle connections (grows if the server's INFO is larger).
pub const SMALL_BUF: usize = 4 * 1024;
/// How long the TCP connect plus the INFO / CONNECT / PING / PONG exchange may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The server's `max_payload` from its INFO, if it said.
    pub max_payload: Option<usize>,
}

/// The INFO fields the generator looks at.
#[derive(serde::Deserialize)]
struct Info {
    max_payload: Option<usize>,
}

impl Conn {
    /// Connects, reads INFO, sends CONNECT and PING, and waits for the PONG.
    pub async fn connect(addr: &str, name: &str, buf_size: usize) -> Result<Conn> {
        Conn::open(addr, name, buf_size, false).await
    }

    /// Like [`Conn::connect`], announcing header support and asking for no-responders statuses
    /// (for requests that must fail fast when nobody answers).
    pub async fn connect_with_headers(addr: &str, name: &str, buf_size: usize) -> Result<Conn> {
        Conn::open(addr, name, buf_size, true).await
    }

    async fn open(addr: &str, name: &str, buf_size: usize, headers: bool) -> Result<Conn> {
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let stream = timeout_at(deadline, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connect to {addr} timed out"))?
            .with_context(|| format!("connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            buf: vec![0; buf_size],
            start: 0,
            end: 0,
            max_payload: None,
        };
        conn.handshake(name, headers, deadline).await?;
        Ok(conn)
    }

    async fn handshake(&mut self, name: &str, headers: bool, deadline: Instant) -> Result<()> {
        loop {
            match self.next_frame()? {
                Some(Frame::Info(json)) => {
                    self.max_payload = serde_json::from_slice::<Info>(json)
                        .ok()
                        .and_then(|i| i.max_payload);
                    break;
                }
                Some(Frame::Err(e)) => bail!("server error: {}", String::from_utf8_lossy(e)),
                Some(_) => bail!("expected INFO first"),
                None => self.fill_until(deadline).await?,
            }
        }
        let mut hello = proto::connect_line(name, headers);
        hello.extend_from_slice(proto::PING);
        self.write_all(&hello).await?;
        self.until_pong(deadline).await
    }

    /// Reads frames until the server's PONG, answering its PINGs, failing on `-ERR` or a message
    /// (the generator's connections expect none at this point).
    pub async fn until_pong(&mut self, deadline: Instant) -> Result<()> {
        loop {
            let mut pings = 0;
            while let Some(frame) = self.next_frame()? {
                match frame {
                    Frame::Pong => return Ok(()),
                    Frame::Ping => pings += 1,
                    Frame::Err(e) => bail!("server error: {}", String::from_utf8_lossy(e)),
                    Frame::Msg { .. } => bail!("unexpected MSG while waiting for PONG"),
                    Frame::Ok | Frame::Info(_) => {}
                }
            }
            for _ in 0..pings {
                self.write_all(proto::PONG).await?;
            }
            self.fill_until(deadline).await?;
        }
    }

    /// Scans the next complete frame out of the buffer, or `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        let data = &self.buf[self.start..self.end];
        match proto::scan(data)? {
            Some((frame, used)) => {
                self.start += used;
                Ok(Some(frame))
            }
            None => Ok(None),
        }
    }

    /// Reads more bytes after moving the unconsumed tail (at most one partial frame) to the front;
    /// grows the buffer if one frame does not fit. End of stream is an error.
    pub async fn fill(&mut self) -> Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let bigger = self.buf.len() * 2;
            self.buf.resize(bigger, 0);
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            bail!("server closed the connection");
        }
        self.end += n;
        Ok(())
    }

    pub async fn fill_until(&mut self, deadline: Instant) -> Result<()> {
        timeout_at(deadline, self.fill())
            .await
            .map_err(|_| anyhow!("timed out waiting for the server"))?
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Fails if the server announced a `max_payload` below `size`.
    pub fn check_payload(&self, size: usize) -> Result<()> {
        match self.max_payload {
            Some(max) if size > max => {
                bail!("payload of {size} bytes exceeds the server's max_payload of {max}")
            }
            _ => Ok(()),
        }
    }

    /// Gives up the read buffer, keeping only the socket (for connections held idle).
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }
}
