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
//! only, forward secrecy only), ALPN `h2` then `http/1.1` (none for TLS listeners in Terminate
//! mode, whose protocol inside is not HTTP's to pick). A client without SNI gets the
//! certificate of the listener without a hostname, or no handshake when there is none.

pub mod certificate;
pub mod client_hello;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::routing::table::{takes_server_name, RoutingTable};

/// Builds the rustls key a listener serves from a `kubernetes.io/tls` Secret body.
pub fn certified_key(secret: &serde_json::Value) -> Result<Arc<CertifiedKey>, String> {
    let pem = certificate::check_secret(secret)?;
    for (i, der) in pem.chain.iter().enumerate() {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("tls.crt certificate {} is not X.509: {e}", i + 1))?;
        // A version 1 leaf has no extensions, so no subjectAltName: clients refuse it, and
        // rustls's key check would report it as a key that does not match.
        if i == 0 && cert.version() != x509_parser::x509::X509Version::V3 {
            return Err(format!(
                "tls.crt certificate 1 is X.509 version {}; a served certificate must be \
                 version 3, with a subjectAltName naming its hosts",
                cert.version().0 + 1
            ));
        }
    }
    let key = rustls::crypto::ring::sign::any_supported_type(&pem.key).map_err(|e| {
        format!(
            "tls.key is not a supported key ({e}): use RSA of 2048 bits or more, ECDSA on \
             P-256 or P-384, or Ed25519"
        )
    })?;
    let certified = CertifiedKey::new(pem.chain, key);
    // A key that does not belong to the certificate would fail every handshake at the
    // client; refuse it here, where it is a configuration error with a name.
    certified
        .keys_match()
        .map_err(|e| format!("tls.key does not belong to the certificate in tls.crt: {e}"))?;
    Ok(Arc::new(certified))
}

/// One of several certificates a listener can serve, with the DNS names it covers.
#[derive(Clone)]
pub struct Choice {
    /// The certificate and its key.
    pub key: Arc<CertifiedKey>,
    /// The DNS names of its subjectAltName extension, lower case (`*.example.com` kept as is).
    pub names: Vec<String>,
}

impl Choice {
    /// A choice of `key`, with the names its leaf certificate covers.
    pub fn new(key: Arc<CertifiedKey>) -> Self {
        let names = key
            .cert
            .first()
            .and_then(|der| x509_parser::parse_x509_certificate(der).ok())
            .and_then(|(_, cert)| {
                cert.subject_alternative_name().ok().flatten().map(|san| {
                    san.value
                        .general_names
                        .iter()
                        .filter_map(|n| match n {
                            x509_parser::extensions::GeneralName::DNSName(d) => {
                                Some(d.to_ascii_lowercase())
                            }
                            _ => None,
                        })
                        .collect()
                })
            })
            .unwrap_or_default();
        Choice { key, names }
    }

    /// Whether the certificate names `sni`, exactly or by a `*.` wildcard of one label.
    fn covers(&self, sni: &str) -> bool {
        self.names.iter().any(|n| match n.strip_prefix("*.") {
            Some(suffix) => sni
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
            None => n == sni,
        })
    }
}

/// Of a listener's several certificates, the first that names the client's SNI and whose key
/// can sign with a scheme the client offers; failing a name, the first whose key can; failing
/// both, the first (the handshake then fails as it would with that one alone).
fn choose(
    choices: &[Choice],
    sni: Option<&str>,
    hello: &ClientHello<'_>,
) -> Option<Arc<CertifiedKey>> {
    let schemes = hello.signature_schemes();
    let signs = |c: &&Choice| c.key.key.choose_scheme(schemes).is_some();
    sni.and_then(|sni| choices.iter().filter(signs).find(|c| c.covers(sni)))
        .or_else(|| choices.iter().find(signs))
        .or(choices.first())
        .map(|c| c.key.clone())
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
            .filter(|l| takes_server_name(l.hostname.as_deref(), sni.as_deref()))
            .find_map(|l| {
                if l.certificates.is_empty() {
                    l.certificate.clone()
                } else {
                    choose(&l.certificates, sni.as_deref(), &hello)
                }
            })
    }
}

