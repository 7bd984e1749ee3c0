//! The directory account resolver: account JWTs loaded from `<dir>/<key>.jwt` (bad files skipped),
//! pushed over the system account (`$SYS.REQ.CLAIMS.UPDATE`, `$SYS.REQ.ACCOUNT.<key>.CLAIMS.UPDATE`)
//! with nats-server's JSON answers, applied to live connections (revocations close them, limits
//! change), looked up, listed and deleted, and kept across a reload; the config's checks.

use std::path::{Path, PathBuf};

use crate::common::jwt::{encode, now, raw_login};
use futures::StreamExt;
use natrium::{Options, Server};
use nkeys::KeyPair;
use serde_json::{json, Value};

/// An account JWT for `acc` issued by `op`, `iat` seconds from now.
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

fn user_jwt(acc: &KeyPair) -> (String, KeyPair) {
    let u = KeyPair::new_user();
    let jwt = encode(
        json!({"jti": u.public_key(), "iat": now() - 10, "iss": acc.public_key(),
               "sub": u.public_key(), "name": "u", "nats": {"type": "user", "version": 2}}),
        acc,
    );
    (jwt, u)
}

fn creds(dir: &Path, name: &str, jwt: &str, key: &KeyPair) -> PathBuf {
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

async fn request(c: &async_nats::Client, subject: &str, payload: &str) -> Value {
    let r = c
        .request(subject.to_string(), payload.to_string().into())
        .await
        .expect("reply");
    serde_json::from_slice(&r.payload).expect("json reply")
}

struct Env {
    dir: tempfile::TempDir,
    op: KeyPair,
    sys: KeyPair,
    a: KeyPair,
}

impl Env {
    fn jwt_dir(&self) -> PathBuf {
        self.dir.path().join("jwt")
    }

    /// Operator file, SYS and A in the JWT directory (plus two files that must be skipped),
    /// and the config.
    fn new() -> (Env, PathBuf) {
        let env = Env {
            dir: tempfile::tempdir().expect("tempdir"),
            op: KeyPair::new_operator(),
            sys: KeyPair::new_account(),
            a: KeyPair::new_account(),
        };
        let op_jwt = encode(
            json!({"jti": "op", "iat": now() - 10, "iss": env.op.public_key(), "sub": env.op.public_key(),
                   "name": "OP", "nats": {"type": "operator", "version": 2, "system_account": env.sys.public_key()}}),
            &env.op,
        );
        std::fs::write(env.dir.path().join("op.jwt"), op_jwt).expect("write op");
        let jd = env.jwt_dir();
        std::fs::create_dir_all(&jd).expect("mkdir");
        let write = |k: &KeyPair, jwt: String| {
            std::fs::write(jd.join(format!("{}.jwt", k.public_key())), jwt).expect("write jwt")
        };
        write(
            &env.sys,
            account_jwt(&env.op, &env.sys, "SYS", -10, json!({})),
        );
        write(&env.a, account_jwt(&env.op, &env.a, "A", -10, json!({})));
        // Signed by another operator, and garbage: both skipped, the server still starts.
        let rogue_op = KeyPair::new_operator();
        let rogue = KeyPair::new_account();
        write(&rogue, account_jwt(&rogue_op, &rogue, "R", -10, json!({})));
        write(&KeyPair::new_account(), "not a jwt".to_string());
        let conf = env.dir.path().join("dir.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:-1\noperator: op.jwt\nresolver: {{\n  type: full\n  dir: \"{}\"\n  allow_delete: true\n  interval: \"2m\"\n  timeout: \"1.9s\"\n}}\n",
                jd.display()
            ),
        )
        .expect("write config");
        (env, conf)
    }
}

