"""The same routes, written for each proxy under test.

A route set of N routes is one HTTPRoute `bench` (host bench.example: `/` to the small-body
backend, `/1k` and `/100k` to the larger bodies, on the HTTP and the HTTPS listener) plus N - 1
generated HTTPRoutes on the HTTP listener, eight per hostname `app-H.example.com`:

    j  match                                   request sent for it
    0  PathPrefix /                            /index.html
    1  PathPrefix /api                         /api/items
    2  PathPrefix /api/v1                      /api/v1/items
    3  PathPrefix /api/v2                      /api/v2/items
    4  PathPrefix /static                      /static/app.js
    5  PathPrefix /api/v1 + x-tenant: tH       /api/v1/orders with x-tenant: tH
    6  Exact /healthz                          /healthz
    7  PathPrefix /api/v1/users                /api/v1/users/42

Route i is the (i mod 8)-th of hostname i div 8 and sends to Service `backend-(i mod 16)`; every
Service's EndpointSlice names the same small-body backend. The churn route (`churn.example`)
adds the response header `x-bench-version` with a number the churn scenario changes.

Portcullis gets Gateway API YAML; nginx gets what NGINX Gateway Fabric generates for it (a server
block per hostname, a location per path, an upstream with keepalive per Service); HAProxy gets a
frontend whose Host+path map (`map_beg`, longest prefix) selects a backend per Service.
"""

import base64
import os

SERVICES = 16
# Idle upstream connections nginx keeps per upstream. NGF's default is 16; with the benchmark's
# 50 concurrent clients on one upstream nginx would then close and reopen backend connections
# all the time, so the pool is sized to the load as an operator would (UpstreamSettingsPolicy).
NGINX_KEEPALIVE = int(os.environ.get("BENCH_NGINX_KEEPALIVE", "64"))
ROUTES_PER_HOST = 8

PATTERNS = [
    # (match type, path, header value?, request path)
    ("PathPrefix", "/", False, "/index.html"),
    ("PathPrefix", "/api", False, "/api/items"),
    ("PathPrefix", "/api/v1", False, "/api/v1/items"),
    ("PathPrefix", "/api/v2", False, "/api/v2/items"),
    ("PathPrefix", "/static", False, "/static/app.js"),
    ("PathPrefix", "/api/v1", True, "/api/v1/orders"),
    ("Exact", "/healthz", False, "/healthz"),
    ("PathPrefix", "/api/v1/users", False, "/api/v1/users/42"),
]


class Route:
    """One generated HTTPRoute with one rule of one match."""

    def __init__(self, i):
        self.index = i
        self.host_index = i // ROUTES_PER_HOST
        self.host = f"app-{self.host_index}.example.com"
        kind, path, header, request_path = PATTERNS[i % ROUTES_PER_HOST]
        self.kind = kind
        self.path = path
        self.header = ("x-tenant", f"t{self.host_index}") if header else None
        self.request_path = request_path
        self.service = f"backend-{i % SERVICES}"

    def request_line(self):
        """`host path [name:value]`, as the wrk rotation script reads it."""
        header = f" {self.header[0]}:{self.header[1]}" if self.header else ""
        return f"{self.host} {self.request_path}{header}"


def generated_routes(total):
    """The N - 1 generated routes of a set of `total` routes."""
    return [Route(i) for i in range(max(total - 1, 0))]


def rotation_file(path, total):
    """Writes one request per generated route; returns how many."""
    routes = generated_routes(total)
    with open(path, "w") as f:
        for r in routes:
            f.write(r.request_line() + "\n")
    return len(routes)


def service_names(total):
    return sorted({r.service for r in generated_routes(total)} | {"backend-0"})


# --- Portcullis: Gateway API YAML ------------------------------------------------------------


