//! Consumer configuration as the JetStream API carries it: nats-server's JSON field names, defaults
//! (`ack_wait` 30 s, `max_ack_pending` 1000, `max_waiting` 512 for pull consumers) and validation.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::errors::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DeliverPolicy {
    #[default]
    All,
    Last,
    New,
    ByStartSequence,
    ByStartTime,
    LastPerSubject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AckPolicy {
    None,
    All,
    #[default]
    Explicit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReplayPolicy {
    #[default]
    Instant,
    Original,
}

/// How a pull consumer with priority groups picks among waiting requests (`priority_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PriorityPolicy {
    #[default]
    None,
    /// Requests with `min_pending`/`min_ack_pending` get messages only past those marks.
    Overflow,
    /// One client (its requests carrying the pin id) gets every message until it goes quiet.
    PinnedClient,
    /// Requests with a lower `priority` are served first.
    Prioritized,
}

impl PriorityPolicy {
    fn is_none(&self) -> bool {
        *self == PriorityPolicy::None
    }
}

/// A stream's `consumer_limits`: defaults and ceilings for its consumers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerLimits {
    pub inactive_threshold: i64,
    pub max_ack_pending: i64,
}

impl ConsumerLimits {
    /// Read from the stream config's `consumer_limits` object (missing fields are 0).
    pub fn from_json(v: &serde_json::Value) -> ConsumerLimits {
        ConsumerLimits {
            inactive_threshold: v["inactive_threshold"].as_i64().unwrap_or(0),
            max_ack_pending: v["max_ack_pending"].as_i64().unwrap_or(0),
        }
    }
}

/// Priority group names: 1 to 16 of `A-Z a-z 0-9 / _ = -`.
fn valid_group_name(g: &str) -> bool {
    (1..=16).contains(&g.len())
        && g.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'=' | b'-'))
}

/// Most bytes of metadata keys and values a consumer may carry.
const MAX_METADATA_LEN: usize = 128 * 1024;

/// The pin lasts this long without a request from the pinned client unless configured.
const DEFAULT_PINNED_TTL: i64 = 120_000_000_000;

fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero_i(n: &i64) -> bool {
    *n == 0
}
fn is_zero_u(n: &u64) -> bool {
    *n == 0
}

/// A consumer's configuration, field for field as nats-server's `ConsumerConfig` JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ConsumerConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub durable_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub deliver_policy: DeliverPolicy,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opt_start_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opt_start_time: Option<String>,
    pub ack_policy: AckPolicy,
    pub ack_wait: i64,
    pub max_deliver: i64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backoff: Vec<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter_subject: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filter_subjects: Vec<String>,
    pub replay_policy: ReplayPolicy,
    #[serde(skip_serializing_if = "is_zero_u")]
    pub rate_limit_bps: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_freq: Option<String>,
    #[serde(skip_serializing_if = "is_zero_i")]
    pub max_waiting: i64,
    pub max_ack_pending: i64,
    #[serde(skip_serializing_if = "is_false")]
    pub flow_control: bool,
    #[serde(skip_serializing_if = "is_zero_i")]
    pub idle_heartbeat: i64,
    #[serde(skip_serializing_if = "is_false")]
    pub headers_only: bool,
    #[serde(skip_serializing_if = "is_zero_i")]
    pub max_batch: i64,
    #[serde(skip_serializing_if = "is_zero_i")]
    pub max_expires: i64,
    #[serde(skip_serializing_if = "is_zero_i")]
    pub max_bytes: i64,
    #[serde(skip_serializing_if = "is_zero_i")]
    pub inactive_threshold: i64,
    pub num_replicas: i64,
    #[serde(skip_serializing_if = "is_false")]
    pub mem_storage: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliver_subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliver_group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_until: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub priority_groups: Vec<String>,
    #[serde(skip_serializing_if = "PriorityPolicy::is_none")]
    pub priority_policy: PriorityPolicy,
    /// How long a pin lasts without a request from the pinned client (nanoseconds).
    #[serde(skip_serializing_if = "is_zero_i")]
    pub priority_timeout: i64,
}

/// Ephemeral consumers go away after this much inactivity unless configured otherwise.
const DEFAULT_INACTIVE_THRESHOLD: i64 = 5_000_000_000;

impl ConsumerConfig {
    pub fn is_pull(&self) -> bool {
        self.deliver_subject.is_none()
    }

    pub fn is_durable(&self) -> bool {
        self.durable_name.is_some()
    }

