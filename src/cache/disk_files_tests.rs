//! The meta file format and the directory scan of the disk tier.

use proptest::prelude::*;

use super::*;
use crate::cache::meta::tests::{same_meta, stored_meta};

fn record() -> impl Strategy<Value = MetaRecord> {
    let block = BLOCK_SIZE as u64;
    (0u64..block * 4)
        .prop_flat_map(|body_len| {
            let blocks = body_len.div_ceil(BLOCK_SIZE as u64).max(1) as usize;
            (
                Just(body_len),
                proptest::collection::vec(any::<u32>(), blocks),
            )
        })
        .prop_flat_map(|(body_len, crcs)| {
            (
                any::<u64>(),
                any::<[u8; 16]>(),
                any::<[u8; 16]>(),
                "\\PC{0,64}",
                Just(body_len),
                Just(crcs),
                (
                    stored_meta(),
                    proptest::collection::vec("[ -~]{1,40}", 0..MAX_TAGS),
                ),
            )
        })
        .prop_map(
            |(generation, primary, combined, url, body_len, crcs, (mut meta, tags))| {
                meta.tags = Tags::new(tags).expect("valid tags");
                MetaRecord {
                    generation,
                    primary,
                    combined,
                    url,
                    body_len,
                    crcs,
                    meta,
                }
            },
        )
}

/// `payload` behind a header that passes the magic, length and checksum checks, so
/// that what follows them is what gets exercised.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = META_MAGIC.to_vec();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

#[test]
fn a_meta_file_written_before_tags_takes_the_tags_its_fields_and_path_give() {
    let mut record = MetaRecord {
        generation: 3,
        primary: [1; 16],
        combined: [2; 16],
        url: "https://example.social/a".to_string(),
        body_len: 5,
        crcs: vec![9],
        meta: StoredMeta::bare(),
    };
    record.meta.tags = Tags::new(["post-1"]).expect("tag");
    let mut payload = Writer::default();
    payload.u64(record.generation);
    payload.bytes_fixed(&record.primary);
    payload.bytes_fixed(&record.combined);
    payload.bytes(record.url.as_bytes());
    payload.u64(record.body_len);
    payload.u32(BLOCK_SIZE as u32);
    payload.u32(1);
    payload.u32(9);
    record.meta.encode(&mut payload);
    let old = decode_meta_file(&framed(&payload.into_inner())).expect("decodes");
    assert!(old.meta.tags.is_empty());
    // An old file's stored fields and path still give its tags.
    record.url =
        "https://example.social/system/accounts/avatars/000/000/001/original/a.png".to_string();
    record
        .meta
        .header
        .insert_header("Surrogate-Key", "user-1")
        .expect("field");
    let mut payload = Writer::default();
    payload.u64(record.generation);
    payload.bytes_fixed(&record.primary);
    payload.bytes_fixed(&record.combined);
    payload.bytes(record.url.as_bytes());
    payload.u64(record.body_len);
    payload.u32(BLOCK_SIZE as u32);
    payload.u32(1);
    payload.u32(9);
    record.meta.encode(&mut payload);
    let old = decode_meta_file(&framed(&payload.into_inner())).expect("decodes");
    let tags: Vec<&str> = old.meta.tags.iter().collect();
    assert_eq!(tags, ["accounts:1", "user-1"]);
    let new = decode_meta_file(&encode_meta_file(&record)).expect("decodes");
    assert_eq!(new.meta.tags, record.meta.tags);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn any_record_decodes_to_itself(record in record()) {
        let back = decode_meta_file(&encode_meta_file(&record)).expect("decodes");
        prop_assert_eq!(back.generation, record.generation);
        prop_assert_eq!(back.primary, record.primary);
        prop_assert_eq!(back.combined, record.combined);
        prop_assert_eq!(&back.url, &record.url);
        prop_assert_eq!(back.body_len, record.body_len);
        prop_assert_eq!(&back.crcs, &record.crcs);
        prop_assert!(same_meta(&back.meta, &record.meta));
    }

    #[test]
    fn any_record_cut_anywhere_is_an_error(record in record()) {
        let bytes = encode_meta_file(&record);
        for cut in 0..bytes.len() {
            prop_assert!(decode_meta_file(&bytes[..cut]).is_err(), "cut at {}", cut);
        }
    }

    #[test]
    fn arbitrary_bytes_are_an_error_without_panicking(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        prop_assert!(decode_meta_file(&bytes).is_err());
    }

    #[test]
    fn an_arbitrary_payload_with_a_valid_checksum_never_panics(
        payload in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let _ = decode_meta_file(&framed(&payload));
    }

    #[test]
    fn entry_names_parse_back_to_what_was_formatted(
        primary in any::<[u8; 16]>(),
        combined in any::<[u8; 16]>(),
        generation in any::<u64>(),
        ext in "[a-z]{1,8}",
    ) {
        let name = format!(
            "{}-{}-{generation:016x}.{ext}",
            hex::encode(primary),
            hex::encode(combined)
        );
        prop_assert_eq!(
            parse_entry_name(&name),
            Some((primary, combined, generation, ext.as_str()))
        );
    }

    #[test]
    fn arbitrary_file_names_never_panic_the_name_parser(name in "\\PC{0,100}") {
        let _ = parse_entry_name(&name);
    }

    #[test]
    fn names_near_the_format_never_panic_the_name_parser(
        name in "[0-9a-fA-Fg.\\-]{0,90}",
    ) {
        let _ = parse_entry_name(&name);
    }
}

