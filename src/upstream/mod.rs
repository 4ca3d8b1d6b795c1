//! The core's upstream groups: which host gets a request, and whether any host is up.
//!
//! Each group is a pingora `LoadBalancer` (round robin) run as a background service that
//! health-checks its hosts on the configured interval. Our own wrapper around the check
//! records every result, so `/readyz` and the `edgecache_core_host_up` gauge reflect checks
//! that actually ran rather than pingora's optimistic initial "healthy". Hosts are dialled
//! by the OS or through the embedded tailnet node in [`mesh`].

pub mod idle;
pub mod mesh;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::connectors::L4Connect;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, LoadBalancer};
use pingora::upstreams::peer::HttpPeer;

use crate::config::model::{Core, UpstreamGroup};
use crate::metrics;
use mesh::{Mesh, MeshConnector};

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// What the last health check of one host found.
struct HostState {
    label: String,
    address: SocketAddr,
    state: AtomicU8,
    /// Taken out of rotation by a failed request (connect error or timeout) until its next
    /// passing health check.
    ejected: AtomicBool,
    /// When a request last failed to connect to it.
    connect_failed_at: Mutex<Option<Instant>>,
    /// When a request last opened a connection to it.
    connected_at: Mutex<Option<Instant>>,
    /// When the one request allowed to try it while it is unhealthy went out, until that
    /// request connects or fails.
    trial_at: Mutex<Option<Instant>>,
}

impl HostState {
    /// Whether a connect to this host failed within `KNOWN_DOWN_FOR`.
    fn known_down(&self, now: Instant) -> bool {
        self.connect_failed_at
            .lock()
            .is_some_and(|at| now.saturating_duration_since(at) < KNOWN_DOWN_FOR)
    }

    /// Whether a request opened a connection to it within `within`.
    fn connected_within(&self, now: Instant, within: Duration) -> bool {
        self.connected_at
            .lock()
            .is_some_and(|at| now.saturating_duration_since(at) < within)
    }

    /// Takes the trial of this unhealthy host, unless another request holds it (a trial
    /// is held at most `connect_timeout`, the longest its connect can take).
    fn take_trial(&self, now: Instant, connect_timeout: Duration) -> bool {
        let mut trial = self.trial_at.lock();
        if trial.is_some_and(|at| now.saturating_duration_since(at) < connect_timeout) {
            return false;
        }
        *trial = Some(now);
        true
    }
}

/// How long a failed connect counts as proof that a host is down. Only then does a group
/// whose hosts all failed their health checks answer 503 without trying one: past it, the
/// next request tries again, so a host that is back is used at once rather than after its
/// next passing check.
const KNOWN_DOWN_FOR: Duration = Duration::from_secs(1);

/// One upstream group, ready to pick hosts.
pub struct CoreGroup {
    pub name: String,
    balancer: Arc<LoadBalancer<RoundRobin>>,
    hosts: Arc<Vec<HostState>>,
    connect_timeout: Duration,
    read_timeout: Duration,
    write_timeout: Duration,
    idle_timeout: Duration,
    /// The whole exchange's bound, if any.
    pub total_timeout: Option<Duration>,
    retry_methods: Vec<http::Method>,
    /// Embedded mesh mode: how connections to this group's hosts are made.
    mesh_connector: Option<Arc<MeshConnector>>,
    /// Spreads requests over the hosts when none is healthy.
    unhealthy_turn: AtomicUsize,
    /// How long a connect that succeeded vouches for an unhealthy host: until the next
    /// health check can say so itself.
    health_interval: Duration,
}

/// Records each check's outcome, then reports it to pingora unchanged.
struct ObservedCheck {
    group: String,
    inner: Box<dyn HealthCheck + Send + Sync>,
    hosts: Arc<Vec<HostState>>,
}

#[async_trait]
impl HealthCheck for ObservedCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let result = self.inner.check(target).await;
        let up = result.is_ok();
        if let Some(host) = self
            .hosts
            .iter()
            .find(|h| target.addr.as_inet() == Some(&h.address))
        {
            let previous = host
                .state
                .swap(if up { UP } else { DOWN }, Ordering::Relaxed);
            if up && host.ejected.swap(false, Ordering::Relaxed) {
                tracing::info!(group = %self.group, host = %host.label, "core host passed its health check; back in rotation");
                metrics::get()
                    .core_host_ejected
                    .with_label_values(&[self.group.as_str(), host.label.as_str()])
                    .set(0);
            }
            if previous != UNKNOWN && (previous == UP) != up {
                if up {
                    tracing::info!(group = %self.group, host = %host.label, "core host is up again");
                } else {
                    tracing::warn!(group = %self.group, host = %host.label, error = ?result.as_ref().err(), "core host failed its health check");
                }
            }
            metrics::get()
                .core_host_up
                .with_label_values(&[self.group.as_str(), host.label.as_str()])
                .set(i64::from(up));
        }
        result
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.inner.health_threshold(success)
    }
}

