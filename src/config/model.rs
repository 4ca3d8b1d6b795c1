//! The validated configuration: what the server is built from.
//!
//! Nothing here is `Deserialize`: `validate.rs` builds these types from the parsed file
//! structs, once every value has been checked.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::file::{AccessLogOutput, LogFormat};
use crate::certs::CertificateSet;

/// The HTTP/1 parser refuses request headers above this size whatever we configure, so a
/// larger `max_header_size` could never be honoured.
pub const PARSER_HEADER_LIMIT: u64 = 1_048_575;

pub struct Config {
    /// The file this was loaded from; reloads read it again.
    pub source: PathBuf,
    pub server: ServerSettings,
    pub listeners: Vec<Listener>,
    pub admin: Admin,
    pub core: Core,
    pub trusted_proxies: TrustedProxies,
    /// Lower-case names of core response headers that are dropped.
    pub hide_response_headers: Vec<http::HeaderName>,
    pub limits: Limits,
    pub logging: Logging,
    /// `None`: nothing is cached.
    pub cache: Option<CacheSettings>,
    pub compression: Compression,
    pub sites: Sites,
    /// Media places by name; built once at start.
    pub stores: BTreeMap<String, StoreSettings>,
    pub write_through: Option<WriteThroughSettings>,
    pub fleet: Option<FleetSettings>,
    pub cache_buster: Option<CacheBuster>,
    pub tombstones: TombstoneSettings,
}

