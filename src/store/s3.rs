//! An S3-compatible object store (AWS S3, DigitalOcean Spaces, Linode, Garage, MinIO) on
//! `aws-sdk-s3`, with SigV4-signed requests so private buckets work.
//!
//! The SDK's HTTP client is built on rustls with ring, the crypto provider pingora uses;
//! its default features would bring a second TLS stack. Checksums are Content-MD5, which
//! every S3-compatible server checks, rather than the SDK's newer trailing checksums that
//! some of them refuse.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTimeFormat};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption};
use aws_smithy_http_client::tls;
use aws_smithy_types::byte_stream::Length;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use md5::{Digest, Md5};

use super::{
    parse_content_range, BodyFile, BodyStream, ByteRange, Found, Lookup, ObjectInfo, ObjectKey,
    ObjectStore, PutOutcome, Source, StoreError, Unsatisfiable,
};
use crate::config::model::S3Settings;

pub struct S3Store {
    name: String,
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    timeout: Duration,
    multipart_threshold: u64,
    part_size: u64,
    conditional_put: bool,
}

impl S3Store {
    pub fn new(settings: &S3Settings) -> S3Store {
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let credentials = Credentials::new(
            settings.credentials.access_key_id.clone(),
            settings.credentials.secret_access_key.expose().to_string(),
            None,
            None,
            "edgecache-config",
        );
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .endpoint_url(settings.endpoint.clone())
            .force_path_style(settings.path_style)
            .credentials_provider(credentials)
            .http_client(http_client)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            // Reads and heads are bounded by `timeout` around the call; an upload's response
            // head comes only after its whole body, so uploads have no read timeout and rely
            // on the SDK's stalled-stream protection instead.
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(settings.timeout)
                    .build(),
            )
            // The chain moves on to the next place and write-through has its own retries
            // with backoff; the SDK retrying as well would only multiply the wait.
            .retry_config(RetryConfig::standard().with_max_attempts(1))
            .build();
        S3Store {
            name: settings.name.clone(),
            client: aws_sdk_s3::Client::from_conf(config),
            bucket: settings.bucket.clone(),
            prefix: settings.prefix.clone(),
            timeout: settings.timeout,
            multipart_threshold: settings.multipart_threshold,
            part_size: settings.part_size,
            conditional_put: settings.conditional_put,
        }
    }

    fn object_name(&self, key: &ObjectKey) -> String {
        format!("{}{}", self.prefix, key.as_str())
    }

    /// Bounds a request that returns before any body streams.
    async fn bounded<T, E>(
        &self,
        request: impl std::future::Future<Output = Result<T, SdkError<E>>>,
    ) -> Result<Result<T, SdkError<E>>, StoreError> {
        tokio::time::timeout(self.timeout, request)
            .await
            .map_err(|_| StoreError::Timeout {
                store: self.name.clone(),
                seconds: self.timeout.as_secs_f64(),
            })
    }

    fn error<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        operation: &str,
        error: &SdkError<E>,
    ) -> StoreError {
        let status = status_of(error);
        let code = error.code().unwrap_or("");
        let message = match error {
            SdkError::ServiceError(service) => format!(
                "{operation}: HTTP {} {code} {}",
                service.raw().status().as_u16(),
                service.err().message().unwrap_or("")
            ),
            other => format!("{operation}: {}", error_chain(other)),
        };
        match status {
            Some(401 | 403) => StoreError::Denied {
                store: self.name.clone(),
                message,
            },
            _ => StoreError::Unavailable {
                store: self.name.clone(),
                message,
            },
        }
    }

    async fn put_whole(
        &self,
        object: &str,
        file: &BodyFile,
        info: &ObjectInfo,
        md5: [u8; 16],
    ) -> Result<PutOutcome, StoreError> {
        let body = ByteStream::read_from()
            .path(&file.path)
            .offset(file.offset)
            .length(Length::Exact(info.len))
            .build()
            .await
            .map_err(|e| self.local_error(e))?;
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(object)
            .body(body)
            .content_length(i64::try_from(info.len).unwrap_or(i64::MAX))
            .content_md5(aws_smithy_types::base64::encode(md5));
        if let Some(content_type) = &info.content_type {
            request = request.content_type(content_type);
        }
        if self.conditional_put {
            request = request.if_none_match("*");
        }
        match request.send().await {
            Ok(output) => {
                let opaque = opaque_etag(
                    output.server_side_encryption(),
                    output.sse_customer_algorithm(),
                );
                self.check_etag(object, output.e_tag(), &hex::encode(md5), opaque)?;
                Ok(PutOutcome::Stored)
            }
            Err(e) if status_of(&e) == Some(412) => Ok(PutOutcome::AlreadyPresent),
            Err(e) => Err(self.error("PutObject", &e)),
        }
    }

    async fn put_multipart(
        &self,
        object: &str,
        file: &BodyFile,
        info: &ObjectInfo,
    ) -> Result<PutOutcome, StoreError> {
        let mut create = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(object);
        if let Some(content_type) = &info.content_type {
            create = create.content_type(content_type);
        }
        let created = create
            .send()
            .await
            .map_err(|e| self.error("CreateMultipartUpload", &e))?;
        let Some(upload_id) = created.upload_id().map(str::to_string) else {
            return Err(StoreError::Unavailable {
                store: self.name.clone(),
                message: "CreateMultipartUpload returned no upload id".to_string(),
            });
        };
        // Nothing partial may stay behind, whatever went wrong, even when this task is
        // cancelled half-way (a shutdown): the guard aborts the upload unless it completed.
        let mut guard = AbortUpload {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            object: object.to_string(),
            upload_id: upload_id.clone(),
            armed: true,
        };
        let result = self.upload_parts(object, file, info, &upload_id).await;
        guard.armed = !matches!(result, Ok(PutOutcome::Stored));
        result
    }

    async fn upload_parts(
        &self,
        object: &str,
        file: &BodyFile,
        info: &ObjectInfo,
        upload_id: &str,
    ) -> Result<PutOutcome, StoreError> {
        let mut parts = Vec::new();
        let mut part_digests = Vec::new();
        let mut offset = 0u64;
        let mut number = 1i32;
        while offset < info.len {
            let length = self.part_size.min(info.len - offset);
            let digest = md5_of_span(&file.path, file.offset + offset, length)
                .await
                .map_err(|e| self.local_error(e))?;
            let body = ByteStream::read_from()
                .path(&file.path)
                .offset(file.offset + offset)
                .length(Length::Exact(length))
                .build()
                .await
                .map_err(|e| self.local_error(e))?;
            let uploaded = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(object)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(i64::try_from(length).unwrap_or(i64::MAX))
                .content_md5(aws_smithy_types::base64::encode(digest))
                .body(body)
                .send()
                .await
                .map_err(|e| self.error("UploadPart", &e))?;
            let opaque = opaque_etag(
                uploaded.server_side_encryption(),
                uploaded.sse_customer_algorithm(),
            );
            self.check_etag(object, uploaded.e_tag(), &hex::encode(digest), opaque)?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(uploaded.e_tag().map(str::to_string))
                    .build(),
            );
            part_digests.extend_from_slice(&digest);
            offset += length;
            number += 1;
        }
        let mut complete = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(object)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            );
        if self.conditional_put {
            complete = complete.if_none_match("*");
        }
        match complete.send().await {
            Ok(output) => {
                let expected =
                    format!("{}-{}", hex::encode(Md5::digest(&part_digests)), number - 1);
                let opaque = opaque_etag(output.server_side_encryption(), None);
                self.check_etag(object, output.e_tag(), &expected, opaque)?;
                Ok(PutOutcome::Stored)
            }
            Err(e) if status_of(&e) == Some(412) => Ok(PutOutcome::AlreadyPresent),
            Err(e) => Err(self.error("CompleteMultipartUpload", &e)),
        }
    }

    /// An ETag in S3's own form (the MD5 in hex, or MD5-of-MD5s and a part count) must be
    /// the one we computed; other stores' ETags, and S3's under KMS or customer-key
    /// encryption, are opaque and only the length is checked.
    fn check_etag(
        &self,
        object: &str,
        etag: Option<&str>,
        expected: &str,
        opaque: bool,
    ) -> Result<(), StoreError> {
        let Some(etag) = etag.map(|e| e.trim_matches('"').to_ascii_lowercase()) else {
            return Ok(());
        };
        if opaque {
            return Ok(());
        }
        let digest_part = etag.split('-').next().unwrap_or("");
        let in_s3_form =
            digest_part.len() == 32 && digest_part.bytes().all(|b| b.is_ascii_hexdigit());
        if in_s3_form && etag != expected {
            return Err(StoreError::Verification {
                store: self.name.clone(),
                key: object.to_string(),
                message: format!("ETag {etag}, expected {expected}"),
            });
        }
        Ok(())
    }

    fn local_error(&self, error: impl std::fmt::Display) -> StoreError {
        let message = format!("reading the local copy: {error}");
        StoreError::Io {
            store: self.name.clone(),
            source: std::io::Error::other(message.clone()),
            message,
        }
    }
}

