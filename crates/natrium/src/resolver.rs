//! The directory account resolver (`resolver { type: full|cache, dir }`): account JWTs kept as
//! `<dir>/<account key>.jwt`, and the system account's claim requests (update, lookup, list, delete).
//!
//! The files (`auth::jwt_dir`) are read when the server starts and on every reload. A push
//! (`$SYS.REQ.CLAIMS.UPDATE` with the JWT as payload, as `nsc push` and `nats` send it, or
//! `$SYS.REQ.ACCOUNT.<key>.CLAIMS.UPDATE`) is verified against the trusted operators exactly like
//! a preloaded JWT, written atomically (temporary file, fsync, rename), and applied to the live
//! account: its limits, revocations (revoked users are closed), default permissions. Answers use
//! nats-server's JSON: `{"server": {...}, "data": {"account", "code": 200, "message"}}` or
//! `{"server": {...}, "error": {"account", "code": 500, "description"}}`. `$SYS.REQ.CLAIMS.PACK`
//! (a resolver's sync request, with the XOR of the SHA-256 of its JWTs as payload) is answered as
//! nats-server's full resolver answers it: nothing but an empty message when the hashes agree,
//! else one `<key>|<jwt>` message per unexpired JWT, then an empty message.
//!
//! The URL resolver (`resolver: URL(...)`): `UrlFetcher` GETs `<url><account key>` (the body is
//! the JWT) for the connection layer's on-demand lookups, and `serve_url` applies
//! `$SYS.REQ.ACCOUNT.<key>.CLAIMS.UPDATE` / `$SYS.ACCOUNT.<key>.CLAIMS.UPDATE` to accounts it has
//! already fetched (others are skipped, as in nats-server).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::jwt::{self, DirResolver, JwtError, TrustedAccount};
use crate::auth::jwt_dir::{self, is_account_key, path_for, read_dir};
use crate::conn::{AccountFetcher, BoxFuture, ConnContext};
use crate::observe::{self, Observed};
use crate::router::{InternalClient, InternalMsg};

/// What the claims handlers work with: the system account's client, the directory's settings,
/// the connections (whose trust they update) and the server's identity for the answers.
#[derive(Clone)]
pub struct ClaimsHandler {
    pub client: InternalClient,
    pub opts: DirResolver,
    pub conns: Arc<ConnContext>,
    pub server: Arc<Observed>,
    pub system_account: String,
}

/// Why a claims request failed; the text is what nats-server answers.
#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    #[error("{0}")]
    Jwt(#[from] JwtError),
    #[error("subject does not match jwt content")]
    SubjectMismatch,
    #[error("jwt store is full")]
    Full,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not in operator mode")]
    NoTrust,
    #[error("delete must be enabled in server config")]
    DeleteDisabled,
    #[error("not self signed")]
    NotSelfSigned,
    #[error("not trusted")]
    NotTrusted,
    #[error("malformed request")]
    Malformed,
    #[error("request body is empty")]
    EmptyBody,
    #[error("not allowed to delete system account")]
    SystemAccount,
}

