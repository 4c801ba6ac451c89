//! One list-then-watch loop: the objects of one kind, in one namespace or in all, mirrored into
//! the [`Store`].
//!
//! The protocol is the one client-go's reflector follows
//! (<https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes>):
//! a LIST returns the objects and the `resourceVersion` they are current at; a WATCH from that
//! version streams every later change; a watch that ends (server timeout, dropped connection,
//! API server restart) is opened again from the last version seen in an event or a bookmark;
//! and when the server answers that this version is older than the history it keeps (410 Gone,
//! as a status or as an ERROR event) the loop lists again and replaces its objects wholesale.
//!
//! This is `kube::runtime::watcher`'s state machine, written out over `kube::Client`. The
//! runtime's watcher hands events out as a `futures` `Stream`, and polling one needs the
//! `futures` crate, which this crate does not depend on directly. Writing the loop out has two
//! benefits besides: a 410 answered as an HTTP status when the watch opens also re-lists (the
//! runtime's watcher retries that forever at the stale version), and the retry delays are our
//! short [`Backoff`](super::Backoff).

use std::collections::BTreeSet;
use std::time::Duration;

use http_body_util::BodyExt;
use kube::api::{Api, DynamicObject, ListParams, WatchParams};
use kube::core::{ApiResource, Request, Resource as _, WatchEvent};
use kube::Client;
use serde_json::{Map, Value};
use tokio::sync::{oneshot, watch};

use super::{bounded, Backoff, Resource, LIST_TIMEOUT, REQUEST_TIMEOUT};
use crate::controller::status_writer::{writes_status, Seen, StatusCache};
use crate::controller::{Object, ObjectKey, Store};

/// How long the server keeps one watch open before we open the next (kube's and client-go's
/// order of magnitude: long enough to be cheap, short enough to rebalance across API servers).
const WATCH_TIMEOUT_SECS: u32 = 290;

/// A watch that delivers nothing, not even a bookmark, for this long past its timeout is taken
/// for a dead connection.
const IDLE_MARGIN: Duration = Duration::from_secs(10);

/// How often a kind the server does not serve (its CRD is not installed) is looked for again.
const NOT_SERVED_RETRY: Duration = Duration::from_secs(30);

/// List pages: big enough that small clusters list in one request, small enough that a large
/// one does not hold the API server for long.
const PAGE_SIZE: u32 = 500;

/// A watch that ends normally sooner than this after opening counts as a failure for the
/// backoff, so that a server that accepts and at once closes watches is not hammered.
const SHORT_WATCH: Duration = Duration::from_secs(1);

/// The `kubectl apply` annotation: a copy of the whole object, never read by the compiler.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// One resource's list-then-watch loop.
pub(super) struct Watch {
    client: Client,
    resource: &'static Resource,
    namespace: Option<String>,
    store: Store,
    statuses: StatusCache,
    /// What this loop has put into the store, so that a re-list can remove what is gone without
    /// touching other namespaces' objects.
    known: BTreeSet<ObjectKey>,
    /// The version of the resource the server was found to serve.
    served: Option<ApiResource>,
    /// The last error reported, so that a retry loop warns once per distinct problem.
    last_error: Option<String>,
}

enum Listed {
    Objects {
        objects: Vec<Object>,
        version: String,
    },
    NotServed,
}

/// Why a watch stream ended.
enum Ended {
    /// The server closed it, normally at its timeout: watch again from the last version.
    Closed,
    /// The version is older than the server's history: list again.
    Gone,
    /// The resource is no longer served (its CRD was removed): list again, which finds out.
    NotServed,
    /// The request or the connection failed: watch again from the last version, after a delay.
    Failed(String),
}

enum State {
    Listed(String),
    Relist,
    NotServed,
}

impl Watch {
    pub(super) fn new(
        client: Client,
        resource: &'static Resource,
        namespace: Option<String>,
        store: Store,
        statuses: StatusCache,
    ) -> Self {
        Watch {
            client,
            resource,
            namespace,
            store,
            statuses,
            known: BTreeSet::new(),
            served: None,
            last_error: None,
        }
    }