/// The group's health check: HTTP GET of `health.path` when set, else a TCP connect; it
/// reaches hosts the way requests do (through the mesh when embedded).
fn health_check(group: &UpstreamGroup, mesh: &Mesh) -> Box<dyn HealthCheck + Send + Sync> {
    let timeout = group.connect_timeout.min(group.health.interval);
    // Health checks reach hosts the way requests do.
    let check_connector = mesh
        .connector(timeout)
        .map(|c| c as Arc<dyn L4Connect + Send + Sync>);
    // The Host header of HTTP checks: the first host as written in the config.
    let check_host = group
        .hosts
        .first()
        .map_or("localhost", |h| h.label.as_str());
    match &group.health.path {
        Some(path) => {
            let mut check = HttpHealthCheck::new(check_host, false);
            check.peer_template.options.connection_timeout = Some(timeout);
            check.peer_template.options.read_timeout = Some(group.health.interval);
            check.peer_template.options.custom_l4 = check_connector;
            if let Ok(req) = pingora::http::RequestHeader::build("GET", path.as_bytes(), None) {
                check.req = req;
                let _ = check.req.insert_header("Host", check_host);
                let _ = check.req.insert_header("User-Agent", "edgecache-health");
            }
            Box::new(check)
        }
        None => {
            let mut check = TcpHealthCheck::new();
            check.peer_template.options.connection_timeout = Some(timeout);
            check.peer_template.options.custom_l4 = check_connector;
            check
        }
    }
}

/// Error series start at 0, so rate() and alerts see them before the first error.
fn start_error_series(group: &UpstreamGroup) {
    let errors = &metrics::get().upstream_errors;
    for host in &group.hosts {
        for kind in ["connect", "connect_timeout", "timeout", "other"] {
            errors.with_label_values(&[group.name.as_str(), host.label.as_str(), kind]);
        }
    }
    for kind in ["no_healthy_host", "mesh_not_connected"] {
        errors.with_label_values(&[group.name.as_str(), "", kind]);
    }
}

impl CoreGroup {
    /// Builds the group and its balancer; the caller runs the balancer as a background
    /// service (see [`CoreGroup::balancer`]).
    pub fn new(group: &UpstreamGroup, mesh: &Mesh) -> std::io::Result<Self> {
        // In embedded mesh mode pingora connects to each host's loopback relay.
        let addresses: Vec<SocketAddr> = group
            .hosts
            .iter()
            .map(|h| mesh.backend_address(h.address))
            .collect();
        let mut balancer = LoadBalancer::<RoundRobin>::try_from_iter(addresses)?;
        let hosts = Arc::new(
            group
                .hosts
                .iter()
                .map(|h| HostState {
                    label: h.label.clone(),
                    address: mesh.backend_address(h.address),
                    state: AtomicU8::new(UNKNOWN),
                    ejected: AtomicBool::new(false),
                    connect_failed_at: Mutex::new(None),
                    connected_at: Mutex::new(None),
                    trial_at: Mutex::new(None),
                })
                .collect::<Vec<_>>(),
        );
        let mesh_connector = mesh.connector(group.connect_timeout);
        let inner = health_check(group, mesh);
        balancer.set_health_check(Box::new(ObservedCheck {
            group: group.name.clone(),
            inner,
            hosts: hosts.clone(),
        }));
        start_error_series(group);
        balancer.health_check_frequency = Some(group.health.interval);
        balancer.parallel_health_check = true;
        Ok(CoreGroup {
            name: group.name.clone(),
            balancer: Arc::new(balancer),
            hosts,
            connect_timeout: group.connect_timeout,
            read_timeout: group.read_timeout,
            write_timeout: group.write_timeout,
            idle_timeout: group.idle_timeout,
            total_timeout: group.total_timeout,
            retry_methods: group.retry_methods.clone(),
            mesh_connector,
            unhealthy_turn: AtomicUsize::new(0),
            health_interval: group.health.interval,
        })
    }

