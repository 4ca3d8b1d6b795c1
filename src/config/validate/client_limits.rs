//! Validation of a route's `client_limit:` (what one client address may ask of it).

use std::time::Duration;

use super::Checker;
use crate::config::file;
use crate::config::model::ClientLimit;

/// The shortest window a request limit may count over: windows are whole seconds.
const SHORTEST_WINDOW: Duration = Duration::from_secs(1);

pub(super) fn client_limit(
    check: &mut Checker,
    key: &str,
    limit: &file::ClientLimitFile,
) -> ClientLimit {
    let requests = match (limit.requests, limit.per) {
        (Some(0), _) => {
            check.problem(&format!("{key}.requests"), "must be at least 1");
            None
        }
        (Some(count), Some(per)) => {
            let per = per.get();
            if per < SHORTEST_WINDOW || per.subsec_nanos() != 0 {
                check.problem(
                    &format!("{key}.per"),
                    "must be a whole number of seconds, at least 1s",
                );
            }
            Some((count, per.max(SHORTEST_WINDOW)))
        }
        (Some(_), None) => {
            check.problem(&format!("{key}.per"), "is needed with requests (e.g. 5m)");
            None
        }
        (None, Some(_)) => {
            check.problem(&format!("{key}.requests"), "is needed with per");
            None
        }
        (None, None) => None,
    };
    if limit.concurrent == Some(0) {
        check.problem(&format!("{key}.concurrent"), "must be at least 1");
    }
    if limit.requests.is_none() && limit.concurrent.is_none() {
        check.problem(key, "names no limit: give requests and per, or concurrent");
    }
    let mut methods = Vec::new();
    for (i, name) in limit.methods.iter().enumerate() {
        match http::Method::from_bytes(name.to_ascii_uppercase().as_bytes()) {
            Ok(method) => methods.push(method),
            Err(_) => check.problem(
                &format!("{key}.methods[{i}]"),
                format!("{name:?} is not a method"),
            ),
        }
    }
    ClientLimit {
        requests,
        concurrent: limit.concurrent.filter(|n| *n > 0),
        methods,
        anonymous_only: limit.anonymous_only,
    }
}
