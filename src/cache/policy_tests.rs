//! Unit tests of the storing and freshness rules.

use super::*;

fn policy() -> CachePolicy {
    CachePolicy {
        serve_stale_on_error: Duration::from_secs(3600),
        status_header: true,
        status_name: "edgecache".to_string(),
        status_key: false,
        session_cookies: vec!["_session_id".into(), "_mastodon_session".into()],
        heuristic: Some(HeuristicFreshness {
            fraction: 0.1,
            max: Duration::from_secs(24 * 3600),
        }),
        targeted_fields: vec![
            http::HeaderName::from_static("edgecache-cache-control"),
            http::HeaderName::from_static("cdn-cache-control"),
        ],
        own_targeted_field: Some(http::HeaderName::from_static("edgecache-cache-control")),
        invalidation: crate::config::model::Invalidation::Local,
        slice_size: 1024 * 1024,
    }
}

const NO_ROUTE: RouteFreshness = RouteFreshness {
    ttl: None,
    heuristic: true,
};

fn request(headers: &[(&str, &str)]) -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/", None).expect("request");
    for (name, value) in headers {
        req.append_header(name.to_string(), *value).expect("header");
    }
    req
}

fn response(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
    let mut resp = ResponseHeader::build(status, None).expect("response");
    for (name, value) in headers {
        resp.append_header(name.to_string(), *value)
            .expect("header");
    }
    resp
}

fn fresh_secs(r: RespCacheable) -> Option<u64> {
    match r {
        RespCacheable::Cacheable(meta) => Some(meta.fresh_sec()),
        RespCacheable::Uncacheable(_) => None,
    }
}

#[test]
fn requests_that_identify_a_user_bypass() {
    let p = policy();
    assert_eq!(request_bypass(&request(&[]), false, true, &p), None);
    let cases = [
        ("Authorization", "Bearer x", BypassReason::Authorization),
        ("Signature", "keyId=\"a\"", BypassReason::Signature),
        (
            "Cookie",
            "theme=dark; _session_id=abc",
            BypassReason::SessionCookie,
        ),
        (
            "Cookie",
            "_mastodon_session=abc",
            BypassReason::SessionCookie,
        ),
        ("Upgrade", "websocket", BypassReason::Upgrade),
        ("Content-Length", "5", BypassReason::RequestBody),
    ];
    for (name, value, reason) in cases {
        assert_eq!(
            request_bypass(&request(&[(name, value)]), false, true, &p),
            Some(reason),
            "{name}: {value}"
        );
    }
    // A cookie that merely contains a session name is not a session.
    assert_eq!(
        request_bypass(
            &request(&[("Cookie", "x_session_idx=1; theme=a")]),
            false,
            true,
            &p
        ),
        None
    );
    let mut post = request(&[]);
    post.set_method(Method::POST);
    assert_eq!(
        request_bypass(&post, false, true, &p),
        Some(BypassReason::Method)
    );
    // A route with `cache: false`, like the streaming API.
    assert_eq!(
        request_bypass(&request(&[]), false, false, &p),
        Some(BypassReason::Route)
    );
    // A body the headers do not announce (HTTP/2 DATA frames without a length).
    assert_eq!(
        request_bypass(&request(&[]), true, true, &p),
        Some(BypassReason::RequestBody)
    );
}

#[test]
fn only_what_signs_a_user_in_is_a_credential() {
    let names = policy().session_cookies;
    let names = Some(names.as_slice());
    assert!(!carries_credentials(
        &request(&[("Cookie", "consent=1")]),
        names
    ));
    assert!(carries_credentials(
        &request(&[("Cookie", "consent=1; _session_id=x")]),
        names
    ));
    assert!(carries_credentials(
        &request(&[("Authorization", "Bearer t")]),
        names
    ));
    assert!(carries_credentials(
        &request(&[("Signature", "keyId=\"a\"")]),
        names
    ));
    // Without a cache policy no cookie names are known: any cookie counts.
    assert!(carries_credentials(
        &request(&[("Cookie", "consent=1")]),
        None
    ));
    assert!(!carries_credentials(&request(&[]), None));
}

