//! Idle HTTP/1 connections to core hosts, kept for the next request to the same host.
//!
//! Used by the proxy's own forwarding of body-less requests (pingora's path keeps its own
//! pool). One pool per listener: each listener runs on a runtime of its own, and a socket
//! is served by the runtime that registered it.
//!
//! At most `max_idle` connections are kept, across all hosts; a new one pushes out the
//! longest idle. A connection idle past its group's idle timeout, or one the host closed or
//! wrote on while idle, is never handed out. Connections are closed outside the lock.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use parking_lot::Mutex;
use pingora::protocols::Stream;
use tokio::io::AsyncReadExt;

/// Idle connections to core hosts; see the module's doc.
pub struct IdlePool {
    max_idle: usize,
    idle: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    count: usize,
    /// Per host, the longest idle first.
    by_host: HashMap<SocketAddr, VecDeque<(Stream, Instant)>>,
}

impl Idle {
    /// Takes out `host`'s connections idle for `timeout` or longer.
    fn expired(&mut self, host: SocketAddr, timeout: Duration) -> Vec<Stream> {
        let mut expired = Vec::new();
        if let Some(waiting) = self.by_host.get_mut(&host) {
            while waiting
                .front()
                .is_some_and(|(_, since)| since.elapsed() >= timeout)
            {
                if let Some((stream, _)) = waiting.pop_front() {
                    expired.push(stream);
                }
            }
        }
        self.count -= expired.len();
        self.forget_if_empty(host);
        expired
    }

    /// The most recently idle connection to `host`: the one least likely to have been
    /// closed by the host.
    fn newest(&mut self, host: SocketAddr) -> Option<Stream> {
        let (stream, _) = self.by_host.get_mut(&host)?.pop_back()?;
        self.count -= 1;
        self.forget_if_empty(host);
        Some(stream)
    }

    /// The connection idle longest, whatever its host.
    fn oldest(&mut self) -> Option<Stream> {
        let host = self
            .by_host
            .iter()
            .filter_map(|(host, waiting)| Some((*host, waiting.front()?.1)))
            .min_by_key(|(_, since)| *since)
            .map(|(host, _)| host)?;
        let (stream, _) = self.by_host.get_mut(&host)?.pop_front()?;
        self.count -= 1;
        self.forget_if_empty(host);
        Some(stream)
    }

    fn forget_if_empty(&mut self, host: SocketAddr) {
        if self.by_host.get(&host).is_some_and(VecDeque::is_empty) {
            self.by_host.remove(&host);
        }
    }
}

impl IdlePool {
    pub fn new(max_idle: usize) -> IdlePool {
        IdlePool {
            max_idle,
            idle: Mutex::new(Idle::default()),
        }
    }

    /// An open connection to `host` idle less than `idle_timeout`, the most recently idle
    /// first; the expired and closed ones met on the way are dropped.
    pub fn take(&self, host: SocketAddr, idle_timeout: Duration) -> Option<Stream> {
        loop {
            let (expired, candidate) = {
                let mut idle = self.idle.lock();
                let expired = idle.expired(host, idle_timeout);
                (expired, idle.newest(host))
            };
            drop(expired);
            let mut stream = candidate?;
            if still_quiet(&mut stream) {
                return Some(stream);
            }
        }
    }

    /// Keeps `stream` for the next request to `host`; when the pool is full, the
    /// connection idle longest makes room.
    pub fn give_back(&self, host: SocketAddr, stream: Stream) {
        if self.max_idle == 0 {
            return;
        }
        let pushed_out = {
            let mut idle = self.idle.lock();
            let pushed_out = if idle.count >= self.max_idle {
                idle.oldest()
            } else {
                None
            };
            idle.count += 1;
            idle.by_host
                .entry(host)
                .or_default()
                .push_back((stream, Instant::now()));
            pushed_out
        };
        drop(pushed_out);
    }

    /// Idle connections kept now.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().count
    }
}

