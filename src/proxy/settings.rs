//! The proxy settings a reload may replace: taken as one snapshot per request.

use std::sync::Arc;

use super::client_limits::RouteLimiter;
use crate::config::model::{CacheBuster, CachePolicy, Compression, Limits, Sites, TrustedProxies};

/// One limiter per route that has a `client_limit`, at the route's id.
fn client_limiters(sites: &Sites, table_size: usize) -> Vec<Option<Arc<RouteLimiter>>> {
    let mut limiters = Vec::new();
    for route in sites.sites.iter().flat_map(|site| &site.routes) {
        let Some(limit) = &route.client_limit else {
            continue;
        };
        if limiters.len() <= route.id {
            limiters.resize(route.id + 1, None);
        }
        limiters[route.id] = Some(Arc::new(RouteLimiter::new(
            &route.path,
            limit.clone(),
            table_size,
        )));
    }
    limiters
}

/// The settings a reload may change while requests are flowing.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub trusted_proxies: TrustedProxies,
    pub hide_response_headers: Vec<http::HeaderName>,
    pub limits: LimitsSnapshot,
    pub cache_policy: Option<CachePolicy>,
    pub sites: Sites,
    pub cache_buster: Option<CacheBuster>,
    pub compression: Compression,
    /// By route id: the route's per-client limits with their counts (which a reload
    /// starts afresh).
    pub client_limiters: Vec<Option<Arc<RouteLimiter>>>,
}

impl ProxySettings {
    pub fn from_config(config: &crate::config::Config) -> Self {
        ProxySettings {
            trusted_proxies: config.trusted_proxies.clone(),
            hide_response_headers: config.hide_response_headers.clone(),
            limits: LimitsSnapshot::from(&config.limits),
            cache_policy: config.cache.as_ref().map(|c| c.policy.clone()),
            sites: config.sites.clone(),
            cache_buster: config.cache_buster.clone(),
            compression: config.compression.clone(),
            client_limiters: client_limiters(&config.sites, config.limits.client_table_size),
        }
    }
}

/// The request limits, copied out of the config.
#[derive(Debug, Clone, Copy)]
pub struct LimitsSnapshot {
    pub max_uri_length: usize,
    pub max_header_size: usize,
    pub keepalive_secs: u64,
    pub max_connections: usize,
    pub client_body_timeout: std::time::Duration,
    pub client_header_timeout: std::time::Duration,
    pub websocket_idle_timeout: std::time::Duration,
}

impl From<&Limits> for LimitsSnapshot {
    fn from(limits: &Limits) -> Self {
        LimitsSnapshot {
            max_uri_length: limits.max_uri_length,
            max_header_size: limits.max_header_size,
            keepalive_secs: limits.keepalive_timeout.as_secs().max(1),
            max_connections: limits.max_connections,
            client_body_timeout: limits.client_body_timeout,
            client_header_timeout: limits.client_header_timeout,
            websocket_idle_timeout: limits.websocket_idle_timeout,
        }
    }
}
