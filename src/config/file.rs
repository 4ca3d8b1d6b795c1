//! The config file as written: serde structs that mirror the YAML one to one.
//!
//! Every struct denies unknown fields (a typo is an error, not a silently ignored key) and
//! every optional field has a default here, in one place. Nothing in this module checks
//! meaning; `validate.rs` turns these structs into the model the server uses.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TombstonesFile {
    /// The file they are kept in; absent: `<fleet.state_dir>/tombstones` with a fleet,
    /// memory only without one (lost at a restart).
    pub path: Option<PathBuf>,
    /// Kept at most; the oldest go first.
    pub max_entries: usize,
    /// Forgotten after this long.
    pub max_age: HumanDuration,
}

impl Default for TombstonesFile {
    fn default() -> Self {
        TombstonesFile {
            path: None,
            max_entries: 200_000,
            max_age: HumanDuration::from_secs(180 * 24 * 3600),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    /// This PoP's name, as the others list it.
    pub name: String,
    /// Every other PoP: its name and admin address (over the mesh), which must accept this
    /// PoP's admin token.
    #[serde(default)]
    pub peers: Vec<FleetPeerFile>,
    /// Where purges not yet delivered wait, across restarts.
    pub state_dir: PathBuf,
    /// Purges waiting for one peer at most; beyond it that peer is reported as not
    /// queued, and the others still get the purge.
    #[serde(default = "defaults::fleet_max_pending")]
    pub max_pending: usize,
    /// How long a purge request waits for the peers' answers before reporting the rest as
    /// queued.
    #[serde(default = "defaults::fleet_wait")]
    pub wait: HumanDuration,
    /// Delivery attempts to a peer that is down are spaced up to this much.
    #[serde(default = "defaults::fleet_max_retry_delay")]
    pub max_retry_delay: HumanDuration,
    /// How often each peer's purge log is read for purges this PoP missed.
    #[serde(default = "defaults::fleet_catch_up_interval")]
    pub catch_up_interval: HumanDuration,
    /// Purges this PoP keeps in its own log for peers to catch up from.
    #[serde(default = "defaults::fleet_log_entries")]
    pub log_entries: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetPeerFile {
    pub name: String,
    /// `host:port` of the peer's admin listener.
    pub admin: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheBusterFile {
    /// Mastodon's `CACHE_BUSTER_HTTP_METHOD` (`GET` by default there; `PURGE` is clearer).
    #[serde(default = "defaults::cache_buster_method")]
    pub method: String,
    /// Mastodon's `CACHE_BUSTER_SECRET_HEADER`.
    pub secret_header: String,
    /// A file holding Mastodon's `CACHE_BUSTER_SECRET`.
    pub secret_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteThroughFile {
    /// A directory edgecache owns: jobs and their bodies wait here, across restarts,
    /// until every store has the object.
    pub queue_dir: PathBuf,
    /// Jobs waiting at most; a job that does not fit is dropped (and counted).
    #[serde(default = "defaults::queue_max_jobs")]
    pub max_jobs: usize,
    /// Bytes of bodies waiting at most.
    #[serde(default = "defaults::queue_max_bytes")]
    pub max_bytes: ByteSize,
    /// Larger objects are not copied on the way (`edgecache migrate` moves them).
    #[serde(default = "defaults::queue_max_object_size")]
    pub max_object_size: ByteSize,
    /// Uploads in flight at once.
    #[serde(default = "defaults::queue_workers")]
    pub workers: usize,
    /// The wait before the first retry of a failed upload; it doubles up to `retry_max`.
    #[serde(default = "defaults::retry_min")]
    pub retry_min: HumanDuration,
    #[serde(default = "defaults::retry_max")]
    pub retry_max: HumanDuration,
    /// Attempts before a job is set aside under `failed/`; 0: retry until it succeeds.
    #[serde(default)]
    pub max_attempts: u32,
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
#[serde(deny_unknown_fields)]
pub struct CoreFile {
    /// The group that gets every request no route claims; defaults to the only group, or
    /// to `web` when there are several.
    #[serde(default)]
    pub default_group: Option<String>,
    pub groups: BTreeMap<String, UpstreamGroupFile>,
    /// Idle connections to the core kept for reuse, across all hosts.
    #[serde(default = "defaults::keepalive_pool_size")]
    pub keepalive_pool_size: usize,
    /// How the core's hosts are reached over the mesh.
    #[serde(default)]
    pub mesh: MeshFile,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeshMode {
    /// The hosts' mesh addresses are dialled through the OS; tailscaled (or WireGuard)
    /// does the tunnelling.
    #[default]
    Os,
    /// A Tailscale node inside edgecache joins the tailnet itself; no daemon needed.
    Embedded,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshFile {
    #[serde(default)]
    pub mode: MeshMode,
    /// Embedded: where this node's keys (its identity in the tailnet) are kept; created
    /// on first start.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Embedded: a file holding the auth key that registers the node the first time.
    #[serde(default)]
    pub auth_key_file: Option<PathBuf>,
    /// Embedded: the name this node asks for in the tailnet; absent: the OS host name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Embedded: the coordination server (Tailscale's, or a headscale URL); absent:
    /// Tailscale's.
    #[serde(default)]
    pub control_url: Option<String>,
    /// Embedded: ACL tags the node asks for (`tag:edgecache`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Embedded: register as an ephemeral node, removed from the tailnet soon after it
    /// goes offline.
    #[serde(default)]
    pub ephemeral: Option<bool>,
    /// Embedded: how long one attempt to join the tailnet may take before it is reported
    /// (on `/readyz` and in the log) and started again; absent: 30 s.
    #[serde(default)]
    pub start_timeout: Option<HumanDuration>,
}

impl Default for MeshFile {
    fn default() -> Self {
        MeshFile {
            mode: MeshMode::Os,
            key_file: None,
            auth_key_file: None,
            hostname: None,
            control_url: None,
            tags: Vec::new(),
            ephemeral: None,
            start_timeout: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamGroupFile {
    pub hosts: Vec<String>,
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: HumanDuration,
    #[serde(default = "defaults::io_timeout")]
    pub read_timeout: HumanDuration,
    #[serde(default = "defaults::io_timeout")]
    pub write_timeout: HumanDuration,
    /// How long an idle pooled connection to the core is kept.
    #[serde(default = "defaults::idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// The longest a whole exchange with the core may take, response body included
    /// (websockets excepted); absent: only the per-read timeouts apply.
    #[serde(default)]
    pub total_timeout: Option<HumanDuration>,
    #[serde(default)]
    pub health: HealthFile,
    /// Methods retried on another host after a failure that sent nothing: GET, HEAD and
    /// OPTIONS by default; PUT and DELETE may be added. POST and PATCH never are.
    #[serde(default = "defaults::retry_methods")]
    pub retry_methods: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthFile {
    pub interval: HumanDuration,
    /// An HTTP path to GET; without it the check is a TCP connect.
    pub path: Option<String>,
}

impl Default for HealthFile {
    fn default() -> Self {
        HealthFile {
            interval: HumanDuration::from_secs(5),
            path: None,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheFile {
    pub memory: CacheMemoryFile,
    /// Absent: only the memory tier, and objects above its `max_object_size` are not cached.
    pub disk: Option<CacheDiskFile>,
    /// How long a request waits for another request's fetch of the same object before it
    /// goes to the core itself.
    pub lock_timeout: HumanDuration,
    /// A fetch that has held an object's lock this long lets waiting requests compete for it.
    pub lock_age_timeout: HumanDuration,
    /// When the core is down or answers 5xx, cached objects are served stale for this long
    /// past their freshness (unless they say `must-revalidate`); 0s turns it off.
    pub serve_stale_on_error: HumanDuration,
    /// Add `X-Cache-Status` (HIT, MISS, ...) to responses.
    pub status_header: bool,
    /// Cookies that mark a signed-in user: a request carrying one is never answered from,
    /// nor stored into, the shared cache.
    pub session_cookies: Vec<String>,
}

impl Default for CacheFile {
    fn default() -> Self {
        CacheFile {
            memory: CacheMemoryFile::default(),
            disk: None,
            lock_timeout: HumanDuration::from_secs(10),
            lock_age_timeout: HumanDuration::from_secs(30),
            serve_stale_on_error: HumanDuration::from_secs(24 * 3600),
            status_header: true,
            session_cookies: ["_session_id", "_mastodon_session", "remember_user_token"]
                .map(String::from)
                .to_vec(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheMemoryFile {
    /// Bytes the memory tier holds at most (bodies and headers).
    pub max_size: ByteSize,
    /// Larger objects live on disk only. Unwritten: 1MiB, or `max_size` when smaller.
    pub max_object_size: Option<ByteSize>,
}

impl Default for CacheMemoryFile {
    fn default() -> Self {
        CacheMemoryFile {
            max_size: ByteSize(256 * 1024 * 1024),
            max_object_size: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheDiskFile {
    /// A directory edgecache owns; entries survive restarts.
    pub path: PathBuf,
    /// Bytes the entries' files take on the filesystem at most (each file counted in whole
    /// blocks, as `du` counts it); the least recently used objects go first.
    pub max_size: ByteSize,
    /// Larger objects are passed through uncached. Unwritten: 1GiB, or `max_size` when
    /// smaller.
    #[serde(default)]
    pub max_object_size: Option<ByteSize>,
    /// Entries at most: each is two files (two inodes) and a place in the in-memory index.
    #[serde(default = "defaults::disk_max_entries")]
    pub max_entries: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteFile {
    /// Host names this site answers for (`*.example.social` matches subdomains); empty or
    /// absent: every host no other site claims.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub routes: Vec<RouteFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// A path prefix; the longest matching prefix wins.
    pub path: String,
    /// `false`: never cached (websockets, private APIs).
    #[serde(default = "defaults::enabled")]
    pub cache: bool,
    /// How long a response that states no freshness of its own is kept (`Cache-Control`
    /// and `Expires` still win when present).
    #[serde(default)]
    pub cache_ttl: Option<HumanDuration>,
    /// Serve this path from media places instead of the core.
    #[serde(default)]
    pub media: Option<MediaRouteFile>,
    /// The core upstream group for this path (`streaming` for `/api/v1/streaming`);
    /// absent: `core.default_group`.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Request bodies above this size get 413 (uploads: Mastodon takes videos up to
    /// about 100 MB); absent: no limit of the route's own.
    #[serde(default)]
    pub max_body_size: Option<ByteSize>,
    /// What one client address may ask of this route; beyond it, 429 with `Retry-After`.
    #[serde(default)]
    pub client_limit: Option<ClientLimitFile>,
}

/// Per-client limits of a route, counted by client address (the real one, after trusted
/// proxies; an IPv6 client by its /64, as one host usually holds a whole /64).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientLimitFile {
    /// Requests one client may make per `per` (fixed windows aligned to the clock, as
    /// Mastodon's rack-attack counts).
    #[serde(default)]
    pub requests: Option<u32>,
    #[serde(default)]
    pub per: Option<HumanDuration>,
    /// Requests of one client this route serves at once.
    #[serde(default)]
    pub concurrent: Option<u32>,
    /// Only these methods count (`[POST]` for sign-in forms); absent: every method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Only requests that carry no credentials count (no `Authorization`, `Cookie` or
    /// HTTP `Signature`), like Mastodon's limit on unauthenticated API calls.
    #[serde(default)]
    pub anonymous_only: bool,
}

/// A media route: the request path after the route's `path` is the object key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaRouteFile {
    /// Store names, tried in order; the first that has the object answers.
    pub chain: Vec<String>,
    /// Object stores that get a copy of what came from any other place, in the
    /// background, once the whole body arrived intact.
    #[serde(default)]
    pub write_through: Vec<String>,
    /// `Cache-Control` on media found (Mastodon's media never change under one URL).
    #[serde(default = "defaults::media_cache_control")]
    pub cache_control: String,
    /// `Cache-Control` on a 404 (when every place said it has no such object).
    #[serde(default = "defaults::media_not_found_cache_control")]
    pub not_found_cache_control: String,
}

/// One place media lives, by kind.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StoreFile {
    /// An S3-compatible object store.
    S3(S3StoreFile),
    /// An old server's media over HTTP(S): the key is appended to `url`.
    Http(HttpStoreFile),
    /// A local or NFS directory: the key is a path under it.
    Directory(DirectoryStoreFile),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3StoreFile {
    /// `https://fra1.digitaloceanspaces.com`, `http://127.0.0.1:3900`, ...
    pub endpoint: String,
    #[serde(default = "defaults::region")]
    pub region: String,
    pub bucket: String,
    /// `true`: `endpoint/bucket/key`; `false`: `bucket.endpoint/key`.
    #[serde(default = "defaults::enabled")]
    pub path_style: bool,
    /// Prepended to every key (`cache/` and the like).
    #[serde(default)]
    pub prefix: String,
    /// A YAML file with `access_key_id` and `secret_access_key`; absent: the
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` environment variables.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// Larger objects are uploaded in parts.
    #[serde(default = "defaults::multipart_threshold")]
    pub multipart_threshold: ByteSize,
    #[serde(default = "defaults::part_size")]
    pub part_size: ByteSize,
    /// Send `If-None-Match: *` with uploads so a store that honours it never overwrites;
    /// turn off for stores that refuse the header (uploads still look first).
    #[serde(default = "defaults::enabled")]
    pub conditional_put: bool,
    #[serde(default = "defaults::store_timeout")]
    pub timeout: HumanDuration,
    #[serde(default = "defaults::store_concurrency")]
    pub max_concurrency: usize,
    #[serde(default)]
    pub breaker: BreakerFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpStoreFile {
    /// Base URL; `http://old-server:80/system/` serves key `a/b.png` from
    /// `/system/a/b.png`.
    pub url: String,
    /// How long a request may take to get its response head, and each read of its body.
    #[serde(default = "defaults::store_timeout")]
    pub timeout: HumanDuration,
    /// Requests in flight at most (bodies included); more are refused and the chain moves on.
    #[serde(default = "defaults::store_concurrency")]
    pub max_concurrency: usize,
    #[serde(default)]
    pub breaker: BreakerFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryStoreFile {
    pub path: PathBuf,
    #[serde(default = "defaults::store_timeout")]
    pub timeout: HumanDuration,
    #[serde(default = "defaults::store_concurrency")]
    pub max_concurrency: usize,
    #[serde(default)]
    pub breaker: BreakerFile,
}

/// Stops sending to a place that keeps failing and probes it again: first after
/// `first_probe_after`, then after twice as long each time a probe fails, up to `cooldown`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerFile {
    /// Consecutive failures (errors and timeouts, not 404s) that open the circuit; 0: never.
    pub failures: u32,
    /// The longest a failing place is left alone between probes.
    pub cooldown: HumanDuration,
    /// How long the circuit stays open before the first probe (at most `cooldown`).
    pub first_probe_after: HumanDuration,
}

impl Default for BreakerFile {
    fn default() -> Self {
        BreakerFile {
            failures: 5,
            cooldown: HumanDuration::from_secs(30),
            first_probe_after: HumanDuration::from_secs(1),
        }
    }
}

pub(super) mod defaults {
    use super::{ByteSize, HumanDuration};

    pub fn enabled() -> bool {
        true
    }

    pub fn memory_max_object_size() -> ByteSize {
        ByteSize(1024 * 1024)
    }

    pub fn disk_max_object_size() -> ByteSize {
        ByteSize(1024 * 1024 * 1024)
    }

    /// Sized for a small VM: ext4 gives one inode per 16 KiB, so a 25 GB disk has about
    /// 1.6 million, and each entry takes two; 200,000 entries take 400,000 of them. The
    /// index holds them in about 60 MiB of memory (some 300 bytes an entry with its URL),
    /// which a 1 GiB VM can spare; memory, more than inodes, is what bounds it there.
    pub fn disk_max_entries() -> u64 {
        200_000
    }

    pub fn fleet_max_pending() -> usize {
        100_000
    }

    pub fn fleet_catch_up_interval() -> HumanDuration {
        HumanDuration::from_secs(30)
    }

    pub fn fleet_log_entries() -> u64 {
        100_000
    }

    pub fn fleet_wait() -> HumanDuration {
        HumanDuration::from_secs(2)
    }

    pub fn fleet_max_retry_delay() -> HumanDuration {
        HumanDuration::from_secs(60)
    }

    pub fn cache_buster_method() -> String {
        "GET".to_string()
    }

    pub fn connect_timeout() -> HumanDuration {
        HumanDuration::from_secs(2)
    }

    pub fn io_timeout() -> HumanDuration {
        HumanDuration::from_secs(60)
    }

    pub fn idle_timeout() -> HumanDuration {
        HumanDuration::from_secs(60)
    }

    pub fn keepalive_pool_size() -> usize {
        256
    }

    pub fn retry_methods() -> Vec<String> {
        ["GET", "HEAD", "OPTIONS"].map(String::from).to_vec()
    }

    pub fn media_cache_control() -> String {
        "public, max-age=31536000, immutable".to_string()
    }

    pub fn media_not_found_cache_control() -> String {
        "public, max-age=60".to_string()
    }

    pub fn region() -> String {
        "us-east-1".to_string()
    }

    pub fn multipart_threshold() -> ByteSize {
        ByteSize(16 * 1024 * 1024)
    }

    pub fn part_size() -> ByteSize {
        ByteSize(8 * 1024 * 1024)
    }

    pub fn store_timeout() -> HumanDuration {
        HumanDuration::from_secs(10)
    }

    pub fn store_concurrency() -> usize {
        64
    }

    pub fn queue_max_jobs() -> usize {
        10_000
    }

    pub fn queue_max_bytes() -> ByteSize {
        ByteSize(10 * 1024 * 1024 * 1024)
    }

    pub fn queue_max_object_size() -> ByteSize {
        ByteSize(1024 * 1024 * 1024)
    }

    pub fn queue_workers() -> usize {
        4
    }

    pub fn retry_min() -> HumanDuration {
        HumanDuration::from_secs(1)
    }

    pub fn retry_max() -> HumanDuration {
        HumanDuration::from_secs(300)
    }
}
