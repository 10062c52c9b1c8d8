//! Phase 2 of a connection: everything before authentication. SSLRequest (TLS when the cluster
//! has a certificate, else 'N'), GSSENCRequest ('N'), CancelRequest (in clear, or as the first
//! packet inside TLS as libpq 17 sends it), then the StartupMessage, whose parameters are
//! checked and split into what pgtide handles and what the compute gets.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::errors::send_fatal;
use super::{ClientStream, ProxyShared};
use crate::wire::{self, ReadStartupError, StartupPacket};

/// Handshake and authentication must finish within this (Postgres's authentication_timeout is
/// 60 s; a proxy facing many clients should be quicker to drop silent sockets).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// What the client asked for in its StartupMessage.
pub struct Startup {
    pub user: String,
    pub database: String,
    /// What goes to the compute: the client's parameters less the ones pgtide handles itself.
    pub params: Vec<(String, String)>,
    pub minor: u16,
    pub unsupported_options: Vec<String>,
}

impl Startup {
    /// The parameters that are session settings (all but user, database and options, with
    /// `options`' `-c name=value` pairs spelled out).
    pub fn settings(&self) -> Vec<(String, String)> {
        let mut settings = Vec::new();
        for (key, value) in &self.params {
            match key.as_str() {
                "user" | "database" | "replication" => {}
                "options" => settings.extend(parse_options(value)),
                _ => settings.push((key.clone(), value.clone())),
            }
        }
        settings
    }
}

/// What [`option_words`] does with a backslash escape.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Escapes {
    /// `\ ` is a space inside the word (what the compute makes of it).
    Resolve,
    /// The backslash stays, so that words passed on read as the client wrote them.
    Keep,
}

/// The whitespace-separated words of an `options` startup parameter, a backslash keeping the
/// next character in the word (libpq's PGOPTIONS quoting).
pub fn option_words(options: &str, escapes: Escapes) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if escapes == Escapes::Keep {
                    word.push(c);
                }
                word.extend(chars.next());
            }
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// `-c name=value` and `--name=value` pairs of an `options` startup parameter (backslash
/// escapes a space, as libpq's PGOPTIONS does).
pub fn parse_options(options: &str) -> Vec<(String, String)> {
    let words = option_words(options, Escapes::Resolve);
    let mut settings = Vec::new();
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        let pair = if word == "-c" {
            words.next()
        } else if let Some(rest) = word.strip_prefix("--") {
            Some(rest.to_string())
        } else {
            word.strip_prefix("-c").map(str::to_string)
        };
        if let Some((name, value)) = pair.as_deref().and_then(|p| p.split_once('=')) {
            settings.push((name.replace('-', "_"), value.to_string()));
        }
    }
    settings
}

/// Returns `None` when the connection is done (a cancel request, garbage, a refusal sent).
pub async fn handshake(
    mut tcp: TcpStream,
    tls: Option<&super::tls::TlsServer>,
    shared: &ProxyShared,
) -> Option<(ClientStream, Startup)> {
    let mut tls_offered = false;
    let mut stream = loop {
        match wire::read_startup_packet(&mut tcp).await {
            Ok(StartupPacket::SslRequest) if !tls_offered => {
                tls_offered = true;
                match tls {
                    Some(tls) => {
                        tcp.write_all(b"S").await.ok()?;
                        match tls.acceptor.accept(tcp).await {
                            Ok(stream) => break ClientStream::Tls(Box::new(stream)),
                            Err(e) => {
                                tracing::debug!(error = %e, "TLS handshake failed");
                                return None;
                            }
                        }
                    }
                    None => tcp.write_all(b"N").await.ok()?,
                }
            }
            Ok(StartupPacket::GssEncRequest) => tcp.write_all(b"N").await.ok()?,
            Ok(StartupPacket::Cancel { pid, secret }) => {
                shared.cancels.cancel(pid, secret).await;
                return None;
            }
            Ok(StartupPacket::Startup { minor, params }) => {
                return startup(ClientStream::Plain(tcp), minor, params).await;
            }
            Ok(StartupPacket::SslRequest) => {
                send_fatal(&mut tcp, "08P01", "SSLRequest sent twice").await;
                return None;
            }
            Err(e) => return reject(ClientStream::Plain(tcp), e).await,
        }
    };
    // Under TLS: a StartupMessage, or a CancelRequest.
    match wire::read_startup_packet(&mut stream).await {
        Ok(StartupPacket::Startup { minor, params }) => startup(stream, minor, params).await,
        Ok(StartupPacket::Cancel { pid, secret }) => {
            shared.cancels.cancel(pid, secret).await;
            None
        }
        Ok(_) => {
            send_fatal(
                &mut stream,
                "08P01",
                "expected a startup message after the TLS handshake",
            )
            .await;
            None
        }
        Err(e) => reject(stream, e).await,
    }
}

