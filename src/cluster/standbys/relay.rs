//! How a standby reaches the writer: a unix socket that pgtide serves in the standby's own
//! socket directory (`.s.PGSQL.5433`), copying bytes to whichever compute is the writer now.
//!
//! Each compute listens only on a private socket that its own OS user (or container) can
//! reach, so a standby cannot open the writer's socket itself; and the writer changes with a
//! failover. The relay solves both: the standby's `primary_conninfo` names the relay, pgtide
//! decides where it leads, and when the writer changes or goes, every relayed connection is cut
//! (the standby's WAL receiver then retries through the relay, to the new writer). This is also
//! a fence: a standby follows only the compute pgtide calls the writer.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::runtime::ComputeEndpoint;

/// The port in the relay socket's name: the compute's own socket is `.s.PGSQL.5432`.
pub const RELAY_PORT: u16 = 5433;

/// The relay of one standby; stops (and removes its socket) when dropped.
pub struct ReplicationRelay {
    socket: PathBuf,
    task: JoinHandle<()>,
}

impl ReplicationRelay {
    /// Serves the relay socket in `socket_dir` (the standby's, as pgtide sees it).
    pub fn start(
        socket_dir: &Path,
        writer: watch::Receiver<Option<ComputeEndpoint>>,
    ) -> std::io::Result<ReplicationRelay> {
        let socket = socket_dir.join(format!(".s.PGSQL.{RELAY_PORT}"));
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket)?;
        // The directory is the standby's own (0700): only its Postgres and pgtide get here.
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777))?;
        let task = tokio::spawn(accept(listener, writer));
        Ok(ReplicationRelay { socket, task })
    }
}

impl Drop for ReplicationRelay {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

async fn accept(listener: UnixListener, writer: watch::Receiver<Option<ComputeEndpoint>>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((standby, _)) => {
                connections.spawn(relay_one(standby, writer.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "the replication relay could not accept");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        // Reap the connections that ended.
        while connections.try_join_next().is_some() {}
    }
}

/// Copies one standby connection to the writer of the moment, until either side ends or the
/// writer changes.
async fn relay_one(mut standby: UnixStream, mut writer: watch::Receiver<Option<ComputeEndpoint>>) {
    let Some(endpoint) = writer.borrow_and_update().clone() else {
        return; // no writer now: the standby retries
    };
    let Ok(mut primary) = UnixStream::connect(endpoint.socket_path()).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut standby, &mut primary) => {}
        _ = writer.wait_for(|now| now.as_ref() != Some(&endpoint)) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_reach_the_writer_of_the_moment_and_a_change_cuts_them() {
        let dir = tempfile::tempdir().unwrap();
        let writer_dir = dir.path().join("writer");
        let standby_dir = dir.path().join("standby");
        std::fs::create_dir_all(&writer_dir).unwrap();
        std::fs::create_dir_all(&standby_dir).unwrap();
        let endpoint = ComputeEndpoint {
            socket_dir: writer_dir.clone(),
            port: 5432,
        };
        let primary = UnixListener::bind(endpoint.socket_path()).unwrap();
        let (writer_tx, writer_rx) = watch::channel(None);
        let _relay = ReplicationRelay::start(&standby_dir, writer_rx).unwrap();
        let relay_socket = standby_dir.join(".s.PGSQL.5433");

        // No writer: the connection is closed at once.
        let mut refused = UnixStream::connect(&relay_socket).await.unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(refused.read(&mut byte).await.unwrap(), 0);

        writer_tx.send_replace(Some(endpoint.clone()));
        let mut standby = UnixStream::connect(&relay_socket).await.unwrap();
        standby.write_all(b"hello").await.unwrap();
        let (mut at_writer, _) = primary.accept().await.unwrap();
        let mut got = [0u8; 5];
        at_writer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");

        // The writer changes: the relayed connection ends.
        writer_tx.send_replace(None);
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), standby.read(&mut byte))
            .await
            .expect("cut in time");
        assert_eq!(read.unwrap(), 0);
    }
}
