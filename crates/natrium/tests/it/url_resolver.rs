//! The URL account resolver (`resolver: URL(http://.../jwt/v1/accounts/)`) against a small HTTP
//! server started in the test: an account is fetched when its first user connects (and the
//! accounts it imports from with it), then served from memory; unknown accounts (404) are
//! refused; an expired account is fetched again; `$SYS.REQ.ACCOUNT.<key>.CLAIMS.UPDATE` replaces
//! a fetched account's JWT (its revocations close connections) and skips accounts not fetched;
//! a reload keeps the fetched accounts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::jwt::{creds_connect, encode, now, raw_login, write_creds};
use futures::StreamExt;
use natrium::{Options, Server};
use nkeys::KeyPair;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The account JWTs the HTTP server serves (by key) and the paths it was asked for.
#[derive(Clone, Default)]
struct Accounts {
    jwts: Arc<Mutex<HashMap<String, String>>>,
    asked: Arc<Mutex<Vec<String>>>,
}

impl Accounts {
    fn set(&self, key: &KeyPair, jwt: String) {
        self.jwts
            .lock()
            .expect("lock")
            .insert(key.public_key(), jwt);
    }

    fn asked_for(&self, key: &KeyPair) -> usize {
        let want = format!("/jwt/v1/accounts/{}", key.public_key());
        self.asked
            .lock()
            .expect("lock")
            .iter()
            .filter(|p| **p == want)
            .count()
    }
}

/// A minimal HTTP/1.1 server: `GET /jwt/v1/accounts/<key>` answers the JWT or 404.
async fn http_server(accounts: Accounts) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let accounts = accounts.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut b = [0u8; 1024];
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&b[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&req);
                let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
                accounts.asked.lock().expect("lock").push(path.clone());
                let key = path.trim_start_matches("/jwt/v1/accounts/");
                let body = accounts.jwts.lock().expect("lock").get(key).cloned();
                let resp = match body {
                    Some(b) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                        b.len()
                    ),
                    None => {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_string()
                    }
                };
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

fn account_jwt(op: &KeyPair, acc: &KeyPair, iat: i64, extra: Value) -> String {
    let mut claims = json!({"jti": format!("{}{iat}", acc.public_key()), "iat": now() + iat,
        "iss": op.public_key(), "sub": acc.public_key(), "name": "acc",
        "nats": {"type": "account", "version": 2}});
    if let (Some(n), Some(e)) = (claims["nats"].as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            if k == "exp" {
                continue;
            }
            n.insert(k.clone(), v.clone());
        }
    }
    if let Some(exp) = extra.get("exp") {
        claims["exp"] = exp.clone();
    }
    encode(claims, op)
}

fn user_jwt(acc: &KeyPair) -> (String, KeyPair) {
    let u = KeyPair::new_user();
    let jwt = encode(
        json!({"jti": u.public_key(), "iat": now() - 10, "iss": acc.public_key(),
               "sub": u.public_key(), "name": "u", "nats": {"type": "user", "version": 2}}),
        acc,
    );
    (jwt, u)
}

