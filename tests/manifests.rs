//! The Kubernetes manifests that ship with Portcullis, checked offline.
//!
//! Every YAML document under `manifests/` must parse into its API type without losing a field
//! (a misspelt field would otherwise be dropped in silence, and with it a security setting), run
//! pods that meet the restricted Pod Security Standard, and grant exactly the API permissions of
//! the table below, with each workload's leader-election Lease granted by name.
//! `ci/security-checks.sh` renders the Helm chart and sets `PORTCULLIS_RENDERED_MANIFESTS` to the
//! rendered directories (separated by `:`), which are then held to the same rules, and to one
//! more: each workload has its own Service and PodDisruptionBudget, selecting its pods and no
//! other's. The directory rendered from `charts/portcullis/ci/per-gateway-values.yaml` must hold
//! one workload per Gateway listed there.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use gateway_api::gatewayclasses::GatewayClass;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    Container, Namespace, PodSpec, PodTemplateSpec, Probe, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use portcullis::controller::kubernetes::default_lease_name;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_yaml::Value;

const NAMESPACE: &str = "portcullis-system";
const SERVICE_ACCOUNT: &str = "portcullis";
const CONTROLLER_NAME: &str = "portcullis.dev/gateway-controller";
const USER: i64 = 65532;
const ADMIN_PORT: i32 = 9901;
#[path = "support/rbac.rs"]
mod rbac;
use rbac::{CLUSTER_GRANTS, OWN_LEASE_VERBS, OWN_NAMESPACE_GRANTS};

/// Resources of the table that are not namespaced: a Role cannot grant them.
const CLUSTER_SCOPED: &[&str] = &["gatewayclasses", "gatewayclasses/status", "namespaces"];

/// Volume types the restricted profile allows.
const RESTRICTED_VOLUME_TYPES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests")
}

/// Every object of one directory tree, by kind.
#[derive(Default)]
struct Manifests {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    services: Vec<Service>,
    deployments: Vec<Deployment>,
    daemon_sets: Vec<DaemonSet>,
    disruption_budgets: Vec<PodDisruptionBudget>,
    network_policies: Vec<NetworkPolicy>,
    gateway_classes: Vec<GatewayClass>,
}

impl Manifests {
    /// Parses every `*.yaml` under `dir` except kustomizations. Panics naming the file and
    /// document at fault.
    fn load(dir: &Path) -> Self {
        let mut out = Manifests::default();
        let files = yaml_files(dir);
        assert!(!files.is_empty(), "no YAML under {}", dir.display());
        for file in files.iter().filter(|f| !is_kustomization(f)) {
            let text = std::fs::read_to_string(file).unwrap();
            for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
                let value = Value::deserialize(document)
                    .unwrap_or_else(|e| panic!("{} document {index}: {e}", file.display()));
                if value.is_null() {
                    continue;
                }
                let at = format!("{} document {index}", file.display());
                out.add(&at, value);
            }
        }
        out
    }

    fn add(&mut self, at: &str, value: Value) {
        let api_version = value["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        match (api_version.as_str(), kind.as_str()) {
            ("v1", "Namespace") => self.namespaces.push(parse(at, value)),
            ("v1", "ServiceAccount") => self.service_accounts.push(parse(at, value)),
            ("v1", "Service") => self.services.push(parse(at, value)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                self.cluster_roles.push(parse(at, value))
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                self.cluster_role_bindings.push(parse(at, value))
            }
            ("rbac.authorization.k8s.io/v1", "Role") => self.roles.push(parse(at, value)),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                self.role_bindings.push(parse(at, value))
            }
            ("apps/v1", "Deployment") => self.deployments.push(parse(at, value)),
            ("apps/v1", "DaemonSet") => self.daemon_sets.push(parse(at, value)),
            ("policy/v1", "PodDisruptionBudget") => self.disruption_budgets.push(parse(at, value)),
            ("networking.k8s.io/v1", "NetworkPolicy") => {
                self.network_policies.push(parse(at, value))
            }
            ("gateway.networking.k8s.io/v1", "GatewayClass") => {
                self.gateway_classes.push(parse(at, value))
            }
            // A new kind needs its API type here, and whatever rules apply to it below.
            _ => panic!("{at}: {api_version} {kind} is not a kind this test knows"),
        }
    }

    /// Every pod template, named `Kind namespace/name`.
    fn pod_templates(&self) -> Vec<(String, &PodTemplateSpec)> {
        let deployments = self.deployments.iter().filter_map(|d| {
            let template = &d.spec.as_ref()?.template;
            Some((format!("Deployment {}", name_of(&d.metadata)), template))
        });
        let daemon_sets = self.daemon_sets.iter().filter_map(|d| {
            let template = &d.spec.as_ref()?.template;
            Some((format!("DaemonSet {}", name_of(&d.metadata)), template))
        });
        deployments.chain(daemon_sets).collect()
    }

    /// Every gateway workload: the pod templates, with what their pods select and elect by.
    fn workloads(&self) -> Vec<Workload> {
        let deployments = self.deployments.iter().filter_map(|d| {
            let spec = d.spec.as_ref()?;
            Some(("Deployment", &d.metadata, &spec.selector, &spec.template))
        });
        let daemon_sets = self.daemon_sets.iter().filter_map(|d| {
            let spec = d.spec.as_ref()?;
            Some(("DaemonSet", &d.metadata, &spec.selector, &spec.template))
        });
        deployments
            .chain(daemon_sets)
            .map(|(kind, metadata, selector, template)| {
                let args = template
                    .spec
                    .iter()
                    .flat_map(|s| &s.containers)
                    .find(|c| c.name == "portcullis")
                    .and_then(|c| c.args.clone())
                    .unwrap_or_default();
                let gateway = flag(&args, "--gateway");
                let lease = flag(&args, "--lease-name")
                    .unwrap_or_else(|| default_lease_name(gateway.as_deref()));
                Workload {
                    name: format!("{kind} {}", name_of(metadata)),
                    namespace: metadata.namespace.clone().unwrap_or_default(),
                    selector: selector.clone(),
                    labels: template
                        .metadata
                        .as_ref()
                        .and_then(|m| m.labels.clone())
                        .unwrap_or_default(),
                    gateway,
                    lease,
                    service: flag(&args, "--gateway-service"),
                }
            })
            .collect()
    }

    /// Every permission granted, with where it applies.
    fn grants(&self) -> Result<BTreeSet<Grant>, String> {
        let mut out = BTreeSet::new();
        for role in &self.cluster_roles {
            if role.aggregation_rule.is_some() {
                return Err(format!(
                    "ClusterRole {}: aggregates other roles",
                    name_of(&role.metadata)
                ));
            }
            for rule in role.rules.iter().flatten() {
                expand(rule, &Scope::Cluster, &mut out)?;
            }
        }
        for role in &self.roles {
            let scope = Scope::Namespace(role.metadata.namespace.clone().unwrap_or_default());
            for rule in role.rules.iter().flatten() {
                expand(rule, &scope, &mut out)?;
            }
        }
        Ok(out)
    }
}

