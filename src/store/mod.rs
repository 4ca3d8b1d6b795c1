//! Where media lives: S3-compatible object stores, local (or NFS) directories and old
//! servers reached over HTTP, with their registry ([`places::Places`]) and the guard that
//! protects each from overload ([`guard::Guard`]).
//!
//! Every place answers the same [`Source`] questions (does it have this key, and its bytes),
//! so the media chain in `crate::origin` can try them in order without knowing which is which.
//! Object stores also take writes ([`ObjectStore`]): write-through and `edgecache migrate`
//! copy what they found elsewhere into them, never overwriting an object that is already
//! there. Keys are checked once, in [`ObjectKey`], before any of them sees one.

pub mod directory;
pub mod guard;
pub mod http;
pub mod key;
pub mod places;
pub mod s3;
pub mod tombstones;

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

pub use key::{KeyError, ObjectKey};
pub use tombstones::Tombstones;

/// A body as it arrives; an error ends it early (the object must then not be trusted whole).
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// What a place says about one object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObjectInfo {
    /// The whole object's length.
    pub len: u64,
    pub content_type: Option<String>,
    pub etag: Option<String>,
    /// As an HTTP date.
    pub last_modified: Option<String>,
}

/// A single byte range, inclusive at both ends, already checked against nothing: the
/// place that answers clamps it to the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `first-last` or `first-`.
    From { first: u64, last: Option<u64> },
    /// The last `n` bytes.
    Suffix(u64),
}

impl ByteRange {
    /// The value of a `Range` header asking for this range.
    pub fn header_value(&self) -> String {
        match self {
            ByteRange::From {
                first,
                last: Some(last),
            } => format!("bytes={first}-{last}"),
            ByteRange::From { first, last: None } => format!("bytes={first}-"),
            ByteRange::Suffix(n) => format!("bytes=-{n}"),
        }
    }

    /// The first and last byte this range covers in an object of `len` bytes, or `None`
    /// when it covers none.
    pub fn resolve(&self, len: u64) -> Option<(u64, u64)> {
        match *self {
            ByteRange::From { first, last } => {
                if first >= len {
                    return None;
                }
                let last = last.map_or(len - 1, |l| l.min(len - 1));
                (last >= first).then_some((first, last))
            }
            ByteRange::Suffix(0) => None,
            ByteRange::Suffix(n) => (len > 0).then(|| (len.saturating_sub(n), len - 1)),
        }
    }
}

/// A `Content-Range` value: `bytes first-last/len` gives the span and the whole length,
/// `bytes */len` (with a 416) the length only.
pub fn parse_content_range(value: &str) -> Option<(Option<(u64, u64)>, u64)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (span, len) = rest.split_once('/')?;
    let len = len.trim().parse().ok()?;
    if span.trim() == "*" {
        return Some((None, len));
    }
    let (first, last) = span.split_once('-')?;
    Some((
        Some((first.trim().parse().ok()?, last.trim().parse().ok()?)),
        len,
    ))
}

/// An object found: what is known of it and its bytes (all of them, or the requested range).
pub struct Found {
    pub info: ObjectInfo,
    /// `Some((first, last))` when only that range of the object follows.
    pub range: Option<(u64, u64)>,
    /// `None` for a HEAD.
    pub body: Option<BodyStream>,
}

impl Found {
    /// How many bytes `body` carries.
    pub fn body_len(&self) -> u64 {
        match self.range {
            Some((first, last)) => last - first + 1,
            None => self.info.len,
        }
    }
}

/// A requested range the object does not cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsatisfiable {
    pub len: u64,
}

/// The answer of one place.
pub enum Lookup {
    Found(Found),
    Absent,
    RangeNotSatisfiable(Unsatisfiable),
}

/// How a write went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Stored,
    /// The store already had an object under the key; it was left as it was.
    AlreadyPresent,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{store}: timed out after {seconds:.1}s")]
    Timeout { store: String, seconds: f64 },
    #[error("{store}: {message}")]
    Unavailable { store: String, message: String },
    #[error("{store}: access denied ({message}); check the credentials and bucket policy")]
    Denied { store: String, message: String },
    #[error("{store}: {message}")]
    Io {
        store: String,
        message: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{store}: upload of {key} did not verify: {message}")]
    Verification {
        store: String,
        key: String,
        message: String,
    },
    #[error("{store}: refused: too many requests in flight or failing (circuit open)")]
    Shed { store: String },
}

impl StoreError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout { .. } => "timeout",
            StoreError::Unavailable { .. } => "unavailable",
            StoreError::Denied { .. } => "denied",
            StoreError::Io { .. } => "io",
            StoreError::Verification { .. } => "verification",
            StoreError::Shed { .. } => "shed",
        }
    }
}

