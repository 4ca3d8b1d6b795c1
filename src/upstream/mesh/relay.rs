//! Embedded mode: loopback relays, so pingora can keep connections to the core for reuse.
//!
//! Pingora 0.9.1 reuses a pooled connection only after checking that its file descriptor is
//! connected to the peer's address. A stream through the userspace network stack has no
//! descriptor, so it would never be reused and every request would open a new connection
//! through the tailnet. So each core host gets a relay: a listener on 127.0.0.1 that is the
//! host's address as pingora sees it. The mesh connector opens the tailnet stream first
//! (so a failure is a connect failure the proxy can act on), registers it with the relay
//! under the local address of a kernel socket, and connects that socket to the relay. The
//! relay pairs the connection it accepts with the stream registered for its source address
//! and copies bytes both ways until either side closes. Pingora holds a real socket,
//! connected to the relay's address, which it pools like any other.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::time::Duration;

use pingora::protocols::l4::virt::VirtualSocket;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

type Waiting = HashMap<SocketAddr, Box<dyn VirtualSocket>>;

/// One core host's relay.
pub struct Relay {
    /// Where pingora connects: 127.0.0.1 and a port chosen at start.
    pub address: SocketAddr,
    /// The host: a stand-in address for a tailnet name, or a tailnet IP, with its port.
    pub target: SocketAddr,
    listener: Mutex<Option<std::net::TcpListener>>,
    /// Tailnet streams waiting for their kernel connection, by its source address.
    waiting: Mutex<Waiting>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("address", &self.address)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Binds the relay's listener; it accepts once [`Relay::start`] runs.
    pub fn bind(target: SocketAddr) -> io::Result<Arc<Relay>> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        Ok(Arc::new(Relay {
            address: listener.local_addr()?,
            target,
            listener: Mutex::new(Some(listener)),
            waiting: Mutex::new(HashMap::new()),
        }))
    }

    fn waiting(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock()
    }

    /// Starts accepting on the current runtime (once; later calls do nothing).
    pub fn start(self: &Arc<Self>) -> io::Result<()> {
        let taken = self.listener.lock().take();
        if let Some(listener) = taken {
            let listener = TcpListener::from_std(listener)?;
            tokio::spawn(self.clone().accept(listener));
        }
        Ok(())
    }

    async fn accept(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, source) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, most likely: wait rather than spin.
                    tracing::warn!(relay = %self.address, error = %e, "mesh relay cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Only connections the connector announced are carried; anything else on the
            // machine that finds the port gets nothing.
            let Some(tunnel) = self.waiting().remove(&source) else {
                continue;
            };
            tokio::spawn(carry(stream, tunnel));
        }
    }

    /// A kernel connection to this relay that carries `tunnel`.
    pub async fn hand_over(&self, tunnel: Box<dyn VirtualSocket>) -> io::Result<TcpStream> {
        let socket = TcpSocket::new_v4()?;
        socket.bind((Ipv4Addr::LOCALHOST, 0).into())?;
        let source = socket.local_addr()?;
        self.waiting().insert(source, tunnel);
        match socket.connect(self.address).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Err(e) => {
                self.waiting().remove(&source);
                Err(e)
            }
        }
    }
}

async fn carry(mut stream: TcpStream, mut tunnel: Box<dyn VirtualSocket>) {
    let _ = stream.set_nodelay(true);
    if let Err(e) = tokio::io::copy_bidirectional(&mut stream, &mut tunnel).await {
        tracing::debug!(error = %e, "mesh relay connection ended");
    }
}
