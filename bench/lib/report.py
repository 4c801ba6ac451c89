"""Writes the results as Markdown (NAME.md), a chart of throughput and p99 by route count
(NAME-routes.svg, by gnuplot) and the profile (NAME-profile.txt)."""

import os
import re
import shutil
import subprocess
from collections import defaultdict

TARGETS = ["direct", "portcullis", "nginx", "haproxy"]
LABELS = {"direct": "backend direct", "portcullis": "Portcullis", "nginx": "nginx (NGF-style)",
          "haproxy": "HAProxy", "pingora": "bare Pingora"}


def num(v, digits=0):
    if v is None:
        return "—"
    if isinstance(v, float) and digits:
        return f"{v:,.{digits}f}"
    return f"{v:,.0f}"


def ratio(a, b, invert=False):
    if not a or not b:
        return "—"
    return f"{(b / a if invert else a / b):.2f}"


def rows_by_target(sc):
    return {r["target"]: r for r in sc["rows"]}


def write(res, out_dir, name):
    md = []
    m = res["machine"]
    st = res["settings"]
    md.append(f"# Portcullis benchmark: {'quick smoke run' if st['quick'] else 'latest results'}\n")
    md.append(
        f"Run {res['started']} on commit `{res['commit']}` by `bench/run"
        f"{' --quick' if st['quick'] else ''}`"
        + (f" (re-run since: {', '.join(res['rerun'])})" if res.get("rerun") else "")
        + f"; {res['elapsed_s'] / 60:.1f} minutes"
        + (f" ({res['total_s'] / 60:.1f} with installing and building)" if res.get("total_s")
           else "")
        + (" (" + ", ".join(f"{k} {v / 60:.1f}" for k, v in res["parts_s"].items()) + ")"
           if res.get("parts_s") else "")
        + ".\n"
    )
    md.append(
        f"- **Machine**: {m['nproc']} CPUs, {m['cpu']}, Linux {m['kernel']}, {m['os']}.\n"
        f"- **Load average** (1, 5, 15 min) at start {' '.join(res['loadavg_start'])}, at end "
        f"{' '.join(res['loadavg_end'])}. The machine is shared with other builds: each row's "
        "\"other load\" is the CPU time the rest of the machine used during its throughput run, "
        "as a share of all cores; a run above "
        f"15% was repeated once and the less disturbed run kept.\n"
        f"- **Pinning** (`taskset`): proxy on CPU {st['cpus']['proxy']}, backend on CPU "
        f"{st['cpus']['backend']}, load generator on CPU {st['cpus']['load']}. Every proxy runs "
        "one worker: nginx `worker_processes 1`, HAProxy `nbthread 1`, Portcullis' runtime "
        "sizes itself to the one CPU it may use. Access logs off everywhere"
        + (f"; Portcullis flags: `{st['portcullis_flags']}`" if st["portcullis_flags"] else "")
        + ".\n"
        f"- **Throughput**: {st['seconds']} s saturating runs after a 1 s warm-up, "
        f"{st['connections']} connections (h2load: 10 clients x 20 streams). "
        "CPU = the proxy's own utime+stime from /proc/PID/stat over that run (nginx: master and "
        "worker); peak RSS = VmHWM from /proc/PID/status at the end (nginx: master + worker).\n"
        f"- **Latency**: a separate {st['latency_seconds']} s run paced at {st['rate']:,} req/s: "
        "wrk with a `delay()` per connection (HTTP/1.1), h2load `--rps` with its per-request "
        "log (HTTP/2 and TLS). Both are closed-loop, so tails are understated under stalls.\n"
        f"- **Versions**: {'; '.join(res['versions'].values())}.\n"
    )
    md.append(main_table(res))
    md.append(ratio_table(res))
    md.append(route_table(res))
    chart = route_chart(res, out_dir, name)
    if chart:
        md.append(f"![throughput and p99 by route count]({os.path.basename(chart)})\n")
    if res.get("route_rounds"):
        md.append(route_rounds_table(res["route_rounds"]))
    if res.get("baseline"):
        md.append(baseline_table(res["baseline"]))
    if res.get("latency"):
        md.append(latency_table(res["latency"]))
    if res.get("churn"):
        md.append(churn_table(res["churn"]))
    if res.get("scale"):
        md.append(scale_table(res["scale"]))
    md.append(targets_section(res))
    if res.get("profile"):
        md.append(profile_section(res["profile"], out_dir, name))
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write("\n".join(md))


