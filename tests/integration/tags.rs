//! Purging by cache tag on one PoP: tags from `Cache-Groups`, `Surrogate-Key` and Mastodon's
//! media paths, `Cache-Group-Invalidation` on an answer to an unsafe request, tags kept
//! across a restart, and the bounds and bad input of a tag purge.

use crate::harness::origin::Origin;
use crate::harness::{
    get, kill_and_restart, media_pop, pop_with_cache, restartable_pop_with_cache, send, ADMIN_TOKEN,
};

/// The `purged` count of a purge report, or -1 when the answer is not one.
fn purged(body: &str) -> i64 {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|report| report["purged"].as_i64())
        .unwrap_or(-1)
}

#[tokio::test]
async fn a_tag_from_cache_groups_or_surrogate_key_purges_its_objects_before_and_after_a_restart() {
    let origin = Origin::start().await;
    let mut pop = restartable_pop_with_cache(&origin).await;
    let grouped = r#"/grouped?cc=public,max-age=600&h=Cache-Groups:"post-1", "user-2""#;
    let keyed = "/keyed?cc=public,max-age=600&h=Surrogate-Key:post-1%20user-3";
    let other = r#"/other?cc=public,max-age=600&h=Cache-Groups:"post-10""#;
    let plain = "/plain?cc=public,max-age=600";
    let all = [grouped, keyed, other, plain];
    for path in all {
        assert_eq!(
            get(pop.setup.http(), path, &[]).await.cache_status(),
            "MISS"
        );
    }
    let host = pop.setup.http().to_string();
    // Another host's tag is another tag.
    let (status, body) = pop.purge("tag=post-1&host=other.social").await;
    assert_eq!((status, purged(&body)), (200, 0), "{body}");
    let (status, body) = pop.purge(&format!("tag=post-1&host={host}")).await;
    assert_eq!((status, purged(&body)), (200, 2), "{body}");
    for (path, expected) in [
        (grouped, "MISS"),
        (keyed, "MISS"),
        (other, "HIT"),
        (plain, "HIT"),
    ] {
        let answer = get(pop.setup.http(), path, &[]).await;
        assert_eq!(answer.cache_status(), expected, "{path}");
    }
    // The tags are kept with the disk copies: after a restart (memory empty, disk entries
    // not yet read) a tag still finds them.
    kill_and_restart(&mut pop).await;
    let (status, body) = pop.purge("tag=user-2").await;
    assert_eq!((status, purged(&body)), (200, 1), "{body}");
    let (status, body) = pop.purge("tag=post-10").await;
    assert_eq!((status, purged(&body)), (200, 1), "{body}");
    for (path, expected) in [
        (grouped, "MISS"),
        (keyed, "HIT"),
        (other, "MISS"),
        (plain, "HIT"),
    ] {
        let answer = get(pop.setup.http(), path, &[]).await;
        assert_eq!(answer.cache_status(), expected, "{path}");
    }
    assert_eq!(
        pop.edge
            .metric("edgecache_cache_purged_objects_total{kind=\"tag\"}")
            .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn a_stale_copy_freshened_by_a_head_keeps_its_tags() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let http = pop.setup.http();
    let path = r#"/bytes/3000?cc=max-age=1&h=Cache-Groups:"g-head""#;
    assert_eq!(get(http, path, &[]).await.cache_status(), "MISS");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let answered = send(reqwest::Method::HEAD, http, path, &[]).await;
    assert_eq!(answered.cache_status(), "EXPIRED");
    assert_eq!(get(http, path, &[]).await.cache_status(), "HIT");
    let (status, body) = pop.purge("tag=g-head").await;
    assert_eq!((status, purged(&body)), (200, 1), "{body}");
    assert_eq!(get(http, path, &[]).await.cache_status(), "MISS");
}

#[tokio::test]
async fn media_paths_tag_every_style_of_a_record() {
    let media = media_pop(&["disk"], "/bytes/", &[], &[]).await;
    let http = media.pop.setup.http();
    let files = [
        "media_attachments/files/110/123/456/789/012/345/original/a.png",
        "media_attachments/files/110/123/456/789/012/345/small/a.png",
        "cache/media_attachments/files/110/123/456/789/012/345/original/b.png",
        "media_attachments/files/110/123/456/789/012/346/original/c.png",
        "accounts/avatars/000/000/001/original/me.png",
    ];
    for file in files {
        media.legacy_file(file, file.as_bytes());
        let answer = get(http, &format!("/system/{file}"), &[]).await;
        assert_eq!(
            (answer.status, answer.cache_status()),
            (200, "MISS"),
            "{file}"
        );
    }
    let (status, body) = media
        .pop
        .purge("tag=media_attachments:110123456789012345")
        .await;
    assert_eq!((status, purged(&body)), (200, 3), "{body}");
    for (file, expected) in files.iter().zip(["MISS", "MISS", "MISS", "HIT", "HIT"]) {
        let answer = get(http, &format!("/system/{file}"), &[]).await;
        assert_eq!(answer.cache_status(), expected, "{file}");
    }
    let (status, body) = media.pop.purge("tag=accounts:1").await;
    assert_eq!((status, purged(&body)), (200, 1), "{body}");
}

#[tokio::test]
async fn cache_group_invalidation_on_an_unsafe_requests_answer_purges_its_groups() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let http = pop.setup.http();
    let post = r#"/statuses/1?cc=public,max-age=600&h=Cache-Groups:"status-1""#;
    let context = r#"/statuses/1/context?cc=public,max-age=600&h=Cache-Groups:"status-1""#;
    let unrelated = r#"/statuses/2?cc=public,max-age=600&h=Cache-Groups:"status-2""#;
    for path in [post, context, unrelated] {
        get(http, path, &[]).await;
        assert_eq!(get(http, path, &[]).await.cache_status(), "HIT", "{path}");
    }
    // On an answer to a GET the field is ignored (RFC 9875 §3).
    let safe = r#"/elsewhere?h=Cache-Group-Invalidation:"status-1""#;
    get(http, safe, &[]).await;
    assert_eq!(get(http, post, &[]).await.cache_status(), "HIT");
    // An error answer to a POST invalidates nothing either.
    origin.fail_with(500);
    let failed = reqwest::Client::new()
        .post(format!(
            "http://{http}/api/v1/statuses/1/favourite?h=Cache-Group-Invalidation:%22status-1%22"
        ))
        .send()
        .await
        .expect("post");
    assert_eq!(failed.status(), 500);
    origin.fail_with(0);
    assert_eq!(get(http, post, &[]).await.cache_status(), "HIT");
    let favourited = reqwest::Client::new()
        .post(format!(
            "http://{http}/api/v1/statuses/1/favourite?h=Cache-Group-Invalidation:%22status-1%22,%20%22status-9%22"
        ))
        .send()
        .await
        .expect("post");
    assert_eq!(favourited.status(), 200);
    for (path, expected) in [(post, "MISS"), (context, "MISS"), (unrelated, "HIT")] {
        assert_eq!(
            get(http, path, &[]).await.cache_status(),
            expected,
            "{path}"
        );
    }
}

