//! Graceful binary upgrade: a new edgecache process takes over the listening sockets of the
//! running one, so no connection is refused while the binary is replaced.
//!
//! The handover is pingora's: the new process (`serve --upgrade`) listens on
//! `server.upgrade_socket`; the old one, on SIGQUIT, sends it every listening socket over
//! that Unix socket, keeps serving what it has for a few seconds, then drains its requests
//! in flight for `server.grace_period` and exits. What this module adds is the ordering
//! that makes a failed upgrade harmless: the old process starts its successor itself
//! (on SIGUSR2 or `POST /upgrade`), and the successor asks for the sockets (by sending the
//! old process SIGQUIT) only after it has loaded its config and opened its caches, stores
//! and queues. A successor that cannot start exits before anything was handed over, and the
//! old process keeps serving.
//!
//! The successor is a child of the running process, so under systemd it stays in the
//! service's cgroup; it then tells systemd it is the main process (`MAINPID=`), which is
//! why the unit uses `Type=notify` with `NotifyAccess=all`.
//!
//! pingora's own signal handling hands the sockets over on any SIGQUIT, even when no new
//! process is there to take them, and then stops: [`ShutdownSignals`] goes ahead only when
//! a successor listens on the upgrade socket, and otherwise keeps serving.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::Config;
use crate::metrics;

/// How long `POST /upgrade` waits for the successor to ask for the sockets before it
/// answers that the successor is still getting ready (a large disk cache takes a while to
/// index).
const HANDOVER_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("the config the new process would start with is refused, nothing was started:\n{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("the config changes the listening addresses or the upgrade socket ({0}); an upgrade hands over the sockets it has, so restart instead")]
    SocketsChanged(String),
    #[error("an upgrade is already under way (new process {0})")]
    InProgress(u32),
    #[error("this process is already handing over to a new one")]
    HandingOver,
    #[error("the upgrade socket's directory {directory} cannot be used: {source}")]
    SocketDirectory {
        directory: PathBuf,
        source: std::io::Error,
    },
    #[error("--upgrade-from {0} is not the process that started this one")]
    NotParent(u32),
    #[error("this process is shutting down")]
    ShuttingDown,
    #[error("cannot start the new binary {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("the new process exited with {0} before taking over (its log says why); this process keeps serving")]
    Exited(ExitStatus),
    #[error("cannot tell the running process {pid} to hand over: {source}")]
    Signal { pid: i32, source: nix::Error },
}

/// What an upgrade request led to.
#[derive(Debug, PartialEq, Eq)]
pub enum UpgradeStarted {
    /// The new process asked for the listening sockets; this one now drains and exits.
    HandedOver { pid: u32 },
    /// The new process is running but still setting up; it asks for the sockets when ready.
    StillStarting { pid: u32 },
}

impl std::fmt::Display for UpgradeStarted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpgradeStarted::HandedOver { pid } => write!(
                f,
                "upgrade: handed over to the new process {pid}; this one drains and exits"
            ),
            UpgradeStarted::StillStarting { pid } => write!(
                f,
                "upgrade: the new process {pid} is still setting up; it takes over when ready (watch its log)"
            ),
        }
    }
}

/// Starts successors. One per running process; shared by the signal service and the admin
/// listener.
pub struct Upgrader {
    /// What the running process listens on: the new one must ask for exactly these.
    sockets: HandedOverSockets,
    /// The binary's path as it was at start. An upgrade replaces the file at this path, so
    /// starting "the same path" again starts the new binary.
    binary: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    /// Every listener's bound address, by name: the successor's port-0 listeners keep
    /// theirs, so the sockets it is handed are the ones it looks for.
    bound: Vec<(String, std::net::SocketAddr)>,
    /// Where this process reported its addresses; the successor reports there too.
    addresses_file: Option<PathBuf>,
    /// The successor being started, if any.
    successor: Mutex<Option<u32>>,
    /// Set when this process got SIGQUIT from a successor: its sockets are being handed
    /// over.
    handing_over: AtomicBool,
    /// Set at SIGTERM: a successor would never get the sockets.
    shutting_down: AtomicBool,
}

