//! The proxy service: pingora's `ProxyHttp` hooks for one listener.
//!
//! The hooks below are in the order pingora calls them for a request (see pingora's
//! `proxy_trait.rs`), and each hands its decision to a module of this folder:
//!
//! 1. `new_ctx`, then `request_filter`: `admission` refuses malformed or oversized heads
//!    ([`limits`]), makes the one route decision ([`route`]), answers the cache buster
//!    ([`buster`]) and applies the route's per-client limit ([`client_limits`]).
//! 2. `request_cache_filter`, `cache_key_callback`, `cache_vary_filter`: `cache_use` turns
//!    the shared cache on under the request's key, or bypasses it.
//! 3. On a miss: `upstream_peer` (`peer`: the media origin for a media route, else a core
//!    host from `crate::upstream`), `connected_to_upstream`, `upstream_request_filter` ([`headers`]:
//!    who the client is, no hop-by-hop; `head_revalidation`: a `HEAD` revalidates with a
//!    `HEAD`), `request_body_filter` (the route's body limit). Before them,
//!    `proxy_upstream_filter` forwards a body-less request no cache takes part in itself
//!    (`direct`): the same hooks, over its own connections instead of pingora's pool.
//! 4. `upstream_response_filter`, `response_cache_filter` (may it be kept),
//!    `range_header_filter`, `response_filter` (`X-Cache-Status`, `X-Request-Id`),
//!    `upstream_response_body_filter` (the group's total timeout).
//! 5. `logging`: `report` counts the request and writes its access-log line; a plain hit
//!    from the memory tier leaves its head with `fast_hits`, which answers the same request
//!    again from the HTTP/1 connection loop without this path.
//!
//! Failures: `fail_to_connect` and `error_while_proxy` decide retries, `should_serve_stale`
//! whether a stored response may stand in, `fail_to_proxy` the answer (`failure`).

mod admission;
mod body_coding;
pub mod buster;
mod cache_use;
pub mod client_limits;
mod compression;
mod context;
mod direct;
mod failure;
pub mod fast_hits;
pub mod forward;
mod head_revalidation;
pub mod headers;
pub mod limits;
pub mod media_urls;
mod partial;
mod peer;
mod plain_request;
mod range_answer;
mod range_body;
mod report;
pub mod route;
mod send_file;
mod settings;
pub mod shield;
mod slice_fill;
mod slicing;
pub mod websocket;

pub use body_coding::CodingSlots;
pub use context::RequestContext;
use report::{client_addr, ListenerCounters};
pub use settings::{LimitsSnapshot, ProxySettings};

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, RangeType, Session};
use pingora::{ErrorSource, ErrorType};

use crate::access_log::AccessLogger;
use crate::cache::freshen::{freshen, keep_weakened_etag};
use crate::cache::key as cache_key;
use crate::cache::partial::StoredSpan;
use crate::cache::{policy, slices, EdgeCache};
use crate::head_deadline::HeadDeadlines;
use crate::origin::handoff::{MediaOrigin, MEDIA_TICKET};
use crate::upstream::CoreUpstreams;

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
    /// Bodies being compressed or decompressed now.
    pub coding_slots: CodingSlots,
    /// Idle connections each listener keeps for forwarding directly
    /// (`core.keepalive_pool_size`).
    pub direct_idle_limit: usize,
}

/// The proxy of one listener.
pub struct EdgeProxy {
    listener: String,
    tls: bool,
    shared: Arc<ProxyShared>,
    counters: ListenerCounters,
    /// The listener's first-request deadlines, met by each request that gets here.
    deadlines: Arc<HeadDeadlines>,
    /// Where plain hits leave their head for the connection loop.
    fast_hits: Arc<fast_hits::FastHits>,
    /// The listener's connections for forwarding body-less requests itself.
    direct: direct::DirectForwarding,
    /// Serves other PoPs as their shield: no request here takes a shield hop.
    shield_listener: bool,
}

/// The most ranges one request may ask for (pingora's default).
const MAX_RANGES: Option<usize> = Some(200);

/// `Retry-After` on our own 502 and 503 answers.
const RETRY_AFTER_SECONDS: &str = "5";

const X_CACHE_STATUS: http::header::HeaderName =
    http::header::HeaderName::from_static("x-cache-status");

