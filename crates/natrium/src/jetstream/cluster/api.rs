//! `$JS.API` as a cluster serves it, for replicated streams: creates, updates and deletes go
//! to the meta leader; a stream's info, messages, purges and consumers to the stream's leader.
//! A request is forwarded to the server that must answer it as a system-account message on
//! `$NRX.API.<node>` (account, subject and reply in headers, at most two hops); that server
//! answers the client's reply subject itself. R1 streams stay with the local API.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use natrium_protocol::headers::HeaderView;
use natrium_raft::{node_id, NodeId, RaftError};
use serde::Deserialize;
use serde_json::{json, Value};

use super::meta::{self, MetaOp, StreamAssignment};
use super::{peer_id, JsCluster};
use crate::jetstream::config::StreamConfig;
use crate::jetstream::errors::ApiError;
use crate::router::{InternalClient, InternalMsg, InternalSubscription};
use crate::util::time::{now_nanos, rfc3339};

/// Requests forwarded more often than this are refused (no loops).
const MAX_HOPS: u8 = 2;

/// How long a create waits for the new stream's leader before answering.
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// How long a forwarded request waits for its client's reply interest to reach this server.
const REPLY_INTEREST_WAIT: Duration = Duration::from_secs(1);

/// How long a meta stepdown waits for another meta leader.
const META_STEPDOWN_WAIT: Duration = Duration::from_secs(8);

/// How long the meta leader waits to have applied what it committed before it says a stream
/// does not exist.
const META_APPLIED_WAIT: Duration = Duration::from_secs(2);

/// How long a request for a stream's leader waits for one before it is asked again.
const NO_LEADER_WAIT: Duration = Duration::from_secs(2);

pub(crate) fn forward_subject(node: NodeId) -> String {
    format!("$NRX.API.{node:016x}")
}

/// `result` as an `io.nats.jetstream.api.v1.<kind>` document.
fn response(kind: &str, result: Result<Value, ApiError>) -> Value {
    match result {
        Ok(mut v) => {
            v["type"] = json!(format!("io.nats.jetstream.api.v1.{kind}"));
            v
        }
        Err(e) => json!({"type": format!("io.nats.jetstream.api.v1.{kind}"), "error": e}),
    }
}

/// Replies with `result` as an `io.nats.jetstream.api.v1.<kind>` document.
fn respond(
    client: &InternalClient,
    reply: Option<&str>,
    kind: &str,
    result: Result<Value, ApiError>,
) {
    if let Some(r) = reply {
        let body = response(kind, result);
        let _ = client.publish(r, None, None, body.to_string().as_bytes());
    }
}

/// Serves requests other servers forwarded here.
pub(super) async fn serve_forwarded(cl: Weak<JsCluster>, mut sub: InternalSubscription) {
    while let Some(m) = sub.next().await {
        let Some(cl) = cl.upgrade() else { return };
        let Some(h) = m.headers.as_deref().and_then(HeaderView::parse) else {
            continue;
        };
        let text = |k: &[u8]| h.get(k).map(|v| String::from_utf8_lossy(v).into_owned());
        match text(b"Nrx-Meta").as_deref() {
            Some("stepdown") => {
                let reply = text(b"Nrx-Reply");
                tokio::spawn(async move { cl.meta_step_down(reply.as_deref()).await });
                continue;
            }
            Some("op") => {
                let (reply, body) = (m.reply.clone(), m.payload.clone());
                tokio::spawn(async move {
                    let answer = cl.meta_op_forwarded(&body).await;
                    if let Some(r) = reply {
                        let _ = cl.settings.system.publish(&r, None, None, &answer);
                    }
                });
                continue;
            }
            Some("server-remove") => {
                let reply = text(b"Nrx-Reply");
                let body = m.payload.clone();
                tokio::spawn(async move { cl.server_remove(reply.as_deref(), &body).await });
                continue;
            }
            _ => {}
        }
        let Some(account) = text(b"Nrx-Acc") else {
            continue;
        };
        if let Some(reply) = text(b"Nrx-Respond") {
            // An answer to send from here (see `JsCluster::respond_via`).
            if let Some(c) = cl.jetstream().and_then(|js| js.catalog(&account)) {
                let client = c.client().clone();
                match text(b"Nrx-Stream") {
                    Some(stream) => {
                        let payload = m.payload.clone();
                        tokio::spawn(async move {
                            cl.wait_listening(&account, &stream, &payload).await;
                            let _ = client.publish(&reply, None, None, &payload);
                        });
                    }
                    None => {
                        let _ = client.publish(&reply, None, None, &m.payload);
                    }
                }
            }
            continue;
        }
        let Some(subject) = text(b"Nrx-Subject") else {
            continue;
        };
        let hops = text(b"Nrx-Hops")
            .and_then(|h| h.parse::<u8>().ok())
            .unwrap_or(MAX_HOPS);
        let Some(api) = cl.jetstream().and_then(|js| js.api(&account)) else {
            continue;
        };
        let m = InternalMsg {
            subject,
            reply: text(b"Nrx-Reply"),
            headers: None,
            payload: m.payload.clone(),
        };
        let client = api.catalog().client().clone();
        if m.reply.as_deref().is_none_or(|r| client.has_interest(r)) {
            api.handle_hop(m, hops);
            continue;
        }
        // The client's reply subscription (made just before its request) may reach this server
        // after the forwarded request (another route): answer once it is here, or after a wait.
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + REPLY_INTEREST_WAIT;
            while m.reply.as_deref().is_some_and(|r| !client.has_interest(r))
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            api.handle_hop(m, hops);
        });
    }
}

