//! One WebSocket connection as the byte stream the client protocol runs over: reading unwraps
//! the client's frames (unmasked, reassembled, inflated), writing wraps what the writer task
//! hands over in binary frames (deflated when negotiated). The reader and writer tasks of
//! `conn` then run over it as over TCP.
//!
//! Frames are checked as nats-server checks them: clients must mask (unless they asked for
//! `Nats-No-Masking`), reserved bits other than RSV1 are refused, RSV1 only when
//! permessage-deflate was negotiated and only on a message's first data frame, control frames
//! must be final, uncompressed and at most 125 bytes, continuation frames must continue a
//! message, and a close frame's status and UTF-8 reason are checked. A violation queues a
//! close frame with status 1002 (protocol error) and the reason, and the read side reports an
//! error (the connection closes as a read error); a compressed message larger than allowed
//! gets 1009 (message too big). A close frame from the client is answered with its own status
//! (1007 for a reason that is not UTF-8) and ends the connection as closed by the client; any
//! other close sends a close frame whose status and reason follow the connection's close
//! reason, as nats-server maps them.
//!
//! Uncompressed payloads stream through without being collected: a frame's bytes are unmasked
//! in the read buffer and handed on as they arrive, and the NATS parser enforces
//! `max_payload` as on TCP. A compressed message must be collected before it is inflated: its
//! compressed size and its inflated size are each bounded by eight times `max_payload` (at
//! most 64 MiB), as nats-server bounds the compressed size.
//!
//! Writing puts each batch of the writer in one binary frame whose payload is written straight
//! from the writer's buffer (vectored with the header) when the socket allows it; browsers get
//! frames of at most 4 KiB, as nats-server sends them. With permessage-deflate, a batch over
//! 64 bytes is compressed into one message without context takeover. Control frames (pongs,
//! the close frame) go out between frames.

use std::io::{self, Cursor, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use crate::router::{CloseReason, Outbound};

/// The largest payload of a control frame (RFC 6455 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;
/// Frame size for browsers, which nats-server found to cope better with small frames.
const BROWSER_FRAME: usize = 4096;
/// Batches this small are not worth compressing (nats-server's threshold).
const COMPRESS_THRESHOLD: usize = 64;
/// A compressed message may be this many times `max_payload`, up to `MAX_COMPRESSED`.
const COMPRESSED_MULTIPLE: usize = 8;
const MAX_COMPRESSED: usize = 64 * 1024 * 1024;
/// The read buffer: it holds frame headers and control frames whole (payloads stream through).
const READ_BUF: usize = 64 * 1024;
/// The tail RFC 7692 7.2.2 removes from each compressed message, restored before inflating.
const DEFLATE_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Close statuses (RFC 6455 7.4.1).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_PROTOCOL_ERROR: u16 = 1002;
const CLOSE_INVALID_PAYLOAD: u16 = 1007;
const CLOSE_POLICY_VIOLATION: u16 = 1008;
const CLOSE_MESSAGE_TOO_BIG: u16 = 1009;
const CLOSE_INTERNAL_ERROR: u16 = 1011;

/// What the upgrade settled for one connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct WsConfig {
    /// permessage-deflate was negotiated.
    pub compress: bool,
    /// The client's frames must be masked (it did not ask for `Nats-No-Masking`).
    pub masked: bool,
    /// The client looks like a browser: frames of at most 4 KiB.
    pub browser: bool,
    /// Compressed messages are sent in one frame (Safari does not take them fragmented).
    pub no_compressed_fragments: bool,
    /// The server's `max_payload`, which bounds compressed messages.
    pub max_payload: usize,
    /// Frames written are masked: this side dialled (a leafnode remote over WebSocket) and
    /// the other side did not agree to `Nats-No-Masking`.
    pub mask_out: bool,
}

/// The data frame being read.
struct InFrame {
    /// Payload bytes still to come.
    left: u64,
    mask: Option<[u8; 4]>,
    /// Offset into the mask of the next byte.
    mask_pos: usize,
    /// Last frame of its message.
    fin: bool,
}

/// A compressed message being inflated and handed to the reader.
struct Inflating {
    input: Vec<u8>,
    consumed: usize,
    produced: usize,
}

/// A client's WebSocket connection over `S` (TCP or TLS), as a byte stream.
pub struct WsStream<S> {
    inner: S,
    cfg: WsConfig,
    /// Its outbound side: the close reason for the close frame, and the writer's wake-up for
    /// pongs.
    out: Arc<Outbound>,

