//! Compute connections shared by transaction-mode clients: one pool per cluster and per
//! (user, database).
//!
//! The pool's size follows the ACUs: [`CONNECTIONS_PER_ACU`] compute connections per ACU per
//! (user, database), at least [`MIN_CONNECTIONS`]. A client takes a connection when its
//! transaction starts and gives it back when the transaction is over; when every connection is
//! busy it waits in line (the queue length is a load signal for the scaler), for at most the
//! cluster's `resume_timeout`. Connections belong to one start of the compute: after a pause or a
//! crash the idle ones are dropped and new ones made on demand.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::compute_socket::ComputeSocket;
use tokio::sync::Notify;

use super::compute::{self, ComputeHello, ComputeStartupError};
use super::exchange::{ConnState, Settings};
use crate::cluster::ClusterHandle;
use crate::runtime::ComputeEndpoint;

pub const CONNECTIONS_PER_ACU: f64 = 4.0;
pub const MIN_CONNECTIONS: usize = 2;

/// The pool size for an ACU value.
pub fn pool_size(acu: f64) -> usize {
    ((acu * CONNECTIONS_PER_ACU).ceil() as usize).max(MIN_CONNECTIONS)
}

/// One login session on the compute, shared by clients one transaction at a time.
pub struct ServerConn {
    pub stream: ComputeSocket,
    pub pid: i32,
    pub secret: i32,
    pub endpoint: ComputeEndpoint,
    /// The endpoint's socket, made once: a client's cancel target is set to it at every lease.
    pub socket_path: std::sync::Arc<std::path::Path>,
    /// ParameterStatus messages from its startup, for clients that join.
    pub parameter_status: bytes::BytesMut,
    /// Its prepared statements and session settings.
    pub state: ConnState,
}

#[derive(Default)]
struct PoolState {
    idle: Vec<ServerConn>,
    in_use: usize,
}

pub struct Pool {
    user: String,
    database: String,
    state: Mutex<PoolState>,
    released: Notify,
    /// The startup answers given lately, by the startup settings a client sent.
    welcomes: Mutex<HashMap<Vec<(String, String)>, Welcome>>,
}

/// What a client that logs in with some startup settings is told, and starts with: the session
/// settings the compute made of them, and the ParameterStatus messages. Asking the compute
/// costs a round trip on a pooled connection per login, which is most of a new connection's
/// cost (`pgbench -C`). The answer is what the pool's connections say, and they only change
/// with the compute (they are made anew for each one), so it is kept for that compute, and
/// for [`WELCOME_TTL`] at most. Only answers the compute accepted are kept.
#[derive(Clone)]
pub struct Welcome {
    pub settings: Settings,
    pub parameter_status: bytes::Bytes,
    endpoint: ComputeEndpoint,
    at: Instant,
}

/// How long a startup answer is reused at most.
pub const WELCOME_TTL: Duration = Duration::from_secs(5);
/// Distinct startup settings kept per pool (clients choose them: `application_name`).
const WELCOMES_KEPT: usize = 256;

/// All pools of one cluster.
#[derive(Default)]
pub struct ClusterPools {
    pools: Mutex<HashMap<(String, String), Arc<Pool>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error("all {size} compute connections for {user}@{database} stayed busy for {waited:?}")]
    Busy {
        size: usize,
        user: String,
        database: String,
        waited: Duration,
    },
    #[error("the compute refused the session")]
    Refused(bytes::Bytes),
    #[error("{0}")]
    Failed(String),
}

impl ClusterPools {
    pub fn pool(&self, user: &str, database: &str) -> Arc<Pool> {
        self.pools
            .lock()
            .expect("pools lock")
            .entry((user.to_string(), database.to_string()))
            .or_insert_with(|| {
                Arc::new(Pool {
                    user: user.to_string(),
                    database: database.to_string(),
                    state: Mutex::new(PoolState::default()),
                    released: Notify::new(),
                    welcomes: Mutex::new(HashMap::new()),
                })
            })
            .clone()
    }

    /// (busy, idle) over all pools, for `/status` and `/metrics`.
    pub fn connections(&self) -> (usize, usize) {
        let pools = self.pools.lock().expect("pools lock");
        pools.values().fold((0, 0), |(busy, idle), pool| {
            let state = pool.state.lock().expect("pool lock");
            (busy + state.in_use, idle + state.idle.len())
        })
    }
}

impl Pool {
    /// The startup answer for `startup` given lately by the compute at `endpoint`, if any.
    pub fn welcome(
        &self,
        startup: &[(String, String)],
        endpoint: &ComputeEndpoint,
    ) -> Option<Welcome> {
        let welcomes = self.welcomes.lock().expect("welcomes lock");
        welcomes
            .get(startup)
            .filter(|w| w.endpoint == *endpoint && w.at.elapsed() < WELCOME_TTL)
            .cloned()
    }

