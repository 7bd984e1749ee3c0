//! Minting NATS JWTs in tests (ed25519-nkey signed, as `nsc` writes them) and logging in with one
//! by hand over a raw socket, signing the server's nonce.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use natrium::Server;
use nkeys::KeyPair;
use serde_json::Value;

use super::Raw;

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// A JWT of `claims` signed by `signer`.
pub fn encode(claims: Value, signer: &KeyPair) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let h = b64.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let p = b64.encode(claims.to_string());
    let sig = signer.sign(format!("{h}.{p}").as_bytes()).expect("sign");
    format!("{h}.{p}.{}", b64.encode(sig))
}

/// Logs in by hand with `jwt`, signing the INFO nonce with `key` (or, with `sign_other`, a wrong
/// nonce); returns the connection and the first answer line.
pub async fn raw_login(s: &Server, jwt: &str, key: &KeyPair, sign_other: bool) -> (Raw, String) {
    let stream = tokio::net::TcpStream::connect(s.addr()).await.expect("tcp");
    let mut r = Raw {
        stream,
        buf: Vec::new(),
    };
    let info = r.read_until("\r\n").await;
    let info: Value = serde_json::from_str(info.trim_start_matches("INFO ").trim()).expect("INFO");
    let nonce = info["nonce"].as_str().expect("nonce in INFO").to_string();
    let signed = if sign_other { "other" } else { nonce.as_str() };
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(key.sign(signed.as_bytes()).expect("sign"));
    r.send(&format!(
        "CONNECT {{\"verbose\":false,\"jwt\":\"{jwt}\",\"sig\":\"{sig}\"}}\r\nPING\r\n"
    ))
    .await;
    let line = r.read_until("\r\n").await;
    (r, line)
}

/// A JWT of `claims` in the version 1 format older tools wrote: header `{"typ":"jwt","alg":
/// "ed25519"}` and the signature over the payload segment alone (`claims` carry `type` at the
/// top level).
pub fn encode_v1(claims: Value, signer: &KeyPair) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let h = b64.encode(br#"{"typ":"jwt","alg":"ed25519"}"#);
    let p = b64.encode(claims.to_string());
    let sig = signer.sign(p.as_bytes()).expect("sign");
    format!("{h}.{p}.{}", b64.encode(sig))
}

/// A `.creds` file for `jwt` and the user's seed, as `nsc` writes it.
pub fn write_creds(
    dir: &std::path::Path,
    name: &str,
    jwt: &str,
    key: &KeyPair,
) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.creds"));
    std::fs::write(
        &path,
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            key.seed().expect("seed")
        ),
    )
    .expect("write creds");
    path
}

/// Connects async-nats with a `.creds` file.
pub async fn creds_connect(
    url: &str,
    creds: &std::path::Path,
) -> Result<async_nats::Client, String> {
    let c = async_nats::ConnectOptions::with_credentials_file(creds)
        .await
        .map_err(|e| e.to_string())?
        .connection_timeout(std::time::Duration::from_secs(3))
        .connect(url)
        .await
        .map_err(|e| e.to_string())?;
    c.flush().await.map_err(|e| e.to_string())?;
    Ok(c)
}
