//! `compression:`: content codings the PoP applies to text the core sends unencoded.

use serde::Deserialize;

use crate::config::units::ByteSize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionFile {
    /// The codings the PoP produces, in its order of preference when a client accepts
    /// several equally (`zstd`, `br`, `gzip`); empty: nothing is compressed.
    pub codings: Vec<String>,
    /// Levels by coding: zstd 1–19, br 0–11, gzip 1–9. `stored`: for a response the cache
    /// keeps, compressed once and served many times, so worth a higher level; `passing`: for
    /// one that is not kept (a signed-in user's timeline), compressed for every request.
    pub levels: LevelsFile,
    /// Media types compressed (parameters such as `charset` ignored); `text/*` style
    /// wildcards are not taken, so an image type cannot slip in.
    pub types: Vec<String>,
    /// Responses stating a shorter `Content-Length` go as they are.
    pub min_length: ByteSize,
    /// Bodies compressed or decompressed at once; past it, a response goes as it came (and
    /// is not stored), so a burst cannot take every core.
    /// Each body being coded holds its coding's window and tables (up to about 16 MiB at
    /// the `stored` levels), so this bounds that memory too.
    pub max_concurrent: usize,
    /// A body the core sent encoded in a coding the client does not take is decoded for
    /// it, up to this many bytes; past it the response is cut off (a compression bomb).
    pub max_decoded_size: ByteSize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LevelsFile {
    pub stored: CodingLevelsFile,
    pub passing: CodingLevelsFile,
}

impl Default for LevelsFile {
    fn default() -> Self {
        LevelsFile {
            stored: CodingLevelsFile {
                zstd: 15,
                br: 8,
                gzip: 9,
            },
            passing: CodingLevelsFile {
                zstd: 3,
                br: 4,
                gzip: 5,
            },
        }
    }
}

/// A level for each coding.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodingLevelsFile {
    pub zstd: u32,
    pub br: u32,
    pub gzip: u32,
}

impl Default for CompressionFile {
    fn default() -> Self {
        CompressionFile {
            codings: ["zstd", "br", "gzip"].map(String::from).to_vec(),
            levels: LevelsFile::default(),
            // What Mastodon's own nginx config compresses (nginx adds text/html itself),
            // and the JSON dialects of federation and WebFinger.
            types: [
                "text/html",
                "text/plain",
                "text/css",
                "text/xml",
                "text/javascript",
                "application/javascript",
                "application/json",
                "application/xml",
                "application/xml+rss",
                "application/rss+xml",
                "application/atom+xml",
                "application/activity+json",
                "application/ld+json",
                "application/jrd+json",
                "application/xrd+xml",
                "application/manifest+json",
                "image/svg+xml",
                "image/x-icon",
            ]
            .map(String::from)
            .to_vec(),
            min_length: ByteSize(1024),
            max_concurrent: 16,
            max_decoded_size: ByteSize(64 * 1024 * 1024),
        }
    }
}
