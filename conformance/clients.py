"""Clients for the conformance runner: HTTP/1.1 over a fresh connection each time (plain or
TLS, with SNI, a trusted certificate and an optional client certificate), HTTP/2 through curl,
and WebSocket."""

import base64
import http.client
import os
import socket
import ssl
import subprocess
import tempfile

import echo
from judge import Failure

TIMEOUT = 10


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # list of (name, value)
        self.body = body

    def header_values(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]


def host_header(address, req):
    if req.get("host"):
        return req["host"]
    port = req.get("port", 80)
    default = 443 if req.get("scheme") == "https" else 80
    return address if port == default else f"{address}:{port}"


def tls_context(tls):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if tls.get("trust"):
        ctx.load_verify_locations(tls["trust"])
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if tls.get("client"):
        ctx.load_cert_chain(*tls["client"])
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def request(address, port, req, tls):
    if req.get("http_version") in ("2", "h2c-prior-knowledge"):
        return curl(address, port, req, tls)
    try:
        if tls:
            conn = http.client.HTTPSConnection(address, port, timeout=TIMEOUT, context=tls_context(tls))
            # http.client sends the connection's host as SNI; send the case's name instead.
            conn._tunnel_host = None
            sock = socket.create_connection((address, port), timeout=TIMEOUT)
            conn.sock = tls_context(tls).wrap_socket(sock, server_hostname=tls.get("sni") or None)
        else:
            conn = http.client.HTTPConnection(address, port, timeout=TIMEOUT)
        conn.putrequest(req.get("method", "GET"), req.get("path", "/"), skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host_header(address, req))
        for name, value in (req.get("headers") or {}).items():
            conn.putheader(name, value)
        sets = ",".join(f"{k}:{v}" for k, v in (req.get("echo_set_response_headers") or {}).items())
        conn.putheader("X-Echo-Set-Header", sets)
        conn.endheaders()
        r = conn.getresponse()
        body = r.read()
        conn.close()
        return Response(r.status, r.getheaders(), body)
    except (OSError, http.client.HTTPException) as e:
        raise Failure(f"transport error: {e!r}")


def curl(address, port, req, tls):
    scheme = "https" if tls else "http"
    host = host_header(address, req)
    name = (tls or {}).get("sni") or host.split(":")[0]
    with tempfile.TemporaryDirectory() as d:
        headers_file, body_file = os.path.join(d, "h"), os.path.join(d, "b")
        cmd = ["curl", "-s", "--max-time", str(TIMEOUT), "-D", headers_file, "-o", body_file,
               "-X", req.get("method", "GET"), "-H", f"Host: {host}"]
        for k, v in (req.get("headers") or {}).items():
            cmd += ["-H", f"{k}: {v}"]
        if tls:
            cmd += ["--http2", "--resolve", f"{name}:{port}:{address}"]
            # The trusted certificates are self-signed leaves, which curl's OpenSSL will not take
            # as trust anchors; routing, not certificate identity, is what these cases check.
            cmd += ["-k"]
            if tls.get("client"):
                cmd += ["--cert", tls["client"][0], "--key", tls["client"][1]]
            url = f"https://{name}:{port}{req.get('path', '/')}"
        else:
            cmd += ["--http2-prior-knowledge"]
            url = f"http://{address}:{port}{req.get('path', '/')}"
        done = subprocess.run(cmd + [url], capture_output=True)
        if done.returncode != 0:
            raise Failure(f"transport error: curl exit {done.returncode}")
        lines = open(headers_file, encoding="latin-1").read().split("\r\n")
        status = int(lines[0].split()[1])
        headers = [tuple(x.strip() for x in l.split(":", 1)) for l in lines[1:] if ":" in l]
        return Response(status, headers, open(body_file, "rb").read())


def websocket(address, port, req):
    """Opens a WebSocket through the gateway and checks every exchange comes back."""
    try:
        sock = socket.create_connection((address, port), timeout=TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        ws = req.get("websocket") or {}
        lines = [f"GET {req.get('path', '/ws')} HTTP/1.1", f"Host: {host_header(address, req)}",
                 "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                 "Sec-WebSocket-Version: 13"]
        if ws.get("origin"):
            lines.append(f"Origin: {ws['origin']}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        stream = sock.makefile("rb")
        status = stream.readline()
        if b" 101 " not in status:
            return False
        while stream.readline() not in (b"\r\n", b""):
            pass
        for message in ws.get("exchange") or [{"send": "hello", "expect": "hello"}]:
            text = message.get("send", message if isinstance(message, str) else "")
            sock.sendall(echo.make_frame(1, text.encode()))
            frame = echo.read_frame(stream)
            want = message.get("expect", text) if isinstance(message, dict) else text
            if frame is None or frame[1].decode() != want:
                return False
        sock.close()
        return True
    except OSError:
        return False


def tls_rejected(address, port, sni):
    """True when a TLS handshake with `sni` is cut off at transport level (EOF or reset); a
    completed handshake or a certificate complaint is not a rejection."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((address, port), timeout=TIMEOUT) as sock:
            with ctx.wrap_socket(sock, server_hostname=sni):
                return False
    except ssl.SSLCertVerificationError:
        return False
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError, ssl.SSLError):
        return True
    except OSError:
        return True


def tcp_echo(address, port, sni, trust):
    """Opens TLS to the TCP echo through the gateway and returns its TEST answer."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = bool(sni)
    if trust:
        ctx.load_verify_locations(trust)
    else:
        ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((address, port), timeout=TIMEOUT) as sock:
            with ctx.wrap_socket(sock, server_hostname=sni) as tls:
                f = tls.makefile("rwb")
                greeting = f.readline()
                if not greeting.startswith(b"Gateway API Test TCP Server"):
                    raise Failure(f"unexpected greeting {greeting!r}")
                f.write(b"TEST\n")
                f.flush()
                import json
                return json.loads(f.readline())
    except (OSError, ValueError) as e:
        raise Failure(f"TCP echo over TLS failed: {e!r}")


def grpc_call(address, port, req):
    """One unary call over cleartext HTTP/2; returns (status code name, decoded reply or None)."""
    import json

    import grpc
    options = [("grpc.default_authority", req["authority"])] if req.get("authority") else []
    with grpc.insecure_channel(f"{address}:{port}", options=options) as channel:
        call = channel.unary_unary(f"/{req['grpc_service']}/{req['grpc_method']}")
        metadata = [(k.lower(), v) for k, v in (req.get("metadata") or {}).items()]
        try:
            reply = call(b"", metadata=metadata, timeout=TIMEOUT)
            return "OK", json.loads(reply)
        except grpc.RpcError as e:
            name = e.code().name  # e.g. UNIMPLEMENTED
            return name[0] + name[1:].lower().replace("_", ""), None


def client_cert_requested(address, port, tls):
    """Whether the server sends a CertificateRequest in the handshake (read from openssl
    s_client's handshake summary, which lists the CA names or says none were sent)."""
    cmd = ["openssl", "s_client", "-connect", f"{address}:{port}", "-servername", tls.get("sni") or "localhost"]
    done = subprocess.run(cmd, input=b"", capture_output=True, timeout=TIMEOUT)
    out = done.stdout.decode(errors="replace")
    return "client certificate CA names" in out or "Requested Signature Algorithms" in out
