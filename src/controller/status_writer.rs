//! The status writer: the compiler's conditions, written back to the API server.
//!
//! Each new [`StatusReport`] is compared with the `status` the objects have now (kept in a
//! [`StatusCache`] by the watches), and only objects whose status differs are written, with a
//! JSON merge patch on the `/status` subresource. The patch carries the `resourceVersion` the
//! comparison was made against, so that the API server refuses it (409 Conflict) if anyone wrote
//! the object since; the writer then reads the object again and recomputes.
//!
//! What is ours to write follows the Gateway API spec:
//!
//! - GatewayClass and Gateway: the whole status (conditions, listeners, addresses).
//! - Routes: one `status.parents[]` entry per parentRef of ours, marked with our
//!   `controllerName`; entries of other controllers are left as they are (GEP-1364, and the
//!   `RouteParentStatus` documentation).
//! - BackendTLSPolicy: likewise one `status.ancestors[]` entry per Gateway of ours whose routes
//!   use the policy (`PolicyAncestorStatus`).
//! - A process scoped to one Gateway (`--gateway`) owns, of the entries marked with our
//!   `controllerName`, only those whose reference is its Gateway: the process serving another
//!   Gateway writes the others ([`Owner`]). Entries keep their place in the list, so that two
//!   processes writing one route agree on its order.
//!
//! The compiler reports only routes with a parentRef to one of our Gateways, and only policies
//! that such routes use. A route edited to leave our Gateways (or a policy no route of ours
//! uses any more) is therefore missing from the report, yet still carries the entry we wrote
//! earlier. So the writer also goes through the objects it has seen: each one that the report
//! leaves out but that holds an entry of ours gets that entry removed ([`stale_entries`]). Only
//! those objects are written; the rest of the cluster's routes are left untouched.
//!
//! A condition whose `status` did not change keeps its `lastTransitionTime`, as `metav1.Condition`
//! asks; the compiler stamps every condition with the compile time, so the times are carried
//! over here. Only the elected leader writes ([`leader`](super::leader)); on becoming leader it
//! compares everything, which repairs whatever the previous leader left undone. A write that
//! makes a condition report a problem it did not report before also records a Warning Event
//! ([`events`]).
//!
//! The writer knows nothing about routing: it moves JSON that the compiler shaped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use kube::Client;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use super::events::{self, Events};
use super::kubernetes::{bounded, Backoff, REQUEST_TIMEOUT};
use super::{Kind, ObjectKey};
use crate::routing::status::carry_times;
use crate::routing::{ObjectStatus, StatusReport};

/// The field manager named in our writes.
pub const FIELD_MANAGER: &str = "portcullis";

/// How many times one object is re-read and re-patched after conflicts before the writer moves
/// on (it comes back to the object on the next report or retry).
const CONFLICT_ATTEMPTS: usize = 3;

/// Whether the gateway writes the status of objects of this kind.
pub fn writes_status(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::GatewayClass
            | Kind::Gateway
            | Kind::HttpRoute
            | Kind::GrpcRoute
            | Kind::TlsRoute
            | Kind::BackendTlsPolicy
    )
}

/// What the API server last told us about one object whose status we write.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    /// The resource (group, version, plural) the object was read through.
    pub resource: ApiResource,
    /// `metadata.resourceVersion`.
    pub resource_version: String,
    /// `metadata.generation`.
    pub generation: i64,
    /// `metadata.uid`, which Events name the object by.
    pub uid: String,
    /// `status`, or null.
    pub status: Value,
    /// `metadata.finalizers`.
    pub finalizers: Vec<String>,
}

impl Seen {
    fn from_object(resource: ApiResource, object: &DynamicObject) -> Self {
        Seen {
            resource,
            resource_version: object.metadata.resource_version.clone().unwrap_or_default(),
            generation: object.metadata.generation.unwrap_or(1),
            uid: object.metadata.uid.clone().unwrap_or_default(),
            status: object.data.get("status").cloned().unwrap_or(Value::Null),
            finalizers: object.metadata.finalizers.clone().unwrap_or_default(),
        }
    }
}

/// The finalizer that holds back the deletion of a GatewayClass while Gateways name it (spec:
/// GatewayClass, "implementations SHOULD add the gateway-exists-finalizer"): deleting a class
/// in use would otherwise stop its Gateways' traffic at once.
pub const GATEWAY_EXISTS_FINALIZER: &str = "gateway-exists-finalizer.gateway.networking.k8s.io";

