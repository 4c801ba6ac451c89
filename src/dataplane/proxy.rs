//! The Pingora proxy: one [`ProxyHttp`] implementation that serves every listener.
//!
//! Each request loads the routing table exactly once (one `ArcSwap` load in
//! [`ProxyHttp::request_filter`]), decides there what happens to it, and carries that decision
//! in its context through the later phases; a table swapped in meanwhile affects only the next
//! request. Outcomes the gateway produces itself map one-to-one to statuses:
//!
//! | outcome                                   | status |
//! |-------------------------------------------|--------|
//! | no listener or rule matches               | 404    |
//! | Host and TLS handshake select different listeners | 421 |
//! | the rule's backendRef cannot be resolved  | 500    |
//! | the backend has no ready endpoint         | 503    |
//! | the backend cannot be reached             | 502    |
//! | the rule's timeout passed                 | 504    |
//!
//! A rule with `retry` sends the request again (after its backoff, to the Service's next
//! endpoint) when the backend answers one of the listed statuses, cannot be connected to, or
//! closes the connection before answering; the last try's answer is the one the client gets.
//! Only a request whose body Pingora still holds whole (its retry buffer) is sent again, and
//! never once anything has gone back to the client, the client has closed its connection, or
//! `timeouts.request` would be passed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::header::{HeaderName, HeaderValue};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use rand::Rng;

use super::access_log::{self, AccessLog};
use super::metrics::{Metrics, RequestSeries};
use super::mirror;
use crate::routing::table::{
    normalize_path, Backend, Cors, Filter, HeaderEdits, PathReplace, RequestView, RetryPolicy, Rule,
};
use crate::routing::RoutingTable;

/// How long a client connection may wait between requests before it is closed: HTTP/1.1
/// keep-alive here, HTTP/2 through the server options (see `dataplane::run`).
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

/// Concurrent streams the gateway opens on one HTTP/2 connection to a backend.
const H2_STREAMS_PER_CONNECTION: usize = 100;

/// The proxy; cheap to share, holds only handles.
pub struct Proxy {
    table: Arc<ArcSwap<RoutingTable>>,
    metrics: Arc<Metrics>,
    access_log: AccessLog,
    request_metrics: bool,
    failures: FailureLog,
    /// Turns true when the process starts to stop.
    shutdown: pingora_core::server::ShutdownWatch,
}

impl Proxy {
    /// A proxy reading `table`, counting into `metrics` (per request only when
    /// `request_metrics`) and logging into `access_log`; `shutdown` says when the process
    /// stops.
    pub fn new(
        table: Arc<ArcSwap<RoutingTable>>,
        metrics: Arc<Metrics>,
        access_log: AccessLog,
        request_metrics: bool,
        shutdown: pingora_core::server::ShutdownWatch,
    ) -> Self {
        Proxy {
            table,
            metrics,
            access_log,
            request_metrics,
            failures: FailureLog::default(),
            shutdown,
        }
    }
}

/// The peer that requests for a backend at `endpoint` go to, and copies for a mirror backend:
/// TLS when a BackendTLSPolicy names the Service (its hostname is the SNI and the name
/// verified in the backend's certificate, against its CAs or the system roots), presenting the
/// listener's client certificate; HTTP/2 to an h2c or gRPC backend. Connecting may take 5 s.
pub(super) fn backend_peer(
    endpoint: std::net::SocketAddr,
    h2c: bool,
    tls: Option<&crate::tls::BackendTls>,
    client_cert: Option<Arc<pingora_core::utils::tls::CertKey>>,
) -> HttpPeer {
    let mut peer = match tls {
        Some(tls) => {
            let mut peer = HttpPeer::new(endpoint, true, tls.hostname.clone());
            peer.options.ca = tls.ca.clone();
            // Connections verified against other CAs are not reused for this one.
            peer.group_key = tls.trust;
            peer.client_cert_key = client_cert;
            peer
        }
        None => HttpPeer::new(endpoint, false, String::new()),
    };
    if h2c {
        peer.options.set_http_version(2, 2);
        // Pingora opens one stream per upstream h2 connection unless told otherwise; gRPC
        // backends expect many calls multiplexed on few connections.
        peer.options.max_h2_streams = H2_STREAMS_PER_CONNECTION;
    }
    peer.options.connection_timeout = Some(Duration::from_secs(5));
    peer
}

/// How many endpoints a request is offered to, without a retry policy, when connecting fails.
const CONNECT_TRIES: usize = 3;

/// How often a failing backend is logged at most.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Warnings about backends that fail (refused, timed out, a TLS certificate that does not
/// verify): one per backend at the first failure, then at most one per
/// [`FAILURE_LOG_INTERVAL`], so that an outage is said in the log without one line per request
/// (each request's failure is logged at debug). Each warning counts the failures it stands
/// for: its own and those since the previous warning that were not logged (1 at the first).
#[derive(Default)]
struct FailureLog(std::sync::Mutex<std::collections::HashMap<Arc<str>, (Instant, u64)>>);

impl FailureLog {
    fn note(&self, backend: &Arc<str>, status: u16, error: &Error) {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Backends come and go with the configuration: forget them all now and then rather
        // than keep every name ever seen.
        if seen.len() > 4096 {
            seen.clear();
        }
        let now = Instant::now();
        match seen.get_mut(backend) {
            Some((last, unlogged)) if now.duration_since(*last) < FAILURE_LOG_INTERVAL => {
                *unlogged += 1;
            }
            entry => {
                let failures = entry.map_or(0, |(_, unlogged)| *unlogged) + 1;
                tracing::warn!(
                    %backend,
                    status,
                    error = %error,
                    failures,
                    "backend request failed"
                );
                seen.insert(backend.clone(), (now, 0));
            }
        }
    }
}

/// What `request_filter` decided, for the phases after it.
pub struct RequestCtx {
    started: Instant,
    request_id: String,
    gateway: Option<Arc<str>>,
    listener: Option<Arc<str>>,
    backend_name: Option<Arc<str>>,
    upstream_started: Option<Instant>,
    upstream_elapsed: Option<Duration>,
    rule: Option<Arc<Rule>>,
    backend: Option<usize>,
    upstream: Option<(std::net::SocketAddr, bool)>,
    upstream_tls: Option<Arc<crate::tls::BackendTls>>,
    client_cert: Option<Arc<pingora_core::utils::tls::CertKey>>,
    prefix: Option<Arc<str>>,
    scheme: &'static str,
    status: u16,
    /// Tries sent to a backend so far (`upstream_peer` calls).
    attempts: u32,
    /// The status `upstream_response_filter` turned into a retry, until `error_while_proxy`.
    retried_status: Option<u16>,
    /// Times the request was sent again because an HTTP/2 backend turned it away unprocessed.
    resent_unprocessed: u32,
    /// Mirror copies still waiting for (the rest of) the request body.
    mirror_bodies: Vec<mirror::MirrorBody>,
    /// Whether the request body filter has passed anything on (to a backend and the mirrors).
    body_passed: bool,
    /// Whether the request is a gRPC call (by its content type), read once.
    grpc: bool,
    /// A gRPC call's status, once the backend or the gateway has given one.
    grpc_status: Option<u8>,
}

