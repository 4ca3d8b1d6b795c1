//! Signals: SIGUSR2 starts an upgrade, SIGQUIT hands the sockets over (only to a successor
//! that is there), SIGTERM and SIGINT stop; and systemd's readiness notification.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::{watch_predecessor_exit, Upgrader};
use crate::cache::EdgeCache;

/// Replaces pingora's signal watch (see the module's documentation).
pub struct ShutdownSignals {
    pub upgrader: Arc<Upgrader>,
}

/// A stream of `kind`, or none (logged) when it cannot be had.
fn listen(kind: SignalKind, name: &str) -> Option<Signal> {
    match signal(kind) {
        Ok(stream) => Some(stream),
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for {name}");
            None
        }
    }
}

async fn received(stream: &mut Option<Signal>) {
    match stream {
        Some(stream) => {
            stream.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[async_trait]
impl ShutdownSignalWatch for ShutdownSignals {
    async fn recv(&self) -> ShutdownSignal {
        let mut quits = listen(SignalKind::quit(), "SIGQUIT");
        let mut terms = listen(SignalKind::terminate(), "SIGTERM");
        let mut interrupts = listen(SignalKind::interrupt(), "SIGINT");
        loop {
            tokio::select! {
                _ = received(&mut quits) => {
                    if self.upgrader.successor_listening().await {
                        self.upgrader.handover_started();
                        return ShutdownSignal::GracefulUpgrade;
                    }
                    tracing::error!(socket = %self.upgrader.socket.display(), "SIGQUIT, but no new process listens on the upgrade socket: this process keeps serving (start `edgecache serve --upgrade` first, or use `edgecache upgrade`)");
                }
                _ = received(&mut terms) => {
                    self.upgrader.shutdown_started();
                    return ShutdownSignal::GracefulTerminate;
                }
                _ = received(&mut interrupts) => {
                    self.upgrader.shutdown_started();
                    return ShutdownSignal::FastShutdown;
                }
            }
        }
    }
}

/// A SIGUSR2 that arrives while the server is still starting (a large disk cache takes a
/// while to index) would end the process: its default action. Registering a handler now
/// keeps the process alive; the upgrade service listens once it runs.
pub fn hold_upgrade_signal() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build();
    match runtime {
        Ok(runtime) => {
            let _guard = runtime.enter();
            // The handler stays installed for the life of the process.
            let _ = listen(SignalKind::user_defined2(), "SIGUSR2");
        }
        Err(e) => tracing::warn!(error = %e, "cannot hold SIGUSR2 during start"),
    }
}

/// Starts an upgrade on SIGUSR2, tells systemd the service is ready once the server runs,
/// and, in a process that took over, re-reads the disk cache once the old process is gone.
pub struct UpgradeService {
    pub upgrader: Arc<Upgrader>,
    /// The process this one took its sockets over from.
    pub predecessor: Option<u32>,
    pub cache: Option<Arc<EdgeCache>>,
}

#[async_trait]
impl BackgroundService for UpgradeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        super::notify_service_manager(
            std::env::var_os("NOTIFY_SOCKET").as_deref(),
            self.predecessor.is_some(),
        );
        if let (Some(pid), Some(cache)) = (self.predecessor, self.cache.clone()) {
            tokio::spawn(async move {
                watch_predecessor_exit(pid).await;
                match tokio::task::spawn_blocking(move || cache.adopt_unindexed_disk_entries())
                    .await
                {
                    Ok(adopted) => tracing::info!(
                        adopted,
                        "the old process is gone; took in the disk cache entries it wrote last"
                    ),
                    Err(e) => tracing::error!(error = %e, "re-reading the disk cache failed"),
                }
            });
        }
        let Some(mut upgrades) = listen(SignalKind::user_defined2(), "SIGUSR2") else {
            return;
        };
        loop {
            tokio::select! {
                received = upgrades.recv() => {
                    if received.is_none() {
                        return;
                    }
                    tracing::info!("SIGUSR2 received, starting the new binary");
                    let upgrader = self.upgrader.clone();
                    match tokio::task::spawn_blocking(move || upgrader.start()).await {
                        Ok(Ok(started)) => tracing::info!("{started}"),
                        Ok(Err(e)) => tracing::error!(error = %e, "upgrade not started"),
                        Err(e) => tracing::error!(error = %e, "upgrade task failed"),
                    }
                }
                _ = shutdown.changed() => {
                    self.upgrader.shutdown_started();
                    return;
                }
            }
        }
    }
}
