//! The hot path: once a client is authenticated and attached to its compute, bytes are copied
//! both ways with no per-message allocation and no decoding.
//!
//! Client → compute is copied blind. Compute → client goes through a [`BackendTap`] that only
//! follows the framing (type byte + length) to see two things: ReadyForQuery's status byte (the
//! end of a transaction, for the load counters) and the tags of role changes (so that the proxy
//! re-reads password verifiers). Each read is forwarded in one write: a burst of messages costs
//! one syscall each way, which is what matters on a small machine.
//!
//! Both directions are driven by one future in the client's task (no task hop, no channel), and
//! each direction makes progress on its own, so a client that pipelines a large batch while the
//! compute streams results cannot deadlock the relay.

use std::future::poll_fn;

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::cluster::LoadCounters;

const CLIENT_TO_COMPUTE_BUFFER: usize = 16 * 1024;
const COMPUTE_TO_CLIENT_BUFFER: usize = 32 * 1024;

/// How a relayed session ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// The client closed its connection or failed; the compute connection is simply dropped.
    ClientGone,
    /// The compute closed the connection or failed. `explained` says whether its last message
    /// was an ErrorResponse (Postgres's own FATAL), so the client already knows why.
    ComputeGone { explained: bool },
}

/// Follows the compute → client message stream across reads.
#[derive(Debug, Default)]
pub struct BackendTap {
    header: [u8; 5],
    header_len: usize,
    in_body: bool,
    body_left: usize,
    kind: u8,
    capture: [u8; 12],
    capture_len: usize,
    capture_want: usize,
    last_kind: u8,
}

/// What a tap saw in one chunk.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TapEvents {
    /// The status byte of the last ReadyForQuery ('I', 'T' or 'E').
    pub last_ready_status: Option<u8>,
    /// How many ReadyForQuery messages said idle: finished transactions.
    pub idle_ready: u64,
    /// A CREATE/ALTER/DROP ROLE completed.
    pub role_changed: bool,
}

impl BackendTap {
    pub fn scan(&mut self, mut data: &[u8], events: &mut TapEvents) {
        while !data.is_empty() {
            if !self.in_body {
                let take = (5 - self.header_len).min(data.len());
                self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
                self.header_len += take;
                data = &data[take..];
                if self.header_len == 5 {
                    self.header_len = 0;
                    self.kind = self.header[0];
                    let len = i32::from_be_bytes([
                        self.header[1],
                        self.header[2],
                        self.header[3],
                        self.header[4],
                    ]);
                    self.body_left = (len.max(4) - 4) as usize;
                    self.in_body = true;
                    self.capture_len = 0;
                    self.capture_want = match self.kind {
                        b'Z' => 1,
                        b'C' => self.capture.len(),
                        _ => 0,
                    };
                    if self.body_left == 0 {
                        self.finish_message(events);
                    }
                }
            } else {
                let take = self.body_left.min(data.len());
                if self.capture_len < self.capture_want {
                    let n = (self.capture_want - self.capture_len).min(take);
                    self.capture[self.capture_len..self.capture_len + n]
                        .copy_from_slice(&data[..n]);
                    self.capture_len += n;
                }
                self.body_left -= take;
                data = &data[take..];
                if self.body_left == 0 {
                    self.finish_message(events);
                }
            }
        }
    }

    fn finish_message(&mut self, events: &mut TapEvents) {
        self.in_body = false;
        self.last_kind = self.kind;
        match self.kind {
            b'Z' if self.capture_len == 1 => {
                let status = self.capture[0];
                if status == b'I' {
                    events.idle_ready += 1;
                }
                events.last_ready_status = Some(status);
            }
            b'C' => {
                let tag = &self.capture[..self.capture_len];
                if tag.starts_with(b"CREATE ROLE")
                    || tag.starts_with(b"ALTER ROLE")
                    || tag.starts_with(b"DROP ROLE")
                {
                    events.role_changed = true;
                }
            }
            _ => {}
        }
    }

    /// Whether the last complete message was an ErrorResponse.
    pub fn last_was_error(&self) -> bool {
        self.last_kind == b'E' && !self.in_body
    }
}

/// One direction of the relay: read a chunk, write it all, repeat.
struct Pump {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    eof: bool,
}

/// Which side failed; the error itself does not change what happens next.
enum PumpError {
    Read,
    Write,
}

impl Pump {
    fn new(size: usize) -> Pump {
        Pump {
            buf: vec![0u8; size].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
        }
    }

