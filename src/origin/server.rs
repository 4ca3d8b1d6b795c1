//! The media chain as an HTTP/1.1 origin on loopback, for pingora to proxy media misses to.
//!
//! pingora's cache fills from an upstream HTTP response; serving the chain as one keeps
//! media on the same path as the core's responses (one fetch per miss, streaming to
//! waiters, ranges, stale on error) instead of a second, partial cache path. Only the proxy
//! talks to it: it listens on 127.0.0.1 on a port chosen at start, and it answers only for
//! the media route the proxy handed over with the request (see [`super::handoff`]), from
//! its places, with headers it builds itself (nothing a store sends beyond length, type
//! and validators reaches the client).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::oneshot;

use super::background_copy::BackgroundCopies;
use super::handoff::{
    CacheVerdict, CopyHandoff, Handed, HandedRoutes, MediaOrigin, PendingCopy, MEDIA_TICKET,
};
use super::{lookup, ChainAnswer};
use crate::config::model::MediaRoute;
use crate::metrics;
use crate::migrate::arriving::Reserved;
use crate::migrate::queue::{NewJob, WriteThroughQueue};
use crate::migrate::tee::tee_body;
use crate::store::places::Places;
use crate::store::{BodyStream, ByteRange, Found, ObjectKey, Tombstones};
use crate::wire::content_type_for;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// How long a body waits at most for the proxy's word on its cache.
const VERDICT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct MediaServer {
    listener: parking_lot::Mutex<Option<std::net::TcpListener>>,
    address: SocketAddr,
    places: Arc<Places>,
    routes: Arc<HandedRoutes>,
    write_through: Option<Arc<WriteThroughQueue>>,
    tombstones: Arc<Tombstones>,
}

impl MediaServer {
    /// Binds the loopback port now, so the proxy knows where to send media misses before
    /// any service starts.
    pub fn bind(
        places: Arc<Places>,
        write_through: Option<Arc<WriteThroughQueue>>,
        tombstones: Arc<Tombstones>,
    ) -> std::io::Result<MediaServer> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        Ok(MediaServer {
            listener: parking_lot::Mutex::new(Some(listener)),
            address,
            places,
            routes: Arc::default(),
            write_through,
            tombstones,
        })
    }

    /// The proxy's handle: where to send media misses, and where to lodge their routes.
    pub fn origin(&self) -> MediaOrigin {
        MediaOrigin::new(self.address, self.routes.clone())
    }

    /// Whether copies may be taken from the cache's files: there is a queue, and `link`
    /// (the cache's probe) can link a file into its directory.
    pub fn copies_can_come_from(&self, link: impl FnOnce(&std::path::Path) -> bool) -> bool {
        self.write_through
            .as_ref()
            .is_some_and(|queue| link(queue.arriving_dir()))
    }
}

#[async_trait]
impl BackgroundService for MediaServer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let taken = self.listener.lock().take();
        let Some(listener) = taken else { return };
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(error = %e, "media origin cannot listen; media routes will fail");
                return;
            }
        };
        let handler = Arc::new(Handler {
            places: self.places.clone(),
            routes: self.routes.clone(),
            write_through: self.write_through.clone(),
            background_copies: self
                .write_through
                .as_ref()
                .map(|queue| BackgroundCopies::new(self.places.clone(), queue.clone())),
            tombstones: self.tombstones.clone(),
        });
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "media origin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
            };
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler.handle(req).await) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await
                {
                    tracing::debug!(error = %e, "media origin connection ended");
                }
            });
        }
    }
}

struct Handler {
    places: Arc<Places>,
    routes: Arc<HandedRoutes>,
    write_through: Option<Arc<WriteThroughQueue>>,
    /// Copies of objects served in parts, fetched whole in the background.
    background_copies: Option<BackgroundCopies>,
    tombstones: Arc<Tombstones>,
}

fn text(status: StatusCode, message: &str, cache_control: &str) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(format!("{message}\n")))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(value) = HeaderValue::from_str(cache_control) {
        headers.insert(header::CACHE_CONTROL, value);
    }
    resp
}

