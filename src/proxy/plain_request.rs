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

/// Reads an HTTP/2 request (its body not read here) as a plain one, if it is: a `GET`
/// whose `:scheme` is the connection's, whose `:path` is a path, with a `:authority` and
/// no `Host` field (the authority is the host, as `headers::normalize_request_target`
/// has it), and with only fields of `PLAIN_FIELDS` (HTTP/2 has no `Connection`).
pub(super) fn plain_h2_get(
    request: &pingora::http::RequestHeader,
    tls: bool,
) -> Option<PlainGet<'_>> {
    if request.method != http::Method::GET || request.version != http::Version::HTTP_2 {
        return None;
    }
    let scheme = if tls { "https" } else { "http" };
    if request.uri.scheme_str() != Some(scheme) {
        return None;
    }
    let host = request.uri.authority()?.as_str().as_bytes();
    let target = request.raw_path();
    if host.is_empty() || !target.starts_with(b"/") || request.headers.len() > MAX_FIELDS {
        return None;
    }
    let mut plain = PlainGet {
        host,
        target,
        accept_encoding: None,
        user_agent: b"",
        referer: b"",
    };
    for (name, value) in &request.headers {
        match name.as_str() {
            "accept-encoding" if plain.accept_encoding.is_none() => {
                plain.accept_encoding = Some(value.as_bytes());
            }
            "user-agent" => plain.user_agent = value.as_bytes(),
            "referer" => plain.referer = value.as_bytes(),
            "accept-encoding" | "host" | "connection" => return None,
            name if PLAIN_FIELDS.contains(&name) => {}
            _ => return None,
        }
    }
    Some(plain)
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

    /// An HTTP/2 request as pingora hands it over: `uri` carries `:scheme`, `:authority`
    /// and `:path`.
    fn h2_request(
        method: &str,
        uri: &str,
        fields: &[(&str, &str)],
    ) -> pingora::http::RequestHeader {
        let mut builder = http::Request::builder()
            .method(method)
            .uri(uri)
            .version(http::Version::HTTP_2);
        for (name, value) in fields {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request").into_parts().0.into()
    }

    fn plain_h2(
        method: &str,
        uri: &str,
        fields: &[(&str, &str)],
        tls: bool,
    ) -> Option<(String, String, Option<String>)> {
        let request = h2_request(method, uri, fields);
        plain_h2_get(&request, tls).map(|p| {
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            (text(p.host), text(p.target), p.accept_encoding.map(text))
        })
    }

    #[test]
    fn a_plain_http2_get_is_read_from_its_pseudo_fields() {
        let fields = [
            ("accept-encoding", "gzip"),
            ("user-agent", "x"),
            ("accept", "*/*"),
        ];
        assert_eq!(
            plain_h2("GET", "https://h.example/a?b", &fields, true),
            Some(("h.example".into(), "/a?b".into(), Some("gzip".into())))
        );
        assert!(plain_h2("GET", "http://h.example/", &[], false).is_some());
    }

    /// Method, URI, fields, and whether the connection is TLS.
    type H2Case = (
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
        bool,
    );

    #[test]
    fn any_other_http2_request_is_not_plain() {
        let cases: [H2Case; 9] = [
            ("HEAD", "https://h/", &[], true),
            ("POST", "https://h/", &[], true),
            // The scheme must be the connection's.
            ("GET", "http://h/", &[], true),
            ("GET", "https://h/", &[], false),
            // The authority is the host: a `Host` field beside it is not plain.
            ("GET", "https://h/", &[("host", "i")], true),
            ("GET", "https://h/", &[("cookie", "a=b")], true),
            ("GET", "https://h/", &[("range", "bytes=0-1")], true),
            ("GET", "https://h/", &[("te", "trailers")], true),
            (
                "GET",
                "https://h/",
                &[("accept-encoding", "gzip"), ("accept-encoding", "br")],
                true,
            ),
        ];
        for (method, uri, fields, tls) in cases {
            assert_eq!(
                plain_h2(method, uri, fields, tls),
                None,
                "{method} {uri} {fields:?} tls={tls}"
            );
        }
        // An HTTP/1.1 request is read from its raw head, never here.
        let mut h1 = h2_request("GET", "https://h/", &[]);
        h1.set_version(http::Version::HTTP_11);
        assert!(plain_h2_get(&h1, true).is_none());
    }
}
