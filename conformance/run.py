#!/usr/bin/env python3
"""Gateway API conformance runner for Portcullis (standalone mode).

Drives the real `portcullis` binary the way the upstream suite drives an implementation, from
the restatement of the Gateway API v1.6.1 conformance suite in `../shared/conformance`
(`cases.json` and the upstream manifests; its README says how a harness uses them):

1. one echo backend per Service, EndpointSlices pointing at them;
2. for each test, base.yaml plus the test's manifests (placeholders substituted) are written to
   the gateway's configuration directory, which the running gateway watches;
3. status expectations are polled from the admin endpoint's `/status`, then every request case
   is sent to the Gateway's own address and listener port, with upstream's consistency rule
   (three passes in a row, one second after a failure, thirty seconds at most), then the steps
   and the traffic-split check.

It prints a table of tests and a closing line `N passed, M failed, K skipped`, and exits 1 when a
test that ran failed. Tests it cannot run here are skipped with the reason. Usage:

    conformance/run.py [--binary target/debug/portcullis] [--kube] [TEST_NAME ...]

With --kube, the same tests run in Kubernetes mode against the local API server of the Rust
tests (see the Kubernetes mode section below).
"""

import argparse
import copy
import json
import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import certs  # noqa: E402
import echo  # noqa: E402
from judge import judge_http, Failure  # noqa: E402
import clients  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CLASS = "portcullis"
CONTROLLER = "portcullis.dev/gateway-controller"
PORT_OFFSET = 20000
STATUS_WAIT = 30  # upstream waits up to 180 s; our compile takes milliseconds
CONSISTENCY_WAIT = 30
# GatewayStaticAddresses: an address in the gateway's --address-pool, and one outside it. The
# unusable one is a documentation address (RFC 5737) that only ever appears in configuration.
# Each run takes its own loopback /24, so that two runs on one machine (a developer's and CI's,
# say) never bind the same sockets.
SUBNET = f"127.{random.randint(16, 250)}.{random.randint(1, 250)}"
USABLE_ADDRESS = f"{SUBNET}.250"
UNUSABLE_ADDRESS = "198.51.100.7"


# Features this gateway claims, for tests that upstream skips when a feature is supported.
SUPPORTED = {"TLSRouteModeMixed", "TLSRouteModeTerminate"}


def skip_reason(test):
    """Why a test cannot run against this gateway here, or None."""
    claimed = SUPPORTED & set(test.get("skip_if_supported") or [])
    if claimed:
        return f"does not apply: the gateway supports {', '.join(sorted(claimed))}"
    if test.get("standalone_applicable") is False:
        return "only meaningful for an implementation that creates Kubernetes objects"
    return None


class Gateway:
    """The gateway process and its configuration directory."""

    def __init__(self, binary, workdir):
        self.dir = os.path.join(workdir, "config")
        os.makedirs(self.dir)
        self.admin = f"127.0.0.1:{free_port()}"
        self.log = open(os.path.join(workdir, "gateway.log"), "w")
        self.proc = subprocess.Popen(
            [binary, "run", "--config-dir", self.dir, "--admin-addr", self.admin,
             "--address-pool", f"{SUBNET}.1-{SUBNET}.250", "--port-offset", str(PORT_OFFSET),
             "--access-log-sample", "0"],
            stdout=self.log, stderr=self.log)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://{self.admin}/healthz", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the gateway did not start; see gateway.log")

    def write(self, files):
        for name in os.listdir(self.dir):
            if name not in files:
                os.remove(os.path.join(self.dir, name))
        for name, docs in files.items():
            tmp = os.path.join(self.dir, "." + name)
            with open(tmp, "w") as f:
                yaml.safe_dump_all(docs, f)
            os.replace(tmp, os.path.join(self.dir, name))

    def status(self):
        with urllib.request.urlopen(f"http://{self.admin}/status", timeout=5) as r:
            return json.load(r)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# -- Kubernetes mode (--kube) ------------------------------------------------------------------
#
# The same tests with the objects served by the local API server of the Kubernetes-mode tests
# (tests/kube_apiserver_main.rs, built with cargo), created and changed through its HTTP API as a
# client would, the gateway started without --config-dir, and every status expectation checked
# against what the controller wrote back to the API server instead of the admin `/status`.