def portcullis_dir(directory, total, backend, tls, churn_version=None, per_file=1000):
    """Writes the route set as Gateway API YAML into `directory` (several files, as a
    repository of manifests would hold them)."""
    os.makedirs(directory, exist_ok=True)
    crt = base64.b64encode(open(tls["crt"], "rb").read()).decode()
    key = base64.b64encode(open(tls["key"], "rb").read()).decode()
    head = f"""apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: portcullis}}
spec: {{controllerName: portcullis.dev/gateway-controller}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: bench}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: bench}}
spec:
  gatewayClassName: portcullis
  listeners:
  - {{name: http, port: 80, protocol: HTTP}}
  - name: https
    port: 443
    protocol: HTTPS
    tls: {{mode: Terminate, certificateRefs: [{{name: bench-tls}}]}}
---
apiVersion: v1
kind: Secret
metadata: {{name: bench-tls, namespace: bench}}
type: kubernetes.io/tls
data: {{tls.crt: {crt}, tls.key: {key}}}
"""
    services = [(name, backend["small"]) for name in service_names(total)]
    services += [("body-1k", backend["1k"]), ("body-100k", backend["100k"])]
    for name, port in services:
        head += f"""---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: bench}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: bench, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
endpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]
ports: [{{name: http, port: {port}}}]
"""
    head += """---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bench, namespace: bench}
spec:
  parentRefs: [{name: gw}]
  hostnames: [bench.example]
  rules:
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: backend-0, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /1k}}]
    backendRefs: [{name: body-1k, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /100k}}]
    backendRefs: [{name: body-100k, port: 80}]
"""
    with open(os.path.join(directory, "gateway.yaml"), "w") as f:
        f.write(head)
    routes = generated_routes(total)
    for start in range(0, len(routes), per_file):
        with open(os.path.join(directory, f"routes-{start // per_file:03}.yaml"), "w") as f:
            for r in routes[start : start + per_file]:
                f.write(portcullis_route(r))
    if churn_version is not None:
        write_atomically(os.path.join(directory, "churn.yaml"), portcullis_churn(churn_version))


def portcullis_route(r):
    header = ""
    if r.header:
        header = f", headers: [{{name: {r.header[0]}, value: {r.header[1]}}}]"
    return f"""---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: route-{r.index}, namespace: bench}}
spec:
  parentRefs: [{{name: gw, sectionName: http}}]
  hostnames: [{r.host}]
  rules:
  - matches: [{{path: {{type: {r.kind}, value: {r.path}}}{header}}}]
    backendRefs: [{{name: {r.service}, port: 80}}]
"""


def portcullis_churn(version):
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: churn, namespace: bench}}
spec:
  parentRefs: [{{name: gw, sectionName: http}}]
  hostnames: [churn.example]
  rules:
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {{set: [{{name: x-bench-version, value: "{version}"}}]}}
    backendRefs: [{{name: backend-0, port: 80}}]
"""


def write_atomically(path, text):
    """Writes a file whole or not at all: a reader polling the directory never sees half of it.
    The temporary name does not end in .yaml/.conf, so neither proxy reads it."""
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# --- nginx, as NGINX Gateway Fabric writes it -------------------------------------------------

NGF_PROXY = """        proxy_http_version 1.1;
        proxy_set_header Host "$host";
        proxy_set_header X-Forwarded-For "$proxy_add_x_forwarded_for";
        proxy_set_header X-Real-IP "$remote_addr";
        proxy_set_header X-Forwarded-Proto "$scheme";
        proxy_set_header X-Forwarded-Host "$host";
        proxy_set_header X-Forwarded-Port "$server_port";
        proxy_set_header Upgrade "$http_upgrade";
        proxy_set_header Connection "$connection_upgrade";
        proxy_pass http://{upstream}$request_uri;
"""


def ngf_upstream_name(service):
    return f"bench_{service}_80"


def nginx_proxy_conf(work, total, backend, ports, tls, cpu_affinity=None):
    """nginx.conf for the proxy: the route set, plus an included churn.conf."""
    upstreams = [(name, backend["small"]) for name in service_names(total)]
    upstreams += [("body-1k", backend["1k"]), ("body-100k", backend["100k"])]
    out = [
        f"""worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server_names_hash_bucket_size 128;
    server_names_hash_max_size 65536;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        '' '';
    }}
