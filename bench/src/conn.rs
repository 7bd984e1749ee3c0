//! One client connection: a TCP stream and a reusable read buffer that frames are scanned from in
//! place. With a `ws://host:port` address the connection is a WebSocket one (see `Ws`): it
//! upgrades first, sends each write as one masked binary frame and unwraps the server's frames
//! into the read buffer, so every mode runs over WebSocket unchanged.
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
    /// Set for a WebSocket connection.
    ws: Option<Ws>,
}

/// The WebSocket side of a connection: what a client must do (RFC 6455), no more. Writes become
/// one binary frame each, masked with a fresh key (as every client must, so the cost is part of
/// the measurement); the server's frames (unmasked; no extension is offered, so uncompressed)
/// are unwrapped into the connection's read buffer.
struct Ws {
    /// Bytes read from the socket, not yet unwrapped: `raw[start..end]`.
    raw: Vec<u8>,
    start: usize,
    end: usize,
    /// Payload bytes of the current server frame still to come.
    left: u64,
    /// The frame being written (reused).
    out: Vec<u8>,
    /// xorshift state for mask keys.
    seed: u64,
}

impl Ws {
    /// One masked binary frame carrying `payload`, in `self.out`.
    fn frame(&mut self, payload: &[u8]) -> &[u8] {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let key = (self.seed as u32).to_ne_bytes();
        let out = &mut self.out;
        out.clear();
        out.push(0x82);
        match payload.len() {
            n if n <= 125 => out.push(0x80 | n as u8),
            n if n <= 65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&key);
        // Copy and mask in one pass over the payload (a copy, then a masking pass, made this
        // generator the bottleneck of 1 KiB publishing at ~1.7 GB/s).
        let at = out.len();
        out.resize(at + payload.len(), 0);
        let wide = u64::from_ne_bytes([
            key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
        ]);
        let mut dst = out[at..].chunks_exact_mut(8);
        let mut src = payload.chunks_exact(8);
        for (d, s) in (&mut dst).zip(&mut src) {
            let mut w = [0u8; 8];
            w.copy_from_slice(s);
            d.copy_from_slice(&(u64::from_ne_bytes(w) ^ wide).to_ne_bytes());
        }
        for (i, (d, s)) in dst
            .into_remainder()
            .iter_mut()
            .zip(src.remainder())
            .enumerate()
        {
            *d = s ^ key[i & 3];
        }
        &self.out
    }

