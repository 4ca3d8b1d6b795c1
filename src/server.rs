//! Wires the pingora server from a validated config: one proxy service per listener, the
//! admin service, the core's health checks and the SIGHUP reloader.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use pingora::apps::http_app::HttpServer;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig, TcpSocketOptions};
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::background::GenBackgroundService;
use pingora::services::listening::Service;

use crate::access_log::{AccessLogError, AccessLogger};
use crate::admin::AdminApp;
use crate::cache::{CacheError, EdgeCache};
use crate::config::model::Listener;
use crate::config::Config;
use crate::connections::{CountedApp, WatchBeforeTls};
use crate::fleet::catch_up::CatchUpService;
use crate::fleet::{Fleet, FleetError, FleetService, Purger};
use crate::head_deadline::HeadDeadlines;
use crate::migrate::queue::{QueueError, WriteThroughQueue, WriteThroughService};
use crate::origin::handoff::MediaOrigin;
use crate::origin::server::MediaServer;
use crate::proxy::fast_hits::FastHits;
use crate::proxy::media_urls::MediaUrls;
use crate::proxy::websocket::{GoingAway, GoingAwayService};
use crate::proxy::{EdgeProxy, ProxySettings, ProxyShared};
use crate::reload::{Reloader, RestartOnly, RunningListener, SighupService};
use crate::sockets::{self, AddressClaim, AddressReport, ClaimError, ClaimedAddress};
use crate::store::places::Places;
use crate::store::StoreError;
use crate::store::Tombstones;
use crate::tls::{HandshakeCounter, LiveCertificates, SniResolver};
use crate::upgrade::{self, ShutdownSignals, UpgradeError, UpgradeService, Upgrader};
use crate::upstream::mesh::{Mesh, MeshError};
use crate::upstream::CoreUpstreams;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    AccessLog(#[from] AccessLogError),
    #[error("cannot set up core upstream group: {0}")]
    Upstream(std::io::Error),
    #[error("cannot set up the mesh: {0}")]
    Mesh(#[from] MeshError),
    #[error("cannot set up fleet purges: {0}")]
    Fleet(#[from] FleetError),
    #[error(transparent)]
    Bind(#[from] ClaimError),
    #[error("no address was claimed for listener {0} (a defect)")]
    Unclaimed(String),
    #[error("TLS setup of listener {name} failed: {detail}")]
    Tls { name: String, detail: String },
    #[error("cannot open the cache: {0}")]
    Cache(#[from] CacheError),
    #[error("cannot set up media store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot start the media origin on loopback: {0}")]
    MediaOrigin(std::io::Error),
    #[error(transparent)]
    WriteThrough(#[from] QueueError),
    #[error("cannot open the tombstones of deleted media at {}: {source}", path.display())]
    Tombstones {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot take over from the running process: {0}")]
    Upgrade(#[from] UpgradeError),
}

/// This process takes its listening sockets over from a running edgecache.
#[derive(Debug, Clone, Default)]
pub struct Handover {
    /// The running process to send SIGQUIT once this one is ready; `None` when the operator
    /// sends it.
    pub from: Option<u32>,
    /// The addresses the running process bound, by listener name: a port-0 listener keeps
    /// its port across the handover.
    pub inherited: HashMap<String, SocketAddr>,
}

/// Builds a ready-to-run pingora server, and the signal handling to run it with. With a
/// `handover`, the listening sockets come from the running process, asked for only once
/// everything else here is set up.
/// Each listener's bound address is logged once it listens, and written to
/// `addresses_file` when given (the way to learn the ports of port-0 listeners).
pub fn build(
    mut config: Config,
    handover: Option<Handover>,
    addresses_file: Option<PathBuf>,
) -> Result<(Server, RunArgs), StartError> {
    let claim = claim_addresses(&config, handover.as_ref())?;
    let mut server = new_server(&config, handover.is_some());
    let upgrader = Upgrader::new(&config, claim.pairs(), addresses_file.clone());
    let cache = config
        .cache
        .as_ref()
        .map(|settings| EdgeCache::open(&settings.storage).map(Arc::new))
        .transpose()?;
    if let Some(cache) = &cache {
        cache
            .read_unread_disk_entries_in_background()
            .map_err(|e| CacheError::Io {
                what: "cannot start the thread that reads disk entries".to_string(),
                source: e,
            })?;
    }
    add_background(
        &mut server,
        "graceful upgrade",
        UpgradeService {
            upgrader: upgrader.clone(),
            predecessor: handover.as_ref().and_then(|h| h.from),
            cache: cache.clone(),
        },
    );
    let access_log = AccessLogger::start(&config.logging.access_log)?;
    let core = core_upstreams(&mut server, &config)?;
    let proxy_settings = Arc::new(ArcSwap::from_pointee(ProxySettings::from_config(&config)));
    let admin_token = Arc::new(ArcSwapOption::from(
        config.admin.token.clone().map(Arc::new),
    ));
    let media = media_services(&mut server, &config, &proxy_settings, &cache, &admin_token)?;
    let going_away = GoingAway::new();
    add_background(
        &mut server,
        "websocket going-away",
        GoingAwayService(going_away.clone()),
    );
    let purger = media.purger.clone();
    let shared = Arc::new(ProxyShared {
        core: core.clone(),
        settings: proxy_settings.clone(),
        access_log: access_log.clone(),
        cache: cache.clone(),
        media_origin: media.origin,
        request_ids: Default::default(),
        going_away,
        purger: media.purger,
        coding_slots: Default::default(),
        direct_idle_limit: config.core.keepalive_pool_size,
    });
    let restart_only = RestartOnly::of(&config);
    let listeners = std::mem::take(&mut config.listeners);
    let reloadable = add_listeners(&mut server, &config, listeners, &claim, &shared)?;
    let reloader = add_reloader(
        &mut server,
        Reloader {
            config_path: config.source.clone(),
            listeners: reloadable,
            proxy_settings,
            admin_token: admin_token.clone(),
            restart_only,
            access_log,
            running: Default::default(),
        },
    );
    let admin = AdminApp {
        listeners: claim.listener_addresses(),
        core,
        reloader,
        token: admin_token,
        cache,
        purger,
        upgrader: upgrader.clone(),
    };
    add_admin(&mut server, &claim, admin)?;
    add_background(
        &mut server,
        "address report",
        AddressReport::new(claim, addresses_file),
    );
    if let Some(handover) = handover {
        take_over_sockets(&config, handover)?;
    }
    server.bootstrap();
    let run_args = RunArgs {
        shutdown_signal: Box::new(ShutdownSignals { upgrader }),
    };
    Ok((server, run_args))
}

/// Takes the addresses of the listeners and the admin API before anything listens (see
/// [`sockets::claim`]).
fn claim_addresses(
    config: &Config,
    handover: Option<&Handover>,
) -> Result<AddressClaim, StartError> {
    let wanted: Vec<(String, SocketAddr)> = config
        .listeners
        .iter()
        .map(|l| (sockets::listener_key(&l.name), l.address))
        .chain(std::iter::once((
            sockets::ADMIN.to_string(),
            config.admin.address,
        )))
        .collect();
    Ok(sockets::claim(&wanted, handover.map(|h| &h.inherited))?)
}

/// Runs `reloader` on SIGHUP; the admin API's reload shares it.
fn add_reloader(server: &mut Server, reloader: Reloader) -> Arc<Reloader> {
    let reloader = Arc::new(reloader);
    add_background(
        server,
        "reload on SIGHUP",
        SighupService {
            reloader: reloader.clone(),
        },
    );
    reloader
}

/// The pingora server with our shutdown periods, thread count and upgrade socket.
fn new_server(config: &Config, handover: bool) -> Server {
    let conf = ServerConf {
        threads: config.server.threads,
        grace_period_seconds: Some(whole_seconds_up(config.server.grace_period)),
        graceful_shutdown_timeout_seconds: Some(whole_seconds_up(
            config.server.graceful_shutdown_timeout,
        )),
        upstream_keepalive_pool_size: config.core.keepalive_pool_size,
        upgrade_sock: config.server.upgrade_socket.to_string_lossy().into_owned(),
        // One thread has no one to steal from: its runtime is then a single-threaded one,
        // which schedules a connection's tasks back to back (HTTP/2 answers batch into fewer
        // writes) and skips the multi-threaded scheduler's bookkeeping.
        work_stealing: config.server.threads > 1,
        ..ServerConf::default()
    };
    let options = pingora::server::configuration::Opt {
        upgrade: handover,
        ..Default::default()
    };
    Server::new_with_opt_and_conf(Some(options), conf)
}

fn add_background<S>(server: &mut Server, name: &str, service: S)
where
    S: pingora::services::background::BackgroundService + Send + Sync + 'static,
{
    server.add_service(GenBackgroundService::new(
        name.to_string(),
        Arc::new(service),
    ));
}

/// The core's upstream groups over the mesh, each with its health checks.
fn core_upstreams(server: &mut Server, config: &Config) -> Result<Arc<CoreUpstreams>, StartError> {
    let (mesh, mesh_service) = Mesh::from_config(&config.core, config.server.grace_period)?;
    if let Some(service) = mesh_service {
        add_background(server, "embedded mesh node", service);
    }
    let core = Arc::new(CoreUpstreams::new(&config.core, mesh).map_err(StartError::Upstream)?);
    for group in core.groups.values() {
        server.add_service(GenBackgroundService::new(
            format!("health checks of core group {}", group.name),
            group.balancer(),
        ));
    }
    Ok(core)
}

/// What the media side gives the proxy: the purger (local cache, fleet, tombstones) and,
/// when stores exist, the loopback media origin.
struct Media {
    purger: Arc<Purger>,
    origin: Option<MediaOrigin>,
}

/// Purges across the fleet, the tombstones of deleted media, the places, and the media
/// origin with its write-through queue.
fn media_services(
    server: &mut Server,
    config: &Config,
    proxy_settings: &Arc<ArcSwap<ProxySettings>>,
    cache: &Option<Arc<EdgeCache>>,
    admin_token: &Arc<ArcSwapOption<String>>,
) -> Result<Media, StartError> {
    let fleet = match &config.fleet {
        Some(settings) => {
            let fleet = Fleet::open(settings, admin_token.clone())?;
            add_background(server, "fleet purge delivery", FleetService(fleet.clone()));
            Some(fleet)
        }
        None => None,
    };
    let tombstones = Arc::new(Tombstones::open(&config.tombstones).map_err(|source| {
        StartError::Tombstones {
            path: config.tombstones.path.clone().unwrap_or_default(),
            source,
        }
    })?);
    if config.tombstones.path.is_none() && !config.stores.is_empty() {
        tracing::warn!("tombstones of deleted media are kept in memory only (no fleet and no tombstones.path): a restart forgets them");
    }
    let places = if config.stores.is_empty() {
        None
    } else {
        Some(Arc::new(Places::build(&config.stores)?))
    };
    let media_urls = Arc::new(MediaUrls {
        settings: proxy_settings.clone(),
        places: places.clone(),
    });
    let purger = Arc::new(Purger {
        cache: cache.clone(),
        fleet: fleet.clone(),
        name: config
            .fleet
            .as_ref()
            .map_or_else(|| "local".to_string(), |f| f.name.clone()),
        urls: Some(media_urls.clone()),
        tombstones: Some(tombstones.clone()),
        presence: Some(media_urls),
    });
    if let Some(fleet) = fleet {
        add_background(
            server,
            "fleet purge catch-up",
            CatchUpService {
                fleet,
                purger: purger.clone(),
            },
        );
    }
    let origin = match places {
        Some(places) => Some(media_origin(server, config, places, tombstones, cache)?),
        None => None,
    };
    Ok(Media { purger, origin })
}

/// Media routes are served by an origin of our own on loopback; what it finds elsewhere is
/// copied into the write-through stores by the queue.
fn media_origin(
    server: &mut Server,
    config: &Config,
    places: Arc<Places>,
    tombstones: Arc<Tombstones>,
    cache: &Option<Arc<EdgeCache>>,
) -> Result<MediaOrigin, StartError> {
    let write_through = match &config.write_through {
        Some(settings) => {
            let queue = WriteThroughQueue::open(settings, places.clone(), tombstones.clone())?;
            add_background(
                server,
                "write-through uploads",
                WriteThroughService {
                    queue: queue.clone(),
                },
            );
            Some(queue)
        }
        None => None,
    };
    let media =
        MediaServer::bind(places, write_through, tombstones).map_err(StartError::MediaOrigin)?;
    // A body the cache keeps on disk is written there once: its write-through copy is
    // that file, linked into the queue.
    let copies_from_cache = media.copies_can_come_from(|dir| {
        cache
            .as_ref()
            .is_some_and(|cache| cache.can_link_bodies_into(dir))
    });
    let origin = media.origin().with_copies_from_cache(copies_from_cache);
    let mut service = GenBackgroundService::new("media origin".to_string(), Arc::new(media));
    // Every media miss passes through it; one thread (the default) would serialize them.
    service.threads = Some(config.server.threads);
    server.add_service(service);
    Ok(origin)
}

/// Every listener's proxy service; returns what a reload may change of each, by name.
fn add_listeners(
    server: &mut Server,
    config: &Config,
    listeners: Vec<Listener>,
    claim: &AddressClaim,
    shared: &Arc<ProxyShared>,
) -> Result<HashMap<String, RunningListener>, StartError> {
    let mut reloadable = HashMap::new();
    for listener in listeners {
        let bound = claim
            .get(&sockets::listener_key(&listener.name))
            .cloned()
            .ok_or_else(|| StartError::Unclaimed(listener.name.clone()))?;
        let (name, running) = add_listener(server, config, listener, bound, shared)?;
        reloadable.insert(name, running);
    }
    Ok(reloadable)
}

/// One listener's proxy service, with TLS by SNI when it has certificates; returns what a
/// reload may change of it, by name.
fn add_listener(
    server: &mut Server,
    config: &Config,
    listener: Listener,
    bound: ClaimedAddress,
    shared: &Arc<ProxyShared>,
) -> Result<(String, RunningListener), StartError> {
    let tls = listener.tls.is_some();
    let deadlines = HeadDeadlines::new(&listener.name);
    let fast_hits = Arc::new(FastHits::new(&listener.name, shared.clone()));
    let mut proxy = HttpProxy::new(
        EdgeProxy::new(
            &listener.name,
            tls,
            shared.clone(),
            deadlines.clone(),
            fast_hits.clone(),
        )
        .serving_as_shield(listener.shield),
        server.configuration.clone(),
    );
    proxy.handle_init_modules();
    let mut options = HttpServerOptions::default();
    options.h2c = listener.h2c;
    // HTTP/2 connections ignore the per-request keep-alive setting; this bounds them.
    options.h2_idle_timeout = Some(config.limits.keepalive_timeout);
    proxy.server_options = Some(options);
    let mut service = Service::new(
        format!("listener {}", listener.name),
        CountedApp::new(
            &listener.name,
            proxy,
            shared.settings.clone(),
            deadlines.clone(),
        )
        .answering_plain_hits(fast_hits),
    );
    // Also the key under which a handover passes this socket on.
    let address = bound.address.to_string();
    // `[::]:443` next to `0.0.0.0:443` needs the IPv6 socket to stay IPv6-only.
    let mut socket_options = TcpSocketOptions::default();
    if bound.address.is_ipv6() {
        socket_options.ipv6_only = Some(true);
    }
    if bound.chosen_here {
        // To bind beside the socket that holds the port until this one listens.
        socket_options.so_reuseport = Some(true);
    }
    let tcp = ListenerConfig::tcp(&address)
        .tcp_socket_options(socket_options)
        .l4_buffer(connection_buffers());
    let live = match listener.tls {
        Some(tls_config) => {
            let live = LiveCertificates::new(&listener.name, tls_config.certificates);
            let mut settings =
                TlsSettings::with_callbacks(Box::new(HandshakeCounter::new(&listener.name)))
                    .map_err(|e| StartError::Tls {
                        name: listener.name.clone(),
                        detail: e.to_string(),
                    })?;
            settings.set_cert_resolver(Arc::new(SniResolver::new(&listener.name, live.clone())));
            settings.enable_h2();
            service.add_listener(tcp.tls(settings));
            service
                .endpoints()
                .set_pre_tls_callback(Arc::new(WatchBeforeTls {
                    deadlines,
                    settings: shared.settings.clone(),
                }));
            Some(live)
        }
        None => {
            service.add_listener(tcp);
            None
        }
    };
    server.add_service(service);
    let running = RunningListener {
        address: listener.address,
        h2c: listener.h2c,
        certificates: live,
    };
    Ok((listener.name, running))
}

/// The admin listener: one thread, on its own address.
fn add_admin(server: &mut Server, claim: &AddressClaim, app: AdminApp) -> Result<(), StartError> {
    let bound = claim
        .get(sockets::ADMIN)
        .ok_or_else(|| StartError::Unclaimed(sockets::ADMIN.to_string()))?;
    let mut admin = Service::new("admin".to_string(), HttpServer::new_app(app));
    let mut socket_options = TcpSocketOptions::default();
    if bound.chosen_here {
        // To bind beside the socket that holds the port until this one listens.
        socket_options.so_reuseport = Some(true);
    }
    admin.add_tcp_with_settings(&bound.address.to_string(), socket_options);
    admin.threads = Some(1);
    server.add_service(admin);
    Ok(())
}

/// Everything that can fail has been set up; only now is the running process asked to let
/// go of its sockets.
fn take_over_sockets(config: &Config, handover: Handover) -> Result<(), StartError> {
    upgrade::prepare_socket_directory(&config.server.upgrade_socket)?;
    if let Some(pid) = handover.from {
        upgrade::ask_for_sockets(pid)?;
    }
    tracing::info!(socket = %config.server.upgrade_socket.display(), "waiting for the listening sockets of the running process");
    Ok(())
}

/// Per-connection socket buffers: none. pingora's defaults put a 64 KiB read buffer and a
/// 1,460-byte write buffer in front of every client socket for the connection's whole life,
/// idle keep-alive included (5,000 idle connections cost over 400 MiB with the first). The
/// HTTP/1 parser, h2 and rustls read into buffers of their own, and h2 and rustls gather
/// their writes; the HTTP/1 loop puts a write buffer in front of the socket only while
/// pingora serves a request on it (`connections::request_buffer`).
fn connection_buffers() -> L4BufferSettings {
    L4BufferSettings::unbuffered()
}

/// Pingora counts these periods in whole seconds; `500ms` must not become no time at all.
fn whole_seconds_up(duration: std::time::Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle keep-alive connection must not hold socket buffers: they would cost their
    /// size for every connection for its whole life.
    #[test]
    fn client_sockets_carry_no_buffers_of_their_own() {
        let buffers = connection_buffers();
        assert_eq!(buffers.read_capacity(), 0);
        assert_eq!(buffers.write_capacity(), 0);
    }
}
