//! Freshening a stored response with a `304 Not Modified` (RFC 9111 §3.2, §4.3.4), or with a
//! `200` to a `HEAD` that describes it (§4.3.5): the stored header fields are replaced by
//! those the answer carries, so a validation brings new metadata (a new `Cache-Control`,
//! `Expires`, `Date`, or any header the core changed) without sending the body again.

use http::header::{self, HeaderName};
use pingora::cache::CacheMeta;
use pingora::http::ResponseHeader;

use super::meta::StoredMeta;
use super::tags::Tags;

/// Fields a 304 never changes in the stored response: what says how to read the stored
/// body (`Content-Length`, `Content-Encoding`, `Content-Range` are the stored body's, not
/// the 304's), the hop-by-hop ones a cache does not store, and `Vary`, whose change would
/// orphan the stored variants.
const KEPT: [HeaderName; 13] = [
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::CONTENT_RANGE,
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    HeaderName::from_static("proxy-authentication-info"),
    header::VARY,
];

/// `stored` with every field of `not_modified` in place of its own, but those in `KEPT`,
/// those the 304's `Connection` names, and `Proxy-Authorization`. The stored `Age` goes:
/// the response was just validated, so only an `Age` the 304 brings counts.
pub fn freshen(stored: &ResponseHeader, not_modified: &ResponseHeader) -> ResponseHeader {
    let connection_listed: Vec<String> = not_modified
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    let mut freshened = stored.clone();
    freshened.remove_header(&header::AGE);
    for name in not_modified.headers.keys() {
        let skipped = KEPT.contains(name)
            || *name == header::PROXY_AUTHORIZATION
            || connection_listed
                .iter()
                .any(|listed| listed == name.as_str());
        if skipped {
            continue;
        }
        freshened.remove_header(name);
        for value in not_modified.headers.get_all(name) {
            // Names and values came out of a parsed header: appending them cannot fail.
            let _ = freshened.append_header(name.clone(), value.clone());
        }
    }
    freshened
}

/// A stored body the PoP encoded carries the weak form of the core's `ETag` (other bytes,
/// same resource); a 304 from the core names the strong one, which is put in the weak form
/// here, before it freshens the coded copy or reaches the client.
pub fn keep_weakened_etag(stored: &ResponseHeader, not_modified: &mut ResponseHeader) {
    let (Some(ours), Some(theirs)) = (
        stored.headers.get(header::ETAG),
        not_modified.headers.get(header::ETAG),
    ) else {
        return;
    };
    if ours.as_bytes().strip_prefix(b"W/") == Some(theirs.as_bytes()) {
        let weak = ours.clone();
        let _ = not_modified.insert_header(header::ETAG, weak);
    }
}

/// Whether a `200` to a `HEAD` describes the stored response (RFC 9111 §4.3.5), so its
/// fields may freshen it: the stored response is a `200` too, and each of `ETag`, `Last-Modified` and `Content-Length` it carries
/// has the stored value. So must `Content-Encoding`, which would otherwise describe a
/// body the cache does not have. An answer with none of them is taken at its word, as
/// the RFC has it: the core says the resource is as stored.
pub fn head_describes_stored(stored: &ResponseHeader, head: &ResponseHeader) -> bool {
    // A stored 404 or 301 is not what a 200 describes, however few fields it carries.
    if stored.status != http::StatusCode::OK {
        return false;
    }
    let values = |resp: &ResponseHeader, name: &HeaderName| -> Vec<Vec<u8>> {
        resp.headers
            .get_all(name)
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect()
    };
    [header::ETAG, header::LAST_MODIFIED, header::CONTENT_LENGTH]
        .iter()
        .all(|name| {
            let theirs = values(head, name);
            theirs.is_empty() || theirs == values(stored, name)
        })
        && values(head, &header::CONTENT_ENCODING) == values(stored, &header::CONTENT_ENCODING)
}

