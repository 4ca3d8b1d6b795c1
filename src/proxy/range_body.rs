//! The body of a range answer built from pieces of the object that arrive in order, each at
//! its own offset: the bytes a single range wants, or the parts of a
//! `multipart/byteranges` body with their part headers (RFC 9110 §14.6), framed exactly as
//! pingora counts its `Content-Length`.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use pingora::proxy::RangeType;

/// What a range answer sends of an object of known length.
pub(super) struct RangeBody {
    /// Ascending, disjoint, none empty.
    parts: Vec<Range<u64>>,
    multipart: Option<Multipart>,
    /// The first part not yet sent to its end.
    next_part: usize,
}

struct Multipart {
    boundary: String,
    content_type: Option<String>,
    total: u64,
}

impl RangeBody {
    /// The body for pingora's verdict on the request's `Range` over `total` bytes; `None`
    /// when it sends no body (a 416).
    pub(super) fn for_range(range: &RangeType, total: u64) -> Option<RangeBody> {
        let span = |r: &Range<usize>| r.start as u64..r.end as u64;
        let (parts, multipart): (Vec<Range<u64>>, _) = match range {
            RangeType::None => (std::iter::once(0..total).collect(), None),
            RangeType::Single(r) => (std::iter::once(span(r)).collect(), None),
            RangeType::Multi(info) => (
                info.ranges.iter().map(span).collect(),
                Some(Multipart {
                    boundary: info.boundary.clone(),
                    content_type: info.content_type.clone(),
                    total,
                }),
            ),
            RangeType::Invalid => return None,
        };
        let parts: Vec<Range<u64>> = parts.into_iter().filter(|p| !p.is_empty()).collect();
        Some(RangeBody {
            parts,
            multipart,
            next_part: 0,
        })
    }

    /// The byte spans of the object this body needs, ascending.
    pub(super) fn wanted(&self) -> &[Range<u64>] {
        &self.parts
    }

    /// Whether everything has been cut.
    pub(super) fn complete(&self) -> bool {
        self.next_part >= self.parts.len()
    }

    /// What goes out for `data`, which holds the object's bytes from offset `at` on; pieces
    /// must come in ascending order. `None` when nothing of it is wanted.
    pub(super) fn cut(&mut self, at: u64, data: &Bytes) -> Option<Bytes> {
        let end = at + data.len() as u64;
        let mut out: Option<BytesMut> = None;
        let mut single: Option<Bytes> = None;
        while let Some(part) = self.parts.get(self.next_part) {
            if part.start >= end {
                break;
            }
            let from = part.start.max(at);
            let to = part.end.min(end);
            if from < to {
                let piece = data.slice((from - at) as usize..(to - at) as usize);
                match &self.multipart {
                    None => single = Some(piece),
                    Some(multipart) => {
                        let out = out.get_or_insert_with(BytesMut::new);
                        if from == part.start {
                            out.extend_from_slice(multipart.part_header(part).as_bytes());
                        }
                        out.extend_from_slice(&piece);
                    }
                }
            }
            if part.end > end {
                break;
            }
            self.next_part += 1;
            if self.complete() {
                if let Some(multipart) = &self.multipart {
                    let out = out.get_or_insert_with(BytesMut::new);
                    out.extend_from_slice(format!("\r\n--{}--\r\n", multipart.boundary).as_bytes());
                }
            }
        }
        match self.multipart {
            None => single,
            Some(_) => out.map(BytesMut::freeze),
        }
    }
}

impl Multipart {
    fn part_header(&self, part: &Range<u64>) -> String {
        let content_type = self
            .content_type
            .as_ref()
            .map_or(String::new(), |ct| format!("Content-Type: {ct}\r\n"));
        format!(
            "\r\n--{}\r\n{content_type}Content-Range: bytes {}-{}/{}\r\n\r\n",
            self.boundary,
            part.start,
            part.end - 1,
            self.total
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::{RequestHeader, ResponseHeader};
    use pingora::proxy::range_header_filter;
    use proptest::prelude::*;

    fn object(len: u64) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// pingora's verdict and rewritten header for `range` over `len` bytes.
    fn verdict(range: &str, len: u64) -> (RangeType, ResponseHeader) {
        let mut req = RequestHeader::build("GET", b"/", None).expect("request");
        req.insert_header(http::header::RANGE, range)
            .expect("range");
        let mut resp = ResponseHeader::build(200, None).expect("response");
        resp.insert_header(http::header::CONTENT_LENGTH, len)
            .expect("length");
        resp.insert_header(http::header::CONTENT_TYPE, "video/mp4")
            .expect("type");
        let range = range_header_filter(&req, &mut resp, Some(200));
        (range, resp)
    }

    /// The body cut from the object fed in pieces of `piece` bytes.
    fn cut_in_pieces(body: &mut RangeBody, data: &[u8], piece: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, chunk) in data.chunks(piece).enumerate() {
            if let Some(bytes) = body.cut((i * piece) as u64, &Bytes::copy_from_slice(chunk)) {
                out.extend_from_slice(&bytes);
            }
        }
        out
    }

    #[test]
    fn a_single_range_is_cut_across_pieces() {
        let data = object(10_000);
        let (range, _) = verdict("bytes=1000-4999", 10_000);
        let mut body = RangeBody::for_range(&range, 10_000).expect("a body");
        assert_eq!(body.wanted(), std::slice::from_ref(&(1000..5000)));
        let out = cut_in_pieces(&mut body, &data, 777);
        assert_eq!(out, &data[1000..5000]);
        assert!(body.complete());
    }

    #[test]
    fn pieces_may_skip_what_no_part_wants() {
        let data = object(100);
        let (range, _) = verdict("bytes=0-9,90-99", 100);
        let mut body = RangeBody::for_range(&range, 100).expect("a body");
        let first = body.cut(0, &Bytes::copy_from_slice(&data[0..20]));
        let last = body.cut(80, &Bytes::copy_from_slice(&data[80..100]));
        let text = [first.expect("first part"), last.expect("last part")].concat();
        let text = String::from_utf8_lossy(&text);
        assert!(text.contains("Content-Range: bytes 0-9/100"));
        assert!(text.contains("Content-Range: bytes 90-99/100"));
        assert!(body.complete());
    }

    #[test]
    fn an_unsatisfiable_range_has_no_body() {
        let (range, resp) = verdict("bytes=500-", 100);
        assert_eq!(resp.status, 416);
        assert!(RangeBody::for_range(&range, 100).is_none());
    }

    proptest! {
        #[test]
        fn multipart_bodies_are_exactly_as_long_as_their_stated_length(
            len in 1u64..5_000,
            cuts in proptest::collection::vec((0u64..5_000, 1u64..400), 1..6),
            piece in 1usize..1_500,
        ) {
            let mut spec: Vec<(u64, u64)> = cuts.iter().map(|(a, n)| (a % len, (a % len + n).min(len) - 1)).collect();
            spec.sort();
            spec.dedup_by(|b, a| b.0 <= a.1 + 1);
            let header: Vec<String> = spec.iter().map(|(a, b)| format!("{a}-{b}")).collect();
            let (range, resp) = verdict(&format!("bytes={}", header.join(",")), len);
            let data = object(len);
            let mut body = RangeBody::for_range(&range, len).expect("a body");
            let out = cut_in_pieces(&mut body, &data, piece);
            let stated: usize = resp.headers.get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).expect("length");
            prop_assert_eq!(out.len(), stated);
            prop_assert!(body.complete());
            if spec.len() == 1 {
                let (a, b) = spec[0];
                prop_assert_eq!(&out[..], &data[a as usize..=b as usize]);
            }
        }
    }
}
