//! The WebSocket upgrade (RFC 6455 4.2) as nats-server answers it: the request's method,
//! `Host`, `Upgrade`, `Connection`, key and version are checked in that order (405 or 400 with
//! nats-server's reason in the log), then the origin (403), then the extensions
//! (permessage-deflate when the listener allows compression and the client offers it, always
//! without context takeover) and `Nats-No-Masking`. The 101 answer carries the configured
//! extra headers. Cookies named by `jwt_cookie`, `user_cookie`, `pass_cookie` and
//! `token_cookie` become credentials for CONNECT to fall back on.

use std::collections::HashMap;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tungstenite::error::{Error as WsError, ProtocolError};
use tungstenite::handshake::derive_accept_key;
use tungstenite::handshake::machine::TryParse;
use tungstenite::handshake::server::Request;

use crate::auth::Credentials;

/// The largest upgrade request read (request line and headers, cookies included).
const MAX_REQUEST: usize = 64 * 1024;

/// Origins the listener admits, by lowercase host: (scheme, port) pairs.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    pub same_origin: bool,
    pub allowed: HashMap<String, Vec<(String, String)>>,
}

/// What the listener's options say about upgrades.
#[derive(Debug, Clone, Default)]
pub struct UpgradeRules {
    pub origins: Origins,
    pub compression: bool,
    /// Extra response headers, already formatted (`Name: value\r\n` each).
    pub headers: String,
    pub jwt_cookie: Option<String>,
    pub user_cookie: Option<String>,
    pub pass_cookie: Option<String>,
    pub token_cookie: Option<String>,
}

/// What an accepted upgrade settled.
#[derive(Debug, Default)]
pub struct Upgraded {
    pub compress: bool,
    pub no_masking: bool,
    pub browser: bool,
    /// Safari: compressed messages in one frame.
    pub no_compressed_fragments: bool,
    /// Credentials from cookies, if any of the configured cookies came.
    pub cookies: Option<Credentials>,
    /// The path ends in `/leafnode`: a leafnode remote over WebSocket, not a client.
    pub leaf: bool,
}

/// Why an upgrade was refused: the HTTP status sent and nats-server's reason (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub reason: String,
}

fn refused(status: u16, reason: impl Into<String>) -> Refused {
    Refused {
        status,
        reason: reason.into(),
    }
}

