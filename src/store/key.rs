//! Object keys, checked once so that no store or directory ever sees one that could escape
//! its bucket prefix or root directory.
//!
//! A key comes from a request path with the route's prefix taken off. It is percent-decoded
//! and must then be a plain relative path: segments that are not empty, `.` or `..`, no
//! backslash or control character, and no slash that arrived encoded (`%2F`), since an
//! encoded slash is how a path smuggles a separator past a check done before decoding.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the object key is empty")]
    Empty,
    #[error("the object key has a malformed percent escape")]
    BadEscape,
    #[error("the object key is not UTF-8")]
    NotUtf8,
    #[error("the object key has an encoded separator")]
    EncodedSeparator,
    #[error("the object key has an empty, `.` or `..` segment")]
    BadSegment,
    #[error("the object key has a backslash or control character")]
    BadCharacter,
    #[error("the object key is longer than 1024 bytes")]
    TooLong,
}

/// S3's limit on key length.
const MAX_KEY_BYTES: usize = 1024;

impl ObjectKey {
    /// The key for a request path remainder as it came on the wire (percent-encoded),
    /// without a leading `/` (one there is an empty segment, like `//etc/passwd`).
    pub fn from_url_path(raw: &str) -> Result<ObjectKey, KeyError> {
        let mut decoded = Vec::with_capacity(raw.len());
        let mut bytes = raw.bytes();
        while let Some(b) = bytes.next() {
            if b == b'%' {
                let hi = bytes.next().and_then(hex_value);
                let lo = bytes.next().and_then(hex_value);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(KeyError::BadEscape);
                };
                let byte = hi << 4 | lo;
                if byte == b'/' || byte == b'\\' {
                    return Err(KeyError::EncodedSeparator);
                }
                decoded.push(byte);
            } else {
                decoded.push(b);
            }
        }
        let key = String::from_utf8(decoded).map_err(|_| KeyError::NotUtf8)?;
        ObjectKey::new(key)
    }

    /// The key a media route at `route_path` serves for a request `path` (percent-encoded,
    /// without its query): what follows the route's path, so `/system/a.png` under
    /// `/system/` or `/system` is `a.png`. `Ok(None)` when the path is not under the route
    /// at all (`/systemx` under `/system`).
    pub fn for_route(route_path: &str, path: &str) -> Result<Option<ObjectKey>, KeyError> {
        let rest = path.get(route_path.len()..).unwrap_or("");
        let rest = if route_path.ends_with('/') {
            rest
        } else if let Some(rest) = rest.strip_prefix('/') {
            rest
        } else {
            return Ok(None);
        };
        ObjectKey::from_url_path(rest).map(Some)
    }

    /// The one request path of this key under a media route at `route_path`: every
    /// spelling of it (escapes, a query) is this object, cached and purged under this path.
    pub fn canonical_path(&self, route_path: &str) -> String {
        let separator = if route_path.ends_with('/') { "" } else { "/" };
        format!("{route_path}{separator}{}", self.url_path())
    }

    /// A key already decoded (a line of a key list, a file found by walking a directory).
    pub fn new(key: String) -> Result<ObjectKey, KeyError> {
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(KeyError::TooLong);
        }
        if key.chars().any(|c| c == '\\' || c.is_control()) {
            return Err(KeyError::BadCharacter);
        }
        if key
            .split('/')
            .any(|segment| segment.is_empty() || segment == "." || segment == "..")
        {
            return Err(KeyError::BadSegment);
        }
        Ok(ObjectKey(key))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key percent-encoded for a URL path (segments kept, everything but unreserved
    /// characters escaped).
    pub fn url_path(&self) -> String {
        let mut out = String::with_capacity(self.0.len());
        for b in self.0.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{KeyError, ObjectKey};

    #[test]
    fn a_route_path_keys_every_spelling_of_a_file_alike() {
        let key = |route: &str, path: &str| ObjectKey::for_route(route, path);
        let plain = key("/system/", "/system/a/x.png")
            .expect("valid")
            .expect("under");
        assert_eq!(plain.as_str(), "a/x.png");
        assert_eq!(
            key("/system/", "/system/a/%78.png"),
            Ok(Some(plain.clone()))
        );
        assert_eq!(key("/system", "/system/a/x.png"), Ok(Some(plain.clone())));
        assert_eq!(key("/system", "/systemx/a.png"), Ok(None));
        assert_eq!(
            key("/system/", "/system//a/x.png"),
            Err(KeyError::BadSegment)
        );
        assert_eq!(plain.canonical_path("/system/"), "/system/a/x.png");
        assert_eq!(plain.canonical_path("/system"), "/system/a/x.png");
        let spaced = key("/m/", "/m/a%20b.png").expect("valid").expect("under");
        assert_eq!(spaced.canonical_path("/m/"), "/m/a%20b.png");
        assert_eq!(key("/m/", &spaced.canonical_path("/m/")), Ok(Some(spaced)));
    }

    #[test]
    fn plain_media_paths_become_keys() {
        let key = ObjectKey::from_url_path("media_attachments/files/109/a%20b.png").expect("key");
        assert_eq!(key.as_str(), "media_attachments/files/109/a b.png");
        assert_eq!(key.url_path(), "media_attachments/files/109/a%20b.png");
    }

    #[test]
    fn keys_that_could_escape_are_refused() {
        for (path, error) in [
            ("a/../b", KeyError::BadSegment),
            ("a/%2e%2e/b", KeyError::BadSegment),
            ("..", KeyError::BadSegment),
            ("a//b", KeyError::BadSegment),
            ("/etc/passwd", KeyError::BadSegment),
            ("a/./b", KeyError::BadSegment),
            ("a%2f..%2fb", KeyError::EncodedSeparator),
            ("a%5c..%5cb", KeyError::EncodedSeparator),
            ("a\\b", KeyError::BadCharacter),
            ("a%00b", KeyError::BadCharacter),
            ("a%zz", KeyError::BadEscape),
            ("a%2", KeyError::BadEscape),
            ("%ff", KeyError::NotUtf8),
            ("", KeyError::Empty),
            ("a/", KeyError::BadSegment),
        ] {
            assert_eq!(ObjectKey::from_url_path(path), Err(error), "{path}");
        }
        assert_eq!(
            ObjectKey::from_url_path(&"a".repeat(1025)),
            Err(KeyError::TooLong)
        );
    }
}