impl JsCluster {
    /// Sends a request to server `to` to answer.
    fn forward(&self, to: &str, account: &str, m: &InternalMsg, hops: u8) {
        let mut h = format!(
            "NATS/1.0\r\nNrx-Acc: {account}\r\nNrx-Subject: {}\r\nNrx-Hops: {}\r\n",
            m.subject,
            hops + 1
        );
        if let Some(r) = &m.reply {
            h.push_str(&format!("Nrx-Reply: {r}\r\n"));
        }
        h.push_str("\r\n");
        self.send_to(to, &h, &m.payload);
    }

    /// Publishes `headers` and `body` to server `to`'s forwarding subject.
    fn send_to(&self, to: &str, headers: &str, body: &[u8]) {
        let _ = self.settings.system.publish(
            &forward_subject(node_id(to)),
            None,
            Some(headers.as_bytes()),
            body,
        );
    }

    /// Answers `reply` from server `via`: a stream's leader answers its creation itself, so
    /// the answer reaches the client's server on the same route as the leader's interest in
    /// the stream's subjects, and the client's first publish finds the stream. With `stream`
    /// (an update), the leader answers once its ingest listens on the subjects the answer's
    /// config names.
    fn respond_via(
        self: &Arc<Self>,
        via: &str,
        client: &InternalClient,
        reply: Option<&str>,
        kind: &str,
        result: Result<Value, ApiError>,
        stream: Option<&str>,
    ) {
        let Some(reply) = reply else { return };
        if via == self.name {
            let Some(stream) = stream else {
                return respond(client, Some(reply), kind, result);
            };
            let (cl, client, reply) = (self.clone(), client.clone(), reply.to_string());
            let (stream, body) = (stream.to_string(), response(kind, result).to_string());
            tokio::spawn(async move {
                cl.wait_listening(client.account(), &stream, body.as_bytes())
                    .await;
                let _ = client.publish(&reply, None, None, body.as_bytes());
            });
            return;
        }
        let mut h = format!(
            "NATS/1.0\r\nNrx-Acc: {}\r\nNrx-Respond: {reply}\r\n",
            client.account()
        );
        if let Some(s) = stream {
            h.push_str(&format!("Nrx-Stream: {s}\r\n"));
        }
        h.push_str("\r\n");
        let body = response(kind, result).to_string();
        self.send_to(via, &h, body.as_bytes());
    }

