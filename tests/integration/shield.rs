//! The shield tier: PoPs that name a shield ask it before the core, so many PoPs missing
//! one object cost the origin one request; several shields each store their own share; a
//! hop is never taken twice, and requests the cache stays out of never take it. A shield
//! that fails is in `shield_failures.rs`.

use futures_util::StreamExt;

use crate::harness::fleet::*;
use crate::harness::origin::{pattern_range, seen_headers, Origin};
use crate::harness::{get, run_binary, EdgeSetup, MediaRoute, Route, Store};

/// The shield's PoP name in these tests.
pub(crate) const SHIELD: &str = "shd";

/// A fleet plan with one shield, [`SHIELD`], which every other PoP names for the media host.
pub(crate) fn one_shield() -> FleetPlan<'static> {
    FleetPlan {
        shields: &[SHIELD],
        site_shield: &|pop| (pop != SHIELD).then(|| vec![SHIELD]),
        ..FleetPlan::default()
    }
}

/// PoPs `edges` behind one shield, [`SHIELD`], which they name for the media host.
pub(crate) async fn shielded(origin: &Origin, edges: &[&'static str]) -> Vec<FleetPop> {
    let names: Vec<&'static str> = std::iter::once(SHIELD)
        .chain(edges.iter().copied())
        .collect();
    start_fleet(origin, &names, &one_shield()).await
}

pub(crate) fn shield_requests(group: &str, shield: &str) -> String {
    format!("edgecache_shield_requests_total{{group=\"{group}\",shield=\"{shield}\"}}")
}

/// GETs each (PoP, path) at once, up to `at_once` in flight; the status and body of each
/// (status 0: the request itself failed).
pub(crate) async fn get_many(
    pops: &[&FleetPop],
    paths: &[(usize, String)],
    at_once: usize,
) -> Vec<(u16, Vec<u8>)> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    futures_util::stream::iter(paths.iter().map(|(pop, path)| {
        let url = format!("http://{}{path}", pops[*pop].setup.http());
        let client = client.clone();
        async move {
            let Ok(resp) = client.get(&url).header("Host", MEDIA_HOST).send().await else {
                return (0, Vec::new());
            };
            let status = resp.status().as_u16();
            match resp.bytes().await {
                Ok(body) => (status, body.to_vec()),
                Err(_) => (0, Vec::new()),
            }
        }
    }))
    .buffer_unordered(at_once)
    .collect()
    .await
}

