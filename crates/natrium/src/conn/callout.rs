//! Carries an auth callout (see `auth::callout`): the request published on `$SYS.REQ.USER.AUTH`
//! in the callout account with a one-time reply inbox, sealed to the service's xkey when one is
//! configured, and the answer turned into the client's identity. Runs inside the reader's auth
//! timeout (the caller bounds it); nothing of the request (which carries the client's password
//! or token) is logged.

use std::sync::Arc;

use base64::Engine;
use natrium_protocol::ConnectInfo;
use serde_json::json;

use super::client::Client;
use super::context::ConnContext;
use crate::auth::callout::{
    self, CalloutOptions, ClientRef, ServerRef, CALLOUT_SUBJECT, XKEY_HEADER,
};
use crate::auth::{AuthError, ConnAuth, Credentials, Identity, Verdict};
use crate::router::InternalClient;
use crate::util::PROTOCOL_VERSION;

/// Asks the callout service about one client and returns its verdict.
pub async fn ask(
    ctx: &Arc<ConnContext>,
    o: &CalloutOptions,
    info: &ConnectInfo,
    creds: &Credentials,
    conn: &ConnAuth,
    client: &Client,
) -> Verdict {
    let fail = |why: String| {
        tracing::warn!(
            "{} - cid:{} - auth callout: {why}",
            client.out.addr,
            client.out.cid
        );
        Verdict::Reject(AuthError::Callout(why))
    };
    let Some(server_key) = ctx.server_key() else {
        return fail("the server has no signing key".into());
    };
    let service = match InternalClient::new(&ctx.accounts, &o.account) {
        Ok(c) => c,
        Err(e) => return fail(format!("no valid account {:?}: {e}", o.account)),
    };
    let user = nkeys::KeyPair::new_user();
    let user_nkey = user.public_key();
    let inbox = format!("_INBOX.{}", crate::auth::new_nonce());
    let mut replies = match service.subscribe(&inbox, None, 4) {
        Ok(s) => s,
        Err(e) => return fail(format!("can not subscribe to the reply inbox: {e}")),
    };
    let xkey = o.xkey.as_ref().map(|_| ctx.xkey());
    let tls = client.meta.lock().tls.clone().map(|t| {
        let pem = |der: &Vec<u8>| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            let lines: Vec<&str> = b64
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap_or_default())
                .collect();
            format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                lines.join("\n")
            )
        };
        let mut v = json!({"version": t.version, "cipher": t.cipher_suite});
        if !t.peer_der.is_empty() {
            v["certs"] = json!(t.peer_der.iter().map(pem).collect::<Vec<_>>());
        }
        v
    });
    let mut connect = json!({"protocol": info.protocol});
    for (k, v) in [
        ("jwt", &creds.jwt),
        ("nkey", &creds.nkey),
        ("sig", &creds.sig),
        ("auth_token", &creds.token),
        ("user", &creds.user),
        ("pass", &creds.pass),
        ("name", &info.name),
        ("lang", &info.lang),
        ("version", &info.version),
    ] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            connect[k] = json!(v);
        }
    }
    let who = ClientRef {
        host: client.out.addr.ip().to_string(),
        cid: client.out.cid,
        user: creds.user.as_deref().or(creds.nkey.as_deref()),
        name: info.name.as_deref(),
        nonce: creds.sig.as_ref().and(conn.nonce.as_deref()),
        connect,
        tls,
    };
    let cluster = ctx.cluster_name();
    let server = ServerRef {
        key: &server_key,
        name: &ctx.identity.name,
        host: &ctx.identity.host,
        version: PROTOCOL_VERSION,
        cluster: cluster.as_deref(),
        xkey: xkey.map(|x| x.public_key()),
    };
    let timeout = ctx.auth.current().timeout();
    let request = callout::request(&server, o, &user_nkey, &who, timeout);
    let (headers, payload) = match (&o.xkey, xkey) {
        (Some(theirs), Some(ours)) => {
            let sealed = nkeys::XKey::from_public_key(theirs)
                .map_err(|e| e.to_string())
                .and_then(|to| {
                    ours.seal(request.as_bytes(), &to)
                        .map_err(|e| e.to_string())
                });
            match sealed {
                Ok(s) => (
                    Some(format!(
                        "NATS/1.0\r\n{XKEY_HEADER}: {}\r\n\r\n",
                        ours.public_key()
                    )),
                    s,
                ),
                Err(e) => return fail(format!("can not encrypt the request: {e}")),
            }
        }
        _ => (None, request.into_bytes()),
    };
    match service.publish(
        CALLOUT_SUBJECT,
        Some(&inbox),
        headers.as_deref().map(str::as_bytes),
        &payload,
    ) {
        Ok(true) => {}
        Ok(false) => return fail("no auth callout service is listening".into()),
        Err(e) => return fail(format!("can not send the request: {e}")),
    }
    let Some(answer) = replies.next().await else {
        return fail("the reply inbox closed".into());
    };
    let grant = match callout::response(
        o,
        &answer.payload,
        xkey,
        &user_nkey,
        &server_key.public_key(),
    ) {
        Ok(g) => g,
        Err(e) => return fail(e),
    };
    if ctx.accounts.get(&grant.account).is_none() {
        return fail(format!(
            "no valid account {:?} for auth callout response",
            grant.account
        ));
    }
    let permissions = if grant.account == o.account {
        Some(callout::deny_callout_subject(grant.permissions))
    } else {
        grant.permissions
    };
    Verdict::Accept(Identity {
        user: grant
            .name
            .or_else(|| creds.user.clone())
            .or(Some(user_nkey)),
        account: Some(grant.account),
        permissions,
        secret: 0,
        max_subs: grant.max_subs,
        max_payload: grant.max_payload,
        expires: grant.expires,
        via_callout: true,
    })
}
