//! How connections to the core's hosts are made: the mesh dialer.
//!
//! Two modes, chosen by `core.mesh.mode`:
//!
//! - `os` (the default): pingora dials the hosts' addresses itself and the OS routes them;
//!   tailscaled (or WireGuard) does the tunnelling. Nothing here is in the data path.
//! - `embedded`: a Tailscale node inside the process ([`tailnet`], behind the `tailscale`
//!   cargo feature) joins the tailnet. Every connection to the core, health checks
//!   included, goes through [`MeshConnector`], pingora's custom L4 connector: it looks up a
//!   host's tailnet name when the config gave one, then opens a TCP stream through the
//!   node's userspace network stack.
//!
//! Either way [`Mesh::connector`] is the one place a peer to the core gets its dialler for
//! its mode, and [`Mesh::problem`] is what `/readyz` reports about the mesh.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::connectors::L4Connect;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora::{Error, ErrorType};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::model::{Core, MeshSettings};
use crate::metrics;

mod relay;
#[cfg(feature = "tailscale")]
pub mod tailnet;

pub use relay::Relay;

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("the mesh node is not connected: {0}")]
    NotConnected(String),
    #[error("no peer named {0:?} in the tailnet")]
    UnknownPeer(String),
    #[error("connecting to {address} through the mesh: {reason}")]
    Connect { address: SocketAddr, reason: String },
    #[error("key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("embedded mesh mode needs edgecache built with the `tailscale` feature")]
    NotBuiltIn,
    #[error("binding a loopback relay: {0}")]
    Relay(std::io::Error),
}

impl MeshError {
    /// How pingora (and so the retry, ejection and status logic) sees the failure: a
    /// mesh that is down or a peer it does not know is "no route" (503), a failed
    /// connect is a refused one (502, next host).
    fn error_type(&self) -> ErrorType {
        match self {
            MeshError::NotConnected(_) | MeshError::UnknownPeer(_) | MeshError::NotBuiltIn => {
                ErrorType::ConnectNoRoute
            }
            MeshError::Connect { .. } | MeshError::KeyFile { .. } | MeshError::Relay(_) => {
                ErrorType::ConnectRefused
            }
        }
    }
}

/// A network that can look peers up by name and carry TCP streams to them.
#[async_trait]
pub trait Tunnel: Send + Sync + std::fmt::Debug {
    /// The address of the peer with this name (host name or full name).
    async fn resolve(&self, name: &str) -> Result<IpAddr, MeshError>;
    /// A TCP stream to `address` through the tunnel.
    async fn connect(&self, address: SocketAddr) -> Result<Box<dyn VirtualSocket>, MeshError>;
}

/// A stream opened by us that pingora carries as a virtual socket. Socket options are
/// left alone: a kernel socket here was set up when it was opened, and a stream through
/// the userspace stack has none.
#[derive(Debug)]
pub struct OpenedStream<T>(pub T);

