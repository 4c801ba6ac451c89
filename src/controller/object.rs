//! One Kubernetes object as the store holds it: its kind, identity and the raw document.
//!
//! The body is kept as JSON rather than as generated Gateway API structs on purpose. The spec
//! asks that an object with an unsupported value (an unknown listener protocol, path match type
//! or filter) is loaded and reported through a status condition. Generated structs refuse the
//! whole document on the first unknown enum value, so the compiler would never see the object
//! it has to report on. The compiler reads bodies through its own lenient model
//! ([`crate::routing::api`]) and names the field at fault.

use std::fmt;

use serde_json::Value;

/// The kinds of object the gateway reads. Anything else is refused with [`UnknownKind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `gateway.networking.k8s.io` GatewayClass (cluster scoped).
    GatewayClass,
    /// `gateway.networking.k8s.io` Gateway.
    Gateway,
    /// `gateway.networking.k8s.io` HTTPRoute.
    HttpRoute,
    /// `gateway.networking.k8s.io` GRPCRoute.
    GrpcRoute,
    /// `gateway.networking.k8s.io` TLSRoute.
    TlsRoute,
    /// `gateway.networking.k8s.io` ReferenceGrant.
    ReferenceGrant,
    /// `gateway.networking.k8s.io` BackendTLSPolicy.
    BackendTlsPolicy,
    /// core/v1 Service.
    Service,
    /// `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice,
    /// core/v1 Namespace (cluster scoped).
    Namespace,
    /// core/v1 Secret.
    Secret,
    /// core/v1 ConfigMap.
    ConfigMap,
}

/// Kinds skipped quietly although their names are close to ones the gateway reads: Gateway API
/// kinds it does not serve (`TCPRoute` is one letter from `TLSRoute`). Any other kind it does
/// not read is skipped too, unless its name is a near miss of one it reads.
const IGNORED_KINDS: &[&str] = &[
    "TCPRoute",
    "UDPRoute",
    "ListenerSet",
    "XListenerSet",
    "BackendTrafficPolicy",
    "XBackendTrafficPolicy",
    "ConfigMapList",
];

impl Kind {
    /// Every kind, in the order the compiler wants them listed.
    pub const ALL: [Kind; 12] = [
        Kind::GatewayClass,
        Kind::Gateway,
        Kind::HttpRoute,
        Kind::GrpcRoute,
        Kind::TlsRoute,
        Kind::ReferenceGrant,
        Kind::BackendTlsPolicy,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Namespace,
        Kind::Secret,
        Kind::ConfigMap,
    ];

