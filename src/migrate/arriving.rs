//! How a reserved write-through copy arrives on local disk: spooled by the copy itself as
//! the body streams to the client ([`Reserved::tee`]), or as the cache's own file of the
//! same body, hard-linked into the queue ([`Reserved::linked`]), so a body the cache keeps
//! on disk is written there once and not a second time for the copy.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use md5::{Digest, Md5};

use super::queue::{NewJob, Reservation, WriteThroughQueue};
use super::tee::{OnComplete, Tee};
use crate::metrics;

/// Hashing reads this much at a time.
const READ_CHUNK: usize = 256 * 1024;

impl WriteThroughQueue {
    /// Starts a copy of an object on its way to a client, spooled as it streams ([`Tee`]),
    /// or `None` when it is not to be copied (see [`WriteThroughQueue::reserve`]).
    pub fn begin(self: &Arc<Self>, job: NewJob) -> Option<Tee> {
        self.reserve(job)?.tee()
    }

    /// Room for a copy of an object, or `None` when the object is too large, already
    /// queued, or does not fit (then the drop is counted). The copy then arrives either as
    /// the body streams ([`Reserved::tee`]) or as a file laid down by someone else, the
    /// cache ([`Reserved::linked`]).
    pub fn reserve(self: &Arc<Self>, job: NewJob) -> Option<Reserved> {
        let (reservation, arriving) = self.take_room(&job)?;
        Some(Reserved {
            queue: self.clone(),
            arriving,
            job,
            reservation,
        })
    }
}

/// Room in the queue for one copy, and where its file arrives.
pub struct Reserved {
    queue: Arc<WriteThroughQueue>,
    /// The copy's file under `incoming/`, moved into `jobs/` once complete.
    arriving: PathBuf,
    job: NewJob,
    reservation: Reservation,
}

impl Reserved {
    /// The copy is written as the body streams by; `None` when the file cannot be made.
    pub fn tee(self) -> Option<Tee> {
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&self.arriving);
        let file = match created {
            Ok(file) => file,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a write-through copy");
                return None;
            }
        };
        let Reserved {
            queue,
            arriving,
            job,
            reservation,
        } = self;
        let len = job.info.len;
        let on_complete: OnComplete = Box::new(move |file, path, md5| {
            metrics::get()
                .write_through_copied_bytes
                .with_label_values(&["stream"])
                .inc_by(len);
            queue.commit(file, &path, 0, job, md5, reservation);
        });
        Some(Tee::start(file, arriving, len, on_complete))
    }

    /// The copy will be a file someone else lays at [`LinkedCopy::destination`].
    pub fn linked(self) -> LinkedCopy {
        LinkedCopy {
            reserved: Some(self),
        }
    }
}

/// A copy waiting for its file: whoever has the body on disk links it to
/// [`LinkedCopy::destination`] and calls [`LinkedCopy::adopt`]. Dropped instead, the room
/// is given back and anything laid there removed.
pub struct LinkedCopy {
    reserved: Option<Reserved>,
}

impl LinkedCopy {
    /// Where the file is to be linked (in the queue's directory, so on its filesystem).
    pub fn destination(&self) -> Option<&Path> {
        self.reserved.as_ref().map(|r| r.arriving.as_path())
    }

    /// The file at the destination now holds the body from `offset` on. Its length is
    /// checked and its bytes hashed on the blocking pool, then it is queued like any copy;
    /// a file of the wrong length is removed and nothing is queued.
    pub fn adopt(mut self, offset: u64) {
        let Some(reserved) = self.reserved.take() else {
            return;
        };
        tokio::task::spawn_blocking(move || adopt_file(reserved, offset));
    }
}

impl Drop for LinkedCopy {
    fn drop(&mut self) {
        if let Some(reserved) = self.reserved.take() {
            reserved.queue.count("not_kept");
            remove_if_there(&reserved.arriving);
        }
    }
}

fn adopt_file(reserved: Reserved, offset: u64) {
    let Reserved {
        queue,
        arriving,
        job,
        reservation,
    } = reserved;
    let len = job.info.len;
    match hash_span(&arriving, offset, len) {
        Ok((file, md5)) => {
            metrics::get()
                .write_through_copied_bytes
                .with_label_values(&["cache"])
                .inc_by(len);
            queue.commit(file, &arriving, offset, job, md5, reservation);
        }
        Err(e) => {
            tracing::warn!(key = %job.key, error = %e, "the cache's file of a body cannot be the write-through copy; not queued");
            queue.count("not_kept");
            remove_if_there(&arriving);
        }
    }
}

/// Opens `path`, checks it holds exactly `len` bytes after `offset`, and hashes them.
fn hash_span(path: &Path, offset: u64, len: u64) -> std::io::Result<(std::fs::File, [u8; 16])> {
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    if size.checked_sub(offset) != Some(len) {
        return Err(std::io::Error::other(format!(
            "{size} bytes in the file, {len} after {offset} expected"
        )));
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left.min(READ_CHUNK as u64)).unwrap_or(READ_CHUNK);
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::other("the file ended early"));
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok((file, hasher.finalize().into()))
}

fn remove_if_there(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a write-through copy")
        }
    }
}
