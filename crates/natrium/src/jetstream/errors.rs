//! The JetStream API's wire errors: nats-server's HTTP-like `code`, its stable `err_code` and the
//! description text, in one table. Codes are never reused for another meaning.

use serde::Serialize;

/// An API error as it appears in a response's `error` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiError {
    pub code: u16,
    pub err_code: u16,
    pub description: String,
}

impl ApiError {
    fn new(code: u16, err_code: u16, description: impl Into<String>) -> Self {
        ApiError {
            code,
            err_code,
            description: description.into(),
        }
    }

    pub fn bad_request() -> Self {
        Self::new(400, 10003, "bad request")
    }
    /// JSClusterNoPeersErrF: the text says why (`no suitable peers for placement, ...`).
    pub fn no_suitable_peers(why: impl Into<String>) -> Self {
        Self::new(400, 10005, why)
    }
    /// JSClusterNotAvailErr; `why` is logged by the caller, the text is nats-server's.
    pub fn cluster_unavailable(why: impl std::fmt::Display) -> Self {
        tracing::debug!("JetStream cluster unavailable: {why}");
        Self::new(503, 10008, "JetStream system temporarily unavailable")
    }
    /// JSClusterNotLeaderErr.
    pub fn cluster_not_leader() -> Self {
        Self::new(500, 10009, "JetStream cluster can not handle request")
    }
    pub fn invalid_json(err: impl std::fmt::Display) -> Self {
        Self::new(400, 10025, format!("invalid JSON: {err}"))
    }
    pub fn not_enabled_for_account() -> Self {
        Self::new(503, 10039, "JetStream not enabled for account")
    }
    pub fn no_message_found() -> Self {
        Self::new(404, 10037, "no message found")
    }
    pub fn stream_not_found() -> Self {
        Self::new(404, 10059, "stream not found")
    }
    pub fn stream_name_exists() -> Self {
        Self::new(
            400,
            10058,
            "stream name already in use with a different configuration",
        )
    }
    pub fn subjects_overlap() -> Self {
        Self::new(400, 10065, "subjects overlap with an existing stream")
    }
    pub fn stream_mismatch() -> Self {
        Self::new(400, 10056, "stream name in subject does not match request")
    }
    pub fn expected_stream_mismatch() -> Self {
        Self::new(400, 10060, "expected stream does not match")
    }
    pub fn wrong_last_sequence(seq: u64) -> Self {
        Self::new(400, 10071, format!("wrong last sequence: {seq}"))
    }
    pub fn wrong_last_msg_id(id: &str) -> Self {
        Self::new(400, 10070, format!("wrong last msg ID: {id}"))
    }
    pub fn message_too_large() -> Self {
        Self::new(400, 10054, "message size exceeds maximum allowed")
    }
    pub fn invalid_config(err: impl Into<String>) -> Self {
        Self::new(500, 10052, err)
    }
    pub fn create_failed(err: impl Into<String>) -> Self {
        Self::new(500, 10049, err)
    }
    pub fn update_failed(err: impl Into<String>) -> Self {
        Self::new(500, 10069, err)
    }
    pub fn delete_failed(err: impl Into<String>) -> Self {
        Self::new(500, 10050, err)
    }
    pub fn purge_failed(err: impl Into<String>) -> Self {
        Self::new(500, 10110, err)
    }
    pub fn msg_delete_failed(err: impl Into<String>) -> Self {
        Self::new(500, 10057, err)
    }
    pub fn store_failed(err: impl Into<String>) -> Self {
        Self::new(503, 10077, err)
    }
    pub fn rollup_failed(err: impl Into<String>) -> Self {
        Self::new(500, 10111, err)
    }
    pub fn replicas_not_supported() -> Self {
        Self::new(
            500,
            10074,
            "replicas > 1 not supported in non-clustered mode",
        )
    }
    pub fn replicas_not_updatable() -> Self {
        Self::new(400, 10061, "Replicas configuration can not be updated")
    }
    /// JSClusterPeerNotMemberErr: `STREAM.PEER.REMOVE` of a server that holds no replica.
    pub fn peer_not_member() -> Self {
        Self::new(400, 10040, "peer not a member")
    }
    /// JSClusterServerNotMemberErr: `SERVER.REMOVE` of a server outside the meta group.
    pub fn server_not_member() -> Self {
        Self::new(400, 10044, "server is not a member of the cluster")
    }
    /// JSPeerRemapErr: no server can take a removed peer's place.
    pub fn peer_remap_failed() -> Self {
        Self::new(503, 10075, "peer remap failed")
    }
    /// JSConsumerReplicasExceedsStream.
    pub fn consumer_replicas_exceed_stream() -> Self {
        Self::new(
            400,
            10126,
            "consumer config replica count exceeds parent stream",
        )
    }
    /// JSClusterRequiredErr.
    pub fn cluster_required() -> Self {
        Self::new(503, 10010, "JetStream clustering support required")
    }
    pub fn sealed() -> Self {
        Self::new(400, 10109, "invalid operation on sealed stream")
    }
    pub fn max_streams() -> Self {
        Self::new(400, 10027, "maximum number of streams reached")
    }
    pub fn storage_exceeded() -> Self {
        Self::new(500, 10047, "insufficient storage resources available")
    }
    pub fn memory_exceeded() -> Self {
        Self::new(500, 10028, "insufficient memory resources available")
    }
    pub fn max_bytes_required() -> Self {
        Self::new(
            400,
            10113,
            "account requires a stream config to have max bytes set",
        )
    }
    pub fn name_has_path_separators() -> Self {
        Self::new(400, 10128, "Stream name can not contain path separators")
    }
    pub fn consumer_not_found() -> Self {
        Self::new(404, 10014, "consumer not found")
    }
    pub fn consumer_create(err: impl Into<String>) -> Self {
        Self::new(500, 10012, err)
    }
    pub fn consumer_name_exists() -> Self {
        Self::new(400, 10013, "consumer name already in use")
    }
    pub fn consumer_already_exists() -> Self {
        Self::new(400, 10148, "consumer already exists")
    }
    pub fn consumer_does_not_exist() -> Self {
        Self::new(400, 10149, "consumer does not exist")
    }
    pub fn consumer_bad_name() -> Self {
        Self::new(400, 10103, "durable name can not contain '.', '*', '>'")
    }
    pub fn consumer_durable_mismatch() -> Self {
        Self::new(
            400,
            10017,
            "consumer name in subject does not match durable name in request",
        )
    }
    pub fn consumer_duplicate_filters() -> Self {
        Self::new(
            400,
            10136,
            "consumer cannot have both FilterSubject and FilterSubjects specified",
        )
    }
    pub fn consumer_overlapping_filters() -> Self {
        Self::new(400, 10138, "consumer subject filters cannot overlap")
    }
    pub fn consumer_filter_mismatch() -> Self {
        Self::new(
            400,
            10131,
            "Consumer create request did not match filtered subject from create subject",
        )
    }
    pub fn consumer_filter_not_subset() -> Self {
        Self::new(
            400,
            10093,
            "consumer filter subject is not a valid subset of the interest subjects",
        )
    }
    pub fn consumer_push_max_waiting() -> Self {
        Self::new(400, 10080, "consumer in push mode can not set max waiting")
    }
    pub fn consumer_hb_requires_push() -> Self {
        Self::new(
            400,
            10088,
            "consumer idle heartbeat requires a push based consumer",
        )
    }
    pub fn consumer_fc_requires_push() -> Self {
        Self::new(
            400,
            10089,
            "consumer flow control requires a push based consumer",
        )
    }
    pub fn consumer_fc_needs_heartbeats() -> Self {
        Self::new(
            400,
            10108,
            "consumer with flow control also needs heartbeats",
        )
    }
    pub fn consumer_backoff_max_deliver() -> Self {
        Self::new(
            400,
            10116,
            "max deliver is required to be > length of backoff values",
        )
    }
    pub fn wq_requires_explicit_ack() -> Self {
        Self::new(400, 10098, "workqueue stream requires explicit ack")
    }
    pub fn wq_multiple_unfiltered() -> Self {
        Self::new(
            400,
            10099,
            "multiple non-filtered consumers not allowed on workqueue stream",
        )
    }
    pub fn wq_not_unique() -> Self {
        Self::new(
            400,
            10100,
            "filtered consumer not unique on workqueue stream",
        )
    }
    pub fn mirror_with_first_seq() -> Self {
        Self::new(
            400,
            10143,
            "stream mirrors can not have first sequence configured",
        )
    }
    pub fn mirror_with_subjects() -> Self {
        Self::new(400, 10034, "stream mirrors can not contain subjects")
    }
    pub fn mirror_with_sources() -> Self {
        Self::new(
            400,
            10031,
            "stream mirrors can not also contain other sources",
        )
    }
    pub fn mirror_with_counters() -> Self {
        Self::new(400, 10173, "stream mirrors can not also calculate counters")
    }
    pub fn mirror_with_atomic_publish() -> Self {
        Self::new(
            400,
            10198,
            "stream mirrors can not also use atomic publishing",
        )
    }
    pub fn mirror_with_msg_schedules() -> Self {
        Self::new(400, 10186, "stream mirrors can not also schedule messages")
    }
    pub fn mirror_with_start_seq_and_time() -> Self {
        Self::new(
            400,
            10032,
            "stream mirrors can not have both start seq and start time configured",
        )
    }
    pub fn mirror_multiple_filters() -> Self {
        Self::new(
            400,
            10150,
            "mirror with multiple subject transforms cannot also have a single subject filter",
        )
    }
    pub fn mirror_invalid_subject_filter(err: impl std::fmt::Display) -> Self {
        Self::new(400, 10151, format!("mirror transform source: {err}"))
    }
    pub fn mirror_invalid_transform_destination(err: impl std::fmt::Display) -> Self {
        Self::new(400, 10154, format!("mirror transform: {err}"))
    }
    pub fn mirror_overlapping_filters() -> Self {
        Self::new(400, 10152, "mirror subject filters can not overlap")
    }
    pub fn mirror_invalid_stream_name() -> Self {
        Self::new(400, 10142, "mirrored stream name is invalid")
    }
    pub fn mirror_max_message_size_too_big() -> Self {
        Self::new(
            400,
            10030,
            "stream mirror must have max message size >= source",
        )
    }
    pub fn mirror_not_updatable() -> Self {
        Self::new(400, 10055, "stream mirror configuration can not be updated")
    }
    pub fn mirror_consumer_setup_failed(err: impl Into<String>) -> Self {
        Self::new(500, 10029, err)
    }
    pub fn source_consumer_setup_failed(err: impl Into<String>) -> Self {
        Self::new(500, 10045, err)
    }
    pub fn source_with_msg_schedules() -> Self {
        Self::new(400, 10187, "stream source can not also schedule messages")
    }
    pub fn source_invalid_stream_name() -> Self {
        Self::new(400, 10141, "sourced stream name is invalid")
    }
    pub fn source_duplicate_detected() -> Self {
        Self::new(400, 10140, "duplicate source configuration detected")
    }
    pub fn source_multiple_filters() -> Self {
        Self::new(
            400,
            10144,
            "source with multiple subject transforms cannot also have a single subject filter",
        )
    }
    pub fn source_invalid_subject_filter(err: impl std::fmt::Display) -> Self {
        Self::new(400, 10145, format!("source transform source: {err}"))
    }
    pub fn source_invalid_transform_destination(err: impl std::fmt::Display) -> Self {
        Self::new(400, 10146, format!("source transform: {err}"))
    }
    pub fn source_overlapping_filters() -> Self {
        Self::new(400, 10147, "source filters can not overlap")
    }
    pub fn source_max_message_size_too_big() -> Self {
        Self::new(
            400,
            10046,
            "stream source must have max message size >= target",
        )
    }
    pub fn stream_transform_invalid_source(err: impl std::fmt::Display) -> Self {
        Self::new(400, 10155, format!("stream transform source: {err}"))
    }
    pub fn stream_transform_invalid_destination(err: impl std::fmt::Display) -> Self {
        Self::new(400, 10156, format!("stream transform: {err}"))
    }
    pub fn external_delivery_subject_invalid(prefix: &str) -> Self {
        Self::new(
            400,
            10024,
            format!("stream external delivery prefix {prefix} must not contain wildcards"),
        )
    }
    pub fn external_api_overlap(prefix: &str, subject: &str) -> Self {
        Self::new(
            400,
            10021,
            format!("stream external api prefix {prefix} must not overlap with {subject}"),
        )
    }
    pub fn msg_ttl_disabled() -> Self {
        Self::new(400, 10166, "per-message TTL is disabled")
    }
    pub fn msg_ttl_invalid() -> Self {
        Self::new(400, 10165, "invalid per-message TTL")
    }
    pub fn counter_broken() -> Self {
        Self::new(400, 10172, "message counter is broken")
    }
    pub fn incr_disabled() -> Self {
        Self::new(400, 10168, "message counters is disabled")
    }
    pub fn incr_invalid() -> Self {
        Self::new(400, 10171, "message counter increment is invalid")
    }
    pub fn incr_missing() -> Self {
        Self::new(400, 10169, "message counter increment is missing")
    }
    pub fn incr_payload() -> Self {
        Self::new(400, 10170, "message counter has payload")
    }
    pub fn schedules_disabled() -> Self {
        Self::new(400, 10188, "message schedules is disabled")
    }
    pub fn schedules_pattern_invalid() -> Self {
        Self::new(400, 10189, "message schedules pattern is invalid")
    }
    pub fn schedules_target_invalid() -> Self {
        Self::new(400, 10190, "message schedules target is invalid")
    }
    pub fn schedules_ttl_invalid() -> Self {
        Self::new(400, 10191, "message schedules invalid per-message TTL")
    }
    pub fn schedules_rollup_invalid() -> Self {
        Self::new(400, 10192, "message schedules invalid rollup")
    }
    pub fn expected_last_subject_seq_missing() -> Self {
        Self::new(
            400,
            10193,
            "missing sequence for expected last sequence per subject",
        )
    }
    pub fn header_too_large() -> Self {
        Self::new(400, 10097, "header size exceeds maximum allowed of 64k")
    }
    pub fn atomic_disabled() -> Self {
        Self::new(400, 10174, "atomic publish is disabled")
    }
    pub fn atomic_missing_seq() -> Self {
        Self::new(400, 10175, "atomic publish sequence is missing")
    }
    pub fn required_api_level() -> Self {
        Self::new(412, 10185, "JetStream minimum api level required")
    }
    pub fn atomic_incomplete() -> Self {
        Self::new(400, 10176, "atomic publish batch is incomplete")
    }
    pub fn atomic_unsupported_header(header: &str) -> Self {
        Self::new(
            400,
            10177,
            format!("atomic publish unsupported header used: {header}"),
        )
    }
    pub fn atomic_too_large(size: u64) -> Self {
        Self::new(
            400,
            10199,
            format!("atomic publish batch is too large: {size}"),
        )
    }
    pub fn atomic_invalid_id() -> Self {
        Self::new(400, 10179, "atomic publish batch ID is invalid")
    }
    pub fn atomic_invalid_commit() -> Self {
        Self::new(400, 10200, "atomic publish batch commit is invalid")
    }
    pub fn atomic_duplicate_msg_id() -> Self {
        Self::new(
            400,
            10201,
            "atomic publish batch contains duplicate message id",
        )
    }
    pub fn stream_max_bytes_exceeded() -> Self {
        Self::new(
            400,
            10122,
            "stream max bytes exceeds account limit max stream bytes",
        )
    }
    pub fn account_resources_exceeded() -> Self {
        Self::new(400, 10002, "resource limits exceeded for account")
    }
    pub fn no_limits() -> Self {
        Self::new(
            400,
            10120,
            "no JetStream default or applicable tiered limit present",
        )
    }
    pub fn max_consumers() -> Self {
        Self::new(400, 10026, "maximum consumers limit reached")
    }
    pub fn consumer_max_ack_pending_excess(limit: i64) -> Self {
        Self::new(
            400,
            10121,
            format!("consumer max ack pending exceeds system limit of {limit}"),
        )
    }
    pub fn consumer_inactive_threshold_excess(limit: &str) -> Self {
        Self::new(
            400,
            10153,
            format!("consumer inactive threshold exceeds system limit of {limit}"),
        )
    }
    pub fn consumer_small_heartbeat() -> Self {
        Self::new(400, 10083, "consumer idle heartbeat needs to be >= 100ms")
    }
    pub fn consumer_pull_with_rate_limit() -> Self {
        Self::new(
            400,
            10086,
            "consumer in pull mode can not have rate limit set",
        )
    }
    pub fn consumer_max_request_batch_negative() -> Self {
        Self::new(400, 10114, "consumer max request batch needs to be > 0")
    }
    pub fn consumer_max_request_expires_too_small() -> Self {
        Self::new(
            400,
            10115,
            "consumer max request expires needs to be >= 1ms",
        )
    }
    pub fn consumer_metadata_length(limit: &str) -> Self {
        Self::new(
            400,
            10135,
            format!("consumer metadata exceeds maximum size of {limit}"),
        )
    }
    pub fn consumer_priority_policy_without_group() -> Self {
        Self::new(
            400,
            10159,
            "Setting PriorityPolicy requires at least one PriorityGroup to be set",
        )
    }
    pub fn consumer_invalid_priority_group() -> Self {
        Self::new(
            400,
            10160,
            "Provided priority group does not exist for this consumer",
        )
    }
    pub fn consumer_empty_group_name() -> Self {
        Self::new(400, 10161, "Group name cannot be an empty string")
    }
    pub fn consumer_invalid_group_name() -> Self {
        Self::new(
            400,
            10162,
            "Valid priority group name must match A-Z, a-z, 0-9, -_/=)+ and may not exceed 16 characters",
        )
    }
    pub fn consumer_push_with_priority_group() -> Self {
        Self::new(
            400,
            10178,
            "priority groups can not be used with push consumers",
        )
    }
    pub fn consumer_priority_group_with_policy_none() -> Self {
        Self::new(
            400,
            10196,
            "consumer can not have priority groups when policy is none",
        )
    }
    pub fn consumer_pinned_ttl_without_priority_policy() -> Self {
        Self::new(
            400,
            10197,
            "PinnedTTL cannot be set when PriorityPolicy is none",
        )
    }
    pub fn consumer_invalid_reset(err: impl std::fmt::Display) -> Self {
        Self::new(400, 10204, format!("invalid reset: {err}"))
    }
    pub fn limits(err: impl Into<String>) -> Self {
        Self::new(500, 10053, err)
    }
}
