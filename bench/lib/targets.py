"""The backend and the targets the load is sent to: Portcullis, nginx, HAProxy, and the backend
itself (the ceiling). Each proxy is started fresh per scenario, pinned to the proxy cores, with
one worker (nginx `worker_processes 1`, HAProxy `nbthread 1`; Portcullis' runtime sizes itself
by the CPUs it may run on, so one worker thread too)."""

import http.client
import json
import os
import random
import re
import shutil
import socket
import ssl
import subprocess
import time

import configs
import procs

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def get(port, path="/", host="bench.example", headers=None, tls_ca=None, timeout=5):
    """One request on a new connection: (status, body, response headers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    if tls_ca:
        # SNI and the certificate's name are the Host, not the address connected to.
        ctx = ssl.create_default_context(cafile=tls_ca)
        raw = socket.create_connection(("127.0.0.1", port), timeout)
        conn.sock = ctx.wrap_socket(raw, server_hostname=host)
    try:
        h = {"Host": host}
        h.update(headers or {})
        conn.request("GET", path, headers=h)
        r = conn.getresponse()
        return r.status, r.read(), dict(r.getheaders())
    finally:
        conn.close()


class Backend:
    """nginx answering every request itself, pinned to the backend cores."""

    def __init__(self, work, cpus, tls):
        self.work = os.path.join(work, "backend")
        os.makedirs(self.work, exist_ok=True)
        self.ports = {k: procs.free_port() for k in ("small", "small_h2c", "small_tls", "1k", "100k")}
        with open(os.path.join(self.work, "nginx.conf"), "w") as f:
            f.write(configs.backend_conf(self.work, self.ports, tls))
        self.proc = procs.start(
            [NGINX, "-e", f"{self.work}/error.log", "-p", self.work, "-c",
             f"{self.work}/nginx.conf", "-g", "daemon off;"],
            os.path.join(self.work, "stdout.log"),
            cpus=cpus,
        )
        if not procs.wait_until(lambda: get(self.ports["small"])[0] == 200, 15, proc=self.proc):
            raise RuntimeError("the backend did not start: " + tail(f"{self.work}/error.log"))

    def pids(self):
        return [self.proc.pid] + procs.children(self.proc.pid)

    def stop(self):
        procs.stop(self.proc)


def tail(path, lines=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


class Target:
    """Something load is sent to. `ports` has `http`, `h2c` and `https`."""

    name = "?"
    label = "?"
    is_proxy = True

    def __init__(self, work, cpus, backend, tls):
        self.work_root = work
        self.cpus = cpus
        self.backend = backend
        self.tls = tls
        self.proc = None
        self.ports = {}

    def endpoint(self, kind, body="small"):
        """(port, path prefix) for a kind of traffic (`http`, `h2c`, `https`) and body size."""
        path = {"small": "/", "1k": "/1k", "100k": "/100k"}[body]
        return self.ports[kind], path

    def pids(self):
        if self.proc is None:
            return []
        return [self.proc.pid] + procs.children(self.proc.pid)

    def peak_rss_kib(self):
        return sum(procs.status_kib(pid, "VmHWM") for pid in self.pids())

    def rss_split_kib(self):
        """The resident set now, as (anonymous, file-backed) KiB: heap and stacks against
        program code and data mapped from the binary and its libraries, which the page
        cache holds once for every process that maps them."""
        pids = self.pids()
        return (sum(procs.status_kib(pid, "RssAnon") for pid in pids),
                sum(procs.status_kib(pid, "RssFile") for pid in pids))

    def stop(self):
        if self.proc is not None:
            procs.stop(self.proc)
            self.proc = None

    def check(self, rotation):
        """Requests every scenario sends come back 200 with the right body before any load."""
        port = self.ports["http"]
        expect = [("/", len(configs.SMALL_BODY)), ("/1k", 1024), ("/100k", 100 * 1024)]
        for path, size in expect:
            status, body, _ = get(port, path)
            if status != 200 or len(body) != size:
                raise RuntimeError(f"{self.name}: {path} answered {status} with {len(body)} bytes")
        status, _, _ = get(self.ports["https"], "/", tls_ca=self.tls["crt"])
        if status != 200:
            raise RuntimeError(f"{self.name}: https / answered {status}")
        if rotation:
            lines = open(rotation).read().splitlines()
            step = max(1, len(lines) // 40)
            for line in lines[::step] + lines[-1:]:
                host, path, *header = line.split()
                headers = dict([header[0].split(":", 1)]) if header else {}
                status, _, _ = get(port, path, host=host, headers=headers)
                if status != 200:
                    raise RuntimeError(f"{self.name}: {line} answered {status}")


class Direct(Target):
    """The backend itself, without a proxy: the ceiling of this load generator and backend."""

    name = "direct"
    label = "backend direct"
    is_proxy = False

    def start(self, routes, churn_version=None):
        b = self.backend.ports
        self.ports = {"http": b["small"], "h2c": b["small_h2c"], "https": b["small_tls"]}

    def endpoint(self, kind, body="small"):
        if body == "small":
            return self.ports[kind], "/"
        return self.backend.ports[body], "/" + body

    def check(self, rotation):
        pass

    def pids(self):
        return []


class Portcullis(Target):
    name = "portcullis"
    label = "Portcullis"

    def __init__(self, work, cpus, backend, tls, binary, extra_flags=()):
        super().__init__(work, cpus, backend, tls)
        self.binary = binary
        self.extra_flags = list(extra_flags)

    def start(self, routes, churn_version=None):
        self.work = os.path.join(self.work_root, f"portcullis-{routes}")
        self.config_dir = os.path.join(self.work, "config")
        if os.path.isdir(self.config_dir):
            shutil.rmtree(self.config_dir)
        configs.portcullis_dir(self.config_dir, routes, self.backend.ports, self.tls, churn_version)
        while True:
            offset = random.randint(20000, 40000)
            if procs.port_is_free(80 + offset) and procs.port_is_free(443 + offset):
                break
        self.ports = {"http": 80 + offset, "h2c": 80 + offset, "https": 443 + offset}
        self.admin = procs.free_port()
        self.log = os.path.join(self.work, "portcullis.log")
        open(self.log, "w").close()
        env = dict(os.environ, PORTCULLIS_LOG_FORMAT="json")
        started = time.monotonic()
        self.proc = procs.start(
            [self.binary, "run", "--config-dir", self.config_dir,
             "--admin-addr", f"127.0.0.1:{self.admin}", "--port-offset", str(offset),
             "--access-log-sample", "0"] + self.extra_flags,
            self.log, cpus=self.cpus, env=env,
        )
        ready = procs.wait_until(
            lambda: get(self.admin, "/readyz")[0] == 200
            and get(self.ports["http"], "/")[0] == 200,
            180,
            proc=self.proc,
        )
        if not ready:
            raise RuntimeError("portcullis did not become ready: " + tail(self.log))
        self.ready_seconds = time.monotonic() - started

    def compile_ms(self):
        """compile_ms of every `configuration applied` line so far."""
        out = []
        with open(self.log, errors="replace") as f:
            for line in f:
                if "configuration applied" in line:
                    m = re.search(r'"compile_ms":\s*([0-9.]+)', line)
                    if m:
                        out.append(float(m.group(1)))
        return out

    def churn(self, version):
        configs.write_atomically(
            os.path.join(self.config_dir, "churn.yaml"), configs.portcullis_churn(version)
        )


class PingoraBaseline(Target):
    """Pingora forwarding every request to the backend and nothing else
    (`bench/pingora-baseline`): the floor under the gateway's cost per request."""

    name = "pingora"
    label = "bare Pingora"

    def __init__(self, work, cpus, backend, tls, binary):
        super().__init__(work, cpus, backend, tls)
        self.binary = binary

    def start(self, routes, churn_version=None):
        self.work = os.path.join(self.work_root, "pingora-baseline")
        os.makedirs(self.work, exist_ok=True)
        port = procs.free_port()
        self.ports = {"http": port, "h2c": port}
        self.log = os.path.join(self.work, "pingora.log")
        self.proc = procs.start(
            [self.binary, f"127.0.0.1:{port}", f"127.0.0.1:{self.backend.ports['small']}"],
            self.log, cpus=self.cpus,
        )
        if not procs.wait_until(lambda: get(port, "/")[0] == 200, 30, proc=self.proc):
            raise RuntimeError("the Pingora baseline did not start: " + tail(self.log))

    def check(self, rotation):
        status, body, _ = get(self.ports["http"], "/")
        if status != 200 or len(body) != len(configs.SMALL_BODY):
            raise RuntimeError(f"{self.name}: / answered {status} with {len(body)} bytes")


