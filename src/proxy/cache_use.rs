//! How a request takes part in the shared cache: whether it may use it at all and under
//! which key (`request_cache_filter`), whether a response may be kept
//! (`response_cache_filter`), and how the cache answered (`X-Cache-Status`).

use http::header;
use pingora::cache::{NoCacheReason, RespCacheable};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::http::ServerSession as HttpSession;
use pingora::proxy::Session;
use std::future::Future;

use super::context::RequestContext;
use super::report::client_addr;
use super::{headers, EdgeProxy, X_CACHE_STATUS};
use crate::cache::key as cache_key;
use crate::cache::status_field::{Entry, Forward};
use crate::cache::{policy, tags, CacheStatus};
use crate::config::model::{CachePolicy, Invalidation};
use crate::fleet::{PurgeKind, PurgeSource, PurgeTarget};
use crate::metrics;
use crate::store::ObjectKey;

impl EdgeProxy {
    /// Turns the cache on for this request under its key, or marks it a bypass.
    pub(super) fn use_cache(&self, session: &mut Session, ctx: &mut RequestContext) {
        let Some(cache) = &self.shared.cache else {
            return;
        };
        let settings = self.settings(ctx);
        let Some(policy) = &settings.cache_policy else {
            return;
        };
        // The key's scheme is the one the core is told: a trusted proxy in front of us
        // may say https on a plain listener. What else it forwards about the host is not
        // in the key, so such requests are not cached.
        let peer = client_addr(session).map(|a| a.ip());
        let Some(tls) = headers::effective_scheme_is_tls(
            session.req_header(),
            peer,
            self.tls,
            self.trusted_proxies(&settings),
        ) else {
            ctx.cache_status = Some(CacheStatus::Bypass);
            return;
        };
        let session_has_body = !session.is_body_empty();
        if session_has_body && client_closed_the_stream(session) {
            // The stream broke off, which also loses whether it had ended its body; nobody
            // waits for an answer, so the request is dropped before it reaches the core.
            ctx.client_gone = true;
            ctx.cache_status = Some(CacheStatus::Bypass);
            return;
        }
        let req = session.req_header();
        let Some(host) = cache_key::request_host(req, tls) else {
            ctx.cache_status = Some(CacheStatus::Bypass);
            return;
        };
        // A route that never caches holds nothing to invalidate (and takes the federation's
        // inbox deliveries, which need no work here).
        if !is_safe(&req.method) && policy.invalidation != Invalidation::Off && ctx.route.cache() {
            ctx.invalidates_on = Some((host.clone(), tls));
        }
        // The route was looked up in `request_filter`; the host there differs from this one
        // at most by a port, which routing ignores.
        if policy::request_bypass(req, session_has_body, ctx.route.cache(), policy).is_some() {
            ctx.cache_status = Some(CacheStatus::Bypass);
            return;
        }
        let Some(primary) = primary_of(req, ctx, tls, &host) else {
            ctx.cache_status = Some(CacheStatus::Bypass);
            return;
        };
        ctx.cache_key = Some(primary);
        ctx.cache_status = Some(CacheStatus::Miss);
        if ctx.slice_fill.is_some() {
            cache.enable_for_slice(&mut session.cache);
        } else {
            cache.enable(&mut session.cache);
        }
    }

    /// The primary cache key of the object this request is for, as `use_cache` keys it;
    /// `None` when it cannot be keyed.
    pub(super) fn object_key(&self, session: &Session, ctx: &RequestContext) -> Option<String> {
        let settings = self.settings(ctx);
        let peer = client_addr(session).map(|a| a.ip());
        let req = session.req_header();
        let tls =
            headers::effective_scheme_is_tls(req, peer, self.tls, self.trusted_proxies(&settings))?;
        let host = cache_key::request_host(req, tls)?;
        primary_of(req, ctx, tls, &host)
    }

