//! The cluster layer: routes between servers, wire-compatible with nats-server. `mesh` keeps
//! this server in the full mesh (listener, explicit and gossiped routes, one registered route
//! per peer, interest announcements, client URLs); `route` runs one route connection; `options`
//! holds the `cluster {}` settings. It imports the router and the connection layer.

pub mod conns;
pub mod mesh;
pub mod options;
pub mod route;
pub mod tls;

pub use mesh::Mesh;
pub use options::{ClusterOptions, RouteUrl};
pub use route::Route;
