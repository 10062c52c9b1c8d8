//! How the cluster talks to its compute about roles: once per run it creates the config's users
//! there, and it reads the login roles' verifiers so that pgtide can authenticate clients itself.
//! A trait, so that the state machine's tests run computes that are not Postgres.

use std::collections::HashMap;

use async_trait::async_trait;

use super::roles;
use crate::config::UserConfig;
use crate::runtime::ComputeEndpoint;

#[async_trait]
pub trait ComputeRoles: Send + Sync + 'static {
    /// Makes the config's users exist in the compute, then reads every login role's verifier.
    async fn sync_and_read(
        &self,
        endpoint: &ComputeEndpoint,
        users: &[UserConfig],
    ) -> anyhow::Result<HashMap<String, roles::ComputeRole>>;
}

/// The real thing: SQL over pgtide's private socket.
pub struct PostgresRoles;

#[async_trait]
impl ComputeRoles for PostgresRoles {
    async fn sync_and_read(
        &self,
        endpoint: &ComputeEndpoint,
        users: &[UserConfig],
    ) -> anyhow::Result<HashMap<String, roles::ComputeRole>> {
        let client = endpoint.admin_connect().await?;
        roles::sync_config_users(&client, users).await?;
        Ok(roles::read_compute_roles(&client).await?)
    }
}
