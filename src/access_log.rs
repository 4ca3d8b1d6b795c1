//! One JSON line per request, written off the request path.
//!
//! Requests hand their line to a bounded queue and never wait on the disk: a dedicated
//! thread writes and flushes. When the writer falls behind by `queue_size` lines, new lines
//! are dropped and counted in `edgecache_access_log_dropped_total` rather than slowing the
//! edge down or growing memory without bound. The file is reopened on reload, so logrotate
//! can move it away and signal us.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::thread;

use serde::Serialize;

use crate::config::file::AccessLogOutput;
use crate::config::model::AccessLog;
use crate::metrics;

/// The fields of one access-log line.
#[derive(Debug, Serialize)]
pub struct AccessRecord<'a> {
    /// RFC 3339 time the request started, UTC.
    pub time: String,
    pub listener: &'a str,
    pub client_ip: String,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub protocol: &'a str,
    pub status: u16,
    /// Response body bytes sent to the client.
    pub bytes: usize,
    pub duration_ms: f64,
    /// The core host that answered, empty when none did.
    pub upstream: &'a str,
    pub upstream_status: Option<u16>,
    /// HIT, MISS, ...; empty while no cache sits in the path.
    pub cache: &'a str,
    pub user_agent: &'a str,
    pub referer: &'a str,
    /// Why the request failed, when it did.
    pub error: Option<String>,
    /// The `X-Request-Id` sent to the core (the client's, or one made here).
    pub request_id: &'a str,
}

enum Message {
    Line(String),
    Reopen,
}

/// The access log's sending side; cheap to clone.
#[derive(Clone)]
pub struct AccessLogger {
    sender: Option<SyncSender<Message>>,
}

#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    #[error("cannot open access log {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot start the access-log writer: {0}")]
    Thread(io::Error),
}

impl AccessLogger {
    /// Opens the destination and starts the writer thread.
    pub fn start(config: &AccessLog) -> Result<Self, AccessLogError> {
        let sink = match (config.output, &config.path) {
            (AccessLogOutput::Off, _) => return Ok(AccessLogger { sender: None }),
            (AccessLogOutput::File, Some(path)) => Sink::File {
                writer: open_append(path)?,
                path: path.clone(),
            },
            _ => Sink::Stdout(BufWriter::new(io::stdout())),
        };
        let (sender, receiver) = sync_channel(config.queue_size);
        thread::Builder::new()
            .name("access-log".to_string())
            .spawn(move || write_lines(receiver, sink))
            .map_err(AccessLogError::Thread)?;
        Ok(AccessLogger {
            sender: Some(sender),
        })
    }

    /// Whether lines are written at all (`output: off` writes none), so callers can skip
    /// building them.
    pub fn enabled(&self) -> bool {
        self.sender.is_some()
    }

    /// Queues one line; drops it (and counts the drop) when the queue is full.
    pub fn log(&self, record: &AccessRecord<'_>) {
        let Some(sender) = &self.sender else {
            return;
        };
        let Ok(line) = serde_json::to_string(record) else {
            return;
        };
        if let Err(TrySendError::Full(_)) = sender.try_send(Message::Line(line)) {
            metrics::get().access_log_dropped.inc();
        }
    }

    /// Asks the writer to reopen its file (after logrotate moved it). Waits for room in the
    /// queue, so the request is never lost; called from reloads, never from requests.
    pub fn reopen(&self) {
        if let Some(sender) = &self.sender {
            let _ = sender.send(Message::Reopen);
        }
    }
}

enum Sink {
    Stdout(BufWriter<io::Stdout>),
    File {
        writer: BufWriter<File>,
        path: PathBuf,
    },
}

impl Sink {
    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::Stdout(w) => w,
            Sink::File { writer, .. } => writer,
        }
    }
}

fn open_append(path: &Path) -> Result<BufWriter<File>, AccessLogError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(BufWriter::new)
        .map_err(|source| AccessLogError::Open {
            path: path.to_path_buf(),
            source,
        })
}

fn write_lines(receiver: Receiver<Message>, mut sink: Sink) {
    while let Ok(first) = receiver.recv() {
        let mut next = Some(first);
        // Write everything already queued, then flush once: one syscall per burst.
        while let Some(message) = next {
            match message {
                Message::Line(line) => {
                    let out = sink.writer();
                    if out
                        .write_all(line.as_bytes())
                        .and_then(|_| out.write_all(b"\n"))
                        .is_err()
                    {
                        metrics::get().access_log_dropped.inc();
                    }
                }
                Message::Reopen => {
                    if let Sink::File { writer, path } = &mut sink {
                        let _ = writer.flush();
                        match open_append(path) {
                            Ok(new_writer) => *writer = new_writer,
                            Err(e) => tracing::error!(error = %e, "access log not reopened"),
                        }
                    }
                }
            }
            next = receiver.try_recv().ok();
        }
        let _ = sink.writer().flush();
    }
}
