//! Who may log in to a cluster, and with what secret.
//!
//! Two sources, as in any Postgres deployment behind a pooler: the config's `[[clusters.users]]`
//! (which win on a name clash) and the cluster's own login roles, whose SCRAM verifiers pgtide
//! reads from `pg_authid`. The store is saved beside the cluster's data, so that pgtide can
//! authenticate clients while the compute is paused and answer a wrong password without
//! waking it. A role's VALID UNTIL is kept with its verifier and checked at every login, so an
//! expiry holds even while the compute is paused or between two reads of `pg_authid`.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::UserConfig;
use crate::proxy::scram::ScramVerifier;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleSecret {
    /// Log in with SCRAM-SHA-256 against this verifier.
    Scram(ScramVerifier),
    /// A configured user without a password: no authentication (like a `trust` line).
    Trust,
}

/// A login role of the compute, as `pg_authid` has it.
#[derive(Debug, Clone, PartialEq)]
pub struct ComputeRole {
    pub verifier: ScramVerifier,
    /// VALID UNTIL, in seconds since the Unix epoch; `None` for no limit.
    pub valid_until: Option<f64>,
}

#[derive(Debug)]
pub struct RoleStore {
    config_roles: HashMap<String, RoleSecret>,
    compute_roles: HashMap<String, ComputeRole>,
    path: PathBuf,
}

/// The saved form: role name → verifier text, and the roles' VALID UNTIL.
#[derive(Serialize, Deserialize, Default)]
struct SavedRoles {
    roles: HashMap<String, String>,
    #[serde(default)]
    valid_until: HashMap<String, f64>,
}

impl RoleStore {
    /// Builds the store from the config and what an earlier run saved at `path`.
    pub fn load(users: &[UserConfig], path: PathBuf) -> RoleStore {
        let config_roles = users
            .iter()
            .map(|user| {
                let secret = match &user.password {
                    Some(password) => RoleSecret::Scram(ScramVerifier::from_config(password)),
                    None => RoleSecret::Trust,
                };
                (user.name.clone(), secret)
            })
            .collect();
        let saved: SavedRoles = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let compute_roles = saved
            .roles
            .iter()
            .filter_map(|(name, text)| {
                let role = ComputeRole {
                    verifier: ScramVerifier::parse(text)?,
                    valid_until: saved.valid_until.get(name).copied(),
                };
                Some((name.clone(), role))
            })
            .collect();
        RoleStore {
            config_roles,
            compute_roles,
            path,
        }
    }

    /// Who `user` is now: a role past its VALID UNTIL is unknown.
    pub fn lookup(&self, user: &str) -> Option<RoleSecret> {
        if let Some(secret) = self.config_roles.get(user) {
            return Some(secret.clone());
        }
        let role = self.compute_roles.get(user)?;
        if let Some(until) = role.valid_until {
            if unix_now() >= until {
                return None;
            }
        }
        Some(RoleSecret::Scram(role.verifier.clone()))
    }

    /// The iteration count most verifiers use, so that the made-up verifier of an unknown user
    /// looks like a real one.
    pub fn typical_iterations(&self) -> u32 {
        let mut counts: HashMap<u32, usize> = HashMap::new();
        let config = self.config_roles.values().filter_map(|s| match s {
            RoleSecret::Scram(v) => Some(v.iterations),
            RoleSecret::Trust => None,
        });
        let compute = self.compute_roles.values().map(|r| r.verifier.iterations);
        for iterations in config.chain(compute) {
            *counts.entry(iterations).or_default() += 1;
        }
        counts
            .into_iter()
            .max_by_key(|(iterations, n)| (*n, *iterations))
            .map(|(iterations, _)| iterations)
            .unwrap_or(4096)
    }