    /// Takes a host out of rotation after a request to it failed to connect or timed out;
    /// its next passing health check brings it back, so this lasts at most one interval.
    /// The last host still in rotation is never ejected (as nginx never marks a lone server
    /// unavailable): a passing blip must not turn into an interval of 503s.
    pub fn eject(&self, address: SocketAddr) {
        let Some(host) = self.hosts.iter().find(|h| h.address == address) else {
            return;
        };
        let another_in_rotation = self.hosts.iter().any(|h| {
            h.address != address
                && h.state.load(Ordering::Relaxed) != DOWN
                && !h.ejected.load(Ordering::Relaxed)
        });
        if !another_in_rotation {
            return;
        }
        if !host.ejected.swap(true, Ordering::Relaxed) {
            tracing::warn!(group = %self.name, host = %host.label, "core host failed a request; out of rotation until its next passing health check");
            metrics::get()
                .core_host_ejected
                .with_label_values(&[self.name.as_str(), host.label.as_str()])
                .set(1);
        }
    }

    /// Notes that a request could not connect to `address`: for `KNOWN_DOWN_FOR` it is
    /// not tried when no host of the group is healthy.
    pub fn connect_failed(&self, address: SocketAddr) {
        if let Some(host) = self.hosts.iter().find(|h| h.address == address) {
            *host.connect_failed_at.lock() = Some(Instant::now());
            *host.trial_at.lock() = None;
        }
    }

    /// Notes that a request opened a connection to `address`: while no health check has
    /// passed it yet, every request may use it again, not only one trial at a time.
    pub fn connected(&self, address: SocketAddr) {
        if let Some(host) = self.hosts.iter().find(|h| h.address == address) {
            *host.connected_at.lock() = Some(Instant::now());
            *host.trial_at.lock() = None;
        }
    }

