//! Large objects kept as aligned slices: the arithmetic and the checks, without I/O.
//!
//! On a route that slices, an object is fetched and stored in parts of one size (`size`
//! bytes, the last one shorter): slice `k` holds bytes `k·size ..= (k+1)·size − 1`. Each slice
//! is an ordinary cache entry, a variant of the object's URL (so a purge of the URL removes
//! them all), stored as the `206` the core or the media origin answered to the slice's
//! `Range`. A request for a range needs only the slices that range covers.
//!
//! Slices fetched at different times must be of one representation: [`SliceHead`] is what
//! each slice's answer says of the whole object, and two slices go together only when it
//! is the same.

use http::header;
use pingora::cache::key::HashBinary;
use pingora::cache::VarianceBuilder;
use pingora::http::ResponseHeader;

/// What one slice request is for: slice `index` of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceOrder {
    pub index: u64,
    pub size: u64,
}

/// The index of the slice that holds byte `offset`.
pub fn slice_of(offset: u64, size: u64) -> u64 {
    offset / size.max(1)
}

/// The first byte of slice `index`.
pub fn slice_start(index: u64, size: u64) -> u64 {
    index.saturating_mul(size)
}

/// The `Range` a slice is fetched with: its bytes, the last one possibly past the end of
/// the object (a server answers with what there is).
pub fn slice_range_header(index: u64, size: u64) -> String {
    let first = slice_start(index, size);
    let last = first.saturating_add(size.saturating_sub(1));
    format!("bytes={first}-{last}")
}

/// How many slices an object of `total` bytes has.
pub fn slice_count(total: u64, size: u64) -> u64 {
    total.div_ceil(size.max(1))
}

/// The cache variance of slice `index` at `size`: under the URL's primary key, so purging
/// the URL purges every slice, and apart for each size, so a changed size never reads a
/// slice cut another way.
pub fn slice_variance(index: u64, size: u64) -> HashBinary {
    let mut variance = VarianceBuilder::new();
    let value = format!("{size}:{index}");
    variance.add_value("edgecache-slice", &value);
    // A builder with a value always finishes with a hash.
    variance.finalize().unwrap_or_default()
}

/// A `Content-Range` field value (RFC 9110 §14.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentRange {
    /// `bytes first-last/total`, `total` `None` for `*`.
    Span {
        first: u64,
        last: u64,
        total: Option<u64>,
    },
    /// `bytes */total`: no range of the `total` bytes was satisfiable.
    Unsatisfied { total: u64 },
}

impl ContentRange {
    /// Parses a `Content-Range` value; `None` when it is not one a server may send.
    pub fn parse(value: &[u8]) -> Option<ContentRange> {
        let value = std::str::from_utf8(value).ok()?.trim();
        let (unit, rest) = value.split_once(' ')?;
        if !unit.eq_ignore_ascii_case("bytes") {
            return None;
        }
        let (span, total) = rest.trim_start().split_once('/')?;
        if span == "*" {
            return Some(ContentRange::Unsatisfied {
                total: digits(total)?,
            });
        }
        let (first, last) = span.split_once('-')?;
        let (first, last) = (digits(first)?, digits(last)?);
        let total = match total {
            "*" => None,
            total => Some(digits(total)?),
        };
        if first > last || total.is_some_and(|t| last >= t) {
            return None;
        }
        Some(ContentRange::Span { first, last, total })
    }

    /// The `Content-Range` of `resp`, when it has one that parses.
    pub fn of(resp: &ResponseHeader) -> Option<ContentRange> {
        ContentRange::parse(resp.headers.get(header::CONTENT_RANGE)?.as_bytes())
    }
}

/// A run of ASCII digits as a number (no sign, no spaces: `u64::from_str` takes a `+`).
fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Whether a `206` whose `Content-Range` is `range` holds exactly slice `index` of `size`:
/// it starts where the slice starts and runs to its end or the object's.
pub fn holds_slice(range: ContentRange, index: u64, size: u64) -> bool {
    let ContentRange::Span {
        first,
        last,
        total: Some(total),
    } = range
    else {
        return false;
    };
    let start = slice_start(index, size);
    let end = start.saturating_add(size).min(total);
    first == start && last.checked_add(1) == Some(end)
}

/// The first byte a `Range` field value asks for, when every range in it names its first
/// byte; `None` for a suffix range (which needs the length) and for what does not parse.
pub fn first_wanted_offset(range: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(range).ok()?;
    let (unit, set) = text.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    let mut first_wanted: Option<u64> = None;
    for spec in set.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (first, _) = spec.split_once('-')?;
        let first = digits(first.trim())?;
        first_wanted = Some(first_wanted.map_or(first, |f| f.min(first)));
    }
    first_wanted
}

/// What a slice's answer says of the whole object: its length and validators. Slices go
/// together only when theirs are equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceHead {
    pub total: u64,
    etag: Option<Vec<u8>>,
    last_modified: Option<Vec<u8>>,
}

