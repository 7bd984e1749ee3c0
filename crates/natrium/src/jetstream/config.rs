//! Stream configuration as the JetStream API carries it: nats-server's JSON field names and
//! defaults (`-1` for unlimited, durations in nanoseconds), validation with the API's errors, and
//! the mapping onto the store's limits.

use std::collections::BTreeMap;
use std::time::Duration;

use natrium_store::{Discard, Limits};
use natrium_subjects::SubjectTransform;
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
fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

/// `subject_transform` (and a source's `subject_transforms` entries): nats-server's
/// `SubjectTransformConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SubjectTransformConfig {
    #[serde(default)]
    pub src: String,
    #[serde(default)]
    pub dest: String,
}

/// `republish`: stored messages matching `src` are published again on `dest` (transformed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RePublish {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub src: String,
    pub dest: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub headers_only: bool,
}

/// `external`: where a source or mirror in another account or domain is reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ExternalStream {
    #[serde(default)]
    pub api: String,
    #[serde(default)]
    pub deliver: String,
}

/// A stream's `mirror` or one of its `sources`: nats-server's `StreamSource`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StreamSource {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub opt_start_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_start_time: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub filter_subject: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_transforms: Vec<SubjectTransformConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalStream>,
    /// Some clients send the origin's JetStream domain; it stands for `external.api`
    /// `$JS.<domain>.API` (taken into `external` by `normalize`, never written back).
    #[serde(default, skip_serializing)]
    pub domain: Option<String>,
}

impl StreamSource {
    /// nats-server's index name: the stream (with a hash of the external API prefix), the
    /// filters and the destinations; what `Nats-Stream-Source` headers name a source by.
    pub fn index_name(&self) -> String {
        let mut name = self.name.clone();
        if let Some(ext) = &self.external {
            name.push(':');
            name.push_str(&short_hash(&ext.api));
        }
        let or_all = |s: &str| {
            if s.is_empty() {
                ">".to_string()
            } else {
                s.to_string()
            }
        };
        let (src, dest) = if self.subject_transforms.is_empty() {
            (or_all(&self.filter_subject), ">".to_string())
        } else {
            let srcs: Vec<String> = self
                .subject_transforms
                .iter()
                .map(|t| or_all(&t.src))
                .collect();
            let dests: Vec<String> = self
                .subject_transforms
                .iter()
                .map(|t| or_all(&t.dest))
                .collect();
            (srcs.join("\x0c"), dests.join("\x0c"))
        };
        format!("{name} {src} {dest}")
    }

    /// The subjects the origin consumer filters on.
    pub fn filters(&self) -> Vec<String> {
        if !self.filter_subject.is_empty() {
            return vec![self.filter_subject.clone()];
        }
        self.subject_transforms
            .iter()
            .map(|t| {
                if t.src.is_empty() {
                    ">".to_string()
                } else {
                    t.src.clone()
                }
            })
            .collect()
    }

    /// The compiled transforms, in order (a filter without a destination maps to itself).
    pub fn transforms(&self) -> Vec<SubjectTransform> {
        self.subject_transforms
            .iter()
            .filter_map(|t| SubjectTransform::new(&t.src, &t.dest).ok().flatten())
            .collect()
    }

    /// The API prefix requests for the origin go to (`$JS.API` for the own account).
    pub fn api_prefix(&self) -> String {
        match &self.external {
            Some(e) if !e.api.is_empty() => e.api.trim_end_matches('.').to_string(),
            _ => "$JS.API".to_string(),
        }
    }
}

/// nats-server's `getHash`: SHA-256, URL-safe base64 without padding, first 8 characters.
pub(crate) fn short_hash(s: &str) -> String {
    use base64::Engine as _;
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d.as_ref());
    b.chars().take(8).collect()
}

/// `persist_mode`: `default` (PubAck after the fsync) or `async` (PubAck on write).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PersistMode {
    #[default]
    #[serde(alias = "")]
    Default,
    Async,
}

