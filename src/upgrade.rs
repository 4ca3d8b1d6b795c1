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

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

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
    #[error("the upgrade socket's directory {0} does not exist")]
    SocketDirectory(PathBuf),
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
    /// The successor being started, if any.
    successor: Mutex<Option<u32>>,
    /// Set when this process got SIGQUIT: its sockets are being handed over.
    handing_over: AtomicBool,
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
    pub fn new(config: &Config) -> Arc<Upgrader> {
        // Read now: once the binary is replaced, /proc/self/exe names a deleted file.
        let binary = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("edgecache"));
        Arc::new(Upgrader {
            sockets: HandedOverSockets::of(config),
            binary,
            config: config.source.clone(),
            socket: config.server.upgrade_socket.clone(),
            successor: Mutex::new(None),
            handing_over: AtomicBool::new(false),
        })
    }

    /// Starts the binary now on disk as this process's successor and waits (at most
    /// [`HANDOVER_WAIT`]) until it asks for the sockets or exits. Blocking.
    pub fn start(self: &Arc<Self>) -> Result<UpgradeStarted, UpgradeError> {
        if self.handing_over.load(Ordering::SeqCst) {
            return Err(UpgradeError::HandingOver);
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
        check_socket_directory(&self.socket)?;
        let child = Command::new(&self.binary)
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--upgrade")
            .arg("--upgrade-from")
            .arg(std::process::id().to_string())
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
}

/// The successor's side: pingora binds the upgrade socket where it is configured, and
/// panics if its directory is missing, so that is checked first.
pub fn check_socket_directory(socket: &Path) -> Result<(), UpgradeError> {
    let directory = match socket.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if directory.is_dir() {
        Ok(())
    } else {
        Err(UpgradeError::SocketDirectory(directory))
    }
}

/// The successor's side: asks the running process `pid` for its listening sockets. It
/// sends them to the upgrade socket, which this process binds right after (the sender
/// retries for a few seconds).
pub fn ask_for_sockets(pid: u32) -> Result<(), UpgradeError> {
    let pid = i32::try_from(pid).unwrap_or(i32::MAX);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGQUIT,
    )
    .map_err(|source| UpgradeError::Signal { pid, source })
}

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

/// Starts an upgrade on SIGUSR2, notes SIGQUIT (pingora hands the sockets over on it), and
/// tells systemd the service is ready once the server runs.
pub struct UpgradeService {
    pub upgrader: Arc<Upgrader>,
    /// This process took its sockets over from another.
    pub upgraded: bool,
}

#[async_trait]
impl BackgroundService for UpgradeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        notify_service_manager(std::env::var_os("NOTIFY_SOCKET").as_deref(), self.upgraded);
        let (mut upgrades, mut quits) = match (
            signal(SignalKind::user_defined2()),
            signal(SignalKind::quit()),
        ) {
            (Ok(upgrades), Ok(quits)) => (upgrades, quits),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot listen for SIGUSR2; use the admin /upgrade endpoint");
                return;
            }
        };
        loop {
            tokio::select! {
                received = upgrades.recv() => {
                    if received.is_none() {
                        return;
                    }
                    tracing::info!("SIGUSR2 received, starting the new binary");
                    let upgrader = self.upgrader.clone();
                    match tokio::task::spawn_blocking(move || upgrader.start()).await {
                        Ok(Ok(started)) => tracing::info!("{started}"),
                        Ok(Err(e)) => tracing::error!(error = %e, "upgrade not started"),
                        Err(e) => tracing::error!(error = %e, "upgrade task failed"),
                    }
                }
                received = quits.recv() => {
                    if received.is_none() {
                        return;
                    }
                    self.upgrader.handover_started();
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_missing_socket_directory_is_named() {
        let err = check_socket_directory(Path::new("/nonexistent-edgecache/upgrade.sock"))
            .expect_err("missing");
        assert!(err.to_string().contains("/nonexistent-edgecache"), "{err}");
    }
}