/// A place media can be read from.
#[async_trait]
pub trait Source: Send + Sync {
    /// The name the config gives it.
    fn name(&self) -> &str;

    /// The object under `key` (a HEAD when `with_body` is false), or the `range` of it.
    async fn get(
        &self,
        key: &ObjectKey,
        range: Option<ByteRange>,
        with_body: bool,
    ) -> Result<Lookup, StoreError>;
}

/// A place media can also be written to.
#[async_trait]
pub trait ObjectStore: Source {
    /// Whether the store can be used at all: the bucket exists and the credentials are
    /// accepted, or the directory is there.
    async fn check(&self) -> Result<(), StoreError>;

    /// What the store has under `key`, without its body.
    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectInfo>, StoreError>;

    /// Stores the body in `body` (`info.len` bytes) under `key` unless an object is
    /// already there. `md5` is the body's MD5 digest, used to verify what the store
    /// received.
    async fn put_file(
        &self,
        key: &ObjectKey,
        body: &BodyFile,
        info: &ObjectInfo,
        md5: [u8; 16],
    ) -> Result<PutOutcome, StoreError>;
}

/// A body in a local file: the file's bytes from `offset` on. A body spooled for a copy
/// starts at 0; one the cache keeps starts after the cache's own file header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyFile {
    pub path: PathBuf,
    pub offset: u64,
}

impl BodyFile {
    /// The whole file is the body.
    pub fn whole(path: &Path) -> BodyFile {
        BodyFile {
            path: path.to_path_buf(),
            offset: 0,
        }
    }
}

/// A configured place, by what it can do.
#[derive(Clone)]
pub enum Place {
    Store(Arc<dyn ObjectStore>),
    Legacy(Arc<dyn Source>),
}

impl Place {
    pub fn source(&self) -> &dyn Source {
        match self {
            Place::Store(store) => store.as_ref(),
            Place::Legacy(source) => source.as_ref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{parse_content_range, ByteRange, Found, ObjectInfo};

    fn any_range() -> impl Strategy<Value = ByteRange> {
        prop_oneof![
            (any::<u64>(), any::<Option<u64>>())
                .prop_map(|(first, last)| ByteRange::From { first, last }),
            any::<u64>().prop_map(ByteRange::Suffix),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn content_ranges_parse_back_to_what_was_written(
            first in any::<u64>(),
            last in any::<u64>(),
            len in any::<u64>(),
        ) {
            prop_assert_eq!(
                parse_content_range(&format!("bytes {first}-{last}/{len}")),
                Some((Some((first, last)), len))
            );
            prop_assert_eq!(parse_content_range(&format!("bytes */{len}")), Some((None, len)));
        }

        #[test]
        fn arbitrary_content_ranges_never_panic(value in "\\PC{0,60}") {
            let _ = parse_content_range(&value);
        }

        #[test]
        fn content_ranges_near_the_format_never_panic(value in "(bytes )?[0-9*/ -]{0,50}") {
            let _ = parse_content_range(&value);
        }

        #[test]
        fn a_resolved_range_lies_inside_the_object(range in any_range(), len in any::<u64>()) {
            if let Some((first, last)) = range.resolve(len) {
                prop_assert!(first <= last && last < len, "{:?} of {} gave {}-{}", range, len, first, last);
                let found = Found {
                    info: ObjectInfo { len, ..Default::default() },
                    range: Some((first, last)),
                    body: None,
                };
                prop_assert!(found.body_len() <= len);
            }
        }
    }

    #[test]
    fn content_ranges_parse() {
        assert_eq!(
            parse_content_range("bytes 0-9/100"),
            Some((Some((0, 9)), 100))
        );
        assert_eq!(parse_content_range("bytes */100"), Some((None, 100)));
        assert_eq!(parse_content_range("items 0-9/100"), None);
        assert_eq!(parse_content_range("bytes 0-9/*"), None);
    }

    #[test]
    fn ranges_resolve_against_the_object_length() {
        let from = |first, last| ByteRange::From { first, last };
        assert_eq!(from(0, Some(9)).resolve(100), Some((0, 9)));
        assert_eq!(from(90, Some(200)).resolve(100), Some((90, 99)));
        assert_eq!(from(90, None).resolve(100), Some((90, 99)));
        assert_eq!(from(100, None).resolve(100), None);
        assert_eq!(from(5, Some(4)).resolve(100), None);
        assert_eq!(ByteRange::Suffix(10).resolve(100), Some((90, 99)));
        assert_eq!(ByteRange::Suffix(500).resolve(100), Some((0, 99)));
        assert_eq!(ByteRange::Suffix(0).resolve(100), None);
        assert_eq!(ByteRange::Suffix(5).resolve(0), None);
    }
}