/// The sockets a handover moves, and the Unix socket it goes through.
#[derive(Debug, PartialEq, Eq)]
struct HandedOverSockets {
    listening: Vec<std::net::SocketAddr>,
    upgrade_socket: PathBuf,
}

impl HandedOverSockets {
    fn of(config: &Config) -> HandedOverSockets {
        let mut listening: Vec<_> = config
            .listeners
            .iter()
            .map(|l| l.address)
            .chain(std::iter::once(config.admin.address))
            .collect();
        listening.sort();
        HandedOverSockets {
            listening,
            upgrade_socket: config.server.upgrade_socket.clone(),
        }
    }
}

impl Upgrader {
    pub fn new(
        config: &Config,
        bound: Vec<(String, std::net::SocketAddr)>,
        addresses_file: Option<PathBuf>,
    ) -> Arc<Upgrader> {
        // Read now: once the binary is replaced, /proc/self/exe names a deleted file.
        let binary = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("edgecache"));
        Arc::new(Upgrader {
            sockets: HandedOverSockets::of(config),
            binary,
            config: config.source.clone(),
            socket: config.server.upgrade_socket.clone(),
            bound,
            addresses_file,
            successor: Mutex::new(None),
            handing_over: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
        })
    }

    /// Starts the binary now on disk as this process's successor and waits (at most
    /// `HANDOVER_WAIT`) until it asks for the sockets or exits. Blocking.
    pub fn start(self: &Arc<Self>) -> Result<UpgradeStarted, UpgradeError> {
        if self.handing_over.load(Ordering::SeqCst) {
            return Err(UpgradeError::HandingOver);
        }
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(UpgradeError::ShuttingDown);
        }
        let mut successor = self.successor.lock();
        if let Some(pid) = *successor {
            return Err(UpgradeError::InProgress(pid));
        }
        // Refused here, a bad config costs nothing; the new process would refuse it too, but
        // only after the caller had stopped waiting.
        let next = crate::config::load(&self.config)?;
        let wanted = HandedOverSockets::of(&next);
        if wanted != self.sockets {
            return Err(UpgradeError::SocketsChanged(format!(
                "running: {:?} via {}; new config: {:?} via {}",
                self.sockets.listening,
                self.sockets.upgrade_socket.display(),
                wanted.listening,
                wanted.upgrade_socket.display()
            )));
        }
        prepare_socket_directory(&self.socket)?;
        // A socket file left by an earlier attempt would look like a listening successor.
        let _ = std::fs::remove_file(&self.socket);
        let mut command = Command::new(&self.binary);
        command
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--upgrade")
            .arg("--upgrade-from")
            .arg(std::process::id().to_string());
        for (name, address) in &self.bound {
            command
                .arg("--inherit-address")
                .arg(format!("{name}={address}"));
        }
        if let Some(file) = &self.addresses_file {
            command.arg("--addresses-file").arg(file);
        }
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .map_err(|source| UpgradeError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        let pid = child.id();
        *successor = Some(pid);
        drop(successor);
        tracing::info!(pid, binary = %self.binary.display(), "upgrade: started the new binary");
        let exited = self.watch(child);

        let deadline = Instant::now() + HANDOVER_WAIT;
        loop {
            if self.handing_over.load(Ordering::SeqCst) {
                return Ok(UpgradeStarted::HandedOver { pid });
            }
            match exited.recv_timeout(Duration::from_millis(50)) {
                Ok(status) => return Err(UpgradeError::Exited(status)),
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                // The watcher only hangs up without a status once the handover has begun.
                Err(mpsc::RecvTimeoutError::Disconnected)
                    if self.handing_over.load(Ordering::SeqCst) =>
                {
                    return Ok(UpgradeStarted::HandedOver { pid })
                }
                Err(_) => return Ok(UpgradeStarted::StillStarting { pid }),
            }
        }
    }

    /// Reaps the successor on a thread of its own; if it exits before taking over, the
    /// upgrade has failed and another may be tried.
    fn watch(self: &Arc<Self>, mut child: Child) -> mpsc::Receiver<ExitStatus> {
        let (sender, receiver) = mpsc::sync_channel(1);
        let upgrader = self.clone();
        std::thread::spawn(move || {
            let pid = child.id();
            let status = match child.wait() {
                Ok(status) => status,
                Err(e) => {
                    tracing::error!(pid, error = %e, "upgrade: cannot wait for the new process");
                    return;
                }
            };
            if upgrader.handing_over.load(Ordering::SeqCst) {
                // It took over and has now exited too; that is its own story.
                return;
            }
            metrics::get().upgrade_failures.inc();
            tracing::error!(pid, %status, "upgrade failed: the new process exited before taking over; this process keeps serving");
            *upgrader.successor.lock() = None;
            let _ = sender.send(status);
        });
        receiver
    }

    fn handover_started(&self) {
        self.handing_over.store(true, Ordering::SeqCst);
    }

    fn shutdown_started(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Whether a successor listens on the upgrade socket, waiting a little for one that
    /// sent its SIGQUIT just before binding it.
    async fn successor_listening(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        let deadline = tokio::time::Instant::now() + SUCCESSOR_BIND_WAIT;
        loop {
            if std::fs::symlink_metadata(&self.socket).is_ok_and(|m| m.file_type().is_socket()) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// How long a SIGQUIT waits for the upgrade socket to appear before it is taken for a
/// stray signal.
const SUCCESSOR_BIND_WAIT: Duration = Duration::from_secs(5);

mod signals;
mod successor;

pub use signals::{hold_upgrade_signal, ShutdownSignals, UpgradeService};
pub use successor::{ask_for_sockets, prepare_socket_directory, watch_predecessor_exit};

/// Tells systemd (when it started this process with `Type=notify`) that the service is
/// ready and, after an upgrade, which process is now its main one. Does nothing outside
/// systemd.
fn notify_service_manager(socket: Option<&std::ffi::OsStr>, upgraded: bool) {
    let Some(path) = socket else {
        return;
    };
    let message = if upgraded {
        format!("MAINPID={}\nREADY=1\n", std::process::id())
    } else {
        "READY=1\n".to_string()
    };
    let sent = notify_socket_address(path).and_then(|address| {
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        socket.send_to_addr(message.as_bytes(), &address)
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd of readiness");
    }
}

/// `NOTIFY_SOCKET` is a path, or an abstract socket name written with a leading `@`.
fn notify_socket_address(
    path: &std::ffi::OsStr,
) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    match path.as_bytes().strip_prefix(b"@") {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name),
        None => std::os::unix::net::SocketAddr::from_pathname(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn notify_socket_names_are_paths_or_abstract() {
        let abstract_name =
            notify_socket_address(std::ffi::OsStr::new("@/org/systemd/notify")).expect("abstract");
        assert!(abstract_name.as_pathname().is_none());
        let path =
            notify_socket_address(std::ffi::OsStr::new("/run/systemd/notify")).expect("path");
        assert_eq!(path.as_pathname(), Some(Path::new("/run/systemd/notify")));
    }

    #[test]
    fn notifying_sends_ready_and_the_main_pid_to_the_socket() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("notify");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        notify_service_manager(Some(path.as_os_str()), true);
        let mut buffer = [0u8; 256];
        let n = socket.recv(&mut buffer).expect("message");
        let text = String::from_utf8_lossy(&buffer[..n]).to_string();
        assert_eq!(text, format!("MAINPID={}\nREADY=1\n", std::process::id()));
    }

    #[test]
    fn a_socket_directory_that_cannot_be_bound_in_is_refused() {
        let err = prepare_socket_directory(Path::new("/nonexistent-edgecache/upgrade.sock"))
            .expect_err("missing");
        assert!(err.to_string().contains("/nonexistent-edgecache"), "{err}");
        let dir = tempfile::tempdir().expect("dir");
        prepare_socket_directory(&dir.path().join("upgrade.sock")).expect("usable");
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("dir").count(),
            0,
            "the probe is removed"
        );
    }

    #[test]
    fn only_the_parent_may_be_asked_for_its_sockets() {
        for pid in [0, 1, std::process::id()] {
            assert!(matches!(
                ask_for_sockets(pid),
                Err(UpgradeError::NotParent(_))
            ));
        }
    }
}
