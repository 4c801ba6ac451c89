"""Judging one HTTP reply the way the upstream suite compares it (see the conformance README):
on 200/204 the echoed request, backend and headers are checked; on a redirect only the Location;
otherwise only the status, with 408 and 504 interchangeable."""

import json
from urllib.parse import urlsplit


class Failure(Exception):
    """An expectation that did not hold, with what came back."""


def norm(values, strip_spaces=False):
    joined = ",".join(values)
    return joined.replace(" ", "") if strip_spaces else joined


def judge_http(req, expect, r, seen_path, runner):
    want = set(expect.get("accept_statuses") or [expect.get("status", 200)])
    if want & {408, 504}:
        want |= {408, 504}
    if r.status not in want:
        raise Failure(f"status {r.status}, want {sorted(want)}; body {r.body[:120]!r}")
    if 300 <= r.status < 400 and "redirect" in expect:
        return judge_redirect(expect["redirect"], r)
    if r.status not in (200, 204):
        return
    strip = expect.get("ignore_whitespace_in_response_headers", False)
    for name, value in (expect.get("response_headers") or {}).items():
        got = norm(r.header_values(name), strip)
        if got != (value.replace(" ", "") if strip else value):
            raise Failure(f"response header {name}: {got!r}, want {value!r}")
    for name, options in (expect.get("response_header_one_of") or {}).items():
        got = norm(r.header_values(name), strip)
        if got not in [o.replace(" ", "") if strip else o for o in options]:
            raise Failure(f"response header {name}: {got!r}, want one of {options}")
    for name in expect.get("absent_response_headers") or []:
        if r.header_values(name):
            raise Failure(f"response header {name} present: {r.header_values(name)}")
    try:
        echoed = json.loads(r.body) if r.body else None
    except ValueError:
        echoed = None
    if expect.get("answered_by_gateway"):
        if isinstance(echoed, dict) and "service" in echoed:
            raise Failure("the preflight reached the backend; the gateway must answer it")
        return
    if not isinstance(echoed, dict):
        raise Failure(f"reply is not from an echo backend: {r.body[:120]!r}")
    if expect.get("backend") and echoed["service"] != expect["backend"]:
        raise Failure(f"answered by {echoed['service']}, want {expect['backend']}")
    if expect.get("backend_any_of") and echoed["service"] not in expect["backend_any_of"]:
        raise Failure(f"answered by {echoed['service']}, want one of {expect['backend_any_of']}")
    if expect.get("namespace") and echoed["namespace"] != expect["namespace"]:
        raise Failure(f"answered from namespace {echoed['namespace']}, want {expect['namespace']}")
    seen = dict(expect.get("request_seen") or {})
    if not seen:
        seen = {"path": req.get("path", "/"), "method": req.get("method", "GET")}
        if req.get("host"):
            seen["host"] = req["host"]
        if req.get("headers"):
            seen["headers"] = req["headers"]
    if seen_path:
        seen["path"] = seen_path
    # Header names are compared case-insensitively; values of one name keep their order.
    headers = {}
    for k, v in echoed["headers"].items():
        headers.setdefault(k.lower(), []).extend(v)
    if "path" in seen and echoed["path"] != seen["path"]:
        raise Failure(f"backend saw path {echoed['path']!r}, want {seen['path']!r}")
    if "method" in seen and echoed["method"] != seen["method"]:
        raise Failure(f"backend saw method {echoed['method']}, want {seen['method']}")
    if "host" in seen and echoed["host"] != seen["host"]:
        raise Failure(f"backend saw host {echoed['host']!r}, want {seen['host']!r}")
    for name, value in (seen.get("headers") or {}).items():
        got = norm(headers.get(name.lower(), []))
        if got != value:
            raise Failure(f"backend saw header {name}: {got!r}, want {value!r}")
    for name in seen.get("absent_headers") or []:
        if name.lower() in headers:
            raise Failure(f"backend saw header {name}, which should have been removed")
    name = expect.get("backend_matches_seen_header")
    if name:
        values = headers.get(name.lower(), [])
        if len(values) != 1 or values[0] != echoed["service"]:
            raise Failure(f"header {name} seen as {values}, want exactly [{echoed['service']!r}]")
    want_tls = expect.get("backend_tls_seen")
    if want_tls:
        tls = echoed.get("tls") or {}
        if tls.get("serverName") != want_tls["sni"]:
            raise Failure(f"backend saw SNI {tls.get('serverName')!r}, want {want_tls['sni']!r}")
        cert_file = runner.certs.files[want_tls["peer_certificates_include"]][0]
        want_pem = "".join(open(cert_file).read().split())
        if not any("".join(p.split()) == want_pem for p in tls.get("peerCertificates", [])):
            raise Failure("backend did not receive the Gateway's client certificate")
    for m in expect.get("mirrored_to") or []:
        if m.get("percent", 100) < 100:
            continue  # a share of requests: judged over a batch (mirror_distribution)
        ns = m.get("namespace", expect.get("namespace", "gateway-conformance-infra"))
        if not runner.mirrored(ns, m["backend"], seen.get("path", req.get("path"))):
            raise Failure(f"no mirrored copy reached {m['backend']}")


def judge_redirect(want, r):
    location = (r.header_values("location") or [""])[0]
    u = urlsplit(location)
    if "status" in want and r.status != want["status"]:
        raise Failure(f"redirect status {r.status}, want {want['status']}")
    if "scheme" in want and u.scheme != want["scheme"]:
        raise Failure(f"redirect scheme {u.scheme!r} in {location!r}, want {want['scheme']!r}")
    if want.get("host") and u.hostname != want["host"]:
        raise Failure(f"redirect host {u.hostname!r} in {location!r}, want {want['host']!r}")
    default = {"http": 80, "https": 443}.get(u.scheme)
    port = u.port
    if "port" in want:
        if (port or default) != int(want["port"]):
            raise Failure(f"redirect port {port} in {location!r}, want {want['port']}")
    elif port not in (None, default):
        raise Failure(f"redirect carries port {port} in {location!r}, want none")
    if "path" in want and u.path != want["path"]:
        raise Failure(f"redirect path {u.path!r} in {location!r}, want {want['path']!r}")
