//! TLS for client connections (rustls), when a cluster has `[clusters.tls] cert` and `key`,
//! and the `tls-server-end-point` channel binding data of its certificate, which
//! SCRAM-SHA-256-PLUS signs (RFC 5929: a hash of the certificate with the hash of its signature
//! algorithm, SHA-256 where that is MD5 or SHA-1).

use std::sync::Arc;

use anyhow::{anyhow, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// A cluster's TLS setup.
#[derive(Clone)]
pub struct TlsServer {
    pub acceptor: TlsAcceptor,
    /// `None` when the certificate's signature algorithm has no defined binding (Ed25519,
    /// RSASSA-PSS): SCRAM-SHA-256-PLUS is then not offered, as Postgres does.
    pub server_end_point: Option<Arc<[u8]>>,
}

pub fn acceptor(config: &TlsConfig) -> anyhow::Result<TlsServer> {
    let cert_pem = std::fs::read(&config.cert)
        .with_context(|| format!("reading TLS cert {}", config.cert.display()))?;
    let key_pem = std::fs::read(&config.key)
        .with_context(|| format!("reading TLS key {}", config.key.display()))?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("parsing {}: {e}", config.cert.display()))?;
    let Some(leaf) = certs.first() else {
        return Err(anyhow!("{} holds no certificate", config.cert.display()));
    };
    let server_end_point = server_end_point(leaf).map(Arc::from);
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| anyhow!("{} holds no usable private key: {e}", config.key.display()))?;
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("the TLS certificate and key do not match")?;
    Ok(TlsServer {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        server_end_point,
    })
}

/// The certificate's hash for `tls-server-end-point`.
pub fn server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
    let (tag, certificate, _) = der(cert)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _tbs, rest) = der(certificate)?;
    let (tag, algorithm, _) = der(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, oid, _) = der(algorithm)?;
    if tag != 0x06 {
        return None;
    }
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    let hash = match oid {
        // md5WithRSA, sha1WithRSA, ecdsa-with-SHA1: SHA-256, as RFC 5929 says.
        [p @ .., 4 | 5] if p == RSA => Hash::Sha256,
        _ if oid == ECDSA_SHA1 => Hash::Sha256,
        [p @ .., 11] if p == RSA => Hash::Sha256,
        [p @ .., 12] if p == RSA => Hash::Sha384,
        [p @ .., 13] if p == RSA => Hash::Sha512,
        [p @ .., 14] if p == RSA => Hash::Sha224,
        [p @ .., 1] if p == ECDSA_SHA2 => Hash::Sha224,
        [p @ .., 2] if p == ECDSA_SHA2 => Hash::Sha256,
        [p @ .., 3] if p == ECDSA_SHA2 => Hash::Sha384,
        [p @ .., 4] if p == ECDSA_SHA2 => Hash::Sha512,
        _ => return None,
    };
    Some(match hash {
        Hash::Sha224 => sha2::Sha224::digest(cert).to_vec(),
        Hash::Sha256 => sha2::Sha256::digest(cert).to_vec(),
        Hash::Sha384 => sha2::Sha384::digest(cert).to_vec(),
        Hash::Sha512 => sha2::Sha512::digest(cert).to_vec(),
    })
}

enum Hash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// One DER TLV: (tag, contents, what follows).
fn der(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate's outer layers with a given signature algorithm OID.
    fn fake_cert(oid: &[u8]) -> Vec<u8> {
        let tbs = [0x30, 0x03, 0x02, 0x01, 0x01];
        let mut algorithm = vec![0x06, oid.len() as u8];
        algorithm.extend_from_slice(oid);
        algorithm.extend_from_slice(&[0x05, 0x00]);
        let mut body = tbs.to_vec();
        body.push(0x30);
        body.push(algorithm.len() as u8);
        body.extend_from_slice(&algorithm);
        body.extend_from_slice(&[0x03, 0x02, 0x00, 0xff]);
        let mut cert = vec![0x30, 0x81, body.len() as u8];
        cert.extend_from_slice(&body);
        cert
    }

    #[test]
    fn the_binding_hash_follows_the_signature_algorithm() {
        let sha256_rsa = fake_cert(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b]);
        assert_eq!(
            server_end_point(&sha256_rsa).unwrap(),
            sha2::Sha256::digest(&sha256_rsa).to_vec()
        );
        let sha1_rsa = fake_cert(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05]);
        assert_eq!(server_end_point(&sha1_rsa).unwrap().len(), 32);
        let sha384_ecdsa = fake_cert(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03]);
        assert_eq!(server_end_point(&sha384_ecdsa).unwrap().len(), 48);
        let ed25519 = fake_cert(&[0x2b, 0x65, 0x70]);
        assert_eq!(server_end_point(&ed25519), None);
        assert_eq!(server_end_point(&[0x30, 0x85, 0xff]), None);
        assert_eq!(server_end_point(&[]), None);
    }
}
