//! Requests refused before they reach the core: over-long targets, oversized header blocks
//! and ambiguous message framing.
//!
//! Pingora's HTTP/1 parser already refuses garbage request lines and header blocks above
//! 1 MiB with a 400. It resolves a `Content-Length` next to `Transfer-Encoding` by dropping
//! the length, which is legal, but a request carrying both is almost always a smuggling
//! attempt against some other hop; we refuse it outright, as the raw header still shows both.

use pingora::http::RequestHeader;

/// Why a request is refused, with the status it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    UriTooLong,
    HeadersTooLarge,
    ConflictingFraming,
    /// `*` as the target of anything but `OPTIONS` (RFC 9112 §3.2.4).
    AsteriskTarget,
    /// A target in no form a request may have: not `/…`, not absolute, not `*`.
    BadTarget,
}

impl Rejection {
    pub fn status(self) -> u16 {
        match self {
            Rejection::UriTooLong => 414,
            Rejection::HeadersTooLarge => 431,
            Rejection::ConflictingFraming | Rejection::AsteriskTarget | Rejection::BadTarget => 400,
        }
    }

    /// The metric label and log reason.
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::UriTooLong => "uri_too_long",
            Rejection::HeadersTooLarge => "headers_too_large",
            Rejection::ConflictingFraming => "conflicting_framing",
            Rejection::AsteriskTarget => "asterisk_target",
            Rejection::BadTarget => "bad_target",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Rejection::UriTooLong => "request target too long\n",
            Rejection::HeadersTooLarge => "request header fields too large\n",
            Rejection::ConflictingFraming => {
                "bad request: both Content-Length and Transfer-Encoding\n"
            }
            Rejection::AsteriskTarget => "bad request: * is a target for OPTIONS only\n",
            Rejection::BadTarget => "bad request: invalid request target\n",
        }
    }
}

/// Checks a parsed request against the configured limits. `raw_header` is the HTTP/1 header
/// block as received (None for HTTP/2, whose framing cannot conflict).
pub fn check_request(
    req: &RequestHeader,
    raw_header: Option<&[u8]>,
    max_uri_length: usize,
    max_header_size: usize,
) -> Option<Rejection> {
    if req.raw_path().len() > max_uri_length {
        return Some(Rejection::UriTooLong);
    }
    let target = req.raw_path();
    if target == b"*" {
        if req.method != http::Method::OPTIONS {
            return Some(Rejection::AsteriskTarget);
        }
    } else if !target.starts_with(b"/")
        && !is_absolute_form(target)
        && req.method != http::Method::CONNECT
    {
        // `GET zz` or `GET *.evil/x`: the core would refuse it, and the cache would key
        // it beside every other such target.
        return Some(Rejection::BadTarget);
    }
    let header_size = match raw_header {
        Some(raw) => raw.len().saturating_sub(first_line_len(raw)),
        None => hpack_size(&req.headers),
    };
    if header_size > max_header_size {
        return Some(Rejection::HeadersTooLarge);
    }
    if let Some(raw) = raw_header {
        if has_both_length_and_chunking(raw) {
            return Some(Rejection::ConflictingFraming);
        }
    }
    None
}

/// The size of HTTP/2 fields as HPACK counts it: name + value + 32 per field.
pub(super) fn hpack_size(fields: &http::HeaderMap) -> usize {
    fields
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum()
}

/// `http://…` or `https://…`, in any case (RFC 9112 §3.2.2).
fn is_absolute_form(target: &[u8]) -> bool {
    let starts = |prefix: &[u8]| {
        target
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    };
    starts(b"http://") || starts(b"https://")
}

fn first_line_len(raw: &[u8]) -> usize {
    raw.iter()
        .position(|&b| b == b'\n')
        .map_or(raw.len(), |i| i + 1)
}

fn has_both_length_and_chunking(raw: &[u8]) -> bool {
    let mut length = false;
    let mut encoding = false;
    for line in raw.split(|&b| b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        length |= name.eq_ignore_ascii_case(b"content-length");
        encoding |= name.eq_ignore_ascii_case(b"transfer-encoding");
    }
    length && encoding
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str) -> RequestHeader {
        RequestHeader::build("GET", path.as_bytes(), None).expect("request")
    }

    #[test]
    fn long_targets_and_big_headers_are_refused() {
        let req = request(&format!("/{}", "a".repeat(300)));
        assert_eq!(
            check_request(&req, None, 256, 4096),
            Some(Rejection::UriTooLong)
        );
        let raw = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "b".repeat(5000));
        assert_eq!(
            check_request(&request("/"), Some(raw.as_bytes()), 256, 4096),
            Some(Rejection::HeadersTooLarge)
        );
        assert_eq!(
            check_request(
                &request("/"),
                Some(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
                256,
                4096
            ),
            None
        );
    }

    #[test]
    fn length_next_to_chunking_is_refused() {
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ntransfer-encoding : chunked\r\n\r\n";
        assert_eq!(
            check_request(&request("/"), Some(raw), 8192, 32768),
            Some(Rejection::ConflictingFraming)
        );
    }
}