    /// After a successful answer to an unsafe request, removes the stored responses it may
    /// have changed (RFC 9111 §4.4): its own URL, and the `Location` and
    /// `Content-Location` it names on the same host, for either scheme. With
    /// `invalidation: fleet` the other PoPs are told in the background; this PoP's copies
    /// are gone before the answer leaves, so its client never reads its own write stale.
    pub(super) fn invalidate_after_unsafe(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestContext,
    ) {
        // An interim 1xx (100 Continue on an upload) is not the answer yet.
        if resp.status.is_informational() {
            return;
        }
        let Some((host, tls)) = ctx.invalidates_on.take() else {
            return;
        };
        if !(resp.status.is_success() || resp.status.is_redirection()) {
            return;
        }
        let (Some(cache), Some(policy)) = (&self.shared.cache, &self.settings(ctx).cache_policy)
        else {
            return;
        };
        let req = session.req_header();
        let own = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let named = [header::LOCATION, header::CONTENT_LOCATION]
            .into_iter()
            .filter_map(|name| resp.headers.get(name)?.to_str().ok())
            .filter_map(|value| same_host_target(value, &host, tls, req.uri.path()));
        let mut urls: Vec<String> = std::iter::once(own.to_string())
            .chain(named)
            .map(|target| format!("{host}{target}"))
            .collect();
        urls.dedup();
        let urls = urls.iter().map(|url| PurgeTarget::url(url));
        // RFC 9875 §3: the groups it names, on this origin; past the bound, left alone.
        let groups = tags::group_list(resp, tags::CACHE_GROUP_INVALIDATION);
        let groups = groups
            .iter()
            .filter(|group| tags::check_tag(group).is_ok())
            .take(tags::MAX_TAGS)
            .map(|group| PurgeTarget::tag(group, Some(&host)));
        let targets: Vec<PurgeTarget> = urls.chain(groups).collect();
        for target in &targets {
            let done = match target.kind {
                PurgeKind::Tag => cache.purge_tag(&target.value, target.host.as_deref()),
                _ => cache.invalidate_url(&target.value),
            };
            match done {
                Ok(purged) => {
                    tracing::debug!(value = %target.value, purged, method = %req.method, "invalidated")
                }
                Err(e) => {
                    tracing::debug!(value = %target.value, error = %e, "nothing to invalidate")
                }
            }
        }
        if policy.invalidation == Invalidation::Fleet {
            pass_on_to_the_fleet(&self.shared.purger, targets);
        }
    }

    /// Sends an interim response (`103 Early Hints`, `102 Processing`) on to the client
    /// at once when the cache takes part. pingora serves a cacheable answer from the cache
    /// fill and drops what it read together with the final header, so a 1xx in the same
    /// read would never arrive. It is written here, and pingora's own write of it is then
    /// ignored (HTTP/1; pingora sends no 1xx over HTTP/2). `100 Continue` is left to
    /// pingora, which sends it to a client that asked for it; an HTTP/1.0 client gets no
    /// 1xx at all (RFC 9110 §15.2).
    pub(super) async fn pass_interim_on(
        &self,
        session: &mut Session,
        interim: &ResponseHeader,
    ) -> Result<()> {
        if !session.cache.enabled() || session.req_header().version < http::Version::HTTP_11 {
            return Ok(());
        }
        session.downstream_session.set_ignore_info_resp(false);
        let written = session
            .write_response_header(Box::new(interim.clone()), false)
            .await;
        session.downstream_session.set_ignore_info_resp(true);
        written
    }

    /// RFC 9111 and the PoP's rules applied to a response, and the cache's size bounds.
    pub(super) fn keepable(&self, resp: &ResponseHeader, ctx: &RequestContext) -> RespCacheable {
        let settings = self.settings(ctx);
        let Some(policy) = &settings.cache_policy else {
            return RespCacheable::Uncacheable(NoCacheReason::NeverEnabled);
        };
        let mut decision = policy::response_cacheable(resp, ctx.route.freshness(), policy);
        if let RespCacheable::Cacheable(meta) = &mut decision {
            match response_tags(resp, ctx) {
                Ok(tags) => {
                    meta.extensions_mut().insert(tags);
                }
                Err(e) => {
                    metrics::get().cache_tags_refused.inc();
                    tracing::debug!(error = %e, "not stored: its cache tags are out of bounds");
                    return RespCacheable::Uncacheable(NoCacheReason::Custom("cache tags"));
                }
            }
        }
        if matches!(decision, RespCacheable::Cacheable(_))
            && self.shared.cache.as_ref().is_some_and(|c| {
                // A coded body lost its `Content-Length`: the core's stated one counts.
                c.too_large_to_keep(resp)
                    || ctx.coded_from_length.is_some_and(|len| c.too_large(len))
            })
        {
            return RespCacheable::Uncacheable(NoCacheReason::ResponseTooLarge);
        }
        decision
    }

    /// Whether a `206` may be stored, judged as the `200` it is a part of; it is stored as
    /// the `206` it is, so a hit reads as that part again.
    pub(super) fn keepable_as_part(
        &self,
        resp: &ResponseHeader,
        ctx: &RequestContext,
    ) -> RespCacheable {
        let mut whole = resp.clone();
        let _ = whole.set_status(http::StatusCode::OK);
        match self.keepable(&whole, ctx) {
            RespCacheable::Cacheable(mut meta) => {
                let _ = meta
                    .response_header_mut()
                    .set_status(http::StatusCode::PARTIAL_CONTENT);
                RespCacheable::Cacheable(meta)
            }
            not => not,
        }
    }

