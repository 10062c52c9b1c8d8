//! How far a standby is behind the writer, as Postgres measures it: the writer's
//! `pg_stat_replication` row for the standby (bytes between the writer's WAL position and the
//! standby's replay position, and `replay_lag`, which Postgres interpolates from the times the
//! writer wrote that WAL); and where the standby's own WAL ends, for a takeover.

use crate::runtime::ComputeEndpoint;
use crate::storage::wal::Lsn;

/// The standby's `application_name` on the writer (never the copies' synchronous name: a
/// standby never holds up a commit).
pub fn application_name(zone: &str) -> String {
    format!("pgtide_standby_{zone}")
}

/// What the writer says of one standby.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lag {
    pub bytes: u64,
    pub seconds: f64,
}

/// Reads the writer's view of the standby in `zone`; `None` when it is not connected.
pub async fn from_writer(
    writer: &tokio_postgres::Client,
    zone: &str,
) -> Result<Option<Lag>, tokio_postgres::Error> {
    let row = writer
        .query_opt(
            "SELECT COALESCE((pg_current_wal_lsn() - replay_lsn)::float8, -1), \
                    COALESCE(EXTRACT(epoch FROM replay_lag)::float8, 0) \
             FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming' \
             LIMIT 1",
            &[&application_name(zone)],
        )
        .await?;
    Ok(row.and_then(|row| {
        let bytes: f64 = row.get(0);
        let seconds: f64 = row.get(1);
        (bytes >= 0.0).then_some(Lag {
            bytes: bytes as u64,
            seconds,
        })
    }))
}

/// Where the standby's WAL ends: the furthest of what it received and flushed and what it
/// replayed (a standby that never streamed has only replayed).
pub async fn received_end(standby: &tokio_postgres::Client) -> anyhow::Result<Lsn> {
    let row = standby
        .query_one(
            "SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text",
            &[],
        )
        .await?;
    let parse = |i: usize| {
        row.get::<_, Option<String>>(i)
            .and_then(|text| Lsn::parse(&text))
    };
    parse(0)
        .max(parse(1))
        .ok_or_else(|| anyhow::anyhow!("the standby reports no WAL position"))
}

/// One admin connection, made again when it broke or its endpoint changed.
#[derive(Default)]
pub struct CachedClient {
    client: Option<(ComputeEndpoint, tokio_postgres::Client)>,
}

impl CachedClient {
    pub async fn get(&mut self, endpoint: &ComputeEndpoint) -> Option<&tokio_postgres::Client> {
        let usable =
            matches!(&self.client, Some((at, client)) if at == endpoint && !client.is_closed());
        if !usable {
            let connect = endpoint.admin_connect();
            let client = tokio::time::timeout(std::time::Duration::from_secs(2), connect)
                .await
                .ok()?
                .ok()?;
            self.client = Some((endpoint.clone(), client));
        }
        self.client.as_ref().map(|(_, client)| client)
    }

    pub fn forget(&mut self) {
        self.client = None;
    }
}