/// One gateway workload (a Deployment or a DaemonSet), as far as these rules look at it.
struct Workload {
    /// `Kind namespace/name`.
    name: String,
    namespace: String,
    /// `spec.selector`.
    selector: LabelSelector,
    /// The labels of its pods.
    labels: BTreeMap<String, String>,
    /// `--gateway`: the one Gateway it serves, if scoped.
    gateway: Option<String>,
    /// The Lease it elects its status writer through: `--lease-name`, else the binary's default.
    lease: String,
    /// `--gateway-service`.
    service: Option<String>,
}

/// Whether `selector` picks pods labelled `labels`; an error for a selector these rules cannot
/// judge (`matchExpressions`) or that picks every pod (empty).
fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> Result<bool, String> {
    if selector
        .match_expressions
        .as_ref()
        .is_some_and(|e| !e.is_empty())
    {
        return Err("uses matchExpressions, which these rules do not evaluate".to_string());
    }
    let wanted = selector.match_labels.clone().unwrap_or_default();
    if wanted.is_empty() {
        return Err("selects every pod".to_string());
    }
    Ok(wanted.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

fn is_kustomization(file: &Path) -> bool {
    file.file_name().is_some_and(|n| n == "kustomization.yaml")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            out.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    out
}

/// Deserializes `value` into `T`; panics naming `at` when [`try_parse`] fails.
fn parse<T: DeserializeOwned + Serialize>(at: &str, value: Value) -> T {
    try_parse(value).unwrap_or_else(|e| panic!("{at}: {e}"))
}

/// Deserializes `value` into `T`, and fails when serializing it back does not give `value`:
/// the API types skip fields they do not know, so a misspelt field would vanish unnoticed.
fn try_parse<T: DeserializeOwned + Serialize>(value: Value) -> Result<T, String> {
    let typed: T = serde_yaml::from_value(value.clone()).map_err(|e| e.to_string())?;
    let back = serde_yaml::to_value(&typed).map_err(|e| e.to_string())?;
    match first_difference(&value, &back, String::new()) {
        Some(path) => Err(format!(
            "`{path}` is not a field of its API type (or has the wrong type)"
        )),
        None => Ok(typed),
    }
}

fn first_difference(original: &Value, parsed: &Value, path: String) -> Option<String> {
    match (original, parsed) {
        (Value::Mapping(a), Value::Mapping(b)) => {
            for (key, value) in a {
                let key_text = key.as_str().unwrap_or("?");
                let here = format!("{path}.{key_text}");
                match b.get(key) {
                    Some(other) => {
                        if let Some(found) = first_difference(value, other, here) {
                            return Some(found);
                        }
                    }
                    None if value.is_null() => {}
                    None => return Some(here),
                }
            }
            None
        }
        (Value::Sequence(a), Value::Sequence(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(x, y, format!("{path}[{i}]"))),
        _ if original == parsed => None,
        _ => Some(path),
    }
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    match &meta.namespace {
        Some(ns) => format!("{ns}/{}", meta.name.as_deref().unwrap_or("?")),
        None => meta.name.clone().unwrap_or_else(|| "?".to_string()),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    Cluster,
    Namespace(String),
}

/// One verb on one resource, as RBAC evaluates it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Grant {
    scope: Scope,
    group: String,
    resource: String,
    verb: String,
    name: Option<String>,
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scope = match &self.scope {
            Scope::Cluster => "cluster-wide".to_string(),
            Scope::Namespace(ns) => format!("in {ns}"),
        };
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {} ({group}) {scope}", self.verb, self.resource)?;
        if let Some(name) = &self.name {
            write!(f, " named {name}")?;
        }
        Ok(())
    }
}

fn expand(rule: &PolicyRule, scope: &Scope, out: &mut BTreeSet<Grant>) -> Result<(), String> {
    if rule
        .non_resource_urls
        .as_ref()
        .is_some_and(|u| !u.is_empty())
    {
        return Err(format!("a rule grants non-resource URLs: {rule:?}"));
    }
    let names: Vec<Option<String>> = match &rule.resource_names {
        Some(names) if !names.is_empty() => names.iter().cloned().map(Some).collect(),
        _ => vec![None],
    };
    for group in rule.api_groups.iter().flatten() {
        for resource in rule.resources.iter().flatten() {
            for verb in &rule.verbs {
                for name in &names {
                    out.insert(Grant {
                        scope: scope.clone(),
                        group: group.clone(),
                        resource: resource.clone(),
                        verb: verb.clone(),
                        name: name.clone(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// The allowed table as grants, with the Leases named `leases` in `namespace`.
fn allowed_grants(namespace: &str, leases: &BTreeSet<String>) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for (group, resources, verbs) in CLUSTER_GRANTS {
        for resource in *resources {
            for verb in *verbs {
                out.insert(Grant {
                    scope: Scope::Cluster,
                    group: group.to_string(),
                    resource: resource.to_string(),
                    verb: verb.to_string(),
                    name: None,
                });
            }
        }
    }
    for (group, resource, verbs) in OWN_NAMESPACE_GRANTS {
        for verb in *verbs {
            out.insert(Grant {
                scope: Scope::Namespace(namespace.to_string()),
                group: group.to_string(),
                resource: resource.to_string(),
                verb: verb.to_string(),
                name: None,
            });
        }
    }
    for lease in leases {
        for verb in OWN_LEASE_VERBS {
            out.insert(Grant {
                scope: Scope::Namespace(namespace.to_string()),
                group: "coordination.k8s.io".to_string(),
                resource: "leases".to_string(),
                verb: verb.to_string(),
                name: Some(lease.clone()),
            });
        }
    }
    out
}

/// Whether `grant` is in the table, reading a Role's grant of a namespaced resource in any
/// namespace as the narrower form of the same cluster-wide grant (the chart's watchNamespaces).
fn is_allowed(grant: &Grant, allowed: &BTreeSet<Grant>) -> bool {
    if allowed.contains(grant) {
        return true;
    }
    let widened = Grant {
        scope: Scope::Cluster,
        ..grant.clone()
    };
    matches!(grant.scope, Scope::Namespace(_))
        && !CLUSTER_SCOPED.contains(&grant.resource.as_str())
        && allowed.contains(&widened)
}

/// Whether some grant in `grants` gives what `wanted` does (in one namespace at least, for a
/// namespaced resource narrowed to some namespaces).
fn is_covered(wanted: &Grant, grants: &BTreeSet<Grant>) -> bool {
    grants.iter().any(|g| {
        g.group == wanted.group
            && g.resource == wanted.resource
            && g.verb == wanted.verb
            && g.name == wanted.name
            && (g.scope == wanted.scope || wanted.scope == Scope::Cluster)
    })
}

fn own_namespace(manifests: &Manifests) -> String {
    let namespaces: BTreeSet<_> = manifests
        .service_accounts
        .iter()
        .filter(|sa| sa.metadata.name.as_deref() == Some(SERVICE_ACCOUNT))
        .filter_map(|sa| sa.metadata.namespace.clone())
        .collect();
    assert_eq!(
        namespaces.len(),
        1,
        "one ServiceAccount {SERVICE_ACCOUNT} expected"
    );
    namespaces.into_iter().next().unwrap()
}

fn rbac_problems(manifests: &Manifests, exact: bool) -> Vec<String> {
    let own = own_namespace(manifests);
    let grants = match manifests.grants() {
        Ok(grants) => grants,
        Err(problem) => return vec![problem],
    };
    let leases = manifests.workloads().into_iter().map(|w| w.lease).collect();
    let allowed = allowed_grants(&own, &leases);
    let mut problems: Vec<String> = grants
        .iter()
        .filter(|g| !is_allowed(g, &allowed))
        .map(|g| format!("grants {g}, which is not in the allowed table"))
        .collect();
    let missing = allowed.into_iter().filter(|wanted| {
        if exact {
            !grants.contains(wanted)
        } else {
            !is_covered(wanted, &grants)
        }
    });
    problems.extend(missing.map(|g| format!("does not grant {g}, which the gateway needs")));
    problems
}

fn binding_problems(manifests: &Manifests) -> Vec<String> {
    let own = own_namespace(manifests);
    let cluster_roles: BTreeSet<_> = manifests
        .cluster_roles
        .iter()
        .filter_map(|r| r.metadata.name.clone())
        .collect();
    let roles: BTreeSet<_> = manifests
        .roles
        .iter()
        .map(|r| (r.metadata.namespace.clone(), r.metadata.name.clone()))
        .collect();
    let subjects_ok = |subjects: &Option<Vec<Subject>>| {
        let expected = [Subject {
            kind: "ServiceAccount".to_string(),
            name: SERVICE_ACCOUNT.to_string(),
            namespace: Some(own.clone()),
            api_group: None,
        }];
        subjects.as_deref() == Some(&expected[..])
    };
    let mut problems = Vec::new();
    for binding in &manifests.cluster_role_bindings {
        let name = name_of(&binding.metadata);
        if !subjects_ok(&binding.subjects) {
            problems.push(format!("ClusterRoleBinding {name} binds another subject"));
        }
        let RoleRef {
            kind, name: role, ..
        } = &binding.role_ref;
        if kind != "ClusterRole" || !cluster_roles.contains(role) {
            problems.push(format!(
                "ClusterRoleBinding {name} binds {kind} {role}, not ours"
            ));
        }
    }
    for binding in &manifests.role_bindings {
        let name = name_of(&binding.metadata);
        if !subjects_ok(&binding.subjects) {
            problems.push(format!("RoleBinding {name} binds another subject"));
        }
        let RoleRef {
            kind, name: role, ..
        } = &binding.role_ref;
        let ours = kind == "Role"
            && roles.contains(&(binding.metadata.namespace.clone(), Some(role.clone())));
        if !ours {
            problems.push(format!(
                "RoleBinding {name} binds {kind} {role}, not one of ours"
            ));
        }
    }
    problems
}

/// Each workload apart from the others: its selector, its Service (`--gateway-service`) and its
/// PodDisruptionBudget pick its pods and no other workload's; its Lease is its own, and for a
/// workload scoped to one Gateway the Lease the binary elects through when run by hand; and no
/// workload serving every Gateway runs beside scoped ones, which would serve theirs twice.
fn workload_problems(manifests: &Manifests) -> Vec<String> {
    let workloads = manifests.workloads();
    let mut problems = Vec::new();
    let scoped = workloads.iter().filter(|w| w.gateway.is_some()).count();
    if scoped > 0 && scoped < workloads.len() {
        problems.push(
            "a workload serving every Gateway runs beside workloads scoped to one Gateway, \
             whose Gateways would then be served twice"
                .to_string(),
        );
    }
    let mut leases = BTreeSet::new();
    for w in &workloads {
        if !leases.insert(&w.lease) {
            problems.push(format!(
                "{}: Lease {} is another workload's too",
                w.name, w.lease
            ));
        }
        if let Some(gateway) = &w.gateway {
            let default = default_lease_name(Some(gateway));
            if w.lease != default {
                problems.push(format!(
                    "{}: elects through Lease {}, not {default}, the one `portcullis run \
                     --gateway {gateway}` elects through",
                    w.name, w.lease
                ));
            }
        }
        let others: Vec<&Workload> = workloads.iter().filter(|o| o.name != w.name).collect();
        let check =
            |what: String, selector: &LabelSelector| selector_problems(&what, selector, w, &others);
        problems.extend(check(format!("{}'s own selector", w.name), &w.selector));
        let service = w.service.as_ref().and_then(|name| {
            manifests.services.iter().find(|s| {
                s.metadata.name.as_ref() == Some(name)
                    && s.metadata.namespace.as_ref() == Some(&w.namespace)
            })
        });
        match service {
            Some(service) => {
                let selector = LabelSelector {
                    match_labels: service.spec.as_ref().and_then(|s| s.selector.clone()),
                    ..LabelSelector::default()
                };
                problems.extend(check(
                    format!("Service {}", name_of(&service.metadata)),
                    &selector,
                ));
            }
            None => problems.push(format!(
                "{}: --gateway-service {:?} names no Service in {}",
                w.name, w.service, w.namespace
            )),
        }
        let budgets: Vec<&PodDisruptionBudget> = manifests
            .disruption_budgets
            .iter()
            .filter(|b| {
                let selector = b.spec.as_ref().and_then(|s| s.selector.clone());
                selector.is_some_and(|s| selects(&s, &w.labels) == Ok(true))
            })
            .collect();
        match budgets[..] {
            [budget] => {
                let selector = budget.spec.as_ref().and_then(|s| s.selector.clone());
                problems.extend(check(
                    format!("PodDisruptionBudget {}", name_of(&budget.metadata)),
                    &selector.unwrap_or_default(),
                ));
            }
            _ => problems.push(format!(
                "{}: {} PodDisruptionBudgets select its pods, not one",
                w.name,
                budgets.len()
            )),
        }
    }
    problems
}

/// What `selector`, held by `what`, gets wrong: not picking `workload`'s pods, or picking those
/// of one of `others` as well.
fn selector_problems(
    what: &str,
    selector: &LabelSelector,
    workload: &Workload,
    others: &[&Workload],
) -> Vec<String> {
    match selects(selector, &workload.labels) {
        Err(problem) => vec![format!("{what}: {problem}")],
        Ok(false) => vec![format!(
            "{what} does not select the pods of {}",
            workload.name
        )],
        Ok(true) => others
            .iter()
            .filter(|o| selects(selector, &o.labels) == Ok(true))
            .map(|o| {
                format!(
                    "{what} selects the pods of {} as well as those of {}",
                    o.name, workload.name
                )
            })
            .collect(),
    }
}

/// The restricted Pod Security Standard (plus this project's own rules: uid 65532, read-only
/// root, resources, probes, metrics annotations, a grace period that outlasts the drain).
fn pod_problems(name: &str, template: &PodTemplateSpec) -> Vec<String> {
    let mut problems = Vec::new();
    let mut fail = |what: String| problems.push(format!("{name}: {what}"));
    let Some(spec) = &template.spec else {
        fail("no pod spec".to_string());
        return problems;
    };
    pod_level_problems(spec, &mut fail);
    let annotations = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone());
    let annotation = |key: &str| annotations.as_ref().and_then(|a| a.get(key).cloned());
    if annotation("prometheus.io/scrape").as_deref() != Some("true")
        || annotation("prometheus.io/port") != Some(ADMIN_PORT.to_string())
        || annotation("prometheus.io/path").as_deref() != Some("/metrics")
    {
        fail("Prometheus scrape annotations missing (port 9901, path /metrics)".to_string());
    }
    let init = spec.init_containers.iter().flatten();
    for container in spec.containers.iter().chain(init) {
        container_problems(spec, container, &mut fail);
    }
    let gateway = spec.containers.iter().find(|c| c.name == "portcullis");
    match gateway {
        Some(container) => gateway_problems(spec, container, &mut fail),
        None => fail("no container named portcullis".to_string()),
    }
    problems
}

fn pod_level_problems(spec: &PodSpec, fail: &mut impl FnMut(String)) {
    for (flag, set) in [
        ("hostNetwork", spec.host_network),
        ("hostPID", spec.host_pid),
        ("hostIPC", spec.host_ipc),
        ("hostUsers", spec.host_users.map(|v| !v)),
    ] {
        if set == Some(true) {
            fail(format!("{flag} is not allowed"));
        }
    }
    for volume in spec.volumes.iter().flatten() {
        let value = serde_yaml::to_value(volume).unwrap();
        let types: Vec<_> = value
            .as_mapping()
            .into_iter()
            .flatten()
            .filter_map(|(k, _)| k.as_str())
            .filter(|k| *k != "name")
            .collect();
        if types.iter().any(|t| !RESTRICTED_VOLUME_TYPES.contains(t)) {
            fail(format!(
                "volume {} is of a type the restricted profile forbids",
                volume.name
            ));
        }
    }
    let context = spec.security_context.clone().unwrap_or_default();
    if context.sysctls.as_ref().is_some_and(|s| !s.is_empty()) {
        fail("sets sysctls".to_string());
    }
    if context.run_as_non_root != Some(true) {
        fail("pod securityContext.runAsNonRoot is not true".to_string());
    }
    if context.run_as_user != Some(USER) || context.run_as_group != Some(USER) {
        fail(format!("pod securityContext does not run as {USER}:{USER}"));
    }
    let seccomp = context.seccomp_profile.as_ref().map(|p| p.type_.as_str());
    if seccomp != Some("RuntimeDefault") {
        fail("pod seccompProfile is not RuntimeDefault".to_string());
    }
    if spec.service_account_name.as_deref() != Some(SERVICE_ACCOUNT) {
        fail(format!("does not run as ServiceAccount {SERVICE_ACCOUNT}"));
    }
    // The ServiceAccount does not automount its token; the gateway's pods opt in.
    if spec.automount_service_account_token != Some(true) {
        fail("automountServiceAccountToken is not true (the gateway reads the API)".to_string());
    }
}

fn container_problems(spec: &PodSpec, container: &Container, fail: &mut impl FnMut(String)) {
    let name = &container.name;
    let pod = spec.security_context.clone().unwrap_or_default();
    let context = container.security_context.clone().unwrap_or_default();
    if context.privileged == Some(true) {
        fail(format!("container {name} is privileged"));
    }
    if context.allow_privilege_escalation != Some(false) {
        fail(format!(
            "container {name}: allowPrivilegeEscalation is not false"
        ));
    }
    if context.read_only_root_filesystem != Some(true) {
        fail(format!(
            "container {name}: readOnlyRootFilesystem is not true"
        ));
    }
    if context.run_as_non_root == Some(false) {
        fail(format!("container {name}: runAsNonRoot is false"));
    }
    let user = context.run_as_user.or(pod.run_as_user);
    let group = context.run_as_group.or(pod.run_as_group);
    if user != Some(USER) || group != Some(USER) {
        fail(format!("container {name} does not run as {USER}:{USER}"));
    }
    if context
        .proc_mount
        .as_deref()
        .is_some_and(|m| m != "Default")
    {
        fail(format!("container {name}: procMount is not Default"));
    }
    let seccomp = context.seccomp_profile.as_ref().map(|p| p.type_.as_str());
    if matches!(seccomp, Some(t) if t != "RuntimeDefault" && t != "Localhost") {
        fail(format!(
            "container {name}: seccompProfile {seccomp:?} is not allowed"
        ));
    }
    let capabilities = context.capabilities.unwrap_or_default();
    if !capabilities.drop.iter().flatten().any(|c| c == "ALL") {
        fail(format!("container {name} does not drop ALL capabilities"));
    }
    if capabilities
        .add
        .iter()
        .flatten()
        .any(|c| c != "NET_BIND_SERVICE")
    {
        fail(format!(
            "container {name} adds a capability other than NET_BIND_SERVICE"
        ));
    }
    for port in container.ports.iter().flatten() {
        if port.host_port.is_some() {
            fail(format!("container {name} uses a hostPort"));
        }
    }
    let resources = container.resources.clone().unwrap_or_default();
    for (what, map) in [
        ("requests", resources.requests),
        ("limits", resources.limits),
    ] {
        let map = map.unwrap_or_default();
        if !map.contains_key("cpu") || !map.contains_key("memory") {
            fail(format!("container {name} has no cpu and memory {what}"));
        }
    }
    if container
        .image
        .as_deref()
        .is_none_or(|i| i.ends_with(":latest") || !i.contains(':'))
    {
        fail(format!(
            "container {name}: image has no version tag or digest"
        ));
    }
}

fn gateway_problems(spec: &PodSpec, container: &Container, fail: &mut impl FnMut(String)) {
    let admin_port = container
        .ports
        .iter()
        .flatten()
        .find(|p| p.container_port == ADMIN_PORT)
        .and_then(|p| p.name.clone());
    let probe_ok = |probe: &Option<Probe>, path: &str| {
        let Some(get) = probe.as_ref().and_then(|p| p.http_get.as_ref()) else {
            return false;
        };
        let port_ok = match &get.port {
            IntOrString::Int(port) => *port == ADMIN_PORT,
            IntOrString::String(name) => admin_port.as_ref() == Some(name),
        };
        get.path.as_deref() == Some(path) && port_ok
    };
    if !probe_ok(&container.liveness_probe, "/healthz") {
        fail(format!(
            "liveness probe is not GET /healthz on port {ADMIN_PORT}"
        ));
    }
    if !probe_ok(&container.readiness_probe, "/readyz") {
        fail(format!(
            "readiness probe is not GET /readyz on port {ADMIN_PORT}"
        ));
    }
    let args = container.args.clone().unwrap_or_default();
    if flag(&args, "--admin-addr").is_none_or(|a| !a.ends_with(&format!(":{ADMIN_PORT}"))) {
        fail(format!("--admin-addr does not serve port {ADMIN_PORT}"));
    }
    if flag(&args, "--controller-name").is_some_and(|c| c != CONTROLLER_NAME) {
        fail(format!("--controller-name is not {CONTROLLER_NAME}"));
    }
    let drain = match flag(&args, "--drain-timeout") {
        Some(text) => parse_seconds(&text),
        None => Some(20),
    };
    let Some(drain) = drain else {
        fail("--drain-timeout is not a whole number of seconds or minutes".to_string());
        return;
    };
    let pause = container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.sleep.as_ref())
        .map_or(0, |s| s.seconds);
    // After SIGTERM the gateway serves open connections for one more second, then drains.
    let needed = pause + 1 + drain;
    let grace = spec.termination_grace_period_seconds.unwrap_or(30);
    if grace <= needed {
        fail(format!(
            "terminationGracePeriodSeconds {grace} does not outlast the preStop pause ({pause}s), \
             the close notice (1s) and --drain-timeout ({drain}s)"
        ));
    }
}

/// The value of `--name=value` or `--name value` in `args`.
fn flag(args: &[String], name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    args.iter().enumerate().find_map(|(i, arg)| {
        if let Some(value) = arg.strip_prefix(&prefix) {
            Some(value.to_string())
        } else if arg == name {
            args.get(i + 1).cloned()
        } else {
            None
        }
    })
}

fn parse_seconds(text: &str) -> Option<i64> {
    if let Some(n) = text.strip_suffix('s') {
        n.parse().ok()
    } else if let Some(n) = text.strip_suffix('m') {
        n.parse::<i64>().ok().map(|m| m * 60)
    } else {
        None
    }
}

fn all_pod_problems(manifests: &Manifests) -> Vec<String> {
    let templates = manifests.pod_templates();
    assert!(!templates.is_empty(), "no pod templates found");
    templates
        .iter()
        .flat_map(|(name, t)| pod_problems(name, t))
        .collect()
}

fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

#[test]
fn every_manifest_parses_into_its_api_type() {
    let manifests = Manifests::load(&manifests_dir());
    assert_eq!(manifests.namespaces.len(), 1);
    assert_eq!(manifests.service_accounts.len(), 1);
    assert_eq!(manifests.deployments.len(), 1);
    assert_eq!(manifests.daemon_sets.len(), 1);
    assert_eq!(manifests.services.len(), 1);
    assert_eq!(manifests.disruption_budgets.len(), 1);
    assert_eq!(manifests.network_policies.len(), 1);
}

#[test]
fn pods_meet_the_restricted_pod_security_standard() {
    let manifests = Manifests::load(&manifests_dir());
    assert_no_problems("pod templates", &all_pod_problems(&manifests));
}

#[test]
fn rbac_grants_exactly_the_allowed_table() {
    let manifests = Manifests::load(&manifests_dir());
    assert_no_problems("RBAC", &rbac_problems(&manifests, true));
}

#[test]
fn bindings_name_only_the_gateway_account_and_its_own_roles() {
    let manifests = Manifests::load(&manifests_dir());
    assert_no_problems("bindings", &binding_problems(&manifests));
}

#[test]
fn a_widened_rule_is_caught() {
    let mut manifests = Manifests::load(&manifests_dir());
    let rules = manifests.cluster_roles[0]
        .rules
        .get_or_insert_with(Vec::new);
    rules[0].verbs.push("delete".to_string());
    let problems = rbac_problems(&manifests, true);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("grants delete gatewayclasses")),
        "{problems:?}"
    );
}

#[test]
fn a_misspelt_field_is_caught() {
    let yaml = "
apiVersion: v1
kind: ServiceAccount
metadata: {name: portcullis}
automountServiceAcountToken: false
";
    let value: Value = serde_yaml::from_str(yaml).unwrap();
    let err = try_parse::<ServiceAccount>(value).unwrap_err();
    assert!(err.contains(".automountServiceAcountToken"), "{err}");
}

#[test]
fn deployment_and_daemonset_run_the_same_pod() {
    let manifests = Manifests::load(&manifests_dir());
    let deployment = &manifests.deployments[0].spec.as_ref().unwrap().template;
    let daemon_set = &manifests.daemon_sets[0].spec.as_ref().unwrap().template;
    let deployment = serde_yaml::to_value(deployment).unwrap();
    let daemon_set = serde_yaml::to_value(daemon_set).unwrap();
    let differs = first_difference(&deployment, &daemon_set, ".template".to_string())
        .or_else(|| first_difference(&daemon_set, &deployment, ".template".to_string()));
    assert_eq!(differs, None, "the pod templates differ");
}

#[test]
fn every_object_lives_in_the_gateway_namespace() {
    let manifests = Manifests::load(&manifests_dir());
    let namespace = manifests.namespaces[0].metadata.name.as_deref();
    assert_eq!(namespace, Some(NAMESPACE));
    let labels = manifests.namespaces[0]
        .metadata
        .labels
        .clone()
        .unwrap_or_default();
    let enforce = labels
        .get("pod-security.kubernetes.io/enforce")
        .map(String::as_str);
    assert_eq!(enforce, Some("restricted"));
    let namespaced = [
        name_of(&manifests.service_accounts[0].metadata),
        name_of(&manifests.services[0].metadata),
        name_of(&manifests.deployments[0].metadata),
        name_of(&manifests.daemon_sets[0].metadata),
        name_of(&manifests.disruption_budgets[0].metadata),
        name_of(&manifests.network_policies[0].metadata),
    ];
    for name in namespaced {
        assert!(name.starts_with(&format!("{NAMESPACE}/")), "{name}");
    }
}

#[test]
fn gateway_class_names_the_portcullis_controller() {
    let manifests = Manifests::load(&manifests_dir());
    let class = &manifests.gateway_classes[0];
    assert_eq!(class.metadata.name.as_deref(), Some("portcullis"));
    assert_eq!(class.spec.controller_name, CONTROLLER_NAME);
}

#[test]
fn kustomizations_name_every_manifest_and_only_existing_files() {
    let dir = manifests_dir();
    let mut named = BTreeSet::new();
    for kustomization in yaml_files(&dir).into_iter().filter(|f| is_kustomization(f)) {
        let text = std::fs::read_to_string(&kustomization).unwrap();
        let value: Value = serde_yaml::from_str(&text).unwrap();
        let base = kustomization.parent().unwrap();
        for resource in value["resources"].as_sequence().into_iter().flatten() {
            let path = base.join(resource.as_str().unwrap());
            assert!(
                path.exists(),
                "{}: {} does not exist",
                kustomization.display(),
                path.display()
            );
            named.insert(path.canonicalize().unwrap());
        }
    }
    for file in yaml_files(&dir)
        .into_iter()
        .filter(|f| !is_kustomization(f))
    {
        let file = file.canonicalize().unwrap();
        assert!(
            named.contains(&file),
            "no kustomization names {}",
            file.display()
        );
    }
}

#[test]
fn a_lease_granted_to_no_workload_is_caught_and_so_is_a_workload_without_its_own() {
    let mut manifests = Manifests::load(&manifests_dir());
    let templates = manifests
        .deployments
        .iter_mut()
        .filter_map(|d| d.spec.as_mut().map(|s| &mut s.template))
        .chain(
            manifests
                .daemon_sets
                .iter_mut()
                .filter_map(|d| d.spec.as_mut().map(|s| &mut s.template)),
        );
    for template in templates {
        let container = &mut template.spec.as_mut().unwrap().containers[0];
        for arg in container.args.iter_mut().flatten() {
            if arg.starts_with("--lease-name=") {
                *arg = "--lease-name=elsewhere".to_string();
            }
        }
    }
    let problems = rbac_problems(&manifests, true);
    let named = |text: &str| problems.iter().any(|p| p.starts_with(text));
    assert!(
        named(
            "does not grant get leases (coordination.k8s.io) in portcullis-system named elsewhere"
        ),
        "{problems:?}"
    );
    assert!(
        named("grants update leases (coordination.k8s.io) in portcullis-system named portcullis,"),
        "{problems:?}"
    );
}

#[test]
fn workloads_that_share_a_service_or_mix_scopes_are_caught() {
    let mut manifests = Manifests::load(&manifests_dir());
    manifests.daemon_sets.clear();
    assert_no_problems("one workload", &workload_problems(&manifests));
    // A second workload scoped to one Gateway, with the first one's labels and Service.
    let mut scoped = manifests.deployments[0].clone();
    scoped.metadata.name = Some("portcullis-apps-web".to_string());
    let spec = scoped.spec.as_mut().unwrap();
    let container = &mut spec.template.spec.as_mut().unwrap().containers[0];
    let args = container.args.get_or_insert_with(Vec::new);
    args.retain(|a| !a.starts_with("--lease-name="));
    args.push("--gateway=apps/web".to_string());
    manifests.deployments.push(scoped);
    let problems = workload_problems(&manifests);
    let says = |text: &str| problems.iter().any(|p| p.contains(text));
    assert!(
        says("runs beside workloads scoped to one Gateway"),
        "{problems:?}"
    );
    assert!(
        says("Service portcullis-system/portcullis selects the pods of Deployment portcullis-system/portcullis-apps-web"),
        "{problems:?}"
    );
    assert!(
        says("PodDisruptionBudget portcullis-system/portcullis selects the pods of Deployment portcullis-system/portcullis-apps-web"),
        "{problems:?}"
    );
    assert!(
        !says("Lease"),
        "the scoped workload elects by default: {problems:?}"
    );
}

/// The name `ci/security-checks.sh` gives the chart rendered with `PER_GATEWAY_VALUES`.
const PER_GATEWAY_RENDER: &str = "per-gateway";
const PER_GATEWAY_VALUES: &str = "charts/portcullis/ci/per-gateway-values.yaml";

/// The Gateways (`namespace/name`) listed in [`PER_GATEWAY_VALUES`].
fn per_gateway_values() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(PER_GATEWAY_VALUES);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let values: Value = serde_yaml::from_str(&text).unwrap();
    let gateways: BTreeSet<String> = values["gateways"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|g| {
            format!(
                "{}/{}",
                g["namespace"].as_str().unwrap(),
                g["name"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        gateways.len() > 1,
        "{}: list at least two Gateways",
        path.display()
    );
    gateways
}

/// The Helm chart, rendered by `ci/security-checks.sh` with several sets of values.
#[test]
fn rendered_chart_meets_the_same_rules() {
    let Some(dirs) = std::env::var_os("PORTCULLIS_RENDERED_MANIFESTS") else {
        eprintln!("PORTCULLIS_RENDERED_MANIFESTS is not set: the chart is checked by ci/security-checks.sh");
        return;
    };
    let dirs: Vec<PathBuf> = std::env::split_paths(&dirs).collect();
    assert!(
        dirs.iter().any(|d| d.ends_with(PER_GATEWAY_RENDER)),
        "no chart rendered with {PER_GATEWAY_VALUES} (a directory named {PER_GATEWAY_RENDER})"
    );
    for dir in dirs {
        let manifests = Manifests::load(&dir);
        let at = dir.display();
        let served: BTreeSet<String> = manifests
            .workloads()
            .into_iter()
            .filter_map(|w| w.gateway)
            .collect();
        if dir.ends_with(PER_GATEWAY_RENDER) {
            assert_eq!(
                served,
                per_gateway_values(),
                "{at}: a workload for each Gateway of {PER_GATEWAY_VALUES}"
            );
        } else {
            assert!(served.is_empty(), "{at}: workloads scoped to {served:?}");
        }
        assert_eq!(
            manifests.workloads().len(),
            served.len().max(1),
            "{at}: one workload per listed Gateway, else one for all"
        );
        assert_no_problems(&format!("{at}: workloads"), &workload_problems(&manifests));
        assert_no_problems(
            &format!("{at}: pod templates"),
            &all_pod_problems(&manifests),
        );
        assert_no_problems(&format!("{at}: RBAC"), &rbac_problems(&manifests, false));
        assert_no_problems(&format!("{at}: bindings"), &binding_problems(&manifests));
    }
}
