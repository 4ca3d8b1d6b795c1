//! Validation of `core:`: the upstream groups, their hosts and how the mesh reaches them.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use super::{valid_label, valid_server_name, Checker};
use crate::config::file::{self, MeshMode};
use crate::config::model::{
    Core, EmbeddedMesh, HealthCheck, MeshSettings, Secret, UpstreamGroup, UpstreamHost,
};

const DEFAULT_CONTROL_URL: &str = "https://controlplane.tailscale.com";
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How a group's host entries are read.
struct HostParsing<'a> {
    /// Names are tailnet names, looked up by the embedded node rather than the OS.
    embedded: bool,
    stand_ins: &'a mut StandIns,
}

/// One stand-in address per tailnet name, the same in every group.
#[derive(Default)]
struct StandIns {
    by_name: BTreeMap<String, Ipv6Addr>,
}

impl StandIns {
    fn for_name(&mut self, name: &str) -> Option<Ipv6Addr> {
        if let Some(address) = self.by_name.get(name) {
            return Some(*address);
        }
        let index = u16::try_from(self.by_name.len() + 1).ok()?;
        let address = Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, index);
        self.by_name.insert(name.to_string(), address);
        Some(address)
    }
}

/// The core's groups, and one more for each set of shield PoPs the routes name (`shields`,
/// their `host:port` from `fleet.peers`), dialled the way the core's hosts are.
pub(super) fn core(
    check: &mut Checker,
    core: &file::CoreFile,
    shields: &ShieldPlan,
) -> Option<Core> {
    if core.groups.is_empty() {
        check.problem("core.groups", "define at least one upstream group");
        return None;
    }
    let mesh = mesh(check, &core.mesh);
    // Decided by the mode as written, so tailnet names never reach the OS resolver even
    // when another mesh setting is wrong.
    let embedded = core.mesh.mode == MeshMode::Embedded;
    let mut stand_ins = StandIns::default();
    let mut groups = BTreeMap::new();
    for (name, group) in &core.groups {
        let key = format!("core.groups.{name}");
        if !valid_label(name) {
            check.problem(
                &key,
                format!("invalid group name {name:?}: use letters, digits, '-' and '_'"),
            );
            continue;
        }
        let hosts = HostParsing {
            embedded,
            stand_ins: &mut stand_ins,
        };
        if let Some(group) = upstream_group(check, &key, name, group, hosts) {
            groups.insert(name.clone(), group);
        }
    }
    let default_group = match &core.default_group {
        Some(name) => name.clone(),
        None if core.groups.len() == 1 => core.groups.keys().next().cloned().unwrap_or_default(),
        None => "web".to_string(),
    };
    if !core.groups.contains_key(&default_group) {
        check.problem(
            "core.default_group",
            format!("no upstream group named {default_group:?} (set core.default_group to one of the groups)"),
        );
    }
    if let Some(template) = groups.get(&default_group).cloned() {
        let mut parsing = HostParsing {
            embedded,
            stand_ins: &mut stand_ins,
        };
        for group in shield_groups(check, shields, &template, &mut parsing) {
            groups.insert(group.name.clone(), group);
        }
    }
    Some(Core {
        default_group,
        keepalive_pool_size: core.keepalive_pool_size,
        groups,
        mesh: mesh?,
    })
}

fn upstream_group(
    check: &mut Checker,
    key: &str,
    name: &str,
    group: &file::UpstreamGroupFile,
    parsing: HostParsing,
) -> Option<UpstreamGroup> {
    if group.hosts.is_empty() {
        check.problem(&format!("{key}.hosts"), "list at least one host:port");
    }
    let hosts = group_hosts(check, key, group, parsing);
    for (field, value) in [
        ("connect_timeout", group.connect_timeout),
        ("read_timeout", group.read_timeout),
        ("write_timeout", group.write_timeout),
        ("health.interval", group.health.interval),
    ] {
        if value.get().is_zero() {
            check.problem(&format!("{key}.{field}"), "must be greater than zero");
        }
    }
    if let Some(path) = &group.health.path {
        if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            check.problem(
                &format!("{key}.health.path"),
                format!("invalid path {path:?}: must start with '/'"),
            );
        }
    }
    if group.total_timeout.is_some_and(|t| t.get().is_zero()) {
        check.problem(&format!("{key}.total_timeout"), "must be greater than zero");
    }
    let retry_methods = retry_methods(check, key, group);
    if hosts.is_empty() {
        return None;
    }
    Some(UpstreamGroup {
        retry_methods,
        name: name.to_string(),
        hosts,
        connect_timeout: group.connect_timeout.get(),
        read_timeout: group.read_timeout.get(),
        write_timeout: group.write_timeout.get(),
        idle_timeout: group.idle_timeout.get(),
        total_timeout: group.total_timeout.map(|t| t.get()),
        health: HealthCheck {
            interval: group.health.interval.get(),
            path: group.health.path.clone(),
        },
    })
}

