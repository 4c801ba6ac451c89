"""The load generators: wrk for HTTP/1.1 (bench/lib/load.lua), h2load for HTTP/2 and TLS.

Both run pinned to the load cores. Latency is measured at a fixed rate below saturation:
wrk paces each connection with the script's `delay()` (connections x 1000 / PACE_MS requests
per second at most) and reports its own HdrHistogram percentiles; h2load paces with `--rps` per
client and writes every request's duration to `--log-file`, from which the percentiles are taken.
Both are closed-loop generators: a stalled response delays the next request on its connection
instead of queueing it, so their tail percentiles understate what an open-loop client would see.
"""

import json
import os
import re
import subprocess
import tempfile

LIB = os.path.dirname(os.path.abspath(__file__))


def wrk_command(port, seconds, connections, path="/", host="bench.example", rotate=None,
                pace_ms=0, close=False, cpus=None, timeout_s=5, spread=False):
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"--timeout={timeout_s}s",
           "-s", os.path.join(LIB, "load.lua"), "-H", f"Host: {host}",
           f"http://127.0.0.1:{port}{path}"]
    env = dict(os.environ, ROTATE_FILE=rotate or "", PACE_MS=str(pace_ms),
               CLOSE="1" if close else "0", PACE_SPREAD="1" if spread else "0")
    if cpus is not None:
        cmd = ["taskset", "-c", cpus] + cmd
    return cmd, env


def wrk(port, seconds, connections, **kw):
    """Runs wrk; returns the script's summary plus `rps` and `failed`."""
    cmd, env = wrk_command(port, seconds, connections, **kw)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    return parse_wrk(r.stdout, r.stderr)


def parse_wrk(stdout, stderr=""):
    line = next((l for l in stdout.splitlines() if l.startswith("{")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary: {stdout[-500:]} {stderr[-500:]}")
    s = json.loads(line)
    s["rps"] = s["requests"] / (s["duration_us"] / 1e6) if s["duration_us"] else 0.0
    s["failed"] = (s["connect_errors"] + s["read_errors"] + s["write_errors"]
                   + s["status_errors"] + s["timeouts"])
    for p in ("p50", "p90", "p99", "p999"):
        s[p + "_ms"] = s[p + "_us"] / 1000.0
    return s


def h2load(url, seconds, clients, streams=1, h1=False, connect_to=None, rps=None,
           authority=None, cpus=None, want_latency=False):
    """Runs h2load for `seconds`; returns requests, rps, failures and, with `want_latency`,
    percentiles from its per-request log."""
    log_file = None
    cmd = ["h2load", "-t1", f"-c{clients}", f"-m{streams}", f"-D{seconds}", "-T10"]
    if h1:
        cmd.append("--h1")
    if connect_to:
        cmd.append(f"--connect-to={connect_to}")
    if rps:
        cmd.append(f"--rps={rps}")
    if authority:
        cmd += ["-H", f":authority: {authority}"]
    if want_latency:
        fd, log_file = tempfile.mkstemp(prefix="h2load-", suffix=".log")
        os.close(fd)
        cmd.append(f"--log-file={log_file}")
    cmd.append(url)
    if cpus is not None:
        cmd = ["taskset", "-c", cpus] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    out = r.stdout
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    t = re.search(r"finished in ([0-9.]+)(m?s)", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not (m and t and codes):
        raise RuntimeError(f"h2load output not understood: {out[-800:]} {r.stderr[-400:]}")
    duration = float(t.group(1)) / (1000.0 if t.group(2) == "ms" else 1.0)
    done, succeeded, failed, errored, timeouts = (int(m.group(i)) for i in (3, 4, 5, 6, 7))
    non2xx = sum(int(codes.group(i)) for i in (2, 3, 4))
    s = {
        "requests": done,
        "succeeded": succeeded,
        "duration_us": int(duration * 1e6),
        "rps": done / duration if duration else 0.0,
        "failed": failed + errored + timeouts + non2xx,
        "status_errors": non2xx,
    }
    if log_file:
        durations = []
        with open(log_file) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    durations.append(int(parts[2]))
        os.unlink(log_file)
        durations.sort()
        for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9)):
            s[name + "_ms"] = percentile(durations, q) / 1000.0
        s["mean_us"] = sum(durations) / len(durations) if durations else 0.0
    return s


def percentile(sorted_values, q):
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, int(round(q / 100.0 * len(sorted_values) + 0.5)) - 1))
    return float(sorted_values[rank])
