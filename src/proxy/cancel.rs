//! Cancel requests.
//!
//! A client is told the compute's real backend pid (so that `pg_backend_pid()` and NOTIFY's
//! sender pid match) but a secret key of pgtide's own. A CancelRequest carrying that pair is
//! looked up here and sent, with the compute's real key, to the compute that runs the session.
//! Unknown pairs are dropped silently, as Postgres does.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rand::Rng;
use tokio::io::AsyncWriteExt;

const CANCEL_REQUEST_CODE: i32 = 80877102;

#[derive(Debug, Clone)]
struct CancelTarget {
    socket_path: PathBuf,
    pid: i32,
    secret: i32,
}

#[derive(Default)]
pub struct CancelRegistry {
    keys: Arc<Mutex<HashMap<(i32, i32), CancelTarget>>>,
}

/// Removes the key from the registry when the session ends.
pub struct CancelKey {
    keys: Arc<Mutex<HashMap<(i32, i32), CancelTarget>>>,
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
        keys.insert(
            (pid, ours),
            CancelTarget {
                socket_path,
                pid,
                secret,
            },
        );
        CancelKey {
            keys: self.keys.clone(),
            pid,
            secret: ours,
        }
    }

    /// Forwards a client's cancel request to the compute, if the key is known.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let target = self
            .keys
            .lock()
            .expect("cancel lock")
            .get(&(pid, secret))
            .cloned();
        let Some(target) = target else {
            tracing::debug!(pid, "cancel request with an unknown key ignored");
            return;
        };
        let mut packet = Vec::with_capacity(16);
        packet.extend_from_slice(&16i32.to_be_bytes());
        packet.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
        packet.extend_from_slice(&target.pid.to_be_bytes());
        packet.extend_from_slice(&target.secret.to_be_bytes());
        match tokio::net::UnixStream::connect(&target.socket_path).await {
            Ok(mut stream) => {
                let _ = stream.write_all(&packet).await;
                let _ = stream.shutdown().await;
            }
            Err(e) => tracing::debug!(error = %e, "could not reach the compute to cancel"),
        }
    }
}