/// Whether `If-Range` matches the object by the strong comparison RFC 9110 §13.1.5 asks
/// for: an entity-tag equal to the object's strong ETag, or a date equal to its
/// `Last-Modified`. A weak tag on either side never matches.
fn if_range_matches(if_range: &[u8], info: &crate::store::ObjectInfo) -> bool {
    let if_range = if_range.trim_ascii();
    if if_range.starts_with(b"W/") {
        return false;
    }
    if if_range.first() == Some(&b'"') {
        return info
            .etag
            .as_deref()
            .is_some_and(|etag| !etag.starts_with("W/") && etag.as_bytes() == if_range);
    }
    info.last_modified
        .as_deref()
        .is_some_and(|date| date.as_bytes() == if_range)
}

/// One `bytes=` range; several ranges, or anything unparsable, are ignored (the whole
/// object is sent, which RFC 9110 allows).
fn single_range(value: Option<&HeaderValue>) -> Option<ByteRange> {
    let spec = value?.to_str().ok()?.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        return Some(ByteRange::Suffix(last.parse().ok()?));
    }
    let first = first.parse().ok()?;
    let last = if last.is_empty() {
        None
    } else {
        Some(last.parse().ok()?)
    };
    if last.is_some_and(|l| l < first) {
        return None;
    }
    Some(ByteRange::From { first, last })
}

impl Handler {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let answer = self.answer(&req).await;
        let result = match answer.status().as_u16() {
            200 | 206 | 416 => "found",
            404 => "not_found",
            400 => "bad_key",
            _ => "error",
        };
        metrics::get()
            .media_responses
            .with_label_values(&[result])
            .inc();
        answer
    }

    async fn answer(&self, req: &Request<Incoming>) -> Response<Body> {
        const NO_STORE: &str = "no-store";
        let with_body = match *req.method() {
            Method::GET => true,
            Method::HEAD => false,
            _ => {
                let mut resp = text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "405 method not allowed",
                    NO_STORE,
                );
                resp.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                return resp;
            }
        };
        let Some(Handed { route, copy }) = self.routes.handed(req.headers().get(MEDIA_TICKET))
        else {
            return text(StatusCode::NOT_FOUND, "404 no media route", NO_STORE);
        };
        let Some(media) = &route.media else {
            return text(StatusCode::NOT_FOUND, "404 no media route", NO_STORE);
        };
        let path = req.uri().path();
        let key = match ObjectKey::for_route(&route.path, path) {
            Ok(Some(key)) => key,
            Ok(None) => return text(StatusCode::NOT_FOUND, "404 not found", NO_STORE),
            Err(e) => {
                tracing::info!(path, error = %e, "media request refused");
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("400 bad request: {e}"),
                    NO_STORE,
                );
            }
        };
        let range = single_range(req.headers().get(header::RANGE));
        let if_range = req
            .headers()
            .get(header::IF_RANGE)
            .map(|v| v.as_bytes().to_vec());
        // Deleted media is looked for only where Mastodon writes: a legacy copy must not
        // bring it back, and a new upload under the key is served.
        // Another process on this machine may have laid some (the old one, during an
        // upgrade).
        self.tombstones.pick_up_new();
        let tombstoned = self.tombstones.contains(&key);
        let chain: Vec<String> = if tombstoned {
            metrics::get().media_tombstoned_lookups.inc();
            media
                .chain
                .iter()
                .filter(|place| media.write_through.contains(place))
                .cloned()
                .collect()
        } else {
            media.chain.clone()
        };
        let mut answer = lookup(&self.places, &chain, &key, range, with_body).await;
        // `If-Range` is judged once the object's validators are known: unless it matches
        // strongly, the range is ignored and the whole object sent (a 416 is answered
        // whole too, which ignoring the range always allows).
        if let (Some(if_range), Some(_)) = (&if_range, range) {
            let matches = match &answer {
                ChainAnswer::Found { found, .. } => if_range_matches(if_range, &found.info),
                ChainAnswer::RangeNotSatisfiable { .. } => false,
                _ => true,
            };
            if !matches {
                answer = lookup(&self.places, &chain, &key, None, with_body).await;
            }
        }
        if let ChainAnswer::Found { found, place, .. } = &mut answer {
            found.info.content_type = Some(media_type(found.info.content_type.take(), &key));
            if !tombstoned {
                self.write_through(media, &key, found, place, copy);
            }
        }
        respond(answer, media, NO_STORE)
    }

    /// Copies a whole body that came from anywhere but a write-through store into every
    /// write-through store, by way of the queue. The stores that said they lack it are not
    /// trusted blindly: each upload looks first and never overwrites. With a `copy`
    /// handoff, the copy is the cache's file of the body when the cache keeps one.
    fn write_through(
        &self,
        media: &MediaRoute,
        key: &ObjectKey,
        found: &mut Found,
        place: &str,
        copy: Option<Arc<CopyHandoff>>,
    ) {
        let Some(queue) = &self.write_through else {
            return;
        };
        if media.write_through.is_empty() {
            return;
        }
        let stores: Vec<String> = media
            .write_through
            .iter()
            .filter(|s| s.as_str() != place)
            .cloned()
            .collect();
        // A part of the object (a slice): the whole is fetched for the copy on its own.
        // A range that covers the whole object is the object.
        let whole = found
            .range
            .is_none_or(|(first, last)| first == 0 && last.checked_add(1) == Some(found.info.len));
        if !whole {
            if let (Some(copies), Some(_)) = (&self.background_copies, &found.body) {
                copies.start(key, &found.info, place, stores);
            }
            return;
        }
        let Some(body) = found.body.take() else {
            return;
        };
        let job = NewJob {
            key: key.clone(),
            stores,
            info: found.info.clone(),
        };
        let Some(reserved) = queue.reserve(job) else {
            found.body = Some(body);
            return;
        };
        let verdict = copy.as_ref().and_then(|c| c.take_verdict());
        found.body = Some(match (copy, verdict) {
            (Some(copy), Some(verdict)) => copy_as_the_cache_decides(body, reserved, copy, verdict),
            _ => copy_as_it_streams(body, reserved),
        });
    }
}