impl PersistMode {
    fn is_default(&self) -> bool {
        *self == PersistMode::Default
    }
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
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<StreamSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<StreamSource>>,
    #[serde(default = "none_compression")]
    pub compression: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub first_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_transform: Option<SubjectTransformConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub republish: Option<RePublish>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Where a replicated stream's replicas go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    #[serde(default)]
    pub consumer_limits: serde_json::Value,
    /// Per-message TTLs (`Nats-TTL`).
    #[serde(default)]
    pub allow_msg_ttl: bool,
    /// TTL of the markers left when max age removes a subject's last message (ns).
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub subject_delete_marker_ttl: i64,
    /// Counters (`Nats-Incr`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_msg_counter: bool,
    /// Atomic batch publish (`Nats-Batch-Id`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_atomic: bool,
    /// Message schedules (`Nats-Schedule`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_msg_schedules: bool,
    #[serde(default, skip_serializing_if = "PersistMode::is_default")]
    pub persist_mode: PersistMode,
}

impl StreamConfig {
    /// Fills defaults the way nats-server does before it stores a config.
    pub fn normalize(&mut self) {
        if self.sources.as_ref().is_some_and(Vec::is_empty) {
            self.sources = None;
        }
        let domain_api = |s: &mut StreamSource| {
            if let Some(d) = s.domain.take().filter(|d| !d.is_empty()) {
                if s.external.is_none() {
                    s.external = Some(ExternalStream {
                        api: format!("$JS.{d}.API"),
                        deliver: String::new(),
                    });
                }
            }
        };
        if let Some(m) = self.mirror.as_mut() {
            domain_api(m);
        }
        for s in self.sources.iter_mut().flatten() {
            domain_api(s);
        }
        if self.subjects.is_empty() && self.mirror.is_none() && self.sources.is_none() {
            self.subjects.push(self.name.clone());
        }
        if self.max_msgs == 0 || self.max_msgs < -1 {
            self.max_msgs = -1;
        }
        if self.max_bytes == 0 || self.max_bytes < -1 {
            self.max_bytes = -1;
        }
        if self.max_msgs_per_subject == 0 || self.max_msgs_per_subject < -1 {
            self.max_msgs_per_subject = -1;
        }
        if self.max_msg_size == 0 || self.max_msg_size < -1 {
            self.max_msg_size = -1;
        }
        if self.max_consumers == 0 || self.max_consumers < -1 {
            self.max_consumers = -1;
        }
        if self.num_replicas == 0 {
            self.num_replicas = 1;
        }
        if self.duplicate_window == 0 && self.mirror.is_none() {
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
        // Markers need TTLs and roll-ups, schedules roll-ups: nats-server turns them on.
        if self.subject_delete_marker_ttl > 0 {
            self.allow_msg_ttl = true;
            if !self.allow_rollup_hdrs {
                self.allow_rollup_hdrs = true;
                self.deny_purge = false;
            }
        }
        if self.allow_msg_schedules && !self.allow_rollup_hdrs {
            self.allow_rollup_hdrs = true;
            self.deny_purge = false;
        }
        if let Some(rp) = self.republish.as_mut() {
            if rp.src.is_empty() {
                rp.src = ">".into();
            }
            // `>` to `>` with a transform of the only subject republishes the transformed subject.
            if let Some(tr) = &self.subject_transform {
                if rp.src == ">"
                    && rp.dest == ">"
                    && self.subjects.len() == 1
                    && self.subjects.first() == Some(&tr.src)
                {
                    rp.src = tr.dest.clone();
                    rp.dest = tr.dest.clone();
                }
            }
        }
    }

    /// Checks the config as nats-server does for a standalone server (what needs the other
    /// streams is in `check_origins`).
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.num_replicas > 1 {
            return Err(ApiError::replicas_not_supported());
        }
        self.validate_clustered()
    }