impl RequestCtx {
    /// A request's context before anything is known of it.
    fn new() -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            request_id: String::new(),
            gateway: None,
            listener: None,
            backend_name: None,
            upstream_started: None,
            upstream_elapsed: None,
            rule: None,
            backend: None,
            upstream: None,
            upstream_tls: None,
            client_cert: None,
            prefix: None,
            scheme: "http",
            status: 0,
            attempts: 0,
            retried_status: None,
            resent_unprocessed: 0,
            mirror_bodies: Vec::new(),
            body_passed: false,
            grpc: false,
            grpc_status: None,
        }
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {
        // Pingora's default adds its response compression module, switched off. The Gateway
        // API has no compression filter, and even switched off the module is set up and
        // called at every step of every request.
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.grpc = is_grpc(session.req_header());
        // Pingora keeps an HTTP/1.1 connection waiting for its next request forever; it gets
        // KEEPALIVE_IDLE. (A client's `Connection: close` still wins.)
        if session.as_ref().get_keepalive() == Some(0) {
            session
                .as_mut()
                .set_keepalive(Some(KEEPALIVE_IDLE.as_secs()));
        }
        // HTTP/1.1 requests a client sends back to back, without waiting for answers, are
        // served one after another in order (RFC 9112, section 9.3.2); otherwise Pingora answers
        // the first and closes the connection. The setting carries over to the connection's
        // later requests.
        session.as_mut().set_pipelining_enabled(true);
        // An HTTP/1.0 client knows no interim answers: a server MUST NOT send it a 1xx, and
        // MUST ignore its `Expect: 100-continue` (RFC 9110, sections 15.2 and 10.1.1), which
        // would otherwise go on to the backend and bring a 100 back. Pingora passes a
        // backend's 1xx on unless told not to.
        if session.req_header().version == http::Version::HTTP_10 {
            if let pingora_core::protocols::http::ServerSession::H1(h1) =
                session.as_downstream_mut()
            {
                h1.set_ignore_info_resp(true);
            }
            if session
                .req_header()
                .headers
                .contains_key(http::header::EXPECT)
            {
                session
                    .req_header_mut()
                    .remove_header(&http::header::EXPECT);
            }
        }
        let req = session.req_header();
        // Keep the client's request id (trimmed to a sane length), or make one: first, so that
        // the requests refused below are logged with it too.
        ctx.request_id = match req.headers.get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()) {
            Some(id) if !id.is_empty() && id.len() <= 200 => id.to_string(),
            _ => new_request_id(rand::rng().random::<u128>()),
        };
        if !valid_target(&req.method, req.raw_path()) {
            return respond(session, ctx, 400).await;
        }
        // Pingora reads an HTTP/1.1 request header of up to 1 MiB. What a backend takes is far
        // less (nginx 32 KiB at most by default, Envoy 60 KiB), and HTTP/2 clients get about
        // 16 KiB: a larger header is refused here (RFC 6585, 431) rather than forwarded for the
        // backend to refuse.
        let oversized = (session.as_downstream().as_http1())
            .is_some_and(|h1| h1.get_headers_raw_bytes().len() > MAX_REQUEST_HEADER_BYTES);
        if oversized {
            return respond_then(session, ctx, 431, false).await;
        }
        // Pingora refuses these `Connection` options only once a backend connection is open,
        // and then the client gets no answer at all; see `valid_connection_options`.
        if !valid_connection_options(session.req_header()) {
            return respond_then(session, ctx, 400, false).await;
        }
        match framing(session.req_header(), session.as_downstream().is_http2()) {
            Framing::Fine => {}
            Framing::Refuse(status) => return respond_then(session, ctx, status, false).await,
            Framing::OneLength(length) => {
                session
                    .req_header_mut()
                    .insert_header(http::header::CONTENT_LENGTH, length)?;
            }
            Framing::NoUpgrade => {
                session
                    .req_header_mut()
                    .remove_header(&http::header::UPGRADE);
            }
        }
        // RFC 9112, section 3.2.2: an HTTP/1 request in absolute form (`GET http://host/path`)
        // names its host in the target. Pingora has checked that a Host header, if any, says
        // the same; the route is chosen, and the backend asked, as for the origin form
        // (`GET /path` with that Host), which Pingora would otherwise forward as it came.
        if let Some(host) = absolute_form_host(session.req_header().raw_path()) {
            let host = http::HeaderValue::from_bytes(host).ok();
            let origin = session
                .req_header()
                .uri
                .path_and_query()
                .map(|p| p.as_str());
            let Some(Ok(uri)) = origin.map(str::parse::<http::Uri>) else {
                return respond(session, ctx, 400).await;
            };
            let req = session.req_header_mut();
            req.set_uri(uri);
            if let (None, Some(host)) = (req.headers.get(http::header::HOST), host) {
                req.insert_header(http::header::HOST, host)?;
            }
        }
        // RFC 9112, section 3.2: an HTTP/1.1 request without a Host is answered 400 (HTTP/1.0
        // may leave it out, and HTTP/2 carries the authority as a pseudo-header), and so is a
        // Host that is not a host (`a/b`, `a b`, a port past 65535): it is not routed,
        // forwarded or reflected in a redirect.
        let req = session.req_header();
        let host_ok = match request_host(req) {
            Some(host) => crate::routing::table::valid_host(host),
            None => req.version != http::Version::HTTP_11,
        };
        if !host_ok {
            return respond(session, ctx, 400).await;
        }
        // A method with a lower-case letter (see `refused_method`).
        if crate::routing::table::refused_method(req.method.as_str()) {
            return respond(session, ctx, 400).await;
        }
        // Match and forward on the path's normal form (see `normalize_path`).
        if let Some(path) = normalize_path(req.uri.path()) {
            let target = match req.uri.query() {
                Some(query) => format!("{path}?{query}"),
                None => path,
            };
            match with_path_and_query(&req.uri, &target) {
                Some(uri) => session.req_header_mut().set_uri(uri),
                None => return respond(session, ctx, 400).await,
            }
        }
        let with_body = !session.as_mut().is_body_empty();
        match self.decide(session, with_body, ctx) {
            Decision::Forward => Ok(false),
            Decision::Respond(status) => respond(session, ctx, status).await,
            Decision::RespondAndClose(status) => respond_then(session, ctx, status, false).await,
            Decision::Preflight(headers) => {
                let mut resp = ResponseHeader::build(204, Some(headers.len()))?;
                for (name, value) in headers {
                    resp.insert_header(name, value)?;
                }
                ctx.status = 204;
                session.write_response_header(Box::new(resp), true).await?;
                Ok(true)
            }
            Decision::Redirect(status, location) => {
                let mut resp = ResponseHeader::build(status, Some(2))?;
                resp.insert_header("location", location)?;
                resp.insert_header("content-length", "0")?;
                // The redirect is the rule's response: its ResponseHeaderModifier filters (the
                // rule's, and the backendRef's that redirected) apply to it as to a backend's.
                if let Some(rule) = ctx.rule.clone() {
                    let backend_filters = (ctx.backend)
                        .map(|i| &rule.backends[i].filters[..])
                        .unwrap_or(&[]);
                    for filter in rule.filters.iter().chain(backend_filters) {
                        if let Filter::ResponseHeaders(edits) = filter {
                            edit_response(&mut resp, edits)?;
                        }
                    }
                }
                ctx.status = status;
                session.write_response_header(Box::new(resp), true).await?;
                Ok(true)
            }
        }
    }

    /// Hands each body chunk to the mirror copies, as it goes to the backend.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // `timeouts.request` counts the client's upload too: a body trickled in past it is cut
        // off (408, as the client is the slow one) rather than sent on whole to a backend
        // whose answer could only come too late. Checked at each piece of body; a client that
        // sends nothing more is ended by the read timeout. Not after a 101, where the "body"
        // is the upgraded conversation.
        let deadline = ctx.rule.as_ref().and_then(|r| r.request_timeout);
        if !end_of_stream
            && ctx.status != 101
            && deadline.is_some_and(|d| ctx.started.elapsed() > d)
        {
            return Err(Error::explain(
                ErrorType::ReadTimedout,
                "timeouts.request passed while the client was still sending its body",
            )
            .into_down());
        }
        ctx.body_passed = true;
        if !ctx.mirror_bodies.is_empty() {
            ctx.mirror_bodies
                .retain_mut(|copy| copy.send(body.as_ref(), end_of_stream));
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        ctx.attempts += 1;
        if ctx.attempts > 1 {
            self.prepare_retry(ctx).await;
            // The client may have given up during the backoff: a retry then serves nobody, and
            // the request's body can no longer be sent whole.
            if client_gone(session) {
                return Err(Error::explain(
                    ErrorType::ConnectionClosed,
                    "the client closed its connection before the retry",
                )
                .into_down());
            }
        }
        let (endpoint, h2c) = ctx
            .upstream
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no upstream chosen"))?;
        ctx.upstream_started = Some(Instant::now());
        let mut peer = backend_peer(
            endpoint,
            h2c,
            ctx.upstream_tls.as_deref(),
            ctx.client_cert.clone(),
        );
        if let Some(rule) = &ctx.rule {
            // Both rule timeouts bound how long the backend may stay silent (Pingora's read
            // timeout), `timeouts.request` counting from the request's start: a retry gets only
            // what is left of it. A backend that is never silent for that long is checked
            // against the deadlines when its header is whole (504) and at each chunk of its body
            // (cut off). Known shortcoming: those checks run only when the backend sends
            // something, so a trickling backend can overrun a deadline by up to the silence
            // this try was allowed, and one trickling its header in is answered 504 only once
            // the header is complete.
            let left = rule
                .request_timeout
                .map(|t| t.saturating_sub(ctx.started.elapsed()).max(MIN_TRY_TIMEOUT));
            let timeout = match (left, rule.backend_timeout) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            peer.options.read_timeout = timeout;
            peer.options.total_connection_timeout = timeout;
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Header names are constants and values are built by hand: these three headers go on
        // every request, and parsing names or formatting through `fmt` showed in profiles.
        if let Some(addr) = session.client_addr().and_then(|a| a.as_inet()) {
            // Every X-Forwarded-For line the client sent, in order, then the client itself.
            let mut forwarded = String::with_capacity(48);
            for prev in upstream.headers.get_all(&X_FORWARDED_FOR) {
                if let Ok(prev) = prev.to_str() {
                    forwarded.push_str(prev);
                    forwarded.push_str(", ");
                }
            }
            push_ip(&mut forwarded, addr.ip());
            upstream.insert_header(X_FORWARDED_FOR_WIRE, forwarded)?;
        }
        upstream.insert_header(X_FORWARDED_PROTO_WIRE, HeaderValue::from_static(ctx.scheme))?;
        upstream.insert_header(X_REQUEST_ID_WIRE, ctx.request_id.as_str())?;
        join_cookies(upstream)?;
        // The backend gets the host the client named as a Host header (HTTP/1.1 needs one, and
        // an HTTP/2 backend takes its `:authority` from it). An HTTP/2 client named it as its
        // `:authority`, which Pingora does not carry over to the request it sends; an HTTP/1.0
        // client may have named none, and the backend's address stands in, as the authority
        // the request is now sent to. A URLRewrite hostname below still replaces either.
        if !upstream.headers.contains_key(http::header::HOST) {
            let named = session.req_header().uri.authority().map(|a| a.as_str());
            match (named, &ctx.upstream) {
                (Some(authority), _) => {
                    let authority = authority.to_string();
                    upstream.insert_header(http::header::HOST, authority)?;
                }
                (None, Some((endpoint, _))) => {
                    upstream.insert_header(http::header::HOST, endpoint.to_string())?;
                }
                (None, None) => {}
            }
        }
        let Some(rule) = ctx.rule.clone() else {
            return Ok(());
        };
        let backend_filters = ctx
            .backend
            .map(|i| &rule.backends[i].filters[..])
            .unwrap_or(&[]);
        for filter in rule.filters.iter().chain(backend_filters) {
            match filter {
                Filter::RequestHeaders(edits) => edit_request(upstream, edits)?,
                Filter::Rewrite(rw) => {
                    if let Some(host) = &rw.hostname {
                        upstream.insert_header("host", host.as_str())?;
                    }
                    if let Some(replace) = &rw.path {
                        let path = upstream.uri.path();
                        let new_path = replace_path(replace, path, ctx.prefix.as_deref());
                        let target = match upstream.uri.query() {
                            Some(q) => format!("{new_path}?{q}"),
                            None => new_path,
                        };
                        let uri = with_path_and_query(&upstream.uri, &target).ok_or_else(|| {
                            Error::explain(
                                ErrorType::InternalError,
                                format!("rewritten path {target:?} is not a valid URI path"),
                            )
                        })?;
                        upstream.set_uri(uri);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = response.status.as_u16();
        // RFC 9110, section 7.8: a server switches only to a protocol the request offered in
        // its Upgrade header. A 101 to any other request would leave the client holding a
        // connection in a protocol it never asked for; the backend is at fault (502).
        if status == 101 && !session.is_upgrade_req() {
            return Err(Error::explain(
                ErrorType::InvalidHTTPHeader,
                "the backend switched protocols (101) on a request that asked for no upgrade",
            )
            .into_up());
        }
        // This filter also sees informational headers (100 Continue, 103 Early Hints), which
        // Pingora passes on; the backend's time and the rule's decisions wait for the final
        // header.
        if response.status.is_informational() && status != 101 {
            return Ok(());
        }
        if let (Some(started), Some(backend)) = (ctx.upstream_started, &ctx.backend_name) {
            let elapsed = started.elapsed();
            ctx.upstream_elapsed = Some(elapsed);
            self.metrics.observe_upstream(backend, elapsed);
        }
        // A backend that trickles its header in keeps every read within the read timeout; the
        // rule's deadlines are checked once the header is whole, before anything is sent on.
        if let Some(passed) = deadline_passed(ctx) {
            return Err(Error::explain(ErrorType::ReadTimedout, passed).into_up());
        }
        let listed = retry_policy(ctx).is_some_and(|p| p.retries_status(status));
        if listed && may_retry(session, ctx) {
            // Failing here, before the response goes anywhere, makes Pingora drop this backend
            // connection and call `upstream_peer` again.
            ctx.retried_status = Some(status);
            let mut e = Error::explain(
                ErrorType::HTTPStatus(status),
                "the backend answered a status the rule retries",
            );
            e.set_retry(true);
            return Err(e.into_up());
        }
        if status == 101 {
            // Pingora gives a client 60 s to send each part of a request body, and after the
            // switch everything the client sends is body: a WebSocket quiet for a minute, as
            // notification sockets often are, was cut with no close frame. The client's
            // silence now ends it no sooner than the backend's does (only a rule's timeouts
            // bound that).
            session.as_mut().set_read_timeout(None);
        }
        drop_hop_by_hop(response, status == 101);
        one_content_length(response)?;
        // A gRPC answer is framed by its messages and ends in trailers. Should the backend's
        // stream fail partway, the gateway ends it with a gRPC status in trailers, and a
        // Content-Length the body then falls short of would make the whole response malformed
        // (RFC 9113, section 8.1.1): strict clients see a protocol error instead of the
        // status.
        if ctx.grpc {
            response.remove_header(&http::header::CONTENT_LENGTH);
            // A trailers-only answer (an error, most often) carries its status here.
            ctx.grpc_status = grpc_status(&response.headers).or(ctx.grpc_status);
        }
        Ok(())
    }

    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(status) = grpc_status(trailers) {
            ctx.grpc_status = Some(status);
        }
        Ok(())
    }

    /// The rule's timeouts end a response still streaming when they pass: Pingora then closes
    /// the client's connection (or resets its HTTP/2 stream) mid-body, as the status is already
    /// sent.
    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        // After a switch of protocols (a WebSocket) the body is the conversation itself, which
        // lasts as long as both ends want: only the backend's silence (the read timeout) ends
        // it, not the deadline the request had.
        if !end_of_stream && ctx.status != 101 {
            if let Some(passed) = deadline_passed(ctx) {
                return Err(Error::explain(ErrorType::ReadTimedout, passed).into_up());
            }
        }
        Ok(None)
    }

    /// Marks upstream failures retried under the rule's `retry`; without one, keeps Pingora's
    /// own policy (a reused connection that failed is retried once for an idempotent request).
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if ctx.retried_status.take().is_some() {
            return e;
        }
        // The spec asks a retry stanza to cover connection errors: "disconnect, reset,
        // timeout". A try cut off by `timeouts.backendRequest` is one; when it was
        // `timeouts.request` that ran out, `may_retry` finds no time left.
        let broken = *e.esource() == pingora_core::ErrorSource::Upstream
            && !matches!(e.etype(), ErrorType::HTTPStatus(_));
        if retry_policy(ctx).is_some() && broken && may_retry(session, ctx) {
            e.set_retry(true);
        } else if unprocessed(&e)
            && ctx.resent_unprocessed < MAX_UNPROCESSED_RESENDS
            && !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none()
        {
            // Whatever the method: the backend said it did nothing with the request. A few
            // times only: a backend that refuses every stream is shedding load, and each
            // resend adds to it.
            ctx.resent_unprocessed += 1;
            e.set_retry(true);
        } else if !session.req_header().method.is_idempotent()
            || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    /// A connection that could not be made sent nothing to the backend: the endpoint is set
    /// aside for a while (see [`crate::routing::table::ServiceBackend::set_aside`]) and the
    /// request goes to another one of the Service, with or without a retry policy, so that a
    /// dead pod still listed in its EndpointSlice costs no failed request while others are up.
    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let rule = ctx.rule.clone();
        let service = rule.as_ref().zip(ctx.backend).and_then(|(rule, i)| {
            match rule.backends[i].target.as_ref() {
                Backend::Service(service) => Some(service),
                Backend::Invalid { .. } => None,
            }
        });
        if let (Some(service), Some((endpoint, _))) = (service, ctx.upstream) {
            service.set_aside(endpoint);
        }
        // Nothing of the request has been read from the client yet, or it is all held for a
        // try: either way it can be sent whole to another endpoint.
        let downstream = session.as_mut();
        let untouched = downstream.body_bytes_read() == 0
            || (downstream.is_body_done() && !downstream.retry_buffer_truncated());
        let sendable = untouched && session.response_written().is_none();
        let tries = match retry_policy(ctx) {
            // A policy adds tries; it never takes away the move to another endpoint.
            Some(policy) => usize::try_from(policy.attempts)
                .unwrap_or(usize::MAX)
                .saturating_add(1)
                .max(service.map_or(1, |s| s.len().min(CONNECT_TRIES))),
            None => service.map_or(1, |s| s.len().min(CONNECT_TRIES)),
        };
        let within_deadline = ctx
            .rule
            .as_ref()
            .and_then(|r| r.request_timeout)
            .is_none_or(|deadline| ctx.started.elapsed() < deadline);
        if sendable && within_deadline && usize::try_from(ctx.attempts).is_ok_and(|a| a < tries) {
            e.set_retry(true);
        }
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora_core::protocols::Digest>,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        if reused {
            self.metrics.upstream_connections_reused.inc();
        } else {
            self.metrics.upstream_connections_new.inc();
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.status = response.status.as_u16();
        // A response to a request that was in flight when the process began to stop says
        // `Connection: close` (Pingora decides keep-alive when a request starts): the client
        // then knows not to send another on the connection, which closes after it.
        if *self.shutdown.borrow() && !response.status.is_informational() {
            session.as_mut().set_keepalive(None);
        }
        // The gateway speaks HTTP/1.1 to its clients whatever the backend speaks (RFC 9110,
        // section 6.2: an intermediary sends its own version); Pingora would pass an HTTP/1.0
        // backend's status line on, beside its own `Connection: keep-alive`.
        if response.version == http::Version::HTTP_10 {
            response.set_version(http::Version::HTTP_11);
        }
        // An HTTP/1.0 client knows no chunked coding (RFC 9112, section 6.1): a body whose length
        // is not known up front is sent as it comes and ended by closing the connection.
        if session.req_header().version == http::Version::HTTP_10
            && !session.as_downstream().is_http2()
            && response
                .headers
                .contains_key(http::header::TRANSFER_ENCODING)
        {
            response.remove_header(&http::header::TRANSFER_ENCODING);
            if !response.headers.contains_key(http::header::CONTENT_LENGTH) {
                session.as_mut().set_keepalive(None);
            }
        }
        let Some(rule) = ctx.rule.clone() else {
            return Ok(());
        };
        let origin = session
            .req_header()
            .headers
            .get(http::header::ORIGIN)
            .and_then(|v| v.to_str().ok());
        if let Some(origin) = origin {
            for filter in &rule.filters {
                if let Filter::Cors(cors) = filter {
                    // The answer depends on the Origin asked with: a cache must not hand one
                    // origin's answer to another.
                    response.append_header("vary", "Origin")?;
                    if cors.allows(origin) {
                        response.insert_header("access-control-allow-origin", origin)?;
                        if cors.credentials {
                            response.insert_header("access-control-allow-credentials", "true")?;
                        }
                        match &cors.expose {
                            // With credentials a browser takes `*` as a header name, not as
                            // every header (Fetch standard): this response's fields are named.
                            Some(expose) if expose == "*" && cors.credentials => {
                                let names: Vec<&str> =
                                    response.headers.keys().map(|k| k.as_str()).collect();
                                let names = names.join(", ");
                                response.insert_header("access-control-expose-headers", names)?;
                            }
                            Some(expose) => {
                                response.insert_header(
                                    "access-control-expose-headers",
                                    expose.as_str(),
                                )?;
                            }
                            None => {}
                        }
                    }
                }
            }
        }
        let backend_filters = ctx
            .backend
            .map(|i| &rule.backends[i].filters[..])
            .unwrap_or(&[]);
        for filter in rule.filters.iter().chain(backend_filters) {
            if let Filter::ResponseHeaders(edits) = filter {
                edit_response(response, edits)?;
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let mut code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            // A request body whose chunked framing does not parse: the client's fault, and it
            // is told so (the connection closes, as its body cannot be read past the fault).
            ErrorType::Custom("InvalidChunk")
                if e.esource() == &pingora_core::ErrorSource::Downstream =>
            {
                400
            }
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
            ErrorType::ConnectRefused | ErrorType::ConnectNoRoute | ErrorType::ConnectError => 502,
            _ => match e.esource() {
                pingora_core::ErrorSource::Upstream => 502,
                pingora_core::ErrorSource::Downstream => 0,
                _ => 500,
            },
        };
        // A backend that waited in vain for an answer's worth of request body did nothing
        // wrong: the client stopped sending it (RFC 9110, section 15.5.9, 408). Not counted,
        // nor logged, as the backend's failure.
        let client_stalled = code == 504
            && e.etype() == &ErrorType::ReadTimedout
            && session.response_written().is_none()
            && !session.as_mut().is_body_done();
        if client_stalled {
            code = 408;
        }
        if code > 0 {
            let _ = respond_then(session, ctx, code, false).await;
        }
        ctx.status = code;
        if let (Some(backend), pingora_core::ErrorSource::Upstream, false) =
            (&ctx.backend_name, e.esource(), client_stalled)
        {
            // What failed: reaching the backend, its silence, or what it sent (a response
            // that does not parse, a connection closed mid-answer), for dashboards to tell a
            // backend that is down from one that answers badly.
            let kind = match e.etype() {
                ErrorType::ConnectTimedout
                | ErrorType::ConnectRefused
                | ErrorType::ConnectNoRoute
                | ErrorType::ConnectError
                | ErrorType::TLSHandshakeFailure
                | ErrorType::TLSHandshakeTimedout
                | ErrorType::InvalidCert
                | ErrorType::HandshakeError => "connect",
                ErrorType::ReadTimedout | ErrorType::WriteTimedout => "timeout",
                _ => "response",
            };
            self.metrics
                .upstream_failures
                .with_label_values(&[backend, kind])
                .inc();
            self.failures.note(backend, code, e);
        }
        tracing::debug!(error = %e, status = code, request_id = %ctx.request_id, "request failed");
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Per-request failures are counted in metrics and logged at debug level by
    /// `fail_to_proxy`; an upstream outage must not flood the logs with one error per request.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        true
    }

    /// Pingora writes a warning for every try it retries: behind a rule's `retry`, a flaky
    /// backend would fill the log at the request rate while clients see success. The failure
    /// goes into the backend's throttled failure log instead (first, then one line per 10 s),
    /// and the retry is counted in `portcullis_upstream_retries_total`.
    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        ctx: &RequestCtx,
        error: &Error,
        context: pingora_proxy::ProxyWarnLogContext,
    ) -> bool {
        if !matches!(context, pingora_proxy::ProxyWarnLogContext::UpstreamRetry) {
            return false;
        }
        if let Some(backend) = &ctx.backend_name {
            let status = match error.etype() {
                ErrorType::HTTPStatus(status) => *status,
                _ => 502,
            };
            self.failures.note(backend, status, error);
        }
        true
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(ctx.status);
        let elapsed = ctx.started.elapsed();
        let req = session.req_header();
        // Every gRPC call has a status, given or read as a client reads it: an HTTP status
        // other than 200 first, whatever `grpc-status` came with it, as gRPC clients read it.
        let grpc_status = (ctx.grpc).then(|| match (status, ctx.grpc_status) {
            (200 | 0, Some(given)) => given,
            _ => implied_grpc_status(status, e),
        });
        let (bytes_in, bytes_out) = (session.body_bytes_read(), session.body_bytes_sent());
        if self.request_metrics {
            let series = RequestSeries {
                gateway: ctx.gateway.as_ref(),
                listener: ctx.listener.as_ref(),
                rule: ctx.rule.as_ref(),
                backend: ctx.backend_name.as_ref(),
                method: req.method.as_str(),
                status,
            };
            self.metrics
                .observe_request(&series, elapsed, bytes_in, bytes_out);
            if let Some(code) = grpc_status {
                self.metrics.observe_grpc(&series, code);
            }
        }
        if self.access_log.sampled() {
            self.access_log.write(&access_log::Entry {
                time: jiff::Timestamp::now().to_string(),
                client: session.client_addr().map(|a| a.to_string()),
                method: req.method.as_str(),
                host: request_host(req).unwrap_or(""),
                path: req.uri.path_and_query().map_or("/", |p| p.as_str()),
                status,
                bytes_sent: bytes_out,
                bytes_received: bytes_in,
                duration: elapsed.as_secs_f64(),
                upstream: ctx.upstream.map(|(addr, _)| addr.to_string()),
                upstream_duration: ctx.upstream_elapsed.map(|d| d.as_secs_f64()),
                route: ctx.rule.as_ref().map(|r| &*r.route),
                rule: ctx.rule.as_ref().map(|r| r.index),
                request_id: &ctx.request_id,
                grpc_status,
            });
        }
    }
}

/// What `request_filter` does with a request.
enum Decision {
    /// Go on to the upstream chosen in the context.
    Forward,
    /// Answer with this status and no body.
    Respond(u16),
    /// Answer with this status, and close the connection after it.
    RespondAndClose(u16),
    /// Answer with a redirect.
    Redirect(u16, String),
    /// Answer a CORS preflight with these headers.
    Preflight(Vec<(&'static str, String)>),
}

/// The shortest read timeout a try gets, however little of `timeouts.request` is left: the
/// request is then answered 504 promptly instead of failing before it is sent.
const MIN_TRY_TIMEOUT: Duration = Duration::from_millis(1);

/// How many times a request an HTTP/2 backend turned away unprocessed is sent again.
const MAX_UNPROCESSED_RESENDS: u32 = 2;

/// Whether the backend refused a request before processing any of it, as HTTP/2 lets it say
/// (RFC 9113, sections 6.8 and 8.7): a graceful GOAWAY (`NO_ERROR`) that leaves the request's
/// stream out, which servers send as they rotate connections (gRPC's `max_connection_age`),
/// or a stream reset with `REFUSED_STREAM`. Such a request may be sent again, on another
/// connection, whatever its method.
fn unprocessed(e: &Error) -> bool {
    let Some(h2) = e.root_cause().downcast_ref::<h2::Error>() else {
        return false;
    };
    h2.is_remote()
        && match h2.reason() {
            Some(h2::Reason::NO_ERROR) => h2.is_go_away(),
            Some(h2::Reason::REFUSED_STREAM) => h2.is_reset(),
            _ => false,
        }
}

/// Whether the client has gone: for HTTP/2, whether it reset the request's stream (or its
/// connection failed), by a poll that does not wait; for HTTP/1, whether its connection has
/// closed, by a look at its socket that neither waits nor takes anything from it.
fn client_gone(session: &mut Session) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    use std::future::Future;
    if let pingora_core::protocols::http::ServerSession::H2(h2) = session.as_downstream_mut() {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        return std::pin::pin!(h2.idle()).poll(&mut cx).is_ready();
    }
    let Some(fd) = session.as_ref().stream().map(|s| s.id()) else {
        return false;
    };
    let mut byte = [0u8; 1];
    matches!(
        recv(fd, &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT),
        Ok(0) | Err(nix::errno::Errno::ECONNRESET | nix::errno::Errno::EPIPE)
    )
}

/// Which of the rule's timeouts has passed, if one has: `timeouts.request` counts from the
/// request's start, `timeouts.backendRequest` from the start of this try.
fn deadline_passed(ctx: &RequestCtx) -> Option<&'static str> {
    let rule = ctx.rule.as_ref()?;
    if rule
        .request_timeout
        .is_some_and(|t| ctx.started.elapsed() > t)
    {
        return Some("timeouts.request passed before the response was complete");
    }
    let started = ctx.upstream_started?;
    rule.backend_timeout
        .is_some_and(|t| started.elapsed() > t)
        .then_some("timeouts.backendRequest passed before the response was complete")
}

/// The rule's retry policy, if the request matched a rule that has one.
fn retry_policy(ctx: &RequestCtx) -> Option<&RetryPolicy> {
    ctx.rule.as_ref().and_then(|r| r.retry.as_ref())
}

/// Whether the request may be sent to a backend once more: the rule allows another try, the
/// whole request body is still held for it, nothing has been sent to the client, and the
/// backoff ends before `timeouts.request` does.
fn may_retry(session: &mut Session, ctx: &RequestCtx) -> bool {
    let (Some(rule), Some(policy)) = (&ctx.rule, retry_policy(ctx)) else {
        return false;
    };
    if ctx.attempts > policy.attempts || session.response_written().is_some() {
        return false;
    }
    let downstream = session.as_mut();
    if !downstream.is_body_done() || downstream.retry_buffer_truncated() {
        return false;
    }
    rule.request_timeout
        .is_none_or(|deadline| ctx.started.elapsed() + policy.backoff < deadline)
}

impl Proxy {
    /// Before a retry: counts it, waits the rule's backoff and moves on to the Service's next
    /// endpoint, so a retry does not land on the endpoint that just failed when others exist.
    async fn prepare_retry(&self, ctx: &mut RequestCtx) {
        // The retry replays the body from Pingora's buffer, through the body filter again: a copy
        // still taking the body would get its first chunks twice, so it is abandoned instead.
        // When nothing of the body went anywhere (a connection that could not be made), the
        // copies simply go on.
        if ctx.body_passed {
            ctx.mirror_bodies.clear();
        }
        let Some(rule) = ctx.rule.clone() else {
            return;
        };
        if let Some(backend) = &ctx.backend_name {
            self.metrics
                .upstream_retries
                .with_label_values(&[backend])
                .inc();
        }
        if let Some(policy) = &rule.retry {
            // The backoff is the least wait (as the API defines it); up to half of it again at
            // random spreads the retries of requests that failed together, so that a backend
            // coming back is not met by all of them at once. Never past `timeouts.request`,
            // which `may_retry` checked against the backoff alone.
            let mut wait = policy.backoff.mul_f64(1.0 + rand::random::<f64>() / 2.0);
            if let Some(deadline) = rule.request_timeout {
                wait = wait.min(deadline.saturating_sub(ctx.started.elapsed()));
            }
            tokio::time::sleep(wait).await;
        }
        let target = ctx.backend.map(|i| rule.backends[i].target.as_ref());
        if let (Some(Backend::Service(service)), Some((_, h2c))) = (target, ctx.upstream) {
            if let Some(endpoint) = service.pick() {
                ctx.upstream = Some((endpoint, h2c));
            }
        }
    }

    /// Looks the request up and chooses its fate. Synchronous on purpose: the table is loaded
    /// once here and dropped before anything awaits.
    fn decide(&self, session: &Session, with_body: bool, ctx: &mut RequestCtx) -> Decision {
        let table = self.table.load();
        let Some(bind) = session.server_addr().and_then(|a| a.as_inet()).copied() else {
            return Decision::Respond(404);
        };
        let req = session.req_header();
        let tls = session.digest().and_then(|d| d.ssl_digest.as_ref());
        // A connection outlives the socket it came on. When its port is no longer served, or
        // is served in another mode (TLS where it came in cleartext, or the other way, or
        // passed through), this table's listeners there are not for it: a cleartext connection
        // would be served the routes, and the client validation, of an HTTPS listener. 421,
        // and the connection closes (the connection task winds it down too: an HTTP/2 client
        // gets GOAWAY), so that the client connects afresh, or is refused.
        let Some(socket) = table
            .binds
            .get(&bind)
            .filter(|b| b.serves_http(tls.is_some()))
        else {
            return Decision::RespondAndClose(421);
        };
        let handshake = tls.and_then(|t| t.extension.get::<crate::tls::Handshake>());
        let sni = handshake.and_then(|h| h.server_name.as_deref());
        // An HTTP/1.0 request may come without Host; over TLS the handshake's SNI names the
        // host it is for, and stands in (it would otherwise select no listener but the one
        // without a hostname, and be misdirected).
        let host = match request_host(req) {
            Some(host) if !host.is_empty() => host,
            _ => sni.unwrap_or_default(),
        };
        // The client's address, for mirror copies only: most requests have none to send.
        let client = || {
            session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip())
        };
        let path = req.uri.path();
        let query = req.uri.query();
        // Values as UTF-8, not only as visible ASCII (`to_str`): a rule matching `café` would
        // otherwise never match, though `explain` said it did. A value that is not UTF-8
        // counts as one replacement character: left out, it let `x-role: admin` plus a second
        // value in Latin-1 match a rule for `admin` alone, while the backend got both.
        let header = |name: &str| -> Vec<&str> {
            req.headers
                .get_all(name)
                .iter()
                .map(|v| std::str::from_utf8(v.as_bytes()).unwrap_or("\u{fffd}"))
                .collect()
        };
        let view = RequestView {
            host,
            path,
            query,
            method: req.method.as_str(),
            header: &header,
        };
        // RFC 9110 section 15.5.20: on a TLS connection, a Host that selects another listener
        // than the handshake did (and so possibly another certificate) is misdirected. Without
        // SNI the handshake took the listener without a hostname. A Host that selects no
        // listener at all is not misdirected but unknown: 404, as the spec asks ("If no other
        // Listener matches the Host, the Gateway MUST return a 404").
        if tls.is_some() {
            // A connection whose client certificate was checked under other validation than
            // the socket's now (or not at all, or not verified when it was resumed) is sent
            // to make a new one, which is validated afresh: 421, and the connection closes.
            let policy = socket.client_policy();
            if handshake.and_then(|h| h.client_policy) != policy {
                return Decision::RespondAndClose(421);
            }
            let host = crate::routing::table::normalize_host(host);
            let by_host = socket.listener_for_hello(Some(&*host));
            let by_sni = socket.listener_for_hello(sni);
            let same = match (by_host, by_sni) {
                (Some(a), Some(b)) => std::ptr::eq(a, b),
                (None, _) => true,
                (Some(_), None) => false,
            };
            if !same {
                return Decision::Respond(421);
            }
        }
        let matched = match socket.lookup(&view) {
            Ok(matched) => matched,
            Err(miss) => {
                // Counted against the listener that took the host, when one did.
                if let crate::routing::Miss::NoRoute(listener) = miss {
                    ctx.gateway = Some(listener.gateway.clone());
                    ctx.listener = Some(listener.name.clone());
                }
                return Decision::Respond(404);
            }
        };
        let rule = matched.entry.rule.clone();
        ctx.gateway = Some(matched.listener.gateway.clone());
        ctx.listener = Some(matched.listener.name.clone());
        ctx.client_cert = matched.listener.backend_client_cert.clone();
        ctx.prefix = matched.entry.prefix.clone();
        ctx.scheme = matched.listener.scheme;
        ctx.rule = Some(rule.clone());
        // What a mirror copy carries of the gateway's own, made only for a rule that mirrors.
        let origin = || mirror::Origin {
            request_id: &ctx.request_id,
            client: client(),
            scheme: ctx.scheme,
            client_cert: ctx.client_cert.clone(),
        };
        // An HTTP/1.0 request may come without Host: a redirect then names the address it came
        // to, never an empty host.
        let own;
        let redirect_host = if host.is_empty() {
            own = (session.server_addr())
                .and_then(|a| a.as_inet())
                .map(|a| match a.ip() {
                    std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                    ip => ip.to_string(),
                })
                .unwrap_or_default();
            own.as_str()
        } else {
            host
        };
        let port = matched.listener.port;
        for filter in &rule.filters {
            match filter {
                Filter::Redirect(r) => {
                    let location = redirect_location(r, ctx, redirect_host, path, query, port);
                    return Decision::Redirect(r.status, location);
                }
                Filter::Mirror(m) => {
                    let copy = mirror::spawn(m, req, with_body, &origin(), &self.metrics);
                    ctx.mirror_bodies.extend(copy);
                }
                Filter::Cors(cors) => {
                    if let Some(headers) = preflight(cors, req) {
                        return Decision::Preflight(headers);
                    }
                }
                _ => {}
            }
        }
        let Some(index) = pick_backend(&rule) else {
            return Decision::Respond(500);
        };
        ctx.backend = Some(index);
        let weighted = &rule.backends[index];
        // A backendRef's filters apply to the requests sent its way: a redirect there answers
        // them instead (spec: RequestRedirect in HTTPBackendRef, extended support).
        for filter in &weighted.filters {
            match filter {
                Filter::Mirror(m) => {
                    let copy = mirror::spawn(m, req, with_body, &origin(), &self.metrics);
                    ctx.mirror_bodies.extend(copy);
                }
                Filter::Redirect(r) => {
                    let location = redirect_location(r, ctx, redirect_host, path, query, port);
                    return Decision::Redirect(r.status, location);
                }
                _ => {}
            }
        }
        match weighted.target.as_ref() {
            Backend::Invalid { .. } => Decision::Respond(500),
            Backend::Service(service) => match service.pick() {
                None => {
                    ctx.backend_name = Some(service.name.clone());
                    Decision::Respond(503)
                }
                Some(endpoint) => {
                    ctx.backend_name = Some(service.name.clone());
                    ctx.upstream = Some((endpoint, service.h2c));
                    ctx.upstream_tls = service.tls.clone();
                    Decision::Forward
                }
            },
        }
    }
}

/// The options of a message's `Connection` header fields, trimmed, empty ones left out, as
/// written (compare them without regard to case).
pub(super) fn connection_options(headers: &http::HeaderMap) -> impl Iterator<Item = &str> + '_ {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

/// Removes from a backend's response the header fields meant for its connection to the
/// gateway alone (RFC 9110, section 7.6.1): each one its `Connection` header names, and
/// `Keep-Alive` and `Proxy-Connection`. The gateway's connection to the client gets its own.
/// A 101 keeps `Connection: upgrade` and `Upgrade`, which the switch needs.
fn drop_hop_by_hop(response: &mut ResponseHeader, switching: bool) {
    // On the hot path: most answers name nothing but `keep-alive` or `close`, and nothing is
    // allocated for them.
    let plain = |token: &str| {
        token.eq_ignore_ascii_case("close")
            || token.eq_ignore_ascii_case("keep-alive")
            || (switching && token.eq_ignore_ascii_case("upgrade"))
    };
    let named: Vec<String> = connection_options(&response.headers)
        .filter(|token| !plain(token))
        .map(str::to_ascii_lowercase)
        .collect();
    for name in named {
        response.remove_header(name.as_str());
    }
    // Names as constants: a `&str` is parsed into a header name at every lookup.
    for name in [&KEEP_ALIVE, &PROXY_CONNECTION] {
        if response.headers.contains_key(name) {
            response.remove_header(name);
        }
    }
    // `Upgrade` speaks of the backend's connection only (RFC 9110, section 7.8), even when
    // the backend left it out of `Connection`: a client offered `h2c` by a backend's 200
    // would be offered a protocol the gateway does not speak to it.
    if !switching && response.headers.contains_key(http::header::UPGRADE) {
        response.remove_header(&http::header::UPGRADE);
    }
}

/// Makes a backend's `Content-Length` one a client of either protocol can read: none on a 204
/// (RFC 9110, section 8.6, where an HTTP/2 client resets the stream over it), and one value
/// where the backend repeated the same (`5, 5`, or two fields). Values that differ leave the
/// body's length unknown: the backend's answer is refused (502).
fn one_content_length(response: &mut ResponseHeader) -> Result<()> {
    // On the hot path: one field with one value, on a status that may have it.
    let mut fields = response
        .headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter();
    if let (Some(only), None) = (fields.next(), fields.next()) {
        if !only.as_bytes().contains(&b',') && response.status != http::StatusCode::NO_CONTENT {
            return Ok(());
        }
    }
    let values: Vec<String> = response
        .headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(|v| v.trim().to_string())
        .collect();
    if values.is_empty() {
        return Ok(());
    }
    if response.status == http::StatusCode::NO_CONTENT {
        response.remove_header(&http::header::CONTENT_LENGTH);
        return Ok(());
    }
    if values.len() == 1 {
        return Ok(());
    }
    if values.iter().any(|v| *v != values[0]) || values[0].parse::<u64>().is_err() {
        return Err(Error::explain(
            ErrorType::InvalidHTTPHeader,
            "the backend's answer gives Content-Length values that differ",
        )
        .into_up());
    }
    let single = values[0].clone();
    response.insert_header(http::header::CONTENT_LENGTH, single)?;
    Ok(())
}

/// Answers with a gateway-made error. A gRPC client gets it the way gRPC reports errors: HTTP 200
/// with the nearest `grpc-status` in a trailers-only response, not an HTML status page.
///
/// An answer the gateway decides before proxying (no route, no usable backend, no endpoint)
/// leaves an HTTP/1.1 connection open for the client's next request, as the backend's own
/// errors do: closing it would turn a scanner's 404s or an outage's 503s into a reconnect per
/// request. A malformed request (400) closes it, and so does an answer after a failed try
/// (`fail_to_proxy`), where Pingora closes the connection whatever the gateway says; its
/// answer then says `Connection: close` rather than promising keep-alive.
async fn respond(session: &mut Session, ctx: &mut RequestCtx, status: u16) -> Result<bool> {
    respond_then(session, ctx, status, status != 400).await
}

async fn respond_then(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    keep_alive: bool,
) -> Result<bool> {
    ctx.status = status;
    // A misdirected request (421) is answered in HTTP whatever it carries: it tells the client
    // to open another connection, which gRPC clients act on too; as a gRPC status it would
    // read as a fault of the route.
    let grpc = status != 421 && ctx.grpc;
    if !grpc {
        // As Pingora does: once a final response has started, nothing more can be said.
        if let Some(written) = session.as_downstream().response_written() {
            if !written.status.is_informational() || written.status == 101 {
                return Ok(true);
            }
        }
        if !keep_alive {
            session.as_mut().set_keepalive(None);
        }
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        let text = format!("{status} {reason}\n");
        // A HEAD answer says the length a GET's would have, and carries no body.
        let length = text.len();
        let body = if session.req_header().method == http::Method::HEAD {
            bytes::Bytes::new()
        } else {
            bytes::Bytes::from(text)
        };
        let mut resp = ResponseHeader::build(status, Some(3))?;
        resp.insert_header("content-type", "text/plain; charset=utf-8")?;
        resp.insert_header("content-length", length.to_string())?;
        resp.insert_header("cache-control", "no-store")?;
        session
            .write_response_header(Box::new(resp), body.is_empty())
            .await?;
        if !body.is_empty() {
            session.write_response_body(Some(body), true).await?;
        }
        return Ok(true);
    }
    let (code, message) = crate::routing::table::gateway_grpc_status(status);
    ctx.grpc_status = code.parse().ok();
    let mut resp = ResponseHeader::build(200, Some(4))?;
    resp.insert_header("content-type", "application/grpc")?;
    resp.insert_header("grpc-status", code)?;
    resp.insert_header("grpc-message", message)?;
    let downstream = session.as_downstream_mut();
    if downstream.is_http2() {
        // gRPC carries its status in trailers: headers, then trailers ending the stream.
        resp.remove_header("grpc-status");
        resp.remove_header("grpc-message");
        downstream.write_response_header(Box::new(resp)).await?;
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static(code));
        trailers.insert("grpc-message", http::HeaderValue::from_static(message));
        downstream.write_response_trailers(trailers).await?;
    } else {
        // A complete error response, so the connection ends cleanly even when the proxy is
        // unwinding from an upstream failure.
        downstream
            .write_error_response(resp, bytes::Bytes::new())
            .await?;
    }
    Ok(true)
}

