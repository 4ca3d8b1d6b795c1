//! `edgecache migrate`: copies every object of a legacy place into object stores.
//!
//! Per object: ask the source for its length; skip it where a store already has an object
//! of that length (never overwrite one that differs: that is reported); read it once into a
//! local spool file while computing its MD5; upload to each store that lacks it (verified
//! by the store: length and checksum); then record the key in the state file. A rerun
//! after `kill -9` skips what the state file lists and finds the rest by looking, and a
//! store never holds a partial object (single uploads are atomic, unfinished multipart
//! uploads are aborted or never completed).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use md5::{Digest, Md5};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::keys::{self, KeyEntry};
use super::progress::{Counters, RateLimit, Reporter, Summary};
use crate::config::model::StoreKind;
use crate::config::Config;
use crate::store::places::Places;
use crate::store::{Lookup, ObjectKey, ObjectStore, PutOutcome, Source, StoreError, Tombstones};

const STATE_HEADER: &str = "edgecache-migrate-state 1";

pub struct MigrateOptions {
    pub from: String,
    pub to: Vec<String>,
    /// A key list; required unless the source is a directory.
    pub keys: Option<PathBuf>,
    pub state: PathBuf,
    pub concurrency: usize,
    pub objects_per_second: Option<f64>,
    pub bytes_per_second: Option<u64>,
    pub dry_run: bool,
    pub metrics_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("no store is named {0:?} in the config")]
    UnknownStore(String),
    #[error("{0} is an HTTP origin; migrate writes only to s3 and directory stores")]
    NotWritable(String),
    #[error("{0} cannot be listed: give the keys with --keys FILE")]
    NeedsKeys(String),
    #[error("{0} is both the source and a destination")]
    SameStore(String),
    #[error("state file {path}: {message}")]
    State { path: PathBuf, message: String },
    #[error("key list {path}: {source}")]
    Keys {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot reach the store: {0}")]
    Store(#[from] StoreError),
    #[error("tombstones of deleted media {}: {source}", path.display())]
    Tombstones {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The state file: one line per key that every destination has, after a header naming the
/// migration so a file from another one is not taken for this one's. In memory only a
/// 64-bit hash of each done key is kept (8 bytes a key, sorted): ten million keys take
/// 80 MB. A hash collision could skip one object wrongly; at ten million keys the chance
/// of any is about three in a million, and a rerun with a fresh state file settles it.
struct StateFile {
    done: Vec<u64>,
    writer: Mutex<std::io::BufWriter<std::fs::File>>,
    unsynced: Mutex<(u32, Instant)>,
}

fn key_hash(key: &str) -> u64 {
    let digest = Md5::digest(key.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(bytes)
}

impl StateFile {
    fn open(path: &Path, header: &str) -> Result<StateFile, MigrateError> {
        use std::io::BufRead;
        let error = |message: String| MigrateError::State {
            path: path.to_path_buf(),
            message,
        };
        let mut done = Vec::new();
        let existing = path.exists();
        if existing {
            let file = std::fs::File::open(path).map_err(|e| error(e.to_string()))?;
            let mut reader = std::io::BufReader::new(file);
            let mut line = Vec::new();
            reader
                .read_until(b'\n', &mut line)
                .map_err(|e| error(e.to_string()))?;
            if line.strip_suffix(b"\n") != Some(header.as_bytes()) {
                return Err(error(format!(
                    "it belongs to another migration ({:?}); use another --state file",
                    String::from_utf8_lossy(&line).trim_end()
                )));
            }
            // Lines are read one at a time; a last line without its newline was cut by a
            // crash and does not count.
            let mut complete_len = line.len() as u64;
            loop {
                line.clear();
                let n = reader
                    .read_until(b'\n', &mut line)
                    .map_err(|e| error(e.to_string()))?;
                if n == 0 || !line.ends_with(b"\n") {
                    break;
                }
                complete_len += n as u64;
                if let Ok(key) = std::str::from_utf8(&line[..line.len() - 1]) {
                    if !key.is_empty() {
                        done.push(key_hash(key));
                    }
                }
            }
            let total = reader
                .into_inner()
                .metadata()
                .map_err(|e| error(e.to_string()))?
                .len();
            if total != complete_len {
                // Cut the partial line off so appends start on a line of their own.
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .and_then(|file| file.set_len(complete_len))
                    .map_err(|e| error(e.to_string()))?;
            }
            done.sort_unstable();
            done.dedup();
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| error(e.to_string()))?;
        if !existing {
            writeln!(file, "{header}").map_err(|e| error(e.to_string()))?;
        }
        Ok(StateFile {
            done,
            writer: Mutex::new(std::io::BufWriter::new(file)),
            unsynced: Mutex::new((0, Instant::now())),
        })
    }

    fn is_done(&self, key: &ObjectKey) -> bool {
        self.done.binary_search(&key_hash(key.as_str())).is_ok()
    }

    fn record(&self, key: &ObjectKey) {
        let mut writer = self.writer.lock();
        let _ = writeln!(writer, "{key}");
        let mut unsynced = self.unsynced.lock();
        unsynced.0 += 1;
        if unsynced.0 >= 100 || unsynced.1.elapsed() >= Duration::from_secs(1) {
            // A sync may take a while on a busy disk; let the runtime move other work off
            // this thread meanwhile.
            tokio::task::block_in_place(|| {
                let _ = writer.flush();
                let _ = writer.get_ref().sync_data();
            });
            *unsynced = (0, Instant::now());
        }
    }

    fn flush(&self) {
        let mut writer = self.writer.lock();
        let _ = writer.flush();
        let _ = writer.get_ref().sync_data();
    }
}

/// What became of one key.
enum Moved {
    /// Copied (or, in a dry run, would be), this many bytes.
    Bytes(u64),
    /// Every store had it already.
    AlreadyThere,
    /// Its media was deleted: left alone.
    Deleted,
}

struct Job {
    source: Arc<dyn Source>,
    stores: Vec<(String, Arc<dyn ObjectStore>)>,
    state: StateFile,
    counters: Arc<Counters>,
    spool_dir: PathBuf,
    attempts: std::sync::atomic::AtomicU64,
    objects: Option<RateLimit>,
    bytes: Option<RateLimit>,
    dry_run: bool,
    /// Deleted media, never copied back; the running PoP may add to them meanwhile.
    tombstones: Tombstones,
}

/// Runs a migration to the end and says how it went.
pub async fn run(config: &Config, options: MigrateOptions) -> Result<Summary, MigrateError> {
    let started = Instant::now();
    let source_settings = config
        .stores
        .get(&options.from)
        .ok_or_else(|| MigrateError::UnknownStore(options.from.clone()))?;
    let walk_root = match &source_settings.kind {
        StoreKind::Directory { path } => Some(path.clone()),
        _ => None,
    };
    if walk_root.is_none() && options.keys.is_none() {
        return Err(MigrateError::NeedsKeys(options.from.clone()));
    }
    let places = Places::build(&config.stores)?;
    let source = places
        .source(&options.from)
        .ok_or_else(|| MigrateError::UnknownStore(options.from.clone()))?;
    let mut stores = Vec::new();
    for name in &options.to {
        if *name == options.from {
            return Err(MigrateError::SameStore(name.clone()));
        }
        if !config.stores.contains_key(name) {
            return Err(MigrateError::UnknownStore(name.clone()));
        }
        let store = places
            .store(name)
            .ok_or_else(|| MigrateError::NotWritable(name.clone()))?;
        // The bucket, the credentials and reachability are checked before any work starts.
        store.check().await?;
        stores.push((name.clone(), store));
    }
    let header = format!(
        "{STATE_HEADER} from={} to={}",
        options.from,
        options.to.join(",")
    );
    let state = StateFile::open(&options.state, &header)?;
    let spool_dir = options.state.with_extension("spool");
    std::fs::create_dir_all(&spool_dir).map_err(|e| MigrateError::State {
        path: spool_dir.clone(),
        message: e.to_string(),
    })?;
    // Spool files a killed run left behind are of no use.
    if let Ok(entries) = std::fs::read_dir(&spool_dir) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let tombstones =
        Tombstones::read(&config.tombstones).map_err(|source| MigrateError::Tombstones {
            path: config.tombstones.path.clone().unwrap_or_default(),
            source,
        })?;
    let counters = Arc::new(Counters::default());
    if let Some(list) = &options.keys {
        let total = keys::count_listed(list).map_err(|source| MigrateError::Keys {
            path: list.clone(),
            source,
        })?;
        counters.total.store(total, Ordering::Relaxed);
        counters.total_known.store(true, Ordering::Relaxed);
    }

    let job = Arc::new(Job {
        source,
        stores,
        state,
        counters: counters.clone(),
        spool_dir: spool_dir.clone(),
        attempts: Default::default(),
        objects: options.objects_per_second.map(RateLimit::new),
        bytes: options.bytes_per_second.map(|b| RateLimit::new(b as f64)),
        dry_run: options.dry_run,
        tombstones,
    });

    let (sender, receiver) = mpsc::channel::<KeyEntry>(1024);
    let producer_counters = counters.clone();
    let keys_path = options.keys.clone();
    let producer = tokio::task::spawn_blocking(move || {
        let sent = match (&keys_path, &walk_root) {
            (Some(list), _) => keys::send_listed(list, &sender),
            (None, Some(root)) => keys::send_walked(root, &sender),
            (None, None) => Ok(0),
        };
        if let Ok(sent) = sent {
            producer_counters.total.store(sent, Ordering::Relaxed);
            producer_counters.total_known.store(true, Ordering::Relaxed);
        }
        sent
    });

    let reporter = Reporter::new(options.metrics_file.clone(), false);
    let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
    let mut workers = Vec::new();
    for _ in 0..options.concurrency.max(1) {
        let job = job.clone();
        let receiver = receiver.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let entry = receiver.lock().await.recv().await;
                let Some(entry) = entry else { return };
                job.one(entry).await;
            }
        }));
    }
    // Only the workers hold the receiver now: if they all stop, the producer's sends fail
    // and it ends instead of waiting for room forever.
    drop(receiver);
    let mut ticks = 0u32;
    let mut all_done = futures_util::future::join_all(workers);
    let finished = loop {
        tokio::select! {
            finished = &mut all_done => break finished,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                ticks += 1;
                reporter.report(&counters, ticks.is_multiple_of(25));
            }
        }
    };
    for outcome in finished {
        if let Err(e) = outcome {
            counters.fail(&options.from, format!("a worker stopped: {e}"));
        }
    }
    let walked = producer
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    job.state.flush();
    reporter.report(&counters, true);
    reporter.finish();
    let _ = std::fs::remove_dir(&spool_dir);
    if let Err(e) = walked {
        counters.fail(&options.from, format!("listing the source stopped: {e}"));
    }
    Ok(Summary::of(&counters, started.elapsed(), options.dry_run))
}

