//! Which requests may use the shared cache and which responses it may keep (RFC 9111, with
//! the rules a Mastodon edge needs on top).
//!
//! A request that identifies a user (`Authorization`, a session cookie, an HTTP `Signature`)
//! never touches the cache: neither its answer nor a stored one for someone else. A response
//! that sets a cookie, varies on everything, or says `private`/`no-store` is not kept.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{header, Method, StatusCode};
use pingora::cache::cache_control::{CacheControl, InterpretCacheControl};

use super::directives::Directives;
use pingora::cache::{CacheMeta, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::model::{CachePolicy, HeuristicFreshness};

/// Why a request does not use the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BypassReason {
    Method,
    Upgrade,
    Authorization,
    Signature,
    SessionCookie,
    RequestBody,
    Route,
    NoHost,
}

/// Whether a request may be answered from, and its response stored into, the shared cache.
/// `session_has_body` is what the connection says of the body: over HTTP/2 a body can come
/// as DATA frames with neither `Content-Length` nor `Transfer-Encoding`, so the headers alone
/// cannot tell.
pub fn request_bypass(
    req: &RequestHeader,
    session_has_body: bool,
    route_caches: bool,
    policy: &CachePolicy,
) -> Option<BypassReason> {
    if !route_caches {
        return Some(BypassReason::Route);
    }
    if req.method != Method::GET && req.method != Method::HEAD {
        return Some(BypassReason::Method);
    }
    let headers = &req.headers;
    if headers.contains_key(header::UPGRADE) {
        return Some(BypassReason::Upgrade);
    }
    if headers.contains_key(header::AUTHORIZATION) {
        return Some(BypassReason::Authorization);
    }
    if headers.contains_key("signature") || headers.contains_key("signature-input") {
        return Some(BypassReason::Signature);
    }
    // A GET with a body could carry parameters the core reads but the key does not.
    let has_body = session_has_body
        || headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        return Some(BypassReason::RequestBody);
    }
    let session = headers
        .get_all(header::COOKIE)
        .iter()
        .any(|value| carries_session(value.as_bytes(), &policy.session_cookies));
    if session {
        return Some(BypassReason::SessionCookie);
    }
    None
}

/// Whether `If-Range` rules out a partial answer whatever the stored validators: it needs
/// a strong comparison (RFC 9110 §13.1.5), so a weak entity-tag on either side never
/// matches. Other cases (equal strong tags, dates) are left to the range filter.
pub fn if_range_never_matches(req: &RequestHeader, resp: &ResponseHeader) -> bool {
    let Some(if_range) = req.headers.get(header::IF_RANGE) else {
        return false;
    };
    let if_range = if_range.as_bytes().trim_ascii();
    if if_range.starts_with(b"W/") {
        return true;
    }
    let is_tag = if_range.first() == Some(&b'"');
    is_tag
        && resp
            .headers
            .get(header::ETAG)
            .is_some_and(|etag| etag.as_bytes().trim_ascii().starts_with(b"W/"))
}

/// The `Range` value without its zero-length suffix ranges (`-0`), which no length can
/// satisfy (RFC 9110 §14.1.3); `None` when it has none. Left in, pingora's range filter
/// would answer one with an empty `206` whose `Content-Range` runs backwards.
pub fn without_empty_suffixes(range: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(range).ok()?;
    let (unit, set) = text.split_once('=')?;
    let is_empty_suffix = |spec: &str| {
        spec.trim()
            .strip_prefix('-')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b == b'0'))
    };
    if !set.split(',').any(is_empty_suffix) {
        return None;
    }
    let kept: Vec<&str> = set.split(',').filter(|s| !is_empty_suffix(s)).collect();
    Some(format!("{unit}={}", kept.join(",")))
}

/// Whether a request identifies a user: `Authorization`, an HTTP `Signature`, or one of
/// `session_cookies` (any cookie at all when no names are known).
pub fn carries_credentials(req: &RequestHeader, session_cookies: Option<&[String]>) -> bool {
    let headers = &req.headers;
    if headers.contains_key(header::AUTHORIZATION)
        || headers.contains_key("signature")
        || headers.contains_key("signature-input")
    {
        return true;
    }
    let mut cookies = headers.get_all(header::COOKIE).iter();
    match session_cookies {
        Some(names) => cookies.any(|value| carries_session(value.as_bytes(), names)),
        None => cookies.next().is_some(),
    }
}

