//! Imports and exports declared in account JWTs, as nats-server applies them: public stream and
//! service exports, private ones with activation tokens (refused without one, with one issued to
//! another account, or once the export revokes it by a pushed JWT), `account_token_position`,
//! stream imports with a `local_subject` or the older `to` prefix, service imports with a
//! `local_subject`, response types (one answer for `Singleton`, many for `Stream`); and user JWT
//! connect-time windows (`times`, `times_location`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::jwt::{creds_connect, encode, now, raw_login, write_creds};
use futures::StreamExt;
use natrium::{Options, Server};
use nkeys::KeyPair;
use serde_json::{json, Value};

fn account_jwt(op: &KeyPair, acc: &KeyPair, name: &str, iat: i64, extra: Value) -> String {
    let mut nats = json!({"type": "account", "version": 2});
    if let (Some(n), Some(e)) = (nats.as_object_mut(), extra.as_object()) {
        n.extend(e.clone());
    }
    encode(
        json!({"jti": format!("{name}{iat}"), "iat": now() + iat, "iss": op.public_key(),
               "sub": acc.public_key(), "name": name, "nats": nats}),
        op,
    )
}

fn user_jwt(acc: &KeyPair, extra: Value) -> (String, KeyPair) {
    let u = KeyPair::new_user();
    let mut nats = json!({"type": "user", "version": 2});
    if let (Some(n), Some(e)) = (nats.as_object_mut(), extra.as_object()) {
        n.extend(e.clone());
    }
    let jwt = encode(
        json!({"jti": u.public_key(), "iat": now() - 10, "iss": acc.public_key(),
               "sub": u.public_key(), "name": "u", "nats": nats}),
        acc,
    );
    (jwt, u)
}

/// An activation token by `issuer` (the exporter) for `importer`.
fn activation(issuer: &KeyPair, importer: &KeyPair, subject: &str, kind: &str) -> String {
    encode(
        json!({"jti": format!("act{}", importer.public_key()), "iat": now() - 10,
               "iss": issuer.public_key(), "sub": importer.public_key(), "name": subject,
               "nats": {"type": "activation", "version": 2, "subject": subject, "kind": kind}}),
        issuer,
    )
}

struct Env {
    dir: tempfile::TempDir,
    op: KeyPair,
    sys: KeyPair,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().expect("tempdir"),
            op: KeyPair::new_operator(),
            sys: KeyPair::new_account(),
        }
    }

    fn jwt_dir(&self) -> PathBuf {
        self.dir.path().join("jwt")
    }

    /// Writes the operator, the system account and `accounts` (key, JWT) and the config.
    fn config(&self, accounts: &[(&KeyPair, String)]) -> PathBuf {
        let op_jwt = encode(
            json!({"jti": "op", "iat": now() - 10, "iss": self.op.public_key(), "sub": self.op.public_key(),
                   "name": "OP", "nats": {"type": "operator", "version": 2, "system_account": self.sys.public_key()}}),
            &self.op,
        );
        std::fs::write(self.dir.path().join("op.jwt"), op_jwt).expect("write op");
        let jd = self.jwt_dir();
        std::fs::create_dir_all(&jd).expect("mkdir");
        let sys = account_jwt(&self.op, &self.sys, "SYS", -10, json!({}));
        for (k, jwt) in std::iter::once((&self.sys, sys)).chain(accounts.iter().cloned()) {
            std::fs::write(jd.join(format!("{}.jwt", k.public_key())), jwt).expect("write");
        }
        let conf = self.dir.path().join("imports.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:-1\noperator: op.jwt\nresolver: {{\n  type: full\n  dir: \"{}\"\n}}\n",
                jd.display()
            ),
        )
        .expect("write config");
        conf
    }

    async fn client(&self, s: &Server, acc: &KeyPair, extra: Value) -> async_nats::Client {
        let (jwt, key) = user_jwt(acc, extra);
        let name = key.public_key();
        creds_connect(
            &s.client_url(),
            &write_creds(self.dir.path(), &name, &jwt, &key),
        )
        .await
        .expect("user connects")
    }
}

async fn start_file(conf: &Path) -> Server {
    let (o, warnings) = Options::from_file(conf).expect("config loads");
    assert!(warnings.is_empty(), "{warnings:?}");
    Server::start(o).await.expect("starts")
}

async fn next(sub: &mut async_nats::Subscriber) -> Option<async_nats::Message> {
    tokio::time::timeout(Duration::from_millis(1500), sub.next())
        .await
        .ok()
        .flatten()
}

async fn nothing(sub: &mut async_nats::Subscriber) -> bool {
    tokio::time::timeout(Duration::from_millis(300), sub.next())
        .await
        .is_err()
}

