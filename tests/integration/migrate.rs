//! `edgecache migrate`: bulk copies from a legacy directory or HTTP origin into a real
//! S3-compatible store, resumable after `kill -9`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::edge::{EdgeSetup, TestCert, BINARY};
use crate::harness::origin::{pattern_range, Origin};
use crate::harness::s3::{S3Server, BUCKET, S3_ACCESS_KEY};
use crate::harness::Store;

/// A config with `spaces` (the S3 server), `disk` (a legacy directory) and `old` (the test
/// origin's `/bytes/`).
struct Migration {
    setup: EdgeSetup,
    s3: S3Server,
    legacy: tempfile::TempDir,
    config: PathBuf,
    _origin: Origin,
}

impl Migration {
    async fn new(secret: Option<&str>) -> Migration {
        let setup = EdgeSetup::new();
        let s3 = S3Server::start().await;
        let origin = Origin::start().await;
        let legacy = tempfile::tempdir().expect("tempdir");
        let mut spaces = s3.store("spaces", setup.dir.path());
        if let Some(secret) = secret {
            let credentials = setup.path("wrong.credentials");
            std::fs::write(
                &credentials,
                format!("access_key_id: {S3_ACCESS_KEY}\nsecret_access_key: {secret}\n"),
            )
            .expect("credentials");
            spaces.credentials_file = Some(credentials);
        }
        let cert = TestCert::create(setup.dir.path(), "site", &["hachyderm.example"]);
        let mut config = setup.config(&[&cert], &[origin.address], "");
        config.stores.insert("spaces".to_string(), spaces);
        config
            .stores
            .insert("disk".to_string(), Store::directory(legacy.path()));
        config.stores.insert(
            "old".to_string(),
            Store::http(&format!("http://{}/bytes/", origin.address)),
        );
        let config = setup.write_config(&config);
        Migration {
            setup,
            s3,
            legacy,
            config,
            _origin: origin,
        }
    }

    fn state(&self) -> PathBuf {
        self.setup.path("migrate.state")
    }

    fn command(&self, extra: &[&str]) -> Command {
        let mut command = Command::new(BINARY);
        command
            .arg("migrate")
            .arg("--config")
            .arg(&self.config)
            .arg("--state")
            .arg(self.state())
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        command
    }

    /// Runs to the end: (exit code, stdout, stderr). The test's origin runs on this
    /// thread's runtime, so the wait happens elsewhere.
    async fn run(&self, extra: &[&str]) -> (i32, String, String) {
        let mut command = self.command(extra);
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("join")
            .expect("run migrate");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    }

    /// Every object in the bucket, by key.
    async fn bucket(&self) -> BTreeMap<String, Vec<u8>> {
        let client = self.s3.client();
        let mut keys = Vec::new();
        let mut pages = client
            .list_objects_v2()
            .bucket(BUCKET)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.expect("list objects");
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
        }
        let mut objects = BTreeMap::new();
        for key in keys {
            let body = self.s3.get(&key).await.expect("listed object");
            assert!(objects.insert(key, body).is_none(), "a key listed twice");
        }
        objects
    }
}

/// Byte `i` of legacy file `n`.
fn file_body(n: usize) -> Vec<u8> {
    let len = 200 + (n * 37) % 3000;
    (0..len).map(|i| ((i * 7 + n) % 251) as u8).collect()
}

fn legacy_key(n: usize) -> String {
    format!("media_attachments/files/{:03}/{n:05}.png", n % 40)
}

fn write_legacy(root: &Path, count: usize) {
    for n in 0..count {
        let path = root.join(legacy_key(n));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
        std::fs::write(path, file_body(n)).expect("legacy file");
    }
}

fn state_lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count().saturating_sub(1))
}

