"""``concurrent.futures.ProcessPoolExecutor(2)`` in the same run (from shared/peers/peer_pool.py
and peer_latency.py): the same no-op workload, submit loop, ``map(chunksize=256)`` and
one-at-a-time round trips.  The pool uses the ``spawn`` context (the benchmark process has
threads); start-up and a warm-up map are outside the timed region.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor, wait

from .util import latency_summary
from .workloads import noop


def _pool(workers: int) -> ProcessPoolExecutor:
    ex = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
    list(ex.map(noop, range(100)))  # start and warm every process
    return ex


def pool_submit(n: int, workers: int = 2) -> dict:
    with _pool(workers) as ex:
        t0 = time.perf_counter()
        fs = [ex.submit(noop, i) for i in range(n)]
        wait(fs)
        dt = time.perf_counter() - t0
    return {"tasks_per_s": n / dt, "n": n, "workers": workers, "seconds": dt}


def pool_map(n: int, chunksize: int = 256, workers: int = 2) -> dict:
    with _pool(workers) as ex:
        t0 = time.perf_counter()
        out = list(ex.map(noop, range(n), chunksize=chunksize))
        dt = time.perf_counter() - t0
    res = {"tasks_per_s": n / dt, "n": n, "chunksize": chunksize, "workers": workers, "seconds": dt}
    if len(out) != n:
        res["error"] = "wrong result"
    return res


def pool_latency(n: int, warmup: int = 20, workers: int = 2) -> dict:
    with _pool(workers) as ex:
        for _ in range(warmup):
            ex.submit(noop, 1).result()
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            ex.submit(noop, 1).result()
            samples.append(time.perf_counter() - t0)
    return {**latency_summary(samples), "workers": workers}
