//! Reloading without a restart: SIGHUP, `edgecache reload` and the admin `/reload` endpoint
//! all land here.
//!
//! A reload reads the config file again and validates all of it, certificates included. Only
//! if everything is valid is anything published: each listener's certificate set, the
//! forwarding and limit settings, and the admin token, each in one atomic store. A bad file
//! leaves everything as it was and is reported in the log and to the caller. Settings that
//! need new sockets, runtimes or health-check services (listeners added, removed or moved,
//! core groups, threads, logging, the admin address) are reported as needing a restart rather
//! than half-applied.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::access_log::AccessLogger;
use crate::config::model::{
    CacheStorage, Core, FleetSettings, Logging, ServerSettings, StoreSettings, WriteThroughSettings,
};
use crate::config::{self, Config};
use crate::metrics;
use crate::proxy::ProxySettings;
use crate::tls::LiveCertificates;

/// What a reload changed.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// TLS listeners whose certificate sets were replaced.
    pub certificates_replaced: Vec<String>,
    /// Changes that take effect only after a restart.
    pub needs_restart: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] config::ConfigError),
}

/// The settings only a restart applies, as the running process has them.
#[derive(Debug, Clone, PartialEq)]
pub struct RestartOnly {
    server: ServerSettings,
    admin_address: SocketAddr,
    core: Core,
    logging: Logging,
    /// Idle HTTP/2 connections are bounded by a server option set at start.
    h2_idle_timeout: std::time::Duration,
    /// The tiers and the lock are built once.
    cache_storage: Option<CacheStorage>,
    /// Store clients and the write-through queue are built once.
    stores: BTreeMap<String, StoreSettings>,
    write_through: Option<WriteThroughSettings>,
    /// The fleet's outboxes and delivery workers are built once.
    fleet: Option<FleetSettings>,
}

impl RestartOnly {
    pub fn of(config: &Config) -> Self {
        RestartOnly {
            server: config.server.clone(),
            admin_address: config.admin.address,
            core: config.core.clone(),
            logging: config.logging.clone(),
            h2_idle_timeout: config.limits.keepalive_timeout,
            cache_storage: config.cache.as_ref().map(|c| c.storage.clone()),
            stores: config.stores.clone(),
            write_through: config.write_through.clone(),
            fleet: config.fleet.clone(),
        }
    }

    /// Names the sections of `new` that differ from the running ones.
    fn differences(&self, new: &RestartOnly) -> Vec<String> {
        let mut out = Vec::new();
        if self.server != new.server {
            out.push("server settings changed".to_string());
        }
        if self.admin_address != new.admin_address {
            out.push(format!("admin address changed to {}", new.admin_address));
        }
        if self.core != new.core {
            out.push("core upstream groups changed".to_string());
        }
        if self.cache_storage != new.cache_storage {
            out.push("cache tiers or lock settings changed".to_string());
        }
        if self.stores != new.stores {
            out.push("stores changed".to_string());
        }
        if self.write_through != new.write_through {
            out.push("write_through changed".to_string());
        }
        if self.fleet != new.fleet {
            out.push("fleet changed".to_string());
        }
        if self.logging != new.logging {
            out.push("logging changed".to_string());
        }
        if self.h2_idle_timeout != new.h2_idle_timeout {
            out.push(
                "limits.keepalive_timeout changed: HTTP/1.1 uses it now, HTTP/2 after a restart"
                    .to_string(),
            );
        }
        out
    }
}

/// A listener as it runs: what a reload compares against, and its live certificates.
pub struct RunningListener {
    pub address: SocketAddr,
    pub h2c: bool,
    pub certificates: Option<LiveCertificates>,
}

/// Holds what a reload may swap.
pub struct Reloader {
    pub config_path: PathBuf,
    /// The running listeners by name.
    pub listeners: HashMap<String, RunningListener>,
    pub proxy_settings: Arc<ArcSwap<ProxySettings>>,
    pub admin_token: Arc<ArcSwapOption<String>>,
    pub restart_only: RestartOnly,
    pub access_log: AccessLogger,
    /// One reload at a time: SIGHUP and the admin endpoint may race.
    pub running: parking_lot::Mutex<()>,
}

impl Reloader {
    /// Reads and validates the config again and applies what can change live.
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let _one_at_a_time = self.running.lock();
        let result = self.apply();
        let m = metrics::get();
        match &result {
            Ok(report) => {
                m.reloads.with_label_values(&["ok"]).inc();
                tracing::info!(
                    replaced = ?report.certificates_replaced,
                    needs_restart = ?report.needs_restart,
                    "reloaded configuration"
                );
            }
            Err(e) => {
                m.reloads.with_label_values(&["error"]).inc();
                tracing::error!(error = %e, "reload refused; the running configuration stays in service");
            }
        }
        result
    }

    fn apply(&self) -> Result<ReloadReport, ReloadError> {
        let new = config::load(&self.config_path)?;
        let mut report = ReloadReport {
            needs_restart: self.restart_only.differences(&RestartOnly::of(&new)),
            ..ReloadReport::default()
        };
        self.proxy_settings
            .store(Arc::new(ProxySettings::from_config(&new)));
        self.admin_token
            .store(new.admin.token.clone().map(Arc::new));
        for name in self.listeners.keys() {
            if !new.listeners.iter().any(|l| &l.name == name) {
                report
                    .needs_restart
                    .push(format!("listener {name} removed"));
            }
        }
        for listener in new.listeners {
            let Some(running) = self.listeners.get(&listener.name) else {
                report
                    .needs_restart
                    .push(format!("new listener {}", listener.name));
                continue;
            };
            if running.address != listener.address {
                report.needs_restart.push(format!(
                    "listener {} moves from {} to {}",
                    listener.name, running.address, listener.address
                ));
            }
            if running.h2c != listener.h2c {
                report
                    .needs_restart
                    .push(format!("listener {} changes h2c", listener.name));
            }
            match (&running.certificates, listener.tls) {
                (Some(live), Some(tls)) => {
                    live.replace(tls.certificates);
                    report.certificates_replaced.push(listener.name.clone());
                }
                (None, None) => {}
                _ => report.needs_restart.push(format!(
                    "listener {} switches between TLS and plain",
                    listener.name
                )),
            }
        }
        report.certificates_replaced.sort();
        self.access_log.reopen();
        Ok(report)
    }
}

/// Runs a reload on every SIGHUP until shutdown.
pub struct SighupService {
    pub reloader: std::sync::Arc<Reloader>,
}

#[async_trait]
impl BackgroundService for SighupService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; use the admin /reload endpoint");
                return;
            }
        };
        loop {
            tokio::select! {
                received = hangups.recv() => {
                    if received.is_none() {
                        return;
                    }
                    tracing::info!("SIGHUP received, reloading");
                    let reloader = self.reloader.clone();
                    // File reads and key checks are blocking work.
                    let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
