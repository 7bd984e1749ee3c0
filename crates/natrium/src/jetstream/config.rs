//! Stream configuration as the JetStream API carries it: nats-server's JSON field names and
//! defaults (`-1` for unlimited, durations in nanoseconds), validation with the API's errors, and
//! the mapping onto the store's limits.

use std::collections::BTreeMap;
use std::time::Duration;

use natrium_store::{Discard, Limits};
use serde::{Deserialize, Serialize};

use super::errors::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    #[default]
    Limits,
    Interest,
    #[serde(rename = "workqueue")]
    WorkQueue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    #[default]
    File,
    Memory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DiscardPolicy {
    #[default]
    Old,
    New,
}

const DEFAULT_DUPLICATE_WINDOW_NS: i64 = 120_000_000_000;

fn minus_one() -> i64 {
    -1
}
fn one() -> i64 {
    1
}
fn none_compression() -> String {
    "none".into()
}
fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `placement { cluster, tags }`: the cluster and the server tags a replicated stream's
/// servers must have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Placement {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// A stream's configuration, field for field as nats-server's `StreamConfig` JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamConfig {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub subjects: Vec<String>,
    #[serde(default)]
    pub retention: Retention,
    #[serde(default = "minus_one")]
    pub max_consumers: i64,
    #[serde(default = "minus_one")]
    pub max_msgs: i64,
    #[serde(default = "minus_one")]
    pub max_bytes: i64,
    #[serde(default)]
    pub max_age: i64,
    #[serde(default = "minus_one")]
    pub max_msgs_per_subject: i64,
    #[serde(default = "minus_one")]
    pub max_msg_size: i64,
    #[serde(default)]
    pub discard: DiscardPolicy,
    #[serde(default)]
    pub storage: Storage,
    #[serde(default = "one")]
    pub num_replicas: i64,
    /// 0 (absent) becomes 2 minutes, or `max_age` when that is shorter (see `normalize`).
    #[serde(default)]
    pub duplicate_window: i64,
    #[serde(default)]
    pub sealed: bool,
    #[serde(default)]
    pub deny_delete: bool,
    #[serde(default)]
    pub deny_purge: bool,
    #[serde(default)]
    pub allow_rollup_hdrs: bool,
    #[serde(default)]
    pub allow_direct: bool,
    #[serde(default)]
    pub mirror_direct: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub discard_new_per_subject: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_ack: bool,
    #[serde(default = "none_compression")]
    pub compression: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub first_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Where a replicated stream's replicas go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    #[serde(default)]
    pub consumer_limits: serde_json::Value,
}

impl StreamConfig {
    /// Fills defaults the way nats-server does before it stores a config.
    pub fn normalize(&mut self) {
        if self.subjects.is_empty() {
            self.subjects.push(self.name.clone());
        }
        if self.max_msgs == 0 {
            self.max_msgs = -1;
        }
        if self.max_bytes == 0 {
            self.max_bytes = -1;
        }
        if self.max_msgs_per_subject == 0 {
            self.max_msgs_per_subject = -1;
        }
        if self.max_msg_size == 0 {
            self.max_msg_size = -1;
        }
        if self.max_consumers == 0 {
            self.max_consumers = -1;
        }
        if self.num_replicas == 0 {
            self.num_replicas = 1;
        }
        if self.duplicate_window == 0 {
            self.duplicate_window =
                if self.max_age > 0 && self.max_age < DEFAULT_DUPLICATE_WINDOW_NS {
                    self.max_age
                } else {
                    DEFAULT_DUPLICATE_WINDOW_NS
                };
        }
        if self.compression.is_empty() {
            self.compression = "none".into();
        }
        if self.consumer_limits.is_null() {
            self.consumer_limits = serde_json::json!({});
        }
    }

