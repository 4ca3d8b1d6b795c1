//! Validation of `compression:` (the codings, their levels, the types compressed and the
//! bounds on the work).

use super::Checker;
use crate::config::file;
use crate::config::model::{CodingLevels, Compression};
use crate::encoding::Coding;

pub(super) fn compression(check: &mut Checker, file: &file::CompressionFile) -> Compression {
    let mut codings = Vec::new();
    for (i, name) in file.codings.iter().enumerate() {
        let key = format!("compression.codings[{i}]");
        // Only the canonical names: `x-gzip` is a client's spelling, not a choice.
        let Some(coding) = Coding::ALL.into_iter().find(|c| c.as_str() == name) else {
            check.problem(&key, format!("{name:?} is not one of zstd, br, gzip"));
            continue;
        };
        if codings.iter().any(|(c, _)| *c == coding) {
            check.problem(&key, format!("{name} is listed twice"));
            continue;
        }
        let mut level_of = |set: &str, levels: &file::CodingLevelsFile| {
            let level = match coding {
                Coding::Zstd => levels.zstd,
                Coding::Brotli => levels.br,
                Coding::Gzip => levels.gzip,
            };
            let range = coding.levels();
            if !range.contains(&level) {
                check.problem(
                    &format!("compression.levels.{set}.{coding}"),
                    format!("must be between {} and {}", range.start(), range.end()),
                );
            }
            level
        };
        let levels = CodingLevels {
            stored: level_of("stored", &file.levels.stored),
            passing: level_of("passing", &file.levels.passing),
        };
        codings.push((coding, levels));
    }
    let mut types = Vec::new();
    for (i, media_type) in file.types.iter().enumerate() {
        let lower = media_type.trim().to_ascii_lowercase();
        let well_formed = lower.split_once('/').is_some_and(|(kind, sub)| {
            let token = |t: &str| {
                !t.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
            };
            token(kind) && token(sub)
        });
        if !well_formed {
            check.problem(
                &format!("compression.types[{i}]"),
                format!("{media_type:?} is not a media type such as application/json"),
            );
            continue;
        }
        types.push(lower);
    }
    if file.min_length.bytes() == 0 {
        check.problem(
            "compression.min_length",
            "must be at least 1 byte (an empty body has nothing to compress)",
        );
    }
    if file.max_concurrent == 0 {
        check.problem(
            "compression.max_concurrent",
            "must be at least 1 (turn compression off with codings: [])",
        );
    }
    if file.max_decoded_size.bytes() < 1024 * 1024 {
        check.problem("compression.max_decoded_size", "must be at least 1MiB");
    }
    Compression {
        codings,
        types,
        min_length: file.min_length.bytes(),
        max_concurrent: file.max_concurrent,
        max_decoded_size: file.max_decoded_size.bytes(),
    }
}