/// The body, with the copy spooled from it as it streams (the body alone if the copy's
/// file cannot be made).
fn copy_as_it_streams(body: BodyStream, reserved: Reserved) -> BodyStream {
    match reserved.tee() {
        Some(tee) => tee_body(body, tee),
        None => body,
    }
}

/// The body, held back until the proxy says what its cache does with it: kept on disk, the
/// body goes out untouched and the copy waits for the cache's file; otherwise it is spooled
/// as it streams. The proxy answers as soon as it has the response's head, or its ticket
/// goes (which reads as "not kept"); [`VERDICT_WAIT`] only bounds a path that says nothing.
fn copy_as_the_cache_decides(
    body: BodyStream,
    reserved: Reserved,
    copy: Arc<CopyHandoff>,
    verdict: oneshot::Receiver<CacheVerdict>,
) -> BodyStream {
    let decided = async move {
        match tokio::time::timeout(VERDICT_WAIT, verdict).await {
            Ok(Ok(CacheVerdict::KeepsOnDisk)) => {
                copy.leave(PendingCopy::new(reserved.linked()));
                body
            }
            Ok(Ok(CacheVerdict::DoesNotKeep) | Err(_)) => copy_as_it_streams(body, reserved),
            Err(_) => {
                tracing::warn!(
                    "the proxy said nothing of its cache; the copy is spooled as the body streams"
                );
                copy_as_it_streams(body, reserved)
            }
        }
    };
    Box::pin(futures_util::stream::once(decided).flatten())
}

