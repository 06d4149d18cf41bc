"""``python -m zq.bench`` / ``zq bench``: benchmark zq on a real local cluster.

    python -m zq.bench                 # full run (several minutes; 1,000,000-task memory test)
    python -m zq.bench --quick         # under 30 s, every section, one repetition each
    python -m zq.bench --smoke         # seconds; for the test suite
    python -m zq.bench --json out.json --peers dask,ray,ipyparallel
    python -m zq.bench --only throughput,latency --repeat 5

Each section starts its own cluster (sink, ventilator, workers as separate
``python -m zq.nodes`` processes on random loopback ports, via
:class:`zq.nodes.local.LocalCluster`); start-up and a warm-up are outside every
timed region; each figure is the median of ``--repeat`` runs (quick/smoke: one).

The entry point for the ``zq bench`` command is ``bench.cli.main(argv) -> int``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import sys
import time
from typing import Any, Callable, Optional

from . import baselines, dashboard_lag, peers, raw, zqbench
from .util import Progress, fmt_bytes, fmt_rate, host, repeat, versions

log = logging.getLogger("bench")

SECTIONS = ("baselines", "raw", "throughput", "latency", "payload", "scaling", "memory", "dashboard", "peers")
SCHEMA = "zq-bench/1"

#: workload sizes per mode
MODES: dict[str, dict[str, Any]] = {
    "full": dict(reps=3, submit_n=20_000, map_n=1_000_000, lat_n=1000, lat_warmup=100,
                 payload_n={100: 5000, 100_000: 1000, 10_000_000: 20}, args_1mb_n=300,
                 scaling_workers=[1, 2, 4], scaling_submit_n=20_000, scaling_map_n=1_000_000,
                 memory_n=1_000_000, raw_unbatched_n=200_000, raw_batched_n=1_000_000, peer_n=5000,
                 dashboard_queued=1_000_000, dashboard_finished=100_000, dashboard_window=20.0,
                 timeout=600.0),
    "quick": dict(reps=1, submit_n=3000, map_n=100_000, lat_n=200, lat_warmup=20,
                  payload_n={100: 500, 100_000: 100, 10_000_000: 3}, args_1mb_n=40,
                  scaling_workers=[1, 2, 4], scaling_submit_n=2000, scaling_map_n=50_000,
                  memory_n=20_000, raw_unbatched_n=30_000, raw_batched_n=200_000, peer_n=1000,
                  dashboard_queued=100_000, dashboard_finished=10_000, dashboard_window=8.0,
                  timeout=60.0),
    "smoke": dict(reps=1, submit_n=300, map_n=5000, lat_n=30, lat_warmup=5,
                  payload_n={100: 50, 100_000: 10, 10_000_000: 1}, args_1mb_n=5,
                  scaling_workers=[1, 2], scaling_submit_n=200, scaling_map_n=2000,
                  memory_n=2000, raw_unbatched_n=5000, raw_batched_n=20_000, peer_n=200,
                  dashboard_queued=2000, dashboard_finished=500, dashboard_window=1.0,
                  timeout=60.0),
}

PAYLOAD_KINDS = ("bytes", "bytearray", "memoryview")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zq bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_mutually_exclusive_group()
    m.add_argument("--quick", action="store_true", help="small counts, one repetition (< 30 s)")
    m.add_argument("--smoke", action="store_true", help="tiny counts (for tests; figures meaningless)")
    p.add_argument("--json", metavar="FILE", help="write every figure as JSON to FILE")
    p.add_argument("--peers", default="", metavar="LIST",
                   help="also run these peers when importable: dask,ray,ipyparallel")
    p.add_argument("--only", default="", metavar="LIST", help=f"run only these sections: {','.join(SECTIONS)}")
    p.add_argument("--skip", default="", metavar="LIST", help="skip these sections")
    p.add_argument("--repeat", type=int, default=None, metavar="N", help="repetitions per figure (median)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="workers for the throughput/latency/payload sections (default 1)")
    p.add_argument("--concurrency", type=int, default=0, metavar="N",
                   help="slots per worker (default 0: the worker's default, cpu count)")
    p.add_argument("--memory-tasks", type=int, default=None, metavar="N",
                   help="tasks queued in the memory section (full: 1,000,000)")
    p.add_argument("--memory-burst", action="store_true",
                   help="memory section: submit all tasks in one burst instead of paced chunks of 50,000")
    p.add_argument("--dashboard-queued", type=int, default=None, metavar="N",
                   help="dashboard section: tasks queued while zq http is polled (full: 1,000,000)")
    p.add_argument("--dashboard-finished", type=int, default=None, metavar="N",
                   help="dashboard section: finished tasks in the history (full: 100,000)")
    p.add_argument("--dashboard-pollers", type=int, default=4, metavar="N",
                   help="dashboard section: threads polling zq http (default 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    s = p.add_argument_group("the cost curve of one ventilator (bench/scale.py)")
    s.add_argument("--scale", action="store_true", help="run only the scale curve: join, idle cost, tasks/s by workers")
    s.add_argument("--scale-workers", default="1,10,50,200", metavar="LIST", help="fleet sizes (default 1,10,50,200)")
    s.add_argument("--scale-hosts", type=int, default=10, metavar="N", help="namespaced worker hosts (default 10)")
    s.add_argument("--scale-modes", default="loopback,netns", metavar="LIST",
                   help="loopback and/or netns (netns needs root; skipped with the reason otherwise)")
    s.add_argument("--scale-plot", metavar="FILE", help="draw tasks/s against workers (needs matplotlib)")
    s.add_argument("--scale-clusters", type=int, default=0, metavar="K",
                   help="also: K independent clusters driven at once, against one cluster with all their workers")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


class Runner:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.mode = "smoke" if opts.smoke else "quick" if opts.quick else "full"
        self.p = dict(MODES[self.mode])
        if opts.repeat is not None:
            self.p["reps"] = max(1, opts.repeat)
        if opts.memory_tasks is not None:
            self.p["memory_n"] = max(1, opts.memory_tasks)
        if opts.dashboard_queued is not None:
            self.p["dashboard_queued"] = max(0, opts.dashboard_queued)
        if opts.dashboard_finished is not None:
            self.p["dashboard_finished"] = max(0, opts.dashboard_finished)
        only = _csv(opts.only)
        bad = [s for s in only + _csv(opts.skip) if s not in SECTIONS]
        if bad:
            raise SystemExit(f"zq bench: unknown section(s): {', '.join(bad)} (known: {', '.join(SECTIONS)})")
        self.sections = [s for s in (only or SECTIONS) if s not in _csv(opts.skip)]
        self.peer_names = _csv(opts.peers)
        if not self.peer_names and "peers" in self.sections:
            self.sections.remove("peers")
        self.errors: list[str] = []
        self.progress = Progress(self._count_steps(), enabled=not opts.no_progress)

    # -- the plan -----------------------------------------------------------------------
    def _count_steps(self) -> int:
        p, n = self.p, 0
        for s in self.sections:
            n += {"baselines": 3, "raw": 4, "throughput": 4, "latency": 2,
                  "payload": len(p["payload_n"]) * len(PAYLOAD_KINDS) + 1,
                  "scaling": len(p["scaling_workers"]) * 4, "memory": 1, "dashboard": 1,
                  "peers": len(self.peer_names)}.get(s, 0)
        return max(1, n)

    def measure(self, label: str, fn: Callable[..., dict], *args: Any, **kw: Any) -> dict:
        self.progress.step(label)
        load = os.getloadavg()[0]
        try:
            r = fn(*args, **kw)
        except Exception as exc:
            log.debug("%s failed", label, exc_info=True)
            r = {"error": f"{type(exc).__name__}: {exc}"}
        if isinstance(r, dict):
            r.setdefault("load_avg_1m", load)  # other processes on the machine make figures noisy
        if r.get("error"):
            self.errors.append(f"{label}: {r['error']}")
            log.warning("%s: %s", label, r["error"])
        self.progress.advance()
        return r

    def rep(self, fn: Callable[[], dict], key: str) -> Callable[[], dict]:
        return lambda: repeat(fn, self.p["reps"], key)

    # -- sections -----------------------------------------------------------------------
    def run(self) -> dict:
        t0 = time.time()
        p = self.p
        out: dict[str, Any] = {
            "schema": SCHEMA, "mode": self.mode, "argv": sys.argv[1:],
            "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(), "host": host(), "load_avg_start": list(os.getloadavg()),
            "params": {k: (v if not isinstance(v, dict) else {str(a): b for a, b in v.items()})
                       for k, v in p.items()},
            "workers": self.opts.workers, "concurrency": self.opts.concurrency or os.cpu_count(),
            "zq": {}, "baselines": {}, "peers": {}, "sections": self.sections,
        }
        zo, bo = out["zq"], out["baselines"]
        reps, to = p["reps"], p["timeout"]
        if "baselines" in self.sections:
            bo["pool_submit"] = self.measure("ProcessPoolExecutor(2) submit loop", self.rep(
                lambda: baselines.pool_submit(p["submit_n"]), "tasks_per_s"))
            bo["pool_map"] = self.measure("ProcessPoolExecutor(2) map chunksize=256", self.rep(
                lambda: baselines.pool_map(p["map_n"], 256), "tasks_per_s"))
            bo["pool_latency"] = self.measure("ProcessPoolExecutor(2) round trip", baselines.pool_latency,
                                              p["lat_n"], p["lat_warmup"])
        if "raw" in self.sections:
            bo["raw_unbatched"] = self.measure("bare pyzmq pipeline, unbatched", raw.pipeline,
                                               p["raw_unbatched_n"], 1, self.opts.workers, reps,
                                               timeout=to)
            bo["raw_batched"] = self.measure("bare pyzmq pipeline, batch 256", raw.pipeline,
                                             p["raw_batched_n"], 256, self.opts.workers, reps, timeout=to)
            bo["raw_latency"] = self.measure("bare pyzmq 4-hop round trip", raw.latency, p["lat_n"],
                                             p["lat_warmup"])
            bo["raw_payload"] = self.measure("bare pyzmq 4-hop payloads", raw.payload,
                                             {**p["payload_n"], 1_000_000: p["args_1mb_n"]}, reps, timeout=to)
        if "throughput" in self.sections or "latency" in self.sections:
            zo["throughput"], zo["latency"] = {}, {}
            for ex in ("thread", "process"):
                self._throughput_latency(ex, zo)
        if "payload" in self.sections:
            zo["payload"], zo["args_1mb"] = self._payloads()
        if "scaling" in self.sections:
            zo["scaling"] = self._scaling()
        if "memory" in self.sections:
            n = p["memory_n"]
            zo["memory"] = self.measure(
                f"memory: {n:,} tasks queued, then drained", zqbench.memory, n, drain_workers=2,
                drain_concurrency=32, pace=0 if self.opts.memory_burst else 50_000, timeout=max(to, 900.0 if n >= 500_000 else to), progress=self.progress)
        if "dashboard" in self.sections:
            q, f = p["dashboard_queued"], p["dashboard_finished"]
            zo["dashboard"] = self.measure(
                f"dashboard: loop lag, {q:,} queued + {f:,} finished, zq http polled", dashboard_lag.dashboard,
                q, f, pollers=self.opts.dashboard_pollers, window=p["dashboard_window"],
                timeout=max(to, 1800.0 if q >= 500_000 else 300.0), progress=self.progress)
        for name in self.peer_names:
            out["peers"][name] = self.measure(f"peer {name}", peers.run, name, p["peer_n"], p["lat_n"],
                                              timeout=max(120.0, to))
        out["ratios"] = ratios(out)
        out["errors"] = self.errors
        out["load_avg_end"] = list(os.getloadavg())
        out["duration_s"] = time.time() - t0
        self.progress.close()
        return out

    def _cluster(self, executor: str, workers: Optional[int] = None) -> zqbench.Cluster:
        return zqbench.Cluster(workers=self.opts.workers if workers is None else workers, executor=executor,
                               concurrency=self.opts.concurrency)

    def _throughput_latency(self, ex: str, zo: dict) -> None:
        p, to = self.p, self.p["timeout"]
        do_tp = "throughput" in self.sections
        do_lat = "latency" in self.sections
        try:
            with self._cluster(ex) as c:
                c.warm()
                if do_tp:
                    zo["throughput"][f"submit_{ex}"] = self.measure(
                        f"zq submit loop ({ex} executor)",
                        self.rep(lambda: zqbench.submit_loop(c, p["submit_n"], to), "tasks_per_s"))
                    zo["throughput"][f"map256_{ex}"] = self.measure(
                        f"zq map chunksize=256 ({ex} executor)",
                        self.rep(lambda: zqbench.map_chunked(c, p["map_n"], 256, to), "tasks_per_s"))
                if do_lat:
                    zo["latency"][ex] = self.measure(
                        f"zq round trip ({ex} executor)", zqbench.round_trip, c, p["lat_n"], p["lat_warmup"], to)
        except Exception as exc:
            self._section_error(f"zq {ex} cluster", exc)

    def _payloads(self) -> tuple[list, dict]:
        p, to = self.p, self.p["timeout"]
        rows: list = []
        one_mb: dict = {}
        try:
            with self._cluster("thread") as c:
                c.warm()
                for size, n in p["payload_n"].items():
                    for kind in PAYLOAD_KINDS:
                        rows.append(self.measure(
                            f"zq payload {fmt_bytes(size)} {kind}",
                            self.rep(lambda: zqbench.payload(c, size, kind, n, to), "mb_per_s")))
                one_mb = self.measure("zq tasks with 1 MB arguments", self.rep(
                    lambda: zqbench.payload(c, 1_000_000, "bytes", p["args_1mb_n"], to), "tasks_per_s"))
        except Exception as exc:
            self._section_error("zq payload cluster", exc)
        return rows, one_mb

    def _scaling(self) -> list:
        p, to = self.p, self.p["timeout"]
        rows = []
        for w in p["scaling_workers"]:
            row: dict[str, Any] = {"workers": w}
            try:
                with self._cluster("thread", workers=w) as c:
                    c.warm()
                    row["submit"] = self.measure(f"scaling: {w} worker(s), submit loop", self.rep(
                        lambda: zqbench.submit_loop(c, p["scaling_submit_n"], to), "tasks_per_s"))
                    row["map256"] = self.measure(f"scaling: {w} worker(s), map chunksize=256", self.rep(
                        lambda: zqbench.map_chunked(c, p["scaling_map_n"], 256, to), "tasks_per_s"))
            except Exception as exc:
                self._section_error(f"zq scaling cluster ({w} workers)", exc)
            row["raw_unbatched"] = self.measure(f"scaling: {w} worker(s), bare unbatched", raw.pipeline,
                                                p["raw_unbatched_n"] // 2, 1, w, 1, timeout=to)
            row["raw_batched"] = self.measure(f"scaling: {w} worker(s), bare batch 256", raw.pipeline,
                                              p["raw_batched_n"] // 2, 256, w, 1, timeout=to)
            rows.append(row)
        return rows

    def _section_error(self, what: str, exc: BaseException) -> None:
        log.warning("%s failed: %s", what, exc, exc_info=log.isEnabledFor(logging.DEBUG))
        self.errors.append(f"{what}: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- ratios / report


def _get(d: Any, *path: str) -> Optional[float]:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d if isinstance(d, (int, float)) else None


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def ratios(out: dict) -> dict:
    """zq figures divided by the baselines (>1: zq is faster / larger)."""
    z, b = out["zq"], out["baselines"]
    r: dict[str, Any] = {}
    for ex in ("thread", "process"):
        sub = _get(z, "throughput", f"submit_{ex}", "tasks_per_s")
        mp = _get(z, "throughput", f"map256_{ex}", "tasks_per_s")
        r[f"submit_{ex}_vs_pool"] = _ratio(sub, _get(b, "pool_submit", "tasks_per_s"))
        r[f"submit_{ex}_vs_raw_unbatched"] = _ratio(sub, _get(b, "raw_unbatched", "tasks_per_s"))
        r[f"map256_{ex}_vs_pool"] = _ratio(mp, _get(b, "pool_map", "tasks_per_s"))
        r[f"map256_{ex}_vs_raw_batched"] = _ratio(mp, _get(b, "raw_batched", "tasks_per_s"))
        # latency: zq p50 / baseline p50 (>1: zq is slower)
        p50 = _get(z, "latency", ex, "p50_us")
        r[f"p50_{ex}_vs_pool"] = _ratio(p50, _get(b, "pool_latency", "p50_us"))
        r[f"p50_{ex}_vs_raw_4hop"] = _ratio(p50, _get(b, "raw_latency", "p50_us"))
    # payloads: zq MB/s (bytes arguments) / bare 4-hop MB/s of the same size
    bare = {d.get("size"): d.get("mb_per_s") for d in _raw_payload_rows(b)}
    for d in z.get("payload") or []:
        if isinstance(d, dict) and d.get("kind") == "bytes" and bare.get(d.get("size")):
            r[f"payload_{d['size']}_vs_raw"] = _ratio(d.get("mb_per_s"), bare[d["size"]])
    r["args_1mb_vs_raw"] = _ratio(_get(z, "args_1mb", "mb_per_s"), bare.get(1_000_000))
    return {k: v for k, v in r.items() if v is not None}


def _raw_payload_rows(b: dict) -> list:
    rows = (b.get("raw_payload") or {}).get("rows")
    return [d for d in rows if isinstance(d, dict)] if isinstance(rows, list) else []


def _x(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _cell(d: Any, key: str = "tasks_per_s", unit: str = "/s") -> str:
    if not isinstance(d, dict) or not d:
        return "-"
    if d.get("error") and key not in d:
        return "ERROR"
    return fmt_rate(d.get(key), unit)


def _lat(d: Any) -> str:
    if not isinstance(d, dict) or "p50_us" not in d:
        return "ERROR" if isinstance(d, dict) and d.get("error") else "-"
    return f"{d['p50_us']:,.0f} / {d['p99_us']:,.0f} us"


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        lines.append(indent + "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])
                                        for i, c in enumerate(r)).rstrip())
        if j == 0:
            lines.append(indent + "  ".join("-" * w for w in widths))
    return lines


def report(out: dict) -> str:
    v, h, p = out["versions"], out["host"], out["params"]
    z, b, r = out["zq"], out["baselines"], out.get("ratios", {})
    L: list[str] = []
    L.append(f"zq bench - {out['mode']} mode, {p['reps']} repetition(s) per figure (median), "
             f"{out.get('duration_s', 0):.0f} s, {out['started_at']}")
    L.append(f"host: {h['cpu_count']} cpu ({h.get('cpu_model')}), {fmt_bytes(h.get('mem_total_bytes'))}, "
             f"{h['platform']}; load average at start {out['load_avg_start'][0]:.2f}, "
             f"at end {out.get('load_avg_end', [0])[0]:.2f}")
    if out["load_avg_start"][0] > 0.5 * (h["cpu_count"] or 1):
        L.append("  WARNING: the machine was busy when the run started: figures are noisy")
    L.append(f"versions: python {v['python']}, pyzmq {v.get('pyzmq')}, libzmq {v.get('libzmq')}, "
             f"msgpack {v.get('msgpack')}, cloudpickle {v.get('cloudpickle')}, zq {v.get('zq')} "
             f"(git {v.get('zq_git')})")
    L.append(f"zq cluster: {out['workers']} worker(s) x {out['concurrency']} slot(s), loopback TCP; "
             "baseline ProcessPoolExecutor(2); bare pyzmq pipeline with the same worker count")
    if "throughput" in z:
        t = z["throughput"]
        L.append("")
        L.append("Throughput, no-op tasks, end to end to the futures")
        L.append("")
        rows = [["", "zq thread", "zq process", "ProcessPool(2)", "bare pyzmq", "zq/pool", "zq/bare"]]
        rows.append([f"submit() loop, N={p['submit_n']:,}", _cell(t.get("submit_thread")),
                     _cell(t.get("submit_process")), _cell(b.get("pool_submit")), _cell(b.get("raw_unbatched")),
                     _x(r.get("submit_thread_vs_pool")), _x(r.get("submit_thread_vs_raw_unbatched"))])
        rows.append([f"map(chunksize=256), N={p['map_n']:,}", _cell(t.get("map256_thread")),
                     _cell(t.get("map256_process")), _cell(b.get("pool_map")), _cell(b.get("raw_batched")),
                     _x(r.get("map256_thread_vs_pool")), _x(r.get("map256_thread_vs_raw_batched"))])
        rows.append(["submit() calls alone (caller)",
                     _cell(t.get("submit_thread"), "submit_only_tasks_per_s"),
                     _cell(t.get("submit_process"), "submit_only_tasks_per_s"), "", "", "", ""])
        L += _table(rows)
        L.append("  (zq/pool and zq/bare: zq thread executor; bare pyzmq: unbatched for submit, batch 256 "
                 "for map.  The bare batched pipeline still packs an id and timestamps per task, while a zq "
                 "map chunk is one task with one envelope per 256 calls, so zq map can beat it.)")
        cpu = (t.get("submit_thread") or {}).get("cpu")
        if cpu:
            L.append("")
            L.append("CPU per process during the submit loop (thread executor): what bounds it")
            L.append("")
            roles = ["client_caller", "client_io", "client_other", "ventilator", "sink", "workers"]
            rows = [["", *roles]]
            rows.append(["CPU us per task", *[f"{cpu['us_per_task'].get(k, 0):,.0f}" for k in roles]])
            rows.append(["CPU % of wall time", *[f"{cpu['util_pct'].get(k, 0):.0f}%" for k in roles]])
            L += _table(rows)
    if z.get("latency") or b.get("pool_latency") or b.get("raw_latency"):
        lt = z.get("latency", {})
        L.append("")
        L.append("Round trip, one no-op task at a time, p50 / p99")
        L.append("")
        rows = [["", "p50 / p99", "vs pool p50", "submit->start", "run", "finish->future"]]
        for ex in ("thread", "process"):
            d = lt.get(ex)
            bd = (d or {}).get("breakdown_mean_us", {})
            rows.append([f"zq ({ex} executor)", _lat(d), _x(r.get(f"p50_{ex}_vs_pool")),
                         *(f"{bd[k]:,.0f} us" if k in bd else "-"
                           for k in ("submit_to_worker_start", "run", "worker_finish_to_future"))])
        rows.append(["ProcessPoolExecutor(2)", _lat(b.get("pool_latency")), "", "", "", ""])
        rows.append(["bare pyzmq, 4 hops (floor)", _lat(b.get("raw_latency")), "", "", "", ""])
        L += _table(rows)
        L.append("  (breakdown: means from the envelope's timestamps; all on one host)")
        roles = ["client_caller", "client_io", "ventilator", "sink", "workers"]
        rows = [["CPU us per round trip", *roles]]
        for ex in ("thread", "process"):
            cpu = (lt.get(ex) or {}).get("cpu")
            if cpu:
                rows.append([f"zq ({ex} executor)", *[f"{cpu['us_per_task'].get(k, 0):,.0f}" for k in roles]])
        if len(rows) > 1:
            L.append("")
            L += _table(rows)
    if z.get("payload"):
        L.append("")
        L.append("Payloads: each task carries one argument and returns len(); thread executor; "
                 "bare pyzmq: the same 4 hops, bytes")
        L.append("")
        bare = {d.get("size"): d for d in _raw_payload_rows(b)}
        rows = [["argument", "N", "MB/s", "tasks/s", "bare MB/s", "zq/bare"]]

        def vs_bare(d: dict) -> list[str]:
            raw_d = bare.get(d.get("size")) if d.get("kind", "bytes") == "bytes" else None
            if not raw_d or not raw_d.get("mb_per_s"):
                return ["", ""]
            return [f"{raw_d['mb_per_s']:,.1f}", _x(_ratio(d.get("mb_per_s"), raw_d["mb_per_s"]))]

        for d in z["payload"]:
            if not isinstance(d, dict):
                continue
            name = f"{fmt_bytes(d.get('size'))} {d.get('kind', '?')}"
            if d.get("error") and "mb_per_s" not in d:
                rows.append([name, f"{d.get('n', 0):,}", "ERROR", d["error"][:60], "", ""])
            else:
                rows.append([name, f"{d['n']:,}", f"{d['mb_per_s']:,.1f}", fmt_rate(d["tasks_per_s"]),
                             *vs_bare(d)])
        a = z.get("args_1mb") or {}
        if a.get("tasks_per_s"):
            rows.append(["1 MB bytes (tasks/s figure)", f"{a['n']:,}", f"{a['mb_per_s']:,.1f}",
                         fmt_rate(a["tasks_per_s"]), *vs_bare({**a, "size": 1_000_000})])
        L += _table(rows)
    if z.get("scaling"):
        L.append("")
        L.append(f"Scaling with workers (thread executor, {out['concurrency']} slot(s) each; "
                 f"{h['cpu_count']} cpu)")
        L.append("")
        rows = [["workers", "zq submit", "zq map256", "bare unbatched", "bare batch 256", "busiest (submit)"]]
        for row in z["scaling"]:
            cpu = (row.get("submit") or {}).get("cpu") or {}
            util = cpu.get("util_pct") or {}
            busiest = max(util.items(), key=lambda kv: kv[1]) if util else None
            rows.append([str(row["workers"]), _cell(row.get("submit")), _cell(row.get("map256")),
                         _cell(row.get("raw_unbatched")), _cell(row.get("raw_batched")),
                         f"{busiest[0]} {busiest[1]:.0f}%" if busiest else "-"])
        L += _table(rows)
        L.append(f"  On {h['cpu_count']} cores every process (client, ventilator, sink, N workers) shares the "
                 "same cores: past 1-2 workers the figure is bounded by total CPU, and by the busiest "
                 "single-threaded process (see 'busiest').")
    m = z.get("memory")
    if m:
        L.append("")
        paced = f"paced in chunks of {m['paced_by']:,}" if m.get("paced_by") else (
            "one burst" if "paced_by" in m else "")
        L.append(f"Memory (VmRSS) with {m.get('n', 0):,} no-op tasks queued (no workers; submitted {paced}), "
                 "then drained")
        L.append("")
        if m.get("rss_queued"):
            rows = [["process", "idle", "queued", "drained", "bytes / queued task"]]
            for role in ("ventilator", "sink", "client"):
                bpt = (m.get("bytes_per_queued_task") or {}).get(role)
                rows.append([role, fmt_bytes(m["rss_idle"].get(role)), fmt_bytes(m["rss_queued"].get(role)),
                             fmt_bytes((m.get("rss_drained") or {}).get(role)),
                             f"{bpt:,.0f}" if bpt is not None else "-"])
            L += _table(rows)
            L.append(f"  submit() calls {fmt_rate(m.get('submit_tasks_per_s'))}; the ventilator held "
                     f"{m.get('held', 0):,} after {m.get('ingest_s', 0):.1f}s "
                     f"({fmt_rate(m.get('ingest_tasks_per_s'))}); drained {m.get('drained', 0):,} by {m.get('drain_workers')} worker(s) x "
                     f"{m.get('drain_concurrency')} slots at {fmt_rate(m.get('drain_tasks_per_s'))}")
        if m.get("error"):
            L.append(f"  ERROR: {m['error']}")
    d = z.get("dashboard")
    if d:
        L.append("")
        L.append("Dashboard: the ventilator's loop lag while zq http is polled")
        L.append("")
        line = dashboard_lag.describe(d)
        L.append(f"  {line}" if line else f"  ERROR: {d.get('error')}")
    if out.get("peers"):
        L.append("")
        L.append("Peers (same no-op workload, each in its own subprocess)")
        L.append("")
        rows = [["peer", "submit", "map", "p50 / p99"]]
        notes = []
        for name, d in out["peers"].items():
            if d.get("skipped"):
                notes.append(f"  {name}: skipped: {d['skipped']}")
            elif d.get("error"):
                notes.append(f"  {name}: ERROR: {d['error']}")
            else:
                rows.append([name, _cell(d.get("submit")), _cell(d.get("map")), _lat(d.get("latency"))])
        if len(rows) > 1:
            L += _table(rows)
        L += notes
    if out.get("errors"):
        L.append("")
        L.append("Errors:")
        L += [f"  - {e}" for e in out["errors"]]
    return "\n".join(L) + "\n"


def _setup_logging(verbose: bool) -> None:
    root = logging.getLogger()
    if not root.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(message)s" if not verbose else
                                         "%(asctime)s %(name)s %(levelname)s %(message)s"))
        root.addHandler(h)
    logging.getLogger("bench").setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        logging.getLogger("zq").setLevel(logging.ERROR)


def _scale(opts: argparse.Namespace) -> int:
    from . import scale

    out = scale.run_scale([int(x) for x in _csv(opts.scale_workers)], opts.scale_hosts, _csv(opts.scale_modes),
                          progress=not opts.no_progress)
    if opts.scale_clusters > 1:
        k, each = opts.scale_clusters, max(1, int(_csv(opts.scale_workers)[-1]) // opts.scale_clusters)
        out["clusters"] = {"one": scale.clusters(1, k * each, 20_000), "split": scale.clusters(k, each, 20_000 // k)}
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
            f.write("\n")
    lim = out["limits"]
    sys.stdout.write(scale.table(out) + "\n\nlimits: " + json.dumps(lim) + "\n")
    if "clusters" in out:
        sys.stdout.write("clusters: " + json.dumps(out["clusters"]) + "\n")
    if opts.scale_plot:
        why = scale.plot(out, opts.scale_plot)
        sys.stdout.write((f"plot: {why}" if why else f"plot: {opts.scale_plot}") + "\n")
    bad = [r for r in out["rows"] if r.get("error") or any((r.get(k) or {}).get("lost") for k in ("noop", "sleep"))]
    return 1 if bad else 0


def main(argv: Optional[list[str]] = None) -> int:
    """Run the benchmark; print the table on stdout; 0 on success, 1 if a figure failed."""
    opts = _parser().parse_args(argv)
    _setup_logging(opts.verbose)
    if opts.scale:
        return _scale(opts)
    runner = Runner(opts)
    out = runner.run()
    text = report(out)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
            f.write("\n")
    sys.stdout.write(text)
    sys.stdout.flush()
    return 1 if out["errors"] else 0