    /// Waits (up to `LEADER_WAIT`) until this server leads `stream` with its ingest on the
    /// subjects of the config in `answer` (an update's answer); at once when there is none.
    async fn wait_listening(&self, account: &str, stream: &str, answer: &[u8]) {
        let subjects: Option<Vec<String>> = serde_json::from_slice::<Value>(answer)
            .ok()
            .and_then(|v| serde_json::from_value(v["config"]["subjects"].clone()).ok());
        let Some(subjects) = subjects else { return };
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        while tokio::time::Instant::now() < deadline {
            // Its group's leader (its ingest restarting on a change of subjects leaves the
            // serving role for a moment), not yet listening on the new subjects.
            match self.replica(account, stream) {
                Some(r)
                    if r.group.status().role == natrium_raft::Role::Leader
                        && !r.listens_on(&subjects) =>
                {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                _ => return,
            }
        }
    }

    /// Hands a meta request (`stepdown`, `server-remove`) to the meta leader `to`.
    fn forward_meta(&self, to: &str, kind: &str, reply: Option<&str>, body: &[u8]) {
        let mut h = format!("NATS/1.0\r\nNrx-Meta: {kind}\r\n");
        if let Some(r) = reply {
            h.push_str(&format!("Nrx-Reply: {r}\r\n"));
        }
        h.push_str("\r\n");
        self.send_to(to, &h, body);
    }

    /// `$JS.API.SERVER.REMOVE` (system account, `{"peer": name}` or `{"peer_id": id}`): taken
    /// by the meta leader, which marks the server removed (never placed on nor added again),
    /// moves each of its stream replicas to another server (or drops them when no server is
    /// left to take them) and takes it out of the meta group. A meta leader asked to remove
    /// itself first hands its leadership over.
    pub(super) async fn server_remove(self: Arc<Self>, reply: Option<&str>, body: &[u8]) {
        const KIND: &str = "meta_server_remove_response";
        let sys = self.settings.system.clone();
        if !self.is_meta_leader() {
            match self.meta_leader() {
                Some(l) if l != self.name => self.forward_meta(&l, "server-remove", reply, body),
                _ => respond(
                    &sys,
                    reply,
                    KIND,
                    Err(ApiError::cluster_unavailable("no meta leader")),
                ),
            }
            return;
        }
        let target = match self.server_to_remove(body) {
            Ok(t) => t,
            Err(e) => return respond(&sys, reply, KIND, Err(e)),
        };
        if target == self.name {
            let r = match self.meta.step_down(META_STEPDOWN_WAIT).await {
                Ok((_, l)) => {
                    self.forward_meta(&l, "server-remove", reply, body);
                    return;
                }
                Err(e) => Err(ApiError::cluster_unavailable(format!(
                    "server remove: no other meta leader elected: {e}"
                ))),
            };
            return respond(&sys, reply, KIND, r);
        }
        let r = self.remove_server(&target).await;
        respond(&sys, reply, KIND, r);
    }

    /// The meta member a `SERVER.REMOVE` request names, as nats-server finds it.
    fn server_to_remove(&self, body: &[u8]) -> Result<String, ApiError> {
        #[derive(Default, Deserialize)]
        #[serde(default)]
        struct Req {
            peer: String,
            peer_id: String,
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request());
        }
        let req: Req = serde_json::from_slice(body).map_err(ApiError::invalid_json)?;
        let st = self.meta.status();
        let members =
            std::iter::once(self.name.clone()).chain(st.peers.into_iter().map(|p| p.name));
        let mut found = None;
        for name in members {
            let hit = if !req.peer_id.is_empty() {
                peer_id(&name) == req.peer_id || format!("{:016x}", node_id(&name)) == req.peer_id
            } else {
                !req.peer.is_empty() && name == req.peer
            };
            if hit {
                found = Some(name);
                break;
            }
        }
        found.ok_or_else(ApiError::server_not_member)
    }

    async fn remove_server(&self, target: &str) -> Result<Value, ApiError> {
        self.propose_meta(&MetaOp::RemoveServer {
            name: target.to_string(),
        })
        .await?;
        let moving: Vec<StreamAssignment> = self
            .meta_state
            .read()
            .streams
            .values()
            .filter(|sa| sa.peers.iter().any(|p| p == target))
            .cloned()
            .collect();
        for sa in moving {
            let mut peers: Vec<String> =
                sa.peers.iter().filter(|p| *p != target).cloned().collect();
            match self.place(1, sa.config.placement.as_ref(), &sa.peers) {
                Ok(mut extra) => peers.append(&mut extra),
                Err(_) => tracing::warn!(
                    "JetStream cluster: stream '{} > {}' loses its replica on {target} with no server to take it",
                    sa.account,
                    sa.config.name
                ),
            }
            if peers.is_empty() {
                tracing::error!(
                    "JetStream cluster: stream '{} > {}' has no other replica than {target}: left there",
                    sa.account,
                    sa.config.name
                );
                continue;
            }
            self.propose_meta(&MetaOp::SetPeers {
                account: sa.account.clone(),
                name: sa.config.name.clone(),
                peers,
            })
            .await?;
        }
        let rm = self.meta.remove_member(node_id(target));
        match tokio::time::timeout(META_STEPDOWN_WAIT, rm).await {
            Ok(Ok(())) => {
                tracing::info!("JetStream cluster: {target} removed from the meta group");
                Ok(json!({"success": true}))
            }
            Ok(Err(e)) => Err(ApiError::cluster_unavailable(e)),
            Err(_) => Err(ApiError::cluster_unavailable("server remove timed out")),
        }
    }