    // Reading.
    raw: Vec<u8>,
    rpos: usize,
    rend: usize,
    frame: Option<InFrame>,
    /// A fragmented message is in progress (its continuation frames are due).
    in_message: bool,
    /// The message in progress is compressed.
    message_compressed: bool,
    /// The compressed message collected so far.
    compressed: Vec<u8>,
    inflating: Option<Inflating>,
    inflated: Vec<u8>,
    inflated_pos: usize,
    inflater: Option<Decompress>,
    /// The client sent a close frame: reads end.
    peer_closed: bool,

    // Writing.
    wbuf: Vec<u8>,
    wpos: usize,
    /// Control frames waiting for the frame being written to end.
    ctrl: Vec<u8>,
    /// Payload bytes of the frame being written still to come from the writer.
    frame_left: usize,
    /// The close frame decided by the read side (an echo, or a protocol error).
    close_frame: Option<Vec<u8>>,
    close_queued: bool,
    deflater: Option<Compress>,
    /// This side dialled (a leafnode remote): closing waits for the other side's close frame.
    dialler: bool,
}

impl<S> WsStream<S> {
    pub fn new(inner: S, cfg: WsConfig, out: Arc<Outbound>) -> Self {
        WsStream {
            inner,
            cfg,
            out,
            raw: vec![0; READ_BUF],
            rpos: 0,
            rend: 0,
            frame: None,
            in_message: false,
            message_compressed: false,
            compressed: Vec::new(),
            inflating: None,
            inflated: Vec::new(),
            inflated_pos: 0,
            inflater: None,
            peer_closed: false,
            wbuf: Vec::new(),
            wpos: 0,
            ctrl: Vec::new(),
            frame_left: 0,
            close_frame: None,
            close_queued: false,
            deflater: None,
            dialler: false,
        }
    }

    /// Makes this the dialling side of the connection (RFC 6455's client): shutting down sends
    /// the close frame, then reads (discarding data) until the other side's close frame or the
    /// end of the stream before closing the socket; the caller bounds that wait (the writer
    /// gives a shutdown one second).
    pub fn set_dialler(&mut self) {
        self.dialler = true;
    }

    /// Bytes that arrived with the upgrade response, ahead of the first frame (the dialling
    /// side read them with the response).
    pub fn preload(&mut self, bytes: &[u8]) {
        if self.raw.len() < bytes.len() {
            self.raw.resize(bytes.len(), 0);
        }
        self.raw[..bytes.len()].copy_from_slice(bytes);
        self.rpos = 0;
        self.rend = bytes.len();
    }

    /// The limit on a compressed message, compressed and inflated.
    fn compressed_limit(&self) -> usize {
        self.cfg
            .max_payload
            .saturating_mul(COMPRESSED_MULTIPLE)
            .min(MAX_COMPRESSED)
    }

    /// Queues a close frame with `status` and `reason` and fails the read side.
    fn fail(&mut self, status: u16, reason: &str) -> io::Error {
        if self.close_frame.is_none() {
            let mut f = Vec::new();
            push_frame_as(
                &mut f,
                0x88,
                &close_payload(status, reason),
                self.cfg.mask_out,
            );
            self.close_frame = Some(f);
        }
        io::Error::new(io::ErrorKind::InvalidData, reason.to_string())
    }

    fn protocol_error(&mut self, reason: &str) -> io::Error {
        self.fail(CLOSE_PROTOCOL_ERROR, reason)
    }

