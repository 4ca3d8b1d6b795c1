//! The cache key: scheme, host, path and normalized query, and nothing else a client sends.
//!
//! Anything that changes the stored response must be in the key, and anything in the key
//! must be what the core sees, or one client's request can plant a response that others
//! are then served (cache poisoning). So the host is the one the request is forwarded
//! with (absolute-form requests are rewritten to it first, see `proxy::headers`), and no
//! other request header is keyed except those the response itself names in `Vary`.

use pingora::cache::key::HashBinary;
use pingora::cache::{CacheMeta, VarianceBuilder};
use pingora::http::RequestHeader;

/// The host a request is for, lower-cased, without a trailing dot or the scheme's default
/// port. `None` when the request names no usable host.
pub fn request_host(req: &RequestHeader, tls: bool) -> Option<String> {
    let raw = match req.uri.authority() {
        Some(authority) => authority.as_str(),
        None => req.headers.get(http::header::HOST)?.to_str().ok()?,
    };
    crate::wire::normalize_host(raw, tls)
}

/// The primary key string: `scheme://host/path?query` with the query's parameters put in
/// order by their decoded names (stably: the order of repeated names is kept, it can
/// matter) and empty ones dropped. Where sorting could change what the core reads, the
/// order is kept as sent: see `reordering_is_safe`. The parameters themselves stay as
/// sent, so the key names exactly what the core is asked for.
pub fn primary_key(tls: bool, host: &str, req: &RequestHeader) -> String {
    let scheme = if tls { "https" } else { "http" };
    let path = req.uri.path();
    let mut key = String::with_capacity(scheme.len() + 3 + host.len() + path.len() + 32);
    key.push_str(scheme);
    key.push_str("://");
    key.push_str(host);
    key.push_str(path);
    if let Some(query) = req.uri.query() {
        let mut params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
        if reordering_is_safe(&params) {
            params.sort_by_cached_key(|p| decoded_name(p));
        }
        if !params.is_empty() {
            key.push('?');
            key.push_str(&params.join("&"));
        }
    }
    key
}

/// The primary key string of a request for `path` with no query: what [`primary_key`] gives
/// for `scheme://host/path`.
pub fn path_key(tls: bool, host: &str, path: &str) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{host}{path}")
}

/// Whether putting `params` in order by decoded name leaves what Rack reads unchanged. Not
/// when a name is nested (`a[][x]`, also spelled `a%5B%5D%5Bx%5D`): Rack builds arrays of
/// hashes from the order of different names. Not when two spellings decode to one name
/// (`a` and `%61`): the last one wins. Not when a parameter holds `;`, which older Racks
/// also split on, so the name seen here is not the only one.
fn reordering_is_safe(params: &[&str]) -> bool {
    // Decoded name → its first spelling; a map, so a query of thousands of parameters
    // costs linear time, not quadratic.
    let mut spellings: std::collections::HashMap<std::borrow::Cow<'_, str>, &str> =
        std::collections::HashMap::with_capacity(params.len());
    for param in params {
        if param.contains(';') {
            return false;
        }
        let raw = param_name(param);
        let name = decoded_name(param);
        // Rack builds nested values from `[`, and reads `a]` as `a`.
        if name.contains(['[', ']']) {
            return false;
        }
        match spellings.get(&name) {
            Some(spelled) if *spelled != raw => return false,
            Some(_) => {}
            None => {
                spellings.insert(name, raw);
            }
        }
    }
    true
}

/// A parameter's name as the core decodes it (`%XX` escapes, `+` for a space). Bytes that
/// are not UTF-8 all decode to U+FFFD, so such names count as spellings of one another.
fn decoded_name(param: &str) -> std::borrow::Cow<'_, str> {
    form_urlencoded::parse(param_name(param).as_bytes())
        .next()
        .map_or(std::borrow::Cow::Borrowed(""), |(name, _)| name)
}

fn param_name(param: &str) -> &str {
    param.split_once('=').map_or(param, |(name, _)| name)
}

