//! Certificate and key files: loading, checking that they belong together, expiry, and the
//! index of one listener's certificates by the names they serve.
//!
//! A leaf: the config loader checks every pair here at load time (so a bad file is a config
//! error naming its key, never a panic at service start), `edgecache check-certificate` checks
//! a pair before a push, and the live SNI resolver in `tls` selects from a [`CertificateSet`].

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pingora::tls::sign::CertifiedKey;
use pingora::tls::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey { path: PathBuf },
    #[error("{} is not valid PEM: {detail}", path.display())]
    BadPem { path: PathBuf, detail: String },
    #[error("key {} does not match certificate {}: {detail}", key.display(), cert.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        detail: String,
    },
    #[error("no TLS crypto provider is installed")]
    NoProvider,
    #[error("{} cannot be parsed as an X.509 certificate", path.display())]
    Unparsable { path: PathBuf },
    #[error("{} expired {days} days ago", path.display())]
    Expired { path: PathBuf, days: i64 },
}

/// Reads a PEM certificate chain and its private key and checks that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, CertificateError> {
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertificateError::BadPem {
            path: cert.to_path_buf(),
            detail: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CertificateError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => CertificateError::NoKey {
            path: key.to_path_buf(),
        },
        other => CertificateError::BadPem {
            path: key.to_path_buf(),
            detail: other.to_string(),
        },
    })?;
    pingora::tls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default().ok_or(CertificateError::NoProvider)?;
    CertifiedKey::from_der(chain, private_key, provider).map_err(|e| CertificateError::Mismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        detail: e.to_string(),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, CertificateError> {
    std::fs::read(path).map_err(|source| CertificateError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Checks a certificate chain and its key as a reload would take them, for a push to the
/// fleet: they load, match, and the leaf has not expired. Returns the whole days left.
pub fn check_pair(cert: &Path, key: &Path) -> Result<i64, CertificateError> {
    let certified = load_certified_key(cert, key)?;
    let expiry = not_after(&certified).ok_or_else(|| CertificateError::Unparsable {
        path: cert.to_path_buf(),
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    if expiry <= now {
        return Err(CertificateError::Expired {
            path: cert.to_path_buf(),
            days: (now - expiry) / 86_400,
        });
    }
    Ok((expiry - now) / 86_400)
}

/// The end of a certificate's validity, as seconds since the Unix epoch.
fn not_after(key: &CertifiedKey) -> Option<i64> {
    let leaf = key.cert.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

/// The certificates of one listener, indexed by the names they serve.
pub struct CertificateSet {
    /// Each certificate's first name with its expiry, for the expiry gauge.
    expiries: Vec<(String, i64)>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.social` is stored under `example.social` and matches one label below it.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl fmt::Debug for CertificateSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateSet")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl CertificateSet {
    /// Builds the index. `names` are already lower-cased and checked by the config loader;
    /// `default` is the certificate for clients without SNI or with an unknown name.
    pub fn new(entries: Vec<(Vec<String>, Arc<CertifiedKey>)>, default: Arc<CertifiedKey>) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut expiries = Vec::new();
        for (names, key) in entries {
            if let (Some(first), Some(expiry)) = (names.first(), not_after(&key)) {
                expiries.push((first.clone(), expiry));
            }
            for name in names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.insert(parent.to_string(), key.clone()),
                    None => exact.insert(name, key.clone()),
                };
            }
        }
        CertificateSet {
            expiries,
            exact,
            wildcard,
            default,
        }
    }

    /// Each certificate's first name with its expiry (seconds since the Unix epoch).
    pub fn expiries(&self) -> &[(String, i64)] {
        &self.expiries
    }

    /// The certificate for an SNI name: exact match, then a wildcard one label up, then the
    /// default (as nginx does, an unknown name still completes the handshake).
    pub fn select(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name else {
            return self.default.clone();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return key.clone();
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(key) = self.wildcard.get(parent) {
                return key.clone();
            }
        }
        self.default.clone()
    }
}