/// The shield PoPs each route names, and where their shield listeners are.
#[derive(Default)]
pub(super) struct ShieldPlan {
    /// Each set of PoPs some route names.
    pub(super) sets: std::collections::BTreeSet<Vec<String>>,
    /// Each shield peer's `host:port`, with the key it is written under.
    pub(super) addresses: BTreeMap<String, (String, String)>,
}

/// What a PoP waits for a shield beyond the shield's own connect and read timeouts.
const SHIELD_MARGIN: std::time::Duration = std::time::Duration::from_secs(1);

/// One group per set of shield PoPs, with the default group's timeouts (reads a little
/// longer); its hosts are checked with a TCP connect. A shield is asked first and skipped
/// when it fails, so a request may always go on to the core after it (GET and HEAD only
/// take this hop).
fn shield_groups(
    check: &mut Checker,
    shields: &ShieldPlan,
    template: &UpstreamGroup,
    parsing: &mut HostParsing,
) -> Vec<UpstreamGroup> {
    let mut hosts: BTreeMap<&str, UpstreamHost> = BTreeMap::new();
    for (pop, (key, text)) in &shields.addresses {
        let parsed = if parsing.embedded {
            mesh_host(text, parsing.stand_ins)
        } else {
            resolve_host(text).map(|address| (address, None))
        };
        match parsed {
            Ok((address, mesh_name)) => {
                hosts.insert(
                    pop,
                    UpstreamHost {
                        label: pop.clone(),
                        address,
                        mesh_name,
                    },
                );
            }
            Err(message) => check.problem(key, message),
        }
    }
    shields
        .sets
        .iter()
        .filter_map(|pops| {
            let members: Vec<UpstreamHost> = pops
                .iter()
                .filter_map(|pop| hosts.get(pop.as_str()).cloned())
                .collect();
            (members.len() == pops.len()).then(|| UpstreamGroup {
                name: crate::config::model::Shield::group_name(pops),
                hosts: members,
                health: HealthCheck {
                    interval: template.health.interval,
                    path: None,
                },
                retry_methods: vec![http::Method::GET, http::Method::HEAD],
                // Longer than the shield's own wait for the core, so that a slow core's 504
                // arrives from the shield before this PoP gives up and asks the core itself.
                read_timeout: template.read_timeout + template.connect_timeout + SHIELD_MARGIN,
                ..template.clone()
            })
        })
        .collect()
}

/// The group's hosts, each parsed once (a tailnet name stands in as a 100::/64 address).
fn group_hosts(
    check: &mut Checker,
    key: &str,
    group: &file::UpstreamGroupFile,
    parsing: HostParsing,
) -> Vec<UpstreamHost> {
    let mut hosts = Vec::new();
    for (i, host) in group.hosts.iter().enumerate() {
        let host_key = format!("{key}.hosts[{i}]");
        let parsed = if parsing.embedded {
            mesh_host(host, parsing.stand_ins)
        } else {
            resolve_host(host).map(|address| (address, None))
        };
        match parsed {
            Ok((address, _)) if hosts.iter().any(|h: &UpstreamHost| h.address == address) => {
                check.problem(&host_key, format!("{host} is listed twice in this group"));
            }
            Ok((address, mesh_name)) => hosts.push(UpstreamHost {
                label: host.clone(),
                address,
                mesh_name,
            }),
            Err(message) => check.problem(&host_key, message),
        }
    }
    hosts
}

/// The methods a failed request of the group may be retried with: never a POST.
fn retry_methods(
    check: &mut Checker,
    key: &str,
    group: &file::UpstreamGroupFile,
) -> Vec<http::Method> {
    let mut retry_methods = Vec::new();
    for (i, method) in group.retry_methods.iter().enumerate() {
        let upper = method.to_ascii_uppercase();
        match upper.as_str() {
            "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" => {
                if let Ok(m) = upper.parse::<http::Method>() {
                    retry_methods.push(m);
                }
            }
            _ => check.problem(
                &format!("{key}.retry_methods[{i}]"),
                format!("{method:?} cannot be retried: only GET, HEAD, OPTIONS, PUT and DELETE may be (a retried POST is a duplicate post)"),
            ),
        }
    }
    retry_methods
}

