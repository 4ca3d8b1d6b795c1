//! Unit tests of the queue's own files: job files parse back, and recovery and the attempt
//! limit handle what a crash or a failing store leaves. (The queue's behaviour through its
//! public API is tested in `queue_tests.rs`.)

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::config::model::{BreakerSettings, StoreKind, StoreSettings};

fn any_key() -> impl Strategy<Value = String> {
    "[a-z0-9_]{1,10}(/[a-z0-9_]{1,10}){0,3}\\.[a-z]{3}"
}

fn any_job(len: u64) -> impl Strategy<Value = JobFile> {
    (
        any_key(),
        proptest::collection::vec("[a-z0-9-]{1,12}", 0..4),
        proptest::option::of("[a-z]{1,10}/[a-z0-9.+-]{1,20}"),
        "[0-9a-f]{32}",
        any::<u32>(),
        prop_oneof![Just(0u64), Just(16u64)],
    )
        .prop_map(
            move |(key, stores, content_type, md5, attempts, offset)| JobFile {
                format: JOB_FORMAT,
                key,
                stores,
                len,
                content_type,
                md5,
                attempts,
                offset,
            },
        )
}

fn job_bytes(job: &JobFile) -> Vec<u8> {
    serde_json::to_vec(job).expect("serializes")
}

fn settings(queue_dir: &Path) -> WriteThroughSettings {
    WriteThroughSettings {
        queue_dir: queue_dir.to_path_buf(),
        max_jobs: 1000,
        max_bytes: 1 << 30,
        max_object_size: 1 << 30,
        workers: 1,
        retry_min: Duration::from_secs(1),
        retry_max: Duration::from_secs(60),
        max_attempts: 0,
    }
}

fn no_places() -> Arc<Places> {
    Arc::new(Places::build(&BTreeMap::new()).expect("no stores"))
}

fn no_tombstones() -> Arc<Tombstones> {
    Arc::new(Tombstones::memory_only())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_job_file_parses_back_to_itself(job in any::<u64>().prop_flat_map(any_job)) {
        let (back, key) = parse_job(&job_bytes(&job), job.offset + job.len).expect("parses");
        prop_assert_eq!(key.as_str(), job.key.as_str());
        prop_assert_eq!(back, job);
    }

    #[test]
    fn a_job_file_cut_anywhere_is_not_a_job(job in any_job(42)) {
        let bytes = job_bytes(&job);
        for cut in 0..bytes.len() {
            prop_assert!(
                parse_job(&bytes[..cut], job.offset + 42).is_none(),
                "cut at {}",
                cut
            );
        }
    }

    #[test]
    fn a_job_file_is_refused_when_its_body_has_another_length(
        job in any_job(42),
        body_len in any::<u64>(),
    ) {
        prop_assume!(body_len != job.offset + 42);
        prop_assert!(parse_job(&job_bytes(&job), body_len).is_none());
    }

    #[test]
    fn arbitrary_job_file_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        body_len in any::<u64>(),
    ) {
        let _ = parse_job(&bytes, body_len);
    }
}

#[test]
fn a_job_file_from_before_offsets_reads_as_a_whole_file_body() {
    let text = br#"{"format":1,"key":"media/a.png","stores":["s3"],"len":4,"content_type":null,"md5":"00000000000000000000000000000000","attempts":0}"#;
    let (job, _) = parse_job(text, 4).expect("parses");
    assert_eq!(job.offset, 0);
    assert!(parse_job(text, 20).is_none());
}