/// The variant of a stored response this request wants: the values of the request headers
/// the response's `Vary` names. `None` when the response does not vary. `coding`, when
/// the PoP decides the content coding, stands for `Accept-Encoding`: the coding chosen for
/// the request, so requests that get the same coding share a variant however they spelled
/// the header.
pub fn variance(meta: &CacheMeta, req: &RequestHeader, coding: Option<&str>) -> Option<HashBinary> {
    let mut names: Vec<String> = Vec::new();
    for value in meta.headers().get_all(http::header::VARY) {
        let Ok(value) = value.to_str() else { continue };
        for name in value.split(',') {
            let name = name.trim().to_ascii_lowercase();
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    if names.is_empty() {
        return None;
    }
    let mut variance = VarianceBuilder::new();
    for name in names {
        let value = match coding {
            Some(coding) if name == "accept-encoding" => coding.as_bytes().to_vec(),
            _ => {
                let lines = req.headers.get_all(name.as_str());
                selecting_value(&name, lines.iter().map(|v| v.as_bytes()))
            }
        };
        variance.add_owned_name_value(name, value);
    }
    variance.finalize()
}

/// Request fields defined as lists whose members may carry optional whitespace around
/// them and the commas (RFC 9110 §12.5): only these are normalised.
const LIST_FIELDS: [&str; 4] = [
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
];

/// A selecting header's value in the one form that variants are told apart by. Its lines
/// are joined with `, `, as the core's Rack joins them. In the `Accept` family, the optional
/// whitespace around members is dropped (RFC 9110 §5.6.1), and in `Accept-Language` tags
/// compare without case (RFC 4647 §2); the order of members stays, since the core may
/// prefer the first of equal weights. Any other field is kept byte for byte: the core may
/// read `User-Agent` or a custom header whitespace and all.
fn selecting_value<'a>(name: &str, lines: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut value = Vec::new();
    if !LIST_FIELDS.contains(&name) {
        for (i, line) in lines.enumerate() {
            if i > 0 {
                value.extend_from_slice(b", ");
            }
            value.extend_from_slice(line);
        }
        return value;
    }
    let case_blind = name == "accept-language";
    for member in lines.flat_map(|line| line.split(|b| *b == b',')) {
        let member = member.trim_ascii();
        if member.is_empty() {
            continue;
        }
        if !value.is_empty() {
            value.push(b',');
        }
        if case_blind {
            // `en-US ; q=0.8` and `en-us;q=0.8` are one range.
            value.extend(
                member
                    .iter()
                    .filter(|b| !b.is_ascii_whitespace())
                    .map(u8::to_ascii_lowercase),
            );
        } else {
            value.extend_from_slice(member);
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, host: Option<&str>) -> RequestHeader {
        let mut req = RequestHeader::build("GET", uri.as_bytes(), None).expect("request");
        if let Some(host) = host {
            req.insert_header("Host", host).expect("host");
        }
        req
    }

    #[test]
    fn hosts_are_normalized() {
        let r = req("/", Some("Example.Social:443"));
        assert_eq!(request_host(&r, true).as_deref(), Some("example.social"));
        assert_eq!(
            request_host(&r, false).as_deref(),
            Some("example.social:443")
        );
        let r = req("/", Some("example.social.:80"));
        assert_eq!(request_host(&r, false).as_deref(), Some("example.social"));
        let r = req("/", Some("[::1]:8443"));
        assert_eq!(request_host(&r, true).as_deref(), Some("[::1]:8443"));
        assert_eq!(request_host(&req("/", None), true), None);
        assert_eq!(request_host(&req("/", Some("a@b")), true), None);
        // An HTTP/2 :authority wins over Host.
        let mut r = req("/x", Some("attacker.example"));
        r.set_uri(http::Uri::from_static("https://victim.example/x"));
        assert_eq!(request_host(&r, true).as_deref(), Some("victim.example"));
    }

    #[test]
    fn query_order_does_not_split_the_cache() {
        let a = primary_key(true, "h", &req("/p?b=2&a=1&&a=0", None));
        let b = primary_key(true, "h", &req("/p?a=1&a=0&b=2", None));
        assert_eq!(a, b);
        assert_eq!(a, "https://h/p?a=1&a=0&b=2");
        // Repeated names keep their order: a[]=1&a[]=2 is not a[]=2&a[]=1.
        let c = primary_key(true, "h", &req("/p?a=0&a=1&b=2", None));
        assert_ne!(a, c);
        assert_eq!(primary_key(true, "h", &req("/p?", None)), "https://h/p");
        let nested = "/p?a[][x]=1&a[][y]=2&a[][x]=3";
        assert_eq!(
            primary_key(true, "h", &req(nested, None)),
            format!("https://h{nested}")
        );
        assert_ne!(
            primary_key(true, "h", &req("/p", None)),
            primary_key(false, "h", &req("/p", None))
        );
    }

    #[test]
    fn query_order_follows_decoded_names_and_is_kept_where_it_matters() {
        let key = |uri: &str| primary_key(true, "h", &req(uri, None));
        // Sorted by what the names decode to: `%62` is `b`.
        assert_eq!(key("/p?%62=1&a=2"), "https://h/p?a=2&%62=1");
        assert_eq!(key("/p?a=2&%62=1"), "https://h/p?a=2&%62=1");
        // Two spellings of one name: Rails keeps the last, so the order is the object.
        assert_ne!(key("/p?a=1&%61=2"), key("/p?%61=2&a=1"));
        assert_eq!(key("/p?a=1&%61=2"), "https://h/p?a=1&%61=2");
        // Nested names, bracket encoded or not, keep their order.
        let encoded = "/p?x%5B%5D%5By%5D=1&x%5B%5D%5Bz%5D=2&x%5B%5D%5By%5D=3";
        assert_eq!(key(encoded), format!("https://h{encoded}"));
        // `;` separates parameters for older Racks: nothing is moved across it.
        assert_eq!(key("/p?b=1;a=2&a=3"), "https://h/p?b=1;a=2&a=3");
        // `a]` is `a` to Rack: no reordering around it.
        assert_eq!(key("/p?a=2&a]=1"), "https://h/p?a=2&a]=1");
        assert_ne!(key("/p?a=2&a]=1"), key("/p?a]=1&a=2"));
        // Names that are not UTF-8 once decoded are taken as one name.
        assert_eq!(key("/p?%FF=1&%FE=2"), "https://h/p?%FF=1&%FE=2");
    }

    #[test]
    fn with_the_coding_decided_accept_encoding_selects_by_the_coding_alone() {
        let mut header = pingora::http::ResponseHeader::build(200, None).expect("status");
        header
            .append_header("Vary", "Accept-Encoding")
            .expect("vary");
        let meta = CacheMeta::new(
            std::time::SystemTime::now(),
            std::time::SystemTime::now(),
            0,
            0,
            header,
        );
        let with = |value: &str| {
            let mut r = req("/api/v1/timelines/public", None);
            r.insert_header("Accept-Encoding", value)
                .expect("accept-encoding");
            r
        };
        let (a, b) = (with("gzip, deflate, br"), with("br;q=1, gzip;q=0.8"));
        assert_ne!(variance(&meta, &a, None), variance(&meta, &b, None));
        assert_eq!(
            variance(&meta, &a, Some("br")),
            variance(&meta, &b, Some("br"))
        );
        assert_ne!(
            variance(&meta, &a, Some("br")),
            variance(&meta, &a, Some("gzip"))
        );
    }

    #[test]
    fn variance_follows_the_vary_header() {
        let mut header = pingora::http::ResponseHeader::build(200, None).expect("status");
        header
            .append_header("Vary", "Accept, Cookie")
            .expect("vary");
        let meta = CacheMeta::new(
            std::time::SystemTime::now(),
            std::time::SystemTime::now(),
            0,
            0,
            header,
        );
        let mut html = req("/@alice", None);
        html.insert_header("Accept", "text/html").expect("accept");
        let mut json = req("/@alice", None);
        json.insert_header("Accept", "application/activity+json")
            .expect("accept");
        let mut other_header = req("/@alice", None);
        other_header
            .insert_header("Accept", "text/html")
            .expect("accept");
        other_header
            .insert_header("X-Forwarded-Host", "evil")
            .expect("xfh");
        assert_ne!(variance(&meta, &html, None), variance(&meta, &json, None));
        assert_eq!(
            variance(&meta, &html, None),
            variance(&meta, &other_header, None)
        );
        let plain = CacheMeta::new(
            std::time::SystemTime::now(),
            std::time::SystemTime::now(),
            0,
            0,
            pingora::http::ResponseHeader::build(200, None).expect("status"),
        );
        assert_eq!(variance(&plain, &html, None), None);
    }

    #[test]
    fn selecting_values_differ_only_where_the_core_can_tell() {
        let form = |name: &str, lines: &[&str]| {
            String::from_utf8(selecting_value(name, lines.iter().map(|l| l.as_bytes())))
                .expect("utf-8")
        };
        let encoding = |lines: &[&str]| form("accept-encoding", lines);
        assert_eq!(encoding(&["gzip,br"]), encoding(&[" gzip, br "]));
        assert_eq!(encoding(&["gzip, br"]), encoding(&["gzip", "br"]));
        // Other fields only as the core's Rack joins lines.
        assert_eq!(form("foo", &["1, 2"]), form("foo", &["1", "2"]));
        assert_ne!(form("foo", &["1,2"]), form("foo", &[" 1, 2 "]));
        assert_ne!(
            form("user-agent", &["X (KHTML, like Gecko)"]),
            form("user-agent", &["X (KHTML,like Gecko)"])
        );
        assert_ne!(form("foo", &["a"]), form("foo", &["A"]));
        let lang = |lines: &[&str]| form("accept-language", lines);
        assert_eq!(lang(&["en, de"]), lang(&["eN, De"]));
        assert_eq!(lang(&["en, de"]), lang(&[" en ,   de"]));
        assert_eq!(lang(&["en-US;q=0.8"]), lang(&["en-us ; q=0.8"]));
        // Order is a preference the core may act on.
        assert_ne!(lang(&["en, de"]), lang(&["de, en"]));
        assert_eq!(lang(&[]), "");
    }
}