    /// Checks the config as nats-server does in a JetStream cluster (1 to 5 replicas).
    pub fn validate_clustered(&self) -> Result<(), ApiError> {
        let invalid = ApiError::invalid_config;
        if self.name.is_empty() {
            return Err(invalid("stream name is required"));
        }
        if self.name.contains(['/', '\\']) {
            return Err(ApiError::name_has_path_separators());
        }
        if self.name.contains(['.', '*', '>', ' ', '\t', '\r', '\n']) || self.name.len() > 255 {
            return Err(invalid("invalid stream name"));
        }
        if self
            .description
            .as_ref()
            .is_some_and(|d| d.len() > 4 * 1024)
        {
            return Err(invalid(
                "stream description is too long, maximum allowed is 4096",
            ));
        }
        let metadata_len: usize = self
            .metadata
            .iter()
            .flatten()
            .map(|(k, v)| k.len() + v.len())
            .sum();
        if metadata_len > 128 * 1024 {
            return Err(invalid(
                "stream metadata exceeds maximum size of 131072 bytes",
            ));
        }
        if self.num_replicas < 0 || self.num_replicas > 5 {
            return Err(invalid("replicas > 5 not supported"));
        }
        if self.max_age < 0 {
            return Err(invalid("max age can not be negative"));
        }
        if self.max_age != 0 && self.max_age < 100_000_000 {
            return Err(invalid("max age needs to be >= 100ms"));
        }
        if self.duplicate_window < 0 {
            return Err(invalid("duplicates window can not be negative"));
        }
        if self.max_age > 0 && self.duplicate_window > self.max_age {
            return Err(invalid("duplicates window can not be larger then max age"));
        }
        if self.duplicate_window > 0 && self.duplicate_window < 100_000_000 {
            return Err(invalid("duplicates window needs to be >= 100ms"));
        }
        if self.deny_purge && self.allow_rollup_hdrs {
            return Err(invalid("roll-ups require the purge permission"));
        }
        if self.allow_msg_counter {
            if self.discard == DiscardPolicy::New {
                return Err(invalid("counter stream cannot use discard new"));
            }
            if self.allow_msg_ttl {
                return Err(invalid("counter stream cannot use message TTLs"));
            }
            if self.retention != Retention::Limits {
                return Err(invalid("counter stream can only use limits retention"));
            }
        }
        if self.discard_new_per_subject {
            if self.discard != DiscardPolicy::New {
                return Err(invalid(
                    "discard new per subject requires discard new policy to be set",
                ));
            }
            if self.max_msgs_per_subject <= 0 {
                return Err(invalid(
                    "discard new per subject requires max msgs per subject > 0",
                ));
            }
        }
        if self.subject_delete_marker_ttl > 0 && self.subject_delete_marker_ttl < 1_000_000_000 {
            return Err(invalid(
                "subject delete marker TTL must be at least 1 second",
            ));
        }
        if self.subject_delete_marker_ttl < 0 {
            return Err(invalid("subject delete marker TTL must not be negative"));
        }
        if self.persist_mode == PersistMode::Async {
            if self.storage != Storage::File {
                return Err(invalid(
                    "async persist mode is only supported on file storage",
                ));
            }
            if self.allow_atomic {
                return Err(invalid(
                    "async persist mode is not supported with atomic batch publish",
                ));
            }
        }
        if self.compression != "none" && self.compression != "s2" {
            return Err(invalid("invalid compression"));
        }
        if let Some(m) = &self.mirror {
            self.validate_mirror(m)?;
        }
        self.validate_sources()?;
        self.validate_subjects()?;
        if self.subjects.is_empty() && self.sources.is_none() && self.mirror.is_none() {
            return Err(invalid(
                "stream needs at least one configured subject or be a source/mirror",
            ));
        }
        if let Some(tr) = &self.subject_transform {
            if !tr.src.is_empty() && !natrium_subjects::is_valid_subject(tr.src.as_bytes()) {
                return Err(ApiError::stream_transform_invalid_source(format!(
                    "invalid subject {}",
                    tr.src
                )));
            }
            natrium_subjects::validate_mapping(&tr.src, &tr.dest)
                .map_err(|e| ApiError::stream_transform_invalid_destination(e.to_string()))?;
        }
        if let Some(rp) = &self.republish {
            if self
                .subjects
                .iter()
                .any(|s| natrium_subjects::overlaps(rp.dest.as_bytes(), s.as_bytes()))
            {
                return Err(invalid(
                    "stream configuration for republish destination forms a cycle",
                ));
            }
            if !matches!(SubjectTransform::new(&rp.src, &rp.dest), Ok(Some(_))) {
                return Err(ApiError::invalid_config(format!(
                    "stream configuration for republish with transform from '{}' to '{}' not valid",
                    rp.src, rp.dest
                )));
            }
        }
        Ok(())
    }

