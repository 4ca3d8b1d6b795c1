//! The admin listener: health, readiness, metrics; and the access log.

use crate::harness::{
    free_address, path_value, settings, start_pop, Config, Edge, EdgeSetup, Origin, TestCert,
    TestPop,
};

async fn edge_for(core: std::net::SocketAddr, extra: &str) -> (Edge, EdgeSetup) {
    let TestPop { edge, setup, .. } = start_pop(&[core], extra).await;
    (edge, setup)
}

#[tokio::test]
async fn readiness_follows_the_core() {
    let core = free_address();
    let (edge, _setup) = edge_for(core, "").await;
    assert_eq!(edge.admin_get("/healthz").await, (200, "ok\n".to_string()));
    // Not ready because a check ran and failed, not merely because none ran yet.
    edge.wait_ready_answer(
        503,
        &format!("core group web passed its last health check ({core} down)"),
    )
    .await;
    let (_, body) = edge.admin_get("/readyz").await;
    assert!(!body.contains("not bound"), "{body}");

    // The core comes up on its address: the next health check (1s) makes the PoP ready.
    let _origin = Origin::start_at(core).await;
    edge.wait_ready_status(200).await;
    let up = edge
        .metric(&format!(
            "edgecache_core_host_up{{group=\"web\",host=\"{core}\"}}"
        ))
        .await;
    assert_eq!(up, Some(1.0));
}

#[tokio::test]
async fn metrics_count_requests_latency_and_connections() {
    let origin = Origin::start().await;
    let (edge, setup) = edge_for(origin.address, "").await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let resp = client
            .get(format!("http://{}/api/v1/instance", setup.http()))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
    }
    let resp = client
        .get(format!("http://{}/status/404", setup.http()))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 404);

    let ok = edge
        .metric("edgecache_requests_total{listener=\"http\",status_class=\"2xx\"}")
        .await;
    assert_eq!(ok, Some(3.0));
    let not_found = edge
        .metric("edgecache_requests_total{listener=\"http\",status_class=\"4xx\"}")
        .await;
    assert_eq!(not_found, Some(1.0));
    let latency_count = edge
        .metric(&format!(
            "edgecache_upstream_response_seconds_count{{group=\"web\",host=\"{}\"}}",
            origin.address
        ))
        .await;
    assert_eq!(latency_count, Some(4.0));
    let connections = edge
        .metric("edgecache_connections_total{listener=\"http\"}")
        .await
        .unwrap_or(0.0);
    assert!(connections >= 1.0, "{connections}");
    let (_, text) = edge.admin_get("/metrics").await;
    assert!(
        text.contains("# TYPE edgecache_open_connections gauge"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE edgecache_upstream_response_seconds histogram"),
        "{text}"
    );

    assert_eq!(edge.admin_get("/nowhere").await.0, 404);
    let post = client
        .post(format!("http://{}/metrics", edge.admin))
        .send()
        .await
        .expect("post");
    assert_eq!(post.status(), 405);
}