/// Runs the claim request handlers in the system account until the server stops.
pub async fn serve(r: ClaimsHandler) {
    let client = &r.client;
    let subjects = [
        "$SYS.REQ.CLAIMS.UPDATE",
        "$SYS.REQ.ACCOUNT.*.CLAIMS.UPDATE",
        "$SYS.ACCOUNT.*.CLAIMS.UPDATE",
        "$SYS.REQ.ACCOUNT.*.CLAIMS.LOOKUP",
        "$SYS.REQ.CLAIMS.LIST",
        "$SYS.REQ.CLAIMS.DELETE",
        "$SYS.REQ.CLAIMS.PACK",
    ];
    let mut subs = Vec::new();
    for s in subjects {
        match client.subscribe(s, None, 1024) {
            Ok(sub) => subs.push(sub),
            Err(e) => {
                tracing::error!("DirResolver - can not subscribe to {s}: {e}");
                return;
            }
        }
    }
    let seq = AtomicU64::new(0);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<InternalMsg>(1024);
    for mut sub in subs {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if tx.send(m).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    // One request at a time (updates to the same account apply in the order they arrived), on
    // the blocking pool: they read and fsync files.
    let seq = std::sync::Arc::new(seq);
    while let Some(msg) = rx.recv().await {
        let (r, seq) = (r.clone(), seq.clone());
        let _ = tokio::task::spawn_blocking(move || handle(&r, &seq, msg)).await;
    }
}

fn handle(r: &ClaimsHandler, seq: &AtomicU64, msg: InternalMsg) {
    let (client, opts) = (&r.client, &r.opts);
    let tokens: Vec<&str> = msg.subject.split('.').collect();
    let body = match tokens.as_slice() {
        ["$SYS", "REQ", "CLAIMS", "UPDATE"] => Some(update(r, None, &msg.payload)),
        ["$SYS", "REQ", "ACCOUNT", key, "CLAIMS", "UPDATE"]
        | ["$SYS", "ACCOUNT", key, "CLAIMS", "UPDATE"] => Some(update(r, Some(key), &msg.payload)),
        ["$SYS", "REQ", "ACCOUNT", key, "CLAIMS", "LOOKUP"] => {
            // The JWT itself, or an empty message when this server has none.
            if let Some(reply) = &msg.reply {
                let jwt = std::fs::read_to_string(path_for(&opts.dir, key)).unwrap_or_default();
                let _ = client.publish(reply, None, None, jwt.as_bytes());
            }
            None
        }
        ["$SYS", "REQ", "CLAIMS", "LIST"] => {
            let keys: Vec<String> = read_dir(&opts.dir).into_iter().map(|(k, _)| k).collect();
            Some(json!({"data": keys}))
        }
        ["$SYS", "REQ", "CLAIMS", "DELETE"] => Some(delete(r, &msg.payload)),
        ["$SYS", "REQ", "CLAIMS", "PACK"] => {
            if let Some(reply) = &msg.reply {
                pack(r, reply, &msg.payload);
            }
            None
        }
        _ => None,
    };
    let (Some(mut body), Some(reply)) = (body, &msg.reply) else {
        return;
    };
    body["server"] = observe::server_json(&r.server, seq);
    let payload = serde_json::to_vec(&body).unwrap_or_default();
    let _ = client.publish(reply, None, None, &payload);
}

/// Answers a pack request: an empty message when `theirs` is the hash of this directory's JWTs,
/// else every unexpired JWT as `<key>|<jwt>`, one per message, and an empty message to end.
fn pack(r: &ClaimsHandler, reply: &str, theirs: &[u8]) {
    let jwts: Vec<(String, String)> = read_dir(&r.opts.dir)
        .into_iter()
        .filter_map(|(k, t)| t.ok().map(|t| (k, t)))
        .collect();
    let mut ours = [0u8; 32];
    for (_, t) in &jwts {
        let d = ring::digest::digest(&ring::digest::SHA256, t.as_bytes());
        ours.iter_mut().zip(d.as_ref()).for_each(|(o, x)| *o ^= x);
    }
    if theirs != ours {
        let now = crate::util::time::now_secs();
        for (k, t) in &jwts {
            let expired = jwt::decode::<Value>(t)
                .ok()
                .and_then(|c| c.exp)
                .is_some_and(|e| e > 0 && e < now);
            if !expired {
                let _ = r
                    .client
                    .publish(reply, None, None, format!("{k}|{t}").as_bytes());
            }
        }
    }
    let _ = r.client.publish(reply, None, None, b"");
}

/// nats-server's answer to a claims request: `data` on success, `error` (code 500) on failure;
/// an empty `account` is left out.
fn respond(account: &str, message: &str, result: Result<(), ResolverError>) -> Value {
    let mut body = match result {
        Ok(()) => {
            tracing::debug!("DirResolver - {message} - {account}");
            json!({"data": {"account": account, "code": 200, "message": message}})
        }
        Err(e) => {
            tracing::error!("DirResolver - {message} - {account} - {e}");
            json!({"error": {"account": account, "code": 500, "description": format!("{message} - {e}")}})
        }
    };
    if account.is_empty() {
        for k in ["data", "error"] {
            if let Some(o) = body.get_mut(k).and_then(Value::as_object_mut) {
                o.remove("account");
            }
        }
    }
    body
}

/// Verifies, stores and applies a pushed account JWT; `key` is the account the subject names.
fn update(r: &ClaimsHandler, key: Option<&str>, payload: &[u8]) -> Value {
    let opts = &r.opts;
    let (ok_msg, err_msg) = if opts.cache {
        ("jwt updated cache", "jwt update cache resulted in error")
    } else {
        ("jwt updated", "jwt update resulted in error")
    };
    let token = String::from_utf8_lossy(payload).trim().to_string();
    let mut account = key.unwrap_or("n/a").to_string();
    if key.is_none() {
        if let Ok(c) = jwt::decode::<Value>(&token) {
            account = c.sub;
        }
    }
    let result = r.conns.update_trust(|auth| {
        let trust = auth.trust().ok_or(ResolverError::NoTrust)?;
        let acc = TrustedAccount::verify(&token, &trust.operator_keys)?;
        if key.is_some_and(|k| k != acc.key) {
            return Err(ResolverError::SubjectMismatch);
        }
        account = acc.key.clone();
        let known = trust.accounts.contains_key(&acc.key) || path_for(&opts.dir, &acc.key).exists();
        if opts.cache && !known {
            return Ok((None, false));
        }
        if !known && opts.limit > 0 && read_dir(&opts.dir).len() >= opts.limit {
            return Err(ResolverError::Full);
        }
        jwt_dir::store(&opts.dir, &acc.key, &token)?;
        Ok((Some(auth.with_account(acc)), true))
    });
    match result {
        Ok(false) => respond(&account, "jwt update cache skipped", Ok(())),
        Ok(true) => {
            r.conns.account_jwt_changed(&account);
            respond(&account, ok_msg, Ok(()))
        }
        Err(e) => respond(&account, err_msg, Err(e)),
    }
}

/// The claims of a delete request: a JWT the operator signs about itself, listing accounts.
#[derive(Deserialize)]
struct DeleteRequest {
    #[serde(default)]
    accounts: Vec<String>,
}

/// Deletes the listed accounts' JWTs (`allow_delete`): renamed to `.jwt.deleted`, or removed
/// with `hard_delete`. Their connections are closed by the re-check that follows.
fn delete(r: &ClaimsHandler, payload: &[u8]) -> Value {
    let opts = &r.opts;
    let token = String::from_utf8_lossy(payload).trim().to_string();
    let system = &r.system_account;
    let mut by = String::new();
    let result = r.conns.update_trust(|auth| {
        let trust = auth.trust().ok_or(ResolverError::NoTrust)?;
        let claims = jwt::decode::<DeleteRequest>(&token)?;
        by = claims.sub.clone();
        if !opts.allow_delete || opts.cache {
            return Err(ResolverError::DeleteDisabled);
        }
        if claims.sub != claims.iss {
            return Err(ResolverError::NotSelfSigned);
        }
        if !trust.operator_keys.contains(&claims.iss) {
            return Err(ResolverError::NotTrusted);
        }
        let keys = claims.nats.accounts;
        if keys.iter().any(|k| !is_account_key(k)) {
            return Err(ResolverError::Malformed);
        }
        if keys.contains(system) {
            return Err(ResolverError::SystemAccount);
        }
        for k in &keys {
            jwt_dir::remove(&opts.dir, k, opts.hard_delete)?;
        }
        Ok((Some(auth.without_accounts(&keys)), keys))
    });
    match result {
        Ok(keys) => {
            for k in &keys {
                r.conns.account_jwt_changed(k);
            }
            respond("", &format!("deleted {} accounts", keys.len()), Ok(()))
        }
        Err(e) => respond(
            "",
            &format!("delete accounts request by {by} failed"),
            Err(e),
        ),
    }
}

/// How long one account fetch may take (nats-server's default account fetch timeout).
const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1900);

