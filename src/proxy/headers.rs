//! Request and response header rules at the edge: who the client is, and what may cross.
//!
//! The core (Mastodon's Rails app) believes `X-Forwarded-For`, `X-Real-IP` and
//! `X-Forwarded-Proto` from us, so we never pass on what a client wrote there unless the
//! client is itself a configured trusted proxy. Hop-by-hop headers (RFC 9110 §7.6.1) describe
//! one connection and are dropped at each hop, except the `Upgrade` handshake of a websocket.

use std::net::IpAddr;

use http::header::{self, HeaderName};
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::model::{canonical_ip, TrustedProxies};

// Spelled as `&str` for inserting (kept as written, without a copy) and as names for
// lookups (no parse per request).
const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_REAL_IP: &str = "x-real-ip";
static X_FORWARDED_FOR_NAME: HeaderName = HeaderName::from_static(X_FORWARDED_FOR);
static X_FORWARDED_PROTO_NAME: HeaderName = HeaderName::from_static(X_FORWARDED_PROTO);
static X_REAL_IP_NAME: HeaderName = HeaderName::from_static(X_REAL_IP);

/// Headers only meaningful between a client and the proxy it talks to.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
];

/// Headers a client could use to make the core believe another host, scheme or address
/// (Rack reads `X-Forwarded-Ssl` and `X-Forwarded-Scheme` before `X-Forwarded-Proto`;
/// Rails reads `Client-IP`); only a trusted proxy in front of us may set them.
static UNTRUSTED_FORWARDING: [HeaderName; 18] = [
    header::FORWARDED,
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-host"),
    HeaderName::from_static("x-original-host"),
    // Rewrites honoured by some frameworks: a known cache-poisoning vector.
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("front-end-https"),
    HeaderName::from_static("x-url-scheme"),
    HeaderName::from_static("client-ip"),
    HeaderName::from_static("true-client-ip"),
];

/// Narrows what a shield's client (another PoP) forwards to what a PoP itself sets: the
/// client that PoP settled on (its `X-Real-IP`) as the only `X-Forwarded-For` entry, and
/// `X-Forwarded-Proto`. Whatever else could make the core believe another host, scheme or
/// address is dropped, as from any client that is not a trusted proxy, so what a PoP let
/// through from a proxy it trusts cannot reach the shield's cache, and no entry a client
/// wrote itself can pass for its address.
pub fn narrow_to_the_pops_client(req: &mut RequestHeader) {
    for name in present(&req.headers, &UNTRUSTED_FORWARDING) {
        let _ = req.remove_header(&name);
    }
    let client = req
        .headers
        .get(&X_REAL_IP_NAME)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<IpAddr>().ok());
    let _ = req.remove_header(&X_REAL_IP_NAME);
    let _ = req.remove_header(&X_FORWARDED_FOR_NAME);
    if let Some(client) = client {
        let _ = req.insert_header(X_FORWARDED_FOR, canonical_ip(client).to_string());
    }
}

/// The names of `set` that `headers` holds. Usually there are none, and one pass over the
/// message's few fields is cheaper than looking up every name of the set on every request.
fn present<T>(headers: &http::HeaderMap<T>, set: &[HeaderName]) -> Vec<HeaderName> {
    headers
        .keys()
        .filter(|name| set.contains(name))
        .cloned()
        .collect()
}

/// The client's address as the core should see it.
///
/// With an untrusted peer that is the peer itself. With a trusted peer (a load balancer in
/// front of this PoP), walk `X-Forwarded-For` from the right, skipping trusted hops, and take
/// the first address that is not one of ours, as nginx's `real_ip_recursive` does.
pub fn client_ip(peer: IpAddr, forwarded_for: &[&str], trusted: &TrustedProxies) -> IpAddr {
    let peer = canonical_ip(peer);
    if !trusted.contains(&peer) {
        return peer;
    }
    let hops = forwarded_for
        .iter()
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            // A malformed entry ends the trusted chain: what lies left of it cannot be checked.
            break;
        };
        client = canonical_ip(ip);
        if !trusted.contains(&client) {
            break;
        }
    }
    client
}

