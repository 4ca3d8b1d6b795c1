//! The shield hop: on a route with a `shield`, a cacheable miss asks another PoP (its shield
//! listener, over the mesh) before the core or the media chain. The shield caches and
//! collapses like any PoP, so PoPs missing one object cause one fetch from its origin. Its
//! host is picked by the object's key (rendezvous hashing), so with several shields each
//! object is stored once among them.
//!
//! A shield that cannot be reached, or fails before it answers, is skipped: the request
//! goes on to the next shield for its key, then to the core or the chain, within the
//! group's connect timeout. Only requests the cache takes part in take the hop (never one
//! signed in or otherwise bypassing the cache), and never twice: the hop is marked in
//! [`SHIELD_HOP`], and a request that carries it, or arrives on a shield listener, goes
//! straight to its origin.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use http::{header, HeaderName, Method};
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::RetryType;

use super::context::RequestContext;
use super::report::respond;
use super::{EdgeProxy, ProxySettings};
use crate::cache::CacheStatus;
use crate::config::model::TrustedProxies;
use crate::metrics;

/// Marks a request one PoP sends its shield; its value is the sending PoP's name.
pub const SHIELD_HOP: HeaderName = HeaderName::from_static("x-edgecache-shield-hop");

/// Everyone: on a shield listener, whose clients are the other PoPs over the mesh.
static EVERY_CLIENT: LazyLock<TrustedProxies> = LazyLock::new(|| {
    TrustedProxies::new(vec![
        ipnet::IpNet::V4(ipnet::Ipv4Net::default()),
        ipnet::IpNet::V6(ipnet::Ipv6Net::default()),
    ])
});

impl EdgeProxy {
    /// Whose `X-Forwarded-For` and `-Proto` are believed. On a shield listener, every
    /// client's: they are the other PoPs, whose forwarding is narrowed on arrival to the
    /// client each settled on and its scheme (`narrow_to_the_pops_client`), so the core
    /// sees each client's address, per-client limits count clients rather than PoPs, and
    /// the shield keys objects by the scheme the client used. Elsewhere, the configured
    /// trusted proxies'.
    pub(super) fn trusted_proxies<'a>(&self, settings: &'a ProxySettings) -> &'a TrustedProxies {
        if self.shield_listener {
            &EVERY_CLIENT
        } else {
            &settings.trusted_proxies
        }
    }

    /// On a shield listener, refuses what no PoP sends on a shield hop (anything but a GET
    /// or HEAD, credentials, an upgrade): the listener believes its clients' forwarding
    /// headers, so it takes only what the cache may share. `true` when refused.
    pub(super) async fn refuse_on_shield_listener(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<bool> {
        if !self.shield_listener {
            return Ok(false);
        }
        let req = session.req_header();
        let refusal = if req.method != Method::GET && req.method != Method::HEAD {
            Some((405, "405 a shield listener takes GET and HEAD only\n"))
        } else if req.headers.contains_key(header::AUTHORIZATION)
            || req.headers.contains_key(header::UPGRADE)
        {
            Some((
                403,
                "403 a shield listener takes no credentials or upgrades\n",
            ))
        } else {
            None
        };
        let Some((status, message)) = refusal else {
            return Ok(false);
        };
        metrics::get()
            .rejected_requests
            .with_label_values(&[self.listener.as_str(), "shield_listener"])
            .inc();
        session.set_keepalive(None);
        respond(session, ctx, status, message).await?;
        Ok(true)
    }

    /// Notes whether the request came on a shield hop, and takes the marker off: it goes
    /// to no core, and a client's copy of it only keeps its own request from the shield.
    pub(super) fn note_shield_hop(&self, session: &mut Session, ctx: &mut RequestContext) {
        let req = session.req_header_mut();
        ctx.shield.arrived_by_hop = self.shield_listener || req.headers.contains_key(&SHIELD_HOP);
        req.remove_header(&SHIELD_HOP);
        if self.shield_listener {
            super::headers::narrow_to_the_pops_client(req);
        }
    }

    /// The shield host this attempt asks, when the request takes the hop: the route has a
    /// shield, the cache takes part, the request did not come on a hop, and a shield host
    /// is left for its key.
    pub(super) fn shield_peer(
        &self,
        session: &Session,
        ctx: &mut RequestContext,
    ) -> Option<Box<HttpPeer>> {
        ctx.shield.current = None;
        if ctx.shield.arrived_by_hop
            || ctx.websocket
            || !session.cache.enabled()
            || ctx.cache_status != Some(CacheStatus::Miss)
        {
            return None;
        }
        let shield = ctx.route.route()?.shield.as_ref()?;
        let group = match &ctx.shield.group {
            Some(group) => group.clone(),
            // Missing only after a reload named new shields, which take a restart.
            None => self.shared.core.groups.get(&shield.group)?.clone(),
        };
        let key = ctx.cache_key.as_deref()?;
        let Some((peer, label)) = group.pick_for_key(key, &ctx.shield.failed) else {
            metrics::get()
                .shield_skipped
                .with_label_values(&[group.name.as_str(), "none_left"])
                .inc();
            return None;
        };
        ctx.shield.current = peer._address.as_inet().copied();
        ctx.shield.group = Some(group.clone());
        ctx.upstream_label = label.clone();
        metrics::get()
            .shield_requests
            .with_label_values(&[group.name.as_str(), label.as_str()])
            .inc();
        Some(Box::new(peer))
    }

    /// Marks a request on its way to a shield, with this PoP's name.
    pub(super) fn mark_shield_hop(
        &self,
        upstream_request: &mut RequestHeader,
        ctx: &RequestContext,
    ) -> Result<()> {
        if ctx.shield.current.is_some() {
            upstream_request.insert_header(SHIELD_HOP, self.shared.purger.name.as_str())?;
        }
        Ok(())
    }

    /// A connection to the shield host was made or reused: it is reachable.
    pub(super) fn note_shield_connected(&self, ctx: &RequestContext) {
        if let (Some(group), Some(host)) = (&ctx.shield.group, ctx.shield.current) {
            group.connected(host);
        }
    }
}