#[tokio::test]
async fn url_resolver_fetches_caches_refreshes_and_updates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (op, sys, a, b, c) = (
        KeyPair::new_operator(),
        KeyPair::new_account(),
        KeyPair::new_account(),
        KeyPair::new_account(),
        KeyPair::new_account(),
    );
    let served = Accounts::default();
    served.set(&sys, account_jwt(&op, &sys, -10, json!({})));
    served.set(&a, account_jwt(&op, &a, -10, json!({})));
    served.set(
        &c,
        account_jwt(
            &op,
            &c,
            -10,
            json!({"exports": [{"subject": "c.events", "type": "stream"}]}),
        ),
    );
    served.set(
        &b,
        account_jwt(
            &op,
            &b,
            -10,
            json!({"imports": [{"subject": "c.events", "account": c.public_key(), "type": "stream"}]}),
        ),
    );
    let port = http_server(served.clone()).await;
    let op_jwt = encode(
        json!({"jti": "op", "iat": now() - 10, "iss": op.public_key(), "sub": op.public_key(),
               "name": "OP", "nats": {"type": "operator", "version": 2, "system_account": sys.public_key()}}),
        &op,
    );
    std::fs::write(dir.path().join("op.jwt"), op_jwt).expect("write");
    let conf = dir.path().join("url.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:-1\noperator: op.jwt\nresolver: URL(http://127.0.0.1:{port}/jwt/v1/accounts/)\n"
        ),
    )
    .expect("write config");
    let (o, warnings) = Options::from_file(&conf).expect("config loads");
    assert!(warnings.is_empty(), "{warnings:?}");
    let s = Server::start(o).await.expect("starts");

    // A's first user makes the server fetch A; the next ones are served from memory.
    assert_eq!(served.asked_for(&a), 0);
    let (aj1, ak1) = user_jwt(&a);
    let (mut a1, first) = raw_login(&s, &aj1, &ak1, false).await;
    assert_eq!(first, "PONG\r\n");
    let (aj2, ak2) = user_jwt(&a);
    let (mut a2, first) = raw_login(&s, &aj2, &ak2, false).await;
    assert_eq!(first, "PONG\r\n");
    assert_eq!(served.asked_for(&a), 1, "cached after the first fetch");

    // Unknown to the URL: refused.
    let stranger = KeyPair::new_account();
    let (sj, sk) = user_jwt(&stranger);
    assert_eq!(
        raw_login(&s, &sj, &sk, false).await.1,
        "-ERR 'Authorization Violation'\r\n"
    );
    assert_eq!(served.asked_for(&stranger), 1);

    // B imports from C: fetching B fetches C, and C's stream reaches B.
    let (bj, bk) = user_jwt(&b);
    let cb = creds_connect(&s.client_url(), &write_creds(dir.path(), "b", &bj, &bk))
        .await
        .expect("B connects");
    assert_eq!(
        served.asked_for(&c),
        1,
        "the exporter is fetched with the importer"
    );
    let mut events = cb.subscribe("c.events").await.expect("sub");
    cb.flush().await.expect("flush");
    let (cj, ck) = user_jwt(&c);
    let cc = creds_connect(&s.client_url(), &write_creds(dir.path(), "c", &cj, &ck))
        .await
        .expect("C connects");
    cc.publish("c.events", "e".into()).await.expect("pub");
    cc.flush().await.expect("flush");
    let m = tokio::time::timeout(Duration::from_secs(3), events.next())
        .await
        .expect("import delivers")
        .expect("msg");
    assert_eq!(&m.payload[..], b"e");

    // Claims updates: a fetched account's new JWT applies (revoking a1); one never fetched is
    // skipped.
    let (sysj, sysk) = user_jwt(&sys);
    let sysc = creds_connect(
        &s.client_url(),
        &write_creds(dir.path(), "sys", &sysj, &sysk),
    )
    .await
    .expect("system user connects");
    let a_new = account_jwt(
        &op,
        &a,
        -1,
        json!({"revocations": {ak1.public_key(): now()}}),
    );
    let ask = |subject: String, body: String| {
        let sysc = sysc.clone();
        async move {
            let r = sysc.request(subject, body.into()).await.expect("reply");
            serde_json::from_slice::<Value>(&r.payload).expect("json")
        }
    };
    let r = ask(
        format!("$SYS.REQ.ACCOUNT.{}.CLAIMS.UPDATE", a.public_key()),
        a_new,
    )
    .await;
    assert_eq!(
        r["data"],
        json!({"account": a.public_key(), "code": 200, "message": "jwt updated"}),
        "{r}"
    );
    assert!(a1
        .read_to_close()
        .await
        .contains("-ERR 'User Authentication Revoked'"));
    let d = KeyPair::new_account();
    let r = ask(
        format!("$SYS.REQ.ACCOUNT.{}.CLAIMS.UPDATE", d.public_key()),
        account_jwt(&op, &d, -1, json!({})),
    )
    .await;
    assert_eq!(r["data"]["message"], "jwt update skipped", "{r}");
    let r = ask(
        format!("$SYS.REQ.ACCOUNT.{}.CLAIMS.UPDATE", a.public_key()),
        account_jwt(&op, &d, -1, json!({})),
    )
    .await;
    assert_eq!(
        r["error"]["description"],
        "jwt update resulted in error - subject does not match jwt content",
        "{r}"
    );

    // A reload keeps what was fetched: a2 stays, and A is not fetched again.
    s.reload().expect("reload");
    a2.send("PING\r\n").await;
    // The server's own first PING (its RTT measure, ~2 s after CONNECT) may come first.
    let mut line = a2.read_until("\r\n").await;
    if line == "PING\r\n" {
        line = a2.read_until("\r\n").await;
    }
    assert_eq!(line, "PONG\r\n");
    let (aj3, ak3) = user_jwt(&a);
    assert_eq!(raw_login(&s, &aj3, &ak3, false).await.1, "PONG\r\n");
    assert_eq!(served.asked_for(&a), 1);

    // An account whose JWT expires is fetched again when a user needs it.
    let e = KeyPair::new_account();
    served.set(&e, account_jwt(&op, &e, -10, json!({"exp": now() + 2})));
    let (ej, ek) = user_jwt(&e);
    let (_e1, first) = raw_login(&s, &ej, &ek, false).await;
    assert_eq!(first, "PONG\r\n");
    tokio::time::sleep(Duration::from_secs(3)).await;
    served.set(&e, account_jwt(&op, &e, -5, json!({})));
    assert_eq!(raw_login(&s, &ej, &ek, false).await.1, "PONG\r\n");
    assert_eq!(served.asked_for(&e), 2);
    s.shutdown().await;
}
