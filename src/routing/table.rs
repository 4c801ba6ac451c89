//! The compiled routing table: immutable, shared by every request, swapped whole.
//!
//! Lookup narrows in three steps, each a hash probe or a short walk:
//!
//! 1. the **bind** (the local address and port the connection arrived on) gives the listeners
//!    served there;
//! 2. the request's host picks the **listener** with the most specific matching hostname, then,
//!    inside that listener, the **host bucket**: the exact hostname, then each wildcard suffix
//!    from longest to shortest, then routes without hostnames;
//! 3. inside a bucket the request path probes the exact-path map, the regular expressions, then
//!    the prefix map once per path element from longest to shortest (GRPCRoute matches of a
//!    method in any service just before the prefix `/`); each probe yields entries already
//!    sorted by the rest of the spec's precedence, and the first whose method, header and query
//!    matches hold wins.
//!
//! The cost of a lookup therefore depends on the depth of the host and path, not on the number
//! of routes. Buckets are tried in order and a bucket whose rules all fail to match falls through
//! to the next one, which is what precedence across routes asks for.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;

/// Everything the data plane needs, at one configuration generation.
#[derive(Default)]
pub struct RoutingTable {
    /// Increases by one with each compile that is swapped in.
    pub generation: u64,
    /// Listeners by the socket address they are served on.
    pub binds: HashMap<SocketAddr, Bind>,
}

/// The listeners that share one socket.
#[derive(Default)]
pub struct Bind {
    /// Whether the socket terminates TLS (HTTPS listeners).
    pub tls: bool,
    /// Client certificate validation on this socket, if its Gateway asks for it.
    pub client_auth: Option<Arc<crate::tls::ClientAuth>>,
    /// Ordered most specific hostname first; a listener without hostname comes last.
    pub listeners: Vec<ListenerRoutes>,
}

/// One Gateway listener and the routes attached to it.
pub struct ListenerRoutes {
    /// `namespace/name` of the Gateway.
    pub gateway: Arc<str>,
    /// The listener's name.
    pub name: Arc<str>,
    /// The listener's hostname, lower case; `None` matches every host.
    pub hostname: Option<String>,
    /// The port written in the Gateway, which redirects use (the socket may be mapped elsewhere).
    pub port: u16,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The certificate served for this listener's hostname, on TLS sockets: its first
    /// certificateRef's.
    pub certificate: Option<Arc<rustls::sign::CertifiedKey>>,
    /// With several certificateRefs, all of them, in order, to choose from by the client's SNI
    /// and signature schemes (an RSA and an ECDSA certificate, or one per name); empty with one.
    pub certificates: Vec<crate::tls::Choice>,
    /// The client certificate the Gateway presents to TLS backends (`spec.tls.backend`).
    pub backend_client_cert: Option<Arc<pingora_core::utils::tls::CertKey>>,
    /// Route rules by host.
    pub hosts: HostIndex,
    /// For TLS passthrough listeners: TLSRoute rules by SNI hostname (`None` for any), most
    /// specific first. Empty for HTTP and HTTPS listeners.
    pub passthrough: Vec<(Option<String>, Arc<Rule>)>,
}

/// Rule entries of one listener by request host. Each host's entries are shared: a compile
/// hands on those of every host whose routes did not change, so one route's change rebuilds
/// (and frees) one host's entries, not the listener's.
#[derive(Default)]
pub struct HostIndex {
    /// Exact hostnames.
    pub exact: HashMap<String, Arc<PathIndex>>,
    /// Wildcards by their suffix including the leading dot (`.example.com`).
    pub wildcard: HashMap<String, Arc<PathIndex>>,
    /// Routes without any hostname.
    pub any: Option<Arc<PathIndex>>,
}

/// Rule entries of one host bucket by request path.
#[derive(Default)]
pub struct PathIndex {
    /// Exact path matches.
    pub exact: HashMap<String, Vec<Entry>>,
    /// Prefix matches by the prefix without its trailing slash (`/` stays `/`).
    pub prefix: HashMap<String, Vec<Entry>>,
    /// Regular-expression path matches.
    pub regex: Vec<(PathPattern, Entry)>,
    /// GRPCRoute matches of a method in any service, as patterns (a host of GRPCRoutes is
    /// looked up by [`Entry::order`], see `grpc`).
    pub grpc_methods: Vec<(PathPattern, Entry)>,
    /// The host is served by GRPCRoutes, whose precedence goes by what of the method a match
    /// names, not by its kind of path match: lookups take the first matching entry by
    /// [`Entry::order`].
    pub grpc: bool,
}

/// One `match` of one rule, ready to test.
#[derive(Clone)]
pub struct Entry {
    /// Method, header and query conditions beyond the path.
    pub conditions: Arc<Conditions>,
    /// What to do with a request that matches.
    pub rule: Arc<Rule>,
    /// The path prefix the entry matched on, for `ReplacePrefixMatch`.
    pub prefix: Option<Arc<str>>,
    /// The entry's place in precedence among all of its host's, first at 0.
    pub order: u32,
}

