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
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::cluster::load::ActiveGuard;
use crate::cluster::LoadCounters;
use crate::wire;

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
    header: [u8; wire::HEADER_LEN],
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
                let take = (wire::HEADER_LEN - self.header_len).min(data.len());
                self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
                self.header_len += take;
                data = &data[take..];
                if self.header_len == wire::HEADER_LEN {
                    self.header_len = 0;
                    // The compute is trusted: a length it should never send is read as an
                    // empty body, and the relay goes on copying bytes as they are.
                    let (kind, body_len) = wire::decode_header(&self.header, usize::MAX)
                        .unwrap_or((self.header[0], 0));
                    self.kind = kind;
                    self.body_left = body_len;
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

/// Whether this session has a request in flight or a transaction open: it holds an active
/// guard then (taken and dropped on transitions only, not per message).
struct SessionActivity<'a> {
    counters: &'a LoadCounters,
    active: Option<ActiveGuard<'a>>,
    /// A role DDL completed; it counts once its transaction ended (ReadyForQuery idle).
    role_changed: bool,
}

impl<'a> SessionActivity<'a> {
    fn new(counters: &'a LoadCounters) -> Self {
        SessionActivity {
            counters,
            active: None,
            role_changed: false,
        }
    }

    fn client_sent(&mut self, bytes: usize) {
        self.counters.add_bytes_from_clients(bytes);
        self.set_active(true);
    }

    fn compute_sent(&mut self, bytes: usize, events: &TapEvents) {
        self.counters.add_bytes_to_clients(bytes);
        self.counters.add_transactions(events.idle_ready);
        self.role_changed |= events.role_changed;
        if self.role_changed && events.idle_ready > 0 {
            self.role_changed = false;
            self.counters.mark_roles_changed();
        }
        if let Some(status) = events.last_ready_status {
            self.set_active(status != b'I');
        }
    }

    fn set_active(&mut self, active: bool) {
        if active && self.active.is_none() {
            self.active = Some(self.counters.active_guard());
        } else if !active {
            self.active = None;
        }
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
    fn tap_reads_nothing_into_garbage_and_bodies() {
        // Lengths below 4 and negative ones are empty bodies: no ReadyForQuery status is read
        // from the bytes after them.
        let mut tap = BackendTap::default();
        let mut events = TapEvents::default();
        tap.scan(
            &[b'Z', 0xff, 0xff, 0xff, 0xff, b'Z', 0, 0, 0, 0, 1, 2, 3],
            &mut events,
        );
        tap.scan(&[0u8; 1000], &mut events);
        assert_eq!(events, TapEvents::default());
        // Bytes inside a long body that look like ReadyForQuery are body, not messages.
        let mut tap = BackendTap::default();
        let mut events = TapEvents::default();
        let mut data = message(b'D', &[0; 100]);
        data[5..11].copy_from_slice(&message(b'Z', b"I"));
        tap.scan(&data, &mut events);
        assert_eq!(events, TapEvents::default());
        tap.scan(&message(b'Z', b"T"), &mut events);
        assert_eq!(events.last_ready_status, Some(b'T'));
        assert_eq!(events.idle_ready, 0);
    }

    /// A relay over in-memory pipes: a transaction's bytes reach the compute unchanged and its
    /// answer reaches the client, and the counters follow ReadyForQuery.
    #[tokio::test]
    async fn relay_copies_both_ways_and_counts() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let counters = crate::cluster::load::tests::counters();
        let (mut client, mut client_side) = tokio::io::duplex(64);
        let (mut compute, mut compute_side) = tokio::io::duplex(64);
        let relay = async {
            relay(&mut client_side, &mut compute_side, &counters).await;
        };
        let peers = async {
            let query = message(b'Q', b"BEGIN\0");
            client.write_all(&query).await.unwrap();
            let mut seen = vec![0u8; query.len()];
            compute.read_exact(&mut seen).await.unwrap();
            assert_eq!(seen, query);
            let mut answer = message(b'C', b"BEGIN\0");
            answer.extend(message(b'Z', b"T"));
            compute.write_all(&answer).await.unwrap();
            let mut got = vec![0u8; answer.len()];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(got, answer);
            assert_eq!(counters.active(), 1, "a transaction is open");
            compute.write_all(&message(b'Z', b"I")).await.unwrap();
            let mut got = [0u8; 6];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(counters.transactions(), 1);
            assert_eq!(counters.active(), 0);
            drop(client);
        };
        tokio::join!(relay, peers);
        assert_eq!(counters.active(), 0);
        assert!(counters.bytes_from_clients() > 0 && counters.bytes_to_clients() > 0);
    }
}
