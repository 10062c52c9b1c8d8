//! A restore in place: the cluster itself goes back to a moment or an LSN, and the state it had
//! is kept as a cluster of its own, so that nothing is lost. Made of a branch and two renames:
//! the branch at the target is made beside the cluster (under `NAME-restoring`), then the
//! cluster is renamed to the kept name (`NAME-before-<unix seconds>` unless one is given) and
//! the branch takes the cluster's name ([`crate::tenants::Tenants::rename`]). Connected clients
//! get 57P01 when the swap stops the cluster; the next client resumes the restored data. Only
//! for created clusters: a config cluster's name and endpoint belong to the file.

use serde::{Deserialize, Serialize};

use super::{branch, BranchError, BranchRequest};
use crate::tenants::Tenants;

/// What `POST /clusters/NAME/restore` takes (and `pgtide restore NAME --in-place` sends).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    pub at: Option<String>,
    pub lsn: Option<String>,
    /// The name the state before the restore is kept under.
    pub keep_as: Option<String>,
}

/// What a restore in place answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoredInPlace {
    pub name: String,
    pub target: String,
    /// The cluster that holds the state from before the restore.
    pub kept_as: String,
    pub base_backup: String,
    pub promoted_at: String,
}

/// The suffix of the branch made before the swap.
const RESTORING: &str = "-restoring";

pub async fn restore_in_place(
    tenants: &Tenants,
    name: &str,
    request: RestoreRequest,
) -> Result<RestoredInPlace, BranchError> {
    tenants.find(name)?;
    if tenants.catalog_entry(name).await.is_none() {
        return Err(BranchError::Unsupported(format!(
            "cluster \"{name}\" is defined in the config file and cannot be restored in place; \
             restore it to a new cluster with --to"
        )));
    }
    if request.at.is_none() && request.lsn.is_none() {
        return Err(BranchError::Invalid(
            "a restore in place needs a time (at) or an LSN (lsn)".into(),
        ));
    }
    let kept_as = request.keep_as.clone().unwrap_or_else(|| {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!("{name}-before-{stamp}")
    });
    tenants.check_new_name(&kept_as).await?;
    let restoring = format!("{name}{RESTORING}");
    let branched = branch(
        tenants,
        name,
        BranchRequest {
            name: restoring.clone(),
            at: request.at,
            lsn: request.lsn,
        },
    )
    .await?;
    tenants.rename(name, &kept_as).await?;
    if let Err(e) = tenants.rename(&restoring, name).await {
        // Put the cluster back under its name; the restored branch stays as it is.
        if let Err(back) = tenants.rename(&kept_as, name).await {
            tracing::error!(cluster = %name, error = %back, kept_as = %kept_as, "could not give the cluster its name back");
        }
        return Err(e.into());
    }
    tracing::info!(cluster = %name, kept_as = %kept_as, target = %branched.target, "restored in place");
    Ok(RestoredInPlace {
        name: name.to_string(),
        target: branched.target,
        kept_as,
        base_backup: branched.base_backup,
        promoted_at: branched.promoted_at,
    })
}