/// The `grpc-status` of a header or trailer section, if it has one: a number past the codes
/// gRPC defines (0 to 16) is UNKNOWN (2), as its clients read it.
fn grpc_status(fields: &http::HeaderMap) -> Option<u8> {
    let value = fields.get("grpc-status")?.to_str().ok()?;
    let code: u32 = value.parse().ok()?;
    Some(u8::try_from(code).ok().filter(|&c| c <= 16).unwrap_or(2))
}

/// Whether a request is a gRPC call, by its content type.
fn is_grpc(request: &RequestHeader) -> bool {
    (request.headers.get(http::header::CONTENT_TYPE))
        .is_some_and(|v| crate::routing::table::is_grpc_content_type(v.as_bytes()))
}

/// The status a gRPC client reads for a call that ended without a `grpc-status`: an HTTP
/// status as gRPC maps it (a backend's 503 is UNAVAILABLE, its 404 UNIMPLEMENTED), CANCELLED
/// for a call the client broke off, UNKNOWN for one that just ended without a status.
fn implied_grpc_status(http_status: u16, error: Option<&Error>) -> u8 {
    match http_status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ if error.is_some_and(|e| *e.esource() == pingora_core::ErrorSource::Downstream) => 1,
        _ => 2,
    }
}

/// The authority of an HTTP/1 request target in absolute form (`http://host:port/path`), or
/// `None` for any other form.
fn absolute_form_host(target: &[u8]) -> Option<&[u8]> {
    if target.first().is_none_or(|&b| b == b'/' || b == b'*') {
        return None;
    }
    let start = target.windows(3).position(|w| w == b"://")? + 3;
    let rest = &target[start..];
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Whether a request target has a form RFC 9112 (section 3.2) allows for its method: the origin
/// form (`/path`), the absolute form (`http://host/path`), `*` for OPTIONS and the authority
/// form (`host:port`) for CONNECT; and no control character or space, which no form allows and
/// which a backend could read as the end of the target. Anything else (`GET x`) would be routed
/// as some path it does not name. (Over HTTP/1, Pingora percent-encodes a control character,
/// space, `"`, `<` or `>` in the request line before anything reads it, so those reach this
/// check, and the route and the backend, encoded: one way only.)
fn valid_target(method: &http::Method, target: &[u8]) -> bool {
    // A backslash is no URI character (RFC 3986), and some servers take it for `/`: a path the
    // routes see as one segment would be another path there.
    if target.iter().any(|&b| b < 0x21 || b == 0x7f || b == b'\\') {
        return false;
    }
    match target.first() {
        Some(b'/') => true,
        Some(b'*') => target == b"*" && method == http::Method::OPTIONS,
        Some(_) => absolute_form_host(target).is_some() || method == http::Method::CONNECT,
        None => false,
    }
}

/// `uri` with its path and query replaced by `target`, its scheme and authority kept: an HTTP/2
/// request names its host only there (`:authority`), and a URI of the path alone would lose
/// it, both for routing and for the Host the backend is sent. `None` when `target` is no path.
fn with_path_and_query(uri: &http::Uri, target: &str) -> Option<http::Uri> {
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(target.parse().ok()?);
    http::Uri::from_parts(parts).ok()
}

/// The Host a request names: the Host header, or the authority of an HTTP/2 request.
fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// The answer to a CORS preflight (an OPTIONS request with `Origin` and
/// `Access-Control-Request-Method`), or `None` when the request is not one. An origin that is
/// not allowed gets an answer without `access-control-allow-origin`, which the browser reads as
/// a refusal. With credentials, `*` may not be sent (Fetch standard), so wildcards echo what was
/// asked for.
fn preflight(cors: &Cors, req: &RequestHeader) -> Option<Vec<(&'static str, String)>> {
    let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
    let origin = header("origin")?;
    let method = header("access-control-request-method")?;
    if req.method != http::Method::OPTIONS {
        return None;
    }
    let mut out = vec![("vary", "Origin".to_string())];
    if !cors.allows(origin) {
        return Some(out);
    }
    out.push(("access-control-allow-origin", origin.to_string()));
    // No methods listed: none beyond the CORS-safelisted ones, which need no header.
    match &cors.methods {
        Some(list) if !list.is_empty() => {
            out.push(("access-control-allow-methods", list.join(", ")))
        }
        Some(_) => {}
        None if cors.credentials => out.push(("access-control-allow-methods", method.to_string())),
        None => out.push(("access-control-allow-methods", "*".to_string())),
    }
    let asked = header("access-control-request-headers");
    match (&cors.headers, asked) {
        (Some(list), _) if !list.is_empty() => {
            out.push(("access-control-allow-headers", list.join(", ")))
        }
        (None, Some(asked)) if cors.credentials => {
            out.push(("access-control-allow-headers", asked.to_string()))
        }
        // With credentials and nothing asked for, there is nothing to echo and `*` may not
        // be said.
        (None, None) if cors.credentials => {}
        (None, _) => out.push(("access-control-allow-headers", "*".to_string())),
        _ => {}
    }
    // The headers a response exposes are said on the response itself (`response_filter`, which
    // names them when `*` may not be said); a preflight repeats a list, never `*` with
    // credentials.
    match &cors.expose {
        Some(expose) if expose == "*" && cors.credentials => {}
        Some(expose) => out.push(("access-control-expose-headers", expose.clone())),
        None => {}
    }
    if cors.credentials {
        out.push(("access-control-allow-credentials", "true".to_string()));
    }
    out.push(("access-control-max-age", cors.max_age.to_string()));
    Some(out)
}

/// Chooses a backendRef by weight. `None` when the rule has no backend to send to.
fn pick_backend(rule: &Rule) -> Option<usize> {
    match rule.backends.len() {
        0 => None,
        1 => Some(0),
        _ => {
            let mut point = rand::rng().random_range(0..rule.total_weight);
            rule.backends.iter().position(|b| {
                if point < b.weight {
                    true
                } else {
                    point -= b.weight;
                    false
                }
            })
        }
    }
}

fn edit_request(req: &mut RequestHeader, edits: &HeaderEdits) -> Result<()> {
    for (name, value) in &edits.set {
        req.insert_header(name.clone(), value.as_str())?;
    }
    for (name, value) in &edits.add {
        req.append_header(name.clone(), value.as_str())?;
    }
    for name in &edits.remove {
        req.remove_header(name);
    }
    Ok(())
}

fn edit_response(resp: &mut ResponseHeader, edits: &HeaderEdits) -> Result<()> {
    for (name, value) in &edits.set {
        resp.insert_header(name.clone(), value.as_str())?;
    }
    for (name, value) in &edits.add {
        resp.append_header(name.clone(), value.as_str())?;
    }
    for name in &edits.remove {
        resp.remove_header(name);
    }
    Ok(())
}

/// Applies a path replacement; `prefix` is the rule's matched prefix (normalized, no trailing
/// slash) for `ReplacePrefixMatch`.
pub fn replace_path(replace: &PathReplace, path: &str, prefix: Option<&str>) -> String {
    match replace {
        PathReplace::Full(p) => p.clone(),
        PathReplace::Prefix(replacement) => {
            let prefix = prefix.unwrap_or("/");
            // The path that is the prefix itself becomes the replacement: `/` with the prefix
            // `/` and the replacement `/new` is `/new`, as `/foo` is `/new` for the prefix `/foo`.
            let rest = if prefix == "/" {
                if path == "/" {
                    ""
                } else {
                    path
                }
            } else {
                path.get(prefix.len()..).unwrap_or("")
            };
            let joined = format!("{}{}", replacement.trim_end_matches('/'), rest);
            if joined.is_empty() {
                "/".to_string()
            } else if joined.starts_with('/') {
                joined
            } else {
                format!("/{joined}")
            }
        }
    }
}

/// Builds a redirect's Location (Gateway API `HTTPRequestRedirectFilter`): scheme, host and port
/// default to the request's; a changed scheme without a port uses that scheme's well-known port,
/// and a well-known port is left out.
fn redirect_location(
    r: &crate::routing::table::Redirect,
    ctx: &RequestCtx,
    host: &str,
    path: &str,
    query: Option<&str>,
    listener_port: u16,
) -> String {
    let scheme = r.scheme.as_deref().unwrap_or(ctx.scheme);
    let hostname = r
        .hostname
        .clone()
        .unwrap_or_else(|| crate::routing::table::normalize_host(host).into_owned());
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => p,
        (None, Some(s)) if s == "https" => 443,
        (None, Some(_)) => 80,
        (None, None) => listener_port,
    };
    // An IPv6 address is written in brackets in a URI (RFC 3986, section 3.2.2); the Host it
    // came from was normalized without them.
    let hostname = if hostname.contains(':') {
        format!("[{hostname}]")
    } else {
        hostname
    };
    let default_port = if scheme == "https" { 443 } else { 80 };
    let authority = if port == default_port {
        hostname
    } else {
        format!("{hostname}:{port}")
    };
    let path = match &r.path {
        Some(replace) => replace_path(replace, path, ctx.prefix.as_deref()),
        None => path.to_string(),
    };
    match query {
        Some(q) => format!("{scheme}://{authority}{path}?{q}"),
        None => format!("{scheme}://{authority}{path}"),
    }
}

