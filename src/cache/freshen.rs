//! Freshening a stored response with a `304 Not Modified` (RFC 9111 §3.2, §4.3.4): the
//! stored header fields are replaced by those the 304 carries, so a validation brings new
//! metadata (a new `Cache-Control`, `Expires`, `Date`, or any header the core changed)
//! without sending the body again.

use http::header::{self, HeaderName};
use pingora::http::ResponseHeader;

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
}
