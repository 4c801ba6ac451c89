//! A local stand-in for the Kubernetes API server, speaking its wire protocol over plain HTTP/1
//! on loopback, for the resources Portcullis reads and writes.
//!
//! It keeps what etcd and the API server would: objects, one global `resourceVersion` counter,
//! and a history of change events from which watches are served. Supported:
//!
//! - discovery (`/version`, `/api`, `/apis`, group and group-version resource lists);
//! - LIST with `metadata.resourceVersion`, label selectors (`k=v`, `k!=v`, `k`, `!k`) and field
//!   selectors (`metadata.name`, `metadata.namespace`, `type`, ...); items of built-in kinds come
//!   without `apiVersion`/`kind`, as from the real server;
//! - WATCH (`watch=true`, `resourceVersion`, `allowWatchBookmarks`, `timeoutSeconds`) streaming
//!   ADDED / MODIFIED / DELETED / BOOKMARK lines, and an ERROR event with code 410 when the
//!   requested version is older than the compaction point;
//! - GET / POST / PUT / PATCH / DELETE of objects (Events of `events.k8s.io/v1` included); PUT
//!   and PATCH of `/status`; merge patches
//!   (`merge-patch+json`, and `apply-patch+yaml` / `strategic-merge-patch+json` with merge
//!   semantics); `metadata.resourceVersion` in a PUT or a patch is a precondition (409);
//!   `metadata.generation` goes up when anything outside metadata and status changes.
//!
//! Tests change objects directly ([`ApiServer::apply`], [`ApiServer::remove`]), as a user would
//! through the API, and can stop the server and start it again on the same port; its state
//! survives, as etcd's would. Every request is logged with its bearer token, so that a test can
//! tell which client wrote what.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// One resource the server serves.
#[derive(Debug)]
struct Resource {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    /// Whether `status` is a subresource: writes to the object leave it alone.
    status: bool,
}

const GATEWAY: &str = "gateway.networking.k8s.io";

const RESOURCES: &[Resource] = &[
    Resource {
        group: GATEWAY,
        version: "v1",
        plural: "gatewayclasses",
        kind: "GatewayClass",
        namespaced: false,
        status: true,
    },
    Resource {
        group: GATEWAY,
        version: "v1",
        plural: "gateways",
        kind: "Gateway",
        namespaced: true,
        status: true,
    },
    Resource {
        group: GATEWAY,
        version: "v1",
        plural: "httproutes",
        kind: "HTTPRoute",
        namespaced: true,
        status: true,
    },
    Resource {
        group: GATEWAY,
        version: "v1",
        plural: "grpcroutes",
        kind: "GRPCRoute",
        namespaced: true,
        status: true,
    },
    Resource {
        group: GATEWAY,
        version: "v1alpha2",
        plural: "tlsroutes",
        kind: "TLSRoute",
        namespaced: true,
        status: true,
    },
    Resource {
        group: GATEWAY,
        version: "v1beta1",
        plural: "referencegrants",
        kind: "ReferenceGrant",
        namespaced: true,
        status: false,
    },
    Resource {
        group: GATEWAY,
        version: "v1",
        plural: "backendtlspolicies",
        kind: "BackendTLSPolicy",
        namespaced: true,
        status: true,
    },
    Resource {
        group: "",
        version: "v1",
        plural: "services",
        kind: "Service",
        namespaced: true,
        status: true,
    },
    Resource {
        group: "",
        version: "v1",
        plural: "namespaces",
        kind: "Namespace",
        namespaced: false,
        status: true,
    },
    Resource {
        group: "",
        version: "v1",
        plural: "secrets",
        kind: "Secret",
        namespaced: true,
        status: false,
    },
    Resource {
        group: "",
        version: "v1",
        plural: "configmaps",
        kind: "ConfigMap",
        namespaced: true,
        status: false,
    },
    Resource {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        kind: "EndpointSlice",
        namespaced: true,
        status: false,
    },
    Resource {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
        status: false,
    },
    Resource {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        kind: "Lease",
        namespaced: true,
        status: false,
    },
];