// Looked up as `HeaderName`s: a name given as a string is parsed again on every lookup.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

// The same names as Pingora's case-preserving header map keeps them for the wire. Given a
// `HeaderName`, it would title-case a fresh copy on every insert; a static string is taken as is.
const X_FORWARDED_FOR_WIRE: &str = "X-Forwarded-For";
const X_FORWARDED_PROTO_WIRE: &str = "X-Forwarded-Proto";
const X_REQUEST_ID_WIRE: &str = "X-Request-Id";
const COOKIE_WIRE: &str = "Cookie";

/// A request id: 32 lowercase hex digits.
fn new_request_id(bits: u128) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 32];
    for (i, digit) in digits.iter_mut().enumerate() {
        *digit = HEX[((bits >> ((31 - i) * 4)) & 0xf) as usize];
    }
    // Always ASCII, so never the empty default.
    std::str::from_utf8(&digits)
        .map(str::to_owned)
        .unwrap_or_default()
}

/// What a request's framing fields need before it goes on; see [`framing`].
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    /// Nothing.
    Fine,
    /// Refuse it with this status; the connection closes.
    Refuse(u16),
    /// Its Content-Length, repeated (`5, 5`, or two fields of one value), goes on as this one.
    OneLength(String),
    /// Its `Upgrade` is not named in `Connection`: no upgrade is asked for, and the field goes.
    NoUpgrade,
}

