//! Kubernetes Events for configuration errors: what `kubectl describe` and `kubectl events`
//! show beside the status conditions.
//!
//! When the status writer changes an object's status so that one of our conditions reports an
//! error (see [`is_error`]) that it did not report before, it records one Warning Event
//! (`events.k8s.io/v1`) regarding that object: the condition's reason as the Event's reason, its
//! message as the note, our `controllerName` as the reporting controller. Comparing against the
//! status the object has, not against the last compile, means that a condition that stays
//! false records nothing more however often the configuration is compiled, that a new leader
//! does not repeat what the previous one recorded, and that fixing an object and breaking it
//! again records again. Only the writer records, so only the elected leader does.
//!
//! Recording must never hold status writes back: the writer hands warnings to a task of their
//! own through a bounded queue, and a failure to record is logged, never retried.
//!
//! Repeats are aggregated by kube's [`Recorder`]: the same reason on the same object within six
//! minutes updates the first Event's `series` (count and last time) instead of creating
//! another, as client-go does. Known shortcoming: such a repeat keeps the first Event's note,
//! so when the message changed (another missing Service, say) the Event shows the older one;
//! the status condition always has the current message.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::kubernetes::{bounded, REQUEST_TIMEOUT};
use super::status_writer::{shared_list, Owner};
use super::Kind;

/// The `action` of our Events: what the controller was doing when it found the problem.
const ACTION: &str = "Reconcile";

/// Warnings waiting to be recorded; beyond this many, new ones are dropped (and logged) rather
/// than letting the status writer wait.
const QUEUE: usize = 256;

/// The API server refuses notes longer than this many bytes.
const MAX_NOTE: usize = 1024;

/// One problem to record on an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The condition's reason, e.g. `BackendNotFound`.
    pub reason: String,
    /// The condition's message (prefixed with the listener's name for listener conditions).
    pub note: String,
}

/// Where warnings are sent to be recorded. Clones share the queue.
#[derive(Clone)]
pub struct Events {
    queue: mpsc::Sender<(ObjectReference, Warning)>,
}

impl Events {
    /// Starts the task that records Events as `controller`, from replica `instance`.
    pub fn start(client: Client, controller: String, instance: String) -> Events {
        let (queue, pending) = mpsc::channel(QUEUE);
        let reporter = Reporter {
            controller,
            instance: Some(instance),
        };
        tokio::spawn(
            publish(Recorder::new(client, reporter), pending)
                .instrument(tracing::info_span!("events")),
        );
        Events { queue }
    }

    /// Queues warnings about one object, without waiting.
    pub fn record(&self, regarding: &ObjectReference, warnings: Vec<Warning>) {
        for warning in warnings {
            if let Err(err) = self.queue.try_send((regarding.clone(), warning)) {
                let (_, warning) = err.into_inner();
                tracing::debug!(reason = %warning.reason, "event queue full; event dropped");
            }
        }
    }
}

/// Records queued warnings until every sender is gone.
async fn publish(recorder: Recorder, mut pending: mpsc::Receiver<(ObjectReference, Warning)>) {
    let mut failing = false;
    while let Some((regarding, warning)) = pending.recv().await {
        let event = Event {
            type_: EventType::Warning,
            reason: warning.reason,
            note: Some(warning.note),
            action: ACTION.to_string(),
            secondary: None,
        };
        // A publish the API server does not answer is given up, or the Events queued behind
        // it would wait for it, and those after them be dropped once the queue is full.
        match bounded(REQUEST_TIMEOUT, recorder.publish(&event, &regarding)).await {
            Ok(()) if std::mem::take(&mut failing) => tracing::info!("events are recorded again"),
            Ok(()) => {}
            // Said once per outage; status is written regardless.
            Err(err) if failing => tracing::debug!(error = %err, "event not recorded"),
            Err(err) => {
                failing = true;
                tracing::warn!(
                    error = %err,
                    object = %format_args!("{} {}", regarding.kind.as_deref().unwrap_or_default(), regarding.name.as_deref().unwrap_or_default()),
                    "cannot record events (is `create` and `patch` on events.k8s.io events granted?); status is still written"
                );
            }
        }
    }
}

