//! The `Cache-Status` field (RFC 9211): one entry per cache on the way, each saying how that
//! cache handled the request. Ours is appended after any the core's side sent, so the last
//! entry is the cache nearest the client.

use std::fmt::{self, Write};

/// Why this cache sent the request on (RFC 9211 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// Nothing was stored for the URL.
    UriMiss,
    /// Something was stored for the URL, but not for this request's selecting headers.
    VaryMiss,
    /// What was stored was stale.
    Stale,
    /// The cache does not handle this request (a method, a user's credentials, a route).
    Bypass,
}

impl Forward {
    fn as_str(self) -> &'static str {
        match self {
            Forward::UriMiss => "uri-miss",
            Forward::VaryMiss => "vary-miss",
            Forward::Stale => "stale",
            Forward::Bypass => "bypass",
        }
    }
}

/// One cache's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The cache's name: a token when it is one, a quoted string otherwise.
    pub name: &'a str,
    /// `None`: a hit, answered without going forward.
    pub forward: Option<Forward>,
    /// The status the next hop answered with, when the request went forward.
    pub forward_status: Option<u16>,
    /// Seconds the response stays fresh here; negative when it is served stale.
    pub ttl: Option<i64>,
    /// The response was stored.
    pub stored: bool,
    /// The request waited for another request's fetch of the same object.
    pub collapsed: bool,
    /// The cache key, shown only when the PoP is configured to.
    pub key: Option<&'a str>,
}

impl fmt::Display for Entry<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_token(self.name) {
            f.write_str(self.name)?;
        } else {
            write_string(f, self.name)?;
        }
        match self.forward {
            None => f.write_str("; hit")?,
            Some(forward) => write!(f, "; fwd={}", forward.as_str())?,
        }
        if let Some(status) = self.forward_status {
            write!(f, "; fwd-status={status}")?;
        }
        if self.stored {
            f.write_str("; stored")?;
        }
        if self.collapsed {
            f.write_str("; collapsed")?;
        }
        if let Some(ttl) = self.ttl {
            write!(f, "; ttl={ttl}")?;
        }
        if let Some(key) = self.key {
            f.write_str("; key=")?;
            write_string(f, key)?;
        }
        Ok(())
    }
}

/// An RFC 8941 token: a letter or `*`, then token characters, `:` or `/`.
fn is_token(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'*');
    first_ok && bytes.all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b))
}

/// An RFC 8941 string: printable ASCII, `"` and `\` escaped; anything else (which a key
/// built from a URL does not hold) is percent-encoded so the field stays valid.
fn write_string(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    f.write_char('"')?;
    for byte in text.bytes() {
        match byte {
            b'"' | b'\\' => {
                f.write_char('\\')?;
                f.write_char(char::from(byte))?;
            }
            0x20..=0x7e => f.write_char(char::from(byte))?,
            _ => write!(f, "%{byte:02X}")?,
        }
    }
    f.write_char('"')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            name: "fra",
            forward: None,
            forward_status: None,
            ttl: None,
            stored: false,
            collapsed: false,
            key: None,
        }
    }

    #[test]
    fn entries_read_as_rfc_9211_writes_them() {
        let hit = Entry {
            ttl: Some(376),
            ..entry()
        };
        assert_eq!(hit.to_string(), "fra; hit; ttl=376");
        let miss = Entry {
            forward: Some(Forward::UriMiss),
            forward_status: Some(200),
            stored: true,
            ttl: Some(600),
            ..entry()
        };
        assert_eq!(
            miss.to_string(),
            "fra; fwd=uri-miss; fwd-status=200; stored; ttl=600"
        );
        let stale = Entry {
            forward: Some(Forward::Stale),
            forward_status: Some(503),
            ttl: Some(-12),
            ..entry()
        };
        assert_eq!(stale.to_string(), "fra; fwd=stale; fwd-status=503; ttl=-12");
        let waited = Entry {
            forward: Some(Forward::VaryMiss),
            collapsed: true,
            ..entry()
        };
        assert_eq!(waited.to_string(), "fra; fwd=vary-miss; collapsed");
        let bypass = Entry {
            forward: Some(Forward::Bypass),
            forward_status: Some(302),
            ..entry()
        };
        assert_eq!(bypass.to_string(), "fra; fwd=bypass; fwd-status=302");
    }

    #[test]
    fn names_and_keys_stay_valid_structured_fields() {
        let named = |name| Entry { name, ..entry() }.to_string();
        assert_eq!(named("edge-fra.example"), "edge-fra.example; hit");
        assert_eq!(named("PoP Frankfurt"), "\"PoP Frankfurt\"; hit");
        assert_eq!(named("1st"), "\"1st\"; hit");
        let keyed = Entry {
            key: Some("https://a.example/x?q=\"\\\u{e9}"),
            ..entry()
        };
        assert_eq!(
            keyed.to_string(),
            "fra; hit; key=\"https://a.example/x?q=\\\"\\\\%C3%A9\""
        );
        // What we write parses as a list of items with parameters.
        for text in [keyed.to_string(), named("PoP Frankfurt")] {
            assert!(sfv::Parser::parse_list(text.as_bytes()).is_ok(), "{text}");
        }
    }
}
