//! Plain listeners beyond the basics: IPv6, h2c, and the connection gauge.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::harness::{
    http1_on, seen_headers, start_pop, Edge, EdgeSetup, Listener, Origin, TestCert, TestPop,
};

#[tokio::test]
async fn an_ipv6_listener_serves_and_reports_the_ipv6_client() {
    let origin = Origin::start().await;
    let setup = EdgeSetup::new();
    // The machine the tests run on has an IPv6 loopback; without one this test fails
    // rather than pass having checked nothing.
    TcpListener::bind("[::1]:0").expect("an IPv6 loopback ([::1]) to listen on");
    let cert = TestCert::create(setup.dir.path(), "site", &["hachyderm.example"]);
    let mut config = setup.config(&[&cert], &[origin.address], "");
    config.listeners.insert(
        0,
        Listener {
            name: "http-v6".to_string(),
            address: "[::1]:0".to_string(),
            h2c: false,
            tls: None,
            shield: false,
        },
    );
    let path = setup.write_config(&config);
    let _edge = Edge::start(&setup, &path).await;
    let v6 = setup.listener_address("http-v6");
    assert!(v6.is_ipv6() && v6.port() != 0, "{v6}");
    let resp = reqwest::get(format!("http://{v6}/over-v6"))
        .await
        .expect("request over IPv6");
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(seen_headers(&body, "x-forwarded-for"), vec!["::1"]);
    assert_eq!(seen_headers(&body, "x-real-ip"), vec!["::1"]);
}

#[tokio::test]
async fn h2c_is_offered_on_a_plain_listener_when_configured() {
    let origin = Origin::start().await;
    let setup = EdgeSetup::new();
    let cert = TestCert::create(setup.dir.path(), "site", &["hachyderm.example"]);
    let mut config = setup.config(&[&cert], &[origin.address], "");
    config.listener("http").h2c = true;
    let path = setup.write_config(&config);
    let _edge = Edge::start(&setup, &path).await;

    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let resp = h2
        .get(format!("http://{}/h2c", setup.http()))
        .send()
        .await
        .expect("h2c request");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    // HTTP/1.1 on the same port still works.
    let h1 = reqwest::get(format!("http://{}/h1", setup.http()))
        .await
        .expect("http/1.1 request");
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);
}

#[tokio::test]
async fn open_connections_are_counted_while_open() {
    let origin = Origin::start().await;
    let TestPop { edge, setup, .. } = start_pop(&[origin.address], "").await;
    let gauge = "edgecache_open_connections{listener=\"http\"}";

    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = tokio::net::TcpStream::connect(setup.http())
            .await
            .expect("connect");
        assert_eq!(http1_on(&mut stream, "a", "/hold").await.0, 200);
        held.push(stream);
    }
    assert_eq!(edge.metric(gauge).await, Some(3.0));

    for mut stream in held {
        stream.shutdown().await.expect("close");
    }
    edge.wait_metric(gauge, 0.0).await;
}