impl EdgeProxy {
    pub fn new(
        listener: &str,
        tls: bool,
        shared: Arc<ProxyShared>,
        deadlines: Arc<HeadDeadlines>,
        fast_hits: Arc<fast_hits::FastHits>,
    ) -> Self {
        EdgeProxy {
            direct: direct::DirectForwarding::new(shared.direct_idle_limit),
            listener: listener.to_string(),
            tls,
            shared,
            counters: ListenerCounters::new(listener),
            deadlines,
            fast_hits,
            shield_listener: false,
        }
    }

    /// This listener serves other PoPs as their shield.
    pub fn serving_as_shield(mut self, shield: bool) -> Self {
        self.shield_listener = shield;
        self
    }

    /// A connection to the request's core host (new, or a pooled one still open) says it
    /// is reachable, whatever its last health check found.
    fn note_connected(&self, ctx: &RequestContext) {
        if let (Some(group), Some(host)) = (&ctx.group, ctx.current_host) {
            group.connected(host);
        }
    }

    /// The settings of this request (taken in `request_filter`).
    fn settings(&self, ctx: &RequestContext) -> Arc<ProxySettings> {
        ctx.settings
            .clone()
            .unwrap_or_else(|| self.shared.settings.load_full())
    }
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestContext;

    /// A fresh context for each request (and each background revalidation or slice).
    fn new_ctx(&self) -> RequestContext {
        RequestContext::new()
    }

    /// Client requests may ask for slices (`slicing`); subrequests ask for nothing more.
    fn allow_spawning_subrequest(&self, session: &Session, _ctx: &RequestContext) -> bool {
        session.subrequest_ctx.is_none()
    }

    /// Admits the request or answers it here (refusals, the cache buster, 429, 413); `true`
    /// when it was answered. Runs before anything else looks at the request.
    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<bool> {
        ctx.h2_spelling = self.fast_hits.note_h2_request(session);
        self.note_shield_hop(session, ctx);
        self.take_slice_order(session, ctx);
        if self.admit(session, ctx).await? {
            return Ok(true);
        }
        if let Some(size) = self.slice_size_for(session, ctx) {
            self.serve_from_slices(session, ctx, size).await?;
            return Ok(true);
        }
        if ctx.slice_fill.is_none() {
            self.plan_coding(session, ctx);
        }
        Ok(false)
    }

