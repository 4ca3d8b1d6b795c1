//! Compression at the edge: text the core sends unencoded goes to the client in the best
//! coding it accepts, and is stored that way, one stored copy per coding.
//!
//! The coding is decided once per request from its `Accept-Encoding` (`plan_coding`). The
//! core is asked for that coding alone, and the stored variant is keyed by it (the cache's
//! `Vary: Accept-Encoding` selecting value is the coding, not the header as sent), so
//! `gzip, deflate, br` and `br;q=1, gzip;q=0.8` share a variant. The body is encoded on
//! its way into the cache (`upstream_response_body_filter` runs before the cache writes), so
//! a compressed hit costs no compression. A body the core encoded itself passes through;
//! for a client that takes none of the core's coding it is decoded, up to a bound.
//! Never coded: media routes (their bodies are copied into the object stores as they are),
//! websockets, `206`, `no-transform`, bodies below `min_length`, types not listed.

use bytes::Bytes;
use http::header;
use pingora::cache::RespCacheable;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;

use super::body_coding::{BodyWork, CodingPlan};
use super::context::RequestContext;
use super::EdgeProxy;
use crate::config::model::Compression;
use crate::encoding::{Acceptance, Coding, Decoder, Encoder};
use crate::metrics;

impl EdgeProxy {
    /// Decides the coding of this request's response, when the PoP may code it at all.
    pub(super) fn plan_coding(&self, session: &Session, ctx: &mut RequestContext) {
        let settings = self.settings(ctx);
        let compression = &settings.compression;
        let req = session.req_header();
        let applies = !compression.codings.is_empty()
            && ctx.route.compress()
            && ctx.route.media().is_none()
            && !req.headers.contains_key(header::UPGRADE)
            // A signed request (HTTP Signatures, RFC 9421) may have signed the
            // `Accept-Encoding` the PoP would replace.
            && !req.headers.contains_key("signature")
            && !req.headers.contains_key("signature-input");
        if !applies {
            return;
        }
        let acceptance = Acceptance::parse(
            req.headers
                .get_all(header::ACCEPT_ENCODING)
                .iter()
                .map(|v| v.as_bytes()),
        );
        ctx.coding_plan = Some(CodingPlan::new(
            acceptance.choose(compression.offered()),
            acceptance,
        ));
    }

    /// Asks the core for the planned coding alone, so what it sends fits the variant.
    pub(super) fn ask_core_for_coding(
        &self,
        upstream_request: &mut RequestHeader,
        ctx: &RequestContext,
    ) -> Result<()> {
        if let Some(plan) = &ctx.coding_plan {
            upstream_request.insert_header(header::ACCEPT_ENCODING, plan.variant())?;
        }
        Ok(())
    }

