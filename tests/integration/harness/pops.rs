//! PoP builders shared by the test modules: an edge with the shared cache and an admin
//! token, and an edge with media routes over a real S3-compatible store, a legacy origin
//! and a legacy directory.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::harness::config::{
    path_value, settings, Cache, Config, Group, MediaRoute, Route, Store,
};
use crate::harness::edge::{Edge, EdgeSetup, Ports, TestCert, TestPop};
use crate::harness::origin::Origin;
use crate::harness::s3::S3Server;

/// A running edge with a cache, the directory its disk tier lives in, and the config it
/// was started from (a test that reloads changes a copy and writes it).
pub struct CachingPop {
    pub pop: TestPop,
    pub cache_dir: tempfile::TempDir,
    pub config: Config,
}

impl std::ops::Deref for CachingPop {
    type Target = TestPop;

    fn deref(&self) -> &TestPop {
        &self.pop
    }
}

/// The admin token every caching test edge has.
pub const ADMIN_TOKEN: &str = "purge-secret";

/// Starts an edge with [`Cache::two_tiers`], the admin token [`ADMIN_TOKEN`] and the
/// top-level sections in `extra`.
pub async fn pop_with_cache(origin: &Origin, extra: &str) -> CachingPop {
    pop_with_cache_config(origin, |config, _| config.add_sections(extra)).await
}

/// Starts an edge like [`pop_with_cache`], its config changed by `change`, which is given
/// the test's directory (where the cache lives) for any paths it needs.
pub async fn pop_with_cache_config(
    origin: &Origin,
    change: impl FnOnce(&mut Config, &Path),
) -> CachingPop {
    let cache_dir = tempfile::tempdir().expect("tempdir");
    start_caching_pop(origin, cache_dir, change, false, Ports::Chosen).await
}

/// Like [`pop_with_cache`] with nothing added, on ports that stay the same when
/// [`kill_and_restart`] starts it again.
pub async fn restartable_pop_with_cache(origin: &Origin) -> CachingPop {
    let cache_dir = tempfile::tempdir().expect("tempdir");
    start_caching_pop(origin, cache_dir, |_, _| {}, false, Ports::Kept).await
}

/// Starts an edge with the cache section `cache`, in `cache_dir` (made ready by the test).
pub async fn pop_with_cache_section(
    origin: &Origin,
    cache_dir: tempfile::TempDir,
    cache: Cache,
) -> CachingPop {
    start_caching_pop(
        origin,
        cache_dir,
        |config, _| config.cache = Some(cache),
        false,
        Ports::Chosen,
    )
    .await
}

/// Like [`pop_with_cache`], with h2c (HTTP/2 with prior knowledge) on the plain listener.
pub async fn pop_with_cache_and_h2c(origin: &Origin, extra: &str) -> CachingPop {
    let cache_dir = tempfile::tempdir().expect("tempdir");
    start_caching_pop(
        origin,
        cache_dir,
        |config, _| config.add_sections(extra),
        true,
        Ports::Chosen,
    )
    .await
}

async fn start_caching_pop(
    origin: &Origin,
    cache_dir: tempfile::TempDir,
    change: impl FnOnce(&mut Config, &Path),
    h2c: bool,
    ports: Ports,
) -> CachingPop {
    let setup = EdgeSetup::with(ports);
    let cert = TestCert::create(setup.dir.path(), "site", &["hachyderm.example"]);
    let token = setup.path("admin.token");
    std::fs::write(&token, ADMIN_TOKEN).expect("token");
    let mut config = setup.config(&[&cert], &[origin.address], "");
    config.admin.token_file = Some(token);
    config.listener("http").h2c = h2c;
    config.cache = Some(Cache::two_tiers(cache_dir.path()));
    change(&mut config, cache_dir.path());
    let path = setup.write_config(&config);
    let edge = Edge::start(&setup, &path).await;
    CachingPop {
        pop: TestPop { edge, setup, cert },
        cache_dir,
        config,
    }
}

impl CachingPop {
    /// `POST /purge?<query>` with the token: (status, body).
    pub async fn purge(&self, query: &str) -> (u16, String) {
        let resp = reqwest::Client::new()
            .post(format!("http://{}/purge?{query}", self.setup.admin()))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("purge request");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("purge answer"))
    }
}

/// The entry files of the disk tier with this extension.
pub fn entry_files(pop: &CachingPop, ext: &str) -> Vec<std::path::PathBuf> {
    let root = pop.cache_dir.path().join("cache").join("v1");
    let mut found = Vec::new();
    for shard in std::fs::read_dir(root).expect("cache dir").flatten() {
        if shard.file_name() == "tmp" {
            continue;
        }
        for file in std::fs::read_dir(shard.path()).expect("shard").flatten() {
            if file.path().extension().is_some_and(|e| e == ext) {
                found.push(file.path());
            }
        }
    }
    found
}

