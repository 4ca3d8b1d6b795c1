//! `edgecache migrate`: copies every object of a legacy place into object stores.
//!
//! Per object: ask the source for its length; skip it where a store already has an object
//! of that length (never overwrite one that differs: that is reported); read it once into a
//! local spool file while computing its MD5; upload to each store that lacks it (verified
//! by the store: length and checksum); then record the key in the state file. A rerun
//! after `kill -9` skips what the state file lists and finds the rest by looking, and a
//! store never holds a partial object (single uploads are atomic, unfinished multipart
//! uploads are aborted or never completed).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use md5::{Digest, Md5};
use tokio::sync::mpsc;

use super::keys::{self, KeyEntry};
use super::progress::{Counters, RateLimit, Reporter, Summary};
use super::state::{StateFile, StateFileError};
use crate::config::model::StoreKind;
use crate::config::Config;
use crate::store::places::Places;
use crate::store::{
    BodyFile, Lookup, ObjectKey, ObjectStore, PutOutcome, Source, StoreError, Tombstones,
};

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

impl From<StateFileError> for MigrateError {
    fn from(e: StateFileError) -> Self {
        MigrateError::State {
            path: e.path,
            message: e.message,
        }
    }
}

/// Runs a migration to the end and says how it went.
pub async fn run(config: &Config, options: MigrateOptions) -> Result<Summary, MigrateError> {
    let started = Instant::now();
    let ends = Ends::check(config, &options).await?;
    let header = format!(
        "{STATE_HEADER} from={} to={}",
        options.from,
        options.to.join(",")
    );
    let state = StateFile::open(&options.state, &header)?;
    let spool_dir = fresh_spool_dir(&options.state)?;
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
        source: ends.source,
        stores: ends.stores,
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
    let producer = spawn_producer(options.keys.clone(), ends.walk_root, sender, &counters);
    let reporter = Reporter::new(options.metrics_file.clone(), false);
    for failure in work_through(&job, receiver, options.concurrency, &reporter).await {
        counters.fail(&options.from, failure);
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

/// Where a migration reads and writes, checked before any work starts.
struct Ends {
    source: Arc<dyn Source>,
    stores: Vec<(String, Arc<dyn ObjectStore>)>,
    /// A directory source is walked for its keys; other sources need a key list.
    walk_root: Option<PathBuf>,
}

impl Ends {
    async fn check(config: &Config, options: &MigrateOptions) -> Result<Ends, MigrateError> {
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
        Ok(Ends {
            source,
            stores,
            walk_root,
        })
    }
}

/// The spool directory beside the state file, emptied: spool files a killed run left
/// behind are of no use.
fn fresh_spool_dir(state: &Path) -> Result<PathBuf, MigrateError> {
    let spool_dir = state.with_extension("spool");
    std::fs::create_dir_all(&spool_dir).map_err(|e| MigrateError::State {
        path: spool_dir.clone(),
        message: e.to_string(),
    })?;
    if let Ok(entries) = std::fs::read_dir(&spool_dir) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(spool_dir)
}

/// Lists the keys (from the list, or by walking the directory) into `sender`, on the
/// blocking pool; the total is known once it is done.
fn spawn_producer(
    keys_path: Option<PathBuf>,
    walk_root: Option<PathBuf>,
    sender: mpsc::Sender<KeyEntry>,
    counters: &Arc<Counters>,
) -> tokio::task::JoinHandle<std::io::Result<u64>> {
    let counters = counters.clone();
    tokio::task::spawn_blocking(move || {
        let sent = match (&keys_path, &walk_root) {
            (Some(list), _) => keys::send_listed(list, &sender),
            (None, Some(root)) => keys::send_walked(root, &sender),
            (None, None) => Ok(0),
        };
        if let Ok(sent) = sent {
            counters.total.store(sent, Ordering::Relaxed);
            counters.total_known.store(true, Ordering::Relaxed);
        }
        sent
    })
}

/// Runs `concurrency` workers over the keys until the list ends, reporting progress as
/// they go; returns why any worker stopped early.
async fn work_through(
    job: &Arc<Job>,
    receiver: mpsc::Receiver<KeyEntry>,
    concurrency: usize,
    reporter: &Reporter,
) -> Vec<String> {
    let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
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
                reporter.report(&job.counters, ticks.is_multiple_of(25));
            }
        }
    };
    finished
        .into_iter()
        .filter_map(|outcome| outcome.err())
        .map(|e| format!("a worker stopped: {e}"))
        .collect()
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
            match store
                .put_file(key, &BodyFile::whole(spool), info, md5)
                .await
            {
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
