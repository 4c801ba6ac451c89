//! Reading certificate Secrets (`kubernetes.io/tls`): the Secret must have that type and its
//! `tls.crt` and `tls.key` must decode to a PEM certificate chain and a PEM private key.

use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A parsed certificate chain and key.
pub struct CertifiedKeyPem {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
}

/// A PEM error in words: the parser's own message shows the markers as lists of byte values.
fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { end_marker } => format!(
            "the {} block has no END line (cut short?)",
            String::from_utf8_lossy(end_marker)
        ),
        Error::IllegalSectionStart { line } => {
            format!("malformed BEGIN line {:?}", String::from_utf8_lossy(line))
        }
        other => other.to_string(),
    }
}

/// Reads and checks a `kubernetes.io/tls` Secret body (`data` base64, or `stringData`).
pub fn check_secret(secret: &serde_json::Value) -> Result<CertifiedKeyPem, String> {
    let type_ = secret["type"].as_str().unwrap_or("Opaque");
    if type_ != "kubernetes.io/tls" {
        return Err(format!(
            "type is {type_:?}; certificates must be in a kubernetes.io/tls Secret"
        ));
    }
    let field = |name: &str| -> Result<Vec<u8>, String> {
        if let Some(text) = secret["stringData"][name].as_str() {
            return Ok(text.as_bytes().to_vec());
        }
        let encoded = secret["data"][name]
            .as_str()
            .ok_or_else(|| format!("data.{name} is missing"))?;
        // Line breaks are skipped, as the API server's decoder skips them: `base64` wraps its
        // output at 76 columns, and a Secret written from it is taken by `kubectl apply`.
        let unwrapped: String = encoded
            .chars()
            .filter(|c| !matches!(c, '\r' | '\n'))
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(unwrapped.trim())
            .map_err(|e| format!("data.{name} is not base64: {e}"))
    };
    let cert_pem = field("tls.crt")?;
    let key_pem = field("tls.key")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.crt is not PEM: {}", pem_error(&e)))?;
    if chain.is_empty() {
        return Err("tls.crt holds no CERTIFICATE block".to_string());
    }
    // An encrypted key has a PEM label of its own, which the reader below skips, and would
    // be reported as no key at all.
    let key_text = String::from_utf8_lossy(&key_pem);
    if key_text.contains("ENCRYPTED PRIVATE KEY") || key_text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(
            "tls.key is encrypted: a Secret holds the key unencrypted (decrypt it with \
                    `openssl pkey -in tls.key -out tls.key.plain`)"
                .to_string(),
        );
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("tls.key holds no usable private key: {}", pem_error(&e)))?;
    Ok(CertifiedKeyPem { chain, key })
}