    fn validate_mirror(&self, m: &StreamSource) -> Result<(), ApiError> {
        if self.first_seq > 0 {
            return Err(ApiError::mirror_with_first_seq());
        }
        if !self.subjects.is_empty() {
            return Err(ApiError::mirror_with_subjects());
        }
        if self.sources.is_some() {
            return Err(ApiError::mirror_with_sources());
        }
        if self.allow_msg_counter {
            return Err(ApiError::mirror_with_counters());
        }
        if self.allow_atomic {
            return Err(ApiError::mirror_with_atomic_publish());
        }
        if self.allow_msg_schedules {
            return Err(ApiError::mirror_with_msg_schedules());
        }
        if !m.filter_subject.is_empty() && !m.subject_transforms.is_empty() {
            return Err(ApiError::mirror_multiple_filters());
        }
        if self.subject_delete_marker_ttl > 0 {
            return Err(ApiError::invalid_config(
                "subject delete markers forbidden on mirrors",
            ));
        }
        if m.opt_start_seq > 0 && m.opt_start_time.is_some() {
            return Err(ApiError::mirror_with_start_seq_and_time());
        }
        for (i, tr) in m.subject_transforms.iter().enumerate() {
            if !tr.src.is_empty() && !natrium_subjects::is_valid_subject(tr.src.as_bytes()) {
                return Err(ApiError::mirror_invalid_subject_filter(format!(
                    "invalid subject {}",
                    tr.src
                )));
            }
            natrium_subjects::validate_mapping(&tr.src, &tr.dest)
                .map_err(|e| ApiError::mirror_invalid_transform_destination(e.to_string()))?;
            let overlaps = m.subject_transforms.iter().enumerate().any(|(j, o)| {
                j != i && natrium_subjects::overlaps(or_all(&tr.src), or_all(&o.src))
            });
            if overlaps {
                return Err(ApiError::mirror_overlapping_filters());
            }
        }
        if m.external.is_none() && !valid_asset_name(&m.name) {
            return Err(ApiError::mirror_invalid_stream_name());
        }
        if let Some(ext) = &m.external {
            check_external(ext)?;
        }
        Ok(())
    }

