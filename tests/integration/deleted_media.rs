//! Deleted media stays deleted: Mastodon deletes an attachment from the object store and
//! sends its cache buster; from then on no legacy copy, queued copy or `migrate` brings it
//! back, on any PoP, across restarts, while a new upload under the key is served again.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::edge::{Edge, EdgeSetup, BINARY};
use crate::harness::origin::Origin;
use crate::harness::s3::S3Server;
use crate::harness::TestCert;
use crate::harness::{get, path_value, settings, Cache, MediaRoute, Route, Store, ADMIN_TOKEN};
use serde_yaml::Value;

const BUSTER_SECRET: &str = "d3l3ted-media-buster";
const KEY: &str = "media_attachments/files/1/original/a.png";
const URL: &str = "/system/media_attachments/files/1/original/a.png";

struct Pop {
    setup: EdgeSetup,
    config: PathBuf,
    edge: Edge,
}

impl Pop {
    async fn get(&self, path: &str) -> crate::harness::Answer {
        get(self.setup.http(), path, &[]).await
    }

    async fn metric(&self, sample: &str) -> f64 {
        self.edge.metric(sample).await.unwrap_or(0.0)
    }

    async fn purge(&self, url: &str, deleted: bool) -> u16 {
        let mut query = vec![("url", format!("{}{url}", self.setup.http()))];
        if deleted {
            query.push(("deleted", "1".to_string()));
        }
        reqwest::Client::new()
            .post(format!("http://{}/purge", self.setup.admin()))
            .query(&query)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("purge")
            .status()
            .as_u16()
    }

    /// Mastodon's cache buster for `url`, as Mastodon sends it.
    async fn bust(&self, url: &str) -> u16 {
        reqwest::Client::new()
            .request(
                reqwest::Method::from_bytes(b"PURGE").expect("method"),
                format!("http://{}{url}", self.setup.http()),
            )
            .header("X-Cache-Buster-Secret", BUSTER_SECRET)
            .send()
            .await
            .expect("bust")
            .status()
            .as_u16()
    }