#[tokio::test]
async fn sigterm_lets_requests_in_flight_finish_then_exits_cleanly() {
    let origin = Origin::start().await;
    let setup = EdgeSetup::new();
    let cert = TestCert::create(setup.dir.path(), "site", &["hachyderm.example"]);
    // In-flight requests get the grace period; the test config's is 0s.
    let mut config = setup.config(&[&cert], &[origin.address], "");
    config.server.grace_period = "3s".to_string();
    let path = setup.write_config(&config);
    let mut edge = Edge::start(&setup, &path).await;

    let url = format!("http://{}/slow/1500", setup.http());
    let in_flight = tokio::spawn(async move {
        reqwest::get(url)
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string())
    });
    // Signal only once the request is at the core, so it is truly in flight.
    let deadline = Instant::now() + Duration::from_secs(10);
    while origin.hits() == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached the core"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    edge.signal(nix::sys::signal::Signal::SIGTERM);

    assert_eq!(
        in_flight.await.expect("join"),
        Ok(200),
        "in-flight request cut off"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = edge.exit_status() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "edgecache did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        status.success(),
        "exit status {status}: {}",
        edge.stderr_text()
    );
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_at_once() {
    use tokio::io::AsyncReadExt;
    let origin = Origin::start().await;
    let TestPop { edge, setup, .. } =
        start_pop(&[origin.address], "limits:\n  max_connections: 2\n").await;

    let mut first = tokio::net::TcpStream::connect(setup.http())
        .await
        .expect("connect");
    assert_eq!(http1_on(&mut first, "a", "/one").await.0, 200);
    let mut second = tokio::net::TcpStream::connect(setup.http())
        .await
        .expect("connect");
    assert_eq!(http1_on(&mut second, "a", "/two").await.0, 200);

    // The third is accepted by the kernel and closed by the edge without an answer.
    let mut third = tokio::net::TcpStream::connect(setup.http())
        .await
        .expect("connect");
    third
        .write_all(b"GET /three HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), third.read_to_end(&mut answer))
        .await
        .expect("the connection over the limit was held open");
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    assert_eq!(
        edge.metric("edgecache_connections_refused_total{listener=\"http\"}")
            .await,
        Some(1.0)
    );

    // A slot frees up when a connection closes.
    drop(first);
    edge.wait_metric("edgecache_open_connections{listener=\"http\"}", 1.0)
        .await;
    let mut fourth = tokio::net::TcpStream::connect(setup.http())
        .await
        .expect("connect");
    assert_eq!(http1_on(&mut fourth, "a", "/four").await.0, 200);
    assert_eq!(origin.hits(), 3);
}

/// Idle client connections are closed after `keepalive_timeout`, over HTTP/1.1 and HTTP/2.
#[tokio::test]
async fn idle_connections_are_closed_after_the_keepalive_timeout() {
    let origin = Origin::start().await;
    let TestPop { edge, setup, cert } =
        start_pop(&[origin.address], "limits:\n  keepalive_timeout: 1s\n").await;

    let mut h1 = tokio::net::TcpStream::connect(setup.http())
        .await
        .expect("connect");
    assert_eq!(http1_on(&mut h1, "a", "/idle").await.0, 200);
    let h2 = crate::harness::https_client(
        &[cert.pem.as_str()],
        &["hachyderm.example"],
        setup.https(),
        false,
    );
    let resp = h2
        .get(format!(
            "https://hachyderm.example:{}/idle",
            setup.https().port()
        ))
        .send()
        .await
        .expect("h2 request");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(
        edge.metric("edgecache_open_connections{listener=\"https\"}")
            .await,
        Some(1.0)
    );

    // Both clients keep their side open; the edge ends both connections.
    edge.wait_metric("edgecache_open_connections{listener=\"http\"}", 0.0)
        .await;
    edge.wait_metric("edgecache_open_connections{listener=\"https\"}", 0.0)
        .await;
    drop(h1);
}

#[tokio::test]
async fn port_zero_listeners_get_ports_of_their_own_and_are_reported_once_listening() {
    let origin = Origin::start().await;
    let setup = EdgeSetup::new();
    let cert = TestCert::create(setup.dir.path(), "site", &["hachyderm.example"]);
    let mut config = setup.config(&[&cert], &[origin.address], "");
    config.listeners.push(Listener {
        name: "http-2".to_string(),
        address: "127.0.0.1:0".to_string(),
        h2c: false,
        tls: None,
        shield: false,
    });
    let path = setup.write_config(&config);
    let edge = Edge::start(&setup, &path).await;

    let report = setup.report();
    let names: Vec<&str> = report.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "listener:http",
            "listener:https",
            "listener:http-2",
            "admin"
        ]
    );
    let ports: std::collections::HashSet<u16> = report.iter().map(|(_, a)| a.port()).collect();
    assert_eq!(
        ports.len(),
        4,
        "each listener has a port of its own: {report:?}"
    );
    assert!(!ports.contains(&0), "{report:?}");
    // The report is written once every listener accepts.
    for name in ["http", "http-2"] {
        let address = setup.listener_address(name);
        let resp = reqwest::get(format!("http://{address}/on-{name}"))
            .await
            .unwrap_or_else(|e| panic!("{name} at {address}: {e}"));
        assert_eq!(resp.status(), 200, "{name}");
    }
    let https = setup.listener_address("https");
    let client = crate::harness::https_client(&[&cert.pem], &["hachyderm.example"], https, false);
    let resp = client
        .get(format!(
            "https://hachyderm.example:{}/on-https",
            https.port()
        ))
        .send()
        .await
        .expect("https on a port-0 listener");
    assert_eq!(resp.status(), 200);
    let (status, body) = edge.admin_get("/readyz").await;
    assert!(!body.contains("not bound"), "{status} {body}");
    // And the log says where each one listens.
    let log = edge.stderr_text();
    for (name, address) in &report {
        assert!(
            log.lines().any(|l| l.contains("listening")
                && l.contains(name.as_str())
                && l.contains(&address.to_string())),
            "no log line for {name} at {address}:\n{log}"
        );
    }
}
