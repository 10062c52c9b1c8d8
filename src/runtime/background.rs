//! Background priority for work pgtide does beside running computes that serve clients: a
//! branch's unpacking, its WAL placement and its replaying Postgres. Such work must take what
//! the computes leave, on the CPU and on the disk, and never slow a source's commits.
//!
//! Why not `nice`: a nice value weighs a task only against the tasks of its own cgroup. A
//! compute runs in a cgroup of its own ([`super::cgroup`]), a sibling of pgtide's threads, so a
//! nice-10 replay still weighs 110 against the compute's whole group (1024), and a nice-0
//! unpacking thread as much as the compute itself. `SCHED_IDLE` weighs 3: it runs on what is
//! left over.
//!
//! The disk: the idle I/O class ([`IOPRIO_CLASS_IDLE`]) is served after everything else by
//! the schedulers that know priorities (mq-deadline, BFQ); but buffered writes are written back
//! by the kernel's flusher threads, at their priority, not the writer's. So background writers
//! also write back as they go ([`PacedWriter`]): the writeback then happens in their own
//! context, at their own priority, a few MiB at a time, instead of one giant writeback of a
//! database-sized file that a source's next `fsync` of its WAL would queue behind.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;

/// `ioprio_set`'s class for I/O served only when the disk is otherwise idle.
const IOPRIO_CLASS_IDLE: i32 = 3;
const IOPRIO_CLASS_SHIFT: i32 = 13;
const IOPRIO_WHO_PROCESS: i32 = 1;

/// How much a [`PacedWriter`] writes before it waits for those bytes to be on disk.
pub const PACE_BYTES: u64 = 8 * 1024 * 1024;

/// Lowers the calling thread (tid 0: this thread only, and whatever it forks or spawns later)
/// to `SCHED_IDLE` and the idle I/O class. Best effort: a refusal is logged, the work goes on.
///
/// Call it on a thread of its own ([`run`]), never on a pooled one (a tokio blocking thread
/// would keep the priority for the next, unrelated, task). Async-signal-safe: it may run in a
/// `pre_exec` hook.
pub fn lower_this_thread() -> io::Result<()> {
    let param = nix::libc::sched_param { sched_priority: 0 };
    // SAFETY: plain system calls on the calling thread, with a valid sched_param.
    let scheduled = unsafe { nix::libc::sched_setscheduler(0, nix::libc::SCHED_IDLE, &param) };
    if scheduled != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; ioprio_set has no libc wrapper.
    let io = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0,
            IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT,
        )
    };
    if io != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `work` on a new thread at background priority and waits for it without blocking the
/// runtime. A panic in `work` is an error named after `what`.
pub async fn run<T, F>(what: &str, work: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (done, result) = tokio::sync::oneshot::channel();
    let name = format!("bg-{}", what.split_whitespace().next().unwrap_or("work"));
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            if let Err(e) = lower_this_thread() {
                tracing::warn!(error = %e, "background work runs at normal priority");
            }
            let _ = done.send(work());
        })
        .map_err(|e| format!("starting a thread for {what}: {e}"))?;
    result.await.map_err(|_| format!("{what} panicked"))
}

/// A file writer that writes back what it wrote every [`PACE_BYTES`] and waits for it, in the
/// writer's own context (so at its I/O priority), before it writes more.
pub struct PacedWriter {
    file: File,
    written: u64,
    synced: u64,
}

impl PacedWriter {
    pub fn new(file: File) -> PacedWriter {
        PacedWriter {
            file,
            written: 0,
            synced: 0,
        }
    }

    /// Writes back the rest and returns the file.
    pub fn finish(mut self) -> io::Result<File> {
        self.write_back()?;
        Ok(self.file)
    }

    fn write_back(&mut self) -> io::Result<()> {
        if self.written == self.synced {
            return Ok(());
        }
        let flags = nix::libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | nix::libc::SYNC_FILE_RANGE_WRITE
            | nix::libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // SAFETY: a valid descriptor and a range of it; sync_file_range only starts and waits
        // for writeback of that range (not a durability guarantee: callers that need one fsync).
        let synced = unsafe {
            nix::libc::sync_file_range(
                self.file.as_raw_fd(),
                self.synced as i64,
                (self.written - self.synced) as i64,
                flags,
            )
        };
        if synced != 0 {
            let e = io::Error::last_os_error();
            // A file system without it (some FUSE, tmpfs answers fine) loses the pacing only.
            if e.raw_os_error() != Some(nix::libc::ENOSYS)
                && e.raw_os_error() != Some(nix::libc::EINVAL)
            {
                return Err(e);
            }
        }
        self.synced = self.written;
        Ok(())
    }
}

impl Write for PacedWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = self.file.write(bytes)?;
        self.written += n as u64;
        if self.written - self.synced >= PACE_BYTES {
            self.write_back()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paced_file_holds_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut writer = PacedWriter::new(File::create(&path).unwrap());
        let chunk = vec![7u8; 1024 * 1024 + 3];
        for _ in 0..10 {
            writer.write_all(&chunk).unwrap();
        }
        writer.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len(), chunk.len() * 10);
    }

    #[tokio::test]
    async fn background_work_runs_idle_and_answers() {
        let policy = run("a test", || unsafe { nix::libc::sched_getscheduler(0) })
            .await
            .unwrap();
        assert_eq!(policy, nix::libc::SCHED_IDLE);
        // The caller's thread is untouched.
        assert_ne!(
            unsafe { nix::libc::sched_getscheduler(0) },
            nix::libc::SCHED_IDLE
        );
    }
}
