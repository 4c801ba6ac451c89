//! The Gateway API and core objects as the compiler reads them.
//!
//! These are deliberately lenient mirrors of the upstream schemas: enum-like fields are plain
//! strings, so that an object with a value this gateway does not support still deserializes and
//! the compiler can report the field at fault in a status condition (see the note in
//! [`crate::controller`]'s object module). Only the fields the compiler uses are modelled; serde
//! ignores the rest.

use std::collections::BTreeMap;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// Reads a typed view of an object's `spec` (or of the whole body, for kinds without one).
/// A value of the wrong type is named by its path from there (`rules[0].backendRefs[0].port`)
/// and described in the manifest's terms ("a whole number", "a list"), not Rust's.
pub fn read<T: for<'de> Deserialize<'de>>(value: &serde_json::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(Strict(value)).map_err(|e| {
        let cause = in_manifest_terms(&e.inner().to_string());
        match e.path().to_string() {
            root if root == "." => cause,
            path => format!("{path}: {cause}"),
        }
    })
}

/// [`read`] for the value of the field `field`, whose path the error starts with
/// (`spec.rules[0].backendRefs[0].port: ...`), as the errors naming a misspelt field do.
pub fn read_at<T: for<'de> Deserialize<'de>>(
    field: &str,
    value: &serde_json::Value,
) -> Result<T, String> {
    serde_path_to_error::deserialize(Strict(value)).map_err(|e| {
        let cause = in_manifest_terms(&e.inner().to_string());
        match e.path().to_string() {
            root if root == "." => format!("{field}: {cause}"),
            path if path.starts_with('[') => format!("{field}{path}: {cause}"),
            path => format!("{field}.{path}: {cause}"),
        }
    })
}

/// A JSON value read as the API server reads it: where the API wants an object (a struct
/// here), only an object will do. serde's derived structs also take a list, field by field in
/// order, which the API server refuses: `parentRefs: [[null, null, null, web]]` was read as a
/// parentRef named `web`. Lists and objects inside are read the same way; everything else is
/// serde_json's own reading of the value.
struct Strict<'a>(&'a serde_json::Value);

impl<'de> serde::Deserializer<'de> for Strict<'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            serde_json::Value::Array(items) => visitor.visit_seq(StrictSeq(items.iter())),
            serde_json::Value::Object(fields) => visitor.visit_map(StrictMap {
                fields: fields.iter(),
                value: None,
            }),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            serde_json::Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            serde_json::Value::Object(_) => self.deserialize_any(visitor),
            other => Err(serde::de::Error::invalid_type(
                unexpected(other),
                &"a mapping of fields",
            )),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

/// What a JSON value is, for an error that says what was found.
fn unexpected(value: &serde_json::Value) -> serde::de::Unexpected<'_> {
    use serde::de::Unexpected;
    match value {
        serde_json::Value::Null => Unexpected::Unit,
        serde_json::Value::Bool(b) => Unexpected::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Unexpected::Unsigned(u),
            (_, Some(i), _) => Unexpected::Signed(i),
            (_, _, Some(f)) => Unexpected::Float(f),
            _ => Unexpected::Other("number"),
        },
        serde_json::Value::String(s) => Unexpected::Str(s),
        serde_json::Value::Array(_) => Unexpected::Seq,
        serde_json::Value::Object(_) => Unexpected::Map,
    }
}

struct StrictSeq<'a>(std::slice::Iter<'a, serde_json::Value>);

impl<'de> SeqAccess<'de> for StrictSeq<'de> {
    type Error = serde_json::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        self.0
            .next()
            .map(|item| seed.deserialize(Strict(item)))
            .transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct StrictMap<'a> {
    fields: serde_json::map::Iter<'a>,
    /// The value of the key last given.
    value: Option<&'a serde_json::Value>,
}

