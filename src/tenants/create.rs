//! Creating a cluster at run time: check the name and the values, claim the name in the
//! catalog, start the cluster's task, and answer once its compute runs. The data directory is
//! the warm pool's initialised template, renamed into place by the runtime's start (no initdb
//! on the way); with copies on, the start takes the first base backup before it reports
//! running, so a created cluster can always be rebuilt.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::catalog::{CatalogEntry, CatalogUser};
use super::registry::Source;
use super::{name, TenantError, Tenants};
use crate::cluster::Initially;
use crate::config::PoolMode;
use crate::proxy::scram::ScramVerifier;

/// The cluster's first user: its superuser, as in any fresh Postgres.
pub const FIRST_USER: &str = "postgres";
/// Defaults of a created cluster: scale to zero after five minutes, up to two ACUs.
pub const DEFAULT_MAX_ACU: f64 = 2.0;
const DEFAULT_AUTO_PAUSE_AFTER: Duration = Duration::from_secs(300);
/// Characters of a password made up for the caller.
const GENERATED_PASSWORD_LEN: usize = 24;

/// What `POST /clusters` takes (and `pgtide create` sends).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub name: String,
    pub min_acu: Option<f64>,
    pub max_acu: Option<f64>,
    pub pool_mode: Option<PoolMode>,
    /// A humantime duration: `90s`, `5m`, `1h`.
    pub auto_pause_after: Option<String>,
    /// The `postgres` user's password; one is made up (and shown once) when none is given.
    pub password: Option<String>,
}

/// What a create answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Created {
    pub name: String,
    pub user: String,
    /// Only when pgtide made it up: it is not kept anywhere, so this is the one time it is shown.
    pub password: Option<String>,
    /// Where clients connect (the shared endpoint), if pgtide has one.
    pub listen: Option<String>,
    /// From the request to a running compute.
    pub started_ms: u64,
}

impl Tenants {
    pub async fn create(&self, request: CreateRequest) -> Result<Created, TenantError> {
        let started = Instant::now();
        name::check(&request.name)?;
        let mut catalog = self.catalog.lock().await;
        let name = request.name.clone();
        if self.registry.contains(&name) || catalog.get(&name).is_some() {
            return Err(TenantError::Exists(name));
        }
        self.refuse_leftovers(&name)?;
        let (password, generated) = match &request.password {
            Some(password) if password.is_empty() => {
                return Err(TenantError::Invalid(
                    "the password must not be empty".into(),
                ))
            }
            Some(password) => (password.clone(), false),
            None => (generate_password(), true),
        };
        let entry = CatalogEntry {
            name: name.clone(),
            min_acu: request.min_acu.unwrap_or(0.0),
            max_acu: request.max_acu.unwrap_or(DEFAULT_MAX_ACU),
            pool_mode: request.pool_mode.unwrap_or(PoolMode::Session),
            auto_pause_after: match &request.auto_pause_after {
                Some(text) => humantime::parse_duration(text).map_err(|e| {
                    TenantError::Invalid(format!("auto_pause_after \"{text}\": {e}"))
                })?,
                None => DEFAULT_AUTO_PAUSE_AFTER,
            },
            created_at: crate::cluster::now_rfc3339(),
            users: vec![CatalogUser {
                name: FIRST_USER.to_string(),
                verifier: ScramVerifier::from_password(&password).to_text(),
                superuser: true,
            }],
        };
        let config = entry.cluster_config();
        config
            .check_capacity(self.spawner.capacity.step_acu)
            .map_err(|(key, message)| TenantError::Invalid(format!("{key}: {message}")))?;
        // Claimed in the catalog first: a crash from here on leaves a cluster that the next
        // start serves (paused), never data that no entry names.
        catalog
            .add(entry)
            .map_err(|e| TenantError::Storage(format!("saving the catalog: {e}")))?;
        let handle = self.spawner.spawn(config, Initially::Paused);
        self.registry.insert(handle.clone(), Source::Created);
        tracing::info!(cluster = %name, "cluster created; starting its compute");
        if let Err(e) = handle.resume("pgtide create").await {
            tracing::error!(cluster = %name, error = %e, "the new cluster did not start; dropping it");
            let _ = self.drop_locked(&mut catalog, &name, false).await;
            return Err(TenantError::Unavailable(e.to_string()));
        }
        Ok(Created {
            name,
            user: FIRST_USER.to_string(),
            password: generated.then_some(password),
            listen: self.registry.listen_of(&handle).map(|l| l.to_string()),
            started_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// A name whose data is still on disk (a config cluster taken out of the file, a drop cut
    /// short) is refused: the new cluster would start on someone else's data.
    pub(super) fn refuse_leftovers(&self, name: &str) -> Result<(), TenantError> {
        let mut dirs = vec![self.spawner.cluster_dir(name)];
        dirs.extend(self.spawner.copy_dirs(name));
        match dirs.iter().find(|dir| dir.exists()) {
            Some(dir) => Err(TenantError::DataLeft(name.to_string(), dir.clone())),
            None => Ok(()),
        }
    }
}

fn generate_password() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), GENERATED_PASSWORD_LEN)
}
