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
use pingora::proxy::{RangeType, Session};
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

    /// The next piece of a body whose length the slice's header announced, of which `sent`
    /// bytes have come. A subrequest's task may end without its end marker once it has
    /// sent the whole of what it announced (its own error answers do): that body is whole.
    async fn announced_body(&mut self, announced: Option<u64>, sent: u64) -> Result<Option<Bytes>> {
        match self.body().await {
            Err(_) if self.handle.rx.is_closed() && announced == Some(sent) => Ok(None),
            read => read,
        }
    }

    /// Lets the slice run to its end without a reader: a fill in progress completes and is
    /// stored for the next request.
    fn let_finish(self) {
        self.handle.drain_tasks();
    }

    /// After the answer needs no more of it: a slice is let finish (at most one slice's
    /// bytes), and so is a whole object (from a server that ignores ranges) the cache can
    /// keep; one it cannot keep is dropped, or every `HEAD` would cost its whole body.
    fn finish_if_kept(self, kept: bool) {
        if kept {
            self.let_finish();
        }
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
        let mut anchor = session
            .req_header()
            .headers
            .get(header::RANGE)
            .and_then(|range| slices::first_wanted_offset(range.as_bytes()))
            .map_or(0, |offset| slices::slice_of(offset, size));
        ctx.served_from_slices = true;
        loop {
            let mut first = self.open_slice(session, anchor, size)?;
            let (header, end) = first.header().await?;
            // The client's request reports how its first slice was found.
            ctx.cache_status = header
                .headers
                .get(X_CACHE_STATUS)
                .and_then(|value| CacheStatus::from_name(value.as_bytes()));
            let found = judge_first(&header, anchor, size)?;
            let total = match found {
                Found::Sliced(ref head) => head.total,
                Found::Whole(total) | Found::Unsatisfiable(total) => total,
                Found::Other => return pass_on(session, ctx, header, end, first).await,
            };
            let kept = match found {
                Found::Whole(total) => self
                    .shared
                    .cache
                    .as_ref()
                    .is_some_and(|c| !c.too_large(total)),
                _ => true,
            };
            let mut resp = whole_object_header(&header, total, ctx)?;
            if policy::not_modified(session.req_header(), &resp) {
                to_304(&mut resp);
                session.write_response_header(Box::new(resp), true).await?;
                first.finish_if_kept(kept);
                return Ok(());
            }
            let range = self.judge_range(session.req_header(), &mut resp);
            // Past the end, yet the answer wants bytes (an `If-Range` that did not match
            // asks for the whole): from the first slice on.
            if matches!(found, Found::Unsatisfiable(_))
                && !matches!(range, RangeType::Invalid)
                && anchor != 0
                && total > 0
            {
                anchor = 0;
                continue;
            }
            let range = bounded_multipart(range, session, &mut resp, total, size, self);
            let is_head = session.req_header().method == http::Method::HEAD;
            let body = RangeBody::for_range(&range, total).filter(|_| !is_head);
            let Some(mut body) = body.filter(|_| !matches!(found, Found::Unsatisfiable(_))) else {
                if matches!(found, Found::Unsatisfiable(_)) && !matches!(range, RangeType::Invalid)
                {
                    // Only an empty object gets here (`total` 0): nothing to send.
                    resp.insert_header(header::CONTENT_LENGTH, 0)?;
                }
                session.write_response_header(Box::new(resp), true).await?;
                first.finish_if_kept(kept);
                return Ok(());
            };
            session.write_response_header(Box::new(resp), false).await?;
            match found {
                Found::Sliced(head) => {
                    self.stream_slices(session, ctx, &mut body, first, &head, size)
                        .await?
                }
                _ => stream_whole(session, &mut body, first, kept).await?,
            }
            if !body.complete() {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(502),
                    "the object ended before the bytes the answer promised",
                ));
            }
            return session.write_response_body(None, true).await;
        }
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
        let wanted = body.wanted().to_vec();
        let mut needed = slices_needed(&wanted, size).peekable();
        let mut ready = Some(first);
        while let Some(index) = needed.next() {
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
            let next = needed.peek().copied();
            let start = slices::slice_start(index, size);
            let end = start.saturating_add(size).min(head.total);
            // The next slice is asked for once half of this one is out: its fetch overlaps
            // the rest of this one, and a client that leaves early has cost at most the
            // slice it was reading.
            let halfway = start.saturating_add(size / 2);
            let mut at = start;
            while let Some(bytes) = stream.body().await? {
                let len = bytes.len() as u64;
                // A slice's body must fill its span exactly, or its bytes are misplaced.
                if at.saturating_add(len) > end {
                    return Err(slice_error(index, "sent more bytes than its span"));
                }
                if let Some(out) = body.cut(at, &bytes) {
                    session.write_response_body(Some(out), false).await?;
                }
                at += len;
                if let (None, Some(next), true) = (&ready, next, at >= halfway) {
                    ready = Some(self.open_slice(session, next, size)?);
                }
            }
            if at != end {
                return Err(slice_error(index, "ended short of its span"));
            }
        }
        if let Some(unneeded) = ready {
            unneeded.let_finish();
        }
        Ok(())
    }

    /// Reads a further slice's header and checks it belongs with the first. A slice of
    /// another length or validators means the object changed at its origin: every slice of
    /// it is purged. Any other answer (an error, a whole object) only breaks this answer
    /// off: the stored slices are still good.
    async fn check_slice(
        &self,
        session: &mut Session,
        ctx: &RequestContext,
        stream: &mut SliceStream,
        head: &SliceHead,
        size: u64,
    ) -> Result<()> {
        let (header, _) = stream.header().await?;
        let range = ContentRange::of(&header)
            .filter(|_| header.status == StatusCode::PARTIAL_CONTENT)
            .filter(|range| slices::holds_slice(*range, stream.index, size))
            .filter(|range| slice_length_agrees(&header, *range));
        let Some(ContentRange::Span {
            total: Some(total), ..
        }) = range
        else {
            tracing::info!(
                slice = stream.index,
                status = header.status.as_u16(),
                "a slice came back as something else; the answer is broken off"
            );
            return Err(slice_error(stream.index, "was not the slice asked for"));
        };
        if SliceHead::of(&header, total) == *head {
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
            purged,
            "a slice does not match the object's first slice: the object changed, its slices are purged"
        );
        Err(Error::explain(
            ErrorType::HTTPStatus(502),
            "the object changed at its origin while it was served in slices",
        ))
    }
}

