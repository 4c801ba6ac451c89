"""Echo backends for the conformance runner.

One HTTP/1.1 server per Service on 127.0.0.1 (any free port), standing for the echo's port 3000
(8443 with TLS), and beside each plain one an HTTP/2-over-cleartext-only server standing for its
port 3001, which refuses plain HTTP/1.1 with 400. Every answer is JSON describing the request as
received (path with query, host, method, protocol, headers, the Service and namespace that
answered), as the upstream suite's echo server does, plus:

- `delay=<Go duration>` query parameter: wait before answering;
- `X-Echo-Set-Header: Name:value,...`: add those headers to the answer;
- `/ws`: a WebSocket endpoint echoing text and binary messages (RFC 6455);
- `/retry/...?responseCode=C&succeedAfter=N&uuid=U`: the first N requests with one `uuid` fail,
  with status C, or without `responseCode` by resetting the connection; later ones are echoed;
- a record of every request received, for mirror checks.
"""

import base64
import hashlib
import json
import re
import socket
import urllib.parse
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import h2.config
import h2.connection
import h2.events
import h2.exceptions

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC11B85"


class ResetConnection(Exception):
    """Raised by `Echo.answer` when the request asks for its connection to be reset."""


def go_duration(text):
    """Seconds in a Go duration such as 1s, 500ms, 1m30s."""
    total = 0.0
    for value, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)", text or ""):
        total += float(value) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[unit]
    return total


class QuietServer(ThreadingHTTPServer):
    """An HTTP server that does not print a traceback when a peer resets its connection: the
    gateway does that on purpose, for example to a backend connection it gives up after a
    retried status."""

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Echo:
    """One echo server standing for a Service: HTTP/1.1 on its target port (3000, or 8443 with
    TLS) and, without TLS, HTTP/2 over cleartext only on 3001, as the upstream echo's pods serve
    both. Whichever protocol a request arrives on, the answer is the same JSON."""

    def __init__(self, namespace, service, tls_files=None, target_port=3000, client_ca=None):
        self.namespace, self.service = namespace, service
        self.seen = []  # (method, path) of every request, for mirror checks
        self.failures = {}  # uuid -> failed answers so far, for /retry/
        self.lock = threading.Lock()
        echo = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle_one(self):
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                if self.path.split("?")[0] == "/ws" and self.headers.get("upgrade", "").lower() == "websocket":
                    echo.record(self.command, self.path)
                    return self.websocket()
                tls = None
                if isinstance(self.connection, ssl.SSLSocket):
                    peer = self.connection.getpeercert(binary_form=True)
                    tls = {"serverName": getattr(self.connection, "sni", None),
                           "peerCertificates": [ssl.DER_cert_to_PEM_cert(peer)] if peer else []}
                try:
                    status, headers, body = echo.answer(self.command, self.path, self.headers.get("host", ""),
                                                        self.request_version, self.headers.items(), tls)
                except ResetConnection:
                    # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
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

        self.server = QuietServer(("127.0.0.1", 0), Handler)
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
        if not tls_files:
            self.ports[3001] = H2cListener(self.answer).port

    def record(self, method, path):
        with self.lock:
            self.seen.append((method, path))

    def answer(self, method, path, host, proto, request_headers, tls=None):
        """(status, response headers, body) for one request, whatever protocol carried it: the
        JSON description of the request, after the `delay` it asks for, with the response
        headers `X-Echo-Set-Header` asks for."""
        self.record(method, path)
        query = path.split("?", 1)[1] if "?" in path else ""
        if path.startswith("/retry/"):
            failure = self.flaky(query)
            if failure is not None:
                body = b"failing as asked\n"
                return failure, [("content-type", "text/plain"), ("content-length", str(len(body)))], body
        for pair in query.split("&"):
            if pair.startswith("delay="):
                time.sleep(min(go_duration(pair[6:]), 30))
        headers = {}
        for name, value in request_headers:
            headers.setdefault(name, []).append(value)
        reply = {
            "path": path, "host": host, "method": method, "proto": proto, "headers": headers,
            "namespace": self.namespace, "service": self.service, "pod": self.service + "-0",
        }
        if tls:
            reply["tls"] = tls
        body = json.dumps(reply).encode()
        out = [("content-type", "application/json"), ("content-length", str(len(body)))]
        for _, wanted in (h for h in request_headers if h[0].lower() == "x-echo-set-header"):
            for item in wanted.split(","):
                if ":" in item:
                    name, value = item.split(":", 1)
                    out.append((name.strip(), value.strip()))
        return 200, out, body

    def flaky(self, query):
        """The status a `/retry/` request fails with, or None once its `uuid` has failed
        `succeedAfter` times; raises ResetConnection when no `responseCode` is given."""
        params = dict(urllib.parse.parse_qsl(query))
        uuid = params.get("uuid", "")
        with self.lock:
            failed = self.failures.get(uuid, 0)
            if failed >= int(params.get("succeedAfter", "0")):
                return None
            self.failures[uuid] = failed + 1
        if "responseCode" not in params:
            raise ResetConnection()
        return int(params["responseCode"])

    def paths_seen(self):
        with self.lock:
            return [p for _, p in self.seen]


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class H2cListener:
    """An echo port that speaks only HTTP/2 over cleartext: prior knowledge, or an HTTP/1.1
    request asking to upgrade to h2c (RFC 7540 section 3.2). Any other HTTP/1.1 request gets 400,
    so a 200 from it proves the client (the gateway) spoke HTTP/2. `answer` is the echo's
    `Echo.answer`.

    One thread per connection reads frames through the sans-IO `h2` state machine; each request
    is answered on a thread of its own, so that a delayed answer does not hold up the other
    streams the gateway multiplexes on the connection."""

    def __init__(self, answer):
        self.answer = answer
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def _accept(self, sock):
        while True:
            conn, _ = sock.accept()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, sock):
        try:
            with sock:
                self._exchange(sock)
        except (OSError, h2.exceptions.ProtocolError):
            pass  # the peer went away or broke the protocol: drop the connection

    def _exchange(self, sock):
        """Tells the two ways in apart from the first bytes, then runs the HTTP/2 connection."""
        data = b""
        while not data.startswith(H2_PREFACE):
            if data and not H2_PREFACE.startswith(data) and b"\r\n\r\n" in data:
                break  # a complete HTTP/1 request head
            chunk = sock.recv(65536)
            if not chunk:
                return
            data += chunk
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        upgraded = None
        if data.startswith(H2_PREFACE):
            conn.initiate_connection()
        else:
            head, _, data = data.partition(b"\r\n\r\n")
            upgraded = self._upgrade(sock, conn, head, data)
            if upgraded is None:
                return
            data = upgraded.pop("rest")
        h2c = H2cConnection(sock, conn, self.answer)
        with h2c.lock:
            h2c.send()
        if upgraded:
            # The upgrading request is stream 1, already complete from the client's side.
            threading.Thread(target=h2c.respond, args=(1, upgraded["headers"]), daemon=True).start()
        while data:
            h2c.receive(data)
            data = sock.recv(65536)

    def _upgrade(self, sock, conn, head, rest):
        """Switches an h2c Upgrade request to HTTP/2 and returns it as HTTP/2 headers of stream
        1 (plus the bytes read past it); answers anything else with 400 and returns None."""
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = (lines[0].split(" ") + ["", "", ""])[:3]
        headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if ":" in line]
        fields = {k.lower(): v for k, v in headers}
        connection = {t.strip().lower() for t in fields.get("connection", "").split(",")}
        if not (version == "HTTP/1.1" and fields.get("upgrade", "").lower() == "h2c" and
                "http2-settings" in fields and {"upgrade", "http2-settings"} <= connection and
                "transfer-encoding" not in fields):
            body = b"this port speaks only HTTP/2 over cleartext (h2c)\n"
            sock.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\n"
                         b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
            # Read what the client still sends (a body) before closing, so that the close does
            # not turn into a reset that could destroy the 400 before the client reads it.
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(2)
            while sock.recv(65536):
                pass
            return None
        # The upgrading request's body comes before the switch; the echo only needs it read.
        length = int(fields.get("content-length") or 0)
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            rest += chunk
        rest = rest[length:]
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n")
        conn.initiate_upgrade_connection(fields["http2-settings"])
        hop_by_hop = {"connection", "upgrade", "http2-settings", "host", "keep-alive", "content-length"}
        as_h2 = [(":method", method), (":path", target), (":scheme", "http"),
                 (":authority", fields.get("host", ""))]
        as_h2 += [(k.lower(), v) for k, v in headers if k.lower() not in hop_by_hop]
        return {"headers": as_h2, "rest": rest}