#[test]
fn a_weak_validator_on_either_side_of_if_range_never_matches() {
    let with = |if_range: &str| request(&[("Range", "bytes=0-1"), ("If-Range", if_range)]);
    let weak = response(200, &[("ETag", "W/\"v1\"")]);
    let strong = response(200, &[("ETag", "\"v1\"")]);
    assert!(if_range_never_matches(&with("W/\"v1\""), &weak));
    assert!(if_range_never_matches(&with("\"v1\""), &weak));
    assert!(if_range_never_matches(&with("W/\"v1\""), &strong));
    assert!(!if_range_never_matches(&with("\"v1\""), &strong));
    let date = "Tue, 01 Dec 2026 00:00:00 GMT";
    assert!(!if_range_never_matches(&with(date), &weak));
    assert!(!if_range_never_matches(
        &request(&[("Range", "bytes=0-1")]),
        &weak
    ));
}

#[test]
fn freshness_comes_from_the_response() {
    let p = policy();
    let r = |status, headers: &[(&str, &str)]| {
        fresh_secs(response_cacheable(&response(status, headers), NO_ROUTE, &p))
    };
    assert_eq!(r(200, &[("Cache-Control", "public, max-age=60")]), Some(60));
    assert_eq!(
        r(200, &[("Cache-Control", "max-age=60, s-maxage=120")]),
        Some(120)
    );
    assert_eq!(r(200, &[("Cache-Control", "private, no-store")]), None);
    assert_eq!(r(200, &[("Cache-Control", "private")]), None);
    assert_eq!(r(200, &[("Cache-Control", "no-store, max-age=60")]), None);
    assert_eq!(r(200, &[("Cache-Control", "no-cache")]), Some(0));
    assert_eq!(
        r(
            200,
            &[("Cache-Control", "max-age=60"), ("Set-Cookie", "a=b")]
        ),
        None
    );
    assert_eq!(
        r(200, &[("Cache-Control", "max-age=60"), ("Vary", "*")]),
        None
    );
    assert_eq!(r(206, &[("Cache-Control", "max-age=60")]), None);
    assert_eq!(r(304, &[("Cache-Control", "max-age=60")]), None);
    assert_eq!(r(200, &[]), None);
    assert_eq!(
        r(
            200,
            &[
                ("Date", "Mon, 23 Nov 2026 10:00:00 GMT"),
                ("Expires", "Mon, 23 Nov 2026 10:05:00 GMT")
            ]
        ),
        Some(300)
    );
    assert_eq!(r(200, &[("Expires", "0")]), Some(0));
    // An origin Age uses up part of the lifetime.
    let aged = r(200, &[("Cache-Control", "max-age=60"), ("Age", "50")]);
    assert!(aged.is_some_and(|s| s <= 60));
}

#[test]
fn age_is_the_first_members_whole_seconds() {
    let age = |lines: &[&str]| {
        let headers: Vec<(&str, &str)> = lines.iter().map(|v| ("Age", *v)).collect();
        upstream_age(&response(200, &headers)).as_secs()
    };
    assert_eq!(age(&[]), 0);
    assert_eq!(age(&["7200"]), 7200);
    assert_eq!(age(&[" 30 "]), 30);
    for ignored in ["abc", "-7200", "7200.0", "1e3", "", "0x10", "+5"] {
        assert_eq!(age(&[ignored]), 0, "{ignored:?}");
    }
    // One line with a list, or several lines: the first member of the first line.
    assert_eq!(age(&["7200, 0"]), 7200);
    assert_eq!(age(&["0, 7200"]), 0);
    assert_eq!(age(&["7200", "0"]), 7200);
    assert_eq!(age(&["0", "7200"]), 0);
    // Too large to hold, or past 2^31: 2^31, which leaves nothing fresh.
    assert_eq!(age(&["2147483647"]), 2_147_483_647);
    assert_eq!(age(&["2147483649"]), 1 << 31);
    assert_eq!(age(&["99999999999999999999999"]), 1 << 31);
    let p = policy();
    let stale = response(
        200,
        &[
            ("Cache-Control", "max-age=3600"),
            ("Age", "99999999999999999999"),
        ],
    );
    let RespCacheable::Cacheable(meta) = response_cacheable(&stale, NO_ROUTE, &p) else {
        panic!("cacheable");
    };
    assert!(!meta.is_fresh(SystemTime::now()));
}