impl Job {
    /// Whether `key`'s media was deleted (counted and reported when so).
    fn deleted(&self, key: &ObjectKey) -> bool {
        self.tombstones.pick_up_new();
        if !self.tombstones.contains(key) {
            return false;
        }
        self.counters.tombstoned.fetch_add(1, Ordering::Relaxed);
        tracing::info!(key = %key, "not migrated: the media was deleted (tombstone)");
        true
    }

    async fn one(&self, entry: KeyEntry) {
        let key = match entry {
            KeyEntry::Key(key) => key,
            KeyEntry::Invalid { name, reason } => {
                self.counters
                    .fail(&name, format!("not a valid key: {reason}"));
                return;
            }
        };
        if self.state.is_done(&key) {
            self.counters.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.deleted(&key) {
            return;
        }
        if let Some(limit) = &self.objects {
            limit.take(1.0).await;
        }
        match self.migrate(&key).await {
            Ok(Moved::Bytes(bytes)) => {
                self.counters.moved.fetch_add(1, Ordering::Relaxed);
                self.counters.bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            Ok(Moved::AlreadyThere) => {
                self.counters.skipped.fetch_add(1, Ordering::Relaxed);
            }
            // Counted where it was found.
            Ok(Moved::Deleted) => {}
            Err(reason) => self.counters.fail(key.as_str(), reason),
        }
    }

    /// Moves one object.
    async fn migrate(&self, key: &ObjectKey) -> Result<Moved, String> {
        let info = match self.source.get(key, None, false).await {
            Ok(Lookup::Found(found)) => found.info,
            Ok(_) => return Err("the source does not have it".to_string()),
            Err(e) => {
                return Err(format!("source: {}", e.kind())).inspect_err(|_| {
                    tracing::warn!(key = %key, error = %e, "source failed");
                })
            }
        };
        let mut lacking = Vec::new();
        for (name, store) in &self.stores {
            match store.head(key).await {
                Ok(None) => lacking.push((name, store)),
                Ok(Some(there)) if there.len == info.len => {}
                Ok(Some(there)) => {
                    return Err(format!(
                        "{name} already has a different object ({} bytes, the source has {}); left alone",
                        there.len, info.len
                    ))
                }
                Err(e) => return Err(format!("{name}: {}", e.kind())),
            }
        }
        if lacking.is_empty() {
            if !self.dry_run {
                self.state.record(key);
            }
            return Ok(Moved::AlreadyThere);
        }
        if self.dry_run {
            return Ok(Moved::Bytes(info.len));
        }
        // It may have been deleted while this run was on its way here.
        if self.deleted(key) {
            return Ok(Moved::Deleted);
        }
        // One spool file per attempt: a key listed twice may be in two workers at once.
        let spool = self.spool_dir.join(format!(
            "{}-{}",
            hex::encode(Md5::digest(key.as_str().as_bytes())),
            self.attempts.fetch_add(1, Ordering::Relaxed)
        ));
        let result = self.copy(key, &spool, &info, &lacking).await;
        let _ = tokio::fs::remove_file(&spool).await;
        result?;
        self.state.record(key);
        Ok(Moved::Bytes(info.len))
    }

    async fn copy(
        &self,
        key: &ObjectKey,
        spool: &Path,
        info: &crate::store::ObjectInfo,
        lacking: &[(&String, &Arc<dyn ObjectStore>)],
    ) -> Result<(), String> {
        let body = match self.source.get(key, None, true).await {
            Ok(Lookup::Found(found)) if found.info.len == info.len => found.body,
            Ok(Lookup::Found(_)) => return Err("the source changed while it was read".to_string()),
            Ok(_) => return Err("the source does not have it".to_string()),
            Err(e) => return Err(format!("source: {}", e.kind())),
        };
        let Some(mut body) = body else {
            return Err("the source sent no body".to_string());
        };
        let mut file = tokio::fs::File::create(spool)
            .await
            .map_err(|e| format!("local spool: {e}"))?;
        let mut hasher = Md5::new();
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| format!("source body: {e}"))?;
            if let Some(limit) = &self.bytes {
                limit.take(chunk.len() as f64).await;
            }
            hasher.update(&chunk);
            written += chunk.len() as u64;
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
                .await
                .map_err(|e| format!("local spool: {e}"))?;
        }
        if written != info.len {
            return Err(format!("the source sent {written} bytes of {}", info.len));
        }
        tokio::io::AsyncWriteExt::flush(&mut file)
            .await
            .map_err(|e| format!("local spool: {e}"))?;
        drop(file);
        let md5: [u8; 16] = hasher.finalize().into();
        for (name, store) in lacking {
            match store.put_file(key, spool, info, md5).await {
                Ok(PutOutcome::Stored | PutOutcome::AlreadyPresent) => {}
                Err(e) => {
                    tracing::warn!(key = %key, store = %name, error = %e, "upload failed");
                    return Err(format!("{name}: {}", e.kind()));
                }
            }
        }
        Ok(())
    }
}

