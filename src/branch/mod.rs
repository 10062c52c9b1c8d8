//! Branches: a new cluster whose data is another cluster's as of now, a WAL position or a
//! moment, made from the source's six copies while the source keeps running, undisturbed
//! (nothing of it is touched but its copies' files, read). `pgtide branch` and
//! `POST /clusters/SOURCE/branch` come here; `pgtide restore SOURCE --to NEW --at TIME` is the
//! same call under Aurora's name.
//!
//! [`branch`] runs, in order:
//! 1. the request's target ([`target`]), the source (3D000 when it does not exist), the new
//!    name (42P04 when it is taken);
//! 2. the plan ([`window::plan`]): the restore window of the source's copies, from the oldest
//!    base backup they hold to their durable position now, and the newest backup that is
//!    consistent before the target (a target outside the window is refused, saying where it
//!    is);
//! 3. the data directory laid out in `clusters/NEW/pgdata.branch` ([`prepare::lay_out`]: free
//!    space checked (53100), the backup unpacked, WAL placed from the copies with a read quorum
//!    of 3, up to the durable position);
//! 4. Postgres replays it to the target and promotes onto a new timeline, then stops cleanly
//!    ([`recover::replay`]); the directory becomes `clusters/NEW/pgdata`;
//! 5. the branch becomes a created cluster ([`crate::tenants::Tenants::adopt`]) with the
//!    source's settings and logins: its copies start empty under its own name, its start
//!    streams the new timeline to them and takes its first base backup, like any new cluster.
//!
//! A restore in place ([`in_place`]) is a branch and two renames: the state before is kept as a
//! cluster of its own. The story with every function on the way is `docs/branch.md`.

pub mod in_place;
pub mod prepare;
pub mod recover;
pub mod target;
pub mod window;

use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::RuntimeKind;
use crate::proxy::scram::ScramVerifier;
use crate::storage::wal::Lsn;
use crate::tenants::catalog::{CatalogEntry, CatalogUser};
use crate::tenants::{TenantError, Tenants};
use target::Target;
use window::WindowError;

/// What `POST /clusters/SOURCE/branch` takes (and `pgtide branch` / `pgtide restore` send).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchRequest {
    /// The new cluster's name.
    pub name: String,
    /// A moment: RFC 3339 or Postgres's `now()` text (`2026-12-07 00:12:34.5+00`).
    pub at: Option<String>,
    /// A WAL position, `X/Y`.
    pub lsn: Option<String>,
}

/// What a branch answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Branched {
    pub name: String,
    pub source: String,
    /// "now (0/3000148)", "LSN 0/3000060", "time 2026-12-07T00:12:34.512345Z".
    pub target: String,
    /// The start of the base backup it was restored from.
    pub base_backup: String,
    /// Where the branch's own history begins (its WAL position when it promoted).
    pub promoted_at: String,
    /// Whether its data files were cloned (copy-on-write) from the backup's image rather than
    /// unpacked from the backup's tar.
    #[serde(default)]
    pub copy_on_write: bool,
    /// Where clients connect (the shared endpoint), if pgtide has one.
    pub listen: Option<String>,
    /// Laying out the data directory from the copies, replaying it, and starting the branch
    /// (its first base backup included), in milliseconds.
    pub lay_out_ms: u64,
    pub replay_ms: u64,
    pub start_ms: u64,
}

/// Why a branch was refused or failed, in Postgres's words where it has some.
#[derive(Debug, thiserror::Error)]
pub enum BranchError {
    #[error(transparent)]
    Tenant(#[from] TenantError),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot branch cluster \"{cluster}\": {reason}")]
    Window {
        cluster: String,
        reason: WindowError,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    DiskFull(String),
    #[error("{0}")]
    Failed(String),
}

impl BranchError {
    /// The SQLSTATE Postgres uses for the same kind of refusal.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            BranchError::Tenant(e) => e.sqlstate(),
            BranchError::Invalid(_) => "22023",
            BranchError::Window { reason, .. } => match reason {
                WindowError::NoBackup => "55000",
                WindowError::BeforeWindow { .. } | WindowError::Future { .. } => "22023",
            },
            BranchError::Unsupported(_) => "0A000",
            BranchError::DiskFull(_) => "53100",
            BranchError::Failed(_) => "58030",
        }
    }

