//! Cache poisoning: nothing a client sends outside the cache key may change the response
//! stored for others. The classes come from public research on web cache poisoning
//! (unkeyed forwarding headers, URL-override headers, method overrides, Host games,
//! absolute-form targets, bodies on GET).
//!
//! The origin echoes every request header it receives into its body, so a header that
//! reached it and was stored would show in what the next, clean client gets.

use crate::harness::client::{https_client, raw_exchange, raw_status};
use crate::harness::origin::{seen_headers, Origin};
use crate::harness::{get, pop_with_cache, pop_with_cache_and_h2c};

#[tokio::test]
async fn unkeyed_headers_never_reach_the_stored_response() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let attacks: [(&str, &str); 16] = [
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Scheme", "nothttps"),
        ("X-Forwarded-Proto", "evilproto"),
        ("X-Forwarded-Port", "6666"),
        ("X-Forwarded-Server", "evil.example"),
        ("X-Forwarded-Ssl", "on-evil"),
        ("X-Forwarded-Prefix", "/evil"),
        ("X-Host", "evil.example"),
        ("X-Original-Host", "evil.example"),
        ("X-Original-URL", "/evil"),
        ("X-Rewrite-URL", "/evil"),
        ("X-HTTP-Method-Override", "EVILPOST"),
        ("X-HTTP-Method", "EVILPOST"),
        ("X-Method-Override", "EVILPOST"),
        ("Forwarded", "host=evil.example;proto=evil"),
        ("X-Url-Scheme", "evil"),
    ];
    for (i, (name, value)) in attacks.iter().enumerate() {
        let path = format!("/poison/{i}?cc=public,max-age=600");
        let attacker = get(pop.setup.http(), &path, &[(name, value)]).await;
        assert_eq!(attacker.cache_status(), "MISS");
        let seen = seen_headers(&attacker.json(), &name.to_ascii_lowercase());
        assert!(
            !seen.iter().any(|v| v.contains("evil") || v == "6666"),
            "{name} reached the core: {seen:?}"
        );
        let victim = get(pop.setup.http(), &path, &[]).await;
        assert_eq!(victim.cache_status(), "HIT");
        let text = String::from_utf8_lossy(&victim.body);
        assert!(
            !text.contains("evil") && !text.contains("6666"),
            "{name} poisoned: {text}"
        );
        assert_eq!(
            seen_headers(&victim.json(), "x-forwarded-proto"),
            vec!["http"],
            "{name}"
        );
    }
}

#[tokio::test]
async fn host_games_cannot_plant_a_response_for_another_host() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let address = pop.setup.http();
    let path = "/hostgame?cc=public,max-age=600";
    // Absolute-form target naming one host, Host naming the victim: refused, so the core
    // and the key can never disagree about the host.
    let attack = format!(
        "GET http://evil.example{path} HTTP/1.1\r\nHost: victim.example\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(
        raw_status(&raw_exchange(address, attack.as_bytes()).await),
        Some(400)
    );
    // Absolute-form that agrees with Host is the same object as origin-form.
    let absolute = format!(
        "GET http://victim.example{path} HTTP/1.1\r\nHost: victim.example\r\nConnection: close\r\n\r\n"
    );
    let answer = raw_exchange(address, absolute.as_bytes()).await;
    assert!(answer.contains("x-cache-status: MISS"), "{answer}");
    assert!(
        answer.contains("\"uri\":\"/hostgame?"),
        "the core got an absolute target: {answer}"
    );
    let victim =
        format!("GET {path} HTTP/1.1\r\nHost: victim.example\r\nConnection: close\r\n\r\n");
    let answer = raw_exchange(address, victim.as_bytes()).await;
    assert!(answer.contains("x-cache-status: HIT"), "{answer}");
    assert!(!answer.contains("evil"), "{answer}");
    // Two Host headers are refused outright.
    let double = format!(
        "GET {path} HTTP/1.1\r\nHost: victim.example\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(
        raw_status(&raw_exchange(address, double.as_bytes()).await),
        Some(400)
    );
    // Case and a trailing dot name the same host: one object.
    let variant =
        format!("GET {path} HTTP/1.1\r\nHost: VICTIM.example.\r\nConnection: close\r\n\r\n");
    let answer = raw_exchange(address, variant.as_bytes()).await;
    assert!(answer.contains("x-cache-status: HIT"), "{answer}");
    assert!(!answer.contains("evil"));
    // A request-target with userinfo is refused.
    let userinfo = format!(
        "GET http://evil.example@victim.example{path} HTTP/1.1\r\nHost: victim.example\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(
        raw_status(&raw_exchange(address, userinfo.as_bytes()).await),
        Some(400)
    );
}