impl<'de> MapAccess<'de> for StrictMap<'de> {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let Some((key, value)) = self.fields.next() else {
            return Ok(None);
        };
        self.value = Some(value);
        seed.deserialize(serde::de::value::BorrowedStrDeserializer::new(key))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        match self.value.take() {
            Some(value) => seed.deserialize(Strict(value)),
            None => Err(serde::de::Error::custom("a value asked for before its key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.fields.len())
    }
}

/// Rewrites serde's type names in an error (`expected i64`, `invalid type: map`) into the
/// words a manifest's author uses.
fn in_manifest_terms(message: &str) -> String {
    let (got, expected) = match message.split_once(", expected ") {
        Some((got, expected)) => (got, Some(expected)),
        None => (message, None),
    };
    let got = got
        .replacen("invalid type: map", "invalid type: a mapping", 1)
        .replacen("invalid type: sequence", "invalid type: a list", 1)
        .replacen("invalid type: string", "invalid type: the string", 1)
        .replacen("invalid type: integer", "invalid type: the number", 1)
        .replacen(
            "invalid type: floating point",
            "invalid type: the number",
            1,
        )
        .replacen("invalid type: boolean", "invalid type: the boolean", 1)
        .replacen("invalid value: integer", "invalid value: the number", 1);
    let Some(expected) = expected else {
        return got;
    };
    let expected = match expected {
        "u8" => "a whole number from 0 to 255",
        "u16" => "a whole number from 0 to 65535",
        "u32" => "a whole number from 0 to 4294967295",
        "u64" | "usize" => "a whole number, 0 or more",
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a sequence" => "a list",
        "a map" => "a mapping",
        other if other.starts_with("struct ") => "a mapping of fields",
        other => other,
    };
    format!("{got}, expected {expected}")
}

/// A hostname as the API's `Hostname` pattern allows it: labels of letters, digits and `-`
/// (not at either end) joined by dots, optionally after a leading `*.`, 253 characters at most
/// in all. Like the API, no limit is set on one label's length. Letters of either case pass
/// here; where the API asks for lower case, the caller checks that.
pub fn valid_hostname(h: &str) -> bool {
    let name = h.strip_prefix("*.").unwrap_or(h);
    !name.is_empty()
        && h.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The methods an HTTPRoute match can name (the API's `HTTPMethod`).
pub const HTTP_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// `GatewayClass.spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayClassSpec {
    /// Which controller owns the class.
    #[serde(default)]
    pub controller_name: String,
    /// Implementation-specific parameters; this gateway defines none.
    pub parameters_ref: Option<serde_json::Value>,
}

/// `Gateway.spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// The GatewayClass this Gateway belongs to.
    #[serde(default)]
    pub gateway_class_name: String,
    /// Listeners, in the order written.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Requested addresses.
    #[serde(default)]
    pub addresses: Vec<GatewayAddress>,
    /// Infrastructure hints, including a parametersRef.
    pub infrastructure: Option<Infrastructure>,
    /// Gateway-wide TLS settings.
    pub tls: Option<GatewayTls>,
}

/// `Gateway.spec.tls`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GatewayTls {
    /// TLS from the Gateway to backends.
    pub backend: Option<GatewayBackendTls>,
    /// TLS from clients to the Gateway: client certificate validation.
    pub frontend: Option<FrontendTls>,
}

/// `Gateway.spec.tls.frontend`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FrontendTls {
    /// Settings for every HTTPS port without its own.
    pub default: Option<FrontendTlsConfig>,
    /// Settings for one port each.
    #[serde(default)]
    pub per_port: Vec<FrontendTlsPort>,
}

/// `frontend.perPort[]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FrontendTlsPort {
    /// The listener port.
    #[serde(default)]
    pub port: i64,
    /// Its settings.
    #[serde(default)]
    pub tls: FrontendTlsConfig,
}

/// Client certificate settings of a port.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FrontendTlsConfig {
    /// How client certificates are validated.
    pub validation: Option<FrontendValidation>,
}

