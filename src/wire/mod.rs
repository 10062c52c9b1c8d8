//! Postgres wire framing, shared by every part that speaks the protocol: the proxy (clients and
//! compute connections) and the WAL receiver (replication connections).
//!
//! A message is a type byte, an i32 length that counts itself, and a body. [`next_message`]
//! takes complete messages off the front of a read buffer with `split_to().freeze()`, so a
//! message is a zero-copy [`Bytes`] view of the buffer it was read into; [`peek_header`] lets a
//! relay decide on a message from its header alone and forward its bytes without splitting.
//!
//! The few messages pgtide writes itself (authentication requests, BackendKeyData,
//! ReadyForQuery, errors and notices, the startup packet) are written here by hand. pgtide used to
//! take them from the pgwire crate, but it needed only those few, each a handful of bytes; the
//! encoders below are shorter than the glue was and keep the dependency tree small.
//!
//! Every parser here takes untrusted bytes: a hostile length is an error, never a panic or an
//! allocation of that size.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The type byte and the length: what comes before every body (startup packets have no type).
pub const HEADER_LEN: usize = 5;
/// Postgres's own limit for startup-phase packets (pqcomm.h MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_PACKET: usize = 10_000;

pub const PROTOCOL_3_0: i32 = 196608;
pub const SSL_REQUEST: i32 = 80877103;
pub const GSSENC_REQUEST: i32 = 80877104;
pub const CANCEL_REQUEST: i32 = 80877102;

/// A framing error: the peer sent a length that cannot be right, or longer than allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid message length {0}")]
pub struct BadLength(pub i64);

/// One complete message, as read: `frame` holds the header and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: u8,
    pub frame: Bytes,
}

impl Message {
    pub fn body(&self) -> &[u8] {
        &self.frame[HEADER_LEN..]
    }

    /// The body as its own `Bytes` (no copy).
    pub fn body_bytes(&self) -> Bytes {
        self.frame.slice(HEADER_LEN..)
    }
}

/// A message header's type byte and the length of the body after it (the i32 length counts
/// itself, not the type byte). A length below 4 or above `max_len` is an error.
pub fn decode_header(header: &[u8; HEADER_LEN], max_len: usize) -> Result<(u8, usize), BadLength> {
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len < 4 || len as usize > max_len {
        return Err(BadLength(len as i64));
    }
    Ok((header[0], len as usize - 4))
}

/// The type and total length (header included) of the message at the start of `buf`, once its
/// header is there.
pub fn peek_header(buf: &[u8], max_len: usize) -> Result<Option<(u8, usize)>, BadLength> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let (kind, body_len) = decode_header(header, max_len)?;
    Ok(Some((kind, HEADER_LEN + body_len)))
}

/// Reads one startup-phase packet (an i32 length that counts itself, then the body; no type
/// byte) and parses it. A length outside Postgres's own bounds is refused before any read of
/// that size.
pub async fn read_startup_packet<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<StartupPacket, ReadStartupError> {
    use tokio::io::AsyncReadExt;
    let len = stream.read_i32().await?;
    if !(8..=MAX_STARTUP_PACKET as i32).contains(&len) {
        return Err(StartupError::BadLength.into());
    }
    let mut body = vec![0u8; len as usize - 4];
    stream.read_exact(&mut body).await?;
    Ok(parse_startup_packet(&body)?)
}

/// Why a startup packet could not be read: the socket, or what was on it.
#[derive(Debug, thiserror::Error)]
pub enum ReadStartupError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Startup(#[from] StartupError),
}

/// Takes the next complete message off the front of `buf`, if it is all there. When only part
/// of it is, room for the rest is reserved so that the next read can complete it.
pub fn next_message(buf: &mut BytesMut, max_len: usize) -> Result<Option<Message>, BadLength> {
    let Some((kind, total)) = peek_header(buf, max_len)? else {
        return Ok(None);
    };
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    Ok(Some(Message {
        kind,
        frame: buf.split_to(total).freeze(),
    }))
}

/// Appends a typed message.
pub fn put_message(out: &mut BytesMut, kind: u8, body: &[u8]) {
    out.reserve(HEADER_LEN + body.len());
    out.put_u8(kind);
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(body);
}

