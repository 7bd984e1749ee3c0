//! The hook between a replica's stream and its replica (`Replication`): whether it leads, and
//! the work (`Proposal`) its leader's timers and sources hand to the group to propose.

/// What a replica's stream asks of its replica: whether it leads, and to propose work.
pub(crate) trait Replication: Send + Sync {
    /// Whether this replica leads the group (and applied everything of earlier terms).
    fn leads(&self) -> bool;
    /// Hands work decided here to the leader's proposals (dropped when it does not lead).
    fn propose(&self, p: Proposal);
}

/// Work a leader decided and proposes, to be applied by every replica in log order.
pub(crate) enum Proposal {
    /// These messages are due (TTL or max age): removed, or replaced by a delete marker.
    Expire(Vec<u64>),
    /// These schedules are due: their messages are stored on their targets.
    Fire(Vec<u64>),
    /// A message from a source (its `Nats-Stream-Source` header set).
    Sourced {
        subject: String,
        headers: Option<Vec<u8>>,
        payload: Vec<u8>,
    },
    /// A mirrored message at its origin sequence and timestamp.
    Mirrored {
        seq: u64,
        ts: i64,
        subject: String,
        headers: Option<Vec<u8>>,
        payload: Vec<u8>,
    },
}