#[tokio::test]
async fn a_get_with_a_body_is_not_cached() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let address = pop.setup.http();
    let path = "/fatget?cc=public,max-age=600";
    let fat = format!(
        "GET {path} HTTP/1.1\r\nHost: victim.example\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 9\r\nConnection: close\r\n\r\nevil=true"
    );
    let answer = raw_exchange(address, fat.as_bytes()).await;
    assert!(answer.contains("x-cache-status: BYPASS"), "{answer}");
    let clean = format!("GET {path} HTTP/1.1\r\nHost: victim.example\r\nConnection: close\r\n\r\n");
    let answer = raw_exchange(address, clean.as_bytes()).await;
    assert!(answer.contains("x-cache-status: MISS"), "{answer}");
    assert!(answer.contains("\"body_length\":0"), "{answer}");
}

/// A body sent as a stream: over HTTP/2 it goes as DATA frames with no `content-length`.
fn streamed_body(text: &'static str) -> reqwest::Body {
    let chunk = bytes::Bytes::from_static(text.as_bytes());
    reqwest::Body::wrap_stream(futures_util::stream::iter([Ok::<_, std::io::Error>(chunk)]))
}

/// Whatever frames it (h1 `Content-Length` or chunked, h2 DATA with or without
/// `content-length`, h2c or h2 over TLS), a GET with a body neither stores its answer nor is
/// answered from the cache: Rails merges body parameters into `params`.
#[tokio::test]
async fn a_get_with_a_body_bypasses_the_cache_in_every_framing() {
    let origin = Origin::start().await;
    let pop = pop_with_cache_and_h2c(&origin, "").await;
    let h2c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .expect("h2c client");
    let tls = https_client(
        &[&pop.cert.pem],
        &["hachyderm.example"],
        pop.setup.https(),
        false,
    );
    let plain = format!("http://{}", pop.setup.http());
    let secure = format!("https://hachyderm.example:{}", pop.setup.https().port());
    let cases: [(&str, &reqwest::Client, &str, bool); 4] = [
        ("h2c-stream", &h2c, &plain, true),
        ("h2c-length", &h2c, &plain, false),
        ("h2-tls-stream", &tls, &secure, true),
        ("h2-tls-length", &tls, &secure, false),
    ];
    for (name, client, base, stream) in cases {
        let url = format!("{base}/fat/{name}?cc=public,max-age=600");
        let body = if stream {
            streamed_body("evil=true")
        } else {
            reqwest::Body::from("evil=true")
        };
        let fat = client
            .get(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("GET with a body");
        assert_eq!(fat.version(), reqwest::Version::HTTP_2, "{name}");
        assert_eq!(fat.status(), 200, "{name}");
        assert_eq!(fat.headers()["x-cache-status"], "BYPASS", "{name}");
        for round in ["MISS", "HIT"] {
            let clean = client.get(&url).send().await.expect("clean GET");
            assert_eq!(clean.headers()["x-cache-status"], round, "{name}");
            let seen: serde_json::Value = clean.json().await.expect("origin JSON");
            assert_eq!(seen["body_length"], 0, "{name}: {seen}");
        }
    }
    // HTTP/1.1, chunked.
    let path = "/fat/h1-chunked?cc=public,max-age=600";
    let host = pop.setup.http().to_string();
    let chunked = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n9\r\nevil=true\r\n0\r\n\r\n"
    );
    let answer = raw_exchange(pop.setup.http(), chunked.as_bytes()).await;
    assert_eq!(raw_status(&answer), Some(200), "{answer}");
    assert!(answer.contains("x-cache-status: BYPASS"), "{answer}");
    let clean = get(pop.setup.http(), path, &[]).await;
    assert_eq!(clean.cache_status(), "MISS");
    assert_eq!(clean.json()["body_length"], 0);
}

