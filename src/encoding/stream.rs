//! Streaming encoders and bounded decoders: a body goes through piece by piece as it
//! arrives, and what each piece yields is handed on at once. An encoder holds no more
//! than its coding's window; a decoder stops with an error the moment its output would
//! pass a bound, so a small body that expands without end (a compression bomb) costs at
//! most the bound.

use std::io::Write;

use bytes::Bytes;
use flate2::write::{GzDecoder, GzEncoder};

use super::Coding;

/// Brotli's window: 4 MiB, as its command-line tool uses by default.
const BROTLI_WINDOW_LOG: u32 = 22;
/// The largest window a zstd body may demand of the decoder: 8 MiB, what RFC 8878 asks
/// HTTP decoders to support. A larger one is refused instead of allocated.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;
/// The brotli library's own staging buffer.
const BROTLI_BUFFER: usize = 16 * 1024;
/// For a body of unknown length, zstd's high levels would take a 4–8 MiB window and tables
/// of 16 MiB each (65 MiB for one body at level 15, measured). Capped here: a 2 MiB window
/// and 4 and 8 MiB tables, which lose nothing on web text. A body of known length gets
/// parameters fitted to its size by the library.
const ZSTD_CAPPED_FROM_LEVEL: u32 = 10;
const ZSTD_WINDOW_LOG: u32 = 21;
const ZSTD_HASH_LOG: u32 = 20;
const ZSTD_CHAIN_LOG: u32 = 21;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("the decoded body would pass {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the body is not valid {coding}: {reason}")]
    Corrupt { coding: Coding, reason: String },
}

/// An encoder for one body.
pub struct Encoder {
    coding: Coding,
    inner: Option<EncoderInner>,
}

enum EncoderInner {
    Gzip(GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    /// An encoder at `level`, clamped to what the coding takes, for a body of `length`
    /// bytes when it is known (it must then be exact: the encoder fails at the end of a
    /// body of another length).
    pub fn new(coding: Coding, level: u32, length: Option<u64>) -> std::io::Result<Encoder> {
        let levels = coding.levels();
        let level = level.clamp(*levels.start(), *levels.end());
        let inner = match coding {
            Coding::Gzip => {
                EncoderInner::Gzip(GzEncoder::new(Vec::new(), flate2::Compression::new(level)))
            }
            Coding::Brotli => EncoderInner::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                BROTLI_BUFFER,
                level,
                BROTLI_WINDOW_LOG,
            ))),
            Coding::Zstd => {
                // Levels are at most 19: the `as` cannot wrap.
                let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), level as i32)?;
                match length {
                    Some(length) => encoder.set_pledged_src_size(Some(length))?,
                    None if level >= ZSTD_CAPPED_FROM_LEVEL => {
                        use zstd::zstd_safe::CParameter;
                        encoder.window_log(ZSTD_WINDOW_LOG)?;
                        encoder.set_parameter(CParameter::HashLog(ZSTD_HASH_LOG))?;
                        encoder.set_parameter(CParameter::ChainLog(ZSTD_CHAIN_LOG))?;
                    }
                    None => {}
                }
                EncoderInner::Zstd(encoder)
            }
        };
        Ok(Encoder {
            coding,
            inner: Some(inner),
        })
    }

    pub fn coding(&self) -> Coding {
        self.coding
    }

    /// Takes in the next piece of the body; returns the encoded bytes ready so far (often
    /// none: encoders gather input to compress it well).
    pub fn encode(&mut self, input: &[u8]) -> std::io::Result<Bytes> {
        let Some(inner) = self.inner.as_mut() else {
            return Err(std::io::Error::other("the encoder has finished"));
        };
        let out = match inner {
            EncoderInner::Gzip(e) => {
                e.write_all(input)?;
                e.get_mut()
            }
            EncoderInner::Brotli(e) => {
                e.write_all(input)?;
                e.get_mut()
            }
            EncoderInner::Zstd(e) => {
                e.write_all(input)?;
                e.get_mut()
            }
        };
        Ok(Bytes::from(std::mem::take(out)))
    }

    /// Ends the body; returns the rest of the encoded bytes.
    pub fn finish(&mut self) -> std::io::Result<Bytes> {
        let out = match self.inner.take() {
            None => Vec::new(),
            Some(EncoderInner::Gzip(e)) => e.finish()?,
            Some(EncoderInner::Brotli(e)) => e.into_inner(),
            Some(EncoderInner::Zstd(e)) => e.finish()?,
        };
        Ok(Bytes::from(out))
    }
}

/// Where a decoder writes: refuses the write that would take it past `limit`.
struct BoundedSink {
    out: Vec<u8>,
    written: u64,
    limit: u64,
    over: bool,
}