def cpu_cell(r):
    if r.get("cpu_per_10k") is None:
        return "—"
    share = r.get("kernel_share")
    return f"{r['cpu_per_10k']:.3f}" + (f" ({share * 100:.0f}%)" if share is not None else "")


def main_table(res):
    out = ["## Every scenario\n",
           "| scenario | target | req/s | failed | CPU s / 10k req (kernel share) | req per CPU-s | peak RSS MiB "
           "| p50 ms | p99 ms | p99.9 ms | at req/s | other load |",
           "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for sc in res["scenarios"]:
        for t in TARGETS:
            r = rows_by_target(sc).get(t)
            if r is None:
                continue
            if "error" in r:
                out.append(f"| {sc['title']} | {LABELS[t]} | failed: {r['error'][:80]} |"
                           + " |" * 9)
                continue
            rss = r["peak_rss_kib"] / 1024 if r.get("peak_rss_kib") else None
            out.append(
                f"| {sc['title']} | {LABELS[t]} | {num(r['rps'])} | {r['failed'] + r['latency_failed']} "
                f"| {cpu_cell(r)} | {num(r['req_per_cpu_s'])} | {num(rss, 1)} "
                f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['p999_ms']:.2f} "
                f"| {num(r['latency_rate'])} | {r['foreign_cpu_pct']:.0f}%"
                f"{' (2 runs)' if r.get('runs') else ''} |")
    out.append("")
    out.append("\"failed\" counts non-2xx answers and socket errors of both runs. The direct rows "
               "have no proxy, so no proxy CPU or memory.\n")
    return "\n".join(out)