    /// The consumer's name: durable name, explicit name, or none (the server makes one up).
    pub fn given_name(&self) -> Option<&str> {
        self.durable_name.as_deref().or(self.name.as_deref())
    }

    /// Defaults from the stream's `consumer_limits` and the account's `max_ack_pending`, filled
    /// before `normalize` as nats-server does.
    pub fn apply_limits(&mut self, stream: ConsumerLimits, account_max_ack_pending: i64) {
        if self.max_ack_pending == 0 {
            self.max_ack_pending = stream.max_ack_pending;
        }
        if self.inactive_threshold == 0 {
            self.inactive_threshold = stream.inactive_threshold.max(0);
        }
        if self.max_ack_pending == 0 && self.ack_policy != AckPolicy::None {
            let mut n = 1000;
            if account_max_ack_pending > 0 && account_max_ack_pending < n {
                n = account_max_ack_pending;
            }
            self.max_ack_pending = n;
        }
    }

    /// The stream's and the account's ceilings, checked after `normalize`.
    pub fn check_limits(
        &self,
        stream: ConsumerLimits,
        account_max_ack_pending: i64,
    ) -> Result<(), ApiError> {
        if account_max_ack_pending > 0 && self.max_ack_pending > account_max_ack_pending {
            return Err(ApiError::consumer_max_ack_pending_excess(
                account_max_ack_pending,
            ));
        }
        if stream.max_ack_pending > 0 && self.max_ack_pending > stream.max_ack_pending {
            return Err(ApiError::consumer_max_ack_pending_excess(
                stream.max_ack_pending,
            ));
        }
        if stream.inactive_threshold > 0 && self.inactive_threshold > stream.inactive_threshold {
            return Err(ApiError::consumer_inactive_threshold_excess(
                &crate::util::time::go_duration(Duration::from_nanos(
                    stream.inactive_threshold as u64,
                )),
            ));
        }
        Ok(())
    }

    /// Fills defaults as nats-server does.
    pub fn normalize(&mut self) {
        if self.ack_wait <= 0 {
            self.ack_wait = 30_000_000_000;
        }
        if self.max_deliver == 0 {
            self.max_deliver = -1;
        }
        if self.max_ack_pending == 0 && self.ack_policy != AckPolicy::None {
            self.max_ack_pending = 1000;
        }
        if self.is_pull() && self.max_waiting == 0 {
            self.max_waiting = 512;
        }
        if !self.is_durable() && self.inactive_threshold == 0 {
            self.inactive_threshold = DEFAULT_INACTIVE_THRESHOLD;
        }
        if let Some(f) = &self.filter_subject {
            if f.is_empty() {
                self.filter_subject = None;
            }
        }
        if self.priority_timeout < 0 {
            self.priority_timeout = 0;
        }
        if self.priority_policy == PriorityPolicy::PinnedClient && self.priority_timeout == 0 {
            self.priority_timeout = DEFAULT_PINNED_TTL;
        }
        if self.max_batch < 0 {
            self.max_batch = 0;
        }
        if self.max_expires < 0 {
            self.max_expires = 0;
        }
        if self.max_bytes < 0 {
            self.max_bytes = 0;
        }
    }

