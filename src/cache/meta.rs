//! What the cache keeps about an object besides its body, in a form both tiers share.
//!
//! pingora's `CacheMeta` is not `Clone` and its own serialization compresses the header
//! with zstd, which would cost every memory hit a decompression. `StoredMeta` keeps the
//! same facts as plain fields: the memory tier hands out a rebuilt `CacheMeta` per hit,
//! and the disk tier writes it in a binary format of our own, so an upgrade of pingora
//! cannot silently change what is on disk.

use std::time::{SystemTime, UNIX_EPOCH};

use pingora::cache::key::HashBinary;
use pingora::cache::CacheMeta;
use pingora::http::ResponseHeader;

use super::codec::{Reader, Writer};
use super::tags::Tags;

/// The freshness facts and the response header of one stored object.
#[derive(Debug, Clone)]
pub struct StoredMeta {
    pub created: SystemTime,
    /// When the object was last validated (equals `created` until a 304 refreshes it).
    pub updated: SystemTime,
    pub fresh_until: SystemTime,
    pub stale_while_revalidate_sec: u32,
    pub stale_if_error_sec: u32,
    pub variance: Option<HashBinary>,
    pub header: ResponseHeader,
    /// pingora's own encoding of the freshness facts, kept when the object's provenance
    /// differs from its creation time (after a refresh). pingora sets provenance only
    /// through its decoder, and Vary variants are checked against it: rebuilding without
    /// it would make every variant stored before the refresh look outdated.
    pub pingora_internal: Option<Vec<u8>>,
    /// What a purge by tag finds it under. They arrive with the meta pingora stores (in its
    /// extensions, where the proxy puts them) and are not handed back in `to_cache_meta`:
    /// every meta pingora stores again was made anew by the proxy, tags included.
    pub tags: Tags,
}

/// pingora's encoding of an empty response header, to decode `pingora_internal` against.
static EMPTY_HEADER: std::sync::LazyLock<Option<Vec<u8>>> = std::sync::LazyLock::new(|| {
    let header = ResponseHeader::build(200, None).ok()?;
    let meta = CacheMeta::new(UNIX_EPOCH, UNIX_EPOCH, 0, 0, header);
    meta.serialize().ok().map(|(_, header)| header)
});

impl StoredMeta {
    pub fn from_cache_meta(meta: &CacheMeta) -> Self {
        StoredMeta {
            created: meta.created(),
            // `epoch` is `updated` unless an override moved it; both mean "age counts from".
            updated: meta.epoch(),
            fresh_until: meta.fresh_until(),
            stale_while_revalidate_sec: meta.stale_while_revalidate_sec(),
            stale_if_error_sec: meta.stale_if_error_sec(),
            variance: meta.variance(),
            header: meta.response_header_copy(),
            pingora_internal: (meta.provenance() != meta.created())
                .then(|| meta.serialize().ok().map(|(internal, _)| internal))
                .flatten(),
            tags: meta.extensions().get::<Tags>().cloned().unwrap_or_default(),
        }
    }

    pub fn to_cache_meta(&self) -> CacheMeta {
        if let (Some(internal), Some(empty)) = (&self.pingora_internal, EMPTY_HEADER.as_ref()) {
            if let Ok(mut meta) = CacheMeta::deserialize(internal, empty) {
                *meta.response_header_mut() = self.header.clone();
                return meta;
            }
        }
        let mut meta = CacheMeta::new(
            self.fresh_until,
            self.created,
            self.stale_while_revalidate_sec,
            self.stale_if_error_sec,
            self.header.clone(),
        );
        if self.updated != self.created {
            meta.set_epoch_override(self.updated);
        }
        if let Some(variance) = self.variance {
            meta.set_variance(variance);
        }
        meta
    }

    /// A 200 with no headers, stored at the epoch.
    #[cfg(test)]
    pub fn bare() -> Self {
        StoredMeta {
            created: UNIX_EPOCH,
            updated: UNIX_EPOCH,
            fresh_until: UNIX_EPOCH,
            stale_while_revalidate_sec: 0,
            stale_if_error_sec: 0,
            variance: None,
            header: ResponseHeader::build(200, None).expect("status"),
            pingora_internal: None,
            tags: Tags::default(),
        }
    }

    /// The body length the response header promises, if it states one.
    pub fn content_length(&self) -> Option<u64> {
        crate::wire::content_length(&self.header.headers)
    }

