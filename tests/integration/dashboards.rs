//! The Grafana dashboard and the Prometheus alert rules in `ops/` query only metrics that
//! edgecache exports: `/metrics` of a PoP that has served cache, core, media and
//! write-through traffic and queued a fleet purge, and the textfile `edgecache migrate`
//! writes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::harness::get;
use crate::harness::{media_pop_with, path_value, settings, MediaConfig};

fn ops_file(path: &str) -> String {
    std::fs::read_to_string(format!("{}/ops/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("ops/{path}: {e}"))
}

/// Every `edgecache_*` metric family an expression names (histogram series by family).
fn metric_families(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find("edgecache_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.insert(family.to_string());
        rest = &tail[end..];
    }
    names
}

/// The expressions of the dashboard's panels, each with its panel title.
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&ops_file("grafana/edgecache-fleet.json")).expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "a panel per topic");
    let mut queries = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("title").to_string();
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            queries.push((title.clone(), expr.to_string()));
        }
    }
    queries
}

/// The expressions of the alert rules, each with its alert name.
fn alert_queries() -> Vec<(String, String)> {
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&ops_file("prometheus/edgecache-alerts.yml")).expect("rules YAML");
    let mut queries = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name").to_string();
            let expr = rule["expr"].as_str().expect("expr").to_string();
            assert!(
                rule["annotations"]["summary"].as_str().is_some(),
                "{name}: no summary"
            );
            queries.push((name, expr));
        }
    }
    let names: Vec<&str> = queries.iter().map(|(n, _)| n.as_str()).collect();
    for wanted in [
        "EdgecacheCoreUnreachable",
        "EdgecacheHitRatioDrop",
        "EdgecacheWriteThroughFailing",
        "EdgecacheCertificateExpiring",
    ] {
        assert!(names.contains(&wanted), "no {wanted} alert");
    }
    queries
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_query_is_exported() {
    let media = media_pop_with(MediaConfig {
        write_through: &["spaces"],
        queue: Some(&[]),
        change: &|config, dir| {
            let mut fleet = settings(&[
                ("name", "fra"),
                ("peers", "[{ name: ewr, admin: \"127.0.0.1:1\" }]"),
            ]);
            fleet.insert("state_dir".into(), path_value(&dir.join("fleet")));
            config.set_section("fleet", fleet);
        },
        ..MediaConfig::default()
    })
    .await;
    let http = media.pop.setup.http();
    // Media from the old server, copied into the store; a page from the core, twice.
    assert_eq!(get(http, "/system/3000", &[]).await.status, 200);
    assert_eq!(
        get(http, "/@alice?cc=public,max-age=600", &[]).await.status,
        200
    );
    assert_eq!(
        get(http, "/@alice?cc=public,max-age=600", &[])
            .await
            .cache_status(),
        "HIT"
    );
    // A purge for a peer that is down stays queued.
    let (status, _) = media.pop.purge("url=example.social%2Fx").await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    while media
        .metric("edgecache_write_through_jobs_total{event=\"done\"}")
        .await
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the write-through job never finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, exported) = media.pop.edge.admin_get("/metrics").await;
    let exported: BTreeSet<&str> = exported
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_whitespace().next())
        .collect();

    // `edgecache migrate` writes its own metrics file for node_exporter's textfile collector.
    media.legacy_file("media_attachments/old.png", b"an old upload");
    let state = media.pop.setup.path("migrate.state");
    let metrics_file = media.pop.setup.path("migrate.prom");
    let config = media.pop.setup.path("edgecache.yaml");
    let args: Vec<String> = [
        "migrate",
        "--config",
        config.to_str().expect("utf-8"),
        "--from",
        "disk",
        "--to",
        "spaces",
        "--state",
        state.to_str().expect("utf-8"),
        "--metrics-file",
        metrics_file.to_str().expect("utf-8"),
    ]
    .map(String::from)
    .to_vec();
    let (code, _, stderr) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        crate::harness::run_binary(&args)
    })
    .await
    .expect("migrate");
    assert_eq!(code, 0, "{stderr}");
    let migrate_text = std::fs::read_to_string(&metrics_file).expect("migrate metrics");
    let migrate: BTreeSet<&str> = migrate_text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_whitespace().next())
        .collect();

    let mut checked = 0;
    for (source, expr) in dashboard_queries().into_iter().chain(alert_queries()) {
        let families = metric_families(&expr);
        assert!(
            !families.is_empty(),
            "{source}: no edgecache metric in {expr}"
        );
        for family in families {
            let found = if family.starts_with("edgecache_migrate_") {
                migrate.contains(family.as_str())
            } else {
                exported.contains(family.as_str())
            };
            assert!(found, "{source}: {family} is not exported");
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} metric references checked");
}

#[test]
fn family_names_are_read_out_of_expressions() {
    let families = metric_families(
        "histogram_quantile(0.99, sum by (le) (rate(edgecache_upstream_response_seconds_bucket[5m]))) / edgecache_requests_total{x=\"edgecache_not\"}",
    );
    assert!(families.contains("edgecache_upstream_response_seconds"));
    assert!(families.contains("edgecache_requests_total"));
}