/// `validation`: the CAs client certificates must chain to, and how strictly.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FrontendValidation {
    /// ConfigMaps (key `ca.crt`) with the CA certificates.
    #[serde(default)]
    pub ca_certificate_refs: Vec<ObjectRef>,
    /// `AllowValidOnly` (default) or `AllowInsecureFallback`.
    pub mode: Option<String>,
}

/// `Gateway.spec.tls.backend`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayBackendTls {
    /// The certificate the Gateway presents to backends that ask for one.
    pub client_certificate_ref: Option<ObjectRef>,
}

/// `Gateway.spec.infrastructure`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Infrastructure {
    /// A reference to implementation-specific parameters.
    pub parameters_ref: Option<LocalRef>,
}

/// A reference within the referrer's namespace.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalRef {
    /// API group of the referent.
    #[serde(default)]
    pub group: String,
    /// Kind of the referent.
    #[serde(default)]
    pub kind: String,
    /// Name of the referent.
    #[serde(default)]
    pub name: String,
}

/// `Gateway.spec.addresses[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayAddress {
    /// `IPAddress` (default), `Hostname` or an implementation-specific type.
    #[serde(rename = "type")]
    pub type_: Option<String>,
    /// The address; may be empty, asking the implementation to choose.
    pub value: Option<String>,
}

/// `Gateway.spec.listeners[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// Unique within the Gateway.
    #[serde(default)]
    pub name: String,
    /// Optional hostname (exact or `*.` wildcard).
    pub hostname: Option<String>,
    /// Port number.
    #[serde(default)]
    pub port: i64,
    /// `HTTP`, `HTTPS`, `TLS`, ...
    #[serde(default)]
    pub protocol: String,
    /// TLS settings for HTTPS and TLS listeners.
    pub tls: Option<ListenerTls>,
    /// Which routes may attach.
    pub allowed_routes: Option<AllowedRoutes>,
}

/// `listeners[].tls`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTls {
    /// `Terminate` (default) or `Passthrough`.
    pub mode: Option<String>,
    /// Certificates, usually Secrets.
    #[serde(default)]
    pub certificate_refs: Vec<ObjectRef>,
}

/// `listeners[].allowedRoutes`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllowedRoutes {
    /// Namespaces routes may come from.
    pub namespaces: Option<RouteNamespaces>,
    /// Route kinds that may attach; empty means the protocol's defaults.
    #[serde(default)]
    pub kinds: Vec<RouteGroupKind>,
}

/// `allowedRoutes.namespaces`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteNamespaces {
    /// `Same` (default), `All` or `Selector`.
    pub from: Option<String>,
    /// Label selector, for `Selector`.
    pub selector: Option<LabelSelector>,
}

/// A Kubernetes label selector.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must all be present with these values.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements.
    #[serde(default)]
    pub match_expressions: Vec<LabelRequirement>,
}

/// One set-based selector requirement.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelRequirement {
    /// Label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`.
    pub operator: String,
    /// Values for `In` and `NotIn`.
    #[serde(default)]
    pub values: Vec<String>,
}

impl LabelSelector {
    /// A selector that no set of labels satisfies.
    pub fn nothing() -> Self {
        LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![LabelRequirement {
                key: String::new(),
                operator: "In".to_string(),
                values: Vec::new(),
            }],
        }
    }

    /// What makes the selector invalid, as Kubernetes defines one: an operator outside `In`,
    /// `NotIn`, `Exists` and `DoesNotExist`, values missing for `In` and `NotIn` or given
    /// for the other two.
    pub fn problem(&self) -> Option<String> {
        self.match_expressions.iter().find_map(|r| {
            let needs_values = match r.operator.as_str() {
                "In" | "NotIn" => true,
                "Exists" | "DoesNotExist" => false,
                other => {
                    return Some(format!(
                        "selector operator {other:?} for key {:?} is not one of In, NotIn, \
                         Exists, DoesNotExist",
                        r.key
                    ))
                }
            };
            (needs_values == r.values.is_empty()).then(|| {
                format!(
                    "selector operator {} for key {:?} {}",
                    r.operator,
                    r.key,
                    if needs_values {
                        "needs values"
                    } else {
                        "takes no values"
                    }
                )
            })
        })
    }

    /// Whether `labels` satisfy the selector. An unknown operator matches nothing.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator.as_str() {
                    "In" => value.is_some_and(|v| r.values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !r.values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
    }
}