impl Write for BoundedSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let total = self.written.saturating_add(buf.len() as u64);
        if total > self.limit {
            self.over = true;
            return Err(std::io::Error::other("decoded body over its bound"));
        }
        self.written = total;
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A decoder for one body, whose output may not pass a bound.
pub struct Decoder {
    coding: Coding,
    limit: u64,
    inner: DecoderInner,
    failed: bool,
}

enum DecoderInner {
    Gzip(GzDecoder<BoundedSink>),
    Brotli(Box<brotli::DecompressorWriter<BoundedSink>>),
    Zstd(zstd::stream::write::Decoder<'static, BoundedSink>),
}

impl DecoderInner {
    fn sink(&mut self) -> &mut BoundedSink {
        match self {
            DecoderInner::Gzip(d) => d.get_mut(),
            DecoderInner::Brotli(d) => d.get_mut(),
            DecoderInner::Zstd(d) => d.get_mut(),
        }
    }
}

impl Decoder {
    /// A decoder whose output stops at `limit` bytes in all.
    pub fn new(coding: Coding, limit: u64) -> std::io::Result<Decoder> {
        let sink = BoundedSink {
            out: Vec::new(),
            written: 0,
            limit,
            over: false,
        };
        let inner = match coding {
            Coding::Gzip => DecoderInner::Gzip(GzDecoder::new(sink)),
            Coding::Brotli => DecoderInner::Brotli(Box::new(brotli::DecompressorWriter::new(
                sink,
                BROTLI_BUFFER,
            ))),
            Coding::Zstd => {
                let mut decoder = zstd::stream::write::Decoder::new(sink)?;
                decoder.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
                DecoderInner::Zstd(decoder)
            }
        };
        Ok(Decoder {
            coding,
            limit,
            inner,
            failed: false,
        })
    }

    pub fn coding(&self) -> Coding {
        self.coding
    }

    /// Takes in the next piece of the encoded body; returns what it decodes to so far.
    pub fn decode(&mut self, input: &[u8]) -> Result<Bytes, DecodeError> {
        self.check_usable()?;
        let written = match &mut self.inner {
            DecoderInner::Gzip(d) => d.write_all(input),
            DecoderInner::Brotli(d) => d.write_all(input),
            DecoderInner::Zstd(d) => d.write_all(input),
        };
        self.take_output(written)
    }

    /// Ends the body: an error when it stopped short of a whole encoded stream.
    pub fn finish(&mut self) -> Result<Bytes, DecodeError> {
        self.check_usable()?;
        let finished = match &mut self.inner {
            DecoderInner::Gzip(d) => d.try_finish(),
            DecoderInner::Brotli(d) => d.close().map_err(std::io::Error::other),
            DecoderInner::Zstd(d) => d.do_finish(),
        };
        self.take_output(finished)
    }

    fn check_usable(&self) -> Result<(), DecodeError> {
        if self.failed {
            return Err(self.corrupt("the decoder failed before".to_string()));
        }
        Ok(())
    }

    fn take_output(&mut self, result: std::io::Result<()>) -> Result<Bytes, DecodeError> {
        let sink = self.inner.sink();
        let out = Bytes::from(std::mem::take(&mut sink.out));
        let over = sink.over;
        match result {
            Ok(()) => Ok(out),
            Err(_) if over => {
                self.failed = true;
                Err(DecodeError::TooLarge { limit: self.limit })
            }
            Err(e) => {
                self.failed = true;
                Err(self.corrupt(e.to_string()))
            }
        }
    }