# kind -> (API path prefix, plural, namespaced), at the versions the local API server serves.
KUBE_KINDS = {
    "GatewayClass": ("apis/gateway.networking.k8s.io/v1", "gatewayclasses", False),
    "Gateway": ("apis/gateway.networking.k8s.io/v1", "gateways", True),
    "HTTPRoute": ("apis/gateway.networking.k8s.io/v1", "httproutes", True),
    "GRPCRoute": ("apis/gateway.networking.k8s.io/v1", "grpcroutes", True),
    "TLSRoute": ("apis/gateway.networking.k8s.io/v1alpha2", "tlsroutes", True),
    "ReferenceGrant": ("apis/gateway.networking.k8s.io/v1beta1", "referencegrants", True),
    "Service": ("api/v1", "services", True),
    "Namespace": ("api/v1", "namespaces", False),
    "Secret": ("api/v1", "secrets", True),
    "ConfigMap": ("api/v1", "configmaps", True),
    "EndpointSlice": ("apis/discovery.k8s.io/v1", "endpointslices", True),
    "BackendTLSPolicy": ("apis/gateway.networking.k8s.io/v1", "backendtlspolicies", True),
}
# Kinds whose status the controller writes, read back for the status checks.
KUBE_STATUS_KINDS = ["GatewayClass", "Gateway", "HTTPRoute", "GRPCRoute", "TLSRoute", "BackendTLSPolicy"]


def kube_api_server_binary():
    """Builds the local API server's test target and returns its executable."""
    out = subprocess.run(
        ["cargo", "test", "--locked", "--test", "kube_apiserver_main", "--no-run",
         "--message-format=json"],
        cwd=REPO, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") and \
                msg["target"]["name"] == "kube_apiserver_main":
            return msg["executable"]
    raise RuntimeError("cargo did not report the kube_apiserver_main executable")


class KubeGateway:
    """The local API server and the gateway reading it; the same interface as `Gateway`."""

    def __init__(self, binary, workdir):
        url_file = os.path.join(workdir, "apiserver.url")
        self.server_log = open(os.path.join(workdir, "apiserver.log"), "w")
        self.server = subprocess.Popen(
            [kube_api_server_binary()], stdin=subprocess.PIPE, stdout=self.server_log,
            stderr=self.server_log, env=dict(os.environ, PORTCULLIS_APISERVER_URL_FILE=url_file))
        deadline = time.time() + 30
        while not os.path.exists(url_file):
            if time.time() > deadline or self.server.poll() is not None:
                raise RuntimeError("the local API server did not start; see apiserver.log")
            time.sleep(0.05)
        with open(url_file) as f:
            self.url = f.read().strip()
        self.applied = {}  # (kind, namespace, name) -> the document last sent
        kubeconfig = os.path.join(workdir, "kubeconfig")
        with open(kubeconfig, "w") as f:
            yaml.safe_dump({
                "apiVersion": "v1", "kind": "Config",
                "clusters": [{"name": "local", "cluster": {"server": self.url}}],
                "users": [{"name": "conformance", "user": {"token": "conformance"}}],
                "contexts": [{"name": "local", "context": {"cluster": "local", "user": "conformance",
                                                           "namespace": "portcullis-system"}}],
                "current-context": "local"}, f)
        env = {k: v for k, v in os.environ.items()
               if k not in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "POD_NAME",
                            "POD_NAMESPACE", "PORTCULLIS_CONFIG_DIR", "PORTCULLIS_WATCH_NAMESPACES")}
        env["KUBECONFIG"] = kubeconfig
        self.admin = f"127.0.0.1:{free_port()}"
        self.log = open(os.path.join(workdir, "gateway.log"), "w")
        self.proc = subprocess.Popen(
            [binary, "run", "--admin-addr", self.admin, "--leader-elect=false",
             "--address-pool", f"{SUBNET}.1-{SUBNET}.250", "--port-offset", str(PORT_OFFSET),
             "--access-log-sample", "0"],
            stdout=self.log, stderr=self.log, env=env)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://{self.admin}/healthz", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the gateway did not start; see gateway.log")

    def request(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}/{path}", data=data, method=method,
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    def path(self, kind, ns, name=None):
        prefix, plural, namespaced = KUBE_KINDS[kind]
        path = f"{prefix}/namespaces/{ns}/{plural}" if namespaced else f"{prefix}/{plural}"
        return f"{path}/{name}" if name else path

    def key(self, doc):
        namespaced = KUBE_KINDS[doc["kind"]][2]
        ns = doc["metadata"].get("namespace", "default") if namespaced else ""
        return doc["kind"], ns, doc["metadata"]["name"]

    def write(self, files):
        """Makes the API server hold exactly these documents: creates, replaces and deletes."""
        wanted = {}
        for docs in files.values():
            for d in docs:
                if d.get("kind") in KUBE_KINDS:  # kinds it does not serve cannot be created
                    wanted[self.key(d)] = d
        for key in [k for k in self.applied if k not in wanted]:
            self.request("DELETE", self.path(*key))
            del self.applied[key]
        # Namespaces first, as a client creating them in order would.
        for key, doc in sorted(wanted.items(), key=lambda kv: kv[0][0] != "Namespace"):
            if self.applied.get(key) == doc:
                continue
            body = copy.deepcopy(doc)
            body.setdefault("metadata", {})
            if key[1]:
                body["metadata"]["namespace"] = key[1]
            code, reply = self.request("POST", self.path(key[0], key[1]), body)
            if code == 409:
                code, reply = self.request("PUT", self.path(*key), body)
            if code >= 300:
                raise RuntimeError(f"API server refused {key}: {code} {reply.get('message')}")
            self.applied[key] = copy.deepcopy(doc)

    def status(self):
        """A report shaped like the admin `/status`, from the objects on the API server."""
        objects = []
        for kind in KUBE_STATUS_KINDS:
            prefix, plural, _ = KUBE_KINDS[kind]
            code, body = self.request("GET", f"{prefix}/{plural}")
            for o in body.get("items", []) if code == 200 else []:
                m = o["metadata"]
                # Not written yet reads as no conditions, which the checks keep polling on.
                status = o.get("status") or {}
                status.setdefault("conditions", [])
                objects.append({"kind": kind, "namespace": m.get("namespace", ""), "name": m["name"],
                                "generation": m.get("generation"), "status": status})
        return {"objects": objects}

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.server.stdin.close()
        try:
            self.server.wait(10)
        except subprocess.TimeoutExpired:
            self.server.kill()