/// Sets the forwarding headers on the request sent to the core.
pub fn set_forwarding(
    req: &mut RequestHeader,
    peer: Option<IpAddr>,
    tls: bool,
    trusted: &TrustedProxies,
) -> Option<IpAddr> {
    let peer_trusted = peer.is_some_and(|p| trusted.contains(&p));
    let existing_xff: Vec<String> = req
        .headers
        .get_all(&X_FORWARDED_FOR_NAME)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    let client = peer.map(|peer| {
        let refs: Vec<&str> = existing_xff.iter().map(String::as_str).collect();
        client_ip(peer, &refs, trusted)
    });

    let _ = req.remove_header(&X_FORWARDED_FOR_NAME);
    let _ = req.remove_header(&X_REAL_IP_NAME);
    if let Some(peer) = peer.map(canonical_ip) {
        let chain = if peer_trusted && !existing_xff.is_empty() {
            format!("{}, {peer}", existing_xff.join(", "))
        } else {
            peer.to_string()
        };
        let _ = req.insert_header(X_FORWARDED_FOR, chain);
    }
    if let Some(client) = client {
        let _ = req.insert_header(X_REAL_IP, client.to_string());
    }

    let keep_proto = peer_trusted && req.headers.contains_key(&X_FORWARDED_PROTO_NAME);
    if !keep_proto {
        let _ = req.insert_header(X_FORWARDED_PROTO, if tls { "https" } else { "http" });
    }
    if !peer_trusted {
        for name in present(&req.headers, &UNTRUSTED_FORWARDING) {
            let _ = req.remove_header(&name);
        }
    }
    client
}

/// Whether the core will take this request as https: the listener's own scheme, or for a
/// trusted proxy in front of us, the `X-Forwarded-Proto` it sends (which reaches the core).
/// `None` when a trusted proxy forwards something the cache key cannot follow: another
/// host (`X-Forwarded-Host`, `Forwarded`) or a scheme that is neither http nor https.
pub fn effective_scheme_is_tls(
    req: &RequestHeader,
    peer: Option<IpAddr>,
    listener_tls: bool,
    trusted: &TrustedProxies,
) -> Option<bool> {
    let trusted_peer = peer.is_some_and(|ip| trusted.contains(&ip));
    if !trusted_peer {
        return Some(listener_tls);
    }
    if req.headers.contains_key("x-forwarded-host") || req.headers.contains_key("forwarded") {
        return None;
    }
    let Some(proto) = req
        .headers
        .get_all(&X_FORWARDED_PROTO_NAME)
        .iter()
        .next_back()
    else {
        return Some(listener_tls);
    };
    let proto = proto.to_str().ok()?;
    let last = proto.rsplit(',').next().unwrap_or("").trim();
    match last.to_ascii_lowercase().as_str() {
        "https" => Some(true),
        "http" => Some(false),
        _ => None,
    }
}

/// Rewrites an absolute-form target (`GET http://host/path HTTP/1.1`) to origin-form with
/// its authority as `Host`, and makes `Host` agree with an HTTP/2 `:authority`. RFC 9112
/// §3.2.2 says the target's authority wins; doing it here means the core, the cache key and
/// the access log all see the same host. `Err` for a target that names no usable host.
#[allow(clippy::result_unit_err)]
pub fn normalize_request_target(req: &mut RequestHeader) -> Result<(), ()> {
    let raw = req.raw_path();
    let absolute = raw.len() > 8
        && (raw[..7].eq_ignore_ascii_case(b"http://")
            || raw[..8].eq_ignore_ascii_case(b"https://"));
    if !absolute {
        if let Some(authority) = req.uri.authority() {
            let authority = authority.as_str().to_string();
            req.insert_header(header::HOST, authority).map_err(|_| ())?;
        }
        return Ok(());
    }
    let uri: http::Uri = std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(())?;
    let authority = uri.authority().ok_or(())?.as_str().to_string();
    if authority.is_empty() || authority.contains('@') {
        return Err(());
    }
    let target = uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string());
    req.set_raw_path(target.as_bytes()).map_err(|_| ())?;
    req.insert_header(header::HOST, authority).map_err(|_| ())?;
    Ok(())
}