/// Answers a connection over the handshake bound and closes it. The client's packets are read
/// whole before the answer: closing a socket with unread bytes in it sends a reset, which may
/// reach the client before it read the error, and libpq then reports only "server closed the
/// connection unexpectedly".
pub async fn refuse_busy(mut tcp: TcpStream) {
    let answer = async {
        let mut packet = wire::read_startup_packet(&mut tcp).await;
        // An SSLRequest or GSSENCRequest first gets its 'N' (as Postgres answers without TLS),
        // so that the error reaches libpq as an error; then comes the StartupMessage.
        if matches!(
            packet,
            Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest)
        ) {
            tcp.write_all(b"N").await?;
            packet = wire::read_startup_packet(&mut tcp).await;
        }
        if let Err(ReadStartupError::Io(e)) = packet {
            return Err(e);
        }
        tracing::debug!("refused: too many connections in their handshake");
        // Says which bound was hit, so that it is not mistaken for max_client_connections.
        let message = format!(
            "sorry, too many connections are starting at once ({} are still logging in); \
             try again shortly",
            super::MAX_HANDSHAKES
        );
        send_fatal(&mut tcp, "53300", &message).await;
        tcp.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}

async fn reject(mut stream: ClientStream, e: ReadStartupError) -> Option<(ClientStream, Startup)> {
    tracing::debug!(error = %e, "bad startup packet");
    if let ReadStartupError::Startup(e) = e {
        send_fatal(&mut stream, "08P01", &e.to_string()).await;
    }
    None
}

async fn startup(
    mut stream: ClientStream,
    minor: u16,
    params: Vec<(String, String)>,
) -> Option<(ClientStream, Startup)> {
    let mut user = None;
    let mut database = None;
    let mut forwarded = Vec::with_capacity(params.len());
    let mut unsupported_options = Vec::new();
    for (key, value) in params {
        match key.as_str() {
            "user" => user = Some(value.clone()),
            "database" => database = Some(value.clone()),
            "replication" if !matches!(value.as_str(), "false" | "off" | "no" | "0") => {
                send_fatal(
                    &mut stream,
                    "28000",
                    "replication connections are not served through pgtide's proxy",
                )
                .await;
                return None;
            }
            _ if key.starts_with("_pq_.") => {
                unsupported_options.push(key);
                continue;
            }
            _ => {}
        }
        forwarded.push((key, value));
    }
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        send_fatal(
            &mut stream,
            "28000",
            "no PostgreSQL user name specified in startup packet",
        )
        .await;
        return None;
    };
    let database = database
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    if !forwarded.iter().any(|(k, _)| k == "database") {
        forwarded.push(("database".to_string(), database.clone()));
    }
    Some((
        stream,
        Startup {
            user,
            database,
            params: forwarded,
            minor,
            unsupported_options,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_become_settings() {
        assert_eq!(
            parse_options("-c search_path=a,b --statement-timeout=5s -cwork_mem=4MB -c x=a\\ b"),
            vec![
                ("search_path".to_string(), "a,b".to_string()),
                ("statement_timeout".to_string(), "5s".to_string()),
                ("work_mem".to_string(), "4MB".to_string()),
                ("x".to_string(), "a b".to_string()),
            ]
        );
        assert!(parse_options("-d 5").is_empty());
    }
}