/// Whether a condition reports a problem. Most condition types are positive (`Accepted`,
/// `ResolvedRefs`, `Programmed`: false is the problem); `Conflicted` and `PartiallyInvalid` are
/// the Gateway API's negative ones (true is the problem).
pub fn is_error(condition: &Value) -> bool {
    match condition["type"].as_str() {
        Some("Conflicted" | "PartiallyInvalid") => condition["status"] == "True",
        _ => condition["status"] == "False",
    }
}

/// The warnings to record when an object's status goes from `before` to `after`: every error
/// condition of ours in `after` that `before` did not have with the same status and reason at
/// the same place (the object itself, a listener, a route's parent, a policy's ancestor).
/// `Programmed=False` beside another error at the same place only repeats it and is left out;
/// warnings with the same reason and note are given once.
pub fn new_warnings(
    kind: Kind,
    namespace: &str,
    before: &Value,
    after: &Value,
    owner: &Owner,
) -> Vec<Warning> {
    let old = places(kind, namespace, before, owner);
    let mut warnings: Vec<Warning> = Vec::new();
    for (place, label, conditions) in places(kind, namespace, after, owner) {
        let Some(conditions) = conditions.as_array() else {
            continue;
        };
        let previous: &[Value] = old
            .iter()
            .find(|(p, _, _)| *p == place)
            .and_then(|(_, _, c)| c.as_array())
            .map_or(&[], Vec::as_slice);
        let errors: Vec<&Value> = conditions.iter().filter(|c| is_error(c)).collect();
        for condition in &errors {
            if condition["type"] == "Programmed" && errors.len() > 1 {
                continue;
            }
            let seen_before = previous.iter().any(|p| {
                p["type"] == condition["type"]
                    && p["status"] == condition["status"]
                    && p["reason"] == condition["reason"]
            });
            if seen_before {
                continue;
            }
            let message = condition["message"].as_str().unwrap_or_default();
            let warning = Warning {
                reason: condition["reason"]
                    .as_str()
                    .unwrap_or("Invalid")
                    .to_string(),
                note: truncate(&format!("{label}{message}"), MAX_NOTE),
            };
            if !warnings.contains(&warning) {
                warnings.push(warning);
            }
        }
    }
    warnings
}

