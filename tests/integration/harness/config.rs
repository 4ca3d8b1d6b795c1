//! Edge configs built from typed parts and rendered to YAML: a test changes a field, never
//! the text of a config. The parts mirror the config file's sections (see
//! `config/mastodon-pop.example.yaml`); what the tests set often has a field of its own,
//! and the rest of a section is kept as parsed YAML values, so every key the file knows can
//! still be given.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};

/// A whole edge config.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub listeners: Vec<Listener>,
    pub admin: Admin,
    pub core: Core,
    pub server: Server,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<Cache>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<Site>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub stores: BTreeMap<String, Store>,
    /// The other top-level sections (`limits`, `proxy`, `fleet`, ...), each given whole.
    #[serde(flatten)]
    pub sections: Mapping,
}

#[derive(Clone, Debug, Serialize)]
pub struct Listener {
    pub name: String,
    pub address: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub h2c: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// Serves the other PoPs as their shield.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub shield: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Tls {
    pub certificates: Vec<Certificate>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Certificate {
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug, Serialize)]
pub struct Admin {
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Core {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_group: Option<String>,
    /// `core.mesh`, given whole (see `mesh.rs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh: Option<Value>,
    pub groups: BTreeMap<String, Group>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Group {
    /// `host:port`; tailnet names are allowed in embedded mesh mode, so not a `SocketAddr`.
    pub hosts: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
}

impl Group {
    /// A group of `hosts` with the test timeouts: quick to give up, checked every second.
    pub fn of(hosts: &[SocketAddr]) -> Group {
        Group {
            hosts: hosts.iter().map(|a| a.to_string()).collect(),
            connect_timeout: Some("1s".to_string()),
            read_timeout: Some("3s".to_string()),
            total_timeout: None,
            health: Some(Health {
                interval: "1s".to_string(),
                path: None,
            }),
        }
    }

    /// A group of `hosts` with the edge's defaults for everything else.
    pub fn plain(hosts: &[SocketAddr]) -> Group {
        Group {
            hosts: hosts.iter().map(|a| a.to_string()).collect(),
            connect_timeout: None,
            read_timeout: None,
            total_timeout: None,
            health: None,
        }
    }

    pub fn health(&mut self) -> &mut Health {
        self.health.as_mut().expect("the group has a health check")
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Health {
    pub interval: String,
    /// Without a path the check is a TCP connect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Server {
    pub grace_period: String,
    pub graceful_shutdown_timeout: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade_socket: Option<PathBuf>,
}

/// The `cache:` section.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Cache {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<Disk>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serve_stale_on_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_header: Option<bool>,
    /// Any other key of the section.
    #[serde(flatten)]
    pub more: Mapping,
}

impl Cache {
    /// Both tiers, the disk one under `dir/cache`; objects above 256 KiB live on disk only.
    pub fn two_tiers(dir: &Path) -> Cache {
        Cache {
            memory: Some(Memory {
                max_size: Some("64MiB".to_string()),
                max_object_size: Some("256KiB".to_string()),
            }),
            disk: Some(Disk {
                path: dir.join("cache"),
                max_size: Some("1GiB".to_string()),
                max_object_size: None,
                max_entries: None,
            }),
            lock_timeout: Some("5s".to_string()),
            ..Cache::default()
        }
    }
}

impl Cache {
    /// A memory tier of `max_size`; objects above `max_object_size` are kept on disk only.
    pub fn memory(mut self, max_size: &str, max_object_size: &str) -> Cache {
        self.memory = Some(Memory {
            max_size: Some(max_size.to_string()),
            max_object_size: Some(max_object_size.to_string()),
        });
        self
    }

    /// A disk tier of `max_size` in `path`.
    pub fn disk(mut self, path: &Path, max_size: &str) -> Cache {
        self.disk = Some(Disk {
            path: path.to_path_buf(),
            max_size: Some(max_size.to_string()),
            max_object_size: None,
            max_entries: None,
        });
        self
    }

    /// The disk tier, which [`Cache::disk`] has set.
    pub fn disk_tier(&mut self) -> &mut Disk {
        self.disk.as_mut().expect("the cache has a disk tier")
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Memory {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_object_size: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    pub path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_object_size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<u64>,
}

/// One entry of `sites:`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Fleet peers a cacheable miss asks first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shield: Option<Vec<String>>,
    pub routes: Vec<Route>,
}

/// One route of a site.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Route {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heuristic_freshness: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<MediaRoute>,
    /// Any other key of the route (`max_body_size`, `client_limit`, ...).
    #[serde(flatten)]
    pub more: Mapping,
}

impl Route {
    /// A route for `path` with nothing set.
    pub fn at(path: &str) -> Route {
        Route {
            path: path.to_string(),
            ..Route::default()
        }
    }

    /// Requests on this route go to the core group `group`.
    pub fn upstream(mut self, group: &str) -> Route {
        self.upstream = Some(group.to_string());
        self
    }

    /// The shared cache on (the default) or off for this route.
    pub fn cache(mut self, on: bool) -> Route {
        self.cache = Some(on);
        self
    }

    /// Sets one more key, its value written as YAML (`"1KiB"`).
    pub fn with(mut self, key: &str, value: &str) -> Route {
        self.more.insert(key.into(), yaml(value));
        self
    }
}

/// A route's `media:`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MediaRoute {
    pub chain: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write_through: Vec<String>,
    #[serde(flatten)]
    pub more: Mapping,
}

/// One entry of `stores:`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Store {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Any other key of the store (`prefix`, `breaker`, `max_concurrency`, `timeout`, ...).
    #[serde(flatten)]
    pub more: Mapping,
}

impl Store {
    fn of_kind(kind: &str) -> Store {
        Store {
            kind: kind.to_string(),
            endpoint: None,
            bucket: None,
            credentials_file: None,
            url: None,
            path: None,
            more: Mapping::new(),
        }
    }