/// What the first slice's answer says about the object. A `206` that is not the slice asked
/// for cannot be placed: the answer is a 502, never that `206` passed on.
fn judge_first(header: &ResponseHeader, anchor: u64, size: u64) -> Result<Found> {
    Ok(match (header.status.as_u16(), ContentRange::of(header)) {
        (
            206,
            Some(
                range @ ContentRange::Span {
                    total: Some(total), ..
                },
            ),
        ) if slices::holds_slice(range, anchor, size)
            && slice_length_agrees(header, range)
            && total <= MAX_SLICED_LENGTH =>
        {
            Found::Sliced(SliceHead::of(header, total))
        }
        (206, _) => {
            return Err(slice_error(
                anchor,
                "answered with another range than the slice",
            ))
        }
        (200, _) => match crate::wire::content_length(&header.headers) {
            Some(total) => Found::Whole(total),
            None => Found::Other,
        },
        (416, Some(ContentRange::Unsatisfied { total })) if total <= MAX_SLICED_LENGTH => {
            Found::Unsatisfiable(total)
        }
        _ => Found::Other,
    })
}

/// The longest object served in slices (1 PiB): a larger stated length is an origin's error,
/// not an object.
const MAX_SLICED_LENGTH: u64 = 1 << 50;

/// Whether a slice's `Content-Length`, when it states one, is its span's.
fn slice_length_agrees(header: &ResponseHeader, range: ContentRange) -> bool {
    let ContentRange::Span { first, last, .. } = range else {
        return false;
    };
    crate::wire::content_length(&header.headers).is_none_or(|len| len == last - first + 1)
}

/// More than this many slices for one multipart answer, and only its first part is sent
/// (RFC 9110 §14.2 lets a server ignore or coalesce such requests): a few bytes asked of
/// many places must not cost the origin many slices.
const MAX_MULTIPART_SLICES: u64 = 8;

/// The range answer, with a multipart one over too many slices cut down to its first part.
fn bounded_multipart(
    range: RangeType,
    session: &Session,
    resp: &mut ResponseHeader,
    total: u64,
    size: u64,
    proxy: &EdgeProxy,
) -> RangeType {
    let RangeType::Multi(info) = &range else {
        return range;
    };
    let spans: Vec<Range<u64>> = info
        .ranges
        .iter()
        .map(|r| r.start as u64..r.end as u64)
        .collect();
    let count = slices_needed(&spans, size)
        .take(MAX_MULTIPART_SLICES as usize + 1)
        .count() as u64;
    if count <= MAX_MULTIPART_SLICES {
        return range;
    }
    let Some(first) = spans.first() else {
        return range;
    };
    let mut single = session.req_header().clone();
    let asked = format!("bytes={}-{}", first.start, first.end - 1);
    if single.insert_header(header::RANGE, asked).is_err() {
        return range;
    }
    // Judged again from the whole object's header.
    let _ = resp.set_status(StatusCode::OK);
    resp.remove_header(&header::CONTENT_RANGE);
    let _ = resp.insert_header(
        header::CONTENT_TYPE,
        info.content_type.clone().unwrap_or_default(),
    );
    let _ = resp.insert_header(header::CONTENT_LENGTH, total);
    proxy.judge_range(&single, resp)
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

/// The slice indexes that hold the bytes of `wanted` (ascending spans), ascending, each
/// once; computed as they are taken, so an object's length never sizes a list.
fn slices_needed(wanted: &[Range<u64>], size: u64) -> impl Iterator<Item = u64> + '_ {
    let mut last_taken: Option<u64> = None;
    wanted
        .iter()
        .filter(|span| !span.is_empty())
        .flat_map(move |span| {
            slices::slice_of(span.start, size)..=slices::slice_of(span.end - 1, size)
        })
        .filter(move |&index| {
            let new = last_taken.is_none_or(|last| index > last);
            if new {
                last_taken = Some(index);
            }
            new
        })
}

