//! Requests on routes that slice, answered from the object's slices.
//!
//! A `GET` or `HEAD` that may use the shared cache, on a route with `slice` on, is answered
//! here in `request_filter`, as nginx's slice module and Traffic Server's slice plugin do:
//! 1. the slice holding the first byte the `Range` asks for (slice 0 without one, or for a
//!    suffix range, whose place needs the length) is asked of a subrequest
//!    (`slice_fill`), which finds it stored or fetches it under the cache lock of that slice
//!    alone; its answer gives the object's length and validators;
//! 2. the client's answer is decided from them as if the whole object were stored: `304`
//!    for a matching condition, `416` with `bytes */length` for an unsatisfiable range,
//!    `206` (one range, or `multipart/byteranges`) or `200`; it goes out at once, before
//!    any further slice;
//! 3. every other slice the answer needs follows in order, the next one asked for once
//!    half of the current one is out, so its fetch overlaps the rest of the current one, at
//!    most two slices are in flight per client, and a slow client holds back only those two.
//!
//! Each further slice must be of the first slice's representation (length, `ETag`,
//! `Last-Modified`). When one is not, the object changed at its origin: every stored slice of
//! it is purged and the answer is broken off, so no client ever gets a body mixed from two
//! versions (the next request fetches the new one).
//!
//! A server that ignores ranges answers slice 0 with a `200`: that is the whole object, and
//! the answer is cut from it as from any stored object.

use std::ops::Range;

use bytes::Bytes;
use http::{header, StatusCode};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::http::conditional_filter::to_304;
use pingora::protocols::http::subrequest::server::SubrequestHandle;
use pingora::protocols::http::HttpTask;
use pingora::proxy::Session;
use pingora::ErrorType;

use super::context::RequestContext;
use super::range_body::RangeBody;
use super::slice_fill::order_context;
use super::{forward, EdgeProxy, X_CACHE_STATUS};
use crate::cache::slices::{self, ContentRange, SliceHead, SliceOrder};
use crate::cache::{policy, CacheStatus};

/// One slice's subrequest, as the parent reads it.
struct SliceStream {
    index: u64,
    handle: SubrequestHandle,
    /// Its response header has been read (and judged).
    header_read: bool,
}

impl SliceStream {
    /// The slice's final response header, and whether it ends the response.
    async fn header(&mut self) -> Result<(Box<ResponseHeader>, bool)> {
        self.header_read = true;
        loop {
            match self.handle.rx.recv().await {
                Some(HttpTask::Header(header, end)) if !header.status.is_informational() => {
                    return Ok((header, end))
                }
                Some(HttpTask::Header(..)) => continue,
                Some(HttpTask::Failed(e)) => return Err(e),
                Some(_) | None => {
                    return Err(slice_error(self.index, "ended before its response header"))
                }
            }
        }
    }

    /// The next piece of the slice's body; `None` at its end.
    async fn body(&mut self) -> Result<Option<Bytes>> {
        loop {
            match self.handle.rx.recv().await {
                Some(HttpTask::Body(Some(bytes), _)) if !bytes.is_empty() => {
                    return Ok(Some(bytes))
                }
                Some(HttpTask::Body(_, true) | HttpTask::Done | HttpTask::Trailer(_)) => {
                    return Ok(None)
                }
                Some(HttpTask::Body(..)) => continue,
                Some(HttpTask::Failed(e)) => return Err(e),
                Some(_) => return Err(slice_error(self.index, "sent an unexpected task")),
                None => return Err(slice_error(self.index, "ended before its body did")),
            }
        }
    }

    /// Lets the slice run to its end without a reader: a fill in progress completes and is
    /// stored for the next request.
    fn let_finish(self) {
        self.handle.drain_tasks();
    }
}

fn slice_error(index: u64, what: &str) -> Box<Error> {
    Error::explain(ErrorType::HTTPStatus(502), format!("slice {index} {what}"))
}