impl Resource {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Built-in kinds: their list items carry no apiVersion/kind; generation is not kept.
    fn built_in(&self) -> bool {
        self.group != GATEWAY
    }
}

fn resource_of(api_version: &str, kind: &str) -> Option<usize> {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.kind == kind)
}

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub(crate) struct Logged {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: String,
    /// The bearer token, or empty.
    pub(crate) token: String,
}

impl Logged {
    pub(crate) fn is_watch(&self) -> bool {
        matches!(self.param("watch").as_deref(), Some("true" | "1"))
    }

    /// A query parameter, decoded.
    pub(crate) fn param(&self, name: &str) -> Option<String> {
        query_param(&self.query, name).map(decode)
    }
}

type Key = (usize, String, String);

struct Event {
    revision: u64,
    resource: usize,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    revision: u64,
    /// Watches from a version older than this are answered 410 Gone.
    compacted: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Event>,
    requests: Vec<Logged>,
    /// How many coming status writes to refuse with 409, as if someone else had written first.
    conflicts: usize,
    /// Lists of these plurals are answered only after the delay, as from a slow server.
    slow_lists: BTreeMap<String, Duration>,
    /// Requests from this token whose path holds this text are never answered, as over a
    /// connection that stalled.
    stalled: Vec<(String, String)>,
    /// Every watch is answered with a 410 ERROR event, as by a server whose history is always
    /// compacted past the version asked for.
    gone_watches: bool,
    /// Writes (POST, PUT, PATCH) from this token whose path holds this text are carried out at
    /// once and answered only after the delay, as over a slow network.
    slow_answers: Vec<(String, String, Duration)>,
    uid: u64,
}

