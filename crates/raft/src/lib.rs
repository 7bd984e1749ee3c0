//! Raft groups for Natrium. Callers see a small API: open a [`Group`] with a directory, a
//! [`StateMachine`] and a [`Transport`]; propose opaque entries, watch leadership and progress,
//! change membership. openraft (pinned) does the consensus underneath and appears nowhere in it.
//!
//! Durability: every log record and the vote carry a CRC-32C checked on read; an append is
//! acknowledged (to the leader, or counted by the leader for itself) only after the fdatasync
//! that covers it (group commit: one sync for everything written meanwhile); the vote is synced
//! before it is answered. A log found damaged in its middle makes the node refuse to vote until
//! a leader has given back everything it may have acknowledged (docs/REPLICATION.md).

#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod codec;
mod group;
mod log;
mod net;
mod pace;
mod state;

use std::io::Cursor;

use serde::{Deserialize, Serialize};

pub use group::{Group, GroupConfig, GroupStatus, PeerProgress, Role};
pub use log::{LogStore, LogStoreError, Recovered};
pub use net::{CallFuture, RpcKind, Transport, TransportError};
pub use state::StateMachine;

/// A node of a group: a stable 64-bit id (see [`node_id`]) and the server name it stands for.
pub type NodeId = u64;

/// What the group knows of a member besides its id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// The server's name (stable across restarts).
    pub name: String,
}

/// An entry's application bytes (opaque to the group).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Data(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// What applying an entry returned, handed back to its proposer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// A state machine snapshot's bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotBytes(#[serde(with = "serde_bytes")] pub Vec<u8>);

openraft::declare_raft_types!(
    /// The openraft type configuration (internal).
    pub TypeConfig:
        D = Data,
        R = Reply,
        NodeId = NodeId,
        Node = Peer,
        SnapshotData = SnapshotBytes,
);

// `declare_raft_types!` names `Cursor` in its defaults even when they are all overridden.
#[allow(dead_code)]
type UnusedCursor = Cursor<Vec<u8>>;

/// The stable node id of the server named `name`: FNV-1a 64 of the name (0 is avoided).
pub fn node_id(name: &str) -> NodeId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

/// Errors of the group API.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RaftError {
    /// This node is not the leader; the leader's id and name when known.
    #[error("not the leader")]
    NotLeader { leader: Option<(NodeId, String)> },
    /// The group is shutting down or has stopped after a fatal error.
    #[error("raft group stopped: {0}")]
    Stopped(String),
    /// No answer within the time allowed (no quorum, or the proposal was lost with a leader).
    #[error("timed out")]
    Timeout,
    /// A membership change was refused.
    #[error("membership change failed: {0}")]
    Membership(String),
    /// The log or snapshot could not be read or written.
    #[error("storage: {0}")]
    Storage(String),
    /// The group is already initialized.
    #[error("already initialized")]
    AlreadyInitialized,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_stable_and_distinct() {
        assert_eq!(node_id("n1"), node_id("n1"));
        assert_ne!(node_id("n1"), node_id("n2"));
        // FNV-1a 64 of "a" (the published test vector).
        assert_eq!(node_id("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
