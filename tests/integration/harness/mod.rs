//! Shared test parts: a real origin, the real binary, real TLS and raw HTTP clients, typed
//! configs, and the PoPs (cache, media) that several test modules start.

pub mod client;
pub mod config;
pub mod edge;
pub mod fleet;
pub mod origin;
pub mod pops;
pub mod s3;
pub mod scripted;

pub use client::*;
pub use config::*;
pub use edge::*;
pub use origin::*;
pub use pops::*;
