//! The write-through queue: copies of media found outside the object stores, waiting on
//! disk until every target store has them.
//!
//! Layout under `queue_dir`: `incoming/<pid>/` (copies still arriving), `jobs/` (a `.body` and a
//! `.job` per job; the `.job` is written last, by rename, so a job exists only once its
//! body is complete), and `failed/` (jobs set aside after `max_attempts`). Everything in
//! `jobs/` survives `kill -9` and is picked up at start; what stopped processes left in
//! `incoming/` is removed.
//!
//! The queue is bounded in jobs and bytes: a copy that does not fit is not started, and the
//! client is served all the same. Uploads never overwrite (see `ObjectStore::put_file`);
//! a failed upload is retried with exponential backoff.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::failed::set_aside_body;
use crate::config::model::WriteThroughSettings;
use crate::metrics;
use crate::store::places::Places;
use crate::store::{BodyFile, ObjectInfo, ObjectKey, PutOutcome, Tombstones};

const JOB_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("write-through queue directory {path}: {source}")]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A job as written in its `.job` file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct JobFile {
    format: u32,
    key: String,
    /// Stores that still lack the object.
    stores: Vec<String>,
    len: u64,
    content_type: Option<String>,
    md5: String,
    attempts: u32,
    /// Where the body starts in the `.body` file: after the cache's file header when the
    /// file is the cache's own (absent in jobs written before there was one: 0).
    #[serde(default)]
    offset: u64,
}

/// What the media origin knows when it starts a copy.
pub struct NewJob {
    pub key: ObjectKey,
    pub stores: Vec<String>,
    pub info: ObjectInfo,
}

struct Job {
    file: JobFile,
    key: ObjectKey,
    due: Instant,
    busy: bool,
}

#[derive(Default)]
struct State {
    jobs: BTreeMap<u64, Job>,
    /// Keys in `incoming/` or `jobs/`: one copy of an object at a time.
    keys: HashSet<String>,
    /// Jobs and bytes held, committed or still arriving.
    held_jobs: usize,
    held_bytes: u64,
}

pub struct WriteThroughQueue {
    settings: WriteThroughSettings,
    incoming: PathBuf,
    jobs_dir: PathBuf,
    failed_dir: PathBuf,
    state: Mutex<State>,
    wake: Notify,
    places: Arc<Places>,
    next_id: AtomicU64,
    /// A job whose media was deleted meanwhile is dropped, never uploaded.
    tombstones: Arc<Tombstones>,
}

/// Room for one job in the queue, given back when dropped unless the job was committed.
pub struct Reservation {
    queue: Arc<WriteThroughQueue>,
    key: String,
    len: u64,
    committed: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.committed {
            self.queue.release(&self.key, self.len);
        }
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn ensure_dir(path: &Path) -> Result<(), QueueError> {
    std::fs::create_dir_all(path).map_err(|source| QueueError::Directory {
        path: path.to_path_buf(),
        source,
    })
}

impl WriteThroughQueue {
    /// Opens the queue directory, clears what stopped processes left in `incoming/` and
    /// loads the waiting jobs.
    pub fn open(
        settings: &WriteThroughSettings,
        places: Arc<Places>,
        tombstones: Arc<Tombstones>,
    ) -> Result<Arc<WriteThroughQueue>, QueueError> {
        let jobs_dir = settings.queue_dir.join("jobs");
        let failed_dir = settings.queue_dir.join("failed");
        for dir in [&jobs_dir, &failed_dir] {
            ensure_dir(dir)?;
        }
        // Copies still arriving when their process stopped are never complete; those of
        // a running process (the old one, during a graceful upgrade) are left alone.
        let incoming_root = settings.queue_dir.join("incoming");
        let incoming =
            crate::spool::own_spool(&incoming_root).map_err(|source| QueueError::Directory {
                path: incoming_root.clone(),
                source,
            })?;
        let queue = Arc::new(WriteThroughQueue {
            settings: settings.clone(),
            incoming,
            jobs_dir,
            failed_dir,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            places,
            next_id: AtomicU64::new(unix_nanos()),
            tombstones,
        });
        // Series start at 0, so rate() and alerts see them before the first event.
        let m = crate::metrics::get();
        for event in [
            "queued",
            "done",
            "failed",
            "dropped",
            "too_large",
            "tombstoned",
            "not_kept",
        ] {
            m.write_through_jobs.with_label_values(&[event]);
        }
        for source in ["stream", "cache"] {
            m.write_through_copied_bytes.with_label_values(&[source]);
        }
        for store in queue.places.store_names() {
            m.write_through_upload_errors
                .with_label_values(&[store.as_str()]);
            m.write_through_uploaded_bytes
                .with_label_values(&[store.as_str()]);
        }
        queue.recover()?;
        Ok(queue)
    }