def ratio_table(res):
    out = ["## Portcullis against nginx and HAProxy\n",
           "Ratios above 1 favour Portcullis on req/s and req per CPU-s; below 1 on p99 and "
           "memory (Portcullis / other).\n",
           "| scenario | req/s vs nginx | req per CPU-s vs nginx | p99 vs nginx | RSS vs nginx "
           "| req/s vs HAProxy | req per CPU-s vs HAProxy | p99 vs HAProxy | RSS vs HAProxy |",
           "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for sc in res["scenarios"]:
        rows = rows_by_target(sc)
        p = rows.get("portcullis", {})
        if "rps" not in p:
            continue
        cells = []
        for other in ("nginx", "haproxy"):
            o = rows.get(other, {})
            if "rps" not in o:
                cells += ["—"] * 4
                continue
            cells += [ratio(p["rps"], o["rps"]), ratio(p["req_per_cpu_s"], o["req_per_cpu_s"]),
                      ratio(p["p99_ms"], o["p99_ms"]), ratio(p["peak_rss_kib"], o["peak_rss_kib"])]
        out.append(f"| {sc['title']} | " + " | ".join(cells) + " |")
    out.append("")
    return "\n".join(out)


def route_scenarios(res):
    return sorted((sc for sc in res["scenarios"] if sc["id"].startswith("routes-")),
                  key=lambda s: s["routes"])


def route_table(res):
    scs = route_scenarios(res)
    if not scs:
        return ""
    out = ["## By route count\n",
           "| routes | " + " | ".join(f"{LABELS[t]} req/s | p99 ms" for t in TARGETS) + " |",
           "|--:|" + "--:|--:|" * len(TARGETS)]
    for sc in scs:
        rows = rows_by_target(sc)
        cells = []
        for t in TARGETS:
            r = rows.get(t, {})
            cells += [num(r.get("rps")), f"{r['p99_ms']:.2f}" if "p99_ms" in r else "—"]
        out.append(f"| {sc['routes']:,} | " + " | ".join(cells) + " |")
    first, last = rows_by_target(scs[0]), rows_by_target(scs[-1])
    out.append("")
    for t in ("portcullis", "nginx", "haproxy") if len(scs) > 1 else ():
        a, b = first.get(t, {}), last.get(t, {})
        if "rps" in a and "rps" in b:
            out.append(f"- {LABELS[t]}: {scs[-1]['routes']:,} routes give "
                       f"{b['rps'] / a['rps']:.2f}x the throughput of {scs[0]['routes']:,} and "
                       f"{b['cpu_per_10k'] / a['cpu_per_10k']:.2f}x the CPU per request.")
    out.append("")
    return "\n".join(out)


def route_rounds_table(rr):
    small, large = rr["counts"]
    out = [f"## {large:,} routes against {small:,}, paired runs\n",
           f"Requests spread over the routes, as in the route-count scenarios: {rr['rounds']} "
           f"rounds per proxy, each a {rr['seconds']} s saturating run at {small:,} routes and "
           f"one at {large:,}, back to back, the order turned every round, so that both runs "
           "of a pair see the same machine. Median over the rounds, lowest and highest in "
           "brackets.\n",
           f"| proxy | throughput at {large:,} vs {small:,} | CPU per request at {large:,} vs "
           f"{small:,} | req/s of each pair ({small:,} / {large:,}) |",
           "|---|--:|--:|---|"]
    for t in rr["targets"]:
        if not t.get("pairs"):
            out.append(f"| {LABELS[t['target']]} | failed: {t.get('error', '?')} | | |")
            continue

        def cell(k):
            v = t[k]
            return f"{v['median']:.2f}x ({v['min']:.2f}-{v['max']:.2f})"
        pairs = ", ".join(f"{num(p['small']['rps'])} / {num(p['large']['rps'])}"
                          for p in t["pairs"])
        out.append(f"| {LABELS[t['target']]} | {cell('rps_ratio')} | {cell('cpu_ratio')} | "
                   f"{pairs} |")
    out.append("")
    return "\n".join(out) + "\n"


def baseline_table(bl):
    out = ["## Portcullis against bare Pingora\n",
           "Bare Pingora (`bench/pingora-baseline`) forwards every request to the backend and "
           "does nothing else, with the Pingora settings the gateway uses (one thread, mimalloc, "
           "no downstream modules, 1024 idle backend connections). "
           f"{bl['rounds']} rounds per load, each a {bl['seconds']} s saturating run of each, "
           "back to back, the order turned every round; medians, the ratio's lowest and highest "
           "in brackets. What Portcullis spends beyond it is routing, filters, forwarding "
           "headers and metrics; what bare Pingora spends beyond nginx is Pingora's own.\n",
           "| load | req per CPU-s, Portcullis / bare Pingora | ratio | user CPU-s per 10k, "
           "Portcullis / bare Pingora | kernel CPU-s per 10k | peak RSS MiB |",
           "|---|--:|--:|--:|--:|--:|"]
    titles = {"keepalive": "HTTP/1.1 keep-alive, small body", "h2": "HTTP/2 cleartext, multiplexed"}
    for row in bl["loads"]:
        title = titles.get(row["id"], row["id"])
        if "median" not in row:
            out.append(f"| {title} | failed: {row.get('error', '?')} | | | | |")
            continue
        p, b = row["median"]["portcullis"], row["median"]["pingora"]
        r = row["ratio"]
        out.append(
            f"| {title} | {num(p['req_per_cpu_s'])} / {num(b['req_per_cpu_s'])} | "
            f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f}) | "
            f"{p['user_per_10k']:.3f} / {b['user_per_10k']:.3f} | "
            f"{p['kernel_per_10k']:.3f} / {b['kernel_per_10k']:.3f} | "
            f"{p['peak_rss_kib'] / 1024:.1f} / {b['peak_rss_kib'] / 1024:.1f} |")
    out.append("")
    return "\n".join(out) + "\n"