"""
    ]
    for name, port in upstreams:
        u = ngf_upstream_name(name)
        out.append(
            f"""    upstream {u} {{
        random two least_conn;
        zone {u} 512k;
        server 127.0.0.1:{port};
        keepalive {NGINX_KEEPALIVE};
    }}
"""
        )
    listen_http = f"listen 127.0.0.1:{ports['http']};\n        listen 127.0.0.1:{ports['h2c']} http2;"
    out.append(
        f"""    server {{
        {listen_http.replace(';', ' default_server;')}
        default_type text/html;
        return 404;
    }}
    server {{
        listen 127.0.0.1:{ports['https']} ssl default_server;
        ssl_certificate {tls['crt']};
        ssl_certificate_key {tls['key']};
        ssl_reject_handshake on;
    }}
"""
    )
    bench_locations = [
        ("/", ngf_upstream_name("backend-0")),
        ("/1k", ngf_upstream_name("body-1k")),
        ("/100k", ngf_upstream_name("body-100k")),
    ]
    for tls_block in (False, True):
        if tls_block:
            head = f"""        listen 127.0.0.1:{ports['https']} ssl;
        ssl_certificate {tls['crt']};
        ssl_certificate_key {tls['key']};
        if ($ssl_server_name != $host) {{
            return 421;
        }}"""
        else:
            head = "        " + listen_http
        out.append(f"    server {{\n{head}\n        server_name bench.example;\n")
        for path, upstream in bench_locations:
            out.append(nginx_prefix_locations(path, upstream))
        out.append("    }\n")
    by_host = {}
    for r in generated_routes(total):
        by_host.setdefault(r.host, []).append(r)
    for host, routes in by_host.items():
        out.append(f"    server {{\n        {listen_http}\n        server_name {host};\n")
        out.append(nginx_host_locations(routes))
        out.append("    }\n")
    out.append(f"    include {work}/churn.conf;\n}}\n")
    return "".join(out)


def nginx_prefix_locations(path, upstream, guard=""):
    """NGF's two locations for a PathPrefix: the prefix with a trailing slash, and the exact
    path (`/` needs only the first)."""
    body = guard + NGF_PROXY.format(upstream=upstream)
    if path == "/":
        return f"        location / {{\n{body}        }}\n"
    return (
        f"        location {path}/ {{\n{body}        }}\n"
        f"        location = {path} {{\n{body}        }}\n"
    )


def nginx_host_locations(routes):
    """Locations for one hostname. A header match on a path shares that path's location: NGF
    evaluates such matches in njs and redirects to an internal location per rule; here an `if`
    on the header and a rewrite to the internal location do the same (cheaper than njs)."""
    out = []
    plain = {(r.kind, r.path): r for r in routes if r.header is None}
    headed = [r for r in routes if r.header is not None]
    for r in headed:
        internal = f"/_ngf-internal-route-{r.index}"
        out.append(
            f"        location {internal} {{\n            internal;\n"
            + NGF_PROXY.format(upstream=ngf_upstream_name(r.service))
            + "        }\n"
        )
    for (kind, path), r in plain.items():
        guards = ""
        for h in headed:
            if h.path == path:
                name = h.header[0].replace("-", "_")
                guards += (
                    f'        if ($http_{name} = "{h.header[1]}") {{\n'
                    f"            rewrite ^ /_ngf-internal-route-{h.index} last;\n"
                    f"        }}\n"
                )
        upstream = ngf_upstream_name(r.service)
        if kind == "Exact":
            out.append(f"        location = {path} {{\n{guards}{NGF_PROXY.format(upstream=upstream)}        }}\n")
        else:
            out.append(nginx_prefix_locations(path, upstream, guards))
    return "".join(out)


def nginx_churn_conf(ports, version):
    return f"""server {{
    listen 127.0.0.1:{ports['http']};
    server_name churn.example;
    location / {{
        add_header x-bench-version "{version}" always;
{NGF_PROXY.format(upstream=ngf_upstream_name('backend-0'))}    }}
}}
"""


# --- HAProxy ---------------------------------------------------------------------------------


def haproxy_conf(work, total, backend, ports, pem):
    """haproxy.cfg and its maps: `base` (Host + path) looked up by longest prefix, and for
    header matches the header value and `@` prefixed to it."""
    routes_map = ["bench.example/ be_backend-0", "bench.example/1k be_body-1k",
                  "bench.example/100k be_body-100k"]
    headers_map = []
    for r in generated_routes(total):
        path = r.path if r.path == "/" or r.kind == "Exact" else r.path + "/"
        if r.header:
            headers_map.append(f"{r.header[1]}@{r.host}{path} be_{r.service}")
        else:
            routes_map.append(f"{r.host}{path} be_{r.service}")
    with open(os.path.join(work, "routes.map"), "w") as f:
        f.write("\n".join(routes_map) + "\n")
    with open(os.path.join(work, "headers.map"), "w") as f:
        f.write("\n".join(headers_map) + "\n")
    backends = [(name, backend["small"]) for name in service_names(total)]
    backends += [("body-1k", backend["1k"]), ("body-100k", backend["100k"])]
    out = [
        f"""global
    nbthread 1
    maxconn 8000
    pidfile {work}/haproxy.pid
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    option forwardfor
frontend gateway
    bind 127.0.0.1:{ports['http']}
    bind 127.0.0.1:{ports['h2c']} proto h2
    bind 127.0.0.1:{ports['https']} ssl crt {pem} alpn h2,http/1.1
    http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
    http-request set-header X-Forwarded-Proto http unless {{ ssl_fc }}
    http-request set-var(txn.base) base
    http-request set-var(txn.backend) req.hdr(x-tenant),concat(@,txn.base),map_beg({work}/headers.map) if {{ req.hdr(x-tenant) -m found }}
    http-request set-var(txn.backend) var(txn.base),map_beg({work}/routes.map) unless {{ var(txn.backend) -m found }}
    use_backend %[var(txn.backend)] if {{ var(txn.backend) -m found }}
    default_backend not_found