/// The non-path parts of a match.
#[derive(Debug, Default)]
pub struct Conditions {
    /// Upper-case method, if the match names one.
    pub method: Option<String>,
    /// Header conditions, names lower case.
    pub headers: Vec<ValueCondition>,
    /// Query parameter conditions, names as written (they are case-sensitive).
    pub query: Vec<ValueCondition>,
}

/// An exact or pattern condition on a named value.
#[derive(Debug)]
pub struct ValueCondition {
    /// Header or parameter name.
    pub name: String,
    /// How the value must look.
    pub value: ValueMatch,
}

/// A `RegularExpression` path match, anchored at both ends.
#[derive(Clone)]
pub enum PathPattern {
    /// An HTTPRoute's pattern for the whole path.
    Path(Regex),
    /// A GRPCRoute's patterns for the service and the method, each tried on its own part of
    /// a `/service/method` path, so that a part's own `^` and `$` hold at its edges.
    Grpc {
        /// Anchored pattern for the service, the path's first segment.
        service: Regex,
        /// Anchored pattern for the method, the second and last segment.
        method: Regex,
        /// The two, as `explain` shows them: `service ^(?:a\.B)$ and method ^(?:Get)$`.
        text: String,
    },
}

impl PathPattern {
    /// Whether the pattern takes a request path.
    pub fn is_match(&self, path: &str) -> bool {
        match self {
            PathPattern::Path(re) => re.is_match(path),
            PathPattern::Grpc {
                service, method, ..
            } => (path.strip_prefix('/'))
                .and_then(|rest| rest.split_once('/'))
                .is_some_and(|(s, m)| {
                    !m.contains('/') && service.is_match(s) && method.is_match(m)
                }),
        }
    }

    /// The pattern, anchors included: for a GRPCRoute, its service's and its method's.
    pub fn as_str(&self) -> &str {
        match self {
            PathPattern::Path(re) => re.as_str(),
            PathPattern::Grpc { text, .. } => text,
        }
    }
}

/// Whether a request's `content-type` makes it a gRPC call (`application/grpc`, `+proto` and
/// the like; a media type is case-insensitive).
pub fn is_grpc_content_type(value: &[u8]) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    value
        .get(..GRPC.len())
        .is_some_and(|v| v.eq_ignore_ascii_case(GRPC))
}

/// The gRPC status (`grpc-status` and `grpc-message`) the gateway answers a gRPC call with in
/// place of an HTTP error status of its own: gRPC clients read errors from trailers of an HTTP
/// 200, not from an HTML status page.
pub fn gateway_grpc_status(http_status: u16) -> (&'static str, &'static str) {
    match http_status {
        404 => ("12", "no route for this method (UNIMPLEMENTED)"),
        503 => ("14", "no backend is available (UNAVAILABLE)"),
        // Reached, but it refused the connection, reset the stream or answered what is not
        // HTTP: the gateway's log says which.
        502 => ("14", "the backend failed the call (UNAVAILABLE)"),
        504 => (
            "4",
            "the backend did not answer in time (DEADLINE_EXCEEDED)",
        ),
        408 => (
            "4",
            "the request's messages stopped arriving (DEADLINE_EXCEEDED)",
        ),
        // A backendRef that does not resolve (no such Service, a reference not permitted, a
        // kind that is not a Service, a TLS policy that cannot be honoured): the spec asks for
        // UNAVAILABLE for "requests that would have otherwise been routed to an invalid
        // backend".
        500 => (
            "14",
            "the route's backend cannot be resolved (UNAVAILABLE); see the route's status",
        ),
        _ => ("13", "the gateway failed the call (INTERNAL)"),
    }
}

/// How a header or query value must look.
#[derive(Debug)]
pub enum ValueMatch {
    /// Byte-for-byte equal.
    Exact(String),
    /// Matches the (unanchored) pattern.
    Regex(Regex),
}

impl ValueMatch {
    fn holds(&self, value: &str) -> bool {
        match self {
            ValueMatch::Exact(v) => v == value,
            ValueMatch::Regex(r) => r.is_match(value),
        }
    }
}

/// A rule of a route, with everything resolved.
pub struct Rule {
    /// `namespace/name` of the route.
    pub route: Arc<str>,
    /// Index of the rule in the route.
    pub index: usize,
    /// The rule's name, if any.
    pub name: Option<String>,
    /// Filters applied to every request.
    pub filters: Vec<Filter>,
    /// Weighted backends; an empty list answers 500 unless a redirect filter answers first.
    pub backends: Vec<WeightedBackend>,
    /// Sum of the weights.
    pub total_weight: u64,
    /// Deadline for the whole request.
    pub request_timeout: Option<Duration>,
    /// Deadline for one request to a backend.
    pub backend_timeout: Option<Duration>,
    /// When a failed backend request is sent again.
    pub retry: Option<RetryPolicy>,
}