/// What a finished handshake settled, kept with the connection (in its TLS digest) for each
/// request on it to be checked against.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// The server name the client sent in its ClientHello: a request whose Host selects
    /// another listener is misdirected (421).
    pub server_name: Option<String>,
    /// The client certificate validation of the socket when the handshake finished
    /// ([`ClientAuth::policy`]; `None`: none). A request on a connection validated under
    /// another one than the socket's now is refused, so that the client reconnects.
    pub client_policy: Option<u64>,
}

/// The client certificate validation of socket `bind` in `table` (`None`: none).
pub fn client_policy(table: &RoutingTable, bind: &SocketAddr) -> Option<u64> {
    table.binds.get(bind)?.client_policy()
}

/// Records each finished handshake's [`Handshake`] in the connection's TLS digest.
///
/// Known shortcoming: the validation is read when the handshake finishes, a moment after the
/// client's certificate was checked; a change in between tags the connection with the new one.
struct RecordHandshake {
    table: Arc<ArcSwap<RoutingTable>>,
    bind: SocketAddr,
}

#[async_trait::async_trait]
impl pingora_core::listeners::TlsAccept for RecordHandshake {
    async fn handshake_complete_callback(
        &self,
        tls: &pingora_core::protocols::tls::TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        Some(Arc::new(Handshake {
            server_name: tls.server_name().map(|name| name.to_ascii_lowercase()),
            client_policy: client_policy(&self.table.load(), &self.bind),
        }))
    }
}

/// TLS sessions a client may resume, kept apart by the client certificate validation they were
/// made under: a resumed session skips the client's certificate, so one made before the
/// socket's validation changed (turned on, other CAs, another mode) must not be resumed after
/// it. Looked up under the current validation, such a session is not found, and the client
/// makes a full handshake, certificate and all.
struct SessionsByPolicy {
    sessions: Arc<dyn rustls::server::StoresServerSessions>,
    table: Arc<ArcSwap<RoutingTable>>,
    bind: SocketAddr,
}

impl SessionsByPolicy {
    fn key(&self, key: &[u8]) -> Vec<u8> {
        let policy = client_policy(&self.table.load(), &self.bind).unwrap_or(0);
        let mut out = Vec::with_capacity(8 + key.len());
        out.extend(policy.to_be_bytes());
        out.extend(key);
        out
    }
}

impl std::fmt::Debug for SessionsByPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionsByPolicy")
            .field("bind", &self.bind)
            .finish()
    }
}

impl rustls::server::StoresServerSessions for SessionsByPolicy {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.sessions.put(self.key(&key), value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.sessions.get(&self.key(key))
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.sessions.take(&self.key(key))
    }

    fn can_cache(&self) -> bool {
        self.sessions.can_cache()
    }
}

/// The validity of a served certificate chain, in seconds since the epoch: from the latest
/// `notBefore` to the earliest `notAfter` of the leaf and the intermediates sent with it, since
/// a client that builds its path through an intermediate refuses the chain once that one has
/// expired, however long the leaf has left. `None` when there is no leaf or it does not parse
/// (which [`certified_key`] refuses before a key is served); an intermediate that does not
/// parse is left out.
pub fn validity(key: &CertifiedKey) -> Option<(i64, i64)> {
    let window = |der: &[u8]| {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let v = cert.validity();
        Some((v.not_before.timestamp(), v.not_after.timestamp()))
    };
    let leaf = window(key.cert.first()?)?;
    Some(
        key.cert[1..]
            .iter()
            .filter_map(|der| window(der))
            .fold(leaf, |(before, after), (b, a)| {
                (before.max(b), after.min(a))
            }),
    )
}

