//! edgecache: an edge caching reverse proxy for self-hosted sites such as Mastodon instances.
//!
//! A request's path through the modules:
//!
//! 1. A listener ([`server`]) accepts the connection; on HTTPS, [`tls`] picks the certificate
//!    by SNI from a set that reloads without a restart. [`connections`] counts it.
//! 2. The [`proxy`] hooks run: [`proxy::limits`] refuses oversized or ambiguous requests,
//!    [`proxy::upstream`] picks a healthy core host, [`proxy::headers`] tells the core who
//!    the client is and drops hop-by-hop headers.
//! 3. The response streams back; [`access_log`] writes one JSON line and [`metrics`] counts it.
//!
//! Around that: [`config`] loads and validates the YAML file (every error names its file,
//! line and key), [`admin`] serves health, readiness, metrics and reload on its own address,
//! and [`reload`] re-reads the config on SIGHUP or on request.

pub mod access_log;
pub mod admin;
pub mod cache;
pub mod certs;
pub mod cli;
pub mod config;
pub mod connections;
pub mod devcert;
pub mod fleet;
pub mod head_deadline;
pub mod logging;
pub mod mesh;
pub mod metrics;
pub mod migrate;
pub mod origin;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod sockets;
pub mod spool;
pub mod store;
pub mod tls;
pub mod upgrade;
pub mod wire;

/// Exit code for a config that cannot be used (EX_USAGE, as sysexits.h numbers it).
pub const EXIT_CONFIG: u8 = 64;
/// Exit code when a needed resource (an address to bind) is unavailable (EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: u8 = 69;
