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
        let Some(body_len) = crate::proxy::headers::content_length(resp.headers()) else {
            return Err(self.unavailable(format!("GET {url}: no Content-Length")));
        };
        let (len, span) = if status == StatusCode::PARTIAL_CONTENT {
            match header(&resp, http::header::CONTENT_RANGE).and_then(parse_content_range) {
                Some((Some((first, last)), len))
                    if last >= first && last - first + 1 == body_len =>
                {
                    (len, Some((first, last)))
                }
                _ => {
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