/// Kills the edge with SIGKILL (nothing flushed, nothing cleaned up) and starts it again,
/// on the same ports ([`Ports::Kept`]).
pub async fn kill_and_restart(pop: &mut CachingPop) {
    assert_eq!(
        pop.setup.ports(),
        Ports::Kept,
        "a restarted edge on port 0 would answer elsewhere: start it with Ports::Kept"
    );
    pop.pop.edge.signal(nix::sys::signal::Signal::SIGKILL);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pop.pop.edge.exit_status().is_none() {
        assert!(std::time::Instant::now() < deadline, "edge did not die");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let config = pop.pop.setup.path("edgecache.yaml");
    pop.pop.edge = Edge::start(&pop.pop.setup, &config).await;
}

/// Places and a media route for `/system/`: `chain` names them in order. `spaces` is the
/// S3 server, `old` the test origin under `old_base` (`/bytes/`: key `n` is `n` pattern
/// bytes), `disk` a legacy directory.
pub struct MediaPop {
    pub pop: CachingPop,
    pub s3: S3Server,
    pub origin: Origin,
    pub legacy_dir: tempfile::TempDir,
}

/// What a test changes in the media config.
#[derive(Clone, Copy)]
pub struct MediaConfig<'a> {
    /// The route's chain: store names in order.
    pub chain: &'a [&'a str],
    /// The path on the test origin that keys are appended to.
    pub old_base: &'a str,
    /// More settings of the `old` store: (key, value written as YAML).
    pub old: &'a [(&'a str, &'a str)],
    /// More settings of the `spaces` store: (key, value written as YAML).
    pub spaces: &'a [(&'a str, &'a str)],
    /// The stores the route copies media into (`media.write_through`).
    pub write_through: &'a [&'a str],
    /// The `write_through:` section, its queue in `queue/` of the test's directory, with
    /// these settings: (key, value written as YAML).
    pub queue: Option<&'a [(&'a str, &'a str)]>,
    /// Any other change, given the test's directory (where the cache and the S3
    /// credentials live) for the paths it needs.
    pub change: &'a dyn Fn(&mut Config, &Path),
    /// [`Ports::Kept`] for a test that restarts the edge.
    pub ports: Ports,
}

fn unchanged(_: &mut Config, _: &Path) {}

impl Default for MediaConfig<'_> {
    fn default() -> Self {
        MediaConfig {
            chain: &["spaces", "disk", "old"],
            old_base: "/bytes/",
            old: &[],
            spaces: &[],
            write_through: &[],
            queue: None,
            change: &unchanged,
            ports: Ports::Chosen,
        }
    }
}

/// [`media_pop_with`] with the chain, the old server's base path and the settings of the
/// `old` and `spaces` stores given; the rest as [`MediaConfig::default`].
pub async fn media_pop(
    chain: &[&str],
    old_base: &str,
    old: &[(&str, &str)],
    spaces: &[(&str, &str)],
) -> MediaPop {
    media_pop_with(MediaConfig {
        chain,
        old_base,
        old,
        spaces,
        ..MediaConfig::default()
    })
    .await
}

pub async fn media_pop_with(media: MediaConfig<'_>) -> MediaPop {
    let s3 = S3Server::start().await;
    let origin = Origin::start().await;
    let legacy_dir = tempfile::tempdir().expect("tempdir");
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let mut spaces = s3.store("spaces", cache_dir.path());
    for (key, value) in media.spaces {
        spaces = spaces.with(key, value);
    }
    let mut old = Store::http(&format!("http://{}{}", origin.address, media.old_base));
    for (key, value) in media.old {
        old = old.with(key, value);
    }
    let disk = Store::directory(legacy_dir.path());
    let pop = start_caching_pop(
        &origin,
        cache_dir,
        |config, dir| {
            config.stores.insert("spaces".to_string(), spaces);
            config.stores.insert("old".to_string(), old);
            config.stores.insert("disk".to_string(), disk);
            config.add_routes([Route {
                media: Some(MediaRoute {
                    chain: media.chain.iter().map(|s| s.to_string()).collect(),
                    write_through: media.write_through.iter().map(|s| s.to_string()).collect(),
                    more: Default::default(),
                }),
                ..Route::at("/system/")
            }]);
            if let Some(queue) = media.queue {
                let mut section = settings(queue);
                section.insert("queue_dir".into(), path_value(&dir.join("queue")));
                config.set_section("write_through", section);
            }
            (media.change)(config, dir);
        },
        false,
        media.ports,
    )
    .await;
    MediaPop {
        pop,
        s3,
        origin,
        legacy_dir,
    }
}

impl MediaPop {
    pub fn legacy_file(&self, key: &str, body: &[u8]) {
        let path = self.legacy_dir.path().join(key);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
        std::fs::write(path, body).expect("legacy file");
    }

    pub async fn metric(&self, sample: &str) -> f64 {
        self.pop.edge.metric(sample).await.unwrap_or(0.0)
    }
}

/// An edge whose core has a `web` group at `web` and a `streaming` group at `streaming`,
/// with `routes` under a site for every host.
pub async fn edge_with_groups(
    web: &[SocketAddr],
    streaming: SocketAddr,
    routes: Vec<Route>,
) -> (Edge, EdgeSetup) {
    edge_with_groups_and(web, streaming, routes, "").await
}

/// [`edge_with_groups`] with the top-level sections in `extra`.
pub async fn edge_with_groups_and(
    web: &[SocketAddr],
    streaming: SocketAddr,
    routes: Vec<Route>,
    extra: &str,
) -> (Edge, EdgeSetup) {
    let setup = EdgeSetup::new();
    let cert = TestCert::create(setup.dir.path(), "site", &["hachyderm.example"]);
    let mut config = setup.config(&[&cert], web, extra);
    config.core.default_group = Some("web".to_string());
    config
        .core
        .groups
        .insert("streaming".to_string(), Group::plain(&[streaming]));
    if !routes.is_empty() {
        config.add_routes(routes);
    }
    let path = setup.write_config(&config);
    let edge = Edge::start(&setup, &path).await;
    (edge, setup)
}