/// `{group, kind}` of a route kind.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouteGroupKind {
    /// Defaults to `gateway.networking.k8s.io`.
    pub group: Option<String>,
    /// Route kind.
    pub kind: String,
}

/// A reference to another object, possibly in another namespace.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// API group; its default depends on where the reference appears.
    pub group: Option<String>,
    /// Kind; its default depends on where the reference appears.
    pub kind: Option<String>,
    /// Name of the referent.
    #[serde(default)]
    pub name: String,
    /// Namespace; defaults to the referrer's.
    pub namespace: Option<String>,
}

/// A route's `spec.parentRefs[]`.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    /// Defaults to `gateway.networking.k8s.io`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Defaults to `Gateway`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Namespace of the parent; defaults to the route's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the parent.
    #[serde(default)]
    pub name: String,
    /// A listener name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// A listener port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
}

/// `HTTPRoute.spec` (and the parts of `GRPCRoute.spec` and `TLSRoute.spec` that share its shape).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// Gateways (and listeners) the route attaches to.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Hostnames the route serves.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Rules, in the order written.
    #[serde(default)]
    pub rules: Vec<HttpRule>,
}

/// `HTTPRoute.spec.rules[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRule {
    /// Optional rule name.
    pub name: Option<String>,
    /// Matches; none means "every request".
    #[serde(default)]
    pub matches: Vec<HttpMatch>,
    /// Filters applied to every request the rule takes.
    #[serde(default)]
    pub filters: Vec<HttpFilter>,
    /// Where requests go.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    /// Request and backend request timeouts.
    pub timeouts: Option<Timeouts>,
    /// When to send a request to the backend again.
    pub retry: Option<Retry>,
    /// Session persistence, which the gateway does not offer: kept only to say so in the
    /// route's status.
    pub session_persistence: Option<serde_json::Value>,
}

/// `rules[].matches[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatch {
    /// Path match; defaults to prefix `/`.
    pub path: Option<PathMatch>,
    /// Header matches, all of which must hold.
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    /// Query parameter matches, all of which must hold.
    #[serde(default)]
    pub query_params: Vec<ValueMatch>,
    /// HTTP method.
    pub method: Option<String>,
    /// Made from a GRPCRoute match that names a method and no service: its path pattern ranks
    /// below every service a GRPCRoute names (GRPCRouteRule's precedence: the characters of
    /// the service, then of the method), where an HTTPRoute's pattern would rank above every
    /// prefix. Not a field of the API.
    #[serde(skip)]
    pub grpc_method_only: bool,
    /// Made from a GRPCRoute `RegularExpression` method match: its service and method patterns
    /// as written, so that one that does not compile is named by its field rather than by the
    /// path pattern built from both. Not a field of the API.
    #[serde(skip)]
    pub grpc_patterns: Option<(Option<String>, Option<String>)>,
    /// Made from a GRPCRoute match: which parts of the method it names, for GRPCRouteRule's
    /// precedence (see [`GrpcNames`]). `None` for an HTTPRoute's match. Not a field of the API.
    #[serde(skip)]
    pub grpc_names: Option<GrpcNames>,
}