    /// `STREAM.PEER.REMOVE` on the meta leader: the peer (a server name or peer id) leaves
    /// the stream's replicas and another server takes its place; nats-server's errors.
    async fn peer_remove(&self, account: &str, name: &str, body: &[u8]) -> Result<Value, ApiError> {
        #[derive(Default, Deserialize)]
        #[serde(default)]
        struct Req {
            peer: String,
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request());
        }
        let req: Req = serde_json::from_slice(body).map_err(ApiError::invalid_json)?;
        if req.peer.is_empty() {
            return Err(ApiError::bad_request());
        }
        let sa = self
            .assignment(account, name)
            .ok_or_else(ApiError::stream_not_found)?;
        let target = sa
            .peers
            .iter()
            .find(|p| **p == req.peer || peer_id(p) == req.peer)
            .cloned()
            .ok_or_else(ApiError::peer_not_member)?;
        let extra = self
            .place(1, sa.config.placement.as_ref(), &sa.peers)
            .map_err(|e| {
                tracing::warn!(
                    "JetStream cluster: no server can replace {target} for stream '{account} > {name}': {}",
                    e.description
                );
                ApiError::peer_remap_failed()
            })?;
        let peers: Vec<String> = sa
            .peers
            .iter()
            .filter(|p| **p != target)
            .cloned()
            .chain(extra)
            .collect();
        self.propose_meta(&MetaOp::SetPeers {
            account: account.to_string(),
            name: name.to_string(),
            peers,
        })
        .await?;
        Ok(json!({"success": true}))
    }

    /// `$JS.API.META.LEADER.STEPDOWN` (system account): taken by the meta leader, which
    /// gives up its leadership; answered once another server leads the meta group.
    pub(super) async fn meta_step_down(self: Arc<Self>, reply: Option<&str>) {
        let sys = self.settings.system.clone();
        if !self.is_meta_leader() {
            match self.meta_leader() {
                Some(l) if l != self.name => self.forward_meta(&l, "stepdown", reply, b""),
                _ => respond(
                    &sys,
                    reply,
                    "meta_leader_stepdown_response",
                    Err(ApiError::cluster_unavailable("no meta leader")),
                ),
            }
            return;
        }
        let r = match self.meta.step_down(META_STEPDOWN_WAIT).await {
            Ok((_, name)) => {
                tracing::info!("JetStream cluster: meta leader stepped down, {name} leads");
                Ok(json!({"success": true}))
            }
            Err(e) => Err(ApiError::cluster_unavailable(format!(
                "stepdown: no other meta leader elected: {e}"
            ))),
        };
        respond(&sys, reply, "meta_leader_stepdown_response", r);
    }

    /// Takes the API requests that concern replicated streams (answering or forwarding them);
    /// false leaves a request to the local API.
    pub(crate) fn intercept(
        self: &Arc<Self>,
        client: &InternalClient,
        m: &InternalMsg,
        hops: u8,
    ) -> bool {
        let Some(rest) = m.subject.strip_prefix("$JS.API.") else {
            return false;
        };
        let account = client.account().to_string();
        let tokens: Vec<&str> = rest.split('.').collect();
        let assigned = |name: &str| self.assignment(&account, name).is_some();
        match tokens.as_slice() {
            ["STREAM", "CREATE", name] => {
                let replicas = serde_json::from_slice::<Value>(&m.payload)
                    .ok()
                    .and_then(|v| v["num_replicas"].as_i64())
                    .unwrap_or(1);
                if replicas <= 1 && !assigned(name) {
                    return false;
                }
                self.to_meta_leader(client, m, hops)
            }
            ["STREAM", "UPDATE", name]
                if !assigned(name)
                    && serde_json::from_slice::<Value>(&m.payload)
                        .ok()
                        .and_then(|v| v["num_replicas"].as_i64())
                        .is_some_and(|n| n > 1)
                    && self.holds_local(&account, name) =>
            {
                let (cl, client, m) = (self.clone(), client.clone(), m.clone());
                let name = name.to_string();
                tokio::spawn(async move {
                    let r = cl.convert(client.account(), &name, &m.payload).await;
                    respond(&client, m.reply.as_deref(), "stream_update_response", r);
                });
                true
            }
            ["STREAM", "UPDATE" | "DELETE", name] if assigned(name) => {
                self.to_meta_leader(client, m, hops)
            }
            ["STREAM", "PEER", "REMOVE", name] if assigned(name) => {
                self.to_meta_leader(client, m, hops)
            }
            ["CONSUMER", "LEADER", "STEPDOWN", stream, _] if assigned(stream) => {
                self.to_stream_leader(client, m, hops, stream, false)
            }
            ["STREAM", "NAMES" | "LIST"] if !self.assignments(&account).is_empty() => {
                let op = tokens[1] == "LIST";
                self.list(client, m, op);
                true
            }
            ["STREAM", op @ ("INFO" | "PURGE"), name] if assigned(name) => {
                let op = *op;
                self.to_stream_leader(client, m, hops, name, op == "INFO")
            }
            ["STREAM", "LEADER", "STEPDOWN", name] if assigned(name) => {
                self.to_stream_leader(client, m, hops, name, false)
            }
            ["STREAM", "MSG", op @ ("GET" | "DELETE"), name] if assigned(name) => {
                let read_only = *op == "GET";
                self.to_stream_leader(client, m, hops, name, read_only)
            }
            ["DIRECT", "GET", name, last_for @ ..] if assigned(name) => {
                // The leader serves direct gets; a follower only those it can answer as the
                // leader would (see `answers_direct`).
                if self
                    .replica(&account, name)
                    .is_some_and(|r| r.is_leader() || r.answers_direct(last_for, &m.payload))
                {
                    return false;
                }
                self.to_stream_leader(client, m, hops, name, true)
            }
            ["CONSUMER", _, stream, ..] if assigned(stream) => {
                self.to_stream_leader(client, m, hops, stream, true)
            }
            ["CONSUMER", "DURABLE", "CREATE", stream, ..] if assigned(stream) => {
                self.to_stream_leader(client, m, hops, stream, true)
            }
            ["CONSUMER", "MSG", "NEXT", stream, ..] if assigned(stream) => {
                self.to_stream_leader(client, m, hops, stream, true)
            }
            _ if hops < MAX_HOPS => match r1_stream(&tokens) {
                Some(stream) if !assigned(stream) && !self.holds_local(&account, stream) => {
                    self.to_r1_holder(client, m, hops, stream);
                    true
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// A request naming an R1 stream this server does not hold: forwarded to the server that
    /// holds it, else answered "not found" by the meta leader's local API once it has applied
    /// what it committed. A server whose meta state may lag (just restarted, or back after a
    /// while away) never says "not found" itself: a client told so may create the stream
    /// again. With no meta leader: "temporarily unavailable" (as nats-server).
    fn to_r1_holder(
        self: &Arc<Self>,
        client: &InternalClient,
        m: &InternalMsg,
        hops: u8,
        stream: &str,
    ) {
        let (cl, client, m) = (self.clone(), client.clone(), m.clone());
        let stream = stream.to_string();
        tokio::spawn(async move {
            let account = client.account().to_string();
            if let Some(holder) = cl.locate_r1(&account, &stream).await {
                return cl.forward(&holder, &account, &m, hops);
            }
            if !cl.is_meta_leader() {
                match cl.meta_leader() {
                    Some(l) => return cl.forward(&l, &account, &m, hops),
                    None => return unavailable(&client, &m, "no meta leader"),
                }
            }
            cl.meta_applied(META_APPLIED_WAIT).await;
            let Some(api) = cl.jetstream().and_then(|js| js.api(&account)) else {
                return;
            };
            // Assigned meanwhile: taken through the cluster's way again.
            let hops = match cl.assignment(&account, &stream) {
                Some(_) => hops + 1,
                None => MAX_HOPS,
            };
            api.handle_hop(m, hops);
        });
    }

    fn to_meta_leader(
        self: &Arc<Self>,
        client: &InternalClient,
        m: &InternalMsg,
        hops: u8,
    ) -> bool {
        if self.is_meta_leader() {
            let cl = self.clone();
            let client = client.clone();
            let m = m.clone();
            tokio::spawn(async move { cl.meta_request(&client, &m).await });
            return true;
        }
        match self.meta_leader() {
            Some(l) if hops < MAX_HOPS => self.forward(&l, client.account(), m, hops),
            _ => respond(
                client,
                m.reply.as_deref(),
                "error_response",
                Err(ApiError::cluster_unavailable("no meta leader")),
            ),
        }
        true
    }

    /// Read-only requests run in the local API on the leader; purges and deletes are
    /// replicated from here.
    fn to_stream_leader(
        self: &Arc<Self>,
        client: &InternalClient,
        m: &InternalMsg,
        hops: u8,
        stream: &str,
        read_only: bool,
    ) -> bool {
        let account = client.account();
        if let Some(r) = self.replica(account, stream).filter(|r| r.is_leader()) {
            if read_only {
                return false;
            }
            let client = client.clone();
            let m = m.clone();
            tokio::spawn(async move { replicated_write(&r, &client, &m).await });
            return true;
        }
        match self.stream_leader(account, stream) {
            Some(l) if l != self.name && hops < MAX_HOPS => self.forward(&l, account, m, hops),
            _ if hops < MAX_HOPS => {
                // No leader that serves yet (an election, or a new leader applying what its
                // term found): asked again once there is one, a little later at most.
                let cl = self.clone();
                let (account, stream, m) = (account.to_string(), stream.to_string(), m.clone());
                tokio::spawn(async move {
                    cl.wait_stream_leader(&account, &stream, NO_LEADER_WAIT)
                        .await;
                    if let Some(api) = cl.jetstream().and_then(|js| js.api(&account)) {
                        api.handle_hop(m, hops + 1);
                    }
                });
            }
            _ => unavailable(client, m, "stream has no leader"),
        }
        true
    }

    /// STREAM.CREATE / UPDATE / DELETE on the meta leader.
    async fn meta_request(self: Arc<Self>, client: &InternalClient, m: &InternalMsg) {
        let account = client.account().to_string();
        let rest = m
            .subject
            .strip_prefix("$JS.API.STREAM.")
            .unwrap_or_default();
        let reply = m.reply.as_deref();
        let (op, name) = rest.split_once('.').unwrap_or((rest, ""));
        match op {
            "CREATE" => {
                let r = self.create(&account, name, &m.payload).await;
                if r.as_ref().is_ok_and(|v| v["did_create"] == json!(true)) {
                    advisory(client, "CREATED", name, "create");
                }
                match self.serving_leader(&account, name).filter(|_| r.is_ok()) {
                    Some(l) => {
                        self.respond_via(&l, client, reply, "stream_create_response", r, None)
                    }
                    None => respond(client, reply, "stream_create_response", r),
                }
            }
            "UPDATE" => {
                // Answered by the stream's leader once it listens on the new subjects: the
                // client's next publish on one of them finds it (as a create's).
                let r = self.update(&account, name, &m.payload).await;
                const KIND: &str = "stream_update_response";
                // Waited for: a leader restarting its ingest on new subjects does not serve for
                // that moment, and when it is this server (the meta leader) no announcement
                // stands in for it. Answered from here at once, the client's next publish on a
                // new subject found no responders.
                let leader = match r.is_ok() {
                    true => self.wait_stream_leader(&account, name, LEADER_WAIT).await,
                    false => None,
                };
                match leader {
                    Some(l) => self.respond_via(&l, client, reply, KIND, r, Some(name)),
                    None => respond(client, reply, KIND, r),
                }
            }
            "PEER" => {
                let name = name.strip_prefix("REMOVE.").unwrap_or_default();
                let r = self.peer_remove(&account, name, &m.payload).await;
                respond(client, reply, "stream_remove_peer_response", r)
            }
            "DELETE" => {
                let op = MetaOp::DeleteStream {
                    account: account.clone(),
                    name: name.to_string(),
                };
                let r = self
                    .propose_meta(&op)
                    .await
                    .map(|_| json!({"success": true}));
                if r.is_ok() {
                    advisory(client, "DELETED", name, "delete");
                }
                respond(client, reply, "stream_delete_response", r)
            }
            _ => respond(
                client,
                reply,
                "error_response",
                Err(ApiError::bad_request()),
            ),
        }
    }

    pub(super) async fn propose_meta(&self, op: &MetaOp) -> Result<Value, ApiError> {
        let data = serde_json::to_vec(op).map_err(ApiError::invalid_json)?;
        match self.meta.propose(data).await {
            Ok((_, answer)) => meta::answer(&answer),
            Err(RaftError::NotLeader { .. }) => Err(ApiError::cluster_not_leader()),
            Err(e) => Err(ApiError::cluster_unavailable(e.to_string())),
        }
    }

    pub(super) fn parse_config(name: &str, payload: &[u8]) -> Result<StreamConfig, ApiError> {
        let mut cfg: StreamConfig =
            serde_json::from_slice(payload).map_err(ApiError::invalid_json)?;
        if cfg.name.is_empty() {
            cfg.name = name.to_string();
        }
        if cfg.name != name {
            return Err(ApiError::stream_mismatch());
        }
        cfg.normalize();
        cfg.validate_clustered()?;
        crate::jetstream::versioning::stream_static(&mut cfg);
        Ok(cfg)
    }

    async fn create(&self, account: &str, name: &str, payload: &[u8]) -> Result<Value, ApiError> {
        let cfg = Self::parse_config(name, payload)?;
        if let Some(sa) = self.assignment(account, name) {
            if !crate::jetstream::versioning::same_stream(&sa.config, &cfg) {
                return Err(ApiError::stream_name_exists());
            }
            let mut info = self.assignment_info(&sa);
            info["did_create"] = json!(false);
            return Ok(info);
        }
        if cfg.num_replicas <= 1 {
            // Named like no replicated stream and asking for one replica: the local API's.
            return Err(ApiError::bad_request());
        }
        let peers = self.place(cfg.num_replicas as usize, cfg.placement.as_ref(), &[])?;
        let sa = StreamAssignment {
            account: account.to_string(),
            group: format!("S-{account}-{name}-{:08x}", fastrand::u32(..)),
            config: cfg,
            peers,
            created_ns: now_nanos(),
        };
        let answer = self
            .propose_meta(&MetaOp::AddStream { sa: sa.clone() })
            .await?;
        let created = answer["created"] == json!(true);
        let sa = self.assignment(account, name).unwrap_or(sa);
        self.wait_stream_leader(account, name, LEADER_WAIT).await;
        let mut info = self.assignment_info(&sa);
        info["did_create"] = json!(created);
        Ok(info)
    }

    async fn update(&self, account: &str, name: &str, payload: &[u8]) -> Result<Value, ApiError> {
        let cfg = Self::parse_config(name, payload)?;
        let existing = self
            .assignment(account, name)
            .ok_or_else(ApiError::stream_not_found)?;
        let peers = if cfg.num_replicas != existing.config.num_replicas {
            Some(self.rescale(&existing, &cfg)?)
        } else {
            None
        };
        self.propose_meta(&MetaOp::UpdateStream {
            account: account.to_string(),
            config: cfg,
            peers,
        })
        .await?;
        let sa = self
            .assignment(account, name)
            .ok_or_else(ApiError::stream_not_found)?;
        Ok(self.assignment_info(&sa))
    }

    /// The peers of a stream whose `num_replicas` changes to `cfg`'s: more servers placed as
    /// for a new stream (nats-server's error when there are too few), or fewer kept, its
    /// leader first. The new peers are added at the end (the first peer formed the group).
    fn rescale(&self, sa: &StreamAssignment, cfg: &StreamConfig) -> Result<Vec<String>, ApiError> {
        let n = cfg.num_replicas.max(1) as usize;
        let mut peers = sa.peers.clone();
        if n > peers.len() {
            let extra = self.place(n - peers.len(), cfg.placement.as_ref(), &peers)?;
            peers.extend(extra);
            return Ok(peers);
        }
        if let Some(l) = self.stream_leader(&sa.account, &sa.config.name) {
            if let Some(i) = peers.iter().position(|p| *p == l) {
                let leader = peers.remove(i);
                peers.insert(0, leader);
            }
        }
        peers.truncate(n);
        Ok(peers)
    }

    /// A stream's info from its assignment: the local replica's state when there is one.
    pub(crate) fn assignment_info(&self, sa: &StreamAssignment) -> Value {
        let mut state = json!({
            "messages": 0, "bytes": 0, "first_seq": 0, "first_ts": rfc3339(SystemTime::UNIX_EPOCH),
            "last_seq": 0, "last_ts": rfc3339(SystemTime::UNIX_EPOCH), "consumer_count": 0,
        });
        if let Some(r) = self.replica(&sa.account, &sa.config.name) {
            let st = r.stream.store.state();
            state = json!({
                "messages": st.msgs, "bytes": st.bytes, "first_seq": st.first_seq,
                "first_ts": crate::util::time::rfc3339_nanos(st.first_ts as i128),
                "last_seq": st.last_seq,
                "last_ts": crate::util::time::rfc3339_nanos(st.last_ts as i128),
                "num_subjects": st.num_subjects, "num_deleted": st.num_deleted,
                "consumer_count": r.stream.consumers.len(),
            });
        }
        let leader = self.stream_leader(&sa.account, &sa.config.name);
        let replicas: Vec<Value> = sa
            .peers
            .iter()
            .filter(|p| leader.as_ref() != Some(*p))
            .map(|p| json!({"name": p, "current": false, "active": 0}))
            .collect();
        let mut cluster = json!({"name": self.settings.cluster, "replicas": replicas});
        if let Some(l) = leader {
            cluster["leader"] = json!(l);
        }
        let mut info = json!({
            "config": sa.config,
            "created": crate::util::time::rfc3339_nanos(sa.created_ns as i128),
            "state": state,
            "cluster": cluster,
            "ts": rfc3339(SystemTime::now()),
        });
        crate::jetstream::versioning::add_dynamic(&mut info["config"]);
        info
    }

    /// STREAM.NAMES and STREAM.LIST with the replicated streams of the account added.
    fn list(self: &Arc<Self>, client: &InternalClient, m: &InternalMsg, full: bool) {
        #[derive(Default, Deserialize)]
        #[serde(default)]
        struct Paged {
            offset: usize,
            subject: Option<String>,
        }
        let req: Paged = serde_json::from_slice(&m.payload).unwrap_or_default();
        let account = client.account();
        let Some(api) = self.jetstream().and_then(|js| js.api(account)) else {
            return;
        };
        let mut names: Vec<(String, Option<Value>)> = api
            .local_stream_infos(req.subject.as_deref(), full)
            .into_iter()
            .filter(|(n, _)| self.assignment(account, n).is_none())
            .collect();
        for sa in self.assignments(account) {
            let matches = req.subject.as_deref().is_none_or(|f| {
                sa.config
                    .subjects
                    .iter()
                    .any(|s| natrium_subjects::overlaps(s.as_bytes(), f.as_bytes()))
            });
            if matches {
                let info = full.then(|| match self.replica(account, &sa.config.name) {
                    Some(r) if r.is_leader() => api.stream_info_of(&r.stream),
                    _ => self.assignment_info(&sa),
                });
                names.push((sa.config.name.clone(), info));
            }
        }
        names.sort_by(|a, b| a.0.cmp(&b.0));
        let total = names.len();
        let limit = if full { 256 } else { 1024 };
        let page = names.into_iter().skip(req.offset).take(limit);
        let body = if full {
            let infos: Vec<Value> = page.filter_map(|(_, i)| i).collect();
            json!({"total": total, "offset": req.offset, "limit": limit, "streams": infos, "missing": []})
        } else {
            let names: Vec<String> = page.map(|(n, _)| n).collect();
            json!({"total": total, "offset": req.offset, "limit": limit, "streams": names})
        };
        let kind = if full {
            "stream_list_response"
        } else {
            "stream_names_response"
        };
        respond(client, m.reply.as_deref(), kind, Ok(body));
    }
}

/// The stream a request served by an R1 stream's own server names: stream info, message
/// gets, direct gets and consumer requests (creates and deletes of streams stay with the
/// server asked).
fn r1_stream<'a>(tokens: &[&'a str]) -> Option<&'a str> {
    match tokens {
        ["STREAM", "INFO", s] | ["STREAM", "MSG", "GET", s] | ["DIRECT", "GET", s, ..] => Some(s),
        ["CONSUMER", "DURABLE", "CREATE", s, ..] | ["CONSUMER", "MSG", "NEXT", s, ..] => Some(s),
        ["CONSUMER", "CREATE" | "INFO" | "DELETE" | "NAMES" | "LIST", s, ..] => Some(s),
        _ => None,
    }
}

