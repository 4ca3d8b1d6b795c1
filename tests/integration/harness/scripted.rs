//! A core that answers from a script: the same bytes to every request head.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A core that answers every request head with the same bytes, then closes the
/// connection when `close` is set; it counts requests and the connections that carried
/// any (health checks connect without one).
pub struct ScriptedCore {
    pub address: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedCore {
    pub async fn start(answer: &'static [u8], close: bool) -> ScriptedCore {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (opened, asked) = (connections.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (opened, asked) = (opened.clone(), asked.clone());
                tokio::spawn(async move {
                    let mut carried = false;
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let Ok(n) = stream.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            if !carried {
                                carried = true;
                                opened.fetch_add(1, Ordering::SeqCst);
                            }
                            asked.fetch_add(1, Ordering::SeqCst);
                            if stream.write_all(answer).await.is_err() {
                                return;
                            }
                            if close {
                                return;
                            }
                        }
                    }
                });
            }
        });
        ScriptedCore {
            address,
            connections,
            requests,
            task,
        }
    }
}

impl Drop for ScriptedCore {
    fn drop(&mut self) {
        self.task.abort();
    }
}
