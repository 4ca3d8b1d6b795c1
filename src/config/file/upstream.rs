//! `core:`: the core's upstream groups, their health checks, and the mesh that reaches them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::defaults;
use crate::config::units::HumanDuration;

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
