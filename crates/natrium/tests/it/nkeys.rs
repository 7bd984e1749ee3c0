//! NKey users: a nonce in INFO, CONNECT's signature over it checked with the user's public key,
//! through async-nats (`with_nkey`) and by hand (URL-safe and standard base64, a signature over
//! the wrong nonce, an unknown key), with users in accounts loaded from a config file.

use std::time::Duration;

use crate::common::{opts, start};
use base64::Engine;
use futures::StreamExt;
use natrium::options::NkeyUser;
use natrium::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn nkey_client(s: &Server, seed: &str) -> Result<async_nats::Client, String> {
    let c = async_nats::ConnectOptions::with_nkey(seed.to_string())
        .connection_timeout(Duration::from_secs(3))
        .connect(s.client_url())
        .await
        .map_err(|e| e.to_string())?;
    c.flush().await.map_err(|e| e.to_string())?;
    Ok(c)
}

/// A raw connection: returns the stream and the nonce from INFO.
async fn raw(s: &Server) -> (TcpStream, Option<String>) {
    let mut stream = TcpStream::connect(s.addr()).await.expect("tcp");
    let mut buf = Vec::new();
    while !buf.ends_with(b"\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(stream.read(&mut b).await.expect("read"), 1);
        buf.push(b[0]);
    }
    let line = String::from_utf8(buf).expect("utf8");
    let json: serde_json::Value =
        serde_json::from_str(line.trim_start_matches("INFO ").trim()).expect("INFO json");
    let nonce = json.get("nonce").and_then(|n| n.as_str()).map(String::from);
    (stream, nonce)
}

