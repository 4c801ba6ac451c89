"""Echo backends for the conformance runner.

One HTTP/1.1 server per Service on 127.0.0.1 (any free port). Every answer is JSON describing the
request as received (path with query, host, method, headers, the Service and namespace that
answered), as the upstream suite's echo server does, plus:

- `delay=<Go duration>` query parameter: wait before answering;
- `X-Echo-Set-Header: Name:value,...`: add those headers to the answer;
- `/ws`: a WebSocket endpoint echoing text and binary messages (RFC 6455);
- a record of every request received, for mirror checks.
"""

import base64
import hashlib
import json
import re
import socket
import ssl
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC11B85"


def go_duration(text):
    """Seconds in a Go duration such as 1s, 500ms, 1m30s."""
    total = 0.0
    for value, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)", text or ""):
        total += float(value) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[unit]
    return total


class Echo:
    """One echo server standing for a Service."""

    def __init__(self, namespace, service, tls_files=None, target_port=3000, client_ca=None):
        self.namespace, self.service = namespace, service
        self.seen = []  # (method, path) of every request, for mirror checks
        self.lock = threading.Lock()
        echo = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle_one(self):
                with echo.lock:
                    echo.seen.append((self.command, self.path))
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                if self.path.split("?")[0] == "/ws" and self.headers.get("upgrade", "").lower() == "websocket":
                    return self.websocket()
                query = self.path.split("?", 1)[1] if "?" in self.path else ""
                for pair in query.split("&"):
                    if pair.startswith("delay="):
                        time.sleep(min(go_duration(pair[6:]), 30))
                headers = {}
                for name, value in self.headers.items():
                    headers.setdefault(name, []).append(value)
                reply = {
                    "path": self.path, "host": self.headers.get("host", ""), "method": self.command,
                    "proto": self.request_version, "headers": headers,
                    "namespace": echo.namespace, "service": echo.service, "pod": echo.service + "-0",
                }
                if isinstance(self.connection, ssl.SSLSocket):
                    peer = self.connection.getpeercert(binary_form=True)
                    reply["tls"] = {"serverName": getattr(self.connection, "sni", None),
                                    "peerCertificates": [ssl.DER_cert_to_PEM_cert(peer)] if peer else []}
                body = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                for item in (self.headers.get("x-echo-set-header") or "").split(","):
                    if ":" in item:
                        name, value = item.split(":", 1)
                        self.send_header(name.strip(), value.strip())
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_CONNECT = handle_one

            def websocket(self):
                accept = base64.b64encode(hashlib.sha1((self.headers["sec-websocket-key"] + WS_GUID).encode()).digest())
                self.send_response(101)
                self.send_header("upgrade", "websocket")
                self.send_header("connection", "Upgrade")
                self.send_header("sec-websocket-accept", accept.decode())
                self.end_headers()
                self.wfile.flush()
                while True:
                    frame = read_frame(self.rfile)
                    if frame is None or frame[0] == 8:
                        self.close_connection = True
                        return
                    opcode, payload = frame
                    if opcode in (1, 2):
                        self.wfile.write(make_frame(opcode, payload, mask=False))
                        self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls_files:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls_files)

            def remember_sni(sock, name, _ctx):
                sock.sni = name

            ctx.sni_callback = remember_sni
            if client_ca:
                # Ask for a client certificate, verify it when offered, accept without one.
                ctx.verify_mode = ssl.CERT_OPTIONAL
                ctx.load_verify_locations(client_ca)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.ports = {target_port: self.port}
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def paths_seen(self):
        with self.lock:
            return [p for _, p in self.seen]


def read_frame(stream):
    head = stream.read(2)
    if len(head) < 2:
        return None
    opcode, length = head[0] & 0x0F, head[1] & 0x7F
    masked = head[1] & 0x80
    if length == 126:
        length = struct.unpack(">H", stream.read(2))[0]
    elif length == 127:
        length = struct.unpack(">Q", stream.read(8))[0]
    key = stream.read(4) if masked else b"\0\0\0\0"
    data = bytearray(stream.read(length))
    for i in range(len(data)):
        data[i] ^= key[i % 4]
    return opcode, bytes(data)


def make_frame(opcode, payload, mask=True):
    head = bytearray([0x80 | opcode])
    bit = 0x80 if mask else 0
    if len(payload) < 126:
        head.append(bit | len(payload))
    elif len(payload) < 65536:
        head.append(bit | 126)
        head += struct.pack(">H", len(payload))
    else:
        head.append(bit | 127)
        head += struct.pack(">Q", len(payload))
    if not mask:
        return bytes(head) + payload
    key = b"\x11\x22\x33\x44"
    return bytes(head) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class TcpEcho:
    """The TCP echo of the TLSRoute cases: a plain port and a TLS port (serving `tls_files`).
    It greets, answers PING with PONG, IS_TLS with whether its own connection is TLS, and TEST
    with a JSON line naming itself and the server name it saw."""

    def __init__(self, namespace, service, tls_files):
        self.namespace, self.service = namespace, service
        self.plain = self._listen(None)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*tls_files)
        self.tls = self._listen(ctx)
        self.ports = {3000: self.plain, 8443: self.tls}

    def _listen(self, ctx):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        threading.Thread(target=self._accept, args=(sock, ctx), daemon=True).start()
        return sock.getsockname()[1]

    def _accept(self, sock, ctx):
        while True:
            conn, _ = sock.accept()
            threading.Thread(target=self._serve, args=(conn, ctx), daemon=True).start()

    def _serve(self, conn, ctx):
        try:
            conn.settimeout(30)
            sni = None
            if ctx:
                seen = {}
                ctx.sni_callback = lambda s, name, c: seen.__setitem__("name", name) and None
                conn = ctx.wrap_socket(conn, server_side=True)
                sni = seen.get("name")
            f = conn.makefile("rwb")
            f.write(b"Gateway API Test TCP Server\n")
            f.flush()
            for line in f:
                word = line.strip().decode(errors="replace")
                if word == "PING":
                    f.write(b"PONG\n")
                elif word == "IS_TLS":
                    f.write(b"true\n" if ctx else b"false\n")
                elif word == "TEST":
                    info = {"namespace": self.namespace, "pod": self.service + "-0", "service": self.service,
                            "isTLS": bool(ctx)}
                    if ctx:
                        info["tls"] = {"serverName": sni}
                    f.write((json.dumps(info) + "\n").encode())
                f.flush()
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()


class GrpcEcho:
    """The gRPC echo: service `gateway_api_conformance.echo_basic.grpcecho.GrpcEcho` over
    cleartext HTTP/2. `Echo` and `EchoTwo` answer with a JSON message naming the method, the
    metadata seen and the backend; `EchoThree` is deliberately unimplemented. Messages are raw
    bytes on both sides, so no generated protobuf code is needed."""

    SERVICE = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho"

    def __init__(self, namespace, service):
        import grpc
        from concurrent import futures
        self.namespace, self.service = namespace, service

        def handler(method):
            def answer(request, context):
                metadata = {k: v for k, v in context.invocation_metadata()}
                return json.dumps({"method": f"/{self.SERVICE}/{method}", "namespace": namespace,
                                   "service": service, "pod": service + "-0", "metadata": metadata}).encode()
            return grpc.unary_unary_rpc_method_handler(answer)

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(self.SERVICE, {m: handler(m) for m in ("Echo", "EchoTwo")})])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.ports = {3000: self.port}