/// `rules[].retry`, checked: which answers are retried, how often, and how long to wait.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Backend statuses that are retried. Failures to connect, and connections that close
    /// before a response begins, are retried whatever the list holds.
    pub codes: Vec<u16>,
    /// Retries after the first try.
    pub attempts: u32,
    /// Wait before each retry.
    pub backoff: Duration,
}

impl RetryPolicy {
    /// Retries allowed when `rules[].retry.attempts` is not given.
    pub const DEFAULT_ATTEMPTS: u32 = 1;
    /// The wait before a retry when `rules[].retry.backoff` is not given.
    pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);
    /// The most retries one request gets, whatever a route asks: each holds a client waiting
    /// and adds load to a backend that is already failing.
    pub const MAX_ATTEMPTS: u32 = 10;

    /// Whether an answer with `status` is tried again.
    pub fn retries_status(&self, status: u16) -> bool {
        self.codes.contains(&status)
    }
}

/// A backendRef with its weight.
pub struct WeightedBackend {
    /// Relative share of requests.
    pub weight: u64,
    /// Where the requests go.
    pub target: Arc<Backend>,
    /// Filters for requests sent to this backend only.
    pub filters: Vec<Filter>,
}

/// A resolved backend.
pub enum Backend {
    /// A Service port with its ready endpoints.
    Service(ServiceBackend),
    /// A reference that could not be resolved; its share of requests gets 500.
    Invalid {
        /// Why, for logs and `explain`.
        reason: String,
    },
}

/// A Service port and where its ready endpoints are.
pub struct ServiceBackend {
    /// `namespace/name:port`.
    pub name: Arc<str>,
    /// Ready endpoints.
    pub endpoints: Vec<SocketAddr>,
    /// Speak HTTP/2 to the endpoints (`appProtocol: kubernetes.io/h2c`, or a GRPCRoute).
    pub h2c: bool,
    /// TLS to the endpoints, from a BackendTLSPolicy.
    pub tls: Option<Arc<crate::tls::BackendTls>>,
    next: AtomicUsize,
    /// Per endpoint, until when (milliseconds on [`clock_ms`]) it is passed over after failing
    /// to connect; 0 when it is not.
    down_until: Vec<AtomicU64>,
    /// Whether any endpoint has been set aside, so that `pick` reads the clock only then.
    any_down: AtomicU64,
}

/// How long an endpoint that refused a connection (or did not accept one in time) is passed
/// over: the gap between a pod dying and its EndpointSlice saying so would otherwise fail a
/// share of requests for as long as it lasts.
pub const ENDPOINT_DOWN_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// Milliseconds since the process's first call, on the monotonic clock.
fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl ServiceBackend {
    /// A backend over `endpoints`.
    pub fn new(name: Arc<str>, endpoints: Vec<SocketAddr>, h2c: bool) -> Self {
        ServiceBackend {
            down_until: endpoints.iter().map(|_| AtomicU64::new(0)).collect(),
            name,
            endpoints,
            h2c,
            tls: None,
            next: AtomicUsize::new(0),
            any_down: AtomicU64::new(0),
        }
    }

    /// The next endpoint in round-robin order, passing over those set aside by
    /// [`Self::set_aside`] while others remain; `None` when none is ready.
    pub fn pick(&self) -> Option<SocketAddr> {
        if self.endpoints.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.endpoints.len();
        if self.any_down.load(Ordering::Relaxed) == 0 {
            return Some(self.endpoints[i % n]);
        }
        let now = clock_ms();
        let usable = |j: usize| self.down_until[j].load(Ordering::Relaxed) <= now;
        if (0..n).all(usable) {
            self.any_down.store(0, Ordering::Relaxed);
            return Some(self.endpoints[i % n]);
        }
        match (0..n).map(|k| (i + k) % n).find(|&j| usable(j)) {
            Some(j) => Some(self.endpoints[j]),
            None => {
                // Every endpoint failed lately: try them all the same, in turn.
                Some(self.endpoints[i % n])
            }
        }
    }

    /// Passes over `endpoint` for [`ENDPOINT_DOWN_FOR`]: it refused a connection, or did not
    /// accept one in time.
    pub fn set_aside(&self, endpoint: SocketAddr) {
        if let Some(j) = self.endpoints.iter().position(|e| *e == endpoint) {
            let until = clock_ms() + u64::try_from(ENDPOINT_DOWN_FOR.as_millis()).unwrap_or(0);
            self.down_until[j].store(until, Ordering::Relaxed);
            self.any_down.store(1, Ordering::Relaxed);
        }
    }

    /// How many endpoints are ready.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether no endpoint is ready.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}

/// A filter, resolved.
#[derive(Clone)]
pub enum Filter {
    /// Change request headers before forwarding.
    RequestHeaders(Arc<HeaderEdits>),
    /// Change response headers before answering.
    ResponseHeaders(Arc<HeaderEdits>),
    /// Answer with a redirect instead of forwarding.
    Redirect(Arc<Redirect>),
    /// Change the Host or path before forwarding.
    Rewrite(Arc<Rewrite>),
    /// Send a copy of the request elsewhere and ignore its answer.
    Mirror(Arc<Mirror>),
    /// Answer CORS preflights and add CORS headers to responses.
    Cors(Arc<Cors>),
}

/// A `CORS` filter (Fetch standard, CORS protocol), with lists ready to send.
#[derive(Debug)]
pub struct Cors {
    /// Allowed origins; `*` alone allows any.
    pub origins: Vec<String>,
    /// Allowed methods; `None` for `*`.
    pub methods: Option<Vec<String>>,
    /// Allowed request headers; `None` for `*`.
    pub headers: Option<Vec<String>>,
    /// `access-control-expose-headers`, joined.
    pub expose: Option<String>,
    /// Send `access-control-allow-credentials: true`.
    pub credentials: bool,
    /// `access-control-max-age` in seconds.
    pub max_age: i64,
}

impl Cors {
    /// Whether an `Origin` header value is allowed. A pattern's `*.` host prefix matches one or
    /// more labels; scheme and port must match exactly.
    pub fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|pattern| {
            if pattern == "*" {
                return true;
            }
            match (pattern.split_once("://"), origin.split_once("://")) {
                (Some((ps, ph)), Some((os, oh))) => {
                    ps.eq_ignore_ascii_case(os)
                        && host_matches(&ph.to_ascii_lowercase(), &oh.to_ascii_lowercase())
                }
                _ => pattern.eq_ignore_ascii_case(origin),
            }
        })
    }
}