/// What a GRPCRoute match names of a request's `/service/method`. GRPCRouteRule's precedence
/// goes by the characters of the matching service, then of the matching method: every match
/// of one request that names its service (exactly or by a pattern) counts the same characters,
/// so a match naming both parts ranks above one naming the service alone, that above one
/// naming the method alone, and that above one naming neither; how a part is matched (exact or
/// pattern) does not rank it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GrpcNames {
    /// Neither part: any method of any service.
    Neither,
    /// The method, in any service.
    Method,
    /// The service, any method of it.
    Service,
    /// Both.
    Both,
}

/// `matches[].path`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathMatch {
    /// `Exact`, `PathPrefix` (default) or `RegularExpression`.
    #[serde(rename = "type")]
    pub type_: Option<String>,
    /// The path or pattern; defaults to `/`.
    pub value: Option<String>,
}

/// A header or query parameter match.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValueMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(rename = "type")]
    pub type_: Option<String>,
    /// Header or parameter name.
    #[serde(default)]
    pub name: String,
    /// Value or pattern.
    #[serde(default)]
    pub value: String,
}

/// `rules[].timeouts`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// The whole request, as the client sees it.
    pub request: Option<String>,
    /// One request from the gateway to a backend.
    pub backend_request: Option<String>,
}

/// `rules[].retry`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    /// Backend response statuses that are retried (400-599).
    #[serde(default)]
    pub codes: Vec<i64>,
    /// How many times a request may be retried, after the first try.
    pub attempts: Option<i64>,
    /// The least time to wait before each retry.
    pub backoff: Option<String>,
}

/// `rules[].filters[]` and `backendRefs[].filters[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpFilter {
    /// Which of the fields below applies.
    #[serde(rename = "type", default)]
    pub type_: String,
    /// `RequestHeaderModifier`.
    pub request_header_modifier: Option<HeaderModifier>,
    /// `ResponseHeaderModifier`.
    pub response_header_modifier: Option<HeaderModifier>,
    /// `RequestRedirect`.
    pub request_redirect: Option<RequestRedirect>,
    /// `URLRewrite`.
    pub url_rewrite: Option<UrlRewrite>,
    /// `RequestMirror`.
    pub request_mirror: Option<RequestMirror>,
    /// `CORS`.
    pub cors: Option<Cors>,
    /// `ExtensionRef`: a custom filter, by reference.
    pub extension_ref: Option<LocalRef>,
}

/// `filters[].cors`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cors {
    /// Origins allowed: `*`, or `scheme://host[:port]` where the host may start with `*.`.
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// Methods allowed, or `*`.
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// Request headers allowed, or `*`.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers exposed to scripts.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Whether credentials may be sent.
    pub allow_credentials: Option<bool>,
    /// Seconds a preflight answer may be cached.
    pub max_age: Option<i64>,
}

/// `requestHeaderModifier` / `responseHeaderModifier`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderModifier {
    /// Headers to overwrite.
    #[serde(default)]
    pub set: Vec<HeaderValue>,
    /// Headers to append.
    #[serde(default)]
    pub add: Vec<HeaderValue>,
    /// Header names to drop.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HeaderValue {
    /// Name.
    pub name: String,
    /// Value.
    #[serde(default)]
    pub value: String,
}

/// `requestRedirect`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRedirect {
    /// `http` or `https`.
    pub scheme: Option<String>,
    /// Replacement hostname.
    pub hostname: Option<String>,
    /// Path replacement.
    pub path: Option<PathModifier>,
    /// Replacement port.
    pub port: Option<i64>,
    /// 301, 302 (default), 303, 307 or 308.
    pub status_code: Option<i64>,
}

/// `urlRewrite`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UrlRewrite {
    /// Replacement Host.
    pub hostname: Option<String>,
    /// Path replacement.
    pub path: Option<PathModifier>,
}

/// A redirect's or rewrite's `path`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type", default)]
    pub type_: String,
    /// For `ReplaceFullPath`.
    pub replace_full_path: Option<String>,
    /// For `ReplacePrefixMatch`.
    pub replace_prefix_match: Option<String>,
}

