//! Graceful upgrade: `edgecache upgrade` starts the binary on disk as a successor, which
//! takes over the listening sockets while clients keep connecting; a successor that cannot
//! start leaves the old process serving.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::edge::{run_binary, Edge, EdgeSetup};
use crate::harness::origin::{pattern_range, Origin};
use crate::harness::{https_client, TestCert};
use crate::harness::{Cache, Config, Memory, ADMIN_TOKEN};

/// Kills a process this test did not spawn itself (the successor is the old edge's child).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The test edge's config with a token, a private directory for the upgrade socket, and a
/// grace period long enough for a slow download in flight to finish.
fn upgrade_config(setup: &EdgeSetup, cert: &TestCert, origin: &Origin, extra: &str) -> Config {
    let token = setup.path("admin.token");
    std::fs::write(&token, ADMIN_TOKEN).expect("token");
    let run = setup.path("run");
    std::fs::create_dir_all(&run).expect("run dir");
    let mut config = setup.config(&[cert], &[origin.address], extra);
    config.server.grace_period = "6s".to_string();
    config.server.upgrade_socket = Some(run.join("upgrade.sock"));
    config.admin.token_file = Some(token);
    config
}

/// Clients that send requests until told to stop, counting answers and failures: three
/// open a new connection per request, one (over TLS) keeps its connection.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<parking_lot::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(setup: &EdgeSetup, cert: &TestCert) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for task in 0..4 {
            let client = if task == 3 {
                https_client(&[&cert.pem], &["hachyderm.example"], setup.https(), false)
            } else {
                reqwest::Client::builder()
                    .no_proxy()
                    .pool_max_idle_per_host(0)
                    .timeout(Duration::from_secs(10))
                    .build()
                    .expect("client")
            };
            // Two clients ask for cacheable pages (hits once stored), two go to the core.
            let url = match task {
                3 => format!(
                    "https://hachyderm.example:{}/load/{task}",
                    setup.https().port()
                ),
                0 | 1 => format!("http://{}/load/{task}?cc=public,max-age=60", setup.http()),
                _ => format!("http://{}/load/{task}", setup.http()),
            };
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            let keeps_connections = task == 3;
            tasks.push(tokio::spawn(async move {
                let mut resent = false;
                while !stop.load(Ordering::SeqCst) {
                    let mut sent = client.get(&url).send().await;
                    // A draining process closes its idle keep-alive connections; a request
                    // the client wrote on one as it closed is lost with it. Clients resend
                    // an idempotent request in that case (RFC 9112 §9.3.1), and so does
                    // this one, once per run: the old process closes one connection of it.
                    if keeps_connections && !resent {
                        if let Err(e) = &sent {
                            if format!("{e:?}").contains("IncompleteMessage") {
                                resent = true;
                                sent = client.get(&url).send().await;
                            }
                        }
                    }
                    match sent {
                        Ok(resp) if resp.status() == 200 => match resp.bytes().await {
                            Ok(_) => {
                                ok.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => failures.lock().push(format!("{url}: body: {e}")),
                        },
                        Ok(resp) => failures.lock().push(format!("{url}: {}", resp.status())),
                        Err(e) => failures.lock().push(format!("{url}: {e:?}")),
                    }
                }
            }));
        }
        Load {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    /// Stops the clients; returns (answers, failures).
    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.expect("load task");
        }
        let failures = self.failures.lock().clone();
        (self.ok.load(Ordering::SeqCst), failures)
    }
}

/// The new process's pid, from `edgecache upgrade`'s report.
fn successor_pid(report: &str) -> u32 {
    report
        .split("new process ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {report:?}"))
}

