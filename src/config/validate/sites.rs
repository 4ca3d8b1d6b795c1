//! Validation of `sites:`: each host named by one site at most, one site without hosts at
//! most, and each route's path, caching, media, upstream, body size and client limit.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{client_limits, media, valid_server_name, Checker};
use crate::config::file;
use crate::config::model::{Route, Shield, Site, Sites};

/// What a route may refer to elsewhere in the file.
pub(super) struct Referable<'a> {
    pub(super) stores: &'a BTreeMap<String, file::StoreFile>,
    /// A write-through queue is configured.
    pub(super) has_queue: bool,
    pub(super) groups: &'a BTreeMap<String, file::UpstreamGroupFile>,
    /// The largest object a cache tier keeps; `None` without a cache.
    pub(super) largest_object: Option<u64>,
    /// The fleet, whose peers a `shield` names.
    pub(super) fleet: Option<&'a file::FleetFile>,
}

pub(super) fn sites(check: &mut Checker, files: &[file::SiteFile], refs: &Referable<'_>) -> Sites {
    let mut sites: Vec<Site> = Vec::new();
    let mut next_route_id = 0;
    let mut catch_all_seen = false;
    for (i, site) in files.iter().enumerate() {
        if site.hosts.is_empty() {
            if catch_all_seen {
                check.problem(
                    &format!("sites[{i}].hosts"),
                    "only one site may leave out hosts (the site for every other host)",
                );
            }
            catch_all_seen = true;
        }
        let hosts = hosts(check, i, site, &sites);
        let mut routes: Vec<Arc<Route>> = Vec::new();
        let site_shield = site
            .shield
            .as_ref()
            .map(|pops| (format!("sites[{i}].shield"), pops));
        if let Some((key, pops)) = &site_shield {
            shield_pops(check, key, pops, refs);
        }
        for (j, file) in site.routes.iter().enumerate() {
            let key = format!("sites[{i}].routes[{j}]");
            let inherited = site_shield.as_ref().map(|(_, pops)| *pops);
            let route = route(check, &key, file, next_route_id, refs, &routes, inherited);
            routes.push(Arc::new(route));
            next_route_id += 1;
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
        sites.push(Site { hosts, routes });
    }
    Sites { sites }
}

/// The site's host names, lower-cased; each must be a host name no other site claims.
fn hosts(check: &mut Checker, i: usize, site: &file::SiteFile, earlier: &[Site]) -> Vec<String> {
    let mut hosts = Vec::new();
    for (j, host) in site.hosts.iter().enumerate() {
        let host = host.to_ascii_lowercase();
        let name = host.strip_prefix("*.").unwrap_or(&host);
        if !valid_server_name(name) {
            check.problem(
                &format!("sites[{i}].hosts[{j}]"),
                format!("{host:?} is not a host name"),
            );
        }
        let claimed = earlier.iter().any(|s| s.hosts.iter().any(|h| h == &host));
        if claimed || hosts.contains(&host) {
            check.problem(
                &format!("sites[{i}].hosts[{j}]"),
                format!("{host} is named by another site too"),
            );
        }
        hosts.push(host);
    }
    hosts
}

/// One route, checked; `key` is its place in the file (`sites[0].routes[2]`), `earlier`
/// the routes of its site before it.
fn route(
    check: &mut Checker,
    key: &str,
    route: &file::RouteFile,
    id: usize,
    refs: &Referable<'_>,
    earlier: &[Arc<Route>],
    site_shield: Option<&Vec<String>>,
) -> Route {
    if !route.path.starts_with('/') {
        check.problem(&format!("{key}.path"), "must start with /");
    }
    if earlier.iter().any(|r| r.path == route.path) {
        check.problem(
            &format!("{key}.path"),
            format!("{} appears twice in this site", route.path),
        );
    }
    if !route.cache && route.cache_ttl.is_some() {
        check.problem(
            &format!("{key}.cache_ttl"),
            "has no effect on a route with cache: false",
        );
    }
    let media = route.media.as_ref().map(|m| {
        media::media_route(
            check,
            &format!("{key}.media"),
            m,
            refs.stores,
            refs.has_queue,
        )
    });
    if let Some(upstream) = &route.upstream {
        let field = format!("{key}.upstream");
        if !refs.groups.contains_key(upstream) {
            check.problem(&field, format!("no core group is named {upstream:?}"));
        } else if media.is_some() {
            check.problem(
                &field,
                "a media route is served from its stores, not the core",
            );
        }
    }
    if route.max_body_size.is_some_and(|size| size.0 == 0) {
        check.problem(
            &format!("{key}.max_body_size"),
            "must be more than 0 (leave it out for no limit)",
        );
    }
    let slice_enabled = route.slice.unwrap_or(route.media.is_some());
    if let Some(size) = route.slice_size {
        super::cache::slice_size(
            check,
            &format!("{key}.slice_size"),
            size.bytes(),
            refs.largest_object,
        );
    }
    if let Some(pops) = &route.shield {
        shield_pops(check, &format!("{key}.shield"), pops, refs);
        if !route.cache && !pops.is_empty() {
            check.problem(
                &format!("{key}.shield"),
                "a route with cache: false never asks a shield",
            );
        }
    }
    // The route's own list wins; a route that never caches takes no shield from its site.
    let shield = match (&route.shield, site_shield) {
        (Some(own), _) => Some(own),
        (None, inherited) if route.cache => inherited,
        (None, _) => None,
    }
    .filter(|pops| !pops.is_empty())
    .map(|pops| Shield {
        group: Shield::group_name(pops),
        pops: pops.clone(),
    });
    let client_limit = route
        .client_limit
        .as_ref()
        .map(|limit| client_limits::client_limit(check, &format!("{key}.client_limit"), limit));
    Route {
        id,
        path: route.path.clone(),
        cache: route.cache,
        cache_ttl: route.cache_ttl.map(|t| t.get()),
        heuristic_freshness: route.heuristic_freshness,
        compress: route.compress,
        slice: slice_enabled.then(|| route.slice_size.map(|size| size.bytes())),
        media,
        upstream: route.upstream.clone(),
        shield,
        max_body_size: route.max_body_size.map(|size| size.0),
        client_limit,
    }
}

/// A `shield` list: fleet peers, each once, each with a shield listener, never this PoP.
fn shield_pops(check: &mut Checker, key: &str, pops: &[String], refs: &Referable<'_>) {
    let Some(fleet) = refs.fleet else {
        if !pops.is_empty() {
            check.problem(key, "a shield is a fleet peer: configure fleet first");
        }
        return;
    };
    for (k, pop) in pops.iter().enumerate() {
        let item = format!("{key}[{k}]");
        if *pop == fleet.name {
            check.problem(
                &item,
                format!("{pop} is this PoP: a PoP cannot be its own shield"),
            );
        } else if pops[..k].contains(pop) {
            check.problem(&item, format!("{pop} is listed twice"));
        } else {
            match fleet.peers.iter().find(|p| p.name == *pop) {
                None => check.problem(&item, format!("no fleet peer is named {pop:?}")),
                Some(peer) if peer.shield.is_none() => check.problem(
                    &item,
                    format!("fleet peer {pop} has no shield address (fleet.peers[].shield)"),
                ),
                Some(_) => {}
            }
        }
    }
}