    /// An old server's media over HTTP: the key is appended to `url`.
    pub fn http(url: &str) -> Store {
        Store {
            url: Some(url.to_string()),
            ..Store::of_kind("http")
        }
    }

    /// A local directory: the key is a path under it.
    pub fn directory(path: &Path) -> Store {
        Store {
            path: Some(path.to_path_buf()),
            ..Store::of_kind("directory")
        }
    }

    /// An S3-compatible store.
    pub fn s3(endpoint: &str, bucket: &str, credentials_file: &Path) -> Store {
        Store {
            endpoint: Some(endpoint.to_string()),
            bucket: Some(bucket.to_string()),
            credentials_file: Some(credentials_file.to_path_buf()),
            ..Store::of_kind("s3")
        }
    }

    /// Sets one more key, its value written as YAML (`"{ failures: 2, cooldown: 1s }"`).
    pub fn with(mut self, key: &str, value: &str) -> Store {
        self.set(key, value);
        self
    }

    /// [`Store::with`] on a borrowed store.
    pub fn set(&mut self, key: &str, value: &str) {
        self.more.insert(key.into(), yaml(value));
    }
}

/// One YAML value, parsed: a section or setting given whole.
pub fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("test YAML {text:?}: {e}"))
}

/// A mapping of settings: (key, value written as YAML).
pub fn settings(pairs: &[(&str, &str)]) -> Mapping {
    pairs
        .iter()
        .map(|(key, value)| (Value::from(*key), yaml(value)))
        .collect()
}

/// A path as a YAML string, whatever characters it holds.
pub fn path_value(path: &Path) -> Value {
    Value::String(path.display().to_string())
}

