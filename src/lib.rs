//! edgecache: an edge caching reverse proxy for self-hosted sites such as Mastodon instances.
//!
//! # A cached GET, through the modules
//!
//! 1. `main.rs` loads the file through [`config`] (every error names
//!    its file, line and key) and [`server::build`] wires one pingora service per listener.
//! 2. A connection arrives: [`connections`] counts it and holds it to a deadline for its first
//!    request head ([`head_deadline`]); on HTTPS, [`tls`] picks the certificate by SNI from a
//!    [`certs::CertificateSet`] that a reload swaps whole.
//! 3. [`proxy`]'s hooks run in pingora's order. `request_filter` ([`proxy`]'s `admission`)
//!    refuses malformed heads ([`proxy::limits`]), drops what `Connection` nominates
//!    ([`proxy::headers`]) and makes the one route decision ([`proxy::route`]), which every
//!    later hook reads. The cache hooks ask [`cache::policy`] whether the request may use the
//!    shared cache and build its key ([`cache::key`]: scheme, host, path, sorted query).
//! 4. pingora looks the key up in [`cache::storage::TieredStorage`]: an object still arriving
//!    (its fill), then the memory tier, then the disk tier. A hit is read from there; a
//!    miss takes the cache lock, so one request fetches while the others wait and then read
//!    the same fill as it arrives.
//! 5. The miss goes to a core host chosen by [`upstream`] (health checks, failover) over
//!    [`upstream::mesh`], with `X-Forwarded-*` set by [`proxy::headers`]. The response is
//!    judged by [`cache::policy`] (RFC 9111 and Mastodon's rules), streamed to the client
//!    and, when it may be kept, into the tiers.
//! 6. `logging` counts the request in [`metrics`] and writes its [`access_log`] line.
//!
//! # A media miss
//!
//! On a media route, steps 3 and 4 are the same, except that the key is the route's path and
//! the object's canonical key ([`store::ObjectKey`]), so every spelling of a media URL is one
//! object. At step 5 the route decided in step 3 is lodged with the media origin
//! ([`origin::handoff`]) and pingora fetches from [`origin::server`] on loopback, which takes
//! the route back by its ticket and never routes again. [`origin::lookup`] asks the route's
//! places in order ([`store::places`]: S3, an old server over HTTP, a directory), each
//! behind its guard ([`store::guard`]: a concurrency limit and a breaker). A body found
//! anywhere but the write-through stores streams to pingora's fill, and a copy of it goes to
//! the write-through queue ([`migrate::queue`]), which uploads it to the route's object
//! stores once it arrived whole. The copy is written once: when the cache keeps the body on
//! disk, the copy is that file, which the proxy links into the queue when the request ends
//! ([`origin::handoff`], [`migrate::arriving`]); otherwise it is spooled as the body streams
//! ([`migrate::tee`]).
//!
//! Around that: [`admin`] serves health, readiness, metrics, reload, purge and upgrade on
//! its own address; [`fleet`] takes every purge to every PoP; [`reload`] re-reads the config
//! on SIGHUP or on request; [`upgrade`] hands the listening sockets to a new binary.

pub mod access_log;
pub mod admin;
pub mod cache;
pub mod certs;
pub mod cli;
pub mod config;
pub mod connections;
pub mod devcert;
pub mod encoding;
pub mod fleet;
pub mod head_deadline;
pub mod logging;
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
pub mod upstream;
pub mod wire;

/// Exit code for a config that cannot be used (EX_USAGE, as sysexits.h numbers it).
pub const EXIT_CONFIG: u8 = 64;
/// Exit code when a needed resource (an address to bind) is unavailable (EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: u8 = 69;
