"""What the dashboard's Overview shows, sampled by the web process at a fixed pace.

Every ``interval`` seconds one task asks the cluster for ``stats()`` and the count of
active tasks in each state (indexed counts: the ventilator visits no task record), every
10 s for the counts of finished ones, and every other sample for the newest page of
succeeded tasks (their latency).  Pages read the
latest sample, so however many browsers poll, the cluster sees one query per interval
(a page can never stall the coordinator: Dask #4055).

Throughput is the difference of the ventilator's ``done`` counter (and the sink's
``results``) between successive samples; latency p50/p99 is submitted -> finished of
the (at most 200 newest) tasks that succeeded in the last minute.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any, Optional

from .gateway import ApiError, Gateway

log = logging.getLogger("zq.http")

ACTIVE = ("QUEUED", "PAUSED", "RESERVED", "RUNNING", "RETRYING")
FINISHED = ("SUCCESS", "FAILED", "CANCELED")
STATES = ACTIVE + FINISHED
# Active tasks are counted from the ventilator's task-table index (no record visited); a
# count of finished ones in a --journal history visits every matching row in SQLite, so
# those are counted at most this often.
FINISHED_COUNT_EVERY = 10.0
LATENCY_PAGE = 200  # finished tasks read for the latency percentiles (one page, never a scan)


def percentile(values: list[float], q: float) -> Optional[float]:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


class Sampler:
    def __init__(self, gateway: Gateway, interval: float = 1.0, keep: float = 600.0,
                 latency_every: int = 2, latency_window: float = 60.0) -> None:
        self.gw = gateway
        self.interval = interval
        self.latency_every = latency_every
        self.latency_window = latency_window
        self.latest: Optional[dict] = None     # the last stats() answer
        self.counts: dict[str, int] = {}       # tasks by state
        self.error: Optional[str] = None       # why the last sample failed (None: it did not)
        self.sampled_at: Optional[float] = None
        self.series: collections.deque = collections.deque(maxlen=max(2, int(keep / interval)))
        self._prev: Optional[tuple[float, float, float]] = None
        self._n = 0
        self._finished_at = float("-inf")  # monotonic time finished tasks were last counted
        self._wake = asyncio.Event()

    def _counts(self, states: tuple[str, ...]) -> dict[str, int]:
        return {s: self.gw.client.count_tasks(state=s) for s in states}

    def _latencies(self, since: float) -> list[float]:
        rows = self.gw.client.list_tasks(state="SUCCESS", limit=LATENCY_PAGE)
        return [r["finished_at"] - r["submitted_at"] for r in rows
                if isinstance(r.get("finished_at"), (int, float)) and r["finished_at"] > since
                and isinstance(r.get("submitted_at"), (int, float))]

    async def sample(self) -> None:
        now = time.time()
        try:
            stats = await self.gw.call(self.gw.client.stats)
            mono = time.monotonic()
            states = ACTIVE
            if mono - self._finished_at >= FINISHED_COUNT_EVERY:
                states = STATES
            counts = {**self.counts, **await self.gw.call(self._counts, states)}
            if states is STATES:
                self._finished_at = mono
            lat: Optional[list[float]] = None
            if self._n % self.latency_every == 0:
                lat = await self.gw.call(self._latencies, now - self.latency_window)
        except ApiError as exc:
            self.error = exc.message
            log.warning("dashboard sample failed: %s", exc.message)
            return
        self._n += 1
        self.error = None
        self.latest, self.counts, self.sampled_at = stats, counts, now
        done = float((stats.get("ventilator") or {}).get("counters", {}).get("done", 0))
        results = float((stats.get("sink") or {}).get("counters", {}).get("results", 0))
        point: dict[str, Any] = {"t": now, "done_per_s": None, "results_per_s": None,
                                 "lag": ((stats.get("ventilator") or {}).get("loop") or {}).get("lag")}
        if self._prev is not None and now > self._prev[0]:
            dt = now - self._prev[0]
            point["done_per_s"] = max(0.0, (done - self._prev[1]) / dt)
            point["results_per_s"] = max(0.0, (results - self._prev[2]) / dt)
        if lat is not None:
            point["latency_p50"] = percentile(lat, 0.5)
            point["latency_p99"] = percentile(lat, 0.99)
            point["latency_n"] = len(lat)
        self._prev = (now, done, results)
        self.series.append({k: round(v, 4) if isinstance(v, float) and k != "t" else v for k, v in point.items()})

    async def run(self) -> None:
        """Sample until cancelled."""
        while True:
            started = time.monotonic()
            await self.sample()
            self._wake.clear()
            left = self.interval - (time.monotonic() - started)
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.05, left))
            except asyncio.TimeoutError:
                pass

    def poke(self) -> None:
        """Sample again now (after an action, so the page shows its effect at once)."""
        self._wake.set()