#[test]
fn an_upstream_age_is_kept_in_the_stored_header() {
    let p = policy();
    let resp = response(200, &[("Cache-Control", "max-age=60"), ("Age", "5")]);
    let RespCacheable::Cacheable(meta) = response_cacheable(&resp, NO_ROUTE, &p) else {
        panic!("cacheable");
    };
    assert_eq!(
        meta.headers().get("age").map(|v| v.as_bytes()),
        Some(&b"5"[..])
    );
    assert!(meta.age().as_secs() >= 5);
}

#[test]
fn any_final_status_with_explicit_freshness_is_stored() {
    let p = policy();
    for status in [200, 299, 303, 400, 429, 499, 500, 502, 503, 504, 599] {
        let fresh = response(status, &[("Cache-Control", "max-age=60")]);
        assert_eq!(
            fresh_secs(response_cacheable(&fresh, NO_ROUTE, &p)),
            Some(60),
            "{status}"
        );
    }
    // Without freshness of its own, only a status cacheable by default (or `public`)
    // gets a guessed lifetime.
    let modified = [
        ("Date", "Mon, 23 Nov 2026 10:00:00 GMT"),
        ("Last-Modified", "Fri, 13 Nov 2026 10:00:00 GMT"),
    ];
    let day = 24 * 3600;
    for (status, lifetime) in [
        (200, Some(day)),
        (404, Some(day)),
        (501, Some(day)),
        (500, None),
        (599, None),
    ] {
        let silent = response(status, &modified);
        assert_eq!(
            fresh_secs(response_cacheable(&silent, NO_ROUTE, &p)),
            lifetime,
            "{status}"
        );
    }
    let mut public = modified.to_vec();
    public.push(("Cache-Control", "public"));
    assert_eq!(
        fresh_secs(response_cacheable(&response(599, &public), NO_ROUTE, &p)),
        Some(day)
    );
}

#[test]
fn a_guess_from_last_modified_is_a_capped_share_and_can_be_refused() {
    let p = policy();
    let lifetime = |modified: &str, route: RouteFreshness, policy: &CachePolicy| {
        let resp = response(
            200,
            &[
                ("Date", "Mon, 23 Nov 2026 10:00:00 GMT"),
                ("Last-Modified", modified),
            ],
        );
        fresh_secs(response_cacheable(&resp, route, policy))
    };
    // Ten hours unchanged: fresh for one.
    assert_eq!(
        lifetime("Mon, 23 Nov 2026 00:00:00 GMT", NO_ROUTE, &p),
        Some(3600)
    );
    // A year: capped at the day.
    assert_eq!(
        lifetime("Sun, 23 Nov 2025 10:00:00 GMT", NO_ROUTE, &p),
        Some(24 * 3600)
    );
    // Modified after its own Date, or not a date: no guess.
    assert_eq!(
        lifetime("Tue, 24 Nov 2026 10:00:00 GMT", NO_ROUTE, &p),
        None
    );
    assert_eq!(lifetime("yesterday", NO_ROUTE, &p), None);
    // A route that refuses guesses, or a PoP with them off.
    let refusing = RouteFreshness {
        ttl: None,
        heuristic: false,
    };
    assert_eq!(
        lifetime("Mon, 23 Nov 2026 00:00:00 GMT", refusing, &p),
        None
    );
    let off = CachePolicy {
        heuristic: None,
        ..policy()
    };
    assert_eq!(
        lifetime("Mon, 23 Nov 2026 00:00:00 GMT", NO_ROUTE, &off),
        None
    );
    // The route's own lifetime comes before a guess.
    let route_ttl = RouteFreshness {
        ttl: Some(Duration::from_secs(60)),
        heuristic: true,
    };
    assert_eq!(
        lifetime("Mon, 23 Nov 2026 00:00:00 GMT", route_ttl, &p),
        Some(60)
    );
}

