//! JWT operator mode: an operator JWT (from a file), `resolver: MEMORY` with `resolver_preload`,
//! users connecting with `.creds` files through async-nats, their accounts kept apart, user
//! permissions and limits from the JWT, signing keys (plain and scoped), and refusals: expired,
//! not yet valid, unknown issuer, wrong nonce, revoked (also by a reload, which closes the live
//! connection), and a JWT that expires while connected. Account JWT limits (`conn`, `payload`,
//! `subs`) and user JWT limits (`payload`, `subs`) are enforced.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::jwt::{encode, now, raw_login};
use base64::Engine;
use futures::StreamExt;
use natrium::{Options, Server};
use nkeys::KeyPair;
use serde_json::{json, Value};

fn claims(iss: &KeyPair, sub: &str, name: &str, nats: Value) -> Value {
    json!({"jti": name, "iat": now() - 10, "iss": iss.public_key(), "sub": sub, "name": name, "nats": nats})
}

struct Setup {
    dir: tempfile::TempDir,
    op: KeyPair,
    a: KeyPair,
    b: KeyPair,
    a_signer: KeyPair,
    a_scoped: KeyPair,
    /// Account A's `limits`.
    a_limits: Value,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            dir: tempfile::tempdir().expect("tempdir"),
            op: KeyPair::new_operator(),
            a: KeyPair::new_account(),
            b: KeyPair::new_account(),
            a_signer: KeyPair::new_account(),
            a_scoped: KeyPair::new_account(),
            a_limits: json!({"subs": 10}),
        }
    }

    fn account_a(&self, revocations: Value) -> String {
        encode(
            claims(
                &self.op,
                &self.a.public_key(),
                "A",
                json!({"type": "account", "version": 2, "limits": self.a_limits,
                "revocations": revocations,
                "signing_keys": [
                    self.a_signer.public_key(),
                    {"kind": "user_scope", "key": self.a_scoped.public_key(), "role": "r",
                     "template": {"pub": {"allow": ["scoped.>"]}, "sub": {"allow": ["scoped.>"]}, "subs": -1}}
                ]}),
            ),
            &self.op,
        )
    }

    /// Writes the operator JWT file and the server config; returns the config path.
    fn config(&self, revocations: Value) -> PathBuf {
        let op_jwt = encode(
            claims(
                &self.op,
                &self.op.public_key(),
                "OP",
                json!({"type": "operator", "version": 2}),
            ),
            &self.op,
        );
        std::fs::write(
            self.dir.path().join("op.jwt"),
            format!(
                "-----BEGIN NATS OPERATOR JWT-----\n{op_jwt}\n------END NATS OPERATOR JWT------\n"
            ),
        )
        .expect("write operator");
        let b_jwt = encode(
            claims(
                &self.op,
                &self.b.public_key(),
                "B",
                json!({"type": "account", "version": 2}),
            ),
            &self.op,
        );
        let conf = self.dir.path().join("op.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:-1\noperator: op.jwt\nresolver: MEMORY\nresolver_preload: {{\n  {}: {}\n  {}: {}\n}}\n",
                self.a.public_key(),
                self.account_a(revocations),
                self.b.public_key(),
                b_jwt
            ),
        )
        .expect("write config");
        conf
    }

    /// A user JWT issued by `signer` for `account`; returns (jwt, user key).
    fn user(&self, signer: &KeyPair, account: &KeyPair, extra: Value) -> (String, KeyPair) {
        let u = KeyPair::new_user();
        let mut nats = json!({"type": "user", "version": 2, "subs": -1});
        if signer.public_key() != account.public_key() {
            nats["issuer_account"] = json!(account.public_key());
        }
        if let (Some(n), Some(e)) = (nats.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                n.insert(k.clone(), v.clone());
            }
        }
        let mut c = claims(signer, &u.public_key(), "u", nats);
        if let Some(exp) = extra.get("exp") {
            c["exp"] = exp.clone();
        }
        if let Some(nbf) = extra.get("nbf") {
            c["nbf"] = nbf.clone();
        }
        (encode(c, signer), u)
    }

    fn creds(&self, name: &str, jwt: &str, key: &KeyPair) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.creds"));
        std::fs::write(
            &path,
            format!(
                "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
                 ************************* IMPORTANT *************************\n\
                 NKEY Seed printed below can be used to sign and prove identity.\n\n\
                 -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
                key.seed().expect("seed")
            ),
        )
        .expect("write creds");
        path
    }
}

