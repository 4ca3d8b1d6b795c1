//! The embedded mesh node: a Tailscale device inside edgecache (the `tailscale` crate).
//!
//! What the crate does that shapes this code:
//! - `Device::new` does not return while the control server is unreachable, and an attempt
//!   that started while it was down never recovers; several other calls wait for the
//!   control server or the first network map. So every call is bounded: a join attempt by
//!   `start_timeout`, lookups and connects by the group's connect timeout (in
//!   [`super::MeshConnector`]).
//! - An abandoned `Device::new` leaves its tasks behind (about 0.4 MB each, measured). So each
//!   attempt runs on a runtime of its own, shut down with everything on it when the
//!   attempt fails; a joined node keeps its runtime, and calls to it run there, so a call
//!   cut short by a timeout finishes (within `LATE_LIMIT`) without holding anything of
//!   ours, and a stream that arrives late is closed.
//! - `tcp_connect` takes an IP; names are looked up with `peer_by_name`.
//! - The crate writes a missing key file with the process umask; the file is the node's
//!   identity, so edgecache creates it itself, mode 0600 in a directory it makes 0700.
//! - The crate logs the registration request (auth key included) at trace level; the log
//!   filter caps its crates at `info` (see `logging.rs`).

use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use pingora::protocols::l4::virt::VirtualSocket;

use super::{MeshError, MeshState, MeshStatus, OpenedStream, Tunnel};
use crate::config::model::EmbeddedMesh;
use crate::metrics;

/// The longest wait between two attempts to join.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);
/// How long the node gets to leave the tailnet cleanly at shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// A call to the node that its caller gave up on is dropped after this long.
const LATE_LIMIT: Duration = Duration::from_secs(60);

type Failure = (&'static str, String);

pub struct Tailnet {
    settings: EmbeddedMesh,
    status: Arc<MeshStatus>,
    node: ArcSwapOption<Node>,
    /// How long the node stays after shutdown begins, so requests in flight finish.
    linger: Duration,
}

/// A joined device and the runtime its tasks run on.
struct Node {
    device: Arc<tailscale::Device>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Node {
    /// Runs `work` on the node's runtime and waits for it.
    async fn call<T, F, Fut>(&self, work: F) -> Result<T, MeshError>
    where
        F: FnOnce(Arc<tailscale::Device>) -> Fut,
        Fut: Future<Output = Result<T, MeshError>> + Send + 'static,
        T: Send + 'static,
    {
        let Some(runtime) = &self.runtime else {
            return Err(MeshError::NotConnected("the node is shutting down".into()));
        };
        let work = work(self.device.clone());
        let task = runtime.spawn(async move {
            tokio::time::timeout(LATE_LIMIT, work)
                .await
                .unwrap_or_else(|_| Err(MeshError::NotConnected("no answer from the node".into())))
        });
        task.await
            .map_err(|e| MeshError::NotConnected(format!("node task failed: {e}")))?
    }
}

impl std::fmt::Debug for Tailnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tailnet")
            .field("control_url", &self.settings.control_url)
            .field("hostname", &self.settings.hostname)
            .finish_non_exhaustive()
    }
}

impl Tailnet {
    pub fn new(settings: EmbeddedMesh, status: Arc<MeshStatus>, linger: Duration) -> Self {
        Tailnet {
            settings,
            status,
            node: ArcSwapOption::empty(),
            linger,
        }
    }

    fn node(&self) -> Result<Arc<Node>, MeshError> {
        self.node.load_full().ok_or_else(|| {
            let reason = match &*self.status.get() {
                MeshState::Failed { reason, .. } => reason.clone(),
                _ => "still joining the tailnet".to_string(),
            };
            MeshError::NotConnected(reason)
        })
    }