/// Whether an idle connection has nothing to read: a host that closed it, or sent
/// something unasked, has made it useless.
fn still_quiet(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    // `unconstrained`: the runtime's cooperative budget must not make a ready read look
    // pending.
    tokio::task::unconstrained(stream.read(&mut byte))
        .now_or_never()
        .is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::protocols::l4::stream::Stream as L4Stream;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    const LONG: Duration = Duration::from_secs(60);

    async fn listener() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").await.expect("bind")
    }

    /// A connected pair: our end as pingora's stream, and the host's end.
    async fn connection(listener: &TcpListener) -> (Stream, TcpStream) {
        let address = listener.local_addr().expect("address");
        let ours = TcpStream::connect(address).await.expect("connect");
        let (theirs, _) = listener.accept().await.expect("accept");
        (Box::new(L4Stream::from(ours)), theirs)
    }

    /// The socket under `stream` (its descriptor, unique while it is open).
    fn socket_of(stream: &Stream) -> i32 {
        stream.id()
    }

    #[tokio::test]
    async fn a_connection_given_back_is_taken_for_its_host_only() {
        let (a, b) = (listener().await, listener().await);
        let host_a = a.local_addr().expect("address");
        let host_b = b.local_addr().expect("address");
        let pool = IdlePool::new(8);
        let (stream, _theirs) = connection(&a).await;
        pool.give_back(host_a, stream);
        assert_eq!(pool.idle_count(), 1);
        assert!(pool.take(host_b, LONG).is_none());
        assert!(pool.take(host_a, LONG).is_some());
        assert!(pool.take(host_a, LONG).is_none());
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn the_most_recently_idle_is_taken_first() {
        let a = listener().await;
        let host = a.local_addr().expect("address");
        let pool = IdlePool::new(8);
        let (first, _t1) = connection(&a).await;
        let (second, _t2) = connection(&a).await;
        let second_socket = socket_of(&second);
        pool.give_back(host, first);
        pool.give_back(host, second);
        let taken = pool.take(host, LONG).expect("a connection");
        assert_eq!(socket_of(&taken), second_socket);
    }

    #[tokio::test]
    async fn a_full_pool_makes_room_by_closing_the_longest_idle_of_any_host() {
        let (a, b) = (listener().await, listener().await);
        let host_a = a.local_addr().expect("address");
        let host_b = b.local_addr().expect("address");
        let pool = IdlePool::new(2);
        let (oldest, mut oldest_theirs) = connection(&a).await;
        let (newer, _t2) = connection(&a).await;
        let (for_b, _t3) = connection(&b).await;
        pool.give_back(host_a, oldest);
        pool.give_back(host_a, newer);
        pool.give_back(host_b, for_b);
        assert_eq!(pool.idle_count(), 2);
        // The oldest was closed: its host reads the end of the stream.
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), oldest_theirs.read(&mut buf))
            .await
            .expect("the pushed-out connection is closed");
        assert_eq!(read.expect("read"), 0);
        assert!(pool.take(host_b, LONG).is_some());
        assert!(pool.take(host_a, LONG).is_some());
        assert!(pool.take(host_a, LONG).is_none());
    }

    #[tokio::test]
    async fn connections_the_host_closed_or_wrote_on_are_never_handed_out() {
        let a = listener().await;
        let host = a.local_addr().expect("address");
        let pool = IdlePool::new(8);
        let (closed, theirs) = connection(&a).await;
        drop(theirs);
        let (chatty, mut theirs_chatty) = connection(&a).await;
        theirs_chatty
            .write_all(b"HTTP/1.1 200 OK\r\n")
            .await
            .expect("write");
        pool.give_back(host, closed);
        pool.give_back(host, chatty);
        // Let the close and the bytes arrive.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.take(host, LONG).is_none());
        assert_eq!(pool.idle_count(), 0, "both are dropped on the way");
    }

    #[tokio::test]
    async fn a_connection_idle_past_the_timeout_is_dropped() {
        let a = listener().await;
        let host = a.local_addr().expect("address");
        let pool = IdlePool::new(8);
        let (stream, _theirs) = connection(&a).await;
        pool.give_back(host, stream);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(pool.take(host, Duration::from_millis(10)).is_none());
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn a_pool_of_size_zero_keeps_nothing() {
        let a = listener().await;
        let host = a.local_addr().expect("address");
        let pool = IdlePool::new(0);
        let (stream, _theirs) = connection(&a).await;
        pool.give_back(host, stream);
        assert_eq!(pool.idle_count(), 0);
        assert!(pool.take(host, LONG).is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn takers_and_givers_on_many_threads_keep_every_connection_once() {
        let a = listener().await;
        let host = a.local_addr().expect("address");
        let pool = std::sync::Arc::new(IdlePool::new(64));
        let mut host_ends = Vec::new();
        for _ in 0..32 {
            let (stream, theirs) = connection(&a).await;
            host_ends.push(theirs);
            pool.give_back(host, stream);
        }
        let mut workers = Vec::new();
        for _ in 0..8 {
            let pool = pool.clone();
            workers.push(tokio::spawn(async move {
                let mut ports = Vec::new();
                // Take one, hold it a moment as a request would, and give it back.
                for _ in 0..50 {
                    if let Some(stream) = pool.take(host, LONG) {
                        ports.push(socket_of(&stream));
                        tokio::task::yield_now().await;
                        pool.give_back(host, stream);
                    }
                }
                ports.len()
            }));
        }
        let mut uses = 0;
        for worker in workers {
            uses += worker.await.expect("worker");
        }
        assert!(uses > 0);
        assert_eq!(pool.idle_count(), 32, "every connection came back once");
        let mut ports: Vec<i32> = Vec::new();
        while let Some(stream) = pool.take(host, LONG) {
            ports.push(socket_of(&stream));
        }
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 32, "the 32 connections, each once");
    }
}
