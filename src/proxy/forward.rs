//! Decisions for requests that go to the core: whether a failure may be retried on another
//! host, the request id, and the body limit.
//!
//! Retrying is where an edge can make a core's bad day worse: a POST sent twice is a
//! duplicate post. Only the group's `retry_methods` (GET, HEAD and OPTIONS unless PUT or
//! DELETE are added) are retried, and only when no byte of a request body has been read
//! from the client, so nothing of it can have reached a host.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use pingora::http::RequestHeader;

/// Whether a failed attempt may be repeated on another host.
pub fn may_retry(group_retries: bool, body_bytes_read: usize) -> bool {
    group_retries && body_bytes_read == 0
}

/// The declared body length, when it is over `max`.
pub fn declared_length_over(req: &RequestHeader, max: u64) -> bool {
    crate::wire::content_length(&req.headers).is_some_and(|len| len > max)
}

pub const X_REQUEST_ID: http::header::HeaderName =
    http::header::HeaderName::from_static("x-request-id");

/// Request ids: unique per process run, not secret.
pub struct RequestIds {
    run: u64,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        // std's per-process random hasher keys make a run prefix without another dependency.
        let run = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        RequestIds {
            run,
            next: AtomicU64::new(0),
        }
    }
}

impl RequestIds {
    /// A new id.
    pub fn next_id(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{n:016x}", self.run)
    }

    /// The client's `X-Request-Id` when it is a sane token, or a new one.
    pub fn for_request(&self, req: &RequestHeader) -> String {
        if let Some(given) = req
            .headers
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| valid_request_id(v))
        {
            return given.to_string();
        }
        self.next_id()
    }
}

/// 1 to 128 visible ASCII characters: what a log line and a header can carry as is.
fn valid_request_id(value: &str) -> bool {
    (1..=128).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        let ids = RequestIds::default();
        let mut req = RequestHeader::build("GET", b"/", None).expect("request");
        let first = ids.for_request(&req);
        let second = ids.for_request(&req);
        assert_eq!(first.len(), 32);
        assert_ne!(first, second);
        req.insert_header("X-Request-Id", "abc-123")
            .expect("header");
        assert_eq!(ids.for_request(&req), "abc-123");
        req.insert_header("X-Request-Id", "has space")
            .expect("header");
        assert_ne!(ids.for_request(&req), "has space");
        req.insert_header("X-Request-Id", "x".repeat(129))
            .expect("header");
        assert_eq!(ids.for_request(&req).len(), 32);
    }

    #[test]
    fn only_allowed_methods_without_a_body_sent_are_retried() {
        assert!(may_retry(true, 0));
        assert!(!may_retry(true, 1));
        assert!(!may_retry(false, 0));
    }
}
