//! The configuration keys nats-server knows, block by block, taken from its option parser
//! (the 2.9 series and the current one, whose keys are a superset), and a check that reports
//! every other key as nats-server does: an error naming the file, line and column of the key,
//! in nats-server's words for that block. Keys nats-server knows that Natrium does not act on
//! yet are not errors here: `Options::apply_config` warns about those.
//!
//! As in nats-server, keys are compared in lower case, and a key that a `$variable` refers to is
//! a variable, not an unknown key.

use natrium_config::{Map, Spanned, Value};

/// A block of the configuration: the keys nats-server knows in it, how it words an unknown one,
/// and which keys hold blocks checked in turn.
pub(super) struct Block {
    keys: &'static [&'static str],
    unknown: Unknown,
    nested: &'static [(&'static str, Nested)],
}

/// nats-server's wording of an unknown key, which depends on the block.
#[derive(Clone, Copy)]
enum Unknown {
    Field,
    Tls,
    Permissions,
    SubjectPermissions,
    AccountLimits,
    AuthCallout,
}

impl Unknown {
    fn text(self, key: &str) -> String {
        match self {
            Unknown::Field => format!("unknown field {key:?}"),
            Unknown::Tls => format!("error parsing tls config, unknown field {key:?}"),
            Unknown::Permissions => format!("Unknown field {key:?} parsing permissions"),
            Unknown::SubjectPermissions => format!(
                "Unknown field name {key:?} parsing subject permissions, only 'allow' or 'deny' are permitted"
            ),
            Unknown::AccountLimits => format!("Unknown field {key:?} parsing account limits"),
            Unknown::AuthCallout => {
                format!("Unknown field {key:?} parsing authorization callout")
            }
        }
    }
}