    /// Decides what happens to the body of the core's response, and says so in its header.
    pub(super) fn plan_body(
        &self,
        session: &Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestContext,
    ) {
        let Some(plan) = &ctx.coding_plan else {
            return;
        };
        if matches!(resp.status.as_u16(), 100..=199 | 204 | 206 | 304) {
            return;
        }
        let settings = self.settings(ctx);
        let compression = &settings.compression;
        // Every line of it: codings stacked over several lines are stacked all the same.
        let encoded: Vec<String> = resp
            .headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .map(|v| v.to_str().unwrap_or("?"))
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty() && !v.eq_ignore_ascii_case("identity"))
            .map(str::to_string)
            .collect();
        let encoded = match encoded.as_slice() {
            [] => None,
            [one] => Some(one.clone()),
            _ => Some("stacked".to_string()),
        };
        let length = crate::wire::content_length(&resp.headers);
        ctx.coded_from_length = length;
        let comes = !ctx.upstream_head && length != Some(0);
        let (work, storable) = match encoded {
            Some(token) => match Coding::from_token(&token) {
                // A coding the PoP neither makes nor undoes (stacked ones too) is the
                // resource's own, as an `.svgz` is: the same for every client, passed on
                // and stored as the core sent it.
                None => (None, true),
                Some(coding) => {
                    add_vary_accept_encoding(resp);
                    self.passed_or_decoded(plan, coding, comes, resp, compression)
                }
            },
            // The answer to a `HEAD` names a coding only when its stated length says the
            // body a `GET` gets would be compressed.
            None if compressible(resp, compression) && (comes || length.is_some()) => {
                // Compressed once for a response the cache keeps, so at the higher level.
                let kept = session.cache.enabled()
                    && matches!(self.keepable(resp, ctx), RespCacheable::Cacheable(_));
                let body = Body {
                    comes,
                    length,
                    kept,
                };
                add_vary_accept_encoding(resp);
                match plan.chosen {
                    None => (None, true),
                    Some(coding) => self.encoded(coding, body, resp, compression),
                }
            }
            None => (None, true),
        };
        ctx.body_work = work;
        if !storable {
            ctx.coding_not_storable = true;
        }
    }

    /// A body the core encoded: through as it is when the client takes its coding (stored
    /// only when it is the variant's), else decoded when a slot is free.
    fn passed_or_decoded(
        &self,
        plan: &CodingPlan,
        coding: Coding,
        comes: bool,
        resp: &mut ResponseHeader,
        compression: &Compression,
    ) -> (Option<BodyWork>, bool) {
        if plan.chosen == Some(coding) {
            return (None, true);
        }
        if plan.accepts(coding) {
            return (None, false);
        }
        let work = if comes {
            let Some(slot) = self
                .shared
                .coding_slots
                .passing
                .take(compression.max_concurrent)
            else {
                skipped("busy");
                return (None, false);
            };
            let Ok(decoder) = Decoder::new(coding, compression.max_decoded_size) else {
                return (None, false);
            };
            Some(BodyWork::decode(decoder, slot))
        } else {
            None
        };
        resp.remove_header(&header::CONTENT_ENCODING);
        resp.remove_header(&header::CONTENT_LENGTH);
        weaken_etag(resp);
        // Identity is the variant's coding only when the client asked for nothing else.
        (work, plan.chosen.is_none())
    }

    /// An unencoded body the client wants in `coding`.
    fn encoded(
        &self,
        coding: Coding,
        body: Body,
        resp: &mut ResponseHeader,
        compression: &Compression,
    ) -> (Option<BodyWork>, bool) {
        let level = compression
            .codings
            .iter()
            .find(|(c, _)| *c == coding)
            .map_or(1, |(_, levels)| {
                if body.kept {
                    levels.stored
                } else {
                    levels.passing
                }
            });
        let work = if !body.comes {
            // No body comes: the header says what a GET would get.
            None
        } else {
            // Fills draw on a pool of their own: clients that read slowly on responses
            // that pass cannot keep what the cache stores from being compressed.
            let pool = if body.kept {
                &self.shared.coding_slots.filling
            } else {
                &self.shared.coding_slots.passing
            };
            let Some(slot) = pool.take(compression.max_concurrent) else {
                skipped("busy");
                return (None, false);
            };
            let Ok(encoder) = Encoder::new(coding, level, body.length) else {
                return (None, false);
            };
            Some(BodyWork::encode(encoder, slot))
        };
        // Names and values are static: inserting cannot fail.
        let _ = resp.insert_header(header::CONTENT_ENCODING, coding.as_str());
        resp.remove_header(&header::CONTENT_LENGTH);
        weaken_etag(resp);
        (work, true)
    }

    /// Encodes or decodes the next piece of the body; the end finishes the coding.
    pub(super) fn code_body(
        &self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        let Some(work) = ctx.body_work.as_mut() else {
            return Ok(());
        };
        let input = body.take().unwrap_or_default();
        let result = work.code(&input, end_of_stream);
        let (operation, coding) = work.what();
        if end_of_stream || result.is_err() {
            ctx.body_work = None;
        }
        match result {
            Ok(out) => {
                *body = Some(out);
                Ok(())
            }
            Err(failure) => {
                skipped(failure.reason());
                Err(Error::explain(
                    ErrorType::Custom("coding failed"),
                    format!("{operation} {coding}: {failure}"),
                )
                .into_up())
            }
        }
    }
}

fn skipped(reason: &str) {
    metrics::get()
        .coding_skipped
        .with_label_values(&[reason])
        .inc();
}

/// What is known of the body of a response about to be encoded.
struct Body {
    /// A body follows (not the answer to a `HEAD`).
    comes: bool,
    /// Its length, when the core stated it.
    length: Option<u64>,
    /// The cache keeps it: compressed once, served many times.
    kept: bool,
}

