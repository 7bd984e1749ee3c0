//! The NATS protocol as bytes: parsing what clients send (`parse`), encoding what the server
//! sends (`encode`), the CONNECT/INFO JSON documents (`json`), `NATS/1.0` header blocks
//! (`headers`), and the route protocol between servers (`route`).
//! Nothing here does I/O; every parser distinguishes "need more bytes" from "invalid".

pub mod encode;
pub mod headers;
pub mod json;
pub mod leaf;
pub mod parse;
pub mod route;

pub use json::{ConnectInfo, ServerInfo};
pub use parse::{parse_op, ClientOp, Limits, ParseError, Parsed};