/// `requestMirror`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestMirror {
    /// Where copies go.
    #[serde(default)]
    pub backend_ref: BackendRef,
    /// Share of requests mirrored, 0..=100.
    pub percent: Option<i64>,
    /// Share of requests mirrored as a fraction.
    pub fraction: Option<Fraction>,
}

/// `requestMirror.fraction`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Fraction {
    /// Numerator.
    pub numerator: i64,
    /// Denominator, 100 when absent.
    pub denominator: Option<i64>,
}

/// `rules[].backendRefs[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    /// API group; core (empty) by default.
    pub group: Option<String>,
    /// Kind; `Service` by default.
    pub kind: Option<String>,
    /// Name of the referent.
    #[serde(default)]
    pub name: String,
    /// Namespace; defaults to the route's.
    pub namespace: Option<String>,
    /// Service port.
    pub port: Option<i64>,
    /// Relative weight, 1 by default.
    pub weight: Option<i64>,
    /// Filters for requests sent to this backend only.
    #[serde(default)]
    pub filters: Vec<HttpFilter>,
}

/// `ReferenceGrant.spec`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ReferenceGrantSpec {
    /// Who may refer.
    #[serde(default)]
    pub from: Vec<GrantFrom>,
    /// What they may refer to.
    #[serde(default)]
    pub to: Vec<GrantTo>,
}

/// `ReferenceGrant.spec.from[]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GrantFrom {
    /// Group of the referrer.
    #[serde(default)]
    pub group: String,
    /// Kind of the referrer.
    #[serde(default)]
    pub kind: String,
    /// Namespace of the referrer.
    #[serde(default)]
    pub namespace: String,
}

/// `ReferenceGrant.spec.to[]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GrantTo {
    /// Group of the referent.
    #[serde(default)]
    pub group: String,
    /// Kind of the referent.
    #[serde(default)]
    pub kind: String,
    /// A single referent, or all of the kind when absent.
    pub name: Option<String>,
}

/// `Service.spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// `ClusterIP`, `NodePort`, `LoadBalancer`, `ExternalName`.
    #[serde(rename = "type")]
    pub type_: Option<String>,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
}

/// `Service.spec.ports[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Port name; required when there are several.
    pub name: Option<String>,
    /// The Service port.
    pub port: i64,
    /// Application protocol, e.g. `kubernetes.io/h2c`.
    pub app_protocol: Option<String>,
    /// `TCP` (the default), `UDP` or `SCTP`.
    pub protocol: Option<String>,
}

/// Whether a Service or EndpointSlice port's `protocol` is TCP, which it is when left out: the
/// only one a gateway can carry HTTP or TLS over.
pub fn is_tcp(protocol: Option<&str>) -> bool {
    protocol.is_none_or(|p| p == "TCP")
}

/// An EndpointSlice (the whole object: its fields sit at the top level).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    /// `IPv4`, `IPv6` or `FQDN`.
    #[serde(default)]
    pub address_type: String,
    /// Endpoints.
    #[serde(default)]
    pub endpoints: Option<Vec<Endpoint>>,
    /// Ports shared by every endpoint.
    #[serde(default)]
    pub ports: Option<Vec<EndpointPort>>,
}

/// One endpoint of a slice.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Endpoint {
    /// Addresses (one in practice).
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Readiness.
    #[serde(default)]
    pub conditions: EndpointConditions,
}

/// `endpoints[].conditions`; an absent `ready` means ready, as Kubernetes defines it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EndpointConditions {
    /// Whether the endpoint takes traffic.
    pub ready: Option<bool>,
}

/// `EndpointSlice.ports[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPort {
    /// Matches the Service port's name.
    pub name: Option<String>,
    /// The endpoint's port number.
    pub port: Option<i64>,
    /// `TCP` (the default), `UDP` or `SCTP`.
    pub protocol: Option<String>,
}