    /// Counts how the cache answered and, when the policy says so, shows it in
    /// `X-Cache-Status`.
    pub(super) fn report_cache_status(
        &self,
        session: &Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        let Some(status) = ctx.cache_status else {
            return Ok(());
        };
        let status = match CacheStatus::of_phase(session.cache.phase()) {
            _ if status == CacheStatus::Bypass => status,
            // A `HEAD` revalidation turns the cache off for its bodiless answer, yet it was
            // the stored response that went forward.
            CacheStatus::Miss if ctx.head_revalidation => CacheStatus::Expired,
            phase => phase,
        };
        ctx.cache_status = Some(status);
        status.count();
        let m = metrics::get();
        if let Some(waited) = session.cache.lock_duration() {
            m.cache_lock_waits.inc();
            m.cache_lock_wait_seconds.observe(waited.as_secs_f64());
        }
        let settings = self.settings(ctx);
        let Some(policy) = &settings.cache_policy else {
            return Ok(());
        };
        if policy.status_header {
            resp.insert_header(X_CACHE_STATUS, status.as_str())?;
        }
        let entry = status_entry(session, ctx, status, policy).to_string();
        // After whatever entries the response brought: ours is the one nearest the client.
        resp.append_header(CACHE_STATUS, entry)?;
        Ok(())
    }
}

/// Whether the client has reset this HTTP/2 stream or closed its connection. The h2 state
/// of such a stream no longer says whether its `END_STREAM` came, so `is_body_empty` is
/// false for it even when the request had no body.
fn client_closed_the_stream(session: &mut Session) -> bool {
    let HttpSession::H2(h2) = session.as_downstream_mut() else {
        return false;
    };
    // `idle` is ready once the stream is reset or its connection is gone; one poll reads
    // that without waiting.
    let mut waiting = std::task::Context::from_waker(std::task::Waker::noop());
    std::pin::pin!(h2.idle()).poll(&mut waiting).is_ready()
}

/// The primary key of `req` on its route: a media URL by its object (every spelling of it
/// is the one object the chain serves), any other by `cache::key::primary_key`. `None`
/// when the media origin would refuse the path: nothing of it is stored.
fn primary_of(
    req: &pingora::http::RequestHeader,
    ctx: &RequestContext,
    tls: bool,
    host: &str,
) -> Option<String> {
    match ctx.route.media() {
        None => Some(cache_key::primary_key(tls, host, req)),
        Some((_, route_path)) => match ObjectKey::for_route(route_path, req.uri.path()) {
            Ok(Some(key)) => Some(cache_key::path_key(
                tls,
                host,
                &key.canonical_path(route_path),
            )),
            Ok(None) | Err(_) => None,
        },
    }
}

/// Answers whose invalidations are being passed to the fleet at once, at most; past it they
/// are dropped and counted, so a burst of writes cannot pile up tasks and outbox files
/// without bound.
const FLEET_INVALIDATIONS_IN_FLIGHT: usize = 64;

static FLEET_INVALIDATIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Passes the invalidations of one answer (its URLs and groups), applied here, on to the
/// peers in the background: one task per answer, within [`FLEET_INVALIDATIONS_IN_FLIGHT`].
fn pass_on_to_the_fleet(purger: &std::sync::Arc<crate::fleet::Purger>, targets: Vec<PurgeTarget>) {
    use std::sync::atomic::Ordering;
    if FLEET_INVALIDATIONS.fetch_add(1, Ordering::AcqRel) >= FLEET_INVALIDATIONS_IN_FLIGHT {
        FLEET_INVALIDATIONS.fetch_sub(1, Ordering::AcqRel);
        metrics::get()
            .invalidations_not_passed_on
            .inc_by(targets.len() as u64);
        return;
    }
    let purger = purger.clone();
    tokio::spawn(async move {
        for target in &targets {
            if let Err(e) = purger.pass_on(target, PurgeSource::Invalidation).await {
                tracing::warn!(value = %target.value, error = %e, "invalidation not passed to the fleet");
            }
        }
        FLEET_INVALIDATIONS.fetch_sub(1, Ordering::AcqRel);
    });
}

/// The `Cache-Status` field (RFC 9211).
const CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");

