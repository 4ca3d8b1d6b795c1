//! The edgecache binary: parse the command line, load the config, run.

use std::process::ExitCode;

use clap::Parser;
use edgecache::admin::client as admin_client;
use edgecache::cli::{Cli, Command};
use edgecache::config::units::ByteSize;
use edgecache::migrate::{self, bulk::MigrateOptions};
use edgecache::{certs, config, devcert, logging, server, upgrade, EXIT_CONFIG, EXIT_UNAVAILABLE};
use mimalloc::MiMalloc;

/// Proxying allocates and frees many small buffers per request; mimalloc does that with
/// less CPU than glibc's allocator (see benches/README.md).
#[global_allocator]
static ALLOCATOR: MiMalloc = MiMalloc;

fn main() -> ExitCode {
    // One TLS crypto provider for the whole process, installed before anything builds a
    // rustls config.
    pingora::tls::install_default_crypto_provider();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config: path,
            upgrade,
            upgrade_from,
        } => {
            let config = match config::load(&path) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            logging::init(&config.logging);
            upgrade::hold_upgrade_signal();
            let handover = upgrade.then_some(server::Handover { from: upgrade_from });
            let (server, run_args) = match server::build(config, handover) {
                Ok(built) => built,
                Err(e) => {
                    eprintln!("edgecache: {e}");
                    return ExitCode::from(EXIT_UNAVAILABLE);
                }
            };
            tracing::info!(config = %path.display(), version = env!("CARGO_PKG_VERSION"), "edgecache starting");
            server.run(run_args);
            // As pingora's run_forever: whatever threads remain, the process is done.
            std::process::exit(0)
        }
        Command::CheckConfig { file } => match config::load(&file) {
            Ok(config) => {
                println!(
                    "{}: ok ({} listeners, {} core groups)",
                    file.display(),
                    config.listeners.len(),
                    config.core.groups.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::CheckCertificate { cert, key } => match certs::check_pair(&cert, &key) {
            Ok(days) => {
                println!(
                    "{} with {}: ok, expires in {days} days",
                    cert.display(),
                    key.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("edgecache: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Reload { config: path } => ask_admin(&path, admin_client::request_reload),
        Command::Upgrade { config: path } => ask_admin(&path, admin_client::request_upgrade),
        Command::Purge {
            config: path,
            url,
            prefix,
            deleted,
        } => ask_admin(&path, |admin, token| {
            admin_client::request_purge(admin, token, &url, prefix, deleted)
        }),
        Command::Migrate {
            config: path,
            from,
            to,
            keys,
            state,
            concurrency,
            max_objects_per_second,
            max_bytes_per_second,
            dry_run,
            metrics_file,
        } => {
            let config = match config::load(&path) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let bytes_per_second = match max_bytes_per_second.as_deref().map(ByteSize::parse) {
                None => None,
                Some(Ok(size)) => Some(size.0),
                Some(Err(e)) => {
                    eprintln!("edgecache: --max-bytes-per-second: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            if max_objects_per_second.is_some_and(|r| !(r.is_finite() && r > 0.0))
                || bytes_per_second == Some(0)
            {
                eprintln!("edgecache: rate limits must be more than 0");
                return ExitCode::from(EXIT_CONFIG);
            }
            logging::init(&config.logging);
            let options = MigrateOptions {
                from,
                to,
                keys,
                state,
                concurrency,
                objects_per_second: max_objects_per_second,
                bytes_per_second,
                dry_run,
                metrics_file,
            };
            migrate::bulk::run_to_exit(&config, options)
        }
        Command::GenCert {
            cert,
            key,
            names,
            if_missing,
        } => match devcert::write(&cert, &key, &names, if_missing) {
            Ok(true) => {
                println!("wrote {} and {}", cert.display(), key.display());
                ExitCode::SUCCESS
            }
            Ok(false) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("edgecache: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Version => {
            println!("edgecache {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}

/// Loads the config for the admin address and token, asks the running PoP, and prints
/// its answer.
fn ask_admin(
    path: &std::path::Path,
    ask: impl FnOnce(
        std::net::SocketAddr,
        Option<&str>,
    ) -> Result<String, admin_client::AdminRequestError>,
) -> ExitCode {
    let config = match config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match ask(config.admin.address, config.admin.token.as_deref()) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("edgecache: {e}");
            ExitCode::FAILURE
        }
    }
}
