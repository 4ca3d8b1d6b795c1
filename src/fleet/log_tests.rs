//! Unit tests of `log`, kept beside it so the code reads on its own.

use proptest::prelude::*;

use super::*;
use crate::fleet::PurgeKind;

fn purge(n: u64) -> Purge {
    Purge {
        id: format!("{n:015}-test"),
        kind: PurgeKind::Url,
        value: format!("https://media.example/system/{n}.png"),
        origin: "fra".to_string(),
        // Every other entry says its media was deleted, so both forms round trip.
        deleted: n.is_multiple_of(2),
        host: None,
    }
}

#[test]
fn a_reader_that_takes_no_tag_purges_gets_the_others_and_a_full_page_when_more_follow() {
    let dir = tempfile::tempdir().expect("dir");
    let log = PurgeLog::open(dir.path(), 100_000).expect("open");
    for n in 1..=10 {
        let mut purge = purge(n);
        if n <= 6 {
            purge.kind = PurgeKind::Tag;
            purge.deleted = false;
        }
        assert!(log.append(&purge).expect("append"));
    }
    let page = log.read_after(0, 3, false).expect("read");
    let seqs: Vec<u64> = page.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![7, 8, 9]);
    assert_eq!(page.head, 10);
    let page = log.read_after(9, 3, false).expect("read");
    assert_eq!(page.entries.len(), 1);
    let page = log.read_after(0, 3, true).expect("read");
    let seqs: Vec<u64> = page.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
}

#[test]
fn entries_are_numbered_kept_once_and_read_after_a_cursor() {
    let dir = tempfile::tempdir().expect("dir");
    let log = PurgeLog::open(dir.path(), 100_000).expect("open");
    for n in 1..=5 {
        assert!(log.append(&purge(n)).expect("append"));
    }
    assert!(
        !log.append(&purge(3)).expect("append"),
        "a repeat is logged once"
    );
    let page = log.read_after(2, 100, true).expect("read");
    assert_eq!(page.head, 5);
    assert_eq!(page.oldest, 1);
    let seqs: Vec<u64> = page.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![3, 4, 5]);
    assert_eq!(page.entries[0].purge.value, purge(3).value);
    assert_eq!(log.read_after(3, 1, true).expect("read").entries.len(), 1);

    // Reopened (a restart): the same id, head and ids.
    let id = page.log_id.clone();
    drop(log);
    let log = PurgeLog::open(dir.path(), 100_000).expect("reopen");
    assert!(log.contains(&purge(4).id));
    assert!(!log.append(&purge(4)).expect("append"));
    assert!(log.append(&purge(6)).expect("append"));
    let page = log.read_after(5, 100, true).expect("read");
    assert_eq!(page.log_id, id);
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.entries[0].seq, 6);
}

#[test]
fn two_processes_appending_to_one_log_never_share_a_number() {
    let dir = tempfile::tempdir().expect("dir");
    // As during a graceful upgrade: the old and the new process, each with its own view.
    let old = PurgeLog::open(dir.path(), 100_000).expect("open");
    let new = PurgeLog::open(dir.path(), 100_000).expect("open");
    for n in 1..=10 {
        let log = if n % 3 == 0 { &new } else { &old };
        assert!(log.append(&purge(n)).expect("append"));
    }
    // A purge the other one logged is not logged again.
    assert!(!new.append(&purge(1)).expect("append"));
    for log in [&old, &new] {
        let page = log.read_after(0, 100, true).expect("read");
        let seqs: Vec<u64> = page.entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=10).collect::<Vec<u64>>());
        let values: Vec<String> = page.entries.iter().map(|e| e.purge.value.clone()).collect();
        let wanted: Vec<String> = (1..=10).map(|n| purge(n).value).collect();
        assert_eq!(values, wanted);
    }
}

#[test]
fn old_segments_are_dropped_past_the_retention() {
    let dir = tempfile::tempdir().expect("dir");
    let log = PurgeLog::open(dir.path(), SEGMENT_ENTRIES).expect("open");
    let total = SEGMENT_ENTRIES * 2 + 5;
    for n in 1..=total {
        log.append(&purge(n)).expect("append");
    }
    let page = log.read_after(0, 10, true).expect("read");
    assert_eq!(page.head, total);
    assert!(page.oldest > SEGMENT_ENTRIES, "oldest {}", page.oldest);
    assert_eq!(page.entries[0].seq, page.oldest);
    assert!(!log.contains(&purge(1).id), "dropped ids are forgotten");
    let segments = std::fs::read_dir(dir.path().join("log"))
        .expect("dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("segment-"))
        })
        .count();
    assert_eq!(segments, 2);
}

#[test]
fn a_line_cut_by_a_crash_is_skipped() {
    let dir = tempfile::tempdir().expect("dir");
    let log = PurgeLog::open(dir.path(), 100_000).expect("open");
    log.append(&purge(1)).expect("append");
    drop(log);
    let segment = dir.path().join(format!("log/segment-{:020}.jsonl", 1));
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .expect("segment");
    file.write_all(b"{\"seq\":2,\"id\":\"cut").expect("write");
    drop(file);
    let log = PurgeLog::open(dir.path(), 100_000).expect("reopen");
    let page = log.read_after(0, 10, true).expect("read");
    assert_eq!(page.head, 1);
    assert_eq!(page.entries.len(), 1);
    // The next entry is whole, not glued to the cut line.
    log.append(&purge(2)).expect("append");
    drop(log);
    let log = PurgeLog::open(dir.path(), 100_000).expect("reopen");
    let seqs: Vec<u64> = log
        .read_after(0, 10, true)
        .expect("read")
        .entries
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, vec![1, 2]);
}