/// The URL resolver's HTTP side: `GET <url><key>`, the JWT in the body of a 200 answer.
pub struct UrlFetcher {
    url: String,
    http: reqwest::Client,
}

impl UrlFetcher {
    pub fn new(url: &str) -> Result<UrlFetcher, String> {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(UrlFetcher {
            url: url.to_string(),
            http,
        })
    }
}

/// A URL as logs may show it: without user information (a password).
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://[REDACTED]@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

impl AccountFetcher for UrlFetcher {
    fn fetch(&self, key: &str) -> BoxFuture<Result<String, String>> {
        let url = format!("{}{key}", self.url);
        let http = self.http.clone();
        let key = key.to_string();
        Box::pin(async move {
            let shown = redacted(&url);
            let started = std::time::Instant::now();
            let resp = http
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("could not fetch <{shown:?}>: {}", e.without_url()))?;
            if resp.status() != reqwest::StatusCode::OK {
                return Err(format!("could not fetch <{shown:?}>: {}", resp.status()));
            }
            let body = resp
                .text()
                .await
                .map_err(|e| format!("could not fetch <{shown:?}>: {}", e.without_url()))?;
            tracing::debug!("Account [{key}] fetch took {:?}", started.elapsed());
            Ok(body.trim().to_string())
        })
    }
}

