//! The certificates upstream creates at run time (`cases.json.generated_secrets`), made once per
//! run and written as Kubernetes objects next to the manifests.
//!
//! Even the plain-HTTP tests need them: base.yaml has a Gateway with an HTTPS listener, and the
//! tests that wait for every Gateway of a namespace to be ready need that one Programmed.
//! Each entry says in words what it is ("CA 'A': ca.crt and key.crt", "client certificate ...
//! signed by CA 'A'", "self-signed server certificate"); the CA letters tie leaves to their
//! issuers. Keys are ECDSA P-256 rather than upstream's RSA 2048: the checks are about names,
//! chains and references, which the key type does not change.

use std::collections::HashMap;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::{json, Value};

use crate::cases::GeneratedSecret;

/// Makes every generated Secret and ConfigMap, as Kubernetes objects.
pub(crate) fn generate(entries: &[GeneratedSecret]) -> Result<Vec<Value>, String> {
    let mut objects = Vec::new();
    // CAs first: leaves name their issuer by letter.
    let mut cas: HashMap<String, (CertificateParams, KeyPair)> = HashMap::new();
    for e in entries.iter().filter(|e| e.kind == "ConfigMap") {
        let letter = ca_letter(&e.cert).unwrap_or_else(|| format!("{}/{}", e.namespace, e.name));
        let key = KeyPair::generate().map_err(|err| format!("{}: {err}", e.name))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|x| x.to_string())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("conformance CA {letter}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params
            .self_signed(&key)
            .map_err(|err| format!("{}: {err}", e.name))?;
        objects.push(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": e.name, "namespace": e.namespace},
            "data": {"ca.crt": cert.pem(), "key.crt": key.serialize_pem()},
        }));
        cas.insert(letter, (params, key));
    }
    for e in entries.iter().filter(|e| e.kind == "Secret") {
        let key = KeyPair::generate().map_err(|err| format!("{}: {err}", e.name))?;
        let mut params = CertificateParams::new(e.san_dns.clone())
            .map_err(|err| format!("{}: {err}", e.name))?;
        for uri in &e.san_uri {
            let uri = uri
                .clone()
                .try_into()
                .map_err(|err| format!("{}: {err}", e.name))?;
            params.subject_alt_names.push(SanType::URI(uri));
        }
        params.distinguished_name.push(DnType::CommonName, &e.name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = if e.cert.contains("client certificate") {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        };
        let cert = if e.cert.contains("self-signed") {
            params.self_signed(&key)
        } else {
            let letter = signer_letter(&e.cert)
                .ok_or_else(|| format!("{}: cannot tell who signs {:?}", e.name, e.cert))?;
            let (ca_params, ca_key) = cas
                .get(&letter)
                .ok_or_else(|| format!("{}: no CA {letter} among the ConfigMaps", e.name))?;
            params.signed_by(&key, &Issuer::from_params(ca_params, ca_key))
        }
        .map_err(|err| format!("{}: {err}", e.name))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        objects.push(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": e.name, "namespace": e.namespace},
            "type": "kubernetes.io/tls",
            "data": {
                "tls.crt": b64.encode(cert.pem()),
                "tls.key": b64.encode(key.serialize_pem()),
            },
        }));
    }
    Ok(objects)
}

/// `CA 'A': ...` -> `A`.
fn ca_letter(words: &str) -> Option<String> {
    quoted_after(words.strip_prefix("CA ")?)
}

/// `... signed by CA 'C'` -> `C`.
fn signer_letter(words: &str) -> Option<String> {
    let (_, rest) = words.split_once("signed by CA ")?;
    quoted_after(rest)
}

fn quoted_after(s: &str) -> Option<String> {
    let rest = s.strip_prefix('\'')?;
    let (letter, _) = rest.split_once('\'')?;
    Some(letter.to_string())
}

/// Self-checks run by `selfcheck`.
pub(crate) fn self_check() -> Result<(), String> {
    if ca_letter("CA 'A': ca.crt and key.crt").as_deref() != Some("A") {
        return Err("ca_letter".into());
    }
    if signer_letter("client certificate (extKeyUsage clientAuth, no SANs) signed by CA 'B'")
        .as_deref()
        != Some("B")
    {
        return Err("signer_letter".into());
    }
    if ca_letter("CA certificate (ca.crt) and its key (key.crt)").is_some() {
        return Err("ca_letter without a letter".into());
    }
    Ok(())
}
