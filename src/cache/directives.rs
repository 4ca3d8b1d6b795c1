//! The caching directives a response gives this PoP (RFC 9111 §5.2, RFC 9213).
//!
//! A targeted field speaks to some caches only: our own (`cache.targeted_field`, default
//! `Edgecache-Cache-Control`, obeyed by edgecache PoPs alone) comes first, then
//! `CDN-Cache-Control`, which every CDN obeys. The first of them present and valid replaces
//! `Cache-Control` and `Expires` entirely for this cache; browsers keep reading
//! `Cache-Control`. A targeted field is a Structured Field dictionary (RFC 8941): one that
//! does not parse, or gives a known directive a value of the wrong type, is ignored whole,
//! as RFC 9213 §2.1 asks.

use std::time::Duration;

use http::HeaderName;
use pingora::cache::cache_control::CacheControl;
use pingora::http::ResponseHeader;

/// The largest lifetime believed (RFC 9111 §1.2.2).
const DELTA_CEILING: u64 = 1 << 31;

/// `CDN-Cache-Control` (RFC 9213 §3).
pub const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

/// What a response says of its caching, whichever field said it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    pub no_store: bool,
    pub private: bool,
    pub must_understand: bool,
    pub public: bool,
    /// Stored, but revalidated before every use.
    pub no_cache: bool,
    /// `s-maxage`, else `max-age`.
    pub max_age: Option<Duration>,
    pub s_maxage: bool,
    /// `must-revalidate` or `proxy-revalidate`.
    pub must_revalidate: bool,
    pub stale_while_revalidate: Option<Duration>,
    pub stale_if_error: Option<Duration>,
    /// From a targeted field: `Expires` does not count then.
    pub targeted: bool,
}

impl Directives {
    /// The directives of `Cache-Control`.
    pub fn from_cache_control(cc: &CacheControl) -> Directives {
        let seconds = |value: pingora::Result<Option<u32>>| {
            value
                .ok()
                .flatten()
                .map(|s| Duration::from_secs(u64::from(s)))
        };
        let s_maxage = seconds(cc.s_maxage());
        Directives {
            no_store: cc.no_store(),
            private: cc.private(),
            must_understand: cc.has_key("must-understand"),
            public: cc.public(),
            no_cache: cc.no_cache(),
            max_age: s_maxage.or_else(|| seconds(cc.max_age())),
            s_maxage: s_maxage.is_some(),
            must_revalidate: cc.must_revalidate() || cc.proxy_revalidate(),
            stale_while_revalidate: seconds(cc.stale_while_revalidate()),
            stale_if_error: seconds(cc.stale_if_error()),
            targeted: false,
        }
    }

    /// The directives of the first targeted field among `fields` that is present and valid.
    pub fn targeted(resp: &ResponseHeader, fields: &[HeaderName]) -> Option<Directives> {
        fields.iter().find_map(|field| {
            let mut lines = resp.headers.get_all(field).iter().peekable();
            lines.peek()?;
            let joined: Vec<u8> = lines
                .map(|line| line.as_bytes())
                .collect::<Vec<_>>()
                .join(&b", "[..]);
            parse_targeted(&joined)
        })
    }

    /// How long the response is fresh for, if the directives say: 0 with `no-cache`.
    pub fn lifetime(&self) -> Option<Duration> {
        if self.no_cache {
            return Some(Duration::ZERO);
        }
        self.max_age
    }

    /// Whether a stale copy must never be served without the origin's word (RFC 9111
    /// §5.2.2.2, §5.2.2.8, §5.2.2.10: `s-maxage` implies `proxy-revalidate`).
    pub fn forbids_stale(&self) -> bool {
        self.must_revalidate || self.no_cache || self.s_maxage
    }
}