    /// Replaces the compute's roles with a fresh read of `pg_authid` and saves them.
    pub fn replace_compute_roles(&mut self, roles: HashMap<String, ComputeRole>) {
        if roles == self.compute_roles {
            return;
        }
        self.compute_roles = roles;
        let saved = SavedRoles {
            roles: self
                .compute_roles
                .iter()
                .map(|(name, role)| (name.clone(), role.verifier.to_text()))
                .collect(),
            valid_until: self
                .compute_roles
                .iter()
                .filter_map(|(name, role)| Some((name.clone(), role.valid_until?)))
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&saved).expect("serializable");
        if let Err(e) = crate::files::write_private(&self.path, &bytes) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not save the role verifiers");
        }
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Reads the login roles' SCRAM verifiers and VALID UNTIL (roles with an MD5 or no password
/// cannot log in through pgtide's SCRAM and are left out).
pub async fn read_compute_roles(
    client: &tokio_postgres::Client,
) -> Result<HashMap<String, ComputeRole>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT rolname, rolpassword, extract(epoch FROM rolvaliduntil)::float8 \
             FROM pg_catalog.pg_authid WHERE rolcanlogin AND rolpassword IS NOT NULL",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let name: String = row.get(0);
            let password: String = row.get(1);
            let valid_until: Option<f64> = row.get(2);
            let role = ComputeRole {
                verifier: ScramVerifier::parse(&password)?,
                // 'infinity' is no limit.
                valid_until: valid_until.filter(|t| t.is_finite()),
            };
            Some((name, role))
        })
        .collect())
}

impl super::ClusterHandle {
    /// Stores a fresh read of the compute's roles (the proxy's verifier refresher calls this).
    pub fn set_compute_roles(&self, roles: HashMap<String, ComputeRole>) {
        self.shared
            .roles
            .lock()
            .expect("roles lock")
            .replace_compute_roles(roles);
    }

    /// The iteration count an unknown user's made-up verifier announces.
    pub fn typical_iterations(&self) -> u32 {
        self.shared
            .roles
            .lock()
            .expect("roles lock")
            .typical_iterations()
    }
}

/// Makes the config's users exist in the compute with their flags and verifiers, so that the
/// compute's own view of roles (ownership, `\du`, grants) matches who can log in.
pub async fn sync_config_users(
    client: &tokio_postgres::Client,
    users: &[UserConfig],
) -> Result<(), tokio_postgres::Error> {
    for user in users {
        let exists = client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&user.name])
            .await?
            .is_some();
        let name = quote_ident(&user.name);
        let mut options = vec!["LOGIN".to_string()];
        // The bootstrap superuser cannot lose SUPERUSER; leave it as it is.
        if user.name != crate::runtime::BOOTSTRAP_SUPERUSER {
            options.push(
                if user.superuser {
                    "SUPERUSER"
                } else {
                    "NOSUPERUSER"
                }
                .to_string(),
            );
        }
        if let Some(password) = &user.password {
            options.push(format!(
                "PASSWORD {}",
                quote_literal(&ScramVerifier::from_config(password).to_text())
            ));
        }
        let verb = if exists { "ALTER" } else { "CREATE" };
        client
            .batch_execute(&format!("{verb} ROLE {name} WITH {}", options.join(" ")))
            .await?;
    }
    Ok(())
}

pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_users_win_and_compute_roles_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roles.json");
        let users = vec![
            UserConfig {
                name: "admin".into(),
                password: Some("pw".into()),
                superuser: true,
            },
            UserConfig {
                name: "open".into(),
                password: None,
                superuser: false,
            },
        ];
        let mut store = RoleStore::load(&users, path.clone());
        assert_eq!(store.lookup("open"), Some(RoleSecret::Trust));
        assert!(store.lookup("app").is_none());
        let app = ScramVerifier::from_password("app-pw");
        let admin_in_compute = ScramVerifier::from_password("other");
        let role = |verifier: &ScramVerifier, valid_until| ComputeRole {
            verifier: verifier.clone(),
            valid_until,
        };
        store.replace_compute_roles(HashMap::from([
            ("app".to_string(), role(&app, None)),
            ("admin".to_string(), role(&admin_in_compute, None)),
            ("expired".to_string(), role(&app, Some(unix_now() - 1.0))),
            ("later".to_string(), role(&app, Some(unix_now() + 3600.0))),
        ]));
        assert!(store.lookup("expired").is_none());
        assert!(store.lookup("later").is_some());
        assert_eq!(store.typical_iterations(), 4096);
        assert_eq!(store.lookup("app"), Some(RoleSecret::Scram(app.clone())));
        assert_ne!(
            store.lookup("admin"),
            Some(RoleSecret::Scram(admin_in_compute))
        );
        let reloaded = RoleStore::load(&users, path);
        assert_eq!(reloaded.lookup("app"), Some(RoleSecret::Scram(app)));
        assert!(
            reloaded.lookup("expired").is_none(),
            "VALID UNTIL is saved too"
        );
        assert!(reloaded.lookup("later").is_some());
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
