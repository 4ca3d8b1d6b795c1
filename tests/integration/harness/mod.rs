//! Shared test parts: a real origin, the real binary, real TLS and raw HTTP clients, and
//! the PoPs (cache, media) that several test modules start.

pub mod client;
pub mod edge;
pub mod origin;
pub mod pops;
pub mod s3;

pub use client::*;
pub use edge::*;
pub use origin::*;
pub use pops::*;