#[tokio::test]
async fn directory_resolver_pushes_lookups_and_deletes() {
    let (env, conf) = Env::new();
    let (o, warnings) = Options::from_file(&conf).expect("config loads");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(o.system_account, env.sys.public_key());
    let s = Server::start(o).await.expect("starts");

    let (sj, sk) = user_jwt(&env.sys);
    let sys =
        async_nats::ConnectOptions::with_credentials_file(creds(env.dir.path(), "sys", &sj, &sk))
            .await
            .expect("creds")
            .connect(s.client_url())
            .await
            .expect("system user connects");

    let (aj1, ak1) = user_jwt(&env.a);
    let (mut a1, first) = raw_login(&s, &aj1, &ak1, false).await;
    assert_eq!(first, "PONG\r\n", "account A comes from the directory");
    let (aj2, ak2) = user_jwt(&env.a);
    let (mut a2, first) = raw_login(&s, &aj2, &ak2, false).await;
    assert_eq!(first, "PONG\r\n");

    // B is unknown until its JWT is pushed.
    let b = KeyPair::new_account();
    let (bj, bk) = user_jwt(&b);
    assert_eq!(
        raw_login(&s, &bj, &bk, false).await.1,
        "-ERR 'Authorization Violation'\r\n"
    );
    let b_jwt = account_jwt(&env.op, &b, "B", -5, json!({}));
    let r = request(&sys, "$SYS.REQ.CLAIMS.UPDATE", &b_jwt).await;
    assert_eq!(
        r["data"],
        json!({"account": b.public_key(), "code": 200, "message": "jwt updated"}),
        "{r}"
    );
    assert_eq!(r["server"]["id"], s.server_id());
    let stored = env.jwt_dir().join(format!("{}.jwt", b.public_key()));
    assert_eq!(std::fs::read_to_string(&stored).expect("stored"), b_jwt);
    let (mut bconn, first) = raw_login(&s, &bj, &bk, false).await;
    assert_eq!(first, "PONG\r\n", "B's users connect once it is pushed");

    // A new A JWT revokes a1 and limits subscriptions: a1 is closed, a2 keeps running under
    // the new limit.
    let a_new = account_jwt(
        &env.op,
        &env.a,
        "A",
        -1,
        json!({"revocations": {ak1.public_key(): now()}, "limits": {"subs": 1}}),
    );
    let subject = format!("$SYS.REQ.ACCOUNT.{}.CLAIMS.UPDATE", env.a.public_key());
    let r = request(&sys, &subject, &a_new).await;
    assert_eq!(r["data"]["code"], 200, "{r}");
    assert!(a1
        .read_to_close()
        .await
        .contains("-ERR 'User Authentication Revoked'"));
    a2.send("SUB x 1\r\nSUB y 2\r\nPING\r\n").await;
    assert_eq!(
        a2.read_until("PONG\r\n").await,
        "-ERR 'maximum subscriptions exceeded'\r\nPONG\r\n"
    );
    assert_eq!(
        raw_login(&s, &aj1, &ak1, false).await.1,
        "-ERR 'Authorization Violation'\r\n",
        "the revoked user can not come back"
    );

    // Refused pushes: the subject names another account; an untrusted issuer; garbage.
    let r = request(&sys, &subject, &b_jwt).await;
    assert_eq!(
        r["error"],
        json!({"account": env.a.public_key(), "code": 500,
               "description": "jwt update resulted in error - subject does not match jwt content"}),
        "{r}"
    );
    let stranger_op = KeyPair::new_operator();
    let c = KeyPair::new_account();
    let r = request(
        &sys,
        "$SYS.REQ.CLAIMS.UPDATE",
        &account_jwt(&stranger_op, &c, "C", 0, json!({})),
    )
    .await;
    assert_eq!(r["error"]["code"], 500, "{r}");
    assert!(!env
        .jwt_dir()
        .join(format!("{}.jwt", c.public_key()))
        .exists());
    let r = request(&sys, "$SYS.REQ.CLAIMS.UPDATE", "garbage").await;
    assert_eq!(r["error"]["account"], "n/a", "{r}");

    // Lookup answers the JWT in force, or nothing; list names every stored account.
    let lookup = |k: String| {
        let sys = sys.clone();
        async move {
            sys.request(format!("$SYS.REQ.ACCOUNT.{k}.CLAIMS.LOOKUP"), "".into())
                .await
                .expect("lookup reply")
                .payload
        }
    };
    assert_eq!(&lookup(env.a.public_key()).await[..], a_new.as_bytes());
    assert!(lookup(c.public_key()).await.is_empty());
    let r = request(&sys, "$SYS.REQ.CLAIMS.LIST", "").await;
    let listed: Vec<String> = serde_json::from_value(r["data"].clone()).expect("list");
    for k in [&env.sys, &env.a, &b] {
        assert!(listed.contains(&k.public_key()), "{listed:?}");
    }

    // A reload re-reads the directory: the pushed JWTs stay in force.
    s.reload().expect("reload");
    a2.send("PING\r\n").await;
    assert_eq!(a2.read_until("\r\n").await, "PONG\r\n");
    assert_eq!(
        raw_login(&s, &aj1, &ak1, false).await.1,
        "-ERR 'Authorization Violation'\r\n"
    );

    // Delete (allow_delete): only the operator may, never the system account; B's file is
    // renamed and its connection closed.
    let delete = |keys: Vec<String>, signer: &KeyPair| {
        encode(
            json!({"jti": "d", "iat": now(), "iss": signer.public_key(), "sub": signer.public_key(),
                   "nats": {"accounts": keys}}),
            signer,
        )
    };
    let r = request(
        &sys,
        "$SYS.REQ.CLAIMS.DELETE",
        &delete(vec![env.sys.public_key()], &env.op),
    )
    .await;
    assert!(r["error"]["description"]
        .as_str()
        .is_some_and(|d| d.ends_with("not allowed to delete system account")));
    let r = request(
        &sys,
        "$SYS.REQ.CLAIMS.DELETE",
        &delete(vec![b.public_key()], &stranger_op),
    )
    .await;
    assert_eq!(r["error"]["code"], 500, "{r}");
    let r = request(
        &sys,
        "$SYS.REQ.CLAIMS.DELETE",
        &delete(vec![b.public_key()], &env.op),
    )
    .await;
    assert_eq!(
        r["data"],
        json!({"code": 200, "message": "deleted 1 accounts"}),
        "{r}"
    );
    assert!(!stored.exists());
    assert!(stored.with_extension("jwt.deleted").exists());
    assert!(bconn
        .read_to_close()
        .await
        .contains("-ERR 'Authorization Violation'"));
    s.shutdown().await;
}

