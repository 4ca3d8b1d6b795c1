//! Validation: the parsed file structs become the [`Config`] model, or a list of problems.
//!
//! [`Config::from_file`] checks every value (addresses parse, certificates load and match
//! their keys, names are unique, limits are within what the HTTP parser can enforce) and
//! records every problem with the line of the key it is about, so one run of `check-config`
//! lists them all.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;
use pingora::tls::sign::CertifiedKey;

use super::error::{ConfigError, ConfigProblem};
use super::file::{self, AccessLogOutput, ConfigFile};
use super::locate::KeyLines;
use super::model::{
    AccessLog, Admin, Config, Limits, Listener, ListenerTls, Logging, ServerSettings,
    TrustedProxies, PARSER_HEADER_LIMIT,
};
use crate::certs::{load_certified_key, CertificateError, CertificateSet};

mod cache;
mod client_limits;
mod compression;
mod core;
mod fleet;
mod media;
mod sites;

/// Collects problems with the line of the key each is about.
struct Checker<'a> {
    file: &'a Path,
    lines: &'a KeyLines,
    problems: Vec<ConfigProblem>,
}

impl Checker<'_> {
    fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            file: self.file.to_path_buf(),
            line: self.lines.line_of(key),
            key: key.to_string(),
            message: message.into(),
        });
    }

    /// A relative path in the config is relative to the config file's own directory, so the
    /// same file works whatever directory the process starts in.
    fn resolve_path(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            return path.to_path_buf();
        }
        match self.file.parent() {
            Some(dir) => dir.join(path),
            None => path.to_path_buf(),
        }
    }

    fn socket_addr(&mut self, key: &str, text: &str) -> Option<SocketAddr> {
        match text.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.problem(
                    key,
                    format!("invalid address {text:?}: expected IP:port such as 0.0.0.0:443 or [::]:443"),
                );
                None
            }
        }
    }
}

impl Config {
    /// Validates a parsed file. `lines` maps key paths to lines of `file`.
    pub fn from_file(
        parsed: ConfigFile,
        file: &Path,
        lines: &KeyLines,
    ) -> Result<Config, ConfigError> {
        let mut check = Checker {
            file,
            lines,
            problems: Vec::new(),
        };
        let server = server_settings(&mut check, &parsed.server);
        let listeners = listeners(&mut check, &parsed.listeners);
        let admin = admin(&mut check, &parsed.admin);
        let trusted_proxies = trusted_proxies(&mut check, &parsed.proxy);
        let hide_response_headers = hidden_headers(&mut check, &parsed.proxy);
        let limits = limits(&mut check, &parsed.limits);
        let logging = logging(&mut check, &parsed.logging);
        let cache = parsed.cache.as_ref().map(|c| cache::cache(&mut check, c));
        let compression = compression::compression(&mut check, &parsed.compression);
        let stores = media::stores(&mut check, &parsed.stores);
        let write_through = parsed
            .write_through
            .as_ref()
            .map(|w| media::write_through(&mut check, w));
        let fleet = parsed
            .fleet
            .as_ref()
            .map(|f| fleet::fleet(&mut check, f, admin.as_ref()));
        let cache_buster = parsed
            .cache_buster
            .as_ref()
            .and_then(|b| fleet::cache_buster(&mut check, b));
        let tombstones = media::tombstones(
            &mut check,
            &parsed.tombstones,
            fleet.as_ref().and_then(|f| f.as_ref()),
        );
        let referable = sites::Referable {
            stores: &parsed.stores,
            has_queue: write_through.is_some(),
            groups: &parsed.core.groups,
            largest_object: cache.as_ref().map(|c| c.storage.max_object_size()),
            fleet: parsed.fleet.as_ref(),
        };
        let sites = sites::sites(&mut check, &parsed.sites, &referable);
        let shields = shield_plan(&sites, parsed.fleet.as_ref());
        let core = core::core(&mut check, &parsed.core, &shields);

        if let Some(admin) = &admin {
            for (i, listener) in listeners.iter().enumerate() {
                if listener.address == admin.address && admin.address.port() != 0 {
                    check.problem(
                        &format!("listeners[{i}].address"),
                        format!("{} is also the admin address", listener.address),
                    );
                }
            }
        }

        match (admin, core) {
            (Some(admin), Some(core)) if check.problems.is_empty() => Ok(Config {
                source: file.to_path_buf(),
                server,
                listeners,
                admin,
                core,
                trusted_proxies,
                hide_response_headers,
                limits,
                logging,
                cache,
                compression,
                sites,
                stores,
                write_through,
                fleet: fleet.flatten(),
                cache_buster,
                tombstones,
            }),
            _ => Err(ConfigError {
                problems: check.problems,
            }),
        }
    }
}