fn carries_session(cookie_header: &[u8], names: &[String]) -> bool {
    cookie_header.split(|b| *b == b';').any(|pair| {
        let name = pair.split(|b| *b == b'=').next().unwrap_or_default();
        let name = name.trim_ascii();
        names.iter().any(|n| n.as_bytes() == name)
    })
}

/// Whether a final response's status lets it be stored at all. A 206 is a part of the
/// object and a 304 only updates a stored one; every other final status may be stored when
/// the response says how long it is fresh (RFC 9111 §3).
fn storable_status(status: StatusCode) -> bool {
    !status.is_informational() && !matches!(status.as_u16(), 206 | 304)
}

/// Statuses whose meaning RFC 9110 defines, so a cache that understands them may follow
/// `must-understand` in place of `no-store` (RFC 9111 §5.2.2.3).
fn recognised_status(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200..=206 | 300..=305 | 307 | 308 | 400..=417 | 421 | 422 | 426 | 500..=505
    )
}

/// Statuses cacheable by default (RFC 9110 §15.1): a response with one of them and no
/// freshness of its own may get a heuristic lifetime; others only with `public`.
fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// What a route says about responses that state no freshness of their own.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteFreshness {
    /// The operator's lifetime for them.
    pub ttl: Option<Duration>,
    /// Whether one may be guessed from `Last-Modified`.
    pub heuristic: bool,
}

/// Decides whether a response may be stored, and for how long it is fresh.
pub fn response_cacheable(
    resp: &ResponseHeader,
    route: RouteFreshness,
    policy: &CachePolicy,
) -> RespCacheable {
    use RespCacheable::Uncacheable;
    if !storable_status(resp.status) {
        return Uncacheable(NoCacheReason::Custom("status"));
    }
    if resp.headers.contains_key(header::SET_COOKIE) {
        return Uncacheable(NoCacheReason::Custom("set-cookie"));
    }
    let vary_star = resp.headers.get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|name| name.trim() == "*"))
    });
    if vary_star {
        return Uncacheable(NoCacheReason::Custom("vary-star"));
    }
    let cc = CacheControl::from_resp_headers(resp);
    let directives = Directives::targeted(resp, &policy.targeted_fields)
        .or_else(|| cc.as_ref().map(Directives::from_cache_control))
        .unwrap_or_default();
    let understood = directives.must_understand && recognised_status(resp.status);
    if directives.private || (directives.no_store && !understood) {
        return Uncacheable(NoCacheReason::OriginNotCache);
    }

    let now = SystemTime::now();
    // The response may already have aged in a cache behind us (RFC 9111 §4.2.3): it counts
    // as received that long ago, so its Age on every hit includes it.
    let age = upstream_age(resp);
    let received = now.checked_sub(age).unwrap_or(UNIX_EPOCH);
    let explicit = directives.lifetime().or_else(|| {
        // A targeted field replaces Expires too.
        (!directives.targeted)
            .then(|| expires_lifetime(resp))
            .flatten()
    });
    // The route's lifetime is meant for answers cacheable by default; `public` opens any
    // status to a guess from Last-Modified only.
    let by_default = heuristically_cacheable(resp.status);
    let lifetime = explicit.or_else(|| {
        if !(by_default || directives.public) {
            return None;
        }
        route.ttl.filter(|_| by_default).or_else(|| {
            let heuristic = policy.heuristic.filter(|_| route.heuristic)?;
            last_modified_lifetime(resp, heuristic)
        })
    });
    let Some(lifetime) = lifetime else {
        return Uncacheable(NoCacheReason::OriginNotCache);
    };
    let fresh_until = if lifetime.is_zero() {
        // Stored, but stale from the start: every use revalidates.
        received
            .checked_sub(Duration::from_secs(1))
            .unwrap_or(received)
    } else {
        received
            .checked_add(lifetime)
            .unwrap_or(now + Duration::from_secs(365 * 24 * 3600))
    };

    let seconds =
        |d: Option<Duration>| d.map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
    let forbids_stale = directives.forbids_stale();
    let swr = if forbids_stale {
        0
    } else {
        seconds(directives.stale_while_revalidate)
    };
    // The PoP's own window stands in for a good object while the core is in trouble; an
    // error kept as an answer gets only the window it states.
    let sie_stated = seconds(directives.stale_if_error);
    let sie = if forbids_stale {
        0
    } else if resp.status.is_server_error() {
        sie_stated
    } else {
        sie_stated.max(seconds(Some(policy.serve_stale_on_error)))
    };
    let mut header = resp.clone();
    if let Some(cc) = &cc {
        cc.strip_private_headers(&mut header);
    }
    // The upstream's Age stays: a miss passes it on, and a hit writes its own in its place.
    RespCacheable::Cacheable(CacheMeta::new(fresh_until, received, swr, sie, header))
}