    /// Decides whether this request may use the shared cache and turns it on if so.
    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestContext) -> Result<()> {
        self.use_cache(session, ctx);
        Ok(())
    }

    /// The key is built in `request_cache_filter`; see `cache::key` for what goes in it.
    fn cache_key_callback(&self, _session: &Session, ctx: &mut RequestContext) -> Result<CacheKey> {
        let primary = ctx
            .cache_key
            .as_deref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "cache on without a key"))?;
        let mut key = EdgeCache::key(primary);
        if let Some(order) = ctx.slice_fill {
            key.set_variance_key(slices::slice_variance(order.index, order.size));
        }
        Ok(key)
    }

    /// Selects the stored variant from the request headers the response's `Vary` names.
    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut RequestContext,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        if let Some(order) = ctx.slice_fill {
            return Some(slices::slice_variance(order.index, order.size));
        }
        let coding = ctx.coding_plan.as_ref().map(|plan| plan.variant());
        let variance = cache_key::variance(meta, req, coding);
        // Before anything went forward, this is the lookup finding a stored response
        // that varies (after, it is the fill keying the new one).
        if variance.is_some() && ctx.upstream_sent.is_none() {
            ctx.variant_looked_up = true;
        }
        variance
    }

    /// A stored span of the object answers only the ranges inside it (`partial`).
    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        hit_handler: &mut pingora::cache::HitHandler,
        _is_fresh: bool,
        ctx: &mut RequestContext,
    ) -> Result<Option<pingora::cache::ForcedFreshness>> {
        self.judge_stored_span(session, meta, hit_handler, ctx)
            .await
    }

    /// Picks where a miss goes: the media origin for a media route, otherwise a core host
    /// of the route's group that this request has not failed to reach.
    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<Box<HttpPeer>> {
        if ctx.client_gone {
            let mut gone = Error::explain(
                ErrorType::ConnectionClosed,
                "the client closed the stream before it was forwarded",
            );
            gone.esource = ErrorSource::Downstream;
            return Err(gone);
        }
        if ctx.client_ip.is_none() {
            ctx.client_ip = client_addr(session).map(|a| a.ip());
        }
        if let Some(shield) = self.shield_peer(session, ctx) {
            return Ok(shield);
        }
        match self.media_peer(ctx, session.cache.enabled()) {
            Some(media) => Ok(media),
            None => self.core_peer(ctx),
        }
    }

    /// A body-less request no cache takes part in is forwarded here (`direct`); `false`
    /// when it was answered.
    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<bool> {
        match self.forward_directly(session, ctx).await? {
            direct::Direct::Answered => Ok(false),
            direct::Direct::NotTaken => Ok(true),
        }
    }

    /// A connection to a core host was made or reused (`note_connected`).
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
        if ctx.shield.current.is_some() {
            self.note_shield_connected(ctx);
        } else {
            self.note_connected(ctx);
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
        self.revalidate_head_with_head(session, upstream_request, ctx);
        ctx.upstream_head = upstream_request.method == http::Method::HEAD;
        self.ask_core_for_coding(upstream_request, ctx)?;
        self.ask_for_slice(upstream_request, ctx)?;
        self.ask_for_the_rest(upstream_request, ctx)?;
        upstream_request.insert_header(forward::X_REQUEST_ID, ctx.request_id.as_str())?;
        self.mark_shield_hop(upstream_request, ctx)?;
        // Only the proxy lodges routes: inserting replaces any ticket a client sent.
        if let Some(ticket) = &ctx.media_ticket {
            upstream_request.insert_header(MEDIA_TICKET, ticket.header_value())?;
        }
        let peer = client_addr(session).map(|a| a.ip());
        ctx.client_ip = headers::set_forwarding(
            upstream_request,
            peer,
            self.tls,
            self.trusted_proxies(&self.settings(ctx)),
        );
        ctx.upstream_sent = Some(Instant::now());
        Ok(())
    }

    /// Counts request body bytes as they are sent on, and refuses a body that grows past the
    /// route's limit.
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

    /// Measures the core's answer, keeps HTTP/1.1 towards an HTTP/1.1 client, and drops
    /// hop-by-hop and hidden headers before the cache or the client sees the response.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        self.refuse_shield_answer(upstream_response, ctx)?;
        let status = upstream_response.status.as_u16();
        report::count_upstream_answer(ctx, status);
        ctx.upstream_status = Some(status);
        self.invalidate_after_unsafe(session, upstream_response, ctx);
        if !session.cache.enabled() {
            // Nothing of this response is cached; with the cache on, the verdict waits for
            // `response_cache_filter`.
            self.tell_media_origin(ctx, false);
        }
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
        // Before the coding is planned: the whole object is what gets coded.
        self.join_the_rest(upstream_response, ctx)?;
        // Before the HEAD freshening: it compares the coded header with the stored one.
        self.plan_body(session, upstream_response, ctx);
        self.freshen_with_head_answer(session, upstream_response, ctx)
            .await;
        if let (304, Some(stored)) = (status, session.cache.maybe_cache_meta()) {
            keep_weakened_etag(stored.response_header(), upstream_response);
        }
        if status == 304 && session.cache.maybe_cache_meta().is_some() {
            // A revalidation's answer, as cleaned above: `response_cache_filter` sees it
            // merged into the stored header only in part, so the whole of it is kept for
            // the freshening.
            ctx.not_modified = Some(Box::new(upstream_response.clone()));
        }
        if upstream_response.status.is_informational() && !matches!(status, 100 | 101) {
            self.pass_interim_on(session, upstream_response).await?;
        }
        Ok(())
    }

    /// Applies RFC 9111 and the PoP's rules to a response from the core or the media origin
    /// (which hears whether its body goes to the disk tier).
    fn response_cache_filter(
        &self,
        _session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestContext,
    ) -> Result<RespCacheable> {
        let freshened;
        let resp = match ctx.not_modified.take() {
            Some(not_modified) => {
                freshened = freshen(resp, &not_modified);
                &freshened
            }
            None if ctx.head_revalidation || ctx.coding_not_storable => {
                self.tell_media_origin(ctx, false);
                return Ok(RespCacheable::Uncacheable(head_revalidation::NOT_STORED));
            }
            None => resp,
        };
        let keepable = match ctx.slice_fill {
            Some(order) => self.slice_keepable(resp, order, ctx),
            // A span of the object that agrees with its length (`partial`).
            None if StoredSpan::of(resp).is_some() => self.keepable_as_part(resp, ctx),
            None => self.keepable(resp, ctx),
        };
        let on_disk = matches!(keepable, RespCacheable::Cacheable(_))
            && self
                .shared
                .cache
                .as_ref()
                .is_some_and(|c| c.disk_tier_keeps(resp));
        self.tell_media_origin(ctx, on_disk);
        Ok(keepable)
    }

    /// Whether a stored response answers the request's conditions with `304`.
    fn cache_not_modified_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        _ctx: &mut RequestContext,
    ) -> Result<bool> {
        Ok(policy::not_modified(session.req_header(), resp))
    }

    /// Cuts the requested range from a cached or cacheable response (`judge_range`), or
    /// from a stored span of it (`partial`).
    fn range_header_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestContext,
    ) -> RangeType {
        let req = session.req_header();
        if let Some(range) = self.range_of_stored_span(req, resp, ctx) {
            return range;
        }
        self.judge_range(req, resp)
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
        // Our own targeted field is for PoPs only: it stays in the stored copy, which is
        // judged again on revalidation, and never reaches a client. A shield's clients are
        // PoPs, which judge their copy by it too.
        if let Some(field) = self
            .settings(ctx)
            .cache_policy
            .as_ref()
            .and_then(|p| p.own_targeted_field.as_ref())
            .filter(|_| !self.shield_listener)
        {
            upstream_response.remove_header(field);
        }
        self.report_cache_status(session, upstream_response, ctx)
    }

    /// Ends an exchange with the core that has run past its group's `total_timeout`
    /// (checked as each piece of the body arrives; each read is bounded on its own).
    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestContext,
    ) -> Result<Option<std::time::Duration>> {
        self.put_the_start_first(body, ctx);
        self.code_body(body, end_of_stream, ctx)?;
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

    /// Counts the request and writes its access-log line; a write-through copy waiting for
    /// the cache's file of the body gets it now.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestContext) {
        self.hand_cache_file_to_copy(session, ctx);
        report::log_request(self, session, e, ctx);
        if e.is_none() {
            self.fast_hits.record(session, ctx);
        }
    }

    /// A failed connect sent nothing, so any request may go to the next host.
    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestContext,
        e: Box<Error>,
    ) -> Box<Error> {
        match shield::shield_failed(session, ctx, e, true, false) {
            Ok(e) => e,
            Err(e) => failure::connect_failed(session, ctx, e),
        }
    }

    /// A failure on a connection that was already carrying this request; see
    /// `failure::failed_while_proxying` for when it is retried.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestContext,
        client_reused: bool,
    ) -> Box<Error> {
        match shield::shield_failed(session, ctx, e, false, client_reused) {
            Ok(e) => e,
            Err(e) => failure::failed_while_proxying(peer, session, e, ctx, client_reused),
        }
    }

    /// Stale content may be served while one request refreshes it (when the response
    /// allowed `stale-while-revalidate`), and when the core failed or answered 5xx (within
    /// the object's stale-if-error window, which the PoP's `serve_stale_on_error` extends).
    fn should_serve_stale(
        &self,
        _session: &mut Session,
        ctx: &mut RequestContext,
        error: Option<&Error>,
    ) -> bool {
        // A 5xx from the core reaches us only here, as an error that carries its status.
        if let Some(ErrorType::HTTPStatus(status)) = error.map(|e| e.etype()) {
            // A shield's own trouble is not served stale over: the answer is dropped for
            // the core's (`refuse_shield_answer`), and only if that fails too is stale served.
            if shield::skipped_for(ctx, *status) {
                return false;
            }
            ctx.upstream_status = Some(*status);
        }
        // pingora's background revalidation would not know the request is for a slice.
        if error.is_none() && ctx.slice_fill.is_some() {
            return false;
        }
        error.is_none_or(|e| e.esource() == &ErrorSource::Upstream)
    }

    /// Only a client that went away goes unlogged (see `failure::client_went_away`).
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestContext, e: &Error) -> bool {
        failure::client_went_away(e)
    }

    /// Answers with a short plain-text error: 502 when the core cannot be reached, 503 when
    /// no host is healthy, 504 when it does not answer in time.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestContext,
    ) -> FailToProxy {
        failure::answer_failure(session, e, ctx).await
    }
}