    fn validate_sources(&self) -> Result<(), ApiError> {
        let Some(sources) = &self.sources else {
            return Ok(());
        };
        if self.allow_msg_schedules {
            return Err(ApiError::source_with_msg_schedules());
        }
        let mut seen = std::collections::HashSet::new();
        for src in sources {
            if !valid_asset_name(&src.name) {
                return Err(ApiError::source_invalid_stream_name());
            }
            if !seen.insert(src.index_name()) {
                return Err(ApiError::source_duplicate_detected());
            }
            if !src.filter_subject.is_empty() && !src.subject_transforms.is_empty() {
                return Err(ApiError::source_multiple_filters());
            }
            for tr in &src.subject_transforms {
                if !tr.src.is_empty() && !natrium_subjects::is_valid_subject(tr.src.as_bytes()) {
                    return Err(ApiError::source_invalid_subject_filter(format!(
                        "invalid subject {}",
                        tr.src
                    )));
                }
                natrium_subjects::validate_mapping(&tr.src, &tr.dest)
                    .map_err(|e| ApiError::source_invalid_transform_destination(e.to_string()))?;
            }
            for (i, a) in src.subject_transforms.iter().enumerate() {
                for (j, b) in src.subject_transforms.iter().enumerate() {
                    if i != j && natrium_subjects::is_subset(or_all(&a.src), or_all(&b.src)) {
                        return Err(ApiError::source_overlapping_filters());
                    }
                }
            }
            if let Some(ext) = &src.external {
                check_external(ext)?;
            }
        }
        Ok(())
    }

    fn validate_subjects(&self) -> Result<(), ApiError> {
        let invalid = ApiError::invalid_config;
        if !self.subjects.is_empty() && self.mirror.is_some() {
            return Err(ApiError::mirror_with_subjects());
        }
        for (i, s) in self.subjects.iter().enumerate() {
            if !natrium_subjects::is_valid_subject(s.as_bytes()) {
                return Err(invalid("invalid subject"));
            }
            if self.subjects[..i].contains(s) {
                return Err(invalid("duplicate subjects detected"));
            }
            if s == ">" && !self.no_ack {
                return Err(invalid("capturing all subjects requires no-ack to be true"));
            }
            if !self.no_ack {
                for ns in ["$JS.>", "$JSC.>", "$NRG.>"] {
                    if natrium_subjects::overlaps(s.as_bytes(), ns.as_bytes())
                        && !natrium_subjects::is_subset(s.as_bytes(), b"$JS.EVENT.>")
                    {
                        return Err(invalid(
                            "subjects that overlap with jetstream api require no-ack to be true",
                        ));
                    }
                }
                if natrium_subjects::overlaps(s.as_bytes(), b"$SYS.>")
                    && !natrium_subjects::is_subset(s.as_bytes(), b"$SYS.ACCOUNT.>")
                {
                    return Err(invalid(
                        "subjects that overlap with system api require no-ack to be true",
                    ));
                }
            }
            if let Some(o) = self.subjects[i + 1..]
                .iter()
                .find(|o| natrium_subjects::overlaps(o.as_bytes(), s.as_bytes()))
            {
                return Err(ApiError::invalid_config(format!(
                    "subject {s:?} overlaps with {o:?}"
                )));
            }
        }
        Ok(())
    }

    /// The checks that need the account's other streams (`lookup` gives a stream's config):
    /// message sizes against the origins, a mirror's direct gets, and cycles of sources and
    /// mirrors. May set `mirror_direct` from the origin, as nats-server does.
    pub fn check_origins(
        &mut self,
        lookup: &dyn Fn(&str) -> Option<StreamConfig>,
    ) -> Result<(), ApiError> {
        if let Some(m) = self.mirror.clone().filter(|m| m.external.is_none()) {
            if let Some(o) = lookup(&m.name) {
                if self.max_msg_size > 0 && o.max_msg_size > 0 && self.max_msg_size < o.max_msg_size
                {
                    return Err(ApiError::mirror_max_message_size_too_big());
                }
                self.mirror_direct = o.allow_direct;
            }
        }
        for src in self
            .sources
            .iter()
            .flatten()
            .filter(|s| s.external.is_none())
        {
            if let Some(o) = lookup(&src.name) {
                if self.max_msg_size > 0 && o.max_msg_size > 0 && self.max_msg_size < o.max_msg_size
                {
                    return Err(ApiError::source_max_message_size_too_big());
                }
            }
        }
        // Walk what this stream takes from; coming back to a visited stream is a cycle.
        let mut to_visit = vec![self.clone()];
        let mut visited = std::collections::HashSet::new();
        while let Some(cfg) = to_visit.pop() {
            visited.insert(cfg.name.clone());
            for src in cfg
                .sources
                .iter()
                .flatten()
                .filter(|s| s.external.is_none())
            {
                if visited.contains(&src.name) {
                    let overlaps = src.filter_subject.is_empty()
                        || cfg.subjects.iter().any(|s| {
                            natrium_subjects::overlaps(s.as_bytes(), src.filter_subject.as_bytes())
                        });
                    if overlaps {
                        return Err(ApiError::invalid_config("detected cycle"));
                    }
                } else if let Some(o) = lookup(&src.name) {
                    to_visit.push(o);
                }
            }
            if let Some(m) = cfg.mirror.as_ref().filter(|m| m.external.is_none()) {
                if visited.contains(&m.name) {
                    return Err(ApiError::invalid_config("detected cycle"));
                }
                if let Some(o) = lookup(&m.name) {
                    to_visit.push(o);
                }
            }
        }
        Ok(())
    }

