//! The directory account resolver (`resolver { type: full|cache, dir }`): account JWTs kept as
//! `<dir>/<account key>.jwt`, and the system account's claim requests (update, lookup, list, delete).
//!
//! The files (`auth::jwt_dir`) are read when the server starts and on every reload. A push
//! (`$SYS.REQ.CLAIMS.UPDATE` with the JWT as payload, as `nsc push` and `nats` send it, or
//! `$SYS.REQ.ACCOUNT.<key>.CLAIMS.UPDATE`) is verified against the trusted operators exactly like
//! a preloaded JWT, written atomically (temporary file, fsync, rename), and applied to the live
//! account: its limits, revocations (revoked users are closed), default permissions. Answers use
//! nats-server's JSON: `{"server": {...}, "data": {"account", "code": 200, "message"}}` or
//! `{"server": {...}, "error": {"account", "code": 500, "description"}}`.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::jwt::{self, DirResolver, JwtError, TrustedAccount};
use crate::auth::jwt_dir::{self, is_account_key, path_for, read_dir};
use crate::conn::ConnContext;
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
        _ => None,
    };
    let (Some(mut body), Some(reply)) = (body, &msg.reply) else {
        return;
    };
    body["server"] = observe::server_json(&r.server, seq);
    let payload = serde_json::to_vec(&body).unwrap_or_default();
    let _ = client.publish(reply, None, None, &payload);
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
