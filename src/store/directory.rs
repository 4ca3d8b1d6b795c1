//! A directory as a media place: an old server's `public/system` (local or NFS) to read
//! from, or, for a PoP without an object store (the embedded default), the store itself.
//!
//! Reads run on tokio's blocking pool; every one is bounded by the configured timeout so a
//! dying disk slows a request down but never holds it forever. Writes land in a temporary
//! file first and are linked into place, which fails rather than replaces when an object is
//! already there.

use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use md5::{Digest, Md5};
use tokio::sync::Semaphore;

use super::{
    BodyFile, BodyStream, ByteRange, Found, Lookup, ObjectInfo, ObjectKey, ObjectStore, PutOutcome,
    Source, StoreError, Unsatisfiable,
};

/// Where temporary files of writes live, inside the root so the final link stays on one
/// file system. Keys under it are never served, and walks skip it.
pub const TEMP_DIR: &str = ".edgecache-tmp";

const READ_CHUNK: usize = 64 * 1024;

pub struct DirectoryStore {
    name: String,
    root: PathBuf,
    timeout: Duration,
    /// File operations running on the blocking pool. A read that hangs on a dying disk
    /// keeps its slot until it returns, whatever the request did meanwhile, so hung reads
    /// cannot pile up past this bound.
    slots: Arc<Semaphore>,
}

impl DirectoryStore {
    pub fn new(
        name: &str,
        root: PathBuf,
        timeout: Duration,
        max_concurrency: usize,
    ) -> DirectoryStore {
        DirectoryStore {
            name: name.to_string(),
            root,
            timeout,
            slots: Arc::new(Semaphore::new(max_concurrency.max(1))),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &ObjectKey) -> PathBuf {
        self.root.join(key.as_str())
    }

    fn io_error(&self, what: &str, source: std::io::Error) -> StoreError {
        StoreError::Io {
            store: self.name.clone(),
            message: format!("{what}: {source}"),
            source,
        }
    }

    /// Runs blocking file work on the blocking pool, in a slot, bounded by `timeout`.
    async fn blocking<T: Send + 'static>(
        &self,
        timeout: Option<Duration>,
        work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> Result<std::io::Result<T>, StoreError> {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            return Err(StoreError::Shed {
                store: self.name.clone(),
            });
        };
        let task = tokio::task::spawn_blocking(move || {
            let result = work();
            drop(slot);
            result
        });
        let timeout = timeout.unwrap_or(Duration::MAX);
        match tokio::time::timeout(timeout, task).await {
            Err(_) => Err(StoreError::Timeout {
                store: self.name.clone(),
                seconds: self.timeout.as_secs_f64(),
            }),
            Ok(Err(join)) => Err(StoreError::Unavailable {
                store: self.name.clone(),
                message: format!("file task failed: {join}"),
            }),
            Ok(Ok(result)) => Ok(result),
        }
    }
}

/// What the file system says about a file, in HTTP's terms. The ETag is built from the
/// modification time and length, the way web servers serving a directory do.
fn info_of(key: &ObjectKey, meta: &std::fs::Metadata) -> ObjectInfo {
    let modified = meta.modified().ok();
    let seconds = modified
        .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    ObjectInfo {
        len: meta.len(),
        content_type: Some(crate::wire::content_type_for(key.as_str()).to_string()),
        etag: Some(format!("\"{seconds:x}-{:x}\"", meta.len())),
        last_modified: modified.map(httpdate::fmt_http_date),
    }
}

/// Reads `len` bytes from `file` in chunks, each read in a slot and bounded by `timeout`.
fn file_body(
    file: std::fs::File,
    len: u64,
    timeout: Duration,
    slots: Arc<Semaphore>,
) -> BodyStream {
    let state = (Some(file), len);
    Box::pin(futures_util::stream::unfold(state, move |(file, left)| {
        let slots = slots.clone();
        async move {
            let mut file = file?;
            if left == 0 {
                return None;
            }
            let Ok(slot) = slots.try_acquire_owned() else {
                return Some((
                    Err(std::io::Error::other(
                        "too many reads of this directory are stuck",
                    )),
                    (None, 0),
                ));
            };
            let want = usize::try_from(left).unwrap_or(READ_CHUNK).min(READ_CHUNK);
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; want];
                let n = file.read(&mut buf);
                drop(slot);
                let n = n?;
                buf.truncate(n);
                Ok::<_, std::io::Error>((file, buf))
            });
            let chunk = match tokio::time::timeout(timeout, read).await {
                Err(_) => Err(std::io::Error::new(
                    ErrorKind::TimedOut,
                    "reading the file timed out",
                )),
                Ok(Err(join)) => Err(std::io::Error::other(join.to_string())),
                Ok(Ok(result)) => result,
            };
            match chunk {
                Ok((_, buf)) if buf.is_empty() => Some((
                    Err(std::io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "the file is shorter than when it was opened",
                    )),
                    (None, 0),
                )),
                Ok((file, buf)) => {
                    let n = buf.len() as u64;
                    Some((Ok(Bytes::from(buf)), (Some(file), left - n)))
                }
                Err(e) => Some((Err(e), (None, 0))),
            }
        }
    }))
}

