//! Purging URLs and prefixes from this PoP's cache through the admin listener.

use crate::harness::origin::Origin;
use crate::harness::{get, pop_with_cache, restartable_pop_with_cache, ADMIN_TOKEN};

/// The `purged` count of a purge report.
fn purged(body: &str) -> i64 {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|report| report["purged"].as_i64())
        .unwrap_or(-1)
}

fn encode(url: &str) -> String {
    url.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn a_purged_url_is_a_miss_in_every_variant_and_after_a_restart() {
    let origin = Origin::start().await;
    let mut pop = restartable_pop_with_cache(&origin).await;
    let host = pop.setup.http().to_string();
    let page = "/@alice?cc=public,max-age=600&h=Vary:Accept";
    let big = "/bytes/2000000?cc=public,max-age=600";
    let other = "/@bob?cc=public,max-age=600";
    for accept in ["text/html", "application/activity+json"] {
        get(pop.setup.http(), page, &[("Accept", accept)]).await;
    }
    get(pop.setup.http(), big, &[]).await;
    get(pop.setup.http(), other, &[]).await;
    assert_eq!(origin.hits(), 4);

    let (status, body) = pop
        .purge(&format!("url={}", encode(&format!("http://{host}{page}"))))
        .await;
    assert_eq!((status, purged(&body)), (200, 2), "{body}");
    // Without a scheme, both are purged; the disk-only object goes too.
    let (status, body) = pop
        .purge(&format!("url={}", encode(&format!("{host}{big}"))))
        .await;
    assert_eq!((status, purged(&body)), (200, 1), "{body}");

    crate::harness::kill_and_restart(&mut pop).await;
    for accept in ["text/html", "application/activity+json"] {
        let answer = get(pop.setup.http(), page, &[("Accept", accept)]).await;
        assert_eq!(answer.cache_status(), "MISS", "{accept}");
    }
    assert_eq!(get(pop.setup.http(), big, &[]).await.cache_status(), "MISS");
    assert_eq!(
        get(pop.setup.http(), other, &[]).await.cache_status(),
        "HIT"
    );
    assert_eq!(origin.hits(), 7);
}

#[tokio::test]
async fn a_prefix_purge_takes_everything_under_it() {
    let origin = Origin::start().await;
    let mut pop = restartable_pop_with_cache(&origin).await;
    let host = pop.setup.http().to_string();
    let media = [
        "/system/media_attachments/1.png?cc=public,max-age=600",
        "/system/media_attachments/2.png?cc=public,max-age=600",
        "/system/accounts/avatars/3.png?cc=public,max-age=600",
    ];
    let kept = "/packs/app.js?cc=public,max-age=600";
    for path in media.iter().chain([&kept]) {
        get(pop.setup.http(), path, &[]).await;
    }
    // After a restart the disk entries' URLs are not in memory yet: the purge must still
    // find them.
    crate::harness::kill_and_restart(&mut pop).await;
    let (status, body) = pop
        .purge(&format!(
            "prefix={}",
            encode(&format!("http://{host}/system/media_attachments/"))
        ))
        .await;
    assert_eq!((status, purged(&body)), (200, 2), "{body}");
    assert_eq!(
        get(pop.setup.http(), media[0], &[]).await.cache_status(),
        "MISS"
    );
    assert_eq!(
        get(pop.setup.http(), media[1], &[]).await.cache_status(),
        "MISS"
    );
    assert_eq!(
        get(pop.setup.http(), media[2], &[]).await.cache_status(),
        "HIT"
    );
    assert_eq!(get(pop.setup.http(), kept, &[]).await.cache_status(), "HIT");
    assert_eq!(
        pop.edge
            .metric("edgecache_cache_purged_objects_total{kind=\"prefix\"}")
            .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn purging_needs_the_token_and_a_well_formed_target() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/purge?url=example.social/x", pop.setup.admin());
    assert_eq!(client.post(&url).send().await.expect("purge").status(), 401);
    let wrong = client
        .post(&url)
        .bearer_auth("guess")
        .send()
        .await
        .expect("purge");
    assert_eq!(wrong.status(), 401);
    let get = client
        .get(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("get");
    assert_eq!(get.status(), 405);
    assert_eq!(pop.purge("").await.0, 400);
    assert_eq!(pop.purge("url=a&prefix=b").await.0, 400);
    assert_eq!(pop.purge("url=https%3A%2F%2Fa%20b%2Fx").await.0, 400);
    let (status, body) = pop.purge("url=example.social%2Fx").await;
    assert_eq!((status, purged(&body)), (200, 0), "{body}");
}