#[test]
fn must_understand_stands_in_for_no_store_only_for_a_recognised_status() {
    let p = policy();
    let cc = [("Cache-Control", "max-age=3600, no-store, must-understand")];
    assert_eq!(
        fresh_secs(response_cacheable(&response(200, &cc), NO_ROUTE, &p)),
        Some(3600)
    );
    assert_eq!(
        fresh_secs(response_cacheable(&response(599, &cc), NO_ROUTE, &p)),
        None
    );
    let plain = [("Cache-Control", "max-age=3600, no-store")];
    assert_eq!(
        fresh_secs(response_cacheable(&response(200, &plain), NO_ROUTE, &p)),
        None
    );
}

#[test]
fn a_targeted_field_replaces_cache_control_and_expires() {
    let p = policy();
    let r = |headers: &[(&str, &str)]| {
        fresh_secs(response_cacheable(&response(200, headers), NO_ROUTE, &p))
    };
    let expires = [
        ("Date", "Mon, 23 Nov 2026 10:00:00 GMT"),
        ("Expires", "Mon, 23 Nov 2026 11:00:00 GMT"),
    ];
    assert_eq!(
        r(&[
            ("CDN-Cache-Control", "private"),
            ("Cache-Control", "max-age=10000")
        ]),
        None
    );
    assert_eq!(
        r(&[
            ("CDN-Cache-Control", "no-store"),
            ("Cache-Control", "max-age=10000")
        ]),
        None
    );
    assert_eq!(
        r(&[
            ("CDN-Cache-Control", "no-cache"),
            ("Cache-Control", "max-age=10000")
        ]),
        Some(0)
    );
    assert_eq!(
        r(&[
            ("CDN-Cache-Control", "max-age=10000"),
            ("Cache-Control", "no-store")
        ]),
        Some(10000)
    );
    assert_eq!(
        r(&[
            ("CDN-Cache-Control", "max-age=1"),
            ("Cache-Control", "max-age=3600")
        ]),
        Some(1)
    );
    // A targeted field without a lifetime: Expires does not count either.
    let mut silent = expires.to_vec();
    silent.push(("CDN-Cache-Control", "foo"));
    assert_eq!(r(&silent), None);
    // Invalid: ignored whole, Cache-Control rules.
    assert_eq!(
        r(&[
            ("CDN-Cache-Control", "max-age=\"10000\""),
            ("Cache-Control", "no-store")
        ]),
        None
    );
    assert_eq!(
        r(&[
            ("CDN-Cache-Control", "max-age =100"),
            ("Cache-Control", "max-age=1")
        ]),
        Some(1)
    );
    // Ours first: a PoP may keep what browsers and other CDNs keep briefly.
    assert_eq!(
        r(&[
            ("Edgecache-Cache-Control", "max-age=86400"),
            ("CDN-Cache-Control", "max-age=60"),
            ("Cache-Control", "max-age=10")
        ]),
        Some(86400)
    );
    let cdn_off = CachePolicy {
        targeted_fields: Vec::new(),
        own_targeted_field: None,
        ..policy()
    };
    let cdn_only = response(
        200,
        &[
            ("CDN-Cache-Control", "max-age=60"),
            ("Cache-Control", "no-store"),
        ],
    );
    assert_eq!(
        fresh_secs(response_cacheable(&cdn_only, NO_ROUTE, &cdn_off)),
        None
    );
}