def latency_table(lat):
    if "patterns" not in lat:
        return ""
    out = ["## Tail latency over repeated rounds\n",
           f"HTTP/1.1 keep-alive, small body, paced at {lat['rate']:,} req/s: every proxy started "
           f"once, then {lat['rounds']} rounds of one {lat['seconds']} s run per arrival pattern, "
           "the order of the proxies turned every round. Median over the rounds, with the lowest "
           "and highest round in brackets. **Bursts**: wrk's fixed wait per connection keeps the "
           "connections in step, so every request of a period reaches the proxy at once and the "
           "last waits for the others to be processed: the tail follows the CPU cost per "
           "request. **Spread**: random waits (exponential, same mean), as from independent "
           "clients.\n"]
    if any(t["target"] == "pingora" for ts in lat["patterns"].values() for t in ts):
        out[-1] += ("\nBare Pingora (`bench/pingora-baseline`, described under \"Portcullis "
                    "against bare Pingora\") runs in the same rounds: how much of the tail is "
                    "Pingora's own request path, and how much the gateway adds.\n")
    for pattern, title in (("bursts", "Bursts"), ("spread", "Spread")):
        targets = lat["patterns"].get(pattern, [])
        out += [f"| {title} | p50 ms | p99 ms | p99.9 ms | p99 vs nginx | failed |",
                "|---|--:|--:|--:|--:|--:|"]
        by = {t["target"]: t for t in targets}
        base = by.get("nginx", {}).get("p99_ms", {}).get("median")
        for t in targets:
            if "error" in t:
                out.append(f"| {LABELS[t['target']]} | failed: {t['error']} | | | | |")
                continue

            def cell(k):
                v = t[k]
                return f"{v['median']:.2f} ({v['min']:.2f}-{v['max']:.2f})"
            out.append(f"| {LABELS[t['target']]} | {cell('p50_ms')} | {cell('p99_ms')} | "
                       f"{cell('p999_ms')} | {ratio(t['p99_ms']['median'], base)} | "
                       f"{t['failed']} |")
        out.append("")
    return "\n".join(out) + "\n"


def churn_table(churn):
    ok = [c for c in churn if "error" not in c]
    out = ["## Config churn\n"]
    if not ok:
        return "\n".join(out + [f"- {c['target']}: failed: {c['error']}" for c in churn]) + "\n"
    c0 = ok[0]
    out.append(
        f"{c0['routes']:,} routes, steady paced load spread over them, one route changed every "
        f"100 ms for {c0['seconds']} s: Portcullis by rewriting its YAML file atomically (the "
        "gateway watches its directory with inotify), nginx by rewriting an included file and "
        "`nginx -s reload`. A probe asks the changed route for its `x-bench-version` header "
        "every 2 ms; change-to-served is the time from writing version N to the first answer "
        "carrying N or later.\n")
    out.append("| | " + " | ".join(LABELS[c["target"]] for c in churn) + " |")
    out.append("|---|" + "--:|" * len(churn))

    def line(label, f):
        cells = []
        for c in churn:
            try:
                cells.append(f(c) if "error" not in c else "failed")
            except (KeyError, TypeError):
                cells.append("—")
        out.append(f"| {label} | " + " | ".join(cells) + " |")

    line("changes made", lambda c: f"{c['changes']}")
    line("requests under load", lambda c: f"{c['requests']:,} ({c['rps']:,.0f}/s)")
    line("failed requests (non-2xx + socket errors)",
         lambda c: f"{c['failed']} ({c['non_2xx']} + {c['socket_errors']})")
    line("p50 / p99 / p99.9 ms during churn",
         lambda c: f"{c['p50_ms']:.2f} / {c['p99_ms']:.2f} / {c['p999_ms']:.2f}")
    line("change-to-served p50 / p90 / max ms",
         lambda c: "{:.0f} / {:.0f} / {}".format(
             c['change_to_served_ms']['p50'], c['change_to_served_ms']['p90'],
             num(c['change_to_served_ms']['max'])))
    line("changes never seen served", lambda c: f"{c['unseen']}")
    line("probe connection errors", lambda c: f"{c['probe_errors']}")
    line("recompiles (p50 / max compile ms)",
         lambda c: f"{c['compiles']} ({c['compile_ms']['p50']:.0f} / {num(c['compile_ms']['max'])})"
         if "compiles" in c else "—")
    line("nginx reloads started (failed)",
         lambda c: f"{c['reloads']} ({c['reload_failures']})" if "reloads" in c else "—")
    line("peak RSS MiB", lambda c: f"{c['peak_rss_kib'] / 1024:.0f}")
    out.append("")
    for c in churn:
        if "error" in c:
            out.append(f"- {c['target']}: failed: {c['error']}")
    return "\n".join(out) + "\n"