struct Shared {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    bookmark_interval: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The server. Dropping it stops it.
pub(crate) struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    running: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl ApiServer {
    /// Starts on a free loopback port.
    pub(crate) async fn start() -> ApiServer {
        let (changed, _) = watch::channel(0);
        let listener = bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind the API server");
        let server = ApiServer {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changed,
                bookmark_interval: Duration::from_millis(500),
            }),
            addr: listener.local_addr().unwrap(),
            running: Mutex::new(None),
        };
        server.serve(listener);
        server
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let shared = self.shared.clone();
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every connection, open
            // watches included: clients see their connections reset, as when a server dies.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        *self.running.lock().unwrap() = Some(task);
    }

    /// Stops listening and drops every open connection.
    pub(crate) fn stop(&self) {
        if let Some(task) = self.running.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Starts again on the same port, with the same objects.
    pub(crate) async fn restart(&self) {
        self.stop();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match bind(self.addr).await {
                Ok(l) => break l,
                Err(err) if tokio::time::Instant::now() < deadline => {
                    let _ = err;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => panic!("cannot listen on {} again: {err}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// Forgets the change history: every resourceVersion handed out so far becomes too old
    /// to watch from (410 Gone), as after an etcd compaction.
    pub(crate) fn compact(&self) {
        let mut state = self.shared.lock();
        state.compacted = state.revision + 1;
        state.history.clear();
    }

    /// Answers LISTs of `plural` only after `delay`.
    pub(crate) fn delay_lists(&self, plural: &str, delay: Duration) {
        self.shared
            .lock()
            .slow_lists
            .insert(plural.to_string(), delay);
    }

    /// Never answers requests by `token` whose path contains `path` (as the server of a
    /// connection that stalled), until [`ApiServer::unstall`].
    pub(crate) fn stall(&self, token: &str, path: &str) {
        self.shared
            .lock()
            .stalled
            .push((token.to_string(), path.to_string()));
    }

    /// Answers every request again.
    pub(crate) fn unstall(&self) {
        self.shared.lock().stalled.clear();
    }

    /// Carries out writes (POST, PUT, PATCH) by `token` whose path contains `path` at once, and
    /// answers them only after `delay`.
    pub(crate) fn slow_answers(&self, token: &str, path: &str, delay: Duration) {
        self.shared
            .lock()
            .slow_answers
            .push((token.to_string(), path.to_string(), delay));
    }

    /// With `on`, answers every watch with a 410 Gone ERROR event at once.
    pub(crate) fn gone_watches(&self, on: bool) {
        self.shared.lock().gone_watches = on;
    }

    /// Refuses the next `n` status writes with 409 Conflict.
    pub(crate) fn conflict_next_status_writes(&self, n: usize) {
        self.shared.lock().conflicts = n;
    }

    /// Creates an object, or replaces everything but its status and system metadata, as a
    /// user's `kubectl apply` would.
    pub(crate) fn apply(&self, object: Value) -> Value {
        let api_version = object["apiVersion"].as_str().expect("apiVersion");
        let kind = object["kind"].as_str().expect("kind");
        let index =
            resource_of(api_version, kind).unwrap_or_else(|| panic!("unserved kind {kind}"));
        let namespace = namespace_of(index, &object);
        let name = object["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_string();
        let mut state = self.shared.lock();
        let key = (index, namespace.clone(), name);
        let stored = if state.objects.contains_key(&key) {
            state.update(key, object, Write::Object, None)
        } else {
            state.create(index, &namespace, object)
        };
        drop(state);
        self.notify();
        stored.expect("apply succeeds")
    }

    /// Replaces an object's status directly, as another controller would.
    pub(crate) fn set_status(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        status: Value,
    ) {
        let index = resource_of(api_version, kind).expect("served kind");
        let mut state = self.shared.lock();
        let key = (index, scoped(index, namespace), name.to_string());
        state
            .update(key, json!({"status": status}), Write::Status, None)
            .expect("status write succeeds");
        drop(state);
        self.notify();
    }

    /// Deletes an object; false if there was none.
    pub(crate) fn remove(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> bool {
        let index = resource_of(api_version, kind).expect("served kind");
        let mut state = self.shared.lock();
        let removed = state.delete((index, scoped(index, namespace), name.to_string()));
        drop(state);
        self.notify();
        removed.is_some()
    }

    /// One object as stored.
    pub(crate) fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let index = resource_of(api_version, kind)?;
        let state = self.shared.lock();
        state
            .objects
            .get(&(index, scoped(index, namespace), name.to_string()))
            .cloned()
    }

    /// Every stored object of a kind, in namespace then name order.
    pub(crate) fn objects(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let Some(index) = resource_of(api_version, kind) else {
            return Vec::new();
        };
        let state = self.shared.lock();
        state
            .objects
            .iter()
            .filter(|((r, _, _), _)| *r == index)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Every request so far.
    pub(crate) fn requests(&self) -> Vec<Logged> {
        self.shared.lock().requests.clone()
    }

    fn notify(&self) {
        let revision = self.shared.lock().revision;
        self.shared.changed.send_replace(revision);
    }
}

async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

fn scoped(index: usize, namespace: &str) -> String {
    if RESOURCES[index].namespaced {
        namespace.to_string()
    } else {
        String::new()
    }
}

fn namespace_of(index: usize, object: &Value) -> String {
    scoped(
        index,
        object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default"),
    )
}

/// Which part of an object a write may change.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Write {
    Object,
    Status,
}

/// An API error, as the `Status` body and HTTP code the server answers with.
#[derive(Debug)]
struct Failure {
    code: StatusCode,
    reason: &'static str,
    message: String,
}

impl Failure {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Failure {
            code,
            reason,
            message: message.into(),
        }
    }

    fn body(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason,
            "code": self.code.as_u16(),
        })
    }
}

/// Everything outside metadata and status: what `metadata.generation` tracks.
fn spec_of(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            map.remove(k);
        }
    }
    object
}