/// The sets of shield PoPs the routes name, and where each of those PoPs listens.
fn shield_plan(
    sites: &crate::config::model::Sites,
    fleet: Option<&file::FleetFile>,
) -> core::ShieldPlan {
    let mut plan = core::ShieldPlan::default();
    let routes = sites.sites.iter().flat_map(|site| &site.routes);
    for shield in routes.filter_map(|route| route.shield.as_ref()) {
        plan.sets.insert(shield.pops.clone());
    }
    for (i, peer) in fleet.map_or(&[][..], |f| &f.peers).iter().enumerate() {
        let named = plan.sets.iter().any(|set| set.contains(&peer.name));
        if let (true, Some(address)) = (named, &peer.shield) {
            plan.addresses.insert(
                peer.name.clone(),
                (format!("fleet.peers[{i}].shield"), address.clone()),
            );
        }
    }
    plan
}

fn server_settings(check: &mut Checker, server: &file::ServerFile) -> ServerSettings {
    if server.threads == 0 || server.threads > 256 {
        check.problem("server.threads", "must be between 1 and 256");
    }
    let upgrade_socket = check.resolve_path(&server.upgrade_socket);
    // A Unix socket address holds at most 107 bytes of path; pingora panics beyond that.
    if upgrade_socket.as_os_str().len() > 107 {
        check.problem(
            "server.upgrade_socket",
            format!(
                "{} is longer than the 107 bytes a Unix socket path may have",
                upgrade_socket.display()
            ),
        );
    }
    ServerSettings {
        threads: server.threads.clamp(1, 256),
        grace_period: server.grace_period.get(),
        graceful_shutdown_timeout: server.graceful_shutdown_timeout.get(),
        upgrade_socket,
    }
}

fn listeners(check: &mut Checker, files: &[file::ListenerFile]) -> Vec<Listener> {
    if files.is_empty() {
        check.problem("listeners", "at least one listener is needed");
    }
    let mut names = HashSet::new();
    let mut addresses = HashSet::new();
    let mut out = Vec::new();
    for (i, listener) in files.iter().enumerate() {
        let key = format!("listeners[{i}]");
        if !valid_label(&listener.name) {
            check.problem(
                &format!("{key}.name"),
                format!(
                    "invalid name {:?}: use letters, digits, '-' and '_'",
                    listener.name
                ),
            );
        } else if !names.insert(listener.name.clone()) {
            check.problem(
                &format!("{key}.name"),
                format!("duplicate listener name {:?}", listener.name),
            );
        }
        let address = check.socket_addr(&format!("{key}.address"), &listener.address);
        if let Some(address) = address {
            // Port 0 is a different port of the kernel's choice for each listener.
            if address.port() != 0 && !addresses.insert(address) {
                check.problem(
                    &format!("{key}.address"),
                    format!("{address} is used by another listener"),
                );
            }
        }
        if listener.h2c && listener.tls.is_some() {
            check.problem(
                &format!("{key}.h2c"),
                "h2c is for plain listeners; TLS listeners offer h2 through ALPN",
            );
        }
        if listener.shield && listener.tls.is_some() {
            check.problem(
                &format!("{key}.shield"),
                "a shield listener takes plain HTTP from the other PoPs over the mesh; leave out tls",
            );
        }
        let tls = listener
            .tls
            .as_ref()
            .and_then(|tls| listener_tls(check, &format!("{key}.tls"), tls));
        if let Some(address) = address {
            out.push(Listener {
                name: listener.name.clone(),
                address,
                tls,
                h2c: listener.h2c,
                shield: listener.shield,
            });
        }
    }
    out
}