/// The store's media type, or the one the key's extension implies when the store has none
/// or only the generic one (objects uploaded without a type).
fn media_type(stated: Option<String>, key: &ObjectKey) -> String {
    match stated {
        Some(t)
            if !matches!(
                t.as_str(),
                "binary/octet-stream" | "application/octet-stream"
            ) =>
        {
            t
        }
        _ => content_type_for(key.as_str()).to_string(),
    }
}

fn respond(answer: ChainAnswer, media: &MediaRoute, no_store: &str) -> Response<Body> {
    match answer {
        ChainAnswer::NotFound => text(
            StatusCode::NOT_FOUND,
            "404 not found",
            &media.not_found_cache_control,
        ),
        ChainAnswer::Failed { errors } => {
            tracing::warn!(errors = ?errors, "no media store could answer");
            text(
                StatusCode::BAD_GATEWAY,
                "502 media storage unavailable",
                no_store,
            )
        }
        ChainAnswer::RangeNotSatisfiable { len } => {
            let mut resp = text(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "416 range not satisfiable",
                no_store,
            );
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            resp
        }
        ChainAnswer::Found { found, place, .. } => {
            let body_len = found.body_len();
            let body: Body = match found.body {
                Some(body) => {
                    BodyExt::boxed_unsync(StreamBody::new(body.map(|chunk| chunk.map(Frame::data))))
                }
                None => Full::new(Bytes::new())
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            };
            let mut resp = Response::new(body);
            if let Some((first, last)) = found.range {
                *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
                if let Ok(value) =
                    HeaderValue::from_str(&format!("bytes {first}-{last}/{}", found.info.len))
                {
                    resp.headers_mut().insert(header::CONTENT_RANGE, value);
                }
            }
            let headers_list = [
                (header::CONTENT_LENGTH, Some(body_len.to_string())),
                (header::CONTENT_TYPE, found.info.content_type.clone()),
                (header::ETAG, found.info.etag.clone()),
                (header::LAST_MODIFIED, found.info.last_modified.clone()),
                (header::CACHE_CONTROL, Some(media.cache_control.clone())),
                (header::ACCEPT_RANGES, Some("bytes".to_string())),
            ];
            let headers = resp.headers_mut();
            for (name, value) in headers_list {
                if let Some(value) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
                    headers.insert(name, value);
                }
            }
            tracing::debug!(store = %place, "media served");
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parse(value: &str) -> Option<ByteRange> {
        single_range(Some(&HeaderValue::from_str(value).ok()?))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn a_range_parses_back_from_the_header_it_asks_with(
            range in prop_oneof![
                (any::<u64>(), any::<u64>()).prop_map(|(a, b)| ByteRange::From {
                    first: a.min(b),
                    last: Some(a.max(b)),
                }),
                any::<u64>().prop_map(|first| ByteRange::From { first, last: None }),
                any::<u64>().prop_map(ByteRange::Suffix),
            ],
        ) {
            prop_assert_eq!(parse(&range.header_value()), Some(range));
        }

        #[test]
        fn arbitrary_range_headers_never_panic(value in "\\PC{0,60}") {
            let _ = parse(&value);
        }

        #[test]
        fn range_headers_near_the_format_never_panic(value in "(bytes=)?[0-9, -]{0,50}") {
            if let Some(ByteRange::From { first, last: Some(last) }) = parse(&value) {
                prop_assert!(first <= last);
            }
        }
    }

    #[test]
    fn single_ranges_parse_and_the_rest_is_ignored() {
        let r = |v: &str| single_range(Some(&HeaderValue::from_str(v).expect("value")));
        assert_eq!(
            r("bytes=0-9"),
            Some(ByteRange::From {
                first: 0,
                last: Some(9)
            })
        );
        assert_eq!(
            r("bytes=10-"),
            Some(ByteRange::From {
                first: 10,
                last: None
            })
        );
        assert_eq!(r("bytes=-5"), Some(ByteRange::Suffix(5)));
        assert_eq!(r("bytes=0-1,5-6"), None);
        assert_eq!(r("bytes=9-1"), None);
        assert_eq!(r("items=0-1"), None);
    }
}