    /// Embedded mesh mode: the connector to this group's hosts.
    pub fn mesh_connector(&self) -> Option<Arc<MeshConnector>> {
        self.mesh_connector.clone()
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Whether a request with this method may go to another host after a failure.
    pub fn retries(&self, method: &http::Method) -> bool {
        self.retry_methods.contains(method)
    }

    /// The balancer, for the background service that runs its health checks.
    pub fn balancer(&self) -> Arc<LoadBalancer<RoundRobin>> {
        self.balancer.clone()
    }

    /// True when the last health check of at least one host passed.
    pub fn any_host_up(&self) -> bool {
        self.hosts
            .iter()
            .any(|h| h.state.load(Ordering::Relaxed) == UP)
    }

    /// Each host with what its last health check found: `up`, `down` or `unchecked`.
    pub fn host_states(&self) -> Vec<(String, &'static str)> {
        self.hosts
            .iter()
            .map(|h| {
                let state = match h.state.load(Ordering::Relaxed) {
                    UP => "up",
                    DOWN => "down",
                    _ => "unchecked",
                };
                (h.label.clone(), state)
            })
            .collect()
    }

    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// The next healthy host not already tried for this request, as a peer with the group's
    /// timeouts. When no host is healthy, the next host not tried whose connect has not just
    /// failed: a health check only runs every interval, and a host that is back must not
    /// wait for it (nginx never marks its last server down). `None` only when every host
    /// was tried or is known down.
    pub fn pick(&self, tried: &[SocketAddr]) -> Option<(HttpPeer, String)> {
        let healthy = self.balancer.select_with(b"", 256, |backend, healthy| {
            healthy
                && backend.addr.as_inet().is_some_and(|addr| {
                    !tried.contains(addr)
                        && !self
                            .hosts
                            .iter()
                            .any(|h| h.address == *addr && h.ejected.load(Ordering::Relaxed))
                })
        });
        let address = match healthy {
            Some(backend) => *backend.addr.as_inet()?,
            None => self.pick_unhealthy(tried)?,
        };
        let label = self
            .hosts
            .iter()
            .find(|h| h.address == address)
            .map(|h| h.label.clone())
            .unwrap_or_else(|| address.to_string());
        Some((self.peer(address), label))
    }

    /// The host `key` belongs to, by rendezvous hashing over the hosts in rotation and not
    /// `tried`: every PoP picks the same host for a key while they see the same hosts, and
    /// a host taken out moves only its own keys (to the next host of each key's order).
    /// `None` when no host is left: the caller goes elsewhere rather than trying one.
    pub fn pick_for_key(&self, key: &str, tried: &[SocketAddr]) -> Option<(HttpPeer, String)> {
        let now = Instant::now();
        let host = self
            .hosts
            .iter()
            .filter(|h| {
                !tried.contains(&h.address)
                    && h.state.load(Ordering::Relaxed) != DOWN
                    && !h.ejected.load(Ordering::Relaxed)
                    && !h.known_down(now)
            })
            .max_by_key(|h| rendezvous_weight(&h.label, key))?;
        Some((self.peer(host.address), host.label.clone()))
    }

    /// A peer for one of the group's hosts, with the group's timeouts.
    fn peer(&self, address: SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(address, false, String::new());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.total_connection_timeout = Some(self.connect_timeout);
        // A total bound caps the wait for the response head too.
        peer.options.read_timeout = Some(
            self.total_timeout
                .map_or(self.read_timeout, |total| total.min(self.read_timeout)),
        );
        peer.options.write_timeout = Some(self.write_timeout);
        peer.options.idle_timeout = Some(self.idle_timeout);
        peer.options.custom_l4 = self
            .mesh_connector
            .clone()
            .map(|c| c as Arc<dyn L4Connect + Send + Sync>);
        peer
    }
}

/// A host's weight for a key in rendezvous hashing: FNV-1a over both, then a 64-bit mix, so
/// every PoP (whatever its build) ranks hosts alike.
fn rendezvous_weight(host: &str, key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in host.bytes().chain([0xff]).chain(key.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // The finaliser of splitmix64: FNV's low bits alone spread similar keys poorly.
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

impl CoreGroup {
    /// A host to try although none is healthy: in turn, skipping hosts already tried for
    /// this request and hosts a connect failed to a moment ago. A host a request connected
    /// to lately takes every request; any other takes one trial request at a time, so a
    /// host that does not answer at all (its connects time out) is not sent a request per
    /// client, each waiting out its connect timeout: the rest get a fast 503.
    fn pick_unhealthy(&self, tried: &[SocketAddr]) -> Option<SocketAddr> {
        let count = self.hosts.len();
        if count == 0 {
            return None;
        }
        let start = self.unhealthy_turn.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        (0..count)
            .map(|i| &self.hosts[(start + i) % count])
            .find(|h| {
                !tried.contains(&h.address)
                    && !h.known_down(now)
                    && (h.connected_within(now, self.health_interval)
                        || h.take_trial(now, self.connect_timeout))
            })
            .map(|h| h.address)
    }
}

/// Every upstream group of the core, by name.
pub struct CoreUpstreams {
    pub default_group: String,
    pub groups: BTreeMap<String, Arc<CoreGroup>>,
    pub mesh: Arc<Mesh>,
}

impl CoreUpstreams {
    pub fn new(core: &Core, mesh: Arc<Mesh>) -> std::io::Result<Self> {
        let mut groups = BTreeMap::new();
        for (name, group) in &core.groups {
            groups.insert(name.clone(), Arc::new(CoreGroup::new(group, &mesh)?));
        }
        Ok(CoreUpstreams {
            default_group: core.default_group.clone(),
            groups,
            mesh,
        })
    }

    pub fn default(&self) -> Option<&Arc<CoreGroup>> {
        self.groups.get(&self.default_group)
    }

    /// The named group, or the default one.
    pub fn group(&self, name: Option<&str>) -> Option<&Arc<CoreGroup>> {
        match name {
            Some(name) => self.groups.get(name),
            None => self.default(),
        }
    }

    /// True when the default group (the one every unrouted request goes to) has at least
    /// one host whose last health check passed.
    pub fn ready(&self) -> bool {
        self.default().is_some_and(|g| g.any_host_up())
    }
}

#[cfg(test)]
mod rendezvous_tests {
    use super::rendezvous_weight;

    fn owner<'a>(hosts: &[&'a str], key: &str) -> &'a str {
        hosts
            .iter()
            .copied()
            .max_by_key(|h| rendezvous_weight(h, key))
            .expect("a host")
    }

    #[test]
    fn keys_spread_over_hosts_and_a_host_gone_moves_only_its_own() {
        let hosts = ["fra-1", "ewr-1", "nrt-1"];
        let keys: Vec<String> = (0..3000)
            .map(|n| format!("https://example.social/system/media_attachments/files/{n}/a.png"))
            .collect();
        let before: Vec<&str> = keys.iter().map(|k| owner(&hosts, k)).collect();
        for host in hosts {
            let share = before.iter().filter(|h| **h == host).count();
            assert!((800..1200).contains(&share), "{host} owns {share} of 3000");
        }
        let after: Vec<&str> = keys.iter().map(|k| owner(&["fra-1", "nrt-1"], k)).collect();
        for (was, now) in before.iter().zip(&after) {
            if *was != "ewr-1" {
                assert_eq!(was, now, "a key of a host still there moved");
            }
        }
    }
}
