//! Natrium's integration tests, one binary: servers started in-process (or the `natrium`
//! binary) on random loopback ports, driven by real clients (async-nats, raw sockets, nats-py
//! and nats.js where installed). One module per area; `common` holds the harness.

mod common;

mod accounts;
mod auth;
mod binary;
mod callout;
mod cluster;
mod config_cli;
mod consumers;
mod deploy;
mod durability;
mod faults;
mod flood;
mod internal;
mod jetstream;
mod js_direct;
mod js_info;
mod js_limits;
mod js_nats_py;
mod js_publish;
mod js_pull;
mod js_rparity;
mod js_sources;
mod js_transform;
mod js_ttl;
mod jwt;
mod jwt_imports;
mod kv;
mod kv_watch;
mod layers;
mod leaf;
mod leaf_cluster;
mod leaf_monitor;
mod leaf_ws;
mod limits;
mod messaging;
mod mixed_cluster;
mod monitor;
mod monitor_compat;
mod monitor_tls;
mod nkeys;
mod protocol;
mod reload;
mod replication;
mod replication_ops;
mod resolver;
mod route_pool;
mod stock_clients;
mod store_dir;
mod systemd;
mod tenant;
mod tls;
mod url_resolver;
mod websocket;
