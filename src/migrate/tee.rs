//! The copy a media body leaves on disk as it streams to the client, for write-through.
//!
//! Chunks are handed to a writer on the blocking pool through a bounded channel; the
//! client's stream never waits for the disk. If the writer falls behind, the copy is given
//! up, not the client. Only a body whose announced length arrived whole becomes a job: an
//! error, a short body, a failed local write or a client that went away first leaves
//! nothing behind.

use std::io::Write;
use std::path::PathBuf;

use bytes::Bytes;
use futures_util::StreamExt;
use md5::{Digest, Md5};
use tokio::sync::mpsc;

use crate::store::BodyStream;

/// What becomes of a whole copy: the file (written, not yet synced), its path and the
/// MD5 of its bytes. Dropped uncalled when the copy is incomplete.
pub type OnComplete = Box<dyn FnOnce(std::fs::File, PathBuf, [u8; 16]) + Send>;

/// Chunks waiting for the writer at most (about 2 MiB of a typical body).
const CHUNKS_IN_FLIGHT: usize = 32;

/// The streaming side of a copy.
pub struct Tee {
    chunks: Option<mpsc::Sender<Bytes>>,
    sent: u64,
    len: u64,
}

impl Tee {
    /// Copies a body of `len` bytes into `file` at `path`; `on_complete` is called with it
    /// only when exactly `len` bytes arrived and were written.
    pub(super) fn start(
        file: std::fs::File,
        path: PathBuf,
        len: u64,
        on_complete: OnComplete,
    ) -> Tee {
        let (sender, receiver) = mpsc::channel(CHUNKS_IN_FLIGHT);
        tokio::task::spawn_blocking(move || {
            write_copy(file, path, len, on_complete, receiver);
        });
        Tee {
            chunks: Some(sender),
            sent: 0,
            len,
        }
    }

    fn pass(&mut self, chunk: &Bytes) {
        let Some(chunks) = &self.chunks else {
            return;
        };
        if chunks.try_send(chunk.clone()).is_err() {
            tracing::warn!("write-through copy fell behind the client; not queued");
            self.chunks = None;
            return;
        }
        self.sent += chunk.len() as u64;
        // The HTTP server stops polling a body once its Content-Length has been sent, so
        // the end is the last announced byte, not the end of the stream. The place's body
        // is already checked against that length (more bytes would be an error).
        if self.sent >= self.len {
            self.chunks = None;
        }
    }
}

/// Writes the chunks; when the channel closes, a copy of exactly the announced length
/// is handed on and anything else is removed.
fn write_copy(
    mut file: std::fs::File,
    path: PathBuf,
    len: u64,
    on_complete: OnComplete,
    mut chunks: mpsc::Receiver<Bytes>,
) {
    let mut hasher = Md5::new();
    let mut written = 0u64;
    while let Some(chunk) = chunks.blocking_recv() {
        if let Err(e) = file.write_all(&chunk) {
            tracing::warn!(path = %path.display(), error = %e, "write-through copy failed; not queued");
            let _ = std::fs::remove_file(&path);
            return;
        }
        hasher.update(&chunk);
        written += chunk.len() as u64;
    }
    if written != len {
        tracing::debug!(path = %path.display(), written, expected = len, "write-through copy incomplete; not queued");
        let _ = std::fs::remove_file(&path);
        return;
    }
    on_complete(file, path, hasher.finalize().into());
}

/// `body` as the client gets it, copied into `tee` on the way.
pub fn tee_body(body: BodyStream, tee: Tee) -> BodyStream {
    Box::pin(futures_util::stream::unfold(
        (body, Some(tee)),
        |(mut body, mut tee)| async move {
            match body.next().await {
                Some(Ok(chunk)) => {
                    if let Some(tee) = tee.as_mut() {
                        tee.pass(&chunk);
                    }
                    Some((Ok(chunk), (body, tee)))
                }
                // Dropping the tee closes the channel short of the length: no job.
                Some(Err(e)) => Some((Err(e), (body, None))),
                None => None,
            }
        },
    ))
}
