//! What a consumer's state machine asks of its task (`Command`, `Save`) and the wire forms it
//! reads and writes: status headers, ack subjects, ack verbs and pull request bodies.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

/// A message for a route: a push consumer's deliver subject or a pull request's inbox.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outgoing {
    /// The subject whose subscribers receive it.
    pub route: Arc<str>,
    /// The subject the message presents (the stored message's own, for deliveries).
    pub subject: Bytes,
    pub reply: Option<String>,
    pub headers: Option<Bytes>,
    pub payload: Bytes,
}

/// The state document to write before anything of the same tick leaves; with `sync` it is
/// fsynced first (deliveries that need an ack, or sync acks waiting for their answer).
#[derive(Debug, PartialEq)]
pub(crate) struct Save {
    pub body: Vec<u8>,
    pub sync: bool,
}

/// One thing for the consumer's task to do, in order.
#[derive(Debug, PartialEq)]
pub(crate) enum Command {
    /// Stream message `seq`, to `msg.route` with its ack subject as the reply.
    Deliver { seq: u64, msg: Outgoing },
    /// A status message (`100`, `404`, `408`, `409`, flow control) to a route.
    Status(Outgoing),
    /// `$JS.EVENT.ADVISORY.CONSUMER.<kind>.<stream>.<consumer>`; the task adds id, timestamp,
    /// stream and consumer to `body`.
    Advisory { kind: &'static str, body: Value },
    /// A copy of message `seq` to the dead-letter subject `template` names.
    DeadLetter {
        seq: u64,
        deliveries: u64,
        reason: String,
        template: String,
    },
    /// The consumer is done with message `seq`: interest and work-queue retention may drop it.
    Release(u64),
    /// The empty answer to a sync ack, once the save before it is done.
    AckReply(String),
    /// Run a tick (again, once what came before has left).
    Tick,
}

/// A status header block: `NATS/1.0 <code>` and `extra` headers.
pub(crate) fn status(code: &str, extra: &[(&str, String)]) -> Bytes {
    let mut h = format!("NATS/1.0 {code}\r\n");
    for (k, v) in extra {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    Bytes::from(h)
}

/// A status message to `route`, presented on `route` itself.
pub(crate) fn status_msg(route: &str, hdr: Bytes) -> Outgoing {
    Outgoing {
        route: Arc::from(route),
        subject: Bytes::copy_from_slice(route.as_bytes()),
        reply: None,
        headers: Some(hdr),
        payload: Bytes::new(),
    }
}

/// `<prefix><n1>.<n2>...`: an ack subject, without `format!`: one allocation sized up front,
/// the digits written back to front two at a time (perf, push ack none: the per-digit version
/// was 15% of the server's time).
pub(crate) fn ack_subject(prefix: &str, numbers: [u64; 5]) -> String {
    // Five numbers of at most 20 digits, four dots.
    let mut buf = [0u8; 5 * 20 + 4];
    let mut at = buf.len();
    for (i, n) in numbers.into_iter().rev().enumerate() {
        if i > 0 {
            at -= 1;
            buf[at] = b'.';
        }
        at = write_digits(&mut buf[..at], n);
    }
    let mut s = String::with_capacity(prefix.len() + buf.len() - at);
    s.push_str(prefix);
    // Only ASCII digits and dots were written.
    s.push_str(std::str::from_utf8(&buf[at..]).unwrap_or_default());
    s
}

/// Two-digit pairs "00" to "99".
const DIGIT_PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Writes `n` in decimal at the end of `buf`; returns where it starts.
fn write_digits(buf: &mut [u8], mut n: u64) -> usize {
    let mut at = buf.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        at -= 2;
        buf[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        at -= 2;
        buf[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    } else {
        at -= 1;
        buf[at] = b'0' + n as u8;
    }
    at
}

/// What an ack says about a message.
#[derive(Debug, PartialEq)]
pub(crate) enum AckKind<'a> {
    /// `+ACK` or an empty body.
    Ack,
    /// `+NXT [request]`: ack, then a pull request with the argument as its body.
    Next(&'a [u8]),
    /// `-NAK [{"delay": ns}]`.
    Nak(Option<Duration>),
    /// `+WPI`: still working, restart the ack wait.
    Progress,
    /// `+TERM [reason]`.
    Term(String),
    /// Anything else: ignored.
    Other,
}

/// The stream sequence an ack subject
/// (`$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>`) names, and what the
/// body says.
pub(crate) fn parse_ack<'a>(subject: &[u8], body: &'a [u8]) -> Option<(u64, AckKind<'a>)> {
    let sseq = subject
        .split(|c| *c == b'.')
        .nth(5)
        .and_then(|t| std::str::from_utf8(t).ok())
        .and_then(|t| t.parse::<u64>().ok())?;
    let (verb, arg) = match body.iter().position(|c| *c == b' ') {
        Some(i) => (&body[..i], &body[i + 1..]),
        None => (body, &b""[..]),
    };
    let kind = match verb {
        b"" | b"+ACK" => AckKind::Ack,
        b"+NXT" => AckKind::Next(arg),
        b"-NAK" => AckKind::Nak(
            serde_json::from_slice::<Value>(arg)
                .ok()
                .and_then(|v| v["delay"].as_u64())
                .map(Duration::from_nanos),
        ),
        b"+WPI" => AckKind::Progress,
        b"+TERM" => AckKind::Term(String::from_utf8_lossy(arg).trim().to_string()),
        _ => AckKind::Other,
    };
    Some((sseq, kind))
}

/// Pull request options (`$JS.API.CONSUMER.MSG.NEXT` body or `+NXT` argument), with the
/// priority group fields nats-server reads inline.
/// Fields a client sends as `null` (async-nats does) read as their default, as Go reads them.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub(crate) struct NextRequest {
    #[serde(deserialize_with = "nullable")]
    pub batch: i64,
    /// Nanoseconds; negative is already expired.
    #[serde(deserialize_with = "nullable")]
    pub expires: i64,
    #[serde(deserialize_with = "nullable")]
    pub no_wait: bool,
    #[serde(deserialize_with = "nullable")]
    pub max_bytes: i64,
    #[serde(deserialize_with = "nullable")]
    pub idle_heartbeat: i64,
    #[serde(deserialize_with = "nullable")]
    pub group: String,
    #[serde(deserialize_with = "nullable")]
    pub min_pending: i64,
    #[serde(deserialize_with = "nullable")]
    pub min_ack_pending: i64,
    #[serde(deserialize_with = "nullable")]
    pub id: String,
    #[serde(deserialize_with = "nullable")]
    pub priority: i64,
}

fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl NextRequest {
    fn of_batch(n: i64) -> NextRequest {
        NextRequest {
            batch: n,
            ..NextRequest::default()
        }
    }
}

/// A pull request body: empty (one message), a bare number (a batch) or a JSON object. A JSON
/// body that does not parse, or asks heartbeats more often than half its expiry, is refused
/// with the reason nats-server gives (after "Bad Request - ").
pub(crate) fn parse_next(payload: &[u8]) -> Result<NextRequest, String> {
    let t = payload.trim_ascii();
    if t.is_empty() {
        return Ok(NextRequest::of_batch(1));
    }
    if t[0] == b'{' {
        let r: NextRequest = serde_json::from_slice(t).map_err(|e| e.to_string())?;
        if r.idle_heartbeat > 0 && r.idle_heartbeat.saturating_mul(2) > r.expires {
            return Err("heartbeat value too large".into());
        }
        return Ok(r);
    }
    let n = std::str::from_utf8(t)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or(1);
    Ok(NextRequest::of_batch(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_subjects_are_written_like_format() {
        for nums in [
            [1, 1, 1, 0, 0],
            [3, 42, 17, 1_700_000_000_123_456_789, 9],
            [u64::MAX, 10, 100, 1000, 99_999],
            [0, 9, 99, 101, u64::MAX],
            [5, 50, 500, 5_000, 50_000],
        ] {
            let want = format!(
                "$JS.ACK.S.C.{}.{}.{}.{}.{}",
                nums[0], nums[1], nums[2], nums[3], nums[4]
            );
            assert_eq!(ack_subject("$JS.ACK.S.C.", nums), want);
        }
    }

    #[test]
    fn ack_verbs() {
        let subj = b"$JS.ACK.S.C.1.42.7.1700000000.3";
        assert_eq!(parse_ack(subj, b""), Some((42, AckKind::Ack)));
        assert_eq!(parse_ack(subj, b"+ACK"), Some((42, AckKind::Ack)));
        assert_eq!(
            parse_ack(subj, b"+NXT {\"batch\":2}"),
            Some((42, AckKind::Next(b"{\"batch\":2}")))
        );
        assert_eq!(parse_ack(subj, b"-NAK"), Some((42, AckKind::Nak(None))));
        assert_eq!(
            parse_ack(subj, b"-NAK {\"delay\":5000}"),
            Some((42, AckKind::Nak(Some(Duration::from_nanos(5000)))))
        );
        assert_eq!(parse_ack(subj, b"+WPI"), Some((42, AckKind::Progress)));
        assert_eq!(
            parse_ack(subj, b"+TERM  bad input "),
            Some((42, AckKind::Term("bad input".into())))
        );
        assert_eq!(parse_ack(subj, b"+WHAT"), Some((42, AckKind::Other)));
        assert_eq!(parse_ack(b"$JS.ACK.S.C.1", b"+ACK"), None);
    }

    #[test]
    fn pull_request_bodies() {
        let ok = |b: &[u8]| parse_next(b).expect("valid request");
        assert_eq!(ok(b"").batch, 1);
        assert_eq!(ok(b" 7 ").batch, 7);
        assert_eq!(ok(b"junk").batch, 1);
        let r = ok(br#"{"batch":5,"expires":1000,"no_wait":true,"max_bytes":64}"#);
        assert_eq!(
            (r.batch, r.expires, r.no_wait, r.max_bytes),
            (5, 1000, true, 64)
        );
        assert_eq!(ok(br#"{"expires":-5}"#).expires, -5);
        assert_eq!(
            ok(br#"{"batch":3,"min_pending":null,"group":null}"#).batch,
            3
        );
        assert!(parse_next(b"{not json").is_err());
        assert_eq!(
            parse_next(br#"{"expires":1000,"idle_heartbeat":600}"#),
            Err("heartbeat value too large".into())
        );
        let g = ok(br#"{"batch":1,"group":"jobs","id":"PIN","priority":3}"#);
        assert!(g.group == "jobs" && g.id == "PIN" && g.priority == 3);
    }
}
