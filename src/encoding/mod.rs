//! Content codings at the edge (RFC 9110 §8.4, §12.5.3): which coding a client's
//! `Accept-Encoding` lets the PoP send, and the streaming encoders and bounded decoders
//! for `zstd`, `br` and `gzip`. A leaf: it knows bytes and header values, nothing of the
//! proxy or the cache, which decide when a body is encoded and where it is kept.

mod negotiate;
mod stream;

pub use negotiate::{negotiate, Acceptance};
pub use stream::{DecodeError, Decoder, Encoder};

/// A content coding the PoP can produce and undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Coding {
    Zstd,
    Brotli,
    Gzip,
}

impl Coding {
    /// Every coding, in the order the PoP prefers them when a client accepts several
    /// equally: the smallest output first.
    pub const ALL: [Coding; 3] = [Coding::Zstd, Coding::Brotli, Coding::Gzip];

    /// The coding's name in `Content-Encoding` and `Accept-Encoding`.
    pub fn as_str(self) -> &'static str {
        match self {
            Coding::Zstd => "zstd",
            Coding::Brotli => "br",
            Coding::Gzip => "gzip",
        }
    }

    /// The coding a `Content-Encoding` or `Accept-Encoding` token names, in any case;
    /// `x-gzip` is `gzip` (RFC 9110 §8.4.1.3).
    pub fn from_token(token: &str) -> Option<Coding> {
        let token = token.trim();
        if token.eq_ignore_ascii_case("zstd") {
            Some(Coding::Zstd)
        } else if token.eq_ignore_ascii_case("br") {
            Some(Coding::Brotli)
        } else if token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip") {
            Some(Coding::Gzip)
        } else {
            None
        }
    }

    /// The levels each coding's library takes.
    pub fn levels(self) -> std::ops::RangeInclusive<u32> {
        match self {
            Coding::Zstd => 1..=19,
            Coding::Brotli => 0..=11,
            Coding::Gzip => 1..=9,
        }
    }
}

impl std::fmt::Display for Coding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