    /// Joins the tailnet, trying again (with growing pauses) until it works or the server
    /// shuts down; then keeps the node until requests in flight have had their time.
    pub async fn run(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut delay = self.settings.start_timeout.min(MAX_RETRY_DELAY);
        loop {
            let attempt = tokio::select! {
                result = self.join() => result,
                _ = shutdown.changed() => return,
            };
            match attempt {
                Ok(node) => {
                    self.node.store(Some(Arc::new(node)));
                    let _ = shutdown.wait_for(|going| *going).await;
                    tokio::time::sleep(self.linger).await;
                    self.leave().await;
                    return;
                }
                Err((outcome, reason)) => {
                    metrics::get()
                        .mesh_start_attempts
                        .with_label_values(&[outcome])
                        .inc();
                    tracing::error!(control_url = %self.settings.control_url, retry_in = ?delay, "mesh: cannot join the tailnet: {reason}");
                    let since = match &*self.status.get() {
                        MeshState::Failed { since, .. } => *since,
                        _ => Instant::now(),
                    };
                    self.status.set(MeshState::Failed { reason, since });
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        }
    }

    /// Leaves the tailnet cleanly when nothing else holds the node.
    async fn leave(&self) {
        let Some(node) = self.node.swap(None) else {
            return;
        };
        let Ok(mut node) = Arc::try_unwrap(node) else {
            return;
        };
        let (Some(runtime), Ok(device)) =
            (node.runtime.take(), Arc::try_unwrap(node.device.clone()))
        else {
            return;
        };
        let _ = runtime
            .spawn(async move { device.shutdown(Some(SHUTDOWN_TIMEOUT)).await })
            .await;
        runtime.shutdown_background();
    }

    /// The node's settings for the crate: its keys (from `key_file`) and how it asks to be
    /// named.
    async fn node_config(&self) -> Result<tailscale::Config, Failure> {
        let key_state = load_keys(&self.settings.key_file)
            .await
            .map_err(|e| ("error", e.to_string()))?;
        let control_server_url = self
            .settings
            .control_url
            .parse()
            .map_err(|e| ("error", format!("control_url: {e}")))?;
        let config = tailscale::Config {
            key_state,
            client_name: Some("edgecache".to_string()),
            control_server_url,
            requested_hostname: self.settings.hostname.clone(),
            requested_tags: self.settings.tags.clone(),
            ephemeral: self.settings.ephemeral,
        };
        Ok(config)
    }

    /// One attempt: keys, device, authorization, address, all within `start_timeout`, on
    /// a runtime of the attempt's own.
    async fn join(&self) -> Result<Node, Failure> {
        let timeout = self.settings.start_timeout;
        let config = self.node_config().await?;
        let auth_key = self
            .settings
            .auth_key
            .as_ref()
            .map(|key| key.expose().to_string());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("edgecache-tailnet")
            .enable_all()
            .build()
            .map_err(|e| ("error", format!("starting the node's runtime: {e}")))?;
        let attempt = runtime.spawn(start_device(config, auth_key));
        let (device, address) = match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(Ok(joined))) => joined,
            failed => {
                // Everything the attempt started goes with its runtime.
                runtime.shutdown_background();
                return Err(match failed {
                    Ok(Ok(Err(failure))) => failure,
                    Ok(Err(e)) => ("error", format!("the join attempt failed: {e}")),
                    _ => (
                        "timeout",
                        format!(
                            "the control server {} did not answer within {timeout:?}",
                            self.settings.control_url
                        ),
                    ),
                });
            }
        };
        metrics::get()
            .mesh_start_attempts
            .with_label_values(&["connected"])
            .inc();
        tracing::info!(%address, control_url = %self.settings.control_url, "mesh: joined the tailnet");
        self.status.set(MeshState::Connected {
            address: address.to_string(),
        });
        Ok(Node {
            device: Arc::new(device),
            runtime: Some(runtime),
        })
    }
}

/// Starts the device and waits until the control server has authorized it and given it
/// an address.
async fn start_device(
    config: tailscale::Config,
    auth_key: Option<String>,
) -> Result<(tailscale::Device, std::net::Ipv4Addr), Failure> {
    let device = tailscale::Device::new(&config, auth_key)
        .await
        .map_err(|e| ("error", format!("starting the node: {e}")))?;
    match device.is_authorized().await {
        Err(e) => return Err(("error", format!("registering: {e}"))),
        Ok(tailscale::AuthState::NotAuthorized(url)) => {
            // Whoever opens the URL can claim the node, so it goes to the log only.
            tracing::warn!(login_url = %url, "mesh: the control server does not know this node");
            return Err((
                "not_authorized",
                "the control server does not know this node: set core.mesh.auth_key_file, or approve it with the login URL in the log".to_string(),
            ));
        }
        Ok(tailscale::AuthState::Authorized) => {}
    }
    let address = device
        .ipv4_addr()
        .await
        .map_err(|e| ("error", format!("no tailnet address: {e}")))?;
    Ok((device, address))
}

