//! TLS termination: certificates chosen by SNI, swapped at runtime without a restart.
//!
//! Pingora's rustls listener accepts a certificate resolver. Ours holds an `ArcSwap` of a
//! [`CertificateSet`], so a reload builds a whole new set off to the side (every file read
//! and every key checked against its certificate) and publishes it in one atomic store:
//! handshakes in flight finish with the old set, the next handshake sees the new one, and a
//! bad file never replaces a good one. Certificates are never handed to pingora as paths,
//! because its `TlsSettings::build()` panics on a bad file.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, ResolvesServerCert};

use crate::certs::CertificateSet;
use crate::metrics;

/// The live certificates of one listener; cheap to clone, shared by its resolver and the
/// reloader.
#[derive(Clone)]
pub struct LiveCertificates {
    listener: Arc<str>,
    current: Arc<ArcSwap<CertificateSet>>,
}

impl LiveCertificates {
    pub fn new(listener: &str, set: CertificateSet) -> Self {
        publish_expiries(listener, &[], &set);
        LiveCertificates {
            listener: listener.into(),
            current: Arc::new(ArcSwap::from_pointee(set)),
        }
    }

    /// Publishes a new set; handshakes from now on use it.
    pub fn replace(&self, set: CertificateSet) {
        publish_expiries(&self.listener, self.current.load().expiries(), &set);
        self.current.store(Arc::new(set));
    }

    pub fn select(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        self.current.load().select(server_name)
    }
}

/// Sets the expiry gauge for each certificate of `new`, dropping names only `old` had.
fn publish_expiries(listener: &str, old: &[(String, i64)], new: &CertificateSet) {
    let gauge = &metrics::get().tls_certificate_expiry;
    for (name, _) in old {
        if !new.expiries().iter().any(|(n, _)| n == name) {
            let _ = gauge.remove_label_values(&[listener, name.as_str()]);
        }
    }
    for (name, expiry) in new.expiries() {
        gauge
            .with_label_values(&[listener, name.as_str()])
            .set(*expiry);
    }
}

/// The rustls resolver of one listener.
#[derive(Debug)]
pub struct SniResolver {
    listener: String,
    certificates: LiveCertificates,
}

impl fmt::Debug for LiveCertificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.current.load().fmt(f)
    }
}

impl SniResolver {
    pub fn new(listener: &str, certificates: LiveCertificates) -> Self {
        SniResolver {
            listener: listener.to_string(),
            certificates,
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        metrics::get()
            .tls_client_hellos
            .with_label_values(&[self.listener.as_str()])
            .inc();
        Some(self.certificates.select(hello.server_name()))
    }
}

/// Counts completed handshakes per listener and protocol version.
pub struct HandshakeCounter {
    listener: String,
}

impl HandshakeCounter {
    pub fn new(listener: &str) -> Self {
        HandshakeCounter {
            listener: listener.to_string(),
        }
    }
}

#[async_trait]
impl TlsAccept for HandshakeCounter {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        metrics::get()
            .tls_handshakes
            .with_label_values(&[self.listener.as_str(), tls.version().unwrap_or("unknown")])
            .inc();
        None
    }
}