fn listener_tls(check: &mut Checker, key: &str, tls: &file::TlsFile) -> Option<ListenerTls> {
    if tls.certificates.is_empty() {
        check.problem(
            &format!("{key}.certificates"),
            "a TLS listener needs at least one certificate",
        );
        return None;
    }
    let before = check.problems.len();
    let mut entries = Vec::new();
    let mut seen_names = HashSet::new();
    for (i, cert) in tls.certificates.iter().enumerate() {
        let cert_key = format!("{key}.certificates[{i}]");
        let mut names = Vec::new();
        if cert.names.is_empty() {
            check.problem(
                &format!("{cert_key}.names"),
                "list the host names this certificate serves",
            );
        }
        for (j, name) in cert.names.iter().enumerate() {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if !valid_server_name(&name) {
                check.problem(
                    &format!("{cert_key}.names[{j}]"),
                    format!("invalid host name {name:?}"),
                );
            } else if !seen_names.insert(name.clone()) {
                check.problem(
                    &format!("{cert_key}.names[{j}]"),
                    format!("{name} is already served by another certificate on this listener"),
                );
            } else {
                names.push(name);
            }
        }
        if let Some(loaded) = certificate_pair(check, &cert_key, cert) {
            entries.push((names, Arc::new(loaded)));
        }
    }
    if check.problems.len() > before {
        return None;
    }
    let default_name = match &tls.default_name {
        Some(name) => name.trim_end_matches('.').to_ascii_lowercase(),
        None => entries
            .first()
            .and_then(|(names, _)| names.first().cloned())
            .unwrap_or_default(),
    };
    let default = entries
        .iter()
        .find(|(names, _)| names.contains(&default_name))
        .map(|(_, key)| key.clone());
    let Some(default) = default else {
        check.problem(
            &format!("{key}.default_name"),
            format!("{default_name:?} is not one of this listener's certificate names"),
        );
        return None;
    };
    Some(ListenerTls {
        certificates: CertificateSet::new(entries, default),
    })
}

/// One certificate and its key, loaded and matched; a problem names the file's key
/// (`cert` or `key`) of `cert_key` (`listeners[0].tls.certificates[1]`).
fn certificate_pair(
    check: &mut Checker,
    cert_key: &str,
    cert: &file::CertificateFile,
) -> Option<CertifiedKey> {
    let cert_path = check.resolve_path(&cert.cert);
    let key_path = check.resolve_path(&cert.key);
    let e = match load_certified_key(&cert_path, &key_path) {
        Ok(loaded) => return Some(loaded),
        Err(e) => e,
    };
    let field = match &e {
        CertificateError::Read { path, .. } | CertificateError::BadPem { path, .. }
            if *path == key_path =>
        {
            "key"
        }
        CertificateError::NoKey { .. } | CertificateError::Mismatch { .. } => "key",
        _ => "cert",
    };
    let message = match &e {
        CertificateError::Read { path, source }
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            format!("file not found: {}", path.display())
        }
        other => other.to_string(),
    };
    check.problem(&format!("{cert_key}.{field}"), message);
    None
}

