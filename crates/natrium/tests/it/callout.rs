//! Auth callout (`authorization { auth_callout { issuer, account, auth_users, xkey } }`): a
//! callout service written against async-nats (in the test) receives the authorization
//! requests on `$SYS.REQ.USER.AUTH` in its account, checks the users' passwords, and answers with
//! user JWTs placing them in accounts with permissions, or with an error. Clients other than the
//! `auth_users` are admitted only as the service says; the service's own users may not publish
//! on the callout subject. With `xkey` the requests and answers are sealed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use natrium::{Options, Server};
use nkeys::{KeyPair, XKey};
use serde_json::{json, Value};

use crate::common::jwt::{encode, now};
use crate::common::Raw;

/// The claims of a JWT (signature checked with its issuer's key).
fn claims_of(token: &str) -> Value {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT");
    let claims: Value =
        serde_json::from_slice(&b64.decode(parts[1]).expect("b64")).expect("claims json");
    let iss = KeyPair::from_public_key(claims["iss"].as_str().expect("iss")).expect("key");
    iss.verify(
        format!("{}.{}", parts[0], parts[1]).as_bytes(),
        &b64.decode(parts[2]).expect("sig"),
    )
    .expect("request signed by its issuer");
    claims
}

/// What the service saw, for the test to look at.
#[derive(Default)]
struct Seen {
    requests: Vec<Value>,
    sealed: Vec<bool>,
}

/// The callout service: alice (password "alice-pw") joins APP limited to `app.>`; bob joins
/// OTHER; "forger" gets a user JWT signed by a key that is not the issuer; "silent" gets no
/// answer; everyone else gets an error.
async fn run_service(
    url: String,
    issuer: Arc<KeyPair>,
    xkey: Option<Arc<XKey>>,
    seen: Arc<Mutex<Seen>>,
) -> async_nats::Client {
    let nc = async_nats::ConnectOptions::with_user_and_password("auth".into(), "auth-pw".into())
        .connect(url)
        .await
        .expect("service connects as an auth user");
    let mut requests = nc.subscribe("$SYS.REQ.USER.AUTH").await.expect("sub");
    nc.flush().await.expect("flush");
    let responder = nc.clone();
    tokio::spawn(async move {
        while let Some(m) = requests.next().await {
            let server_xkey = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Server-Xkey"))
                .map(|v| v.to_string());
            let sealed = !m.payload.starts_with(b"eyJ");
            let token = match (&xkey, &server_xkey) {
                (Some(ours), Some(theirs)) if sealed => {
                    let from = XKey::from_public_key(theirs).expect("server xkey");
                    String::from_utf8(ours.open(&m.payload, &from).expect("open")).expect("utf8")
                }
                _ => String::from_utf8(m.payload.to_vec()).expect("utf8"),
            };
            let req = claims_of(&token);
            seen.lock().expect("lock").requests.push(req.clone());
            seen.lock().expect("lock").sealed.push(sealed);
            let n = &req["nats"];
            let user_nkey = n["user_nkey"].as_str().expect("user_nkey").to_string();
            let server_id = n["server_id"]["id"]
                .as_str()
                .expect("server id")
                .to_string();
            let user = n["connect_opts"]["user"].as_str().unwrap_or("");
            let pass = n["connect_opts"]["pass"].as_str().unwrap_or("");
            let user_jwt = |signer: &KeyPair, account: &str, perms: Value| {
                let mut nats = json!({"type": "user", "version": 2});
                if let (Some(o), Some(p)) = (nats.as_object_mut(), perms.as_object()) {
                    o.extend(p.clone());
                }
                encode(
                    json!({"jti": user_nkey, "iat": now(), "iss": signer.public_key(),
                           "sub": user_nkey, "aud": account, "name": user, "nats": nats}),
                    signer,
                )
            };
            let mut resp = json!({"type": "authorization_response", "version": 2});
            match (user, pass) {
                ("alice", "alice-pw") => {
                    resp["jwt"] = json!(user_jwt(
                        &issuer,
                        "APP",
                        json!({"pub": {"allow": ["app.>"]}, "sub": {"allow": ["app.>", "_INBOX.>"]}})
                    ))
                }
                ("bob", "bob-pw") => resp["jwt"] = json!(user_jwt(&issuer, "OTHER", json!({}))),
                ("forger", _) => {
                    resp["jwt"] = json!(user_jwt(&KeyPair::new_account(), "APP", json!({})))
                }
                ("silent", _) => continue,
                _ => resp["error"] = json!("bad user or password"),
            }
            let answer = encode(
                json!({"jti": format!("r{user_nkey}"), "iat": now(), "iss": issuer.public_key(),
                       "sub": user_nkey, "aud": server_id, "nats": resp}),
                &issuer,
            );
            let payload: Bytes = match (&xkey, &server_xkey) {
                (Some(ours), Some(theirs)) => ours
                    .seal(
                        answer.as_bytes(),
                        &XKey::from_public_key(theirs).expect("xkey"),
                    )
                    .expect("seal")
                    .into(),
                _ => answer.into(),
            };
            if let Some(reply) = m.reply {
                responder.publish(reply, payload).await.expect("answer");
            }
        }
    });
    nc
}

fn config(dir: &std::path::Path, issuer: &KeyPair, xkey: Option<&XKey>) -> std::path::PathBuf {
    let conf = dir.join("callout.conf");
    let xkey_line = xkey
        .map(|x| format!("    xkey: {}\n", x.public_key()))
        .unwrap_or_default();
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:-1\n\
             accounts {{\n  AUTH: {{ users: [ {{user: auth, password: auth-pw}} ] }}\n  APP: {{}}\n  OTHER: {{}}\n}}\n\
             authorization {{\n  timeout: 4\n  auth_callout {{\n    issuer: {}\n    account: AUTH\n    auth_users: [ auth ]\n{xkey_line}  }}\n}}\n",
            issuer.public_key()
        ),
    )
    .expect("write config");
    conf
}