    /// The `kind` field as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::GatewayClass => "GatewayClass",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::TlsRoute => "TLSRoute",
            Kind::ReferenceGrant => "ReferenceGrant",
            Kind::BackendTlsPolicy => "BackendTLSPolicy",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Namespace => "Namespace",
            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
        }
    }

    /// The API group, empty for the core group.
    pub fn group(self) -> &'static str {
        match self {
            Kind::GatewayClass
            | Kind::Gateway
            | Kind::HttpRoute
            | Kind::GrpcRoute
            | Kind::TlsRoute
            | Kind::ReferenceGrant
            | Kind::BackendTlsPolicy => "gateway.networking.k8s.io",
            Kind::EndpointSlice => "discovery.k8s.io",
            Kind::Service | Kind::Namespace | Kind::Secret | Kind::ConfigMap => "",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::GatewayClass | Kind::Namespace)
    }

    /// Whether this kind is a route: HTTPRoute, GRPCRoute or TLSRoute.
    pub fn is_route(self) -> bool {
        matches!(self, Kind::HttpRoute | Kind::GrpcRoute | Kind::TlsRoute)
    }

    /// Whether a change to this kind's `spec` bumps `metadata.generation`, as the API server does
    /// for custom resources. Core objects without a spec keep generation unset.
    pub fn has_generation(self) -> bool {
        self.group() == "gateway.networking.k8s.io"
    }

    /// The versions of this kind's API that an `apiVersion` may name. For the Gateway API these
    /// are every version its kinds have been served under, so that a manifest written for an
    /// older release still loads; a version no release had (`v2`, `v1beta`) is refused.
    pub fn versions(self) -> &'static [&'static str] {
        match self.group() {
            "gateway.networking.k8s.io" => &["v1", "v1beta1", "v1alpha3", "v1alpha2"],
            _ => &["v1"],
        }
    }

    /// Looks a kind up by its `apiVersion` (group and version) and `kind` name.
    pub fn from_type(api_version: &str, kind: &str) -> Result<Option<Kind>, UnknownKind> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        for k in Kind::ALL {
            if k.as_str() == kind && k.group() == group {
                if !k.versions().contains(&version) {
                    return Err(UnknownKind {
                        api_version: api_version.to_string(),
                        kind: kind.to_string(),
                        known_group: Some(k.group()),
                    });
                }
                return Ok(Some(k));
            }
        }
        if IGNORED_KINDS.contains(&kind) {
            return Ok(None);
        }
        // A kind of another project's API group (a Knative `Service`, a Linkerd `HTTPRoute`)
        // is that project's, even where its name is one read here; a group that is a near miss
        // of a Kubernetes one is a typo, and refused below.
        let foreign = group.contains('.')
            && !group.ends_with("k8s.io")
            && !group.ends_with("kubernetes.io")
            && !Kind::ALL
                .into_iter()
                .any(|k| !k.group().is_empty() && near_miss(k.group(), group));
        if foreign {
            return Ok(None);
        }
        let known_group = Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind)
            .map(Kind::group);
        // Any other kind (a StatefulSet or a Role kept beside the routes, a Gateway API kind
        // this gateway does not serve) is left to whoever reads it, unless its name is a near
        // miss of one read here: a misspelt kind would otherwise lose its object without a word.
        if known_group.is_none() && !Kind::ALL.into_iter().any(|k| near_miss(k.as_str(), kind)) {
            return Ok(None);
        }
        Err(UnknownKind {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
            known_group,
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An object whose `apiVersion`/`kind` pair the gateway does not read.
#[derive(Debug, Clone, thiserror::Error)]
pub struct UnknownKind {
    /// The `apiVersion` as written.
    pub api_version: String,
    /// The `kind` as written.
    pub kind: String,
    /// The API group of a kind the gateway reads, when only the `apiVersion` is wrong.
    pub known_group: Option<&'static str>,
}

impl fmt::Display for UnknownKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, api_version) = (&self.kind, &self.api_version);
        match self.known_group {
            Some("") => write!(
                f,
                "{kind} belongs to the core API (apiVersion v1), not to apiVersion \
                 {api_version}"
            ),
            Some(group)
                if api_version
                    .rsplit_once('/')
                    .is_some_and(|(g, _)| g == group) =>
            {
                write!(
                    f,
                    "{kind} is not served as apiVersion {api_version}: use {group}/v1"
                )
            }
            Some(group) => write!(
                f,
                "{kind} belongs to API group {group} (apiVersion {group}/v1), not to \
                 apiVersion {api_version}"
            ),
            None => {
                let near = Kind::ALL
                    .into_iter()
                    .find(|k| near_miss(k.as_str(), kind))
                    .map_or(String::new(), |k| format!("did you mean {k}? "));
                write!(
                    f,
                    "unsupported kind {kind} ({api_version}); {near}this gateway reads \
                     GatewayClass, Gateway, HTTPRoute, GRPCRoute, TLSRoute, ReferenceGrant, \
                     BackendTLSPolicy, Service, EndpointSlice, Namespace, Secret and ConfigMap"
                )
            }
        }
    }
}

/// Whether `written` looks like a misspelling of `kind`: the same letters in another case, or
/// at most two letters added, dropped or changed (`HTTPRoutes`, `Gatway`), for names long
/// enough that two edits do not reach unrelated kinds.
fn near_miss(kind: &str, written: &str) -> bool {
    let (a, b) = (kind.to_ascii_lowercase(), written.to_ascii_lowercase());
    if a == b {
        return true;
    }
    let allowed = if a.len() >= 7 { 2 } else { 1 };
    edit_distance(a.as_bytes(), b.as_bytes()) <= allowed
}