/// `host:port`, where host is an IP or a name the resolver knows (the mesh's DNS, /etc/hosts).
fn resolve_host(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("invalid host {text:?}: expected host:port"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("invalid host {text:?}: expected host:port"));
    }
    match text.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{host} resolves to no address")),
        Err(e) => Err(format!("cannot resolve {host}: {e}")),
    }
}

/// A host entry in embedded mode: an IP (a tailnet address such as 100.64.0.7) is dialled
/// as it is; a name gets a stand-in address and is looked up in the tailnet at connect time.
fn mesh_host(text: &str, stand_ins: &mut StandIns) -> Result<(SocketAddr, Option<String>), String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        if let IpAddr::V6(v6) = addr.ip() {
            if v6.segments()[..4] == [0x100, 0, 0, 0] {
                return Err(format!(
                    "{text} is in 100::/64, which stands in for tailnet names here: use the host's tailnet address or name"
                ));
            }
        }
        return Ok((addr, None));
    }
    let expected = || format!("invalid host {text:?}: expected tailnet-name:port or IP:port");
    let (host, port) = text.rsplit_once(':').ok_or_else(expected)?;
    let port = port.parse::<u16>().map_err(|_| expected())?;
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    if name.starts_with("*.") || !valid_server_name(&name) {
        return Err(expected());
    }
    let address = stand_ins
        .for_name(&name)
        .ok_or_else(|| "too many distinct host names".to_string())?;
    Ok((SocketAddr::new(address.into(), port), Some(name)))
}

fn mesh(check: &mut Checker, mesh: &file::MeshFile) -> Option<MeshSettings> {
    if mesh.mode == MeshMode::Os {
        embedded_keys_unused(check, mesh);
        return Some(MeshSettings::Os);
    }
    let problems_before = check.problems.len();
    if !cfg!(feature = "tailscale") {
        check.problem(
            "core.mesh.mode",
            "this edgecache was built without the `tailscale` feature: build it with `cargo build --release --features tailscale`, or use `mode: os`",
        );
    }
    let key_file = match &mesh.key_file {
        Some(path) => {
            let path = check.resolve_path(path);
            if let Err(message) = check_key_file(&path) {
                check.problem("core.mesh.key_file", message);
            }
            Some(path)
        }
        None => {
            check.problem(
                "core.mesh.key_file",
                "set where this node's Tailscale keys are kept (the file is created on first start and is the node's identity)",
            );
            None
        }
    };
    let auth_key = match &mesh.auth_key_file {
        Some(path) => match read_auth_key(&check.resolve_path(path)) {
            Ok(key) => Some(key),
            Err(message) => {
                check.problem("core.mesh.auth_key_file", message);
                None
            }
        },
        None => None,
    };
    let control_url = node_naming(check, mesh);
    let start_timeout = mesh
        .start_timeout
        .map_or(DEFAULT_START_TIMEOUT, |t| t.get());
    if start_timeout.is_zero() {
        check.problem("core.mesh.start_timeout", "must be greater than zero");
    }
    if check.problems.len() > problems_before {
        return None;
    }
    Some(MeshSettings::Embedded(EmbeddedMesh {
        key_file: key_file?,
        auth_key,
        hostname: mesh.hostname.clone(),
        control_url,
        tags: mesh.tags.clone(),
        ephemeral: mesh.ephemeral.unwrap_or(false),
        start_timeout,
    }))
}

/// With `mode: os`, tailscaled joins the tailnet: the embedded node's keys mean nothing.
fn embedded_keys_unused(check: &mut Checker, mesh: &file::MeshFile) {
    for (field, set) in [
        ("key_file", mesh.key_file.is_some()),
        ("auth_key_file", mesh.auth_key_file.is_some()),
        ("hostname", mesh.hostname.is_some()),
        ("tags", !mesh.tags.is_empty()),
        ("control_url", mesh.control_url.is_some()),
        ("ephemeral", mesh.ephemeral.is_some()),
        ("start_timeout", mesh.start_timeout.is_some()),
    ] {
        if set {
            check.problem(
                &format!("core.mesh.{field}"),
                "only used with `mode: embedded` (with `mode: os` tailscaled joins the tailnet)",
            );
        }
    }
}