/// Checks the fields that say how a request is framed, beyond what Pingora checks:
///
/// - a transfer coding other than `chunked` (`gzip, chunked`): Pingora would decode the chunks
///   and forward the still-compressed body as `chunked`, a body the client did not mean; the
///   gateway implements no other coding (RFC 9112, section 6.1: 501);
/// - a Content-Length given more than once with one value: Pingora accepts it and forwards it
///   as it came, which a strict backend refuses; it goes on once (RFC 9110, section 8.6). Over
///   HTTP/2, where nothing before checks them, values that differ get 400;
/// - `Upgrade` without the `upgrade` option in `Connection` (RFC 9110, section 7.8): Pingora
///   would take it for an upgrade request and turn the connection into a tunnel on a 101, so
///   that a proxy in front, which did not see an upgrade, would send other requests into it;
///   the field is dropped and the request served as any other;
/// - over HTTP/2, a field value with white space at its start or end, which makes the request
///   malformed (RFC 9113, section 8.2.1): 400.
fn framing(req: &RequestHeader, http2: bool) -> Framing {
    let headers = &req.headers;
    if http2 {
        let padded = |v: &[u8]| {
            matches!(v.first(), Some(b' ' | b'\t')) || matches!(v.last(), Some(b' ' | b'\t'))
        };
        if headers.values().any(|v| padded(v.as_bytes())) {
            return Framing::Refuse(400);
        }
    }
    if let (false, Some(te)) = (http2, headers.get(http::header::TRANSFER_ENCODING)) {
        let codings = headers
            .get_all(http::header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|c| !c.is_empty());
        if codings
            .into_iter()
            .any(|c| !c.eq_ignore_ascii_case(b"chunked"))
            || te.is_empty()
        {
            return Framing::Refuse(501);
        }
    } else {
        let mut lengths = headers.get_all(http::header::CONTENT_LENGTH).iter();
        if let (Some(first), second) = (lengths.next(), lengths.next()) {
            if second.is_some() || first.as_bytes().contains(&b',') {
                // One value said again goes on once; values that differ leave the length
                // unknown (Pingora refuses them over HTTP/1; over HTTP/2 they come this far).
                let mut values = (headers.get_all(http::header::CONTENT_LENGTH).iter())
                    .flat_map(|v| v.as_bytes().split(|b| *b == b','))
                    .map(<[u8]>::trim_ascii);
                let value = values.next().unwrap_or(b"");
                if values.any(|other| other != value) {
                    return Framing::Refuse(400);
                }
                return Framing::OneLength(String::from_utf8_lossy(value).into_owned());
            }
        }
    }
    if !http2
        && headers.contains_key(http::header::UPGRADE)
        && !(headers.get_all(http::header::CONNECTION).iter())
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .any(|o| o.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    {
        return Framing::NoUpgrade;
    }
    Framing::Fine
}

/// The largest HTTP/1.1 request header forwarded (request line and fields, as sent).
const MAX_REQUEST_HEADER_BYTES: usize = 64 * 1024;

/// Whether the request's `Connection` options are ones Pingora forwards: at most nine, each a
/// token (RFC 9110, section 5.6.2), none of them naming a pseudo-header or a field the gateway
/// sets for the backend (`Host`, `X-Forwarded-For`, `-Host`, `-Proto`), which a client could
/// otherwise have stripped on the way. Refusing them before the backend is chosen gives the
/// client the 400 it is owed.
fn valid_connection_options(req: &RequestHeader) -> bool {
    let is_token_byte = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    let tokens = (req.headers.get_all(http::header::CONNECTION).iter())
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty());
    for (i, token) in tokens.enumerate() {
        let protected = [
            "host",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
        ]
        .iter()
        .any(|name| token.eq_ignore_ascii_case(name.as_bytes()));
        if i >= 9 || protected || !token.iter().all(|b| is_token_byte(*b)) {
            return false;
        }
    }
    true
}

