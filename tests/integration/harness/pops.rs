//! PoP builders shared by the test modules: an edge with the shared cache and an admin
//! token, and an edge with media routes over a real S3-compatible store, a legacy origin
//! and a legacy directory.

use std::time::Duration;

use crate::harness::edge::{Edge, EdgeSetup, TestCert, TestPop};
use crate::harness::origin::Origin;
use crate::harness::s3::S3Server;

/// A cache section with both tiers under the test's directory; objects above 256 KiB live
/// on disk only.
pub fn cache_yaml(dir: &std::path::Path, extra: &str) -> String {
    format!(
        "cache:\n  memory:\n    max_size: 64MiB\n    max_object_size: 256KiB\n  disk:\n    path: {}\n    max_size: 1GiB\n  lock_timeout: 5s\n{extra}",
        dir.join("cache").display()
    )
}

/// A running edge with a cache, and the directory its disk tier lives in.
pub struct CachingPop {
    pub pop: TestPop,
    pub cache_dir: tempfile::TempDir,
}

impl std::ops::Deref for CachingPop {
    type Target = TestPop;

    fn deref(&self) -> &TestPop {
        &self.pop
    }
}

/// The admin token every caching test edge has.
pub const ADMIN_TOKEN: &str = "purge-secret";

/// Starts an edge with [`cache_yaml`] and the admin token [`ADMIN_TOKEN`].
pub async fn pop_with_cache(origin: &Origin, extra: &str) -> CachingPop {
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let yaml = cache_yaml(cache_dir.path(), extra);
    pop_with_cache_section(origin, cache_dir, &yaml).await
}

/// Starts an edge with the given `cache:` section (and anything after it).
pub async fn pop_with_cache_section(
    origin: &Origin,
    cache_dir: tempfile::TempDir,
    yaml: &str,
) -> CachingPop {
    start_caching_pop(origin, cache_dir, yaml, false).await
}

/// Like [`pop_with_cache`], with h2c (HTTP/2 with prior knowledge) on the plain listener.
pub async fn pop_with_cache_and_h2c(origin: &Origin, extra: &str) -> CachingPop {
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let yaml = cache_yaml(cache_dir.path(), extra);
    start_caching_pop(origin, cache_dir, &yaml, true).await
}

async fn start_caching_pop(
    origin: &Origin,
    cache_dir: tempfile::TempDir,
    yaml: &str,
    h2c: bool,
) -> CachingPop {
    let setup = EdgeSetup::new();
    let cert = TestCert::create(setup.dir.path(), "site", &["hachyderm.example"]);
    let token = setup.path("admin.token");
    std::fs::write(&token, ADMIN_TOKEN).expect("token");
    let mut config = setup.config(&[&cert], &[origin.address], yaml).replace(
        "admin:\n",
        &format!("admin:\n  token_file: {}\n", token.display()),
    );
    if h2c {
        let plain = format!("  - name: http\n    address: \"{}\"\n", setup.http);
        assert!(config.contains(&plain));
        config = config.replacen(&plain, &format!("{plain}    h2c: true\n"), 1);
    }
    let path = setup.write_config(&config);
    let edge = Edge::start(&setup, &path).await;
    CachingPop {
        pop: TestPop { edge, setup, cert },
        cache_dir,
    }
}

impl CachingPop {
    /// `POST /purge?<query>` with the token: (status, body).
    pub async fn purge(&self, query: &str) -> (u16, String) {
        let resp = reqwest::Client::new()
            .post(format!("http://{}/purge?{query}", self.setup.admin))
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

/// Kills the edge with SIGKILL (nothing flushed, nothing cleaned up) and starts it again.
pub async fn kill_and_restart(pop: &mut CachingPop) {
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
    pub chain: &'a str,
    pub old_base: &'a str,
    /// Lines under the `old` store.
    pub old_extra: &'a str,
    /// Lines under the `spaces` store.
    pub spaces_extra: &'a str,
    /// Lines under the route's `media:`.
    pub route_extra: &'a str,
    /// Top-level sections; `{dir}` is the test directory.
    pub top_extra: &'a str,
}

impl Default for MediaConfig<'_> {
    fn default() -> Self {
        MediaConfig {
            chain: "spaces, disk, old",
            old_base: "/bytes/",
            old_extra: "",
            spaces_extra: "",
            route_extra: "",
            top_extra: "",
        }
    }
}

/// [`media_pop_with`] with the chain, the old server's base path and the lines under the
/// `old` and `spaces` stores given; the rest as [`MediaConfig::default`].
pub async fn media_pop(
    chain: &str,
    old_base: &str,
    old_extra: &str,
    spaces_extra: &str,
) -> MediaPop {
    media_pop_with(MediaConfig {
        chain,
        old_base,
        old_extra,
        spaces_extra,
        ..MediaConfig::default()
    })
    .await
}

pub async fn media_pop_with(config: MediaConfig<'_>) -> MediaPop {
    let s3 = S3Server::start().await;
    let origin = Origin::start().await;
    let legacy_dir = tempfile::tempdir().expect("tempdir");
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "{cache}stores:\n{spaces}  old:\n    kind: http\n    url: http://{origin}{old_base}\n{old_extra}  disk:\n    kind: directory\n    path: {disk}\nsites:\n  - routes:\n      - path: /system/\n        media:\n          chain: [{chain}]\n{route_extra}{top_extra}",
        cache = cache_yaml(cache_dir.path(), ""),
        spaces = s3.store_yaml("spaces", cache_dir.path(), config.spaces_extra),
        origin = origin.address,
        old_base = config.old_base,
        old_extra = config.old_extra,
        disk = legacy_dir.path().display(),
        chain = config.chain,
        route_extra = config.route_extra,
        top_extra = config
            .top_extra
            .replace("{dir}", &cache_dir.path().display().to_string()),
    );
    let pop = pop_with_cache_section(&origin, cache_dir, &yaml).await;
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
