"""``python -m zq.bench --scale``: the cost curve of one ventilator.

For each fleet size (default 1, 10, 50, 200 worker processes, thread executor, one slot
each), on loopback and — as root — on network namespaces (the ventilator, the sink and the
client on hosts of their own, the workers spread over ``--scale-hosts`` hosts), it measures:

- **join**: every worker started at once; seconds until the ventilator counts them all;
- **idle**: the ventilator's and the sink's CPU while nothing runs (heartbeats), per worker;
- **no-op** and **10 ms** tasks: tasks/s, and the ventilator's and the sink's CPU per task;
- results lost (must be 0) and the ventilator's loop lag;
- what bounds the fleet on this machine: a worker's RSS against the memory available, the
  ventilator's file descriptors per worker against its limit.

The client measures from its own process (``bench/scale_client.py``), so that in the
namespace mode it talks over the virtual network like any client.  ``--scale-plot FILE``
draws tasks/s against workers with matplotlib (``pip install matplotlib``).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import time
from typing import Any, Optional, Sequence

from zq._embedded import NodeProcess

from . import netns
from .util import Progress, host, rss_bytes, tree_cpu, versions

log = logging.getLogger("bench.scale")

SCHEMA = "zq-bench-scale/1"
#: "process upward of 1200 tasks per second" (Babuji et al., Parsl, HPDC 2019, on Blue Waters)
PARSL_HTEX_PEAK = 1200
IDLE_SECONDS = 5.0


def open_fds(pid: int) -> Optional[int]:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def mem_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class Fleet:
    """A ventilator, a sink, a measuring client and N workers, on loopback or namespaces."""

    def __init__(self, mode: str, hosts: int) -> None:
        self.mode = mode
        self.net: Optional[netns.VirtualNet] = None
        self.n_hosts = hosts
        self.workers: list[NodeProcess] = []
        self.client: Optional[subprocess.Popen] = None

    def __enter__(self) -> "Fleet":
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _node(self, where: str, args: list[str]) -> NodeProcess:
        if self.net is not None:
            return self.net.node(where, args)
        n = NodeProcess(args, name=where)
        return n.start()

    def _start(self) -> None:
        if self.mode == "netns":
            self.net = netns.VirtualNet(["vent", "sink", "cli", *(f"w{i}" for i in range(self.n_hosts))]).up()
            a = self.net.addr
            sink_ep, clients_ep, workers_ep = (f"tcp://{a['sink']}:5557", f"tcp://{a['vent']}:5555",
                                              f"tcp://{a['vent']}:5556")
        else:
            sink_ep = clients_ep = workers_ep = "tcp://127.0.0.1:0"
        self.sink = self._node("sink", ["sink", "--endpoint", sink_ep, "--insecure"])
        self.sink_ep = self.sink.wait_ready()["endpoint"]
        self.vent = self._node("vent", ["ventilator", "--clients", clients_ep, "--workers", workers_ep,
                                        "--sink", self.sink_ep, "--insecure"])
        eps = self.vent.wait_ready()
        self.clients_ep, self.workers_ep = eps["clients"], eps["workers"]
        argv = [sys.executable, "-m", "zq.bench.scale_client", self.clients_ep, self.sink_ep]
        argv = self.net.argv("cli", argv) if self.net is not None else argv
        self.client = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                       bufsize=1, start_new_session=True)
        if json.loads(self.client.stdout.readline() or "{}").get("ready") is not True:  # type: ignore[union-attr]
            raise RuntimeError("the measuring client did not start")

    def ask(self, **cmd: Any) -> dict:
        assert self.client is not None and self.client.stdin and self.client.stdout
        self.client.stdin.write(json.dumps(cmd) + "\n")
        self.client.stdin.flush()
        line = self.client.stdout.readline()
        if not line:
            raise RuntimeError(f"the measuring client died (exit code {self.client.poll()})")
        return json.loads(line)

    def add_workers(self, n: int) -> list[NodeProcess]:
        new = []
        for i in range(n):
            where = f"w{(len(self.workers) + i) % self.n_hosts}" if self.net is not None else f"worker{i}"
            args = ["worker", "--ventilator", self.workers_ep, "--sink", self.sink_ep, "--executor", "thread",
                    "--concurrency", "1"]
            new.append(self._node(where, args))
        self.workers.extend(new)
        return new

    def cpu(self) -> dict[str, float]:
        return {"ventilator": tree_cpu(self.vent.pid), "sink": tree_cpu(self.sink.pid)}

    def close(self) -> None:
        if self.client is not None and self.client.poll() is None:
            try:
                self.ask(op="quit")
                self.client.wait(10)
            except Exception:
                self.client.kill()
        for w in self.workers:
            w.stop(timeout=10)
        for node in ("vent", "sink"):
            n = getattr(self, node, None)
            if n is not None:
                n.stop(timeout=10)
        if self.net is not None:
            for problem in self.net.down():
                log.warning("netns teardown: %s", problem)


def measure(mode: str, n_workers: int, hosts: int, noop_n: int, sleep_n: int, timeout: float) -> dict:
    row: dict[str, Any] = {"mode": mode, "workers": n_workers, "hosts": hosts if mode == "netns" else 1}
    with Fleet(mode, hosts) as f:
        fds0 = open_fds(f.vent.pid)
        t0 = time.monotonic()
        f.add_workers(n_workers)
        joined = f.ask(op="workers", n=n_workers, timeout=timeout)
        row["join_s"] = (time.monotonic() - t0) if joined.get("seconds") is not None else None
        if joined.get("error"):
            row["error"] = joined["error"]
            return row
        fds1 = open_fds(f.vent.pid)
        row["vent_fds_per_worker"] = (fds1 - fds0) / n_workers if fds0 is not None and fds1 is not None else None
        c0, w0 = f.cpu(), time.monotonic()
        time.sleep(IDLE_SECONDS)  # measuring an idle cluster: nothing to wait on but time
        c1, wall = f.cpu(), time.monotonic() - w0
        row["idle_cpu_pct"] = {k: 100 * (c1[k] - c0[k]) / wall for k in c0}
        row["idle_cpu_pct_per_worker"] = {k: v / n_workers for k, v in row["idle_cpu_pct"].items()}
        for kind, n in (("noop", noop_n), ("sleep", sleep_n)):
            c0 = f.cpu()
            r = f.ask(op="run", kind=kind, n=n, sleep=0.01, timeout=timeout)
            c1 = f.cpu()
            row[kind] = {"tasks": n, "seconds": r.get("seconds"), "lost": r.get("lost"), "failed": r.get("failed"),
                         "tasks_per_s": n / r["seconds"] if r.get("seconds") else None,
                         "cpu_us_per_task": {k: 1e6 * (c1[k] - c0[k]) / n for k in c0}}
            if r.get("error"):
                row[kind]["error"] = r["error"]
        stats = f.ask(op="stats")
        row["vent_loop_lag_max_s"] = stats.get("loop", {}).get("lag_max")
        rss = [x for x in (rss_bytes(w.pid) for w in f.workers[:20]) if x]
        row["worker_rss_bytes"] = sum(rss) / len(rss) if rss else None
        row["vent_rss_bytes"] = rss_bytes(f.vent.pid)
    return row


def limits(rows: Sequence[dict]) -> dict:
    """What bounds the fleet on this machine, from the measured per-worker costs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    rss = [r["worker_rss_bytes"] for r in rows if r.get("worker_rss_bytes")]
    fds = [r["vent_fds_per_worker"] for r in rows if r.get("vent_fds_per_worker")]
    avail = mem_available()
    out: dict[str, Any] = {"nofile_soft": soft, "nofile_hard": hard, "mem_available_bytes": avail}
    if rss and avail:
        out["workers_by_memory"] = int(avail / max(rss))
    if fds:
        per = max(fds)
        out["vent_fds_per_worker"] = per
        out["workers_by_vent_fds_soft"] = int(soft / per) if per else None
        out["workers_by_vent_fds_hard"] = int(hard / per) if per else None
    return out