/// The status of every object of a [`writes_status`] kind, as last seen. Clones share contents.
#[derive(Clone)]
pub struct StatusCache {
    inner: Arc<Mutex<HashMap<ObjectKey, Seen>>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Default for StatusCache {
    fn default() -> Self {
        Self::new()
    }
}

impl StatusCache {
    /// An empty cache.
    pub fn new() -> Self {
        StatusCache {
            inner: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ObjectKey, Seen>> {
        // Plain data: a panic elsewhere leaves nothing half-written worth stopping for.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an object as seen; wakes the writer when its status changed, so that a status
    /// someone else overwrote is put right.
    pub fn record(&self, key: ObjectKey, seen: Seen) {
        let status_changed = {
            let mut inner = self.lock();
            let changed = inner.get(&key).is_none_or(|old| old.status != seen.status);
            inner.insert(key, seen);
            changed
        };
        if status_changed {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// Forgets a deleted object.
    pub fn forget(&self, key: &ObjectKey) {
        self.lock().remove(key);
    }

    /// The last seen state of one object.
    pub fn get(&self, key: &ObjectKey) -> Option<Seen> {
        self.lock().get(key).cloned()
    }

    /// A receiver that changes whenever a recorded status does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The objects for which `keep` holds, as last seen.
    fn select(&self, keep: impl Fn(&ObjectKey, &Seen) -> bool) -> Vec<(ObjectKey, Seen)> {
        self.lock()
            .iter()
            .filter(|(key, seen)| keep(key, seen))
            .map(|(key, seen)| (key.clone(), seen.clone()))
            .collect()
    }
}

/// Writes each new report while `leading` is true, until the report sender goes away.
pub async fn run(
    client: Client,
    cache: StatusCache,
    mut reports: watch::Receiver<Arc<StatusReport>>,
    mut leading: watch::Receiver<bool>,
    owner: Owner,
    events: Events,
) {
    let writer = Writer {
        client,
        cache: cache.clone(),
        owner,
        events,
    };
    let mut statuses = cache.subscribe();
    // The channel opens on an empty placeholder, not on a compile: written as a report, it
    // would make every entry of ours look stale. Wait for the first compile.
    if reports.changed().await.is_err() {
        return;
    }
    let mut backoff = Backoff::new();
    let mut failing = false;
    loop {
        let mut retry: Option<Instant> = None;
        let leader = *leading.borrow_and_update();
        crate::dataplane::metrics::global()
            .leader
            .set(i64::from(leader));
        if leader {
            let report = reports.borrow_and_update().clone();
            statuses.borrow_and_update();
            match writer.write(&report, &leading).await {
                Some((failed, err)) => {
                    // Said once per outage, not on every retry.
                    if failing {
                        tracing::debug!(failed, error = %err, "status writes failed again");
                    } else {
                        tracing::warn!(failed, error = %err, "status writes failed; retrying");
                    }
                    failing = true;
                    retry = Some(Instant::now() + backoff.next_delay());
                }
                None => {
                    if std::mem::take(&mut failing) {
                        tracing::info!("status writes succeed again");
                    }
                    backoff.reset();
                }
            }
        }
        tokio::select! {
            changed = reports.changed() => if changed.is_err() { return },
            changed = leading.changed() => if changed.is_err() { return },
            _ = statuses.changed() => {}
            _ = tokio::time::sleep_until(retry.unwrap_or_else(Instant::now)), if retry.is_some() => {}
        }
    }
}

struct Writer {
    client: Client,
    cache: StatusCache,
    owner: Owner,
    events: Events,
}

enum Outcome {
    Unchanged,
    Written,
    Skipped,
}

impl Writer {
    /// Writes what differs; returns how many writes failed and the last error, if any did.
    async fn write(
        &self,
        report: &StatusReport,
        leading: &watch::Receiver<bool>,
    ) -> Option<(usize, kube::Error)> {
        let started = std::time::Instant::now();
        let (mut written, mut failed) = (0usize, 0usize);
        let mut last_error = None;
        let stale = stale_entries(&self.cache, report, &self.owner);
        let reported = report
            .objects
            .iter()
            .map(|o| o.as_ref())
            .filter(|o| writes_status(o.kind));
        for object in reported.chain(&stale) {
            if !*leading.borrow() {
                break;
            }
            let writes = &crate::dataplane::metrics::global().status_writes;
            match self.write_one(object).await {
                Ok(Outcome::Written) => {
                    written += 1;
                    writes.with_label_values(&["ok"]).inc();
                }
                Ok(Outcome::Unchanged | Outcome::Skipped) => {}
                Err(err) => {
                    failed += 1;
                    writes.with_label_values(&["failed"]).inc();
                    tracing::debug!(object = %format_args!("{} {}/{}", object.kind, object.namespace, object.name), error = %err, "status write failed");
                    last_error = Some(err);
                }
            }
        }
        if *leading.borrow() {
            if let Err(err) = self.keep_finalizers(report).await {
                failed += 1;
                last_error = Some(err);
            }
        }
        if written > 0 {
            tracing::info!(
                written,
                ms = started.elapsed().as_millis() as u64,
                "status written"
            );
        }
        last_error.map(|err| (failed, err))
    }

    /// Puts [`GATEWAY_EXISTS_FINALIZER`] on each of our GatewayClasses that a Gateway names,
    /// and takes it off those that none names any more, so that a class in use is deleted only
    /// once its Gateways are. Another controller's class is left alone: the finalizer's name is
    /// the spec's, not ours, and that controller may hold it there.
    ///
    /// Only a process that watches every namespace does this. One limited by
    /// `--watch-namespaces` sees only some of the Gateways: two such processes sharing a class
    /// would put the finalizer on and take it off by turns, and one alone would take it off
    /// while a Gateway it cannot see still names the class.
    async fn keep_finalizers(&self, report: &StatusReport) -> Result<(), kube::Error> {
        if !self.owner.sees_every_gateway {
            return Ok(());
        }
        let ours: HashSet<&str> = report
            .objects
            .iter()
            .filter(|o| o.kind == Kind::GatewayClass)
            .map(|o| o.name.as_str())
            .collect();
        let classes = self
            .cache
            .select(|key, _| key.kind == Kind::GatewayClass && ours.contains(key.name.as_str()));
        let mut outcome = Ok(());
        let writes = &crate::dataplane::metrics::global().status_writes;
        for (key, seen) in classes {
            let wanted = report.classes_in_use.contains(&key.name);
            let held = seen
                .finalizers
                .iter()
                .any(|f| f == GATEWAY_EXISTS_FINALIZER);
            if wanted == held {
                continue;
            }
            let mut finalizers = seen.finalizers.clone();
            if wanted {
                finalizers.push(GATEWAY_EXISTS_FINALIZER.to_string());
            } else {
                finalizers.retain(|f| f != GATEWAY_EXISTS_FINALIZER);
            }
            let patch = json!({
                "metadata": {"resourceVersion": seen.resource_version, "finalizers": finalizers},
            });
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.to_string()),
                ..PatchParams::default()
            };
            let api = self.api(&seen.resource, "", Kind::GatewayClass);
            match bounded(
                REQUEST_TIMEOUT,
                api.patch(&key.name, &params, &Patch::Merge(&patch)),
            )
            .await
            {
                Ok(updated) => {
                    writes.with_label_values(&["ok"]).inc();
                    tracing::info!(class = %key.name, in_use = wanted, "GatewayClass finalizer {}", if wanted { "added" } else { "removed" });
                    self.cache
                        .record(key, Seen::from_object(seen.resource, &updated));
                }
                // Changed or deleted meanwhile: the watch brings the news, and the next pass
                // looks again.
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
                Err(err) => {
                    writes.with_label_values(&["failed"]).inc();
                    outcome = Err(err);
                }
            }
        }
        outcome
    }

    async fn write_one(&self, object: &ObjectStatus) -> Result<Outcome, kube::Error> {
        let key = ObjectKey::new(object.kind, &object.namespace, &object.name);
        let Some(mut seen) = self.cache.get(&key) else {
            return Ok(Outcome::Skipped);
        };
        for _ in 0..CONFLICT_ATTEMPTS {
            // The object changed since this report was compiled: the next report covers it.
            if seen.generation != object.generation {
                return Ok(Outcome::Skipped);
            }
            let Some(status) = desired_status(
                object.kind,
                &object.namespace,
                &seen.status,
                &object.status,
                &self.owner,
            ) else {
                return Ok(Outcome::Unchanged);
            };
            let api = self.api(&seen.resource, &object.namespace, object.kind);
            let patch = json!({
                "metadata": {"resourceVersion": seen.resource_version},
                "status": status,
            });
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.to_string()),
                ..PatchParams::default()
            };
            match bounded(
                REQUEST_TIMEOUT,
                api.patch_status(&object.name, &params, &Patch::Merge(&patch)),
            )
            .await
            {
                Ok(updated) => {
                    self.record_events(object, &seen, &status);
                    self.cache
                        .record(key, Seen::from_object(seen.resource, &updated));
                    return Ok(Outcome::Written);
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    match bounded(REQUEST_TIMEOUT, api.get_opt(&object.name)).await? {
                        Some(fresh) => seen = Seen::from_object(seen.resource, &fresh),
                        None => return Ok(Outcome::Skipped),
                    }
                }
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Outcome::Skipped),
                Err(err) => return Err(err),
            }
        }
        tracing::debug!(object = %key, "status still conflicting; trying again later");
        Ok(Outcome::Skipped)
    }