/// Runs a migration on a runtime of its own, prints the summary and turns the outcome into
/// the process's exit code: 0 when nothing failed, 1 when something did, 64 for a request
/// that cannot be carried out as given, 69 when a store cannot be used.
pub fn run_to_exit(config: &Config, options: MigrateOptions) -> std::process::ExitCode {
    use std::process::ExitCode;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("edgecache: cannot start the runtime: {e}");
            return ExitCode::from(crate::EXIT_UNAVAILABLE);
        }
    };
    match runtime.block_on(run(config, options)) {
        Ok(summary) => {
            print!("{}", summary.text());
            if summary.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("edgecache migrate: {e}");
            let code = match e {
                MigrateError::Store(_) | MigrateError::State { .. } | MigrateError::Keys { .. } => {
                    crate::EXIT_UNAVAILABLE
                }
                _ => crate::EXIT_CONFIG,
            };
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const HEADER: &str = "edgecache-migrate-state 1 from=legacy to=s3";

    fn any_key() -> impl Strategy<Value = ObjectKey> {
        "[a-z0-9_]{1,10}(/[a-z0-9_ -]{1,10}){0,3}\\.[a-z]{3}"
            .prop_map(|key| ObjectKey::new(key).expect("a valid key"))
    }

    /// The state file a run that recorded `keys` leaves behind.
    fn state_bytes(keys: &[ObjectKey]) -> Vec<u8> {
        let mut bytes = format!("{HEADER}\n").into_bytes();
        for key in keys {
            bytes.extend_from_slice(format!("{key}\n").as_bytes());
        }
        bytes
    }

    proptest! {
        // Each case writes and reads a state file.
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn recorded_keys_are_done_after_a_restart(
            keys in proptest::collection::vec(any_key(), 0..20),
            other in any_key(),
        ) {
            prop_assume!(!keys.contains(&other));
            let dir = tempfile::tempdir().expect("dir");
            let path = dir.path().join("state");
            let state = StateFile::open(&path, HEADER).expect("creates");
            for key in &keys {
                state.record(key);
            }
            state.flush();
            drop(state);
            prop_assert_eq!(std::fs::read(&path).expect("read"), state_bytes(&keys));
            let state = StateFile::open(&path, HEADER).expect("reopens");
            for key in &keys {
                prop_assert!(state.is_done(key), "{} was forgotten", key);
            }
            prop_assert!(!state.is_done(&other));
        }
    }

    proptest! {
        // Each case opens the state file once for every byte it holds.
        #![proptest_config(ProptestConfig::with_cases(16))]

        #[test]
        fn a_state_file_cut_anywhere_keeps_its_whole_lines_and_drops_the_rest(
            keys in proptest::collection::vec(any_key(), 1..4),
        ) {
            let bytes = state_bytes(&keys);
            let dir = tempfile::tempdir().expect("dir");
            let path = dir.path().join("state");
            for cut in 0..bytes.len() {
                std::fs::write(&path, &bytes[..cut]).expect("write");
                let opened = StateFile::open(&path, HEADER);
                if cut <= HEADER.len() {
                    prop_assert!(opened.is_err(), "a header cut at {} was taken", cut);
                    continue;
                }
                let state = opened.expect("opens");
                let whole = bytes[..cut].iter().filter(|b| **b == b'\n').count() - 1;
                for (i, key) in keys.iter().enumerate() {
                    prop_assert_eq!(state.is_done(key), keys[..whole].contains(key), "key {}", i);
                }
                drop(state);
                let left = std::fs::read(&path).expect("read");
                prop_assert!(left.ends_with(b"\n"), "a partial line was kept at cut {}", cut);
                prop_assert!(bytes.starts_with(&left));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn arbitrary_lines_after_the_header_never_panic_and_leave_whole_lines(
            tail in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let dir = tempfile::tempdir().expect("dir");
            let path = dir.path().join("state");
            let mut bytes = format!("{HEADER}\n").into_bytes();
            bytes.extend_from_slice(&tail);
            std::fs::write(&path, &bytes).expect("write");
            let state = StateFile::open(&path, HEADER).expect("opens");
            drop(state);
            let left = std::fs::read(&path).expect("read");
            prop_assert!(left.ends_with(b"\n"));
            prop_assert!(bytes.starts_with(&left));
        }

        #[test]
        fn an_arbitrary_file_as_the_state_file_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let dir = tempfile::tempdir().expect("dir");
            let path = dir.path().join("state");
            std::fs::write(&path, &bytes).expect("write");
            let opened = StateFile::open(&path, HEADER);
            if !bytes.starts_with(format!("{HEADER}\n").as_bytes()) {
                prop_assert!(opened.is_err());
            }
        }
    }
}