    /// Checks the config as nats-server does for a standalone server.
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.num_replicas > 1 {
            return Err(ApiError::replicas_not_supported());
        }
        self.validate_clustered()
    }

    /// Checks the config as nats-server does in a JetStream cluster (1 to 5 replicas).
    pub fn validate_clustered(&self) -> Result<(), ApiError> {
        if self.name.is_empty() {
            return Err(ApiError::invalid_config("stream name is required"));
        }
        if self.name.contains(['/', '\\']) {
            return Err(ApiError::name_has_path_separators());
        }
        if self.name.contains(['.', '*', '>', ' ', '\t', '\r', '\n']) || self.name.len() > 255 {
            return Err(ApiError::invalid_config("invalid stream name"));
        }
        if self.num_replicas < 0 || self.num_replicas > 5 {
            return Err(ApiError::invalid_config("replicas > 5 not supported"));
        }
        if self.max_age < 0 {
            return Err(ApiError::invalid_config("max age needs to be >= 0"));
        }
        if self.duplicate_window < 0 {
            return Err(ApiError::invalid_config(
                "duplicates window can not be negative",
            ));
        }
        if self.max_age > 0 && self.duplicate_window > self.max_age {
            return Err(ApiError::invalid_config(
                "duplicates window can not be larger then max age",
            ));
        }
        if self.compression != "none" && self.compression != "s2" {
            return Err(ApiError::invalid_config(format!(
                "invalid compression {:?}",
                self.compression
            )));
        }
        for (i, s) in self.subjects.iter().enumerate() {
            if !natrium_subjects::is_valid_subject(s.as_bytes()) {
                return Err(ApiError::invalid_config(format!("invalid subject {s:?}")));
            }
            if !self.no_ack && natrium_subjects::overlaps(s.as_bytes(), b"$JS.API.>") {
                return Err(ApiError::invalid_config(
                    "subjects that overlap with jetstream api require no-ack to be true",
                ));
            }
            if self.subjects[..i]
                .iter()
                .any(|o| natrium_subjects::overlaps(o.as_bytes(), s.as_bytes()))
            {
                return Err(ApiError::invalid_config("duplicate subjects detected"));
            }
        }
        if self.discard_new_per_subject
            && (self.discard != DiscardPolicy::New || self.max_msgs_per_subject <= 0)
        {
            return Err(ApiError::invalid_config(
                "discard new per subject requires discard new policy and max msgs per subject to be set",
            ));
        }
        Ok(())
    }

    pub fn max_age(&self) -> Duration {
        Duration::from_nanos(self.max_age.max(0) as u64)
    }

    pub fn duplicate_window(&self) -> Duration {
        Duration::from_nanos(self.duplicate_window.max(0) as u64)
    }

    /// The limits the store enforces.
    pub fn limits(&self) -> Limits {
        Limits {
            max_msgs: self.max_msgs,
            max_bytes: self.max_bytes,
            max_age: self.max_age(),
            max_msgs_per_subject: self.max_msgs_per_subject,
            max_msg_size: self.max_msg_size,
            discard: match self.discard {
                DiscardPolicy::Old => Discard::Old,
                DiscardPolicy::New => Discard::New,
            },
            discard_new_per_subject: self.discard_new_per_subject,
        }
    }

    /// Whether an update from `self` to `new` is allowed, as nats-server checks it.
    pub fn check_update(&self, new: &StreamConfig) -> Result<(), ApiError> {
        if new.storage != self.storage {
            return Err(ApiError::update_failed(
                "stream configuration update can not change storage type",
            ));
        }
        if new.retention != self.retention {
            return Err(ApiError::update_failed(
                "stream configuration update can not change retention policy",
            ));
        }
        if new.num_replicas != self.num_replicas {
            return Err(ApiError::replicas_not_updatable());
        }
        if self.sealed && !new.sealed {
            return Err(ApiError::update_failed(
                "stream configuration update can not unseal a sealed stream",
            ));
        }
        if self.deny_delete && !new.deny_delete {
            return Err(ApiError::update_failed(
                "stream configuration update can not cancel deny message deletes",
            ));
        }
        if self.deny_purge && !new.deny_purge {
            return Err(ApiError::update_failed(
                "stream configuration update can not cancel deny purge",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_nats_server() {
        let mut c: StreamConfig = serde_json::from_str(r#"{"name":"ORDERS"}"#).expect("parses");
        c.normalize();
        c.validate().expect("valid");
        assert_eq!(c.subjects, vec!["ORDERS"]);
        assert_eq!(c.max_msgs, -1);
        assert_eq!(c.duplicate_window, 120_000_000_000);
        // Without a duplicate window, a shorter max_age bounds it (nats.js KV buckets with a TTL).
        let mut c: StreamConfig =
            serde_json::from_str(r#"{"name":"KV_b","max_age":60000000000}"#).expect("parses");
        c.normalize();
        c.validate().expect("valid");
        assert_eq!(c.duplicate_window, 60_000_000_000);
        let mut c: StreamConfig = serde_json::from_str(r#"{"name":"ORDERS"}"#).expect("parses");
        c.normalize();
        let json = serde_json::to_value(&c).expect("serializes");
        assert_eq!(json["retention"], "limits");
        assert_eq!(json["storage"], "file");
        assert_eq!(json["discard"], "old");
        assert_eq!(json["num_replicas"], 1);
        assert_eq!(json["compression"], "none");
    }

    #[test]
    fn validation() {
        let bad = |j: &str| {
            let mut c: StreamConfig = serde_json::from_str(j).expect("parses");
            c.normalize();
            c.validate().expect_err("invalid")
        };
        assert_eq!(bad(r#"{"name":"a.b"}"#).err_code, 10052);
        assert_eq!(bad(r#"{"name":"a/b"}"#).err_code, 10128);
        assert_eq!(bad(r#"{"name":"x","num_replicas":3}"#).err_code, 10074);
        assert_eq!(
            bad(r#"{"name":"x","subjects":["a.>","a.b"]}"#).err_code,
            10052
        );
        assert_eq!(bad(r#"{"name":"x","subjects":["a..b"]}"#).err_code, 10052);
        assert_eq!(bad(r#"{"name":""}"#).err_code, 10052);
    }
}