/// The embedded node's host name, tags and control server; returns the control URL.
fn node_naming(check: &mut Checker, mesh: &file::MeshFile) -> String {
    if let Some(hostname) = &mesh.hostname {
        if hostname.contains('.') || !valid_server_name(hostname) {
            check.problem(
                "core.mesh.hostname",
                format!("invalid host name {hostname:?}: one DNS label (letters, digits, '-')"),
            );
        }
    }
    let control_url = mesh
        .control_url
        .clone()
        .unwrap_or_else(|| DEFAULT_CONTROL_URL.to_string());
    match reqwest::Url::parse(&control_url) {
        // The crate fetches the control server's key over https whatever the URL says.
        Ok(url) if url.scheme() == "https" && url.host().is_some() => {}
        _ => check.problem(
            "core.mesh.control_url",
            format!("invalid URL {control_url:?}: expected https://host (Tailscale's or a headscale server)"),
        ),
    }
    for (i, tag) in mesh.tags.iter().enumerate() {
        let valid = tag.strip_prefix("tag:").is_some_and(valid_label);
        if !valid {
            check.problem(
                &format!("core.mesh.tags[{i}]"),
                format!("invalid tag {tag:?}: expected tag:name"),
            );
        }
    }
    control_url
}

/// A secret file must not be open to every user of the machine.
fn private_enough(path: &Path, metadata: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(format!(
            "{} is open to every user (mode {mode:04o}): chmod 600 it",
            path.display()
        ));
    }
    Ok(())
}

/// The key file may not exist yet (it is created on first start); if it does, it must be a
/// private file that holds a key state.
fn check_key_file(path: &Path) -> Result<(), String> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return match path.parent() {
                Some(dir) if dir.as_os_str().is_empty() || !dir.is_file() => Ok(()),
                _ => Err(format!("{} cannot be created", path.display())),
            };
        }
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    if !metadata.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    private_enough(path, &metadata)?;
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    match serde_json::from_slice::<serde_json::Value>(&text) {
        Ok(value) if value.get("key_state").is_some_and(|v| v.is_object()) => Ok(()),
        _ => Err(format!(
            "{} is not a Tailscale key file (JSON with a key_state object); move it away to start as a new node",
            path.display()
        )),
    }
}

fn read_auth_key(path: &Path) -> Result<Secret, String> {
    let metadata =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    private_enough(path, &metadata)?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let key = text.trim();
    if key.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{} must hold one auth key on one line",
            path.display()
        ));
    }
    Ok(Secret::new(key.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_resolve_or_explain() {
        assert_eq!(resolve_host("127.0.0.1:3000").map(|a| a.port()), Ok(3000));
        assert!(resolve_host("localhost:3000").is_ok());
        assert!(resolve_host("nohost").is_err());
        assert!(resolve_host("core:99999").is_err());
    }

    #[test]
    fn tailnet_names_get_one_stand_in_each() {
        let mut stand_ins = StandIns::default();
        let (web, web_name) = mesh_host("Core-1.tail1234.ts.net:3000", &mut stand_ins)
            .expect("a tailnet name is accepted");
        let (streaming, _) =
            mesh_host("core-1.tail1234.ts.net:4000", &mut stand_ins).expect("same name");
        let (other, _) = mesh_host("core-2:3000", &mut stand_ins).expect("a short name");
        assert_eq!(web_name.as_deref(), Some("core-1.tail1234.ts.net"));
        assert_eq!(web.ip(), streaming.ip());
        assert_ne!(web.ip(), other.ip());
        assert_eq!(streaming.port(), 4000);
        // Stand-ins come from the discard-only prefix, never a routable address.
        assert!(
            matches!(web.ip(), std::net::IpAddr::V6(v6) if v6.segments()[..4] == [0x100, 0, 0, 0])
        );
        let (ip, name) = mesh_host("100.64.0.7:3000", &mut stand_ins).expect("an IP");
        assert_eq!((ip.to_string().as_str(), name), ("100.64.0.7:3000", None));
        assert!(mesh_host("core-1", &mut stand_ins).is_err());
        assert!(mesh_host("bad name:3000", &mut stand_ins).is_err());
        assert!(mesh_host("*.x:3000", &mut stand_ins).is_err());
        assert!(
            mesh_host("[100::1]:3000", &mut stand_ins).is_err(),
            "an IP that could be a stand-in is refused"
        );
    }
}