/// Whether a stored response answers a conditional request with `304` (RFC 9111 §4.3.2):
/// pingora's rules (`If-None-Match` first, then `If-Modified-Since` against
/// `Last-Modified`), and, where the response has no `Last-Modified`, its `Date` stands in
/// for it, as the RFC asks of a cache.
pub fn not_modified(req: &RequestHeader, resp: &ResponseHeader) -> bool {
    if pingora::protocols::http::conditional_filter::not_modified_filter(req, resp) {
        return true;
    }
    let applies = resp.status == StatusCode::OK
        && matches!(req.method, Method::GET | Method::HEAD)
        && !req.headers.contains_key(header::IF_NONE_MATCH)
        && !resp.headers.contains_key(header::LAST_MODIFIED);
    if !applies {
        return false;
    }
    match (
        header_date(&req.headers, header::IF_MODIFIED_SINCE),
        header_date(&resp.headers, header::DATE),
    ) {
        (Some(since), Some(dated)) => since >= dated,
        _ => false,
    }
}

/// The largest Age believed (RFC 9111 §1.2.2): anything larger, or an overflow, is this.
const AGE_CEILING: u64 = 1 << 31;

/// How old the response already was when it reached us, from its `Age` (RFC 9111 §5.1):
/// the first field line's first member, in whole seconds. A value that is not delta-seconds
/// (negative, a fraction, words) is ignored; one too large to hold is `AGE_CEILING`.
pub fn upstream_age(resp: &ResponseHeader) -> Duration {
    let Some(line) = resp.headers.get(header::AGE) else {
        return Duration::ZERO;
    };
    let first = line
        .as_bytes()
        .split(|b| *b == b',')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if first.is_empty() || !first.iter().all(u8::is_ascii_digit) {
        return Duration::ZERO;
    }
    let seconds = first.iter().try_fold(0u64, |n, digit| {
        n.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    });
    Duration::from_secs(seconds.map_or(AGE_CEILING, |s| s.min(AGE_CEILING)))
}

/// A share of the time between `Last-Modified` and the response's `Date` (or now), capped
/// (RFC 9111 §4.2.2); `None` without a valid `Last-Modified` in the past.
fn last_modified_lifetime(
    resp: &ResponseHeader,
    heuristic: HeuristicFreshness,
) -> Option<Duration> {
    let modified = header_date(&resp.headers, header::LAST_MODIFIED)?;
    let unchanged_for = response_date(resp).duration_since(modified).ok()?;
    Some(unchanged_for.mul_f64(heuristic.fraction).min(heuristic.max))
}

/// Freshness from `Expires`, measured against the response's own `Date` so that the two
/// clocks need not agree (RFC 9111 §4.2.1). An invalid `Expires` means already stale.
fn expires_lifetime(resp: &ResponseHeader) -> Option<Duration> {
    let mut values = resp.headers.get_all(header::EXPIRES).iter();
    let expires = values.next()?;
    if values.next().is_some() {
        return Some(Duration::ZERO);
    }
    let Some(expires) = expires.to_str().ok().and_then(crate::wire::http_date) else {
        return Some(Duration::ZERO);
    };
    Some(
        expires
            .duration_since(response_date(resp))
            .unwrap_or(Duration::ZERO),
    )
}

/// The time the first `name` field names, if it is an HTTP date.
fn header_date(headers: &http::HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    headers
        .get(name)?
        .to_str()
        .ok()
        .and_then(crate::wire::http_date)
}

/// When the response was made, by its own clock: its `Date`, or now without one.
fn response_date(resp: &ResponseHeader) -> SystemTime {
    header_date(&resp.headers, header::DATE).unwrap_or_else(SystemTime::now)
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