/// The TLS acceptors of one socket: TLS 1.2 and 1.3 (Pingora's rustls settings), certificates
/// from `resolver`, client certificates checked by `clients`, and the SNI recorded per
/// connection.
pub struct Acceptors {
    /// For HTTPS listeners: ALPN `h2` then `http/1.1`.
    pub http: pingora_core::listeners::tls::Acceptor,
    /// For TLS listeners in Terminate mode, whose decrypted bytes go to a TCP backend: no ALPN.
    /// The gateway does not know the protocol inside, so it must not pick one; a client that
    /// offers `h2` would otherwise send HTTP/2 to a backend that may speak anything else, and
    /// one that offers only protocols of its own would be refused.
    pub tcp: pingora_core::listeners::tls::Acceptor,
}

/// See [`Acceptors`].
pub fn acceptors(resolver: Arc<SniResolver>, clients: Arc<ClientVerifier>) -> Acceptors {
    let build = |alpn: bool| {
        let callbacks: pingora_core::listeners::TlsAcceptCallbacks = Box::new(RecordHandshake {
            table: resolver.table.clone(),
            bind: resolver.bind,
        });
        let mut settings = pingora_core::listeners::tls::TlsSettings::with_callbacks(callbacks)
            .expect("settings without files cannot fail");
        settings.set_cert_resolver(resolver.clone());
        settings.set_client_cert_verifier(clients.clone());
        if alpn {
            settings.enable_h2();
        }
        let mut acceptor = settings.build();
        // Pingora's settings keep rustls' session cache; it is wrapped, not replaced.
        let mut config = rustls::ServerConfig::clone(acceptor.acceptor.config());
        config.session_storage = Arc::new(SessionsByPolicy {
            sessions: config.session_storage.clone(),
            table: resolver.table.clone(),
            bind: resolver.bind,
        });
        acceptor.acceptor = pingora_core::tls::TlsAcceptor::from(Arc::new(config));
        acceptor
    };
    Acceptors {
        http: build(true),
        tcp: build(false),
    }
}

/// TLS from the gateway to one backend Service port, from its BackendTLSPolicy.
#[derive(Debug)]
pub struct BackendTls {
    /// Sent as SNI and verified against the backend's certificate.
    pub hostname: String,
    /// CA certificates to trust; `None` trusts the system roots.
    pub ca: Option<Arc<pingora_core::protocols::tls::CaType>>,
    /// Which CAs `ca` holds, as a keyed hash of their DER (0 for the system roots). Pingora's
    /// key for reusing a pooled backend connection holds the address and the SNI but not the
    /// CAs it was verified against: without this in the peer's `group_key`, a Service whose
    /// policy trusts other CAs (or a policy whose CAs changed) would be sent over a connection
    /// its own CAs never verified.
    pub trust: u64,
}

/// The keyed hash of a CA set's DER certificates, for [`BackendTls::trust`]. The key is drawn
/// once per process, so that nobody who writes a ConfigMap can aim at another's hash.
fn trust_key(certificates: &[&[u8]]) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static KEY: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let mut hasher = KEY.get_or_init(Default::default).build_hasher();
    for der in certificates {
        hasher.write_usize(der.len());
        hasher.write(der);
    }
    // 0 stands for the system roots.
    hasher.finish().max(1)
}

/// Reads the CA certificates of a ConfigMap (`data["ca.crt"]`, PEM) for backend verification,
/// with their [`BackendTls::trust`].
pub fn backend_ca(
    config_map: &serde_json::Value,
) -> Result<(Arc<pingora_core::protocols::tls::CaType>, u64), String> {
    use rustls::pki_types::pem::PemObject;
    let pem = config_map["data"]["ca.crt"]
        .as_str()
        .ok_or("the ConfigMap has no data key ca.crt")?;
    let mut out = Vec::new();
    let mut ders = Vec::new();
    for der in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let der = der.map_err(|e| format!("ca.crt is not PEM: {e}"))?;
        ders.push(der.to_vec());
        // Pingora parses these again and treats a parse failure as a bug, so reject what it
        // could not read here, where it is a configuration error.
        x509_parser::parse_x509_certificate(&der)
            .map_err(|e| format!("ca.crt holds an unreadable certificate: {e}"))?;
        out.push(pingora_core::utils::tls::WrappedX509::new(
            der.to_vec(),
            pingora_core::utils::tls::parse_x509,
        ));
    }
    if out.is_empty() {
        return Err("ca.crt holds no CERTIFICATE block".to_string());
    }
    let trust = trust_key(&ders.iter().map(Vec::as_slice).collect::<Vec<_>>());
    Ok((Arc::from(out.into_boxed_slice()), trust))
}