#[tokio::test]
async fn resolver_config_forms_and_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let load = |body: &str| {
        let conf = dir.path().join("r.conf");
        std::fs::write(&conf, body).expect("write");
        Options::from_file(&conf).map(|(o, _)| o)
    };
    let err = |body: &str| load(body).expect_err("refused").to_string();
    assert!(
        err("resolver: { type: cache, dir: \"x\", allow_delete: true }")
            .contains("CACHE does not accept allow_delete")
    );
    assert!(err("resolver: { type: full }").contains("dir has no value"));
    assert!(err("resolver: { type: full, dir: \"x\", ttl: \"1h\" }")
        .contains("FULL does not accept ttl"));
    assert!(err("resolver: { dir: \"x\" }").contains("should be MEM or"));
    let o = load(&format!(
        "resolver: {{ type: cache, dir: \"{}\", limit: 10, ttl: \"2m\" }}",
        dir.path().display()
    ))
    .expect("cache form loads");
    match o.operator.and_then(|op| op.resolver) {
        Some(natrium::options::Resolver::Dir(d)) => {
            assert!(d.cache);
            assert_eq!(d.limit, 10);
        }
        other => panic!("{other:?}"),
    }
    for form in [
        "resolver: URL(http://127.0.0.1:9090/jwt/v1/accounts/)",
        "resolver: URL(\"http://127.0.0.1:9090/jwt/v1/accounts\")",
    ] {
        let o = load(form).expect("parses");
        match o.operator.and_then(|op| op.resolver) {
            Some(natrium::options::Resolver::Url(u)) => {
                assert_eq!(u, "http://127.0.0.1:9090/jwt/v1/accounts/")
            }
            other => panic!("{form}: {other:?}"),
        }
    }
    let o = load("resolver: URL(ftp://x)").expect("parses");
    let e = o.validate().expect_err("not supported").to_string();
    assert!(e.contains("not supported yet"), "{e}");
}

/// `$SYS.REQ.CLAIMS.PACK`, as another resolver syncs with this one: with a hash that is not
/// this directory's, every JWT as `<key>|<jwt>`, one a message, then an empty message; with the
/// directory's own hash (XOR of the SHA-256 of each file), only the empty message.
#[tokio::test]
async fn pack_requests_are_answered_as_a_full_resolver_does() {
    let (env, conf) = Env::new();
    let (o, _) = Options::from_file(&conf).expect("config loads");
    let s = Server::start(o).await.expect("starts");
    let (sj, sk) = user_jwt(&env.sys);
    let sys =
        crate::common::jwt::creds_connect(&s.client_url(), &creds(env.dir.path(), "sys", &sj, &sk))
            .await
            .expect("system user connects");
    let pack = |hash: Vec<u8>| {
        let sys = sys.clone();
        async move {
            let inbox = sys.new_inbox();
            let mut sub = sys.subscribe(inbox.clone()).await.expect("sub");
            sys.publish_with_reply("$SYS.REQ.CLAIMS.PACK", inbox, hash.into())
                .await
                .expect("pack request");
            let mut got = Vec::new();
            loop {
                let m = tokio::time::timeout(std::time::Duration::from_secs(3), sub.next())
                    .await
                    .expect("pack answer in time")
                    .expect("message");
                if m.payload.is_empty() {
                    return got;
                }
                got.push(String::from_utf8(m.payload.to_vec()).expect("utf8"));
            }
        }
    };
    let mut files = Vec::new();
    let mut hash = [0u8; 32];
    for e in std::fs::read_dir(env.jwt_dir()).expect("dir").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(key) = name.strip_suffix(".jwt") else {
            continue;
        };
        let text = std::fs::read_to_string(e.path()).expect("read");
        let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        hash.iter_mut().zip(d.as_ref()).for_each(|(h, x)| *h ^= x);
        files.push(format!("{key}|{text}"));
    }
    files.sort();
    let mut got = pack(vec![0u8; 32]).await;
    got.sort();
    assert_eq!(got, files);
    assert!(got.iter().any(|l| l.starts_with(&env.a.public_key())));
    assert!(
        pack(hash.to_vec()).await.is_empty(),
        "same hash: nothing to send"
    );
    s.shutdown().await;
}