impl SliceHead {
    /// Reads it from a slice's answer, of `total` bytes in all.
    pub fn of(resp: &ResponseHeader, total: u64) -> SliceHead {
        let field = |name| {
            resp.headers
                .get(name)
                .map(|v: &http::HeaderValue| v.as_bytes().to_vec())
        };
        SliceHead {
            total,
            etag: field(header::ETAG),
            last_modified: field(header::LAST_MODIFIED),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn with_range(value: &str) -> ResponseHeader {
        let mut resp = ResponseHeader::build(206, None).expect("header");
        resp.insert_header(header::CONTENT_RANGE, value)
            .expect("value");
        resp
    }

    #[test]
    fn content_ranges_parse_as_servers_send_them() {
        let span = |first, last, total| ContentRange::Span { first, last, total };
        assert_eq!(
            ContentRange::parse(b"bytes 0-9/10"),
            Some(span(0, 9, Some(10)))
        );
        assert_eq!(ContentRange::parse(b"bytes 5-5/*"), Some(span(5, 5, None)));
        assert_eq!(
            ContentRange::parse(b"bytes */42"),
            Some(ContentRange::Unsatisfied { total: 42 })
        );
        for bad in [
            "bytes 9-0/10",
            "bytes 0-10/10",
            "items 0-1/2",
            "bytes 0-1",
            "bytes +0-1/2",
            "bytes -1-2/3",
            "bytes 0-1/",
            "",
            "bytes 0-99999999999999999999/1",
        ] {
            assert_eq!(ContentRange::parse(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn a_slice_answer_must_start_and_end_where_the_slice_does() {
        let range = |v: &str| ContentRange::of(&with_range(v)).expect("parses");
        assert!(holds_slice(range("bytes 0-1023/4000"), 0, 1024));
        assert!(holds_slice(range("bytes 3072-3999/4000"), 3, 1024));
        assert!(holds_slice(range("bytes 0-9/10"), 0, 1024));
        // Short of the slice's end while the object goes on, or past it.
        assert!(!holds_slice(range("bytes 0-511/4000"), 0, 1024));
        assert!(!holds_slice(range("bytes 0-2047/4000"), 0, 1024));
        assert!(!holds_slice(range("bytes 1024-2047/4000"), 0, 1024));
        assert!(!holds_slice(range("bytes 0-1023/*"), 0, 1024));
    }

    #[test]
    fn the_first_wanted_byte_is_the_lowest_first_position() {
        assert_eq!(first_wanted_offset(b"bytes=0-1"), Some(0));
        assert_eq!(first_wanted_offset(b"bytes=5000000-"), Some(5_000_000));
        assert_eq!(first_wanted_offset(b"bytes=900-999, 100-199"), Some(100));
        assert_eq!(first_wanted_offset(b"BYTES = 7-8"), Some(7));
        assert_eq!(first_wanted_offset(b"bytes=-500"), None);
        assert_eq!(first_wanted_offset(b"bytes=100-199,-5"), None);
        assert_eq!(first_wanted_offset(b"items=0-1"), None);
        assert_eq!(first_wanted_offset(b"bytes=x-1"), None);
    }

    #[test]
    fn slices_of_different_sizes_or_places_are_different_variants() {
        assert_ne!(slice_variance(0, 1024), slice_variance(1, 1024));
        assert_ne!(slice_variance(1, 1024), slice_variance(1, 2048));
        assert_eq!(slice_variance(3, 1024), slice_variance(3, 1024));
    }

    #[test]
    fn a_slice_head_compares_length_and_validators() {
        let mut a = with_range("bytes 0-9/10");
        a.insert_header(header::ETAG, "\"v1\"").expect("etag");
        let mut b = a.clone();
        assert_eq!(SliceHead::of(&a, 10), SliceHead::of(&b, 10));
        assert_ne!(SliceHead::of(&a, 10), SliceHead::of(&b, 11));
        b.insert_header(header::ETAG, "\"v2\"").expect("etag");
        assert_ne!(SliceHead::of(&a, 10), SliceHead::of(&b, 10));
        b.remove_header(&header::ETAG);
        assert_ne!(SliceHead::of(&a, 10), SliceHead::of(&b, 10));
    }

    proptest! {
        #[test]
        fn every_byte_is_in_exactly_the_slice_the_arithmetic_names(
            offset in 0u64..1 << 40,
            size in 1u64..1 << 26,
        ) {
            let index = slice_of(offset, size);
            let start = slice_start(index, size);
            prop_assert!(start <= offset && offset < start + size);
            let header = slice_range_header(index, size);
            prop_assert_eq!(header, format!("bytes={}-{}", start, start + size - 1));
        }

        #[test]
        fn a_fetched_slice_holds_its_own_bytes(
            total in 1u64..1 << 40,
            size in 1u64..1 << 26,
            pick in any::<u64>(),
        ) {
            let count = slice_count(total, size);
            let index = pick % count;
            let first = slice_start(index, size);
            let last = (first + size).min(total) - 1;
            let range = ContentRange::Span { first, last, total: Some(total) };
            prop_assert!(holds_slice(range, index, size));
            prop_assert!(slice_start(count - 1, size) < total);
        }

        #[test]
        fn any_content_range_text_parses_or_not_without_panic(value in "\\PC{0,40}") {
            let _ = ContentRange::parse(value.as_bytes());
            let _ = first_wanted_offset(value.as_bytes());
        }
    }
}
