//! Body-less requests the cache leaves alone are forwarded over the PoP's own connections
//! to the core (`proxy::direct`): what the client gets must be what pingora's path sends,
//! whatever the core answers, and a connection is kept only when it is clean.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::client::raw_exchange;
use crate::harness::edge::Edge;
use crate::harness::edge_with_groups;
use crate::harness::scripted::ScriptedCore;

/// Responses that came over the direct path, in the `web` group.
pub(crate) async fn direct_forwards(edge: &Edge) -> f64 {
    edge.metric(r#"edgecache_direct_forwards_total{group="web"}"#)
        .await
        .unwrap_or(0.0)
}

const TWO_GETS: &str = "GET /api/v1/a HTTP/1.1\r\nHost: a.example\r\n\r\nGET /api/v1/b HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn a_body_that_ends_with_the_core_connection_goes_out_chunked_on_a_kept_connection() {
    let core = ScriptedCore::start(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello",
        true,
    )
    .await;
    let (edge, setup) = edge_with_groups(&[core.address], core.address, vec![]).await;
    let answer = raw_exchange(setup.http(), TWO_GETS.as_bytes()).await;
    let lower = answer.to_ascii_lowercase();
    assert_eq!(lower.matches("http/1.1 200").count(), 2, "{answer}");
    assert_eq!(
        lower.matches("transfer-encoding: chunked").count(),
        2,
        "{answer}"
    );
    assert_eq!(
        answer.matches("5\r\nhello\r\n0\r\n\r\n").count(),
        2,
        "{answer}"
    );
    assert_eq!(direct_forwards(&edge).await, 2.0);
    // A close-delimited body leaves nothing to reuse.
    assert_eq!(core.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_early_hints_answer_reaches_the_client_before_the_final_one() {
    let core = ScriptedCore::start(
        b"HTTP/1.1 103 Early Hints\r\nLink: </packs/app.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        false,
    )
    .await;
    let (edge, setup) = edge_with_groups(&[core.address], core.address, vec![]).await;
    let answer = raw_exchange(setup.http(), TWO_GETS.as_bytes()).await;
    let lower = answer.to_ascii_lowercase();
    assert_eq!(lower.matches("http/1.1 103").count(), 2, "{answer}");
    assert_eq!(
        lower.matches("link: </packs/app.css>").count(),
        2,
        "{answer}"
    );
    let hints = lower.find("http/1.1 103").unwrap_or(usize::MAX);
    let last = lower.find("http/1.1 200").unwrap_or(0);
    assert!(hints < last, "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
    assert_eq!(direct_forwards(&edge).await, 2.0);
    // Both went over one connection to the core.
    assert_eq!(core.connections.load(Ordering::SeqCst), 1);
    assert_eq!(core.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_body_cut_short_by_the_core_closes_the_client_connection() {
    let core = ScriptedCore::start(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly twenty bytes...",
        true,
    )
    .await;
    let (edge, setup) = edge_with_groups(&[core.address], core.address, vec![]).await;
    let answer = raw_exchange(setup.http(), TWO_GETS.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("only twenty bytes..."), "{answer}");
    assert_eq!(
        answer.matches("HTTP/1.1").count(),
        1,
        "the second request must not be answered on a connection whose last answer broke: {answer}"
    );
    assert_eq!(direct_forwards(&edge).await, 1.0);
    assert_eq!(core.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_switch_of_protocols_nobody_asked_for_is_a_502() {
    let core = ScriptedCore::start(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        false,
    )
    .await;
    let (_edge, setup) = edge_with_groups(&[core.address], core.address, vec![]).await;
    let answer = raw_exchange(
        setup.http(),
        b"GET /api/v1/a HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
}

#[tokio::test]
async fn a_connection_field_naming_forwarding_headers_is_left_to_pingoras_path() {
    let core = ScriptedCore::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false).await;
    let (edge, setup) = edge_with_groups(&[core.address], core.address, vec![]).await;
    let answer = raw_exchange(
        setup.http(),
        b"GET /api/v1/a HTTP/1.1\r\nHost: a.example\r\nConnection: close, X-Forwarded-For\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(core.requests.load(Ordering::SeqCst), 0);
    assert_eq!(direct_forwards(&edge).await, 0.0);
}

/// A core that reads a request, writes `answer` (perhaps nothing, perhaps a head and part
/// of a body) and then waits; it reports when the PoP closes a connection that carried a
/// request (health checks connect and leave without a byte).
async fn stalling_core(
    answer: &'static [u8],
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<std::time::Instant>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let (closed_tx, closed_rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let closed = closed_tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut total = 0;
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if total == 0 && stream.write_all(answer).await.is_err() {
                        break;
                    }
                    total += n;
                }
                if total > 0 {
                    let _ = closed.send(std::time::Instant::now());
                }
            });
        }
    });
    (address, closed_rx, task)
}

/// Sends one request and leaves 300 ms later; the PoP must close its connection to the
/// core within 1.5 s of that (the group's read timeout would do it at 3 s).
async fn leave_and_see_the_core_connection_closed(answer: &'static [u8]) -> Edge {
    let (address, mut closed_rx, core) = stalling_core(answer).await;
    let (edge, setup) = edge_with_groups(&[address], address, vec![]).await;
    let mut client = tokio::net::TcpStream::connect(setup.http())
        .await
        .expect("connect");
    client
        .write_all(b"GET /api/v1/slow HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .await
        .expect("send");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    drop(client);
    tokio::time::timeout(std::time::Duration::from_millis(1500), closed_rx.recv())
        .await
        .expect("the PoP closes the core connection soon after the client leaves")
        .expect("the core saw the request");
    core.abort();
    edge
}

#[tokio::test]
async fn a_client_that_leaves_while_the_core_works_ends_the_exchange() {
    let edge = leave_and_see_the_core_connection_closed(b"").await;
    assert_eq!(direct_forwards(&edge).await, 0.0, "no answer came");
}

#[tokio::test]
async fn a_client_that_leaves_during_a_slow_body_ends_the_exchange() {
    let edge = leave_and_see_the_core_connection_closed(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nfirst",
    )
    .await;
    assert_eq!(
        direct_forwards(&edge).await,
        1.0,
        "the head came the direct way"
    );
}