/// What the first slice's answer says about the object.
enum Found {
    /// A slice of an object of this length and representation.
    Sliced(SliceHead),
    /// The whole object from its first byte, of this length: the server ignored the range
    /// (or the object is slice 0 alone, stored before it was sliced).
    Whole(u64),
    /// No range of it is satisfiable: the object has this many bytes.
    Unsatisfiable(u64),
    /// Anything else (an error, a redirect, an answer without a length): passed on as it is.
    Other,
}

impl EdgeProxy {
    /// The slice size when this request is answered from slices; `None` when it goes the
    /// usual way.
    pub(super) fn slice_size_for(
        &self,
        session: &mut Session,
        ctx: &RequestContext,
    ) -> Option<u64> {
        if ctx.slice_fill.is_some() || session.subrequest_ctx.is_some() {
            return None;
        }
        session.subrequest_spawner.as_ref()?;
        self.shared.cache.as_ref()?;
        let route = ctx.route.route()?;
        let route_size = route.slice?;
        let settings = self.settings(ctx);
        let policy = settings.cache_policy.as_ref()?;
        let has_body = !session.is_body_empty();
        let req = session.req_header();
        if !matches!(req.method, http::Method::GET | http::Method::HEAD)
            || req.headers.contains_key(header::UPGRADE)
            || policy::request_bypass(req, has_body, route.cache, policy).is_some()
        {
            return None;
        }
        Some(route_size.unwrap_or(policy.slice_size))
    }

    /// Answers the request from the object's slices (see the module's documentation).
    pub(super) async fn serve_from_slices(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
        size: u64,
    ) -> Result<()> {
        let anchor = session
            .req_header()
            .headers
            .get(header::RANGE)
            .and_then(|range| slices::first_wanted_offset(range.as_bytes()))
            .map_or(0, |offset| slices::slice_of(offset, size));
        ctx.served_from_slices = true;
        let mut first = self.open_slice(session, anchor, size)?;
        let (header, end) = first.header().await?;
        // The client's request reports how its first slice was found.
        ctx.cache_status = header
            .headers
            .get(X_CACHE_STATUS)
            .and_then(|value| CacheStatus::from_name(value.as_bytes()));
        let found = judge_first(&header, anchor, size);
        let total = match found {
            Found::Sliced(ref head) => head.total,
            Found::Whole(total) | Found::Unsatisfiable(total) => total,
            Found::Other => return pass_on(session, ctx, header, end, first).await,
        };
        let mut resp = whole_object_header(&header, total, ctx)?;
        if policy::not_modified(session.req_header(), &resp) {
            to_304(&mut resp);
            session.write_response_header(Box::new(resp), true).await?;
            first.let_finish();
            return Ok(());
        }
        let range = self.judge_range(session.req_header(), &mut resp);
        let is_head = session.req_header().method == http::Method::HEAD;
        let body = RangeBody::for_range(&range, total).filter(|_| !is_head);
        let Some(mut body) = body else {
            session.write_response_header(Box::new(resp), true).await?;
            first.let_finish();
            return Ok(());
        };
        session.write_response_header(Box::new(resp), false).await?;
        match found {
            Found::Sliced(head) => {
                self.stream_slices(session, ctx, &mut body, first, &head, size)
                    .await?
            }
            _ => stream_whole(session, &mut body, first).await?,
        }
        if !body.complete() {
            return Err(Error::explain(
                ErrorType::HTTPStatus(502),
                "the object ended before the bytes the answer promised",
            ));
        }
        session.write_response_body(None, true).await
    }