/// What a key of a block holds, when it is checked further (only when it has that shape: a
/// `jetstream: enabled` is not a map, and is not looked into).
#[derive(Clone, Copy)]
enum Nested {
    /// A map that is a block.
    Map(&'static Block),
    /// An array of maps that are blocks (`users`, `exports`).
    Each(&'static Block),
    /// A map of named blocks (`accounts { A: {...} }`).
    Named(&'static Block),
}

/// The top level of a config file.
static TOP: Block = Block {
    keys: &[
        "listen",
        "client_advertise",
        "port",
        "server_name",
        "host",
        "net",
        "debug",
        "trace",
        "trace_verbose",
        "trace_headers",
        "logtime",
        "logtime_utc",
        "mappings",
        "maps",
        "disable_sublist_cache",
        "no_sublist_cache",
        "accounts",
        "default_sentinel",
        "authorization",
        "http",
        "https",
        "http_port",
        "monitor_port",
        "https_port",
        "http_base_path",
        "cluster",
        "gateway",
        "leaf",
        "leafnodes",
        "store_dir",
        "storedir",
        "jetstream",
        "logfile",
        "log_file",
        "logfile_size_limit",
        "log_size_limit",
        "logfile_max_num",
        "log_max_num",
        "syslog",
        "remote_syslog",
        "pidfile",
        "pid_file",
        "ports_file_dir",
        "prof_port",
        "prof_block_rate",
        "max_control_line",
        "max_payload",
        "max_pending",
        "proxy_protocol",
        "max_connections",
        "max_conn",
        "max_traced_msg_len",
        "max_subscriptions",
        "max_subs",
        "max_sub_tokens",
        "max_subscription_tokens",
        "ping_interval",
        "ping_max",
        "tls",
        "ocsp",
        "allow_non_tls",
        "write_deadline",
        "write_timeout",
        "lame_duck_duration",
        "lame_duck_grace_period",
        "operator",
        "operators",
        "roots",
        "root",
        "root_operators",
        "root_operator",
        "resolver",
        "account_resolver",
        "accounts_resolver",
        "resolver_tls",
        "resolver_preload",
        "resolver_pinned_accounts",
        "no_auth_user",
        "system_account",
        "system",
        "no_system_account",
        "no_system",
        "no_sys_acc",
        "no_header_support",
        "trusted",
        "trusted_keys",
        "connect_error_reports",
        "reconnect_error_reports",
        "websocket",
        "ws",
        "mqtt",
        "server_tags",
        "server_metadata",
        "feature_flags",
        "default_js_domain",
        "ocsp_cache",
        "no_fast_producer_stall",
        "max_closed_clients",
        "proxies",
        // Natrium's own (see `Options::max_unauthenticated_per_ip`).
        "max_unauthenticated_per_ip",
    ],
    unknown: Unknown::Field,
    nested: &[
        ("jetstream", Nested::Map(&JETSTREAM)),
        ("authorization", Nested::Map(&AUTHORIZATION)),
        ("accounts", Nested::Named(&ACCOUNT)),
        ("tls", Nested::Map(&TLS)),
        ("cluster", Nested::Map(&CLUSTER)),
        ("gateway", Nested::Map(&GATEWAY)),
        ("leaf", Nested::Map(&LEAFNODES)),
        ("leafnodes", Nested::Map(&LEAFNODES)),
        ("websocket", Nested::Map(&WEBSOCKET)),
        ("ws", Nested::Map(&WEBSOCKET)),
        ("mqtt", Nested::Map(&MQTT)),
    ],
};

static JETSTREAM: Block = Block {
    keys: &[
        "enabled",
        "enable",
        "strict",
        "store",
        "store_dir",
        "storedir",
        "sync",
        "sync_interval",
        "max_memory_store",
        "max_mem_store",
        "max_mem",
        "max_file_store",
        "max_file",
        "domain",
        "key",
        "ek",
        "encryption_key",
        "prev_key",
        "prev_ek",
        "prev_encryption_key",
        "cipher",
        "extension_hint",
        "limits",
        "tpm",
        "unique_tag",
        "max_outstanding_catchup",
        "max_buffered_size",
        "max_buffered_msgs",
        "request_queue_limit",
        "info_queue_limit",
        "meta_compact",
        "meta_compact_size",
        "meta_compact_sync",
        "max_concurrent_io",
    ],
    unknown: Unknown::Field,
    nested: &[],
};

static AUTHORIZATION: Block = Block {
    keys: &[
        "user",
        "username",
        "pass",
        "password",
        "token",
        "timeout",
        "users",
        "default_permission",
        "default_permissions",
        "permissions",
        "auth_callout",
        "auth_hook",
        "proxy_required",
    ],
    unknown: Unknown::Field,
    nested: &[
        ("users", Nested::Each(&USER)),
        ("default_permission", Nested::Map(&PERMISSIONS)),
        ("default_permissions", Nested::Map(&PERMISSIONS)),
        ("permissions", Nested::Map(&PERMISSIONS)),
        ("auth_callout", Nested::Map(&AUTH_CALLOUT)),
        ("auth_hook", Nested::Map(&AUTH_CALLOUT)),
    ],
};

static AUTH_CALLOUT: Block = Block {
    keys: &[
        "issuer",
        "account",
        "acc",
        "auth_users",
        "users",
        "xkey",
        "key",
        "allowed_accounts",
    ],
    unknown: Unknown::AuthCallout,
    nested: &[],
};

static USER: Block = Block {
    keys: &[
        "nkey",
        "user",
        "username",
        "pass",
        "password",
        "permission",
        "permissions",
        "authorization",
        "allowed_connection_types",
        "connection_types",
        "clients",
        "proxy_required",
    ],
    unknown: Unknown::Field,
    nested: &[
        ("permission", Nested::Map(&PERMISSIONS)),
        ("permissions", Nested::Map(&PERMISSIONS)),
        ("authorization", Nested::Map(&PERMISSIONS)),
    ],
};

static PERMISSIONS: Block = Block {
    keys: &[
        "pub",
        "publish",
        "import",
        "sub",
        "subscribe",
        "export",
        "publish_allow_responses",
        "allow_responses",
    ],
    unknown: Unknown::Permissions,
    nested: &[
        ("pub", Nested::Map(&SUBJECT_PERMISSION)),
        ("publish", Nested::Map(&SUBJECT_PERMISSION)),
        ("import", Nested::Map(&SUBJECT_PERMISSION)),
        ("sub", Nested::Map(&SUBJECT_PERMISSION)),
        ("subscribe", Nested::Map(&SUBJECT_PERMISSION)),
        ("export", Nested::Map(&SUBJECT_PERMISSION)),
        ("publish_allow_responses", Nested::Map(&RESPONSES)),
        ("allow_responses", Nested::Map(&RESPONSES)),
    ],
};

static SUBJECT_PERMISSION: Block = Block {
    keys: &["allow", "deny"],
    unknown: Unknown::SubjectPermissions,
    nested: &[],
};

static RESPONSES: Block = Block {
    keys: &[
        "max",
        "max_msgs",
        "max_messages",
        "max_responses",
        "expires",
        "expiration",
        "ttl",
    ],
    unknown: Unknown::Permissions,
    nested: &[],
};

static ACCOUNT: Block = Block {
    keys: &[
        "nkey",
        "imports",
        "exports",
        "jetstream",
        "users",
        "default_permissions",
        "mappings",
        "maps",
        "limits",
        "msg_trace",
        "trace_dest",
    ],
    unknown: Unknown::Field,
    nested: &[
        ("imports", Nested::Each(&IMPORT)),
        ("exports", Nested::Each(&EXPORT)),
        ("jetstream", Nested::Map(&ACCOUNT_JETSTREAM)),
        ("users", Nested::Each(&USER)),
        ("default_permissions", Nested::Map(&PERMISSIONS)),
        ("limits", Nested::Map(&ACCOUNT_LIMITS)),
    ],
};

static ACCOUNT_JETSTREAM: Block = Block {
    keys: &[
        "max_memory",
        "max_mem",
        "mem",
        "memory",
        "max_store",
        "max_file",
        "max_disk",
        "store",
        "disk",
        "max_streams",
        "streams",
        "max_consumers",
        "consumers",
        "max_bytes_required",
        "max_stream_bytes",
        "max_bytes",
        "mem_max_stream_bytes",
        "memory_max_stream_bytes",
        "disk_max_stream_bytes",
        "store_max_stream_bytes",
        "max_ack_pending",
        "cluster_traffic",
        "owner",
    ],
    unknown: Unknown::Field,
    nested: &[],
};

static ACCOUNT_LIMITS: Block = Block {
    keys: &[
        "max_connections",
        "max_conn",
        "max_subscriptions",
        "max_subs",
        "max_payload",
        "max_pay",
        "max_leafnodes",
        "max_leafs",
        // Natrium's own (nats-server has no rate limits): publish rates per account.
        "max_msgs_per_sec",
        "max_bytes_per_sec",
    ],
    unknown: Unknown::AccountLimits,
    nested: &[],
};

static EXPORT: Block = Block {
    keys: &[
        "stream",
        "service",
        "response",
        "response_type",
        "threshold",
        "response_threshold",
        "response_max_time",
        "response_time",
        "accounts",
        "latency",
        "account_token_position",
        "allow_trace",
    ],
    unknown: Unknown::Field,
    nested: &[],
};

static IMPORT: Block = Block {
    keys: &["stream", "service", "prefix", "to", "share", "allow_trace"],
    unknown: Unknown::Field,
    nested: &[
        ("stream", Nested::Map(&IMPORT_SOURCE)),
        ("service", Nested::Map(&IMPORT_SOURCE)),
    ],
};

static IMPORT_SOURCE: Block = Block {
    keys: &["account", "subject"],
    unknown: Unknown::Field,
    nested: &[],
};

static TLS: Block = Block {
    keys: &[
        "cert_file",
        "key_file",
        "ca_file",
        "insecure",
        "verify",
        "verify_and_map",
        "verify_cert_and_check_known_urls",
        "allow_insecure_cipher_suites",
        "cipher_suites",
        "curve_preferences",
        "timeout",
        "connection_rate_limit",
        "pinned_certs",
        "cert_store",
        "cert_match_by",
        "cert_match",
        "ca_certs_match",
        "handshake_first",
        "first",
        "immediate",
        "cert_match_skip_invalid",
        "ocsp_peer",
        "certs",
        "certificates",
        "min_version",
    ],
    unknown: Unknown::Tls,
    nested: &[],
};

// The blocks of features Natrium does not have yet: their keys are checked (a typo there is an
// error in nats-server too), their nested blocks are not.
static CLUSTER: Block = Block {
    keys: &[
        "name",
        "listen",
        "port",
        "host",
        "net",
        "authorization",
        "routes",
        "tls",
        "cluster_advertise",
        "advertise",
        "no_advertise",
        "connect_retries",
        "connect_backoff",
        "permissions",
        "pool_size",
        "accounts",
        "compression",
        "ping_interval",
        "ping_max",
        "write_deadline",
        "write_timeout",
    ],
    unknown: Unknown::Field,
    nested: &[],
};

static GATEWAY: Block = Block {
    keys: &[
        "name",
        "listen",
        "port",
        "host",
        "net",
        "authorization",
        "tls",
        "advertise",
        "connect_retries",
        "connect_backoff",
        "gateways",
        "reject_unknown",
        "reject_unknown_cluster",
        "write_deadline",
        "write_timeout",
    ],
    unknown: Unknown::Field,
    nested: &[],
};

static LEAFNODES: Block = Block {
    keys: &[
        "listen",
        "port",
        "host",
        "net",
        "authorization",
        "remotes",
        "reconnect",
        "reconnect_delay",
        "reconnect_interval",
        "dial_timeout",
        "tls",
        "leafnode_advertise",
        "advertise",
        "no_advertise",
        "min_version",
        "minimum_version",
        "compression",
        "isolate_leafnode_interest",
        "isolate",
        "write_deadline",
        "write_timeout",
    ],
    unknown: Unknown::Field,
    nested: &[],
};

static WEBSOCKET: Block = Block {
    keys: &[
        "listen",
        "port",
        "host",
        "net",
        "advertise",
        "no_tls",
        "tls",
        "same_origin",
        "allowed_origins",
        "allowed_origin",
        "allow_origins",
        "allow_origin",
        "origins",
        "origin",
        "handshake_timeout",
        "compress",
        "compression",
        "authorization",
        "authentication",
        "jwt_cookie",
        "user_cookie",
        "pass_cookie",
        "token_cookie",
        "no_auth_user",
        "headers",
        "ping_interval",
    ],
    unknown: Unknown::Field,
    nested: &[],
};

static MQTT: Block = Block {
    keys: &[
        "listen",
        "port",
        "host",
        "net",
        "tls",
        "authorization",
        "authentication",
        "no_auth_user",
        "ack_wait",
        "ackwait",
        "js_api_timeout",
        "api_timeout",
        "max_ack_pending",
        "max_pending",
        "max_inflight",
        "js_domain",
        "stream_replicas",
        "consumer_replicas",
        "consumer_memory_storage",
        "consumer_inactive_threshold",
        "consumer_auto_cleanup",
        "reject_qos2_publish",
        "downgrade_qos2_subscribe",
    ],
    unknown: Unknown::Field,
    nested: &[],
};

/// Every key of `map` (the top level of a config file) and of the blocks under it that
/// nats-server does not know, as nats-server reports them: `file:line:col: unknown field "x"`.
pub(super) fn unknown_keys(map: &Map) -> Vec<String> {
    let mut errors = Vec::new();
    check(map, &TOP, &mut errors);
    errors
}

fn check(map: &Map, block: &Block, errors: &mut Vec<String>) {
    for (key, pos, value) in map.entries() {
        let lower = key.to_ascii_lowercase();
        if !block.keys.contains(&lower.as_str()) {
            // A key that a `$variable` refers to is a variable.
            if !map.is_used_variable(key) {
                errors.push(format!("{pos}: {}", block.unknown.text(key)));
            }
            continue;
        }
        let Some((_, nested)) = block.nested.iter().find(|(k, _)| *k == lower) else {
            continue;
        };
        match (nested, &value.value) {
            (Nested::Map(b), Value::Map(m)) => check(m, b, errors),
            (Nested::Each(b), Value::Array(items)) => {
                for item in items {
                    if let Spanned {
                        value: Value::Map(m),
                        ..
                    } = item
                    {
                        check(m, b, errors);
                    }
                }
            }
            (Nested::Named(b), Value::Map(m)) => {
                for (_, _, named) in m.entries() {
                    if let Value::Map(inner) = &named.value {
                        check(inner, b, errors);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(src: &str) -> Vec<String> {
        unknown_keys(&natrium_config::parse_str(src).expect("parses"))
    }

    #[test]
    fn unknown_keys_at_every_level_in_nats_server_words() {
        let src = "port: 4222\nstore_dri: /x\njetstream {\n  store_dri: /y\n}\n\
                   authorization {\n  tokn: t\n  users: [ {user: a, pasword: b, permissions: {publish: {alow: x}, subscrbe: y}} ]\n}\n\
                   accounts {\n  A: { users: [], limts: {} , jetstream: {max_mem: 1, max_memm: 2}, exports: [{stream: x, acounts: [B]}] }\n}\n\
                   tls {\n  cert_fil: x\n}\ncluster {\n  prot: 1\n}\n";
        assert_eq!(
            errors(src),
            vec![
                "2:1: unknown field \"store_dri\"",
                "4:3: unknown field \"store_dri\"",
                "7:3: unknown field \"tokn\"",
                "8:22: unknown field \"pasword\"",
                "8:58: Unknown field name \"alow\" parsing subject permissions, only 'allow' or 'deny' are permitted",
                "8:68: Unknown field \"subscrbe\" parsing permissions",
                "11:19: unknown field \"limts\"",
                "11:55: unknown field \"max_memm\"",
                "11:91: unknown field \"acounts\"",
                "14:3: error parsing tls config, unknown field \"cert_fil\"",
                "17:3: unknown field \"prot\"",
            ]
        );
    }

    #[test]
    fn known_keys_any_case_and_used_variables_pass() {
        let src = "TOKEN: s3cr3t\nPORT: 4222\nListen: \"127.0.0.1:4222\"\nauthorization { token: $TOKEN }\n\
                   jetstream: enabled\naccounts: { A: { jetstream: enabled, users: [{nkey: UABC}] } }\n\
                   cluster { name: c, routes: [] }\nmax_unauthenticated_per_ip: 3\n";
        assert_eq!(errors(src), Vec::<String>::new());
        // A variable nothing refers to is an unknown key, as in nats-server.
        assert_eq!(errors("UNUSED: 1\n"), vec!["1:1: unknown field \"UNUSED\""]);
    }
}
