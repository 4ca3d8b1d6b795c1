//! The copy a media body leaves on disk as it streams to the client, for write-through.
//!
//! Bytes go to a spool file under the queue's `incoming/` while they pass; the client's
//! stream never waits for anything but that local write. Only a body that ended cleanly
//! with exactly its announced length becomes a job: an error, a short or long body, a
//! failed local write or a client that went away first leaves nothing behind.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::StreamExt;
use md5::{Digest, Md5};

use super::queue::{NewJob, Reservation, WriteThroughQueue};
use crate::store::BodyStream;

pub struct Tee {
    queue: Arc<WriteThroughQueue>,
    file: Option<std::fs::File>,
    path: PathBuf,
    hasher: Md5,
    written: u64,
    job: Option<NewJob>,
    reservation: Option<Reservation>,
}

impl Tee {
    pub(super) fn new(
        queue: Arc<WriteThroughQueue>,
        file: std::fs::File,
        path: PathBuf,
        job: NewJob,
        reservation: Reservation,
    ) -> Tee {
        Tee {
            queue,
            file: Some(file),
            path,
            hasher: Md5::new(),
            written: 0,
            job: Some(job),
            reservation: Some(reservation),
        }
    }

    fn write(&mut self, chunk: &[u8]) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        if let Err(e) = file.write_all(chunk) {
            tracing::warn!(path = %self.path.display(), error = %e, "write-through copy failed; the object is not queued");
            self.abandon();
            return;
        }
        self.hasher.update(chunk);
        self.written += chunk.len() as u64;
        // The HTTP server stops polling a body once its Content-Length has been sent, so
        // the end is the last announced byte, not the end of the stream. The place's body
        // is already checked against that length (more bytes would be an error).
        if self
            .job
            .as_ref()
            .is_some_and(|job| self.written >= job.info.len)
        {
            self.finish();
        }
    }

    /// Hands the complete copy to the queue (off the client's path).
    fn finish(&mut self) {
        let (Some(file), Some(job), Some(reservation)) =
            (self.file.take(), self.job.take(), self.reservation.take())
        else {
            return;
        };
        if self.written != job.info.len {
            tracing::warn!(key = %job.key, written = self.written, expected = job.info.len, "write-through copy has the wrong length; not queued");
            let _ = std::fs::remove_file(&self.path);
            return;
        }
        let md5: [u8; 16] = self.hasher.clone().finalize().into();
        let queue = self.queue.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || queue.commit(file, &path, job, md5, reservation));
    }

    fn abandon(&mut self) {
        self.job = None;
        self.reservation = None;
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        self.abandon();
    }
}

/// `body` as the client gets it, copied into `tee` on the way.
pub fn tee_body(body: BodyStream, tee: Tee) -> BodyStream {
    Box::pin(futures_util::stream::unfold(
        (body, Some(tee)),
        |(mut body, mut tee)| async move {
            match body.next().await {
                Some(Ok(chunk)) => {
                    if let Some(tee) = tee.as_mut() {
                        tee.write(&chunk);
                    }
                    Some((Ok(chunk), (body, tee)))
                }
                Some(Err(e)) => {
                    // Dropping the tee removes the partial copy.
                    Some((Err(e), (body, None)))
                }
                None => {
                    if let Some(mut tee) = tee {
                        tee.finish();
                    }
                    None
                }
            }
        },
    ))
}
