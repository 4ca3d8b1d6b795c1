//! Process logs through `tracing`, to stderr, as text or JSON.
//!
//! Pingora logs through the `log` crate; tracing-subscriber's bridge routes those records
//! into the same output and filter. `RUST_LOG`, when set, overrides the config's level.
//! One cap holds either way: see `init`.

use tracing_subscriber::EnvFilter;

use crate::config::file::LogFormat;
use crate::config::model::Logging;

pub fn init(logging: &Logging) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|value| EnvFilter::try_new(value).ok())
        .or_else(|| EnvFilter::try_new(&logging.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // The embedded mesh node's control client logs its registration request, auth key
    // included, at trace level: whatever level is asked for, it stops at info.
    let filter = match "ts_control=info".parse() {
        Ok(cap) => filter.add_directive(cap),
        Err(_) => filter,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match logging.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if let Err(e) = result {
        eprintln!("edgecache: logging already initialised: {e}");
    }
}