    /// Lists until the first list succeeds, hands its objects to `initial`, waits for `synced`
    /// (every other watch has listed too and the store holds it all), then follows changes
    /// forever.
    pub(super) async fn run(
        mut self,
        initial: oneshot::Sender<Vec<Object>>,
        mut synced: watch::Receiver<bool>,
    ) {
        let mut backoff = Backoff::new();
        let (objects, mut state) = loop {
            match self.list().await {
                Ok(Listed::Objects { objects, version }) => {
                    break (objects, State::Listed(version))
                }
                Ok(Listed::NotServed) => break (Vec::new(), State::NotServed),
                Err(err) => {
                    self.report_error("first list", &err.to_string());
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        };
        self.known = objects.iter().map(|o| o.key.clone()).collect();
        tracing::debug!(objects = objects.len(), "listed");
        if initial.send(objects).is_err() {
            return;
        }
        let _ = synced.wait_for(|done| *done).await;
        backoff.reset();
        loop {
            state = match state {
                State::Listed(mut version) => {
                    let opened = tokio::time::Instant::now();
                    match self.watch(&mut version).await {
                        Ended::Closed => {
                            if opened.elapsed() < SHORT_WATCH {
                                tokio::time::sleep(backoff.next_delay()).await;
                            } else {
                                backoff.reset();
                            }
                            State::Listed(version)
                        }
                        Ended::Gone => {
                            crate::dataplane::metrics::global()
                                .watch_restarts
                                .with_label_values(&[self.resource.kind.as_str()])
                                .inc();
                            // A server that answers every watch 410 (its history compacted
                            // faster than a list takes, a proxy in between that fails
                            // watches) would otherwise be listed again in a tight loop.
                            let short = opened.elapsed() < SHORT_WATCH;
                            if short {
                                tracing::debug!(
                                    resource_version = %version,
                                    "resource version expired (410 Gone) as the watch opened; listing again after a delay"
                                );
                                tokio::time::sleep(backoff.next_delay()).await;
                            } else {
                                backoff.reset();
                                tracing::info!(
                                    resource_version = %version,
                                    "resource version expired (410 Gone); listing again"
                                );
                            }
                            State::Relist
                        }
                        Ended::NotServed => State::Relist,
                        Ended::Failed(err) => {
                            crate::dataplane::metrics::global()
                                .watch_restarts
                                .with_label_values(&[self.resource.kind.as_str()])
                                .inc();
                            self.report_error("watch", &err);
                            tokio::time::sleep(backoff.next_delay()).await;
                            State::Listed(version)
                        }
                    }
                }
                State::Relist | State::NotServed => {
                    if matches!(state, State::NotServed) {
                        tokio::time::sleep(NOT_SERVED_RETRY).await;
                    }
                    match self.list().await {
                        Ok(Listed::Objects { objects, version }) => {
                            self.replace(objects);
                            // The backoff is reset by a watch that lasts, not by a list: a
                            // list that succeeds says nothing of whether the watch after it
                            // will.
                            self.recovered();
                            State::Listed(version)
                        }
                        Ok(Listed::NotServed) => {
                            self.replace(Vec::new());
                            State::NotServed
                        }
                        Err(err) => {
                            self.report_error("list", &err.to_string());
                            tokio::time::sleep(backoff.next_delay()).await;
                            State::Relist
                        }
                    }
                }
            };
        }
    }

    /// Warns once per distinct problem; repeats of it while retrying are debug.
    fn report_error(&mut self, during: &str, err: &str) {
        if self.last_error.as_deref() == Some(err) {
            tracing::debug!(error = %err, "{during} failed again; retrying");
        } else {
            // Before the first list there is no configuration yet to keep serving.
            let meanwhile = if during == "first list" {
                "nothing is served before every first list is in"
            } else {
                "the last configuration keeps serving"
            };
            tracing::warn!(error = %err, "{during} failed; {meanwhile} while this retries");
            self.last_error = Some(err.to_string());
        }
    }

    fn recovered(&mut self) {
        if self.last_error.take().is_some() {
            tracing::info!("watch recovered");
        }
    }

    fn api(&self, resource: &ApiResource) -> Api<DynamicObject> {
        match &self.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, resource),
            None => Api::all_with(self.client.clone(), resource),
        }
    }

    /// Lists every object, page by page, at the newest version the server serves.
    async fn list(&mut self) -> Result<Listed, kube::Error> {
        let mut candidates: Vec<ApiResource> = self.served.iter().cloned().collect();
        candidates.extend(
            self.resource
                .versions
                .iter()
                .map(|v| self.resource.api_resource(v))
                .filter(|r| Some(r) != self.served.as_ref()),
        );
        for resource in candidates {
            let api = self.api(&resource);
            let mut params = ListParams {
                field_selector: self.resource.fields.map(str::to_string),
                limit: Some(PAGE_SIZE),
                ..ListParams::default()
            };
            let mut objects = Vec::new();
            let version = loop {
                let page = match bounded(LIST_TIMEOUT, api.list(&params)).await {
                    Ok(page) => page,
                    // Not served at this version (or at all): the CRD is not installed.
                    Err(kube::Error::Api(s)) if s.code == 404 && objects.is_empty() => break None,
                    Err(err) => return Err(err),
                };
                for item in page.items {
                    objects.extend(self.object(&resource, item));
                }
                match page.metadata.continue_.filter(|c| !c.is_empty()) {
                    Some(token) => params.continue_token = Some(token),
                    None => break Some(page.metadata.resource_version.unwrap_or_default()),
                }
            };
            if let Some(version) = version {
                if self.served.as_ref() != Some(&resource) {
                    tracing::debug!(api_version = %resource.api_version, "served");
                }
                self.served = Some(resource);
                return Ok(Listed::Objects { objects, version });
            }
        }
        if self.served.take().is_some() || self.last_error.is_none() {
            tracing::info!(
                "not served by the API server (CRD not installed?); looking again every {}s",
                NOT_SERVED_RETRY.as_secs()
            );
            self.last_error = Some("not served".to_string());
        }
        Ok(Listed::NotServed)
    }

