//! Batched direct get as nats-server answers it, over a raw protocol socket: `batch` with
//! `Nats-Num-Pending`/`Nats-Last-Sequence` and a `204 EOB` status, `next_by_subj` with
//! wildcards, `multi_last` with `up_to_seq`, `no_hdr`, and the 408 refusals.

use async_nats::jetstream::{self, stream};
use bytes::Bytes;

use crate::common::Raw;

/// Sends a direct get request and reads `n` replies (each `HMSG ... \r\n<headers><payload>`).
async fn direct(r: &mut Raw, subject: &str, body: &str, n: usize) -> Vec<String> {
    let inbox = format!("_INBOX.d{}", fastrand::u32(..));
    r.send(&format!(
        "SUB {inbox} 9\r\nPUB {subject} {inbox} {}\r\n{body}\r\n",
        body.len()
    ))
    .await;
    let mut out = Vec::new();
    for _ in 0..n {
        let line = r.read_until("\r\n").await;
        let parts: Vec<&str> = line.trim_end().split(' ').collect();
        let total: usize = parts.last().expect("size").parse().expect("number");
        let mut rest = String::new();
        while rest.len() < total + 2 {
            let chunk = r.read_until("\r\n").await;
            rest.push_str(&chunk);
        }
        out.push(format!("{line}{rest}"));
    }
    r.send("UNSUB 9\r\n").await;
    out
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

#[tokio::test]
async fn batched_and_multi_last_direct_gets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = crate::common::start(crate::common::js_opts(dir.path())).await;
    let c = crate::common::client(&s).await;
    let js = jetstream::new(c.clone());
    js.create_stream(stream::Config {
        name: "D".into(),
        subjects: vec!["d.>".into()],
        allow_direct: true,
        ..Default::default()
    })
    .await
    .expect("create");
    for (subj, body) in [
        ("d.a", "a1"),
        ("d.b", "b1"),
        ("d.a", "a2"),
        ("d.c", "c1"),
        ("d.b", "b2"),
    ] {
        js.publish(subj, Bytes::from(body))
            .await
            .expect("pub")
            .await
            .expect("ack");
    }
    let mut r = Raw::connect(&s).await;
    r.send("CONNECT {\"headers\":true,\"verbose\":false,\"pedantic\":false}\r\n")
        .await;

    // A batch of 2 from sequence 2: two messages then EOB.
    let got = direct(&mut r, "$JS.API.DIRECT.GET.D", r#"{"seq":2,"batch":2}"#, 3).await;
    assert_eq!(header(&got[0], "Nats-Sequence"), Some("2"));
    assert_eq!(header(&got[0], "Nats-Num-Pending"), Some("3"));
    assert_eq!(header(&got[0], "Nats-Last-Sequence"), Some("0"));
    assert!(got[0].ends_with("b1\r\n"), "{:?}", got[0]);
    assert_eq!(header(&got[1], "Nats-Sequence"), Some("3"));
    assert_eq!(header(&got[1], "Nats-Num-Pending"), Some("2"));
    assert_eq!(header(&got[1], "Nats-Last-Sequence"), Some("2"));
    assert!(got[2].contains("NATS/1.0 204 EOB"), "{:?}", got[2]);
    assert_eq!(header(&got[2], "Nats-Num-Pending"), Some("2"));
    assert_eq!(header(&got[2], "Nats-Last-Sequence"), Some("3"));

    // next_by_subj with a wildcard, batched past the end: what there is, then EOB.
    let got = direct(
        &mut r,
        "$JS.API.DIRECT.GET.D",
        r#"{"next_by_subj":"d.b","batch":5}"#,
        3,
    )
    .await;
    assert_eq!(header(&got[0], "Nats-Subject"), Some("d.b"));
    assert_eq!(header(&got[1], "Nats-Sequence"), Some("5"));
    assert!(got[2].contains("204 EOB"));

    // The last message of each subject, up to sequence 4.
    let got = direct(
        &mut r,
        "$JS.API.DIRECT.GET.D",
        r#"{"multi_last":["d.*"],"up_to_seq":4}"#,
        4,
    )
    .await;
    let seqs: Vec<&str> = got[..3]
        .iter()
        .map(|m| header(m, "Nats-Sequence").expect("seq"))
        .collect();
    assert_eq!(seqs, vec!["2", "3", "4"]);
    assert!(got[3].contains("204 EOB"));
    assert_eq!(header(&got[3], "Nats-UpTo-Sequence"), Some("4"));

    // No headers at all with no_hdr.
    let got = direct(
        &mut r,
        "$JS.API.DIRECT.GET.D",
        r#"{"seq":1,"no_hdr":true}"#,
        1,
    )
    .await;
    assert!(got[0].starts_with("MSG "), "{:?}", got[0]);

    // nats-server's refusals.
    let got = direct(&mut r, "$JS.API.DIRECT.GET.D", "{}", 1).await;
    assert!(got[0].contains("408 Empty Request"), "{:?}", got[0]);
    let got = direct(
        &mut r,
        "$JS.API.DIRECT.GET.D",
        r#"{"last_by_subj":"d.a","batch":2}"#,
        1,
    )
    .await;
    assert!(got[0].contains("408 Bad Request"), "{:?}", got[0]);
    let got = direct(&mut r, "$JS.API.DIRECT.GET.D", "{nope", 1).await;
    assert!(got[0].contains("408 Malformed Request"), "{:?}", got[0]);
    let got = direct(
        &mut r,
        "$JS.API.DIRECT.GET.D",
        r#"{"multi_last":["x.*"]}"#,
        1,
    )
    .await;
    assert!(got[0].contains("404 No Results"), "{:?}", got[0]);
    // A stream without direct gets (or none at all): no responders, as nats-server.
    js.create_stream(stream::Config {
        name: "ND".into(),
        subjects: vec!["nd.>".into()],
        ..Default::default()
    })
    .await
    .expect("create");
    for name in ["ND", "NONE"] {
        let got = direct(
            &mut r,
            &format!("$JS.API.DIRECT.GET.{name}"),
            r#"{"seq":1}"#,
            1,
        )
        .await;
        assert!(got[0].contains("NATS/1.0 503"), "{:?}", got[0]);
    }
    s.shutdown().await;
}
