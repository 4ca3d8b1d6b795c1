//! The proxy service: pingora's `ProxyHttp` hooks for one listener.
//!
//! Each hook stays short and hands the decision to a module: `limits` refuses malformed or
//! oversized requests, `upstream` picks a core host, `headers` sets who the client is and
//! drops hop-by-hop headers, `forward` decides the group, retries, request ids and body
//! limits. `logging` writes the access-log line and the request metrics.

pub mod buster;
pub mod client_limits;
pub mod forward;
pub mod headers;
pub mod limits;
pub mod media_urls;
mod report;
pub mod route;
mod settings;
pub mod upstream;
pub mod websocket;

use report::{client_addr, count_retry, respond, respond_too_many, respond_with, ListenerCounters};
pub use settings::{LimitsSnapshot, ProxySettings};

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{range_header_filter, FailToProxy, ProxyHttp, RangeType, Session};
use pingora::{ErrorSource, ErrorType};

use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, NoCacheReason, RespCacheable};

use crate::access_log::AccessLogger;
use crate::cache::key as cache_key;
use crate::cache::{policy, CacheStatus, EdgeCache};
use crate::fleet::{PurgeFailure, PurgeKind, PurgeSource};
use crate::head_deadline::HeadDeadlines;
use crate::metrics;
use crate::origin::handoff::{MediaOrigin, Ticket, MEDIA_TICKET};
use crate::store::ObjectKey;
use client_limits::{InFlight, Verdict};
use route::RouteDecision;
use upstream::{CoreGroup, CoreUpstreams};

/// What every listener's proxy shares.
pub struct ProxyShared {
    pub core: Arc<CoreUpstreams>,
    /// Replaced whole by a reload.
    pub settings: Arc<ArcSwap<ProxySettings>>,
    pub access_log: AccessLogger,
    /// `None` when the config has no `cache` section.
    pub cache: Option<Arc<EdgeCache>>,
    /// The loopback origin that serves media routes; `None` without `stores`.
    pub media_origin: Option<MediaOrigin>,
    pub request_ids: forward::RequestIds,
    /// Ends websockets cleanly at shutdown.
    pub going_away: Arc<websocket::GoingAway>,
    /// Mastodon's cache-buster requests purge through it, fleet-wide.
    pub purger: Arc<crate::fleet::Purger>,
}

/// The proxy of one listener.
pub struct EdgeProxy {
    listener: String,
    tls: bool,
    shared: Arc<ProxyShared>,
    counters: ListenerCounters,
    /// The listener's first-request deadlines, met by each request that gets here.
    deadlines: Arc<HeadDeadlines>,
}

/// The most ranges one request may ask for (pingora's default).
const MAX_RANGES: Option<usize> = Some(200);

/// `Retry-After` on our own 502 and 503 answers.
const RETRY_AFTER_SECONDS: &str = "5";

const X_CACHE_STATUS: http::header::HeaderName =
    http::header::HeaderName::from_static("x-cache-status");