async fn start_file(conf: &Path) -> Server {
    let (o, warnings) = Options::from_file(conf).expect("config loads");
    assert!(warnings.is_empty(), "{warnings:?}");
    Server::start(o).await.expect("starts")
}

async fn creds_client(s: &Server, creds: &Path) -> Result<async_nats::Client, String> {
    let c = async_nats::ConnectOptions::with_credentials_file(creds)
        .await
        .map_err(|e| e.to_string())?
        .connection_timeout(Duration::from_secs(3))
        .connect(s.client_url())
        .await
        .map_err(|e| e.to_string())?;
    c.flush().await.map_err(|e| e.to_string())?;
    Ok(c)
}

#[tokio::test]
async fn creds_users_join_their_accounts() {
    let st = Setup::new();
    let s = start_file(&st.config(json!({}))).await;
    let (ja, ka) = st.user(&st.a, &st.a, json!({}));
    let (jb, kb) = st.user(&st.b, &st.b, json!({}));
    let ca = creds_client(&s, &st.creds("a", &ja, &ka))
        .await
        .expect("A user");
    let ca2 = creds_client(&s, &st.creds("a", &ja, &ka))
        .await
        .expect("A user again");
    let cb = creds_client(&s, &st.creds("b", &jb, &kb))
        .await
        .expect("B user");
    let mut sub_a = ca.subscribe("news").await.expect("sub");
    let mut sub_b = cb.subscribe("news").await.expect("sub");
    ca.flush().await.expect("flush");
    cb.flush().await.expect("flush");
    ca2.publish("news", "for A".into()).await.expect("pub");
    ca2.flush().await.expect("flush");
    let m = tokio::time::timeout(Duration::from_secs(3), sub_a.next())
        .await
        .expect("A receives")
        .expect("msg");
    assert_eq!(&m.payload[..], b"for A");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), sub_b.next())
            .await
            .is_err(),
        "B sees nothing of A"
    );
    // Plain connections without a JWT are refused in operator mode.
    assert!(async_nats::connect(s.client_url()).await.is_err());
    s.shutdown().await;
}