    fn corrupt(&self, reason: String) -> DecodeError {
        DecodeError::Corrupt {
            coding: self.coding,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JSON-like text that compresses as a timeline does.
    fn timeline(len: usize) -> Vec<u8> {
        let mut text = Vec::with_capacity(len + 200);
        let mut n = 0u64;
        while text.len() < len {
            text.extend_from_slice(
                format!(
                    r#"{{"id":"{}","account":{{"acct":"user{}"}},"content":"<p>post number {}</p>"}},"#,
                    109_000_000_000 + n * 7919,
                    n % 97,
                    n
                )
                .as_bytes(),
            );
            n += 1;
        }
        text.truncate(len);
        text
    }

    fn encode_in_pieces(coding: Coding, level: u32, body: &[u8], piece: usize) -> Vec<u8> {
        let mut encoder = Encoder::new(coding, level, None).expect("encoder");
        let mut out = Vec::new();
        for chunk in body.chunks(piece) {
            out.extend_from_slice(&encoder.encode(chunk).expect("encode"));
        }
        out.extend_from_slice(&encoder.finish().expect("finish"));
        out
    }

    fn decode_in_pieces(
        coding: Coding,
        limit: u64,
        encoded: &[u8],
        piece: usize,
    ) -> Result<Vec<u8>, DecodeError> {
        let mut decoder = Decoder::new(coding, limit).expect("decoder");
        let mut out = Vec::new();
        for chunk in encoded.chunks(piece) {
            out.extend_from_slice(&decoder.decode(chunk)?);
        }
        out.extend_from_slice(&decoder.finish()?);
        Ok(out)
    }

    #[test]
    fn every_coding_round_trips_in_pieces_and_compresses_text() {
        let body = timeline(40 * 1024);
        for coding in Coding::ALL {
            for (level, piece) in [(1, 1000), (6, 4096), (*coding.levels().end(), 16 * 1024)] {
                let encoded = encode_in_pieces(coding, level, &body, piece);
                assert!(
                    encoded.len() * 4 < body.len(),
                    "{coding} level {level}: {} of {}",
                    encoded.len(),
                    body.len()
                );
                let decoded = decode_in_pieces(coding, 1 << 20, &encoded, 777).expect("decode");
                assert!(
                    decoded == body,
                    "{coding} level {level} does not round-trip"
                );
            }
        }
    }

    #[test]
    fn an_encoder_hands_output_on_before_the_body_ends() {
        let body = timeline(4 << 20);
        for coding in Coding::ALL {
            let mut encoder = Encoder::new(coding, 3, None).expect("encoder");
            let mut before_end = 0;
            for chunk in body.chunks(64 * 1024) {
                before_end += encoder.encode(chunk).expect("encode").len();
            }
            assert!(before_end > 0, "{coding} held the whole body");
            encoder.finish().expect("finish");
            assert!(
                encoder.encode(b"more").is_err(),
                "{coding} took input after its end"
            );
        }
    }

    #[test]
    fn a_known_length_fits_zstd_to_the_body_and_a_wrong_one_fails() {
        let body = timeline(300 * 1024);
        for level in [3, 15] {
            let mut exact =
                Encoder::new(Coding::Zstd, level, Some(body.len() as u64)).expect("encoder");
            let mut encoded = exact.encode(&body).expect("encode").to_vec();
            encoded.extend_from_slice(&exact.finish().expect("finish"));
            assert!(
                decode_in_pieces(Coding::Zstd, 1 << 20, &encoded, 4096).expect("decode") == body
            );
            let mut wrong =
                Encoder::new(Coding::Zstd, level, Some(body.len() as u64 + 1)).expect("encoder");
            wrong.encode(&body).expect("encode");
            assert!(
                wrong.finish().is_err(),
                "level {level}: a short body finished"
            );
        }
        // High levels without a length take the capped parameters and still round-trip.
        let capped = encode_in_pieces(Coding::Zstd, 15, &body, 10_000);
        assert!(decode_in_pieces(Coding::Zstd, 1 << 20, &capped, 4096).expect("decode") == body);
    }

    #[test]
    fn a_bomb_is_decoded_only_up_to_the_bound() {
        let zeros = vec![0u8; 8 << 20];
        for coding in Coding::ALL {
            let encoded = encode_in_pieces(coding, 6, &zeros, 1 << 20);
            assert!(encoded.len() < 64 * 1024, "{coding}: {}", encoded.len());
            let mut decoder = Decoder::new(coding, 1 << 20).expect("decoder");
            let mut decoded = 0usize;
            let mut error = None;
            for chunk in encoded.chunks(1024) {
                match decoder.decode(chunk) {
                    Ok(out) => decoded += out.len(),
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
            assert_eq!(
                error,
                Some(DecodeError::TooLarge { limit: 1 << 20 }),
                "{coding}"
            );
            assert!(decoded <= 1 << 20, "{coding} decoded {decoded}");
            // And it stays failed.
            assert!(decoder.decode(b"").is_err());
        }
        // Exactly at the bound is fine.
        let encoded = encode_in_pieces(Coding::Gzip, 6, &zeros[..1000], 1000);
        assert_eq!(
            decode_in_pieces(Coding::Gzip, 1000, &encoded, 100)
                .expect("at the bound")
                .len(),
            1000
        );
    }

    #[test]
    fn a_truncated_or_foreign_body_is_an_error_not_a_short_body() {
        let body = timeline(20_000);
        for coding in Coding::ALL {
            let encoded = encode_in_pieces(coding, 6, &body, 5000);
            let cut = &encoded[..encoded.len() / 2];
            assert!(
                matches!(
                    decode_in_pieces(coding, 1 << 20, cut, 500),
                    Err(DecodeError::Corrupt { .. })
                ),
                "{coding}: a truncated body decoded"
            );
            assert!(
                matches!(
                    decode_in_pieces(coding, 1 << 20, &body, 500),
                    Err(DecodeError::Corrupt { .. })
                ),
                "{coding}: plain text decoded"
            );
        }
    }
}
