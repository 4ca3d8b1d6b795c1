//! The form the cache keys a media URL under, for purges: the route's path and the decoded
//! object key, without a query (see `request_cache_filter`). A purge of any spelling of a
//! file then removes the one object every spelling is served from. And whether media the
//! cache buster names is still in its write-through stores (then it was not deleted).

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::ProxySettings;
use crate::fleet::{CanonicalUrls, MediaPresence};
use crate::store::places::Places;
use crate::store::ObjectKey;

/// Reads the live routes, so a reload that adds or moves a media route applies at once;
/// asks the media places whether media is still stored.
pub struct MediaUrls {
    pub settings: Arc<ArcSwap<ProxySettings>>,
    /// `None` without stores.
    pub places: Option<Arc<Places>>,
}

impl MediaUrls {
    /// The scheme as written (or nothing), the host, the media route's path and the key.
    fn media_target<'u>(&self, url: &'u str) -> Option<(&'u str, &'u str, String, ObjectKey)> {
        let (scheme, rest) = ["https://", "http://"]
            .iter()
            .find_map(|s| url.strip_prefix(s).map(|rest| (*s, rest)))
            .unwrap_or(("", url));
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (host, target) = rest.split_at(split);
        let path = target.split('?').next().unwrap_or("");
        let settings = self.settings.load();
        let route = settings.sites.route(&host.to_ascii_lowercase(), path)?;
        route.media.as_ref()?;
        let key = ObjectKey::for_route(&route.path, path).ok()??;
        Some((scheme, host, route.path.clone(), key))
    }
}

#[async_trait::async_trait]
impl MediaPresence for MediaUrls {
    async fn still_stored(&self, url: &str) -> Option<bool> {
        let places = self.places.as_ref()?;
        let (_, host, route_path, key) = self.media_target(url)?;
        let write_through = {
            let settings = self.settings.load();
            let route = settings
                .sites
                .route(&host.to_ascii_lowercase(), &route_path)?;
            route.media.as_ref()?.write_through.clone()
        };
        if write_through.is_empty() {
            return None;
        }
        for name in &write_through {
            match places.store(name)?.head(&key).await {
                Ok(Some(_)) => return Some(true),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(store = %name, key = %key, error = %e, "cannot tell whether busted media is still stored");
                    return None;
                }
            }
        }
        Some(false)
    }
}

impl CanonicalUrls for MediaUrls {
    fn canonical(&self, url: &str) -> Option<String> {
        let (scheme, host, route_path, key) = self.media_target(url)?;
        Some(format!("{scheme}{host}{}", key.canonical_path(&route_path)))
    }

    fn media_key(&self, url: &str) -> Option<ObjectKey> {
        self.media_target(url).map(|(_, _, _, key)| key)
    }
}
