//! Self-signed certificates for the embedded default config and for tests.
//!
//! Production certificates come from an ACME client or the operator's CA; this exists so a
//! fresh checkout can serve HTTPS with no outside service.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A generated certificate and its key, in PEM.
pub struct DevCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Generates a self-signed certificate for `names` (DNS names or IP addresses).
pub fn generate(names: &[String]) -> Result<DevCert, DevCertError> {
    let certified = rcgen::generate_simple_self_signed(names.to_vec())?;
    Ok(DevCert {
        cert_pem: certified.cert.pem(),
        key_pem: certified.key_pair.serialize_pem(),
    })
}

/// Writes a new certificate and key; with `if_missing`, leaves an existing pair alone.
/// Returns whether files were written.
pub fn write(
    cert: &Path,
    key: &Path,
    names: &[String],
    if_missing: bool,
) -> Result<bool, DevCertError> {
    if if_missing && cert.exists() && key.exists() {
        return Ok(false);
    }
    let generated = generate(names)?;
    for path in [cert, key] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|source| DevCertError::Write {
                path: dir.to_path_buf(),
                source,
            })?;
        }
    }
    write_file(cert, generated.cert_pem.as_bytes(), 0o644)?;
    write_file(key, generated.key_pem.as_bytes(), 0o600)?;
    Ok(true)
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), DevCertError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| DevCertError::Write {
        path: path.to_path_buf(),
        source,
    };
    // Write beside the target and rename, so a reader never sees half a file.
    let temp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temp)
        .map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)?;
    fs::rename(&temp, path).map_err(err)
}