#[tokio::test]
async fn a_response_with_too_many_tags_is_not_stored_and_bad_tag_purges_are_refused() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let http = pop.setup.http();
    let keys: Vec<String> = (0..33).map(|n| format!("k{n}")).collect();
    let many = format!(
        "/many?cc=public,max-age=600&h=Surrogate-Key:{}",
        keys.join("%20")
    );
    let most = format!(
        "/most?cc=public,max-age=600&h=Surrogate-Key:{}",
        keys[..32].join("%20")
    );
    for _ in 0..2 {
        assert_eq!(get(http, &many, &[]).await.cache_status(), "MISS");
    }
    get(http, &most, &[]).await;
    assert_eq!(get(http, &most, &[]).await.cache_status(), "HIT");
    assert_eq!(
        pop.edge.metric("edgecache_cache_tags_refused_total").await,
        Some(2.0)
    );
    for query in [
        "tag=",
        "tag=caf%C3%A9",
        "tag=a&url=example.social%2Fx",
        "url=example.social%2Fx&host=example.social",
        "tag=a&host=exa%20mple",
        "tag=a&deleted=1",
    ] {
        let (status, body) = pop.purge(query).await;
        assert_eq!(status, 400, "{query}: {body}");
    }
    let long = "x".repeat(257);
    let (status, body) = pop.purge(&format!("tag={long}")).await;
    assert_eq!(status, 400, "{body}");
    // Without the token, no tag purge.
    let refused = reqwest::Client::new()
        .post(format!("http://{}/purge?tag=k1", pop.setup.admin()))
        .bearer_auth(format!("{ADMIN_TOKEN}-wrong"))
        .send()
        .await
        .expect("purge");
    assert_eq!(refused.status(), 401);
    assert_eq!(get(http, &most, &[]).await.cache_status(), "HIT");
}