    /// Decodes what the read buffer holds: payload bytes go to `dst`, control frames are
    /// answered, a completed compressed message starts inflating. Stops when `dst` is full,
    /// the buffer holds no complete header, a message waits to be inflated, or the client
    /// closed.
    fn decode(&mut self, dst: &mut ReadBuf<'_>) -> io::Result<()> {
        loop {
            if self.peer_closed || self.inflating.is_some() {
                return Ok(());
            }
            if let Some(f) = &mut self.frame {
                if f.left == 0 {
                    let fin = f.fin;
                    self.frame = None;
                    if fin && self.message_compressed {
                        self.start_inflating()?;
                    }
                    continue;
                }
                let avail = self.rend - self.rpos;
                let mut n = (f.left.min(avail as u64)) as usize;
                if !self.message_compressed {
                    n = n.min(dst.remaining());
                }
                if n == 0 {
                    return Ok(());
                }
                let chunk = &mut self.raw[self.rpos..self.rpos + n];
                if let Some(key) = f.mask {
                    unmask(chunk, key, f.mask_pos);
                    f.mask_pos = (f.mask_pos + n) & 3;
                }
                f.left -= n as u64;
                self.rpos += n;
                if self.message_compressed {
                    let limit = self.compressed_limit();
                    if self.compressed.len() + n > limit {
                        return Err(self.fail(CLOSE_MESSAGE_TOO_BIG, "Maximum Payload Exceeded"));
                    }
                    self.compressed
                        .extend_from_slice(&self.raw[self.rpos - n..self.rpos]);
                } else {
                    dst.put_slice(&self.raw[self.rpos - n..self.rpos]);
                }
                continue;
            }
            // A frame header, or a whole control frame.
            let raw = std::mem::take(&mut self.raw);
            let head = self.head(&raw[self.rpos..self.rend]);
            self.raw = raw;
            match head? {
                Some(n) => self.rpos += n,
                None => return Ok(()),
            }
        }
    }

