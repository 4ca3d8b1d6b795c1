//! Decisions for requests that go to the core: the request's route (looked up once), which
//! upstream group, whether a failure may be retried on another host, the request id, and
//! the body limit.
//!
//! Retrying is where an edge can make a core's bad day worse: a POST sent twice is a
//! duplicate post. Only the group's `retry_methods` (GET, HEAD and OPTIONS unless PUT or
//! DELETE are added) are retried, and only when no byte of a request body has been read
//! from the client, so nothing of it can have reached a host.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pingora::http::RequestHeader;

use super::client_limits::RouteLimiter;
use super::ProxySettings;
use crate::cache::key as cache_key;

/// What the request's route says about it, looked up once per request.
#[derive(Debug, Clone)]
pub struct RouteChoice {
    /// The core group; `None`: the default group.
    pub upstream: Option<String>,
    /// The route's path, when it is a media route (its objects are keyed below it).
    pub media: Option<String>,
    pub max_body_size: Option<u64>,
    /// `false`: the route never uses the shared cache.
    pub cache: bool,
    /// How long a response that states no freshness is kept.
    pub cache_ttl: Option<std::time::Duration>,
    /// What one client may ask of the route.
    pub client_limit: Option<Arc<RouteLimiter>>,
}

impl Default for RouteChoice {
    /// No route: forward to the default group and let the response's headers decide.
    fn default() -> Self {
        RouteChoice {
            upstream: None,
            media: None,
            max_body_size: None,
            cache: true,
            cache_ttl: None,
            client_limit: None,
        }
    }
}

pub fn choose(settings: &ProxySettings, req: &RequestHeader, tls: bool) -> RouteChoice {
    let Some(host) = cache_key::request_host(req, tls) else {
        return RouteChoice::default();
    };
    match settings.sites.route(&host, req.uri.path()) {
        Some(route) => RouteChoice {
            upstream: route.upstream.clone(),
            media: route.media.as_ref().map(|_| route.path.clone()),
            max_body_size: route.max_body_size,
            cache: route.cache,
            cache_ttl: route.cache_ttl,
            client_limit: client_limit(settings, &host, req.uri.path()),
        },
        None => RouteChoice {
            client_limit: client_limit(settings, &host, req.uri.path()),
            ..RouteChoice::default()
        },
    }
}

/// The per-client limit for `path`, found with repeated slashes squeezed: Rails routes
/// `//auth/sign_in` as `/auth/sign_in`, so a doubled slash must not step around its limit.
/// (Only the limit is looked up this way; the route itself keys on the path as sent.)
fn client_limit(settings: &ProxySettings, host: &str, path: &str) -> Option<Arc<RouteLimiter>> {
    let squeezed;
    let path = if path.contains("//") {
        let mut out = String::with_capacity(path.len());
        for c in path.chars() {
            if !(c == '/' && out.ends_with('/')) {
                out.push(c);
            }
        }
        squeezed = out;
        squeezed.as_str()
    } else {
        path
    };
    let route = settings.sites.route(host, path)?;
    settings.client_limiters.get(route.id).cloned().flatten()
}

/// Whether a failed attempt may be repeated on another host.
pub fn may_retry(group_retries: bool, body_bytes_read: usize) -> bool {
    group_retries && body_bytes_read == 0
}

/// The declared body length, when it is over `max`.
pub fn declared_length_over(req: &RequestHeader, max: u64) -> bool {
    crate::wire::content_length(&req.headers).is_some_and(|len| len > max)
}

pub const X_REQUEST_ID: http::header::HeaderName =
    http::header::HeaderName::from_static("x-request-id");

/// Request ids: unique per process run, not secret.
pub struct RequestIds {
    run: u64,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        // std's per-process random hasher keys make a run prefix without another dependency.
        let run = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        RequestIds {
            run,
            next: AtomicU64::new(0),
        }
    }
}

impl RequestIds {
    /// The client's `X-Request-Id` when it is a sane token, or a new one.
    pub fn for_request(&self, req: &RequestHeader) -> String {
        if let Some(given) = req
            .headers
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| valid_request_id(v))
        {
            return given.to_string();
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{n:016x}", self.run)
    }
}

/// 1 to 128 visible ASCII characters: what a log line and a header can carry as is.
fn valid_request_id(value: &str) -> bool {
    (1..=128).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        let ids = RequestIds::default();
        let mut req = RequestHeader::build("GET", b"/", None).expect("request");
        let first = ids.for_request(&req);
        let second = ids.for_request(&req);
        assert_eq!(first.len(), 32);
        assert_ne!(first, second);
        req.insert_header("X-Request-Id", "abc-123")
            .expect("header");
        assert_eq!(ids.for_request(&req), "abc-123");
        req.insert_header("X-Request-Id", "has space")
            .expect("header");
        assert_ne!(ids.for_request(&req), "has space");
        req.insert_header("X-Request-Id", "x".repeat(129))
            .expect("header");
        assert_eq!(ids.for_request(&req).len(), 32);
    }

    #[test]
    fn only_allowed_methods_without_a_body_sent_are_retried() {
        assert!(may_retry(true, 0));
        assert!(!may_retry(true, 1));
        assert!(!may_retry(false, 0));
    }
}
