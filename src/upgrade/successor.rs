//! The new process's side of a handover.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::UpgradeError;

/// Makes sure the upgrade socket can be bound before the running process is asked for
/// anything: pingora binds it with no error path of its own (it panics), and a successor
/// that dies after asking would leave no one to serve. Binds and removes a probe socket
/// beside it.
pub fn prepare_socket_directory(socket: &Path) -> Result<(), UpgradeError> {
    let directory = match socket.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let failed = |source| UpgradeError::SocketDirectory {
        directory: directory.clone(),
        source,
    };
    let probe = directory.join(format!(".edgecache-probe-{}", std::process::id()));
    let _ = std::fs::remove_file(&probe);
    let bound = std::os::unix::net::UnixListener::bind(&probe).map_err(failed);
    let _ = std::fs::remove_file(&probe);
    bound.map(drop)
}

/// Asks the running process `pid`, which must be the one that started this process, for
/// its listening sockets. It sends them to the upgrade socket, which this process binds
/// right after (the sender waits for it).
pub fn ask_for_sockets(pid: u32) -> Result<(), UpgradeError> {
    // A pid from anywhere else could be any process (or, as 0, this whole group).
    if pid <= 1 || pid != std::os::unix::process::parent_id() {
        return Err(UpgradeError::NotParent(pid));
    }
    let raw = i32::try_from(pid).map_err(|_| UpgradeError::NotParent(pid))?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(raw),
        nix::sys::signal::Signal::SIGQUIT,
    )
    .map_err(|source| UpgradeError::Signal { pid: raw, source })
}

/// Resolves once the process this one took over from has exited: this process was its
/// child, so its parent changes then.
pub async fn watch_predecessor_exit(pid: u32) {
    while std::os::unix::process::parent_id() == pid {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
