//! Where a request goes (`upstream_peer`): the loopback media origin for a media route,
//! otherwise a host of the route's core group that this request has not failed to reach.

use pingora::prelude::*;
use pingora::{Error, ErrorType};

use pingora::proxy::Session;

use super::context::RequestContext;
use super::{websocket, EdgeProxy};
use crate::origin::handoff::CacheVerdict;

impl EdgeProxy {
    /// The loopback media origin, when the request's route is a media route; the route is
    /// lodged with it for the request's lifetime. When this miss fills the cache
    /// (`filling`) and the route copies media into stores, the copy may be the cache's file
    /// of the body (see `origin::handoff`).
    pub(super) fn media_peer(
        &self,
        ctx: &mut RequestContext,
        filling: bool,
    ) -> Option<Box<HttpPeer>> {
        let origin = self.shared.media_origin.as_ref()?;
        ctx.route.media()?;
        let route = ctx.route.route()?.clone();
        if ctx.media_ticket.is_none() {
            let copies = route
                .media
                .as_ref()
                .is_some_and(|media| !media.write_through.is_empty());
            let offer_copy = filling && copies && origin.takes_copies_from_cache();
            ctx.media_ticket = Some(origin.hand_over(route, offer_copy));
        }
        ctx.upstream_label = "media".to_string();
        Some(Box::new(HttpPeer::new(
            origin.address(),
            false,
            String::new(),
        )))
    }

    /// A host of the route's core group, skipping hosts this request could not reach.
    pub(super) fn core_peer(&self, ctx: &mut RequestContext) -> Result<Box<HttpPeer>> {
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
        let Some((peer, label)) = group.pick(&ctx.failed_hosts) else {
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
}

/// What the cache does with a media response's body, for the origin holding it back.
impl EdgeProxy {
    /// Once the response's head is seen: `keeps_on_disk` when the cache fills its disk
    /// tier with the body. Only the first word reaches the origin.
    pub(super) fn tell_media_origin(&self, ctx: &mut RequestContext, keeps_on_disk: bool) {
        if let Some(ticket) = &mut ctx.media_ticket {
            ticket.tell(if keeps_on_disk {
                CacheVerdict::KeepsOnDisk
            } else {
                CacheVerdict::DoesNotKeep
            });
        }
    }

    /// At the end of a media request whose copy waits for the cache's file: links the
    /// body file the cache committed for this request into the write-through queue. If the
    /// cache kept none (the fill failed, was purged or did not fit), the copy is given up;
    /// the next miss copies again.
    pub(super) fn hand_cache_file_to_copy(&self, session: &Session, ctx: &RequestContext) {
        let Some(ticket) = &ctx.media_ticket else {
            return;
        };
        let Some(copy) = ticket.take_pending_copy() else {
            return;
        };
        let (Some(cache), Some(key), Some(destination)) = (
            &self.shared.cache,
            session.cache.maybe_cache_key(),
            copy.destination(),
        ) else {
            return;
        };
        match cache
            .storage
            .link_committed_body(key, ctx.started, destination)
        {
            Ok(Some(offset)) => copy.adopt(offset),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot link the cache's file of a body for write-through");
            }
        }
    }
}
