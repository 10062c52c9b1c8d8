//! Who may log in to a cluster, and with what secret.
//!
//! Two sources, as in any Postgres deployment behind a pooler: the config's `[[clusters.users]]`
//! (which win on a name clash) and the cluster's own login roles, whose SCRAM verifiers pgtide
//! reads from `pg_authid`. The store is saved beside the cluster's data, so that pgtide can
//! authenticate clients while the compute is paused and answer a wrong password without
//! waking it.

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

#[derive(Debug)]
pub struct RoleStore {
    config_roles: HashMap<String, RoleSecret>,
    compute_roles: HashMap<String, ScramVerifier>,
    path: PathBuf,
}

/// The saved form: role name → verifier text.
#[derive(Serialize, Deserialize, Default)]
struct SavedRoles {
    roles: HashMap<String, String>,
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
            .filter_map(|(name, text)| Some((name.clone(), ScramVerifier::parse(text)?)))
            .collect();
        RoleStore {
            config_roles,
            compute_roles,
            path,
        }
    }

    pub fn lookup(&self, user: &str) -> Option<RoleSecret> {
        self.config_roles
            .get(user)
            .cloned()
            .or_else(|| self.compute_roles.get(user).cloned().map(RoleSecret::Scram))
    }

    /// Replaces the compute's roles with a fresh read of `pg_authid` and saves them.
    pub fn replace_compute_roles(&mut self, roles: HashMap<String, ScramVerifier>) {
        if roles == self.compute_roles {
            return;
        }
        self.compute_roles = roles;
        let saved = SavedRoles {
            roles: self
                .compute_roles
                .iter()
                .map(|(name, verifier)| (name.clone(), verifier.to_text()))
                .collect(),
        };
        let write = || -> std::io::Result<()> {
            let tmp = self.path.with_extension("json.tmp");
            std::fs::write(
                &tmp,
                serde_json::to_vec_pretty(&saved).expect("serializable"),
            )?;
            std::fs::rename(&tmp, &self.path)
        };
        if let Err(e) = write() {
            tracing::warn!(path = %self.path.display(), error = %e, "could not save the role verifiers");
        }
    }
}

/// Reads the login roles' SCRAM verifiers (roles with an MD5 or no password cannot log in
/// through pgtide's SCRAM and are left out).
pub async fn read_compute_roles(
    client: &tokio_postgres::Client,
) -> Result<HashMap<String, ScramVerifier>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT rolname, rolpassword FROM pg_authid \
             WHERE rolcanlogin AND rolpassword IS NOT NULL \
               AND (rolvaliduntil IS NULL OR rolvaliduntil > now())",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let name: String = row.get(0);
            let password: String = row.get(1);
            Some((name, ScramVerifier::parse(&password)?))
        })
        .collect())
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
        store.replace_compute_roles(HashMap::from([
            ("app".to_string(), app.clone()),
            ("admin".to_string(), admin_in_compute.clone()),
        ]));
        assert_eq!(store.lookup("app"), Some(RoleSecret::Scram(app.clone())));
        assert_ne!(
            store.lookup("admin"),
            Some(RoleSecret::Scram(admin_in_compute))
        );
        let reloaded = RoleStore::load(&users, path);
        assert_eq!(reloaded.lookup("app"), Some(RoleSecret::Scram(app)));
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
