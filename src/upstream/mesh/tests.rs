//! The mesh connector over a tunnel of real loopback sockets: what embedded mode does with
//! a tailnet, minus the tailnet.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::virt::VirtualSocket;
use pingora::upstreams::peer::HttpPeer;
use pingora::ErrorType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Mesh, MeshError, MeshState, MeshStatus, OpenedStream, Tunnel};

/// Names resolve from a table; streams are kernel TCP sockets on 127.0.0.1.
#[derive(Debug, Default)]
struct LoopbackTunnel {
    peers: HashMap<String, IpAddr>,
    lookups: AtomicUsize,
    /// Lookups never answer, as a tailnet without a network map.
    stalled: bool,
}

#[async_trait]
impl Tunnel for LoopbackTunnel {
    async fn resolve(&self, name: &str) -> Result<IpAddr, MeshError> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        if self.stalled {
            std::future::pending::<()>().await;
        }
        self.peers
            .get(name)
            .copied()
            .ok_or_else(|| MeshError::UnknownPeer(name.to_string()))
    }

    async fn connect(&self, address: SocketAddr) -> Result<Box<dyn VirtualSocket>, MeshError> {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|e| MeshError::Connect {
                address,
                reason: e.to_string(),
            })?;
        Ok(Box::new(OpenedStream(stream)))
    }
}

const STAND_IN: Ipv6Addr = Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 1);

/// A connected mesh with relays for `hosts`, running.
fn mesh_with(tunnel: Arc<LoopbackTunnel>, hosts: &[SocketAddr]) -> Mesh {
    let names = HashMap::from([(IpAddr::V6(STAND_IN), "core-1".to_string())]);
    let status = Arc::new(MeshStatus::new());
    status.set(MeshState::Connected {
        address: "100.64.0.9".into(),
    });
    let mesh = Mesh::through(tunnel, names, status, hosts.iter().copied()).expect("relays bound");
    mesh.start_relays().expect("relays started");
    mesh
}

fn loopback_tunnel() -> LoopbackTunnel {
    LoopbackTunnel {
        peers: HashMap::from([("core-1".to_string(), IpAddr::from([127, 0, 0, 1]))]),
        ..Default::default()
    }
}