#[tokio::test]
async fn account_jwt_imports_and_exports() {
    let env = Env::new();
    let (a, b, c) = (
        KeyPair::new_account(),
        KeyPair::new_account(),
        KeyPair::new_account(),
    );
    let exports = json!([
        {"subject": "news.>", "type": "stream"},
        {"subject": "private.>", "type": "stream", "token_req": true},
        {"subject": "svc.time", "type": "service"},
        {"subject": "svc.feed", "type": "service", "response_type": "Stream"},
        {"subject": "acct.*.info", "type": "service", "account_token_position": 2},
    ]);
    let a_jwt = account_jwt(&env.op, &a, "A", -10, json!({"exports": exports}));
    let b_token = activation(&a, &b, "private.>", "stream");
    let b_jwt = account_jwt(
        &env.op,
        &b,
        "B",
        -10,
        json!({"imports": [
            {"subject": "news.>", "account": a.public_key(), "type": "stream", "local_subject": "a.news.>"},
            {"subject": "private.>", "account": a.public_key(), "type": "stream", "token": b_token},
            {"subject": "svc.time", "account": a.public_key(), "type": "service", "local_subject": "time"},
            {"subject": "svc.feed", "account": a.public_key(), "type": "service"},
            {"subject": format!("acct.{}.info", b.public_key()), "account": a.public_key(), "type": "service"},
        ]}),
    );
    let c_jwt = account_jwt(
        &env.op,
        &c,
        "C",
        -10,
        json!({"imports": [
            {"subject": "news.>", "account": a.public_key(), "type": "stream", "to": "pfx"},
            {"subject": "private.>", "account": a.public_key(), "type": "stream"},
            {"subject": "private.>", "account": a.public_key(), "type": "stream", "token": activation(&a, &b, "private.>", "stream")},
            {"subject": format!("acct.{}.info", b.public_key()), "account": a.public_key(), "type": "service"},
        ]}),
    );
    let conf = env.config(&[(&a, a_jwt.clone()), (&b, b_jwt), (&c, c_jwt)]);
    let s = start_file(&conf).await;
    let ca = env.client(&s, &a, json!({})).await;
    let cb = env.client(&s, &b, json!({})).await;
    let cc = env.client(&s, &c, json!({})).await;

    // Streams: B sees A's news under its local subject and A's private stream with its token;
    // C sees the news under its prefix, and no private stream (no token, or B's token).
    let mut b_news = cb.subscribe("a.news.>").await.expect("sub");
    let mut b_private = cb.subscribe("private.>").await.expect("sub");
    let mut c_news = cc.subscribe("pfx.news.>").await.expect("sub");
    let mut c_private = cc.subscribe("private.>").await.expect("sub");
    cb.flush().await.expect("flush");
    cc.flush().await.expect("flush");
    ca.publish("news.today", "n".into()).await.expect("pub");
    ca.publish("private.x", "p".into()).await.expect("pub");
    ca.flush().await.expect("flush");
    assert_eq!(
        next(&mut b_news)
            .await
            .expect("B gets the news")
            .subject
            .as_str(),
        "a.news.today"
    );
    assert_eq!(
        next(&mut b_private)
            .await
            .expect("B gets the private stream")
            .subject
            .as_str(),
        "private.x"
    );
    assert_eq!(
        next(&mut c_news)
            .await
            .expect("C gets the news")
            .subject
            .as_str(),
        "pfx.news.today"
    );
    assert!(
        nothing(&mut c_private).await,
        "C has no valid activation token"
    );

    // Services: one answer per request for a singleton export, all of them for a stream one.
    let mut time_svc = ca.subscribe("svc.time").await.expect("sub");
    let mut feed_svc = ca.subscribe("svc.feed").await.expect("sub");
    let mut info_svc = ca.subscribe("acct.*.info").await.expect("sub");
    ca.flush().await.expect("flush");
    let responder = ca.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(m) = time_svc.next() => {
                    let r = m.reply.expect("reply");
                    responder.publish(r.clone(), "12:00".into()).await.expect("answer");
                    responder.publish(r, "again".into()).await.expect("answer");
                }
                Some(m) = feed_svc.next() => {
                    let r = m.reply.expect("reply");
                    for i in 0..3 {
                        responder.publish(r.clone(), format!("part {i}").into()).await.expect("answer");
                    }
                }
                Some(m) = info_svc.next() => {
                    let r = m.reply.expect("reply");
                    responder.publish(r, m.subject.to_string().into()).await.expect("answer");
                }
                else => return,
            }
            responder.flush().await.expect("flush");
        }
    });
    let inbox = cb.new_inbox();
    let mut replies = cb.subscribe(format!("{inbox}.>")).await.expect("sub");
    cb.flush().await.expect("flush");
    cb.publish_with_reply("time", format!("{inbox}.t"), "now?".into())
        .await
        .expect("request");
    assert_eq!(
        &next(&mut replies).await.expect("answer").payload[..],
        b"12:00"
    );
    assert!(
        nothing(&mut replies).await,
        "a singleton export answers once"
    );
    cb.publish_with_reply("svc.feed", format!("{inbox}.f"), "".into())
        .await
        .expect("request");
    for i in 0..3 {
        let m = next(&mut replies).await.expect("streamed answer");
        assert_eq!(m.payload, format!("part {i}"));
    }
    let info = format!("acct.{}.info", b.public_key());
    let r = cb
        .request(info.clone(), "".into())
        .await
        .expect("the export names B at its account token position");
    assert_eq!(r.payload, info);
    // C imports B's account subject: refused, as the token position must name C.
    assert!(
        tokio::time::timeout(Duration::from_millis(800), cc.request(info, "".into()))
            .await
            .map_or(true, |r| r.is_err()),
        "C may not use B's account subject"
    );

    // A pushes a JWT that revokes B's activation token: B's private stream stops at once.
    let sys = env.client(&s, &env.sys, json!({})).await;
    let revoked = json!([
        {"subject": "news.>", "type": "stream"},
        {"subject": "private.>", "type": "stream", "token_req": true, "revocations": {b.public_key(): now()}},
    ]);
    let a_new = account_jwt(&env.op, &a, "A", -1, json!({"exports": revoked}));
    let r = sys
        .request("$SYS.REQ.CLAIMS.UPDATE", a_new.into())
        .await
        .expect("push");
    let r: Value = serde_json::from_slice(&r.payload).expect("json");
    assert_eq!(r["data"]["code"], 200, "{r}");
    ca.publish("private.y", "p".into()).await.expect("pub");
    ca.publish("news.later", "n".into()).await.expect("pub");
    ca.flush().await.expect("flush");
    assert_eq!(
        next(&mut b_news)
            .await
            .expect("the news still flows")
            .subject
            .as_str(),
        "a.news.later"
    );
    assert!(nothing(&mut b_private).await, "revoked activation");
    s.shutdown().await;
}