/// Header edits in the order the spec applies them: set, add, remove.
#[derive(Debug, Default)]
pub struct HeaderEdits {
    /// Overwrite (name lower case, value).
    pub set: Vec<(String, String)>,
    /// Append.
    pub add: Vec<(String, String)>,
    /// Drop.
    pub remove: Vec<String>,
}

/// How a path is replaced by a redirect or rewrite.
#[derive(Debug, Clone)]
pub enum PathReplace {
    /// Replace the whole path.
    Full(String),
    /// Replace the part the rule's path prefix matched.
    Prefix(String),
}

/// A `RequestRedirect` filter.
#[derive(Debug)]
pub struct Redirect {
    /// New scheme.
    pub scheme: Option<String>,
    /// New host.
    pub hostname: Option<String>,
    /// New path.
    pub path: Option<PathReplace>,
    /// New port.
    pub port: Option<u16>,
    /// Status code.
    pub status: u16,
}

/// A `URLRewrite` filter.
#[derive(Debug)]
pub struct Rewrite {
    /// New Host header.
    pub hostname: Option<String>,
    /// New path.
    pub path: Option<PathReplace>,
}

/// A `RequestMirror` filter.
pub struct Mirror {
    /// Where copies go.
    pub backend: Arc<Backend>,
    /// Share of requests copied, in parts per million.
    pub per_million: u32,
}

/// What a request needs to be looked up.
pub struct RequestView<'a> {
    /// Host without port, any case.
    pub host: &'a str,
    /// Path without query.
    pub path: &'a str,
    /// Raw query string without `?`.
    pub query: Option<&'a str>,
    /// Method.
    pub method: &'a str,
    /// Header lookup: all values of a lower-case name.
    pub header: &'a dyn Fn(&str) -> Vec<&'a str>,
}

/// The result of a lookup.
pub struct Matched<'t> {
    /// The listener that took the request.
    pub listener: &'t ListenerRoutes,
    /// The winning entry.
    pub entry: &'t Entry,
}

/// Why a lookup found nothing; both answer 404.
pub enum Miss<'t> {
    /// No listener on this socket serves the host.
    NoListener,
    /// This listener took the host, but no rule matched: the 404 is the listener's.
    NoRoute(&'t ListenerRoutes),
}

impl fmt::Debug for Miss<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Miss::NoListener => f.write_str("NoListener"),
            Miss::NoRoute(listener) => write!(f, "NoRoute({}/{})", listener.gateway, listener.name),
        }
    }
}

impl RoutingTable {
    /// Finds the rule for a request that arrived on `bind`.
    pub fn lookup<'t>(
        &'t self,
        bind: &SocketAddr,
        req: &RequestView<'_>,
    ) -> Result<Matched<'t>, Miss<'t>> {
        self.binds.get(bind).ok_or(Miss::NoListener)?.lookup(req)
    }
}

impl Bind {
    /// Whether this socket serves HTTP to a connection in this mode: cleartext on a cleartext
    /// socket, or TLS on one with an HTTPS listener (a port that passes TLS through, or ends
    /// it for TLSRoutes, serves no HTTP).
    pub fn serves_http(&self, tls: bool) -> bool {
        match tls {
            true => self.tls && self.listeners.iter().any(|l| l.scheme == "https"),
            false => !self.tls,
        }
    }

