//! The [`Transport`] a group talks through (request bytes to a peer, answer bytes back), and
//! openraft's network over it: requests and answers are bincode, each RPC bounded by openraft's
//! deadline; a failed or late call counts as unreachable (openraft backs off).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, Snapshot, SnapshotMeta, Vote};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::log::LogStore;
use crate::{NodeId, Peer, SnapshotBytes, TypeConfig};

/// The kinds of request a group sends its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RpcKind {
    /// AppendEntries (and heartbeats).
    Append,
    Vote,
    /// A whole snapshot.
    Snapshot,
}

impl RpcKind {
    /// A short name for subjects and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RpcKind::Append => "A",
            RpcKind::Vote => "V",
            RpcKind::Snapshot => "S",
        }
    }

    pub fn parse(s: &str) -> Option<RpcKind> {
        match s {
            "A" => Some(RpcKind::Append),
            "V" => Some(RpcKind::Vote),
            "S" => Some(RpcKind::Snapshot),
            _ => None,
        }
    }
}

/// Why a call to a peer failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TransportError {
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    #[error("no answer in time")]
    Timeout,
}

/// A boxed future returned by [`Transport::call`].
pub type CallFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, TransportError>> + Send>>;

/// How a group reaches its peers: `call` delivers `body` to the peer's group (which answers
/// through [`crate::Group::handle_rpc`]) and returns the answer, within `timeout`.
pub trait Transport: Send + Sync + 'static {
    fn call(
        &self,
        to: NodeId,
        peer: &Peer,
        kind: RpcKind,
        body: Vec<u8>,
        timeout: Duration,
    ) -> CallFuture;
}

/// What the leader last heard from a peer.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Contact {
    /// The peer's last answer (the replicas' `active` figure).
    pub answered: Option<Instant>,
    /// The last answer to an AppendEntries that carried everything committed when it was
    /// sent: the peer then held it all, and only entries still in flight were missing.
    pub caught_up: Option<Instant>,
}

/// Each peer's [`Contact`].
pub(crate) type Contacts = Arc<Mutex<HashMap<NodeId, Contact>>>;

/// A whole snapshot as sent to a follower.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotRpc {
    pub vote: Vote<NodeId>,
    pub meta: SnapshotMeta<NodeId, Peer>,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

pub(crate) struct NetFactory {
    pub transport: Arc<dyn Transport>,
    pub contacts: Contacts,
    /// This node's log (its commit index when a request leaves).
    pub log: LogStore,
}

impl RaftNetworkFactory<TypeConfig> for NetFactory {
    type Network = Net;

    async fn new_client(&mut self, target: NodeId, node: &Peer) -> Net {
        Net {
            target,
            peer: node.clone(),
            transport: self.transport.clone(),
            contacts: self.contacts.clone(),
            log: self.log.clone(),
        }
    }
}

pub(crate) struct Net {
    target: NodeId,
    peer: Peer,
    transport: Arc<dyn Transport>,
    contacts: Contacts,
    log: LogStore,
}

type RpcErr<E = RaftError<NodeId>> = RPCError<NodeId, Peer, E>;

/// The least time an append or vote call waits for its answer. openraft 0.9 bounds an append by
/// its heartbeat interval, which is `GroupConfig::append_timeout` here (1 s; it was a 150 ms
/// heartbeat, and with the fault harness's 214 ms of delay each way on the leader's routes no
/// append ever succeeded). A slower answer is still a good one; a dead peer is found by its
/// missing answers all the same, only later.
const MIN_RPC_TTL: Duration = Duration::from_secs(1);

impl Net {
    async fn call<Req: Serialize, Resp: for<'de> Deserialize<'de>>(
        &self,
        kind: RpcKind,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, TransportError> {
        let body = codec::encode(req).map_err(TransportError::Unreachable)?;
        let answer = self
            .transport
            .call(self.target, &self.peer, kind, body, timeout)
            .await?;
        self.contacts
            .lock()
            .entry(self.target)
            .or_default()
            .answered = Some(Instant::now());
        codec::decode(&answer).map_err(TransportError::Unreachable)
    }

    fn rpc_error<E: std::error::Error>(e: TransportError) -> RpcErr<E> {
        match e {
            TransportError::Timeout => RPCError::Unreachable(Unreachable::new(&e)),
            TransportError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
        }
    }
}

impl RaftNetwork<TypeConfig> for Net {
    /// After an unreachable peer (a timeout, no route, a group not open there yet): 20 ms,
    /// doubling up to 500 ms. openraft's default waits 500 ms from the first failure, which
    /// with a group a follower opens a moment after its leader stalled that follower for the
    /// deadline plus half a second right after every stream was created.
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::successors(
            Some(Duration::from_millis(20)),
            |d| Some((*d * 2).min(Duration::from_millis(500))),
        ))
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let upto = rpc
            .entries
            .last()
            .map(|e| e.log_id.index)
            .or(rpc.prev_log_id.map(|p| p.index));
        let committed = self.log.committed_index();
        let r: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> = self
            .call(RpcKind::Append, &rpc, option.hard_ttl().max(MIN_RPC_TTL))
            .await
            .map_err(Self::rpc_error)?;
        if matches!(r, Ok(AppendEntriesResponse::Success)) && upto >= committed {
            self.contacts
                .lock()
                .entry(self.target)
                .or_default()
                .caught_up = Some(Instant::now());
        }
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        let r: Result<VoteResponse<NodeId>, RaftError<NodeId>> = self
            .call(RpcKind::Vote, &rpc, option.hard_ttl().max(MIN_RPC_TTL))
            .await
            .map_err(Self::rpc_error)?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let req = SnapshotRpc {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot.0,
        };
        let call = self.call::<_, Result<SnapshotResponse<NodeId>, Fatal<NodeId>>>(
            RpcKind::Snapshot,
            &req,
            option.hard_ttl(),
        );
        let r = tokio::select! {
            r = call => r,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        match r {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(fatal)) => Err(StreamingError::RemoteError(RemoteError::new(
                self.target,
                fatal,
            ))),
            Err(e) => Err(StreamingError::Network(NetworkError::new(&e))),
        }
    }
}

/// Decodes a snapshot request into openraft's form.
pub(crate) fn snapshot_request(
    body: &[u8],
) -> Result<(Vote<NodeId>, Snapshot<TypeConfig>), String> {
    let req: SnapshotRpc = codec::decode(body)?;
    Ok((
        req.vote,
        Snapshot {
            meta: req.meta,
            snapshot: Box::new(SnapshotBytes(req.data)),
        },
    ))
}
