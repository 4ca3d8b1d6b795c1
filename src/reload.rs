//! Reloading without a restart: SIGHUP, `edgecache reload` and the admin `/reload` endpoint
//! all land here.
//!
//! A reload reads the config file again and validates all of it, certificates included. Only
//! if everything is valid are the new certificate sets published to the listeners; a bad
//! file leaves the running set untouched and is reported in the log and to the caller.
//! Settings that need new sockets or runtimes (listener addresses, threads) are reported as
//! needing a restart rather than half-applied.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::access_log::AccessLogger;
use crate::config;
use crate::metrics;
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

/// Holds what a reload may swap.
pub struct Reloader {
    config_path: PathBuf,
    /// Listener name → (address, live certificates); address to spot moves.
    listeners: HashMap<String, (std::net::SocketAddr, Option<LiveCertificates>)>,
    access_log: AccessLogger,
    /// One reload at a time: SIGHUP and the admin endpoint may race.
    running: Mutex<()>,
}

impl Reloader {
    pub fn new(
        config_path: PathBuf,
        listeners: HashMap<String, (std::net::SocketAddr, Option<LiveCertificates>)>,
        access_log: AccessLogger,
    ) -> Self {
        Reloader {
            config_path,
            listeners,
            access_log,
            running: Mutex::new(()),
        }
    }

    /// Reads and validates the config again and applies what can change live.
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let _one_at_a_time = self.running.lock().unwrap_or_else(|p| p.into_inner());
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
        let mut report = ReloadReport::default();
        for listener in new.listeners {
            match self.listeners.get(&listener.name) {
                None => report
                    .needs_restart
                    .push(format!("new listener {}", listener.name)),
                Some((address, live)) => {
                    if *address != listener.address {
                        report.needs_restart.push(format!(
                            "listener {} moves from {address} to {}",
                            listener.name, listener.address
                        ));
                    }
                    match (live, listener.tls) {
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
            }
        }
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

#[derive(Debug, thiserror::Error)]
pub enum ReloadRequestError {
    #[error("cannot reach the admin listener at {address}: {source}")]
    Connect {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("the admin listener answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("unreadable answer from the admin listener: {0}")]
    BadAnswer(String),
}

/// Asks the PoP whose admin listener is at `address` to reload (what `edgecache reload`
/// does). Returns the admin listener's report.
pub fn request_reload(
    address: std::net::SocketAddr,
    token: Option<&str>,
) -> Result<String, ReloadRequestError> {
    use std::io::{Read, Write};
    use std::time::Duration;

    let connect_err = |source| ReloadRequestError::Connect { address, source };
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .map_err(connect_err)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(connect_err)?;
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST /reload HTTP/1.1\r\nHost: {address}\r\n{authorization}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(connect_err)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(connect_err)?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| ReloadRequestError::BadAnswer(answer.to_string()))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| ReloadRequestError::BadAnswer(head.to_string()))?;
    if status == 200 {
        Ok(body.to_string())
    } else {
        Err(ReloadRequestError::Refused {
            status,
            body: body.trim().to_string(),
        })
    }
}