impl State {
    fn next_revision(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    fn record(&mut self, resource: usize, namespace: &str, kind: &'static str, object: Value) {
        self.history.push(Event {
            revision: self.revision,
            resource,
            namespace: namespace.to_string(),
            kind,
            object,
        });
    }

    fn create(
        &mut self,
        index: usize,
        namespace: &str,
        mut object: Value,
    ) -> Result<Value, Failure> {
        let resource = &RESOURCES[index];
        let Some(name) = object["metadata"]["name"].as_str().map(str::to_string) else {
            return Err(Failure::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "metadata.name is required",
            ));
        };
        let key = (index, namespace.to_string(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(Failure::new(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", resource.plural),
            ));
        }
        let revision = self.next_revision();
        self.uid += 1;
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        object["apiVersion"] = json!(resource.api_version());
        object["kind"] = json!(resource.kind);
        let meta = &mut object["metadata"];
        if resource.namespaced {
            meta["namespace"] = json!(namespace);
        }
        meta["uid"] = json!(format!("00000000-0000-0000-0000-{:012}", self.uid));
        meta["resourceVersion"] = json!(revision.to_string());
        meta["creationTimestamp"] = json!(now());
        if !resource.built_in() {
            meta["generation"] = json!(1);
        }
        if resource.status {
            if let Some(map) = object.as_object_mut() {
                map.remove("status");
            }
        }
        self.objects.insert(key, object.clone());
        self.record(index, namespace, "ADDED", object.clone());
        Ok(object)
    }

    /// Replaces the object (or, for `Write::Status`, its status) with `new`, which may be a
    /// whole object or a merge patch result; `precondition` is the resourceVersion the writer
    /// based its change on.
    fn update(
        &mut self,
        key: Key,
        new: Value,
        write: Write,
        precondition: Option<&str>,
    ) -> Result<Value, Failure> {
        let resource = &RESOURCES[key.0];
        let Some(old) = self.objects.get(&key).cloned() else {
            return Err(Failure::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{} \"{}\" not found", resource.plural, key.2),
            ));
        };
        let current = old["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let stale = precondition.is_some_and(|p| p != current);
        if stale || (write == Write::Status && self.conflicts > 0) {
            if !stale {
                self.conflicts -= 1;
            }
            return Err(Failure::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{}\": the object has been modified; \
                     please apply your changes to the latest version and try again",
                    resource.plural, key.2
                ),
            ));
        }
        let mut next = old.clone();
        match write {
            Write::Status => next["status"] = new["status"].clone(),
            Write::Object => {
                let mut new = new;
                // System metadata stays the server's.
                for field in [
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "resourceVersion",
                    "generation",
                    "namespace",
                    "name",
                ] {
                    new["metadata"][field] = old["metadata"][field].clone();
                }
                if resource.status {
                    new["status"] = old["status"].clone();
                }
                if let Some(map) = new.as_object_mut() {
                    map.retain(|_, v| !v.is_null());
                }
                if let Some(map) = new["metadata"].as_object_mut() {
                    map.retain(|_, v| !v.is_null());
                }
                if spec_of(&new) != spec_of(&old) && !resource.built_in() {
                    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
                    new["metadata"]["generation"] = json!(generation + 1);
                }
                next = new;
            }
        }
        if let Some(map) = next.as_object_mut() {
            if map.get("status").is_some_and(Value::is_null) {
                map.remove("status");
            }
        }
        if next == old {
            return Ok(old);
        }
        let revision = self.next_revision();
        next["metadata"]["resourceVersion"] = json!(revision.to_string());
        // An object being deleted goes once its last finalizer does.
        let finalized = next["metadata"]["finalizers"]
            .as_array()
            .is_none_or(Vec::is_empty);
        if next["metadata"]["deletionTimestamp"].is_string() && finalized {
            self.objects.remove(&key);
            self.record(key.0, &key.1, "DELETED", next.clone());
            return Ok(next);
        }
        self.objects.insert(key.clone(), next.clone());
        self.record(key.0, &key.1, "MODIFIED", next.clone());
        Ok(next)
    }

    /// Deletes an object; one with finalizers is only marked (`deletionTimestamp`), and goes
    /// once they are all removed.
    fn delete(&mut self, key: Key) -> Option<Value> {
        let held = self.objects.get(&key).is_some_and(|o| {
            o["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty())
        });
        if held {
            let mut object = self.objects.get(&key)?.clone();
            if object["metadata"]["deletionTimestamp"].is_string() {
                return Some(object);
            }
            object["metadata"]["deletionTimestamp"] = json!(now());
            let revision = self.next_revision();
            object["metadata"]["resourceVersion"] = json!(revision.to_string());
            self.objects.insert(key.clone(), object.clone());
            self.record(key.0, &key.1, "MODIFIED", object.clone());
            return Some(object);
        }
        let mut object = self.objects.remove(&key)?;
        let revision = self.next_revision();
        object["metadata"]["resourceVersion"] = json!(revision.to_string());
        self.record(key.0, &key.1, "DELETED", object.clone());
        Some(object)
    }
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(map) = target else { return };
    for (k, v) in patch {
        if v.is_null() {
            map.remove(k);
        } else {
            merge(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// The response body: whole, or a stream of watch lines.
enum Body {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }
}

fn respond(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::Full(Some(Bytes::from(body.to_string()))))
        .unwrap()
}

fn fail(failure: Failure) -> Response<Body> {
    respond(failure.code, &failure.body())
}

/// Where a request points.
enum Target {
    Discovery(Value),
    Collection {
        resource: usize,
        namespace: Option<String>,
    },
    Item {
        resource: usize,
        namespace: String,
        name: String,
        status: bool,
    },
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn target(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segments.as_slice() {
        ["version"] => {
            return Some(Target::Discovery(
                json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0"}),
            ))
        }
        ["api"] => {
            return Some(Target::Discovery(
                json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
            ))
        }
        ["apis"] => return Some(Target::Discovery(group_list())),
        ["apis", group] => {
            return group_list()["groups"]
                .as_array()
                .and_then(|g| g.iter().find(|g| g["name"] == *group).cloned())
                .map(|g| Target::Discovery(json!({"kind": "APIGroup", "apiVersion": "v1", "name": g["name"], "versions": g["versions"], "preferredVersion": g["preferredVersion"]})));
        }
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let find = |plural: &str| {
        RESOURCES
            .iter()
            .position(|r| r.group == group && r.version == version && r.plural == plural)
    };
    match rest {
        [] => {
            let resources: Vec<Value> = RESOURCES
                .iter()
                .filter(|r| r.group == group && r.version == version)
                .map(|r| json!({"name": r.plural, "singularName": r.kind.to_lowercase(), "namespaced": r.namespaced, "kind": r.kind,
                                "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}))
                .collect();
            if resources.is_empty() {
                return None;
            }
            let group_version = if group.is_empty() {
                version.to_string()
            } else {
                format!("{group}/{version}")
            };
            Some(Target::Discovery(
                json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
            ))
        }
        ["namespaces", ns, plural] if *plural != "status" && *plural != "finalize" => {
            Some(Target::Collection {
                resource: find(plural).filter(|i| RESOURCES[*i].namespaced)?,
                namespace: Some(ns.to_string()),
            })
        }
        ["namespaces", ns, plural, name] => Some(Target::Item {
            resource: find(plural).filter(|i| RESOURCES[*i].namespaced)?,
            namespace: ns.to_string(),
            name: name.to_string(),
            status: false,
        }),
        ["namespaces", ns, plural, name, "status"] => Some(Target::Item {
            resource: find(plural).filter(|i| RESOURCES[*i].namespaced)?,
            namespace: ns.to_string(),
            name: name.to_string(),
            status: true,
        }),
        [plural] => Some(Target::Collection {
            resource: find(plural)?,
            namespace: None,
        }),
        [plural, name] => Some(Target::Item {
            resource: find(plural).filter(|i| !RESOURCES[*i].namespaced)?,
            namespace: String::new(),
            name: name.to_string(),
            status: false,
        }),
        [plural, name, "status"] => Some(Target::Item {
            resource: find(plural).filter(|i| !RESOURCES[*i].namespaced)?,
            namespace: String::new(),
            name: name.to_string(),
            status: true,
        }),
        _ => None,
    }
}

fn group_list() -> Value {
    let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        let versions = groups.entry(r.group).or_default();
        if !versions.contains(&r.version) {
            versions.push(r.version);
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(name, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
                .collect();
            json!({"name": name, "versions": versions, "preferredVersion": versions[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// A parsed label or field selector: every term must hold.
struct Selector {
    terms: Vec<(String, Option<String>, bool)>,
}

impl Selector {
    /// Parses `k=v`, `k==v`, `k!=v`, `k` and `!k`; set-based terms are refused.
    fn parse(text: &str) -> Result<Selector, String> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if term.contains(" in ") || term.contains(" notin ") || term.contains('(') {
                return Err(format!("set-based selector {term} is not supported here"));
            }
            if let Some((k, v)) = term.split_once("!=") {
                terms.push((k.to_string(), Some(v.to_string()), false));
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                terms.push((k.to_string(), Some(v.to_string()), true));
            } else if let Some(k) = term.strip_prefix('!') {
                terms.push((k.to_string(), None, false));
            } else {
                terms.push((term.to_string(), None, true));
            }
        }
        Ok(Selector { terms })
    }

    fn matches(&self, lookup: impl Fn(&str) -> Option<String>) -> bool {
        self.terms.iter().all(|(k, v, equal)| {
            let actual = lookup(k);
            match v {
                Some(v) => (actual.as_deref() == Some(v.as_str())) == *equal,
                None => actual.is_some() == *equal,
            }
        })
    }
}

/// What a list or watch selects.
struct Filter {
    resource: usize,
    namespace: Option<String>,
    labels: Selector,
    fields: Selector,
}

impl Filter {
    fn from_query(
        resource: usize,
        namespace: Option<String>,
        query: &str,
    ) -> Result<Filter, Failure> {
        let parse = |name| {
            Selector::parse(&query_param(query, name).map(decode).unwrap_or_default())
                .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, "BadRequest", e))
        };
        Ok(Filter {
            resource,
            namespace,
            labels: parse("labelSelector")?,
            fields: parse("fieldSelector")?,
        })
    }

    fn matches(&self, resource: usize, namespace: &str, object: &Value) -> bool {
        resource == self.resource
            && self.namespace.as_deref().is_none_or(|ns| ns == namespace)
            && self
                .labels
                .matches(|k| object["metadata"]["labels"][k].as_str().map(str::to_string))
            && self.fields.matches(|path| {
                let mut v = object;
                for part in path.split('.') {
                    v = &v[part];
                }
                v.as_str().map(str::to_string)
            })
    }
}

async fn handle(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    let token = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    let content_type = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let stalled = {
        let mut state = shared.lock();
        state.requests.push(Logged {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            token: token.clone(),
        });
        state
            .stalled
            .iter()
            .any(|(t, p)| *t == token && path.contains(p.as_str()))
    };
    if stalled {
        // Held until the stall is lifted, then answered as usual.
        while shared
            .lock()
            .stalled
            .iter()
            .any(|(t, p)| *t == token && path.contains(p.as_str()))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let body = match request.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let Some(target) = target(&path) else {
        return fail(Failure::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        ));
    };
    let response = match (target, &method) {
        (Target::Discovery(body), &Method::GET) => Ok(respond(StatusCode::OK, &body)),
        (
            Target::Collection {
                resource,
                namespace,
            },
            &Method::GET,
        ) => {
            let watching = matches!(query_param(&query, "watch"), Some("true" | "1"));
            match Filter::from_query(resource, namespace, &query) {
                Ok(filter) if watching => Ok(start_watch(shared, filter, &query)),
                Ok(filter) => {
                    let plural = RESOURCES[filter.resource].plural;
                    let delay = shared.lock().slow_lists.get(plural).copied();
                    if let Some(delay) = delay {
                        tokio::time::sleep(delay).await;
                    }
                    Ok(list(shared, &filter))
                }
                Err(failure) => Err(failure),
            }
        }
        (
            Target::Collection {
                resource,
                namespace,
            },
            &Method::POST,
        ) => parse_body(&body, &content_type).and_then(|object| {
            let namespace = namespace
                .map(|ns| scoped(resource, &ns))
                .unwrap_or_default();
            let created = shared.lock().create(resource, &namespace, object);
            created.map(|o| respond(StatusCode::CREATED, &o))
        }),
        (
            Target::Item {
                resource,
                namespace,
                name,
                ..
            },
            &Method::GET,
        ) => {
            let state = shared.lock();
            match state
                .objects
                .get(&(resource, scoped(resource, &namespace), name.clone()))
            {
                Some(o) => Ok(respond(StatusCode::OK, o)),
                None => Err(Failure::new(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{} \"{name}\" not found", RESOURCES[resource].plural),
                )),
            }
        }
        (
            Target::Item {
                resource,
                namespace,
                name,
                status,
            },
            &Method::PUT,
        ) => parse_body(&body, &content_type).and_then(|object| {
            let precondition = object["metadata"]["resourceVersion"]
                .as_str()
                .map(str::to_string);
            let write = if status { Write::Status } else { Write::Object };
            let key = (resource, scoped(resource, &namespace), name);
            let updated = shared
                .lock()
                .update(key, object, write, precondition.as_deref());
            updated.map(|o| respond(StatusCode::OK, &o))
        }),
        (
            Target::Item {
                resource,
                namespace,
                name,
                status,
            },
            &Method::PATCH,
        ) => parse_body(&body, &content_type).and_then(|patch| {
            let key = (resource, scoped(resource, &namespace), name);
            let mut state = shared.lock();
            let Some(mut object) = state.objects.get(&key).cloned() else {
                return Err(Failure::new(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{} \"{}\" not found", RESOURCES[resource].plural, key.2),
                ));
            };
            let precondition = patch["metadata"]["resourceVersion"]
                .as_str()
                .map(str::to_string);
            merge(&mut object, &patch);
            let write = if status { Write::Status } else { Write::Object };
            state
                .update(key, object, write, precondition.as_deref())
                .map(|o| respond(StatusCode::OK, &o))
        }),
        (
            Target::Item {
                resource,
                namespace,
                name,
                status: false,
            },
            &Method::DELETE,
        ) => {
            let deleted =
                shared
                    .lock()
                    .delete((resource, scoped(resource, &namespace), name.clone()));
            match deleted {
                Some(o) => Ok(respond(StatusCode::OK, &o)),
                None => Err(Failure::new(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{} \"{name}\" not found", RESOURCES[resource].plural),
                )),
            }
        }
        _ => Err(Failure::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} is not supported on {path}"),
        )),
    };
    let write = matches!(method, Method::POST | Method::PUT | Method::PATCH);
    let slow = shared
        .lock()
        .slow_answers
        .iter()
        .find(|(t, p, _)| write && *t == token && path.contains(p.as_str()))
        .map(|(_, _, delay)| *delay);
    let revision = shared.lock().revision;
    shared.changed.send_if_modified(|r| {
        let moved = *r != revision;
        *r = revision;
        moved
    });
    if let Some(delay) = slow {
        tokio::time::sleep(delay).await;
    }
    response.unwrap_or_else(fail)
}

fn parse_body(body: &[u8], content_type: &str) -> Result<Value, Failure> {
    let parsed = if content_type.starts_with("application/apply-patch+yaml") {
        serde_yaml::from_slice::<Value>(body).map_err(|e| e.to_string())
    } else if content_type.starts_with("application/json-patch+json") {
        Err("JSON patches are not supported by this server".to_string())
    } else {
        serde_json::from_slice::<Value>(body).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| {
        Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            e,
        )
    })
}

fn list(shared: &Shared, filter: &Filter) -> Response<Body> {
    let state = shared.lock();
    let resource = &RESOURCES[filter.resource];
    let items: Vec<Value> = state
        .objects
        .iter()
        .filter(|((r, ns, _), o)| filter.matches(*r, ns, o))
        .map(|(_, o)| {
            let mut o = o.clone();
            if resource.built_in() {
                if let Some(map) = o.as_object_mut() {
                    map.remove("apiVersion");
                    map.remove("kind");
                }
            }
            o
        })
        .collect();
    respond(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", resource.kind),
            "apiVersion": resource.api_version(),
            "metadata": {"resourceVersion": state.revision.to_string()},
            "items": items,
        }),
    )
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

fn gone(since: u64, compacted: u64) -> Bytes {
    line(
        "ERROR",
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {since} ({compacted})"),
            "reason": "Expired", "code": 410,
        }),
    )
}

