//! A fleet of PoPs on 127.0.0.1 that list each other as peers, each with both cache tiers,
//! Mastodon's cache buster and an admin token, for the tests of purges across PoPs.

use crate::harness::config::{Listener, Route, Site};
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
    /// The shield listener's address, on a PoP that shields others.
    pub shield: Option<std::net::SocketAddr>,
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
    let plan = FleetPlan {
        method,
        catch_up_interval,
        change_cache,
        ..FleetPlan::default()
    };
    start_fleet(origin, names, &plan).await
}

/// What sets the PoPs of a test fleet apart.
pub struct FleetPlan<'a> {
    /// The cache buster's method.
    pub method: &'a str,
    pub catch_up_interval: &'a str,
    pub change_cache: &'a dyn Fn(&mut Cache),
    /// The PoPs that serve a shield listener (the others can name them).
    pub shields: &'a [&'static str],
    /// The shields a PoP's media-host site names, by PoP; `None`: no site of its own.
    pub site_shield: &'a dyn Fn(&str) -> Option<Vec<&'static str>>,
    /// Any last change to a PoP's config, by PoP.
    pub change_config: &'a dyn Fn(&str, &mut crate::harness::config::Config),
    /// Peers name each PoP's public plain listener as its shield address (a mistake the
    /// hop's marker must make harmless).
    pub shields_on_public_listeners: bool,
}

impl Default for FleetPlan<'_> {
    fn default() -> Self {
        FleetPlan {
            method: "PURGE",
            catch_up_interval: "1h",
            change_cache: &|_| {},
            shields: &[],
            site_shield: &|_| None,
            change_config: &|_, _| {},
            shields_on_public_listeners: false,
        }
    }
}

/// Starts the PoPs `names` of `plan` in front of `origin`, each listing all the others.
pub async fn start_fleet(
    origin: &Origin,
    names: &[&'static str],
    plan: &FleetPlan<'_>,
) -> Vec<FleetPop> {
    let mut pops: Vec<FleetPop> = names
        .iter()
        .map(|name| FleetPop {
            name,
            setup: EdgeSetup::with_ports_now(),
            shield: plan
                .shields
                .contains(name)
                .then(crate::harness::edge::free_address),
            config: std::path::PathBuf::new(),
            edge: None,
        })
        .collect();
    let addresses: Vec<(&str, std::net::SocketAddr, Option<std::net::SocketAddr>)> = pops
        .iter()
        .map(|p| {
            let shield = match plan.shields_on_public_listeners {
                true => Some(p.setup.http()),
                false => p.shield,
            };
            (p.name, p.setup.admin(), shield)
        })
        .collect();
    for pop in &mut pops {
        let cert = TestCert::create(pop.setup.dir.path(), "site", &["hachyderm.example"]);
        let token = pop.setup.path("admin.token");
        std::fs::write(&token, ADMIN_TOKEN).expect("token");
        let secret = pop.setup.path("cache-buster.secret");
        std::fs::write(&secret, format!("{BUSTER_SECRET}\n")).expect("secret");
        let peers: Vec<Value> = addresses
            .iter()
            .filter(|(name, _, _)| *name != pop.name)
            .map(|(name, admin, shield)| {
                let mut peer = settings(&[("name", *name)]);
                peer.insert("admin".into(), admin.to_string().into());
                if let Some(shield) = shield {
                    peer.insert("shield".into(), shield.to_string().into());
                }
                Value::Mapping(peer)
            })
            .collect();
        let mut fleet = settings(&[
            ("name", pop.name),
            ("max_retry_delay", "300ms"),
            ("catch_up_interval", plan.catch_up_interval),
        ]);
        fleet.insert("peers".into(), peers.into());
        fleet.insert("state_dir".into(), path_value(&pop.setup.path("fleet")));
        let mut buster = settings(&[
            ("method", plan.method),
            ("secret_header", "X-Cache-Buster-Secret"),
        ]);
        buster.insert("secret_file".into(), path_value(&secret));
        let mut config = pop.setup.config(&[&cert], &[origin.address], "");
        config.admin.token_file = Some(token);
        let mut cache = Cache::two_tiers(pop.setup.dir.path());
        (plan.change_cache)(&mut cache);
        config.cache = Some(cache);
        config.set_section("fleet", fleet);
        config.set_section("cache_buster", buster);
        if let Some(shield) = pop.shield {
            config.listeners.push(Listener {
                name: "shield".to_string(),
                address: shield.to_string(),
                h2c: false,
                tls: None,
                shield: true,
            });
        }
        if let Some(shields) = (plan.site_shield)(pop.name) {
            config.sites.push(Site {
                hosts: vec![MEDIA_HOST.to_string()],
                shield: Some(shields.iter().map(|s| s.to_string()).collect()),
                routes: vec![Route::at("/")],
            });
        }
        (plan.change_config)(pop.name, &mut config);
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
