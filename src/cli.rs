//! The command line: `serve`, `check-config`, `check-certificate`, `reload`, `upgrade`, `purge`, `migrate`, `gen-cert`, `version`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The default config, relative to the repository root.
pub const DEFAULT_CONFIG: &str = "config/edgecache.yaml";

#[derive(Debug, Parser)]
#[command(
    name = "edgecache",
    version,
    about = "An edge caching reverse proxy for self-hosted sites"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the PoP with the given config.
    Serve {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Take the listening sockets over from a running edgecache (graceful upgrade):
        /// they arrive on `server.upgrade_socket` once the old process gets SIGQUIT.
        #[arg(long)]
        upgrade: bool,
        /// With --upgrade: send that SIGQUIT to this process once ready to take over.
        #[arg(long, requires = "upgrade", value_name = "PID")]
        upgrade_from: Option<u32>,
        /// Once every listener listens, write each one's address to this file, one
        /// `name address` line each (`admin`, `listener:<name>`): the way to learn the
        /// ports the kernel chose for listeners configured with port 0.
        #[arg(long, value_name = "FILE")]
        addresses_file: Option<PathBuf>,
        /// With --upgrade: a listener's address in the running process, as `name=address`
        /// (names as in --addresses-file). A port-0 listener keeps it. The running process
        /// passes these when it starts its successor.
        #[arg(long, requires = "upgrade", value_name = "NAME=ADDRESS", value_parser = parse_inherited)]
        inherit_address: Vec<(String, std::net::SocketAddr)>,
    },
    /// Validate a config file (certificates included) without serving; exit 64 if invalid.
    CheckConfig {
        #[arg(default_value = DEFAULT_CONFIG)]
        file: PathBuf,
    },
    /// Check a certificate chain and its key before they are installed: they load, match
    /// and have not expired; exit 64 if not.
    CheckCertificate {
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
    /// Ask a running PoP to reload its config and certificates, through its admin listener.
    Reload {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Ask a running PoP to start the binary now on disk as its successor: the new process
    /// takes over the listening sockets, the old one drains its requests and exits.
    Upgrade {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Purge a URL (with --prefix, every URL under it; with --tag, every object with that
    /// cache tag) on this PoP and every PoP of its fleet, through the local admin listener;
    /// prints the per-PoP result.
    Purge {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// `https://media.example/system/...` (without a scheme both schemes are purged),
        /// or with --tag a tag: a `Cache-Groups` or `Surrogate-Key` name, or a media path's
        /// own (`media_attachments:110123456`, `accounts:1`).
        url: String,
        /// Purge every URL that starts with this one.
        #[arg(long, conflicts_with_all = ["deleted", "tag"])]
        prefix: bool,
        /// Purge every object tagged with this name.
        #[arg(long, conflicts_with = "deleted")]
        tag: bool,
        /// With --tag: on this host only (every host without it).
        #[arg(long, requires = "tag")]
        host: Option<String>,
        /// The media at this URL was deleted: every PoP also keeps a tombstone for its key,
        /// so no legacy place, queued copy or `migrate` brings it back.
        #[arg(long)]
        deleted: bool,
    },
    /// Copy every object of a legacy place (a directory, or an HTTP origin with a key
    /// list) into object stores; resumable, verified, never overwriting.
    Migrate {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The store to copy from (a `stores:` name).
        #[arg(long)]
        from: String,
        /// The stores to copy into; repeat or separate with commas.
        #[arg(long, required = true, value_delimiter = ',')]
        to: Vec<String>,
        /// A file with one key per line (needed unless the source is a directory).
        #[arg(long)]
        keys: Option<PathBuf>,
        /// Where progress is kept, so a rerun continues where this run stopped.
        #[arg(long)]
        state: PathBuf,
        /// Objects copied at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// At most this many objects a second.
        #[arg(long)]
        max_objects_per_second: Option<f64>,
        /// At most this many bytes a second read from the source (`20MiB`).
        #[arg(long)]
        max_bytes_per_second: Option<String>,
        /// Only say what would be copied.
        #[arg(long)]
        dry_run: bool,
        /// Keep a Prometheus text file of the progress here (node_exporter textfile).
        #[arg(long)]
        metrics_file: Option<PathBuf>,
    },
    /// Write a self-signed certificate and key (for development and tests).
    GenCert {
        /// Where to write the PEM certificate.
        #[arg(long)]
        cert: PathBuf,
        /// Where to write the PEM private key.
        #[arg(long)]
        key: PathBuf,
        /// Host names (or IP addresses) the certificate is for; repeat for several.
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        /// Leave existing files alone.
        #[arg(long)]
        if_missing: bool,
    },
    /// Print the version.
    Version,
}

/// `listener:http=127.0.0.1:8080` → (`listener:http`, 127.0.0.1:8080).
fn parse_inherited(text: &str) -> Result<(String, std::net::SocketAddr), String> {
    let (name, address) = text
        .split_once('=')
        .ok_or_else(|| format!("expected name=address, got {text:?}"))?;
    let address = address
        .parse()
        .map_err(|e| format!("invalid address {address:?}: {e}"))?;
    Ok((name.to_string(), address))
}