    /// Watches from `version`, applying events to the store and moving `version` along, until
    /// the stream ends.
    async fn watch(&mut self, version: &mut String) -> Ended {
        let Some(resource) = self.served.clone() else {
            return Ended::NotServed;
        };
        let params = WatchParams {
            field_selector: self.resource.fields.map(str::to_string),
            timeout: Some(WATCH_TIMEOUT_SECS),
            bookmarks: true,
            ..WatchParams::default()
        };
        let url = DynamicObject::url_path(&resource, self.namespace.as_deref());
        let request = match Request::new(url).watch(&params, version) {
            Ok(request) => request,
            Err(err) => return Ended::Failed(err.to_string()),
        };
        let response = match bounded(
            REQUEST_TIMEOUT,
            self.client.send(request.map(kube::client::Body::from)),
        )
        .await
        {
            Ok(response) => response,
            Err(err) => return Ended::Failed(err.to_string()),
        };
        let code = response.status();
        if !code.is_success() {
            let body = tokio::time::timeout(REQUEST_TIMEOUT, response.into_body().collect())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let status: Option<kube::core::Status> = serde_json::from_slice(&body).ok();
            if code == http::StatusCode::GONE || status.as_ref().is_some_and(|s| s.code == 410) {
                return Ended::Gone;
            }
            if code == http::StatusCode::NOT_FOUND {
                return Ended::NotServed;
            }
            let message = status.map(|s| s.message).unwrap_or_default();
            return Ended::Failed(format!("watch answered {code}: {message}"));
        }
        self.recovered();
        let idle = Duration::from_secs(u64::from(WATCH_TIMEOUT_SECS)) + IDLE_MARGIN;
        let mut body = response.into_body();
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let frame = match tokio::time::timeout(idle, body.frame()).await {
                Err(_) => return Ended::Failed("watch went silent; reconnecting".to_string()),
                Ok(None) => return Ended::Closed,
                Ok(Some(Err(err))) => return Ended::Failed(err.to_string()),
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if let Some(ended) = self.event(&resource, line.trim_ascii(), version) {
                    return ended;
                }
            }
        }
    }

    /// Applies one watch event line; returns why the stream must end, if it must.
    fn event(
        &mut self,
        resource: &ApiResource,
        line: &[u8],
        version: &mut String,
    ) -> Option<Ended> {
        if line.is_empty() {
            return None;
        }
        let event = match serde_json::from_slice::<WatchEvent<DynamicObject>>(line) {
            Ok(event) => event,
            Err(err) => return Some(Ended::Failed(format!("undecodable watch event: {err}"))),
        };
        match event {
            WatchEvent::Added(object) | WatchEvent::Modified(object) => {
                if let Some(v) = &object.metadata.resource_version {
                    version.clone_from(v);
                }
                if let Some(object) = self.object(resource, object) {
                    self.known.insert(object.key.clone());
                    self.store.upsert(object);
                }
            }
            WatchEvent::Deleted(object) => {
                if let Some(v) = &object.metadata.resource_version {
                    version.clone_from(v);
                }
                let key = ObjectKey::new(
                    self.resource.kind,
                    object.metadata.namespace.as_deref().unwrap_or_default(),
                    object.metadata.name.as_deref().unwrap_or_default(),
                );
                self.statuses.forget(&key);
                self.known.remove(&key);
                self.store.delete(&key);
            }
            WatchEvent::Bookmark(bookmark) => {
                version.clone_from(&bookmark.metadata.resource_version);
            }
            WatchEvent::Error(status) if status.code == 410 => return Some(Ended::Gone),
            WatchEvent::Error(status) => {
                return Some(Ended::Failed(format!(
                    "watch error {}: {}",
                    status.code, status.message
                )))
            }
        }
        None
    }

    /// Replaces everything this loop holds with a fresh list, as one store revision.
    fn replace(&mut self, objects: Vec<Object>) {
        let keys: BTreeSet<ObjectKey> = objects.iter().map(|o| o.key.clone()).collect();
        let removed: Vec<ObjectKey> = self.known.difference(&keys).cloned().collect();
        for key in &removed {
            self.statuses.forget(key);
        }
        if !removed.is_empty() {
            tracing::info!(removed = removed.len(), "objects deleted while unwatched");
        }
        self.store.apply(&removed, objects);
        self.known = keys;
    }

    /// Turns an API object into a store object, recording its status on the way; `None` (with
    /// a warning) for an object without a name, which the API server never sends.
    fn object(&self, resource: &ApiResource, object: DynamicObject) -> Option<Object> {
        let resource_version = object.metadata.resource_version.clone().unwrap_or_default();
        let generation = object.metadata.generation.unwrap_or(1);
        let uid = object.metadata.uid.clone().unwrap_or_default();
        let finalizers = object.metadata.finalizers.clone().unwrap_or_default();
        let Ok(Value::Object(mut doc)) = serde_json::to_value(object) else {
            return None;
        };
        // List items of built-in kinds come without apiVersion and kind.
        for (field, value) in [
            ("apiVersion", &resource.api_version),
            ("kind", &resource.kind),
        ] {
            if !doc.get(field).is_some_and(Value::is_string) {
                doc.insert(field.to_string(), Value::String(value.clone()));
            }
        }
        let status = strip(self.resource.kind, &mut doc);
        let object = match Object::from_document(Value::Object(doc)) {
            Ok(Some(object)) => object,
            Ok(None) => return None,
            Err(err) => {
                tracing::warn!(error = %err, "object skipped");
                return None;
            }
        };
        if writes_status(object.key.kind) {
            self.statuses.record(
                object.key.clone(),
                Seen {
                    resource: resource.clone(),
                    resource_version,
                    generation,
                    uid,
                    status: status.unwrap_or(Value::Null),
                    finalizers,
                },
            );
        }
        Some(object)
    }
}