    /// Finds the rule for a request that arrived on this socket.
    pub fn lookup<'t>(&'t self, req: &RequestView<'_>) -> Result<Matched<'t>, Miss<'t>> {
        let host = normalize_host(req.host);
        let listener = self
            .listeners
            .iter()
            .find(|l| l.hostname.as_deref().is_none_or(|h| host_matches(h, &host)))
            .ok_or(Miss::NoListener)?;
        listener
            .hosts
            .lookup(&host, req)
            .map(|entry| Matched { listener, entry })
            .ok_or(Miss::NoRoute(listener))
    }
}

impl RoutingTable {
    /// Whether socket `bind` serves HTTP to a connection in this mode ([`Bind::serves_http`]).
    /// A connection outlives the socket it came on: once its port is served otherwise, or not
    /// at all, its requests are not this table's.
    pub fn serves_http(&self, bind: &SocketAddr, tls: bool) -> bool {
        self.binds.get(bind).is_some_and(|b| b.serves_http(tls))
    }

    /// The listener a TLS ClientHello selects on `bind`: the first, most specific one that
    /// [`takes_server_name`]. The certificate resolver, TLS passthrough and the 421 check all
    /// choose by this rule, so that they agree on the listener.
    pub fn listener_for_hello(
        &self,
        bind: &SocketAddr,
        sni: Option<&str>,
    ) -> Option<&ListenerRoutes> {
        self.binds.get(bind)?.listener_for_hello(sni)
    }
}

impl Bind {
    /// [`RoutingTable::listener_for_hello`], on this socket.
    pub fn listener_for_hello(&self, sni: Option<&str>) -> Option<&ListenerRoutes> {
        self.listeners
            .iter()
            .find(|l| takes_server_name(l.hostname.as_deref(), sni))
    }

    /// The client certificate validation of this socket (`None`: none), as
    /// [`crate::tls::client_policy`] gives it.
    pub fn client_policy(&self) -> Option<u64> {
        Some(self.client_auth.as_ref()?.policy)
    }
}

/// Whether a listener's or TLSRoute's `hostname` (`None`: any) takes a ClientHello's server
/// name. A client that sends none is taken only where no hostname is set.
pub fn takes_server_name(hostname: Option<&str>, sni: Option<&str>) -> bool {
    match (hostname, sni) {
        (None, _) => true,
        (Some(h), Some(sni)) => host_matches(h, sni),
        (Some(_), None) => false,
    }
}

/// The request path in its normal form (RFC 3986, section 6.2.2), or `None` when it already is.
/// Routes are matched, and requests forwarded, on the normal form: otherwise `/public/../admin`
/// or `/%61dmin` would be matched by the gateway as something other than `/admin`, and served as
/// `/admin` by a backend that resolves them, walking around the route meant for `/admin`.
///
/// Two steps, in this order: percent-encoded unreserved characters (letters, digits, `-._~`) are
/// decoded, since `%61` and `a` are the same character to every backend, and the hex digits of
/// other percent-encodings are upper-cased (section 6.2.2.1: `%2c` and `%2C` are one byte);
/// then dot segments are resolved (section 5.2.4), including those that were written `%2e`.
/// Other percent-encodings (`%2F`, `%20`) are not decoded: that would change what the path
/// means. Empty segments (`//`) are kept too: they are not dot segments, and merging them would
/// change what some backends serve.
pub fn normalize_path(path: &str) -> Option<String> {
    if !path.starts_with('/') || !path.bytes().any(|b| b == b'.' || b == b'%') {
        return None;
    }
    let decoded = normal_percent_encodings(path, true);
    let path = decoded.as_deref().unwrap_or(path);
    remove_dot_segments(path).or(decoded)
}

/// `path` with every `%XX` that encodes an unreserved character replaced by that character
/// and, when `decode` is false or the character is another, the hex digits of each `%XX`
/// upper-cased; `None` when that changes nothing.
fn normal_percent_encodings(path: &str, decode: bool) -> Option<String> {
    let bytes = path.as_bytes();
    // What the encoding at `i` becomes, if it is one and is not in normal form already.
    let normal_at = |i: usize| -> Option<Encoded> {
        if bytes[i] != b'%' {
            return None;
        }
        let hex = bytes.get(i + 1..i + 3)?;
        if !hex.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let byte = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
        if decode && (byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')) {
            return Some(Encoded::Unreserved(byte));
        }
        hex.iter()
            .any(u8::is_ascii_lowercase)
            .then(|| Encoded::Upper([hex[0].to_ascii_uppercase(), hex[1].to_ascii_uppercase()]))
    };
    let first = (0..bytes.len()).find(|&i| normal_at(i).is_some())?;
    let mut out = String::with_capacity(path.len());
    out.push_str(&path[..first]);
    let mut i = first;
    while i < bytes.len() {
        match normal_at(i) {
            Some(Encoded::Unreserved(byte)) => {
                out.push(char::from(byte));
                i += 3;
            }
            Some(Encoded::Upper([a, b])) => {
                out.extend(['%', char::from(a), char::from(b)]);
                i += 3;
            }
            None => {
                // Copy up to the next `%`: slicing there is safe, `%` being ASCII.
                let next = path[i + 1..].find('%').map_or(bytes.len(), |n| i + 1 + n);
                out.push_str(&path[i..next]);
                i = next;
            }
        }
    }
    Some(out)
}