    /// The HTTP status of the admin endpoint's answer.
    pub fn http_status(&self) -> u16 {
        match self {
            BranchError::Tenant(TenantError::NotFound(_)) => 404,
            BranchError::Tenant(
                TenantError::Exists(_) | TenantError::DataLeft(..) | TenantError::FromConfig(_),
            ) => 409,
            BranchError::Tenant(TenantError::Name(_) | TenantError::Invalid(_)) => 400,
            BranchError::Tenant(TenantError::Unavailable(_)) => 503,
            BranchError::Tenant(TenantError::Storage(_)) | BranchError::Failed(_) => 500,
            BranchError::Invalid(_) => 400,
            BranchError::Window { reason, .. } => match reason {
                WindowError::NoBackup => 409,
                _ => 400,
            },
            BranchError::Unsupported(_) => 409,
            BranchError::DiskFull(_) => 507,
        }
    }
}

/// Branches `source` into `request.name` at the request's target (see the module's steps).
pub async fn branch(
    tenants: &Tenants,
    source: &str,
    request: BranchRequest,
) -> Result<Branched, BranchError> {
    let target = Target::from_request(request.at.as_deref(), request.lsn.as_deref())
        .map_err(BranchError::Invalid)?;
    let registered = tenants.find(source)?;
    let name = request.name.clone();
    tenants.check_new_name(&name).await?;
    if tenants.runtime_config().kind != RuntimeKind::Process {
        return Err(BranchError::Unsupported(
            "branching needs runtime.kind = \"process\" (Postgres replays the branch beside pgtide)"
                .into(),
        ));
    }
    let (_, source_copies) = tenants.new_cluster_dirs(source);
    if source_copies.is_empty() {
        return Err(BranchError::Unsupported(format!(
            "cluster \"{source}\" has no copies to branch from ([storage] copies = [])"
        )));
    }
    // "Now" is what the copies hold durably at this moment: read from their files, since the
    // status the cluster publishes is up to a tick old (a commit just acknowledged counts).
    let published = registered
        .handle
        .storage_status()
        .and_then(|s| s.durable_lsn)
        .and_then(|text| Lsn::parse(&text));
    let held = crate::storage::read::held_by_quorum(&source_copies, tenants.write_quorum());
    let durable = published.into_iter().chain(held).max().ok_or_else(|| {
        BranchError::Failed(format!(
            "the copies of cluster \"{source}\" hold no WAL yet"
        ))
    })?;
    let now = SystemTime::now();
    let backups = window::backups_in(&source_copies);
    let plan =
        window::plan(&backups, target, durable, now).map_err(|reason| BranchError::Window {
            cluster: source.to_string(),
            reason,
        })?;
    let entry = branch_entry(tenants, &registered.handle, &name).await;

    let (cluster_dir, _) = tenants.new_cluster_dirs(&name);
    // The new cluster's folder is its claim from here on: a create or another branch of the
    // same name finds data there and is refused.
    prepare_cluster_dir(&cluster_dir, &name)?;
    let made = make_data_directory(tenants, &source_copies, &plan, &cluster_dir, &name).await;
    let made = match made {
        Ok(made) => made,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&cluster_dir);
            return Err(e);
        }
    };
    let created = match tenants.adopt(entry).await {
        Ok(created) => created,
        Err(e) => {
            // A failed start was dropped with its data already; a name a create took meanwhile
            // is that cluster's folder now, and is left alone.
            if !matches!(e, TenantError::Exists(_)) {
                let _ = std::fs::remove_dir_all(&cluster_dir);
            }
            return Err(e.into());
        }
    };
    tracing::info!(cluster = %name, %source, base_backup = %plan.backup.start, promoted_at = %made.promoted_at, "branch created");
    Ok(Branched {
        name,
        source: source.to_string(),
        target: match target {
            Target::Now => format!("now ({durable})"),
            Target::Lsn(lsn) => format!("LSN {lsn}"),
            Target::Time(time) => format!("time {}", target::format_time(time)),
        },
        base_backup: plan.backup.start.to_string(),
        promoted_at: made.promoted_at,
        copy_on_write: made.copy_on_write,
        listen: created.listen,
        lay_out_ms: made.lay_out_ms,
        replay_ms: made.replay_ms,
        start_ms: created.started_ms,
    })
}

