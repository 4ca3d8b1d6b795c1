//! Partial content on routes that store whole objects: a stored `206` answers the ranges
//! inside it, and a stored start of an object is completed with the rest
//! (`cache::partial` has the rules; these are the hooks).
//!
//! - `response_cache_filter`: a `206` that agrees with its length is stored as a span.
//! - `cache_hit_filter`: a span that holds the bytes a `GET` or `HEAD` asks for answers it
//!   (`range_header_filter` then cuts them from it); otherwise the request refetches in its
//!   place, and when the span is the object's start (at most [`MAX_HELD_PREFIX`]) its bytes
//!   are read for the completion.
//! - `upstream_request_filter`: the completion asks for `bytes=<end>-`, with `If-Range` so
//!   the core sends the whole object instead if it changed.
//! - `upstream_response_filter` and `upstream_response_body_filter`: the rest that came
//!   back goes on as the whole object, the stored start put before its body; the cache then
//!   stores the whole object in the span's place.

use bytes::{Bytes, BytesMut};
use http::header;
use pingora::cache::{CacheMeta, ForcedFreshness, HitHandler};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{RangeType, Session};

use super::context::RequestContext;
use super::EdgeProxy;
use crate::cache::partial::{Completion, StoredSpan};
use crate::cache::slices::ContentRange;

/// The longest stored start of an object held in memory to complete it; a longer one is
/// fetched again whole.
const MAX_HELD_PREFIX: u64 = 1024 * 1024;

impl EdgeProxy {
    /// Whether a stored span answers this request; a miss otherwise (see the module).
    pub(super) async fn judge_stored_span(
        &self,
        session: &Session,
        meta: &CacheMeta,
        hit_handler: &mut HitHandler,
        ctx: &mut RequestContext,
    ) -> Result<Option<ForcedFreshness>> {
        if ctx.slice_fill.is_some() {
            return Ok(None);
        }
        let stored = meta.response_header();
        let Some(span) = StoredSpan::of(stored) else {
            return Ok(None);
        };
        let req = session.req_header();
        let answered = span
            .whole_header(stored)
            .map(|mut whole| self.judge_range(req, &mut whole))
            .is_some_and(|range| span.answers(&range).is_some());
        if answered && matches!(req.method, http::Method::GET | http::Method::HEAD) {
            ctx.stored_span = Some(span);
            return Ok(None);
        }
        ctx.span_short = true;
        if let Some(validator) = strong_validator(stored).filter(|_| span.is_prefix()) {
            if span.held.1 <= MAX_HELD_PREFIX {
                ctx.completion = Some(Completion {
                    span,
                    held: Some(read_all(hit_handler).await?),
                    validator,
                });
            }
        }
        // Refreshed, not missed: this request fetches in the span's place under the
        // object's lock (a miss would find the span stored and wait on itself), and no one
        // is answered from the span meanwhile.
        Ok(Some(ForcedFreshness::ForceExpired))
    }

    /// On a hit of a stored span: the answer's header and the range of the span that makes
    /// its body; `None` for any other response.
    pub(super) fn range_of_stored_span(
        &self,
        req: &RequestHeader,
        resp: &mut ResponseHeader,
        ctx: &RequestContext,
    ) -> Option<RangeType> {
        // The span of the response being served (a refresh may have replaced the one the
        // lookup found).
        ctx.stored_span?;
        let span = StoredSpan::of(resp)?;
        let mut whole = span.whole_header(resp)?;
        let relative = span.answers(&self.judge_range(req, &mut whole))?;
        *resp = whole;
        Some(relative)
    }

    /// A request the stored span falls short of asks for what it lacks: the rest of the
    /// object when the span is its start, else the whole; never a `304` that would only
    /// freshen the span.
    pub(super) fn ask_for_the_rest(
        &self,
        upstream_request: &mut RequestHeader,
        ctx: &RequestContext,
    ) -> Result<()> {
        if !ctx.span_short {
            return Ok(());
        }
        upstream_request.remove_header(&header::IF_NONE_MATCH);
        upstream_request.remove_header(&header::IF_MODIFIED_SINCE);
        if let Some(completion) = &ctx.completion {
            upstream_request.insert_header(header::RANGE, completion.span.rest_range())?;
            upstream_request.insert_header(header::IF_RANGE, completion.validator.as_str())?;
        }
        Ok(())
    }

    /// The rest arrived: it goes on, and into the cache, as the whole object. The whole
    /// object or an error goes on as it is; a part that is not the rest is a 502 (it
    /// answers nothing the client asked, and must not be stored).
    pub(super) fn join_the_rest(
        &self,
        resp: &mut ResponseHeader,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        let Some(completion) = &mut ctx.completion else {
            return Ok(());
        };
        let span = completion.span;
        let is_the_rest = resp.status.as_u16() == 206
            && ContentRange::of(resp)
                == Some(ContentRange::Span {
                    first: span.held.1,
                    last: span.total - 1,
                    total: Some(span.total),
                })
            && strong_validator(resp).as_deref() == Some(completion.validator.as_str());
        let joined = is_the_rest
            && resp.set_status(http::StatusCode::OK).is_ok()
            && resp
                .insert_header(header::CONTENT_LENGTH, span.total)
                .is_ok();
        if joined {
            resp.remove_header(&header::CONTENT_RANGE);
            ctx.held_prefix = completion.held.take();
        }
        ctx.completion = None;
        if !joined && resp.status.as_u16() == 206 {
            return Err(Error::explain(
                pingora::ErrorType::HTTPStatus(502),
                "the core answered the rest of an object with another part",
            )
            .into_up());
        }
        Ok(())
    }

    /// Puts the stored start before the first piece of the rest.
    pub(super) fn put_the_start_first(&self, body: &mut Option<Bytes>, ctx: &mut RequestContext) {
        let Some(piece) = body.as_ref() else {
            return;
        };
        if let Some(start) = ctx.held_prefix.take() {
            let mut joined = BytesMut::with_capacity(start.len() + piece.len());
            joined.extend_from_slice(&start);
            joined.extend_from_slice(piece);
            *body = Some(joined.freeze());
        }
    }
}

/// The response's strong `ETag`: what parts must share to be joined (RFC 9111 §3.4) and
/// what `If-Range` carries. A `Last-Modified` is not taken: a change within its second
/// keeps it, so it cannot tell two versions apart.
fn strong_validator(resp: &ResponseHeader) -> Option<String> {
    resp.headers
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .filter(|tag| tag.starts_with('"'))
        .map(str::to_string)
}

/// A stored span's whole body (the caller bounds its length).
async fn read_all(hit_handler: &mut HitHandler) -> Result<Bytes> {
    let mut body = BytesMut::new();
    while let Some(piece) = hit_handler.read_body().await? {
        body.extend_from_slice(&piece);
    }
    Ok(body.freeze())
}
