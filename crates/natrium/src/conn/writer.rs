//! The writer task of a connection: drains its outbound queue to the socket, one batch of
//! segments per sequence of vectored writes, each call bounded by `write_deadline`; a
//! connection that cannot take its batch in time is cut off as a slow consumer.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use smallvec::SmallVec;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::context::ConnContext;
use crate::router::{CloseReason, Outbound};

/// How long a writer waits with nothing to write before shrinking its buffers.
const IDLE_SHRINK: Duration = Duration::from_secs(1);
/// Segments handed to one vectored write.
const MAX_IOV: usize = 64;

/// Drains `out` to `wr` until the connection closes.
pub async fn write_loop<W: AsyncWrite>(out: Arc<Outbound>, wr: W, ctx: Arc<ConnContext>) {
    tokio::pin!(wr);
    let mut batch: VecDeque<Vec<u8>> = VecDeque::new();
    loop {
        let deadline = ctx.write_deadline();
        let closed = out.take_batch(&mut batch);
        if batch.is_empty() {
            if closed {
                break;
            }
            // Between batches, bytes a stream holds back of its own go out: records TLS could
            // not write yet, a WebSocket stream's pongs (it wakes this task for them). Polled
            // once before a deadline is set: on TCP it is done at once, and the timer would
            // cost more than the flush.
            let once = std::future::poll_fn(|cx| Poll::Ready(wr.as_mut().poll_flush(cx)));
            let flushed = match once.await {
                Poll::Ready(r) => Ok(r),
                Poll::Pending => tokio::time::timeout(deadline, wr.flush()).await,
            };
            match flushed {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    out.close(CloseReason::WriteError);
                    break;
                }
                Err(_) => {
                    out.close(CloseReason::SlowConsumerWriteDeadline);
                    break;
                }
            }
            // Idle for a while: give big buffers back (a busy connection keeps them).
            if tokio::time::timeout(IDLE_SHRINK, out.writable())
                .await
                .is_err()
            {
                out.shrink_idle(&mut batch);
            }
            continue;
        }
        let failed = write_batch(wr.as_mut(), &batch, deadline, &out).await;
        if let Some(reason) = failed {
            out.close(reason);
            break;
        }
        // `write_batch` told stalled publishers of the last write; the segments are taken
        // back with the next batch.
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
}

/// Writes every segment of `batch` in as many vectored calls as the socket takes, telling
/// stalled publishers about each bit of progress; the write deadline applies to each call.
/// Returns why the connection must close, if it must.
async fn write_batch<W: AsyncWrite>(
    mut wr: Pin<&mut W>,
    batch: &VecDeque<Vec<u8>>,
    deadline: Duration,
    out: &Outbound,
) -> Option<CloseReason> {
    let mut left: usize = batch.iter().map(Vec::len).sum();
    let (mut seg, mut off) = (0, 0);
    while left > 0 {
        // The slices are built in each poll, on the stack: held across the await they would
        // make every connection's writer task that much larger.
        let write = std::future::poll_fn(|cx| {
            let iov: SmallVec<[IoSlice<'_>; MAX_IOV]> = std::iter::once(&batch[seg][off..])
                .chain(batch.iter().skip(seg + 1).map(Vec::as_slice))
                .filter(|b| !b.is_empty())
                .take(MAX_IOV)
                .map(IoSlice::new)
                .collect();
            // One slice goes as a plain write: on a TCP socket that is send(2), which costs
            // the kernel less than writev(2)'s iovec import (req-reply 16x2: see bench/README).
            match iov.as_slice() {
                [one] => wr.as_mut().poll_write(cx, one),
                _ => wr.as_mut().poll_write_vectored(cx, &iov),
            }
        });
        match tokio::time::timeout(deadline, write).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(CloseReason::WriteError),
            Ok(Ok(n)) => {
                left -= n;
                // Step past what was written (and past empty segments).
                let mut n = n;
                while seg < batch.len() && (n > 0 || off == batch[seg].len()) {
                    let rest = batch[seg].len() - off;
                    if n < rest {
                        off += n;
                        n = 0;
                    } else {
                        n -= rest;
                        seg += 1;
                        off = 0;
                    }
                }
                out.wrote(left);
            }
            Err(_) => {
                tracing::info!(
                    "{} - cid:{} - Slow Consumer Detected: WriteDeadline of {:?} exceeded",
                    out.addr,
                    out.cid,
                    deadline
                );
                return Some(CloseReason::SlowConsumerWriteDeadline);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Context;

    /// A socket that takes at most `max` bytes per call, across as many slices as it is given.
    struct Trickle {
        got: Vec<u8>,
        max: usize,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let me = self.get_mut();
            let n = buf.len().min(me.max);
            me.got.extend_from_slice(&buf[..n]);
            me.calls += 1;
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let me = self.get_mut();
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(me.max - n);
                me.got.extend_from_slice(&b[..take]);
                n += take;
                if n == me.max {
                    break;
                }
            }
            me.calls += 1;
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn partial_vectored_writes_send_every_segment_once_in_order() {
        let out = Outbound::new(1, "127.0.0.1:1".parse().unwrap(), 1 << 20);
        // Segments of assorted sizes, an empty one among them, more than one call's worth.
        let mut batch = VecDeque::new();
        let mut want = Vec::new();
        for i in 0..(MAX_IOV * 2 + 3) {
            let seg: Vec<u8> = (0..(i * 7) % 23).map(|j| (i + j) as u8).collect();
            want.extend_from_slice(&seg);
            batch.push_back(seg);
        }
        for max in [1, 5, 22, 64, 1000, usize::MAX] {
            let mut sock = Trickle {
                got: Vec::new(),
                max,
                calls: 0,
            };
            let failed =
                write_batch(Pin::new(&mut sock), &batch, Duration::from_secs(1), &out).await;
            assert!(failed.is_none());
            assert_eq!(sock.got, want, "max {max}");
            if max == usize::MAX {
                // Empty segments skipped, `MAX_IOV` segments per call.
                let non_empty = batch.iter().filter(|s| !s.is_empty()).count();
                assert_eq!(sock.calls, non_empty.div_ceil(MAX_IOV));
            }
        }
    }
}