#[tokio::test]
async fn permissions_limits_and_signing_keys_come_from_the_jwts() {
    let st = Setup::new();
    let s = start_file(&st.config(json!({}))).await;
    let (jwt, key) = st.user(
        &st.a_signer,
        &st.a,
        json!({"pub": {"allow": ["orders.>"]}, "subs": 2}),
    );
    let (mut r, first) = raw_login(&s, &jwt, &key, false).await;
    assert_eq!(first, "PONG\r\n", "a user signed by an account signing key");
    r.send(
        "PUB orders.1 1\r\nx\r\nPUB payments.1 1\r\nx\r\nSUB a 1\r\nSUB b 2\r\nSUB c 3\r\nPING\r\n",
    )
    .await;
    assert_eq!(
        r.read_until("PONG\r\n").await,
        "-ERR 'Permissions Violation for Publish to \"payments.1\"'\r\n\
         -ERR 'maximum subscriptions exceeded'\r\nPONG\r\n"
    );
    // A scoped signing key's template replaces what the user JWT claims.
    let (jwt, key) = st.user(&st.a_scoped, &st.a, json!({"pub": {"allow": [">"]}}));
    let (mut r, first) = raw_login(&s, &jwt, &key, false).await;
    assert_eq!(first, "PONG\r\n");
    r.send("PUB scoped.x 1\r\nx\r\nPUB other 1\r\nx\r\nPING\r\n")
        .await;
    assert_eq!(
        r.read_until("PONG\r\n").await,
        "-ERR 'Permissions Violation for Publish to \"other\"'\r\nPONG\r\n"
    );
    // The account's own limit (10 subscriptions) applies when the user has none.
    let (jwt, key) = st.user(&st.a, &st.a, json!({}));
    let (mut r, _) = raw_login(&s, &jwt, &key, false).await;
    let subs: String = (1..=11).map(|i| format!("SUB s{i} {i}\r\n")).collect();
    r.send(&format!("{subs}PING\r\n")).await;
    assert_eq!(
        r.read_until("PONG\r\n").await,
        "-ERR 'maximum subscriptions exceeded'\r\nPONG\r\n"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn bad_user_jwts_are_refused() {
    let st = Setup::new();
    let revoked_user = KeyPair::new_user();
    let s = start_file(&st.config(json!({ revoked_user.public_key(): now() }))).await;
    let violation = "-ERR 'Authorization Violation'\r\n";
    let (jwt, key) = st.user(&st.a, &st.a, json!({"exp": now() - 5}));
    assert_eq!(
        raw_login(&s, &jwt, &key, false).await.1,
        violation,
        "expired"
    );
    let (jwt, key) = st.user(&st.a, &st.a, json!({"nbf": now() + 3600}));
    assert_eq!(
        raw_login(&s, &jwt, &key, false).await.1,
        violation,
        "not yet valid"
    );
    let stranger = KeyPair::new_account();
    let (jwt, key) = st.user(&stranger, &stranger, json!({}));
    assert_eq!(
        raw_login(&s, &jwt, &key, false).await.1,
        violation,
        "unknown account"
    );
    let (jwt, key) = st.user(&st.a, &st.a, json!({}));
    assert_eq!(
        raw_login(&s, &jwt, &key, true).await.1,
        violation,
        "wrong nonce"
    );
    // A JWT signed by a key the account does not list (claiming the account as issuer).
    let rogue = KeyPair::new_account();
    let (jwt, key) = st.user(&rogue, &st.a, json!({}));
    assert_eq!(
        raw_login(&s, &jwt, &key, false).await.1,
        violation,
        "rogue signer"
    );
    // Revoked: the revocation time is at or after the JWT's issue time.
    let c = claims(
        &st.a,
        &revoked_user.public_key(),
        "r",
        json!({"type": "user", "version": 2}),
    );
    let jwt = encode(c, &st.a);
    assert_eq!(
        raw_login(&s, &jwt, &revoked_user, false).await.1,
        violation,
        "revoked"
    );
    // Garbage.
    assert_eq!(
        raw_login(&s, "eyJhbGciOi.not.ajwt", &key, false).await.1,
        violation
    );
    s.shutdown().await;
}

#[tokio::test]
async fn expiry_and_revocation_close_live_connections() {
    let st = Setup::new();
    let conf = st.config(json!({}));
    let s = start_file(&conf).await;
    let (jwt, key) = st.user(&st.a, &st.a, json!({"exp": now() + 2}));
    let (mut short, first) = raw_login(&s, &jwt, &key, false).await;
    assert_eq!(first, "PONG\r\n");
    let (jwt2, key2) = st.user(&st.a, &st.a, json!({}));
    let (mut victim, first) = raw_login(&s, &jwt2, &key2, false).await;
    assert_eq!(first, "PONG\r\n");

    // Revoke the second user and reload: its connection is closed at once.
    assert_eq!(st.config(json!({ key2.public_key(): now() })), conf);
    s.reload().expect("reload");
    assert!(victim
        .read_to_close()
        .await
        .contains("-ERR 'User Authentication Revoked'"));

    let out = short.read_to_close().await;
    assert!(
        out.contains("-ERR 'User Authentication Expired'"),
        "{out:?}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn account_and_user_jwt_limits() {
    let mut st = Setup::new();
    st.a_limits = json!({"subs": 10, "conn": 2, "payload": 16, "leaf": -1});
    let s = start_file(&st.config(json!({}))).await;
    let (jwt, key) = st.user(&st.a, &st.a, json!({"payload": 4}));
    let (mut small, first) = raw_login(&s, &jwt, &key, false).await;
    assert_eq!(first, "PONG\r\n");
    let (jwt2, key2) = st.user(&st.a, &st.a, json!({}));
    let (mut big, first) = raw_login(&s, &jwt2, &key2, false).await;
    assert_eq!(first, "PONG\r\n");
    // conn: 2 — a third connection of A is refused; account B has no limit.
    let (mut third, first) = raw_login(&s, &jwt2, &key2, false).await;
    assert_eq!(
        first,
        "-ERR 'maximum account active connections exceeded'\r\n"
    );
    third.read_to_close().await;
    let (jb, kb) = st.user(&st.b, &st.b, json!({}));
    let (mut b, first) = raw_login(&s, &jb, &kb, false).await;
    assert_eq!(first, "PONG\r\n");
    b.send("PUB x 17\r\n12345678901234567\r\nPING\r\n").await;
    assert_eq!(b.read_until("\r\n").await, "PONG\r\n");
    // The account allows 16 bytes, the first user only 4.
    big.send("PUB x 16\r\n1234567890123456\r\nPING\r\n").await;
    assert_eq!(big.read_until("\r\n").await, "PONG\r\n");
    big.send("PUB x 17\r\n12345678901234567\r\n").await;
    assert!(big
        .read_to_close()
        .await
        .ends_with("-ERR 'Maximum Payload Violation'\r\n"));
    small.send("PUB x 4\r\n1234\r\nPING\r\n").await;
    assert_eq!(small.read_until("\r\n").await, "PONG\r\n");
    small.send("PUB x 5\r\n12345\r\n").await;
    assert!(small
        .read_to_close()
        .await
        .ends_with("-ERR 'Maximum Payload Violation'\r\n"));
    s.shutdown().await;
}

/// WebSocket clients in operator mode: a user JWT's `allowed_connection_types` decides which
/// listener it may use, and with `jwt_cookie` a browser's cookie carries a bearer user JWT that
/// CONNECT does not.
#[tokio::test]
async fn websocket_connection_types_and_jwt_cookie() {
    let st = Setup::new();
    let conf = st.config(json!({}));
    let mut text = std::fs::read_to_string(&conf).expect("config");
    text.push_str("websocket { listen: \"127.0.0.1:-1\", no_tls: true, jwt_cookie: natsjwt }\n");
    std::fs::write(&conf, text).expect("write");
    let s = start_file(&conf).await;
    let ws_url = s.websocket_url().expect("ws url");
    let connect = |creds: PathBuf, url: String| async move {
        let c = async_nats::ConnectOptions::with_credentials_file(creds)
            .await
            .map_err(|e| e.to_string())?
            .connection_timeout(Duration::from_secs(3))
            .connect(url)
            .await
            .map_err(|e| e.to_string())?;
        c.flush().await.map_err(|e| e.to_string())
    };
    let (jw, kw) = st.user(
        &st.a,
        &st.a,
        json!({"allowed_connection_types": ["WEBSOCKET"]}),
    );
    let web_only = st.creds("web", &jw, &kw);
    connect(web_only.clone(), ws_url.clone())
        .await
        .expect("a WEBSOCKET user over WebSocket");
    assert!(
        connect(web_only, s.client_url()).await.is_err(),
        "a WEBSOCKET user over TCP"
    );
    let (jt, kt) = st.user(
        &st.a,
        &st.a,
        json!({"allowed_connection_types": ["STANDARD"]}),
    );
    let tcp_only = st.creds("tcp", &jt, &kt);
    connect(tcp_only.clone(), s.client_url())
        .await
        .expect("a STANDARD user over TCP");
    assert!(
        connect(tcp_only, ws_url).await.is_err(),
        "a STANDARD user over WebSocket"
    );

    // A bearer JWT from the cookie: no jwt, no signature in CONNECT.
    let (bearer, _) = st.user(&st.a, &st.a, json!({"bearer_token": true}));
    let port = s.websocket_port().expect("port");
    let cookie = format!("Cookie: theme=dark; natsjwt={bearer}");
    let (mut ws, _) = crate::websocket::RawWs::open(port, &[&cookie]).await;
    ws.read_text().await;
    ws.send_text("CONNECT {\"verbose\":false}\r\nPING\r\n")
        .await;
    assert_eq!(ws.read_until("PONG").await, "PONG\r\n");
    let (mut ws, _) = crate::websocket::RawWs::open(port, &[]).await;
    ws.read_text().await;
    ws.send_text("CONNECT {\"verbose\":false}\r\nPING\r\n")
        .await;
    assert!(ws
        .read_until("Authorization Violation")
        .await
        .contains("-ERR"));
    s.shutdown().await;
}

/// Version 1 claims, as older operator setups and client test suites have them: the operator
/// JWT without a `nats` object, `type` (and `issuer_account`) at the top level, the signature
/// over the payload segment alone. The server starts from them and async-nats users with v1
/// `.creds` join their account under the v1 permissions.
#[tokio::test]
async fn version_1_claims_are_accepted() {
    use crate::common::jwt::{creds_connect, encode_v1, write_creds};
    let dir = tempfile::tempdir().expect("tempdir");
    let (op, acc, signer) = (
        KeyPair::new_operator(),
        KeyPair::new_account(),
        KeyPair::new_account(),
    );
    let base = |iss: &KeyPair, sub: &str, kind: &str| {
        json!({"jti": format!("{kind}{sub}"), "iat": now() - 10, "iss": iss.public_key(),
               "sub": sub, "name": kind, "type": kind})
    };
    let op_jwt = encode_v1(base(&op, &op.public_key(), "operator"), &op);
    let mut acc_claims = base(&op, &acc.public_key(), "account");
    acc_claims["nats"] = json!({"limits": {"subs": -1, "conn": -1, "leaf": -1, "imports": -1,
        "exports": -1, "data": -1, "payload": -1, "wildcards": true},
        "signing_keys": [signer.public_key()]});
    let acc_jwt = encode_v1(acc_claims, &op);
    std::fs::write(dir.path().join("op.jwt"), &op_jwt).expect("write");
    let conf = dir.path().join("v1.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:-1\noperator: op.jwt\nresolver: MEMORY\nresolver_preload: {{\n  {}: {}\n}}\n",
            acc.public_key(),
            acc_jwt
        ),
    )
    .expect("write config");
    let s = start_file(&conf).await;

    // A user issued by the account itself, limited to `v1.>`.
    let u = KeyPair::new_user();
    let mut uc = base(&acc, &u.public_key(), "user");
    uc["nats"] =
        json!({"pub": {"allow": ["v1.>", "_INBOX.>"]}, "sub": {"allow": ["v1.>", "_INBOX.>"]}});
    let user_jwt = encode_v1(uc, &acc);
    let c = creds_connect(
        &s.client_url(),
        &write_creds(dir.path(), "u", &user_jwt, &u),
    )
    .await
    .expect("v1 user connects");
    let mut sub = c.subscribe("v1.x").await.expect("sub");
    c.flush().await.expect("flush");
    // One signed by the account's signing key names the account at the top level.
    let u2 = KeyPair::new_user();
    let mut uc2 = base(&signer, &u2.public_key(), "user");
    uc2["issuer_account"] = json!(acc.public_key());
    let jwt2 = encode_v1(uc2, &signer);
    let c2 = creds_connect(&s.client_url(), &write_creds(dir.path(), "u2", &jwt2, &u2))
        .await
        .expect("v1 user of a signing key connects");
    c2.publish("v1.x", "hello".into()).await.expect("pub");
    c2.flush().await.expect("flush");
    let m = tokio::time::timeout(Duration::from_secs(3), sub.next())
        .await
        .expect("delivered")
        .expect("msg");
    assert_eq!(&m.payload[..], b"hello");
    // The v1 permissions hold.
    let (mut r, first) = raw_login(&s, &user_jwt, &u, false).await;
    assert_eq!(first, "PONG\r\n");
    r.send("PUB other 1\r\nx\r\nPING\r\n").await;
    assert_eq!(
        r.read_until("PONG\r\n").await,
        "-ERR 'Permissions Violation for Publish to \"other\"'\r\nPONG\r\n"
    );

    // A v1 JWT is signed over its payload alone: the same claims signed over header.payload
    // (or tampered with) do not verify.
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = user_jwt.split('.').collect();
    let resigned = {
        let sig = acc
            .sign(format!("{}.{}", parts[0], parts[1]).as_bytes())
            .expect("sign");
        format!("{}.{}.{}", parts[0], parts[1], b64.encode(sig))
    };
    assert_eq!(
        raw_login(&s, &resigned, &u, false).await.1,
        "-ERR 'Authorization Violation'\r\n",
        "v1 claims signed the v2 way"
    );
    let mut tampered = base(&acc, &u.public_key(), "user");
    tampered["nats"] = json!({"pub": {"allow": [">"]}});
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(tampered.to_string()),
        parts[2]
    );
    assert_eq!(
        raw_login(&s, &forged, &u, false).await.1,
        "-ERR 'Authorization Violation'\r\n",
        "tampered v1 claims"
    );
    s.shutdown().await;
}
