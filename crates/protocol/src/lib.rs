//! The NATS client protocol as bytes: parsing what clients send (`parse`), encoding what the server
//! sends (`encode`), the CONNECT/INFO JSON documents (`json`) and `NATS/1.0` header blocks (`headers`).
//! Nothing here does I/O; every parser distinguishes "need more bytes" from "invalid".

pub mod encode;
pub mod headers;
pub mod json;
pub mod parse;

pub use json::{ConnectInfo, ServerInfo};
pub use parse::{parse_op, ClientOp, Limits, ParseError, Parsed};