async fn login(s: &Server, user: &str, pass: &str) -> (Raw, String) {
    let mut r = Raw::connect(s).await;
    r.send(&format!(
        "CONNECT {{\"verbose\":false,\"user\":\"{user}\",\"pass\":\"{pass}\",\"name\":\"n-{user}\",\"lang\":\"raw\",\"version\":\"1.0\"}}\r\nPING\r\n"
    ))
    .await;
    let line = r.read_until("\r\n").await;
    (r, line)
}

async fn callout_scenario(sealed: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let issuer = Arc::new(KeyPair::new_account());
    let service_xkey = sealed.then(|| Arc::new(XKey::new()));
    let conf = config(dir.path(), &issuer, service_xkey.as_deref());
    let (o, warnings) = Options::from_file(&conf).expect("config loads");
    assert!(warnings.is_empty(), "{warnings:?}");
    let s = Server::start(o).await.expect("starts");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let _service = run_service(s.client_url(), issuer.clone(), service_xkey, seen.clone()).await;

    // alice: admitted into APP with the service's permissions.
    let alice =
        async_nats::ConnectOptions::with_user_and_password("alice".into(), "alice-pw".into())
            .connect(s.client_url())
            .await
            .expect("alice admitted by the service");
    let mut app = alice.subscribe("app.>").await.expect("sub");
    alice.flush().await.expect("flush");
    let (mut a2, first) = login(&s, "alice", "alice-pw").await;
    assert_eq!(first, "PONG\r\n");
    a2.send("PUB app.x 2\r\nhi\r\nPUB other.x 2\r\nhi\r\nPING\r\n")
        .await;
    assert_eq!(
        a2.read_until("PONG\r\n").await,
        "-ERR 'Permissions Violation for Publish to \"other.x\"'\r\nPONG\r\n"
    );
    let m = tokio::time::timeout(Duration::from_secs(3), app.next())
        .await
        .expect("delivered")
        .expect("msg");
    assert_eq!(m.subject.as_str(), "app.x");
    // bob lands in OTHER: APP's traffic does not reach him.
    let bob = async_nats::ConnectOptions::with_user_and_password("bob".into(), "bob-pw".into())
        .connect(s.client_url())
        .await
        .expect("bob admitted");
    let mut bob_sub = bob.subscribe("app.>").await.expect("sub");
    bob.flush().await.expect("flush");
    alice.publish("app.y", "x".into()).await.expect("pub");
    alice.flush().await.expect("flush");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), bob_sub.next())
            .await
            .is_err()
    );

    // Refused: a wrong password (the service's error), a user JWT not signed by the issuer, no
    // answer within the auth timeout.
    let violation = "-ERR 'Authorization Violation'\r\n";
    assert_eq!(login(&s, "alice", "nope").await.1, violation);
    assert_eq!(login(&s, "forger", "x").await.1, violation);
    let (_r, line) = login(&s, "silent", "x").await;
    assert_eq!(line, "-ERR 'Authentication Timeout'\r\n");

    // The service's own user authenticated by the configuration, without a callout; it may
    // not publish authorization requests itself.
    let (mut svc, first) = login(&s, "auth", "auth-pw").await;
    assert_eq!(first, "PONG\r\n");
    svc.send("PUB $SYS.REQ.USER.AUTH 1\r\nx\r\nPING\r\n").await;
    assert_eq!(
        svc.read_until("PONG\r\n").await,
        "-ERR 'Permissions Violation for Publish to \"$SYS.REQ.USER.AUTH\"'\r\nPONG\r\n"
    );

    // What the requests said; none was about an auth user (the service's own two logins).
    {
        let seen = seen.lock().expect("lock");
        assert!(
            seen.requests
                .iter()
                .all(|r| r["nats"]["connect_opts"]["user"] != "auth"),
            "no callout for auth users"
        );
        check_requests(&seen, &s, &issuer, sealed);
    }
    s.shutdown().await;
}

fn check_requests(seen: &Seen, s: &Server, issuer: &KeyPair, sealed: bool) {
    assert!(
        seen.sealed.iter().all(|s| *s == sealed),
        "{:?}",
        seen.sealed
    );
    let r = seen
        .requests
        .iter()
        .find(|r| r["nats"]["connect_opts"]["name"] == "n-alice")
        .expect("a request for the raw alice login");
    assert_eq!(r["iss"], s.server_id(), "signed by the server");
    assert_eq!(r["sub"], issuer.public_key());
    assert_eq!(r["aud"], "nats-authorization-request");
    assert_eq!(r["nats"]["type"], "authorization_request");
    let n = &r["nats"];
    assert_eq!(n["server_id"]["id"], s.server_id());
    assert_eq!(n["client_info"]["host"], "127.0.0.1");
    assert_eq!(n["client_info"]["user"], "alice");
    assert_eq!(n["client_info"]["kind"], "Client");
    assert_eq!(n["connect_opts"]["lang"], "raw");
    assert_eq!(n["connect_opts"]["pass"], "alice-pw");
    assert!(n["user_nkey"].as_str().is_some_and(|k| k.starts_with('U')));
    assert_eq!(n["server_id"]["xkey"].is_string(), sealed);
}

#[tokio::test]
async fn auth_callout_service_admits_places_and_refuses() {
    callout_scenario(false).await;
}

#[tokio::test]
async fn auth_callout_with_xkey_encryption() {
    callout_scenario(true).await;
}