    /// Asks a subrequest for slice `index`.
    fn open_slice(&self, session: &mut Session, index: u64, size: u64) -> Result<SliceStream> {
        // A subrequest reads its request as HTTP/1.1 text: pingora writes an HTTP/2
        // request's current head for it, which needs an HTTP/1 version and a `Host` for
        // that. The client's own head is put back after.
        let h2 = session.req_header().version == http::Version::HTTP_2;
        let mut host_added = false;
        if h2 {
            let req = session.req_header_mut();
            req.set_version(http::Version::HTTP_11);
            if !req.headers.contains_key(header::HOST) {
                if let Some(authority) = req.uri.authority().map(|a| a.to_string()) {
                    host_added = req.insert_header(header::HOST, authority).is_ok();
                }
            }
        }
        let order = SliceOrder { index, size };
        let created = session.subrequest_spawner.as_ref().map(|spawner| {
            spawner.create_subrequest(&session.downstream_session, order_context(order))
        });
        if h2 {
            let req = session.req_header_mut();
            req.set_version(http::Version::HTTP_2);
            if host_added {
                req.remove_header(&header::HOST);
            }
        }
        let (subrequest, handle) = created
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no subrequests here"))?;
        tokio::spawn(subrequest.run());
        Ok(SliceStream {
            index,
            handle,
            header_read: false,
        })
    }

    /// Streams the slices `body` needs, in order, checking each against the first.
    async fn stream_slices(
        &self,
        session: &mut Session,
        ctx: &RequestContext,
        body: &mut RangeBody,
        first: SliceStream,
        head: &SliceHead,
        size: u64,
    ) -> Result<()> {
        let needed = slices_needed(body.wanted(), size);
        let mut ready = Some(first);
        for (i, &index) in needed.iter().enumerate() {
            let mut stream = match ready.take() {
                Some(stream) if stream.index == index => stream,
                other => {
                    if let Some(unneeded) = other {
                        unneeded.let_finish();
                    }
                    self.open_slice(session, index, size)?
                }
            };
            // Before any of its bytes go out: a changed object is found before it mixes.
            if !stream.header_read {
                self.check_slice(session, ctx, &mut stream, head, size)
                    .await?;
            }
            let next = needed.get(i + 1).copied();
            let start = slices::slice_start(index, size);
            // The next slice is asked for once half of this one is out: its fetch overlaps
            // the rest of this one, and a client that leaves early has cost at most the
            // slice it was reading.
            let halfway = start + size / 2;
            let mut at = start;
            while let Some(bytes) = stream.body().await? {
                let len = bytes.len() as u64;
                if let Some(out) = body.cut(at, &bytes) {
                    session.write_response_body(Some(out), false).await?;
                }
                at += len;
                if let (None, Some(next), true) = (&ready, next, at >= halfway) {
                    ready = Some(self.open_slice(session, next, size)?);
                }
            }
        }
        if let Some(unneeded) = ready {
            unneeded.let_finish();
        }
        Ok(())
    }

    /// Reads a further slice's header and checks it belongs with the first; when it does
    /// not, the object changed at its origin: every slice of it is purged.
    async fn check_slice(
        &self,
        session: &mut Session,
        ctx: &RequestContext,
        stream: &mut SliceStream,
        head: &SliceHead,
        size: u64,
    ) -> Result<()> {
        let (header, _) = stream.header().await?;
        let fits = header.status == StatusCode::PARTIAL_CONTENT
            && ContentRange::of(&header).is_some_and(|range| {
                slices::holds_slice(range, stream.index, size)
                    && SliceHead::of(&header, head.total) == *head
                    && matches!(range, ContentRange::Span { total: Some(t), .. } if t == head.total)
            });
        if fits {
            return Ok(());
        }
        let key = self.object_key(session, ctx);
        let purged = match (&self.shared.cache, &key) {
            (Some(cache), Some(key)) => cache.purge_key(key),
            _ => 0,
        };
        tracing::warn!(
            key = key.as_deref().unwrap_or(""),
            slice = stream.index,
            status = header.status.as_u16(),
            purged,
            "a slice does not match the object's first slice: the object changed, its slices are purged"
        );
        Err(Error::explain(
            ErrorType::HTTPStatus(502),
            "the object changed at its origin while it was served in slices",
        ))
    }
}

