//! Partial content kept on routes that store whole objects (RFC 9111 §3.3 and §3.4).
//!
//! A `206` from the core whose one `Content-Range` agrees with its length is stored as what
//! it is: a span of the representation. A later request for bytes inside the span is
//! answered from it; one that needs more treats it as a miss, and when the span is the
//! start of the object only the rest is asked for, so the two answers make the whole
//! object, which is then stored in its place. A `206` whose `Content-Range` disagrees with
//! its own length is never stored: its bytes cannot be placed.

use http::header;
use pingora::http::ResponseHeader;
use pingora::proxy::RangeType;

use super::slices::ContentRange;

/// A stored start of an object, on its way to being completed with the rest.
pub struct Completion {
    pub span: StoredSpan,
    /// The stored bytes, put before the rest's body.
    pub held: Option<bytes::Bytes>,
    /// The strong validator the rest must match (`If-Range`).
    pub validator: String,
}

/// The span of the representation a stored `206` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredSpan {
    /// The bytes held, as offsets into the representation.
    pub held: (u64, u64),
    /// The representation's whole length.
    pub total: u64,
}

impl StoredSpan {
    /// The span of a `206` that may be stored: one `Content-Range` with a known length,
    /// and a `Content-Length` equal to the span's.
    pub fn of(resp: &ResponseHeader) -> Option<StoredSpan> {
        if resp.status.as_u16() != 206 {
            return None;
        }
        let ContentRange::Span {
            first,
            last,
            total: Some(total),
        } = ContentRange::of(resp)?
        else {
            return None;
        };
        let length = crate::wire::content_length(&resp.headers)?;
        if resp.headers.get_all(header::CONTENT_RANGE).iter().count() != 1
            || last - first + 1 != length
        {
            return None;
        }
        Some(StoredSpan {
            held: (first, last + 1),
            total,
        })
    }

    /// Whether the span is the first bytes of the representation, so the rest can be asked
    /// for as `bytes=<end>-`.
    pub fn is_prefix(&self) -> bool {
        self.held.0 == 0
    }

    /// The `Range` that asks for what follows a prefix.
    pub fn rest_range(&self) -> String {
        format!("bytes={}-", self.held.1)
    }

    /// The header of the whole representation this span is a part of: what a range is
    /// judged against (validators included, for `If-Range`).
    pub fn whole_header(&self, stored: &ResponseHeader) -> Option<ResponseHeader> {
        let mut whole = stored.clone();
        whole.set_status(200).ok()?;
        whole.remove_header(&header::CONTENT_RANGE);
        whole
            .insert_header(header::CONTENT_LENGTH, self.total)
            .ok()?;
        Some(whole)
    }

    /// Whether the answer `range` (judged against [`Self::whole_header`]) can be cut from
    /// the span, and the range within the stored body that does it.
    pub fn answers(&self, range: &RangeType) -> Option<RangeType> {
        let (first, end) = self.held;
        match range {
            // Unsatisfiable: the length alone answers it.
            RangeType::Invalid => Some(RangeType::Invalid),
            RangeType::Single(r) => {
                let (start, stop) = (r.start as u64, r.end as u64);
                if start < first || stop > end {
                    return None;
                }
                let from = usize::try_from(start - first).ok()?;
                let to = usize::try_from(stop - first).ok()?;
                Some(RangeType::Single(from..to))
            }
            // The whole: only a span that is the whole answers it.
            RangeType::None => (first == 0 && end == self.total).then_some(RangeType::None),
            // Several parts, whose headers state offsets of the whole: not from a span.
            RangeType::Multi(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::RequestHeader;
    use pingora::proxy::range_header_filter;

    fn partial(range: &str, length: u64) -> ResponseHeader {
        let mut resp = ResponseHeader::build(206, None).expect("header");
        resp.insert_header(header::CONTENT_RANGE, range)
            .expect("range");
        resp.insert_header(header::CONTENT_LENGTH, length)
            .expect("length");
        resp.insert_header(header::ETAG, "\"v1\"").expect("etag");
        resp
    }

    fn judged(span: &StoredSpan, stored: &ResponseHeader, asked: &str) -> RangeType {
        let mut req = RequestHeader::build("GET", b"/", None).expect("request");
        req.insert_header(header::RANGE, asked).expect("range");
        let mut whole = span.whole_header(stored).expect("whole header");
        range_header_filter(&req, &mut whole, Some(200))
    }

    #[test]
    fn only_a_206_that_agrees_with_its_length_is_a_span() {
        let span = StoredSpan::of(&partial("bytes 0-4/10", 5)).expect("a span");
        assert_eq!(span.held, (0, 5));
        assert_eq!(span.total, 10);
        assert!(span.is_prefix());
        assert_eq!(span.rest_range(), "bytes=5-");
        // Five bytes said to be six: which five?
        assert_eq!(StoredSpan::of(&partial("bytes 4-9/10", 5)), None);
        assert_eq!(StoredSpan::of(&partial("bytes 4-9/*", 6)), None);
        let mut whole = partial("bytes 0-4/10", 5);
        whole.set_status(200).expect("status");
        assert_eq!(StoredSpan::of(&whole), None);
    }

    #[test]
    fn ranges_inside_the_span_are_cut_from_it_and_others_are_not() {
        let stored = partial("bytes 4-9/10", 6);
        let span = StoredSpan::of(&stored).expect("a span");
        let inside = judged(&span, &stored, "bytes=6-8");
        assert_eq!(span.answers(&inside), Some(RangeType::Single(2..5)));
        let suffix = judged(&span, &stored, "bytes=-1");
        assert_eq!(span.answers(&suffix), Some(RangeType::Single(5..6)));
        let open = judged(&span, &stored, "bytes=6-");
        assert_eq!(span.answers(&open), Some(RangeType::Single(2..6)));
        let before = judged(&span, &stored, "bytes=0-4");
        assert_eq!(span.answers(&before), None);
        let past = judged(&span, &stored, "bytes=20-");
        assert_eq!(span.answers(&past), Some(RangeType::Invalid));
        assert_eq!(span.answers(&RangeType::None), None);
    }
}