/// `GRPCRoute.spec`; translated into the HTTPRoute shape, since gRPC is HTTP/2 with the method
/// in the path (`/package.Service/Method`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    /// Gateways the route attaches to.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Hostnames the route serves.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Rules, in the order written.
    #[serde(default)]
    pub rules: Vec<GrpcRule>,
}

/// `GRPCRoute.spec.rules[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRule {
    /// Optional rule name.
    pub name: Option<String>,
    /// Matches; none means every call.
    #[serde(default)]
    pub matches: Vec<GrpcMatch>,
    /// Filters (the HTTPRoute filter shapes that gRPC supports).
    #[serde(default)]
    pub filters: Vec<HttpFilter>,
    /// Where calls go.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    /// Session persistence, which the gateway does not offer (see [`HttpRule`]).
    pub session_persistence: Option<serde_json::Value>,
}

/// `GRPCRoute.spec.rules[].matches[]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GrpcMatch {
    /// Service and method.
    pub method: Option<GrpcMethodMatch>,
    /// Metadata (header) matches.
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
}

/// `matches[].method`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GrpcMethodMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(rename = "type")]
    pub type_: Option<String>,
    /// Fully qualified service name, e.g. `foo.bar.Echo`.
    pub service: Option<String>,
    /// Method name.
    pub method: Option<String>,
}

impl From<GrpcRouteSpec> for RouteSpec {
    fn from(g: GrpcRouteSpec) -> RouteSpec {
        RouteSpec {
            parent_refs: g.parent_refs,
            hostnames: g.hostnames,
            rules: g.rules.into_iter().map(HttpRule::from).collect(),
        }
    }
}

impl From<GrpcRule> for HttpRule {
    fn from(r: GrpcRule) -> HttpRule {
        HttpRule {
            name: r.name,
            // None is every call: one match naming nothing, ranked as a GRPCRoute's.
            matches: match r.matches.is_empty() {
                true => vec![HttpMatch::from(GrpcMatch::default())],
                false => r.matches.into_iter().map(HttpMatch::from).collect(),
            },
            filters: r.filters,
            backend_refs: r.backend_refs,
            timeouts: None,
            retry: None,
            session_persistence: r.session_persistence,
        }
    }
}

impl From<GrpcMatch> for HttpMatch {
    /// A service and method become the request path: both given is an exact path, a service
    /// alone a path prefix, a method alone a pattern; `RegularExpression` builds a pattern from
    /// the two parts (an absent part matches any name).
    fn from(mut m: GrpcMatch) -> HttpMatch {
        // An empty service or method is one left out: the spec's "if left empty or omitted,
        // will match any service" (and method).
        if let Some(mm) = m.method.as_mut() {
            mm.service = mm.service.take().filter(|s| !s.is_empty());
            mm.method = mm.method.take().filter(|s| !s.is_empty());
        }
        let grpc_method_only = m.method.as_ref().is_some_and(|mm| {
            mm.type_.as_deref() != Some("RegularExpression")
                && mm.service.is_none()
                && mm.method.is_some()
        });
        let grpc_patterns = m
            .method
            .as_ref()
            .filter(|mm| mm.type_.as_deref() == Some("RegularExpression"))
            .map(|mm| (mm.service.clone(), mm.method.clone()));
        let grpc_names = Some(
            match m.method.as_ref().map(|mm| (&mm.service, &mm.method)) {
                Some((Some(_), Some(_))) => GrpcNames::Both,
                Some((Some(_), None)) => GrpcNames::Service,
                Some((None, Some(_))) => GrpcNames::Method,
                Some((None, None)) | None => GrpcNames::Neither,
            },
        );
        let path = m.method.map(|mm| {
            let regex = mm.type_.as_deref() == Some("RegularExpression");
            let (type_, value) = match (regex, mm.service, mm.method) {
                (false, Some(s), Some(m)) => ("Exact", format!("/{s}/{m}")),
                (false, Some(s), None) => ("PathPrefix", format!("/{s}")),
                (false, None, Some(m)) => {
                    ("RegularExpression", format!("/[^/]+/{}", regex::escape(&m)))
                }
                (false, None, None) => ("PathPrefix", "/".to_string()),
                // Each part in a group of its own: `a|b` is a choice of services, not
                // `/a` or `b/...`.
                (true, s, m) => (
                    "RegularExpression",
                    format!(
                        "/(?:{})/(?:{})",
                        s.unwrap_or_else(|| "[^/]+".into()),
                        m.unwrap_or_else(|| "[^/]+".into())
                    ),
                ),
            };
            PathMatch {
                type_: Some(type_.to_string()),
                value: Some(value),
            }
        });
        HttpMatch {
            path,
            headers: m.headers,
            query_params: Vec::new(),
            method: None,
            grpc_method_only,
            grpc_patterns,
            grpc_names,
        }
    }
}

