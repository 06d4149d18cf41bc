"""The ventilator's loop lag while ``zq http``'s dashboard is polled (``--only dashboard``).

    1. a cluster with one worker runs ``finished_n`` no-op tasks (the history holds them);
    2. ``queued_n`` tasks are queued on a queue no worker serves (they stay QUEUED);
    3. for ``window`` seconds, the ventilator's loop lag is sampled once a second
       (``stats()["ventilator"]["loop"]["lag"]``: its longest turn over the last 1-2 s);
    4. ``zq http`` starts and ``pollers`` threads poll its dashboard routes (the overview,
       task pages with filters and deep offsets, totals, schedules) as fast as it answers,
       while the lag is sampled again for ``window`` seconds.

Reported: p50 and max of the lag samples without and with the polling, and the
dashboard requests answered per second.  The full run: 1,000,000 queued, 100,000
finished; ``--quick``: 100,000 and 10,000.
"""

from __future__ import annotations

import json
import logging
import statistics
import threading
import time
import urllib.request
from typing import Any, Optional

from zq._embedded import NodeProcess

from .util import Deadline
from .workloads import noop
from .zqbench import Cluster

log = logging.getLogger("bench.dashboard")

QUEUE = "bench-held"  # no worker serves it: its tasks stay queued
CHUNK = 50_000


def _lag_samples(client: Any, seconds: float) -> list[float]:
    out: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        out.append(float(client.stats()["ventilator"]["loop"]["lag"]))
        time.sleep(max(0.0, 1.0 - (time.monotonic() - t)))  # one sample a second (a pace, not a sync)
    return out


def _summary(samples: list[float]) -> dict:
    if not samples:
        return {"samples": 0}
    return {"samples": len(samples), "lag_p50_ms": 1000 * statistics.median(samples),
            "lag_max_ms": 1000 * max(samples)}


def _wait_count(client: Any, want: int, deadline: Deadline, **filters: Any) -> int:
    n = -1
    while not deadline.expired():
        n = client.count_tasks(**filters)
        if n >= want:
            return n
        time.sleep(0.2)  # polling the ventilator
    return n


def _routes(now: float, queued_n: int, finished_n: int) -> list[str]:
    return ["/api/overview?series=false", "/api/overview", "/api/tasks?limit=50",
            f"/api/tasks?state=SUCCESS&limit=50&offset={finished_n // 2}",
            f"/api/tasks?queue={QUEUE}&limit=50&offset={queued_n // 2}",
            f"/api/tasks?name=noop&since={now - 3600}&until={now + 3600}&limit=50",
            "/api/tasks?state=FAILED&limit=50", "/api/schedules", "/status"]


def _poll(url: str, routes: list[str], stop: threading.Event, stats: dict, lock: threading.Lock) -> None:
    i = 0
    while not stop.is_set():
        path = routes[i % len(routes)]
        i += 1
        t = time.perf_counter()
        try:
            with urllib.request.urlopen(url + path, timeout=30) as r:
                json.loads(r.read())
            ok = True
        except Exception as exc:  # noqa: BLE001 (counted and reported)
            log.debug("poll %s: %s", path, exc)
            ok = False
        dt = time.perf_counter() - t
        with lock:
            stats["requests" if ok else "errors"] += 1
            stats["seconds"] += dt
            stats["worst_s"] = max(stats["worst_s"], dt)


def dashboard(queued_n: int, finished_n: int, pollers: int = 4, window: float = 15.0,
              timeout: float = 1800.0, progress: Any = None) -> dict:
    deadline = Deadline(timeout)
    out: dict[str, Any] = {"queued": queued_n, "finished": finished_n, "pollers": pollers, "window_s": window}
    with Cluster(workers=1, executor="thread", concurrency=8) as c:
        client = c.client
        t0 = time.perf_counter()
        for lo in range(0, finished_n, CHUNK):
            fs = [client.submit(noop, i) for i in range(lo, min(finished_n, lo + CHUNK))]
            for f in fs:
                f.result(max(1.0, deadline.left()))
            if progress is not None:
                progress.note(f"dashboard: {min(finished_n, lo + CHUNK):,}/{finished_n:,} finished")
        out["finish_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for lo in range(0, queued_n, CHUNK):
            hi = min(queued_n, lo + CHUNK)
            for i in range(lo, hi):
                client.submit_task(noop, (i,), queue=QUEUE)
            _wait_count(client, hi, deadline, queue=QUEUE)
            if progress is not None:
                progress.note(f"dashboard: {hi:,}/{queued_n:,} queued")
        out["queue_s"] = time.perf_counter() - t0
        out["held"] = client.count_tasks(queue=QUEUE)
        out["history"] = client.count_tasks(state="SUCCESS")
        if progress is not None:
            progress.note("dashboard: lag without polling")
        time.sleep(2.0)  # the lag sample covers 1-2 s: not the ingestion's turns (a pace, not a sync)
        out["idle"] = _summary(_lag_samples(client, window))
        eps = c.local.endpoints
        web = NodeProcess(["http", "--ventilator", eps["clients"], "--sink", eps["sink"], "--port", "0"],
                          name="http")
        web.start()
        try:
            url = web.wait_ready(60)["url"]
            stop, lock = threading.Event(), threading.Lock()
            polled: dict = {"requests": 0, "errors": 0, "seconds": 0.0, "worst_s": 0.0}
            routes = _routes(time.time(), queued_n, finished_n)
            threads = [threading.Thread(target=_poll, args=(url, routes, stop, polled, lock), daemon=True)
                       for _ in range(pollers)]
            for t in threads:
                t.start()
            if progress is not None:
                progress.note(f"dashboard: lag with {pollers} pollers")
            t0 = time.perf_counter()
            out["polled"] = _summary(_lag_samples(client, window))
            elapsed = time.perf_counter() - t0
            stop.set()
            for t in threads:
                t.join(35)
            out["http"] = {"requests": polled["requests"], "errors": polled["errors"],
                           "requests_per_s": polled["requests"] / elapsed if elapsed > 0 else None,
                           "mean_ms": 1000 * polled["seconds"] / max(1, polled["requests"] + polled["errors"]),
                           "worst_ms": 1000 * polled["worst_s"]}
        finally:
            web.stop(20)
        vent = client.stats()["ventilator"]
        out["lag_max_since_start_ms"] = 1000 * vent["loop"]["lag_max"]
        out["admin_records_read"] = vent.get("admin_records_read")
    return out


def describe(r: dict) -> Optional[str]:
    """One line for the report."""
    if not r or r.get("error"):
        return None
    i, p, h = r.get("idle", {}), r.get("polled", {}), r.get("http", {})
    return (f"loop lag p50/max {i.get('lag_p50_ms', 0):.1f}/{i.get('lag_max_ms', 0):.1f} ms idle, "
            f"{p.get('lag_p50_ms', 0):.1f}/{p.get('lag_max_ms', 0):.1f} ms with {r['pollers']} pollers "
            f"({h.get('requests_per_s') or 0:.0f} dashboard requests/s), {r['held']:,} queued, "
            f"{r['history']:,} finished")