/// A targeted field's value, or `None` when it is not a valid dictionary of directives.
fn parse_targeted(value: &[u8]) -> Option<Directives> {
    let dictionary = sfv::Parser::parse_dictionary(value).ok()?;
    // An empty field is no field (RFC 9213 §2.1 takes the first with a non-empty value).
    if dictionary.is_empty() {
        return None;
    }
    let mut directives = Directives {
        targeted: true,
        ..Directives::default()
    };
    for (name, entry) in &dictionary {
        let item = match entry {
            sfv::ListEntry::Item(item) => Some(&item.bare_item),
            sfv::ListEntry::InnerList(_) => None,
        };
        let seconds = || -> Option<Duration> {
            let n = item?.as_int()?;
            let n = u64::try_from(n).ok()?;
            Some(Duration::from_secs(n.min(DELTA_CEILING)))
        };
        // A flag is `?1`/`?0`; a field-name list (`private=("set-cookie")`) counts as
        // the whole response, which is the safe reading for a cache that does not strip.
        let flag = || -> Option<bool> {
            match item {
                Some(bare) => bare.as_bool(),
                None => Some(true),
            }
        };
        match name.as_str() {
            "max-age" => directives.max_age = directives.max_age.or(Some(seconds()?)),
            "s-maxage" => {
                directives.max_age = Some(seconds()?);
                directives.s_maxage = true;
            }
            "stale-while-revalidate" => directives.stale_while_revalidate = Some(seconds()?),
            "stale-if-error" => directives.stale_if_error = Some(seconds()?),
            "no-store" => directives.no_store = flag()?,
            "no-cache" => directives.no_cache = flag()?,
            "private" => directives.private = flag()?,
            "public" => directives.public = flag()?,
            "must-revalidate" | "proxy-revalidate" => {
                directives.must_revalidate |= flag()?;
            }
            "must-understand" => directives.must_understand = flag()?,
            // Directives of other caches, or of the future: not ours to follow.
            _ => {}
        }
    }
    Some(directives)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targeted(lines: &[(&str, &str)]) -> Option<Directives> {
        let mut resp = ResponseHeader::build(200, None).expect("response");
        for (name, value) in lines {
            resp.append_header(name.to_string(), *value)
                .expect("header");
        }
        let ours = HeaderName::from_static("edgecache-cache-control");
        Directives::targeted(&resp, &[ours, CDN_CACHE_CONTROL])
    }

    fn max_age(lines: &[(&str, &str)]) -> Option<u64> {
        targeted(lines)?.lifetime().map(|d| d.as_secs())
    }

    #[test]
    fn a_valid_dictionary_gives_its_directives() {
        let cdn = |value| max_age(&[("CDN-Cache-Control", value)]);
        assert_eq!(cdn("max-age=3600"), Some(3600));
        assert_eq!(cdn("foobar, max-age=3600"), Some(3600));
        assert_eq!(cdn("max-age=2147483648"), Some(1 << 31));
        assert_eq!(cdn("max-age=99999999999"), Some(1 << 31));
        assert_eq!(cdn("max-age=60, s-maxage=120"), Some(120));
        assert_eq!(cdn("max-age=60, no-cache"), Some(0));
        let d = targeted(&[("CDN-Cache-Control", "no-store, private, must-revalidate")])
            .expect("valid");
        assert!(d.no_store && d.private && d.must_revalidate && d.targeted);
        let d = targeted(&[("CDN-Cache-Control", "max-age=10, stale-if-error=60")]).expect("valid");
        assert_eq!(d.stale_if_error, Some(Duration::from_secs(60)));
        // Two lines are one list.
        assert_eq!(
            max_age(&[
                ("CDN-Cache-Control", "foo"),
                ("CDN-Cache-Control", "max-age=5")
            ]),
            Some(5)
        );
    }

    #[test]
    fn an_invalid_field_is_ignored_whole() {
        for value in [
            "max-age =100",
            "max-age= 100",
            "MaX-aGe=3600",
            "max-age=10000, &&&&&",
            "max-age=\"10000\"",
            "max-age=-1",
            "max-age=1.5",
            "no-store=3",
            "max-age=(1 2)",
        ] {
            assert_eq!(targeted(&[("CDN-Cache-Control", value)]), None, "{value:?}");
        }
        assert_eq!(targeted(&[]), None);
        assert_eq!(targeted(&[("CDN-Cache-Control", "")]), None);
        assert_eq!(targeted(&[("CDN-Cache-Control", "   ")]), None);
    }

    #[test]
    fn our_own_field_comes_first_and_an_invalid_one_gives_way() {
        let both = [
            ("CDN-Cache-Control", "max-age=60"),
            ("Edgecache-Cache-Control", "max-age=86400"),
        ];
        assert_eq!(max_age(&both), Some(86400));
        let broken = [
            ("CDN-Cache-Control", "max-age=60"),
            ("Edgecache-Cache-Control", "max-age=oops"),
        ];
        assert_eq!(max_age(&broken), Some(60));
    }

    #[test]
    fn cache_control_reads_the_same_way() {
        let mut resp = ResponseHeader::build(200, None).expect("response");
        resp.append_header(
            "Cache-Control",
            "max-age=60, s-maxage=120, proxy-revalidate, stale-if-error=5",
        )
        .expect("header");
        let cc = CacheControl::from_resp_headers(&resp).expect("parsed");
        let d = Directives::from_cache_control(&cc);
        assert_eq!(d.lifetime(), Some(Duration::from_secs(120)));
        assert!(d.s_maxage && d.must_revalidate && d.forbids_stale() && !d.targeted);
        assert_eq!(d.stale_if_error, Some(Duration::from_secs(5)));
    }
}
