//! Shared test parts: a real origin, the real binary, real TLS and raw HTTP clients.

pub mod client;
pub mod edge;
pub mod origin;
pub mod s3;

pub use client::*;
pub use edge::*;
pub use origin::*;