/// Aborts a multipart upload when dropped armed.
struct AbortUpload {
    client: aws_sdk_s3::Client,
    bucket: String,
    object: String,
    upload_id: String,
    armed: bool,
}

impl Drop for AbortUpload {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let abort = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.object)
            .upload_id(&self.upload_id);
        runtime.spawn(async move {
            let _ = abort.send().await;
        });
    }
}

/// Whether S3 encrypted the object in a way that makes its ETag something else than MD5.
fn opaque_etag(sse: Option<&ServerSideEncryption>, customer_key: Option<&str>) -> bool {
    customer_key.is_some()
        || matches!(
            sse,
            Some(ServerSideEncryption::AwsKms | ServerSideEncryption::AwsKmsDsse)
        )
}

fn status_of<E>(error: &SdkError<E>) -> Option<u16> {
    error.raw_response().map(|r| r.status().as_u16())
}

/// An error with its causes, which the SDK's `Display` leaves out.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn md5_of_span(file: &Path, offset: u64, length: u64) -> std::io::Result<[u8; 16]> {
    use std::io::{Read, Seek, SeekFrom};
    let path = file.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut hasher = Md5::new();
        let mut left = length;
        let mut buf = vec![0u8; 64 * 1024];
        while left > 0 {
            let want = usize::try_from(left).unwrap_or(buf.len()).min(buf.len());
            let n = file.read(&mut buf[..want])?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file is shorter than its part list",
                ));
            }
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        Ok(hasher.finalize().into())
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The whole length and the span of a GetObject answer of `body_len` bytes: the range its
/// `Content-Range` starts, or else the whole object; `None` for a range that would end past
/// the largest length.
fn span_of(content_range: Option<&str>, body_len: u64) -> Option<(u64, Option<(u64, u64)>)> {
    let partial = content_range
        .and_then(parse_content_range)
        .and_then(|(span, total)| Some((span?.0, total)));
    match partial {
        Some((first, total)) if body_len > 0 => {
            let last = first.checked_add(body_len - 1)?;
            Some((total, Some((first, last))))
        }
        _ => Some((body_len, None)),
    }
}