#[async_trait]
impl Tunnel for Tailnet {
    async fn resolve(&self, name: &str) -> Result<IpAddr, MeshError> {
        let name = name.to_string();
        self.node()?
            .call(move |device| async move {
                let node = device
                    .peer_by_name(&name)
                    .await
                    .map_err(|e| MeshError::NotConnected(e.to_string()))?
                    .ok_or(MeshError::UnknownPeer(name))?;
                Ok(IpAddr::V4(node.tailnet_address.ipv4.addr()))
            })
            .await
    }

    async fn connect(&self, address: SocketAddr) -> Result<Box<dyn VirtualSocket>, MeshError> {
        self.node()?
            .call(move |device| async move {
                let stream = device
                    .tcp_connect(address)
                    .await
                    .map_err(|e| MeshError::Connect {
                        address,
                        reason: e.to_string(),
                    })?;
                Ok(Box::new(OpenedStream(stream)) as Box<dyn VirtualSocket>)
            })
            .await
    }
}

/// Reads the node's keys, creating the file (0600, directory 0700) on first start.
async fn load_keys(path: &Path) -> Result<tailscale::keys::PersistState, MeshError> {
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || create_key_file(&owned))
        .await
        .map_err(|e| key_error(path, e.to_string()))??;
    tailscale::config::load_key_file(path, tailscale::config::BadFormatBehavior::Error)
        .await
        .map_err(|e| key_error(path, e.to_string()))
}

fn key_error(path: &Path, reason: String) -> MeshError {
    MeshError::KeyFile {
        path: path.display().to_string(),
        reason,
    }
}

/// The file the crate reads: `{"key_state": ...}`.
#[derive(serde::Serialize)]
struct KeyFile {
    key_state: tailscale::keys::PersistState,
}

pub(crate) fn create_key_file(path: &Path) -> Result<(), MeshError> {
    if path.exists() {
        return Ok(());
    }
    let fail = |reason: String| key_error(path, reason);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| fail(format!("creating its directory: {e}")))?;
        }
    }
    let text = serde_json::to_vec(&KeyFile {
        key_state: Default::default(),
    })
    .map_err(|e| fail(e.to_string()))?;
    // Written beside the final name and linked into place, so a crash never leaves a
    // half-written identity and a file that appeared meanwhile is never replaced.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let temp = path.with_extension(format!("tmp-{}-{nanos}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .and_then(|mut file| {
            file.write_all(&text)?;
            file.sync_all()
        })
        .and_then(|()| match std::fs::hard_link(&temp, path) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        });
    let _ = std::fs::remove_file(&temp);
    written.map_err(|e| fail(format!("creating it: {e}")))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[tokio::test]
    async fn a_new_key_file_is_private_and_read_back_unchanged() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state/tailscale/keys.json");
        let first = load_keys(&path).await.expect("created");
        let mode = |p: &Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().expect("dir")), 0o700);
        let text = std::fs::read(&path).expect("read");
        let second = load_keys(&path).await.expect("read back");
        assert_eq!(std::fs::read(&path).expect("read"), text, "never rewritten");
        let public = |state: &tailscale::keys::PersistState| {
            serde_json::to_string(&KeyFile {
                key_state: state.clone(),
            })
            .expect("serializes")
        };
        assert_eq!(public(&first), public(&second));
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .collect();
        assert_eq!(leftovers.len(), 1, "no temp file left behind");
    }

    #[tokio::test]
    async fn a_damaged_key_file_is_an_error_and_left_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("keys.json");
        std::fs::write(&path, b"{\"key_state\": 3}").expect("write");
        let err = load_keys(&path).await.expect_err("refused");
        assert!(err.to_string().contains("keys.json"), "{err}");
        assert_eq!(std::fs::read(&path).expect("read"), b"{\"key_state\": 3}");
    }
}
