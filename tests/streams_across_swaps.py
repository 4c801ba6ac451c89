#!/usr/bin/env python3
"""gRPC and WebSocket through the gateway with real clients, across routing-table swaps.

Starts the real `portcullis` binary, a gRPC echo (unary, server-streaming and bidirectional
methods; raw-bytes messages, so no generated code) and a WebSocket echo, then:

1. a unary call, a server-streaming call and a bidirectional call go through the gateway;
2. one bidirectional stream and one WebSocket are opened and kept open while the route file is
   rewritten 50 times (each rewrite is a new routing table: its generation is watched on
   /metrics); after every swap both carry one more message and its echo. Neither may break.

Prints `N passed, M failed` and exits non-zero on a failure. Usage:
    tests/streams_across_swaps.py [--binary target/debug/portcullis]
"""

import argparse
import os
import queue
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent import futures

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "conformance"))
import echo  # noqa: E402  (the conformance runner's WebSocket echo and frame helpers)

SERVICE = "streams.Echo"
SWAPS = 50


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def grpc_backend():
    def unary(request, context):
        return b"unary:" + request

    def server_stream(request, context):
        for i in range(5):
            yield b"part%d:" % i + request

    def bidi(requests, context):
        for r in requests:
            yield b"echo:" + r

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def config(step, grpc_port, ws_port):
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: portcullis}}
spec: {{controllerName: portcullis.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: streams}}
spec:
  gatewayClassName: portcullis
  listeners: [{{name: web, port: 80, protocol: HTTP}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: grpc, namespace: streams}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [grpc.test]
  rules:
  - matches: [{{method: {{service: {SERVICE}}}}}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {{set: [{{name: x-step, value: "{step}"}}]}}
    backendRefs: [{{name: grpc, port: 80}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: ws, namespace: streams}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [ws.test]
  rules:
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {{set: [{{name: x-step, value: "{step}"}}]}}
    backendRefs: [{{name: ws, port: 80}}]
---
apiVersion: v1
kind: Service
metadata: {{name: grpc, namespace: streams}}
spec: {{ports: [{{port: 80, appProtocol: kubernetes.io/h2c}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: grpc-1, namespace: streams, labels: {{kubernetes.io/service-name: grpc}}}}
addressType: IPv4
endpoints: [{{addresses: [127.0.0.1]}}]
ports: [{{port: {grpc_port}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: ws, namespace: streams}}
spec: {{ports: [{{port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: ws-1, namespace: streams, labels: {{kubernetes.io/service-name: ws}}}}
addressType: IPv4
endpoints: [{{addresses: [127.0.0.1]}}]
ports: [{{port: {ws_port}}}]
"""


def generation(admin):
    text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
    m = re.search(r"^portcullis_config_generation (\d+)", text, re.M)
    return int(m.group(1)) if m else 0


def open_websocket(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /ws HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    stream = sock.makefile("rb")
    status = stream.readline()
    if b" 101 " not in status:
        raise RuntimeError(f"WebSocket upgrade refused: {status!r}")
    while stream.readline() not in (b"\r\n", b""):
        pass
    return sock, stream


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=os.path.join(os.path.dirname(HERE), "target", "debug", "portcullis"))
    args = parser.parse_args()
    results = []
    work = tempfile.mkdtemp(prefix="portcullis-streams-")
    server, grpc_port = grpc_backend()
    ws_echo = echo.Echo("streams", "ws")
    listen, admin = free_port(), f"127.0.0.1:{free_port()}"
    route_file = os.path.join(work, "all.yaml")
    with open(route_file, "w") as f:
        f.write(config(0, grpc_port, ws_echo.port))
    gateway = subprocess.Popen(
        [args.binary, "run", "--config-dir", work, "--admin-addr", admin,
         "--port-offset", str(listen - 80), "--access-log-sample", "0"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "gateway.log"), "w"))
    try:
        deadline = time.time() + 30
        while True:
            try:
                if urllib.request.urlopen(f"http://{admin}/readyz", timeout=1).status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("gateway never became ready")
            time.sleep(0.1)

        channel = grpc.insecure_channel(f"127.0.0.1:{listen}", options=[("grpc.default_authority", "grpc.test")])
        grpc.channel_ready_future(channel).result(timeout=10)

        def check(name, fn):
            try:
                fn()
                results.append((name, "PASS", ""))
            except Exception as e:  # each check reports on its own
                results.append((name, "FAIL", repr(e)))
            print(f"{results[-1][1]} {name} {results[-1][2]}", file=sys.stderr, flush=True)

        def unary():
            assert channel.unary_unary(f"/{SERVICE}/Unary")(b"hi", timeout=10) == b"unary:hi"

        def server_stream():
            parts = list(channel.unary_stream(f"/{SERVICE}/ServerStream")(b"x", timeout=10))
            assert parts == [b"part%d:x" % i for i in range(5)], parts

        def bidi_short():
            replies = list(channel.stream_stream(f"/{SERVICE}/Bidi")(iter([b"a", b"b", b"c"]), timeout=10))
            assert replies == [b"echo:a", b"echo:b", b"echo:c"], replies

        check("grpc_unary_call", unary)
        check("grpc_server_streaming_call", server_stream)
        check("grpc_bidirectional_call", bidi_short)

        def long_lived():
            outgoing = queue.Queue()
            responses = channel.stream_stream(f"/{SERVICE}/Bidi")(iter(outgoing.get, None), timeout=300)
            sock, stream = open_websocket(listen)
            try:
                for step in range(1, SWAPS + 1):
                    before = generation(admin)
                    tmp = route_file + ".tmp"
                    with open(tmp, "w") as f:
                        f.write(config(step, grpc_port, ws_echo.port))
                    os.replace(tmp, route_file)
                    deadline = time.time() + 5
                    while generation(admin) <= before:
                        if time.time() > deadline:
                            raise RuntimeError(f"swap {step} was not applied")
                        time.sleep(0.02)
                    outgoing.put(b"m%d" % step)
                    reply = next(responses)
                    assert reply == b"echo:m%d" % step, f"bidi stream after swap {step}: {reply!r}"
                    sock.sendall(echo.make_frame(1, b"w%d" % step))
                    frame = echo.read_frame(stream)
                    assert frame and frame[1] == b"w%d" % step, f"WebSocket after swap {step}: {frame!r}"
            finally:
                outgoing.put(None)
                sock.close()

        check(f"bidirectional_stream_and_websocket_survive_{SWAPS}_table_swaps", long_lived)
    finally:
        gateway.terminate()
        gateway.wait(15)
        server.stop(0)
    passed = sum(r == "PASS" for _, r, _ in results)
    failed = len(results) - passed
    for name, r, detail in results:
        print(f"{r}  {name}  {detail}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