/// Starts a typed message whose body the caller appends; [`end_message`] writes its length.
pub fn begin_message(out: &mut BytesMut, kind: u8) -> usize {
    out.put_u8(kind);
    let start = out.len();
    out.put_i32(0);
    start
}

pub fn end_message(out: &mut BytesMut, start: usize) {
    let len = (out.len() - start) as i32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn put_cstr(out: &mut BytesMut, text: &[u8]) {
    out.put_slice(text);
    out.put_u8(0);
}

/// Splits a NUL-terminated string off the front: (the string, the rest after the NUL).
pub fn split_cstr(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = bytes.iter().position(|b| *b == 0)?;
    Some((&bytes[..nul], &bytes[nul + 1..]))
}

/// An ErrorResponse (`kind` b'E') or NoticeResponse (b'N') with Postgres's usual fields.
pub fn error_response(out: &mut BytesMut, kind: u8, severity: &str, code: &str, message: &str) {
    let start = begin_message(out, kind);
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        out.put_u8(field);
        put_cstr(out, value.as_bytes());
    }
    out.put_u8(0);
    end_message(out, start);
}

/// One field (b'M' message, b'C' SQLSTATE, …) of an ErrorResponse or NoticeResponse body.
pub fn error_field(body: &[u8], field: u8) -> Option<&[u8]> {
    let mut rest = body;
    while let Some((&code, after)) = rest.split_first() {
        if code == 0 {
            return None;
        }
        let (value, next) = split_cstr(after)?;
        if code == field {
            return Some(value);
        }
        rest = next;
    }
    None
}

/// The message text of an ErrorResponse body, for logs and errors.
pub fn error_text(body: &[u8]) -> String {
    error_field(body, b'M')
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .unwrap_or_else(|| "unknown".to_string())
}

pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    put_message(out, b'Z', &[status]);
}

pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    let start = begin_message(out, b'K');
    out.put_i32(pid);
    out.put_i32(secret);
    end_message(out, start);
}

/// NegotiateProtocolVersion: the newest minor version served and the options not understood.
pub fn negotiate_protocol_version(out: &mut BytesMut, minor: i32, unsupported: &[String]) {
    let start = begin_message(out, b'v');
    out.put_i32(minor);
    out.put_i32(unsupported.len() as i32);
    for option in unsupported {
        put_cstr(out, option.as_bytes());
    }
    end_message(out, start);
}

/// The authentication requests ('R') pgtide sends.
pub enum Authentication<'a> {
    Ok,
    Sasl(&'a [&'a str]),
    SaslContinue(&'a [u8]),
    SaslFinal(&'a [u8]),
}

pub fn authentication(out: &mut BytesMut, request: Authentication<'_>) {
    let start = begin_message(out, b'R');
    match request {
        Authentication::Ok => out.put_i32(0),
        Authentication::Sasl(mechanisms) => {
            out.put_i32(10);
            for mechanism in mechanisms {
                put_cstr(out, mechanism.as_bytes());
            }
            out.put_u8(0);
        }
        Authentication::SaslContinue(data) => {
            out.put_i32(11);
            out.put_slice(data);
        }
        Authentication::SaslFinal(data) => {
            out.put_i32(12);
            out.put_slice(data);
        }
    }
    end_message(out, start);
}

/// A StartupMessage (protocol 3.0) with these parameters.
pub fn startup_message(params: &[(String, String)]) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_i32(0);
    out.put_i32(PROTOCOL_3_0);
    for (key, value) in params {
        put_cstr(&mut out, key.as_bytes());
        put_cstr(&mut out, value.as_bytes());
    }
    out.put_u8(0);
    let len = out.len() as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// A simple Query message.
pub fn query(out: &mut BytesMut, sql: &str) {
    let start = begin_message(out, b'Q');
    put_cstr(out, sql.as_bytes());
    end_message(out, start);
}

/// The first packet a client sends (no type byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: i32,
        secret: i32,
    },
    Startup {
        minor: u16,
        params: Vec<(String, String)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    #[error("invalid length of startup packet")]
    BadLength,
    #[error("unsupported frontend protocol {0}.{1}: server supports 3.0 to 3.0")]
    UnsupportedProtocol(u16, u16),
    #[error("invalid startup packet layout: expected terminator as last byte")]
    BadLayout,
}