/// Waits until `pop` has found its shield `shield` up: a PoP started before its shield
/// checks it again only every second.
async fn seen_up(pop: &FleetPop, shield: &str) {
    let sample = format!("edgecache_core_host_up{{group=\"shield:{shield}\",host=\"{shield}\"}}");
    pop.edge().wait_metric(&sample, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_misses_over_three_pops_cost_the_origin_one_request() {
    let origin = Origin::start().await;
    let pops = shielded(&origin, &["fra", "ewr", "nrt"]).await;
    let edges: Vec<&FleetPop> = pops[1..].iter().collect();
    // The origin takes its time, so every request arrives while the object is fetched.
    let path = "/slow/400?cc=public,max-age=3600";
    let paths: Vec<(usize, String)> = (0..100).map(|n| (n % 3, path.to_string())).collect();
    let answers = get_many(&edges, &paths, 100).await;
    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "{:?}",
        answers.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    assert!(
        answers.iter().all(|(_, body)| *body == answers[0].1),
        "the answers differ"
    );
    assert_eq!(
        origin.hits_for("/slow/400"),
        1,
        "the origin was asked more than once"
    );
    // Each PoP asked its shield once, and the hop's marker never reached the origin.
    for pop in &edges {
        assert_eq!(
            pop.edge()
                .metric(&shield_requests("shield:shd", SHIELD))
                .await,
            Some(1.0),
            "{}",
            pop.name
        );
        let answered = "edgecache_upstream_responses_total{group=\"shield:shd\",host=\"shd\",status_class=\"2xx\"}";
        assert_eq!(pop.edge().metric(answered).await, Some(1.0), "{}", pop.name);
    }
    let seen: serde_json::Value = serde_json::from_slice(&answers[0].1).expect("the origin's JSON");
    assert!(
        seen_headers(&seen, "x-edgecache-shield-hop").is_empty(),
        "{seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shields_each_store_their_share_once() {
    let origin = Origin::start().await;
    let plan = FleetPlan {
        shields: &["sha", "shb"],
        site_shield: &|pop| pop.starts_with("pop").then(|| vec!["sha", "shb"]),
        ..FleetPlan::default()
    };
    let pops = start_fleet(&origin, &["sha", "shb", "pop1", "pop2"], &plan).await;
    let edges: Vec<&FleetPop> = pops[2..].iter().collect();
    const OBJECTS: usize = 60;
    let paths = |pop: usize| -> Vec<(usize, String)> {
        (0..OBJECTS)
            .map(|n| (pop, format!("/spread/{n}?cc=public,max-age=3600")))
            .collect()
    };
    for pop in 0..2 {
        let answers = get_many(&edges, &paths(pop), 8).await;
        assert!(answers.iter().all(|(s, _)| *s == 200));
    }
    assert_eq!(
        origin.hits(),
        OBJECTS,
        "each object fetched once for both PoPs"
    );
    // Both PoPs sent each object to the same shield, and the shields split the objects.
    let group = "shield:sha,shb";
    let mut shares = Vec::new();
    for shield in ["sha", "shb"] {
        let first = edges[0]
            .edge()
            .metric(&shield_requests(group, shield))
            .await
            .unwrap_or(0.0);
        let second = edges[1]
            .edge()
            .metric(&shield_requests(group, shield))
            .await
            .unwrap_or(0.0);
        assert_eq!(
            first, second,
            "the PoPs picked different shields for some object"
        );
        shares.push(first);
    }
    assert_eq!(shares.iter().sum::<f64>(), OBJECTS as f64);
    assert!(shares.iter().all(|s| *s >= 10.0), "shares {shares:?}");
    // What each shield holds is its share: no object is stored on both.
    for (shield, share) in pops[..2].iter().zip(&shares) {
        let held = shield
            .edge()
            .metric("edgecache_cache_tier_objects{tier=\"memory\"}")
            .await
            .unwrap_or(0.0);
        assert_eq!(held, *share, "{} holds {held}", shield.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pops_naming_each_other_on_plain_listeners_make_one_hop_not_a_loop() {
    let origin = Origin::start().await;
    // Each names the other as its shield, at the other's public listener: only the hop's
    // marker stops the request there.
    let plan = FleetPlan {
        site_shield: &|pop| Some(vec![if pop == "fra" { "ewr" } else { "fra" }]),
        shields_on_public_listeners: true,
        ..FleetPlan::default()
    };
    let pops = start_fleet(&origin, &["fra", "ewr"], &plan).await;
    seen_up(&pops[0], "ewr").await;
    let path = "/loop/1?cc=public,max-age=3600";
    let answer = pops[0].get(path).await;
    assert_eq!(answer.status, 200);
    assert_eq!(origin.hits_for("/loop/1"), 1);
    assert_eq!(
        pops[0]
            .edge()
            .metric(&shield_requests("shield:ewr", "ewr"))
            .await,
        Some(1.0)
    );
    assert_eq!(
        pops[1]
            .edge()
            .metric(&shield_requests("shield:fra", "fra"))
            .await,
        None,
        "ewr passed the hop on"
    );
    // ewr stored what it fetched for fra.
    assert_eq!(pops[1].get(path).await.cache_status(), "HIT");
    assert_eq!(origin.hits_for("/loop/1"), 1);
    // A client's own marker takes nothing past the PoP: it never reaches the origin.
    let marked = get(
        pops[0].setup.http(),
        "/loop/2?cc=public,max-age=3600",
        &[("Host", MEDIA_HOST), ("X-Edgecache-Shield-Hop", "nrt")],
    )
    .await;
    let seen: serde_json::Value = serde_json::from_slice(&marked.body).expect("JSON");
    assert!(
        seen_headers(&seen, "x-edgecache-shield-hop").is_empty(),
        "{seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_in_and_uncacheable_requests_never_take_the_hop() {
    let origin = Origin::start().await;
    let plan = FleetPlan {
        change_config: &|pop, config| {
            if pop != SHIELD {
                let site = config.sites.last_mut().expect("the media host's site");
                site.routes.push(Route::at("/api/").cache(false));
            }
        },
        ..one_shield()
    };
    let pops = start_fleet(&origin, &[SHIELD, "fra"], &plan).await;
    let fra = &pops[1];
    let cacheable = "?cc=public,max-age=3600";
    let requests: [(&str, &[(&str, &str)]); 4] = [
        ("/signed-in/token", &[("Authorization", "Bearer abc")]),
        ("/signed-in/cookie", &[("Cookie", "_session_id=abc")]),
        ("/api/v1/timelines/home", &[]),
        ("/public/after", &[]),
    ];
    for (path, headers) in requests {
        let mut all = vec![("Host", MEDIA_HOST)];
        all.extend_from_slice(headers);
        let answer = get(fra.setup.http(), &format!("{path}{cacheable}"), &all).await;
        assert_eq!(answer.status, 200, "{path}");
        assert_eq!(origin.hits_for(path), 1, "{path}");
    }
    // Only the public request took the hop.
    assert_eq!(
        fra.edge()
            .metric(&shield_requests("shield:shd", SHIELD))
            .await,
        Some(1.0)
    );
    let post = crate::harness::send(
        reqwest::Method::POST,
        fra.setup.http(),
        "/api/v1/statuses",
        &[("Host", MEDIA_HOST)],
    )
    .await;
    assert_eq!(post.status, 200);
    assert_eq!(
        fra.edge()
            .metric(&shield_requests("shield:shd", SHIELD))
            .await,
        Some(1.0),
        "a POST took the hop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slices_travel_through_the_shield_as_slices() {
    const SLICE: u64 = 256 * 1024;
    let origin = Origin::start().await;
    let plan = FleetPlan {
        change_cache: &|cache| {
            cache.more.insert("slice_size".into(), "256KiB".into());
        },
        change_config: &|pop, config| {
            let bytes = Route::at("/bytes/").with("slice", "true");
            if pop == SHIELD {
                config.add_routes([bytes]);
            } else {
                let site = config.sites.last_mut().expect("the media host's site");
                site.routes.push(bytes);
            }
        },
        ..one_shield()
    };
    let pops = start_fleet(&origin, &[SHIELD, "fra", "ewr"], &plan).await;
    let size = 3_000_000u64;
    let path = format!("/bytes/{size}?cc=public,max-age=600");
    let range_of = |i: u64| format!("bytes={}-{}", i * SLICE, (i + 1) * SLICE - 1);
    // A seek into the middle on fra (slice 7), then on ewr a range over slices 6 and 7.
    let seek = get(
        pops[1].setup.http(),
        &path,
        &[("Host", MEDIA_HOST), ("Range", "bytes=2000000-2000099")],
    )
    .await;
    assert_eq!(seek.status, 206);
    assert!(seek.body == pattern_range(2_000_000..2_000_100));
    let wider = get(
        pops[2].setup.http(),
        &path,
        &[("Host", MEDIA_HOST), ("Range", "bytes=1700000-2000099")],
    )
    .await;
    assert_eq!(wider.status, 206);
    assert!(wider.body == pattern_range(1_700_000..2_000_100));
    // The origin saw each slice once, whichever PoP wanted it, and nothing else.
    assert_eq!(
        origin.ranges_for(&format!("/bytes/{size}")),
        vec![range_of(7), range_of(6)]
    );
}

#[test]
fn shield_settings_that_cannot_work_name_file_line_and_key() {
    let setup = EdgeSetup::new();
    let (http, admin) = setup.configured_http_and_admin();
    let token = setup.path("admin.token");
    std::fs::write(&token, "a-token-of-enough-length-for-the-admin").expect("token");
    let config = format!(
        "listeners:
  - name: http
    address: \"{http}\"
  - name: shield
    address: \"127.0.0.1:9\"
    shield: true
    tls:
      certificates: []
admin:
  address: \"{admin}\"
  token_file: {token}
core:
  groups:
    web:
      hosts: [\"127.0.0.1:3000\"]
fleet:
  name: fra
  state_dir: fleet
  peers:
    - {{ name: ewr, admin: \"127.0.0.1:9901\", shield: \"127.0.0.1:9902\" }}
    - {{ name: nrt, admin: \"127.0.0.1:9903\" }}
    - {{ name: iad, admin: \"127.0.0.1:9904\", shield: \"http://iad/\" }}
sites:
  - shield: [fra]
    routes:
      - path: /
        shield: [nrt, zzz, ewr, ewr]
      - path: /api/
        cache: false
        shield: [ewr]
",
        token = token.display()
    );
    let path = setup.write_config_text(&config);
    let path = path.to_str().expect("utf-8");
    let (code, _, stderr) = run_binary(&["check-config", path]);
    assert_eq!(code, 64, "{stderr}");
    for expected in [
        ":6: listeners[1].shield: a shield listener takes plain HTTP from the other PoPs over the mesh; leave out tls",
        ":22: fleet.peers[2].shield: invalid shield address \"http://iad/\"",
        ":24: sites[0].shield[0]: fra is this PoP: a PoP cannot be its own shield",
        ":27: sites[0].routes[0].shield[0]: fleet peer nrt has no shield address (fleet.peers[].shield)",
        ":27: sites[0].routes[0].shield[1]: no fleet peer is named \"zzz\"",
        ":27: sites[0].routes[0].shield[3]: ewr is listed twice",
        ":30: sites[0].routes[1].shield: a route with cache: false never asks a shield",
    ] {
        assert!(
            stderr.contains(&format!("{path}{expected}")),
            "wanted {expected:?} in {stderr}"
        );
    }

    // A shield is a fleet peer: without a fleet there is none to name.
    let config = format!(
        "listeners:\n  - name: http\n    address: \"{http}\"\nadmin:\n  address: \"{admin}\"\ncore:\n  groups:\n    web:\n      hosts: [\"127.0.0.1:3000\"]\nsites:\n  - shield: [ewr]\n    routes:\n      - path: /\n"
    );
    let path = setup.write_config_text(&config);
    let path = path.to_str().expect("utf-8");
    let (code, _, stderr) = run_binary(&["check-config", path]);
    assert_eq!(code, 64, "{stderr}");
    let expected =
        format!("{path}:11: sites[0].shield: a shield is a fleet peer: configure fleet first");
    assert!(
        stderr.contains(&expected),
        "wanted {expected:?} in {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_media_miss_asks_the_shield_whose_chain_finds_it_once() {
    let origin = Origin::start().await;
    // Only the shield's store holds the file: a PoP that skipped the hop would answer 404.
    let (shield_store, empty_store) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let key = "media_attachments/files/110/123/456/original/a.png";
    let file = shield_store.path().join(key);
    std::fs::create_dir_all(file.parent().expect("parent")).expect("dirs");
    let image: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &image).expect("file");
    let (shield_dir, edge_dir) = (
        shield_store.path().to_path_buf(),
        empty_store.path().to_path_buf(),
    );
    let plan = FleetPlan {
        change_config: &|pop, config| {
            let dir = if pop == SHIELD {
                &shield_dir
            } else {
                &edge_dir
            };
            config
                .stores
                .insert("disk".to_string(), Store::directory(dir));
            let media = Route {
                media: Some(MediaRoute {
                    chain: vec!["disk".to_string()],
                    ..MediaRoute::default()
                }),
                ..Route::at("/system/")
            };
            if pop == SHIELD {
                config.add_routes([media]);
            } else {
                config
                    .sites
                    .last_mut()
                    .expect("the media host's site")
                    .routes
                    .push(media);
            }
        },
        ..one_shield()
    };
    let pops = start_fleet(&origin, &[SHIELD, "fra", "ewr"], &plan).await;
    let path = format!("/system/{key}");
    for pop in &pops[1..] {
        let answer = pop.get(&path).await;
        assert_eq!(answer.status, 200, "{}", pop.name);
        assert!(answer.body == image, "{} served other bytes", pop.name);
        assert_eq!(
            pop.edge()
                .metric(&shield_requests("shield:shd", SHIELD))
                .await,
            Some(1.0)
        );
    }
    // The shield's chain was asked once; the second PoP's miss was a hit there.
    assert_eq!(
        pops[0]
            .edge()
            .metric("edgecache_media_step_lookups_total{outcome=\"hit\",store=\"disk\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(origin.hits(), 0, "the core was asked for media");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slices_of_pops_naming_each_other_on_plain_listeners_make_one_hop() {
    const SLICE: u64 = 256 * 1024;
    let origin = Origin::start().await;
    let plan = FleetPlan {
        site_shield: &|pop| Some(vec![if pop == "fra" { "ewr" } else { "fra" }]),
        shields_on_public_listeners: true,
        change_cache: &|cache| {
            cache.more.insert("slice_size".into(), "256KiB".into());
        },
        change_config: &|_, config| {
            let site = config.sites.last_mut().expect("the media host's site");
            site.routes.push(Route::at("/bytes/").with("slice", "true"));
        },
        ..FleetPlan::default()
    };
    let pops = start_fleet(&origin, &["fra", "ewr"], &plan).await;
    seen_up(&pops[0], "ewr").await;
    let size = 3_000_000u64;
    let answer = get(
        pops[0].setup.http(),
        &format!("/bytes/{size}?cc=public,max-age=600"),
        &[("Host", MEDIA_HOST), ("Range", "bytes=1700000-2000099")],
    )
    .await;
    assert_eq!(answer.status, 206);
    assert!(answer.body == pattern_range(1_700_000..2_000_100));
    let range_of = |i: u64| format!("bytes={}-{}", i * SLICE, (i + 1) * SLICE - 1);
    let mut ranges = origin.ranges_for(&format!("/bytes/{size}"));
    ranges.sort();
    assert_eq!(ranges, vec![range_of(6), range_of(7)]);
    // ewr fetched both slices for fra and asked nobody: its slices took no hop back.
    assert_eq!(
        pops[1]
            .edge()
            .metric(&shield_requests("shield:fra", "fra"))
            .await,
        None,
        "ewr passed a slice on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pops_own_cache_field_reaches_the_pop_through_the_shield() {
    let origin = Origin::start().await;
    let pops = shielded(&origin, &["fra"]).await;
    // Shared caches elsewhere may keep it; PoPs of this fleet must not.
    let path = "/own-field/1?cc=public,max-age=300&h=Edgecache-Cache-Control:no-store";
    for _ in 0..2 {
        let answer = pops[1].get(path).await;
        assert_eq!(answer.status, 200);
        assert!(
            answer.headers.get("edgecache-cache-control").is_none(),
            "the field reached a client"
        );
    }
    assert_eq!(
        origin.hits_for("/own-field/1"),
        2,
        "a PoP stored what its own field forbids"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shield_believes_the_pops_forwarding_headers_and_takes_only_shareable_requests() {
    let origin = Origin::start().await;
    let plan = FleetPlan {
        // fra sits behind a load balancer it trusts; the shield trusts nobody by config.
        change_config: &|pop, config| {
            if pop != SHIELD {
                config.add_sections("proxy:\n  trusted_proxies: [\"127.0.0.1\"]\n");
            }
        },
        ..one_shield()
    };
    let pops = start_fleet(&origin, &[SHIELD, "fra"], &plan).await;
    let answer = get(
        pops[1].setup.http(),
        "/forwarded/1?cc=public,max-age=300",
        &[
            ("Host", MEDIA_HOST),
            // The entry left of the client's is the client's own word: fra skips it.
            ("X-Forwarded-For", "198.51.100.66, 203.0.113.9"),
            ("X-Forwarded-Proto", "https"),
            // fra keeps what its load balancer says; the shield takes it from no PoP.
            ("X-Forwarded-Ssl", "on"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        pops[1]
            .edge()
            .metric(&shield_requests("shield:shd", SHIELD))
            .await,
        Some(1.0)
    );
    // The core sees the client fra settled on, and its scheme, through both PoPs.
    let seen: serde_json::Value = serde_json::from_slice(&answer.body).expect("JSON");
    assert_eq!(seen_headers(&seen, "x-real-ip"), vec!["203.0.113.9"]);
    assert_eq!(
        seen_headers(&seen, "x-forwarded-for"),
        vec!["203.0.113.9, 127.0.0.1"]
    );
    assert!(seen_headers(&seen, "x-forwarded-ssl").is_empty(), "{seen}");
    assert_eq!(seen_headers(&seen, "x-forwarded-proto"), vec!["https"]);
    // The shield keyed it https: a purge of the https URL there removes it.
    let shield_listener = pops[0].shield.expect("shield listener");
    let again = get(
        shield_listener,
        "/forwarded/1?cc=public,max-age=300",
        &[("Host", MEDIA_HOST), ("X-Forwarded-Proto", "https")],
    )
    .await;
    assert_eq!(again.cache_status(), "HIT");

    // What no PoP sends on a hop is refused there.
    let post = crate::harness::send(
        reqwest::Method::POST,
        shield_listener,
        "/api/v1/statuses",
        &[("Host", MEDIA_HOST)],
    )
    .await;
    assert_eq!(post.status, 405);
    let signed_in = get(
        shield_listener,
        "/api/v1/timelines/home",
        &[("Host", MEDIA_HOST), ("Authorization", "Bearer abc")],
    )
    .await;
    assert_eq!(signed_in.status, 403);
    assert_eq!(
        origin.hits_for("/api/v1/statuses") + origin.hits_for("/api/v1/timelines/home"),
        0
    );
}
