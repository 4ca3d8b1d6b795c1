//! Spool directories for files still being written, shared by processes.
//!
//! During a graceful upgrade the old and the new process write under the same directories
//! for a few seconds. Each writes its partial files under `<dir>/<pid>/`, and a process
//! that starts removes only what processes no longer running left behind, so the old
//! process's work in progress survives the new one's start.

use std::io;
use std::path::{Path, PathBuf};

/// `<parent>/<this process's pid>`, created, after removing everything under `parent` but
/// the directories of other running processes.
pub fn own_spool(parent: &Path) -> io::Result<PathBuf> {
    std::fs::create_dir_all(parent)?;
    let own = std::process::id();
    for entry in std::fs::read_dir(parent)? {
        let Ok(entry) = entry else { continue };
        let running = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
            .is_some_and(|pid| pid != own && Path::new(&format!("/proc/{pid}")).exists());
        if !running {
            let path = entry.path();
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
    }
    let spool = parent.join(own.to_string());
    std::fs::create_dir_all(&spool)?;
    Ok(spool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_dead_processes_left_goes_and_what_running_ones_write_stays() {
        let dir = tempfile::tempdir().expect("dir");
        // pid 1 always runs; a pid above the kernel's limit never does.
        for name in ["1", "4194305", "loose"] {
            std::fs::create_dir_all(dir.path().join(name)).expect("dir");
            std::fs::write(dir.path().join(name).join("part.body"), "half").expect("file");
        }
        std::fs::write(dir.path().join("stray.body"), "half").expect("file");
        let own = own_spool(dir.path()).expect("spool");
        assert_eq!(own, dir.path().join(std::process::id().to_string()));
        assert!(own.is_dir());
        assert!(
            dir.path().join("1/part.body").exists(),
            "a running process's spool"
        );
        for gone in ["4194305", "loose", "stray.body"] {
            assert!(!dir.path().join(gone).exists(), "{gone} left");
        }
    }
}
