//! A leafnode remote over WebSocket (`ws://`, `wss://`), as nats-server dials one: the HTTP
//! upgrade to the hub's `/leafnode` path (asking for permessage-deflate with `ws_compression`
//! and for unmasked frames with `ws_no_masking`), checked as nats-server checks the answer.
//! The frames themselves are `conn::websocket::stream`'s, writing masked unless the hub agreed.

use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::conn::websocket::stream::WsConfig;

/// The longest upgrade answer read.
const MAX_RESPONSE: usize = 64 * 1024;
/// How long the hub may take to answer the upgrade.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends the upgrade request for `host` (`host:port`) and reads the hub's answer. Returns the
/// frames' settings and the bytes read past the answer (the first frames).
pub(super) async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    host: &str,
    compress: bool,
    no_masking: bool,
    max_payload: usize,
) -> Result<(WsConfig, Vec<u8>), String> {
    let key: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    let mut req = format!(
        "GET /leafnode HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if compress {
        req.push_str("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n");
    }
    if no_masking {
        req.push_str("Nats-No-Masking: true\r\n");
    }
    req.push_str("\r\n");
    let work = async {
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| format!("writing the upgrade request: {e}"))?;
        let mut buf = Vec::with_capacity(1024);
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let rest = buf.split_off(end + 4);
                return Ok((buf, rest));
            }
            if buf.len() >= MAX_RESPONSE {
                return Err("upgrade response too large".to_string());
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) => return Err("connection closed during the upgrade".to_string()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("reading the upgrade response: {e}")),
            }
        }
    };
    let (head, rest) = tokio::time::timeout(UPGRADE_TIMEOUT, work)
        .await
        .map_err(|_| "upgrade timeout".to_string())??;
    let cfg = check_response(&head, &key, compress, no_masking, max_payload)?;
    Ok((cfg, rest))
}

/// nats-server's checks of the answer: 101, `Upgrade: websocket`, `Connection: upgrade`, the
/// accept key; compression only with both no-context-takeover parameters; masking unless the
/// hub echoed `Nats-No-Masking`.
fn check_response(
    head: &[u8],
    key: &str,
    compress: bool,
    no_masking: bool,
    max_payload: usize,
) -> Result<WsConfig, String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    let header = |name: &str| -> Vec<String> {
        text.split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    };
    let first = |name: &str| header(name).into_iter().next().unwrap_or_default();
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    if code != "101"
        || !first("Upgrade").eq_ignore_ascii_case("websocket")
        || !first("Connection").eq_ignore_ascii_case("upgrade")
        || first("Sec-WebSocket-Accept") != accept
    {
        return Err(format!("invalid websocket connection ({status})"));
    }
    let mut cfg = WsConfig {
        compress: false,
        masked: false,
        browser: false,
        no_compressed_fragments: false,
        max_payload,
        mask_out: true,
    };
    if compress {
        let ext = header("Sec-WebSocket-Extensions")
            .join(",")
            .to_ascii_lowercase();
        if ext.contains("permessage-deflate") {
            if !(ext.contains("server_no_context_takeover")
                && ext.contains("client_no_context_takeover"))
            {
                return Err("compression negotiation error".to_string());
            }
            cfg.compress = true;
        }
    }
    if no_masking && first("Nats-No-Masking") == "true" {
        cfg.mask_out = false;
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(key: &str, extra: &str) -> Vec<u8> {
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{extra}\r\n").into_bytes()
    }

    #[test]
    fn the_hub_answer_is_checked_as_nats_server_checks_it() {
        let k = "dGhlIHNhbXBsZSBub25jZQ==";
        let c = check_response(&answer(k, ""), k, true, true, 1024).expect("ok");
        assert!(!c.compress && c.mask_out, "nothing agreed: masked, plain");
        let c = check_response(
            &answer(
                k,
                "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\nNats-No-Masking: true\r\n",
            ),
            k,
            true,
            true,
            1024,
        )
        .expect("ok");
        assert!(c.compress && !c.mask_out);
        assert!(check_response(
            &answer(k, "Sec-WebSocket-Extensions: permessage-deflate\r\n"),
            k,
            true,
            false,
            1024
        )
        .is_err());
        assert!(
            check_response(&answer(k, ""), "AAAAAAAAAAAAAAAAAAAAAA==", false, false, 1).is_err()
        );
        assert!(check_response(b"HTTP/1.1 404 Not Found\r\n\r\n", k, false, false, 1).is_err());
    }
}