fn admin(check: &mut Checker, admin: &file::AdminFile) -> Option<Admin> {
    let address = check.socket_addr("admin.address", &admin.address);
    let token = match &admin.token_file {
        None => None,
        Some(path) => {
            let path = check.resolve_path(path);
            match std::fs::read_to_string(&path) {
                Ok(text) if !text.trim().is_empty() => Some(text.trim().to_string()),
                Ok(_) => {
                    check.problem("admin.token_file", format!("{} is empty", path.display()));
                    None
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    check.problem(
                        "admin.token_file",
                        format!("file not found: {}", path.display()),
                    );
                    None
                }
                Err(e) => {
                    check.problem(
                        "admin.token_file",
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            }
        }
    };
    address.map(|address| Admin { address, token })
}

fn trusted_proxies(check: &mut Checker, proxy: &file::ProxyFile) -> TrustedProxies {
    let mut nets = Vec::new();
    for (i, text) in proxy.trusted_proxies.iter().enumerate() {
        if let Ok(net) = text.parse::<IpNet>() {
            nets.push(net);
        } else if let Ok(ip) = text.parse::<IpAddr>() {
            nets.push(IpNet::from(ip));
        } else {
            check.problem(
                &format!("proxy.trusted_proxies[{i}]"),
                format!("invalid address or CIDR {text:?}"),
            );
        }
    }
    TrustedProxies::new(nets)
}

fn hidden_headers(check: &mut Checker, proxy: &file::ProxyFile) -> Vec<http::HeaderName> {
    let mut names = Vec::new();
    for (i, text) in proxy.hide_response_headers.iter().enumerate() {
        match http::HeaderName::from_bytes(text.as_bytes()) {
            Ok(name) => names.push(name),
            Err(_) => check.problem(
                &format!("proxy.hide_response_headers[{i}]"),
                format!("{text:?} is not a header name"),
            ),
        }
    }
    names
}

fn limits(check: &mut Checker, limits: &file::LimitsFile) -> Limits {
    let header = limits.max_header_size.bytes();
    let uri = limits.max_uri_length.bytes();
    if !(1024..=PARSER_HEADER_LIMIT).contains(&header) {
        check.problem(
            "limits.max_header_size",
            format!("must be between 1KiB and {PARSER_HEADER_LIMIT} bytes (the HTTP parser's own limit)"),
        );
    }
    if uri < 256 || uri > header {
        check.problem(
            "limits.max_uri_length",
            "must be at least 256 bytes and no more than limits.max_header_size",
        );
    }
    if limits.max_connections == 0 {
        check.problem("limits.max_connections", "must be greater than zero");
    }
    if limits.client_table_size == 0 {
        check.problem("limits.client_table_size", "must be greater than zero");
    }
    if limits.client_header_timeout.get().is_zero() {
        check.problem("limits.client_header_timeout", "must be greater than zero");
    }
    if limits.websocket_idle_timeout.get().is_zero() {
        check.problem("limits.websocket_idle_timeout", "must be greater than zero");
    }
    Limits {
        max_connections: limits.max_connections.max(1),
        max_uri_length: usize::try_from(uri).unwrap_or(usize::MAX),
        max_header_size: usize::try_from(header).unwrap_or(usize::MAX),
        keepalive_timeout: limits.keepalive_timeout.get(),
        client_body_timeout: limits.client_body_timeout.get(),
        client_header_timeout: limits.client_header_timeout.get(),
        client_table_size: limits.client_table_size.max(1),
        websocket_idle_timeout: limits.websocket_idle_timeout.get(),
    }
}

fn logging(check: &mut Checker, logging: &file::LoggingFile) -> Logging {
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&logging.level) {
        check.problem(
            "logging.level",
            format!("invalid filter {:?}: {e}", logging.level),
        );
    }
    let access = &logging.access_log;
    let path = match (access.output, &access.path) {
        (AccessLogOutput::File, None) => {
            check.problem("logging.access_log.path", "output: file needs a path");
            None
        }
        (AccessLogOutput::File, Some(path)) => Some(check.resolve_path(path)),
        (_, Some(_)) => {
            check.problem(
                "logging.access_log.path",
                "a path is only used with output: file",
            );
            None
        }
        (_, None) => None,
    };
    if access.queue_size == 0 {
        check.problem("logging.access_log.queue_size", "must be greater than zero");
    }
    Logging {
        level: logging.level.clone(),
        format: logging.format,
        access_log: AccessLog {
            output: access.output,
            path,
            queue_size: access.queue_size.max(1),
        },
    }
}

fn valid_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A DNS name, optionally with one leading `*.` label.
fn valid_server_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        assert!(valid_server_name("hachyderm.example"));
        assert!(valid_server_name("*.hachyderm.example"));
        assert!(!valid_server_name("*"));
        assert!(!valid_server_name("bad name"));
        assert!(!valid_server_name("-x.example"));
    }
}
