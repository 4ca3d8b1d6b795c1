//! The registry of places: every configured store and legacy origin by name, each with its
//! guard (concurrency limit and breaker). Built once at start; the media chain asks the
//! places a route lists, write-through and `edgecache migrate` take the object stores.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::config::model::{StoreKind, StoreSettings};

use super::directory::DirectoryStore;
use super::guard::{Admission, Guard};
use super::http::HttpSource;
use super::s3::S3Store;
use super::{ObjectStore, Place, Source, StoreError};

/// A place with its protection.
pub struct GuardedPlace {
    pub place: Place,
    guard: Arc<Guard>,
}

impl GuardedPlace {
    /// A slot to ask the place, or `None` when its guard sheds the request.
    pub fn admit(&self) -> Option<Admission> {
        self.guard.admit()
    }
}

/// Every configured place, by name; built once at start.
#[derive(Default)]
pub struct Places {
    by_name: HashMap<String, GuardedPlace>,
}

impl Places {
    pub fn build(stores: &BTreeMap<String, StoreSettings>) -> Result<Places, StoreError> {
        let mut by_name = HashMap::new();
        for (name, settings) in stores {
            let place = match &settings.kind {
                StoreKind::S3(s3) => Place::Store(Arc::new(S3Store::new(s3))),
                StoreKind::Directory { path } => Place::Store(Arc::new(DirectoryStore::new(
                    name,
                    path.clone(),
                    settings.timeout,
                    settings.max_concurrency,
                ))),
                StoreKind::Http { url } => {
                    Place::Legacy(Arc::new(HttpSource::new(name, url, settings.timeout)?))
                }
            };
            let guard = Arc::new(Guard::new(name, settings.max_concurrency, settings.breaker));
            by_name.insert(name.clone(), GuardedPlace { place, guard });
        }
        Ok(Places { by_name })
    }

    /// The writable store of that name.
    /// The names of the places that are object stores (write-through may target them).
    pub fn store_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .by_name
            .iter()
            .filter(|(_, guarded)| matches!(guarded.place, Place::Store(_)))
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }

    pub fn store(&self, name: &str) -> Option<Arc<dyn ObjectStore>> {
        match &self.by_name.get(name)?.place {
            Place::Store(store) => Some(store.clone()),
            Place::Legacy(_) => None,
        }
    }

    /// The place of that name, for reading.
    pub fn source(&self, name: &str) -> Option<Arc<dyn Source>> {
        match &self.by_name.get(name)?.place {
            Place::Store(store) => Some(store.clone() as Arc<dyn Source>),
            Place::Legacy(source) => Some(source.clone()),
        }
    }

    /// The place of that name with its guard.
    pub fn guarded(&self, name: &str) -> Option<&GuardedPlace> {
        self.by_name.get(name)
    }
}