fn any_purge() -> impl Strategy<Value = Purge> {
    (
        "\\PC{0,30}",
        prop_oneof![
            Just(PurgeKind::Url),
            Just(PurgeKind::Prefix),
            Just(PurgeKind::Tag)
        ],
        "\\PC{0,60}",
        "\\PC{0,10}",
        any::<bool>(),
        proptest::option::of("[a-z0-9.:-]{1,20}"),
    )
        .prop_map(|(id, kind, value, origin, deleted, host)| Purge {
            id,
            kind,
            value,
            origin,
            deleted,
            host,
        })
}

fn any_entry() -> impl Strategy<Value = LogEntry> {
    (any::<u64>(), any_purge()).prop_map(|(seq, purge)| LogEntry { seq, purge })
}

/// A line as `append` writes it.
fn line(entry: &LogEntry) -> Vec<u8> {
    let mut line = serde_json::to_vec(entry).expect("serializes");
    line.push(b'\n');
    line
}

fn same_entries(a: &[LogEntry], b: &[LogEntry]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(a, b)| {
            a.seq == b.seq
                && a.purge.id == b.purge.id
                && a.purge.kind == b.purge.kind
                && a.purge.value == b.purge.value
                && a.purge.origin == b.purge.origin
        })
}

/// Segment contents as damage may leave them: whole lines with any sequence number,
/// garbage lines, and perhaps a last line without its newline.
fn any_segment() -> impl Strategy<Value = Vec<u8>> {
    let one = prop_oneof![
        any_entry().prop_map(|e| line(&e)),
        proptest::collection::vec(any::<u8>(), 0..40),
    ];
    proptest::collection::vec(one, 0..6).prop_map(|parts| parts.concat())
}

/// Segment numbers: mostly where a log would have them, sometimes anywhere.
fn any_first() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => Just(1u64),
        2 => 1u64..30_000,
        1 => any::<u64>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_entries_read_back_from_their_lines(
        entries in proptest::collection::vec(any_entry(), 0..12),
    ) {
        let bytes: Vec<u8> = entries.iter().flat_map(line).collect();
        prop_assert!(same_entries(&whole_lines(&bytes), &entries));
    }

    #[test]
    fn a_segment_cut_anywhere_gives_the_entries_whose_lines_are_whole(
        entries in proptest::collection::vec(any_entry(), 1..5),
    ) {
        let bytes: Vec<u8> = entries.iter().flat_map(line).collect();
        for cut in 0..=bytes.len() {
            let whole = bytes[..cut].iter().filter(|b| **b == b'\n').count();
            prop_assert!(same_entries(&whole_lines(&bytes[..cut]), &entries[..whole]));
        }
    }

    #[test]
    fn arbitrary_segment_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..1024),
    ) {
        let _ = whole_lines(&bytes);
    }
}

proptest! {
    // Each case opens a log in a directory of its own and syncs what it appends.
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_damaged_log_opens_appends_and_reads_without_panicking(
        segments in proptest::collection::vec((any_first(), any_segment()), 0..3),
    ) {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir_all(dir.path().join("log")).expect("log dir");
        for (first, bytes) in &segments {
            let name = format!("log/segment-{first:020}.jsonl");
            std::fs::write(dir.path().join(name), bytes).expect("segment");
        }
        let Ok(log) = PurgeLog::open(dir.path(), 100_000) else {
            return Ok(());
        };
        for n in 1..=2 {
            let _ = log.append(&purge(n));
        }
        if let Ok(page) = log.read_after(0, 1000, true) {
            prop_assert!(page.entries.iter().all(|e| e.seq <= page.head));
        }
    }
}

#[test]
fn a_sequence_number_at_the_top_of_the_range_refuses_appends_without_panicking() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir_all(dir.path().join("log")).expect("log dir");
    let top = line(&LogEntry {
        seq: u64::MAX,
        purge: purge(1),
    });
    std::fs::write(dir.path().join(format!("log/segment-{:020}.jsonl", 1)), top).expect("segment");
    let log = PurgeLog::open(dir.path(), 100_000).expect("open");
    assert!(log.append(&purge(2)).is_err());
    assert_eq!(log.read_after(0, 10, true).expect("read").head, u64::MAX);
}

#[test]
fn an_empty_segment_named_past_the_head_takes_the_next_entry_under_its_number() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir_all(dir.path().join("log")).expect("log dir");
    std::fs::write(
        dir.path().join(format!("log/segment-{:020}.jsonl", 1000)),
        b"",
    )
    .expect("segment");
    let log = PurgeLog::open(dir.path(), 100_000).expect("open");
    assert!(log.append(&purge(1)).expect("append"));
    let page = log.read_after(0, 10, true).expect("read");
    let seqs: Vec<u64> = page.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1000]);
}
