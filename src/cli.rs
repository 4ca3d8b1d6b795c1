//! The command line: `serve`, `check-config`, `reload`, `gen-cert`, `version`.

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
    },
    /// Validate a config file (certificates included) without serving; exit 64 if invalid.
    CheckConfig {
        #[arg(default_value = DEFAULT_CONFIG)]
        file: PathBuf,
    },
    /// Ask a running PoP to reload its config and certificates, through its admin listener.
    Reload {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
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