    fn recover(&self) -> Result<(), QueueError> {
        let read = |dir: &Path| {
            std::fs::read_dir(dir).map_err(|source| QueueError::Directory {
                path: dir.to_path_buf(),
                source,
            })
        };
        let mut state = self.state.lock();
        let now = Instant::now();
        for entry in read(&self.jobs_dir)?.flatten() {
            let path = entry.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".body"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                // `.job` files are read with their body; temporary files are leftovers.
                if path.extension().is_some_and(|e| e != "job") {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            };
            // New ids must come after every id on disk, whatever the clock says.
            self.next_id
                .fetch_max(id.saturating_add(1), Ordering::Relaxed);
            match self.load_job(id, &path) {
                Some((file, key)) => {
                    state.keys.insert(file.key.clone());
                    state.held_jobs += 1;
                    state.held_bytes += file.len;
                    state.jobs.insert(
                        id,
                        Job {
                            file,
                            key,
                            due: now,
                            busy: false,
                        },
                    );
                }
                None => {
                    // A body whose job was never written: the copy was not complete.
                    let _ = std::fs::remove_file(&path);
                    let _ = std::fs::remove_file(self.job_path(id));
                }
            }
        }
        // Job files whose body is gone cannot be done.
        for entry in read(&self.jobs_dir)?.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "job") && !path.with_extension("body").exists()
            {
                let _ = std::fs::remove_file(&path);
            }
        }
        if !state.jobs.is_empty() {
            tracing::info!(
                jobs = state.jobs.len(),
                bytes = state.held_bytes,
                "write-through jobs resumed from disk"
            );
        }
        self.publish(&state);
        Ok(())
    }

    fn load_job(&self, id: u64, body: &Path) -> Option<(JobFile, ObjectKey)> {
        let text = std::fs::read(self.job_path(id)).ok()?;
        let len = std::fs::metadata(body).ok()?.len();
        parse_job(&text, len)
    }

    fn job_path(&self, id: u64) -> PathBuf {
        self.jobs_dir.join(format!("{id}.job"))
    }

    fn body_path(&self, id: u64) -> PathBuf {
        self.jobs_dir.join(format!("{id}.body"))
    }

    fn publish(&self, state: &State) {
        let m = metrics::get();
        m.write_through_queue_jobs.set(state.held_jobs as i64);
        m.write_through_queue_bytes
            .set(i64::try_from(state.held_bytes).unwrap_or(i64::MAX));
    }

    pub(super) fn count(&self, event: &str) {
        metrics::get()
            .write_through_jobs
            .with_label_values(&[event])
            .inc();
    }

    /// Where copies arrive (this process's directory under `incoming/`).
    pub fn arriving_dir(&self) -> &Path {
        &self.incoming
    }

    /// Room for a copy of an object: its reservation and where its file arrives, or `None`
    /// when the object is too large, already queued, or does not fit (then the drop is
    /// counted). See `arriving.rs` for how the copy then arrives.
    pub(super) fn take_room(self: &Arc<Self>, job: &NewJob) -> Option<(Reservation, PathBuf)> {
        if job.stores.is_empty() {
            return None;
        }
        if job.info.len > self.settings.max_object_size {
            self.count("too_large");
            return None;
        }
        let key = job.key.as_str().to_string();
        {
            let mut state = self.state.lock();
            if state.keys.contains(&key) {
                return None;
            }
            if state.held_jobs >= self.settings.max_jobs
                || state.held_bytes + job.info.len > self.settings.max_bytes
            {
                drop(state);
                self.count("dropped");
                tracing::warn!(key = %key, "write-through queue full; object not copied");
                return None;
            }
            state.keys.insert(key.clone());
            state.held_jobs += 1;
            state.held_bytes += job.info.len;
            self.publish(&state);
        }
        let reservation = Reservation {
            queue: self.clone(),
            key,
            len: job.info.len,
            committed: false,
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Some((reservation, self.incoming.join(format!("{id}.body"))))
    }

    fn release(&self, key: &str, len: u64) {
        let mut state = self.state.lock();
        state.keys.remove(key);
        state.held_jobs = state.held_jobs.saturating_sub(1);
        state.held_bytes = state.held_bytes.saturating_sub(len);
        self.publish(&state);
    }

    /// Makes a complete copy a job: body synced and moved into `jobs/`, then the job file.
    /// The body is the file's bytes from `offset` on.
    pub(super) fn commit(
        &self,
        file: std::fs::File,
        incoming: &Path,
        offset: u64,
        job: NewJob,
        md5: [u8; 16],
        mut reservation: Reservation,
    ) {
        let id = incoming
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or_else(|| self.next_id.fetch_add(1, Ordering::Relaxed));
        let record = JobFile {
            format: JOB_FORMAT,
            key: job.key.as_str().to_string(),
            stores: job.stores,
            len: job.info.len,
            content_type: job.info.content_type,
            md5: hex::encode(md5),
            attempts: 0,
            offset,
        };
        let stored = file
            .sync_all()
            .and_then(|()| std::fs::rename(incoming, self.body_path(id)))
            .and_then(|()| self.write_job_file(id, &record));
        if let Err(e) = stored {
            tracing::warn!(error = %e, key = %record.key, "cannot queue a write-through copy");
            let _ = std::fs::remove_file(incoming);
            let _ = std::fs::remove_file(self.body_path(id));
            return;
        }
        reservation.committed = true;
        self.state.lock().jobs.insert(
            id,
            Job {
                file: record,
                key: job.key,
                due: Instant::now(),
                busy: false,
            },
        );
        self.count("queued");
        self.wake.notify_one();
    }

    fn write_job_file(&self, id: u64, record: &JobFile) -> std::io::Result<()> {
        let text = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        let temp = self.jobs_dir.join(format!("{id}.job.tmp"));
        let mut file = std::fs::File::create(&temp)?;
        std::io::Write::write_all(&mut file, &text)?;
        file.sync_all()?;
        std::fs::rename(&temp, self.job_path(id))
    }

    /// The next job that is due, marked busy; or how long until one is.
    fn take_due(&self) -> Result<(u64, JobFile, ObjectKey), Option<Duration>> {
        let mut state = self.state.lock();
        let now = Instant::now();
        let mut soonest: Option<Instant> = None;
        for (id, job) in state.jobs.iter_mut() {
            if job.busy {
                continue;
            }
            if job.due <= now {
                job.busy = true;
                return Ok((*id, job.file.clone(), job.key.clone()));
            }
            soonest = Some(soonest.map_or(job.due, |s| s.min(job.due)));
        }
        Err(soonest.map(|s| s - now))
    }

    /// Uploads one job to every store that still lacks the object.
    async fn run_job(&self, id: u64, mut record: JobFile, key: ObjectKey) {
        let body = self.body_path(id);
        if !body.exists() {
            // During a graceful upgrade the old and the new process share this queue for a
            // few seconds, and the other one finished this job. A body that is gone cannot
            // be uploaded, so retrying would never end.
            tracing::info!(key = %key, "write-through job gone from disk (finished by another process); dropped");
            self.state.lock().jobs.remove(&id);
            self.release(&record.key, record.len);
            return;
        }
        // Queued before the media was deleted: uploading it now would bring it back.
        if self.tombstones.contains(&key) {
            tracing::info!(key = %key, "write-through job dropped: the media was deleted");
            let _ = std::fs::remove_file(self.job_path(id));
            let _ = std::fs::remove_file(&body);
            self.finish(id, &record, "tombstoned");
            return;
        }
        let mut md5 = [0u8; 16];
        if hex::decode_to_slice(&record.md5, &mut md5).is_err() {
            record.stores.clear();
        }
        let info = ObjectInfo {
            len: record.len,
            content_type: record.content_type.clone(),
            etag: None,
            last_modified: None,
        };
        let stores = std::mem::take(&mut record.stores);
        let file = BodyFile {
            path: body.clone(),
            offset: record.offset,
        };
        let remaining = self
            .upload(&key, &file, &info, md5, &mut record, stores)
            .await;
        record.stores = remaining;
        if record.stores.is_empty() {
            let _ = std::fs::remove_file(self.job_path(id));
            let _ = std::fs::remove_file(&body);
            self.finish(id, &record, "done");
            return;
        }
        self.retry_or_set_aside(id, record, &body).await;
    }

    /// Uploads the body to each of `stores`; returns those that failed (to retry).
    async fn upload(
        &self,
        key: &ObjectKey,
        body: &BodyFile,
        info: &ObjectInfo,
        md5: [u8; 16],
        record: &mut JobFile,
        stores: Vec<String>,
    ) -> Vec<String> {
        let m = metrics::get();
        let mut remaining = Vec::new();
        for name in stores {
            let Some(store) = self.places.store(&name) else {
                tracing::error!(store = %name, key = %key, "write-through job names a store that is not configured; set aside");
                remaining.push(name);
                record.attempts = u32::MAX;
                continue;
            };
            match store.put_file(key, body, info, md5).await {
                Ok(PutOutcome::Stored) => {
                    m.write_through_uploaded_bytes
                        .with_label_values(&[name.as_str()])
                        .inc_by(record.len);
                    tracing::info!(store = %name, key = %key, bytes = record.len, "written through");
                }
                Ok(PutOutcome::AlreadyPresent) => {
                    tracing::debug!(store = %name, key = %key, "already in the store");
                }
                Err(e) => {
                    m.write_through_upload_errors
                        .with_label_values(&[name.as_str()])
                        .inc();
                    tracing::warn!(store = %name, key = %key, error = %e, attempt = record.attempts.saturating_add(1), "write-through upload failed; will retry");
                    remaining.push(name);
                }
            }
        }
        remaining
    }

    /// A job some stores still lack: set aside past `max_attempts`, else due again after a
    /// backoff that doubles with each attempt up to `retry_max`.
    async fn retry_or_set_aside(&self, id: u64, mut record: JobFile, body: &Path) {
        record.attempts = record.attempts.saturating_add(1);
        let limit = self.settings.max_attempts;
        if record.attempts == u32::MAX || (limit > 0 && record.attempts >= limit) {
            let failed_body = self.failed_dir.join(format!("{id}.body"));
            let (from, offset, len) = (body.to_path_buf(), record.offset, record.len);
            match tokio::task::spawn_blocking(move || {
                set_aside_body(&from, offset, len, &failed_body)
            })
            .await
            {
                Ok(Ok(offset)) => record.offset = offset,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, key = %record.key, "cannot set aside the body of a failed write-through job; it stays in the queue's directory");
                }
                Err(e) => {
                    tracing::warn!(error = %e, key = %record.key, "setting aside the body of a failed write-through job stopped");
                }
            }
            let _ = self.write_job_file(id, &record);
            let _ = std::fs::rename(self.job_path(id), self.failed_dir.join(format!("{id}.job")));
            self.finish(id, &record, "failed");
            return;
        }
        if let Err(e) = self.write_job_file(id, &record) {
            tracing::warn!(error = %e, "cannot record a write-through retry; it keeps its old state on disk");
        }
        let shift = record.attempts.saturating_sub(1).min(20);
        let backoff = self
            .settings
            .retry_min
            .saturating_mul(1u32 << shift)
            .min(self.settings.retry_max);
        let mut state = self.state.lock();
        if let Some(job) = state.jobs.get_mut(&id) {
            job.file = record;
            job.busy = false;
            job.due = Instant::now() + backoff;
        }
    }

    fn finish(&self, id: u64, record: &JobFile, event: &str) {
        self.state.lock().jobs.remove(&id);
        self.release(&record.key, record.len);
        self.count(event);
    }

    async fn worker(&self) {
        loop {
            match self.take_due() {
                Ok((id, record, key)) => self.run_job(id, record, key).await,
                Err(wait) => {
                    let wait = wait.unwrap_or(Duration::from_secs(60));
                    let _ = tokio::time::timeout(wait, self.wake.notified()).await;
                }
            }
        }
    }
}

/// A job file read back, if it is one and its body file (`file_len` bytes, the body from
/// the job's offset on) is whole.
fn parse_job(text: &[u8], file_len: u64) -> Option<(JobFile, ObjectKey)> {
    let file: JobFile = serde_json::from_slice(text).ok()?;
    let key = ObjectKey::new(file.key.clone()).ok()?;
    let whole = file_len.checked_sub(file.offset) == Some(file.len);
    (file.format == JOB_FORMAT && whole).then_some((file, key))
}

/// Runs the queue's workers.
pub struct WriteThroughService {
    pub queue: Arc<WriteThroughQueue>,
}

#[async_trait]
impl BackgroundService for WriteThroughService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let workers = (0..self.queue.settings.workers).map(|_| {
            let queue = self.queue.clone();
            tokio::spawn(async move { queue.worker().await })
        });
        let handles: Vec<_> = workers.collect();
        let _ = shutdown.changed().await;
        // Jobs in flight stay on disk and run again after the restart.
        for handle in handles {
            handle.abort();
        }
    }
}

#[cfg(test)]
#[path = "queue_job_file_tests.rs"]
mod tests;