/// Where and how many media tombstones are kept.
#[derive(Debug, Clone, PartialEq)]
pub struct TombstoneSettings {
    /// `None`: in memory only.
    pub path: Option<PathBuf>,
    pub max_entries: usize,
    pub max_age: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FleetSettings {
    pub name: String,
    pub peers: Vec<FleetPeer>,
    pub state_dir: PathBuf,
    pub max_pending: usize,
    pub wait: Duration,
    pub max_retry_delay: Duration,
    pub catch_up_interval: Duration,
    pub log_entries: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FleetPeer {
    pub name: String,
    /// `host:port` of its admin listener.
    pub admin: String,
    /// `host:port` of its shield listener, when it serves as a shield.
    pub shield: Option<String>,
}

/// How Mastodon's cache-buster requests are recognised.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheBuster {
    pub method: http::Method,
    pub secret_header: http::HeaderName,
    pub secret: Secret,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WriteThroughSettings {
    pub queue_dir: PathBuf,
    pub max_jobs: usize,
    pub max_bytes: u64,
    pub max_object_size: u64,
    pub workers: usize,
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// 0: no limit.
    pub max_attempts: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub threads: usize,
    pub grace_period: Duration,
    pub graceful_shutdown_timeout: Duration,
    /// Absolute, or relative to the working directory when the config file's is.
    pub upgrade_socket: PathBuf,
}

pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub tls: Option<ListenerTls>,
    pub h2c: bool,
    /// Serves other PoPs as their shield: its requests never take a shield hop.
    pub shield: bool,
}

pub struct ListenerTls {
    /// Loaded and checked at config load, so a listener never starts with a bad certificate.
    pub certificates: CertificateSet,
}

pub struct Admin {
    pub address: SocketAddr,
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Core {
    pub default_group: String,
    pub keepalive_pool_size: usize,
    pub groups: BTreeMap<String, UpstreamGroup>,
    pub mesh: MeshSettings,
}

/// How connections to the core's hosts are made.
#[derive(Debug, Clone, PartialEq)]
pub enum MeshSettings {
    /// Through the OS: tailscaled or WireGuard route the hosts' mesh addresses.
    Os,
    /// Through a Tailscale node inside the process.
    Embedded(EmbeddedMesh),
}

#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddedMesh {
    /// The node's keys; created (mode 0600, in a 0700 directory) on first start.
    pub key_file: PathBuf,
    /// Registers the node when its keys are not yet known to the control server.
    pub auth_key: Option<Secret>,
    pub hostname: Option<String>,
    pub control_url: String,
    pub tags: Vec<String>,
    pub ephemeral: bool,
    /// One attempt to join the tailnet takes at most this long.
    pub start_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamGroup {
    pub name: String,
    pub hosts: Vec<UpstreamHost>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    pub total_timeout: Option<Duration>,
    pub health: HealthCheck,
    /// Retried on another host when nothing was sent; never POST or PATCH.
    pub retry_methods: Vec<http::Method>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamHost {
    /// As written in the config (`core-1:3000`), for logs and metric labels.
    pub label: String,
    /// Where connections go. For a name in embedded mesh mode this is a stand-in from the
    /// discard-only prefix `100::/64` (RFC 6666) that only the mesh dialer understands: the
    /// name is looked up in the tailnet at each connect, so the OS resolver never sees it.
    pub address: SocketAddr,
    /// Embedded mesh mode: the tailnet name (host name or full name) of this host.
    pub mesh_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub interval: Duration,
    pub path: Option<String>,
}

/// Peers whose forwarding headers are believed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies { nets }
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        let ip = canonical_ip(*ip);
        self.nets.iter().any(|net| net.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
}

/// An IPv4 client on a dual-stack socket shows up as `::ffff:a.b.c.d`; compare it as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

pub struct Limits {
    pub max_uri_length: usize,
    pub max_header_size: usize,
    pub keepalive_timeout: Duration,
    pub max_connections: usize,
    pub client_body_timeout: Duration,
    pub client_header_timeout: Duration,
    pub client_table_size: usize,
    pub websocket_idle_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Logging {
    pub level: String,
    pub format: LogFormat,
    pub access_log: AccessLog,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccessLog {
    pub output: AccessLogOutput,
    pub path: Option<PathBuf>,
    pub queue_size: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_proxies_match_mapped_ipv4() {
        let trusted = TrustedProxies::new(vec!["10.0.0.0/8".parse().expect("cidr")]);
        assert!(trusted.contains(&"10.1.2.3".parse().expect("ip")));
        assert!(trusted.contains(&"::ffff:10.1.2.3".parse().expect("ip")));
        assert!(!trusted.contains(&"11.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn secrets_match_only_whole() {
        let secret = Secret::new("s3cret".into());
        assert!(secret.matches(b"s3cret"));
        for other in [&b""[..], b"s", b"s3cre", b"s3cret!", b"S3cret", b"s3cret\0"] {
            assert!(!secret.matches(other), "{other:?}");
        }
        assert!(same_secret(b"", b""));
        assert!(!same_secret(b"a", b""));
    }
}

/// The cache as configured: `storage` needs a restart to change, `policy` reloads live.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    pub storage: CacheStorage,
    pub policy: CachePolicy,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CacheStorage {
    pub memory_max_size: u64,
    pub memory_max_object_size: u64,
    pub disk: Option<DiskTierSettings>,
    pub lock_timeout: Duration,
    pub lock_age_timeout: Duration,
}

impl CacheStorage {
    /// The largest object any tier stores.
    pub fn max_object_size(&self) -> u64 {
        match &self.disk {
            Some(disk) => disk.max_object_size.max(self.memory_max_object_size),
            None => self.memory_max_object_size,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DiskTierSettings {
    pub path: PathBuf,
    /// Bytes the filesystem allocates to the entries' files.
    pub max_size: u64,
    pub max_object_size: u64,
    pub max_entries: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CachePolicy {
    pub serve_stale_on_error: Duration,
    pub status_header: bool,
    /// The `Cache-Status` entry's name, and whether it shows the key.
    pub status_name: String,
    pub status_key: bool,
    pub session_cookies: Vec<String>,
    /// `None`: no freshness is guessed from `Last-Modified`.
    pub heuristic: Option<HeuristicFreshness>,
    /// Targeted cache-control fields (RFC 9213) this PoP obeys, first match first: our own,
    /// then `CDN-Cache-Control`.
    pub targeted_fields: Vec<http::HeaderName>,
    /// Our own targeted field, removed from every response sent to a client.
    pub own_targeted_field: Option<http::HeaderName>,
    /// Where a successful unsafe request invalidates its URLs (RFC 9111 §4.4).
    pub invalidation: Invalidation,
    /// The size of the slices large objects are kept in, on routes that slice.
    pub slice_size: u64,
}

/// Where a successful unsafe request (POST, PUT, DELETE, ...) invalidates the URLs it
/// changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    Off,
    /// This PoP's cache only.
    Local,
    /// This PoP's at once, the others' through the fleet's purges.
    Fleet,
}

/// Freshness guessed from `Last-Modified` (RFC 9111 §4.2.2): a share of the time since the
/// response last changed, capped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeuristicFreshness {
    /// In (0, 1].
    pub fraction: f64,
    pub max: Duration,
}

/// Sites in config order; a request's host picks one, its path then picks a route.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sites {
    pub sites: Vec<Site>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// Lower-case names; `*.example.social` matches any subdomain. Empty: any host.
    pub hosts: Vec<String>,
    /// Longest path first, so the first match is the most specific. Shared, so a request
    /// carries its route (and hands it to the media origin) without copying it.
    pub routes: Vec<Arc<Route>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Numbers the routes of all sites, so runtime state can be kept per route.
    pub id: usize,
    pub path: String,
    pub cache: bool,
    pub cache_ttl: Option<Duration>,
    /// `false`: no freshness is guessed from `Last-Modified` on this route.
    pub heuristic_freshness: bool,
    /// `false`: the PoP never compresses responses on this route.
    pub compress: bool,
    /// Objects are fetched and stored in aligned slices: `None` when the route does not
    /// slice; `Some(None)`: of `cache.slice_size`; `Some(Some(n))`: of `n` bytes.
    pub slice: Option<Option<u64>>,
    /// Served from media places rather than the core.
    pub media: Option<MediaRoute>,
    /// The core group; `None`: the default group.
    pub upstream: Option<String>,
    /// The shield PoPs a cacheable miss asks first.
    pub shield: Option<Shield>,
    pub max_body_size: Option<u64>,
    pub client_limit: Option<ClientLimit>,
}

/// Other PoPs that a cacheable miss asks before the core or the media chain, so that the
/// fleet fetches each object from its origin once.
#[derive(Debug, Clone, PartialEq)]
pub struct Shield {
    /// The core group of their shield listeners, made at config load (`shield:<names>`).
    pub group: String,
    /// Their fleet names, in the order written.
    pub pops: Vec<String>,
}

impl Shield {
    /// The name of the group made for these PoPs.
    pub fn group_name(pops: &[String]) -> String {
        format!("shield:{}", pops.join(","))
    }
}

/// What one client may ask of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientLimit {
    /// At most `.0` requests per window of `.1`.
    pub requests: Option<(u32, Duration)>,
    /// At most this many requests in flight at once.
    pub concurrent: Option<u32>,
    /// Only these methods count; empty: all.
    pub methods: Vec<http::Method>,
    /// Only requests without credentials count.
    pub anonymous_only: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MediaRoute {
    /// Store names, each one present in [`Config::stores`].
    pub chain: Vec<String>,
    /// Object stores (each one present and writable) that get copies.
    pub write_through: Vec<String>,
    pub cache_control: String,
    pub not_found_cache_control: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoreSettings {
    pub name: String,
    pub kind: StoreKind,
    pub timeout: Duration,
    pub max_concurrency: usize,
    pub breaker: BreakerSettings,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StoreKind {
    S3(S3Settings),
    Http { url: String },
    Directory { path: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// 0: never opens.
    pub failures: u32,
    /// The longest wait between probes.
    pub cooldown: Duration,
    /// The first wait; it doubles while probes fail, up to `cooldown`.
    pub first_probe_after: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct S3Settings {
    pub name: String,
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub path_style: bool,
    /// Empty, or ends with `/`.
    pub prefix: String,
    pub credentials: S3Credentials,
    pub timeout: Duration,
    pub multipart_threshold: u64,
    pub part_size: u64,
    pub conditional_put: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
}

/// A value that must never reach a log: its `Debug` prints a placeholder.
#[derive(Clone, PartialEq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `given` is this secret; see [`same_secret`].
    pub fn matches(&self, given: &[u8]) -> bool {
        same_secret(given, self.0.as_bytes())
    }
}

/// Whether `given` equals `expected`, in a time that tells nothing of where they differ or
/// of how long `expected` is compared with `given`: both are hashed to fixed-size digests
/// first, and the digests are compared in constant time.
pub fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    let given = ring::digest::digest(&ring::digest::SHA256, given);
    let expected = ring::digest::digest(&ring::digest::SHA256, expected);
    given.as_ref().ct_eq(expected.as_ref()).into()
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Sites {
    /// The route for a request: the site that names `host` (exactly, then by wildcard, then
    /// a site without hosts) and in it the longest path prefix.
    pub fn route(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        let host = host_without_port(host);
        let site = self
            .sites
            .iter()
            .find(|s| s.hosts.iter().any(|h| h == host))
            .or_else(|| {
                self.sites.iter().find(|s| {
                    s.hosts.iter().any(|h| {
                        h.strip_prefix("*.").is_some_and(|suffix| {
                            host.len() > suffix.len() + 1
                                && host.ends_with(suffix)
                                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                        })
                    })
                })
            })
            .or_else(|| self.sites.iter().find(|s| s.hosts.is_empty()))?;
        site.routes.iter().find(|r| path.starts_with(&r.path))
    }
}

/// `example.social:8443` → `example.social`; `[::1]:80` → `[::1]`.
fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.split_once(':') {
        Some((name, port)) if !port.contains(':') => name,
        _ => host,
    }
}

/// What the PoP compresses, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Compression {
    /// In the PoP's order of preference, each with its levels; empty: nothing is compressed.
    pub codings: Vec<(crate::encoding::Coding, CodingLevels)>,
    /// Lower-case `type/subtype`, without parameters.
    pub types: Vec<String>,
    pub min_length: u64,
    pub max_concurrent: usize,
    pub max_decoded_size: u64,
}

/// A coding's level for a response the cache keeps, and for one it does not.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodingLevels {
    pub stored: u32,
    pub passing: u32,
}

impl Compression {
    /// The codings alone, in order.
    pub fn offered(&self) -> impl Iterator<Item = crate::encoding::Coding> + '_ {
        self.codings.iter().map(|(coding, _)| *coding)
    }
}