/// Whether an unencoded response is one the PoP compresses: a listed type, long enough (or
/// of unknown length), and not `no-transform`.
fn compressible(resp: &ResponseHeader, compression: &Compression) -> bool {
    // Most answers are not of a listed type: that is decided first, on one field.
    let listed = resp
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim())
        .is_some_and(|media_type| {
            compression
                .types
                .iter()
                .any(|listed| listed.eq_ignore_ascii_case(media_type))
        });
    if !listed {
        return false;
    }
    let long_enough =
        crate::wire::content_length(&resp.headers).is_none_or(|len| len >= compression.min_length);
    let no_transform = || {
        resp.headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
    };
    // A digest of the content (RFC 9530, RFC 3230) would no longer match a coded body.
    let digested = || {
        ["content-digest", "repr-digest", "digest"]
            .iter()
            .any(|name| resp.headers.contains_key(*name))
    };
    long_enough && !no_transform() && !digested()
}

/// Adds `Accept-Encoding` to `Vary` unless it is there (or `Vary: *` says it all).
fn add_vary_accept_encoding(resp: &mut ResponseHeader) {
    let already = resp
        .headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|name| name == "*" || name.eq_ignore_ascii_case("accept-encoding"));
    if !already {
        let _ = resp.append_header(header::VARY, "Accept-Encoding");
    }
}

/// A strong `ETag` names the bytes of one representation: a coded body is other bytes, so
/// it gets the weak form (as nginx does), which still validates `If-None-Match`.
fn weaken_etag(resp: &mut ResponseHeader) {
    let Some(etag) = resp.headers.get(header::ETAG) else {
        return;
    };
    if etag.as_bytes().starts_with(b"W/") {
        return;
    }
    let mut weak = b"W/".to_vec();
    weak.extend_from_slice(etag.as_bytes());
    if let Ok(value) = http::HeaderValue::from_bytes(&weak) {
        let _ = resp.insert_header(header::ETAG, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::CodingLevels;

    fn response(headers: &[(&str, &str)]) -> ResponseHeader {
        let mut resp = ResponseHeader::build(200, None).expect("response");
        for (name, value) in headers {
            resp.append_header(name.to_string(), *value)
                .expect("header");
        }
        resp
    }

    fn compression() -> Compression {
        Compression {
            codings: vec![
                (
                    Coding::Zstd,
                    CodingLevels {
                        stored: 15,
                        passing: 3,
                    },
                ),
                (
                    Coding::Gzip,
                    CodingLevels {
                        stored: 9,
                        passing: 5,
                    },
                ),
            ],
            types: vec!["application/json".into(), "text/html".into()],
            min_length: 1024,
            max_concurrent: 2,
            max_decoded_size: 1 << 20,
        }
    }

    #[test]
    fn only_listed_long_enough_transformable_bodies_are_compressible() {
        let c = compression();
        assert!(compressible(
            &response(&[("Content-Type", "application/json; charset=utf-8")]),
            &c
        ));
        assert!(compressible(
            &response(&[("Content-Type", "Text/HTML"), ("Content-Length", "1024")]),
            &c
        ));
        assert!(!compressible(
            &response(&[("Content-Type", "text/html"), ("Content-Length", "1023")]),
            &c
        ));
        assert!(!compressible(
            &response(&[("Content-Type", "image/png")]),
            &c
        ));
        assert!(!compressible(&response(&[]), &c));
        assert!(!compressible(
            &response(&[
                ("Content-Type", "text/html"),
                ("Cache-Control", "public, No-Transform")
            ]),
            &c
        ));
    }

    #[test]
    fn vary_gains_accept_encoding_once() {
        let mut resp = response(&[("Vary", "Accept-Language")]);
        add_vary_accept_encoding(&mut resp);
        add_vary_accept_encoding(&mut resp);
        let vary: Vec<_> = resp.headers.get_all("vary").iter().collect();
        assert_eq!(vary, ["Accept-Language", "Accept-Encoding"]);
        let mut star = response(&[("Vary", "*")]);
        add_vary_accept_encoding(&mut star);
        assert_eq!(star.headers.get_all("vary").iter().count(), 1);
    }

    #[test]
    fn a_strong_etag_is_weakened_and_a_weak_one_kept() {
        let mut strong = response(&[("ETag", "\"abc\"")]);
        weaken_etag(&mut strong);
        assert_eq!(strong.headers["etag"], "W/\"abc\"");
        let mut weak = response(&[("ETag", "W/\"abc\"")]);
        weaken_etag(&mut weak);
        assert_eq!(weak.headers["etag"], "W/\"abc\"");
    }
}