/// A keep-alive HTTP/1.1 server that answers `200 core-1`; counts requests and connections.
async fn http_server() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let requests = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let (counted, accepted) = (requests.clone(), connections.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::Relaxed);
            let counted = counted.clone();
            tokio::spawn(async move {
                loop {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    counted.fetch_add(1, Ordering::Relaxed);
                    if stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ncore-1")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (address, requests, connections)
}

async fn get(
    connector: &pingora::connectors::http::Connector,
    peer: &HttpPeer,
) -> (u16, bytes::Bytes, bool) {
    let (mut session, reused) = connector
        .get_http_session(peer)
        .await
        .expect("connected through the mesh");
    let mut request = pingora::http::RequestHeader::build("GET", b"/", None).expect("request head");
    request.insert_header("Host", "core-1").expect("host");
    session
        .write_request_header(Box::new(request))
        .await
        .expect("request sent");
    session.finish_request_body().await.expect("request ended");
    session.read_response_header().await.expect("response head");
    let status = session
        .response_header()
        .expect("a response")
        .status
        .as_u16();
    let body = session
        .read_response_body()
        .await
        .expect("body")
        .expect("some body");
    assert!(session.read_response_body().await.expect("end").is_none());
    connector
        .release_http_session(session, peer, Some(Duration::from_secs(30)))
        .await;
    (status, body, reused)
}

#[tokio::test]
async fn a_name_is_looked_up_and_pingora_reuses_the_connection() {
    let (origin, requests, connections) = http_server().await;
    let tunnel = Arc::new(loopback_tunnel());
    let host = SocketAddr::new(IpAddr::V6(STAND_IN), origin.port());
    let mesh = mesh_with(tunnel.clone(), &[host]);
    let backend = mesh.backend_address(host);
    assert!(backend.ip().is_loopback(), "pingora dials the host's relay");
    let mut peer = HttpPeer::new(backend, false, String::new());
    peer.options.custom_l4 = mesh
        .connector(Duration::from_secs(2))
        .map(|c| c as Arc<dyn pingora::connectors::L4Connect + Send + Sync>);

    let connector = pingora::connectors::http::Connector::new(None);
    let first = get(&connector, &peer).await;
    let second = get(&connector, &peer).await;
    let third = get(&connector, &peer).await;
    assert_eq!(
        (first.0, &first.1[..], first.2),
        (200, &b"core-1"[..], false)
    );
    assert_eq!(
        (second.0, second.2),
        (200, true),
        "the pooled connection is reused"
    );
    assert_eq!((third.0, third.2), (200, true));
    assert_eq!(requests.load(Ordering::Relaxed), 3);
    assert_eq!(
        connections.load(Ordering::Relaxed),
        1,
        "one connection through the mesh"
    );
    assert_eq!(tunnel.lookups.load(Ordering::Relaxed), 1);
    assert_eq!(mesh.problem(), None);
}

#[tokio::test]
async fn an_ip_is_dialled_as_it_is() {
    let (origin, requests, _) = http_server().await;
    let tunnel = Arc::new(loopback_tunnel());
    let mesh = mesh_with(tunnel.clone(), &[origin]);
    let connector = mesh.connector(Duration::from_secs(2)).expect("embedded");
    let mut stream = pingora::connectors::L4Connect::connect(
        connector.as_ref(),
        &PeerAddr::Inet(mesh.backend_address(origin)),
    )
    .await
    .expect("connected");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("sent");
    let mut answer = [0u8; 64];
    let mut read = 0;
    while !answer[..read].ends_with(b"core-1") {
        let n = stream.read(&mut answer[read..]).await.expect("read");
        assert!(n > 0, "closed early");
        read += n;
    }
    assert!(answer.starts_with(b"HTTP/1.1 200 OK"));
    assert_eq!(
        tunnel.lookups.load(Ordering::Relaxed),
        0,
        "no lookup for an IP"
    );
    assert_eq!(requests.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn failures_map_to_what_the_proxy_acts_on() {
    // A name the tailnet does not know: no route (503, next host).
    let tunnel = Arc::new(LoopbackTunnel::default());
    let named = SocketAddr::new(IpAddr::V6(STAND_IN), 3000);
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = closed.local_addr().expect("address");
    drop(closed);
    let mesh = mesh_with(tunnel, &[named, address]);
    let connector = mesh.connector(Duration::from_secs(2)).expect("embedded");
    let unknown = connector
        .dial_socket(mesh.backend_address(named))
        .await
        .expect_err("unknown peer");
    assert_eq!(unknown.etype(), &ErrorType::ConnectNoRoute);
    assert!(unknown.to_string().contains("core-1:3000"), "{unknown}");

    // Nothing listens there: refused.
    let refused = connector
        .dial_socket(mesh.backend_address(address))
        .await
        .expect_err("refused");
    assert_eq!(refused.etype(), &ErrorType::ConnectRefused);

    // A lookup that never answers is cut at the connect timeout.
    let stalled = Arc::new(LoopbackTunnel {
        stalled: true,
        ..Default::default()
    });
    let mesh = mesh_with(stalled, &[named]);
    let connector = mesh
        .connector(Duration::from_millis(200))
        .expect("embedded");
    let timed_out = connector
        .dial_socket(mesh.backend_address(named))
        .await
        .expect_err("timed out");
    assert_eq!(timed_out.etype(), &ErrorType::ConnectTimedout);
}

#[test]
fn readiness_names_the_mesh_problem() {
    assert_eq!(Mesh::os().problem(), None);
    assert!(Mesh::os().connector(Duration::from_secs(1)).is_none());
    let status = Arc::new(MeshStatus::new());
    let mesh = Mesh::through(
        Arc::new(LoopbackTunnel::default()),
        HashMap::new(),
        status.clone(),
        [],
    )
    .expect("no relays to bind");
    let starting = mesh.problem().expect("not ready while starting");
    assert!(starting.contains("joining the tailnet"), "{starting}");
    status.set(MeshState::Failed {
        reason: "the control server http://127.0.0.1:9 did not answer within 1s".into(),
        since: std::time::Instant::now(),
    });
    let failed = mesh.problem().expect("not ready after a failure");
    assert!(failed.contains("did not answer within 1s"), "{failed}");
    status.set(MeshState::Connected {
        address: "100.64.0.9".into(),
    });
    assert_eq!(mesh.problem(), None);
}
