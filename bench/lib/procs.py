"""Processes the benchmark starts, and what /proc says about them."""

import os
import signal
import socket
import subprocess
import time

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

_started = []


def start(cmd, log_path, cpus=None, env=None):
    """Starts `cmd` in its own process group (pinned to `cpus`), output to `log_path`."""
    if cpus is not None:
        cmd = ["taskset", "-c", cpus] + list(cmd)
    log = open(log_path, "ab")
    p = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    log.close()
    _started.append(p)
    return p


def stop(p, timeout=10.0):
    """SIGTERM to the process group, SIGKILL after `timeout`."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    # Children that outlived their parent (an nginx worker finishing old connections).
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if p in _started:
        _started.remove(p)


def stop_all():
    for p in list(_started):
        stop(p, timeout=3.0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    # The command name is in parentheses and may hold spaces.
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pids):
    """utime + stime of the processes (all their threads), in seconds."""
    return sum(cpu_split(pids))


def cpu_split(pids):
    """(utime, stime) of the processes (all their threads), in seconds."""
    user = system = 0
    for pid in pids:
        try:
            fields = _stat(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
        user += int(fields[11])
        system += int(fields[12])
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def children(pid):
    """Direct children of `pid`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if int(_stat(entry)[1]) == pid:
                out.append(int(entry))
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return out


def status_kib(pid, field):
    """A `kB` field of /proc/PID/status (VmHWM, VmRSS), or 0."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def threads(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        return 0


def system_busy_seconds():
    """CPU time spent busy by the whole machine (all cores), in seconds."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def wait_until(check, timeout, interval=0.05, proc=None):
    """Polls `check` until it is true (True), `timeout` passes or `proc` exits (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            if check():
                return True
        except Exception:
            pass
        time.sleep(interval)
    return False