    /// Records a Warning Event for each problem the written status reports that the status it
    /// replaced (`seen`) did not.
    fn record_events(&self, object: &ObjectStatus, seen: &Seen, written: &Value) {
        let warnings = events::new_warnings(
            object.kind,
            &object.namespace,
            &seen.status,
            written,
            &self.owner,
        );
        if warnings.is_empty() {
            return;
        }
        let regarding = ObjectReference {
            api_version: Some(seen.resource.api_version.clone()),
            kind: Some(object.kind.as_str().to_string()),
            namespace: object.kind.namespaced().then(|| object.namespace.clone()),
            name: Some(object.name.clone()),
            uid: Some(seen.uid.clone()).filter(|u| !u.is_empty()),
            ..ObjectReference::default()
        };
        self.events.record(&regarding, warnings);
    }

    fn api(&self, resource: &ApiResource, namespace: &str, kind: Kind) -> Api<DynamicObject> {
        if kind.namespaced() {
            Api::namespaced_with(self.client.clone(), namespace, resource)
        } else {
            Api::all_with(self.client.clone(), resource)
        }
    }
}

/// The objects that `report` leaves out but whose shared list still holds an entry `owner`
/// owns, each with its list emptied of ours: written like reported objects, they lose our
/// entries and keep everyone else's ([`desired_status`]).
///
/// Known shortcoming: the report does not say which store revision it was compiled from, so
/// the writer cannot tell a report that dropped an object from one compiled before the object
/// was attached. Our own entries come only from reports that included the object, and reports
/// arrive in order, so this matters only just after the leader changes: a new leader whose
/// latest compile lags the old leader's may remove an entry the old leader had just written,
/// and puts it back with its next compile.
pub fn stale_entries(
    cache: &StatusCache,
    report: &StatusReport,
    owner: &Owner,
) -> Vec<ObjectStatus> {
    let reported: HashSet<ObjectKey> = report
        .objects
        .iter()
        .map(|o| ObjectKey::new(o.kind, &o.namespace, &o.name))
        .collect();
    let holds_ours = |key: &ObjectKey, seen: &Seen| {
        let Some((list, reference)) = shared_list(key.kind) else {
            return false;
        };
        !reported.contains(key)
            && seen.status[list].as_array().is_some_and(|entries| {
                entries
                    .iter()
                    .any(|e| owner.owns(e, reference, &key.namespace))
            })
    };
    cache
        .select(holds_ours)
        .into_iter()
        .filter_map(|(key, seen)| {
            let (list, _) = shared_list(key.kind)?;
            Some(ObjectStatus {
                api_version: seen.resource.api_version,
                kind: key.kind,
                namespace: key.namespace,
                name: key.name,
                // The generation seen: should the object change before the write, the write
                // is skipped and the next report decides.
                generation: seen.generation,
                status: json!({ list: [] }),
                problems: Default::default(),
            })
        })
        .collect()
}

/// Which entries of the shared lists (a route's `parents`, a policy's `ancestors`) this process
/// writes.
#[derive(Debug, Clone)]
pub struct Owner {
    /// Our `controllerName`: entries of other controllers are never ours.
    pub controller_name: String,
    /// With `--gateway`, the one Gateway (`namespace/name`) this process serves. Another process
    /// of ours, scoped to another Gateway, writes the entries of its Gateway under the same
    /// `controllerName`; dropping those would make the two processes undo each other's writes.
    pub gateway: Option<String>,
    /// Whether this process watches every namespace, and so sees every Gateway that names our
    /// GatewayClasses: only then may it take the gateway-exists finalizer off a class, as
    /// processes that see different namespaces would each undo the other's judgement.
    pub sees_every_gateway: bool,
}

impl Owner {
    /// Whether `entry` (whose reference is under `reference`) of an object in `namespace` is
    /// ours to write. A reference's namespace defaults to the object's, its group and kind to
    /// a Gateway's (`ParentReference`).
    pub(crate) fn owns(&self, entry: &Value, reference: &str, namespace: &str) -> bool {
        if entry["controllerName"] != self.controller_name.as_str() {
            return false;
        }
        let Some(gateway) = &self.gateway else {
            return true;
        };
        let r = &entry[reference];
        let group = r["group"].as_str().unwrap_or(GATEWAY_GROUP);
        let kind = r["kind"].as_str().unwrap_or("Gateway");
        let ref_namespace = r["namespace"].as_str().unwrap_or(namespace);
        let name = r["name"].as_str().unwrap_or_default();
        group == GATEWAY_GROUP
            && kind == "Gateway"
            && gateway.split_once('/') == Some((ref_namespace, name))
    }
}

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// The shared list of a kind and the key of each entry's reference, for kinds that have one.
pub(crate) fn shared_list(kind: Kind) -> Option<(&'static str, &'static str)> {
    match kind {
        Kind::HttpRoute | Kind::GrpcRoute | Kind::TlsRoute => Some(("parents", "parentRef")),
        Kind::BackendTlsPolicy => Some(("ancestors", "ancestorRef")),
        _ => None,
    }
}

/// The status to write, given what the object in `namespace` has (`current`) and what the
/// compiler says (`computed`); `None` when the object already says it.
///
/// For routes only `parents` is returned (for policies, `ancestors`): the entries that are not
/// ours stay as and where they are, ours are replaced in place or dropped when the compiler no
/// longer reports them, and new ones of ours go at the end. Keeping positions matters when two
/// processes share the list (`--gateway` scoping): were each to move its entries last, they
/// would reorder the list back and forth forever. For other kinds, every key of `computed`.
/// Condition times are carried over from `current` wherever a condition's status did not
/// change.
pub fn desired_status(
    kind: Kind,
    namespace: &str,
    current: &Value,
    computed: &Value,
    owner: &Owner,
) -> Option<Value> {
    let mut computed = without_nulls(computed);
    if let Some((list, reference)) = shared_list(kind) {
        let old: &[Value] = current[list].as_array().map_or(&[], Vec::as_slice);
        let mut ours = computed[list].as_array().cloned().unwrap_or_default();
        let mut entries: Vec<Value> = Vec::with_capacity(old.len().max(ours.len()));
        for before in old {
            if !owner.owns(before, reference, namespace) {
                entries.push(before.clone());
            } else if let Some(at) = ours.iter().position(|o| o[reference] == before[reference]) {
                let mut entry = ours.remove(at);
                carry_times(&mut entry["conditions"], &before["conditions"], None);
                entries.push(entry);
            }
        }
        entries.extend(ours);
        return (entries.as_slice() != old).then(|| json!({ list: entries }));
    }
    let Value::Object(fields) = &mut computed else {
        return None;
    };
    if let Some(conditions) = fields.get_mut("conditions") {
        carry_times(conditions, &current["conditions"], None);
        keep_others_conditions(conditions, &current["conditions"]);
    }
    if let Some(Value::Array(listeners)) = fields.get_mut("listeners") {
        for listener in listeners {
            let before = current["listeners"]
                .as_array()
                .and_then(|l| l.iter().find(|b| b["name"] == listener["name"]));
            if let Some(before) = before {
                carry_times(&mut listener["conditions"], &before["conditions"], None);
                keep_others_conditions(&mut listener["conditions"], &before["conditions"]);
            }
        }
    }
    let differs = fields.iter().any(|(k, v)| &current[k.as_str()] != v);
    differs.then_some(computed)
}

/// The condition types of a Gateway's, its listeners' or a GatewayClass's `status.conditions`
/// that the Gateway API defines for the controller of its class: ours to set, and to take away
/// when the compile no longer gives them.
const OUR_CONDITION_TYPES: &[&str] = &[
    "Accepted",
    "Programmed",
    "Ready",
    "ResolvedRefs",
    "SupportedVersion",
    "AttachedListenerSets",
    "InsecureFrontendValidationMode",
    "Conflicted",
    "OverlappingTLSConfig",
    "Detached",
];

/// Adds to `ours` the conditions of `before` that another controller keeps on the object (a
/// policy controller's `...PolicyAffected`, as GEP-713 asks of it): a status write replaces the
/// whole list, and leaving them out would take them away at each write, and the two
/// controllers would take turns writing the object forever.
fn keep_others_conditions(ours: &mut Value, before: &Value) {
    let (Value::Array(ours), Some(before)) = (ours, before.as_array()) else {
        return;
    };
    let others: Vec<Value> = (before.iter())
        .filter(|c| {
            let type_ = c["type"].as_str().unwrap_or("");
            !OUR_CONDITION_TYPES.contains(&type_) && !ours.iter().any(|o| o["type"] == c["type"])
        })
        .cloned()
        .collect();
    ours.extend(others);
}

/// A copy without null object fields: the API server drops them, so writing them would make
/// every later comparison differ.
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "portcullis.dev/gateway-controller";

