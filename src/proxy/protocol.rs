//! The few Postgres wire messages the proxy reads or writes itself, outside the relay.
//!
//! Backend messages are encoded with pgwire's types. Frontend packets of the startup phase are
//! parsed here with explicit bounds checks: these bytes come from unauthenticated clients, and a
//! hostile length must end that connection with an error, never a panic.

use std::io;

use bytes::{Buf, BufMut, BytesMut};
use pgwire::messages::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Postgres's own limit for startup-phase packets (pqcomm.h MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_PACKET: usize = 10_000;
/// Limit for one message during authentication (SASL messages are small).
pub const MAX_AUTH_MESSAGE: usize = 10_000;
/// Limit for a message from the compute during its startup (ParameterStatus, notices, errors).
pub const MAX_COMPUTE_STARTUP_MESSAGE: usize = 1 << 20;

const SSL_REQUEST: i32 = 80877103;
const GSSENC_REQUEST: i32 = 80877104;
const CANCEL_REQUEST: i32 = 80877102;
pub const PROTOCOL_3_0: i32 = 196608;

/// The first packet a client sends.
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

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("invalid length of startup packet")]
    BadStartupLength,
    #[error("unsupported frontend protocol {0}.{1}: server supports 3.0 to 3.0")]
    UnsupportedProtocol(u16, u16),
    #[error("invalid startup packet layout: expected terminator as last byte")]
    BadStartupLayout,
    #[error("invalid message length {0}")]
    BadMessageLength(usize),
    #[error("expected {expected} message, got type {got:?}")]
    Unexpected { expected: &'static str, got: char },
}

impl ProtocolError {
    /// The SQLSTATE Postgres uses for this kind of failure.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ProtocolError::Io(_) => "08006",
            _ => "08P01",
        }
    }
}

pub async fn read_startup_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<StartupPacket, ProtocolError> {
    let len = stream.read_i32().await?;
    if !(8..=MAX_STARTUP_PACKET as i32).contains(&len) {
        return Err(ProtocolError::BadStartupLength);
    }
    let mut body = vec![0u8; len as usize - 4];
    stream.read_exact(&mut body).await?;
    parse_startup_packet(&body)
}

/// Parses a startup-phase packet body (everything after the length).
pub fn parse_startup_packet(body: &[u8]) -> Result<StartupPacket, ProtocolError> {
    if body.len() < 4 {
        return Err(ProtocolError::BadStartupLength);
    }
    let mut buf = body;
    let code = buf.get_i32();
    match code {
        SSL_REQUEST => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST => {
            if buf.remaining() < 8 {
                return Err(ProtocolError::BadStartupLength);
            }
            Ok(StartupPacket::Cancel {
                pid: buf.get_i32(),
                secret: buf.get_i32(),
            })
        }
        _ => {
            let (major, minor) = ((code >> 16) as u16, (code & 0xffff) as u16);
            if major != 3 {
                return Err(ProtocolError::UnsupportedProtocol(major, minor));
            }
            if buf.last() != Some(&0) {
                return Err(ProtocolError::BadStartupLayout);
            }
            let mut params = Vec::new();
            let mut fields = buf[..buf.len() - 1].split(|b| *b == 0);
            while let Some(key) = fields.next() {
                if key.is_empty() {
                    break;
                }
                let value = fields.next().ok_or(ProtocolError::BadStartupLayout)?;
                params.push((
                    String::from_utf8_lossy(key).into_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                ));
            }
            Ok(StartupPacket::Startup { minor, params })
        }
    }
}

/// Reads one typed message (type byte, i32 length, body) into `buf`, which is cleared first.
pub async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<u8, ProtocolError> {
    let kind = stream.read_u8().await?;
    let len = stream.read_i32().await?;
    if len < 4 || len as usize > max_len {
        return Err(ProtocolError::BadMessageLength(len.max(0) as usize));
    }
    buf.clear();
    buf.resize(len as usize - 4, 0);
    stream.read_exact(buf).await?;
    Ok(kind)
}

/// Reads a password-family ('p') message, as the SASL exchange sends them.
pub async fn read_password_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<(), ProtocolError> {
    let kind = read_message(stream, buf, MAX_AUTH_MESSAGE).await?;
    if kind != b'p' {
        return Err(ProtocolError::Unexpected {
            expected: "a password (SASL response)",
            got: kind as char,
        });
    }
    Ok(())
}