fn start_watch(shared: &Arc<Shared>, filter: Filter, query: &str) -> Response<Body> {
    let requested = query_param(query, "resourceVersion").unwrap_or("");
    let bookmarks = query_param(query, "allowWatchBookmarks") == Some("true");
    let timeout = query_param(query, "timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    let shared = shared.clone();
    let mut changed = shared.changed.subscribe();
    let initial: Vec<Bytes>;
    let mut seen: u64;
    {
        let state = shared.lock();
        match requested.parse::<u64>() {
            // "" and "0": the current objects as ADDED, then changes from now.
            Err(_) | Ok(0) => {
                initial = state
                    .objects
                    .iter()
                    .filter(|((r, ns, _), o)| filter.matches(*r, ns, o))
                    .map(|(_, o)| line("ADDED", o))
                    .collect();
                seen = state.revision;
            }
            _ if state.gone_watches => {
                initial = vec![gone(state.revision, state.revision + 1)];
                seen = u64::MAX;
            }
            Ok(since) if since + 1 < state.compacted => {
                initial = vec![gone(since, state.compacted)];
                seen = u64::MAX;
            }
            Ok(since) => {
                initial = Vec::new();
                seen = since;
            }
        }
    }
    let resource = &RESOURCES[filter.resource];
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        for l in initial {
            if tx.send(l).await.is_err() {
                return;
            }
        }
        if seen == u64::MAX {
            return;
        }
        loop {
            let (lines, revision) = {
                let state = shared.lock();
                if seen + 1 < state.compacted {
                    (vec![gone(seen, state.compacted)], u64::MAX)
                } else {
                    let lines = state
                        .history
                        .iter()
                        .filter(|e| {
                            e.revision > seen && filter.matches(e.resource, &e.namespace, &e.object)
                        })
                        .map(|e| line(e.kind, &e.object))
                        .collect::<Vec<_>>();
                    (lines, state.revision)
                }
            };
            for l in lines {
                if tx.send(l).await.is_err() {
                    return;
                }
            }
            if revision == u64::MAX {
                return;
            }
            seen = revision;
            tokio::select! {
                _ = changed.changed() => {}
                _ = tokio::time::sleep(shared.bookmark_interval) => {
                    if bookmarks {
                        let mark = json!({"kind": resource.kind, "apiVersion": resource.api_version(),
                                          "metadata": {"resourceVersion": seen.to_string()}});
                        if tx.send(line("BOOKMARK", &mark)).await.is_err() {
                            return;
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::Stream(rx))
        .unwrap()
}