proptest! {
    // Each case opens a queue in a directory of its own.
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_queue_directory_of_arbitrary_jobs_recovers_without_panicking(
        jobs in proptest::collection::vec(
            (
                prop_oneof![any::<u64>(), Just(u64::MAX), 0u64..100],
                proptest::collection::vec(any::<u8>(), 0..16),
                prop_oneof![
                    any_job(0).prop_map(Some),
                    Just(None),
                ],
                proptest::collection::vec(any::<u8>(), 0..64),
            ),
            0..4,
        ),
    ) {
        let dir = tempfile::tempdir().expect("dir");
        let jobs_dir = dir.path().join("jobs");
        std::fs::create_dir_all(&jobs_dir).expect("jobs dir");
        let mut valid = Vec::new();
        for (id, body, job, garbage) in &jobs {
            std::fs::write(jobs_dir.join(format!("{id}.body")), body).expect("body");
            let text = match job {
                Some(job) => {
                    let job = JobFile { len: body.len() as u64, offset: 0, ..job.clone() };
                    valid.push(*id);
                    job_bytes(&job)
                }
                None => garbage.clone(),
            };
            std::fs::write(jobs_dir.join(format!("{id}.job")), text).expect("job");
        }
        let queue = WriteThroughQueue::open(&settings(dir.path()), no_places(), no_tombstones())
            .expect("opens");
        let state = queue.state.lock();
        // A later file of the same id replaced an earlier one, so only the last counts.
        let last_of = |id: u64| jobs.iter().rev().find(|j| j.0 == id).map(|j| j.2.is_some());
        for id in valid {
            if last_of(id) == Some(true) {
                prop_assert!(state.jobs.contains_key(&id), "job {} was not resumed", id);
            }
        }
        let next = queue.next_id.load(Ordering::Relaxed);
        for (id, ..) in &jobs {
            prop_assert!(next > *id || *id == u64::MAX, "next id {} after {}", next, id);
        }
    }
}

#[test]
fn a_body_with_the_largest_id_is_recovered_without_panicking() {
    let dir = tempfile::tempdir().expect("dir");
    let jobs_dir = dir.path().join("jobs");
    std::fs::create_dir_all(&jobs_dir).expect("jobs dir");
    std::fs::write(jobs_dir.join(format!("{}.body", u64::MAX)), b"x").expect("body");
    let queue = WriteThroughQueue::open(&settings(dir.path()), no_places(), no_tombstones())
        .expect("opens");
    assert_eq!(queue.next_id.load(Ordering::Relaxed), u64::MAX);
}

#[tokio::test(flavor = "current_thread")]
async fn a_job_file_at_the_attempt_limit_is_set_aside_when_its_upload_fails() {
    // The failure is logged with the attempt number: with a subscriber listening, that
    // number is computed.
    let _logging =
        tracing::subscriber::set_default(tracing_subscriber::fmt().with_test_writer().finish());
    let dir = tempfile::tempdir().expect("dir");
    let store_dir = dir.path().join("store");
    std::fs::create_dir_all(&store_dir).expect("store dir");
    let stores = BTreeMap::from([(
        "disk".to_string(),
        StoreSettings {
            name: "disk".to_string(),
            kind: StoreKind::Directory { path: store_dir },
            timeout: Duration::from_secs(5),
            max_concurrency: 4,
            breaker: BreakerSettings {
                failures: 0,
                cooldown: Duration::from_secs(1),
                first_probe_after: Duration::from_secs(1),
            },
        },
    )]);
    let places = Arc::new(Places::build(&stores).expect("places"));
    let queue_dir = dir.path().join("queue");
    let jobs_dir = queue_dir.join("jobs");
    std::fs::create_dir_all(&jobs_dir).expect("jobs dir");
    std::fs::write(jobs_dir.join("7.body"), b"body").expect("body");
    let job = JobFile {
        format: JOB_FORMAT,
        key: "media/a.png".to_string(),
        stores: vec!["disk".to_string()],
        len: 4,
        content_type: None,
        // Not the body's digest: the store refuses the upload.
        md5: "00".repeat(16),
        attempts: u32::MAX,
        offset: 0,
    };
    std::fs::write(jobs_dir.join("7.job"), job_bytes(&job)).expect("job");
    let queue =
        WriteThroughQueue::open(&settings(&queue_dir), places, no_tombstones()).expect("opens");
    let (id, record, key) = queue.take_due().expect("the job is due");
    queue.run_job(id, record, key).await;
    assert!(queue_dir.join("failed/7.job").exists());
    assert!(queue.state.lock().jobs.is_empty());
}