/// Parses a startup-phase packet body (everything after the length).
pub fn parse_startup_packet(body: &[u8]) -> Result<StartupPacket, StartupError> {
    if body.len() < 4 {
        return Err(StartupError::BadLength);
    }
    let mut buf = body;
    match buf.get_i32() {
        SSL_REQUEST => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST => {
            if buf.remaining() < 8 {
                return Err(StartupError::BadLength);
            }
            Ok(StartupPacket::Cancel {
                pid: buf.get_i32(),
                secret: buf.get_i32(),
            })
        }
        code => {
            let (major, minor) = ((code >> 16) as u16, (code & 0xffff) as u16);
            if major != 3 {
                return Err(StartupError::UnsupportedProtocol(major, minor));
            }
            if buf.last() != Some(&0) {
                return Err(StartupError::BadLayout);
            }
            let mut params = Vec::new();
            let mut fields = buf[..buf.len() - 1].split(|b| *b == 0);
            while let Some(key) = fields.next() {
                if key.is_empty() {
                    break;
                }
                let value = fields.next().ok_or(StartupError::BadLayout)?;
                params.push((
                    String::from_utf8_lossy(key).into_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                ));
            }
            Ok(StartupPacket::Startup { minor, params })
        }
    }
}

/// A CancelRequest packet (length included).
pub fn cancel_request(pid: i32, secret: i32) -> [u8; 16] {
    let mut packet = [0u8; 16];
    packet[..4].copy_from_slice(&16i32.to_be_bytes());
    packet[4..8].copy_from_slice(&CANCEL_REQUEST.to_be_bytes());
    packet[8..12].copy_from_slice(&pid.to_be_bytes());
    packet[12..].copy_from_slice(&secret.to_be_bytes());
    packet
}

/// Splits a SASLInitialResponse body into the mechanism and its data.
pub fn parse_sasl_initial_response(body: &[u8]) -> Option<(&str, &[u8])> {
    let (mechanism, mut rest) = split_cstr(body)?;
    let mechanism = std::str::from_utf8(mechanism).ok()?;
    if rest.len() < 4 {
        return None;
    }
    let len = rest.get_i32();
    if len < 0 || len as usize != rest.len() {
        return None;
    }
    Some((mechanism, rest))
}