    /// The compiled `subject_transform`, if any.
    pub fn input_transform(&self) -> Option<SubjectTransform> {
        let tr = self.subject_transform.as_ref()?;
        SubjectTransform::new(&tr.src, &tr.dest).ok().flatten()
    }

    /// The compiled `republish` transform, if any.
    pub fn republish_transform(&self) -> Option<SubjectTransform> {
        let rp = self.republish.as_ref()?;
        SubjectTransform::new(&rp.src, &rp.dest).ok().flatten()
    }

    /// Whether PubAcks may leave before the fsync (`persist_mode: async`).
    pub fn async_persist(&self) -> bool {
        self.persist_mode == PersistMode::Async
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
        // A mirror can not change, but removing it promotes the mirror to a normal stream.
        if new.mirror.is_some() && new.mirror != self.mirror {
            return Err(ApiError::mirror_not_updatable());
        }
        let invalid = ApiError::invalid_config;
        if self.allow_msg_ttl && !new.allow_msg_ttl {
            return Err(invalid("message TTL status can not be disabled"));
        }
        if self.allow_msg_counter != new.allow_msg_counter {
            return Err(invalid(
                "stream configuration update can not change message counter setting",
            ));
        }
        if self.allow_msg_schedules && !new.allow_msg_schedules {
            return Err(invalid("message schedules can not be disabled"));
        }
        if self.persist_mode != new.persist_mode {
            return Err(invalid(
                "stream configuration update can not change persist mode",
            ));
        }
        Ok(())
    }
}

fn or_all(s: &str) -> &[u8] {
    if s.is_empty() {
        b">"
    } else {
        s.as_bytes()
    }
}

/// nats-server's `isValidAssetName`.
fn valid_asset_name(n: &str) -> bool {
    !n.is_empty() && !n.contains(['.', '*', '>', ' ', '\t', '\r', '\n', '/', '\\'])
}