    async fn restart(&mut self) {
        self.edge.signal(nix::sys::signal::Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.edge.exit_status().is_none() {
            assert!(Instant::now() < deadline, "edge did not die");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.edge = Edge::start(&self.setup, &self.config).await;
    }

    /// `edgecache migrate` from the legacy directory into the store, with this PoP's config.
    async fn migrate(&self) -> String {
        let mut command = Command::new(BINARY);
        command
            .args(["migrate", "--from", "disk", "--to", "spaces", "--config"])
            .arg(&self.config)
            .arg("--state")
            .arg(self.setup.path("migrate.state"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("join")
            .expect("run migrate");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).to_string()
    }
}

/// Two PoPs, `fra` and `ewr`, in one fleet, sharing the object store and the legacy
/// directory: media from `[spaces, disk]`, written through to `spaces`.
async fn fleet(core: &Origin, s3: &S3Server, legacy: &Path) -> (Pop, Pop) {
    let names = ["fra", "ewr"];
    // Both are placed first: each config names the other's admin address.
    let setups = [EdgeSetup::with_ports_now(), EdgeSetup::with_ports_now()];
    let admins = [setups[0].admin(), setups[1].admin()];
    let mut pops = Vec::new();
    for (i, setup) in setups.into_iter().enumerate() {
        let dir = setup.dir.path();
        let cert = TestCert::create(dir, "site", &["hachyderm.example"]);
        let token = setup.path("admin.token");
        std::fs::write(&token, ADMIN_TOKEN).expect("token");
        let secret = setup.path("buster.secret");
        std::fs::write(&secret, BUSTER_SECRET).expect("secret");
        let mut config = setup.config(&[&cert], &[core.address], "");
        config.admin.token_file = Some(token);
        config.cache = Some(Cache::two_tiers(dir));
        config
            .stores
            .insert("spaces".to_string(), s3.store("spaces", dir));
        config
            .stores
            .insert("disk".to_string(), Store::directory(legacy));
        config.add_routes([Route {
            media: Some(MediaRoute {
                chain: vec!["spaces".to_string(), "disk".to_string()],
                write_through: vec!["spaces".to_string()],
                ..MediaRoute::default()
            }),
            ..Route::at("/system/")
        }]);
        let mut queue = settings(&[("retry_min", "100ms"), ("retry_max", "300ms")]);
        queue.insert("queue_dir".into(), path_value(&dir.join("queue")));
        config.set_section("write_through", queue);
        let mut peer = settings(&[("name", names[1 - i])]);
        peer.insert("admin".into(), admins[1 - i].to_string().into());
        let mut fleet = settings(&[
            ("name", names[i]),
            ("max_retry_delay", "300ms"),
            ("catch_up_interval", "1h"),
        ]);
        fleet.insert("peers".into(), vec![Value::Mapping(peer)].into());
        fleet.insert("state_dir".into(), path_value(&dir.join("fleet")));
        config.set_section("fleet", fleet);
        let mut buster = settings(&[
            ("method", "PURGE"),
            ("secret_header", "X-Cache-Buster-Secret"),
        ]);
        buster.insert("secret_file".into(), path_value(&secret));
        config.set_section("cache_buster", buster);
        let config = setup.write_config(&config);
        let edge = Edge::start(&setup, &config).await;
        pops.push(Pop {
            setup,
            config,
            edge,
        });
    }
    let ewr = pops.pop().expect("ewr");
    let fra = pops.pop().expect("fra");
    (fra, ewr)
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen in 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn delete_from_store(s3: &S3Server, key: &str) {
    s3.client()
        .delete_object()
        .bucket(crate::harness::s3::BUCKET)
        .key(key)
        .send()
        .await
        .expect("delete");
}

#[tokio::test]
async fn deleted_media_stays_deleted_on_every_pop_and_a_new_upload_is_served() {
    let core = Origin::start().await;
    let s3 = S3Server::start().await;
    let legacy = tempfile::tempdir().expect("legacy");
    let put_legacy = |key: &str, body: &[u8]| {
        let path = legacy.path().join(key);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
        std::fs::write(path, body).expect("legacy file");
    };
    put_legacy(KEY, b"the old copy");
    put_legacy("media_attachments/files/2/original/b.png", b"kept");
    let (mut fra, ewr) = fleet(&core, &s3, legacy.path()).await;

    // Served from the legacy disk and written through into the store.
    let first = fra.get(URL).await;
    assert_eq!(
        (first.status, first.body.as_slice()),
        (200, &b"the old copy"[..])
    );
    wait_until("the write-through copy", || async {
        s3.get(KEY).await.is_some()
    })
    .await;

    // Mastodon deletes the attachment from the store, then busts its URL at one PoP.
    delete_from_store(&s3, KEY).await;
    assert_eq!(fra.bust(URL).await, 200);
    for (name, pop) in [("fra", &fra), ("ewr", &ewr)] {
        wait_until("the tombstone", || async {
            pop.metric("edgecache_media_tombstones").await == 1.0
        })
        .await;
        let answer = pop.get(URL).await;
        assert_eq!(answer.status, 404, "{name} served deleted media");
        // Other spellings of the URL are the same deleted object.
        assert_eq!(pop.get(&format!("{URL}?x=1")).await.status, 404, "{name}");
    }
    assert!(
        legacy.path().join(KEY).exists(),
        "the legacy copy is still there"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s3.get(KEY).await,
        None,
        "the store got the deleted media back"
    );

    // migrate skips it and says so; what was not deleted moves.
    let report = fra.migrate().await;
    assert!(report.contains("moved 1 objects"), "{report}");
    assert!(report.contains("deleted media left alone 1"), "{report}");
    assert_eq!(s3.get(KEY).await, None, "migrate brought it back");
    assert_eq!(
        s3.get("media_attachments/files/2/original/b.png")
            .await
            .as_deref(),
        Some(&b"kept"[..])
    );

    // The tombstone survives a restart (the caches are emptied first).
    fra.restart().await;
    assert_eq!(fra.purge(URL, false).await, 200);
    assert_eq!(fra.get(URL).await.status, 404, "forgotten at a restart");

    // A new upload under the key is served again.
    s3.put(KEY, b"uploaded again").await;
    assert_eq!(fra.purge(URL, false).await, 200);
    let again = fra.get(URL).await;
    assert_eq!(
        (again.status, again.body.as_slice()),
        (200, &b"uploaded again"[..])
    );
    assert!(fra.metric("edgecache_media_tombstoned_lookups_total").await >= 2.0);
}

/// A copy queued before the delete (the store was down) is dropped, not uploaded after it;
/// an operator's purge with `deleted` works like the cache buster's.
#[tokio::test]
async fn a_copy_queued_before_the_delete_is_dropped() {
    let core = Origin::start().await;
    let mut s3 = S3Server::start().await;
    let legacy = tempfile::tempdir().expect("legacy");
    let path = legacy.path().join(KEY);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
    std::fs::write(&path, b"the old copy").expect("legacy file");
    let (fra, _ewr) = fleet(&core, &s3, legacy.path()).await;
    s3.stop();
    let first = fra.get(URL).await;
    assert_eq!(first.status, 200, "the legacy disk still answers");
    wait_until("a queued copy", || async {
        fra.metric("edgecache_write_through_jobs_total{event=\"queued\"}")
            .await
            == 1.0
    })
    .await;
    assert_eq!(fra.purge(URL, true).await, 200);
    s3.resume().await;
    wait_until("the queued copy dropped", || async {
        fra.metric("edgecache_write_through_jobs_total{event=\"tombstoned\"}")
            .await
            == 1.0
    })
    .await;
    assert_eq!(s3.get(KEY).await, None);
    assert_eq!(
        fra.metric("edgecache_write_through_jobs_total{event=\"done\"}")
            .await,
        0.0
    );
}

/// Mastodon also busts media that stays (an account suspended, then unsuspended): media the
/// store still has is purged from the caches, not taken for deleted.
#[tokio::test]
async fn a_bust_of_media_still_in_the_store_is_no_deletion() {
    let core = Origin::start().await;
    let s3 = S3Server::start().await;
    let legacy = tempfile::tempdir().expect("legacy");
    let path = legacy.path().join(KEY);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
    std::fs::write(&path, b"the old copy").expect("legacy file");
    let (fra, ewr) = fleet(&core, &s3, legacy.path()).await;
    assert_eq!(fra.get(URL).await.status, 200);
    wait_until("the write-through copy", || async {
        s3.get(KEY).await.is_some()
    })
    .await;
    assert_eq!(fra.get(URL).await.cache_status(), "HIT");
    assert_eq!(fra.bust(URL).await, 200);
    // The bust emptied the cache, and the media is served again.
    assert_eq!(fra.get(URL).await.cache_status(), "MISS");
    for pop in [&fra, &ewr] {
        let answer = pop.get(URL).await;
        assert_eq!(
            (answer.status, answer.body.as_slice()),
            (200, &b"the old copy"[..])
        );
        assert_eq!(pop.metric("edgecache_media_tombstones").await, 0.0);
    }
}