/// Levenshtein distance: single-byte insertions, deletions and substitutions.
fn edit_distance(a: &[u8], b: &[u8]) -> usize {
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, &x) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &y) in b.iter().enumerate() {
            let next = (diagonal + usize::from(x != y))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// The identity of an object: kind, namespace (empty when cluster scoped) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// The object's kind.
    pub kind: Kind,
    /// Namespace, or the empty string for cluster-scoped kinds.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

impl ObjectKey {
    /// Builds a key; `namespace` is ignored for cluster-scoped kinds.
    pub fn new(kind: Kind, namespace: &str, name: &str) -> Self {
        let namespace = if kind.namespaced() { namespace } else { "" };
        ObjectKey {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A stored object.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    /// Who the object is.
    pub key: ObjectKey,
    /// `metadata.generation`, filled in by the provider where the API server would.
    pub generation: i64,
    /// `metadata.creationTimestamp` as RFC 3339 text; route precedence compares it.
    pub creation_timestamp: String,
    /// `metadata.labels`.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The whole document as received.
    pub body: Value,
}

/// Why a document could not become an [`Object`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum ObjectError {
    /// `apiVersion`, `kind` or `metadata.name` is missing.
    #[error("document has no {0}; every object needs apiVersion, kind and metadata.name")]
    Missing(&'static str),
    /// `apiVersion`, `kind`, `metadata.name` or `metadata.namespace` is there but not a string.
    #[error("{0} is not a string; write it as plain text, such as `name: api`")]
    NotAString(&'static str),
    /// `metadata.labels` or `metadata.annotations` is not a mapping of text to text (the API
    /// server refuses `app: 1`, `canary: true` and `labels: [app]`).
    #[error("metadata.{field}{entry} is not {what}")]
    NotAStringMap {
        /// `labels` or `annotations`.
        field: &'static str,
        /// `.key` for a value that is not text; empty when the whole field is not a mapping.
        entry: String,
        /// What it should be.
        what: &'static str,
    },
    /// A name or namespace the API server would refuse (upper case, `/`, spaces, control
    /// characters): it would also end up, as written, in logs and status.
    #[error("{field} {value:?} is not a valid name: {rule}")]
    InvalidName {
        /// `metadata.name` or `metadata.namespace`.
        field: &'static str,
        /// The value as written.
        value: String,
        /// What a valid one looks like.
        rule: &'static str,
    },
    /// `metadata.creationTimestamp` is not an RFC 3339 time.
    #[error(
        "{who} metadata.creationTimestamp {value} is not a time: write it in RFC 3339, such as \
         2024-05-01T12:00:00Z, or leave it out to have the time the object was first read"
    )]
    InvalidTimestamp {
        /// The object, as `Kind namespace/name`.
        who: String,
        /// The value as written (quoted when it is text).
        value: String,
    },
    /// The kind is not one the gateway reads.
    #[error(transparent)]
    UnknownKind(#[from] UnknownKind),
}

/// The API's DNS-1123 subdomain (most object names) or, with `label`, DNS label (namespaces,
/// Namespace and Service names): lower-case letters, digits and `-` (and `.` between labels
/// of a subdomain), starting and ending with a letter or digit, 253 or 63 characters at most.
fn check_name(field: &'static str, value: &str, label: bool) -> Result<(), ObjectError> {
    if is_dns_name(value, label) {
        return Ok(());
    }
    let rule = if label { LABEL_RULE } else { SUBDOMAIN_RULE };
    Err(ObjectError::InvalidName {
        field,
        value: value.to_string(),
        rule,
    })
}

/// What a DNS label looks like, in the words errors use.
pub(crate) const LABEL_RULE: &str =
    "use at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit";

/// What a DNS-1123 subdomain looks like, in the words errors use.
pub(crate) const SUBDOMAIN_RULE: &str = "use at most 253 lower-case letters, digits, '-' and '.', \
     each part between dots starting and ending with a letter or digit";

/// Whether `value` is a DNS-1123 subdomain or, with `label`, a DNS label: the rules object names
/// follow (a namespace's, the label one).
/// The Gateway API's `SectionName` (listener names) follows the subdomain rule too.
pub fn is_dns_name(value: &str, label: bool) -> bool {
    let part_ok = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !part.starts_with('-')
            && !part.ends_with('-')
    };
    if label {
        value.len() <= 63 && part_ok(value)
    } else {
        value.len() <= 253 && value.split('.').all(part_ok)
    }
}

/// `metadata.creationTimestamp` as the API server keeps it (RFC 3339, UTC, whole seconds), from
/// any time the API server takes: RFC 3339 with an upper-case `T`, seconds up to 59, an
/// optional fraction, and `Z` or an offset such as `+02:00`. Route precedence compares these as
/// text, so offsets and fractions of a second are brought to that one form first. `None` when
/// `text` is not such a time.
fn normalized_timestamp(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let digits = |from: usize, to: usize| {
        b.get(from..to)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    let shape = digits(0, 4)
        && digits(5, 7)
        && digits(8, 10)
        && digits(11, 13)
        && digits(14, 16)
        && digits(17, 19)
        && separators.iter().all(|&(at, c)| b.get(at) == Some(&c));
    // The API server refuses a leap second; the date and time parser would take it as :59.
    if !shape || &text[17..19] > "59" {
        return None;
    }
    let seconds = &text[..19];
    let mut zone = &text[19..];
    if let Some(fraction) = zone.strip_prefix('.') {
        let n = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        zone = &fraction[n..];
    }
    // Months, days and hours in range.
    seconds.parse::<jiff::civil::DateTime>().ok()?;
    if zone == "Z" {
        return Some(format!("{seconds}Z"));
    }
    let z = zone.as_bytes();
    let offset = z.len() == 6
        && matches!(z[0], b'+' | b'-')
        && z[1..3].iter().all(u8::is_ascii_digit)
        && z[3] == b':'
        && z[4..6].iter().all(u8::is_ascii_digit)
        && &zone[1..3] <= "23"
        && &zone[4..6] <= "59";
    if !offset {
        return None;
    }
    let time: jiff::Timestamp = format!("{seconds}{zone}").parse().ok()?;
    Some(time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

impl Object {
    /// Reads identity and metadata out of a document. Returns `Ok(None)` for kinds that are
    /// skipped on purpose (such as Deployments). A namespaced object without a namespace is
    /// put in `default`, as `kubectl apply` would.
    pub fn from_document(body: Value) -> Result<Option<Object>, ObjectError> {
        let api_version = text_field(&body["apiVersion"], "apiVersion")?;
        let kind = text_field(&body["kind"], "kind")?;
        let Some(kind) = Kind::from_type(api_version, kind)? else {
            return Ok(None);
        };
        let meta = &body["metadata"];
        let name = text_field(&meta["name"], "metadata.name")?;
        if name.is_empty() {
            return Err(ObjectError::Missing("metadata.name"));
        }
        let namespace = match &meta["namespace"] {
            Value::Null => "default",
            namespace => text_field(namespace, "metadata.namespace")?,
        };
        check_name(
            "metadata.name",
            name,
            matches!(kind, Kind::Namespace | Kind::Service),
        )?;
        if !namespace.is_empty() {
            check_name("metadata.namespace", namespace, true)?;
        }
        let labels = string_map(meta, "labels")?;
        // Annotations are not read here, but an object the API server would refuse for them
        // is refused as a whole, as it would be there.
        string_map(meta, "annotations")?;
        let key = ObjectKey::new(kind, namespace, name);
        let written = &meta["creationTimestamp"];
        let creation_timestamp = match written {
            Value::Null => String::new(),
            _ => written
                .as_str()
                .and_then(normalized_timestamp)
                .ok_or_else(|| ObjectError::InvalidTimestamp {
                    who: key.to_string(),
                    value: written.to_string(),
                })?,
        };
        Ok(Some(Object {
            key,
            generation: meta["generation"].as_i64().unwrap_or(1),
            creation_timestamp,
            labels,
            body,
        }))
    }

    /// The object's `spec`, or JSON null.
    pub fn spec(&self) -> &Value {
        &self.body["spec"]
    }
}

/// A field that must be a string: [`ObjectError::Missing`] when absent, and
/// `metadata.labels` or `metadata.annotations`: absent, or a mapping of text to text.
fn string_map(
    meta: &Value,
    field: &'static str,
) -> Result<std::collections::BTreeMap<String, String>, ObjectError> {
    let mut map = std::collections::BTreeMap::new();
    let entries = match &meta[field] {
        Value::Null => return Ok(map),
        Value::Object(entries) => entries,
        _ => {
            return Err(ObjectError::NotAStringMap {
                field,
                entry: String::new(),
                what: "a mapping; write it as `key: value` lines",
            })
        }
    };
    for (key, value) in entries {
        let value = value.as_str().ok_or_else(|| ObjectError::NotAStringMap {
            field,
            entry: format!(".{key}"),
            what: "a string; quote the value, such as \"1\" or \"true\"",
        })?;
        map.insert(key.clone(), value.to_string());
    }
    Ok(map)
}

/// [`ObjectError::NotAString`] when it is a number, list or mapping, so that `name: [api]` is
/// not reported as a missing name.
fn text_field<'a>(value: &'a Value, field: &'static str) -> Result<&'a str, ObjectError> {
    match value {
        Value::Null => Err(ObjectError::Missing(field)),
        Value::String(text) => Ok(text),
        _ => Err(ObjectError::NotAString(field)),
    }
}
