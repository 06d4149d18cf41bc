"""Shared helpers: statistics, /proc readers (RSS, CPU time), versions, host, progress."""

from __future__ import annotations

import logging
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterable, Optional, Sequence

log = logging.getLogger("bench")

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# ----------------------------------------------------------------------------- statistics


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def percentile(sorted_xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in 0..100)."""
    if not sorted_xs:
        return float("nan")
    k = min(len(sorted_xs) - 1, max(0, int(round(q / 100.0 * len(sorted_xs) + 0.5)) - 1))
    return float(sorted_xs[k])


def latency_summary(samples_s: Sequence[float]) -> dict:
    xs = sorted(samples_s)
    return {
        "n": len(xs),
        "p50_us": percentile(xs, 50) * 1e6,
        "p90_us": percentile(xs, 90) * 1e6,
        "p99_us": percentile(xs, 99) * 1e6,
        "min_us": xs[0] * 1e6 if xs else float("nan"),
        "mean_us": statistics.fmean(xs) * 1e6 if xs else float("nan"),
    }


def repeat(fn: Callable[[], dict], reps: int, key: str) -> dict:
    """Run ``fn`` ``reps`` times; the run whose ``key`` is the median, plus all ``key`` samples."""
    runs = [fn() for _ in range(max(1, reps))]
    ok = [r for r in runs if key in r and r.get("error") is None]
    if not ok:
        return runs[-1]
    ok.sort(key=lambda r: r[key])
    out = dict(ok[(len(ok) - 1) // 2]) if len(ok) % 2 else dict(ok[len(ok) // 2])
    out[key] = median([r[key] for r in ok])
    out["samples"] = [r[key] for r in runs if key in r]
    out["reps"] = len(runs)
    return out


# ----------------------------------------------------------------------------- /proc


def rss_bytes(pid: int) -> Optional[int]:
    """VmRSS of ``pid`` from /proc/PID/status, in bytes (None if unreadable)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _stat_cpu(path: str) -> float:
    """utime + stime in seconds from a /proc/.../stat file."""
    try:
        with open(path) as f:
            data = f.read()
    except OSError:
        return 0.0
    fields = data[data.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (process executors' children)."""
    total = _stat_cpu(f"/proc/{pid}/stat")
    for c in children(pid):
        total += tree_cpu(c)
    return total


def thread_cpu(tid: int, pid: Optional[int] = None) -> float:
    return _stat_cpu(f"/proc/{pid or os.getpid()}/task/{tid}/stat")


class CpuMeter:
    """CPU seconds per role between ``start()`` and ``stop()``.

    Roles: ``client_caller`` (the thread that submits), ``client_io`` (the client's IO
    thread), ``client_other`` (the rest of this process), ``ventilator``, ``sink``,
    ``workers`` (every worker process and its executor children).
    """

    def __init__(self, pids: dict[str, list[int]], io_tid: Optional[int]) -> None:
        self.pids = pids
        self.io_tid = io_tid
        self.caller_tid = threading.get_native_id()
        self._t0: dict[str, float] = {}
        self.wall = 0.0

    def _snap(self) -> dict[str, float]:
        me = _stat_cpu(f"/proc/{os.getpid()}/stat")
        caller = thread_cpu(self.caller_tid)
        io = thread_cpu(self.io_tid) if self.io_tid else 0.0
        snap = {"client_caller": caller, "client_io": io, "client_other": me - caller - io}
        for role, pids in self.pids.items():
            snap[role] = sum(tree_cpu(p) for p in pids)
        snap["_wall"] = time.perf_counter()
        return snap

    def start(self) -> "CpuMeter":
        self._t0 = self._snap()
        return self

    def stop(self, n_tasks: int) -> dict:
        t1 = self._snap()
        wall = t1["_wall"] - self._t0["_wall"]
        out: dict[str, Any] = {"wall_s": wall, "cpu_s": {}, "util_pct": {}, "us_per_task": {}}
        for k, v in t1.items():
            if k == "_wall":
                continue
            d = max(0.0, v - self._t0.get(k, 0.0))
            out["cpu_s"][k] = d
            out["util_pct"][k] = 100.0 * d / wall if wall > 0 else float("nan")
            out["us_per_task"][k] = 1e6 * d / n_tasks if n_tasks else float("nan")
        return out


# ----------------------------------------------------------------------------- environment


def versions() -> dict:
    out: dict[str, Any] = {"python": platform.python_version(),
                           "implementation": platform.python_implementation()}
    try:
        import zmq

        out["pyzmq"] = zmq.pyzmq_version()
        out["libzmq"] = zmq.zmq_version()
    except Exception as exc:  # pragma: no cover
        out["pyzmq"] = f"unavailable: {exc}"
    try:
        import msgpack

        out["msgpack"] = ".".join(map(str, msgpack.version))
    except Exception:  # pragma: no cover
        out["msgpack"] = None
    try:
        import cloudpickle

        out["cloudpickle"] = cloudpickle.__version__
    except Exception:  # pragma: no cover
        out["cloudpickle"] = None
    try:
        import zq

        out["zq"] = zq.__version__
        out["zq_git"] = _git_describe(os.path.dirname(os.path.dirname(os.path.abspath(zq.__file__))))
    except Exception:  # pragma: no cover
        out["zq"] = None
    return out


def _git_describe(path: str) -> Optional[str]:
    try:
        head = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", path, "status", "--porcelain", "--", "zq", "nodes"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{head}{'+dirty' if dirty else ''}" if head else None
    except (OSError, subprocess.SubprocessError):
        return None


def host() -> dict:
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "cpu_model": model or platform.processor() or None,
        "mem_total_bytes": mem,
        "platform": platform.platform(),
        "machine": platform.machine(),
    }


# ----------------------------------------------------------------------------- progress


class Progress:
    """A progress line on stderr through logging: ``[ 3/17  12.3s] what``.

    On a terminal the line is redrawn in place; otherwise one log line per step.
    """

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total = total
        self.done = 0
        self.t0 = time.perf_counter()
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self._last_len = 0

    def _line(self, what: str) -> str:
        width = len(str(self.total))
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(frac * 20)
        return (f"[{bar:<20}] {self.done:>{width}}/{self.total} "
                f"{time.perf_counter() - self.t0:6.1f}s  {what}")

    def step(self, what: str) -> None:
        """Announce the step about to run."""
        if not self.enabled:
            return
        line = self._line(what)
        if self.tty:
            sys.stderr.write("\r" + line.ljust(self._last_len))
            sys.stderr.flush()
            self._last_len = len(line)
        else:
            log.info("%s", line)

    def note(self, what: str) -> None:
        """Progress inside a long step (e.g. draining a million tasks)."""
        self.step(what)

    def advance(self) -> None:
        self.done += 1

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\r" + self._line("done").ljust(self._last_len) + "\n")
            sys.stderr.flush()


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.at


def fmt_rate(x: Optional[float], unit: str = "/s") -> str:
    if x is None or x != x:
        return "-"
    if x >= 100:
        return f"{x:,.0f}{unit}"
    return f"{x:,.1f}{unit}"


def fmt_bytes(n: Optional[float]) -> str:
    if n is None or n != n:
        return "-"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= div:
            return f"{n / div:,.1f} {unit}"
    return f"{n:,.0f} B"


def chunked(xs: Iterable[Any], n: int) -> Iterable[list]:
    buf: list = []
    for x in xs:
        buf.append(x)
        if len(buf) >= n:
            yield buf
            buf = []
    if buf:
        yield buf