    /// Unwraps what `raw` holds into `dst`; returns the bytes written there.
    fn unwrap_into(&mut self, dst: &mut [u8]) -> Result<usize> {
        let mut n = 0;
        loop {
            if self.left > 0 {
                let take = (self.left as usize)
                    .min(self.end - self.start)
                    .min(dst.len() - n);
                if take == 0 {
                    return Ok(n);
                }
                dst[n..n + take].copy_from_slice(&self.raw[self.start..self.start + take]);
                n += take;
                self.start += take;
                self.left -= take as u64;
                continue;
            }
            let h = &self.raw[self.start..self.end];
            if h.len() < 2 {
                return Ok(n);
            }
            let (len, hlen) = match h[1] & 0x7f {
                126 if h.len() >= 4 => (u16::from_be_bytes([h[2], h[3]]) as u64, 4),
                127 if h.len() >= 10 => {
                    let mut l = [0u8; 8];
                    l.copy_from_slice(&h[2..10]);
                    (u64::from_be_bytes(l), 10)
                }
                126 | 127 => return Ok(n),
                l => (l as u64, 2),
            };
            match h[0] & 0x0f {
                0x0..=0x2 => {
                    self.start += hlen;
                    self.left = len;
                }
                0x8 => bail!("server closed the WebSocket connection"),
                // Pings and pongs from the server carry nothing for the protocol.
                _ if h.len() >= hlen + len as usize => self.start += hlen + len as usize,
                _ => return Ok(n),
            }
        }
    }
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
        let (addr, websocket) = match addr.strip_prefix("ws://") {
            Some(a) => (a.trim_end_matches('/'), true),
            None => (addr, false),
        };
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
            ws: None,
        };
        if websocket {
            timeout_at(deadline, conn.upgrade(addr))
                .await
                .map_err(|_| anyhow!("WebSocket upgrade with {addr} timed out"))??;
        }
        conn.handshake(name, headers, deadline).await?;
        Ok(conn)
    }

    /// The WebSocket upgrade: a GET with a random key, the server's 101.
    async fn upgrade(&mut self, addr: &str) -> Result<()> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
            | 1;
        let key: String = (0..16)
            .map(|i| ((seed >> (i % 8 * 8)) as u8).wrapping_add(i as u8))
            .collect::<Vec<u8>>()
            .chunks(3)
            .flat_map(|c| {
                const B64: &[u8] =
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
                let n = c.iter().fold(0u32, |a, b| a << 8 | u32::from(*b)) << (8 * (3 - c.len()));
                (0..4).map(move |i| {
                    if i > c.len() {
                        '='
                    } else {
                        B64[(n >> (18 - 6 * i) & 63) as usize] as char
                    }
                })
            })
            .collect();
        let req = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        self.stream.write_all(req.as_bytes()).await?;
        let mut raw = vec![0u8; self.buf.len().max(64 * 1024)];
        let mut end = 0;
        let head = loop {
            if let Some(i) = raw[..end].windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if end == raw.len() {
                bail!("WebSocket upgrade answer too long");
            }
            let n = self.stream.read(&mut raw[end..]).await?;
            if n == 0 {
                bail!("server closed the connection during the WebSocket upgrade");
            }
            end += n;
        };
        let status = String::from_utf8_lossy(&raw[..head.min(64)]).into_owned();
        if !status.starts_with("HTTP/1.1 101") {
            bail!(
                "WebSocket upgrade refused: {}",
                status.lines().next().unwrap_or("")
            );
        }
        self.ws = Some(Ws {
            raw,
            start: head,
            end,
            left: 0,
            out: Vec::new(),
            seed,
        });
        Ok(())
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
        if let Some(ws) = &mut self.ws {
            loop {
                let n = ws.unwrap_into(&mut self.buf[self.end..])?;
                if n > 0 {
                    self.end += n;
                    return Ok(());
                }
                if ws.start == ws.end {
                    ws.start = 0;
                    ws.end = 0;
                } else if ws.raw.len() - ws.end < 16 {
                    ws.raw.copy_within(ws.start..ws.end, 0);
                    ws.end -= ws.start;
                    ws.start = 0;
                }
                let n = self.stream.read(&mut ws.raw[ws.end..]).await?;
                if n == 0 {
                    bail!("server closed the connection");
                }
                ws.end += n;
            }
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
        if let Some(ws) = &mut self.ws {
            let frame = ws.frame(bytes);
            self.stream.write_all(frame).await?;
            return Ok(());
        }
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

#[cfg(test)]
mod tests {
    use super::Ws;

    fn ws() -> Ws {
        Ws {
            raw: Vec::new(),
            start: 0,
            end: 0,
            left: 0,
            out: Vec::new(),
            seed: 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// A frame unmasked with its own key gives back the payload, at every length class.
    #[test]
    fn frames_unmask_to_their_payload() {
        let mut ws = ws();
        for len in [0usize, 1, 3, 7, 8, 9, 125, 126, 1027, 65535, 65536, 70001] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            let frame = ws.frame(&payload).to_vec();
            assert_eq!(frame[0], 0x82);
            let (n, at) = match frame[1] & 0x7f {
                126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                l => (l as usize, 2),
            };
            assert_eq!(n, len);
            let key = &frame[at..at + 4];
            let got: Vec<u8> = frame[at + 4..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i & 3])
                .collect();
            assert_eq!(got, payload, "length {len}");
        }
    }
}
