//! What a request must pass before anything else looks at it (`request_filter`): a well-formed
//! head within the limits, one route decision, the cache buster's purge, the route's
//! per-client limit and its declared body size. Each refusal answers at once and, where the
//! body is left unread, closes the connection.

use pingora::prelude::*;
use pingora::proxy::Session;

use super::client_limits::Verdict;
use super::context::RequestContext;
use super::report::{client_addr, respond, respond_too_many, respond_with};
use super::route::RouteDecision;
use super::settings::LimitsSnapshot;
use super::{buster, forward, headers, limits, EdgeProxy, ProxySettings};
use crate::cache::policy;
use crate::fleet::{PurgeFailure, PurgeSource, PurgeTarget};
use crate::metrics;

impl EdgeProxy {
    /// `true` when the request was answered here and goes no further.
    pub(super) async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<bool> {
        self.head_arrived(session);
        let settings = self.shared.settings.load_full();
        ctx.settings = Some(settings.clone());
        set_client_timeouts(session, ctx, &settings.limits);
        if self
            .refuse_malformed(session, ctx, &settings.limits)
            .await?
        {
            return Ok(true);
        }
        if self.refuse_on_shield_listener(session, ctx).await? {
            return Ok(true);
        }
        headers::drop_connection_nominated(session.req_header_mut());
        let req = session.req_header();
        ctx.route = RouteDecision::decide(&settings, req, self.tls);
        ctx.request_id = self.shared.request_ids.for_request(req);
        if let Some(buster) = &settings.cache_buster {
            if buster::is_cache_buster(buster, req) {
                self.bust(session, ctx).await?;
                return Ok(true);
            }
        }
        if self.limit_client(session, ctx, &settings).await? {
            return Ok(true);
        }
        let req = session.req_header();
        if ctx
            .route
            .max_body_size()
            .is_some_and(|max| forward::declared_length_over(req, max))
        {
            // The body is not read: the connection cannot carry another request.
            session.set_keepalive(None);
            respond(session, ctx, 413, "413 request body too large\n").await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// A request head got here: its connection has met its first-request deadline.
    fn head_arrived(&self, session: &Session) {
        if !self.deadlines.any_pending() {
            return;
        }
        let cookie = session
            .digest()
            .and_then(|d| d.socket_digest.as_ref())
            .and_then(|s| s.socket_cookie().ok());
        if let Some(cookie) = cookie {
            self.deadlines.head_arrived(cookie);
        }
    }

    /// Refuses a head over the limits, ambiguous in its framing, or with a target in no
    /// request form; `true` when it was refused.
    async fn refuse_malformed(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
        limits: &LimitsSnapshot,
    ) -> Result<bool> {
        let raw = session.as_http1().map(|h1| h1.get_headers_raw_bytes());
        let rejection = limits::check_request(
            session.req_header(),
            raw.as_deref(),
            limits.max_uri_length,
            limits.max_header_size,
        );
        if let Some(rejection) = rejection {
            metrics::get()
                .rejected_requests
                .with_label_values(&[self.listener.as_str(), rejection.reason()])
                .inc();
            // The body of a refused request is never read: the connection cannot be reused.
            session.set_keepalive(None);
            respond(session, ctx, rejection.status(), rejection.message()).await?;
            return Ok(true);
        }
        // The cache keys on the host the core will see, so an absolute-form target must
        // not leave a different Host beside it.
        if headers::normalize_request_target(session.req_header_mut()).is_err() {
            session.set_keepalive(None);
            respond(
                session,
                ctx,
                400,
                "400 bad request: invalid request target\n",
            )
            .await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Answers Mastodon's cache buster: the URL it names is purged here and on every PoP.
    async fn bust(&self, session: &mut Session, ctx: &mut RequestContext) -> Result<()> {
        let Some(target) = buster::purge_target(session.req_header()) else {
            return respond(session, ctx, 400, "400 bad request: no host to purge\n").await;
        };
        let outcome = self
            .shared
            .purger
            // Mastodon busts a URL when it deleted (or replaced) its media.
            .purge(&PurgeTarget::url(&target), true, PurgeSource::CacheBuster)
            .await;
        match outcome {
            Ok(report) => {
                let body = bytes::Bytes::from(report.to_json() + "\n");
                respond_with(session, ctx, 200, "application/json", body).await
            }
            Err(PurgeFailure::Bad(_)) => {
                respond(session, ctx, 400, "400 bad request: not a URL to purge\n").await
            }
            Err(PurgeFailure::Fleet(e)) => {
                tracing::error!(error = %e, "cache-buster purge not queued for the fleet");
                respond(session, ctx, 503, "503 purge not queued; try again\n").await
            }
        }
    }

    /// Applies the route's per-client limits; `true` when the request was refused (429).
    async fn limit_client(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
        settings: &ProxySettings,
    ) -> Result<bool> {
        let Some(limiter) = ctx.route.client_limit.clone() else {
            return Ok(false);
        };
        // A slice is part of a request already counted.
        if ctx.slice_fill.is_some() {
            return Ok(false);
        }
        let req = session.req_header();
        // A consent or theme cookie is no credential: only what signs a user in is.
        let session_cookies = settings
            .cache_policy
            .as_ref()
            .map(|p| p.session_cookies.as_slice());
        let credentials = policy::carries_credentials(req, session_cookies);
        if !limiter.applies(&req.method, credentials) {
            return Ok(false);
        }
        let Some(peer) = client_addr(session).map(|a| a.ip()) else {
            return Ok(false);
        };
        let forwarded: Vec<&str> = req
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let client = headers::client_ip(peer, &forwarded, self.trusted_proxies(settings));
        match limiter.check(client) {
            Verdict::Allowed(slot) => {
                ctx.client_slot = slot;
                Ok(false)
            }
            Verdict::Limited { retry_after, limit } => {
                metrics::get()
                    .client_limited
                    .with_label_values(&[self.listener.as_str(), limiter.route.as_str(), limit])
                    .inc();
                if !session.is_body_empty() {
                    // The body is not read: the connection cannot carry another request.
                    session.set_keepalive(None);
                }
                respond_too_many(session, ctx, retry_after).await?;
                Ok(true)
            }
        }
    }
}

/// The idle timeouts of the client's side: our keep-alive, and the body timeout (a
/// websocket's own idle timeout instead, since its client may stay quiet for long).
fn set_client_timeouts(session: &mut Session, ctx: &mut RequestContext, limits: &LimitsSnapshot) {
    // Only a connection the client wants kept alive gets our idle timeout; an HTTP/1.0
    // request without `Connection: keep-alive` stays a one-shot connection.
    if session.get_keepalive().is_some() {
        session.set_keepalive(Some(limits.keepalive_secs));
    }
    ctx.websocket = headers::is_websocket_upgrade(session.req_header());
    session.set_read_timeout(Some(if ctx.websocket {
        limits.websocket_idle_timeout
    } else {
        limits.client_body_timeout
    }));
}