/// The URL resolver's claims updates, in the system account until the server stops:
/// `$SYS.REQ.ACCOUNT.<key>.CLAIMS.UPDATE` and `$SYS.ACCOUNT.<key>.CLAIMS.UPDATE` replace the JWT
/// of an account this server has fetched (and apply it to its connections); an account it has
/// not fetched is skipped (it will be fetched when a user needs it).
pub async fn serve_url(client: InternalClient, conns: Arc<ConnContext>, server: Arc<Observed>) {
    let mut subs = Vec::new();
    for s in [
        "$SYS.REQ.ACCOUNT.*.CLAIMS.UPDATE",
        "$SYS.ACCOUNT.*.CLAIMS.UPDATE",
    ] {
        match client.subscribe(s, None, 1024) {
            Ok(sub) => subs.push(sub),
            Err(e) => {
                tracing::error!("URL resolver - can not subscribe to {s}: {e}");
                return;
            }
        }
    }
    let (mut new, mut old) = match (subs.pop(), subs.pop()) {
        (Some(a), Some(b)) => (a, b),
        _ => return,
    };
    let seq = AtomicU64::new(0);
    loop {
        let msg = tokio::select! {
            m = new.next() => m,
            m = old.next() => m,
        };
        let Some(msg) = msg else { return };
        let key = msg
            .subject
            .split('.')
            .nth(msg.subject.split('.').count() - 3);
        let key = key.unwrap_or_default().to_string();
        let token = String::from_utf8_lossy(&msg.payload).trim().to_string();
        let body = if token.is_empty() {
            respond(&key, "jwt update error", Err(ResolverError::EmptyBody))
        } else {
            let known = conns
                .auth
                .current()
                .trust()
                .is_some_and(|t| t.accounts.contains_key(&key));
            match jwt::decode::<Value>(&token) {
                Err(e) => respond(&key, "jwt update resulted in error", Err(e.into())),
                Ok(c) if c.sub != key => respond(
                    &key,
                    "jwt update resulted in error",
                    Err(ResolverError::SubjectMismatch),
                ),
                Ok(_) if !known => respond(&key, "jwt update skipped", Ok(())),
                Ok(_) => {
                    let installed = {
                        let (conns, key, token) = (conns.clone(), key.clone(), token.clone());
                        tokio::task::spawn_blocking(move || conns.install_account(&key, &token))
                            .await
                    };
                    match installed {
                        Ok(Ok(_)) => {
                            conns.account_jwt_changed(&key);
                            respond(&key, "jwt updated", Ok(()))
                        }
                        Ok(Err(e)) => respond(&key, "jwt update resulted in error", Err(e.into())),
                        Err(_) => respond(
                            &key,
                            "jwt update resulted in error",
                            Err(ResolverError::Malformed),
                        ),
                    }
                }
            }
        };
        let Some(reply) = &msg.reply else { continue };
        let mut body = body;
        body["server"] = observe::server_json(&server, &seq);
        let payload = serde_json::to_vec(&body).unwrap_or_default();
        let _ = client.publish(reply, None, None, &payload);
    }
}