impl EdgeProxy {
    /// Answers Mastodon's cache buster: the URL it names is purged here and on every PoP.
    async fn bust(&self, session: &mut Session, ctx: &mut RequestContext) -> Result<()> {
        let Some(target) = buster::purge_target(session.req_header()) else {
            return respond(session, ctx, 400, "400 bad request: no host to purge\n").await;
        };
        let outcome = self
            .shared
            .purger
            // Mastodon busts a URL when it deleted (or replaced) its media.
            .purge(PurgeKind::Url, &target, true, PurgeSource::CacheBuster)
            .await;
        match outcome {
            Ok(report) => {
                let body = Bytes::from(report.to_json() + "\n");
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

    /// The settings of this request (taken in `request_filter`).
    fn settings(&self, ctx: &RequestContext) -> Arc<ProxySettings> {
        ctx.settings
            .clone()
            .unwrap_or_else(|| self.shared.settings.load_full())
    }

    /// The loopback media origin, when the request's route is a media route; the route is
    /// lodged with it for the request's lifetime.
    fn media_peer(&self, ctx: &mut RequestContext) -> Option<Box<HttpPeer>> {
        let origin = self.shared.media_origin.as_ref()?;
        ctx.route.media()?;
        let route = ctx.route.route()?.clone();
        if ctx.media_ticket.is_none() {
            ctx.media_ticket = Some(origin.hand_over(route));
        }
        ctx.upstream_label = "media".to_string();
        Some(Box::new(HttpPeer::new(
            origin.address(),
            false,
            String::new(),
        )))
    }

    pub fn new(
        listener: &str,
        tls: bool,
        shared: Arc<ProxyShared>,
        deadlines: Arc<HeadDeadlines>,
    ) -> Self {
        EdgeProxy {
            listener: listener.to_string(),
            tls,
            shared,
            counters: ListenerCounters::new(listener),
            deadlines,
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
        let client = headers::client_ip(peer, &forwarded, &settings.trusted_proxies);
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
}

/// Per-request state.
pub struct RequestContext {
    started: Instant,
    started_at: SystemTime,
    client_ip: Option<IpAddr>,
    group: Option<Arc<CoreGroup>>,
    /// Core hosts this request could not connect to, so a retry goes elsewhere.
    connect_failed: Vec<SocketAddr>,
    /// The embedded mesh was not connected, so no host was tried.
    mesh_down: bool,
    /// The host of the current attempt.
    current_host: Option<SocketAddr>,
    upstream_label: String,
    upstream_sent: Option<Instant>,
    upstream_status: Option<u16>,
    /// The status we answered with ourselves (refusals, errors), when pingora did not write
    /// an upstream response.
    own_status: Option<u16>,
    /// How the cache took part; `None` when caching is off for this PoP.
    cache_status: Option<CacheStatus>,
    /// The primary cache key, set when this request uses the cache.
    cache_key: Option<String>,
    /// The settings this request runs under, taken once so a reload cannot change them
    /// halfway through it.
    settings: Option<Arc<ProxySettings>>,
    /// The request's route, decided once in `request_filter`.
    route: RouteDecision,
    /// The route lodged with the media origin while this media request is in flight.
    media_ticket: Option<Ticket>,
    /// `X-Request-Id`, the client's or ours.
    request_id: String,
    /// Request body bytes read from the client so far.
    body_bytes: u64,
    /// The request asks for a websocket.
    websocket: bool,
    /// Counted in `edgecache_open_websockets` until the request ends.
    websocket_open: bool,
    /// This request's place in its client's in-flight count, given back when it ends.
    client_slot: Option<InFlight>,
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestContext;

    fn new_ctx(&self) -> RequestContext {
        RequestContext {
            started: Instant::now(),
            started_at: SystemTime::now(),
            client_ip: None,
            group: None,
            connect_failed: Vec::new(),
            mesh_down: false,
            current_host: None,
            upstream_label: String::new(),
            upstream_sent: None,
            upstream_status: None,
            own_status: None,
            cache_status: None,
            cache_key: None,
            settings: None,
            route: RouteDecision::default(),
            media_ticket: None,
            request_id: String::new(),
            body_bytes: 0,
            websocket: false,
            websocket_open: false,
            client_slot: None,
        }
    }

    /// Refuses oversized or ambiguous requests before anything else looks at them, and applies
    /// the client-side timeouts.
    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<bool> {
        self.head_arrived(session);
        let settings = self.shared.settings.load_full();
        ctx.settings = Some(settings.clone());
        let limits = &settings.limits;
        // Only a connection the client wants kept alive gets our idle timeout; an HTTP/1.0
        // request without `Connection: keep-alive` stays a one-shot connection.
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(limits.keepalive_secs));
        }
        ctx.websocket = headers::is_websocket_upgrade(session.req_header());
        // A websocket's client side may stay quiet for long stretches; its own idle timeout
        // applies instead of the body timeout.
        session.set_read_timeout(Some(if ctx.websocket {
            limits.websocket_idle_timeout
        } else {
            limits.client_body_timeout
        }));
        let raw = session.as_http1().map(|h1| h1.get_headers_raw_bytes());
        let rejection = limits::check_request(
            session.req_header(),
            raw.as_deref(),
            limits.max_uri_length,
            limits.max_header_size,
        );
        let Some(rejection) = rejection else {
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
            return Ok(false);
        };
        metrics::get()
            .rejected_requests
            .with_label_values(&[self.listener.as_str(), rejection.reason()])
            .inc();
        // The body of a refused request is never read: the connection cannot be reused.
        session.set_keepalive(None);
        respond(session, ctx, rejection.status(), rejection.message()).await?;
        Ok(true)
    }

    /// Decides whether this request may use the shared cache and turns it on if so.
    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestContext) -> Result<()> {
        let Some(cache) = &self.shared.cache else {
            return Ok(());
        };
        let settings = self.settings(ctx);
        let Some(policy) = &settings.cache_policy else {
            return Ok(());
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
            return Ok(());
        };
        let session_has_body = !session.is_body_empty();
        let req = session.req_header();
        let Some(host) = cache_key::request_host(req, tls) else {
            ctx.cache_status = Some(CacheStatus::Bypass);
            return Ok(());
        };
        // The route was looked up in `request_filter`; the host there differs from this one
        // at most by a port, which routing ignores.
        if policy::request_bypass(req, session_has_body, ctx.route.cache(), policy).is_some() {
            ctx.cache_status = Some(CacheStatus::Bypass);
            return Ok(());
        }
        let primary = match ctx.route.media() {
            None => cache_key::primary_key(tls, &host, req),
            // Every spelling of a media URL is the one object the chain serves.
            Some((_, route_path)) => match ObjectKey::for_route(route_path, req.uri.path()) {
                Ok(Some(key)) => cache_key::path_key(tls, &host, &key.canonical_path(route_path)),
                // The media origin refuses it; nothing of it is stored.
                Ok(None) | Err(_) => {
                    ctx.cache_status = Some(CacheStatus::Bypass);
                    return Ok(());
                }
            },
        };
        ctx.cache_key = Some(primary);
        ctx.cache_status = Some(CacheStatus::Miss);
        cache.enable(&mut session.cache);
        Ok(())
    }

    /// The key is built in `request_cache_filter`; see `cache::key` for what goes in it.
    fn cache_key_callback(&self, _session: &Session, ctx: &mut RequestContext) -> Result<CacheKey> {
        let primary = ctx
            .cache_key
            .as_deref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "cache on without a key"))?;
        Ok(EdgeCache::key(primary))
    }

