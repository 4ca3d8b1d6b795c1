//! How a request takes part in the shared cache: whether it may use it at all and under
//! which key (`request_cache_filter`), whether a response may be kept
//! (`response_cache_filter`), and how the cache answered (`X-Cache-Status`).

use pingora::cache::{NoCacheReason, RespCacheable};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::context::RequestContext;
use super::report::client_addr;
use super::{headers, EdgeProxy, X_CACHE_STATUS};
use crate::cache::key as cache_key;
use crate::cache::{policy, CacheStatus};
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
            &settings.trusted_proxies,
        ) else {
            ctx.cache_status = Some(CacheStatus::Bypass);
            return;
        };
        let session_has_body = !session.is_body_empty();
        let req = session.req_header();
        let Some(host) = cache_key::request_host(req, tls) else {
            ctx.cache_status = Some(CacheStatus::Bypass);
            return;
        };
        // The route was looked up in `request_filter`; the host there differs from this one
        // at most by a port, which routing ignores.
        if policy::request_bypass(req, session_has_body, ctx.route.cache(), policy).is_some() {
            ctx.cache_status = Some(CacheStatus::Bypass);
            return;
        }
        let primary = match ctx.route.media() {
            None => cache_key::primary_key(tls, &host, req),
            // Every spelling of a media URL is the one object the chain serves.
            Some((_, route_path)) => match ObjectKey::for_route(route_path, req.uri.path()) {
                Ok(Some(key)) => cache_key::path_key(tls, &host, &key.canonical_path(route_path)),
                // The media origin refuses it; nothing of it is stored.
                Ok(None) | Err(_) => {
                    ctx.cache_status = Some(CacheStatus::Bypass);
                    return;
                }
            },
        };
        ctx.cache_key = Some(primary);
        ctx.cache_status = Some(CacheStatus::Miss);
        cache.enable(&mut session.cache);
    }

    /// RFC 9111 and the PoP's rules applied to a response, and the cache's size bounds.
    pub(super) fn keepable(&self, resp: &ResponseHeader, ctx: &RequestContext) -> RespCacheable {
        let settings = self.settings(ctx);
        let Some(policy) = &settings.cache_policy else {
            return RespCacheable::Uncacheable(NoCacheReason::NeverEnabled);
        };
        let decision = policy::response_cacheable(resp, ctx.route.freshness(), policy);
        if matches!(decision, RespCacheable::Cacheable(_))
            && self
                .shared
                .cache
                .as_ref()
                .is_some_and(|c| c.too_large_to_keep(resp))
        {
            return RespCacheable::Uncacheable(NoCacheReason::ResponseTooLarge);
        }
        decision
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
        let status = if status == CacheStatus::Bypass {
            status
        } else {
            CacheStatus::of_phase(session.cache.phase())
        };
        ctx.cache_status = Some(status);
        status.count();
        let m = metrics::get();
        if let Some(waited) = session.cache.lock_duration() {
            m.cache_lock_waits.inc();
            m.cache_lock_wait_seconds.observe(waited.as_secs_f64());
        }
        let show = self
            .settings(ctx)
            .cache_policy
            .as_ref()
            .is_some_and(|p| p.status_header);
        if show {
            resp.insert_header(X_CACHE_STATUS, status.as_str())?;
        }
        Ok(())
    }
}