/// Steps 3 and 4: lay out, replay, and rename into `pgdata`.
async fn make_data_directory(
    tenants: &Tenants,
    source_copies: &[PathBuf],
    plan: &window::Plan,
    cluster_dir: &std::path::Path,
    name: &str,
) -> Result<Made, BranchError> {
    let started = Instant::now();
    let staging = cluster_dir.join("pgdata.branch");
    let host = crate::runtime::host::Host::new(tenants.runtime_config())
        .map_err(|e| BranchError::Failed(format!("{e:#}")))?;
    let owner = host
        .owner
        .for_cluster(name)
        .map_err(|e| BranchError::Failed(format!("{e:#}")))?;
    let laid_out = {
        let (dirs, plan, staging) = (source_copies.to_vec(), *plan, staging.clone());
        crate::runtime::background::run("laying out the branch", move || {
            prepare::lay_out(&dirs, &plan, &staging)
        })
        .await
        .map_err(BranchError::Failed)??
    };
    let lay_out_ms = started.elapsed().as_millis() as u64;
    tracing::info!(cluster = %name, timeline = laid_out.timeline, copies = laid_out.copies, copy_on_write = laid_out.copy_on_write, ms = lay_out_ms, "branch laid out from the copies");
    let replaying = Instant::now();
    let replayed = recover::replay(&host, &owner, cluster_dir, &staging, plan.recovery).await?;
    if replayed.target_beyond_wal {
        tracing::info!(cluster = %name, "no transaction after the target: the branch holds everything up to it");
    }
    let replay_ms = replaying.elapsed().as_millis() as u64;
    let pgdata = crate::runtime::pgdata_of(cluster_dir);
    std::fs::rename(&staging, &pgdata)
        .map_err(|e| BranchError::Failed(format!("renaming into {}: {e}", pgdata.display())))?;
    Ok(Made {
        lay_out_ms,
        replay_ms,
        promoted_at: replayed.promoted_at,
        copy_on_write: laid_out.copy_on_write,
    })
}

/// What [`make_data_directory`] did.
struct Made {
    lay_out_ms: u64,
    replay_ms: u64,
    promoted_at: String,
    copy_on_write: bool,
}

/// The branch's folder, reachable by its Postgres (0711) and its data pgtide's.
/// Made with `mkdir`, not `mkdir -p`: of two branches asking for one name at once, only one
/// makes the folder, and the other is told the name is taken.
fn prepare_cluster_dir(cluster_dir: &std::path::Path, name: &str) -> Result<(), BranchError> {
    use std::os::unix::fs::PermissionsExt;
    let failed =
        |e: std::io::Error| BranchError::Failed(format!("creating {}: {e}", cluster_dir.display()));
    if let Some(parent) = cluster_dir.parent() {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    match std::fs::create_dir(cluster_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(TenantError::Exists(name.to_string()).into())
        }
        made => made.map_err(failed)?,
    }
    std::fs::set_permissions(cluster_dir, std::fs::Permissions::from_mode(0o711)).map_err(failed)
}

/// The branch's catalog entry: the source's settings and logins under the new name. A config
/// cluster's users are kept as verifiers (a user without a password cannot be carried over: the
/// catalog keeps verifiers only).
async fn branch_entry(
    tenants: &Tenants,
    source: &crate::cluster::ClusterHandle,
    name: &str,
) -> CatalogEntry {
    let created_at = crate::cluster::now_rfc3339();
    if let Some(entry) = tenants.catalog_entry(source.name()).await {
        return CatalogEntry {
            name: name.to_string(),
            created_at,
            ..entry
        };
    }
    let config = source.config();
    CatalogEntry {
        name: name.to_string(),
        min_acu: config.min_acu,
        max_acu: config.max_acu,
        pool_mode: config.pool_mode,
        auto_pause_after: config.auto_pause_after,
        created_at,
        users: config
            .users
            .iter()
            .filter_map(|user| {
                Some(CatalogUser {
                    name: user.name.clone(),
                    verifier: ScramVerifier::from_config(user.password.as_ref()?).to_text(),
                    superuser: user.superuser,
                })
            })
            .collect(),
    }
}
