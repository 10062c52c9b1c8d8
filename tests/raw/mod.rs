//! A client that speaks the protocol by hand, for tests that must send exactly some bytes
//! (several messages in one write, a CancelRequest inside TLS, SCRAM with channel binding).
#![allow(dead_code)]

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use pgtide::wire::{self, Message};

pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub struct Raw {
    pub stream: Box<dyn Stream>,
    buf: BytesMut,
    pub pid: i32,
    pub secret: i32,
}

/// Accepts any server certificate (the tests make their own).
#[derive(Debug)]
struct AnyCert;

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// TCP, then TLS through an SSLRequest when `tls`. Returns the stream and the server's
/// certificate (DER) under TLS.
pub async fn open(port: u16, tls: bool) -> (Box<dyn Stream>, Option<Vec<u8>>) {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    if !tls {
        return (Box::new(tcp), None);
    }
    let mut request = BytesMut::new();
    request.put_i32(8);
    request.put_i32(wire::SSL_REQUEST);
    tcp.write_all(&request).await.unwrap();
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"S", "the server takes TLS");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyCert))
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    let cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec());
    (Box::new(stream), cert)
}

impl Raw {
    /// Logs in with SCRAM-SHA-256 (or -PLUS with `tls-server-end-point` under TLS when `plus`)
    /// and reads up to the first ReadyForQuery.
    pub async fn login(
        port: u16,
        user: &str,
        password: &str,
        tls: bool,
        plus: bool,
    ) -> Result<Raw, String> {
        let (stream, cert) = open(port, tls).await;
        let mut raw = Raw {
            stream,
            buf: BytesMut::new(),
            pid: 0,
            secret: 0,
        };
        let params =
            [("user", user), ("database", "postgres")].map(|(k, v)| (k.to_string(), v.to_string()));
        raw.send(&wire::startup_message(&params)).await;
        let request = raw.next().await;
        if request.kind == b'E' {
            return Err(wire::error_text(request.body()));
        }
        let mechanisms = String::from_utf8_lossy(&request.body()[4..]).into_owned();
        let (mechanism, binding) = match (plus, cert) {
            (true, Some(cert)) => {
                assert!(mechanisms.contains("SCRAM-SHA-256-PLUS"), "{mechanisms:?}");
                let hash = <sha2::Sha256 as sha2::Digest>::digest(&cert).to_vec();
                (
                    "SCRAM-SHA-256-PLUS",
                    ChannelBinding::tls_server_end_point(hash),
                )
            }
            _ => ("SCRAM-SHA-256", ChannelBinding::unsupported()),
        };
        let mut scram = ScramSha256::new(password.as_bytes(), binding);
        let mut out = BytesMut::new();
        let start = wire::begin_message(&mut out, b'p');
        wire::put_cstr(&mut out, mechanism.as_bytes());
        out.put_i32(scram.message().len() as i32);
        out.put_slice(scram.message());
        wire::end_message(&mut out, start);
        raw.send(&out).await;
        let first = raw.next().await;
        if first.kind == b'E' {
            return Err(wire::error_text(first.body()));
        }
        scram
            .update(&first.body()[4..])
            .map_err(|e| e.to_string())?;
        let mut out = BytesMut::new();
        wire::put_message(&mut out, b'p', scram.message());
        raw.send(&out).await;
        loop {
            let message = raw.next().await;
            match message.kind {
                b'E' => return Err(wire::error_text(message.body())),
                b'R' if message.body()[..4] == [0, 0, 0, 12] => scram
                    .finish(&message.body()[4..])
                    .map_err(|e| e.to_string())?,
                b'K' => {
                    let body = message.body();
                    raw.pid = i32::from_be_bytes(body[..4].try_into().unwrap());
                    raw.secret = i32::from_be_bytes(body[4..8].try_into().unwrap());
                }
                b'Z' => return Ok(raw),
                _ => {}
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// The next message; panics at EOF.
    pub async fn next(&mut self) -> Message {
        loop {
            if let Some(message) = wire::next_message(&mut self.buf, 1 << 30).unwrap() {
                return message;
            }
            let n = self.stream.read_buf(&mut self.buf).await.unwrap();
            assert!(n > 0, "the server closed the connection");
        }
    }

    /// Messages up to and including the next ReadyForQuery.
    pub async fn until_ready(&mut self) -> Vec<Message> {
        let mut messages = Vec::new();
        loop {
            let message = self.next().await;
            let done = message.kind == b'Z';
            messages.push(message);
            if done {
                return messages;
            }
        }
    }
}

pub fn query(sql: &str) -> BytesMut {
    let mut out = BytesMut::new();
    wire::query(&mut out, sql);
    out
}

pub fn terminate() -> BytesMut {
    let mut out = BytesMut::new();
    wire::put_message(&mut out, b'X', b"");
    out
}