/// Joins the request's `Cookie` fields into one, with `"; "` (RFC 9113, section 8.2.3). An
/// HTTP/2 client may send each cookie as a field of its own, for better header compression;
/// on HTTP/1.1 they must travel as one field, as RFC 6265 allows only one Cookie header, and
/// most servers read only the first or the last line. Joined whatever the two sides speak:
/// one field is as good for an HTTP/2 backend.
fn join_cookies(upstream: &mut RequestHeader) -> Result<()> {
    let mut fields = upstream.headers.get_all(http::header::COOKIE).iter();
    if fields.next().is_none() || fields.next().is_none() {
        return Ok(());
    }
    let mut joined = Vec::new();
    for field in upstream.headers.get_all(http::header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(field.as_bytes());
    }
    let value = HeaderValue::from_bytes(&joined).map_err(|e| {
        Error::explain(
            ErrorType::InvalidHTTPHeader,
            format!("the joined Cookie fields are not a header value: {e}"),
        )
    })?;
    upstream.insert_header(COOKIE_WIRE, value)
}

/// Appends an IP address as text; IPv4 without going through `fmt`.
fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    use std::fmt::Write;
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_fields_are_taken_as_the_rfcs_say() {
        let request = |fields: &[(&str, &str)]| {
            let mut req = RequestHeader::build("POST", b"/", None).unwrap();
            for (name, value) in fields {
                req.append_header(name.to_string(), *value).unwrap();
            }
            req
        };
        type Fields<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Fields<'_>, bool, Framing)] = &[
            (&[("content-length", "5")], false, Framing::Fine),
            (&[("transfer-encoding", "chunked")], false, Framing::Fine),
            (&[("transfer-encoding", "Chunked")], false, Framing::Fine),
            (
                &[("transfer-encoding", "gzip, chunked")],
                false,
                Framing::Refuse(501),
            ),
            (
                &[
                    ("transfer-encoding", "gzip"),
                    ("transfer-encoding", "chunked"),
                ],
                false,
                Framing::Refuse(501),
            ),
            (
                &[("content-length", "5, 5")],
                false,
                Framing::OneLength("5".into()),
            ),
            (
                &[("content-length", "5"), ("content-length", "5")],
                false,
                Framing::OneLength("5".into()),
            ),
            (&[("upgrade", "websocket")], false, Framing::NoUpgrade),
            (
                &[("upgrade", "websocket"), ("connection", "keep-alive")],
                false,
                Framing::NoUpgrade,
            ),
            (
                &[
                    ("upgrade", "websocket"),
                    ("connection", "keep-alive, Upgrade"),
                ],
                false,
                Framing::Fine,
            ),
            (&[("x-a", " b ")], true, Framing::Refuse(400)),
            (&[("x-a", "b\t")], true, Framing::Refuse(400)),
            (&[("x-a", "b c")], true, Framing::Fine),
            (
                &[("content-length", "3"), ("content-length", "3")],
                true,
                Framing::OneLength("3".into()),
            ),
            (
                &[("content-length", "3"), ("content-length", "4")],
                true,
                Framing::Refuse(400),
            ),
        ];
        for (fields, http2, want) in cases {
            assert_eq!(framing(&request(fields), *http2), *want, "{fields:?}");
        }
    }

    #[test]
    fn a_new_path_keeps_the_scheme_and_authority_of_the_uri() {
        let h2: http::Uri = "http://a.example:8080/x/../admin?q=1".parse().unwrap();
        let uri = with_path_and_query(&h2, "/admin?q=1").unwrap();
        assert_eq!(uri.to_string(), "http://a.example:8080/admin?q=1");
        let origin: http::Uri = "/x".parse().unwrap();
        assert_eq!(with_path_and_query(&origin, "/y").unwrap(), "/y");
        assert_eq!(with_path_and_query(&origin, "/a b"), None);
    }

    #[test]
    fn a_target_has_one_of_the_forms_its_method_allows() {
        use http::Method;
        for (method, good) in [
            (Method::GET, &b"/"[..]),
            (Method::GET, b"/a?b=c"),
            (Method::GET, b"http://a.example/x"),
            (Method::GET, b"/caf\xc3\xa9"),
            (Method::OPTIONS, b"*"),
            (Method::CONNECT, b"a.example:443"),
        ] {
            assert!(valid_target(&method, good), "{method} {good:?}");
        }
        for (method, bad) in [
            (Method::GET, &b"x"[..]),
            (Method::GET, b""),
            (Method::GET, b"*"),
            (Method::OPTIONS, b"*x"),
            (Method::GET, b"a.example:443"),
            (Method::GET, b"/a\0b"),
            (Method::GET, b"/a\x7fb"),
            (Method::GET, b"/a\tb"),
        ] {
            assert!(!valid_target(&method, bad), "{method} {bad:?}");
        }
    }

    #[test]
    fn a_redirect_to_an_ipv6_literal_keeps_its_brackets() {
        let ctx = RequestCtx::new();
        let redirect = |scheme: Option<&str>, port: Option<u16>| crate::routing::table::Redirect {
            scheme: scheme.map(str::to_string),
            hostname: None,
            path: None,
            port,
            status: 302,
        };
        let location = |r, host| redirect_location(&r, &ctx, host, "/a", Some("q=1"), 8080);
        assert_eq!(
            location(redirect(Some("https"), None), "[::1]:8080"),
            "https://[::1]/a?q=1"
        );
        assert_eq!(
            location(redirect(None, None), "[::1]:8080"),
            "http://[::1]:8080/a?q=1"
        );
        assert_eq!(
            location(redirect(None, Some(9000)), "a.example:8080"),
            "http://a.example:9000/a?q=1"
        );
    }

    #[test]
    fn prefix_replacement_keeps_the_rest_of_the_path() {
        let p = PathReplace::Prefix("/bar".into());
        assert_eq!(replace_path(&p, "/foo/baz", Some("/foo")), "/bar/baz");
        assert_eq!(replace_path(&p, "/foo", Some("/foo")), "/bar");
        let root = PathReplace::Prefix("/".into());
        assert_eq!(replace_path(&root, "/foo/baz", Some("/foo")), "/baz");
        assert_eq!(replace_path(&root, "/foo", Some("/foo")), "/");
        assert_eq!(replace_path(&p, "/x", Some("/")), "/bar/x");
        assert_eq!(replace_path(&p, "/", Some("/")), "/bar");
        assert_eq!(replace_path(&root, "/", Some("/")), "/");
        let empty = PathReplace::Prefix(String::new());
        assert_eq!(replace_path(&empty, "/foo/bar", Some("/foo")), "/bar");
        assert_eq!(replace_path(&empty, "/foo", Some("/foo")), "/");
    }

    #[test]
    fn a_preflight_answer_varies_by_origin_allowed_or_not() {
        let cors = Cors {
            origins: vec!["https://a.example".into()],
            methods: None,
            headers: None,
            expose: None,
            credentials: false,
            max_age: 5,
        };
        for (origin, allowed) in [("https://a.example", true), ("https://b.example", false)] {
            let mut req = RequestHeader::build("OPTIONS", b"/", None).unwrap();
            req.insert_header("origin", origin).unwrap();
            req.insert_header("access-control-request-method", "GET")
                .unwrap();
            let answer = preflight(&cors, &req).unwrap();
            assert!(answer.contains(&("vary", "Origin".into())), "{answer:?}");
            let echoed = answer
                .iter()
                .any(|(n, v)| *n == "access-control-allow-origin" && v == origin);
            assert_eq!(echoed, allowed, "{answer:?}");
        }
    }

    /// With credentials a preflight never says `*` (the Fetch standard reads it as a name
    /// then): wildcards echo what was asked for, or are left out when nothing was; a rule that
    /// lists no methods sends no empty `access-control-allow-methods`.
    #[test]
    fn a_preflight_with_credentials_never_says_star() {
        let star = vec!["*".to_string()];
        let cors = Cors {
            origins: star.clone(),
            methods: None,
            headers: None,
            expose: Some("*".into()),
            credentials: true,
            max_age: 5,
        };
        let ask = |asked: Option<&str>| {
            let mut req = RequestHeader::build("OPTIONS", b"/", None).unwrap();
            req.insert_header("origin", "https://x.example").unwrap();
            req.insert_header("access-control-request-method", "PATCH")
                .unwrap();
            if let Some(asked) = asked {
                req.insert_header("access-control-request-headers", asked)
                    .unwrap();
            }
            req
        };
        let field = |answer: &[(&'static str, String)], name: &str| {
            (answer.iter())
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        };
        let answer = preflight(&cors, &ask(Some("x-a"))).unwrap();
        assert!(answer.iter().all(|(_, v)| v != "*"), "{answer:?}");
        assert_eq!(
            field(&answer, "access-control-allow-headers").as_deref(),
            Some("x-a")
        );
        assert_eq!(
            field(&answer, "access-control-allow-methods").as_deref(),
            Some("PATCH")
        );
        let answer = preflight(&cors, &ask(None)).unwrap();
        assert!(answer.iter().all(|(_, v)| v != "*"), "{answer:?}");
        assert_eq!(field(&answer, "access-control-allow-headers"), None);

        let minimal = Cors {
            methods: Some(Vec::new()),
            headers: Some(Vec::new()),
            expose: None,
            credentials: false,
            ..cors
        };
        let answer = preflight(&minimal, &ask(None)).unwrap();
        assert_eq!(
            field(&answer, "access-control-allow-methods"),
            None,
            "{answer:?}"
        );
        assert!(answer.iter().all(|(_, v)| !v.is_empty()), "{answer:?}");
    }

    #[test]
    fn client_addresses_format_as_std_does() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.20.99.100",
            "127.0.0.1",
            "255.255.255.255",
            "192.168.1.250",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let mut out = String::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string());
        }
    }

    #[test]
    fn request_ids_are_32_hex_digits() {
        assert_eq!(new_request_id(0), "0".repeat(32));
        assert_eq!(new_request_id(u128::MAX), "f".repeat(32));
        let bits = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128;
        assert_eq!(new_request_id(bits), format!("{bits:032x}"));
    }
}