    /// Applies RFC 9111 and the PoP's rules to a response from the core.
    fn response_cache_filter(
        &self,
        _session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestContext,
    ) -> Result<RespCacheable> {
        let settings = self.settings(ctx);
        let Some(policy) = &settings.cache_policy else {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::NeverEnabled));
        };
        let decision = policy::response_cacheable(resp, ctx.route.cache_ttl(), policy);
        if matches!(decision, RespCacheable::Cacheable(_))
            && self
                .shared
                .cache
                .as_ref()
                .is_some_and(|c| c.too_large_to_keep(resp))
        {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::ResponseTooLarge));
        }
        Ok(decision)
    }

    /// Selects the stored variant from the request headers the response's `Vary` names.
    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut RequestContext,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        cache_key::variance(meta, req)
    }

    /// Cuts the requested range from a cached or cacheable response, as pingora does, except
    /// where `If-Range` carries or meets a weak entity-tag: then the whole response is sent.
    fn range_header_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        _ctx: &mut RequestContext,
    ) -> RangeType {
        let req = session.req_header();
        if policy::if_range_never_matches(req, resp) {
            let mut whole = req.clone();
            let _ = whole.remove_header(&http::header::RANGE);
            return range_header_filter(&whole, resp, MAX_RANGES);
        }
        range_header_filter(req, resp, MAX_RANGES)
    }

    /// Stale content may be served while one request refreshes it (when the response
    /// allowed `stale-while-revalidate`), and when the core failed or answered 5xx (within
    /// the object's stale-if-error window, which the PoP's `serve_stale_on_error` extends).
    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestContext,
        error: Option<&Error>,
    ) -> bool {
        error.is_none_or(|e| e.esource() == &ErrorSource::Upstream)
    }

    /// Says how the cache answered, in `X-Cache-Status` and the metrics, and which request
    /// this was, in `X-Request-Id`.
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        // This request's id, also over a cached response that kept the id of the request
        // that filled it.
        if !ctx.request_id.is_empty() {
            upstream_response.insert_header(forward::X_REQUEST_ID, ctx.request_id.as_str())?;
        }
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
            upstream_response.insert_header(X_CACHE_STATUS, status.as_str())?;
        }
        Ok(())
    }

    /// Picks a core host from the default group, skipping hosts this request could not reach.
    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<Box<HttpPeer>> {
        if ctx.client_ip.is_none() {
            ctx.client_ip = client_addr(session).map(|a| a.ip());
        }
        if let Some(media) = self.media_peer(ctx) {
            return Ok(media);
        }
        let group = match &ctx.group {
            Some(group) => group.clone(),
            None => {
                let name = ctx.route.upstream();
                let group = self.shared.core.group(name).cloned().ok_or_else(|| {
                    Error::explain(
                        ErrorType::InternalError,
                        format!("no upstream group {}", name.unwrap_or("(default)")),
                    )
                })?;
                ctx.group = Some(group.clone());
                group
            }
        };
        // A mesh that is down fails every host alike: answer at once, and leave the
        // hosts in rotation for when it is back.
        if let Some(problem) = self.shared.core.mesh.problem() {
            ctx.mesh_down = true;
            return Err(Error::explain(ErrorType::ConnectNoRoute, problem).into_up());
        }
        let Some((peer, label)) = group.pick(&ctx.connect_failed) else {
            return Err(Error::explain(
                ErrorType::ConnectNoRoute,
                format!("no healthy host left in upstream group {}", group.name),
            )
            .into_up());
        };
        ctx.current_host = peer._address.as_inet().copied();
        ctx.upstream_label = label;
        let mut peer = peer;
        if ctx.websocket {
            let idle = self.settings(ctx).limits.websocket_idle_timeout;
            peer.options.read_timeout = Some(idle);
            peer.options.custom_l4 = Some(
                self.shared
                    .going_away
                    .connector(group.mesh_connector(), group.connect_timeout()),
            );
            peer.group_key = websocket::WEBSOCKET_POOL;
        }
        Ok(Box::new(peer))
    }

    /// A connection to a core host (new, or a pooled one still open) says it is reachable,
    /// whatever its last health check found.
    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        if let (Some(group), Some(host)) = (&ctx.group, ctx.current_host) {
            group.connected(host);
        }
        Ok(())
    }

    /// A failed connect sent nothing, so any request may go to the next host.
    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestContext,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let group = ctx.group.as_ref().map_or("", |g| g.name.as_str());
        let kind = match e.etype() {
            ErrorType::ConnectTimedout => "connect_timeout",
            _ => "connect",
        };
        metrics::get()
            .upstream_errors
            .with_label_values(&[group, ctx.upstream_label.as_str(), kind])
            .inc();
        if let Some(host) = ctx.current_host.take() {
            if let Some(group) = &ctx.group {
                group.eject(host);
                group.connect_failed(host);
            }
            ctx.connect_failed.push(host);
        }
        let hosts = ctx.group.as_ref().map_or(0, |g| g.host_count());
        let retry = ctx.connect_failed.len() < hosts && retry_allowed(session, ctx);
        e.set_retry(retry);
        if retry {
            count_retry(ctx);
        }
        e
    }

    /// A failure on a connection that was already carrying this request: retried only for
    /// the group's retry methods, on a reused connection (the host may have closed it while
    /// idle), and before any body byte was read.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestContext,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if retry_allowed(session, ctx) {
            e.retry.decide_reuse(client_reused);
            if e.retry() {
                count_retry(ctx);
            }
        } else {
            e.set_retry(false);
        }
        e
    }

    /// Ends an exchange with the core that has run past its group's `total_timeout`
    /// (checked as each piece of the body arrives; each read is bounded on its own).
    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestContext,
    ) -> Result<Option<std::time::Duration>> {
        let Some(total) = ctx.group.as_ref().and_then(|g| g.total_timeout) else {
            return Ok(None);
        };
        if !ctx.websocket && ctx.upstream_sent.is_some_and(|sent| sent.elapsed() > total) {
            return Err(Error::explain(
                ErrorType::ReadTimedout,
                "the exchange with the core ran past total_timeout",
            )
            .into_up());
        }
        Ok(None)
    }

    /// Counts request body bytes and refuses a body that grows past the route's limit.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        if let Some(chunk) = body {
            ctx.body_bytes += chunk.len() as u64;
            if ctx
                .route
                .max_body_size()
                .is_some_and(|max| ctx.body_bytes > max)
            {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body over the route's max_body_size",
                ));
            }
        }
        Ok(())
    }

    /// Sets the forwarding headers and drops hop-by-hop ones on the way to the core.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        headers::strip_request_hop_by_hop(upstream_request, ctx.websocket);
        upstream_request.insert_header(forward::X_REQUEST_ID, ctx.request_id.as_str())?;
        // Only the proxy lodges routes: a client's ticket never reaches an origin.
        upstream_request.remove_header(&MEDIA_TICKET);
        if let Some(ticket) = &ctx.media_ticket {
            upstream_request.insert_header(MEDIA_TICKET, ticket.header_value())?;
        }
        let peer = client_addr(session).map(|a| a.ip());
        ctx.client_ip = headers::set_forwarding(
            upstream_request,
            peer,
            self.tls,
            &self.settings(ctx).trusted_proxies,
        );
        ctx.upstream_sent = Some(Instant::now());
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        if let (Some(sent), Some(group)) = (ctx.upstream_sent, &ctx.group) {
            let m = metrics::get();
            let labels = [group.name.as_str(), ctx.upstream_label.as_str()];
            m.upstream_response_seconds
                .with_label_values(&labels)
                .observe(sent.elapsed().as_secs_f64());
            m.upstream_responses
                .with_label_values(&[labels[0], labels[1], report::status_class(status)])
                .inc();
            if status == 101 && ctx.websocket && !ctx.websocket_open {
                ctx.websocket_open = true;
                m.open_websockets.with_label_values(&[labels[0]]).inc();
            }
        }
        ctx.upstream_status = Some(status);
        // An HTTP/1.0 core answer still goes out as HTTP/1.1 to an HTTP/1.1 client; the
        // version is per hop (RFC 9110 §2.5).
        if session.req_header().version == http::Version::HTTP_11 {
            upstream_response.set_version(http::Version::HTTP_11);
        }
        headers::strip_response_hop_by_hop(upstream_response);
        // Before the cache sees the response, so stored copies lack them too.
        for name in &self.settings(ctx).hide_response_headers {
            upstream_response.remove_header(name);
        }
        Ok(())
    }

    /// Answers with a short plain-text error: 502 when the core cannot be reached, 504 when it
    /// does not answer in time.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestContext,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => match e.etype() {
                    ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
                    ErrorType::ConnectNoRoute => 503,
                    _ => 502,
                },
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    ErrorType::ReadTimedout => 408,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 502,
            },
        };
        if e.esource() == &ErrorSource::Upstream {
            if matches!(
                e.etype(),
                ErrorType::ReadTimedout | ErrorType::WriteTimedout
            ) {
                if let (Some(group), Some(host)) = (&ctx.group, ctx.current_host) {
                    group.eject(host);
                }
            }
            let group = ctx.group.as_ref().map_or("", |g| g.name.as_str());
            let kind = match e.etype() {
                ErrorType::ReadTimedout | ErrorType::WriteTimedout => "timeout",
                ErrorType::ConnectNoRoute if ctx.mesh_down => "mesh_not_connected",
                ErrorType::ConnectNoRoute => "no_healthy_host",
                _ => "other",
            };
            let host = if matches!(kind, "no_healthy_host" | "mesh_not_connected") {
                ""
            } else {
                ctx.upstream_label.as_str()
            };
            metrics::get()
                .upstream_errors
                .with_label_values(&[group, host, kind])
                .inc();
        }
        // The connection is not reused after an error; say so in the answer.
        session.set_keepalive(None);
        if code > 0 && session.response_written().is_none() {
            let message = match code {
                502 => "502 bad gateway: the core is unreachable\n",
                503 => "503 service unavailable: no core host is healthy\n",
                504 => "504 gateway timeout: the core did not answer in time\n",
                408 => "408 request timeout\n",
                413 => "413 request body too large\n",
                400 => "400 bad request\n",
                _ => "error\n",
            };
            let _ = respond(session, ctx, code, message).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Counts the request and writes its access-log line.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestContext) {
        report::log_request(self, session, e, ctx);
    }
}

/// Whether this request may be repeated on another host after a failure.
fn retry_allowed(session: &Session, ctx: &RequestContext) -> bool {
    let method_retries = ctx
        .group
        .as_ref()
        .is_some_and(|g| g.retries(&session.req_header().method));
    forward::may_retry(method_retries, session.body_bytes_read())
}