/// `TLSRoute.spec`: routes whole TLS connections by SNI; only backendRefs matter in a rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsRouteSpec {
    /// Gateways the route attaches to.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// SNI hostnames the route serves.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Rules; each carries backendRefs.
    #[serde(default)]
    pub rules: Vec<TlsRule>,
}

/// `TLSRoute.spec.rules[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsRule {
    /// Optional rule name.
    pub name: Option<String>,
    /// Where connections go.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
}

impl From<TlsRouteSpec> for RouteSpec {
    fn from(t: TlsRouteSpec) -> RouteSpec {
        RouteSpec {
            parent_refs: t.parent_refs,
            hostnames: t.hostnames,
            rules: t
                .rules
                .into_iter()
                .map(|r| HttpRule {
                    name: r.name,
                    backend_refs: r.backend_refs,
                    ..HttpRule::default()
                })
                .collect(),
        }
    }
}

/// `BackendTLSPolicy.spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendTlsPolicySpec {
    /// The Services (ports) the policy applies to.
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetRef>,
    /// How the backend's certificate is verified.
    #[serde(default)]
    pub validation: BackendTlsValidation,
}

/// `BackendTLSPolicy.spec.targetRefs[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetRef {
    /// Group of the target; core for Services.
    #[serde(default)]
    pub group: String,
    /// Kind of the target.
    #[serde(default)]
    pub kind: String,
    /// Name of the target.
    #[serde(default)]
    pub name: String,
    /// A port name of the Service; all ports when absent.
    pub section_name: Option<String>,
}

/// `BackendTLSPolicy.spec.validation`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendTlsValidation {
    /// ConfigMaps (key `ca.crt`) holding the CA certificates to trust.
    #[serde(default)]
    pub ca_certificate_refs: Vec<ObjectRef>,
    /// `System` to trust the system's roots.
    #[serde(rename = "wellKnownCACertificates")]
    pub well_known_ca_certificates: Option<String>,
    /// The name sent as SNI and verified in the backend's certificate.
    #[serde(default)]
    pub hostname: String,
    /// Names to verify in the backend's certificate instead of `hostname`: not supported, and
    /// refused when given (see `read_backend_tls`).
    #[serde(default)]
    pub subject_alt_names: Vec<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_of_the_wrong_type_is_named_by_its_path_in_the_manifest_s_words() {
        let spec = serde_json::json!({
            "rules": [{"backendRefs": [{"name": "a", "port": 80}, {"name": "b", "port": "eighty"}]}]
        });
        let e = read::<RouteSpec>(&spec).unwrap_err();
        assert_eq!(
            e,
            "rules[0].backendRefs[1].port: invalid type: the string \"eighty\", expected a \
             whole number"
        );
        let e = read::<RouteSpec>(&serde_json::json!({"rules": {"matches": []}})).unwrap_err();
        assert_eq!(e, "rules: invalid type: a mapping, expected a list");
        let e = read::<RouteSpec>(&serde_json::json!("rules")).unwrap_err();
        assert_eq!(
            e,
            "invalid type: the string \"rules\", expected a mapping of fields"
        );
    }
}