    /// Copies until the reader is at EOF (Ready(Ok)) or an error; `on_read` sees every chunk.
    fn poll_pump<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        on_read: &mut impl FnMut(&[u8]),
    ) -> Poll<Result<(), PumpError>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.start == self.end && !self.eof {
                let mut read_buf = ReadBuf::new(&mut self.buf);
                ready!(reader.as_mut().poll_read(cx, &mut read_buf))
                    .map_err(|_| PumpError::Read)?;
                let n = read_buf.filled().len();
                if n == 0 {
                    self.eof = true;
                } else {
                    on_read(&self.buf[..n]);
                    self.start = 0;
                    self.end = n;
                }
            }
            while self.start < self.end {
                let n = ready!(writer
                    .as_mut()
                    .poll_write(cx, &self.buf[self.start..self.end]))
                .map_err(|_| PumpError::Write)?;
                if n == 0 {
                    return Poll::Ready(Err(PumpError::Write));
                }
                self.start += n;
            }
            // Plain sockets flush as a no-op; TLS needs it to push its records out.
            ready!(writer.as_mut().poll_flush(cx)).map_err(|_| PumpError::Write)?;
            if self.eof {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Relays a session until one side goes. Updates the cluster's load counters as it goes.
pub async fn relay<C, S>(client: &mut C, compute: &mut S, counters: &LoadCounters) -> RelayEnd
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut up = Pump::new(CLIENT_TO_COMPUTE_BUFFER);
    let mut down = Pump::new(COMPUTE_TO_CLIENT_BUFFER);
    let mut tap = BackendTap::default();
    let mut activity = SessionActivity::new(counters);

    let end = poll_fn(|cx| {
        let mut on_client_bytes = |chunk: &[u8]| activity.client_sent(chunk.len());
        match up.poll_pump(
            cx,
            Pin::new(&mut *client),
            Pin::new(&mut *compute),
            &mut on_client_bytes,
        ) {
            Poll::Ready(Ok(())) | Poll::Ready(Err(PumpError::Read)) => {
                return Poll::Ready(RelayEnd::ClientGone)
            }
            Poll::Ready(Err(PumpError::Write)) => {
                return Poll::Ready(RelayEnd::ComputeGone {
                    explained: tap.last_was_error(),
                })
            }
            Poll::Pending => {}
        }
        let mut on_compute_bytes = |chunk: &[u8]| {
            let mut events = TapEvents::default();
            tap.scan(chunk, &mut events);
            activity.compute_sent(chunk.len(), &events);
        };
        match down.poll_pump(
            cx,
            Pin::new(&mut *compute),
            Pin::new(&mut *client),
            &mut on_compute_bytes,
        ) {
            Poll::Ready(Ok(())) | Poll::Ready(Err(PumpError::Read)) => {
                Poll::Ready(RelayEnd::ComputeGone {
                    explained: tap.last_was_error(),
                })
            }
            Poll::Ready(Err(PumpError::Write)) => Poll::Ready(RelayEnd::ClientGone),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    end
}

/// Whether this session has a request in flight or a transaction open, kept in step with the
/// cluster's `active` counter (changed on transitions only, not per message).
struct SessionActivity<'a> {
    counters: &'a LoadCounters,
    active: bool,
}

impl<'a> SessionActivity<'a> {
    fn new(counters: &'a LoadCounters) -> Self {
        SessionActivity {
            counters,
            active: false,
        }
    }

    fn client_sent(&mut self, bytes: usize) {
        self.counters
            .bytes_from_clients
            .fetch_add(bytes as u64, Ordering::Relaxed);
        self.set_active(true);
    }

    fn compute_sent(&mut self, bytes: usize, events: &TapEvents) {
        self.counters
            .bytes_to_clients
            .fetch_add(bytes as u64, Ordering::Relaxed);
        if events.idle_ready > 0 {
            self.counters
                .transactions
                .fetch_add(events.idle_ready, Ordering::Relaxed);
        }
        if events.role_changed {
            self.counters.roles_changed.store(true, Ordering::Relaxed);
        }
        if let Some(status) = events.last_ready_status {
            self.set_active(status != b'I');
        }
    }

    fn set_active(&mut self, active: bool) {
        if self.active != active {
            self.active = active;
            if active {
                self.counters.active.fetch_add(1, Ordering::Relaxed);
            } else {
                self.counters.active.fetch_sub(1, Ordering::Relaxed);
            }
            self.counters.touch();
        }
    }
}

impl Drop for SessionActivity<'_> {
    fn drop(&mut self) {
        self.set_active(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn stream() -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(message(b'T', &[0, 0]));
        out.extend(message(b'D', &[0; 300]));
        out.extend(message(b'C', b"SELECT 1\0"));
        out.extend(message(b'Z', b"T"));
        out.extend(message(b'C', b"ALTER ROLE\0"));
        out.extend(message(b'Z', b"I"));
        out.extend(message(b'E', b"SFATAL\0\0"));
        out
    }

    #[test]
    fn tap_sees_the_same_at_any_chunking() {
        let data = stream();
        let mut whole = TapEvents::default();
        let mut tap = BackendTap::default();
        tap.scan(&data, &mut whole);
        assert_eq!(whole.idle_ready, 1);
        assert_eq!(whole.last_ready_status, Some(b'I'));
        assert!(whole.role_changed);
        assert!(tap.last_was_error());
        for chunk in [1, 2, 3, 5, 7, 64] {
            let mut tap = BackendTap::default();
            let mut seen = TapEvents::default();
            for piece in data.chunks(chunk) {
                tap.scan(piece, &mut seen);
            }
            assert_eq!(seen, whole, "chunks of {chunk}");
        }
    }

    #[test]
    fn tap_survives_garbage_lengths() {
        let mut tap = BackendTap::default();
        let mut events = TapEvents::default();
        tap.scan(
            &[b'Z', 0xff, 0xff, 0xff, 0xff, b'Z', 0, 0, 0, 0, 1, 2, 3],
            &mut events,
        );
        tap.scan(&[0u8; 1000], &mut events);
    }
}
