//! `fleet:` and `cache_buster:`: purges that reach every PoP.

use std::path::PathBuf;

use serde::Deserialize;

use super::defaults;
use crate::config::units::HumanDuration;

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
    /// `host:port` of the peer's shield listener (over the mesh), when it is a shield this
    /// PoP may name in a site's or route's `shield`.
    #[serde(default)]
    pub shield: Option<String>,
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