/// Splits a SASLInitialResponse body into the mechanism and its data.
pub fn parse_sasl_initial_response(body: &[u8]) -> Option<(&str, &[u8])> {
    let nul = body.iter().position(|b| *b == 0)?;
    let mechanism = std::str::from_utf8(&body[..nul]).ok()?;
    let mut rest = &body[nul + 1..];
    if rest.len() < 4 {
        return None;
    }
    let len = rest.get_i32();
    if len < 0 || len as usize != rest.len() {
        return None;
    }
    Some((mechanism, rest))
}

pub fn encode<M: Message>(message: M, out: &mut BytesMut) {
    message
        .encode(out)
        .expect("encoding into a BytesMut cannot fail");
}

/// An ErrorResponse (or NoticeResponse, with `kind` b'N') with Postgres's usual fields.
pub fn error_fields(out: &mut BytesMut, kind: u8, severity: &str, code: &str, message: &str) {
    out.put_u8(kind);
    let start = out.len();
    out.put_i32(0);
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        out.put_u8(field);
        out.put_slice(value.as_bytes());
        out.put_u8(0);
    }
    out.put_u8(0);
    let len = (out.len() - start) as i32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Sends a FATAL error to the client, best effort (the client may be gone already).
pub async fn send_fatal<S: AsyncWrite + Unpin>(stream: &mut S, code: &str, message: &str) {
    let mut out = BytesMut::new();
    error_fields(&mut out, b'E', "FATAL", code, message);
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
}

/// A frontend message with a type byte and a body, for the compute's startup.
pub fn startup_message(params: &[(String, String)]) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_i32(0);
    out.put_i32(PROTOCOL_3_0);
    for (key, value) in params {
        out.put_slice(key.as_bytes());
        out.put_u8(0);
        out.put_slice(value.as_bytes());
        out.put_u8(0);
    }
    out.put_u8(0);
    let len = out.len() as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// Appends a raw typed message.
pub fn put_message(out: &mut BytesMut, kind: u8, body: &[u8]) {
    out.put_u8(kind);
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(body);
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
    fn parses_startup_and_special_requests() {
        assert_eq!(
            parse_startup_packet(&body(SSL_REQUEST, &[])).unwrap(),
            StartupPacket::SslRequest
        );
        assert_eq!(
            parse_startup_packet(&body(GSSENC_REQUEST, &[])).unwrap(),
            StartupPacket::GssEncRequest
        );
        let mut cancel = 7i32.to_be_bytes().to_vec();
        cancel.extend_from_slice(&9i32.to_be_bytes());
        assert_eq!(
            parse_startup_packet(&body(CANCEL_REQUEST, &cancel)).unwrap(),
            StartupPacket::Cancel { pid: 7, secret: 9 }
        );
        let startup =
            parse_startup_packet(&body(PROTOCOL_3_0, b"user\0app\0database\0db\0\0")).unwrap();
        assert_eq!(
            startup,
            StartupPacket::Startup {
                minor: 0,
                params: vec![
                    ("user".into(), "app".into()),
                    ("database".into(), "db".into())
                ]
            }
        );
    }

    #[test]
    fn malformed_startup_packets_are_errors() {
        assert!(parse_startup_packet(&body(PROTOCOL_3_0, b"user\0app")).is_err());
        assert!(parse_startup_packet(&body(PROTOCOL_3_0, b"user\0\0")).is_ok());
        assert!(parse_startup_packet(&body(PROTOCOL_3_0, b"user\0")).is_err());
        assert!(matches!(
            parse_startup_packet(&body(2 << 16, b"\0")),
            Err(ProtocolError::UnsupportedProtocol(2, 0))
        ));
        assert!(parse_startup_packet(&body(CANCEL_REQUEST, &[1, 2])).is_err());
    }

    #[test]
    fn startup_message_round_trips() {
        let params = vec![("user".to_string(), "u".to_string())];
        let message = startup_message(&params);
        assert_eq!(
            parse_startup_packet(&message[4..]).unwrap(),
            StartupPacket::Startup { minor: 0, params }
        );
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
    fn error_response_layout() {
        let mut out = BytesMut::new();
        error_fields(&mut out, b'E', "FATAL", "28P01", "nope");
        assert_eq!(out[0], b'E');
        let len = i32::from_be_bytes(out[1..5].try_into().unwrap()) as usize;
        assert_eq!(len + 1, out.len());
        assert_eq!(*out.last().unwrap(), 0);
    }
}