/// A header the client's `Connection` nominates is dropped before the core sees the request,
/// so it must not choose the variant the answer is stored under either.
#[tokio::test]
async fn a_header_nominated_by_connection_cannot_choose_a_variant() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let host = pop.setup.http().to_string();
    let selecting = [
        ("Accept-Language", "de"),
        ("Accept", "application/activity+json"),
        ("Origin", "https://elsewhere.example"),
    ];
    for (i, (name, value)) in selecting.iter().enumerate() {
        let path = format!("/variant/{i}?cc=public,max-age=600&h=vary:{name}");
        let attack = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\n{name}: {value}\r\nConnection: close, {name}\r\n\r\n"
        );
        let answer = raw_exchange(pop.setup.http(), attack.as_bytes()).await;
        assert_eq!(raw_status(&answer), Some(200), "{answer}");
        let lower = name.to_ascii_lowercase();
        let victim = get(pop.setup.http(), &path, &[(name, value)]).await;
        assert_eq!(
            seen_headers(&victim.json(), &lower),
            vec![value.to_string()],
            "{name}: served an answer made without it ({})",
            victim.cache_status()
        );
        let again = get(pop.setup.http(), &path, &[(name, value)]).await;
        assert_eq!(again.cache_status(), "HIT", "{name}");
        assert_eq!(again.body, victim.body, "{name}");
    }
}

/// Query parameters are put in order by their decoded names, as Rails reads them; where two
/// spellings of one name meet, or a name is nested (`a[][x]`, also when encoded), the order
/// is what the core sees and is kept.
#[tokio::test]
async fn query_spellings_the_core_reads_differently_are_different_objects() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let http = pop.setup.http();
    let pairs = [
        // Rails reads a=2, then a=1.
        (
            "/q/1?cc=public,max-age=600&a=1&%61=2",
            "/q/1?cc=public,max-age=600&%61=2&a=1",
        ),
        // Nested parameters, with the brackets encoded: arrays of hashes built by order.
        (
            "/q/2?cc=public,max-age=600&x%5B%5D%5By%5D=1&x%5B%5D%5Bz%5D=2&x%5B%5D%5By%5D=3",
            "/q/2?cc=public,max-age=600&x%5B%5D%5By%5D=1&x%5B%5D%5By%5D=3&x%5B%5D%5Bz%5D=2",
        ),
    ];
    for (first, second) in pairs {
        assert_eq!(get(http, first, &[]).await.cache_status(), "MISS");
        assert_eq!(get(http, first, &[]).await.cache_status(), "HIT");
        let other = get(http, second, &[]).await;
        assert_eq!(
            other.cache_status(),
            "MISS",
            "{second} took {first}'s answer"
        );
    }
    // Plain names still share an object whatever their order, by decoded name.
    assert_eq!(
        get(http, "/q/3?cc=public,max-age=600&b=1&%63=2", &[])
            .await
            .cache_status(),
        "MISS"
    );
    assert_eq!(
        get(http, "/q/3?%63=2&b=1&cc=public,max-age=600", &[])
            .await
            .cache_status(),
        "HIT"
    );
}

/// An asterisk target is for `OPTIONS` only (RFC 9112 §3.2.4): any other method gets a 400
/// and never reaches the core or the cache.
#[tokio::test]
async fn an_asterisk_target_is_refused_unless_options() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let host = pop.setup.http().to_string();
    for method in ["GET", "HEAD", "POST"] {
        let request = format!(
            "{method} * HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let answer = raw_exchange(pop.setup.http(), request.as_bytes()).await;
        assert_eq!(raw_status(&answer), Some(400), "{method}: {answer}");
    }
    // Targets in no form at all are refused too, never keyed beside each other.
    for target in ["zz", "*.evil/x", ".evil/x"] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let answer = raw_exchange(pop.setup.http(), request.as_bytes()).await;
        assert_eq!(raw_status(&answer), Some(400), "{target}: {answer}");
    }
    assert_eq!(origin.hits(), 0);
    let options = format!("OPTIONS * HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let answer = raw_exchange(pop.setup.http(), options.as_bytes()).await;
    assert_eq!(raw_status(&answer), Some(200), "{answer}");
    assert!(!answer.contains("x-cache-status: HIT"), "{answer}");
    assert_eq!(origin.hits(), 1);
}