#[tokio::test]
async fn each_request_writes_one_json_access_log_line() {
    let origin = Origin::start().await;
    let (edge, setup) = edge_for(origin.address, "").await;
    let resp = reqwest::Client::new()
        .get(format!("http://{}/@alice/statuses?x=1", setup.http()))
        .header("Host", "hachyderm.example")
        .header("User-Agent", "access-log-test")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let length = resp.bytes().await.expect("body").len();

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let line = loop {
        let text = edge.stdout_text();
        if let Some(line) = text.lines().find(|l| l.contains("access-log-test")) {
            break line.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no access log line in {text:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let record: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(record["client_ip"], "127.0.0.1");
    assert_eq!(record["method"], "GET");
    assert_eq!(record["host"], "hachyderm.example");
    assert_eq!(record["path"], "/@alice/statuses?x=1");
    assert_eq!(record["status"], 200);
    assert_eq!(record["bytes"], length);
    assert_eq!(record["upstream"], origin.address.to_string());
    assert_eq!(record["upstream_status"], 200);
    assert_eq!(record["cache"], "");
    assert_eq!(record["listener"], "http");
    assert!(
        record["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
        "{record}"
    );
    assert!(
        record["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{record}"
    );
}

#[tokio::test]
async fn the_access_log_can_go_to_a_file() {
    let origin = Origin::start().await;
    let setup = EdgeSetup::new();
    let cert = TestCert::create(setup.dir.path(), "site", &["hachyderm.example"]);
    let log = setup.path("access.log");
    let mut config = setup.config(&[&cert], &[origin.address], "");
    let mut access_log = settings(&[("output", "file")]);
    access_log.insert("path".into(), path_value(&log));
    let mut logging = serde_yaml::Mapping::new();
    logging.insert("access_log".into(), access_log.into());
    config.set_section("logging", logging);
    let path = setup.write_config(&config);
    let edge = Edge::start(&setup, &path).await;
    for _ in 0..2 {
        reqwest::get(format!("http://{}/file-log", setup.http()))
            .await
            .expect("request");
    }
    wait_for_lines(&log, "/file-log", 2).await;

    // logrotate moves the file away and signals: new lines go to a new file at the old path.
    let rotated = setup.path("access.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    edge.signal(nix::sys::signal::Signal::SIGHUP);
    edge.wait_metric("edgecache_reloads_total{result=\"ok\"}", 1.0)
        .await;
    reqwest::get(format!("http://{}/after-rotation", setup.http()))
        .await
        .expect("request");
    wait_for_lines(&log, "/after-rotation", 1).await;
    let old = std::fs::read_to_string(&rotated).expect("rotated file");
    assert!(!old.contains("/after-rotation"), "{old}");
    assert_eq!(old.lines().count(), 2, "{old}");
}

/// Waits until `path` holds `count` JSON lines containing `needle`.
async fn wait_for_lines(path: &std::path::Path, needle: &str, count: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(needle)).collect();
        if lines.len() == count {
            for line in lines {
                let _: serde_json::Value = serde_json::from_str(line).expect("JSON line");
            }
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} holds {text:?}",
            path.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A host whose health endpoint fails is left out while another host passes; the check
/// really GETs the configured path. (A group whose every host fails is still tried: see
/// `forwarding::a_lone_core_host_that_comes_back_is_used_at_once`.)
#[tokio::test]
async fn an_http_health_check_takes_a_failing_core_host_out_of_rotation() {
    let good = Origin::start().await;
    let failing = Origin::start().await;
    // It accepts connections, but everything it answers, its health endpoint too, is a 503.
    failing.fail_with(503);
    let setup = EdgeSetup::new();
    let cert = TestCert::create(setup.dir.path(), "site", &["hachyderm.example"]);
    let mut config = setup.config(&[&cert], &[good.address, failing.address], "");
    config.group("web").health().path = Some("/health".to_string());
    let path = setup.write_config(&config);
    let edge = Edge::start(&setup, &path).await;
    let host_up = |host: std::net::SocketAddr| {
        format!("edgecache_core_host_up{{group=\"web\",host=\"{host}\"}}")
    };
    edge.wait_metric(&host_up(failing.address), 0.0).await;
    edge.wait_metric(&host_up(good.address), 1.0).await;
    // pingora flips the host's state right after our check records it; allow it that moment.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    for _ in 0..6 {
        let resp = reqwest::get(format!("http://{}/api/v1/instance", setup.http()))
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(failing.hits_for("/api/v1/instance"), 0);
    assert_eq!(good.hits_for("/api/v1/instance"), 6);
    let before = good.hits_for("/health");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(
        good.hits_for("/health") > before,
        "the health check does not GET its path"
    );
}

#[tokio::test]
async fn process_logs_can_be_json() {
    let origin = Origin::start().await;
    let (edge, setup) = edge_for(origin.address, "logging:\n  format: json\n").await;
    reqwest::get(format!("http://{}/", setup.http()))
        .await
        .expect("request");
    let text = edge.stderr_text();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no process log lines");
    for line in lines {
        let record: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(record["level"].is_string(), "{record}");
    }
}

#[test]
fn the_reload_command_says_when_no_pop_is_listening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = free_address();
    let path = dir.path().join("edgecache.yaml");
    // A PoP that is not running: nothing listens on any of its addresses.
    let config = Config::edge(
        "127.0.0.1:8080".parse().expect("address"),
        "127.0.0.1:8443".parse().expect("address"),
        admin,
        &[],
        &["127.0.0.1:3000".parse().expect("address")],
    );
    std::fs::write(&path, config.render()).expect("write");
    let (code, _, stderr) =
        crate::harness::run_binary(&["reload", "--config", path.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach the admin listener at {admin}")),
        "{stderr}"
    );
}

#[test]
fn the_admin_commands_refuse_an_admin_address_on_port_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("edgecache.yaml");
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("address");
    let config = Config::edge(
        any,
        any,
        any,
        &[],
        &["127.0.0.1:3000".parse().expect("address")],
    );
    std::fs::write(&path, config.render()).expect("write");
    let path = path.to_str().expect("utf-8");
    for command in [
        vec!["reload", "--config", path],
        vec!["upgrade", "--config", path],
        vec!["purge", "--config", path, "http://hachyderm.example/x"],
    ] {
        let (code, _, stderr) = crate::harness::run_binary(&command);
        assert_eq!(code, 64, "{command:?}: {stderr}");
        assert!(
            stderr.contains("admin.address has port 0") && stderr.contains(path),
            "{command:?}: {stderr}"
        );
    }
}
