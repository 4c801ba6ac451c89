//! The objects of one test as the gateway will read them: base.yaml plus the test's manifests
//! with upstream's placeholders substituted, Namespaces labelled the way Kubernetes labels them,
//! EndpointSlices pointing at the echo backends, and the mid-test edits (`steps`).
//!
//! Objects are kept as JSON values (the YAML is parsed into them and written back out), so a step
//! can edit any field by path.

use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::cases::Step;
use crate::echo::Echoes;

/// The GatewayClass under test.
pub(crate) const GATEWAY_CLASS: &str = "portcullis";
/// The controller name the gateway serves (its default).
pub(crate) const CONTROLLER_NAME: &str = "portcullis.dev/gateway-controller";
/// GatewayStaticAddresses: an address the implementation can use (inside the gateway's
/// `--address-pool`, at its end, so no dynamically assigned Gateway holds it) ...
pub(crate) const USABLE_ADDRESS: &str = "127.0.10.250";
/// ... and one it cannot (loopback, but outside the pool; nothing is ever sent to it).
pub(crate) const UNUSABLE_ADDRESS: &str = "127.0.9.1";

/// Kinds in the manifests that stand for running workloads; standalone mode has none.
const WORKLOAD_KINDS: &[&str] = &["Deployment", "Pod"];

/// Reads the named manifest files (under `dir/manifests`) into objects, placeholders
/// substituted.
pub(crate) fn load(dir: &Path, names: &[String]) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for name in names {
        let path = dir.join("manifests").join(name);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let text = text
            .replace("{GATEWAY_CLASS_NAME}", GATEWAY_CLASS)
            .replace("{GATEWAY_CONTROLLER_NAME}", CONTROLLER_NAME);
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(document)
                .map_err(|e| format!("cannot parse {}: {e}", path.display()))?;
            if value.is_object() {
                docs.push(value);
            }
        }
    }
    docs.retain(|d| !WORKLOAD_KINDS.contains(&kind(d)));
    for d in &mut docs {
        match kind(d) {
            // Upstream overwrites the class of every Gateway, whatever the file says.
            "Gateway" => {
                d["spec"]["gatewayClassName"] = json!(GATEWAY_CLASS);
                // (`pointer_mut`, not indexing: indexing a missing key would insert a null.)
                if let Some(addresses) = d
                    .pointer_mut("/spec/addresses")
                    .and_then(Value::as_array_mut)
                {
                    for a in addresses {
                        let replacement = match a["value"].as_str() {
                            Some("PLACEHOLDER_USABLE_ADDRS") => USABLE_ADDRESS,
                            Some("PLACEHOLDER_UNUSABLE_ADDRS") => UNUSABLE_ADDRESS,
                            _ => continue,
                        };
                        *a = json!({"type": "IPAddress", "value": replacement});
                    }
                }
            }
            // Kubernetes labels every Namespace with its own name; listeners select on it.
            "Namespace" => {
                let name = d["metadata"]["name"].clone();
                let metadata = &mut d["metadata"];
                if !metadata["labels"].is_object() {
                    metadata["labels"] = json!({});
                }
                metadata["labels"]["kubernetes.io/metadata.name"] = name;
            }
            _ => {}
        }
    }
    Ok(docs)
}

/// The GatewayClass the test Gateways name. Its generation is set to `load` (a counter of
/// configurations written) and its description changes with it, so the status report tells
/// when the gateway has taken a configuration in: the class reports that generation.
pub(crate) fn gateway_class(load: u64) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayClass",
        "metadata": {"name": GATEWAY_CLASS, "generation": load},
        "spec": {
            "controllerName": CONTROLLER_NAME,
            "description": format!("conformance runner configuration {load}"),
        },
    })
}

/// Points every Service that has an echo at it: EndpointSlices shipped in the manifests are
/// filled in (IPv4 ones get the echo's address), the other Services get one generated.
pub(crate) fn add_endpoint_slices(docs: &mut Vec<Value>, echoes: &Echoes) {
    let mut shipped = Vec::new();
    for d in docs.iter_mut().filter(|d| kind(d) == "EndpointSlice") {
        let ns = namespace(d).unwrap_or("default").to_string();
        let Some(service) = d["metadata"]["labels"]["kubernetes.io/service-name"].as_str() else {
            continue;
        };
        let service = service.to_string();
        let Some(echo) = echoes.get(&ns, &service) else {
            continue;
        };
        shipped.push((ns, service));
        // Shipped slices carry the target port; the echo listens elsewhere.
        if let Some(ports) = d.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports {
                if let Some(real) = p["port"]
                    .as_u64()
                    .and_then(|t| u16::try_from(t).ok())
                    .and_then(|t| echo.real_port(t))
                {
                    p["port"] = json!(real);
                }
            }
        }
        // The echo is on IPv4 loopback only; a slice of another family stays empty.
        if d["addressType"].as_str().unwrap_or("IPv4") == "IPv4" {
            d["endpoints"] = json!([ready_endpoint()]);
        }
    }
    let mut generated = Vec::new();
    for d in docs.iter().filter(|d| kind(d) == "Service") {
        let ns = namespace(d).unwrap_or("default").to_string();
        let name = d["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if shipped.contains(&(ns.clone(), name.clone())) {
            continue;
        }
        let Some(echo) = echoes.get(&ns, &name) else {
            continue;
        };
        let mut ports = Vec::new();
        for p in d["spec"]["ports"].as_array().into_iter().flatten() {
            let target = p["targetPort"].as_u64().or_else(|| p["port"].as_u64());
            // A target port the echo does not serve gets no endpoint port, as in a cluster
            // whose pods do not listen there.
            let Some(real) = target
                .and_then(|t| u16::try_from(t).ok())
                .and_then(|t| echo.real_port(t))
            else {
                continue;
            };
            let mut port =
                json!({"port": real, "protocol": p["protocol"].as_str().unwrap_or("TCP")});
            if let Some(n) = p["name"].as_str() {
                port["name"] = json!(n);
            }
            if let Some(a) = p["appProtocol"].as_str() {
                port["appProtocol"] = json!(a);
            }
            ports.push(port);
        }
        generated.push(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{name}-conformance-echo"),
                "namespace": ns,
                "labels": {"kubernetes.io/service-name": name},
            },
            "addressType": "IPv4",
            "endpoints": [ready_endpoint()],
            "ports": ports,
        }));
    }
    docs.extend(generated);
}