/// What the first slice's answer says about the object.
fn judge_first(header: &ResponseHeader, anchor: u64, size: u64) -> Found {
    match (header.status.as_u16(), ContentRange::of(header)) {
        (
            206,
            Some(
                range @ ContentRange::Span {
                    total: Some(total), ..
                },
            ),
        ) if slices::holds_slice(range, anchor, size) => {
            Found::Sliced(SliceHead::of(header, total))
        }
        (200, _) => match crate::wire::content_length(&header.headers) {
            Some(total) => Found::Whole(total),
            None => Found::Other,
        },
        (416, Some(ContentRange::Unsatisfied { total })) => Found::Unsatisfiable(total),
        _ => Found::Other,
    }
}

/// The client's header as if the whole object were stored: the slice's fields, with the
/// object's length, this request's id.
fn whole_object_header(
    slice: &ResponseHeader,
    total: u64,
    ctx: &RequestContext,
) -> Result<ResponseHeader> {
    let mut resp = slice.clone();
    resp.set_status(StatusCode::OK)?;
    resp.remove_header(&header::CONTENT_RANGE);
    resp.remove_header(&header::TRANSFER_ENCODING);
    resp.insert_header(header::CONTENT_LENGTH, total)?;
    if !ctx.request_id.is_empty() {
        resp.insert_header(forward::X_REQUEST_ID, ctx.request_id.as_str())?;
    }
    Ok(resp)
}

/// The slice indexes that hold the bytes of `wanted`, ascending, each once.
fn slices_needed(wanted: &[Range<u64>], size: u64) -> Vec<u64> {
    let mut needed: Vec<u64> = Vec::new();
    for span in wanted.iter().filter(|s| !s.is_empty()) {
        let first = slices::slice_of(span.start, size);
        let last = slices::slice_of(span.end - 1, size);
        for index in first..=last {
            if needed.last().is_none_or(|&l| l < index) {
                needed.push(index);
            }
        }
    }
    needed
}

/// Cuts the answer from a whole object's body, which starts at its first byte.
async fn stream_whole(
    session: &mut Session,
    body: &mut RangeBody,
    mut whole: SliceStream,
) -> Result<()> {
    let mut at = 0;
    while let Some(bytes) = whole.body().await? {
        let len = bytes.len() as u64;
        if let Some(out) = body.cut(at, &bytes) {
            session.write_response_body(Some(out), false).await?;
        }
        at += len;
        if body.complete() {
            whole.let_finish();
            return Ok(());
        }
    }
    Ok(())
}

/// Passes an answer that is not a slice on to the client as it came.
async fn pass_on(
    session: &mut Session,
    ctx: &RequestContext,
    mut header: Box<ResponseHeader>,
    end: bool,
    mut stream: SliceStream,
) -> Result<()> {
    if !ctx.request_id.is_empty() {
        header.insert_header(forward::X_REQUEST_ID, ctx.request_id.as_str())?;
    }
    session.write_response_header(header, end).await?;
    if end {
        return Ok(());
    }
    while let Some(bytes) = stream.body().await? {
        session.write_response_body(Some(bytes), false).await?;
    }
    session.write_response_body(None, true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slices_needed_cover_every_wanted_byte_once() {
        assert_eq!(slices_needed(std::slice::from_ref(&(0..2)), 1024), vec![0]);
        assert_eq!(
            slices_needed(std::slice::from_ref(&(1000..3000)), 1024),
            vec![0, 1, 2]
        );
        assert_eq!(
            slices_needed(&[0..10, 500..600, 5000..5001], 1024),
            vec![0, 4]
        );
        assert_eq!(
            slices_needed(std::slice::from_ref(&(1024..2048)), 1024),
            vec![1]
        );
        assert!(slices_needed(&[], 1024).is_empty());
    }
}
