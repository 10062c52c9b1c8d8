//! TLS for client connections (rustls), when a cluster has `[clusters.tls] cert` and `key`.

use std::sync::Arc;

use anyhow::{anyhow, Context};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

pub fn acceptor(config: &TlsConfig) -> anyhow::Result<TlsAcceptor> {
    let cert_pem = std::fs::read(&config.cert)
        .with_context(|| format!("reading TLS cert {}", config.cert.display()))?;
    let key_pem = std::fs::read(&config.key)
        .with_context(|| format!("reading TLS key {}", config.key.display()))?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", config.cert.display()))?;
    if certs.is_empty() {
        return Err(anyhow!("{} holds no certificate", config.cert.display()));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("parsing {}", config.key.display()))?
        .ok_or_else(|| anyhow!("{} holds no private key", config.key.display()))?;
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("the TLS certificate and key do not match")?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}
