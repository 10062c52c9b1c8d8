//! SCRAM-SHA-256 (RFC 5802/7677), server side, against stored verifiers.
//!
//! Written here rather than taken from pgwire: pgwire's SCRAM lives inside its server framework
//! (its handler traits own the connection), while pgtide must check a password against a
//! verifier it keeps itself, before and without waking the cluster's compute. The cryptography
//! is the `hmac`/`sha2` crates; verifiers are made by `postgres-protocol`, as Postgres makes them.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// A stored SCRAM-SHA-256 verifier: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl ScramVerifier {
    pub fn parse(text: &str) -> Option<ScramVerifier> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored_key, server_key) = keys.split_once(':')?;
        Some(ScramVerifier {
            iterations: iterations.parse().ok().filter(|i| *i > 0)?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored_key).ok()?.try_into().ok()?,
            server_key: B64.decode(server_key).ok()?.try_into().ok()?,
        })
    }

    /// A verifier for a plain password, made the way Postgres makes them (SASLprep, random salt,
    /// 4096 iterations).
    pub fn from_password(password: &str) -> ScramVerifier {
        let text = postgres_protocol::password::scram_sha_256(password.as_bytes());
        ScramVerifier::parse(&text).expect("postgres-protocol makes valid verifiers")
    }

    /// Accepts either a plain password or a verifier, as the config's `password` key does.
    pub fn from_config(password: &str) -> ScramVerifier {
        ScramVerifier::parse(password).unwrap_or_else(|| ScramVerifier::from_password(password))
    }

    pub fn to_text(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported by this server")]
    ChannelBinding,
    #[error("password does not match")]
    WrongPassword,
}

/// One exchange, between the client-first and the client-final message.
pub struct ScramExchange {
    verifier: ScramVerifier,
    /// An unknown user gets a made-up verifier and always fails at the end, after the same
    /// messages as a known one, so that user names cannot be probed.
    mock: bool,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ScramExchange {
    /// Reads the client-first message and returns the exchange with the server-first message.
    pub fn start(
        verifier: Option<&ScramVerifier>,
        mock_seed: &str,
        client_first: &[u8],
    ) -> Result<Self, ScramError> {
        let client_first =
            std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (gs2_header, client_first_bare) = split_gs2_header(client_first)?;
        if gs2_header.starts_with('p') {
            return Err(ScramError::ChannelBinding);
        }
        let client_nonce =
            attribute(client_first_bare, 'r').ok_or(ScramError::Malformed("no client nonce"))?;
        if client_nonce.is_empty()
            || !client_nonce
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
        {
            return Err(ScramError::Malformed("bad client nonce"));
        }
        let mut server_nonce = [0u8; 18];
        rand::rng().fill_bytes(&mut server_nonce);
        let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
        let (verifier, mock) = match verifier {
            Some(v) => (v.clone(), false),
            None => (mock_verifier(mock_seed), true),
        };
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        Ok(ScramExchange {
            verifier,
            mock,
            gs2_header: gs2_header.to_string(),
            client_first_bare: client_first_bare.to_string(),
            server_first,
            nonce,
        })
    }

    pub fn server_first(&self) -> &str {
        &self.server_first
    }

    /// Checks the client's proof; returns the server-final message to send on success.
    pub fn finish(self, client_final: &[u8]) -> Result<String, ScramError> {
        let client_final =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = client_final
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let binding =
            attribute(without_proof, 'c').ok_or(ScramError::Malformed("no channel binding"))?;
        if B64.decode(binding).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(ScramError::Malformed("channel binding does not match"));
        }
        if attribute(without_proof, 'r') != Some(self.nonce.as_str()) {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        if proof.len() != 32 {
            return Err(ScramError::Malformed("proof has the wrong length"));
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof
            .iter()
            .zip(client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        let stored_key = Sha256::digest(&client_key);
        let matches = constant_time_eq(stored_key.as_slice(), &self.verifier.stored_key);
        if self.mock || !matches {
            return Err(ScramError::WrongPassword);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

fn split_gs2_header(message: &str) -> Result<(&str, &str), ScramError> {
    let first = message
        .find(',')
        .ok_or(ScramError::Malformed("no GS2 header"))?;
    let second = message[first + 1..]
        .find(',')
        .map(|i| first + 1 + i)
        .ok_or(ScramError::Malformed("no GS2 header"))?;
    Ok((&message[..=second], &message[second + 1..]))
}

fn attribute(message: &str, name: char) -> Option<&str> {
    message.split(',').find_map(|part| {
        let mut chars = part.chars();
        (chars.next() == Some(name) && chars.next() == Some('=')).then(|| &part[2..])
    })
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A stable fake verifier per user name: the same unknown name always gets the same salt.
fn mock_verifier(seed: &str) -> ScramVerifier {
    static SECRET: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    let secret = SECRET.get_or_init(|| {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        bytes
    });
    let salt = hmac(secret, seed.as_bytes())[..16].to_vec();
    ScramVerifier {
        iterations: 4096,
        salt,
        stored_key: hmac(secret, b"stored"),
        server_key: hmac(secret, b"server"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the client side of SCRAM with postgres-protocol (the code tokio-postgres uses).
    fn login(verifier: Option<&ScramVerifier>, password: &str) -> Result<(), ScramError> {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let exchange = ScramExchange::start(verifier, "someone", client.message())?;
        client
            .update(exchange.server_first().as_bytes())
            .expect("client accepts server-first");
        let server_final = exchange.finish(client.message())?;
        client
            .finish(server_final.as_bytes())
            .expect("client accepts the server signature");
        Ok(())
    }

    #[test]
    fn right_password_logs_in_and_server_is_verified() {
        let verifier = ScramVerifier::from_password("s3cret");
        assert_eq!(login(Some(&verifier), "s3cret"), Ok(()));
    }

    #[test]
    fn wrong_password_and_unknown_user_fail_alike() {
        let verifier = ScramVerifier::from_password("s3cret");
        assert_eq!(
            login(Some(&verifier), "guess"),
            Err(ScramError::WrongPassword)
        );
        assert_eq!(login(None, "s3cret"), Err(ScramError::WrongPassword));
    }

    #[test]
    fn verifier_text_round_trips() {
        let verifier = ScramVerifier::from_password("x");
        assert_eq!(
            ScramVerifier::parse(&verifier.to_text()),
            Some(verifier.clone())
        );
        assert_eq!(ScramVerifier::from_config(&verifier.to_text()), verifier);
        assert!(ScramVerifier::parse("md5abc").is_none());
        assert!(ScramVerifier::parse("SCRAM-SHA-256$0:AAAA$AAAA:AAAA").is_none());
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        let verifier = ScramVerifier::from_password("x");
        for garbage in [
            &b""[..],
            b"n",
            b"n,,",
            b"n,,n=,r=",
            b"\xff\xfe",
            b"p=tls-server-end-point,,n=,r=abc",
        ] {
            assert!(ScramExchange::start(Some(&verifier), "u", garbage).is_err());
        }
        let exchange = ScramExchange::start(Some(&verifier), "u", b"n,,n=,r=abc").unwrap();
        assert!(exchange.finish(b"c=biws,r=wrong,p=AAAA").is_err());
    }
}
