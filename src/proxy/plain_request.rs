//! Which requests the connection loop may answer from a recorded head: a plain `GET`, read
//! from its raw bytes the same way when recording and when answering (`fast_hits`).

/// Request fields that no decision of the PoP reads, besides `Host` and
/// `Accept-Encoding`, which key the lookup. `Connection` is allowed with `keep-alive` only.
pub(super) const PLAIN_FIELDS: [&str; 11] = [
    "host",
    "accept-encoding",
    "connection",
    "user-agent",
    "accept",
    "accept-language",
    "referer",
    "sec-fetch-dest",
    "sec-fetch-mode",
    "sec-fetch-site",
    "dnt",
];

/// The most fields a plain request head may have.
const MAX_FIELDS: usize = 24;

/// A plain request, as its raw head spells it.
pub(super) struct PlainGet<'h> {
    pub(super) host: &'h [u8],
    pub(super) target: &'h [u8],
    pub(super) accept_encoding: Option<&'h [u8]>,
    pub(super) user_agent: &'h [u8],
    pub(super) referer: &'h [u8],
}

/// Reads `head` (one whole request head, nothing after it) as a plain request, if it is one.
pub(super) fn plain_get(head: &[u8]) -> Option<PlainGet<'_>> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut request = httparse::Request::new(&mut fields);
    match request.parse(head) {
        Ok(httparse::Status::Complete(length)) if length == head.len() => {}
        _ => return None,
    }
    if request.method != Some("GET") || request.version != Some(1) {
        return None;
    }
    let target = request.path?.as_bytes();
    if !target.starts_with(b"/") {
        return None;
    }
    let mut plain = PlainGet {
        host: b"",
        target,
        accept_encoding: None,
        user_agent: b"",
        referer: b"",
    };
    let mut hosts = 0;
    for field in request.headers.iter() {
        let name = field.name;
        if !PLAIN_FIELDS
            .iter()
            .any(|plain| name.eq_ignore_ascii_case(plain))
        {
            return None;
        }
        let value = field.value;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            plain.host = value;
        } else if name.eq_ignore_ascii_case("accept-encoding") {
            if plain.accept_encoding.is_some() {
                return None;
            }
            plain.accept_encoding = Some(value);
        } else if name.eq_ignore_ascii_case("connection") {
            if !value.eq_ignore_ascii_case(b"keep-alive") {
                return None;
            }
        } else if name.eq_ignore_ascii_case("user-agent") {
            plain.user_agent = value;
        } else if name.eq_ignore_ascii_case("referer") {
            plain.referer = value;
        }
    }
    (hosts == 1 && !plain.host.is_empty()).then_some(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(head: &str) -> Option<(String, String, Option<String>)> {
        plain_get(head.as_bytes()).map(|p| {
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            (text(p.host), text(p.target), p.accept_encoding.map(text))
        })
    }

    #[test]
    fn a_plain_get_is_read_from_its_raw_head() {
        let got = plain(
            "GET /a?b HTTP/1.1\r\nHost: h.example\r\nUser-Agent: x\r\nAccept-Encoding: gzip\r\n\
             Connection: Keep-Alive\r\nsec-fetch-mode: no-cors\r\n\r\n",
        );
        assert_eq!(
            got,
            Some(("h.example".into(), "/a?b".into(), Some("gzip".into())))
        );
        // Bare line feeds end lines as they do for pingora.
        assert!(plain("GET / HTTP/1.1\nHost: h\n\n").is_some());
    }

    #[test]
    fn anything_else_is_not_plain() {
        for head in [
            "HEAD / HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: h\r\n\r\n",
            "GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET * HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nHost: i\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: \r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nRange: bytes=0-1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nIf-None-Match: \"a\"\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nCookie: a=b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nCache-Control: no-cache\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, x-a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip\r\nAccept-Encoding: br\r\n\r\n",
            // More than one request, or less than one.
            "GET / HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\n",
            // A folded line.
            "GET / HTTP/1.1\r\nHost: h\r\nUser-Agent: a\r\n b\r\n\r\n",
        ] {
            assert_eq!(plain(head), None, "{head:?}");
        }
    }
}