def run_scale(sizes: Sequence[int], hosts: int, modes: Sequence[str], noop_per_worker: int = 100,
              sleep_per_worker: int = 20, timeout: float = 600.0, progress: bool = True) -> dict:
    out: dict[str, Any] = {"schema": SCHEMA, "versions": versions(), "host": host(), "rows": [],
                           "load_avg_start": list(os.getloadavg())}
    if "netns" in modes:
        why = netns.unavailable_reason()
        if why:
            log.warning("namespaces skipped: %s", why)
            out["netns_skipped"] = why
            modes = [m for m in modes if m != "netns"]
    bar = Progress(len(sizes) * len(modes), enabled=progress)
    for mode in modes:
        for n in sizes:
            bar.step(f"scale: {n} worker(s) on {mode}")
            noop_n, sleep_n = max(2000, noop_per_worker * n), max(200, sleep_per_worker * n)
            try:
                out["rows"].append(measure(mode, n, hosts, noop_n, sleep_n, timeout))
            except Exception as exc:
                log.warning("%d workers on %s: %s", n, mode, exc)
                out["rows"].append({"mode": mode, "workers": n, "error": f"{type(exc).__name__}: {exc}"})
            bar.advance()
    bar.close()
    out["limits"] = limits(out["rows"])
    out["load_avg_end"] = list(os.getloadavg())
    return out