class H2cConnection:
    """One server-side HTTP/2 connection over a socket: requests in, echo answers out, with
    flow control respected for answers larger than the peer's window."""

    def __init__(self, sock, conn, answer):
        self.sock, self.conn, self.answer = sock, conn, answer
        self.lock = threading.Lock()  # the h2 state machine and the socket are shared with answer threads
        self.requests = {}  # stream id -> request headers, until the request ends
        self.pending = {}  # stream id -> response body bytes the flow-control window holds back

    def send(self):
        """Writes what the state machine has queued; called with the lock held."""
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def receive(self, data):
        with self.lock:
            events = self.conn.receive_data(data)
            for event in events:
                if isinstance(event, h2.events.RequestReceived):
                    self.requests[event.stream_id] = event.headers
                elif isinstance(event, h2.events.DataReceived):
                    # The body is not echoed; hand the window back so the client can go on.
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id in self.requests:
                    threading.Thread(target=self.respond, args=(event.stream_id, self.requests.pop(event.stream_id)),
                                     daemon=True).start()
                elif isinstance(event, h2.events.StreamReset):
                    self.requests.pop(event.stream_id, None)
                    self.pending.pop(event.stream_id, None)
                elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                    for stream_id in list(self.pending):
                        try:
                            self.flush(stream_id)
                        except h2.exceptions.StreamClosedError:
                            self.pending.pop(stream_id, None)
            self.send()

    def respond(self, stream_id, headers):
        pseudo = {k: v for k, v in headers if k.startswith(":")}
        fields = [(k, v) for k, v in headers if not k.startswith(":")]
        host = pseudo.get(":authority") or next((v for k, v in fields if k == "host"), "")
        try:
            status, out, body = self.answer(pseudo.get(":method", ""), pseudo.get(":path", ""), host, "HTTP/2.0",
                                            fields)
        except ResetConnection:
            with self.lock:
                self.conn.reset_stream(stream_id)
                self.send()
            return
        head_only = pseudo.get(":method") == "HEAD"
        with self.lock:
            try:
                self.conn.send_headers(stream_id, [(":status", str(status))] + [(k.lower(), v) for k, v in out],
                                       end_stream=head_only)
                if not head_only:
                    self.pending[stream_id] = body
                    self.flush(stream_id)
                self.send()
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, OSError):
                self.pending.pop(stream_id, None)  # the client went away or reset the stream

    def flush(self, stream_id):
        """Sends as much of a pending body as the windows allow, ending the stream with its
        last byte; called with the lock held."""
        body = self.pending[stream_id]
        while body:
            size = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size, len(body))
            if size <= 0:
                break
            self.conn.send_data(stream_id, body[:size])
            body = body[size:]
        if body:
            self.pending[stream_id] = body
        else:
            del self.pending[stream_id]
            self.conn.end_stream(stream_id)


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