/// A percent-encoding put in normal form.
enum Encoded {
    /// An unreserved character, decoded.
    Unreserved(u8),
    /// Another byte, its hex digits upper-cased.
    Upper([u8; 2]),
}

/// `path` with the hex digits of its percent-encodings upper-cased, or `None` when none is
/// lower-case: how a route's path value is taken, so that it is matched as requests are.
pub fn upper_case_percent_encodings(path: &str) -> Option<String> {
    normal_percent_encodings(path, false)
}

/// `path` with its dot segments resolved, or `None` when it has none.
fn remove_dot_segments(path: &str) -> Option<String> {
    let segments = path[1..].split('/');
    if !segments.clone().any(|s| dots(s).is_some()) {
        return None;
    }
    let mut kept: Vec<&str> = Vec::new();
    let mut ends_in_directory = false;
    for segment in segments {
        ends_in_directory = true;
        match dots(segment) {
            Some(1) => {}
            Some(_) => {
                kept.pop();
            }
            None => {
                kept.push(segment);
                ends_in_directory = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if ends_in_directory || out.is_empty() {
        out.push('/');
    }
    Some(out)
}

/// 1 for a `.` segment, 2 for `..`; `None` for any other segment.
fn dots(segment: &str) -> Option<u8> {
    match segment {
        "." => Some(1),
        ".." => Some(2),
        _ => None,
    }
}

/// Whether a Host value (or an HTTP/2 authority) is a host with an optional port: a DNS-style
/// name or IPv4 address (letters, digits, `-`, `.`, `_`), or an IPv6 address in brackets,
/// and a port of at most 65535. What else RFC 3986 would let through (`,`, `!`, `%`) names no
/// host a route can have, and `/`, `?`, `#`, `@` or a space would let a redirect or a backend
/// read the value two ways.
pub fn valid_host(value: &str) -> bool {
    // Empty is what a client sends for a target without an authority (RFC 9112, section 3.2).
    if value.is_empty() {
        return true;
    }
    // One pass over the bytes (every request's Host comes through here): no substring search,
    // no number parsing but for the port.
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return false;
        };
        // Only an IPv6 address: `[.]` or `[bad.cafe]` would route as another host (or none)
        // than the backend and a redirect's Location are given.
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => ("", port),
                None => return false,
            },
        }
    } else {
        let bytes = value.as_bytes();
        match bytes.iter().rposition(|&b| b == b':') {
            Some(colon) => (&value[..colon], &value[colon + 1..]),
            None => (value, ""),
        }
    };
    let port_ok = port.is_empty()
        || (port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok());
    // An empty label (`a..b`, `.a`, `a..` past the one trailing dot a name may end with) names
    // no host: routing would read it as another name than a backend that keeps it.
    let mut host_ok = !host.starts_with('.');
    let mut after_dot = false;
    for b in host.bytes() {
        let dot = b == b'.';
        if !(b.is_ascii_alphanumeric() || dot || b == b'-' || b == b'_') || (dot && after_dot) {
            host_ok = false;
            break;
        }
        after_dot = dot;
    }
    port_ok && host_ok && (value.starts_with('[') || !host.is_empty())
}

/// The path prefixes a request path falls under, longest first and element-wise: `/a/b/`
/// gives `/a/b`, `/a`, then `/` (prefixes are kept without their trailing slash).
pub fn prefix_probes(path: &str) -> impl Iterator<Item = &str> {
    let mut key = Some(path.trim_end_matches('/'));
    std::iter::from_fn(move || {
        let current = key?;
        key = (!current.is_empty()).then(|| &current[..current.rfind('/').unwrap_or(0)]);
        Some(if current.is_empty() { "/" } else { current })
    })
}

/// Whether the gateway refuses a method before routing: one with a lower-case letter.
/// Methods are case-sensitive (RFC 9110, section 9.1), but many backends read `delete` as
/// DELETE, which a rule's `method: DELETE` match would not have caught; nginx refuses these
/// too.
pub fn refused_method(method: &str) -> bool {
    method.bytes().any(|b| b.is_ascii_lowercase())
}

/// Decodes a query string's name or value as a form does (`application/x-www-form-urlencoded`,
/// as most backends read a query): `%XX` as the byte it stands for, `+` as a space. A `%` not
/// followed by two hex digits stays as it is; bytes that are not UTF-8 once decoded become
/// U+FFFD. Borrowed when there is nothing to decode, as in most queries.
pub fn form_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push((high * 16 + low) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Lower-cases a host and strips a port and a trailing dot. Borrowed when the host is in lower
/// case already, as clients send it: routing looks every request's Host up through this.
pub fn normalize_host(host: &str) -> Cow<'_, str> {
    let host = if host.starts_with('[') {
        host.split_once(']').map_or(host, |(h, _)| &h[1..])
    } else {
        match host.as_bytes().iter().rposition(|&b| b == b':') {
            Some(colon) if host.as_bytes()[colon + 1..].iter().all(u8::is_ascii_digit) => {
                &host[..colon]
            }
            _ => host,
        }
    };
    let host = host.trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// Whether `host` (normalized) matches a listener or route hostname (lower case, maybe `*.`).
/// A wildcard matches one or more labels in its place, never the bare suffix.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern == host,
    }
}