def scale_table(scale):
    out = ["## Compile time and memory by route count\n",
           "`portcullis check DIR` (offline compile) and `nginx -t` (parse and check) measured "
           "with `/usr/bin/time -v`; `portcullis run`: seconds from start to serving, the "
           "`compile_ms` of its first `configuration applied` line, and its RSS once serving.\n",
           "| routes | YAML MiB | check s | check peak RSS MiB | run: ready s | run: compile ms "
           "| run: RSS MiB | nginx.conf MiB | nginx -t s | nginx -t peak RSS MiB |",
           "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in scale:
        c, n = r["check"], r["nginx_t"]
        compile_ms = r.get("run_compile_ms") or [None]
        out.append(
            f"| {r['routes']:,} | {r['yaml_bytes'] / 2**20:.1f} | {c['wall_s']:.2f}"
            f"{'' if c['exit'] == 0 else ' (exit ' + str(c['exit']) + ')'} "
            f"| {c['max_rss_kib'] / 1024:.0f} | {num(r.get('run_ready_s'), 2)} "
            f"| {num(compile_ms[0], 1)} | {num((r.get('run_rss_kib') or 0) / 1024)} "
            f"| {r['nginx_conf_bytes'] / 2**20:.1f} | {n['wall_s']:.2f} | {n['max_rss_kib'] / 1024:.0f} |")
    out.append("")
    return "\n".join(out)


def targets_section(res):
    out = ["## Targets\n"]
    sc = {s["id"]: rows_by_target(s) for s in res["scenarios"]}

    def against_nginx(sid, label):
        rows = sc.get(sid, {})
        p, n = rows.get("portcullis", {}), rows.get("nginx", {})
        if "rps" not in p or "rps" not in n:
            return f"- {label}: not measured"
        checks = [
            ("requests per CPU-second", p["req_per_cpu_s"] >= n["req_per_cpu_s"],
             f"{p['req_per_cpu_s']:,.0f} vs {n['req_per_cpu_s']:,.0f}"),
            ("p99", p["p99_ms"] <= n["p99_ms"], f"{p['p99_ms']:.2f} vs {n['p99_ms']:.2f} ms"),
        ]
        # One run's p99 is noise; the repeated rounds, where measured, are the figure.
        rounds = res.get("latency", {}).get("patterns", {}) if sid == "keepalive" else {}
        for pattern, lat in rounds.items():
            by = {t["target"]: t for t in lat if "error" not in t}
            if "portcullis" in by and "nginx" in by:
                pm, nm = by["portcullis"]["p99_ms"]["median"], by["nginx"]["p99_ms"]["median"]
                checks.append((f"p99 over rounds, {pattern}", pm <= nm,
                               f"median {pm:.2f} vs {nm:.2f} ms"))
        if rounds:
            checks = [c for c in checks if c[0] != "p99"]
        memory = f"{p['peak_rss_kib'] / 1024:.1f} vs {n['peak_rss_kib'] / 1024:.1f} MiB"
        if p.get("rss_split_kib") and n.get("rss_split_kib"):
            # What the resident set holds: the heap and stacks a process makes for itself, and
            # the program's own code and data mapped from its files.
            (pa, pf), (na, nf) = p["rss_split_kib"], n["rss_split_kib"]
            memory += (f"; at the run's end {pa / 1024:.1f} vs {na / 1024:.1f} MiB anonymous "
                       f"(heap, stacks), {pf / 1024:.1f} vs {nf / 1024:.1f} MiB mapped from "
                       "the program's files")
        checks += [("peak memory", p["peak_rss_kib"] <= n["peak_rss_kib"], memory)]
        parts = [f"{name} {'met' if good else '**missed**'} ({detail})"
                 for name, good, detail in checks]
        return f"- {label}, at least nginx: " + "; ".join(parts) + "."

    out.append(against_nginx("keepalive", "HTTP/1.1 keep-alive"))
    out.append(against_nginx("h2", "HTTP/2"))
    scs = route_scenarios(res)
    rr = {t["target"]: t for t in res.get("route_rounds", {}).get("targets", [])
          if t.get("pairs")}
    if "portcullis" in rr:
        # Paired runs, where measured, are the figure: single runs minutes apart move more.
        small, large = res["route_rounds"]["counts"]
        t = rr["portcullis"]
        loss = 1 - t["rps_ratio"]["median"]
        cpu = t["cpu_ratio"]["median"] - 1
        out.append(
            f"- {large:,} routes cost under 10% throughput against {small:,}: "
            f"{'met' if loss < 0.10 else '**missed**'} (median of {len(t['pairs'])} paired "
            f"runs: {loss * 100:+.0f}% throughput lost; CPU per request {cpu * 100:+.0f}%).")
    elif len(scs) >= 2:
        a = rows_by_target(scs[0]).get("portcullis", {})
        b = rows_by_target(scs[-1]).get("portcullis", {})
        if "rps" in a and "rps" in b:
            loss = 1 - b["rps"] / a["rps"]
            cpu = b["cpu_per_10k"] / a["cpu_per_10k"] - 1
            out.append(
                f"- {scs[-1]['routes']:,} routes cost under 10% throughput against "
                f"{scs[0]['routes']:,}: {'met' if loss < 0.10 else '**missed**'} "
                f"({loss * 100:+.0f}% throughput lost; CPU per request {cpu * 100:+.0f}%).")
    for c in res.get("churn", []):
        if c.get("target") != "portcullis" or "error" in c:
            continue
        mx = c["change_to_served_ms"]["max"]
        good_fail = c["failed"] == 0
        good_time = mx is not None and mx < 100 and c["unseen"] == 0
        out.append(
            f"- Churn at {c['routes']:,} routes: zero failed requests "
            f"{'met' if good_fail else '**missed**'} ({c['failed']}); change-to-served under "
            f"100 ms {'met' if good_time else '**missed**'} (p50 "
            f"{c['change_to_served_ms']['p50']:.0f} ms, max {num(mx)} ms).")
    out.append("")
    return "\n".join(out)


# --- profile --------------------------------------------------------------------------------

GROUPS = [
    ("Portcullis (ours)", ("portcullis",)),
    ("Pingora", ("pingora",)),
    ("tokio", ("tokio", "mio")),
    ("HTTP parsing and types (httparse, http, h2, bytes)", ("httparse", "http", "h2", "bytes")),
    ("metrics (prometheus)", ("prometheus",)),
    ("Rust std/core/alloc", ("std", "core", "alloc")),
    ("other crates", ()),
]


def owner(symbol):
    """The crate a (demangled) symbol belongs to: the implementing type's for `<T as Trait>`."""
    s = symbol.strip()
    while s.startswith("<"):
        s = s[1:]
    s = re.sub(r"^(&|mut |dyn |\*const |\*mut )+", "", s)
    s = s.lstrip("<&")
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)::", s)
    return m.group(1) if m else None