    pub fn validate(&self) -> Result<(), ApiError> {
        if let (Some(d), Some(n)) = (&self.durable_name, &self.name) {
            if d != n {
                return Err(ApiError::consumer_durable_mismatch());
            }
        }
        if let Some(n) = self.given_name() {
            if n.is_empty() || n.contains(['.', '*', '>', ' ', '\t', '/', '\\']) {
                return Err(ApiError::consumer_bad_name());
            }
        }
        if self.filter_subject.is_some() && !self.filter_subjects.is_empty() {
            return Err(ApiError::consumer_duplicate_filters());
        }
        for f in self.filters() {
            if !natrium_subjects::is_valid_subject(f.as_bytes()) {
                return Err(ApiError::consumer_create(format!(
                    "consumer filter subject is not a valid subject: {f}"
                )));
            }
        }
        let filters = self.filters();
        for (i, a) in filters.iter().enumerate() {
            if filters[..i]
                .iter()
                .any(|b| natrium_subjects::overlaps(a.as_bytes(), b.as_bytes()))
            {
                return Err(ApiError::consumer_overlapping_filters());
            }
        }
        if self.deliver_policy == DeliverPolicy::ByStartSequence
            && self.opt_start_seq.unwrap_or(0) == 0
        {
            return Err(ApiError::consumer_create("consumer delivery policy is deliver by start sequence, but optional start sequence is not set"));
        }
        if self.deliver_policy == DeliverPolicy::ByStartTime && self.opt_start_time.is_none() {
            return Err(ApiError::consumer_create("consumer delivery policy is deliver by start time, but optional start time is not set"));
        }
        if self.max_deliver > 0
            && !self.backoff.is_empty()
            && self.backoff.len() as i64 > self.max_deliver
        {
            return Err(ApiError::consumer_backoff_max_deliver());
        }
        if self.max_waiting > 0 && !self.is_pull() {
            return Err(ApiError::consumer_push_max_waiting());
        }
        if self.idle_heartbeat > 0 && self.is_pull() {
            return Err(ApiError::consumer_hb_requires_push());
        }
        if self.deliver_group.is_some() && self.is_pull() {
            return Err(ApiError::consumer_create(
                "consumer is pull mode but deliver group is set",
            ));
        }
        if self.flow_control && self.is_pull() {
            return Err(ApiError::consumer_fc_requires_push());
        }
        if self.flow_control && self.idle_heartbeat <= 0 {
            return Err(ApiError::consumer_fc_needs_heartbeats());
        }
        if self.is_pull() {
            if self.rate_limit_bps > 0 {
                return Err(ApiError::consumer_pull_with_rate_limit());
            }
            if self.max_expires != 0 && self.max_expires < 1_000_000 {
                return Err(ApiError::consumer_max_request_expires_too_small());
            }
        } else if self.idle_heartbeat > 0 && self.idle_heartbeat < 100_000_000 {
            return Err(ApiError::consumer_small_heartbeat());
        }
        let metadata_len: usize = self
            .metadata
            .iter()
            .flatten()
            .map(|(k, v)| k.len() + v.len())
            .sum();
        if metadata_len > MAX_METADATA_LEN {
            return Err(ApiError::consumer_metadata_length(&format!(
                "{}KB",
                MAX_METADATA_LEN / 1024
            )));
        }
        if self.priority_policy != PriorityPolicy::None {
            if !self.is_pull() {
                return Err(ApiError::consumer_push_with_priority_group());
            }
            if self.priority_groups.is_empty() {
                return Err(ApiError::consumer_priority_policy_without_group());
            }
            for g in &self.priority_groups {
                if g.is_empty() {
                    return Err(ApiError::consumer_empty_group_name());
                }
                if !valid_group_name(g) {
                    return Err(ApiError::consumer_invalid_group_name());
                }
            }
        } else {
            if !self.priority_groups.is_empty() {
                return Err(ApiError::consumer_priority_group_with_policy_none());
            }
            if self.priority_timeout > 0 {
                return Err(ApiError::consumer_pinned_ttl_without_priority_policy());
            }
        }
        if self.num_replicas > 1 {
            return Err(ApiError::replicas_not_supported());
        }
        Ok(())
    }

    /// Checks the config for a consumer of a replicated stream with `stream_replicas`: it may
    /// ask for up to as many replicas as its stream has (it lives with the stream's group).
    pub fn validate_replicated(&self, stream_replicas: i64) -> Result<(), ApiError> {
        if self.num_replicas > stream_replicas {
            return Err(ApiError::consumer_replicas_exceed_stream());
        }
        let single = ConsumerConfig {
            num_replicas: 0,
            ..self.clone()
        };
        single.validate()
    }

    /// The subjects this consumer reads (empty means the whole stream).
    pub fn filters(&self) -> Vec<String> {
        match &self.filter_subject {
            Some(f) => vec![f.clone()],
            None => self.filter_subjects.clone(),
        }
    }

    pub fn ack_wait(&self) -> Duration {
        Duration::from_nanos(self.ack_wait.max(1) as u64)
    }

    /// The redelivery delay after the `n`-th delivery (1-based): backoff if set, else ack_wait.
    pub fn redelivery_delay(&self, n: u64) -> Duration {
        if self.backoff.is_empty() {
            return self.ack_wait();
        }
        let i = (n.max(1) - 1).min(self.backoff.len() as u64 - 1) as usize;
        Duration::from_nanos(self.backoff[i].max(1) as u64)
    }

