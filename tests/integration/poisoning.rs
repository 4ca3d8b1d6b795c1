//! Cache poisoning: nothing a client sends outside the cache key may change the response
//! stored for others. The classes come from public research on web cache poisoning
//! (unkeyed forwarding headers, URL-override headers, method overrides, Host games,
//! absolute-form targets, bodies on GET).
//!
//! The origin echoes every request header it receives into its body, so a header that
//! reached it and was stored would show in what the next, clean client gets.

use crate::cache::{get, pop_with_cache};
use crate::harness::client::{raw_exchange, raw_status};
use crate::harness::origin::{seen_headers, Origin};

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
        let attacker = get(pop.setup.http, &path, &[(name, value)]).await;
        assert_eq!(attacker.cache_status(), "MISS");
        let seen = seen_headers(&attacker.json(), &name.to_ascii_lowercase());
        assert!(
            !seen.iter().any(|v| v.contains("evil") || v == "6666"),
            "{name} reached the core: {seen:?}"
        );
        let victim = get(pop.setup.http, &path, &[]).await;
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
    let address = pop.setup.http;
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
    let address = pop.setup.http;
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
