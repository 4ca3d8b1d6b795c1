//! Certificates reloaded without a restart: SIGHUP, the admin endpoint and `edgecache
//! reload`; connections in flight keep working; a bad new certificate is refused.

use std::time::{Duration, Instant};

use tokio_rustls::rustls::version::{TLS12, TLS13};

use crate::harness::{
    http1_on, run_binary, tls_connect, tls_probe, Edge, EdgeSetup, Origin, TestCert,
};

const NAME: &str = "hachyderm.example";

async fn served_leaf(setup: &EdgeSetup) -> Vec<u8> {
    tls_probe(setup.https(), Some(NAME), &[&TLS12, &TLS13], &[b"http/1.1"])
        .await
        .leaf_der
}

/// Replaces the live certificate files with a new pair for the same name.
fn renew(setup: &EdgeSetup, live: &TestCert) -> TestCert {
    let renewed = TestCert::create(setup.dir.path(), "renewed", &[NAME]);
    std::fs::copy(&renewed.cert, &live.cert).expect("copy cert");
    std::fs::copy(&renewed.key, &live.key).expect("copy key");
    renewed
}

async fn wait_for_leaf(setup: &EdgeSetup, der: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_leaf(setup).await != der {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sighup_swaps_the_certificate_and_connections_in_flight_carry_on() {
    let origin = Origin::start().await;
    let (setup, live, _, mut edge) = start_with_live_certificate(&origin).await;
    assert_eq!(served_leaf(&setup).await, live.der);

    // A kept-alive connection and a slow request, both open across the reload.
    let mut kept = tls_connect(setup.https(), Some(NAME), &[&TLS13], &[b"http/1.1"]).await;
    assert_eq!(http1_on(&mut kept, NAME, "/before").await.0, 200);
    let slow = tokio::spawn({
        let client =
            crate::harness::https_client(&[live.pem.as_str()], &[NAME], setup.https(), true);
        let url = format!("https://{NAME}:{}/slow/1500", setup.https().port());
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while origin.hits() < 2 {
        assert!(
            Instant::now() < deadline,
            "the slow request never reached the core"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let renewed = renew(&setup, &live);
    edge.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for_leaf(&setup, &renewed.der).await;

    assert_eq!(
        http1_on(&mut kept, NAME, "/after").await.0,
        200,
        "kept-alive connection broke"
    );
    assert_eq!(slow.await.expect("join").expect("slow request"), 200);
    assert!(edge.is_running());
    assert_eq!(
        edge.metric("edgecache_reloads_total{result=\"ok\"}").await,
        Some(1.0)
    );

    // A new client that trusts only the renewed certificate verifies it for real.
    let client =
        crate::harness::https_client(&[renewed.pem.as_str()], &[NAME], setup.https(), false);
    let resp = client
        .get(format!("https://{NAME}:{}/", setup.https().port()))
        .send()
        .await
        .expect("request with the renewed certificate");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_bad_new_certificate_is_refused_and_the_old_one_stays() {
    let origin = Origin::start().await;
    let (setup, live, _, mut edge) = start_with_live_certificate(&origin).await;

    // A key that does not belong to the certificate, as a botched copy would leave it.
    let other = TestCert::create(setup.dir.path(), "other", &[NAME]);
    std::fs::copy(&other.key, &live.key).expect("copy key");
    edge.signal(nix::sys::signal::Signal::SIGHUP);

    edge.wait_metric("edgecache_reloads_total{result=\"error\"}", 1.0)
        .await;
    assert_eq!(
        served_leaf(&setup).await,
        live.der,
        "the old certificate must stay"
    );
    let log = edge.stderr_text();
    assert!(log.contains("reload refused"), "{log}");
    assert!(log.contains("does not match certificate"), "{log}");
    assert!(edge.is_running());

    // Through the admin endpoint the refusal is explained to the caller.
    let (status, body) = edge.admin_reload(None).await;
    assert_eq!(status, 422);
    assert!(body.contains("does not match certificate"), "{body}");
}

#[tokio::test]
async fn the_admin_endpoint_and_the_reload_command_need_the_token() {
    let origin = Origin::start().await;
    // The reload command finds the admin listener at the config's address.
    let setup = EdgeSetup::with_ports_now();
    let live = TestCert::create(setup.dir.path(), "live", &[NAME]);
    let token = setup.path("admin.token");
    std::fs::write(&token, "correct-horse\n").expect("token");
    let mut config = setup.config(&[&live], &[origin.address], "");
    config.admin.token_file = Some(token);
    let path = setup.write_config(&config);
    let edge = Edge::start(&setup, &path).await;

    assert_eq!(edge.admin_reload(None).await.0, 401);
    assert_eq!(edge.admin_reload(Some("battery-staple")).await.0, 401);

    let renewed = renew(&setup, &live);
    let (status, body) = edge.admin_reload(Some("correct-horse")).await;
    assert_eq!(status, 200);
    assert!(body.contains("certificates replaced: https"), "{body}");
    assert_eq!(served_leaf(&setup).await, renewed.der);

    // The command reads the admin address and token from the same config.
    let again = renew(&setup, &live);
    let (code, stdout, stderr) = run_binary(&["reload", "--config", path.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("reloaded"), "{stdout}");
    assert_eq!(served_leaf(&setup).await, again.der);
}

/// Forwarding settings apply live on reload; what needs new services is reported as such.
#[tokio::test]
async fn a_reload_applies_trusted_proxies_and_reports_what_needs_a_restart() {
    let origin = Origin::start().await;
    let (setup, live, _, edge) = start_with_live_certificate(&origin).await;
    let client = reqwest::Client::new();
    let seen_xff = || async {
        let resp = client
            .get(format!("http://{}/", setup.http()))
            .header("X-Forwarded-For", "198.51.100.7")
            .send()
            .await
            .expect("request");
        let body: serde_json::Value = resp.json().await.expect("json");
        crate::harness::seen_headers(&body, "x-forwarded-for")
    };
    assert_eq!(seen_xff().await, vec!["127.0.0.1"]);

    let other_core = crate::harness::free_address();
    // The config it started from, with a second core host and a trusted proxy.
    let changed = setup.config(
        &[&live],
        &[origin.address, other_core],
        "proxy:\n  trusted_proxies: [\"127.0.0.0/8\"]\n",
    );
    setup.write_config(&changed);
    let (status, report) = edge.admin_reload(None).await;
    assert_eq!(status, 200);
    assert!(
        report.contains("needs restart: core upstream groups changed"),
        "{report}"
    );

    assert_eq!(seen_xff().await, vec!["198.51.100.7, 127.0.0.1"]);
}

/// An edge in front of `origin` whose HTTPS listener serves a fresh certificate for `NAME`.
async fn start_with_live_certificate(
    origin: &Origin,
) -> (EdgeSetup, TestCert, std::path::PathBuf, Edge) {
    let setup = EdgeSetup::new();
    let live = TestCert::create(setup.dir.path(), "live", &[NAME]);
    let config = setup.config(&[&live], &[origin.address], "");
    let path = setup.write_config(&config);
    let edge = Edge::start(&setup, &path).await;
    (setup, live, path, edge)
}