async fn reply_to(stream: &mut TcpStream, connect: &str) -> String {
    stream
        .write_all(format!("CONNECT {connect}\r\nPING\r\n").as_bytes())
        .await
        .expect("write");
    let mut got = Vec::new();
    let fut = async {
        loop {
            let s = String::from_utf8_lossy(&got);
            if s.contains("PONG") || s.contains("-ERR") {
                return;
            }
            let mut b = [0u8; 512];
            let n = stream.read(&mut b).await.expect("read");
            if n == 0 {
                return;
            }
            got.extend_from_slice(&b[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .expect("answer in time");
    String::from_utf8_lossy(&got).into_owned()
}

fn connect_json(kp: &nkeys::KeyPair, nonce: &str, standard_b64: bool) -> String {
    let sig = kp.sign(nonce.as_bytes()).expect("sign");
    let sig = if standard_b64 {
        base64::engine::general_purpose::STANDARD.encode(sig)
    } else {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig)
    };
    format!(
        "{{\"verbose\":false,\"nkey\":\"{}\",\"sig\":\"{sig}\"}}",
        kp.public_key()
    )
}

#[tokio::test]
async fn nkey_users_sign_the_nonce() {
    let alice = nkeys::KeyPair::new_user();
    let mut o = opts();
    o.auth.nkeys = vec![NkeyUser {
        nkey: alice.public_key(),
        ..NkeyUser::default()
    }];
    let s = start(o).await;

    let seed = alice.seed().expect("seed");
    let c = nkey_client(&s, &seed).await.expect("nkey client connects");
    let mut sub = c.subscribe("greet").await.expect("sub");
    c.flush().await.expect("flush");
    c.publish("greet", "hi".into()).await.expect("pub");
    let m = tokio::time::timeout(Duration::from_secs(3), sub.next())
        .await
        .expect("in time")
        .expect("msg");
    assert_eq!(&m.payload[..], b"hi");

    let stranger = nkeys::KeyPair::new_user();
    assert!(
        nkey_client(&s, &stranger.seed().expect("seed"))
            .await
            .is_err(),
        "an unknown key is refused"
    );
    assert!(
        async_nats::connect(s.client_url()).await.is_err(),
        "no credentials"
    );

    // By hand: each connection gets its own nonce; both base64 alphabets are accepted.
    let (mut a, n1) = raw(&s).await;
    let (mut b, n2) = raw(&s).await;
    let (n1, n2) = (n1.expect("nonce"), n2.expect("nonce"));
    assert_ne!(n1, n2);
    assert_eq!(
        reply_to(&mut a, &connect_json(&alice, &n1, false)).await,
        "PONG\r\n"
    );
    assert_eq!(
        reply_to(&mut b, &connect_json(&alice, &n2, true)).await,
        "PONG\r\n"
    );
    // A signature over another connection's nonce (a replay) is refused.
    let (mut c3, _) = raw(&s).await;
    assert_eq!(
        reply_to(&mut c3, &connect_json(&alice, &n1, false)).await,
        "-ERR 'Authorization Violation'\r\n"
    );
    // So is a garbled signature, and an nkey without one.
    let (mut c4, _) = raw(&s).await;
    let garbled = format!(
        "{{\"nkey\":\"{}\",\"sig\":\"!!not-base64!!\"}}",
        alice.public_key()
    );
    assert_eq!(
        reply_to(&mut c4, &garbled).await,
        "-ERR 'Authorization Violation'\r\n"
    );
    let (mut c5, _) = raw(&s).await;
    assert_eq!(
        reply_to(&mut c5, &format!("{{\"nkey\":\"{}\"}}", alice.public_key())).await,
        "-ERR 'Authorization Violation'\r\n"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn no_nonce_without_nkey_users() {
    let s = start(opts()).await;
    let (_stream, nonce) = raw(&s).await;
    assert!(nonce.is_none());
    s.shutdown().await;
}

#[tokio::test]
async fn nkey_users_in_accounts_from_a_config_file() {
    let a1 = nkeys::KeyPair::new_user();
    let a2 = nkeys::KeyPair::new_user();
    let b1 = nkeys::KeyPair::new_user();
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("nkeys.conf");
    std::fs::write(
        &conf,
        format!(
            r#"
listen: 127.0.0.1:-1
accounts {{
  A: {{
    users: [
      {{ nkey: {a1} }}
      {{ nkey: {a2}, permissions: {{ publish: "a.>", subscribe: "a.>" }} }}
    ]
  }}
  B: {{ users: [ {{ nkey: {b1} }} ] }}
}}
authorization {{ users: [ {{ user: plain, password: pw }} ] }}
"#,
            a1 = a1.public_key(),
            a2 = a2.public_key(),
            b1 = b1.public_key()
        ),
    )
    .expect("write");
    let (o, warnings) = natrium::Options::from_file(&conf).expect("loads");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(o.auth.nkeys.len(), 3);
    let s = start(o).await;
    let ca1 = nkey_client(&s, &a1.seed().expect("seed"))
        .await
        .expect("a1");
    let ca2 = nkey_client(&s, &a2.seed().expect("seed"))
        .await
        .expect("a2");
    let cb1 = nkey_client(&s, &b1.seed().expect("seed"))
        .await
        .expect("b1");
    let plain = async_nats::ConnectOptions::with_user_and_password("plain".into(), "pw".into())
        .connect(s.client_url())
        .await
        .expect("password users still work next to nkeys");
    let mut sub_a = ca1.subscribe("a.>").await.expect("sub");
    let mut sub_b = cb1.subscribe("a.>").await.expect("sub");
    let mut sub_g = plain.subscribe("a.>").await.expect("sub");
    for c in [&ca1, &cb1, &plain] {
        c.flush().await.expect("flush");
    }
    ca2.publish("a.x", "in A".into()).await.expect("pub");
    ca2.flush().await.expect("flush");
    let m = tokio::time::timeout(Duration::from_secs(3), sub_a.next())
        .await
        .expect("A receives")
        .expect("msg");
    assert_eq!(&m.payload[..], b"in A");
    for sub in [&mut sub_b, &mut sub_g] {
        assert!(
            tokio::time::timeout(Duration::from_millis(200), sub.next())
                .await
                .is_err(),
            "other accounts see nothing"
        );
    }

    // Bad nkeys in a config are refused.
    std::fs::write(&conf, "authorization { users: [ { nkey: UNOTAKEY } ] }\n").expect("write");
    let (o, _) = natrium::Options::from_file(&conf).expect("parses");
    assert!(o.validate().is_err());
    s.shutdown().await;
}