impl Config {
    /// The test edge: an HTTP listener, an HTTPS listener serving `certs` (none: no HTTPS
    /// listener), the admin listener, and the core at `core` with short timeouts and a
    /// check every second. No grace period: tests stop edges often and wait for nobody.
    pub fn edge(
        http: SocketAddr,
        https: SocketAddr,
        admin: SocketAddr,
        certs: &[&crate::harness::TestCert],
        core: &[SocketAddr],
    ) -> Config {
        let mut listeners = vec![Listener {
            name: "http".to_string(),
            address: http.to_string(),
            h2c: false,
            tls: None,
            shield: false,
        }];
        if !certs.is_empty() {
            listeners.push(Listener {
                name: "https".to_string(),
                address: https.to_string(),
                h2c: false,
                shield: false,
                tls: Some(Tls {
                    certificates: certs
                        .iter()
                        .map(|c| Certificate {
                            names: c.names.clone(),
                            cert: c.cert.clone(),
                            key: c.key.clone(),
                        })
                        .collect(),
                }),
            });
        }
        Config {
            listeners,
            admin: Admin {
                address: admin.to_string(),
                token_file: None,
            },
            core: Core {
                default_group: None,
                mesh: None,
                groups: BTreeMap::from([("web".to_string(), Group::of(core))]),
            },
            server: Server {
                grace_period: "0s".to_string(),
                graceful_shutdown_timeout: "1s".to_string(),
                upgrade_socket: None,
            },
            cache: None,
            sites: Vec::new(),
            stores: BTreeMap::new(),
            sections: Mapping::new(),
        }
    }

    /// Adds top-level sections written as YAML, each whole (`"limits:\n  max_connections: 2\n"`).
    /// A `cache:` replaces the cache section; `sites:` and `stores:` add to what is there.
    pub fn with_sections(mut self, text: &str) -> Config {
        self.add_sections(text);
        self
    }

    /// [`Config::with_sections`] on a borrowed config.
    pub fn add_sections(&mut self, text: &str) {
        if text.trim().is_empty() {
            return;
        }
        let Value::Mapping(sections) = yaml(text) else {
            panic!("test YAML {text:?} is not a mapping of sections");
        };
        for (key, value) in sections {
            let name = key.as_str().expect("section names are strings").to_string();
            let bad = |what: &str, e: serde_yaml::Error| -> ! {
                panic!("test YAML section {name} ({what}): {e}")
            };
            match name.as_str() {
                "cache" => {
                    let cache = serde_yaml::from_value(value).unwrap_or_else(|e| bad("cache", e));
                    self.cache = Some(cache);
                }
                "sites" => self.sites.extend(
                    serde_yaml::from_value::<Vec<Site>>(value)
                        .unwrap_or_else(|e| bad("a list of sites", e)),
                ),
                "stores" => self.stores.extend(
                    serde_yaml::from_value::<BTreeMap<String, Store>>(value)
                        .unwrap_or_else(|e| bad("stores by name", e)),
                ),
                "listeners" | "admin" | "core" | "server" => {
                    panic!("{name} has typed fields: set them on the Config")
                }
                _ => {
                    self.sections.insert(key, value);
                }
            }
        }
    }

    pub fn listener(&mut self, name: &str) -> &mut Listener {
        self.listeners
            .iter_mut()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("no listener {name}"))
    }

    pub fn group(&mut self, name: &str) -> &mut Group {
        self.core
            .groups
            .get_mut(name)
            .unwrap_or_else(|| panic!("no core group {name}"))
    }

    pub fn cache(&mut self) -> &mut Cache {
        self.cache.as_mut().expect("the config has a cache section")
    }

    pub fn store(&mut self, name: &str) -> &mut Store {
        self.stores
            .get_mut(name)
            .unwrap_or_else(|| panic!("no store {name}"))
    }

    /// The route for `path`, in whichever site it is.
    pub fn route(&mut self, path: &str) -> &mut Route {
        self.sites
            .iter_mut()
            .flat_map(|s| s.routes.iter_mut())
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("no route {path}"))
    }

    /// Adds routes in a site without hosts (the one every host falls back to).
    pub fn add_routes(&mut self, routes: impl IntoIterator<Item = Route>) {
        if let Some(site) = self.sites.iter_mut().find(|s| s.hosts.is_empty()) {
            site.routes.extend(routes);
        } else {
            self.sites.push(Site {
                hosts: Vec::new(),
                shield: None,
                routes: routes.into_iter().collect(),
            });
        }
    }

    /// Sets one top-level section (other than the typed ones) to `value`.
    pub fn set_section(&mut self, name: &str, value: impl Into<Value>) {
        self.sections.insert(name.into(), value.into());
    }

    pub fn render(&self) -> String {
        serde_yaml::to_string(self).expect("render config")
    }
}
