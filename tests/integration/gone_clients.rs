//! Requests whose client has gone: an HTTP/2 connection closed with streams still in flight
//! must not turn hits into requests to the core (an attacker could otherwise make the edge
//! fetch stored objects again at the cost of a few bytes each).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::origin::Origin;
use crate::harness::{get, pop_with_cache_and_h2c};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const END_STREAM_AND_HEADERS: u8 = 0x1 | 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).expect("small frame");
    let mut out = length.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// One HPACK literal (not indexed) whose name is static-table entry `index`.
fn literal(index: u8, value: &str) -> Vec<u8> {
    let length = u8::try_from(value.len()).expect("short value");
    assert!(length < 127 && index < 15);
    let mut out = vec![index, length];
    out.extend(value.as_bytes());
    out
}

/// A GET with no body: HEADERS with END_STREAM, nothing after it.
fn get_request(stream: u32, authority: &str, path: &str) -> Vec<u8> {
    // :method GET (static 2) and :scheme http (static 6), both fully indexed.
    let mut block = vec![0x82, 0x86];
    block.extend(literal(1, authority));
    block.extend(literal(4, path));
    frame(HEADERS, END_STREAM_AND_HEADERS, stream, &block)
}

/// Many GETs of a stored object on connections that close right after sending them: the
/// streams are complete requests without a body, so they are hits whether or not anyone is
/// left to read the answer, and none of them reaches the core.
#[tokio::test]
async fn streams_of_a_closed_connection_never_reach_the_core() {
    let origin = Origin::start().await;
    let pop = pop_with_cache_and_h2c(&origin, "").await;
    let path = "/stored/gone?cc=public,max-age=600";
    assert_eq!(
        get(pop.setup.http(), path, &[]).await.cache_status(),
        "MISS"
    );
    assert_eq!(get(pop.setup.http(), path, &[]).await.cache_status(), "HIT");
    assert_eq!(origin.hits_for("/stored/gone"), 1);

    let authority = pop.setup.http().to_string();
    for _ in 0..20 {
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(SETTINGS, 0, 0, &[]));
        for stream in (1..200).step_by(2) {
            wire.extend(get_request(stream, &authority, path));
        }
        let mut socket = TcpStream::connect(pop.setup.http()).await.expect("connect");
        socket.write_all(&wire).await.expect("write");
        // Leave once the first answers come: the rest of the streams are in flight.
        let mut first = [0u8; 4096];
        let _ = socket.read(&mut first).await;
        drop(socket);
    }
    // The PoP still answers, from the cache.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(pop.setup.http(), path, &[]).await.cache_status(), "HIT");
    assert_eq!(
        origin.hits_for("/stored/gone"),
        1,
        "streams of closed connections went to the core"
    );
    // A client leaving is not a failure to proxy: no such error line per stream.
    let log = pop.edge.stderr_text();
    assert!(!log.contains("Fail to proxy"), "{log}");
}
