//! The status report: the conditions the Gateway API spec asks for, per object.
//!
//! The compiler fills one [`ObjectStatus`] per object it owns, shaped exactly like the
//! Kubernetes `status` of that kind, so that the same JSON is printed by `portcullis check`,
//! served on the admin address, and written back to the API server.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::controller::{Kind, SourceError};

/// One condition, as `metav1.Condition` spells it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. `Accepted`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True` or `False`.
    pub status: String,
    /// A CamelCase reason from the spec.
    pub reason: String,
    /// What happened, for people.
    pub message: String,
    /// The generation the condition was computed from.
    pub observed_generation: i64,
    /// When the condition last changed; the status writer keeps the old time when nothing did.
    pub last_transition_time: String,
}

/// Builds conditions for one object generation.
pub struct Conditions<'a> {
    generation: i64,
    now: &'a str,
    list: Vec<Condition>,
}

impl<'a> Conditions<'a> {
    /// An empty list for `generation`, stamped `now`.
    pub fn new(generation: i64, now: &'a str) -> Self {
        Conditions {
            generation,
            now,
            list: Vec::new(),
        }
    }

    /// Sets (or replaces) the condition of type `type_`.
    pub fn set(&mut self, type_: &str, ok: bool, reason: &str, message: impl Into<String>) {
        self.list.retain(|c| c.type_ != type_);
        self.list.push(Condition {
            type_: type_.to_string(),
            status: if ok { "True" } else { "False" }.to_string(),
            reason: reason.to_string(),
            message: message.into(),
            observed_generation: self.generation,
            last_transition_time: self.now.to_string(),
        });
    }

    /// Sets `ResolvedRefs`: false with the reason and message of `problem`, else true.
    pub fn set_resolved_refs(&mut self, problem: Option<(&str, &str)>) {
        match problem {
            Some((reason, message)) => self.set("ResolvedRefs", false, reason, message),
            None => self.set(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "all references are resolved",
            ),
        }
    }

    /// Whether a condition of `type_` is set and true.
    pub fn is_true(&self, type_: &str) -> bool {
        self.list
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
    }

    /// The finished list, as the JSON array a `status` holds. Built by hand, moving the
    /// strings: a compile of thousands of routes makes tens of thousands of conditions, and
    /// going through serde's serializer copied every string once more.
    pub fn into_json(self) -> Value {
        Value::Array(
            self.list
                .into_iter()
                .map(|c| {
                    let mut m = serde_json::Map::new();
                    m.insert("type".into(), Value::String(c.type_));
                    m.insert("status".into(), Value::String(c.status));
                    m.insert("reason".into(), Value::String(c.reason));
                    m.insert("message".into(), Value::String(c.message));
                    m.insert(
                        "observedGeneration".into(),
                        Value::from(c.observed_generation),
                    );
                    m.insert(
                        "lastTransitionTime".into(),
                        Value::String(c.last_transition_time),
                    );
                    Value::Object(m)
                })
                .collect(),
        )
    }
}

/// A JSON object from owned fields. Unlike `json!`, which serializes (and so copies) every
/// value it is given, this moves them: route status is built for every route on every compile.
pub fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    Value::Object(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

/// The status of one object.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    /// `group/version` of the object.
    pub api_version: String,
    /// Kind.
    pub kind: Kind,
    /// Namespace, empty for cluster-scoped objects.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.generation` the status was computed from.
    pub generation: i64,
    /// The `status` stanza, shaped as Kubernetes shapes it for this kind.
    pub status: Value,
    /// What [`ObjectStatus::problems`] found, computed on first use. Statuses are shared
    /// between compiles, so an unchanged route's are not looked through again; code that
    /// changes `status` after that must reset this.
    #[serde(skip)]
    pub problems: std::sync::OnceLock<Vec<String>>,
}

