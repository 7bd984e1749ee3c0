//! The writer task of a connection: drains its outbound buffer to the socket, one batch per
//! write call sequence, each call bounded by `write_deadline`; a connection that cannot take
//! its batch in time is cut off as a slow consumer.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::context::ConnContext;
use crate::router::{CloseReason, Outbound};

/// How long a writer waits with nothing to write before shrinking its buffers.
const IDLE_SHRINK: Duration = Duration::from_secs(1);

/// Drains `out` to `wr` until the connection closes.
pub async fn write_loop<W: AsyncWrite>(out: Arc<Outbound>, wr: W, ctx: Arc<ConnContext>) {
    tokio::pin!(wr);
    let mut batch: Vec<u8> = Vec::new();
    loop {
        let deadline = ctx.write_deadline();
        let closed = out.take_batch(&mut batch);
        if batch.is_empty() {
            if closed {
                break;
            }
            // Between batches, bytes a stream holds back of its own go out: records TLS could
            // not write yet, a WebSocket stream's pongs (it wakes this task for them).
            match tokio::time::timeout(deadline, wr.flush()).await {
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
        // Write in as many calls as the socket takes, telling stalled publishers about each bit
        // of progress; the write deadline applies to each call.
        let mut off = 0;
        let mut failed = None;
        while off < batch.len() {
            match tokio::time::timeout(deadline, wr.write(&batch[off..])).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    failed = Some(CloseReason::WriteError);
                    break;
                }
                Ok(Ok(n)) => {
                    off += n;
                    out.wrote(batch.len() - off);
                }
                Err(_) => {
                    tracing::info!(
                        "{} - cid:{} - Slow Consumer Detected: WriteDeadline of {:?} exceeded",
                        out.addr,
                        out.cid,
                        deadline
                    );
                    failed = Some(CloseReason::SlowConsumerWriteDeadline);
                    break;
                }
            }
        }
        if let Some(reason) = failed {
            out.close(reason);
            break;
        }
        Outbound::recycle(&mut batch);
        out.wrote(0);
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
}