/// The client certificate a Gateway presents to backends, from a `kubernetes.io/tls` Secret.
pub fn client_cert_key(
    secret: &serde_json::Value,
) -> Result<Arc<pingora_core::utils::tls::CertKey>, String> {
    // The same checks as a listener's certificate, the key's match above all: a key that does
    // not belong to the certificate would fail every new connection to every TLS backend.
    certified_key(secret)?;
    let pem = certificate::check_secret(secret)?;
    Ok(Arc::new(pingora_core::utils::tls::CertKey::new(
        pem.chain.iter().map(|c| c.to_vec()).collect(),
        pem.key.secret_der().to_vec(),
    )))
}

/// Client certificate validation of one port (`Gateway.spec.tls.frontend`).
#[derive(Debug)]
pub struct ClientAuth {
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    /// `AllowInsecureFallback`: ask for a certificate, accept the connection whatever comes.
    pub insecure_fallback: bool,
    /// A keyed hash of the CAs and the mode: equal for equal validation, whichever compile
    /// built it, so that a connection can tell whether the validation it passed still holds.
    pub policy: u64,
}

/// Builds the validation of a port from PEM CA certificates.
pub fn client_auth(
    cas: &[rustls::pki_types::CertificateDer<'static>],
    insecure_fallback: bool,
) -> Result<Arc<ClientAuth>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots
            .add(ca.clone())
            .map_err(|e| format!("CA certificate rejected: {e}"))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("cannot build a client certificate verifier: {e}"))?;
    let mode: &[u8] = if insecure_fallback {
        b"AllowInsecureFallback"
    } else {
        b"AllowValidOnly"
    };
    let mut parts: Vec<&[u8]> = cas.iter().map(|ca| ca.as_ref()).collect();
    parts.push(mode);
    Ok(Arc::new(ClientAuth {
        verifier,
        insecure_fallback,
        policy: trust_key(&parts),
    }))
}

/// Reads the PEM certificates of a CA ConfigMap (`data["ca.crt"]`).
pub fn config_map_cas(
    config_map: &serde_json::Value,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let pem = config_map["data"]["ca.crt"]
        .as_str()
        .ok_or("the ConfigMap has no data key ca.crt")?;
    let cas = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("ca.crt is not PEM: {e}"))?;
    if cas.is_empty() {
        return Err("ca.crt holds no CERTIFICATE block".to_string());
    }
    Ok(cas)
}

/// The client certificate verifier of one TLS socket. Like [`SniResolver`] it holds no
/// configuration itself: each handshake reads the live table, so validation settings change
/// without reopening the socket. A port without validation does not ask for certificates.
pub struct ClientVerifier {
    table: Arc<ArcSwap<RoutingTable>>,
    bind: SocketAddr,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ClientVerifier {
    /// The verifier for the socket `bind`.
    pub fn new(table: Arc<ArcSwap<RoutingTable>>, bind: SocketAddr) -> Self {
        ClientVerifier {
            table,
            bind,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }

    fn auth(&self) -> Option<Arc<ClientAuth>> {
        self.table.load().binds.get(&self.bind)?.client_auth.clone()
    }
}

impl std::fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("bind", &self.bind)
            .finish()
    }
}

impl rustls::server::danger::ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.auth().is_some()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.auth().is_some_and(|a| !a.insecure_fallback)
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        // The hints would have to outlive the table they come from; clients pick their
        // certificate without them.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let Some(auth) = self.auth() else {
            return Ok(rustls::server::danger::ClientCertVerified::assertion());
        };
        match auth
            .verifier
            .verify_client_cert(end_entity, intermediates, now)
        {
            Err(_) if auth.insecure_fallback => {
                Ok(rustls::server::danger::ClientCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
