//! One slice of a large object, as the subrequest that looks it up or fetches it sees it.
//!
//! `slicing` (the client's request) asks for each slice it needs with a subrequest that
//! carries a [`SliceOrder`]. The subrequest then runs the whole of the proxy like any
//! request (route, cache lookup under the slice's key, the cache lock, the core or the media
//! origin, revalidation, stale on error) with these differences, each a hook below:
//! - its own request is a plain `GET` of the URL: the client's `Range` and conditions are
//!   answered by `slicing`, never by the slice;
//! - its key is the URL's, with the slice as the variance;
//! - a miss asks for the slice's bytes alone (`Range`), in no content coding;
//! - the `206` that comes back is stored when it holds exactly the slice; a `200` (a server
//!   that ignores ranges) only as slice 0, where it is the whole object;
//! - it never serves stale while revalidating in the background: pingora's background
//!   subrequest would not know it is a slice.

use http::header;
use pingora::cache::{NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;

use super::context::RequestContext;
use super::EdgeProxy;
use crate::cache::slices::{self, ContentRange, SliceOrder};

/// Request fields `slicing` answers itself, so a slice's own request leaves them out.
const ANSWERED_BY_THE_PARENT: [header::HeaderName; 7] = [
    header::RANGE,
    header::IF_RANGE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::ACCEPT_ENCODING,
];

impl EdgeProxy {
    /// In a slice subrequest: takes its order from the parent and makes its request a plain
    /// `GET` of the URL. A client cannot reach this: only subrequests carry an order.
    pub(super) fn take_slice_order(&self, session: &mut Session, ctx: &mut RequestContext) {
        let order = session
            .subrequest_ctx
            .as_ref()
            .and_then(|sub| sub.user_ctx())
            .and_then(|user| user.downcast_ref::<SliceOrder>())
            .copied();
        let Some(order) = order else {
            return;
        };
        ctx.slice_fill = Some(order);
        let req = session.req_header_mut();
        if req.method == http::Method::HEAD {
            req.set_method(http::Method::GET);
        }
        for name in &ANSWERED_BY_THE_PARENT {
            req.remove_header(name);
        }
    }

    /// On a slice's way to the core or the media origin: its bytes alone, uncoded.
    pub(super) fn ask_for_slice(
        &self,
        upstream_request: &mut RequestHeader,
        ctx: &RequestContext,
    ) -> Result<()> {
        if let Some(order) = ctx.slice_fill {
            upstream_request.insert_header(
                header::RANGE,
                slices::slice_range_header(order.index, order.size),
            )?;
            upstream_request.insert_header(header::ACCEPT_ENCODING, "identity")?;
        }
        Ok(())
    }

    /// Whether a slice's answer may be stored as that slice, judged by the same rules as any
    /// response (read as the `200` it is a part of).
    pub(super) fn slice_keepable(
        &self,
        resp: &ResponseHeader,
        order: SliceOrder,
        ctx: &RequestContext,
    ) -> RespCacheable {
        // A slice is found by its key alone: one that varies could not be told apart.
        if resp.headers.contains_key(header::VARY) {
            return RespCacheable::Uncacheable(NoCacheReason::Custom("slice varies"));
        }
        match resp.status.as_u16() {
            206 => {
                let holds = ContentRange::of(resp)
                    .is_some_and(|range| slices::holds_slice(range, order.index, order.size));
                if !holds {
                    return RespCacheable::Uncacheable(NoCacheReason::Custom(
                        "206 is not the slice asked for",
                    ));
                }
                self.keepable_as_part(resp, ctx)
            }
            // The server ignored the range: the whole object, which is slice 0's place.
            200 if order.index > 0 => {
                RespCacheable::Uncacheable(NoCacheReason::Custom("whole object for a slice"))
            }
            _ => self.keepable(resp, ctx),
        }
    }
}

/// The order a subrequest carries, boxed as pingora's subrequest context wants it.
pub(super) fn order_context(order: SliceOrder) -> pingora::proxy::subrequest::Ctx {
    let user: pingora::proxy::subrequest::UserCtx = Box::new(order);
    pingora::proxy::subrequest::Ctx::builder()
        .user_ctx(user)
        .build()
}
