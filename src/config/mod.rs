//! Configuration: one YAML file, parsed into `file` structs, checked by `validate` into the
//! `model`.
//!
//! [`load`] is the only way in. Every error it returns names the file, the line and the key,
//! and `main` turns it into exit code 64.

pub mod error;
pub mod file;
pub mod locate;
pub mod model;
pub mod units;
pub mod validate;

use std::path::Path;

pub use error::{ConfigError, ConfigProblem};
pub use model::Config;

/// Reads, parses and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::single(ConfigProblem {
            file: path.to_path_buf(),
            line: None,
            key: String::new(),
            message: format!("cannot read config: {e}"),
        })
    })?;
    parse(&text, path)
}

/// Parses and validates config `text` as if read from `path` (relative paths inside it are
/// taken relative to `path`'s directory).
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let parsed: file::ConfigFile = serde_yaml::from_str(text).map_err(|e| {
        ConfigError::single(ConfigProblem {
            file: path.to_path_buf(),
            line: e.location().map(|l| l.line()),
            key: String::new(),
            message: strip_location(&e.to_string()),
        })
    })?;
    let lines = locate::KeyLines::scan(text);
    Config::from_file(parsed, path, &lines)
}

/// serde_yaml appends " at line L column C"; the line is already at the front of our message.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(cut) => message[..cut].to_string(),
        None => message.to_string(),
    }
}
