//! Cache tags: names a stored response is grouped under, so that one purge removes every
//! response that carries a name, wherever its URL.
//!
//! A response gets its tags from the fields its origin sends, `Cache-Groups` (RFC 9875, a
//! List of Strings) and the older `Surrogate-Key` (names separated by spaces), and, on media
//! routes, from the path where Mastodon's layout names the record the file belongs to
//! (`media_attachments/files/110/123/456/original/x.png` is `media_attachments:110123456`).
//! A tag counts within its host only: RFC 9875 groups responses of one origin, and one
//! site's origin must not be able to purge another site's objects.
//!
//! Tags are bounded: a response that names more than [`MAX_TAGS`], or one longer than
//! [`MAX_TAG_LEN`], is not stored at all, since a copy the index could not find would
//! outlive the purge meant for it.

use std::hash::BuildHasher as _;
use std::sync::Arc;

use pingora::http::ResponseHeader;

/// RFC 9875's field naming the groups a response belongs to.
pub const CACHE_GROUPS: &str = "cache-groups";
/// RFC 9875's field on an answer to an unsafe request naming groups to invalidate.
pub const CACHE_GROUP_INVALIDATION: &str = "cache-group-invalidation";
/// The common CDN field naming a response's keys, separated by spaces.
pub const SURROGATE_KEY: &str = "surrogate-key";
/// Tags one stored response may carry (RFC 9875 asks caches to support at least 32).
pub const MAX_TAGS: usize = 32;
/// Bytes one tag may have.
pub const MAX_TAG_LEN: usize = 256;

/// The tags of one stored response: sorted, without repeats, each within the bounds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tags(Option<Arc<[Box<str>]>>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    #[error("more than {MAX_TAGS} cache tags")]
    TooMany,
    #[error("a cache tag longer than {MAX_TAG_LEN} bytes")]
    TooLong,
    #[error("a cache tag that is empty or not visible ASCII")]
    BadCharacter,
}

impl Tags {
    /// Tags from names in any order, with repeats; each must be a valid tag.
    pub fn new<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Result<Tags, TagError> {
        let mut tags: Vec<Box<str>> = Vec::new();
        for name in names {
            let name = name.as_ref();
            check_tag(name)?;
            tags.push(name.into());
            // Checked as it grows, so a field of thousands of names is never collected whole.
            if tags.len() > MAX_TAGS * 2 {
                tags.sort_unstable();
                tags.dedup();
                if tags.len() > MAX_TAGS {
                    return Err(TagError::TooMany);
                }
            }
        }
        tags.sort_unstable();
        tags.dedup();
        if tags.len() > MAX_TAGS {
            return Err(TagError::TooMany);
        }
        Ok(Tags((!tags.is_empty()).then(|| Arc::from(tags))))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().flat_map(|tags| tags.iter().map(|t| &**t))
    }

    pub fn contains(&self, tag: &str) -> bool {
        self.0
            .as_ref()
            .is_some_and(|tags| tags.binary_search_by(|t| (**t).cmp(tag)).is_ok())
    }

    /// Each tag's hash, as the indexes keep them.
    pub fn hashes(&self) -> Box<[u64]> {
        self.iter().map(tag_hash).collect()
    }

    /// Bytes these tags take, roughly, for the memory tier's weight.
    pub fn weight(&self) -> usize {
        self.iter().map(|t| t.len() + 24).sum()
    }
}

/// The hash an index files a tag under: SipHash with keys drawn at start, so that nobody
/// outside can make two tags collide (the disk tier's index knows only the hashes; the
/// memory tier checks each object's own tags as well). The indexes live in memory, so the
/// hashes never need to agree between runs.
pub fn tag_hash(tag: &str) -> u64 {
    static KEYS: std::sync::LazyLock<std::hash::RandomState> =
        std::sync::LazyLock::new(std::hash::RandomState::new);
    KEYS.hash_one(tag)
}