/// A websocket handshake: HTTP/1.1, `Connection: upgrade` and `Upgrade: websocket`. Any other
/// `Upgrade` (h2c in particular, a known way to tunnel past a proxy) is dropped, never passed.
pub fn is_websocket_upgrade(req: &RequestHeader) -> bool {
    req.version == http::Version::HTTP_11
        && connection_tokens(&req.headers)
            .iter()
            .any(|t| t == "upgrade")
        && req
            .headers
            .get_all(header::UPGRADE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
}

/// Names listed in `Connection` are hop-by-hop too (RFC 9110 §7.6.1).
fn connection_tokens(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Drops the headers the client's `Connection` field nominates (RFC 9110 §7.6.1), keeping
/// `Connection` itself and the framing headers the connection still needs. Done as the
/// request arrives, so the cache (its bypass rules, the variant a `Vary` selects) judges
/// the request the core will be sent, not headers the core never sees.
pub fn drop_connection_nominated(req: &mut RequestHeader) {
    for token in connection_tokens(&req.headers) {
        let Ok(name) = HeaderName::from_bytes(token.as_bytes()) else {
            continue;
        };
        if name != header::CONNECTION && !is_end_to_end_essential(&name) {
            let _ = req.remove_header(&name);
        }
    }
}

/// Drops hop-by-hop headers from a request bound for the core. An upgrade (websocket)
/// request keeps `Connection: upgrade` and `Upgrade`, which the core needs to switch.
pub fn strip_request_hop_by_hop(req: &mut RequestHeader, is_upgrade: bool) {
    drop_connection_nominated(req);
    for name in present(&req.headers, &HOP_BY_HOP) {
        let _ = req.remove_header(&name);
    }
    if is_upgrade {
        let _ = req.insert_header(header::CONNECTION, "upgrade");
    } else {
        let _ = req.remove_header(&header::UPGRADE);
    }
}

/// Drops hop-by-hop headers from the core's response; a `101 Switching Protocols` keeps
/// what the client needs to complete the upgrade.
pub fn strip_response_hop_by_hop(resp: &mut ResponseHeader) {
    let switching = resp.status == http::StatusCode::SWITCHING_PROTOCOLS;
    for token in connection_tokens(&resp.headers) {
        if token == "upgrade" && switching {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
            if !is_end_to_end_essential(&name) {
                let _ = resp.remove_header(&name);
            }
        }
    }
    for name in present(&resp.headers, &HOP_BY_HOP) {
        if switching && name == header::CONNECTION {
            continue;
        }
        let _ = resp.remove_header(&name);
    }
    if switching {
        let _ = resp.insert_header(header::CONNECTION, "upgrade");
    }
}

/// A `Connection: host` or `Connection: content-length` is an attack, not a request to drop
/// the framing or routing of the message.
fn is_end_to_end_essential(name: &HeaderName) -> bool {
    name == header::HOST
        || name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_shield_keeps_only_the_client_the_pop_settled_on_and_its_scheme() {
        let mut req = RequestHeader::build("GET", b"/", None).expect("request");
        for (name, value) in [
            ("x-forwarded-for", "198.51.100.66, 203.0.113.9, 10.0.0.1"),
            ("x-real-ip", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-ssl", "on"),
            ("forwarded", "for=198.51.100.66;proto=http"),
            ("x-forwarded-host", "evil.example"),
        ] {
            req.append_header(name, value).expect("header");
        }
        narrow_to_the_pops_client(&mut req);
        assert_eq!(req.headers["x-forwarded-for"], "203.0.113.9");
        assert_eq!(req.headers["x-forwarded-proto"], "https");
        for gone in [
            "x-real-ip",
            "x-forwarded-ssl",
            "forwarded",
            "x-forwarded-host",
        ] {
            assert!(!req.headers.contains_key(gone), "{gone} kept");
        }
        // Without a client from the PoP, the PoP is the client.
        let mut bare = RequestHeader::build("GET", b"/", None).expect("request");
        bare.append_header("x-forwarded-for", "198.51.100.66")
            .expect("header");
        narrow_to_the_pops_client(&mut bare);
        assert!(!bare.headers.contains_key("x-forwarded-for"));
    }

    use super::*;

    fn trusted() -> TrustedProxies {
        TrustedProxies::new(vec!["10.0.0.0/8".parse().expect("cidr")])
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        assert_eq!(
            client_ip(ip("203.0.113.9"), &["1.2.3.4"], &trusted()),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn a_trusted_peer_hands_over_the_first_untrusted_hop() {
        assert_eq!(
            client_ip(ip("10.0.0.1"), &["198.51.100.7, 10.0.0.5"], &trusted()),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &["6.6.6.6", "198.51.100.7"], &trusted()),
            ip("198.51.100.7")
        );
        assert_eq!(client_ip(ip("10.0.0.1"), &[], &trusted()), ip("10.0.0.1"));
        assert_eq!(
            client_ip(ip("10.0.0.1"), &["garbage, 10.0.0.3"], &trusted()),
            ip("10.0.0.3")
        );
    }

    #[test]
    fn forwarding_headers_replace_client_values_from_untrusted_peers() {
        let mut req = RequestHeader::build("GET", b"/", None).expect("request");
        req.insert_header("X-Forwarded-For", "1.2.3.4").expect("h");
        req.insert_header("X-Real-IP", "1.2.3.4").expect("h");
        req.insert_header("X-Forwarded-Proto", "https").expect("h");
        req.insert_header("X-Forwarded-Host", "evil.example")
            .expect("h");
        set_forwarding(&mut req, Some(ip("203.0.113.9")), false, &trusted());
        assert_eq!(req.headers["x-forwarded-for"], "203.0.113.9");
        assert_eq!(req.headers["x-real-ip"], "203.0.113.9");
        assert_eq!(req.headers["x-forwarded-proto"], "http");
        assert!(!req.headers.contains_key("x-forwarded-host"));
        assert!(!req.headers.contains_key("x-forwarded-ssl"));
        assert!(!req.headers.contains_key("client-ip"));
    }

    #[test]
    fn only_websocket_handshakes_are_upgrades() {
        let build = |connection: &str, upgrade: &str| {
            let mut req = RequestHeader::build("GET", b"/api/v1/streaming", None).expect("request");
            req.insert_header("Connection", connection).expect("h");
            req.insert_header("Upgrade", upgrade).expect("h");
            req
        };
        assert!(is_websocket_upgrade(&build("Upgrade", "websocket")));
        assert!(is_websocket_upgrade(&build(
            "keep-alive, upgrade",
            "WebSocket"
        )));
        assert!(!is_websocket_upgrade(&build(
            "Upgrade, HTTP2-Settings",
            "h2c"
        )));
        assert!(!is_websocket_upgrade(&build("keep-alive", "websocket")));
    }

    #[test]
    fn forwarding_headers_extend_a_trusted_chain() {
        let mut req = RequestHeader::build("GET", b"/", None).expect("request");
        req.insert_header("X-Forwarded-For", "198.51.100.7")
            .expect("h");
        req.insert_header("X-Forwarded-Proto", "https").expect("h");
        set_forwarding(&mut req, Some(ip("10.0.0.1")), false, &trusted());
        assert_eq!(req.headers["x-forwarded-for"], "198.51.100.7, 10.0.0.1");
        assert_eq!(req.headers["x-real-ip"], "198.51.100.7");
        assert_eq!(req.headers["x-forwarded-proto"], "https");
    }

    #[test]
    fn hop_by_hop_headers_are_dropped_but_upgrades_survive() {
        let mut req = RequestHeader::build("GET", b"/", None).expect("request");
        req.insert_header("Connection", "keep-alive, X-Secret, Host")
            .expect("h");
        req.insert_header("X-Secret", "1").expect("h");
        req.insert_header("Keep-Alive", "timeout=5").expect("h");
        req.insert_header("Host", "example.social").expect("h");
        req.insert_header("Upgrade", "h2c").expect("h");
        strip_request_hop_by_hop(&mut req, false);
        assert!(!req.headers.contains_key("x-secret"));
        assert!(!req.headers.contains_key("keep-alive"));
        assert!(!req.headers.contains_key("connection"));
        assert!(!req.headers.contains_key("upgrade"));
        assert_eq!(req.headers["host"], "example.social");

        let mut ws = RequestHeader::build("GET", b"/api/v1/streaming", None).expect("request");
        ws.insert_header("Connection", "Upgrade").expect("h");
        ws.insert_header("Upgrade", "websocket").expect("h");
        strip_request_hop_by_hop(&mut ws, true);
        assert_eq!(ws.headers["connection"], "upgrade");
        assert_eq!(ws.headers["upgrade"], "websocket");
    }
}
