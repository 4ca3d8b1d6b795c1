//! An old server's media over HTTP(S): the key is appended to the configured base URL.
//!
//! 404 and 410 mean "not here"; any other answer that is not 200, 206 or 416 is a failure
//! of the place (so the chain moves on and the breaker counts it). A 200 must state its
//! Content-Length: a body whose end cannot be checked can be neither trusted for
//! write-through nor cached whole. Redirects are not followed.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use http::StatusCode;

use crate::store::{
    parse_content_range, BodyStream, ByteRange, Found, Lookup, ObjectInfo, ObjectKey, Source,
    StoreError, Unsatisfiable,
};

pub struct HttpSource {
    name: String,
    base: String,
    client: reqwest::Client,
    timeout: Duration,
}

impl HttpSource {
    pub fn new(name: &str, base: &str, timeout: Duration) -> Result<HttpSource, StoreError> {
        let client = reqwest::Client::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("edgecache/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StoreError::Unavailable {
                store: name.to_string(),
                message: format!("cannot build an HTTP client: {e}"),
            })?;
        Ok(HttpSource {
            name: name.to_string(),
            base: base.to_string(),
            client,
            timeout,
        })
    }

    fn unavailable(&self, message: String) -> StoreError {
        StoreError::Unavailable {
            store: self.name.clone(),
            message,
        }
    }
}

/// The whole length and the span of a `206`, when its `Content-Range` is one span of
/// exactly the `body_len` bytes it carries.
fn partial_span(content_range: Option<&str>, body_len: u64) -> Option<(u64, (u64, u64))> {
    match content_range.and_then(parse_content_range) {
        Some((Some((first, last)), len))
            if last >= first && (last - first).checked_add(1) == Some(body_len) =>
        {
            Some((len, (first, last)))
        }
        _ => None,
    }
}

fn header(resp: &reqwest::Response, name: http::header::HeaderName) -> Option<&str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

#[async_trait]
impl Source for HttpSource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn get(
        &self,
        key: &ObjectKey,
        range: Option<ByteRange>,
        with_body: bool,
    ) -> Result<Lookup, StoreError> {
        let url = format!("{}{}", self.base, key.url_path());
        let method = if with_body {
            reqwest::Method::GET
        } else {
            reqwest::Method::HEAD
        };
        let mut request = self.client.request(method, &url);
        if let Some(range) = range {
            request = request.header(http::header::RANGE, range.header_value());
        }
        let resp = match tokio::time::timeout(self.timeout, request.send()).await {
            Err(_) => {
                return Err(StoreError::Timeout {
                    store: self.name.clone(),
                    seconds: self.timeout.as_secs_f64(),
                })
            }
            Ok(Err(e)) => return Err(self.unavailable(format!("GET {url}: {e}"))),
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status();
        if matches!(status, StatusCode::NOT_FOUND | StatusCode::GONE) {
            return Ok(Lookup::Absent);
        }
        if status == StatusCode::RANGE_NOT_SATISFIABLE {
            let len = header(&resp, http::header::CONTENT_RANGE)
                .and_then(parse_content_range)
                .map_or(0, |(_, len)| len);
            return Ok(Lookup::RangeNotSatisfiable(Unsatisfiable { len }));
        }
        if status != StatusCode::OK && status != StatusCode::PARTIAL_CONTENT {
            return Err(self.unavailable(format!("GET {url}: HTTP {}", status.as_u16())));
        }
        let Some(body_len) = crate::wire::content_length(resp.headers()) else {
            return Err(self.unavailable(format!("GET {url}: no Content-Length")));
        };
        let (len, span) = if status == StatusCode::PARTIAL_CONTENT {
            match partial_span(header(&resp, http::header::CONTENT_RANGE), body_len) {
                Some((len, span)) => (len, Some(span)),
                None => {
                    return Err(self.unavailable(format!(
                        "GET {url}: 206 without a single Content-Range matching its length"
                    )))
                }
            }
        } else {
            (body_len, None)
        };
        let info = ObjectInfo {
            len,
            content_type: header(&resp, http::header::CONTENT_TYPE).map(str::to_string),
            etag: header(&resp, http::header::ETAG).map(str::to_string),
            last_modified: header(&resp, http::header::LAST_MODIFIED).map(str::to_string),
        };
        let body: Option<BodyStream> = with_body.then(|| {
            Box::pin(
                resp.bytes_stream()
                    .map(|chunk| chunk.map_err(std::io::Error::other)),
            ) as BodyStream
        });
        Ok(Lookup::Found(Found {
            info,
            range: span,
            body,
        }))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn a_partial_answer_is_taken_only_with_a_span_of_its_body_length(
            first in any::<u64>(),
            last in any::<u64>(),
            len in any::<u64>(),
            body_len in any::<u64>(),
        ) {
            let value = format!("bytes {first}-{last}/{len}");
            match partial_span(Some(&value), body_len) {
                Some((whole, span)) => {
                    prop_assert_eq!(whole, len);
                    prop_assert_eq!(span, (first, last));
                    prop_assert!(first <= last);
                    prop_assert_eq!(u128::from(last - first) + 1, u128::from(body_len));
                }
                None => prop_assert!(
                    first > last || u128::from(last - first) + 1 != u128::from(body_len)
                ),
            }
        }

        #[test]
        fn a_span_and_the_body_length_it_states_are_taken(
            first in any::<u64>(),
            body_len in 1u64..=u64::MAX,
            len in any::<u64>(),
        ) {
            prop_assume!(first.checked_add(body_len - 1).is_some());
            let last = first + (body_len - 1);
            let value = format!("bytes {first}-{last}/{len}");
            prop_assert_eq!(partial_span(Some(&value), body_len), Some((len, (first, last))));
        }

        #[test]
        fn arbitrary_content_ranges_never_panic(value in "\\PC{0,40}", body_len in any::<u64>()) {
            let _ = partial_span(Some(&value), body_len);
        }
    }

    #[test]
    fn a_span_of_every_byte_is_refused_without_panicking() {
        assert_eq!(
            partial_span(Some("bytes 0-18446744073709551615/18446744073709551615"), 0),
            None
        );
    }
}