    fn unscoped() -> Owner {
        Owner {
            controller_name: OURS.to_string(),
            gateway: None,
            sees_every_gateway: true,
        }
    }

    fn scoped_to(gateway: &str) -> Owner {
        Owner {
            controller_name: OURS.to_string(),
            gateway: Some(gateway.to_string()),
            sees_every_gateway: true,
        }
    }

    fn condition(type_: &str, status: &str, time: &str) -> Value {
        json!({"type": type_, "status": status, "reason": type_, "message": "",
               "observedGeneration": 1, "lastTransitionTime": time})
    }

    #[test]
    fn unchanged_conditions_keep_their_transition_time_and_need_no_write() {
        let current =
            json!({"conditions": [condition("Accepted", "True", "2020-01-01T00:00:00Z")]});
        let computed =
            json!({"conditions": [condition("Accepted", "True", "2030-01-01T00:00:00Z")]});
        assert_eq!(
            desired_status(Kind::GatewayClass, "apps", &current, &computed, &unscoped()),
            None
        );
    }

    #[test]
    fn a_flipped_condition_takes_the_new_time_and_the_others_keep_theirs() {
        let current = json!({"conditions": [
            condition("Accepted", "True", "2020-01-01T00:00:00Z"),
            condition("Programmed", "True", "2020-01-01T00:00:00Z"),
        ]});
        let computed = json!({"conditions": [
            condition("Accepted", "True", "2030-01-01T00:00:00Z"),
            condition("Programmed", "False", "2030-01-01T00:00:00Z"),
        ]});
        let out = desired_status(Kind::Gateway, "apps", &current, &computed, &unscoped()).unwrap();
        assert_eq!(
            out["conditions"][0]["lastTransitionTime"],
            "2020-01-01T00:00:00Z"
        );
        assert_eq!(
            out["conditions"][1]["lastTransitionTime"],
            "2030-01-01T00:00:00Z"
        );
    }

