//! Leaf helpers on HTTP bytes, shared by the proxy, the cache, the media chain and the places:
//! the length a message states, the one spelling of a host, the media type a name implies.
//! It imports nothing of ours, so any part may use it without an arrow back.

/// The body length a `Content-Length` header states, if it states one plainly.
pub fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `raw` (a `Host` value or an authority) in the form the key uses.
pub fn normalize_host(raw: &str, tls: bool) -> Option<String> {
    let raw = raw.trim();
    if raw.is_empty() || raw.contains(['@', '/', ' ', '\\']) {
        return None;
    }
    let mut host = raw.to_ascii_lowercase();
    let default_port = if tls { ":443" } else { ":80" };
    if host.ends_with(default_port) && !host.ends_with("]") {
        host.truncate(host.len() - default_port.len());
    }
    if let Some(stripped) = host.strip_suffix('.') {
        host = stripped.to_string();
    }
    let host = host.replace(".:", ":");
    if host.is_empty() {
        return None;
    }
    Some(host)
}

/// The media type a file name implies; Mastodon's media are images, video and audio.
pub fn content_type_for(name: &str) -> &'static str {
    let extension = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "heic" => "image/heic",
        "svg" => "image/svg+xml",
        "ico" => "image/x-icon",
        "mp4" | "m4v" => "video/mp4",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        "mp3" => "audio/mpeg",
        "ogg" | "oga" => "audio/ogg",
        "opus" => "audio/opus",
        "m4a" => "audio/mp4",
        "wav" => "audio/wav",
        "flac" => "audio/flac",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "css" => "text/css",
        "js" => "text/javascript",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plain_length_is_a_length() {
        let with = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                http::header::CONTENT_LENGTH,
                http::HeaderValue::from_str(value).expect("value"),
            );
            content_length(&headers)
        };
        assert_eq!(with("42"), Some(42));
        assert_eq!(with(" 42 "), Some(42));
        assert_eq!(with("-1"), None);
        assert_eq!(with("4 2"), None);
        assert_eq!(content_length(&http::HeaderMap::new()), None);
    }

    #[test]
    fn hosts_take_one_spelling() {
        assert_eq!(
            normalize_host("Example.Social.:443", true).as_deref(),
            Some("example.social")
        );
        assert_eq!(
            normalize_host("example.social:80", true).as_deref(),
            Some("example.social:80")
        );
        assert_eq!(normalize_host("[::1]:443", true).as_deref(), Some("[::1]"));
        assert_eq!(normalize_host("a@b", false), None);
        assert_eq!(normalize_host(" ", false), None);
    }

    #[test]
    fn names_imply_their_media_type() {
        assert_eq!(content_type_for("a/b.JPG"), "image/jpeg");
        assert_eq!(content_type_for("clip.mp4"), "video/mp4");
        assert_eq!(content_type_for("noextension"), "application/octet-stream");
    }
}
