//! Validation of `fleet:` (the PoPs a purge reaches) and `cache_buster:`.

use std::collections::HashSet;

use super::{valid_label, Checker};
use crate::config::file;
use crate::config::model::{Admin, CacheBuster, FleetPeer, FleetSettings, Secret};

pub(super) fn fleet(
    check: &mut Checker,
    fleet: &file::FleetFile,
    admin: Option<&Admin>,
) -> Option<FleetSettings> {
    let before = check.problems.len();
    if !valid_label(&fleet.name) {
        check.problem(
            "fleet.name",
            format!(
                "invalid PoP name {:?}: letters, digits, '-' and '_'",
                fleet.name
            ),
        );
    }
    if admin.is_some_and(|a| a.token.is_none()) {
        check.problem(
            "fleet",
            "a fleet needs admin.token_file: peers accept a purge only with the admin token, the same on every PoP",
        );
    }
    let peers = peers(check, fleet);
    if fleet.max_pending == 0 {
        check.problem("fleet.max_pending", "must be more than 0");
    }
    if fleet.catch_up_interval.get() < std::time::Duration::from_millis(100) {
        check.problem("fleet.catch_up_interval", "must be at least 100ms");
    }
    if fleet.log_entries < 10_000 {
        check.problem(
            "fleet.log_entries",
            "must be at least 10000 (the log is kept in segments of that many)",
        );
    }
    if check.problems.len() > before {
        return None;
    }
    Some(FleetSettings {
        name: fleet.name.clone(),
        peers,
        state_dir: check.resolve_path(&fleet.state_dir),
        max_pending: fleet.max_pending,
        wait: fleet.wait.get(),
        max_retry_delay: fleet
            .max_retry_delay
            .get()
            .max(std::time::Duration::from_millis(100)),
        catch_up_interval: fleet.catch_up_interval.get(),
        log_entries: fleet.log_entries,
    })
}

/// The other PoPs: each named once (never this PoP's own name), at a host:port.
fn peers(check: &mut Checker, fleet: &file::FleetFile) -> Vec<FleetPeer> {
    let mut names = HashSet::from([fleet.name.clone()]);
    let mut peers = Vec::new();
    for (i, peer) in fleet.peers.iter().enumerate() {
        let key = format!("fleet.peers[{i}]");
        if !valid_label(&peer.name) {
            check.problem(
                &format!("{key}.name"),
                format!("invalid PoP name {:?}", peer.name),
            );
        } else if !names.insert(peer.name.clone()) {
            check.problem(
                &format!("{key}.name"),
                format!(
                    "{:?} is listed twice (or is this PoP's own name)",
                    peer.name
                ),
            );
        }
        if !is_host_and_port(&peer.admin) {
            check.problem(
                &format!("{key}.admin"),
                format!(
                    "invalid admin address {:?}: expected host:port of the peer's admin listener",
                    peer.admin
                ),
            );
        }
        if let Some(shield) = peer.shield.as_ref().filter(|s| !is_host_and_port(s)) {
            check.problem(
                &format!("{key}.shield"),
                format!(
                    "invalid shield address {shield:?}: expected host:port of the peer's shield listener"
                ),
            );
        }
        peers.push(FleetPeer {
            name: peer.name.clone(),
            admin: peer.admin.clone(),
            shield: peer.shield.clone(),
        });
    }
    peers
}

pub(super) fn cache_buster(
    check: &mut Checker,
    buster: &file::CacheBusterFile,
) -> Option<CacheBuster> {
    let method = match buster.method.to_ascii_uppercase().parse::<http::Method>() {
        Ok(method) => Some(method),
        Err(_) => {
            check.problem(
                "cache_buster.method",
                format!("invalid method {:?}", buster.method),
            );
            None
        }
    };
    let secret_header = match http::HeaderName::from_bytes(buster.secret_header.as_bytes()) {
        Ok(name) => Some(name),
        Err(_) => {
            check.problem(
                "cache_buster.secret_header",
                format!("invalid header name {:?}", buster.secret_header),
            );
            None
        }
    };
    let path = check.resolve_path(&buster.secret_file);
    let secret = match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Some(Secret::new(text.trim().to_string())),
        Ok(_) => {
            check.problem(
                "cache_buster.secret_file",
                format!("{} is empty", path.display()),
            );
            None
        }
        Err(e) => {
            check.problem(
                "cache_buster.secret_file",
                format!("cannot read {}: {e}", path.display()),
            );
            None
        }
    };
    Some(CacheBuster {
        method: method?,
        secret_header: secret_header?,
        secret: secret?,
    })
}

/// `host:port`, without a scheme or a path.
fn is_host_and_port(address: &str) -> bool {
    address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        && !address.contains('/')
}
