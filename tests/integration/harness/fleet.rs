//! A fleet of PoPs on 127.0.0.1 that list each other as peers, each with both cache tiers,
//! Mastodon's cache buster and an admin token, for the tests of purges across PoPs.

use crate::harness::edge::{Edge, EdgeSetup};
use crate::harness::origin::Origin;
use crate::harness::TestCert;
use crate::harness::{get, path_value, settings, Cache, ADMIN_TOKEN};
use serde_yaml::Value;

pub const MEDIA_HOST: &str = "media.hachyderm.example";
pub const BUSTER_SECRET: &str = "b5f0c1d2-cache-buster";

pub struct FleetPop {
    pub name: &'static str,
    pub setup: EdgeSetup,
    pub config: std::path::PathBuf,
    pub edge: Option<Edge>,
}

impl FleetPop {
    pub fn edge(&self) -> &Edge {
        self.edge.as_ref().expect("running")
    }

    pub async fn start(&mut self) {
        self.edge = Some(Edge::start(&self.setup, &self.config).await);
    }

    pub async fn kill(&mut self) {
        if let Some(edge) = self.edge.take() {
            edge.signal(nix::sys::signal::Signal::SIGKILL);
            drop(edge);
        }
    }

    /// GET `path` on this PoP as a client of the media host would.
    pub async fn get(&self, path: &str) -> crate::harness::Answer {
        get(self.setup.http(), path, &[("Host", MEDIA_HOST)]).await
    }
}

/// Starts PoPs named `names` in front of `origin`, each listing all the others, with the
/// cache buster on `PURGE`. They read each other's purge logs at start and then hourly,
/// so what a test sees arrive later was pushed.
pub async fn fleet(origin: &Origin, names: &[&'static str]) -> Vec<FleetPop> {
    fleet_with(origin, names, "PURGE", "1h").await
}

pub async fn fleet_with_buster_method(
    origin: &Origin,
    names: &[&'static str],
    method: &str,
) -> Vec<FleetPop> {
    fleet_with(origin, names, method, "1h").await
}

pub async fn fleet_with(
    origin: &Origin,
    names: &[&'static str],
    method: &str,
    catch_up_interval: &str,
) -> Vec<FleetPop> {
    fleet_with_cache(origin, names, method, catch_up_interval, &|_| {}).await
}

pub async fn fleet_with_cache(
    origin: &Origin,
    names: &[&'static str],
    method: &str,
    catch_up_interval: &str,
    change_cache: &dyn Fn(&mut Cache),
) -> Vec<FleetPop> {
    let mut pops: Vec<FleetPop> = names
        .iter()
        .map(|name| FleetPop {
            name,
            setup: EdgeSetup::with_ports_now(),
            config: std::path::PathBuf::new(),
            edge: None,
        })
        .collect();
    let admins: Vec<(&str, std::net::SocketAddr)> =
        pops.iter().map(|p| (p.name, p.setup.admin())).collect();
    for pop in &mut pops {
        let cert = TestCert::create(pop.setup.dir.path(), "site", &["hachyderm.example"]);
        let token = pop.setup.path("admin.token");
        std::fs::write(&token, ADMIN_TOKEN).expect("token");
        let secret = pop.setup.path("cache-buster.secret");
        std::fs::write(&secret, format!("{BUSTER_SECRET}\n")).expect("secret");
        let peers: Vec<Value> = admins
            .iter()
            .filter(|(name, _)| *name != pop.name)
            .map(|(name, admin)| {
                let mut peer = settings(&[("name", *name)]);
                peer.insert("admin".into(), admin.to_string().into());
                Value::Mapping(peer)
            })
            .collect();
        let mut fleet = settings(&[
            ("name", pop.name),
            ("max_retry_delay", "300ms"),
            ("catch_up_interval", catch_up_interval),
        ]);
        fleet.insert("peers".into(), peers.into());
        fleet.insert("state_dir".into(), path_value(&pop.setup.path("fleet")));
        let mut buster = settings(&[
            ("method", method),
            ("secret_header", "X-Cache-Buster-Secret"),
        ]);
        buster.insert("secret_file".into(), path_value(&secret));
        let mut config = pop.setup.config(&[&cert], &[origin.address], "");
        config.admin.token_file = Some(token);
        let mut cache = Cache::two_tiers(pop.setup.dir.path());
        change_cache(&mut cache);
        config.cache = Some(cache);
        config.set_section("fleet", fleet);
        config.set_section("cache_buster", buster);
        pop.config = pop.setup.write_config(&config);
        pop.start().await;
    }
    pops
}

/// Purges `url` through `pop`'s admin listener; its status and JSON report.
pub async fn admin_purge(pop: &FleetPop, url: &str) -> (u16, serde_json::Value) {
    admin_purge_query(pop, &[("url", url)]).await
}

/// A purge through `pop`'s admin listener with this query; its status and JSON report (or
/// the text of an answer that is not JSON).
pub async fn admin_purge_query(pop: &FleetPop, query: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{}/purge", pop.setup.admin()))
        .query(query)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("purge request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("purge answer");
    let json = match serde_json::from_str(&text) {
        Ok(json) => json,
        Err(_) => serde_json::Value::String(text),
    };
    (status, json)
}
