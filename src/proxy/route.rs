//! The one route decision of a request.
//!
//! `request_filter` looks the route up once, from the request's host and path, under the
//! settings the request runs with, and keeps it in the context as a shared [`Route`]: every
//! later hook (cache bypass and key, body limit, upstream group, the media origin it is
//! handed to) reads that one answer, so no two parts of a request can disagree on its route,
//! even across a reload.

use std::sync::Arc;

use pingora::http::RequestHeader;

use super::client_limits::RouteLimiter;
use super::ProxySettings;
use crate::cache::key as cache_key;
use crate::cache::policy::RouteFreshness;
use crate::config::model::{MediaRoute, Route};

/// The route of a request, and what one client may ask of it.
#[derive(Debug, Clone, Default)]
pub struct RouteDecision {
    /// `None`: no route matched; the request goes to the default group and the response's
    /// own headers decide caching.
    route: Option<Arc<Route>>,
    /// What one client may ask of the route.
    pub client_limit: Option<Arc<RouteLimiter>>,
}

impl RouteDecision {
    /// Looks the route up for `req`, once.
    pub fn decide(settings: &ProxySettings, req: &RequestHeader, tls: bool) -> RouteDecision {
        let Some(host) = cache_key::request_host(req, tls) else {
            return RouteDecision::default();
        };
        let path = req.uri.path();
        let route = settings.sites.route(&host, path).cloned();
        let client_limit = if path.contains("//") {
            squeezed_client_limit(settings, &host, path)
        } else {
            route.as_ref().and_then(|r| limiter_of(settings, r))
        };
        RouteDecision {
            route,
            client_limit,
        }
    }

    /// The route itself, shared (the media origin is handed it).
    pub fn route(&self) -> Option<&Arc<Route>> {
        self.route.as_ref()
    }

    /// The core group; `None`: the default group.
    pub fn upstream(&self) -> Option<&str> {
        self.route.as_ref()?.upstream.as_deref()
    }

    /// The media route and the path its objects are keyed below, when it is one.
    pub fn media(&self) -> Option<(&MediaRoute, &str)> {
        let route = self.route.as_ref()?;
        Some((route.media.as_ref()?, route.path.as_str()))
    }

    /// `false`: the route never uses the shared cache.
    pub fn cache(&self) -> bool {
        self.route.as_ref().is_none_or(|r| r.cache)
    }

    /// What the route says of responses that state no freshness of their own.
    pub fn freshness(&self) -> RouteFreshness {
        match &self.route {
            Some(route) => RouteFreshness {
                ttl: route.cache_ttl,
                heuristic: route.heuristic_freshness,
            },
            None => RouteFreshness {
                ttl: None,
                heuristic: true,
            },
        }
    }

    /// `false`: the PoP never compresses responses on this route.
    pub fn compress(&self) -> bool {
        self.route.as_ref().is_none_or(|r| r.compress)
    }

    pub fn max_body_size(&self) -> Option<u64> {
        self.route.as_ref()?.max_body_size
    }
}

/// The per-client limit for a `path` with doubled slashes, found with them squeezed: Rails
/// routes `//auth/sign_in` as `/auth/sign_in`, so a doubled slash must not step around its
/// limit. (Only the limit is looked up this way; the route itself keys on the path as sent.)
fn squeezed_client_limit(
    settings: &ProxySettings,
    host: &str,
    path: &str,
) -> Option<Arc<RouteLimiter>> {
    let mut squeezed = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && squeezed.ends_with('/')) {
            squeezed.push(c);
        }
    }
    limiter_of(settings, settings.sites.route(host, &squeezed)?)
}

fn limiter_of(settings: &ProxySettings, route: &Route) -> Option<Arc<RouteLimiter>> {
    settings.client_limiters.get(route.id).cloned().flatten()
}