/// The stored object `stored` with the header and lifetime of `fresh`, a response just
/// judged storable that freshens it. What makes the object the same one stays: its creation
/// and provenance time (pingora checks every other variant of a `Vary` response against
/// the provenance of the first, so a new one would orphan them all) and its variance.
pub fn refreshed(stored: &CacheMeta, fresh: &CacheMeta) -> CacheMeta {
    let mut meta = StoredMeta::from_cache_meta(stored).to_cache_meta();
    *meta.response_header_mut() = fresh.response_header_copy();
    meta.update_freshness(
        fresh.fresh_until(),
        fresh.stale_while_revalidate_sec(),
        fresh.stale_if_error_sec(),
    );
    // Age counts from when the fresh response was received, less any Age it came with.
    meta.set_epoch_override(fresh.epoch());
    // Its tags, as the fresh response names them.
    if let Some(tags) = fresh.extensions().get::<Tags>() {
        meta.extensions_mut().insert(tags.clone());
    }
    meta
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut resp = ResponseHeader::build(status, None).expect("response");
        for (name, value) in headers {
            resp.append_header(name.to_string(), *value)
                .expect("header");
        }
        resp
    }

    fn values(resp: &ResponseHeader, name: &str) -> Vec<String> {
        resp.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("").to_string())
            .collect()
    }

    #[test]
    fn the_304s_fields_replace_the_stored_ones_and_the_rest_stay() {
        let stored = response(
            200,
            &[
                ("Content-Length", "36"),
                ("Content-Type", "text/plain"),
                ("Test-Header", "a"),
                ("Content-Foo", "a"),
                ("Link", "</a>"),
                ("Link", "</b>"),
                ("Vary", "Accept"),
                ("Cache-Control", "max-age=1"),
                ("Content-Encoding", "gzip"),
                ("Age", "7200"),
            ],
        );
        let not_modified = response(
            304,
            &[
                ("Content-Length", "10"),
                ("Test-Header", "b"),
                ("Content-Foo", "b"),
                ("Link", "</c>"),
                ("Vary", "Cookie"),
                ("Cache-Control", "max-age=3600"),
                ("Connection", "close, x-hop"),
                ("X-Hop", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Authenticate", "Basic"),
                ("Content-Encoding", "br"),
            ],
        );
        let fresh = freshen(&stored, &not_modified);
        assert_eq!(fresh.status.as_u16(), 200);
        assert_eq!(values(&fresh, "test-header"), ["b"]);
        assert_eq!(values(&fresh, "content-foo"), ["b"]);
        assert_eq!(values(&fresh, "link"), ["</c>"]);
        assert_eq!(values(&fresh, "cache-control"), ["max-age=3600"]);
        assert_eq!(values(&fresh, "content-type"), ["text/plain"]);
        assert_eq!(values(&fresh, "content-length"), ["36"]);
        assert_eq!(values(&fresh, "vary"), ["Accept"]);
        assert_eq!(values(&fresh, "content-encoding"), ["gzip"]);
        // Validated just now: the stored Age is gone, as the 304 brought none.
        assert!(values(&fresh, "age").is_empty());
        for gone in ["connection", "x-hop", "keep-alive", "proxy-authenticate"] {
            assert!(values(&fresh, gone).is_empty(), "{gone}");
        }
    }

    #[test]
    fn a_weakened_etag_stays_weak_and_a_new_etag_replaces_it() {
        let stored = response(200, &[("ETag", "W/\"v1\""), ("Content-Encoding", "br")]);
        let kept = |stored: &ResponseHeader, etag: &str| {
            let mut not_modified = response(304, &[("ETag", etag)]);
            keep_weakened_etag(stored, &mut not_modified);
            values(&freshen(stored, &not_modified), "etag")
        };
        assert_eq!(kept(&stored, "\"v1\""), ["W/\"v1\""]);
        assert_eq!(kept(&stored, "\"v2\""), ["\"v2\""]);
        let plain = response(200, &[("ETag", "\"v1\"")]);
        assert_eq!(kept(&plain, "\"v1\""), ["\"v1\""]);
    }

    #[test]
    fn a_head_answer_describes_the_stored_response_only_by_matching_fields_it_carries() {
        let stored = response(
            200,
            &[
                ("Content-Length", "36"),
                ("ETag", "\"v1\""),
                ("Last-Modified", "Thu, 01 Jan 2026 00:00:00 GMT"),
            ],
        );
        let same_length = response(200, &[("Content-Length", "36"), ("Test-Header", "2")]);
        assert!(head_describes_stored(&stored, &same_length));
        let all_same = response(
            200,
            &[
                ("Content-Length", "36"),
                ("ETag", "\"v1\""),
                ("Last-Modified", "Thu, 01 Jan 2026 00:00:00 GMT"),
            ],
        );
        assert!(head_describes_stored(&stored, &all_same));
        for changed in [
            ("Content-Length", "37"),
            ("ETag", "\"v2\""),
            ("ETag", "W/\"v1\""),
            ("Last-Modified", "Fri, 02 Jan 2026 00:00:00 GMT"),
            ("Content-Encoding", "gzip"),
        ] {
            let head = response(200, &[("Content-Length", "36"), changed]);
            assert!(!head_describes_stored(&stored, &head), "{changed:?}");
        }
        // A stored answer other than a 200 is never described by one.
        let stored_404 = response(404, &[("Content-Length", "36")]);
        assert!(!head_describes_stored(&stored_404, &same_length));
        // Nothing to compare: the core's word is taken.
        let bare = response(200, &[("Test-Header", "2")]);
        assert!(head_describes_stored(&stored, &bare));
        // But an encoding the stored body does not have is never taken.
        let encoded = response(200, &[("Content-Encoding", "br")]);
        assert!(!head_describes_stored(&stored, &encoded));
        let gzipped = response(200, &[("Content-Encoding", "gzip")]);
        let stored_gzip = response(200, &[("Content-Encoding", "gzip")]);
        assert!(head_describes_stored(&stored_gzip, &gzipped));
        assert!(!head_describes_stored(&stored_gzip, &bare));
    }

    #[test]
    fn a_refreshed_object_keeps_its_identity_and_takes_the_new_header_and_lifetime() {
        use std::time::{Duration, SystemTime};
        let now = SystemTime::now();
        let created = now - Duration::from_secs(100);
        let mut stored = CacheMeta::new(
            created + Duration::from_secs(10),
            created,
            0,
            0,
            response(200, &[("Content-Length", "36"), ("Test-Header", "1")]),
        );
        stored.set_variance([7u8; 16]);
        // Received now with an Age of 5: its age counts from 5 s ago.
        let received = now - Duration::from_secs(5);
        let fresh = CacheMeta::new(
            received + Duration::from_secs(3600),
            received,
            30,
            60,
            response(200, &[("Content-Length", "36"), ("Test-Header", "2")]),
        );
        let meta = refreshed(&stored, &fresh);
        assert_eq!((meta.created(), meta.provenance()), (created, created));
        assert_eq!(meta.variance(), Some([7u8; 16]));
        assert_eq!(values(meta.response_header(), "test-header"), ["2"]);
        assert_eq!(meta.fresh_until(), fresh.fresh_until());
        assert_eq!(
            (meta.stale_while_revalidate_sec(), meta.stale_if_error_sec()),
            (30, 60)
        );
        assert_eq!(meta.epoch(), received);
        assert!(meta.is_fresh(now));
        // And so it is kept by the tiers.
        let kept = StoredMeta::from_cache_meta(&meta).to_cache_meta();
        assert_eq!((kept.created(), kept.provenance()), (created, created));
        assert_eq!(kept.epoch(), received);
    }

    #[test]
    fn a_refreshed_object_takes_the_tags_of_the_fresh_response() {
        let now = std::time::SystemTime::now();
        let mut stored = CacheMeta::new(now, now, 0, 0, response(200, &[]));
        stored
            .extensions_mut()
            .insert(Tags::new(["old"]).expect("tags"));
        let mut fresh = CacheMeta::new(now, now, 0, 0, response(200, &[]));
        let tags = Tags::new(["post-1", "user-2"]).expect("tags");
        fresh.extensions_mut().insert(tags.clone());
        let kept = StoredMeta::from_cache_meta(&refreshed(&stored, &fresh));
        assert_eq!(kept.tags, tags);
    }
}