/// Seconds into the current UTC day, waiting out the first two minutes of a day so windows
/// built around now do not cross midnight.
async fn safe_time_of_day() -> i64 {
    loop {
        let sod = now().rem_euclid(86_400);
        if (120..86_400 - 120).contains(&sod) {
            return sod;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn hms(secs: i64) -> String {
    let s = secs.rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[tokio::test]
async fn user_jwt_connect_time_windows() {
    let env = Env::new();
    let a = KeyPair::new_account();
    let conf = env.config(&[(&a, account_jwt(&env.op, &a, "A", -10, json!({})))]);
    let s = start_file(&conf).await;
    let sod = safe_time_of_day().await;
    let ok = "PONG\r\n";
    let refused = "-ERR 'Authorization Violation'\r\n";

    // A window that ends in a few seconds: admitted, then closed when it ends.
    let (jwt, key) = user_jwt(
        &a,
        json!({"times": [{"start": hms(sod - 60), "end": hms(sod + 3)}], "times_location": "UTC"}),
    );
    let (mut short, first) = raw_login(&s, &jwt, &key, false).await;
    assert_eq!(first, ok);
    // Over: refused.
    let (jwt, key) = user_jwt(
        &a,
        json!({"times": [{"start": hms(sod - 100), "end": hms(sod - 50)}], "times_location": "UTC"}),
    );
    assert_eq!(raw_login(&s, &jwt, &key, false).await.1, refused);
    // Several windows: the one containing now admits.
    let (jwt, key) = user_jwt(
        &a,
        json!({"times": [{"start": hms(sod - 100), "end": hms(sod - 50)},
                         {"start": hms(sod - 10), "end": hms(sod + 600)}], "times_location": "UTC"}),
    );
    assert_eq!(raw_login(&s, &jwt, &key, false).await.1, ok);
    // The window is read in its time zone: now in Tokyo (UTC+9, no daylight saving time)
    // admits, the same clock times taken as UTC do not.
    let tokyo = sod + 9 * 3600;
    if (120..86_400 - 700).contains(&tokyo.rem_euclid(86_400)) {
        let window = json!([{"start": hms(tokyo - 60), "end": hms(tokyo + 600)}]);
        let (jwt, key) = user_jwt(&a, json!({"times": window, "times_location": "Asia/Tokyo"}));
        assert_eq!(raw_login(&s, &jwt, &key, false).await.1, ok, "Tokyo time");
        let (jwt, key) = user_jwt(&a, json!({"times": window, "times_location": "UTC"}));
        assert_eq!(raw_login(&s, &jwt, &key, false).await.1, refused, "UTC");
    }
    // An unknown time zone refuses.
    let (jwt, key) = user_jwt(
        &a,
        json!({"times": [{"start": "00:00:00", "end": "23:59:59"}], "times_location": "Nowhere/Special"}),
    );
    assert_eq!(raw_login(&s, &jwt, &key, false).await.1, refused);

    let out = short.read_to_close().await;
    assert!(
        out.contains("-ERR 'User Authentication Expired'"),
        "{out:?}"
    );
    s.shutdown().await;
}