/// Whether `tag` may be a tag: 1 to [`MAX_TAG_LEN`] bytes of visible ASCII or space (what
/// an RFC 8941 String may hold).
pub fn check_tag(tag: &str) -> Result<(), TagError> {
    if tag.len() > MAX_TAG_LEN {
        return Err(TagError::TooLong);
    }
    if tag.is_empty() || !tag.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(TagError::BadCharacter);
    }
    Ok(())
}

/// The tags a response names in `Cache-Groups` and `Surrogate-Key`, with `derived` ones
/// (from the path) added.
pub fn of_response(
    resp: &ResponseHeader,
    derived: impl IntoIterator<Item = String>,
) -> Result<Tags, TagError> {
    let groups = group_list(resp, CACHE_GROUPS);
    let keys = resp
        .headers
        .get_all(SURROGATE_KEY)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split_ascii_whitespace())
        .map(str::to_string);
    Tags::new(groups.into_iter().chain(keys).chain(derived))
}

/// The Strings of a List field such as `Cache-Groups` (all its lines, as one list). A field
/// that is not a valid List is ignored whole, as RFC 8941 says; members that are not
/// Strings, and parameters, are ignored (RFC 9875 §2).
pub fn group_list(resp: &ResponseHeader, name: &str) -> Vec<String> {
    let mut joined = Vec::new();
    for value in resp.headers.get_all(name) {
        if !joined.is_empty() {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    if joined.is_empty() {
        return Vec::new();
    }
    let Ok(list) = sfv::Parser::parse_list(&joined) else {
        return Vec::new();
    };
    list.into_iter()
        .filter_map(|entry| match entry {
            sfv::ListEntry::Item(item) => item.bare_item.as_str().map(str::to_string),
            sfv::ListEntry::InnerList(_) => None,
        })
        .collect()
}

/// The tag Mastodon's layout gives a media file's path: its record's class and id, read
/// from `<class>/<attachment>/<id in groups of three digits>/<style>/<file>` anywhere in the
/// path (`cache/` before it for remote media, a bucket prefix, ...). Every style of every
/// attachment of one record shares it: `accounts:1` covers an account's avatar and header.
pub fn mastodon_media_tag(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.split('/').collect();
    let is_group = |s: &&str| s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit());
    // The id's groups end two segments before the end: a style, then the file name.
    let end = segments.len().checked_sub(2)?;
    let start = segments[..end]
        .iter()
        .rposition(|s| !is_group(s))
        .map_or(0, |i| i + 1);
    // Paperclip pads ids to at least nine digits, so three groups at least.
    if end - start < 3 || start < 2 {
        return None;
    }
    let class = segments[start - 2];
    if class.is_empty() || segments[start - 1].is_empty() || segments[end].is_empty() {
        return None;
    }
    let digits: String = segments[start..end].concat();
    let id = digits.trim_start_matches('0');
    let id = if id.is_empty() { "0" } else { id };
    let tag = format!("{class}:{id}");
    check_tag(&tag).ok()?;
    Some(tag)
}

/// The host part of a cache key URL (`https://host/path`).
pub fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

/// Whether an object stored under `url` with `tags` is one a purge of `tag` on `host` (or
/// on every host) removes.
pub fn purge_matches(tags: &Tags, url: &str, tag: &str, host: Option<&str>) -> bool {
    tags.contains(tag) && host.is_none_or(|h| url_host(url).eq_ignore_ascii_case(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(fields: &[(&str, &str)]) -> ResponseHeader {
        let mut resp = ResponseHeader::build(200, None).expect("status");
        for (name, value) in fields {
            resp.append_header(name.to_string(), *value).expect("field");
        }
        resp
    }

    fn names(tags: &Tags) -> Vec<&str> {
        tags.iter().collect()
    }

    #[test]
    fn cache_groups_are_strings_of_a_list_over_every_line() {
        let resp = response(&[
            (CACHE_GROUPS, r#""scripts", "styles";a=1"#),
            (CACHE_GROUPS, r#""a \"b\"", tok, 1, ("inner")"#),
        ]);
        let tags = of_response(&resp, []).expect("tags");
        assert_eq!(names(&tags), vec![r#"a "b""#, "scripts", "styles"]);
    }

    #[test]
    fn an_invalid_cache_groups_field_is_ignored_whole() {
        let resp = response(&[(CACHE_GROUPS, r#""ok", "unterminated"#)]);
        assert!(of_response(&resp, []).expect("tags").is_empty());
    }

    #[test]
    fn surrogate_keys_and_derived_tags_join_the_groups_once_each() {
        let resp = response(&[
            (SURROGATE_KEY, "  post-1 user-2\tpost-1 "),
            (CACHE_GROUPS, r#""post-1""#),
        ]);
        let tags = of_response(&resp, ["accounts:2".to_string()]).expect("tags");
        assert_eq!(names(&tags), vec!["accounts:2", "post-1", "user-2"]);
        assert!(tags.contains("user-2") && !tags.contains("user"));
    }

    #[test]
    fn too_many_or_too_long_tags_are_refused() {
        let many: Vec<String> = (0..=MAX_TAGS).map(|i| format!("k{i}")).collect();
        let resp = response(&[(SURROGATE_KEY, &many.join(" "))]);
        assert_eq!(of_response(&resp, []), Err(TagError::TooMany));
        let thousands: Vec<String> = (0..5000).map(|i| format!("k{i}")).collect();
        let resp = response(&[(SURROGATE_KEY, &thousands.join(" "))]);
        assert_eq!(of_response(&resp, []), Err(TagError::TooMany));
        let repeated = vec!["same"; 500].join(" ");
        let resp = response(&[(SURROGATE_KEY, &repeated)]);
        assert_eq!(names(&of_response(&resp, []).expect("one tag")), ["same"]);
        let long = "x".repeat(MAX_TAG_LEN + 1);
        let resp = response(&[(SURROGATE_KEY, &long)]);
        assert_eq!(of_response(&resp, []), Err(TagError::TooLong));
        assert_eq!(check_tag(""), Err(TagError::BadCharacter));
        assert_eq!(check_tag("a\u{e9}"), Err(TagError::BadCharacter));
    }

    #[test]
    fn mastodon_paths_name_their_record() {
        let cases = [
            (
                "media_attachments/files/110/123/456/789/012/345/original/a.png",
                Some("media_attachments:110123456789012345"),
            ),
            (
                "cache/media_attachments/files/110/123/456/small/a.png",
                Some("media_attachments:110123456"),
            ),
            (
                "accounts/avatars/000/000/001/original/me.jpg",
                Some("accounts:1"),
            ),
            (
                "system/accounts/headers/000/000/001/static/me.png",
                Some("accounts:1"),
            ),
            (
                "custom_emojis/images/000/000/000/static/e.png",
                Some("custom_emojis:0"),
            ),
            // Too few groups, a group of four digits, no style, nothing before the id.
            ("media_attachments/files/110/123/original/a.png", None),
            ("media_attachments/files/1100/123/456/original/a.png", None),
            ("media_attachments/files/110/123/456/a.png", None),
            ("110/123/456/original/a.png", None),
            ("a/b", None),
            ("", None),
        ];
        for (path, tag) in cases {
            assert_eq!(mastodon_media_tag(path).as_deref(), tag, "{path}");
        }
    }

    #[test]
    fn a_purge_matches_its_tag_on_its_host_only() {
        let tags = Tags::new(["post-1"]).expect("tags");
        let url = "https://example.social/x";
        assert!(purge_matches(&tags, url, "post-1", None));
        assert!(purge_matches(&tags, url, "post-1", Some("Example.Social")));
        assert!(!purge_matches(&tags, url, "post-1", Some("other.social")));
        assert!(!purge_matches(&tags, url, "post-2", None));
        assert_eq!(url_host("http://a.b:8080/p/q"), "a.b:8080");
    }
}
