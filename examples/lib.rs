//! The seed systems of `../shared/seeds/`, each played against Natrium with async-nats: one
//! module (directory) per system, with its README, its server configuration and its binary;
//! `common` is what they share. `tests/seeds.rs` runs each one and asserts what it shows.

pub mod chat;
pub mod common;
pub mod streamspace;
pub mod tapio;
pub mod wegweiser;
