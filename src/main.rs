//! The edgecache binary: parse the command line, load the config, run.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use edgecache::admin::client as admin_client;
use edgecache::cli::{Cli, Command};
use edgecache::config::units::ByteSize;
use edgecache::config::Config;
use edgecache::fleet::{PurgeKind, PurgeTarget};
use edgecache::migrate::{self, bulk::MigrateOptions};
use edgecache::{certs, config, devcert, logging, server, upgrade, EXIT_CONFIG, EXIT_UNAVAILABLE};

/// Proxying allocates and frees many small buffers per request; mimalloc does that with
/// less CPU than glibc's allocator (see benches/README.md).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Transparent huge pages round each allocator region the process touches up to 2 MiB:
    // an idle PoP held 14 to 30 MiB more than it used, and the limits in the config would
    // count for less than the memory taken. The flag holds for the whole process (and what
    // it starts); mimalloc is also built never to advise huge pages itself (`no_thp`). A
    // kernel without the call just keeps its default.
    let _ = nix::sys::prctl::set_thp_disable(true);
    // One TLS crypto provider for the whole process, installed before anything builds a
    // rustls config.
    pingora::tls::install_default_crypto_provider();
    match Cli::parse().command {
        Command::Serve {
            config,
            upgrade,
            upgrade_from,
            addresses_file,
            inherit_address,
        } => serve(
            &config,
            upgrade.then(|| server::Handover {
                from: upgrade_from,
                inherited: inherit_address.into_iter().collect(),
            }),
            addresses_file,
        ),
        Command::CheckConfig { file } => check_config(&file),
        Command::CheckCertificate { cert, key } => check_certificate(&cert, &key),
        Command::Reload { config } => ask_admin(&config, admin_client::request_reload),
        Command::Upgrade { config } => ask_admin(&config, admin_client::request_upgrade),
        Command::Purge {
            config,
            url,
            prefix,
            tag,
            host,
            deleted,
        } => {
            let kind = match (prefix, tag) {
                (true, _) => PurgeKind::Prefix,
                (_, true) => PurgeKind::Tag,
                _ => PurgeKind::Url,
            };
            let target = PurgeTarget {
                kind,
                value: url,
                host,
            };
            ask_admin(&config, |admin, token| {
                admin_client::request_purge(admin, token, &target, deleted)
            })
        }
        Command::Migrate {
            config,
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
            let config = load_or_exit(&config);
            let Some(bytes_per_second) = rate_limits(max_objects_per_second, max_bytes_per_second)
            else {
                return ExitCode::from(EXIT_CONFIG);
            };
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
        } => gen_cert(&cert, &key, &names, if_missing),
        Command::Version => {
            println!("edgecache {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}

/// The validated config, or its errors on stderr (each naming file, line and key) and exit
/// status 64.
fn load_or_exit(path: &Path) -> Config {
    match config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(i32::from(EXIT_CONFIG))
        }
    }
}

/// Runs the PoP until it is told to stop.
fn serve(
    path: &Path,
    handover: Option<server::Handover>,
    addresses_file: Option<std::path::PathBuf>,
) -> ExitCode {
    let config = load_or_exit(path);
    logging::init(&config.logging);
    upgrade::hold_upgrade_signal();
    let (server, run_args) = match server::build(config, handover, addresses_file) {
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

fn check_config(path: &Path) -> ExitCode {
    let config = load_or_exit(path);
    println!(
        "{}: ok ({} listeners, {} core groups)",
        path.display(),
        config.listeners.len(),
        config.core.groups.len()
    );
    ExitCode::SUCCESS
}

fn check_certificate(cert: &Path, key: &Path) -> ExitCode {
    match certs::check_pair(cert, key) {
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
    }
}

/// `migrate`'s rate limits, checked: `Some(bytes per second)` when they are usable, `None`
/// after saying why not.
fn rate_limits(
    objects_per_second: Option<f64>,
    bytes_per_second: Option<String>,
) -> Option<Option<u64>> {
    let bytes_per_second = match bytes_per_second.as_deref().map(ByteSize::parse) {
        None => None,
        Some(Ok(size)) => Some(size.0),
        Some(Err(e)) => {
            eprintln!("edgecache: --max-bytes-per-second: {e}");
            return None;
        }
    };
    if objects_per_second.is_some_and(|r| !(r.is_finite() && r > 0.0))
        || bytes_per_second == Some(0)
    {
        eprintln!("edgecache: rate limits must be more than 0");
        return None;
    }
    Some(bytes_per_second)
}

fn gen_cert(cert: &Path, key: &Path, names: &[String], if_missing: bool) -> ExitCode {
    match devcert::write(cert, key, names, if_missing) {
        Ok(true) => {
            println!("wrote {} and {}", cert.display(), key.display());
            ExitCode::SUCCESS
        }
        Ok(false) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgecache: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the config for the admin address and token, asks the running PoP, and prints
/// its answer.
fn ask_admin(
    path: &Path,
    ask: impl FnOnce(
        std::net::SocketAddr,
        Option<&str>,
    ) -> Result<String, admin_client::AdminRequestError>,
) -> ExitCode {
    let config = load_or_exit(path);
    if config.admin.address.port() == 0 {
        eprintln!(
            "edgecache: {}: admin.address has port 0, so the running PoP's admin port is the one the kernel chose, which this command cannot know (`serve --addresses-file` reports it): give the admin listener a fixed port",
            path.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    }
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
