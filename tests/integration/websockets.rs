//! Websockets through the edge to a real websocket server (tungstenite) on the streaming
//! group: messages both ways, byte-exact, and what the edge counts.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::edge::{Edge, EdgeSetup};
use crate::harness::origin::Origin;
use crate::harness::{edge_with_groups_and, Group, Route};

/// A websocket server that sends back every message it gets.
async fn echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                // A real streaming server answers the handshake at least a network round trip
                // after the request. An answer within microseconds can reach pingora 0.9.1's
                // upstream task before the request's (empty) end, which it then takes for the
                // end of the upgraded stream and closes the websocket at once.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = socket.next().await {
                    if message.is_close() {
                        return;
                    }
                    if (message.is_binary() || message.is_text())
                        && socket.send(message).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (address, task)
}

async fn edge_with_streaming(
    web: SocketAddr,
    streaming: SocketAddr,
    extra: &str,
) -> (Edge, EdgeSetup) {
    edge_with_groups_and(
        &[web],
        streaming,
        vec![Route::at("/api/v1/streaming")
            .upstream("streaming")
            .cache(false)],
        extra,
    )
    .await
}

/// Message `i`: its length and bytes vary, and it says which it is.
fn message(i: usize) -> Vec<u8> {
    let len = 1 + (i * 131) % 4096;
    (0..len).map(|j| ((i + j * 7) % 256) as u8).collect()
}

#[tokio::test]
async fn ten_thousand_messages_are_echoed_byte_exact() {
    let web = Origin::start().await;
    let (echo, _task) = echo_server().await;
    let (edge, setup) = edge_with_streaming(web.address, echo, "").await;
    let url = format!("ws://{}/api/v1/streaming?stream=public", setup.http());
    let (mut socket, response) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("upgrade");
    assert_eq!(response.status(), 101);
    assert_eq!(
        edge.metric("edgecache_open_websockets{group=\"streaming\"}")
            .await,
        Some(1.0)
    );
    let count = 10_000;
    let (mut sink, mut stream) = socket.split();
    let sender = tokio::spawn(async move {
        for i in 0..count {
            sink.send(Message::binary(message(i))).await.expect("send");
        }
        sink
    });
    for i in 0..count {
        let got = stream
            .next()
            .await
            .expect("a message")
            .expect("not an error");
        assert!(
            got.into_data().as_ref() == message(i).as_slice(),
            "message {i}"
        );
    }
    let mut sink = sender.await.expect("sender");
    sink.send(Message::Close(None)).await.expect("close");
    socket = sink.reunite(stream).expect("reunite");
    drop(socket);
    assert_eq!(web.hits(), 0, "streaming never touches the web group");
    edge.wait_metric("edgecache_open_websockets{group=\"streaming\"}", 0.0)
        .await;
    let up = edge
        .metric("edgecache_upstream_body_bytes_total{direction=\"down\",group=\"streaming\"}")
        .await
        .unwrap_or(0.0);
    assert!(up > 0.0, "bytes from the streaming server are counted");
}

#[tokio::test]
async fn an_idle_websocket_is_closed_after_its_timeout() {
    let web = Origin::start().await;
    let (echo, _task) = echo_server().await;
    let (_edge, setup) =
        edge_with_streaming(web.address, echo, "limits:\n  websocket_idle_timeout: 1s\n").await;
    let url = format!("ws://{}/api/v1/streaming", setup.http());
    let (mut socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("upgrade");
    socket.send(Message::text("hello")).await.expect("send");
    assert_eq!(
        socket
            .next()
            .await
            .expect("echo")
            .expect("ok")
            .into_text()
            .expect("text"),
        "hello"
    );
    // Nothing either way: the edge closes it.
    let started = std::time::Instant::now();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match socket.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(m)) if m.is_close() => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the idle websocket stayed open");
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
}

#[tokio::test]
async fn a_graceful_shutdown_closes_websockets_with_going_away() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    let web = Origin::start().await;
    let (echo, _task) = echo_server().await;
    let setup = EdgeSetup::new();
    let cert = crate::harness::TestCert::create(setup.dir.path(), "site", &["hachyderm.example"]);
    let mut config = setup.config(
        &[&cert],
        &[web.address],
        "sites:\n  - routes:\n      - { path: /api/v1/streaming, upstream: streaming, cache: false }\n",
    );
    config.core.default_group = Some("web".to_string());
    config
        .core
        .groups
        .insert("streaming".to_string(), Group::plain(&[echo]));
    // Time for requests in flight after the signal, as in production.
    config.server.grace_period = "2s".to_string();
    let path = setup.write_config(&config);
    let mut edge = Edge::start(&setup, &path).await;

    let url = format!("ws://{}/api/v1/streaming?stream=public", setup.http());
    let mut sockets = Vec::new();
    for i in 0..3 {
        let (mut socket, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("upgrade");
        let text = format!("hello {i}");
        socket
            .send(Message::text(text.clone()))
            .await
            .expect("send");
        let echoed = socket.next().await.expect("echo").expect("ok");
        assert_eq!(echoed.into_text().expect("text").as_str(), text);
        sockets.push(socket);
    }
    edge.wait_metric("edgecache_open_websockets{group=\"streaming\"}", 3.0)
        .await;

    edge.signal(nix::sys::signal::Signal::SIGTERM);
    for (i, socket) in sockets.iter_mut().enumerate() {
        let first = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next())
            .await
            .unwrap_or_else(|_| panic!("websocket {i}: nothing within 10 s of SIGTERM"));
        match first {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(frame.code, CloseCode::Away, "websocket {i}")
            }
            other => panic!("websocket {i}: wanted a going-away close, got {other:?}"),
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while edge.is_running() {
        assert!(
            std::time::Instant::now() < deadline,
            "edgecache did not exit"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let log = edge.stderr_text() + &edge.stdout_text();
    assert!(log.contains("websockets get a going-away close"), "{log}");
}