/// Pooled connections found closed after which a request stops asking the same shield.
const MAX_CLOSED_IDLE: u8 = 2;

/// Why a shield's answer was dropped when its copy predates a purge made here.
const PREDATES_A_PURGE: &str = "shield copy predates a purge";

impl EdgeProxy {
    /// Drops a shield's answer, before the cache or the client sees it, for the request to
    /// go on without that shield:
    /// - a 502 or 503, the shield's own trouble ([`skipped_for`]);
    /// - a copy the shield fetched from its origin before a purge made here that names it:
    ///   purges reach the PoPs one by one, so the shield may not have had that one yet.
    ///   The copy's fetch time is its `Age` ago, less a second for `Age`'s rounding.
    pub(super) fn refuse_shield_answer(
        &self,
        resp: &ResponseHeader,
        ctx: &RequestContext,
    ) -> Result<()> {
        if ctx.shield.current.is_none() {
            return Ok(());
        }
        let status = resp.status.as_u16();
        if skipped_for(ctx, status) {
            return Error::e_explain(
                ErrorType::HTTPStatus(status),
                "the shield answered with an error of its own",
            );
        }
        // A 304 refreshes this PoP's own copy, which was stored after any purge naming it.
        if status == 304 {
            return Ok(());
        }
        let (Some(cache), Some(key)) = (&self.shared.cache, ctx.cache_key.as_deref()) else {
            return Ok(());
        };
        // `Age` read as the cache reads it when it judges the copy's freshness.
        let age = crate::cache::policy::upstream_age(resp);
        let fetched = Instant::now().checked_sub(age + Duration::from_secs(1));
        let tags = super::cache_use::response_tags(resp, ctx).unwrap_or_default();
        if cache.recent_purges.named_since(fetched, key, &tags) {
            return Error::e_explain(ErrorType::Custom(PREDATES_A_PURGE), "going to the origin");
        }
        Ok(())
    }
}

/// Whether a shield's answer with `status` is its own trouble (502: it could not reach its
/// origin; 503: it is in trouble itself), which this PoP goes on without, since it may
/// still reach the core. A 504 is not: the origin is slow, which asking it again would not
/// cure.
pub(super) fn skipped_for(ctx: &RequestContext, status: u16) -> bool {
    ctx.shield.current.is_some() && matches!(status, 502 | 503)
}

/// A failure of a shield attempt, before anything was sent to the client: the shield is
/// set aside for this request and the request goes on (to the next shield for its key,
/// then its origin). `Err` when the failed attempt did not go to a shield.
pub(super) fn shield_failed(
    session: &Session,
    ctx: &mut RequestContext,
    mut e: Box<Error>,
    connecting: bool,
    reused: bool,
) -> Result<Box<Error>, Box<Error>> {
    let Some(host) = ctx.shield.current.take() else {
        return Err(e);
    };
    // A pooled connection the shield closed while idle says nothing about the shield: the
    // request asks it again on another connection (twice at most).
    if reused
        && matches!(e.retry, RetryType::ReusedOnly)
        && ctx.shield.closed_idle < MAX_CLOSED_IDLE
    {
        ctx.shield.closed_idle += 1;
        e.set_retry(true);
        return Ok(e);
    }
    let group = ctx.shield.group.clone();
    let group_name = group.as_ref().map_or("", |g| g.name.as_str());
    let timed_out = matches!(
        e.etype(),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout | ErrorType::ConnectTimedout
    );
    if let Some(group) = &group {
        // One that cannot be reached is set aside for the next requests too (until its
        // health check passes, and for a while even when it is the only one). One that is
        // slow to answer is not: its origin may be the slow one.
        if connecting {
            group.eject(host);
            group.connect_failed(host);
        }
    }
    ctx.shield.failed.push(host);
    // Once the shield has begun to answer, nothing may be asked again.
    let answered = ctx.upstream_status.is_some() || session.response_written().is_some();
    let reason = match e.etype() {
        _ if connecting => "connect",
        ErrorType::HTTPStatus(_) => "status",
        ErrorType::Custom(PREDATES_A_PURGE) => "purged",
        _ if timed_out => "timeout",
        _ => "error",
    };
    tracing::warn!(shield = %ctx.upstream_label, error = %e, answered, "shield failed; going on without it");
    metrics::get()
        .shield_skipped
        .with_label_values(&[group_name, reason])
        .inc();
    e.set_retry(!answered);
    Ok(e)
}