async fn upgrade_command(config: &std::path::Path) -> (i32, String, String) {
    let config = config.to_path_buf();
    tokio::task::spawn_blocking(move || {
        run_binary(&["upgrade", "--config", config.to_str().expect("utf-8 path")])
    })
    .await
    .expect("upgrade command")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_hands_the_sockets_over_without_failing_a_request() {
    let origin = Origin::start().await;
    // The upgrade command finds the admin listener at the config's address.
    let setup = EdgeSetup::with_ports_now();
    let cert = TestCert::create(setup.dir.path(), "site", &["hachyderm.example"]);
    let mut with_cache = upgrade_config(&setup, &cert, &origin, "");
    with_cache.cache = Some(Cache::two_tiers(setup.dir.path()));
    let config = setup.write_config(&with_cache);
    let mut old = Edge::start(&setup, &config).await;
    let mut successor_guard = None;

    // A download still streaming when the old process starts to drain (5 s after the
    // handover): ~2 MB at 64 KiB per 250 ms, about 8 s.
    let slow_url = format!(
        "http://{}/bytes/2000000?chunk=65536&delay_ms=250&cc=public,max-age=600",
        setup.http()
    );
    let slow = tokio::spawn(async move {
        let resp = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
            .get(slow_url)
            .send()
            .await
            .expect("slow request");
        assert_eq!(resp.status(), 200);
        resp.bytes().await.expect("slow body").to_vec()
    });
    let load = Load::start(&setup, &cert);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (code, stdout, stderr) = upgrade_command(&config).await;
    assert_eq!(code, 0, "upgrade failed: {stdout}{stderr}");
    assert!(
        stdout.contains("handed over to the new process"),
        "{stdout}"
    );
    let new_pid = successor_pid(&stdout);
    successor_guard.replace(KillOnDrop(new_pid));
    assert_ne!(new_pid, old.pid());
    let cmdline = std::fs::read(format!("/proc/{new_pid}/cmdline")).expect("successor runs");
    assert!(
        String::from_utf8_lossy(&cmdline).contains("--upgrade"),
        "successor started without --upgrade"
    );

    // The old process drains (6 s grace period) and exits; clients keep being served.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = old.exit_status() {
            break status;
        }
        assert!(Instant::now() < deadline, "the old process did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "old process exited with {status}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let served_before_exit = load.ok.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (answers, failures) = load.finish().await;
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(
        answers > served_before_exit,
        "nothing was served after the old process exited ({answers})"
    );

    let body = slow.await.expect("slow download");
    assert_eq!(body.len(), 2_000_000);
    assert!(body == pattern_range(0..2_000_000), "slow body differs");

    // The admin listener moved too, and the new process is ready.
    let (status, text) = old.admin_get("/readyz").await;
    assert_eq!(status, 200, "{text}");
    assert!(
        std::fs::read_to_string(&old.stderr)
            .unwrap_or_default()
            .contains("waiting for the listening sockets"),
        "the successor's log (inherited stderr) shows no handover"
    );

    // The old process stored the slow download on disk after the new one had read the
    // cache directory; once the old one is gone, the new one takes the entry in.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&old.stderr)
        .unwrap_or_default()
        .contains("took in the disk cache entries")
    {
        assert!(Instant::now() < deadline, "the disk cache was not re-read");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = crate::harness::get(
        setup.http(),
        "/bytes/2000000?chunk=65536&delay_ms=250&cc=public,max-age=600",
        &[],
    )
    .await;
    assert_eq!(again.cache_status(), "HIT");
    assert!(again.body == body, "cached body differs");
    assert_eq!(origin.hits_for("/bytes/2000000"), 1);
    drop(successor_guard);
    eprintln!(
        "upgrade under load: {answers} requests, 0 failed; slow download of 2 MB whole and kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_that_cannot_start_leaves_the_old_process_serving() {
    let origin = Origin::start().await;
    // The upgrade command finds the admin listener at the config's address.
    let setup = EdgeSetup::with_ports_now();
    let cert = TestCert::create(setup.dir.path(), "site", &["hachyderm.example"]);
    let config = setup.write_config(&upgrade_config(&setup, &cert, &origin, ""));
    let mut old = Edge::start(&setup, &config).await;

    // A stray SIGQUIT, with no new process to take the sockets, stops nothing.
    old.signal(nix::sys::signal::Signal::SIGQUIT);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(old.is_running(), "a stray SIGQUIT stopped the process");
    assert_eq!(
        crate::harness::get(setup.http(), "/after-sigquit", &[])
            .await
            .status,
        200
    );
    assert!(old
        .stderr_text()
        .contains("no new process listens on the upgrade socket"));

    // Valid config, but the new process cannot open its disk cache: the directory holds
    // files edgecache did not make.
    let foreign = setup.path("foreign");
    std::fs::create_dir_all(&foreign).expect("dir");
    std::fs::write(foreign.join("precious.txt"), "not a cache").expect("file");
    let mut with_cache = upgrade_config(&setup, &cert, &origin, "");
    let mut cache = Cache::default().disk(&foreign, "64MiB");
    cache.memory = Some(Memory {
        max_size: Some("8MiB".to_string()),
        max_object_size: None,
    });
    cache.disk_tier().max_object_size = Some("1MiB".to_string());
    with_cache.cache = Some(cache);
    setup.write_config(&with_cache);
    let (code, stdout, stderr) = upgrade_command(&config).await;
    assert_ne!(code, 0, "{stdout}");
    assert!(
        stderr.contains("exited with") && stderr.contains("keeps serving"),
        "{stderr}"
    );
    assert!(old.is_running());
    let resp = crate::harness::get(setup.http(), "/still-here", &[]).await;
    assert_eq!(resp.status, 200);
    assert!(foreign.join("precious.txt").exists());
    assert_eq!(
        old.metric("edgecache_upgrade_failures_total").await,
        Some(1.0)
    );

    // A config that moves a listener cannot be handed over: refused before anything starts.
    let mut moved = upgrade_config(&setup, &cert, &origin, "");
    moved.listener("http").address = crate::harness::free_address().to_string();
    setup.write_config(&moved);
    let (code, _, stderr) = upgrade_command(&config).await;
    assert_ne!(code, 0);
    assert!(stderr.contains("restart instead"), "{stderr}");

    // Put right, the same process can still be upgraded.
    setup.write_config(&upgrade_config(&setup, &cert, &origin, ""));
    let (code, stdout, stderr) = upgrade_command(&config).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let new_pid = successor_pid(&stdout);
    let _successor = KillOnDrop(new_pid);
    let resp = crate::harness::get(setup.http(), "/after", &[]).await;
    assert_eq!(resp.status, 200);
}

#[tokio::test]
async fn an_upgrade_needs_the_admin_token() {
    let origin = Origin::start().await;
    let pop = crate::harness::start_pop(&[origin.address], "").await;
    // No admin.token_file: the admin listener may not replace the process.
    let resp = reqwest::Client::new()
        .post(format!("http://{}/upgrade", pop.setup.admin()))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 403);
    assert!(resp
        .text()
        .await
        .expect("body")
        .contains("admin.token_file"));
}

#[tokio::test]
async fn a_port_zero_edge_keeps_its_ports_across_an_upgrade() {
    let origin = Origin::start().await;
    let setup = EdgeSetup::new();
    let cert = TestCert::create(setup.dir.path(), "site", &["hachyderm.example"]);
    let config = setup.write_config(&upgrade_config(&setup, &cert, &origin, ""));
    let mut old = Edge::start(&setup, &config).await;
    let before = setup.report();
    assert_eq!(before.len(), 3, "{before:?}");
    assert!(before.iter().all(|(_, a)| a.port() != 0), "{before:?}");
    // The successor writes its own report: gone until it listens.
    std::fs::remove_file(setup.addresses_file()).expect("remove the report");

    let resp = reqwest::Client::new()
        .post(format!("http://{}/upgrade", setup.admin()))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("upgrade request");
    assert_eq!(resp.status().as_u16(), 200);
    let new_pid = successor_pid(&resp.text().await.expect("upgrade answer"));
    let _successor = KillOnDrop(new_pid);
    let deadline = Instant::now() + Duration::from_secs(20);
    while old.is_running() || !setup.addresses_file().exists() {
        assert!(
            Instant::now() < deadline,
            "the old process never left or the successor never reported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(setup.report(), before);
    // Only the successor is left, on the same ports.
    let resp = crate::harness::get(setup.http(), "/after-upgrade", &[]).await;
    assert_eq!(resp.status, 200);
    let client = https_client(&[&cert.pem], &["hachyderm.example"], setup.https(), false);
    let resp = client
        .get(format!(
            "https://hachyderm.example:{}/after-upgrade",
            setup.https().port()
        ))
        .send()
        .await
        .expect("https after the upgrade");
    assert_eq!(resp.status().as_u16(), 200);
    let health = reqwest::get(format!("http://{}/healthz", setup.admin()))
        .await
        .expect("admin after the upgrade");
    assert_eq!(health.status().as_u16(), 200);
}
