//! The validated configuration: what the server is built from.
//!
//! Nothing here is `Deserialize`: `validate.rs` builds these types from the parsed file
//! structs, once every value has been checked.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::file::{AccessLogOutput, LogFormat};
use crate::tls::CertificateSet;

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
    pub limits: Limits,
    pub logging: Logging,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub threads: usize,
    pub grace_period: Duration,
    pub graceful_shutdown_timeout: Duration,
}

pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub tls: Option<ListenerTls>,
    pub h2c: bool,
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
    pub groups: BTreeMap<String, UpstreamGroup>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamGroup {
    pub name: String,
    pub hosts: Vec<UpstreamHost>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    pub health: HealthCheck,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamHost {
    /// As written in the config (`core-1:3000`), for logs and metric labels.
    pub label: String,
    pub address: SocketAddr,
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
}