    /// Another controller's condition on a Gateway (a policy controller's, as GEP-713 asks) is
    /// kept through our writes, and once written as it was, there is nothing more to write;
    /// a condition type of ours the compile no longer gives is taken away.
    #[test]
    fn other_controllers_gateway_conditions_are_kept() {
        let policy = condition("example.com/PolicyAffected", "True", "2020-01-01T00:00:00Z");
        let current = json!({"conditions": [
            condition("Accepted", "True", "2020-01-01T00:00:00Z"),
            policy.clone(),
            condition("ResolvedRefs", "False", "2020-01-01T00:00:00Z"),
        ]});
        let computed = json!({"conditions": [
            condition("Accepted", "True", "2030-01-01T00:00:00Z"),
            condition("Programmed", "True", "2030-01-01T00:00:00Z"),
        ]});
        let out = desired_status(Kind::Gateway, "apps", &current, &computed, &unscoped()).unwrap();
        let types: Vec<&str> = (out["conditions"].as_array().unwrap().iter())
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            ["Accepted", "Programmed", "example.com/PolicyAffected"]
        );
        assert_eq!(out["conditions"][2], policy);
        assert_eq!(
            desired_status(Kind::Gateway, "apps", &out, &computed, &unscoped()),
            None
        );
        // A listener's too (a policy may target one section of a Gateway).
        let current = json!({"listeners": [
            {"name": "a", "conditions": [condition("Accepted", "True", "old"), policy.clone()]},
        ]});
        let computed = json!({"listeners": [
            {"name": "a", "conditions": [condition("Accepted", "True", "new")]},
        ]});
        let out = desired_status(Kind::Gateway, "apps", &current, &computed, &unscoped());
        assert_eq!(out, None, "nothing of ours changed: {out:?}");
    }

    #[test]
    fn gateway_listener_conditions_keep_times_by_listener_name() {
        let current = json!({"listeners": [
            {"name": "b", "attachedRoutes": 1, "conditions": [condition("Accepted", "True", "old-b")]},
            {"name": "a", "attachedRoutes": 0, "conditions": [condition("Accepted", "True", "old-a")]},
        ]});
        let computed = json!({"listeners": [
            {"name": "a", "attachedRoutes": 2, "conditions": [condition("Accepted", "True", "new")]},
        ]});
        let out = desired_status(Kind::Gateway, "apps", &current, &computed, &unscoped()).unwrap();
        assert_eq!(out["listeners"].as_array().unwrap().len(), 1);
        assert_eq!(out["listeners"][0]["attachedRoutes"], 2);
        assert_eq!(
            out["listeners"][0]["conditions"][0]["lastTransitionTime"],
            "old-a"
        );
    }

    #[test]
    fn route_status_leaves_other_controllers_entries_alone() {
        let theirs = json!({"parentRef": {"name": "other"}, "controllerName": "example.com/x",
                            "conditions": [condition("Accepted", "False", "t0")]});
        let stale = json!({"parentRef": {"name": "gone"}, "controllerName": OURS,
                           "conditions": [condition("Accepted", "True", "t0")]});
        let current = json!({"parents": [theirs, stale]});
        let computed = json!({"parents": [{"parentRef": {"name": "gw"}, "controllerName": OURS,
                                           "conditions": [condition("Accepted", "True", "t1")]}]});
        let out =
            desired_status(Kind::HttpRoute, "apps", &current, &computed, &unscoped()).unwrap();
        let parents = out["parents"].as_array().unwrap();
        assert_eq!(parents.len(), 2);
        assert_eq!(parents[0], theirs);
        assert_eq!(parents[1]["parentRef"]["name"], "gw");
        // Written as computed; the next comparison finds nothing to do.
        let again = desired_status(Kind::HttpRoute, "apps", &out, &computed, &unscoped());
        assert_eq!(again, None);
    }

    #[test]
    fn route_entries_keep_times_per_parent_ref() {
        let current = json!({"parents": [{"parentRef": {"name": "gw"}, "controllerName": OURS,
            "conditions": [condition("Accepted", "True", "t0")]}]});
        let computed = json!({"parents": [{"parentRef": {"name": "gw"}, "controllerName": OURS,
            "conditions": [condition("Accepted", "True", "t1")]}]});
        assert_eq!(
            desired_status(Kind::HttpRoute, "apps", &current, &computed, &unscoped()),
            None
        );
    }

    #[test]
    fn nulls_are_not_written() {
        let computed = json!({"conditions": [], "addresses": null});
        let out =
            desired_status(Kind::Gateway, "apps", &Value::Null, &computed, &unscoped()).unwrap();
        assert_eq!(out, json!({"conditions": []}));
        assert_eq!(
            desired_status(Kind::Gateway, "apps", &out, &computed, &unscoped()),
            None
        );
    }

    #[test]
    fn policy_ancestors_of_other_controllers_are_kept() {
        let theirs = json!({"ancestorRef": {"name": "other"}, "controllerName": "example.com/x",
                            "conditions": []});
        let current = json!({"ancestors": [theirs]});
        let computed = json!({"ancestors": [{"ancestorRef": {"name": "gw"}, "controllerName": OURS,
                                             "conditions": []}]});
        let out = desired_status(
            Kind::BackendTlsPolicy,
            "apps",
            &current,
            &computed,
            &unscoped(),
        )
        .unwrap();
        let ancestors = out["ancestors"].as_array().unwrap();
        assert_eq!(ancestors.len(), 2);
        assert_eq!(ancestors[0], theirs);
        assert_eq!(
            desired_status(Kind::BackendTlsPolicy, "apps", &out, &computed, &unscoped()),
            None
        );
    }

    fn entry(reference: &str, gateway: Value, controller: &str, time: &str) -> Value {
        json!({reference: gateway, "controllerName": controller,
               "conditions": [condition("Accepted", "True", time)]})
    }

    #[test]
    fn a_scoped_process_leaves_the_entry_of_the_other_gateway_alone() {
        let gw_a = json!({"group": "gateway.networking.k8s.io", "kind": "Gateway",
                          "namespace": "apps", "name": "gw-a"});
        let gw_b = json!({"group": "gateway.networking.k8s.io", "kind": "Gateway",
                          "namespace": "apps", "name": "gw-b"});
        let theirs = entry("parentRef", gw_b.clone(), OURS, "t0");
        // Written by the process serving gw-b; the one serving gw-a then adds its own.
        let current = json!({"parents": [theirs.clone()]});
        let computed = json!({"parents": [entry("parentRef", gw_a.clone(), OURS, "t1")]});
        let a = scoped_to("apps/gw-a");
        let out = desired_status(Kind::HttpRoute, "apps", &current, &computed, &a).unwrap();
        let parents = out["parents"].as_array().unwrap();
        assert_eq!(parents.len(), 2);
        assert_eq!(parents[0], theirs);
        assert_eq!(parents[1]["parentRef"], gw_a);
        // Both processes now find nothing to write: no back and forth.
        assert_eq!(
            desired_status(Kind::HttpRoute, "apps", &out, &computed, &a),
            None
        );
        let b = scoped_to("apps/gw-b");
        let computed_b = json!({"parents": [entry("parentRef", gw_b, OURS, "t2")]});
        assert_eq!(
            desired_status(Kind::HttpRoute, "apps", &out, &computed_b, &b),
            None
        );
        // Unscoped, the same entry would be taken for a stale one of ours and dropped.
        let unscoped_out =
            desired_status(Kind::HttpRoute, "apps", &current, &computed, &unscoped()).unwrap();
        assert_eq!(unscoped_out["parents"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn a_scoped_process_drops_its_own_stale_entry_and_reads_default_namespaces() {
        // A parentRef without namespace names a Gateway in the route's namespace.
        let stale = entry(
            "parentRef",
            json!({"name": "gw-a", "sectionName": "old"}),
            OURS,
            "t0",
        );
        let elsewhere = entry(
            "parentRef",
            json!({"namespace": "infra", "name": "gw-a"}),
            OURS,
            "t0",
        );
        let current = json!({"parents": [stale, elsewhere.clone()]});
        let computed = json!({"parents": []});
        let out = desired_status(
            Kind::HttpRoute,
            "apps",
            &current,
            &computed,
            &scoped_to("apps/gw-a"),
        )
        .unwrap();
        assert_eq!(out, json!({"parents": [elsewhere]}));
    }

    #[test]
    fn a_scoped_process_owns_only_its_gateways_policy_ancestor() {
        let gw_a = json!({"group": "gateway.networking.k8s.io", "kind": "Gateway",
                          "namespace": "apps", "name": "gw-a"});
        let theirs = entry(
            "ancestorRef",
            json!({"group": "gateway.networking.k8s.io", "kind": "Gateway",
                   "namespace": "apps", "name": "gw-b"}),
            OURS,
            "t0",
        );
        let current = json!({"ancestors": [theirs.clone()]});
        let computed = json!({"ancestors": [entry("ancestorRef", gw_a, OURS, "t1")]});
        let a = scoped_to("apps/gw-a");
        let out = desired_status(Kind::BackendTlsPolicy, "apps", &current, &computed, &a).unwrap();
        assert_eq!(out["ancestors"][0], theirs);
        assert_eq!(out["ancestors"].as_array().unwrap().len(), 2);
        assert_eq!(
            desired_status(Kind::BackendTlsPolicy, "apps", &out, &computed, &a),
            None
        );
    }

    fn seen(kind: Kind, status: Value) -> Seen {
        Seen {
            resource: ApiResource {
                group: GATEWAY_GROUP.to_string(),
                version: "v1".to_string(),
                api_version: format!("{GATEWAY_GROUP}/v1"),
                kind: kind.as_str().to_string(),
                plural: String::new(),
            },
            resource_version: "7".to_string(),
            generation: 2,
            uid: String::new(),
            status,
            finalizers: Vec::new(),
        }
    }

    fn reported(kind: Kind, name: &str) -> ObjectStatus {
        ObjectStatus {
            api_version: format!("{GATEWAY_GROUP}/v1"),
            kind,
            namespace: "apps".to_string(),
            name: name.to_string(),
            generation: 2,
            status: json!({"parents": []}),
            problems: Default::default(),
        }
    }

    /// The names of the objects [`stale_entries`] picks, sorted.
    fn stale_names(cache: &StatusCache, report: &StatusReport, owner: &Owner) -> Vec<String> {
        let mut names: Vec<String> = stale_entries(cache, report, owner)
            .into_iter()
            .map(|o| o.name)
            .collect();
        names.sort();
        names
    }

    #[test]
    fn objects_the_report_leaves_out_lose_only_our_entries() {
        let gw = json!({"name": "gw"});
        let ours = entry("parentRef", gw.clone(), OURS, "t0");
        let theirs = entry("parentRef", json!({"name": "x"}), "example.com/x", "t0");
        let cache = StatusCache::new();
        let record = |kind: Kind, name: &str, status: Value| {
            cache.record(ObjectKey::new(kind, "apps", name), seen(kind, status));
        };
        record(
            Kind::HttpRoute,
            "attached",
            json!({"parents": [ours.clone()]}),
        );
        record(
            Kind::GrpcRoute,
            "left",
            json!({"parents": [theirs.clone(), ours.clone()]}),
        );
        record(
            Kind::TlsRoute,
            "never-ours",
            json!({"parents": [theirs.clone()]}),
        );
        record(Kind::HttpRoute, "no-status", Value::Null);
        record(
            Kind::BackendTlsPolicy,
            "unused",
            json!({"ancestors": [entry("ancestorRef", gw, OURS, "t0")]}),
        );
        // A Gateway's status is whole ours and always reported: never taken for a stale list.
        record(Kind::Gateway, "gw", json!({"conditions": []}));
        let report = StatusReport {
            objects: vec![reported(Kind::HttpRoute, "attached").into()],
            ..StatusReport::default()
        };

        assert_eq!(
            stale_names(&cache, &report, &unscoped()),
            ["left", "unused"]
        );
        for stale in stale_entries(&cache, &report, &unscoped()) {
            let key = ObjectKey::new(stale.kind, "apps", &stale.name);
            let current = cache.get(&key).unwrap().status;
            let out =
                desired_status(stale.kind, "apps", &current, &stale.status, &unscoped()).unwrap();
            match stale.kind {
                Kind::GrpcRoute => assert_eq!(out, json!({"parents": [theirs.clone()]})),
                _ => assert_eq!(out, json!({"ancestors": []})),
            }
        }
    }

    #[test]
    fn a_scoped_process_finds_stale_only_its_own_gateways_entry() {
        let gw_a = json!({"namespace": "apps", "name": "gw-a"});
        let gw_b = json!({"namespace": "apps", "name": "gw-b"});
        let cache = StatusCache::new();
        cache.record(
            ObjectKey::new(Kind::HttpRoute, "apps", "for-b"),
            seen(
                Kind::HttpRoute,
                json!({"parents": [entry("parentRef", gw_b.clone(), OURS, "t0")]}),
            ),
        );
        cache.record(
            ObjectKey::new(Kind::HttpRoute, "apps", "left-a"),
            seen(
                Kind::HttpRoute,
                json!({"parents": [entry("parentRef", gw_a, OURS, "t0"),
                                   entry("parentRef", gw_b.clone(), OURS, "t0")]}),
            ),
        );
        let a = scoped_to("apps/gw-a");
        let stale = stale_entries(&cache, &StatusReport::default(), &a);
        assert_eq!(stale.len(), 1, "only the route with gw-a's entry");
        let current = cache
            .get(&ObjectKey::new(Kind::HttpRoute, "apps", "left-a"))
            .unwrap()
            .status;
        let out = desired_status(Kind::HttpRoute, "apps", &current, &stale[0].status, &a);
        assert_eq!(
            out,
            Some(json!({"parents": [entry("parentRef", gw_b, OURS, "t0")]})),
            "the entry of the process serving gw-b stays"
        );
    }

    #[test]
    fn entries_keep_their_place_when_rewritten() {
        let gw = json!({"name": "gw"});
        let theirs = entry("parentRef", json!({"name": "x"}), "example.com/x", "t0");
        let current =
            json!({"parents": [entry("parentRef", gw.clone(), OURS, "t0"), theirs.clone()]});
        let mut changed = entry("parentRef", gw, OURS, "t1");
        changed["conditions"][0]["status"] = json!("False");
        let computed = json!({"parents": [changed]});
        let out =
            desired_status(Kind::HttpRoute, "apps", &current, &computed, &unscoped()).unwrap();
        assert_eq!(out["parents"][0]["conditions"][0]["status"], "False");
        assert_eq!(out["parents"][1], theirs);
    }
}