    /// Reads the frame header at the front of `bytes` (a data frame's: it becomes the current
    /// frame) or the whole control frame there (answered). Returns the bytes it took, or `None`
    /// when `bytes` does not hold all of it yet.
    fn head(&mut self, bytes: &[u8]) -> io::Result<Option<usize>> {
        let mut cur = Cursor::new(bytes);
        let (hdr, len) = match FrameHeader::parse(&mut cur) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(None),
            Err(_) => {
                let op = bytes[0] & 0x0f;
                return Err(self.protocol_error(&format!("unknown opcode {op}")));
            }
        };
        let hlen = cur.position() as usize;
        if hdr.rsv2 || hdr.rsv3 {
            return Err(self.protocol_error("RSV2 and RSV3 must be clear"));
        }
        if hdr.rsv1 && !self.cfg.compress {
            return Err(self.protocol_error(
                "compressed frame received without negotiated permessage-deflate",
            ));
        }
        if self.cfg.masked && hdr.mask.is_none() {
            return Err(self.protocol_error("mask bit missing"));
        }
        if len & (1 << 63) != 0 {
            return Err(self.protocol_error("invalid 64-bit payload length"));
        }
        match hdr.opcode {
            OpCode::Control(c) => {
                if len > MAX_CONTROL_PAYLOAD as u64 {
                    return Err(self.protocol_error(&format!(
                        "control frame length bigger than maximum allowed of {MAX_CONTROL_PAYLOAD} bytes"
                    )));
                }
                if !hdr.is_final {
                    return Err(self.protocol_error("control frame does not have final bit set"));
                }
                if hdr.rsv1 {
                    return Err(self.protocol_error("control frame must not be compressed"));
                }
                let len = len as usize;
                if bytes.len() < hlen + len {
                    // The whole frame is needed; it fits the read buffer.
                    return Ok(None);
                }
                let mut payload = bytes[hlen..hlen + len].to_vec();
                if let Some(key) = hdr.mask {
                    unmask(&mut payload, key, 0);
                }
                self.control(c, &payload)?;
                Ok(Some(hlen + len))
            }
            OpCode::Data(Data::Continue) => {
                if !self.in_message || hdr.rsv1 {
                    return Err(self.protocol_error("invalid continuation frame"));
                }
                self.in_message = !hdr.is_final;
                self.begin_frame(&hdr, len);
                Ok(Some(hlen))
            }
            OpCode::Data(_) => {
                if self.in_message {
                    return Err(self.protocol_error(
                        "new message started before final frame for previous message was received",
                    ));
                }
                self.in_message = !hdr.is_final;
                self.message_compressed = hdr.rsv1;
                self.begin_frame(&hdr, len);
                Ok(Some(hlen))
            }
        }
    }

    /// Decodes `buf`, bytes just read into the reader's own buffer, in place: payloads are
    /// unmasked and moved to the front over the frame headers, control frames answered; a
    /// header (or control frame) cut off at the end moves to the read buffer, where the next
    /// read completes it. Returns how many payload bytes are at the front. Only without
    /// compression (a compressed message is collected first).
    fn decode_in_place(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (mut r, mut w) = (0, 0);
        while r < buf.len() && !self.peer_closed {
            if let Some(f) = &mut self.frame {
                if f.left == 0 {
                    self.frame = None;
                    continue;
                }
                let k = (f.left.min((buf.len() - r) as u64)) as usize;
                if let Some(key) = f.mask {
                    unmask(&mut buf[r..r + k], key, f.mask_pos);
                    f.mask_pos = (f.mask_pos + k) & 3;
                }
                f.left -= k as u64;
                if w != r {
                    buf.copy_within(r..r + k, w);
                }
                r += k;
                w += k;
                continue;
            }
            match self.head(&buf[r..])? {
                Some(n) => r += n,
                None => {
                    let rest = buf.len() - r;
                    self.raw[..rest].copy_from_slice(&buf[r..]);
                    self.rpos = 0;
                    self.rend = rest;
                    r = buf.len();
                }
            }
        }
        Ok(w)
    }

    fn begin_frame(&mut self, hdr: &FrameHeader, len: u64) {
        self.frame = Some(InFrame {
            left: len,
            mask: hdr.mask,
            mask_pos: 0,
            fin: hdr.is_final,
        });
    }

    /// Answers a ping, ignores a pong, answers a close (and ends reading).
    fn control(&mut self, c: Control, payload: &[u8]) -> io::Result<()> {
        match c {
            Control::Ping => {
                push_frame_as(&mut self.ctrl, 0x8a, payload, self.cfg.mask_out);
                self.out.wake_writer();
            }
            Control::Pong => {}
            Control::Close => {
                let reply = match payload.len() {
                    0 => Vec::new(),
                    1 => return Err(self.protocol_error("close frame payload cannot be 1 byte")),
                    _ => {
                        let status = u16::from_be_bytes([payload[0], payload[1]]);
                        if !CloseCode::from(status).is_allowed() {
                            return Err(
                                self.protocol_error(&format!("invalid close status code {status}"))
                            );
                        }
                        match std::str::from_utf8(&payload[2..]) {
                            Ok(reason) => close_payload(status, reason),
                            Err(_) => close_payload(
                                CLOSE_INVALID_PAYLOAD,
                                "invalid utf8 body in close frame",
                            ),
                        }
                    }
                };
                let mut frame = Vec::with_capacity(reply.len() + 2);
                push_frame_as(&mut frame, 0x88, &reply, self.cfg.mask_out);
                self.close_frame = Some(frame);
                self.peer_closed = true;
            }
            Control::Reserved(op) => {
                return Err(self.protocol_error(&format!("unknown opcode {}", op)));
            }
        }
        Ok(())
    }

    fn start_inflating(&mut self) -> io::Result<()> {
        let mut input = std::mem::take(&mut self.compressed);
        if input.len() + DEFLATE_TAIL.len() > self.compressed_limit() {
            return Err(self.fail(CLOSE_MESSAGE_TOO_BIG, "Maximum Payload Exceeded"));
        }
        input.extend_from_slice(&DEFLATE_TAIL);
        self.message_compressed = false;
        self.inflating = Some(Inflating {
            input,
            consumed: 0,
            produced: 0,
        });
        Ok(())
    }

    /// Inflates the next part of the message being inflated into `self.inflated`.
    fn inflate_some(&mut self) -> io::Result<()> {
        let limit = self.compressed_limit();
        let Some(job) = &mut self.inflating else {
            return Ok(());
        };
        let d = self.inflater.get_or_insert_with(|| Decompress::new(false));
        self.inflated.clear();
        self.inflated_pos = 0;
        self.inflated.reserve(32 * 1024);
        let before = d.total_in();
        let status = d.decompress_vec(
            &job.input[job.consumed..],
            &mut self.inflated,
            FlushDecompress::Sync,
        );
        let took = (d.total_in() - before) as usize;
        job.consumed += took;
        job.produced += self.inflated.len();
        let done = match status {
            Err(_) => {
                self.inflating = None;
                return Err(self.protocol_error("invalid compressed data"));
            }
            Ok(Status::StreamEnd) => true,
            // All input in and room left over: the sync flush is complete. No progress at all
            // would mean a truncated stream: what it held has been handed on.
            Ok(_) => {
                (job.consumed == job.input.len() && self.inflated.len() < 32 * 1024)
                    || (took == 0 && self.inflated.is_empty())
            }
        };
        if job.produced > limit {
            self.inflating = None;
            return Err(self.fail(CLOSE_MESSAGE_TOO_BIG, "Maximum Payload Exceeded"));
        }
        if done {
            // No context takeover: every message starts a fresh inflater.
            d.reset(false);
            let mut input = self.inflating.take().map(|j| j.input).unwrap_or_default();
            input.clear();
            self.compressed = input;
        }
        Ok(())
    }

    /// Moves the unread bytes to the front of the read buffer when the room behind them could
    /// not hold a whole frame header and control frame.
    fn compact(&mut self) {
        if self.rpos == self.rend {
            self.rpos = 0;
            self.rend = 0;
        } else if self.raw.len() - self.rend < MAX_CONTROL_PAYLOAD + 14 {
            self.raw.copy_within(self.rpos..self.rend, 0);
            self.rend -= self.rpos;
            self.rpos = 0;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Writes out pending frame bytes, then (between frames) the queued control frames.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.wpos < self.wbuf.len() {
                let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.wbuf[self.wpos..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.wpos += n;
                continue;
            }
            self.wbuf.clear();
            self.wpos = 0;
            if self.frame_left == 0 && !self.ctrl.is_empty() {
                std::mem::swap(&mut self.wbuf, &mut self.ctrl);
                continue;
            }
            return Poll::Ready(Ok(()));
        }
    }

    /// Writes payload bytes of the frame already announced.
    fn poll_continue(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_drain(cx))?;
        let n = self.frame_left.min(buf.len());
        let w = ready!(Pin::new(&mut self.inner).poll_write(cx, &buf[..n]))?;
        if w == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        self.frame_left -= w;
        Poll::Ready(Ok(w))
    }

    /// Compresses `buf` into one message (fragmented for browsers that take it) in `wbuf`.
    fn deflate_into_wbuf(&mut self, buf: &[u8]) -> io::Result<()> {
        let c = self
            .deflater
            .get_or_insert_with(|| Compress::new(Compression::fast(), false));
        let mut out = Vec::with_capacity(buf.len() / 2 + 64);
        let mut consumed = 0;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(1024));
            }
            let before = c.total_in();
            c.compress_vec(&buf[consumed..], &mut out, FlushCompress::Sync)
                .map_err(io::Error::other)?;
            consumed += (c.total_in() - before) as usize;
            // A sync flush is complete when all input went in and the output has room left.
            if consumed == buf.len() && out.capacity() - out.len() >= 64 {
                break;
            }
        }
        c.reset();
        if out.ends_with(&DEFLATE_TAIL) {
            out.truncate(out.len() - DEFLATE_TAIL.len());
        }
        let frame = if self.cfg.browser && !self.cfg.no_compressed_fragments {
            BROWSER_FRAME
        } else {
            usize::MAX
        };
        push_message(&mut self.wbuf, &out, frame, true, self.cfg.mask_out);
        Ok(())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.inflated_pos < this.inflated.len() {
                let n = (this.inflated.len() - this.inflated_pos).min(dst.remaining());
                dst.put_slice(&this.inflated[this.inflated_pos..this.inflated_pos + n]);
                this.inflated_pos += n;
                return Poll::Ready(Ok(()));
            }
            if this.inflating.is_some() {
                this.inflate_some()?;
                continue;
            }
            if this.rpos == this.rend && !this.cfg.compress && !this.peer_closed {
                // Nothing buffered: read straight into the reader's buffer and decode there.
                if dst.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
                // SAFETY: the unfilled part is only written to (through `sub`), never
                // de-initialized.
                let mut sub = ReadBuf::uninit(unsafe { dst.unfilled_mut() });
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut sub))?;
                let n = sub.filled().len();
                if n == 0 {
                    return Poll::Ready(Ok(()));
                }
                let w = this.decode_in_place(sub.filled_mut())?;
                // SAFETY: `sub` covers the start of `dst`'s unfilled part and the read
                // initialized its first `n` bytes.
                unsafe { dst.assume_init(n) };
                dst.advance(w);
                if w > 0 {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let before = dst.filled().len();
            this.decode(dst)?;
            if dst.filled().len() > before || this.inflating.is_some() {
                if this.inflating.is_some() && dst.filled().len() == before {
                    continue;
                }
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                // End of stream: the connection closes as closed by the client.
                return Poll::Ready(Ok(()));
            }
            this.compact();
            let mut rb = ReadBuf::new(&mut this.raw[this.rend..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                return Poll::Ready(Ok(()));
            }
            this.rend += n;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.frame_left > 0 {
            return this.poll_continue(cx, buf);
        }
        ready!(this.poll_drain(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.cfg.compress && buf.len() > COMPRESS_THRESHOLD {
            this.deflate_into_wbuf(buf)?;
            // Whatever the socket does not take now goes with the next write or flush.
            let _ = this.poll_drain(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        if this.cfg.mask_out || (this.cfg.browser && buf.len() > BROWSER_FRAME) {
            let frame = if this.cfg.browser {
                BROWSER_FRAME
            } else {
                usize::MAX
            };
            push_message(&mut this.wbuf, buf, frame, false, this.cfg.mask_out);
            let _ = this.poll_drain(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        let mut hdr = Vec::with_capacity(10);
        push_header(&mut hdr, 0x82, buf.len());
        if !this.inner.is_write_vectored() {
            this.wbuf.extend_from_slice(&hdr);
            this.wbuf.extend_from_slice(buf);
            let _ = this.poll_drain(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        // One frame; its payload goes straight from the writer's buffer.
        let slices = [IoSlice::new(&hdr), IoSlice::new(buf)];
        let w = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &slices))?;
        if w == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        this.frame_left = buf.len();
        if w < hdr.len() {
            this.wbuf.extend_from_slice(&hdr[w..]);
            return this.poll_continue(cx, buf);
        }
        let p = w - hdr.len();
        this.frame_left -= p;
        if p == 0 {
            return this.poll_continue(cx, buf);
        }
        Poll::Ready(Ok(p))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_queued {
            this.close_queued = true;
            let frame = this.close_frame.take().unwrap_or_else(|| {
                let reason = this
                    .out
                    .close_reason()
                    .unwrap_or(CloseReason::ServerShutdown);
                let mut f = Vec::new();
                let payload = close_payload(close_status(reason), &reason.to_string());
                push_frame_as(&mut f, 0x88, &payload, this.cfg.mask_out);
                f
            });
            this.ctrl.extend_from_slice(&frame);
        }
        // A frame cut short can not be followed by a close frame: the socket just closes.
        if this.frame_left == 0 {
            ready!(this.poll_drain(cx))?;
            if this.dialler {
                ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
                ready!(this.poll_close_reply(cx));
            }
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Reads until the other side's close frame has arrived (or the stream ended or failed),
    /// discarding data frames.
    fn poll_close_reply(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut scratch = [0u8; 4096];
        loop {
            if self.peer_closed {
                return Poll::Ready(());
            }
            let mut rb = ReadBuf::new(&mut scratch);
            match Pin::new(&mut *self).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {}
            }
        }
    }
}

/// The close status nats-server sends for a connection closed for `reason`.
pub fn close_status(reason: CloseReason) -> u16 {
    use CloseReason::*;
    match reason {
        ClientClosed => CLOSE_NORMAL,
        AuthenticationTimeout
        | AuthenticationViolation
        | AuthenticationExpired
        | SlowConsumerPendingBytes
        | SlowConsumerWriteDeadline
        | MaxAccountConnectionsExceeded
        | MaxConnectionsExceeded
        | MaxControlLineExceeded
        | MaxSubscriptionsExceeded
        | Revocation => CLOSE_POLICY_VIOLATION,
        ProtocolViolation => CLOSE_PROTOCOL_ERROR,
        MaxPayloadExceeded => CLOSE_MESSAGE_TOO_BIG,
        WriteError | ReadError | StaleConnection | ServerShutdown => CLOSE_GOING_AWAY,
        // nats-server sends 1015 here, a status RFC 6455 reserves for "no close frame".
        TlsHandshakeError | DuplicateRoute | ClusterNameConflict | DuplicateServerName
        | WrongPort | MissingAccount => CLOSE_INTERNAL_ERROR,
    }
}

/// A close frame's payload: the status, then the reason (cut to fit a control frame, with
/// `...` marking the cut, as nats-server does).
fn close_payload(status: u16, reason: &str) -> Vec<u8> {
    let mut reason = reason;
    let mut cut = false;
    if reason.len() > MAX_CONTROL_PAYLOAD - 2 {
        let mut end = MAX_CONTROL_PAYLOAD - 5;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason = &reason[..end];
        cut = true;
    }
    let mut p = Vec::with_capacity(2 + reason.len() + 3);
    p.extend_from_slice(&status.to_be_bytes());
    p.extend_from_slice(reason.as_bytes());
    if cut {
        p.extend_from_slice(b"...");
    }
    p
}

/// A whole close frame (server frames are not masked).
pub fn close_frame(status: u16, reason: &str) -> Vec<u8> {
    let payload = close_payload(status, reason);
    let mut f = Vec::with_capacity(payload.len() + 2);
    push_frame(&mut f, 0x88, &payload);
    f
}

/// Appends an unmasked frame header: `first` is the first byte (FIN, RSV1, opcode).
fn push_header(out: &mut Vec<u8>, first: u8, len: usize) {
    out.push(first);
    if len <= 125 {
        out.push(len as u8);
    } else if len <= u16::MAX as usize {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Appends one whole unmasked frame.
pub fn push_frame(out: &mut Vec<u8>, first: u8, payload: &[u8]) {
    push_header(out, first, payload.len());
    out.extend_from_slice(payload);
}

/// Appends one whole frame, masked with a fresh random key when `mask` (a client's frame).
fn push_frame_as(out: &mut Vec<u8>, first: u8, payload: &[u8], mask: bool) {
    if !mask {
        return push_frame(out, first, payload);
    }
    let at = out.len();
    push_header(out, first, payload.len());
    out[at + 1] |= 0x80;
    let key = fastrand::u32(..).to_ne_bytes();
    out.extend_from_slice(&key);
    let start = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[start..], key, 0);
}

/// Appends a binary message in frames of at most `frame` bytes; `compressed` marks the first
/// frame with RSV1.
fn push_message(out: &mut Vec<u8>, payload: &[u8], frame: usize, compressed: bool, mask: bool) {
    let mut rest = payload;
    let mut first = true;
    loop {
        let n = rest.len().min(frame);
        let fin = n == rest.len();
        let mut b = if first { 0x02 } else { 0x00 };
        if fin {
            b |= 0x80;
        }
        if first && compressed {
            b |= 0x40;
        }
        push_frame_as(out, b, &rest[..n], mask);
        rest = &rest[n..];
        first = false;
        if fin {
            break;
        }
    }
}

/// XORs `buf` with the mask `key`, starting at offset `pos` of the key.
pub fn unmask(buf: &mut [u8], key: [u8; 4], pos: usize) {
    let k = [
        key[pos & 3],
        key[(pos + 1) & 3],
        key[(pos + 2) & 3],
        key[(pos + 3) & 3],
    ];
    let wide = u64::from_ne_bytes([k[0], k[1], k[2], k[3], k[0], k[1], k[2], k[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= k[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmask_at_any_offset_matches_bytewise() {
        let key = [0x12, 0x34, 0x56, 0x78];
        let data: Vec<u8> = (0..200u32).map(|i| (i * 7) as u8).collect();
        for pos in 0..4 {
            for len in [0, 1, 3, 7, 8, 9, 31, 200] {
                let mut fast = data[..len].to_vec();
                unmask(&mut fast, key, pos);
                let slow: Vec<u8> = data[..len]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ key[(pos + i) & 3])
                    .collect();
                assert_eq!(fast, slow, "pos {pos} len {len}");
            }
        }
    }

    #[test]
    fn close_reasons_are_cut_to_a_control_frame() {
        let long = "x".repeat(300);
        let p = close_payload(1002, &long);
        assert_eq!(p.len(), MAX_CONTROL_PAYLOAD);
        assert!(p.ends_with(b"..."));
        assert_eq!(&p[..2], &1002u16.to_be_bytes());
        assert_eq!(close_status(CloseReason::MaxPayloadExceeded), 1009);
        assert_eq!(close_status(CloseReason::ClientClosed), 1000);
    }

    /// A masked client frame.
    fn client_frame(b0: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut f = Vec::new();
        push_header(&mut f, b0, payload.len());
        f[1] |= 0x80;
        f.extend_from_slice(&key);
        let at = f.len();
        f.extend_from_slice(payload);
        unmask(&mut f[at..], key, 0);
        f
    }

    /// Frames of every size (fragments, pings between them) arriving in reads of random sizes
    /// come out as the payload bytes in order, whichever path (in place or through the read
    /// buffer) each read takes; every ping is answered.
    #[tokio::test]
    async fn payloads_survive_any_read_boundaries() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut rng = fastrand::Rng::with_seed(7);
        for round in 0..40 {
            let mut wire = Vec::new();
            let mut want = Vec::new();
            let mut pings = 0;
            for i in 0..30 {
                let len = match rng.u8(..4) {
                    0 => rng.usize(..10),
                    1 => rng.usize(..200),
                    2 => rng.usize(..70_000),
                    _ => rng.usize(..3000),
                };
                let payload: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
                want.extend_from_slice(&payload);
                let key = [rng.u8(..), rng.u8(..), rng.u8(..), rng.u8(..)];
                if len > 2 && rng.bool() {
                    // Two fragments with a ping between them.
                    let cut = len / 2;
                    wire.extend(client_frame(0x02, &payload[..cut], key));
                    wire.extend(client_frame(0x89, b"p", key));
                    wire.extend(client_frame(0x80, &payload[cut..], key));
                    pings += 1;
                } else {
                    wire.extend(client_frame(0x82, &payload, key));
                }
            }
            let (client, server) = tokio::io::duplex(1 << 20);
            let out = Outbound::new(round, "127.0.0.1:1".parse().expect("addr"), 1 << 20);
            let cfg = WsConfig {
                masked: true,
                max_payload: 1 << 20,
                ..WsConfig::default()
            };
            let mut ws = WsStream::new(server, cfg, out);
            let (mut cr, mut cw) = tokio::io::split(client);
            let chunks: Vec<usize> = (0..wire.len()).map(|_| rng.usize(1..5000)).collect();
            let writer = tokio::spawn(async move {
                let mut pos = 0;
                for c in chunks {
                    if pos >= wire.len() {
                        break;
                    }
                    let end = (pos + c).min(wire.len());
                    cw.write_all(&wire[pos..end]).await.expect("write");
                    pos = end;
                    tokio::task::yield_now().await;
                }
                cw
            });
            let mut got = Vec::new();
            while got.len() < want.len() {
                let mut b = vec![0u8; 1 + rng.usize(..70_000)];
                let n = ws.read(&mut b).await.expect("read");
                assert!(n > 0, "round {round}: early end at {}", got.len());
                got.extend_from_slice(&b[..n]);
            }
            assert!(got == want, "round {round}: payload bytes differ");
            let _cw = writer.await.expect("writer");
            // The pongs go out on a flush.
            ws.flush().await.expect("flush");
            let mut pongs = vec![0u8; pings * 3];
            if pings > 0 {
                cr.read_exact(&mut pongs).await.expect("pongs");
            }
            assert!(
                pongs.chunks(3).all(|p| p == [0x8a, 1, b'p']),
                "round {round}"
            );
        }
    }

    #[test]
    fn messages_split_into_frames() {
        let mut out = Vec::new();
        push_message(&mut out, &[7u8; 10], 4, true, false);
        // 3 frames: 4 + 4 + 2 bytes; RSV1 and the opcode on the first, FIN on the last.
        assert_eq!(out[0], 0x42);
        assert_eq!(out[1], 4);
        assert_eq!(out[6], 0x00);
        assert_eq!(out[12], 0x80);
        assert_eq!(out[13], 2);
        assert_eq!(out.len(), 6 + 6 + 4);
    }

    /// A dialling side's frames are masked (and compressed when agreed); the accepting side,
    /// which requires masks, reads them back; unmasked ones it refuses.
    #[tokio::test]
    async fn a_dialling_side_masks_what_it_writes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for (compress, mask_out) in [(false, true), (true, true), (false, false)] {
            let (a, b) = tokio::io::duplex(1 << 16);
            let out = || Outbound::new(1, "127.0.0.1:1".parse().expect("addr"), 1 << 20);
            let dialler = WsConfig {
                compress,
                mask_out,
                max_payload: 1 << 20,
                ..WsConfig::default()
            };
            let acceptor = WsConfig {
                compress,
                masked: true,
                max_payload: 1 << 20,
                ..WsConfig::default()
            };
            let mut w = WsStream::new(a, dialler, out());
            let mut r = WsStream::new(b, acceptor, out());
            let text = b"LS+ foo.bar\r\n".repeat(20);
            w.write_all(&text).await.expect("write");
            w.flush().await.expect("flush");
            let mut got = vec![0u8; text.len()];
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(2), r.read_exact(&mut got))
                    .await
                    .expect("in time");
            if mask_out {
                read.expect("read");
                assert_eq!(got, text, "compress={compress}");
            } else {
                assert!(read.is_err(), "an unmasked frame was taken");
            }
        }
    }
}