impl HostIndex {
    fn lookup<'t>(&'t self, host: &str, req: &RequestView<'_>) -> Option<&'t Entry> {
        if let Some(hit) = self.exact.get(host).and_then(|p| p.lookup(req)) {
            return Some(hit);
        }
        if !self.wildcard.is_empty() {
            // Longest suffix first: `.b.example.com` before `.example.com`.
            let mut at = 0;
            while let Some(dot) = host[at..].find('.') {
                let suffix = &host[at + dot..];
                if let Some(hit) = self.wildcard.get(suffix).and_then(|p| p.lookup(req)) {
                    return Some(hit);
                }
                at += dot + 1;
            }
        }
        self.any.as_ref().and_then(|p| p.lookup(req))
    }
}

impl PathIndex {
    fn lookup<'t>(&'t self, req: &RequestView<'_>) -> Option<&'t Entry> {
        if self.grpc {
            return self.lookup_grpc(req);
        }
        let first = |entries: &'t [Entry]| entries.iter().find(|e| e.conditions.hold(req));
        if let Some(hit) = self.exact.get(req.path).and_then(|v| first(v)) {
            return Some(hit);
        }
        if let Some((_, hit)) = self
            .regex
            .iter()
            .find(|(re, e)| re.is_match(req.path) && e.conditions.hold(req))
        {
            return Some(hit);
        }
        if self.prefix.is_empty() {
            return None;
        }
        prefix_probes(req.path).find_map(|probe| self.prefix.get(probe).and_then(|v| first(v)))
    }

    /// [`Self::lookup`] for a host of GRPCRoutes: of the first matching entry of each kind of
    /// path match (a `/service/method` path, a service's prefix, a pattern, the catch-all
    /// `/`), the first in precedence.
    fn lookup_grpc<'t>(&'t self, req: &RequestView<'_>) -> Option<&'t Entry> {
        let first = |entries: &'t [Entry]| entries.iter().find(|e| e.conditions.hold(req));
        let pattern = |patterns: &'t [(PathPattern, Entry)]| {
            (patterns.iter())
                .find(|(re, e)| re.is_match(req.path) && e.conditions.hold(req))
                .map(|(_, e)| e)
        };
        let mut best: Option<&'t Entry> = None;
        let mut offer = |hit: Option<&'t Entry>| {
            if let Some(hit) = hit {
                if best.is_none_or(|b| hit.order < b.order) {
                    best = Some(hit);
                }
            }
        };
        offer(self.exact.get(req.path).and_then(|v| first(v)));
        offer(pattern(&self.regex));
        offer(pattern(&self.grpc_methods));
        for probe in prefix_probes(req.path) {
            offer(self.prefix.get(probe).and_then(|v| first(v)));
        }
        best
    }
}

/// The first condition of a match that a request fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The method differs.
    Method,
    /// Header condition at this index is missing or differs.
    Header(usize),
    /// Query condition at this index is missing or differs.
    Query(usize),
}

impl Conditions {
    fn hold(&self, req: &RequestView<'_>) -> bool {
        self.first_failure(req).is_none()
    }

