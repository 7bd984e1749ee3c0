//! Taking over an accepted TCP connection: the per-address and server-wide connection limits,
//! registration, the INFO greeting (or the TLS handshake around it), then the connection's
//! reader and writer tasks.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::client::Client;
use super::context::ConnContext;
use super::reader::Conn;
use super::tls::{Accepted, TlsServer};
use crate::router::CloseReason;

/// Takes over `stream` from `peer` and spawns its connection task.
pub fn accept(ctx: &Arc<ConnContext>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let cid = ctx.registry.next_cid();
    let Some(slot) = ctx.registry.take_unauthenticated(peer.ip()) else {
        tracing::debug!(
            "{peer} - cid:{cid} - maximum unauthenticated connections from this address exceeded"
        );
        refuse(
            stream,
            "-ERR 'maximum unauthenticated connections per address exceeded'\r\n",
        );
        return;
    };
    let client = Client::new(cid, peer, ctx.max_pending);
    if ctx.registry.register(&client).is_err() {
        tracing::error!("{peer} - cid:{cid} - maximum connections exceeded");
        refuse(stream, "-ERR 'maximum connections exceeded'\r\n");
        return;
    }
    tracing::debug!("{peer} - cid:{cid} - Client connection created");
    let nonce = ctx
        .auth
        .current()
        .needs_nonce()
        .then(crate::auth::new_nonce);
    let tls = ctx.tls_server();
    let info = ctx.info(Some((cid, &peer.ip().to_string(), nonce.clone())), false);
    let conn = Conn::new(client, ctx.clone())
        .with_nonce(nonce)
        .with_slot(slot);
    match tls {
        None => {
            tokio::spawn(conn.run(stream, info));
        }
        Some(tls) => {
            tokio::spawn(serve_tls(tls, conn, stream, info));
        }
    }
}

/// Runs the TLS handshake (abandoned if the server closes the connection meanwhile), then the
/// connection over the encrypted stream.
async fn serve_tls(tls: Arc<TlsServer>, conn: Conn, stream: TcpStream, info: Vec<u8>) {
    let outcome = tokio::select! {
        biased;
        _ = conn.killed() => Err(CloseReason::ServerShutdown),
        r = tls.handshake(stream, &info, conn.peer()) => r,
    };
    match outcome {
        // `allow_non_tls` and a plaintext client: INFO went out already.
        Ok(Accepted::Plain(stream)) => conn.run(stream, Vec::new()).await,
        Ok(Accepted::Tls(h)) => {
            // Sent inside TLS only when the handshake came first.
            let info = if h.first { info } else { Vec::new() };
            conn.with_tls(h.names, h.state, h.key_id)
                .run(h.stream, info)
                .await;
        }
        Err(reason) => conn.abort(reason),
    }
}

/// Writes one `-ERR` to a connection refused at accept and closes it (in its own task).
fn refuse(stream: TcpStream, err: &'static str) {
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut stream = stream;
        let _ = stream.write_all(err.as_bytes()).await;
        let _ = stream.shutdown().await;
    });
}