/// Removes what the compiler never reads and returns the `status` taken out. A Service keeps
/// `status.loadBalancer`: the gateway's own Service's is what Gateways report as their
/// addresses. Services' status is never ours to write, so keeping it causes no recompile on our
/// writes.
fn strip(kind: crate::controller::Kind, doc: &mut Map<String, Value>) -> Option<Value> {
    let status = doc.remove("status");
    if kind == crate::controller::Kind::Service {
        if let Some(load_balancer) = status.as_ref().map(|s| &s["loadBalancer"]) {
            if !load_balancer.is_null() {
                doc.insert(
                    "status".to_string(),
                    serde_json::json!({ "loadBalancer": load_balancer }),
                );
            }
        }
    }
    if kind == crate::controller::Kind::Namespace {
        doc.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata"));
    }
    if let Some(Value::Object(meta)) = doc.get_mut("metadata") {
        meta.remove("managedFields");
        meta.remove("resourceVersion");
        if let Some(Value::Object(annotations)) = meta.get_mut("annotations") {
            annotations.remove(LAST_APPLIED);
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::Kind;
    use serde_json::json;

    #[test]
    fn stripping_keeps_what_the_compiler_reads_and_returns_the_status() {
        let mut doc = json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {
                "name": "a", "labels": {"team": "x"}, "resourceVersion": "7",
                "managedFields": [{}],
                "annotations": {LAST_APPLIED: "{}", "keep": "me"}
            },
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"}
        });
        let map = doc.as_object_mut().unwrap();
        let status = strip(Kind::Namespace, map);
        assert_eq!(status, Some(json!({"phase": "Active"})));
        assert_eq!(
            doc,
            json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "a", "labels": {"team": "x"}, "annotations": {"keep": "me"}}
            })
        );
    }

    #[test]
    fn a_service_keeps_its_load_balancer_status() {
        let mut doc = json!({
            "metadata": {"name": "portcullis", "resourceVersion": "4"},
            "spec": {"type": "LoadBalancer"},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}, "conditions": []}
        });
        strip(Kind::Service, doc.as_object_mut().unwrap());
        assert_eq!(
            doc["status"],
            json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}})
        );
        let mut without = json!({"metadata": {"name": "s"}, "spec": {}});
        strip(Kind::Service, without.as_object_mut().unwrap());
        assert_eq!(without.get("status"), None);
    }

    #[test]
    fn stripping_a_route_keeps_its_spec() {
        let mut doc = json!({
            "metadata": {"name": "r", "generation": 3, "resourceVersion": "9"},
            "spec": {"parentRefs": [{"name": "gw"}]},
            "status": {"parents": []}
        });
        strip(Kind::HttpRoute, doc.as_object_mut().unwrap());
        assert_eq!(
            doc,
            json!({"metadata": {"name": "r", "generation": 3}, "spec": {"parentRefs": [{"name": "gw"}]}})
        );
    }
}