    /// Whether an update from `self` to `new` is allowed.
    pub fn check_update(&self, new: &ConsumerConfig) -> Result<(), ApiError> {
        if self.deliver_policy != new.deliver_policy {
            return Err(ApiError::consumer_create(
                "deliver policy can not be updated",
            ));
        }
        if self.ack_policy != new.ack_policy {
            return Err(ApiError::consumer_create("ack policy can not be updated"));
        }
        if self.is_pull() != new.is_pull() {
            return Err(ApiError::consumer_create(
                "can not update push consumer to pull based",
            ));
        }
        if self.replay_policy != new.replay_policy {
            return Err(ApiError::consumer_create(
                "replay policy can not be updated",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let mut c: ConsumerConfig =
            serde_json::from_str(r#"{"durable_name":"d"}"#).expect("parses");
        c.normalize();
        c.validate().expect("valid");
        assert_eq!(c.ack_policy, AckPolicy::Explicit);
        assert_eq!(c.ack_wait, 30_000_000_000);
        assert_eq!(c.max_ack_pending, 1000);
        assert_eq!(c.max_waiting, 512);
        assert_eq!(c.max_deliver, -1);
        let v = serde_json::to_value(&c).expect("json");
        assert_eq!(v["deliver_policy"], "all");
        assert_eq!(v["ack_policy"], "explicit");
        assert_eq!(v["replay_policy"], "instant");
        assert_eq!(c.redelivery_delay(3), Duration::from_secs(30));
        let mut b: ConsumerConfig =
            serde_json::from_str(r#"{"backoff":[1000,2000],"max_deliver":5}"#).expect("parses");
        b.normalize();
        assert_eq!(b.redelivery_delay(1), Duration::from_nanos(1000));
        assert_eq!(b.redelivery_delay(9), Duration::from_nanos(2000));
    }

    #[test]
    fn validation() {
        let bad = |j: &str| {
            let mut c: ConsumerConfig = serde_json::from_str(j).expect("parses");
            c.normalize();
            c.validate().expect_err("invalid").err_code
        };
        assert_eq!(bad(r#"{"durable_name":"a.b"}"#), 10103);
        assert_eq!(
            bad(r#"{"filter_subject":"a","filter_subjects":["b"]}"#),
            10136
        );
        assert_eq!(bad(r#"{"filter_subjects":["a.>","a.b"]}"#), 10138);
        assert_eq!(bad(r#"{"deliver_policy":"by_start_sequence"}"#), 10012);
        assert_eq!(bad(r#"{"priority_policy":"pinned_client"}"#), 10159);
        assert_eq!(
            bad(r#"{"priority_policy":"overflow","priority_groups":["a.b"]}"#),
            10162
        );
        assert_eq!(
            bad(r#"{"priority_policy":"overflow","priority_groups":[""]}"#),
            10161
        );
        assert_eq!(bad(r#"{"priority_groups":["jobs"]}"#), 10196);
        assert_eq!(bad(r#"{"priority_timeout":1000}"#), 10197);
        assert_eq!(
            bad(r#"{"deliver_subject":"d","priority_policy":"overflow","priority_groups":["g"]}"#),
            10178
        );
        assert_eq!(bad(r#"{"rate_limit_bps":100}"#), 10086);
        assert_eq!(bad(r#"{"max_expires":1000}"#), 10115);
        assert_eq!(
            bad(r#"{"deliver_subject":"d","idle_heartbeat":1000}"#),
            10083
        );
    }

    #[test]
    fn limits_from_stream_and_account() {
        let stream = ConsumerLimits {
            inactive_threshold: 2_000_000_000,
            max_ack_pending: 50,
        };
        let mut c = ConsumerConfig::default();
        c.apply_limits(stream, 0);
        c.normalize();
        assert_eq!(
            (c.max_ack_pending, c.inactive_threshold),
            (50, 2_000_000_000)
        );
        let mut d = ConsumerConfig::default();
        d.apply_limits(ConsumerLimits::default(), 20);
        assert_eq!(d.max_ack_pending, 20);
        let over = ConsumerConfig {
            max_ack_pending: 60,
            ..ConsumerConfig::default()
        };
        assert_eq!(
            over.check_limits(stream, 0).expect_err("over").err_code,
            10121
        );
        assert_eq!(
            over.check_limits(ConsumerLimits::default(), 30)
                .expect_err("over")
                .description,
            "consumer max ack pending exceeds system limit of 30"
        );
        let idle = ConsumerConfig {
            inactive_threshold: 3_000_000_000,
            ..ConsumerConfig::default()
        };
        assert_eq!(
            idle.check_limits(stream, 0).expect_err("over").description,
            "consumer inactive threshold exceeds system limit of 2s"
        );
    }
}