#[async_trait]
impl Source for DirectoryStore {
    fn name(&self) -> &str {
        &self.name
    }

    async fn get(
        &self,
        key: &ObjectKey,
        range: Option<ByteRange>,
        with_body: bool,
    ) -> Result<Lookup, StoreError> {
        if key.as_str().split('/').next() == Some(TEMP_DIR) {
            return Ok(Lookup::Absent);
        }
        let path = self.path_of(key);
        let opened = self
            .blocking(Some(self.timeout), move || {
                let mut file = match std::fs::File::open(&path) {
                    Ok(file) => file,
                    Err(e)
                        if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) =>
                    {
                        return Ok(None)
                    }
                    Err(e) => return Err(e),
                };
                let meta = file.metadata()?;
                if !meta.is_file() {
                    return Ok(None);
                }
                let span = range.map(|r| r.resolve(meta.len()));
                if let Some(Some((first, _))) = span {
                    file.seek(SeekFrom::Start(first))?;
                }
                Ok(Some((file, meta, span)))
            })
            .await?
            .map_err(|e| self.io_error("open", e))?;
        let Some((file, meta, span)) = opened else {
            return Ok(Lookup::Absent);
        };
        let info = info_of(key, &meta);
        let range = match span {
            Some(None) => return Ok(Lookup::RangeNotSatisfiable(Unsatisfiable { len: info.len })),
            Some(Some(span)) => Some(span),
            None => None,
        };
        let mut found = Found {
            info,
            range,
            body: None,
        };
        if with_body {
            found.body = Some(file_body(
                file,
                found.body_len(),
                self.timeout,
                self.slots.clone(),
            ));
        }
        Ok(Lookup::Found(found))
    }
}

#[async_trait]
impl ObjectStore for DirectoryStore {
    async fn check(&self) -> Result<(), StoreError> {
        let root = self.root.clone();
        let is_dir = self
            .blocking(Some(self.timeout), move || Ok(root.is_dir()))
            .await?
            .unwrap_or(false);
        if is_dir {
            Ok(())
        } else {
            Err(StoreError::Unavailable {
                store: self.name.clone(),
                message: format!("{} is not a directory", self.root.display()),
            })
        }
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectInfo>, StoreError> {
        match self.get(key, None, false).await? {
            Lookup::Found(found) => Ok(Some(found.info)),
            _ => Ok(None),
        }
    }

    async fn put_file(
        &self,
        key: &ObjectKey,
        body: &BodyFile,
        info: &ObjectInfo,
        md5: [u8; 16],
    ) -> Result<PutOutcome, StoreError> {
        let source = body.clone();
        let target = self.path_of(key);
        let temp_dir = self.root.join(TEMP_DIR);
        let expected_len = info.len;
        let store = self.name.clone();
        let key_text = key.to_string();
        // A copy takes as long as its size needs: no read timeout here.
        let outcome = self
            .blocking(None, move || {
                copy_into_place(&source, &temp_dir, &target, expected_len, md5)
            })
            .await?
            .map_err(|e| self.io_error("write", e))?;
        match outcome {
            Copied::Placed => Ok(PutOutcome::Stored),
            Copied::Exists => Ok(PutOutcome::AlreadyPresent),
            Copied::Mismatch(message) => Err(StoreError::Verification {
                store,
                key: key_text,
                message,
            }),
        }
    }
}

enum Copied {
    Placed,
    Exists,
    Mismatch(String),
}

/// Copies the `expected_len` bytes of `source` to a temporary file while hashing them,
/// checks length and digest, then links it to `target` (which fails, leaving the existing
/// object alone, if one is there).
fn copy_into_place(
    source: &BodyFile,
    temp_dir: &Path,
    target: &Path,
    expected_len: u64,
    md5: [u8; 16],
) -> std::io::Result<Copied> {
    if target.exists() {
        return Ok(Copied::Exists);
    }
    std::fs::create_dir_all(temp_dir)?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let temp = temp_dir.join(format!("{}-{nanos:x}", std::process::id()));
    let result = (|| {
        let mut input = std::fs::File::open(&source.path)?;
        input.seek(SeekFrom::Start(source.offset))?;
        // A longer file (the cache's, say) holds more than this body.
        let mut input = input.take(expected_len);
        let mut output = std::fs::File::create(&temp)?;
        let mut hasher = Md5::new();
        let mut buf = vec![0u8; READ_CHUNK];
        let mut written = 0u64;
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            output.write_all(&buf[..n])?;
            written += n as u64;
        }
        output.sync_all()?;
        if written != expected_len {
            return Ok(Copied::Mismatch(format!(
                "{written} bytes written, {expected_len} expected"
            )));
        }
        if hasher.finalize().as_slice() != md5 {
            return Ok(Copied::Mismatch("MD5 digest differs".to_string()));
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::hard_link(&temp, target) {
            Ok(()) => Ok(Copied::Placed),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(Copied::Exists),
            Err(e) => Err(e),
        }
    })();
    let _ = std::fs::remove_file(&temp);
    result
}