backend not_found
    http-request deny deny_status 404
"""
    ]
    for name, port in backends:
        out.append(f"backend be_{name}\n    server s1 127.0.0.1:{port}\n")
    return "".join(out)


# --- the backend -----------------------------------------------------------------------------

SMALL_BODY = "hello from the backend\n"


def backend_conf(work, ports, tls):
    """One nginx worker answering every request from memory (small body) or from a file
    (1 KiB, 100 KiB); also on an h2c and a TLS port for the direct ceilings."""
    www = os.path.join(work, "www")
    os.makedirs(www, exist_ok=True)
    for name, size in (("1k", 1024), ("100k", 100 * 1024)):
        with open(os.path.join(www, f"body-{name}.txt"), "w") as f:
            line = "0123456789abcdef" * 4 + "\n"
            text = (line * (size // len(line) + 1))[:size]
            f.write(text)
    return f"""worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    sendfile on;
    default_type text/plain;
    server {{
        listen 127.0.0.1:{ports['small']};
        listen 127.0.0.1:{ports['small_h2c']} http2;
        listen 127.0.0.1:{ports['small_tls']} ssl;
        ssl_certificate {tls['crt']};
        ssl_certificate_key {tls['key']};
        location / {{ return 200 "{SMALL_BODY.rstrip()}\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{ports['1k']};
        location / {{ root {www}; try_files /body-1k.txt =500; }}
    }}
    server {{
        listen 127.0.0.1:{ports['100k']};
        location / {{ root {www}; try_files /body-100k.txt =500; }}
    }}
}}
"""