#[test]
fn route_ttl_fills_in_only_when_the_response_is_silent() {
    let p = policy();
    // `/system/` with `cache_ttl: 7d`.
    let route_ttl = RouteFreshness {
        ttl: Some(Duration::from_secs(7 * 24 * 3600)),
        heuristic: true,
    };
    let r = |headers: &[(&str, &str)]| {
        fresh_secs(response_cacheable(&response(200, headers), route_ttl, &p))
    };
    assert_eq!(r(&[]), Some(7 * 24 * 3600));
    assert_eq!(r(&[("Cache-Control", "max-age=10")]), Some(10));
    assert_eq!(r(&[("Cache-Control", "private")]), None);
    // Not for an error, even a public one.
    let error = response(503, &[("Cache-Control", "public")]);
    assert_eq!(fresh_secs(response_cacheable(&error, route_ttl, &p)), None);
}

#[test]
fn stale_on_error_window_respects_must_revalidate() {
    let p = policy();
    let sie = |headers: &[(&str, &str)]| match response_cacheable(
        &response(200, headers),
        NO_ROUTE,
        &p,
    ) {
        RespCacheable::Cacheable(meta) => meta.stale_if_error_sec(),
        RespCacheable::Uncacheable(_) => panic!("cacheable"),
    };
    assert_eq!(sie(&[("Cache-Control", "max-age=10")]), 3600);
    assert_eq!(
        sie(&[("Cache-Control", "max-age=10, stale-if-error=86400")]),
        86400
    );
    assert_eq!(sie(&[("Cache-Control", "max-age=10, must-revalidate")]), 0);
    assert_eq!(sie(&[("Cache-Control", "s-maxage=10")]), 0);
    let error = |headers: &[(&str, &str)]| match response_cacheable(
        &response(503, headers),
        NO_ROUTE,
        &p,
    ) {
        RespCacheable::Cacheable(meta) => meta.stale_if_error_sec(),
        RespCacheable::Uncacheable(_) => panic!("cacheable"),
    };
    assert_eq!(error(&[("Cache-Control", "max-age=10")]), 0);
    assert_eq!(
        error(&[("Cache-Control", "max-age=10, stale-if-error=60")]),
        60
    );
}

#[test]
fn a_stored_response_without_last_modified_is_validated_against_its_date() {
    let dated = response(200, &[("Date", "Mon, 23 Nov 2026 10:00:00 GMT")]);
    let since = |value: &str| request(&[("If-Modified-Since", value)]);
    assert!(not_modified(
        &since("Mon, 23 Nov 2026 10:00:00 GMT"),
        &dated
    ));
    assert!(not_modified(
        &since("Monday, 23-Nov-26 11:00:00 GMT"),
        &dated
    ));
    assert!(!not_modified(
        &since("Mon, 23 Nov 2026 09:59:59 GMT"),
        &dated
    ));
    assert!(!not_modified(&since("yesterday"), &dated));
    // Last-Modified, when there is one, is what counts.
    let modified = response(
        200,
        &[
            ("Date", "Mon, 23 Nov 2026 10:00:00 GMT"),
            ("Last-Modified", "Mon, 23 Nov 2026 12:00:00 GMT"),
        ],
    );
    assert!(!not_modified(
        &since("Mon, 23 Nov 2026 11:00:00 GMT"),
        &modified
    ));
    // If-None-Match rules out If-Modified-Since.
    let both = request(&[
        ("If-Modified-Since", "Mon, 23 Nov 2026 11:00:00 GMT"),
        ("If-None-Match", "\"x\""),
    ]);
    assert!(!not_modified(&both, &dated));
}

#[test]
fn zero_length_suffix_ranges_are_left_out() {
    assert_eq!(
        without_empty_suffixes(b"bytes=-0"),
        Some("bytes=".to_string())
    );
    assert_eq!(
        without_empty_suffixes(b"bytes=-000, 0-3"),
        Some("bytes= 0-3".to_string())
    );
    assert_eq!(without_empty_suffixes(b"bytes=-10"), None);
    assert_eq!(without_empty_suffixes(b"bytes=0-0"), None);
    assert_eq!(without_empty_suffixes(b"bytes=-"), None);
}
