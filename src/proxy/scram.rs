//! SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 5802/7677, `tls-server-end-point` binding),
//! server side, against stored verifiers.
//!
//! pgtide checks a password against a verifier it keeps itself, before and without waking the
//! cluster's compute. The cryptography is the `hmac`/`sha2` crates, comparisons in constant time
//! with `subtle`; verifiers are made by `postgres-protocol`, as Postgres makes them.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

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
    #[error("SCRAM channel binding negotiation error: {0}")]
    ChannelBinding(&'static str),
    #[error("password does not match")]
    WrongPassword,
}

/// The SCRAM mechanisms, as announced.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// What the connection offers for channel binding.
#[derive(Debug, Clone, Copy)]
pub enum Binding<'a> {
    /// No TLS (or a certificate without a binding): only SCRAM-SHA-256 is offered.
    Unavailable,
    /// TLS: SCRAM-SHA-256-PLUS is offered with this `tls-server-end-point` data.
    Offered(&'a [u8]),
}

impl Binding<'_> {
    /// The mechanisms to announce, best first.
    pub fn mechanisms(&self) -> &'static [&'static str] {
        match self {
            Binding::Unavailable => &[SCRAM_SHA_256],
            Binding::Offered(_) => &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256],
        }
    }
}

/// Who the exchange is for, when the user is unknown: a made-up verifier that looks real.
pub struct Mock<'a> {
    pub seed: &'a str,
    pub iterations: u32,
}