/// A DataRow body as text columns (NULL as `None`).
pub fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>, BadLength> {
    let mut buf = body;
    if buf.remaining() < 2 {
        return Err(BadLength(buf.len() as i64));
    }
    let columns = buf.get_i16();
    let mut row = Vec::with_capacity(columns.max(0) as usize);
    for _ in 0..columns {
        if buf.remaining() < 4 {
            return Err(BadLength(buf.len() as i64));
        }
        let len = buf.get_i32();
        if len < 0 {
            row.push(None);
            continue;
        }
        if buf.remaining() < len as usize {
            return Err(BadLength(len as i64));
        }
        row.push(Some(
            String::from_utf8_lossy(&buf[..len as usize]).into_owned(),
        ));
        buf.advance(len as usize);
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: i32, rest: &[u8]) -> Vec<u8> {
        let mut out = code.to_be_bytes().to_vec();
        out.extend_from_slice(rest);
        out
    }

    #[test]
    fn messages_are_framed_across_reads_and_bad_lengths_refused() {
        let mut all = BytesMut::new();
        put_message(&mut all, b'Q', b"SELECT 1\0");
        put_message(&mut all, b'S', b"");
        let bytes = all.freeze();
        let mut buf = BytesMut::new();
        let mut seen = Vec::new();
        for piece in bytes.chunks(3) {
            buf.extend_from_slice(piece);
            while let Some(message) = next_message(&mut buf, 100).unwrap() {
                seen.push((message.kind, message.body().to_vec()));
            }
        }
        assert_eq!(
            seen,
            vec![(b'Q', b"SELECT 1\0".to_vec()), (b'S', Vec::new())]
        );
        assert!(buf.is_empty());
        let mut hostile = BytesMut::from(&[b'Q', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(next_message(&mut hostile, 1 << 20).is_err());
        let mut short = BytesMut::from(&[b'Q', 0, 0, 0, 3][..]);
        assert_eq!(next_message(&mut short, 100), Err(BadLength(3)));
    }

    #[test]
    fn parses_startup_and_special_requests() {
        assert_eq!(
            parse_startup_packet(&body(SSL_REQUEST, &[])).unwrap(),
            StartupPacket::SslRequest
        );
        assert_eq!(
            parse_startup_packet(&body(GSSENC_REQUEST, &[])).unwrap(),
            StartupPacket::GssEncRequest
        );
        let cancel = cancel_request(7, 9);
        assert_eq!(
            parse_startup_packet(&cancel[4..]).unwrap(),
            StartupPacket::Cancel { pid: 7, secret: 9 }
        );
        let params = vec![("user".to_string(), "u".to_string())];
        let message = startup_message(&params);
        assert_eq!(
            parse_startup_packet(&message[4..]).unwrap(),
            StartupPacket::Startup { minor: 0, params }
        );
    }

    #[test]
    fn malformed_startup_packets_are_errors() {
        assert!(parse_startup_packet(&body(PROTOCOL_3_0, b"user\0app")).is_err());
        assert!(parse_startup_packet(&body(PROTOCOL_3_0, b"user\0\0")).is_ok());
        assert!(parse_startup_packet(&body(PROTOCOL_3_0, b"user\0")).is_err());
        assert_eq!(
            parse_startup_packet(&body(2 << 16, b"\0")),
            Err(StartupError::UnsupportedProtocol(2, 0))
        );
        assert!(parse_startup_packet(&body(CANCEL_REQUEST, &[1, 2])).is_err());
    }

    #[test]
    fn sasl_initial_response() {
        let mut message = b"SCRAM-SHA-256\0".to_vec();
        message.extend_from_slice(&3i32.to_be_bytes());
        message.extend_from_slice(b"abc");
        assert_eq!(
            parse_sasl_initial_response(&message),
            Some(("SCRAM-SHA-256", &b"abc"[..]))
        );
        message.truncate(message.len() - 1);
        assert_eq!(parse_sasl_initial_response(&message), None);
        assert_eq!(parse_sasl_initial_response(b"no-nul"), None);
    }

    #[test]
    fn written_messages_have_their_lengths_and_fields() {
        let mut out = BytesMut::new();
        error_response(&mut out, b'E', "FATAL", "28P01", "nope");
        let message = next_message(&mut out, 1000).unwrap().unwrap();
        assert_eq!(message.kind, b'E');
        assert_eq!(error_field(message.body(), b'C'), Some(&b"28P01"[..]));
        assert_eq!(error_text(message.body()), "nope");
        assert_eq!(error_field(message.body(), b'D'), None);

        authentication(&mut out, Authentication::Sasl(&["A", "B"]));
        let message = next_message(&mut out, 1000).unwrap().unwrap();
        assert_eq!(message.body(), b"\0\0\0\x0aA\0B\0\0");
        backend_key_data(&mut out, 1, 2);
        let message = next_message(&mut out, 1000).unwrap().unwrap();
        assert_eq!(message.body(), [0, 0, 0, 1, 0, 0, 0, 2]);
        negotiate_protocol_version(&mut out, 0, &["_pq_.x".to_string()]);
        let message = next_message(&mut out, 1000).unwrap().unwrap();
        assert_eq!(message.body(), b"\0\0\0\0\0\0\0\x01_pq_.x\0");
    }

    #[test]
    fn data_rows_with_nulls_and_short_rows() {
        let mut body = BytesMut::new();
        body.put_i16(2);
        body.put_i32(2);
        body.put_slice(b"hi");
        body.put_i32(-1);
        assert_eq!(
            parse_data_row(&body).unwrap(),
            vec![Some("hi".to_string()), None]
        );
        assert!(parse_data_row(&body[..5]).is_err());
        assert!(parse_data_row(&[0, 1, 0, 0, 0, 9, b'x']).is_err());
    }
}
