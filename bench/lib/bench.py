#!/usr/bin/env python3
"""Runs the side-by-side benchmark; `bench/run` installs the tools, builds, and calls this.

    bench.py --binary PATH [--quick] [--only SCENARIO,...] [--skip churn,scale,profile]

Each scenario is run against every target in turn (the backend directly, Portcullis, nginx,
HAProxy), each proxy freshly started in front of the same backend: a warm-up, a saturating
throughput run of BENCH_SECONDS (CPU time and peak memory of the proxy read from /proc around
it), then a latency run of BENCH_LATENCY_SECONDS at BENCH_RATE requests per second. Results go
to bench/results/latest.json and latest.md (quick.* with --quick); --only re-runs some
scenarios and keeps the others' last results.
"""

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import http.client

import configs
import loadgen
import procs
import report
import targets

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(ROOT, "bench", "results")

T0 = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - T0:6.0f}s] {msg}", file=sys.stderr, flush=True)


# Scenario: id, title, traffic kind, body, route count, rotate over routes, close connections.
def scenarios(quick):
    route_counts = (10, 100, 1000) if quick else (10, 1000, 10000)
    out = [
        dict(id="keepalive", title="HTTP/1.1 keep-alive, small body", kind="http"),
        dict(id="close", title="HTTP/1.1, new connection per request", kind="http", close=True),
        dict(id="h2", title="HTTP/2 cleartext (prior knowledge), multiplexed", kind="h2c"),
        dict(id="body-1k", title="HTTP/1.1 keep-alive, 1 KiB body", kind="http", body="1k"),
        dict(id="body-100k", title="HTTP/1.1 keep-alive, 100 KiB body", kind="http", body="100k"),
    ]
    for n in route_counts:
        out.append(dict(id=f"routes-{n}", title=f"{n:,} routes, requests spread over them",
                        kind="http", routes=n, rotate=True))
    out.append(dict(id="tls", title="HTTPS (TLS 1.3) keep-alive, small body", kind="https"))
    for s in out:
        s.setdefault("body", "small")
        s.setdefault("routes", 10)
        s.setdefault("rotate", False)
        s.setdefault("close", False)
    return out


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        # The defaults keep a whole run, the first release build included, under 20 minutes
        # on 2 CPUs: see `parts_s` in the results for where the time goes.
        self.seconds = int(os.environ.get("BENCH_SECONDS", "2" if self.quick else "4"))
        self.latency_seconds = int(os.environ.get(
            "BENCH_LATENCY_SECONDS", "2" if self.quick else str(max(3, self.seconds // 2))))
        self.rate = int(os.environ.get("BENCH_RATE", "2000"))
        self.connections = int(os.environ.get("BENCH_CONNECTIONS", "50"))
        self.retry_foreign = float(os.environ.get("BENCH_RETRY_FOREIGN", "15"))
        # Past this many seconds a disturbed run is no longer run again.
        self.budget = float(os.environ.get("BENCH_BUDGET_SECONDS", "600"))
        ncpu = os.cpu_count() or 1
        if ncpu >= 4:
            default = ("0", "1", "2-3")
        elif ncpu >= 2:
            default = ("0", "1", "1")
        else:
            default = ("0", "0", "0")
        self.cpus = {
            "proxy": os.environ.get("BENCH_PROXY_CPUS", default[0]),
            "backend": os.environ.get("BENCH_BACKEND_CPUS", default[1]),
            "load": os.environ.get("BENCH_LOAD_CPUS", default[2]),
        }
        self.work = tempfile.mkdtemp(prefix="portcullis-bench-")
        # nginx workers run as an unprivileged user when started as root: let them in.
        os.chmod(self.work, 0o755)
        self.tls = self.make_cert()
        self.backend = targets.Backend(self.work, self.cpus["backend"], self.tls)
        flags = os.environ.get("PORTCULLIS_FLAGS", "").split()
        self.targets = [
            targets.Direct(self.work, self.cpus["proxy"], self.backend, self.tls),
            targets.Portcullis(self.work, self.cpus["proxy"], self.backend, self.tls,
                               args.binary, flags),
            targets.Nginx(self.work, self.cpus["proxy"], self.backend, self.tls),
            targets.HAProxy(self.work, self.cpus["proxy"], self.backend, self.tls),
        ]
        self.rotations = {}

    def make_cert(self):
        crt, key = os.path.join(self.work, "bench.crt"), os.path.join(self.work, "bench.key")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-noenc", "-days", "2", "-subj", "/CN=bench.example",
             "-addext", "subjectAltName=DNS:bench.example", "-keyout", key, "-out", crt],
            check=True, capture_output=True)
        return {"crt": crt, "key": key}

    def rotation(self, routes):
        if routes not in self.rotations:
            path = os.path.join(self.work, f"rotation-{routes}.txt")
            configs.rotation_file(path, routes)
            self.rotations[routes] = path
        return self.rotations[routes]

    # --- one load run -----------------------------------------------------------------------

    def load(self, target, sc, seconds, latency, spread=False):
        """One run of the scenario's tool against `target`; `latency` paces it at the rate,
        `spread` with random waits instead of fixed ones (HTTP/1.1 only)."""
        port, path = target.endpoint(sc["kind"], sc["body"])
        cpus = self.cpus["load"]
        if sc["kind"] == "http":
            rotate = self.rotation(sc["routes"]) if sc["rotate"] else None
            if latency:
                pace = 10
                conns = max(1, self.rate * pace // 1000)
                return loadgen.wrk(port, seconds, conns, path=path, rotate=rotate,
                                   pace_ms=pace, close=sc["close"], cpus=cpus, spread=spread)
            return loadgen.wrk(port, seconds, self.connections, path=path, rotate=rotate,
                               close=sc["close"], cpus=cpus)
        if sc["kind"] == "h2c":
            url = f"http://127.0.0.1:{port}{path}"
            if latency:
                return loadgen.h2load(url, seconds, 4, streams=10, rps=self.rate // 4,
                                      authority="bench.example", cpus=cpus, want_latency=True)
            return loadgen.h2load(url, seconds, 10, streams=20, authority="bench.example",
                                  cpus=cpus)
        # https: HTTP/1.1 over TLS, SNI and Host bench.example, connected to the loopback port.
        url = f"https://bench.example{path}"
        connect = f"127.0.0.1:{port}"
        if latency:
            clients = max(1, self.rate // 100)
            return loadgen.h2load(url, seconds, clients, h1=True, connect_to=connect, rps=100,
                                  cpus=cpus, want_latency=True)
        return loadgen.h2load(url, seconds, self.connections, h1=True, connect_to=connect,
                              cpus=cpus)

    def measure(self, target, sc):
        """Warm-up, throughput run with CPU accounting, latency run."""
        self.load(target, sc, 1, latency=False)
        pids = target.pids()
        backend_pids = self.backend.pids()
        user0, sys0 = procs.cpu_split(pids)
        back0 = procs.cpu_seconds(backend_pids)
        busy0 = procs.system_busy_seconds()
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self0 = resource.getrusage(resource.RUSAGE_SELF)
        wall0 = time.monotonic()
        thr = self.load(target, sc, self.seconds, latency=False)
        wall = time.monotonic() - wall0
        user1, sys1 = procs.cpu_split(pids)
        cpu = (user1 - user0) + (sys1 - sys0)
        back = procs.cpu_seconds(backend_pids) - back0
        busy = procs.system_busy_seconds() - busy0
        kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self1 = resource.getrusage(resource.RUSAGE_SELF)
        load_cpu = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
        own = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
        ncpu = os.cpu_count() or 1
        foreign = max(0.0, busy - cpu - back - load_cpu - own) / (wall * ncpu) * 100
        lat = self.load(target, sc, self.latency_seconds, latency=True)
        requests = thr["requests"]
        return {
            "target": target.name,
            "rps": thr["rps"],
            "requests": requests,
            "failed": thr["failed"],
            "cpu_s": cpu,
            "kernel_share": (sys1 - sys0) / cpu if cpu else None,
            "cpu_per_10k": cpu / requests * 1e4 if requests and target.is_proxy else None,
            "req_per_cpu_s": requests / cpu if cpu and target.is_proxy else None,
            "backend_cpu_per_10k": back / requests * 1e4 if requests else None,
            "load_cpu_share": load_cpu / wall,
            "foreign_cpu_pct": foreign,
            "peak_rss_kib": target.peak_rss_kib() if target.is_proxy else None,
            "rss_split_kib": target.rss_split_kib() if target.is_proxy else None,
            "threads": procs.threads(target.pids()[0]) if target.is_proxy else None,
            "latency_rate": lat["rps"],
            "latency_failed": lat["failed"],
            "p50_ms": lat["p50_ms"],
            "p90_ms": lat["p90_ms"],
            "p99_ms": lat["p99_ms"],
            "p999_ms": lat["p999_ms"],
            "loadavg": os.getloadavg()[0],
        }

    def attempt(self, target, sc, rotation):
        try:
            target.start(sc["routes"])
            target.check(rotation)
            extra = {}
            if isinstance(target, targets.Portcullis):
                extra = {"ready_s": target.ready_seconds, "compile_ms": target.compile_ms()[:1]}
            return {**self.measure(target, sc), **extra}
        except Exception as e:  # noqa: BLE001 - one failed target must not end the run
            log(f"  {target.name}: FAILED: {e}")
            return {"target": target.name, "error": str(e)[:300]}
        finally:
            target.stop()

    def run_scenario(self, sc):
        log(f"scenario {sc['id']}: {sc['title']}")
        rows = []
        rotation = self.rotation(sc["routes"]) if sc["rotate"] else None
        for target in self.targets:
            runs = []
            for _ in range(2):
                runs.append(self.attempt(target, sc, rotation))
                row = runs[-1]
                if "error" in row or row["foreign_cpu_pct"] <= self.retry_foreign \
                        or self.over_budget():
                    break
                log(f"  {target.name}: {row['foreign_cpu_pct']:.0f}% of the machine busy "
                    "with other work during the run; running it again")
            if len(runs) > 1 and all("error" not in r for r in runs):
                # Keep the less disturbed run.
                row = min(runs, key=lambda r: r["foreign_cpu_pct"])
                row["runs"] = len(runs)
            if "error" not in row:
                log(f"  {target.name:10} {row['rps']:9.0f} req/s  failed {row['failed']}  "
                    f"cpu/10k {fmt(row['cpu_per_10k'])} s  p99 {row['p99_ms']:.2f} ms "
                    f"@ {row['latency_rate']:.0f}/s  rss {fmt(row['peak_rss_kib'])} KiB  "
                    f"other load {row['foreign_cpu_pct']:.0f}%")
            rows.append(row)
        return {**sc, "rows": rows, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}

    def over_budget(self):
        return time.monotonic() - T0 > self.budget

    # --- latency rounds -----------------------------------------------------------------------

    def latency_rounds(self, rounds, seconds, extra=()):
        """The tail latency of one paced run moves more between runs than between proxies, so
        the keep-alive paced run is repeated: every proxy started once, side by side, then
        `rounds` rounds of one paced run each, the order turned every round so that no proxy
        always follows the same one. Two arrival patterns: `bursts`, wrk's fixed wait per
        connection, under which the connections stay in step and reach the proxy all at once
        (the last of a burst waits for the others' processing), and `spread`, random waits,
        as from independent clients. Reports each proxy's median of p50, p99 and p99.9 over
        the rounds and their ranges. `extra` targets (bare Pingora) run in the same rounds, so
        that Pingora's own tail shows apart from what the gateway adds."""
        sc = next(s for s in scenarios(self.quick) if s["id"] == "keepalive")
        proxies = [t for t in self.targets if t.is_proxy] + list(extra)
        log(f"latency: {rounds} rounds of {seconds} s at {self.rate:,} req/s, keep-alive")
        patterns = ("bursts", "spread")
        runs = {(p, t.name): [] for p in patterns for t in proxies}
        errors = {}
        try:
            for t in proxies:
                try:
                    t.start(sc["routes"])
                    t.check(None)
                    self.load(t, sc, 1, latency=False)
                except Exception as e:  # noqa: BLE001 - the others still run
                    errors[t.name] = str(e)[:300]
                    log(f"  {t.name}: FAILED: {e}")
            live = [t for t in proxies if t.name not in errors]
            for i in range(rounds):
                turn = i % len(live) if live else 0
                for pattern in patterns:
                    for t in live[turn:] + live[:turn]:
                        lat = self.load(t, sc, seconds, latency=True,
                                        spread=pattern == "spread")
                        runs[(pattern, t.name)].append(
                            {k: lat[k] for k in ("rps", "failed", "p50_ms", "p99_ms", "p999_ms")})
                    log(f"  round {i + 1}, {pattern}: " + ", ".join(
                        f"{t.name} p99 {runs[(pattern, t.name)][-1]['p99_ms']:.2f} ms"
                        for t in live))
        finally:
            for t in proxies:
                t.stop()
        out = {}
        for pattern in patterns:
            rows = []
            for t in proxies:
                if t.name in errors:
                    rows.append({"target": t.name, "error": errors[t.name]})
                    continue
                r = runs[(pattern, t.name)]
                summary = {"target": t.name, "rounds": len(r), "runs": r,
                           "failed": sum(x["failed"] for x in r)}
                for k in ("p50_ms", "p99_ms", "p999_ms"):
                    values = sorted(x[k] for x in r)
                    summary[k] = {"median": statistics.median(values), "min": values[0],
                                  "max": values[-1]}
                rows.append(summary)
            out[pattern] = rows
        return {"rounds": rounds, "seconds": seconds, "rate": self.rate, "patterns": out}

    # --- route count rounds -------------------------------------------------------------------

    def saturating_run(self, target, sc, rotation, seconds):
        """Starts `target` for the scenario, checks it, warms it up for a second, then one
        saturating run of `seconds` with the proxy's own CPU time; stops it whatever happens.
        Raises what went wrong."""
        try:
            target.start(sc["routes"])
            target.check(rotation)
            self.load(target, sc, 1, latency=False)
            pids = target.pids()
            user0, sys0 = procs.cpu_split(pids)
            thr = self.load(target, sc, seconds, latency=False)
            user1, sys1 = procs.cpu_split(pids)
            return {"rps": thr["rps"], "failed": thr["failed"], "requests": thr["requests"],
                    "user_s": user1 - user0, "kernel_s": sys1 - sys0,
                    "cpu_s": (user1 - user0) + (sys1 - sys0),
                    "peak_rss_kib": target.peak_rss_kib()}
        finally:
            target.stop()

    def route_rounds(self, counts, rounds, seconds):
        """What the route count costs, from paired runs: one saturating run at each count in
        `counts` per round, back to back, the order turned every round, so that both counts of
        a pair see the same machine. One run per scenario minutes apart can differ by more than
        the route count does. Reports, per proxy, each pair's throughput and CPU per request at
        the larger count against the smaller, and their medians over the rounds."""
        small, large = counts
        proxies = [t for t in self.targets if t.is_proxy]
        log(f"route rounds: {rounds} pairs of {seconds} s runs, {small:,} and {large:,} routes")
        out = []
        for t in proxies:
            pairs, error = [], None
            for i in range(rounds):
                order = (small, large) if i % 2 == 0 else (large, small)
                pair = {}
                for n in order:
                    sc = {"kind": "http", "body": "small", "routes": n, "rotate": True,
                          "close": False}
                    try:
                        run = self.saturating_run(t, sc, self.rotation(n), seconds)
                        pair[n] = {"rps": run["rps"], "failed": run["failed"],
                                   "cpu_per_10k": run["cpu_s"] / run["requests"] * 1e4}
                    except Exception as e:  # noqa: BLE001 - the others still run
                        error = str(e)[:300]
                        break
                if error:
                    log(f"  {t.name}: FAILED: {error}")
                    break
                pairs.append({
                    "small": pair[small], "large": pair[large],
                    "rps_ratio": pair[large]["rps"] / pair[small]["rps"],
                    "cpu_ratio": pair[large]["cpu_per_10k"] / pair[small]["cpu_per_10k"],
                })
                log(f"  {t.name} round {i + 1}: {large:,} routes at "
                    f"{pairs[-1]['rps_ratio']:.2f}x the throughput of {small:,}, "
                    f"{pairs[-1]['cpu_ratio']:.2f}x the CPU per request")
            row = {"target": t.name, "pairs": pairs}
            if error:
                row["error"] = error
            if pairs:
                for k in ("rps_ratio", "cpu_ratio"):
                    values = sorted(p[k] for p in pairs)
                    row[k] = {"median": statistics.median(values), "min": values[0],
                              "max": values[-1]}
            out.append(row)
        return {"counts": [small, large], "rounds": rounds, "seconds": seconds, "targets": out}

    def baseline_rounds(self, baseline, rounds, seconds):
        """Portcullis against bare Pingora (`targets.PingoraBaseline`), alternating: per round
        and load (HTTP/1.1 keep-alive, HTTP/2), one saturating run of each, back to back, the
        order turned every round. What Portcullis spends beyond the baseline is what the
        gateway adds to Pingora; the rest of its gap to nginx is Pingora's own."""
        portcullis = self.targets[1]
        loads = [("keepalive", {"kind": "http", "body": "small", "routes": 10, "rotate": False,
                                "close": False}),
                 ("h2", {"kind": "h2c", "body": "small", "routes": 10, "rotate": False,
                         "close": False})]
        log(f"baseline: {rounds} rounds of {seconds} s runs, Portcullis and bare Pingora")
        out = {"rounds": rounds, "seconds": seconds, "loads": []}
        for load_id, sc in loads:
            runs = {portcullis.name: [], baseline.name: []}
            ratios, error = [], None
            for i in range(rounds):
                order = (portcullis, baseline) if i % 2 == 0 else (baseline, portcullis)
                pair = {}
                for t in order:
                    try:
                        run = self.saturating_run(t, sc, None, seconds)
                        pair[t.name] = {
                            "rps": run["rps"], "failed": run["failed"],
                            "req_per_cpu_s": run["requests"] / run["cpu_s"],
                            "user_per_10k": run["user_s"] / run["requests"] * 1e4,
                            "kernel_per_10k": run["kernel_s"] / run["requests"] * 1e4,
                            "peak_rss_kib": run["peak_rss_kib"],
                        }
                    except Exception as e:  # noqa: BLE001 - the other load still runs
                        error = str(e)[:300]
                        break
                if error:
                    log(f"  {load_id}: FAILED: {error}")
                    break
                for name, run in pair.items():
                    runs[name].append(run)
                ratios.append(pair[portcullis.name]["req_per_cpu_s"]
                              / pair[baseline.name]["req_per_cpu_s"])
                log(f"  {load_id} round {i + 1}: Portcullis "
                    f"{pair[portcullis.name]['req_per_cpu_s']:,.0f} req per CPU-s, bare Pingora "
                    f"{pair[baseline.name]['req_per_cpu_s']:,.0f}: {ratios[-1]:.2f}x")
            row = {"id": load_id, "runs": runs}
            if error:
                row["error"] = error
            if ratios:
                row["ratio"] = {"median": statistics.median(ratios), "min": min(ratios),
                                "max": max(ratios)}
                row["median"] = {
                    name: {k: statistics.median(r[k] for r in rs)
                           for k in ("rps", "req_per_cpu_s", "user_per_10k", "kernel_per_10k",
                                     "peak_rss_kib")}
                    for name, rs in runs.items()}
            out["loads"].append(row)
        return out

    # --- churn ------------------------------------------------------------------------------

    def churn(self, target, routes, seconds):
        """Steady load over the route set while one route changes every 100 ms."""
        log(f"churn: {target.name}, {routes:,} routes, {seconds} s")
        target.start(routes, churn_version=0)
        try:
            rotation = self.rotation(routes)
            target.check(rotation)
            compiles_before = len(target.compile_ms()) if isinstance(target, targets.Portcullis) else 0
            port = target.ports["http"]
            pace = 10
            conns = max(1, self.rate * pace // 1000)
            cmd, env = loadgen.wrk_command(port, seconds + 3, conns, rotate=rotation,
                                           pace_ms=pace, cpus=self.cpus["load"])
            wrk = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
            time.sleep(1.0)
            probe = Probe(port)
            probe.start()
            written = {}
            start = time.monotonic()
            version = 0
            while True:
                version += 1
                due = start + (version - 1) * 0.1
                now = time.monotonic()
                if due - start >= seconds:
                    break
                if due > now:
                    time.sleep(due - now)
                written[version] = time.monotonic()
                target.churn(version)
            # Let the last change be served: nginx reloads once more if the last write came
            # while a reload ran; both get up to 30 s to serve it.
            if isinstance(target, targets.Nginx):
                target.finish()
            procs.wait_until(lambda: probe.seen and probe.seen[-1][1] >= version - 1, 30)
            time.sleep(0.5)
            probe.stop()
            out, err = wrk.communicate(timeout=60)
            load = loadgen.parse_wrk(out, err)
            delays, unseen = [], 0
            for v, t in written.items():
                seen = next((s for s, ver in probe.seen if ver >= v and s >= t), None)
                if seen is None:
                    unseen += 1
                else:
                    delays.append((seen - t) * 1000)
            delays.sort()
            result = {
                "target": target.name,
                "routes": routes,
                "seconds": seconds,
                "changes": len(written),
                "unseen": unseen,
                "requests": load["requests"],
                "rps": load["rps"],
                "failed": load["failed"],
                "non_2xx": load["status_errors"],
                "socket_errors": load["failed"] - load["status_errors"],
                "p50_ms": load["p50_ms"],
                "p99_ms": load["p99_ms"],
                "p999_ms": load["p999_ms"],
                "probe_requests": len(probe.seen),
                "probe_errors": probe.errors,
                "change_to_served_ms": {
                    "p50": loadgen.percentile(delays, 50),
                    "p90": loadgen.percentile(delays, 90),
                    "max": delays[-1] if delays else None,
                },
                "peak_rss_kib": target.peak_rss_kib(),
            }
            if isinstance(target, targets.Portcullis):
                compiles = sorted(target.compile_ms()[compiles_before:])
                result["compiles"] = len(compiles)
                result["compile_ms"] = {"p50": loadgen.percentile(compiles, 50),
                                        "max": compiles[-1] if compiles else None}
            if isinstance(target, targets.Nginx):
                result["reloads"], result["reload_failures"] = target.reap()
            log(f"  {target.name}: failed {result['failed']} of {result['requests']}, p99 "
                f"{result['p99_ms']:.1f} ms, change-to-served p50 "
                f"{result['change_to_served_ms']['p50']:.0f} ms max "
                f"{fmt(result['change_to_served_ms']['max'])} ms")
            return result
        except Exception as e:  # noqa: BLE001
            log(f"  churn {target.name} FAILED: {e}")
            return {"target": target.name, "routes": routes, "error": str(e)[:300]}
        finally:
            if isinstance(target, targets.Nginx):
                target.reap()
            target.stop()

    # --- scale ------------------------------------------------------------------------------

    def scale(self, counts):
        """Compile time and memory by route count: `portcullis check` and `run`, `nginx -t`."""
        out = []
        portcullis = self.targets[1]
        nginx = self.targets[2]
        for n in counts:
            log(f"scale: {n:,} routes")
            row = {"routes": n}
            d = os.path.join(self.work, f"scale-{n}")
            configs.portcullis_dir(d, n, self.backend.ports, self.tls)
            row["yaml_bytes"] = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
            row["check"] = timed([self.args.binary, "check", d])
            try:
                portcullis.start(n)
                pid = portcullis.pids()[0]
                row["run_ready_s"] = portcullis.ready_seconds
                row["run_compile_ms"] = portcullis.compile_ms()[:1]
                time.sleep(0.5)
                row["run_rss_kib"] = procs.status_kib(pid, "VmRSS")
                row["run_hwm_kib"] = procs.status_kib(pid, "VmHWM")
            except Exception as e:  # noqa: BLE001
                row["run_error"] = str(e)[:300]
            finally:
                portcullis.stop()
            nd = os.path.join(self.work, f"scale-nginx-{n}")
            os.makedirs(nd, exist_ok=True)
            ports = {k: procs.free_port() for k in ("http", "h2c", "https")}
            conf = os.path.join(nd, "nginx.conf")
            with open(conf, "w") as f:
                f.write(configs.nginx_proxy_conf(nd, n, self.backend.ports, ports, self.tls))
            configs.write_atomically(os.path.join(nd, "churn.conf"),
                                     configs.nginx_churn_conf(ports, 0))
            row["nginx_conf_bytes"] = os.path.getsize(conf)
            row["nginx_t"] = timed([targets.NGINX, "-t", "-q", "-e", f"{nd}/error.log", "-p", nd,
                                    "-c", conf])
            log(f"  check {row['check']['wall_s']:.2f} s {row['check']['max_rss_kib'] / 1024:.0f} MiB"
                f" (exit {row['check']['exit']}); nginx -t {row['nginx_t']['wall_s']:.2f} s "
                f"{row['nginx_t']['max_rss_kib'] / 1024:.0f} MiB")
            out.append(row)
        return out

    # --- profile ----------------------------------------------------------------------------

    def profile(self, routes, seconds):
        """perf samples of Portcullis under saturating load spread over `routes` routes."""
        log(f"profile: Portcullis at {routes:,} routes, {seconds} s of perf samples")
        p = self.targets[1]
        perf_data = os.path.join(self.work, "perf.data")
        try:
            p.start(routes)
            rotation = self.rotation(routes)
            cmd, env = loadgen.wrk_command(p.ports["http"], seconds + 3, self.connections,
                                           rotate=rotation, cpus=self.cpus["load"])
            wrk = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
            time.sleep(1.0)
            rec = subprocess.run(
                ["perf", "record", "-e", "cpu-clock", "-F", "1999", "-p", str(p.pids()[0]),
                 "-o", perf_data, "--", "sleep", str(seconds)],
                capture_output=True, text=True)
            out, _ = wrk.communicate(timeout=60)
            if rec.returncode != 0:
                return {"error": "perf record failed: " + rec.stderr[-400:]}
            rep = subprocess.run(
                ["perf", "report", "-i", perf_data, "--stdio", "--no-children",
                 "--sort", "symbol", "-F", "overhead,sym", "--percent-limit", "0.05"],
                capture_output=True, text=True)
            load = loadgen.parse_wrk(out)
            return {"routes": routes, "seconds": seconds, "rps": load["rps"],
                    "report": "\n".join(l.rstrip() for l in rep.stdout.splitlines()) + "\n", "stat_instructions": perf_stat_check()}
        except Exception as e:  # noqa: BLE001
            return {"error": str(e)[:300]}
        finally:
            p.stop()

    def syscalls(self, seconds):
        """System calls per request of each proxy under the keep-alive load, by perf's syscall
        tracepoints (counted in the kernel, nothing sampled)."""
        if not os.path.isdir(TRACEFS) and os.geteuid() == 0:
            # A fresh VM may boot without tracefs mounted; perf's tracepoints live there.
            subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        names = [n for n in SYSCALLS if os.path.isdir(f"{TRACEFS}/sys_enter_{n}")]
        if not names:
            return {"error": f"no syscall tracepoints under {TRACEFS}"}
        events = ["raw_syscalls:sys_enter"] + [f"syscalls:sys_enter_{n}" for n in names]
        out = {}
        for target in self.targets[1:]:
            log(f"syscalls: {target.name}")
            try:
                target.start(10)
                cmd, env = loadgen.wrk_command(target.ports["http"], seconds + 2,
                                               self.connections, cpus=self.cpus["load"])
                wrk = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
                time.sleep(1.0)
                stats = {}
                for who, pids in (("proxy", target.pids()), ("backend", self.backend.pids())):
                    stats[who] = subprocess.Popen(
                        ["perf", "stat", "-x,", "-e", ",".join(events),
                         "-p", ",".join(str(p) for p in pids), "--", "sleep", str(seconds)],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                load = loadgen.parse_wrk(*wrk.communicate(timeout=60))
                requests = load["rps"] * seconds
                for who, proc in stats.items():
                    counts = {}
                    for line in proc.communicate(timeout=30)[1].splitlines():
                        parts = line.split(",")
                        if len(parts) > 2 and parts[0].strip().isdigit():
                            name = parts[2].split(":")[-1].replace("sys_enter_", "")
                            counts["all" if name == "sys_enter" else name] = int(parts[0])
                    key = target.name if who == "proxy" else f"{target.name}:backend"
                    out[key] = {n: c / requests for n, c in counts.items() if c}
            except Exception as e:  # noqa: BLE001
                out[target.name] = {"error": str(e)[:300]}
            finally:
                target.stop()
        return out

    def close(self):
        self.backend.stop()
        shutil.rmtree(self.work, ignore_errors=True)


TRACEFS = "/sys/kernel/tracing/events/syscalls"
SYSCALLS = ["epoll_wait", "epoll_pwait", "epoll_ctl", "recvfrom", "read", "readv", "recvmsg",
            "write", "writev", "sendto", "sendmsg", "futex", "sched_yield", "accept4",
            "close", "setsockopt", "getsockopt", "getsockname", "getpeername", "ioctl", "socket",
            "connect", "clock_gettime"]


class Probe(threading.Thread):
    """Asks the churn route for its version every 2 ms on a kept-alive connection and records
    (time the answer arrived, version)."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.seen = []
        self.errors = 0
        self.running = True

    def run(self):
        conn = None
        while self.running:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/", headers={"Host": "churn.example"})
                r = conn.getresponse()
                r.read()
                version = r.getheader("x-bench-version")
                if r.status == 200 and version is not None:
                    self.seen.append((time.monotonic(), int(version)))
                else:
                    self.errors += 1
            except (OSError, http.client.HTTPException):
                # A reloading nginx closes idle connections: open a new one at once.
                if conn is not None:
                    conn.close()
                conn = None
                continue
            time.sleep(0.002)

    def stop(self):
        self.running = False
        self.join(5)


def timed(cmd):
    """Wall time, peak RSS and exit code of a command, by /usr/bin/time -v."""
    fd, path = tempfile.mkstemp()
    os.close(fd)
    start = time.monotonic()
    r = subprocess.run(["/usr/bin/time", "-v", "-o", path] + cmd, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    wall = time.monotonic() - start
    rss = 0
    for line in open(path):
        if "Maximum resident set size" in line:
            rss = int(line.split(":")[1])
    os.unlink(path)
    return {"wall_s": wall, "max_rss_kib": rss, "exit": r.returncode,
            "stderr": r.stderr[-300:] if r.returncode else ""}


def perf_stat_check():
    r = subprocess.run(["perf", "stat", "-e", "instructions", "true"], capture_output=True,
                       text=True)
    return "supported" if "<not supported>" not in r.stderr and r.returncode == 0 else \
        "not supported (no hardware counters in this VM; sampled on the cpu-clock timer)"


def fmt(v):
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) and v < 10 else f"{v:.0f}"


def machine():
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "os": platform.freedesktop_os_release().get("PRETTY_NAME", "?")
            if hasattr(platform, "freedesktop_os_release") else "?"}


def git_commit():
    r = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                       text=True)
    return r.stdout.strip() or "unknown"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--baseline", help="the bare Pingora proxy (bench/pingora-baseline)")
    ap.add_argument("--only", default="", help="comma-separated scenario ids (also latency, "
                    "route-rounds, baseline, churn, scale, profile)")
    ap.add_argument("--skip", default="", help="comma-separated parts to leave out")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.makedirs(RESULTS, exist_ok=True)
    name = "quick" if args.quick else "latest"
    json_path = os.path.join(RESULTS, f"{name}.json")
    only = {s for s in args.only.split(",") if s}
    skip = {s for s in args.skip.split(",") if s}

    def wanted(part):
        return (not only or part in only) and part not in skip

    previous = {}
    if only and os.path.exists(json_path):
        previous = json.load(open(json_path))
    bench = Bench(args)
    results = {
        "machine": machine(),
        "commit": git_commit(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "loadavg_start": open("/proc/loadavg").read().split()[:3],
        "versions": targets.versions(args.binary),
        "settings": {"seconds": bench.seconds, "latency_seconds": bench.latency_seconds,
                     "rate": bench.rate, "connections": bench.connections, "cpus": bench.cpus,
                     "quick": bench.quick, "portcullis_flags": os.environ.get("PORTCULLIS_FLAGS", "")},
    }
    done = {s["id"]: s for s in previous.get("scenarios", [])}
    # Seconds each part took, so that the run's length can be kept in check.
    parts = results["parts_s"] = {}
    mark = [time.monotonic()]

    def took(part):
        now = time.monotonic()
        parts[part] = round(now - mark[0], 1)
        mark[0] = now

    try:
        for sc in scenarios(args.quick):
            if wanted(sc["id"]):
                done[sc["id"]] = bench.run_scenario(sc)
        took("scenarios")
        results["scenarios"] = [done[s["id"]] for s in scenarios(args.quick) if s["id"] in done]
        churn_routes = 1000 if args.quick else 10000
        churn_seconds = int(os.environ.get("BENCH_CHURN_SECONDS", "5" if args.quick else "30"))
        if wanted("churn"):
            results["churn"] = [bench.churn(bench.targets[1], churn_routes, churn_seconds),
                                bench.churn(bench.targets[2], churn_routes, churn_seconds)]
        elif "churn" in previous:
            results["churn"] = previous["churn"]
        took("churn")
        def pingora_baseline():
            return targets.PingoraBaseline(bench.work, bench.cpus["proxy"], bench.backend,
                                           bench.tls, args.baseline)
        if wanted("latency"):
            results["latency"] = bench.latency_rounds(
                int(os.environ.get("BENCH_LATENCY_ROUNDS", "2" if args.quick else "4")),
                bench.latency_seconds, extra=[pingora_baseline()] if args.baseline else [])
        elif "latency" in previous:
            results["latency"] = previous["latency"]
        took("latency")
        if wanted("route-rounds"):
            results["route_rounds"] = bench.route_rounds(
                (10, 1000 if args.quick else 10000),
                int(os.environ.get("BENCH_ROUTE_ROUNDS", "2" if args.quick else "3")),
                max(3, bench.seconds // 2))
        elif "route_rounds" in previous:
            results["route_rounds"] = previous["route_rounds"]
        took("route-rounds")
        if wanted("baseline") and args.baseline:
            results["baseline"] = bench.baseline_rounds(
                pingora_baseline(), int(os.environ.get("BENCH_BASELINE_ROUNDS", "2" if args.quick else "3")),
                max(3, bench.seconds // 2))
        elif "baseline" in previous:
            results["baseline"] = previous["baseline"]
        took("baseline")
        if wanted("scale"):
            results["scale"] = bench.scale((1000,) if args.quick else (1000, 10000, 50000))
        elif "scale" in previous:
            results["scale"] = previous["scale"]
        took("scale")
        if wanted("profile"):
            results["profile"] = bench.profile(1000 if args.quick else 10000,
                                               3 if args.quick else 6)
            results["profile"]["syscalls"] = bench.syscalls(2 if args.quick else 4)
        elif "profile" in previous:
            results["profile"] = previous["profile"]
        took("profile")
    finally:
        bench.close()
        procs.stop_all()
    results["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    results["elapsed_s"] = time.monotonic() - T0
    # bench/run passes the time it started, so that installing and building count too.
    started = os.environ.get("BENCH_STARTED")
    if started:
        results["total_s"] = time.time() - float(started)
    if only and previous:
        results["rerun"] = sorted(only)
        results["started_first"] = previous.get("started_first", previous.get("started"))
    targets.json_dump(results, json_path)
    report.write(results, RESULTS, name)
    log(f"done in {results['elapsed_s']:.0f} s: bench/results/{name}.md")


if __name__ == "__main__":
    main()