/// Reads the upgrade request from `stream` and answers it (101, or the error status, which is
/// sent before returning `Err`). `tls` is whether the listener runs TLS (for same-origin).
pub async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    rules: &UpgradeRules,
    tls: bool,
) -> Result<Upgraded, Refused> {
    let mut buf = Vec::with_capacity(1024);
    let (len, req) = loop {
        match <Request as TryParse>::try_parse(&buf) {
            Ok(Some(parsed)) => break parsed,
            Ok(None) => {}
            Err(WsError::Protocol(ProtocolError::WrongHttpMethod)) => {
                return Err(answer_error(stream, 405, "request method must be GET").await);
            }
            Err(e) => {
                return Err(answer_error(stream, 400, format!("invalid request: {e}")).await);
            }
        }
        if buf.len() >= MAX_REQUEST {
            return Err(answer_error(stream, 431, "request headers too large").await);
        }
        let mut chunk = [0u8; 4096];
        let room = (MAX_REQUEST - buf.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]).await {
            Ok(0) | Err(_) => {
                return Err(refused(0, "connection closed during the upgrade"));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    match check(&req, rules, tls) {
        Err(r) => Err(answer_error(stream, r.status, r.reason).await),
        Ok(_) if len < buf.len() => {
            Err(answer_error(stream, 400, "client sent data before handshake is complete").await)
        }
        Ok((up, accept)) => {
            let mut resp = String::with_capacity(256);
            resp.push_str("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
            resp.push_str(&accept);
            resp.push_str("\r\n");
            if up.compress {
                resp.push_str("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n");
            }
            if up.no_masking {
                resp.push_str("Nats-No-Masking: true\r\n");
            }
            resp.push_str(&rules.headers);
            resp.push_str("\r\n");
            stream
                .write_all(resp.as_bytes())
                .await
                .map_err(|e| refused(0, format!("writing the upgrade response: {e}")))?;
            Ok(up)
        }
    }
}

/// The checks of RFC 6455 4.2.1 in nats-server's order, then the origin; the accept key.
fn check(req: &Request, rules: &UpgradeRules, tls: bool) -> Result<(Upgraded, String), Refused> {
    let path = req.uri().path();
    let leaf = path.ends_with("/leafnode");
    if path.ends_with("/mqtt") {
        return Err(refused(404, "mqtt websocket endpoint not enabled"));
    }
    let h = req.headers();
    let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    if header("Host").is_empty() {
        return Err(refused(400, "'Host' missing in request"));
    }
    if !has_token(req, "Upgrade", "websocket") {
        return Err(refused(400, "invalid value for header 'Upgrade'"));
    }
    if !has_token(req, "Connection", "Upgrade") {
        return Err(refused(400, "invalid value for header 'Connection'"));
    }
    let key = header("Sec-WebSocket-Key");
    if key.is_empty() {
        return Err(refused(400, "key missing"));
    }
    if !valid_key(key) {
        return Err(refused(400, "invalid websocket key"));
    }
    if !has_token(req, "Sec-WebSocket-Version", "13") {
        return Err(refused(400, "invalid version"));
    }
    check_origin(req, &rules.origins, tls)
        .map_err(|e| refused(403, format!("origin not allowed: {e}")))?;
    let compress = rules.compression && offers_deflate(req);
    let ua = header("User-Agent");
    let browser = ua.starts_with("Mozilla/");
    let up = Upgraded {
        compress,
        no_masking: header("Nats-No-Masking") == "true",
        browser,
        no_compressed_fragments: browser
            && compress
            && ua.contains("Version/")
            && ua.contains("Safari/"),
        cookies: cookies(req, rules),
        leaf,
    };
    Ok((up, derive_accept_key(key.as_bytes())))
}

/// Whether any `name` header holds `token` in its comma-separated list (case-insensitive).
fn has_token(req: &Request, name: &str, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// A key is 16 bytes in standard base64.
fn valid_key(key: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(key.trim())
        .is_ok_and(|k| k.len() == 16)
}

fn offers_deflate(req: &Request) -> bool {
    req.headers()
        .get_all("Sec-WebSocket-Extensions")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|ext| {
            ext.split(';')
                .any(|p| p.trim().eq_ignore_ascii_case("permessage-deflate"))
        })
}

/// The configured cookies the request carries, as credentials.
fn cookies(req: &Request, rules: &UpgradeRules) -> Option<Credentials> {
    let mut creds = Credentials::default();
    let mut found = false;
    for v in req.headers().get_all("Cookie") {
        let Ok(v) = v.to_str() else { continue };
        for pair in v.split(';') {
            let Some((name, value)) = pair.trim().split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"').to_string();
            let is = |c: &Option<String>| c.as_deref() == Some(name.trim());
            let slot = if is(&rules.jwt_cookie) {
                &mut creds.jwt
            } else if is(&rules.user_cookie) {
                &mut creds.user
            } else if is(&rules.pass_cookie) {
                &mut creds.pass
            } else if is(&rules.token_cookie) {
                &mut creds.token
            } else {
                continue;
            };
            *slot = Some(value);
            found = true;
        }
    }
    found.then_some(creds)
}

/// nats-server's origin check: without `same_origin` and allowed origins every origin passes;
/// a request without `Origin` (nor `Sec-WebSocket-Origin`) passes (RFC 6455 1.6: non-browser
/// clients); otherwise the origin must be this listener's own scheme, host and port (with
/// `same_origin`) and be in the allowed list (when there is one).
fn check_origin(req: &Request, o: &Origins, tls: bool) -> Result<(), String> {
    if !o.same_origin && o.allowed.is_empty() {
        return Ok(());
    }
    let h = req.headers();
    let origin = h
        .get("Origin")
        .or_else(|| h.get("Sec-WebSocket-Origin"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if origin.is_empty() {
        return Ok(());
    }
    let (scheme, host, port) = parse_origin(origin)?;
    if o.same_origin {
        let req_host = h.get("Host").and_then(|v| v.to_str().ok()).unwrap_or("");
        let (rh, rp) = host_and_port(tls, req_host)?;
        let rs = if tls { "https" } else { "http" };
        if host != rh || port != rp || !scheme.eq_ignore_ascii_case(rs) {
            return Err("not same origin".into());
        }
    }
    if !o.allowed.is_empty() {
        let ok = o
            .allowed
            .get(&host)
            .is_some_and(|list| list.iter().any(|(s, p)| *s == scheme && *p == port));
        if !ok {
            return Err("not in the allowed list".into());
        }
    }
    Ok(())
}

/// An origin (or allowed origin) URL: `scheme://host[:port][/...]` with scheme http or https,
/// as (scheme, lowercase host, port with the scheme's default).
pub fn parse_origin(s: &str) -> Result<(String, String, String), String> {
    let (scheme, rest) = s
        .split_once("://")
        .ok_or_else(|| format!("{s:?} is not an absolute URL"))?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "{s:?}: allowed origins must be absolute URLs with http or https scheme"
        ));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return Err(format!("{s:?}: host is required"));
    }
    let (host, port) = host_and_port(scheme == "https", authority)?;
    Ok((scheme, host, port))
}

/// `host[:port]` (IPv6 in brackets) as (lowercase host, port), the port defaulting to 443 with
/// TLS and 80 without.
fn host_and_port(tls: bool, hostport: &str) -> Result<(String, String), String> {
    let default = if tls { "443" } else { "80" };
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("missing ']' in address {hostport:?}"))?;
        match after.strip_prefix(':') {
            Some(p) => (h, p),
            None if after.is_empty() => (h, default),
            None => return Err(format!("bad address {hostport:?}")),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err(format!("too many colons in address {hostport:?}"))
            }
            Some((h, p)) => (h, p),
            None => (hostport, default),
        }
    };
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad port in address {hostport:?}"));
    }
    Ok((host.to_ascii_lowercase(), port.to_string()))
}