def table(result: dict) -> str:
    head = ("| mode | workers | join s | no-op tasks/s | 10 ms tasks/s | vent µs/task | sink µs/task | "
            "idle vent CPU %/worker | lost |")
    lines = [head, "|" + " --- |" * 9]
    for r in result["rows"]:
        if r.get("error") and "noop" not in r:
            lines.append(f"| {r['mode']} | {r['workers']} | error: {r['error']} |" + " |" * 6)
            continue
        noop, slp = r["noop"], r["sleep"]
        lost = (noop.get("lost") or 0) + (slp.get("lost") or 0)
        lines.append(
            f"| {r['mode']} | {r['workers']} | {r['join_s']:.1f} | {noop['tasks_per_s'] or 0:,.0f} | "
            f"{slp['tasks_per_s'] or 0:,.0f} | {noop['cpu_us_per_task']['ventilator']:.0f} | "
            f"{noop['cpu_us_per_task']['sink']:.0f} | {r['idle_cpu_pct_per_worker']['ventilator']:.3f} | {lost} |")
    return "\n".join(lines)


def plot(result: dict, path: str) -> Optional[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no plot"
    fig, ax = plt.subplots(figsize=(10, 4.2))
    for mode in sorted({r["mode"] for r in result["rows"]}):
        for kind, style in (("noop", "o-"), ("sleep", "s--")):
            pts = [(r["workers"], r[kind]["tasks_per_s"]) for r in result["rows"]
                   if r["mode"] == mode and kind in r and r[kind].get("tasks_per_s")]
            if pts:
                ax.plot(*zip(*pts), style, label=f"{'no-op' if kind == 'noop' else '10 ms'} tasks, {mode}")
    sizes = sorted({r["workers"] for r in result["rows"]})
    if sizes:
        ax.plot(sizes, [100 * n for n in sizes], ":", color="grey", label="10 ms tasks, ideal (100/s per slot)")
    # the published figure it is most often compared with (not measured here)
    ax.axhline(PARSL_HTEX_PEAK, color="purple", linestyle="-.", linewidth=1,
               label=f"Parsl HTEX peak, published: ~{PARSL_HTEX_PEAK:,}/s (Blue Waters, HPDC'19)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("workers (1 slot each)")
    ax.set_ylabel("tasks/s")
    ax.set_title(f"one zq ventilator, {result['host'].get('cpu_count', '?')} cores")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return None

def clusters(k: int, workers_each: int, noop_n: int, timeout: float = 600.0) -> dict:
    """"Growing past one ventilator": ``k`` independent clusters on loopback, each with its own
    client and ``workers_each`` workers, driven at once; their summed no-op tasks/s and each
    ventilator's CPU per task, against one cluster with ``k * workers_each`` workers."""
    import concurrent.futures

    out: dict[str, Any] = {"clusters": k, "workers_each": workers_each, "tasks_each": noop_n}
    fleets: list[Fleet] = []
    try:
        for _ in range(k):
            f = Fleet("loopback", 1).__enter__()
            fleets.append(f)
            f.add_workers(workers_each)
        for f in fleets:
            joined = f.ask(op="workers", n=workers_each, timeout=timeout)
            if joined.get("error"):
                return {**out, "error": joined["error"]}
        c0 = [f.cpu() for f in fleets]
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(k) as pool:
            runs = list(pool.map(lambda f: f.ask(op="run", kind="noop", n=noop_n, timeout=timeout), fleets))
        wall = time.monotonic() - t0
        c1 = [f.cpu() for f in fleets]
        out["seconds"] = wall
        out["tasks_per_s"] = k * noop_n / wall
        out["lost"] = sum(r.get("lost") or 0 for r in runs)
        out["vent_cpu_us_per_task"] = [1e6 * (b["ventilator"] - a["ventilator"]) / noop_n for a, b in zip(c0, c1)]
    finally:
        for f in fleets:
            f.close()
    return out