    /// Keeps the compute's answer to a login with `startup` (a successful one).
    pub fn keep_welcome(
        &self,
        startup: &[(String, String)],
        endpoint: &ComputeEndpoint,
        settings: Settings,
        parameter_status: bytes::Bytes,
    ) {
        let mut welcomes = self.welcomes.lock().expect("welcomes lock");
        if welcomes.len() >= WELCOMES_KEPT {
            welcomes.retain(|_, w| w.at.elapsed() < WELCOME_TTL);
            if welcomes.len() >= WELCOMES_KEPT {
                welcomes.clear();
            }
        }
        welcomes.insert(
            startup.to_vec(),
            Welcome {
                settings,
                parameter_status,
                endpoint: endpoint.clone(),
                at: Instant::now(),
            },
        );
    }

    /// A connection to the compute at `endpoint`: an idle one, a new one while the pool is below
    /// its size, or the next one released.
    pub async fn acquire(
        &self,
        cluster: &ClusterHandle,
        endpoint: &ComputeEndpoint,
        timeout: Duration,
    ) -> Result<ServerConn, AcquireError> {
        let started = Instant::now();
        let counters = cluster.counters();
        let mut waiting = None;
        loop {
            let size = pool_size(cluster.compute_status().acu);
            // Registered before the state is looked at, so that a release in between is not
            // lost (a Notify keeps at most one permit for waiters not yet registered).
            let notified = self.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let reuse_or_create = {
                let mut state = self.state.lock().expect("pool lock");
                // Connections to an earlier start of the compute are gone with it.
                state
                    .idle
                    .retain(|c| &c.endpoint == endpoint && !c.stream_closed());
                match state.idle.pop() {
                    Some(conn) => {
                        state.in_use += 1;
                        Some(Ok(conn))
                    }
                    None if state.in_use < size => {
                        state.in_use += 1;
                        Some(Err(()))
                    }
                    None => None,
                }
            };
            match reuse_or_create {
                Some(Ok(conn)) => return Ok(conn),
                Some(Err(())) => {
                    return match self.connect(endpoint).await {
                        Ok(conn) => Ok(conn),
                        Err(e) => {
                            self.state.lock().expect("pool lock").in_use -= 1;
                            Err(e)
                        }
                    }
                }
                None => {
                    // Counted as waiting (a load signal for the scaler) until this returns.
                    waiting.get_or_insert_with(|| counters.waiting_guard());
                    let left = timeout.saturating_sub(started.elapsed());
                    if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                        return Err(AcquireError::Busy {
                            size,
                            user: self.user.clone(),
                            database: self.database.clone(),
                            waited: started.elapsed(),
                        });
                    }
                }
            }
        }
    }

    /// Gives a connection back: to the idle list if it is reusable, else it is closed (Postgres
    /// rolls back whatever it had open).
    pub fn release(&self, conn: ServerConn, reusable: bool) {
        {
            let mut state = self.state.lock().expect("pool lock");
            state.in_use -= 1;
            if reusable {
                state.idle.push(conn);
            }
        }
        self.released.notify_one();
    }

    async fn connect(&self, endpoint: &ComputeEndpoint) -> Result<ServerConn, AcquireError> {
        let socket_path: std::sync::Arc<std::path::Path> = endpoint.socket_path().into();
        let mut stream = ComputeSocket::connect(&*socket_path)
            .await
            .map_err(|e| AcquireError::Failed(format!("could not reach the compute: {e}")))?;
        let params = [
            ("user", self.user.as_str()),
            ("database", self.database.as_str()),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let ComputeHello {
            messages,
            pid,
            secret,
            ..
        } = compute::start_session(&mut stream, &params)
            .await
            .map_err(|e| match e {
                ComputeStartupError::Refused(error) => AcquireError::Refused(error),
                other => AcquireError::Failed(other.to_string()),
            })?;
        Ok(ServerConn {
            stream,
            pid,
            secret,
            endpoint: endpoint.clone(),
            socket_path,
            parameter_status: messages,
            state: ConnState::default(),
        })
    }
}

impl ServerConn {
    /// Whether the compute closed this idle connection (a stopped or restarted compute).
    fn stream_closed(&self) -> bool {
        let mut probe = [0u8; 1];
        match self.stream.try_read(&mut probe) {
            Ok(0) => true,
            Ok(_) => true, // an idle connection has nothing to say; if it does, do not trust it
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_follows_the_acus() {
        assert_eq!(pool_size(0.0), 2);
        assert_eq!(pool_size(0.5), 2);
        assert_eq!(pool_size(1.0), 4);
        assert_eq!(pool_size(2.5), 10);
        assert_eq!(pool_size(8.0), 32);
    }
}