impl<T> VirtualSocket for OpenedStream<T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + Sync + std::fmt::Debug,
{
    fn set_socket_option(&self, _opt: VirtualSockOpt) -> std::io::Result<()> {
        Ok(())
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for OpenedStream<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for OpenedStream<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Pingora's L4 connector for one upstream group in embedded mode.
#[derive(Debug)]
pub struct MeshConnector {
    tunnel: Arc<dyn Tunnel>,
    /// Stand-in address (see `UpstreamHost::address`) to tailnet name.
    names: Arc<HashMap<IpAddr, String>>,
    /// Each host's relay, by the relay's address (the host's address as pingora sees it).
    relays: Arc<HashMap<SocketAddr, Arc<Relay>>>,
    /// Name lookup and connect together take at most this long (pingora applies its own
    /// connect timeout only to the sockets it opens itself).
    timeout: Duration,
}

impl MeshConnector {
    fn new(embedded: &Embedded, timeout: Duration) -> Self {
        MeshConnector {
            tunnel: embedded.tunnel.clone(),
            names: embedded.names.clone(),
            relays: embedded.relays.clone(),
            timeout,
        }
    }

    async fn dial(&self, address: SocketAddr) -> Result<Box<dyn VirtualSocket>, MeshError> {
        let ip = match self.names.get(&address.ip()) {
            Some(name) => self.tunnel.resolve(name).await?,
            None => address.ip(),
        };
        self.tunnel
            .connect(SocketAddr::new(ip, address.port()))
            .await
    }
}

impl MeshConnector {
    /// A stream through the tunnel to the host at `backend` (a relay's address, or the
    /// host's own), bounded by the timeout, with failures as the proxy understands them.
    pub async fn dial_socket(
        &self,
        backend: SocketAddr,
    ) -> pingora::Result<Box<dyn VirtualSocket>> {
        let address = self.relays.get(&backend).map_or(backend, |r| r.target);
        let shown = match self.names.get(&address.ip()) {
            Some(name) => format!("{name}:{}", address.port()),
            None => address.to_string(),
        };
        match tokio::time::timeout(self.timeout, self.dial(address)).await {
            Ok(Ok(socket)) => Ok(socket),
            Ok(Err(e)) => {
                metrics::get()
                    .mesh_connect_errors
                    .with_label_values(&[error_kind(&e)])
                    .inc();
                Error::e_explain(e.error_type(), format!("{shown}: {e}"))
            }
            Err(_) => {
                metrics::get()
                    .mesh_connect_errors
                    .with_label_values(&["timeout"])
                    .inc();
                Error::e_explain(
                    ErrorType::ConnectTimedout,
                    format!(
                        "{shown}: no connection through the mesh within {:?}",
                        self.timeout
                    ),
                )
            }
        }
    }
}

#[async_trait]
impl L4Connect for MeshConnector {
    async fn connect(&self, addr: &PeerAddr) -> pingora::Result<Stream> {
        let PeerAddr::Inet(address) = addr else {
            return Error::e_explain(ErrorType::ConnectError, "the mesh dials IP addresses only");
        };
        let socket = self.dial_socket(*address).await?;
        match self.relays.get(address) {
            Some(relay) => match relay.hand_over(socket).await {
                Ok(stream) => Ok(Stream::from(stream)),
                Err(e) => Error::e_because(
                    ErrorType::ConnectError,
                    format!("handing a mesh connection to relay {}", relay.address),
                    e,
                ),
            },
            None => Ok(Stream::from(VirtualSocketStream::new(socket))),
        }
    }
}

fn error_kind(e: &MeshError) -> &'static str {
    match e {
        MeshError::NotConnected(_)
        | MeshError::NotBuiltIn
        | MeshError::KeyFile { .. }
        | MeshError::Relay(_) => "not_connected",
        MeshError::UnknownPeer(_) => "unknown_peer",
        MeshError::Connect { .. } => "connect",
    }
}

/// Where the embedded node stands, for `/readyz` and the log.
#[derive(Debug, Clone)]
pub enum MeshState {
    Starting { since: Instant },
    Connected { address: String },
    Failed { reason: String, since: Instant },
}

/// The shared view of the embedded node's state.
#[derive(Debug)]
pub struct MeshStatus {
    state: ArcSwap<MeshState>,
}

impl MeshStatus {
    pub fn new() -> Self {
        MeshStatus {
            state: ArcSwap::from_pointee(MeshState::Starting {
                since: Instant::now(),
            }),
        }
    }

    pub fn set(&self, state: MeshState) {
        metrics::get()
            .mesh_connected
            .set(i64::from(matches!(state, MeshState::Connected { .. })));
        self.state.store(Arc::new(state));
    }

    pub fn get(&self) -> Arc<MeshState> {
        self.state.load_full()
    }
}

impl Default for MeshStatus {
    fn default() -> Self {
        Self::new()
    }
}

/// The mesh as configured: how peers to the core are dialled.
pub struct Mesh {
    embedded: Option<Embedded>,
}

struct Embedded {
    tunnel: Arc<dyn Tunnel>,
    names: Arc<HashMap<IpAddr, String>>,
    status: Arc<MeshStatus>,
    relays: Arc<HashMap<SocketAddr, Arc<Relay>>>,
    /// Host address (stand-in or tailnet IP, with port) to its relay's address.
    relay_of: HashMap<SocketAddr, SocketAddr>,
}

impl Mesh {
    /// Routing left to the OS.
    pub fn os() -> Self {
        Mesh { embedded: None }
    }