/// Sends an HTTP error response as nats-server's (Go's `http.Error` with
/// `Sec-Websocket-Version: 13`) and returns the refusal.
async fn answer_error<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    reason: impl Into<String>,
) -> Refused {
    let text = status_text(status);
    let body = format!("{text}\n");
    let resp = format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: text/plain; charset=utf-8\r\nSec-Websocket-Version: 13\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
    refused(status, reason)
}

/// The reason phrase of the statuses this listener answers with.
pub fn status_text(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(lines: &[&str]) -> Request {
        let text = format!("GET / HTTP/1.1\r\n{}\r\n\r\n", lines.join("\r\n"));
        <Request as TryParse>::try_parse(text.as_bytes())
            .expect("parses")
            .expect("complete")
            .1
    }

    fn origins(same: bool, allowed: &[&str]) -> Origins {
        let mut o = Origins {
            same_origin: same,
            ..Origins::default()
        };
        for a in allowed {
            let (s, h, p) = parse_origin(a).expect("valid");
            o.allowed.entry(h).or_default().push((s, p));
        }
        o
    }

    #[test]
    fn origins_as_nats_server_checks_them() {
        let r = |origin: &str| request(&["Host: example.com:8080", &format!("Origin: {origin}")]);
        let same = origins(true, &[]);
        assert!(check_origin(&r("http://example.com:8080"), &same, false).is_ok());
        assert!(check_origin(&r("http://EXAMPLE.com:8080"), &same, false).is_ok());
        assert!(check_origin(&r("https://example.com:8080"), &same, false).is_err());
        assert!(check_origin(&r("http://other.com:8080"), &same, false).is_err());
        let list = origins(false, &["https://app.example.com", "http://127.0.0.1:3000"]);
        assert!(check_origin(&r("https://app.example.com"), &list, false).is_ok());
        assert!(check_origin(&r("https://app.example.com:443"), &list, false).is_ok());
        assert!(check_origin(&r("http://app.example.com"), &list, false).is_err());
        assert!(check_origin(&r("http://127.0.0.1:3000"), &list, false).is_ok());
        assert!(check_origin(&r("http://127.0.0.1:3001"), &list, false).is_err());
        // No Origin header: a non-browser client, admitted.
        assert!(check_origin(&request(&["Host: x"]), &list, false).is_ok());
        assert!(parse_origin("ftp://x").is_err());
        assert!(parse_origin("http://").is_err());
        assert!(parse_origin("example.com").is_err());
        assert_eq!(
            parse_origin("http://[::1]:8080/x").expect("ipv6"),
            ("http".into(), "::1".into(), "8080".into())
        );
    }

    #[test]
    fn cookies_become_credentials() {
        let rules = UpgradeRules {
            jwt_cookie: Some("jwt".into()),
            token_cookie: Some("tok".into()),
            ..UpgradeRules::default()
        };
        let c =
            cookies(&request(&["Cookie: a=1; jwt=eyJabc; tok=\"s3\""]), &rules).expect("cookies");
        assert_eq!(c.jwt.as_deref(), Some("eyJabc"));
        assert_eq!(c.token.as_deref(), Some("s3"));
        assert!(c.user.is_none());
        assert!(cookies(&request(&["Cookie: a=1"]), &rules).is_none());
    }
}
