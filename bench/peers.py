"""Peer systems on the same no-op workload (logic of shared/peers/peer_*.py).

Each peer runs in its own subprocess (``python -m zq.bench.peers NAME N LAT_N``) so that
its runtime (Ray's raylet, dask's scheduler, ipyparallel's controller) cannot
disturb the rest of the run; the child prints one JSON line.  A peer that is not
importable is skipped with a note -- nothing is installed.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
import time
from typing import Any, Callable

log = logging.getLogger("bench.peers")

KNOWN = {"dask": "distributed", "ray": "ray", "ipyparallel": "ipyparallel"}


def available(name: str) -> bool:
    mod = KNOWN.get(name)
    return mod is not None and importlib.util.find_spec(mod) is not None


def run(name: str, n: int, lat_n: int, timeout: float) -> dict:
    """Run one peer in a subprocess; ``{"skipped": why}`` when it cannot run."""
    if name not in KNOWN:
        return {"skipped": f"unknown peer {name!r} (known: {', '.join(KNOWN)})"}
    if not available(name):
        return {"skipped": f"{name} is not installed in this environment (not installed by the bench)"}
    try:
        cp = subprocess.run([sys.executable, "-m", "zq.bench.peers", name, str(n), str(lat_n)],
                            capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"{name} did not finish in {timeout:.0f}s"}
    for line in reversed(cp.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (cp.stderr or "").strip().splitlines()[-5:]
    return {"error": f"{name} exited {cp.returncode}: " + " | ".join(tail)}


# ----------------------------------------------------------------------------- in the child


from .workloads import noop as _noop  # noqa: E402  (importable by the peers' workers)


def _lat(call: Callable[[], Any], n: int, warmup: int = 20) -> dict:
    from .util import latency_summary

    for _ in range(warmup):
        call()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        ts.append(time.perf_counter() - t0)
    return latency_summary(ts)


def _dask(n: int, lat_n: int) -> dict:
    from dask.distributed import Client, LocalCluster, wait

    out: dict[str, Any] = {"version": __import__("dask").__version__}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl, \
            Client(cl) as c:
        wait(c.map(_noop, range(100), pure=False))
        t0 = time.perf_counter()
        wait(c.map(_noop, range(n), pure=False))
        out["map"] = {"tasks_per_s": n / (time.perf_counter() - t0), "n": n}
        t0 = time.perf_counter()
        fs = [c.submit(_noop, i, pure=False) for i in range(n // 2)]
        wait(fs)
        out["submit"] = {"tasks_per_s": (n // 2) / (time.perf_counter() - t0), "n": n // 2}
        out["latency"] = _lat(lambda: c.submit(_noop, 1, pure=False).result(), lat_n)
    return out


def _ray(n: int, lat_n: int) -> dict:
    import ray

    out: dict[str, Any] = {"version": ray.__version__}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        f = ray.remote(_noop)
        ray.get([f.remote(i) for i in range(200)])
        t0 = time.perf_counter()
        ray.get([f.remote(i) for i in range(n)])
        out["submit"] = {"tasks_per_s": n / (time.perf_counter() - t0), "n": n}
        out["latency"] = _lat(lambda: ray.get(f.remote(1)), lat_n)
    finally:
        ray.shutdown()
    return out


def _ipyparallel(n: int, lat_n: int) -> dict:
    import ipyparallel as ipp

    out: dict[str, Any] = {"version": ipp.__version__}
    with ipp.Cluster(n=2, log_level=40) as rc:
        v = rc.load_balanced_view()
        v.map_sync(_noop, range(20))
        t0 = time.perf_counter()
        ars = [v.apply_async(_noop, i) for i in range(n)]
        [a.get() for a in ars]
        out["submit"] = {"tasks_per_s": n / (time.perf_counter() - t0), "n": n}
        t0 = time.perf_counter()
        v.map_sync(_noop, range(n * 10), chunksize=256)
        out["map"] = {"tasks_per_s": n * 10 / (time.perf_counter() - t0), "n": n * 10, "chunksize": 256}
        out["latency"] = _lat(lambda: v.apply_async(_noop, 1).get(), lat_n)
    return out


RUNNERS = {"dask": _dask, "ray": _ray, "ipyparallel": _ipyparallel}


def _child(argv: list[str]) -> int:
    name, n, lat_n = argv[0], int(argv[1]), int(argv[2])
    try:
        res = RUNNERS[name](n, lat_n)
    except Exception as exc:
        res = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(res) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