    /// A mesh whose connections go through `tunnel`; `status` is what the tunnel's owner
    /// reports about it.
    /// `names` maps the stand-in addresses of hosts given by name to their tailnet names;
    /// each of `hosts` gets a relay.
    pub fn through(
        tunnel: Arc<dyn Tunnel>,
        names: HashMap<IpAddr, String>,
        status: Arc<MeshStatus>,
        hosts: impl IntoIterator<Item = SocketAddr>,
    ) -> Result<Self, MeshError> {
        let mut relays = HashMap::new();
        let mut relay_of = HashMap::new();
        for host in hosts {
            if relay_of.contains_key(&host) {
                continue;
            }
            let relay = Relay::bind(host).map_err(MeshError::Relay)?;
            relay_of.insert(host, relay.address);
            relays.insert(relay.address, relay);
        }
        Ok(Mesh {
            embedded: Some(Embedded {
                tunnel,
                names: Arc::new(names),
                status,
                relays: Arc::new(relays),
                relay_of,
            }),
        })
    }

    /// Where pingora connects for the host at `host`: its relay in embedded mode, the host
    /// itself otherwise.
    pub fn backend_address(&self, host: SocketAddr) -> SocketAddr {
        self.embedded
            .as_ref()
            .and_then(|e| e.relay_of.get(&host).copied())
            .unwrap_or(host)
    }

    /// Starts the relays' accept loops on the current runtime.
    pub fn start_relays(&self) -> std::io::Result<()> {
        if let Some(embedded) = &self.embedded {
            for relay in embedded.relays.values() {
                relay.start()?;
            }
        }
        Ok(())
    }

    /// The mesh `core.mesh` asks for, and for embedded mode the service that joins the
    /// tailnet (to be run in the background).
    /// `linger`: how long the node stays after shutdown begins (the server's grace period).
    pub fn from_config(
        core: &Core,
        linger: Duration,
    ) -> Result<(Arc<Mesh>, Option<MeshService>), MeshError> {
        match &core.mesh {
            MeshSettings::Os => Ok((Arc::new(Mesh::os()), None)),
            #[cfg(feature = "tailscale")]
            MeshSettings::Embedded(settings) => {
                let status = Arc::new(MeshStatus::new());
                let node = Arc::new(tailnet::Tailnet::new(
                    settings.clone(),
                    status.clone(),
                    linger,
                ));
                let names = core
                    .groups
                    .values()
                    .flat_map(|group| &group.hosts)
                    .filter_map(|host| Some((host.address.ip(), host.mesh_name.clone()?)))
                    .collect();
                let hosts = core
                    .groups
                    .values()
                    .flat_map(|group| &group.hosts)
                    .map(|host| host.address);
                let mesh = Arc::new(Mesh::through(node.clone(), names, status, hosts)?);
                Ok((mesh.clone(), Some(MeshService::new(node, mesh))))
            }
            #[cfg(not(feature = "tailscale"))]
            MeshSettings::Embedded(_) => {
                let _ = linger;
                Err(MeshError::NotBuiltIn)
            }
        }
    }

    /// The connector a group's peers (and health checks) use, or `None` when pingora
    /// dials by itself.
    pub fn connector(&self, timeout: Duration) -> Option<Arc<MeshConnector>> {
        let embedded = self.embedded.as_ref()?;
        Some(Arc::new(MeshConnector::new(embedded, timeout)))
    }

    /// What keeps this PoP from reaching the core through the mesh, if anything.
    pub fn problem(&self) -> Option<String> {
        let embedded = self.embedded.as_ref()?;
        match &*embedded.status.get() {
            MeshState::Connected { .. } => None,
            MeshState::Starting { since } => Some(format!(
                "mesh: joining the tailnet (for {}s)",
                since.elapsed().as_secs()
            )),
            MeshState::Failed { reason, since } => Some(format!(
                "mesh: not connected for {}s: {reason}",
                since.elapsed().as_secs()
            )),
        }
    }
}

/// The background service that runs the embedded node and the relays.
pub struct MeshService {
    #[cfg(feature = "tailscale")]
    node: Arc<tailnet::Tailnet>,
    mesh: Arc<Mesh>,
}

impl MeshService {
    #[cfg(feature = "tailscale")]
    fn new(node: Arc<tailnet::Tailnet>, mesh: Arc<Mesh>) -> Self {
        MeshService { node, mesh }
    }
}

#[async_trait]
impl pingora::services::background::BackgroundService for MeshService {
    async fn start(&self, shutdown: pingora::server::ShutdownWatch) {
        if let Err(e) = self.mesh.start_relays() {
            tracing::error!(error = %e, "mesh: cannot start the loopback relays");
        }
        #[cfg(feature = "tailscale")]
        self.node.run(shutdown).await;
        #[cfg(not(feature = "tailscale"))]
        drop(shutdown);
    }
}

#[cfg(test)]
mod tests;