    /// Bytes this meta takes in memory, roughly: what the memory tier charges for it.
    pub fn weight(&self) -> usize {
        let headers: usize = self
            .header
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 32)
            .sum();
        headers + self.tags.weight() + 128
    }

    pub fn encode(&self, out: &mut Writer) {
        out.time(self.created);
        out.time(self.updated);
        out.time(self.fresh_until);
        out.u32(self.stale_while_revalidate_sec);
        out.u32(self.stale_if_error_sec);
        match &self.variance {
            Some(v) => {
                out.u8(1);
                out.bytes_fixed(v);
            }
            None => out.u8(0),
        }
        match &self.pingora_internal {
            Some(internal) => {
                out.u8(1);
                out.bytes(internal);
            }
            None => out.u8(0),
        }
        out.u16(self.header.status.as_u16());
        let count = u32::try_from(self.header.headers.len()).unwrap_or(u32::MAX);
        out.u32(count);
        for (name, value) in self.header.headers.iter().take(count as usize) {
            out.bytes(name.as_str().as_bytes());
            out.bytes(value.as_bytes());
        }
    }

    pub fn decode(input: &mut Reader) -> Result<Self, String> {
        let created = input.time()?;
        let updated = input.time()?;
        let fresh_until = input.time()?;
        let stale_while_revalidate_sec = input.u32()?;
        let stale_if_error_sec = input.u32()?;
        let variance = match input.u8()? {
            0 => None,
            1 => Some(input.array::<16>()?),
            other => return Err(format!("bad variance flag {other}")),
        };
        let pingora_internal = match input.u8()? {
            0 => None,
            1 => Some(input.bytes()?.to_vec()),
            other => return Err(format!("bad internal-meta flag {other}")),
        };
        let status = input.u16()?;
        let count = input.u32()? as usize;
        let mut header = ResponseHeader::build(status, Some(count.min(256)))
            .map_err(|e| format!("bad status {status}: {e}"))?;
        for _ in 0..count {
            let name = input.bytes()?;
            let value = input.bytes()?;
            let name = http::header::HeaderName::from_bytes(name)
                .map_err(|e| format!("bad header name: {e}"))?;
            let value = http::header::HeaderValue::from_bytes(value)
                .map_err(|e| format!("bad header value: {e}"))?;
            header
                .append_header(name, value)
                .map_err(|e| format!("header: {e}"))?;
        }
        Ok(StoredMeta {
            created,
            updated,
            fresh_until,
            stale_while_revalidate_sec,
            stale_if_error_sec,
            variance,
            header,
            pingora_internal,
            // Kept after the meta in the disk tier's file (see `disk_files`).
            tags: Tags::default(),
        })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn time() -> impl Strategy<Value = SystemTime> {
        (0u64..1 << 40, 0u32..1_000_000_000).prop_map(|(s, n)| UNIX_EPOCH + Duration::new(s, n))
    }

    fn response_header() -> impl Strategy<Value = ResponseHeader> {
        let field = ("[a-z][a-z0-9-]{0,15}", "[ -~]{0,32}");
        (100u16..1000, proptest::collection::vec(field, 0..8)).prop_map(|(status, fields)| {
            let mut header = ResponseHeader::build(status, None).expect("status in range");
            for (name, value) in fields {
                let name = http::header::HeaderName::from_bytes(name.as_bytes()).expect("token");
                let value = http::header::HeaderValue::from_str(&value).expect("visible ASCII");
                header.append_header(name, value).expect("header");
            }
            header
        })
    }

    /// Any meta the cache may store.
    pub(in crate::cache) fn stored_meta() -> impl Strategy<Value = StoredMeta> {
        (
            (time(), time(), time()),
            (any::<u32>(), any::<u32>()),
            any::<Option<[u8; 16]>>(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            response_header(),
        )
            .prop_map(
                |((created, updated, fresh_until), (swr, sie), variance, internal, header)| {
                    StoredMeta {
                        created,
                        updated,
                        fresh_until,
                        stale_while_revalidate_sec: swr,
                        stale_if_error_sec: sie,
                        variance,
                        header,
                        pingora_internal: internal,
                        tags: Tags::default(),
                    }
                },
            )
    }

    fn fields(header: &ResponseHeader) -> Vec<(String, Vec<u8>)> {
        header
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
            .collect()
    }

    /// Every field of `a` and `b` is equal (`StoredMeta` has no `PartialEq`: pingora's
    /// header type does not).
    pub(in crate::cache) fn same_meta(a: &StoredMeta, b: &StoredMeta) -> bool {
        a.created == b.created
            && a.updated == b.updated
            && a.fresh_until == b.fresh_until
            && a.stale_while_revalidate_sec == b.stale_while_revalidate_sec
            && a.stale_if_error_sec == b.stale_if_error_sec
            && a.variance == b.variance
            && a.pingora_internal == b.pingora_internal
            && a.tags == b.tags
            && a.header.status == b.header.status
            && fields(&a.header) == fields(&b.header)
    }

    fn encoded(meta: &StoredMeta) -> Vec<u8> {
        let mut out = Writer::default();
        meta.encode(&mut out);
        out.into_inner()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_meta_decodes_to_itself(meta in stored_meta()) {
            let bytes = encoded(&meta);
            let mut input = Reader::new(&bytes);
            let back = StoredMeta::decode(&mut input).expect("decodes");
            prop_assert!(same_meta(&back, &meta), "{:?} came back as {:?}", meta, back);
            prop_assert_eq!(input.remaining(), 0);
        }

        #[test]
        fn any_meta_cut_anywhere_is_an_error(meta in stored_meta()) {
            let bytes = encoded(&meta);
            for cut in 0..bytes.len() {
                prop_assert!(StoredMeta::decode(&mut Reader::new(&bytes[..cut])).is_err());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoder_or_the_rebuild(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            if let Ok(meta) = StoredMeta::decode(&mut Reader::new(&bytes)) {
                let _ = meta.to_cache_meta();
            }
        }

        #[test]
        fn a_damaged_byte_never_panics_the_decoder_or_the_rebuild(
            meta in stored_meta(),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let mut bytes = encoded(&meta);
            let at = at.index(bytes.len());
            bytes[at] ^= flip;
            if let Ok(meta) = StoredMeta::decode(&mut Reader::new(&bytes)) {
                let _ = meta.to_cache_meta();
            }
        }
    }

    #[test]
    fn a_header_count_past_the_end_is_an_error() {
        let mut bytes = encoded(&StoredMeta::bare());
        let count_at = bytes.len() - 4;
        bytes[count_at..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(StoredMeta::decode(&mut Reader::new(&bytes)).is_err());
    }

    #[test]
    fn round_trips_through_bytes_and_cache_meta() {
        let mut header = ResponseHeader::build(200, None).expect("status");
        header
            .append_header("Content-Type", "image/png")
            .expect("header");
        header.append_header("Vary", "Accept").expect("header");
        header.append_header("Vary", "Cookie").expect("header");
        let created = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let meta = StoredMeta {
            created,
            updated: created + Duration::from_secs(30),
            fresh_until: created + Duration::from_secs(90),
            stale_while_revalidate_sec: 30,
            stale_if_error_sec: 86400,
            variance: Some([7; 16]),
            header,
            pingora_internal: None,
            tags: Tags::default(),
        };
        let mut out = Writer::default();
        meta.encode(&mut out);
        let bytes = out.into_inner();
        let back = StoredMeta::decode(&mut Reader::new(&bytes)).expect("decodes");
        assert_eq!(back.created, meta.created);
        assert_eq!(back.updated, meta.updated);
        assert_eq!(back.fresh_until, meta.fresh_until);
        assert_eq!(back.variance, Some([7; 16]));
        let varies: Vec<_> = back.header.headers.get_all("vary").iter().collect();
        assert_eq!(varies.len(), 2);

        let rebuilt = back.to_cache_meta();
        assert_eq!(rebuilt.created(), created);
        assert_eq!(rebuilt.epoch(), created + Duration::from_secs(30));
        assert_eq!(rebuilt.fresh_sec(), 60);
        assert_eq!(rebuilt.variance(), Some([7; 16]));
        let again = StoredMeta::from_cache_meta(&rebuilt);
        assert_eq!(again.updated, meta.updated);
    }

    #[test]
    fn truncated_input_is_an_error() {
        let mut out = Writer::default();
        StoredMeta::bare().encode(&mut out);
        let bytes = out.into_inner();
        for cut in 0..bytes.len() {
            assert!(StoredMeta::decode(&mut Reader::new(&bytes[..cut])).is_err());
        }
    }
}
