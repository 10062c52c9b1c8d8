//! The clusters pgtide serves now, config and created alike: what the shared endpoint routes
//! to, what the admin endpoint shows and acts on, and what the shutdown stops. One value shared
//! by `Arc` (no global state); a lock held only for a look-up or an insert. Listings keep the
//! order clusters came in: the config file's, then the created ones by age.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::cluster::ClusterHandle;
use crate::proxy::route::Directory;

/// Where a cluster comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A `[[clusters]]` entry of the config file: it lives and dies with the file.
    Config,
    /// Made at run time (`pgtide create`, `POST /clusters`) and kept in the catalog.
    Created,
}

/// A cluster as the registry holds it.
#[derive(Clone)]
pub struct Registered {
    pub handle: ClusterHandle,
    pub source: Source,
    /// When it was added, for the listings' order.
    added: u64,
}

/// Every cluster served, by name.
#[derive(Default)]
pub struct Registry {
    clusters: RwLock<BTreeMap<String, Registered>>,
    added: std::sync::atomic::AtomicU64,
    /// `[tenants] listen`, where clusters without a port of their own are reached.
    shared_listen: Option<SocketAddr>,
}

impl Registry {
    pub fn new(shared_listen: Option<SocketAddr>) -> Registry {
        Registry {
            clusters: RwLock::default(),
            added: Default::default(),
            shared_listen,
        }
    }

    /// Adds a cluster; `false` (and nothing added) when its name is taken.
    pub fn insert(&self, handle: ClusterHandle, source: Source) -> bool {
        let mut clusters = self.clusters.write().expect("registry lock");
        let name = handle.name().to_string();
        if clusters.contains_key(&name) {
            return false;
        }
        let added = self
            .added
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        clusters.insert(
            name,
            Registered {
                handle,
                source,
                added,
            },
        );
        true
    }

    pub fn get(&self, name: &str) -> Option<Registered> {
        self.clusters
            .read()
            .expect("registry lock")
            .get(name)
            .cloned()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.clusters
            .read()
            .expect("registry lock")
            .contains_key(name)
    }

    /// Takes a cluster out: clients can no longer be routed to it.
    pub fn remove(&self, name: &str) -> Option<Registered> {
        self.clusters.write().expect("registry lock").remove(name)
    }

    /// Every cluster, in the order they came in.
    pub fn all(&self) -> Vec<Registered> {
        let mut all: Vec<Registered> = self
            .clusters
            .read()
            .expect("registry lock")
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|registered| registered.added);
        all
    }

    /// Where clients reach `handle`'s cluster: its own port, else the shared endpoint.
    pub fn listen_of(&self, handle: &ClusterHandle) -> Option<SocketAddr> {
        handle.config().listen.or(self.shared_listen)
    }
}

impl Directory for Registry {
    fn find(&self, name: &str) -> Option<ClusterHandle> {
        self.get(name).map(|registered| registered.handle)
    }
}