fn check_external(ext: &ExternalStream) -> Result<(), ApiError> {
    if !ext.deliver.is_empty()
        && !natrium_subjects::is_valid_publish_subject(ext.deliver.as_bytes())
    {
        return Err(ApiError::external_delivery_subject_invalid(&ext.deliver));
    }
    if !ext.api.is_empty() {
        if !natrium_subjects::is_valid_publish_subject(ext.api.as_bytes()) {
            return Err(ApiError::invalid_config(format!(
                "stream external api prefix {:?} must be a valid subject without wildcards",
                ext.api
            )));
        }
        if natrium_subjects::overlaps(ext.api.as_bytes(), b"$JS.API") {
            return Err(ApiError::external_api_overlap(&ext.api, "$JS.API"));
        }
    }
    Ok(())
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

    #[test]
    fn new_fields_round_trip_and_default_as_nats_server() {
        let mut c: StreamConfig = serde_json::from_str(
            r#"{"name":"M","mirror":{"name":"O","domain":"hub"},"persist_mode":"async",
                "metadata":{"a":"b"},"subject_delete_marker_ttl":5000000000}"#,
        )
        .expect("parses");
        c.normalize();
        assert!(c.subjects.is_empty(), "a mirror gets no default subject");
        assert_eq!(c.duplicate_window, 0, "nor a duplicate window");
        let ext = c
            .mirror
            .as_ref()
            .and_then(|m| m.external.as_ref())
            .expect("external");
        assert_eq!(ext.api, "$JS.hub.API");
        assert!(
            c.allow_msg_ttl && c.allow_rollup_hdrs,
            "markers turn them on"
        );
        let json = serde_json::to_value(&c).expect("serializes");
        assert_eq!(json["persist_mode"], "async");
        assert!(json["mirror"].get("domain").is_none());
        assert!(json.get("subjects").is_none());
        assert!(
            json.get("allow_msg_counter").is_none(),
            "omitted when false"
        );
        assert_eq!(json["allow_msg_ttl"], true, "always written");
        let back: StreamConfig = serde_json::from_value(json).expect("reads back");
        assert_eq!(back, c);
    }

    #[test]
    fn source_index_names_are_nats_servers() {
        let s: StreamSource = serde_json::from_str(r#"{"name":"O"}"#).expect("parses");
        assert_eq!(s.index_name(), "O > >");
        let s: StreamSource =
            serde_json::from_str(r#"{"name":"O","filter_subject":"a.*"}"#).expect("parses");
        assert_eq!(s.index_name(), "O a.* >");
        let s: StreamSource = serde_json::from_str(
            r#"{"name":"O","subject_transforms":[{"src":"a.*","dest":"b.$1"},{"src":"c","dest":""}]}"#,
        )
        .expect("parses");
        assert_eq!(s.index_name(), "O a.*\x0cc b.$1\x0c>");
        assert_eq!(short_hash("$JS.hub.API").len(), 8);
    }

    #[test]
    fn mirror_and_source_rules() {
        let bad = |j: &str| {
            let mut c: StreamConfig = serde_json::from_str(j).expect("parses");
            c.normalize();
            c.validate().expect_err("invalid").err_code
        };
        assert_eq!(
            bad(r#"{"name":"M","mirror":{"name":"O"},"allow_msg_counter":true}"#),
            10173
        );
        assert_eq!(
            bad(r#"{"name":"M","mirror":{"name":"O"},"allow_atomic":true}"#),
            10198
        );
        assert_eq!(bad(r#"{"name":"M","mirror":{"name":"a.b"}}"#), 10142);
        assert_eq!(
            bad(r#"{"name":"S","sources":[{"name":"O"}],"allow_msg_schedules":true}"#),
            10187
        );
        assert_eq!(
            bad(
                r#"{"name":"S","sources":[{"name":"O","subject_transforms":[{"src":"a.>","dest":"x.>"},{"src":"a.b","dest":"y"}]}]}"#
            ),
            10147
        );
        let mut no_subjects: StreamConfig =
            serde_json::from_str(r#"{"name":"S","sources":[{"name":"O"}]}"#).expect("parses");
        no_subjects.normalize();
        no_subjects
            .validate()
            .expect("a source-only stream needs no subjects");
        let mut old: StreamConfig =
            serde_json::from_str(r#"{"name":"M","mirror":{"name":"O"}}"#).expect("parses");
        old.normalize();
        let mut promoted = old.clone();
        promoted.mirror = None;
        promoted.subjects = vec!["m".into()];
        old.check_update(&promoted).expect("promotion is allowed");
        let mut other = old.clone();
        other.mirror = Some(StreamSource {
            name: "P".into(),
            ..StreamSource::default()
        });
        assert_eq!(old.check_update(&other).expect_err("no").err_code, 10055);
    }
}