class Nginx(Target):
    name = "nginx"
    label = "nginx (NGF-style)"

    def start(self, routes, churn_version=None):
        self.work = os.path.join(self.work_root, f"nginx-{routes}")
        os.makedirs(self.work, exist_ok=True)
        self.ports = {k: procs.free_port() for k in ("http", "h2c", "https")}
        self.conf = os.path.join(self.work, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(configs.nginx_proxy_conf(self.work, routes, self.backend.ports, self.ports, self.tls))
        configs.write_atomically(
            os.path.join(self.work, "churn.conf"), configs.nginx_churn_conf(self.ports, churn_version or 0)
        )
        self.reloads, self.reload_failures, self.reloading, self.dirty = 0, 0, None, False
        self.proc = procs.start(self.command() + ["-g", "daemon off;"],
                                os.path.join(self.work, "stdout.log"), cpus=self.cpus)
        if not procs.wait_until(lambda: get(self.ports["http"], "/")[0] == 200, 120,
                                proc=self.proc):
            raise RuntimeError("nginx did not start: " + tail(f"{self.work}/error.log"))

    def command(self):
        return [NGINX, "-e", f"{self.work}/error.log", "-p", self.work, "-c", self.conf]

    def churn(self, version):
        configs.write_atomically(
            os.path.join(self.work, "churn.conf"), configs.nginx_churn_conf(self.ports, version)
        )
        # One reload at a time, as a controller batching changes would: `nginx -s reload` parses
        # the whole configuration before it signals the master, which then parses it again, so
        # at thousands of routes a reload takes longer than the 100 ms between changes. A change
        # written while one runs is picked up by the next.
        self.dirty = True
        if self.reloading is not None and self.reloading.poll() is None:
            return
        self.reload()

    def reload(self):
        self.reap_one()
        self.dirty = False
        self.reloading = subprocess.Popen(
            ["taskset", "-c", self.cpus] + self.command() + ["-s", "reload"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.reloads += 1

    def reap_one(self):
        if self.reloading is not None:
            self.reload_failures += self.reloading.wait() != 0
            self.reloading = None

    def finish(self):
        """After the last change: waits for the running reload, then reloads once more if a
        change came after it started."""
        self.reap_one()
        if self.dirty:
            self.reload()
            self.reap_one()

    def reap(self):
        """Waits for the last reload; returns (reloads started, reloads that failed)."""
        self.reap_one()
        return self.reloads, self.reload_failures

    def peak_rss_kib(self):
        # Master and worker: both hold the parsed configuration.
        return super().peak_rss_kib()


class HAProxy(Target):
    name = "haproxy"
    label = "HAProxy"

    def start(self, routes, churn_version=None):
        self.work = os.path.join(self.work_root, f"haproxy-{routes}")
        os.makedirs(self.work, exist_ok=True)
        self.ports = {k: procs.free_port() for k in ("http", "h2c", "https")}
        pem = os.path.join(self.work, "bench.pem")
        with open(pem, "w") as f:
            f.write(open(self.tls["crt"]).read() + open(self.tls["key"]).read())
        self.conf = os.path.join(self.work, "haproxy.cfg")
        with open(self.conf, "w") as f:
            f.write(configs.haproxy_conf(self.work, routes, self.backend.ports, self.ports, pem))
        self.log = os.path.join(self.work, "haproxy.log")
        self.proc = procs.start([HAPROXY, "-db", "-f", self.conf], self.log, cpus=self.cpus)
        if not procs.wait_until(lambda: get(self.ports["http"], "/")[0] == 200, 120,
                                proc=self.proc):
            raise RuntimeError("haproxy did not start: " + tail(self.log))


def versions(binary):
    def run(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except Exception as e:  # noqa: BLE001 - a version string is informational
            return f"unknown ({e})"

    return {
        "portcullis": run([binary, "--version"]),
        "nginx": run([NGINX, "-v"]),
        "haproxy": run([HAPROXY, "-v"]),
        "wrk": run(["wrk", "-v"]),
        "h2load": run(["h2load", "--version"]),
    }


def json_dump(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
