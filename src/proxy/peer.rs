//! Where a request goes (`upstream_peer`): the loopback media origin for a media route,
//! otherwise a host of the route's core group that this request has not failed to reach.

use pingora::prelude::*;
use pingora::{Error, ErrorType};

use super::context::RequestContext;
use super::{websocket, EdgeProxy};

impl EdgeProxy {
    /// The loopback media origin, when the request's route is a media route; the route is
    /// lodged with it for the request's lifetime.
    pub(super) fn media_peer(&self, ctx: &mut RequestContext) -> Option<Box<HttpPeer>> {
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
}