fn ready_endpoint() -> Value {
    json!({
        "addresses": ["127.0.0.1"],
        "conditions": {"ready": true, "serving": true, "terminating": false},
    })
}

/// Applies a step's edit to the objects.
pub(crate) fn apply_step(docs: &mut Vec<Value>, step: &Step) -> Result<(), String> {
    let position = docs
        .iter()
        .position(|d| {
            kind(d) == step.kind
                && d["metadata"]["name"].as_str() == Some(step.name.as_str())
                && namespace(d) == step.namespace.as_deref()
        })
        .ok_or_else(|| {
            format!(
                "step: no {} {}/{} in the manifests",
                step.kind,
                step.namespace.as_deref().unwrap_or(""),
                step.name
            )
        })?;
    match step.action.as_str() {
        "delete" => {
            docs.remove(position);
            Ok(())
        }
        "patch" => {
            let change = step
                .change
                .as_ref()
                .ok_or("step: a patch without a change")?;
            patch(&mut docs[position], change)
        }
        other => Err(format!("step: unknown action {other:?}")),
    }
}

fn patch(target: &mut Value, change: &Value) -> Result<(), String> {
    if let (Some(path), Some(value)) = (change["path"].as_str(), change.get("value")) {
        let slot = field_mut(target, path)?;
        *slot = value.clone();
        return Ok(());
    }
    if let Some(listener) = change.get("append_listener") {
        let listeners = target
            .pointer_mut("/spec/listeners")
            .and_then(Value::as_array_mut)
            .ok_or("step: the object has no spec.listeners")?;
        listeners.push(listener.clone());
        return Ok(());
    }
    if let Some(keep) = change["keep_only_listeners"].as_array() {
        let listeners = target
            .pointer_mut("/spec/listeners")
            .and_then(Value::as_array_mut)
            .ok_or("step: the object has no spec.listeners")?;
        listeners.retain(|l| keep.contains(&l["name"]));
        return Ok(());
    }
    if let Some(which) = change["remove_address"].as_str() {
        let addresses = target
            .pointer_mut("/spec/addresses")
            .and_then(Value::as_array_mut)
            .ok_or("step: the object has no spec.addresses")?;
        // The data names the entry in words: either the substituted unusable address, or the
        // first entry.
        if which.contains("unusable") {
            addresses.retain(|a| a["value"].as_str() != Some(UNUSABLE_ADDRESS));
        } else if which.contains("first") && !addresses.is_empty() {
            addresses.remove(0);
        } else {
            return Err(format!("step: cannot tell which address {which:?} means"));
        }
        return Ok(());
    }
    Err(format!("step: unknown change {change}"))
}

/// The field at a dotted path with `[i]` indices (`spec.rules[0].backendRefs[0].name`),
/// created if the last object level lacks it.
fn field_mut<'a>(mut node: &'a mut Value, path: &str) -> Result<&'a mut Value, String> {
    for segment in path.split('.') {
        let (key, indices) = match segment.find('[') {
            Some(i) => (&segment[..i], &segment[i..]),
            None => (segment, ""),
        };
        if !key.is_empty() {
            let object = node
                .as_object_mut()
                .ok_or_else(|| format!("step: {path}: {key} is not inside an object"))?;
            node = object.entry(key.to_string()).or_insert(Value::Null);
        }
        for index in indices.split('[').filter(|s| !s.is_empty()) {
            let i: usize = index
                .trim_end_matches(']')
                .parse()
                .map_err(|_| format!("step: {path}: bad index {index:?}"))?;
            node = node
                .as_array_mut()
                .and_then(|a| a.get_mut(i))
                .ok_or_else(|| format!("step: {path}: no element {i}"))?;
        }
    }
    Ok(node)
}

/// An object's kind.
pub(crate) fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

/// An object's namespace, if the file gives one.
pub(crate) fn namespace(doc: &Value) -> Option<&str> {
    doc["metadata"]["namespace"].as_str()
}

/// The objects as one multi-document YAML file.
pub(crate) fn to_yaml(docs: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    for d in docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(d).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// Self-checks run by `selfcheck`.
pub(crate) fn self_check() -> Result<(), String> {
    let mut route = json!({"spec": {"rules": [{"backendRefs": [{"name": "a"}]}]}});
    *field_mut(&mut route, "spec.rules[0].backendRefs[0].name")? = json!("b");
    if route["spec"]["rules"][0]["backendRefs"][0]["name"] != "b" {
        return Err("field_mut did not set an indexed path".into());
    }
    let mut class = json!({"spec": {"controllerName": "x"}});
    *field_mut(&mut class, "spec.description")? = json!("new");
    if class["spec"]["description"] != "new" {
        return Err("field_mut did not create a missing field".into());
    }
    if field_mut(&mut route, "spec.rules[3].name").is_ok() {
        return Err("field_mut accepted a missing index".into());
    }
    Ok(())
}
