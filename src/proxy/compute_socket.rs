//! The unix socket to a compute, registered for reading only.
//!
//! Written by hand, rather than using `tokio::net::UnixStream`, for one reason measured in
//! `scripts/bench.sh syscalls`: tokio registers every stream for readability and writability at
//! once, and a unix socket signals "writable" each time its peer reads (the kernel frees the
//! sent buffer and wakes every writability waiter). A proxy that sleeps in `epoll_wait` while
//! the backend reads the query it just forwarded is then woken for nothing, once per query:
//! pgtide made 1.2–1.9 `epoll_wait`s and context switches per select-only transaction where
//! PgBouncer (which asks for writability only when a write would block) made 1.1.
//!
//! So this socket is registered for readability alone. Writes go straight to the socket; only
//! when one would block is a duplicate of the descriptor registered for writability, until a
//! write goes through again (a full socket buffer: a bulk COPY, a client that does not read).

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// A connection to a compute's unix socket (see the module's story).
pub struct ComputeSocket {
    read: AsyncFd<StdUnixStream>,
    /// Registered for writability while a write waits for room in the socket buffer.
    write_wait: Option<AsyncFd<OwnedFd>>,
}

impl ComputeSocket {
    pub async fn connect(path: impl AsRef<Path>) -> io::Result<ComputeSocket> {
        let stream = tokio::net::UnixStream::connect(path).await?;
        ComputeSocket::from_tokio(stream)
    }

    fn from_tokio(stream: tokio::net::UnixStream) -> io::Result<ComputeSocket> {
        // `into_std` deregisters it from tokio's reactor; the descriptor stays non-blocking.
        let stream = stream.into_std()?;
        Ok(ComputeSocket {
            read: register(stream, Interest::READABLE)?,
            write_wait: None,
        })
    }

    /// Reads what is there without waiting: `WouldBlock` if nothing is. No system call when the
    /// reactor has seen nothing arrive since the socket was last drained (a pool's check of an
    /// idle connection, at every acquire, costs nothing then).
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.read
            .try_io(Interest::READABLE, |stream| (&*stream).read(buf))
    }

    /// Writes through `write` (one call of it, the socket non-blocking), waiting for room in
    /// the socket buffer when it would block.
    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&StdUnixStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            match write(self.read.get_ref()) {
                Ok(n) => {
                    // Room again: stop listening for it (the next block registers anew).
                    self.write_wait = None;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.write_wait.is_none() {
                        // Registering reports the socket's state now: room that appeared since
                        // the write above is not missed.
                        let duplicate = self.read.get_ref().as_fd().try_clone_to_owned()?;
                        self.write_wait = Some(register(duplicate, Interest::WRITABLE)?);
                    }
                    let wait = self.write_wait.as_ref().expect("registered above");
                    let mut guard = ready!(wait.poll_write_ready(cx))?;
                    // Try again; if it still blocks, wait for the next edge.
                    guard.clear_ready();
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Registers a descriptor that `inner` owns with tokio's reactor, for `interest` alone.
fn register<T: std::os::fd::AsRawFd>(inner: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    // SAFETY: `inner` (a `UnixStream` or an `OwnedFd`) owns its descriptor and returns the same
    // one for as long as it lives, and the `AsyncFd` owns `inner`: the descriptor stays open
    // and unchanged until the registration is dropped.
    unsafe { AsyncFd::register_with_interest(inner, interest) }.map_err(io::Error::from)
}

impl AsyncRead for ComputeSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.read.poll_read_ready(cx))?;
            // SAFETY: `read(2)` only writes into the buffer, never reads it, so it may be
            // uninitialised (as tokio's own streams do it: zeroing 32 KiB before every read of
            // a pooled connection would cost more than the read); the `n` bytes it wrote are
            // marked initialised below.
            let unfilled = unsafe {
                &mut *(buf.unfilled_mut() as *mut [std::mem::MaybeUninit<u8>] as *mut [u8])
            };
            let wanted = unfilled.len();
            match guard.try_io(|stream| stream.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    // A short read drained the socket: the next read waits for readiness
                    // instead of making a system call to learn that nothing is there (as
                    // tokio's own streams do; a new arrival since the wake-up keeps it ready).
                    if n > 0 && n < wanted {
                        guard.clear_ready();
                    }
                    // SAFETY: `read` wrote these `n` bytes.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for ComputeSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, |mut stream| stream.write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, |mut stream| stream.write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.read.get_ref().shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (ComputeSocket, tokio::net::UnixStream) {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        (ComputeSocket::from_tokio(ours).unwrap(), theirs)
    }

    #[tokio::test]
    async fn reads_and_writes_both_ways() {
        let (mut socket, mut peer) = pair().await;
        socket.write_all(b"query").await.unwrap();
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"query");
        peer.write_all(b"reply").await.unwrap();
        let mut got = [0u8; 5];
        socket.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"reply");
        // Drained: nothing there, and no error.
        assert_eq!(
            socket.try_read(&mut got).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        drop(peer);
        assert_eq!(socket.read(&mut got).await.unwrap(), 0);
    }

    /// A write far larger than the socket buffer waits for room, and completes as the peer
    /// reads: every byte arrives, in order.
    #[tokio::test]
    async fn a_write_that_blocks_completes_as_the_peer_reads() {
        let (mut socket, mut peer) = pair().await;
        let data: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            socket.write_all(&data).await.unwrap();
            socket.shutdown().await.unwrap();
            socket
        });
        let mut received = Vec::new();
        peer.read_to_end(&mut received).await.unwrap();
        assert!(received == expected, "{} bytes received", received.len());
        // The last write went through: nothing listens for room any more.
        let socket = writer.await.unwrap();
        assert!(socket.write_wait.is_none());
    }

    /// A reply that arrives after a short read drained the socket still wakes the reader.
    #[tokio::test]
    async fn a_drained_socket_wakes_for_the_next_reply() {
        let (mut socket, mut peer) = pair().await;
        for round in 0..100u8 {
            peer.write_all(&[round; 3]).await.unwrap();
            let mut got = [0u8; 64];
            let n = socket.read(&mut got).await.unwrap();
            assert_eq!(&got[..n], &[round; 3]);
        }
    }
}
