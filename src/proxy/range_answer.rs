//! The range answer a request gets from a whole response, as pingora's range filter decides
//! it, with the corrections RFC 9110 asks for.

use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{range_header_filter, RangeType};

use super::{EdgeProxy, MAX_RANGES};
use crate::cache::policy;

impl EdgeProxy {
    /// The range answer to `req` from a whole response `resp` (rewritten to the answer's
    /// header), as pingora's range filter decides it, except where `If-Range` carries or
    /// meets a weak entity-tag: then the whole response is sent; and a zero-length suffix
    /// range (`-0`) is unsatisfiable, not an empty part.
    pub(super) fn judge_range(&self, req: &RequestHeader, resp: &mut ResponseHeader) -> RangeType {
        // No range of an empty representation is satisfiable (RFC 9110 §14.1.1); pingora
        // would answer a suffix with a part ending before it starts.
        if req.headers.contains_key(http::header::RANGE)
            && !policy::if_range_never_matches(req, resp)
            && crate::wire::content_length(&resp.headers) == Some(0)
        {
            let mut none = req.clone();
            if none.insert_header(http::header::RANGE, "bytes=").is_ok() {
                return range_header_filter(&none, resp, MAX_RANGES);
            }
        }
        if policy::if_range_never_matches(req, resp) {
            let mut whole = req.clone();
            let _ = whole.remove_header(&http::header::RANGE);
            return range_header_filter(&whole, resp, MAX_RANGES);
        }
        let satisfiable = req
            .headers
            .get(http::header::RANGE)
            .and_then(|range| policy::without_empty_suffixes(range.as_bytes()));
        if let Some(range) = satisfiable {
            let mut cleaned = req.clone();
            if cleaned.insert_header(http::header::RANGE, range).is_ok() {
                return range_header_filter(&cleaned, resp, MAX_RANGES);
            }
        }
        range_header_filter(req, resp, MAX_RANGES)
    }
}
