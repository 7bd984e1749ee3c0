//! Minting the NATS JWTs of operator mode: account JWTs signed by the operator (or one of its
//! signing keys), user JWTs signed by the account, and the `.creds` files stock clients read.
//! A JWT is `base64url(header).base64url(claims).base64url(ed25519 signature)`, unpadded, with
//! the header `{"typ":"JWT","alg":"ed25519-nkey"}`; `jti` is a hash of the claims.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use base64::Engine;
use nkeys::KeyPair;
use serde_json::{json, Map, Value};

const HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Signs `claims` (an object without `jti`, `iat`, `iss`) as `signer`: fills in `iat` (now),
/// `iss` (the signer's public key) and `jti` (base32 of SHA-512/256 over the claims).
pub fn sign(mut claims: Map<String, Value>, signer: &KeyPair) -> Result<String> {
    claims.insert("iat".into(), json!(now()));
    claims.insert("iss".into(), json!(signer.public_key()));
    claims.insert("jti".into(), json!(""));
    let digest = ring::digest::digest(
        &ring::digest::SHA512_256,
        Value::Object(claims.clone()).to_string().as_bytes(),
    );
    claims.insert("jti".into(), json!(base32(digest.as_ref())));
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let head = format!(
        "{}.{}",
        b64.encode(HEADER),
        b64.encode(Value::Object(claims).to_string())
    );
    let sig = signer
        .sign(head.as_bytes())
        .map_err(|e| anyhow::anyhow!("signing failed: {e}"))?;
    Ok(format!("{head}.{}", b64.encode(sig)))
}

/// The claims of `token`, after checking its signature against its issuer (`iss`).
pub fn decode(token: &str) -> Result<Value> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let token = token.trim();
    let parts: Vec<&str> = token.split('.').collect();
    let [h, p, s] = parts.as_slice() else {
        bail!("not a JWT");
    };
    let claims: Value = serde_json::from_slice(&b64.decode(p).context("JWT payload")?)
        .context("JWT payload is not JSON")?;
    let iss = claims["iss"].as_str().context("JWT without an issuer")?;
    let key = KeyPair::from_public_key(iss).map_err(|e| anyhow::anyhow!("JWT issuer: {e}"))?;
    let sig = b64.decode(s).context("JWT signature")?;
    key.verify(format!("{h}.{p}").as_bytes(), &sig)
        .map_err(|_| anyhow::anyhow!("JWT signature does not verify"))?;
    Ok(claims)
}

/// An account's limits as the account JWT carries them (-1: unlimited). JetStream is enabled
/// for the account when `mem_storage` or `disk_storage` is not 0, as nats-server reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub conn: i64,
    pub subs: i64,
    pub payload: i64,
    /// Natrium's publish rates (nats-server ignores them); -1 is unlimited.
    pub msgs_per_sec: i64,
    pub bytes_per_sec: i64,
    pub mem_storage: i64,
    pub disk_storage: i64,
    pub streams: i64,
    pub consumers: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            conn: -1,
            subs: -1,
            payload: -1,
            msgs_per_sec: -1,
            bytes_per_sec: -1,
            mem_storage: 0,
            disk_storage: 0,
            streams: -1,
            consumers: -1,
        }
    }
}

impl Limits {
    pub fn jetstream(&self) -> bool {
        self.mem_storage != 0 || self.disk_storage != 0
    }

    fn to_json(self) -> Value {
        json!({
            "subs": self.subs, "data": -1, "payload": self.payload, "imports": -1,
            "exports": -1, "wildcards": true, "conn": self.conn, "leaf": -1,
            "mem_storage": self.mem_storage, "disk_storage": self.disk_storage,
            "streams": self.streams, "consumers": self.consumers,
            "msgs_per_sec": self.msgs_per_sec, "bytes_per_sec": self.bytes_per_sec,
        })
    }

    pub fn from_json(v: &Value) -> Limits {
        let d = Limits::default();
        let get = |k: &str, default: i64| v[k].as_i64().unwrap_or(default);
        Limits {
            conn: get("conn", d.conn),
            subs: get("subs", d.subs),
            payload: get("payload", d.payload),
            msgs_per_sec: get("msgs_per_sec", d.msgs_per_sec),
            bytes_per_sec: get("bytes_per_sec", d.bytes_per_sec),
            mem_storage: get("mem_storage", d.mem_storage),
            disk_storage: get("disk_storage", d.disk_storage),
            streams: get("streams", d.streams),
            consumers: get("consumers", d.consumers),
        }
    }
}

/// An account JWT for `account` named `name`, issued by `signer`, revoking the given user keys
/// (user key, or `*` for every user, → revocation time).
pub fn account_jwt(
    signer: &KeyPair,
    account: &str,
    name: &str,
    limits: &Limits,
    revocations: &Map<String, Value>,
) -> Result<String> {
    let mut nats = json!({"type": "account", "version": 2, "limits": limits.to_json()});
    if !revocations.is_empty() {
        nats["revocations"] = Value::Object(revocations.clone());
    }
    let claims = json!({"sub": account, "name": name, "nats": nats});
    sign(claims.as_object().cloned().unwrap_or_default(), signer)
}