/// Answers `m` "JetStream system temporarily unavailable" (a pull request: a 503 status).
fn unavailable(client: &InternalClient, m: &InternalMsg, why: &str) {
    if m.subject.starts_with("$JS.API.CONSUMER.MSG.NEXT.") {
        if let Some(r) = &m.reply {
            let _ = client.publish(r, None, Some(b"NATS/1.0 503\r\n\r\n"), b"");
        }
    } else {
        respond(
            client,
            m.reply.as_deref(),
            "error_response",
            Err(ApiError::cluster_unavailable(why)),
        );
    }
}

/// A purge, message delete or stepdown on the stream's leader, replicated (or done) before it
/// is answered.
async fn replicated_write(r: &Arc<super::Replica>, client: &InternalClient, m: &InternalMsg) {
    #[derive(Default, Deserialize)]
    #[serde(default)]
    struct Purge {
        filter: Option<String>,
        seq: u64,
        keep: u64,
    }
    #[derive(Default, Deserialize)]
    #[serde(default)]
    struct Delete {
        seq: u64,
        no_erase: bool,
    }
    let reply = m.reply.as_deref();
    let empty = m.payload.iter().all(u8::is_ascii_whitespace);
    if let Some(rest) = m.subject.strip_prefix("$JS.API.CONSUMER.LEADER.STEPDOWN.") {
        // Consumers run on their stream's leader: a consumer's stepdown moves the stream's
        // leadership (and with it every consumer of the stream) to another replica.
        const KIND: &str = "consumer_leader_stepdown_response";
        let consumer = rest.rsplit('.').next().unwrap_or_default();
        if r.stream.consumers.get(consumer).is_none() {
            return respond(client, reply, KIND, Err(ApiError::consumer_not_found()));
        }
        let res = r.step_down().await.map(|_| json!({"success": true}));
        respond(client, reply, KIND, res);
    } else if m.subject.starts_with("$JS.API.STREAM.LEADER.STEPDOWN.") {
        let res = r.step_down().await.map(|_| json!({"success": true}));
        respond(client, reply, "stream_leader_stepdown_response", res);
    } else if m.subject.starts_with("$JS.API.STREAM.PURGE.") {
        let req: Result<Purge, ApiError> = if empty {
            Ok(Purge::default())
        } else {
            serde_json::from_slice(&m.payload).map_err(ApiError::invalid_json)
        };
        let r = match req {
            Ok(p) => r.purge(p.filter, p.seq, p.keep).await,
            Err(e) => Err(e),
        };
        respond(client, reply, "stream_purge_response", r);
    } else {
        let req: Result<Delete, ApiError> =
            serde_json::from_slice(&m.payload).map_err(ApiError::invalid_json);
        let r = match req {
            Ok(d) => r.delete_msg(d.seq, d.no_erase).await,
            Err(e) => Err(e),
        };
        respond(client, reply, "stream_msg_delete_response", r);
    }
}

/// `$JS.EVENT.ADVISORY.STREAM.<kind>.<stream>`.
fn advisory(client: &InternalClient, kind: &str, stream: &str, action: &str) {
    let body = json!({
        "type": "io.nats.jetstream.advisory.v1.stream_action",
        "id": format!("{:016x}", fastrand::u64(..)),
        "timestamp": rfc3339(SystemTime::now()),
        "stream": stream,
        "action": action,
    });
    let _ = client.publish(
        &format!("$JS.EVENT.ADVISORY.STREAM.{kind}.{stream}"),
        None,
        None,
        body.to_string().as_bytes(),
    );
}