/// One exchange, between the client-first and the client-final message.
pub struct ScramExchange {
    verifier: ScramVerifier,
    /// An unknown user gets a made-up verifier and always fails at the end, after the same
    /// messages as a known one, so that user names cannot be probed.
    mock: bool,
    /// What the client-final's `c=` must hold: the GS2 header, then the binding data if used.
    channel_binding: Vec<u8>,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ScramExchange {
    /// Reads the client-first message (for `mechanism`, one of those `binding` offered) and
    /// returns the exchange with the server-first message. Known and unknown users take the
    /// same steps; an unknown one fails at [`ScramExchange::finish`].
    pub fn start(
        verifier: Option<&ScramVerifier>,
        mock: Mock<'_>,
        mechanism: &str,
        binding: Binding<'_>,
        client_first: &[u8],
    ) -> Result<Self, ScramError> {
        let client_first =
            std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (gs2_header, client_first_bare) = split_gs2_header(client_first)?;
        let mut channel_binding = gs2_header.as_bytes().to_vec();
        match (mechanism, binding, gs2_header.as_bytes().first()) {
            (SCRAM_SHA_256_PLUS, Binding::Offered(data), Some(b'p')) => {
                if !gs2_header.starts_with("p=tls-server-end-point,") {
                    return Err(ScramError::ChannelBinding(
                        "only tls-server-end-point is supported",
                    ));
                }
                channel_binding.extend_from_slice(data);
            }
            (SCRAM_SHA_256_PLUS, Binding::Offered(_), _) => {
                return Err(ScramError::ChannelBinding(
                    "SCRAM-SHA-256-PLUS was chosen without channel binding data",
                ))
            }
            (SCRAM_SHA_256, _, Some(b'p')) => {
                return Err(ScramError::ChannelBinding(
                    "channel binding was asked for with SCRAM-SHA-256",
                ))
            }
            // "y": the client could bind but thinks the server cannot. Over TLS with PLUS
            // offered, that means someone removed it from the offer.
            (SCRAM_SHA_256, Binding::Offered(_), Some(b'y')) => {
                return Err(ScramError::ChannelBinding(
                    "the client saw no SCRAM-SHA-256-PLUS in the offer",
                ))
            }
            (SCRAM_SHA_256, _, Some(b'n' | b'y')) => {}
            _ => return Err(ScramError::Malformed("unknown mechanism or GS2 header")),
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
            None => (mock_verifier(mock.seed, mock.iterations), true),
        };
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        Ok(ScramExchange {
            verifier,
            mock,
            channel_binding,
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
        let binding = B64
            .decode(binding)
            .map_err(|_| ScramError::Malformed("channel binding is not base64"))?;
        if !bool::from(binding.ct_eq(&self.channel_binding)) {
            return Err(ScramError::ChannelBinding(
                "the channel binding does not match",
            ));
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
        let matches: bool = stored_key
            .as_slice()
            .ct_eq(&self.verifier.stored_key)
            .into();
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

/// A stable fake verifier per user name: the same unknown name always gets the same salt.
fn mock_verifier(seed: &str, iterations: u32) -> ScramVerifier {
    static SECRET: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    let secret = SECRET.get_or_init(|| {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        bytes
    });
    let salt = hmac(secret, seed.as_bytes())[..16].to_vec();
    ScramVerifier {
        iterations,
        salt,
        stored_key: hmac(secret, b"stored"),
        server_key: hmac(secret, b"server"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    const MOCK: Mock<'static> = Mock {
        seed: "someone",
        iterations: 4096,
    };

    /// Runs the client side of SCRAM with postgres-protocol (the code tokio-postgres uses).
    fn login(verifier: Option<&ScramVerifier>, password: &str) -> Result<(), ScramError> {
        login_with(
            verifier,
            password,
            ChannelBinding::unsupported(),
            SCRAM_SHA_256,
            Binding::Unavailable,
        )
    }

    fn login_with(
        verifier: Option<&ScramVerifier>,
        password: &str,
        client_binding: ChannelBinding,
        mechanism: &str,
        binding: Binding<'_>,
    ) -> Result<(), ScramError> {
        let mut client = ScramSha256::new(password.as_bytes(), client_binding);
        let exchange = ScramExchange::start(verifier, MOCK, mechanism, binding, client.message())?;
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
            b"x,,n=,r=abc",
        ] {
            let start = |g| {
                ScramExchange::start(
                    Some(&verifier),
                    MOCK,
                    SCRAM_SHA_256,
                    Binding::Unavailable,
                    g,
                )
            };
            assert!(start(garbage).is_err());
        }
        let exchange = ScramExchange::start(
            Some(&verifier),
            MOCK,
            SCRAM_SHA_256,
            Binding::Unavailable,
            b"n,,n=,r=abc",
        )
        .unwrap();
        assert!(exchange.finish(b"c=biws,r=wrong,p=AAAA").is_err());
    }

    #[test]
    fn channel_binding_is_checked_and_downgrades_refused() {
        let verifier = ScramVerifier::from_password("pw");
        let data = b"certificate hash".to_vec();
        // SCRAM-SHA-256-PLUS with the right data logs in.
        assert_eq!(
            login_with(
                Some(&verifier),
                "pw",
                ChannelBinding::tls_server_end_point(data.clone()),
                SCRAM_SHA_256_PLUS,
                Binding::Offered(&data),
            ),
            Ok(())
        );
        // Another certificate (a man in the middle terminating TLS) fails.
        assert!(matches!(
            login_with(
                Some(&verifier),
                "pw",
                ChannelBinding::tls_server_end_point(b"other".to_vec()),
                SCRAM_SHA_256_PLUS,
                Binding::Offered(&data),
            ),
            Err(ScramError::ChannelBinding(_))
        ));
        // A client that could bind but saw no PLUS offered, while it was offered: a downgrade.
        assert!(matches!(
            login_with(
                Some(&verifier),
                "pw",
                ChannelBinding::unrequested(),
                SCRAM_SHA_256,
                Binding::Offered(&data),
            ),
            Err(ScramError::ChannelBinding(_))
        ));
        // Without TLS, "y" is fine, and plain SCRAM over TLS too.
        for binding in [Binding::Unavailable, Binding::Offered(&data)] {
            assert_eq!(
                login_with(
                    Some(&verifier),
                    "pw",
                    ChannelBinding::unsupported(),
                    SCRAM_SHA_256,
                    binding,
                ),
                Ok(())
            );
        }
        assert_eq!(
            login_with(
                Some(&verifier),
                "pw",
                ChannelBinding::unrequested(),
                SCRAM_SHA_256,
                Binding::Unavailable,
            ),
            Ok(())
        );
        assert_eq!(Binding::Offered(&data).mechanisms()[0], SCRAM_SHA_256_PLUS);
    }

    #[test]
    fn an_unknown_user_gets_the_typical_iteration_count() {
        let client = ScramSha256::new(b"pw", ChannelBinding::unsupported());
        let mock = Mock {
            seed: "nobody",
            iterations: 10000,
        };
        let exchange = ScramExchange::start(
            None,
            mock,
            SCRAM_SHA_256,
            Binding::Unavailable,
            client.message(),
        )
        .unwrap();
        assert!(exchange.server_first().ends_with(",i=10000"));
    }
}