#[tokio::test]
async fn a_directory_migration_killed_half_way_finishes_on_a_rerun_byte_exact() {
    let migration = Migration::new(None).await;
    let count = 1200;
    write_legacy(migration.legacy.path(), count);
    let mut child = migration
        .command(&[
            "--from",
            "disk",
            "--to",
            "spaces",
            "--concurrency",
            "8",
            "--max-objects-per-second",
            "400",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start migrate");
    let deadline = Instant::now() + Duration::from_secs(60);
    while state_lines(&migration.state()) < 300 {
        assert!(Instant::now() < deadline, "migrate made no progress");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "migrate ended before the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    // Whatever is in the store now is whole.
    let partial = migration.bucket().await;
    assert!(
        partial.len() >= 300 && partial.len() < count,
        "{}",
        partial.len()
    );
    for (key, body) in &partial {
        let n: usize = key
            .rsplit('/')
            .next()
            .and_then(|f| f[..5].parse().ok())
            .expect("n");
        assert!(*body == file_body(n), "{key} is not whole");
    }

    let (code, stdout, stderr) = migration.run(&["--from", "disk", "--to", "spaces"]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("failed 0"), "{stdout}");
    let moved_again: usize = stdout
        .split("moved ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .expect("moved count");
    assert!(
        moved_again <= count - partial.len() + 8,
        "the rerun moved {moved_again} though {} were already there",
        partial.len()
    );
    let all = migration.bucket().await;
    assert_eq!(all.len(), count);
    for n in 0..count {
        assert!(
            all.get(&legacy_key(n)) == Some(&file_body(n)),
            "{}",
            legacy_key(n)
        );
    }
    // A third run has nothing left to do.
    let (code, stdout, _) = migration.run(&["--from", "disk", "--to", "spaces"]).await;
    assert_eq!(code, 0);
    assert!(stdout.contains("moved 0 objects"), "{stdout}");
    assert!(stdout.contains(&format!("skipped {count}")), "{stdout}");
}

#[tokio::test]
async fn an_http_origin_is_migrated_from_a_key_list_with_a_dry_run_first() {
    let migration = Migration::new(None).await;
    let list = migration.setup.path("keys.txt");
    std::fs::write(
        &list,
        "# exported keys\n1000\n/2000\n\n300000\nbad/../key\n",
    )
    .expect("list");
    let list = list.display().to_string();
    let args = ["--from", "old", "--to", "spaces", "--keys", list.as_str()];

    let dry = [&args[..], &["--dry-run"]].concat();
    let (code, stdout, _) = migration.run(&dry).await;
    assert_eq!(code, 1, "a bad key fails even a dry run: {stdout}");
    assert!(stdout.contains("would move 3 objects"), "{stdout}");
    assert!(
        migration.bucket().await.is_empty(),
        "a dry run uploads nothing"
    );

    let metrics = migration.setup.path("migrate.prom");
    let metrics_arg = metrics.display().to_string();
    let real = [&args[..], &["--metrics-file", metrics_arg.as_str()]].concat();
    let (code, stdout, _) = migration.run(&real).await;
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("moved 3 objects"), "{stdout}");
    assert!(
        stdout.contains("failed (1): not a valid key") && stdout.contains("bad/../key"),
        "{stdout}"
    );
    let all = migration.bucket().await;
    assert!(all.get("1000") == Some(&pattern_range(0..1000)));
    assert!(all.get("2000") == Some(&pattern_range(0..2000)));
    assert!(all.get("300000") == Some(&pattern_range(0..300_000)));
    let text = std::fs::read_to_string(&metrics).expect("metrics file");
    assert!(
        text.contains("edgecache_migrate_objects_total{result=\"moved\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("edgecache_migrate_remaining_objects 1"),
        "{text}"
    );
}

#[tokio::test]
async fn objects_already_in_the_store_are_skipped_and_a_different_one_is_left_alone() {
    let migration = Migration::new(None).await;
    write_legacy(migration.legacy.path(), 3);
    migration.s3.put(&legacy_key(0), &file_body(0)).await;
    migration
        .s3
        .put(&legacy_key(1), b"someone else's object")
        .await;
    let (code, stdout, _) = migration.run(&["--from", "disk", "--to", "spaces"]).await;
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("moved 1 objects"), "{stdout}");
    assert!(stdout.contains("skipped 1"), "{stdout}");
    assert!(
        stdout.contains("already has a different object"),
        "{stdout}"
    );
    let all = migration.bucket().await;
    assert_eq!(
        all.get(&legacy_key(1)).map(Vec::as_slice),
        Some(&b"someone else's object"[..])
    );
    assert!(all.get(&legacy_key(2)) == Some(&file_body(2)));
}

#[tokio::test]
async fn wrong_credentials_stop_a_migration_before_it_starts() {
    let migration = Migration::new(Some("not-the-secret")).await;
    write_legacy(migration.legacy.path(), 2);
    let (code, stdout, stderr) = migration.run(&["--from", "disk", "--to", "spaces"]).await;
    assert_eq!(code, 69, "{stdout}{stderr}");
    assert!(stderr.contains("access denied"), "{stderr}");
    assert!(!stderr.contains("not-the-secret"));
    let (code, _, stderr) = migration.run(&["--from", "old", "--to", "spaces"]).await;
    assert_eq!(code, 64);
    assert!(stderr.contains("--keys"), "{stderr}");
}