proptest! {
    // Each case writes a file.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn an_arbitrary_meta_file_on_disk_is_damage_never_a_panic(
        payload in proptest::collection::vec(any::<u8>(), 0..512),
        with_valid_frame in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("entry.meta");
        let bytes = if with_valid_frame { framed(&payload) } else { payload };
        std::fs::write(&path, &bytes).expect("write");
        match read_meta_file(&path) {
            Ok(_) => {}
            Err(problem) => prop_assert!(!problem.not_damage, "{}", problem.message),
        }
    }
}

#[test]
fn a_checksum_count_larger_than_the_record_is_refused_before_reading_it() {
    // A body of u32::MAX blocks makes the count consistent with the body length, so
    // only the bytes actually present can refuse it.
    let mut payload = Writer::default();
    payload.u64(1);
    payload.bytes_fixed(&[1; 16]);
    payload.bytes_fixed(&[2; 16]);
    payload.bytes(b"https://example.social/a.png");
    payload.u64(u64::from(u32::MAX) * BLOCK_SIZE as u64);
    payload.u32(BLOCK_SIZE as u32);
    payload.u32(u32::MAX);
    let error = decode_meta_file(&framed(&payload.into_inner()))
        .expect_err("a record without its checksums is refused");
    assert!(
        error.contains("do not fit"),
        "refused only when a read ran out: {error}"
    );
}

#[test]
fn entry_names_round_trip() {
    let name = format!(
        "{}-{}-{:016x}.meta",
        "ab".repeat(16),
        "cd".repeat(16),
        42u64
    );
    let (p, c, g, ext) = parse_entry_name(&name).expect("parses");
    assert_eq!(p, [0xab; 16]);
    assert_eq!(c, [0xcd; 16]);
    assert_eq!(g, 42);
    assert_eq!(ext, "meta");
    assert!(parse_entry_name("garbage.meta").is_none());
    assert!(parse_entry_name(&format!("{}-zz-1.meta", "ab".repeat(16))).is_none());
}

#[test]
fn meta_file_damage_is_detected() {
    let record = MetaRecord {
        generation: 7,
        primary: [1; 16],
        combined: [2; 16],
        url: "https://example.social/system/a.png".to_string(),
        body_len: 10,
        crcs: vec![123],
        meta: StoredMeta::bare(),
    };
    let bytes = encode_meta_file(&record);
    let back = decode_meta_file(&bytes).expect("decodes");
    assert_eq!(back.url, record.url);
    assert_eq!(back.crcs, vec![123]);
    for i in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[i] ^= 0x40;
        assert!(
            decode_meta_file(&damaged).is_err(),
            "flip at {i} went unnoticed"
        );
        assert!(decode_meta_file(&bytes[..i]).is_err());
    }
}