    /// The first condition `req` fails, in the order method, headers, query parameters.
    pub fn first_failure(&self, req: &RequestView<'_>) -> Option<Failure> {
        if let Some(m) = &self.method {
            if m != req.method {
                return Some(Failure::Method);
            }
        }
        for (i, h) in self.headers.iter().enumerate() {
            // Several values of one header are compared as the comma-joined list
            // (RFC 9110 section 5.3); an HTTP/2 client's cookie crumbs as the one Cookie
            // field they were split from, joined by "; " (RFC 9113 section 8.2.3).
            let values = (req.header)(&h.name);
            let holds = match values.len() {
                0 => false,
                1 => h.value.holds(values[0]),
                _ if h.name == "cookie" => h.value.holds(&values.join("; ")),
                _ => h.value.holds(&values.join(",")),
            };
            if !holds {
                return Some(Failure::Header(i));
            }
        }
        for (i, q) in self.query.iter().enumerate() {
            // The spec leaves repeated parameters to the implementation: the first one counts.
            // Names and values are compared decoded (`%74rue` is `true`, `+` a space), as the
            // backend reads them: compared as sent, `?debug=%74rue` passed a rule meant to
            // catch `debug=true` and reached a backend that read just that.
            let found = req.query.and_then(|query| {
                query.split('&').find_map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (form_decode(k) == q.name.as_str()).then(|| form_decode(v))
                })
            });
            if !found.is_some_and(|v| q.value.holds(&v)) {
                return Some(Failure::Query(i));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::{normalize_host, normalize_path, prefix_probes, valid_host, ServiceBackend};
    use std::borrow::Cow;

    #[test]
    fn a_host_is_a_name_or_address_with_an_optional_port() {
        for good in [
            "a.example",
            "A.Example:8080",
            "127.0.0.1",
            "[::1]",
            "[::1]:80",
            "[::ffff:127.0.0.1]",
            "[2001:db8::1]:443",
            "svc_name.ns",
            "",
            "a:",
            "a.example.",
            "a.example.:80",
        ] {
            assert!(valid_host(good), "{good:?}");
        }
        for bad in [
            "a/b",
            "a?b",
            "evil.com/x#",
            "a:b",
            "a:99999",
            "[::1",
            "a,b",
            "a b",
            "a@b",
            ":80",
            "[]",
            "[::1]x",
            "[g::1]",
            "[.]",
            "[...]",
            "[a]",
            "[bad.cafe]",
            "[bad.cafe]:1",
            "[::1::2]",
            "a.example..",
            "a..example",
            ".a.example",
            ".",
        ] {
            assert!(!valid_host(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_path_falls_under_its_prefixes_element_by_element() {
        let probes = |path| prefix_probes(path).collect::<Vec<_>>();
        assert_eq!(probes("/a/b/"), ["/a/b", "/a", "/"]);
        assert_eq!(probes("/a.B/Get"), ["/a.B/Get", "/a.B", "/"]);
        assert_eq!(probes("/"), ["/"]);
        assert_eq!(probes(""), ["/"]);
    }

    #[test]
    fn a_host_is_looked_up_in_lower_case_without_its_port_or_trailing_dot() {
        for (host, want) in [
            ("a.example", "a.example"),
            ("A.Example:8080", "a.example"),
            ("a.example.", "a.example"),
            ("a.example.:80", "a.example"),
            ("a:", "a"),
            ("[::1]:80", "::1"),
            ("[::1]", "::1"),
            ("127.0.0.1:19080", "127.0.0.1"),
            ("a:b", "a:b"),
        ] {
            assert_eq!(normalize_host(host), want, "{host:?}");
        }
        // What clients send, lower case already, is not copied.
        assert!(matches!(normalize_host("a.example:80"), Cow::Borrowed(_)));
    }

    #[test]
    fn an_endpoint_set_aside_is_passed_over_while_another_is_ready() {
        let endpoints: Vec<std::net::SocketAddr> = ["127.0.0.1:1", "127.0.0.2:1", "127.0.0.3:1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let service = ServiceBackend::new("n/s:80".into(), endpoints.clone(), false);
        let picks = |n| (0..n).map(|_| service.pick().unwrap()).collect::<Vec<_>>();
        assert_eq!(picks(3), endpoints);
        service.set_aside(endpoints[1]);
        let later = picks(6);
        assert!(!later.contains(&endpoints[1]), "{later:?}");
        assert!(later.contains(&endpoints[0]) && later.contains(&endpoints[2]));
        // With every endpoint set aside, they are all tried in turn rather than none.
        service.set_aside(endpoints[0]);
        service.set_aside(endpoints[2]);
        let last = picks(3);
        assert!(endpoints.iter().all(|e| last.contains(e)), "{last:?}");
    }

    #[test]
    fn dot_segments_are_resolved_and_other_paths_left_alone() {
        for (path, want) in [
            ("/public/../admin", Some("/admin")),
            ("/a/./b", Some("/a/b")),
            ("/a/b/..", Some("/a/")),
            ("/a/.", Some("/a/")),
            ("/..", Some("/")),
            ("/../../x", Some("/x")),
            ("/a/%2e%2E/b", Some("/b")),
            ("/a/.%2e/b", Some("/b")),
            ("/a/%2e/b", Some("/a/b")),
            ("/a//../b", Some("/a/b")),
            // Encoded unreserved characters are decoded, other encodings kept.
            ("/%61dmin", Some("/admin")),
            ("/%41%7e%2D%5f%30", Some("/A~-_0")),
            ("/a%2Fb/%20/%25/%", None),
            // Other encodings' hex digits are upper-cased.
            ("/a%2fb/%2c/%c3%a9", Some("/a%2Fb/%2C/%C3%A9")),
            ("/%2c%61", Some("/%2Ca")),
            ("/%+6", None),
            ("/caf%C3%A9/%61", Some("/caf%C3%A9/a")),
            ("/é/%61/../b", Some("/é/b")),
            ("/%6", None),
            ("/%zz%6g", None),
            // Not dot segments: left as they are.
            ("/", None),
            ("/a//b", None),
            ("/.well-known/x", None),
            ("/app.js", None),
            ("/a/.../b", None),
            ("/a/%2Fb", None),
            ("*", None),
        ] {
            assert_eq!(normalize_path(path).as_deref(), want, "{path}");
        }
    }
}