fn http_date(date: &aws_smithy_types::DateTime) -> Option<String> {
    date.fmt(DateTimeFormat::HttpDate).ok()
}

fn body_of(stream: ByteStream) -> BodyStream {
    Box::pin(futures_util::stream::unfold(
        stream,
        |mut stream| async move {
            match stream.next().await? {
                Ok(bytes) => Some((Ok(bytes), stream)),
                Err(e) => Some((Err(std::io::Error::other(e)), stream)),
            }
        },
    ))
}

#[async_trait]
impl Source for S3Store {
    fn name(&self) -> &str {
        &self.name
    }

    async fn get(
        &self,
        key: &ObjectKey,
        range: Option<ByteRange>,
        with_body: bool,
    ) -> Result<Lookup, StoreError> {
        let object = self.object_name(key);
        if !with_body {
            return Ok(match self.head(key).await? {
                Some(info) => Lookup::Found(Found {
                    info,
                    range: None,
                    body: None,
                }),
                None => Lookup::Absent,
            });
        }
        let mut request = self.client.get_object().bucket(&self.bucket).key(&object);
        if let Some(range) = range {
            request = request.range(range.header_value());
        }
        let output = match self.bounded(request.send()).await? {
            Ok(output) => output,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                return Ok(Lookup::Absent)
            }
            Err(e) if status_of(&e) == Some(416) => {
                let len = self.head(key).await?.map_or(0, |info| info.len);
                return Ok(Lookup::RangeNotSatisfiable(Unsatisfiable { len }));
            }
            Err(e) => return Err(self.error("GetObject", &e)),
        };
        let body_len = output
            .content_length()
            .and_then(|l| u64::try_from(l).ok())
            .unwrap_or(0);
        let Some((len, span)) = span_of(output.content_range(), body_len) else {
            return Err(StoreError::Unavailable {
                store: self.name.clone(),
                message: format!(
                    "GetObject {object}: a range of {body_len} bytes cannot start at {:?}",
                    output.content_range().unwrap_or_default()
                ),
            });
        };
        let info = ObjectInfo {
            len,
            content_type: output.content_type().map(str::to_string),
            etag: output.e_tag().map(str::to_string),
            last_modified: output.last_modified().and_then(http_date),
        };
        Ok(Lookup::Found(Found {
            info,
            range: span,
            body: Some(body_of(output.body)),
        }))
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn check(&self) -> Result<(), StoreError> {
        let request = self.client.head_bucket().bucket(&self.bucket).send();
        match self.bounded(request).await? {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Err(StoreError::Unavailable {
                store: self.name.clone(),
                message: format!("there is no bucket {:?}", self.bucket),
            }),
            Err(e) => Err(self.error("HeadBucket", &e)),
        }
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectInfo>, StoreError> {
        let request = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.object_name(key))
            .send();
        match self.bounded(request).await? {
            Ok(output) => Ok(Some(ObjectInfo {
                len: output
                    .content_length()
                    .and_then(|l| u64::try_from(l).ok())
                    .unwrap_or(0),
                content_type: output.content_type().map(str::to_string),
                etag: output.e_tag().map(str::to_string),
                last_modified: output.last_modified().and_then(http_date),
            })),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.error("HeadObject", &e)),
        }
    }

    async fn put_file(
        &self,
        key: &ObjectKey,
        file: &BodyFile,
        info: &ObjectInfo,
        md5: [u8; 16],
    ) -> Result<PutOutcome, StoreError> {
        // Looking first spares the upload, and keeps stores that ignore `If-None-Match`
        // from being overwritten except in a race between two writers of the same bytes.
        if self.head(key).await?.is_some() {
            return Ok(PutOutcome::AlreadyPresent);
        }
        let object = self.object_name(key);
        let uploaded = if info.len > self.multipart_threshold {
            self.put_multipart(&object, file, info).await
        } else {
            self.put_whole(&object, file, info, md5).await
        };
        let checked = match uploaded {
            Ok(PutOutcome::Stored) => match self.head(key).await? {
                Some(stored) if stored.len == info.len => Ok(PutOutcome::Stored),
                Some(stored) => Err(StoreError::Verification {
                    store: self.name.clone(),
                    key: object.clone(),
                    message: format!("{} bytes stored, {} expected", stored.len, info.len),
                }),
                None => Err(StoreError::Verification {
                    store: self.name.clone(),
                    key: object.clone(),
                    message: "the object is not there after the upload".to_string(),
                }),
            },
            other => other,
        };
        if let Err(StoreError::Verification { .. }) = &checked {
            // What the store took is not what was sent: take it out again, or the next
            // attempt would find it "already there".
            if let Err(e) = self
                .client
                .delete_object()
                .bucket(&self.bucket)
                .key(&object)
                .send()
                .await
            {
                tracing::error!(store = %self.name, key = %object, error = %self.error("DeleteObject", &e), "cannot remove an upload that did not verify");
            }
        }
        checked
    }
}

#[cfg(test)]
#[path = "s3_tests.rs"]
mod tests;