/// This PoP's `Cache-Status` entry for the request, from how pingora's cache phase ended
/// and what the core answered.
fn status_entry<'a>(
    session: &Session,
    ctx: &'a RequestContext,
    status: CacheStatus,
    policy: &'a CachePolicy,
) -> Entry<'a> {
    let meta = session.cache.maybe_cache_meta();
    let ttl = meta.map(|meta| {
        let now = std::time::SystemTime::now();
        match meta.fresh_until().duration_since(now) {
            Ok(left) => i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
            Err(past) => -i64::try_from(past.duration().as_secs()).unwrap_or(i64::MAX),
        }
    });
    let collapsed = session.cache.lock_duration().is_some() && ctx.upstream_status.is_none();
    let missed = if ctx.variant_looked_up {
        Forward::VaryMiss
    } else {
        Forward::UriMiss
    };
    let (forward, stored) = match status {
        CacheStatus::Bypass => (Some(Forward::Bypass), false),
        // A request that waited for another's fetch would have gone forward itself.
        CacheStatus::Hit if collapsed => (Some(missed), false),
        CacheStatus::Hit => (None, false),
        // Served stale: while another request revalidates it (a hit), or because the core
        // failed just now.
        CacheStatus::Stale if ctx.upstream_sent.is_none() => (None, false),
        CacheStatus::Stale | CacheStatus::Revalidated => (Some(Forward::Stale), false),
        CacheStatus::Expired => (Some(Forward::Stale), session.cache.enabled()),
        CacheStatus::Miss => (Some(missed), session.cache.enabled() && meta.is_some()),
    };
    Entry {
        name: &policy.status_name,
        forward,
        forward_status: forward.and(ctx.upstream_status),
        // A response that was not kept has no lifetime here.
        ttl: match status {
            CacheStatus::Bypass => None,
            CacheStatus::Miss if !stored => None,
            _ => ttl,
        },
        stored,
        collapsed,
        key: ctx.cache_key.as_deref().filter(|_| policy.status_key),
    }
}

/// Safe methods (RFC 9110 §9.2.1) change nothing at the origin; any other may.
fn is_safe(method: &http::Method) -> bool {
    matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS" | "TRACE")
}

/// The path (and query) a `Location` or `Content-Location` names when it is on `host`
/// (already in key form): absolute with that host, network-path (`//host/...`, in the
/// request's scheme), absolute-path, or relative to the request's directory (dot segments
/// are not resolved: such a name is only left stored). `None` for another host or what is
/// not a URI reference.
fn same_host_target(value: &str, host: &str, tls: bool, request_path: &str) -> Option<String> {
    let value = value.trim();
    if value.starts_with("//") {
        let scheme = if tls { "https" } else { "http" };
        let uri: http::Uri = format!("{scheme}:{value}").parse().ok()?;
        return same_authority(&uri, host, tls);
    }
    if value.starts_with('/') {
        let uri: http::Uri = value.parse().ok()?;
        return Some(uri.path_and_query()?.as_str().to_string());
    }
    if let Ok(uri) = value.parse::<http::Uri>() {
        if let Some(scheme) = uri.scheme_str() {
            let tls = match scheme.to_ascii_lowercase().as_str() {
                "https" => true,
                "http" => false,
                _ => return None,
            };
            return same_authority(&uri, host, tls);
        }
    }
    // Relative to the request's directory.
    if value.contains(':') || value.is_empty() {
        return None;
    }
    let directory = &request_path[..request_path.rfind('/').map_or(0, |i| i + 1)];
    let joined = format!("{directory}{value}");
    let uri: http::Uri = joined.parse().ok()?;
    Some(uri.path_and_query()?.as_str().to_string())
}

fn same_authority(uri: &http::Uri, host: &str, tls: bool) -> Option<String> {
    let authority = crate::wire::normalize_host(uri.authority()?.as_str(), tls)?;
    (authority == host).then(|| {
        uri.path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_string()
    })
}

/// The cache tags a response is stored with: the fields' and, on media routes where
/// Mastodon's layout gives one, the path's.
pub(super) fn response_tags(
    resp: &ResponseHeader,
    ctx: &RequestContext,
) -> Result<tags::Tags, tags::TagError> {
    let derived = ctx
        .route
        .media()
        .and(ctx.cache_key.as_deref())
        .and_then(tags::mastodon_media_tag);
    tags::of_response(resp, derived)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_on_the_same_host_name_their_paths() {
        let at = |value| same_host_target(value, "social.example", false, "/api/v1/statuses/1");
        assert_eq!(at("/@alice/1").as_deref(), Some("/@alice/1"));
        assert_eq!(
            at("https://social.example/@alice/1?x=1").as_deref(),
            Some("/@alice/1?x=1")
        );
        assert_eq!(at("HTTP://Social.Example:80/a").as_deref(), Some("/a"));
        assert_eq!(at("//social.example/b").as_deref(), Some("/b"));
        let secure = same_host_target("//social.example:443/b", "social.example", true, "/");
        assert_eq!(secure.as_deref(), Some("/b"));
        assert_eq!(at("2").as_deref(), Some("/api/v1/statuses/2"));
        assert_eq!(at("https://other.example/a"), None);
        assert_eq!(at("https://social.example.evil/a"), None);
        assert_eq!(at("mailto:a@social.example"), None);
        assert_eq!(at(""), None);
        assert!(is_safe(&http::Method::GET) && !is_safe(&http::Method::POST));
        assert!(!is_safe(
            &http::Method::from_bytes(b"M-SEARCH").expect("method")
        ));
    }
}