impl ObjectStatus {
    /// One line for each condition (the object's own, a listener's, a route parent's or a
    /// policy ancestor's) that says the configuration is wrong: `Accepted` not true,
    /// `ResolvedRefs` false, `PartiallyInvalid` or `Conflicted` true, or `Programmed` false for
    /// a reason of the configuration (an address it asks for, an invalid listener set).
    pub fn problems(&self) -> &[String] {
        self.problems.get_or_init(|| {
            let id = if self.namespace.is_empty() {
                format!("{} {}", self.kind, self.name)
            } else {
                format!("{} {}/{}", self.kind, self.namespace, self.name)
            };
            let mut out = Vec::new();
            // Each list of conditions, with whom it is about and whether it is the object's own.
            let mut lists: Vec<(String, &Value, bool)> =
                vec![(id.clone(), &self.status["conditions"], true)];
            if let Some(listeners) = self.status["listeners"].as_array() {
                lists.extend(listeners.iter().map(|l| {
                    let name = l["name"].as_str().unwrap_or("");
                    (format!("{id} listener {name}"), &l["conditions"], false)
                }));
            }
            if let Some(parents) = self.status["parents"].as_array() {
                lists.extend(
                    parents
                        .iter()
                        .map(|p| (id.clone(), &p["conditions"], false)),
                );
            }
            if let Some(ancestors) = self.status["ancestors"].as_array() {
                lists.extend(
                    ancestors
                        .iter()
                        .map(|a| (id.clone(), &a["conditions"], false)),
                );
            }
            let is = |list: &Value, type_: &str, status: &str| {
                (list.as_array().into_iter().flatten())
                    .any(|c| c["type"] == type_ && c["status"] == status)
            };
            let own_list = &self.status["conditions"];
            let object_trouble =
                is(own_list, "Accepted", "False") || is(own_list, "Programmed", "False");
            for (who, list, own) in lists {
                // A listener that is not programmed for a reason of its own, which no other
                // condition of it gives (its port out of range once moved by --port-offset),
                // while its Gateway is fine otherwise.
                let listener_alone = !own
                    && who.contains(" listener ")
                    && !object_trouble
                    && !is(list, "Accepted", "False")
                    && !is(list, "ResolvedRefs", "False")
                    && !is(list, "Conflicted", "True");
                for c in list.as_array().into_iter().flatten() {
                    // What the configuration itself gets wrong: an object or listener not
                    // accepted, a reference that does not resolve (its requests answer 500),
                    // rules dropped from an accepted route, listeners in conflict, an address
                    // that cannot be had. Whether a socket could be bound (`Pending`) is not a
                    // problem of the configuration; a listener is not programmed when its
                    // Gateway is not, or for a reason its other conditions give already.
                    let reason = c["reason"].as_str().unwrap_or("");
                    let what = match (c["type"].as_str(), c["status"].as_str()) {
                        // A listener in conflict is not accepted for that: said once.
                        (Some("Accepted"), Some(s))
                            if s != "True" && !is(list, "Conflicted", "True") =>
                        {
                            "not accepted"
                        }
                        (Some("ResolvedRefs"), Some("False")) => "references not resolved",
                        (Some("PartiallyInvalid"), Some("True")) => "partially invalid",
                        (Some("Conflicted"), Some("True")) => "in conflict",
                        (Some("Programmed"), Some("False"))
                            if own
                                && matches!(
                                    reason,
                                    "AddressNotAssigned" | "AddressNotUsable" | "Invalid"
                                ) =>
                        {
                            "not programmed"
                        }
                        (Some("Programmed"), Some("False"))
                            if listener_alone && reason == "Invalid" =>
                        {
                            "not programmed"
                        }
                        _ => continue,
                    };
                    out.push(format!(
                        "{who}: {what} ({}): {}",
                        c["reason"].as_str().unwrap_or(""),
                        c["message"].as_str().unwrap_or("")
                    ));
                }
            }
            out
        })
    }
}

/// Carries condition times from `old` into `new`, two `status` stanzas of one object: its own
/// conditions, its listeners' (by name), and its entries in a route's `parents` or a policy's
/// `ancestors` (by reference and controller).
pub fn carry_status_times(new: &mut Value, old: &Value, changed_at: Option<&str>) {
    // `get_mut`, not indexing: indexing a JSON object for writing adds a null field for a key
    // it lacks (a route's status has no `conditions` of its own).
    if let Some(conditions) = new.get_mut("conditions") {
        carry_times(conditions, &old["conditions"], changed_at);
    }
    for (list, key) in [
        ("listeners", "name"),
        ("parents", "parentRef"),
        ("ancestors", "ancestorRef"),
    ] {
        let Some(entries) = new.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for entry in entries {
            let before = old[list].as_array().and_then(|l| {
                l.iter().find(|b| {
                    b[key] == entry[key] && b["controllerName"] == entry["controllerName"]
                })
            });
            if let (Some(before), Some(conditions)) = (before, entry.get_mut("conditions")) {
                carry_times(conditions, &before["conditions"], changed_at);
            }
        }
    }
}

/// Gives each condition in `new` the `lastTransitionTime` of the condition of the same type in
/// `old` when their `status` is the same, and `changed_at` (when given) when it is not.
pub fn carry_times(new: &mut Value, old: &Value, changed_at: Option<&str>) {
    let (Some(new), Some(old)) = (new.as_array_mut(), old.as_array()) else {
        return;
    };
    for condition in new {
        let before = old.iter().find(|o| o["type"] == condition["type"]);
        if let Some(before) = before {
            if before["status"] == condition["status"] && before["lastTransitionTime"].is_string() {
                condition["lastTransitionTime"] = before["lastTransitionTime"].clone();
            } else if let Some(at) = changed_at {
                condition["lastTransitionTime"] = at.into();
            }
        }
    }
}

impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Everything the compiler has to say about its input.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StatusReport {
    /// Per-object status, in kind then namespace/name order. Shared, because an incremental
    /// compile hands on the status of every unchanged route as it was.
    pub objects: Vec<Arc<ObjectStatus>>,
    /// Inputs that never became objects (files that do not parse, unknown kinds).
    pub errors: Vec<SourceError>,
    /// Our GatewayClasses that some Gateway names (any Gateway, whichever process serves it):
    /// those whose deletion the status writer holds back with the spec's finalizer.
    #[serde(skip)]
    pub classes_in_use: std::collections::BTreeSet<String>,
}

impl StatusReport {
    /// Objects whose `Accepted` condition (or, for routes, any parent's) is not true, and
    /// every source error, one line each; empty when all is well.
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.source, e.message))
            .collect();
        for o in &self.objects {
            out.extend(o.problems().iter().cloned());
        }
        out
    }

    /// Gives every condition the `lastTransitionTime` it had in `previous` where its status is
    /// the same, as `metav1.Condition` asks: the time says when the status last changed, not
    /// when it was last computed; one whose status changed gets `changed_at`. Statuses shared
    /// with `previous` (unchanged routes of an incremental compile) have their times already.
    pub fn carry_transition_times(&mut self, previous: &StatusReport, changed_at: &str) {
        let before: std::collections::HashMap<(Kind, &str, &str), &ObjectStatus> = previous
            .objects
            .iter()
            .map(|o| ((o.kind, o.namespace.as_str(), o.name.as_str()), o.as_ref()))
            .collect();
        for object in &mut self.objects {
            let carried = {
                let key = (object.kind, object.namespace.as_str(), object.name.as_str());
                let Some(old) = before.get(&key) else {
                    continue;
                };
                if std::ptr::eq(*old, object.as_ref()) {
                    continue;
                }
                let mut status = object.status.clone();
                carry_status_times(&mut status, &old.status, Some(changed_at));
                (status != object.status).then_some(status)
            };
            if let Some(status) = carried {
                let object = Arc::make_mut(object);
                object.status = status;
                object.problems = Default::default();
            }
        }
    }

    /// One object's status, if reported.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<&ObjectStatus> {
        self.objects
            .iter()
            .find(|o| o.kind == kind && o.namespace == namespace && o.name == name)
            .map(|o| o.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_times_are_kept_while_the_status_stays_and_move_when_it_changes() {
        let object = |accepted: &str, programmed: &str, time: &str| {
            let c = |t: &str, s: &str| serde_json::json!({"type": t, "status": s, "lastTransitionTime": time});
            Arc::new(ObjectStatus {
                api_version: "gateway.networking.k8s.io/v1".into(),
                kind: Kind::Gateway,
                namespace: "n".into(),
                name: "gw".into(),
                generation: 1,
                status: serde_json::json!({
                    "conditions": [c("Accepted", accepted)],
                    "listeners": [{"name": "http", "conditions": [c("Programmed", programmed)]}],
                }),
                problems: Default::default(),
            })
        };
        let before = StatusReport {
            objects: vec![object("True", "True", "T1")],
            ..StatusReport::default()
        };
        let mut after = StatusReport {
            objects: vec![object("True", "False", "T2")],
            ..StatusReport::default()
        };
        after.carry_transition_times(&before, "T3");
        let status = &after.objects[0].status;
        assert_eq!(status["conditions"][0]["lastTransitionTime"], "T1");
        // Changed: the time of the change, which a bind retry gives later than its compile's.
        assert_eq!(
            status["listeners"][0]["conditions"][0]["lastTransitionTime"],
            "T3"
        );
        // Nothing is added: a route's status, which has no `conditions` of its own, gets none.
        let mut route = serde_json::json!({"parents": []});
        carry_status_times(&mut route, &serde_json::json!({"parents": []}), None);
        assert_eq!(route, serde_json::json!({"parents": []}));
    }

    #[test]
    fn conditions_json_is_what_serde_would_write() {
        let mut c = Conditions::new(7, "2026-01-02T03:04:05Z");
        c.set("Accepted", true, "Accepted", "route is attached");
        c.set(
            "ResolvedRefs",
            false,
            "BackendNotFound",
            "service \"x\" not found",
        );
        let expected = serde_json::to_value(c.list.clone()).unwrap();
        assert_eq!(c.into_json(), expected);
    }
}
