//! The config file as written: serde structs that mirror the YAML one to one.
//!
//! Every struct denies unknown fields (a typo is an error, not a silently ignored key) and
//! every optional field has a default here, in one place. Nothing in this module checks
//! meaning; `validate.rs` turns these structs into the model the server uses.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

mod cache;
mod compression;
pub(in crate::config) mod defaults;
mod fleet;
mod media;
mod sites;
mod upstream;

pub use cache::*;
pub use compression::*;
pub use fleet::*;
pub use media::*;
pub use sites::*;
pub use upstream::*;

use super::units::{ByteSize, HumanDuration};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub server: ServerFile,
    pub listeners: Vec<ListenerFile>,
    #[serde(default)]
    pub admin: AdminFile,
    pub core: CoreFile,
    #[serde(default)]
    pub proxy: ProxyFile,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub logging: LoggingFile,
    /// Absent: nothing is cached and every request goes to the core.
    #[serde(default)]
    pub cache: Option<CacheFile>,
    /// zstd, brotli and gzip for text the core sends unencoded; on unless `codings: []`.
    #[serde(default)]
    pub compression: CompressionFile,
    /// Per-host, per-path rules; without any, the response headers alone decide.
    #[serde(default)]
    pub sites: Vec<SiteFile>,
    /// Places media is read from (and written to), by name; media routes list them.
    #[serde(default)]
    pub stores: BTreeMap<String, StoreFile>,
    /// The queue of copies into object stores of media found elsewhere; needed when a
    /// media route has `write_through`.
    #[serde(default)]
    pub write_through: Option<WriteThroughFile>,
    /// The other PoPs, which get every purge this one receives.
    #[serde(default)]
    pub fleet: Option<FleetFile>,
    /// Mastodon's cache buster (`CACHE_BUSTER_ENABLED`): its requests purge the URL they
    /// name, fleet-wide.
    #[serde(default)]
    pub cache_buster: Option<CacheBusterFile>,
    /// Media keys whose media was deleted: no legacy place or copy brings them back.
    #[serde(default)]
    pub tombstones: TombstonesFile,
}

/// Process-wide settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerFile {
    /// Worker threads for each listener's runtime.
    pub threads: usize,
    /// After SIGTERM the listeners stop accepting at once; requests in flight get this long
    /// to finish before the process exits (it waits the whole period).
    pub grace_period: HumanDuration,
    /// After the grace period, how long blocking work (file writes) gets to finish.
    pub graceful_shutdown_timeout: HumanDuration,
    /// The Unix socket a new process listens on to take over the listening sockets in a
    /// graceful upgrade. Its directory should be private to edgecache.
    pub upgrade_socket: PathBuf,
}

impl Default for ServerFile {
    fn default() -> Self {
        ServerFile {
            threads: 2,
            grace_period: HumanDuration::from_secs(5),
            graceful_shutdown_timeout: HumanDuration::from_secs(5),
            upgrade_socket: PathBuf::from("upgrade.sock"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    pub name: String,
    pub address: String,
    #[serde(default)]
    pub tls: Option<TlsFile>,
    /// Accept HTTP/2 with prior knowledge (h2c) on a plain listener.
    #[serde(default)]
    pub h2c: bool,
    /// Serves the other PoPs as their shield (plain HTTP, on a mesh address): a request
    /// here never takes a shield hop itself.
    #[serde(default)]
    pub shield: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub certificates: Vec<CertificateFile>,
    /// The certificate for clients that send no SNI or an unknown name; defaults to the
    /// first name of the first certificate.
    #[serde(default)]
    pub default_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFile {
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminFile {
    pub address: String,
    /// A file holding the bearer token that `/reload` (and later purge) requires. Without
    /// it those endpoints are open to whoever can reach the admin address.
    pub token_file: Option<PathBuf>,
}

impl Default for AdminFile {
    fn default() -> Self {
        AdminFile {
            address: "127.0.0.1:9901".to_string(),
            token_file: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyFile {
    /// Peers (CIDRs or addresses) whose `X-Forwarded-For` and `X-Forwarded-Proto` are
    /// believed; everyone else's are replaced.
    pub trusted_proxies: Vec<String>,
    /// Response headers from the core that never reach clients (software versions,
    /// timings).
    pub hide_response_headers: Vec<String>,
}

impl Default for ProxyFile {
    fn default() -> Self {
        ProxyFile {
            trusted_proxies: Vec::new(),
            hide_response_headers: ["Server", "X-Powered-By", "X-Runtime"]
                .map(String::from)
                .to_vec(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsFile {
    /// Longest request target accepted; longer gets 414.
    pub max_uri_length: ByteSize,
    /// Largest request header block accepted; larger gets 431.
    pub max_header_size: ByteSize,
    /// How long a client may take to send the next request on a kept-alive connection (and
    /// how long an idle HTTP/2 connection stays open).
    pub keepalive_timeout: HumanDuration,
    /// Client connections each listener keeps open at most; beyond it, new connections are
    /// closed at once and counted.
    pub max_connections: usize,
    /// How long a client may stall while sending a request body.
    pub client_body_timeout: HumanDuration,
    /// Client addresses each route's `client_limit` keeps counts for; the least recently
    /// seen are forgotten beyond it, so memory stays bounded whatever the number of clients.
    pub client_table_size: usize,
    /// How long a client has for a whole request head, from the first byte (from the accept
    /// for a new connection, TLS handshake included); past it the connection is closed,
    /// with a 408 where one can be sent.
    pub client_header_timeout: HumanDuration,
    /// A websocket with no bytes in either direction for this long is closed (Mastodon's
    /// streaming server pings every 30 s or so, and browsers answer).
    pub websocket_idle_timeout: HumanDuration,
}

impl Default for LimitsFile {
    fn default() -> Self {
        LimitsFile {
            max_uri_length: ByteSize(8 * 1024),
            max_header_size: ByteSize(32 * 1024),
            keepalive_timeout: HumanDuration::from_secs(60),
            max_connections: 16_384,
            client_body_timeout: HumanDuration::from_secs(60),
            client_header_timeout: HumanDuration::from_secs(10),
            client_table_size: 100_000,
            websocket_idle_timeout: HumanDuration::from_secs(300),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingFile {
    /// A tracing filter: `info`, `warn`, `edgecache=debug,pingora=warn`, ...
    pub level: String,
    pub format: LogFormat,
    pub access_log: AccessLogFile,
}

impl Default for LoggingFile {
    fn default() -> Self {
        LoggingFile {
            level: "info".to_string(),
            format: LogFormat::Text,
            access_log: AccessLogFile::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogFile {
    pub output: AccessLogOutput,
    /// Required when `output: file`.
    pub path: Option<PathBuf>,
    /// Lines waiting to be written; when the writer falls this far behind, lines are
    /// dropped and counted rather than slowing requests down.
    pub queue_size: usize,
}

impl Default for AccessLogFile {
    fn default() -> Self {
        AccessLogFile {
            output: AccessLogOutput::Stdout,
            path: None,
            queue_size: 8192,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogOutput {
    Stdout,
    File,
    Off,
}
