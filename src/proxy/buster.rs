//! Mastodon's cache buster (`CACHE_BUSTER_ENABLED`).
//!
//! When media is deleted or replaced, Mastodon sends a request with its configured method
//! (`CACHE_BUSTER_HTTP_METHOD`, GET by default) to the media URL itself, carrying
//! `CACHE_BUSTER_SECRET_HEADER: CACHE_BUSTER_SECRET`. Geo-routed DNS sends it to the
//! nearest PoP, which purges the URL (both schemes, every variant) and passes the purge to
//! the fleet. Such a request is never forwarded to the core nor answered from the cache.

use pingora::http::RequestHeader;

use crate::config::model::CacheBuster;

/// Whether `req` is the cache buster's: its method, with the secret header matching.
pub fn is_cache_buster(buster: &CacheBuster, req: &RequestHeader) -> bool {
    req.method == buster.method
        && req
            .headers
            .get(&buster.secret_header)
            .is_some_and(|value| buster.secret.matches(value.as_bytes()))
}

/// The URL to purge, without a scheme: the host the request named and its target.
pub fn purge_target(req: &RequestHeader) -> Option<String> {
    let host = match req.uri.authority() {
        Some(authority) => authority.as_str(),
        None => req.headers.get(http::header::HOST)?.to_str().ok()?,
    };
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    Some(format!("{host}{target}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::Secret;

    fn buster() -> CacheBuster {
        CacheBuster {
            method: http::Method::from_bytes(b"PURGE").expect("method"),
            secret_header: http::HeaderName::from_static("x-cache-buster-secret"),
            secret: Secret::new("s3cret".into()),
        }
    }

    fn request(method: &str, secret: Option<&str>) -> RequestHeader {
        let mut req = RequestHeader::build(
            method,
            b"/system/media_attachments/files/1/original/a.png",
            None,
        )
        .expect("request");
        req.insert_header("Host", "media.hachyderm.example")
            .expect("host");
        if let Some(secret) = secret {
            req.insert_header("X-Cache-Buster-Secret", secret)
                .expect("secret");
        }
        req
    }

    #[test]
    fn only_the_method_with_the_right_secret_is_the_buster() {
        let buster = buster();
        assert!(is_cache_buster(&buster, &request("PURGE", Some("s3cret"))));
        assert!(!is_cache_buster(&buster, &request("PURGE", Some("s3cre"))));
        assert!(!is_cache_buster(
            &buster,
            &request("PURGE", Some("s3cret!"))
        ));
        assert!(!is_cache_buster(&buster, &request("PURGE", None)));
        assert!(!is_cache_buster(&buster, &request("GET", Some("s3cret"))));
        assert_eq!(
            purge_target(&request("PURGE", None)).as_deref(),
            Some("media.hachyderm.example/system/media_attachments/files/1/original/a.png")
        );
    }
}
