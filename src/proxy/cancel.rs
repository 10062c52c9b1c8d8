//! Cancel requests.
//!
//! A client is told the compute's real backend pid (so that `pg_backend_pid()` and NOTIFY's
//! sender pid match) but a secret key of pgtide's own. A CancelRequest carrying that pair is
//! looked up here and sent, with the compute's real key, to the compute that runs the session.
//! Unknown pairs are dropped silently, as Postgres does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rand::Rng;
use tokio::io::AsyncWriteExt;

#[derive(Debug, Clone)]
struct CancelTarget {
    socket_path: Arc<Path>,
    pid: i32,
    secret: i32,
}

/// Where a transaction-mode client's cancel goes: the compute connection it holds right now,
/// or nowhere between transactions (a cancel then must not reach another client's query).
type PooledTarget = Arc<Mutex<Option<CancelTarget>>>;

#[derive(Debug, Clone)]
enum Target {
    Session(CancelTarget),
    Pooled(PooledTarget),
}

/// A transaction-mode client's key; the target follows the connection it holds.
pub struct PooledCancelKey {
    keys: Arc<Mutex<HashMap<(i32, i32), Target>>>,
    target: PooledTarget,
    pub pid: i32,
    pub secret: i32,
}

impl PooledCancelKey {
    pub fn set_target(&self, target: Option<(Arc<Path>, i32, i32)>) {
        *self.target.lock().expect("cancel lock") =
            target.map(|(socket_path, pid, secret)| CancelTarget {
                socket_path,
                pid,
                secret,
            });
    }
}

impl Drop for PooledCancelKey {
    fn drop(&mut self) {
        self.keys
            .lock()
            .expect("cancel lock")
            .remove(&(self.pid, self.secret));
    }
}

#[derive(Default)]
pub struct CancelRegistry {
    keys: Arc<Mutex<HashMap<(i32, i32), Target>>>,
}

/// Removes the key from the registry when the session ends.
pub struct CancelKey {
    keys: Arc<Mutex<HashMap<(i32, i32), Target>>>,
    pub pid: i32,
    pub secret: i32,
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        self.keys
            .lock()
            .expect("cancel lock")
            .remove(&(self.pid, self.secret));
    }
}

impl CancelRegistry {
    /// Registers a session on the compute at `socket_path` whose real key is (`pid`, `secret`),
    /// and returns the key to give the client.
    pub fn register(&self, socket_path: PathBuf, pid: i32, secret: i32) -> CancelKey {
        let mut keys = self.keys.lock().expect("cancel lock");
        let mut rng = rand::rng();
        let ours = loop {
            let candidate: i32 = rng.random();
            if !keys.contains_key(&(pid, candidate)) {
                break candidate;
            }
        };
        let target = CancelTarget {
            socket_path: socket_path.into(),
            pid,
            secret,
        };
        keys.insert((pid, ours), Target::Session(target));
        CancelKey {
            keys: self.keys.clone(),
            pid,
            secret: ours,
        }
    }

    /// Registers a transaction-mode client. Its pid is pgtide's own (it has no single backend),
    /// negative so that it never equals a real backend's.
    pub fn register_pooled(&self) -> PooledCancelKey {
        let mut keys = self.keys.lock().expect("cancel lock");
        let mut rng = rand::rng();
        let (pid, secret) = loop {
            let candidate = (-rng.random_range(1..i32::MAX), rng.random::<i32>());
            if !keys.contains_key(&candidate) {
                break candidate;
            }
        };
        let target: PooledTarget = Arc::new(Mutex::new(None));
        keys.insert((pid, secret), Target::Pooled(target.clone()));
        PooledCancelKey {
            keys: self.keys.clone(),
            target,
            pid,
            secret,
        }
    }

    /// Forwards a client's cancel request to the compute, if the key is known.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let target = match self.keys.lock().expect("cancel lock").get(&(pid, secret)) {
            Some(Target::Session(target)) => Some(target.clone()),
            Some(Target::Pooled(current)) => current.lock().expect("cancel lock").clone(),
            None => None,
        };
        let Some(target) = target else {
            tracing::debug!(pid, "cancel request with an unknown key ignored");
            return;
        };
        let packet = crate::wire::cancel_request(target.pid, target.secret);
        match tokio::net::UnixStream::connect(&target.socket_path).await {
            Ok(mut stream) => {
                let _ = stream.write_all(&packet).await;
                let _ = stream.shutdown().await;
            }
            Err(e) => tracing::debug!(error = %e, "could not reach the compute to cancel"),
        }
    }
}