/// A user JWT for `user` in the account `signer`, with no limits of its own (the account's
/// apply).
pub fn user_jwt(signer: &KeyPair, user: &str, name: &str) -> Result<String> {
    let claims = json!({"sub": user, "name": name, "nats": {
        "type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
    }});
    sign(claims.as_object().cloned().unwrap_or_default(), signer)
}

/// The operator JWT of a new operator (`tenant init`): self-signed by its identity key, naming
/// its signing keys and its system account.
pub fn operator_jwt(
    identity: &KeyPair,
    name: &str,
    signing_keys: &[String],
    system_account: &str,
) -> Result<String> {
    let claims = json!({"sub": identity.public_key(), "name": name, "nats": {
        "type": "operator", "version": 2, "signing_keys": signing_keys,
        "system_account": system_account,
    }});
    sign(claims.as_object().cloned().unwrap_or_default(), identity)
}

/// The claims of a `$SYS.REQ.CLAIMS.DELETE` request: the operator key vouching for itself,
/// listing the accounts to delete.
pub fn delete_request(operator: &KeyPair, accounts: &[String]) -> Result<String> {
    let claims = json!({"sub": operator.public_key(), "nats": {
        "type": "generic", "version": 2, "accounts": accounts,
    }});
    sign(claims.as_object().cloned().unwrap_or_default(), operator)
}

/// A `.creds` file: the user JWT and the user's seed between the armour lines clients look for.
pub fn creds(jwt: &str, user: &KeyPair) -> Result<String> {
    let seed = user.seed().map_err(|e| anyhow::anyhow!("user seed: {e}"))?;
    Ok(format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         # The seed below proves this user's identity: keep this file private (mode 0600).\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    ))
}

/// The user JWT and key pair in a `.creds` file.
pub fn parse_creds(text: &str) -> Result<(String, KeyPair)> {
    let block = |begin: &str| -> Option<String> {
        let mut lines = text.lines().map(str::trim);
        lines.find(|l| l.starts_with("---") && l.contains(begin))?;
        lines.find(|l| !l.is_empty()).map(str::to_string)
    };
    let jwt = block("BEGIN NATS USER JWT").context("no user JWT in the credentials")?;
    let seed = block("BEGIN USER NKEY SEED").context("no user seed in the credentials")?;
    let key = KeyPair::from_seed(&seed).map_err(|e| anyhow::anyhow!("user seed: {e}"))?;
    Ok((jwt, key))
}

/// The first seed (`S...`) in a seed file: a bare seed, or a `.nk`/armoured file holding one.
pub fn parse_seed(text: &str) -> Result<KeyPair> {
    let seed = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with('S') && l.len() > 50 && !l.contains(' '))
        .context("no NKey seed (a line starting with S) in the file")?;
    KeyPair::from_seed(seed).map_err(|e| anyhow::anyhow!("bad seed: {e}"))
}

/// RFC 4648 base32, unpadded (as NATS JWT ids are written).
fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in data {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc4648_vectors() {
        assert_eq!(base32(b""), "");
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32(b"fo"), "MZXQ");
        assert_eq!(base32(b"foo"), "MZXW6");
        assert_eq!(base32(b"foob"), "MZXW6YQ");
        assert_eq!(base32(b"fooba"), "MZXW6YTB");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
    }

    #[test]
    fn signed_jwts_verify_and_creds_round_trip() {
        let op = KeyPair::new_operator();
        let acc = KeyPair::new_account();
        let mut rev = Map::new();
        rev.insert("UXYZ".into(), json!(5));
        let limits = Limits {
            conn: 3,
            ..Limits::default()
        };
        let token = account_jwt(&op, &acc.public_key(), "acme", &limits, &rev).expect("sign");
        let c = decode(&token).expect("verifies");
        assert_eq!(c["iss"], op.public_key());
        assert_eq!(c["sub"], acc.public_key());
        assert_eq!(c["nats"]["type"], "account");
        assert_eq!(c["nats"]["revocations"]["UXYZ"], 5);
        assert_eq!(Limits::from_json(&c["nats"]["limits"]), limits);
        assert_eq!(c["jti"].as_str().map(str::len), Some(52));
        // A changed byte breaks the signature.
        let mut bad = token.clone().into_bytes();
        let i = token.find('.').expect("dot") + 5;
        bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
        assert!(decode(&String::from_utf8(bad).expect("utf8")).is_err());

        let user = KeyPair::new_user();
        let ujwt = user_jwt(&acc, &user.public_key(), "acme").expect("sign");
        let text = creds(&ujwt, &user).expect("creds");
        let (j, k) = parse_creds(&text).expect("parses");
        assert_eq!(j, ujwt);
        assert_eq!(k.public_key(), user.public_key());
        assert_eq!(decode(&j).expect("verifies")["iss"], acc.public_key());
        let seed = parse_seed(&format!("# key\n{}\n", acc.seed().expect("seed"))).expect("seed");
        assert_eq!(seed.public_key(), acc.public_key());
    }
}