def classify(symbol, kernel):
    if kernel:
        return "kernel (TCP, syscalls, scheduling)"
    crate = owner(symbol)
    if crate is None:
        return "libc and other native code (malloc, memcpy, ...)"
    for group, prefixes in GROUPS:
        if any(crate == p or crate.startswith(p + "_") for p in prefixes):
            return group
    return "other crates"


def parse_perf(report):
    """(percent, kernel?, symbol) from `perf report --stdio --sort symbol`, largest first, one
    entry per name (monomorphized copies of one function added up)."""
    merged = defaultdict(float)
    for line in report.splitlines():
        m = re.match(r"\s*([0-9.]+)%\s+\[([k.])\]\s+(.*)$", line)
        if m:
            sym = re.sub(r"\s+-\s+-$", "", m.group(3).strip())
            sym = re.sub(r"::h[0-9a-f]{16}$", "", sym)
            merged[(m.group(2) == "k", sym)] += float(m.group(1))
    return sorted(((pct, k, sym) for (k, sym), pct in merged.items()), key=lambda x: -x[0])


def profile_section(prof, out_dir, name):
    out = ["## Where Portcullis' time goes\n"]
    if "error" in prof:
        return "\n".join(out + [f"Profile not taken: {prof['error']}\n"])
    samples = parse_perf(prof["report"])
    with open(os.path.join(out_dir, f"{name}-profile.txt"), "w") as f:
        f.write(f"# perf self time, {prof['routes']} routes, largest first\n")
        for pct, kernel, sym in samples:
            f.write(f"{pct:6.2f}%  [{'k' if kernel else '.'}] {sym}\n")
    groups = defaultdict(float)
    crates = defaultdict(float)
    for pct, kernel, sym in samples:
        groups[classify(sym, kernel)] += pct
        crates["[kernel]" if kernel else (owner(sym) or "[native]")] += pct
    out.append(
        f"`perf record -e cpu-clock` ({prof['stat_instructions']}) on the Portcullis process "
        f"for {prof['seconds']} s at {prof['routes']:,} routes under saturating load spread over "
        f"them ({prof['rps']:,.0f} req/s). Self time, by owner of the symbol (a generic "
        "function counts for the crate of the type it runs on); the full report is "
        f"`{name}-profile.txt`.\n")
    out.append("| owner | share of samples |")
    out.append("|---|--:|")
    for g, pct in sorted(groups.items(), key=lambda x: -x[1]):
        out.append(f"| {g} | {pct:.1f}% |")
    out.append("")
    out.append("| crate | share |")
    out.append("|---|--:|")
    for c, pct in sorted(crates.items(), key=lambda x: -x[1])[:12]:
        out.append(f"| {c} | {pct:.1f}% |")
    out.append("")
    sc = prof.get("syscalls") or {}
    # Either one error for the whole count (no tracepoints) or one per proxy.
    ok = {t: v for t, v in sc.items() if isinstance(v, dict) and "error" not in v}
    if ok:
        names = sorted({n for v in ok.values() for n in v if n != "all"},
                       key=lambda n: -max(v.get(n, 0) for v in ok.values()))
        out.append("System calls per request under the HTTP/1.1 keep-alive load (perf's syscall "
                   "tracepoints, all threads of the process), made by each proxy and by the "
                   "backend behind it:\n")
        def label(key):
            t, _, side = key.partition(":")
            return f"backend behind {LABELS[t]}" if side else LABELS[t]

        order = [k for t in TARGETS for k in (t, f"{t}:backend") if k in ok]
        ok = {k: ok[k] for k in order}
        out.append("| syscall | " + " | ".join(label(k) for k in ok) + " |")
        out.append("|---|" + "--:|" * len(ok))
        for n in ["all"] + [n for n in names if max(v.get(n, 0) for v in ok.values()) >= 0.01]:
            out.append(f"| {n} | " + " | ".join(f"{v.get(n, 0):.2f}" for v in ok.values()) + " |")
        out.append("")
    for t, v in sc.items():
        if "error" in v:
            out.append(f"- syscall count for {t} failed: {v['error']}")
    out.append("Top symbols:\n")
    out.append("| self | symbol |")
    out.append("|--:|---|")
    for pct, kernel, sym in samples[:25]:
        short = sym if len(sym) <= 140 else sym[:137] + "..."
        out.append(f"| {pct:.2f}% | {'[k] ' if kernel else ''}`{short}` |")
    out.append("")
    return "\n".join(out)