# -- end of Kubernetes mode ---------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_manifest(data_dir, name):
    with open(os.path.join(data_dir, "manifests", name)) as f:
        text = f.read()
    text = text.replace("{GATEWAY_CLASS_NAME}", CLASS).replace("{GATEWAY_CONTROLLER_NAME}", CONTROLLER)
    return [d for d in yaml.safe_load_all(text) if d]


class Runner:
    def __init__(self, data_dir, binary, workdir, gateway=Gateway):
        self.data_dir = data_dir
        with open(os.path.join(data_dir, "cases.json")) as f:
            self.cases = json.load(f)
        self.certs = certs.Certificates(workdir, self.cases["generated_secrets"])
        self.echoes = {}
        for b in self.cases["backends"]:
            key = (b["namespace"], b["service"])
            if b["echo"] == "http":
                self.echoes[key] = echo.Echo(*key)
            elif b["echo"] == "https":
                ca = self.certs.files[b["client_ca"]][0] if b.get("client_ca") else None
                self.echoes[key] = echo.Echo(*key, tls_files=self.certs.files[b["server_cert"]], target_port=8443,
                                             client_ca=ca)
            elif b["echo"] == "grpc":
                self.echoes[key] = echo.GrpcEcho(*key)
            elif b["echo"] == "tcp":
                self.echoes[key] = echo.TcpEcho(*key, self.certs.files[b["server_cert"]])
        for b in self.cases["backends"]:
            if b["echo"].startswith("alias-of:"):
                self.echoes[(b["namespace"], b["service"])] = self.echoes[(b["namespace"], b["echo"][9:])]
        self.gateway = gateway(binary, workdir)

    # -- configuration -------------------------------------------------------------------

    def endpoint_slices(self, docs):
        """EndpointSlices for every echo, and manifest slices re-pointed at their echo."""
        services = {(d["metadata"].get("namespace", "default"), d["metadata"]["name"]): d
                    for d in docs if d.get("kind") == "Service"}
        out = []
        shipped = set()
        for d in docs:
            if d.get("kind") != "EndpointSlice":
                continue
            ns = d["metadata"].get("namespace", "default")
            svc = d["metadata"].get("labels", {}).get("kubernetes.io/service-name")
            e = self.echoes.get((ns, svc))
            if e:
                shipped.add((ns, svc))
                d["endpoints"] = [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}]
                d["addressType"] = "IPv4"
                for p in d.get("ports") or []:
                    p["port"] = e.ports[3000]
        for (ns, name), svc in services.items():
            e = self.echoes.get((ns, name))
            if not e or (ns, name) in shipped:
                continue
            ports = []
            for p in svc["spec"].get("ports", []):
                # Each Service port points at the echo's listener for its targetPort (3000
                # HTTP/1.1, 3001 h2c only); a target port the echo does not serve gets no
                # endpoint port.
                real = e.ports.get(p.get("targetPort", p["port"]))
                if real:
                    port = {"port": real}
                    if p.get("name"):
                        port["name"] = p["name"]
                    ports.append(port)
            out.append({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": f"{name}-echo", "namespace": ns,
                             "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
                "ports": ports,
            })
        return out

    def configure(self, test):
        docs = []
        for m in test["manifests"]:
            docs.extend(load_manifest(self.data_dir, m))
        for d in docs:
            if d.get("kind") == "Gateway":
                d["spec"]["gatewayClassName"] = CLASS
                for a in d["spec"].get("addresses", []):
                    if a.get("value") == "PLACEHOLDER_USABLE_ADDRS":
                        a.update(type="IPAddress", value=USABLE_ADDRESS)
                    elif a.get("value") == "PLACEHOLDER_UNUSABLE_ADDRS":
                        a.update(type="IPAddress", value=UNUSABLE_ADDRESS)
            if d.get("kind") == "Namespace":
                d["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = d["metadata"]["name"]
        docs = [d for d in docs if d.get("kind") not in ("Deployment", "Pod")]
        docs.append({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                     "metadata": {"name": CLASS}, "spec": {"controllerName": CONTROLLER}})
        self.docs = docs
        self.write_docs()

    def write_docs(self):
        slices = self.endpoint_slices(self.docs)
        self.gateway.write({"manifests.yaml": self.docs, "endpoints.yaml": slices,
                            "secrets.yaml": copy.deepcopy(self.certs.objects)})

    # -- status --------------------------------------------------------------------------

    def find(self, report, kind, ns, name):
        for o in report["objects"]:
            if o["kind"] == kind and o["name"] == name and (o["namespace"] or None) in (ns, None):
                return o
        return None

    def wait_status(self, expectations, before=None):
        deadline = time.time() + STATUS_WAIT
        last = "no report"
        while time.time() < deadline:
            report = self.gateway.status()
            problems = [p for e in expectations for p in self.check_status(report, e, before)]
            if not problems:
                return
            last = problems[0]
            time.sleep(0.2)
        raise Failure(f"status: {last}")

    def check_status(self, report, e, before):
        if e["kind"] == "Namespace":
            return self.namespace_not_ready(report, e["name"])
        o = self.find(report, e["kind"], e.get("namespace"), e["name"])
        where = f"{e['kind']} {e.get('namespace', '')}/{e['name']}"
        if o is None:
            if e.get("no_accepted_parents"):
                return []
            return [f"{where} has no status"]
        st = o["status"]
        out = []

        def has(conds, want, what):
            for w in want:
                found = [c for c in conds if c["type"] == w["type"]]
                ok = any((not w.get("status") or c["status"] == w["status"]) and
                         (not w.get("reason") or c["reason"] == w["reason"]) for c in found)
                if not ok:
                    got = [(c["type"], c["status"], c["reason"]) for c in found]
                    out.append(f"{what}: want {w['type']}={w.get('status')} {w.get('reason') or ''}, got {got}")

        if "parent" in e:
            pns, pname = e["parent"].split("/")
            # Routes list parents; policies (BackendTLSPolicy) list ancestors.
            entries = st.get("parents") or [dict(a, parentRef=a["ancestorRef"]) for a in st.get("ancestors", [])]
            parents = [p for p in entries if p["parentRef"]["name"] == pname and
                       p["parentRef"].get("namespace", o["namespace"]) == pns]
            if not parents:
                out.append(f"{where} has no parent entry for {e['parent']}")
            for p in parents:
                has(p["conditions"], e.get("conditions", []), f"{where} parent {e['parent']}")
                if p["controllerName"] != CONTROLLER or p["parentRef"].get("kind") != "Gateway":
                    out.append(f"{where}: parentRef/controllerName not written out")
                if any(c["observedGeneration"] != o["generation"] for c in p["conditions"]):
                    out.append(f"{where}: stale observedGeneration")
        elif "conditions" in e:
            has(st.get("conditions", []), e["conditions"], where)
        if e.get("no_accepted_parents"):
            parents = st.get("parents", [])
            if parents and not (len(parents) == 1 and any(c["type"] == "Accepted" and c["status"] == "False"
                                                            for c in parents[0]["conditions"])):
                out.append(f"{where}: has accepted parents")
        listeners = {l["name"]: l for l in st.get("listeners", [])}
        if e.get("listeners") == "*":
            for l in listeners.values():
                has(l["conditions"], e.get("conditions", []), f"{where} listener {l['name']}")
        if "listener" in e:
            l = listeners.get(e["listener"])
            if not l:
                out.append(f"{where}: no listener {e['listener']}")
            else:
                has(l["conditions"], e.get("listener_conditions", []), f"{where} listener {e['listener']}")
        if "exact_listener_count" in e and len(listeners) != e["exact_listener_count"]:
            out.append(f"{where}: {len(listeners)} listeners, want {e['exact_listener_count']}")
        for ls in e.get("listener_status", []):
            l = listeners.get(ls["name"])
            if not l:
                out.append(f"{where}: no listener {ls['name']}")
                continue
            if "attached_routes" in ls and l["attachedRoutes"] != ls["attached_routes"]:
                out.append(f"{where} listener {ls['name']}: attachedRoutes {l['attachedRoutes']}, want {ls['attached_routes']}")
            has(l["conditions"], ls.get("conditions", []), f"{where} listener {ls['name']}")
            kinds = [k["kind"] for k in l.get("supportedKinds", [])]
            if "supported_kinds" in ls:
                if ls["supported_kinds"] == [] and kinds:
                    out.append(f"{where} listener {ls['name']}: supportedKinds {kinds}, want none")
                for k in ls["supported_kinds"]:
                    if k not in kinds:
                        out.append(f"{where} listener {ls['name']}: supportedKinds {kinds} lacks {k}")
        if e.get("requires_address") and not any(a.get("type") for a in st.get("addresses", [])):
            out.append(f"{where}: no status address")
        if e.get("status_addresses") and st.get("addresses") != [{"type": "IPAddress", "value": USABLE_ADDRESS}]:
            out.append(f"{where}: status.addresses {st.get('addresses')}, want only {USABLE_ADDRESS}")
        if e.get("zero_attached_routes") and any(l["attachedRoutes"] for l in listeners.values()):
            out.append(f"{where}: has attached routes")
        if e.get("conditions_have_latest_observed_generation"):
            conds = st.get("conditions", []) + [c for l in listeners.values() for c in l["conditions"]]
            if any(c["observedGeneration"] != o["generation"] for c in conds):
                out.append(f"{where}: conditions carry an old observedGeneration")
        if e.get("generation_changed") and before is not None and before.get((e["kind"], e["name"])) == o["generation"]:
            out.append(f"{where}: generation did not change")
        if e.get("namespace_ready"):
            out += self.namespace_not_ready(report, e.get("namespace"))
        return out

    def namespace_not_ready(self, report, namespace):
        """Gateways of a namespace that are not Accepted and Programmed (unless annotated to be
        skipped for readiness)."""
        out = []
        for g in report["objects"]:
            if g["kind"] == "Gateway" and g["namespace"] == namespace:
                annotations = self.annotations("Gateway", g["namespace"], g["name"])
                if annotations.get("gateway-api/skip-this-for-readiness") == "true":
                    continue
                conds = {c["type"]: c for c in g["status"]["conditions"]}
                for t in ("Accepted", "Programmed"):
                    if conds.get(t, {}).get("status") != "True":
                        out.append(f"Gateway {g['name']} not {t}")
        return out

    def annotations(self, kind, ns, name):
        for d in self.docs:
            if d.get("kind") == kind and d["metadata"]["name"] == name and d["metadata"].get("namespace") == ns:
                return d["metadata"].get("annotations") or {}
        return {}

    # -- requests ------------------------------------------------------------------------

    def gateway_address(self, gw):
        ns, name = gw.split("/")
        o = self.find(self.gateway.status(), "Gateway", ns, name)
        addrs = (o or {}).get("status", {}).get("addresses") or []
        if not addrs:
            raise Failure(f"Gateway {gw} has no address")
        return addrs[0]["value"]

    def run_case(self, test, case):
        gw = case.get("gateway") or test["gateway"]
        address = self.gateway_address(gw)
        req = case["request"]
        single = case.get("single_attempt")
        deadline = time.time() + CONSISTENCY_WAIT
        passes, last = 0, None
        while True:
            try:
                self.attempt(address, req, case["expect"], case)
                passes += 1
                if single or passes >= 3:
                    break
                continue
            except Failure as f:
                last = f
                passes = 0
                if single or time.time() > deadline:
                    raise Failure(f"{req.get('method', 'GET')} {req.get('host', '')}{req.get('path', '')}: {last}")
                time.sleep(1)
        for _ in range(case.get("repeat", 0)):
            self.attempt(address, req, case["expect"], case)
        if case.get("mirror_distribution"):
            self.check_mirror_share(address, req, case)

    def check_mirror_share(self, address, req, case):
        """Sends batches of identical requests and counts the copies the mirror received."""
        dist = case["mirror_distribution"]
        mirror = case["expect"]["mirrored_to"][0]
        e = self.echoes[(mirror.get("namespace", "gateway-conformance-infra"), mirror["backend"])]
        p = mirror["percent"] / 100
        n = dist["requests_per_batch"]
        band = dist["tolerance_std_devs"] * (n * p * (1 - p)) ** 0.5
        port = req.get("port", 80) + PORT_OFFSET
        counts = []
        for _ in range(dist["max_batches"]):
            path = f"{req['path']}{'&' if '?' in req['path'] else '?'}{dist['request_id_query_param']}={uuid.uuid4()}"
            batch = dict(req, path=path)

            def one(_):
                r = clients.request(address, port, batch, None)
                if r.status != 200:
                    raise Failure(f"mirrored request answered {r.status}")

            with ThreadPoolExecutor(dist["concurrency"]) as pool:
                list(pool.map(one, range(n)))
            time.sleep(1)  # copies are sent after the real request; let the last ones land
            count = e.paths_seen().count(path)
            counts.append(count)
            if abs(count - n * p) <= band:
                return
            time.sleep(2)
        raise Failure(f"mirror received {counts} of {n} copies per batch, want {n * p:.0f} +/- {band:.0f}")

    def attempt(self, address, req, expect, case):
        req = dict(req)
        seen_path = (expect.get("request_seen") or {}).get("path")
        if req.get("fresh_uuid_per_attempt"):
            u = str(uuid.uuid4())
            req["path"] = req["path"].replace("{uuid}", u)
            seen_path = seen_path.replace("{uuid}", u) if seen_path else None
        if req.get("add_request_id_query_param"):
            u = str(uuid.uuid4())
            sep = "&" if "?" in req["path"] else "?"
            req["path"] += f"{sep}{req['add_request_id_query_param']}={u}"
            if seen_path:
                seen_path += f"{'&' if '?' in seen_path else '?'}{req['add_request_id_query_param']}={u}"
        port = req.get("port", 80) + PORT_OFFSET
        tls = self.tls_settings(req)
        if req.get("protocol") == "tls":
            return self.attempt_tls(address, port, req, expect)
        if req.get("protocol") == "grpc":
            return self.attempt_grpc(address, port, req, expect)
        if req.get("scheme") == "ws":
            ok = clients.websocket(address, port, req)
            if not ok:
                raise Failure("websocket exchange failed")
            return
        if expect.get("client_cert_requested") and not clients.client_cert_requested(address, port, tls):
            raise Failure("the gateway did not ask for a client certificate")
        if expect.get("connection_fails"):
            try:
                r = clients.request(address, port, req, tls)
            except Failure:
                return  # refused at transport level, as expected
            raise Failure(f"the connection was expected to fail, but got HTTP {r.status}")
        response = clients.request(address, port, req, tls)
        judge_http(req, expect, response, seen_path, self)

    def attempt_grpc(self, address, port, req, expect):
        code, reply = clients.grpc_call(address, port, req)
        if code != expect.get("grpc_code", "OK"):
            raise Failure(f"gRPC status {code}, want {expect.get('grpc_code', 'OK')}")
        if code != "OK":
            return
        if expect.get("backend") and reply["service"] != expect["backend"]:
            raise Failure(f"answered by {reply['service']}, want {expect['backend']}")
        if expect.get("backend_any_of") and reply["service"] not in expect["backend_any_of"]:
            raise Failure(f"answered by {reply['service']}, want one of {expect['backend_any_of']}")
        if expect.get("namespace") and reply["namespace"] != expect["namespace"]:
            raise Failure(f"answered from {reply['namespace']}, want {expect['namespace']}")
        if expect.get("grpc_method_seen") and reply["method"] != expect["grpc_method_seen"]:
            raise Failure(f"backend saw {reply['method']}, want {expect['grpc_method_seen']}")

    def attempt_tls(self, address, port, req, expect):
        if expect.get("tls_connection_rejected"):
            if not clients.tls_rejected(address, port, req.get("sni")):
                raise Failure(f"a TLS handshake for {req.get('sni')} was not refused")
            return
        want = expect["tcp_echo"]
        trust = (req.get("tls_trust") or "").split(" ")[0]
        info = clients.tcp_echo(address, port, req.get("sni"), self.certs.files.get(trust, (None,))[0])
        got = (info.get("namespace"), info.get("service"), info.get("isTLS"))
        if got != (want["namespace"], want["backend"], want["backend_is_tls"]):
            raise Failure(f"TCP echo answered {got}, want {want}")
        if want.get("backend_sni") and (info.get("tls") or {}).get("serverName") != want["backend_sni"]:
            raise Failure(f"backend saw SNI {info.get('tls')}, want {want['backend_sni']}")

    def tls_settings(self, req):
        if req.get("scheme") != "https":
            return None
        trust = self.certs.files.get(req.get("tls_trust", ""), (None, None))[0]
        client = self.certs.files.get(req.get("client_cert") or "", None)
        return {"sni": req.get("sni") or req.get("host"), "trust": trust, "client": client}

    def mirrored(self, ns, backend, path, within=10):
        e = self.echoes.get((ns, backend))
        deadline = time.time() + within
        while time.time() < deadline:
            if e and path in e.paths_seen():
                return True
            time.sleep(0.1)
        return False

    # -- steps and weights ---------------------------------------------------------------

    def apply_step(self, step):
        before = {(o["kind"], o["name"]): o["generation"] for o in self.gateway.status()["objects"]}
        target = None
        for d in self.docs:
            if d.get("kind") == step["kind"] and d["metadata"]["name"] == step["name"] and \
                    d["metadata"].get("namespace") == step.get("namespace"):
                target = d
        if target is None:
            raise Failure(f"step target {step['kind']} {step['name']} not found")
        if step["action"] == "delete":
            self.docs.remove(target)
        else:
            change = step["change"]
            if "append_listener" in change:
                target["spec"]["listeners"].append(change["append_listener"])
            elif "keep_only_listeners" in change:
                target["spec"]["listeners"] = [l for l in target["spec"]["listeners"]
                                               if l["name"] in change["keep_only_listeners"]]
            elif "remove_address" in change:
                addresses = target["spec"]["addresses"]
                if "unusable" in change["remove_address"]:
                    target["spec"]["addresses"] = [a for a in addresses if a.get("value") != UNUSABLE_ADDRESS]
                else:
                    addresses.pop(0)
            elif "path" in change:
                # `spec.rules[0].backendRefs[0].name`: field names, each with any list indexes.
                keys = []
                for part in change["path"].split("."):
                    name, *indexes = part.replace("]", "").split("[")
                    if name:
                        keys.append(name)
                    keys += [int(i) for i in indexes]
                node = target
                for key in keys[:-1]:
                    node = node[key] if isinstance(key, int) else node.setdefault(key, {})
                node[keys[-1]] = change["value"]
            else:
                raise Failure(f"unknown step change {change}")
        self.write_docs()
        return before

    def check_weights(self, test, w):
        address = self.gateway_address(test["gateway"])
        req = dict(w["request"])
        port = req.get("port", 80) + PORT_OFFSET
        for attempt in range(w.get("max_attempts", 10)):
            counts = {}

            def one(_):
                if req.get("protocol") == "grpc":
                    code, reply = clients.grpc_call(address, port, req)
                    if code != "OK":
                        raise Failure(f"weighted call answered {code}")
                    return reply["service"]
                r = clients.request(address, port, req, None)
                if r.status != 200:
                    raise Failure(f"weighted request answered {r.status}")
                return json.loads(r.body)["service"]

            with ThreadPoolExecutor(w.get("concurrency", 10)) as pool:
                for svc in pool.map(one, range(w["total_requests"])):
                    counts[svc] = counts.get(svc, 0) + 1
            total = sum(counts.values())
            expected = w["expected_fractions"]
            ok = set(counts) == {k for k, v in expected.items() if v > 0} and all(
                abs(counts.get(k, 0) / total - v) <= w["tolerance"] for k, v in expected.items())
            if ok:
                return
        raise Failure(f"traffic split {counts} does not match {expected}")

    # -- one test ------------------------------------------------------------------------

    def run_test(self, test):
        self.configure(test)
        if test.get("status_expectations"):
            self.wait_status(test["status_expectations"])
        else:
            time.sleep(0.6)
        for case in test["cases"]:
            self.run_case(test, case)
        for step in test.get("steps", []):
            before = self.apply_step(step)
            if step.get("then_status"):
                self.wait_status(step["then_status"], before)
            for case in step.get("then_cases", []):
                self.run_case(test, case)
        if test.get("weights"):
            self.check_weights(test, test["weights"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default=os.path.join(REPO, "target", "debug", "portcullis"))
    parser.add_argument("--data", default=os.environ.get("PORTCULLIS_CONFORMANCE_DIR",
                                                         os.path.join(REPO, "..", "shared", "conformance")))
    parser.add_argument("--kube", action="store_true",
                        help="Kubernetes mode: objects on the local API server, status read from it")
    parser.add_argument("tests", nargs="*")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="portcullis-conformance-")
    runner = Runner(args.data, args.binary, workdir, KubeGateway if args.kube else Gateway)
    results = []
    try:
        for test in runner.cases["tests"]:
            if args.tests and test["name"] not in args.tests:
                continue
            reason = skip_reason(test)
            if reason:
                results.append((test, "SKIP", reason))
                continue
            started = time.time()
            try:
                runner.run_test(test)
                results.append((test, "PASS", f"{time.time() - started:.1f}s"))
            except Failure as f:
                results.append((test, "FAIL", str(f)))
            except Exception as e:  # a runner bug must not hide the other results
                results.append((test, "FAIL", f"runner error: {e!r}"))
            print(f"{results[-1][1]} {test['name']}: {results[-1][2][:300]}", file=sys.stderr, flush=True)
    finally:
        runner.gateway.stop()
    width = max(len(t["name"]) for t, _, _ in results) if results else 10
    print(f"\n{'test':<{width}}  {'kind':<10} {'support':<9} result  detail")
    for t, r, detail in results:
        print(f"{t['name']:<{width}}  {t['route_kind']:<10} {t['support']:<9} {r:<6}  {detail[:160]}")
    passed = sum(r == "PASS" for _, r, _ in results)
    failed = sum(r == "FAIL" for _, r, _ in results)
    skipped = sum(r == "SKIP" for _, r, _ in results)
    core = [t for t, r, _ in results if r == "PASS" and t["support"] == "core"]
    print(f"\ncore passed: {len(core)}; extended passed: {passed - len(core)}")
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    if failed:
        print(f"gateway log: {os.path.join(workdir, 'gateway.log')}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