/// The condition lists of ours in a status: (where, the note's prefix, the conditions).
fn places<'a>(
    kind: Kind,
    namespace: &str,
    status: &'a Value,
    owner: &Owner,
) -> Vec<(Value, String, &'a Value)> {
    if let Some((list, reference)) = shared_list(kind) {
        return status[list]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|entry| owner.owns(entry, reference, namespace))
            .map(|entry| {
                (
                    entry[reference].clone(),
                    String::new(),
                    &entry["conditions"],
                )
            })
            .collect();
    }
    let mut out = vec![(Value::Null, String::new(), &status["conditions"])];
    for listener in status["listeners"].as_array().into_iter().flatten() {
        let name = listener["name"].as_str().unwrap_or_default();
        out.push((
            serde_json::json!({ "listener": name }),
            format!("listener {name}: "),
            &listener["conditions"],
        ));
    }
    out
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const OURS: &str = "portcullis.dev/gateway-controller";

    fn owner() -> Owner {
        Owner {
            controller_name: OURS.to_string(),
            gateway: None,
            sees_every_gateway: true,
        }
    }

    fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
        json!({"type": type_, "status": status, "reason": reason, "message": message})
    }

    fn parent(name: &str, controller: &str, conditions: Vec<Value>) -> Value {
        json!({"parentRef": {"name": name}, "controllerName": controller, "conditions": conditions})
    }

    fn warning(reason: &str, note: &str) -> Warning {
        Warning {
            reason: reason.to_string(),
            note: note.to_string(),
        }
    }

    #[test]
    fn a_route_parent_turning_unresolved_records_its_reason_and_message() {
        let ok = json!({"parents": [parent("gw", OURS, vec![
            condition("Accepted", "True", "Accepted", ""),
            condition("ResolvedRefs", "True", "ResolvedRefs", ""),
        ])]});
        let broken = json!({"parents": [parent("gw", OURS, vec![
            condition("Accepted", "True", "Accepted", ""),
            condition("ResolvedRefs", "False", "BackendNotFound", "Service apps/x does not exist"),
        ])]});
        assert_eq!(
            new_warnings(Kind::HttpRoute, "apps", &ok, &broken, &owner()),
            vec![warning("BackendNotFound", "Service apps/x does not exist")]
        );
        // Still broken: nothing new.
        assert_eq!(
            new_warnings(Kind::HttpRoute, "apps", &broken, &broken, &owner()),
            vec![]
        );
        // A first status that is already broken records too.
        assert_eq!(
            new_warnings(Kind::HttpRoute, "apps", &Value::Null, &broken, &owner()).len(),
            1
        );
    }

    #[test]
    fn the_same_problem_on_two_parents_is_recorded_once_and_other_controllers_never() {
        let broken = |name| {
            parent(
                name,
                OURS,
                vec![condition("ResolvedRefs", "False", "BackendNotFound", "m")],
            )
        };
        let theirs = parent(
            "x",
            "example.com/x",
            vec![condition("Accepted", "False", "NotAllowed", "m")],
        );
        let after = json!({"parents": [broken("a"), broken("b"), theirs]});
        assert_eq!(
            new_warnings(Kind::HttpRoute, "apps", &Value::Null, &after, &owner()),
            vec![warning("BackendNotFound", "m")]
        );
    }

    #[test]
    fn a_new_reason_for_a_false_condition_records_again() {
        let before = json!({"parents": [parent("gw", OURS, vec![
            condition("ResolvedRefs", "False", "BackendNotFound", "m"),
        ])]});
        let after = json!({"parents": [parent("gw", OURS, vec![
            condition("ResolvedRefs", "False", "RefNotPermitted", "n"),
        ])]});
        assert_eq!(
            new_warnings(Kind::HttpRoute, "apps", &before, &after, &owner()),
            vec![warning("RefNotPermitted", "n")]
        );
    }

    #[test]
    fn a_gateway_not_accepted_records_the_cause_not_its_consequence() {
        let after = json!({"conditions": [
            condition("Accepted", "False", "InvalidParameters", "no parameters"),
            condition("Programmed", "False", "Invalid", "the Gateway is not accepted"),
        ]});
        assert_eq!(
            new_warnings(Kind::Gateway, "apps", &Value::Null, &after, &owner()),
            vec![warning("InvalidParameters", "no parameters")]
        );
        // Programmed=False alone is a problem of its own.
        let unprogrammed = json!({"conditions": [
            condition("Accepted", "True", "Accepted", ""),
            condition("Programmed", "False", "AddressNotAssigned", "pool exhausted"),
        ]});
        assert_eq!(
            new_warnings(Kind::Gateway, "apps", &Value::Null, &unprogrammed, &owner()),
            vec![warning("AddressNotAssigned", "pool exhausted")]
        );
    }

    #[test]
    fn listener_problems_name_the_listener_and_conflicts_count() {
        let listener = |conditions| json!({"name": "https", "conditions": conditions});
        let before = json!({"listeners": [listener(vec![
            condition("ResolvedRefs", "True", "ResolvedRefs", ""),
            condition("Conflicted", "False", "NoConflicts", ""),
        ])]});
        let after = json!({"listeners": [listener(vec![
            condition("ResolvedRefs", "False", "InvalidCertificateRef", "Secret apps/tls does not exist"),
            condition("Conflicted", "True", "HostnameConflict", "taken"),
        ])]});
        assert_eq!(
            new_warnings(Kind::Gateway, "apps", &before, &after, &owner()),
            vec![
                warning(
                    "InvalidCertificateRef",
                    "listener https: Secret apps/tls does not exist"
                ),
                warning("HostnameConflict", "listener https: taken"),
            ]
        );
    }

    #[test]
    fn notes_are_cut_to_what_the_api_server_accepts() {
        let long = "é".repeat(600);
        let cut = truncate(&long, MAX_NOTE);
        assert!(cut.len() <= MAX_NOTE);
        assert!(long.starts_with(&cut));
    }
}