/// Cuts the answer from a whole object's body, which starts at its first byte.
async fn stream_whole(
    session: &mut Session,
    body: &mut RangeBody,
    mut whole: SliceStream,
    kept: bool,
) -> Result<()> {
    let mut at = 0;
    while let Some(bytes) = whole.body().await? {
        let len = bytes.len() as u64;
        if let Some(out) = body.cut(at, &bytes) {
            session.write_response_body(Some(out), false).await?;
        }
        at += len;
        if body.complete() {
            whole.finish_if_kept(kept);
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
    // A `HEAD` gets the header alone, whatever the slice's `GET` brought.
    let end = end || session.req_header().method == http::Method::HEAD;
    let announced = crate::wire::content_length(&header.headers);
    session.write_response_header(header, end).await?;
    if end {
        return Ok(());
    }
    let mut sent = 0u64;
    while let Some(bytes) = stream.announced_body(announced, sent).await? {
        sent += bytes.len() as u64;
        session.write_response_body(Some(bytes), false).await?;
    }
    session.write_response_body(None, true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slice whose subrequest sends `pieces` and then ends, with or without its end
    /// marker.
    fn slice_sending(pieces: &[&'static [u8]], marked_end: bool) -> SliceStream {
        let (to_parent, rx) = tokio::sync::mpsc::channel(pieces.len() + 1);
        let (tx, _input) = tokio::sync::mpsc::channel(1);
        let (_wants_body, subreq_wants_body) = tokio::sync::oneshot::channel();
        let (_error, subreq_proxy_error) = tokio::sync::oneshot::channel();
        for piece in pieces {
            let sent = to_parent.try_send(HttpTask::Body(Some(Bytes::from_static(piece)), false));
            assert!(sent.is_ok(), "the channel holds every piece");
        }
        if marked_end {
            assert!(to_parent.try_send(HttpTask::Done).is_ok());
        }
        SliceStream {
            index: 0,
            handle: SubrequestHandle {
                tx,
                rx,
                subreq_wants_body,
                subreq_proxy_error,
            },
            header_read: true,
        }
    }

    /// Reads a passed-on body to its end: the bytes, or the error that broke it off.
    async fn read_announced(slice: &mut SliceStream, announced: Option<u64>) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        while let Some(bytes) = slice.announced_body(announced, body.len() as u64).await? {
            body.extend_from_slice(&bytes);
        }
        Ok(body)
    }

    /// A subrequest's own short answer (its 502) may end without the end marker once all
    /// of it is sent: it is passed on whole and the client's connection stays usable. A
    /// body that stops short of what it announced is still broken off.
    #[tokio::test]
    async fn a_passed_on_body_is_whole_at_its_announced_length() {
        let mut whole = slice_sending(&[b"502 bad ", b"gateway\n"], false);
        let got = read_announced(&mut whole, Some(16)).await;
        assert_eq!(got.ok().as_deref(), Some(&b"502 bad gateway\n"[..]));

        let mut marked = slice_sending(&[b"502 bad ", b"gateway\n"], true);
        let got = read_announced(&mut marked, Some(16)).await;
        assert_eq!(got.ok().as_deref(), Some(&b"502 bad gateway\n"[..]));

        let mut short = slice_sending(&[b"502 bad "], false);
        assert!(read_announced(&mut short, Some(16)).await.is_err());
        let mut unannounced = slice_sending(&[b"502 bad "], false);
        assert!(read_announced(&mut unannounced, None).await.is_err());
    }

    #[test]
    fn the_slices_needed_cover_every_wanted_byte_once() {
        let needed = |w: &[Range<u64>]| slices_needed(w, 1024).collect::<Vec<_>>();
        assert_eq!(needed(std::slice::from_ref(&(0..2))), vec![0]);
        assert_eq!(needed(std::slice::from_ref(&(1000..3000))), vec![0, 1, 2]);
        assert_eq!(needed(&[0..10, 500..600, 5000..5001]), vec![0, 4]);
        assert_eq!(needed(std::slice::from_ref(&(1024..2048))), vec![1]);
        assert!(needed(&[]).is_empty());
        // A length no list could hold is walked, not listed.
        let huge = 0..u64::MAX;
        assert_eq!(
            slices_needed(std::slice::from_ref(&huge), 1024).nth(3),
            Some(3)
        );
    }
}
