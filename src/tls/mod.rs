//! TLS termination on rustls: certificates from Secrets, picked per connection by SNI from the
//! routing table that is live at handshake time.
//!
//! Each TLS socket has one rustls `ServerConfig` for its whole life. Its certificate resolver
//! holds no certificates itself: on every handshake it loads the current routing table and asks
//! the socket's listeners, most specific hostname first, for one matching the SNI (exact, then
//! wildcard, then the listener without a hostname). So a rotated Secret takes effect at the next
//! handshake with no restart, and connections already open keep their session.
//!
//! Defaults are deliberately narrow: TLS 1.2 and 1.3 only, rustls' default cipher suites (AEAD
//! only, forward secrecy only), ALPN `h2` then `http/1.1`. A client without SNI gets the
//! certificate of the listener without a hostname, or no handshake when there is none.

pub mod certificate;
pub mod client_hello;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::routing::table::{host_matches, RoutingTable};

/// Builds the rustls key a listener serves from a `kubernetes.io/tls` Secret body.
pub fn certified_key(secret: &serde_json::Value) -> Result<Arc<CertifiedKey>, String> {
    let pem = certificate::check_secret(secret)?;
    let key = rustls::crypto::ring::sign::any_supported_type(&pem.key)
        .map_err(|e| format!("tls.key is not a supported RSA, ECDSA or Ed25519 key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(pem.chain, key)))
}

/// Picks a certificate by SNI from the live table, for one socket.
pub struct SniResolver {
    table: Arc<ArcSwap<RoutingTable>>,
    bind: SocketAddr,
}

impl SniResolver {
    /// A resolver for the listeners served on `bind`.
    pub fn new(table: Arc<ArcSwap<RoutingTable>>, bind: SocketAddr) -> Self {
        SniResolver { table, bind }
    }
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver")
            .field("bind", &self.bind)
            .finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let table = self.table.load();
        let bind = table.binds.get(&self.bind)?;
        let sni = hello.server_name().map(|s| s.to_ascii_lowercase());
        bind.listeners
            .iter()
            .filter(|l| match (&l.hostname, &sni) {
                (None, _) => true,
                (Some(h), Some(sni)) => host_matches(h, sni),
                (Some(_), None) => false,
            })
            .find_map(|l| l.certificate.clone())
    }
}

/// The rustls configuration of one TLS socket.
pub fn server_config(resolver: Arc<SniResolver>) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ])
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}