# --- chart ----------------------------------------------------------------------------------


def route_chart(res, out_dir, name):
    scs = route_scenarios(res)
    if len(scs) < 2 or not shutil.which("gnuplot"):
        return None
    data = os.path.join(out_dir, f".{name}-routes.dat")
    with open(data, "w") as f:
        for sc in scs:
            rows = rows_by_target(sc)
            cells = [str(sc["routes"])]
            for t in TARGETS:
                r = rows.get(t, {})
                cells += [f"{r['rps']:.0f}" if "rps" in r else "NaN",
                          f"{r['p99_ms']:.3f}" if "p99_ms" in r else "NaN"]
            f.write(" ".join(cells) + "\n")
    svg = os.path.join(out_dir, f"{name}-routes.svg")
    plots_rps = ", ".join(
        f"'{data}' using 1:{2 + 2 * i} with linespoints title '{LABELS[t]}'"
        for i, t in enumerate(TARGETS))
    plots_p99 = ", ".join(
        f"'{data}' using 1:{3 + 2 * i} with linespoints title '{LABELS[t]}'"
        for i, t in enumerate(TARGETS))
    script = f"""
set terminal svg size 1000,420 dynamic font 'sans,11'
set output '{svg}'
set multiplot layout 1,2 title 'Requests spread over N routes ({res['machine']['nproc']} CPUs, proxy pinned to one)'
set logscale x
set xlabel 'routes'
set key bottom left
set grid
set xtics ({', '.join(f'"{s["routes"]:,}" {s["routes"]}' for s in scs)})
set title 'throughput (req/s, saturating)'
set yrange [0:*]
plot {plots_rps}
set title 'p99 latency (ms) at {res['settings']['rate']:,} req/s'
set key top left
plot {plots_p99}
unset multiplot
"""
    r = subprocess.run(["gnuplot"], input=script, capture_output=True, text=True)
    os.unlink(data)
    if r.returncode != 0:
        return None
    return svg
