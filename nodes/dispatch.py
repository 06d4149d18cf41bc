"""Which queued task may go next: the ventilator's dispatch policy, in one place.

    Ventilator._dispatch ── for each worker with credit ──▶ Dispatch.take(queue, n)
                                                              │
        queue "default": priority 10 ─ deque of ids (FIFO) ◀──┤ highest priority first;
                         priority  0 ─ deque of ids        ◀──┘ skips (and keeps in place)
        delayed: heap of (monotonic time, id)  ── due ──▶      tasks that may not run yet:
                                                               paused queue, disabled name,
                                                               name at its concurrency
                                                               limit, name over its rate

A task handed back (lost worker, retry, graceful stop) goes to the front of
its priority level.  Nothing here touches sockets; ``now`` is passed in, so
tests can drive it directly.
"""

from __future__ import annotations

import collections
import heapq
import time
from typing import Callable, Iterable, Optional

from zq._limits import parse_rate
from zq.protocol import TaskSpec

SCAN_LIMIT = 2000  # blocked tasks looked past per take(), so a blocked head cannot starve a queue


def registry_opts(info: dict) -> dict:
    """Task options (limits, rate, priority) a worker announced for a task name."""
    opts: dict = {}
    if isinstance(info.get("max_concurrency"), int):
        opts["limit"] = info["max_concurrency"]
    if isinstance(info.get("rate_limit"), str):
        opts["rate"] = info["rate_limit"]
    if isinstance(info.get("priority"), int) and info["priority"]:
        opts["prio"] = info["priority"]
    if info.get("async"):
        opts["async"] = True
    return opts


class TokenBucket:
    def __init__(self, count: float, period: float, now: float) -> None:
        self.capacity = count
        self.rate = count / period
        self.tokens = count
        self.at = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Dispatch:
    def __init__(self) -> None:
        self.queues: dict[str, dict[int, collections.deque[str]]] = {}
        self.delayed: list[tuple[float, str]] = []
        self.paused: set[str] = set()
        self.disabled: set[str] = set()
        self.limits: dict[str, int] = {}
        self.running_by_name: collections.Counter[str] = collections.Counter()
        self.rates: dict[str, TokenBucket] = {}
        self._rate_specs: dict[str, str] = {}

    # -- queueing ---------------------------------------------------------------------
    def learn(self, spec: TaskSpec, now: float) -> None:
        """Remember the per-name settings a task carries (concurrency limit, rate)."""
        opts = spec.opts
        if not opts:
            return
        limit = opts.get("limit")
        if isinstance(limit, int) and limit > 0:
            self.limits[spec.name] = limit
        rate = opts.get("rate")
        if isinstance(rate, str) and self._rate_specs.get(spec.name) != rate:
            try:
                count, period = parse_rate(rate)
            except ValueError:
                return
            self._rate_specs[spec.name] = rate
            self.rates[spec.name] = TokenBucket(count, period, now)

    @staticmethod
    def priority(spec: TaskSpec) -> int:
        p = spec.opts.get("prio", 0) if spec.opts else 0
        return p if isinstance(p, int) else 0

    def push(self, spec: TaskSpec, front: bool = False) -> None:
        levels = self.queues.setdefault(spec.queue, {})
        prio = self.priority(spec)
        q = levels.get(prio)
        if q is None:
            q = levels[prio] = collections.deque()
            # keep levels ordered highest first
            self.queues[spec.queue] = dict(sorted(levels.items(), key=lambda kv: -kv[0]))
        if front:
            q.appendleft(spec.task_id)
        else:
            q.append(spec.task_id)

    def push_later(self, task_id: str, when: float) -> None:
        heapq.heappush(self.delayed, (when, task_id))

    def due(self, now: float) -> list[str]:
        out = []
        while self.delayed and self.delayed[0][0] <= now:
            out.append(heapq.heappop(self.delayed)[1])
        return out

    def remove(self, spec: TaskSpec) -> None:
        q = self.queues.get(spec.queue, {}).get(self.priority(spec))
        if q is not None:
            try:
                q.remove(spec.task_id)
                return
            except ValueError:
                pass
        before = len(self.delayed)
        self.delayed = [(t, i) for t, i in self.delayed if i != spec.task_id]
        if len(self.delayed) != before:
            heapq.heapify(self.delayed)

    def waiting(self, queue: str) -> int:
        return sum(len(q) for q in self.queues.get(queue, {}).values())

    def names_with_work(self) -> Iterable[str]:
        return [name for name, levels in self.queues.items() if any(levels.values())]

    # -- what may run -----------------------------------------------------------------
    def held_back(self, spec: TaskSpec) -> bool:
        """Paused queue or disabled name: it waits, shown as PAUSED."""
        return spec.queue in self.paused or spec.name in self.disabled

    def _may_start(self, spec: TaskSpec, now: float) -> bool:
        if spec.name in self.disabled:
            return False
        limit = self.limits.get(spec.name)
        if limit is not None and self.running_by_name[spec.name] >= limit:
            return False
        bucket = self.rates.get(spec.name)
        if bucket is not None and not bucket.take(now):
            return False
        return True

    def take(self, queue: str, n: int, lookup: Callable[[str], Optional[TaskSpec]],
             now: Optional[float] = None) -> list[TaskSpec]:
        """Up to ``n`` tasks of ``queue`` that may start now, highest priority first, FIFO
        within a priority; blocked tasks keep their places."""
        if queue in self.paused:
            return []
        now = time.monotonic() if now is None else now
        out: list[TaskSpec] = []
        for q in self.queues.get(queue, {}).values():
            skipped: list[str] = []
            scanned = 0
            while q and len(out) < n and scanned < SCAN_LIMIT:
                tid = q.popleft()
                spec = lookup(tid)
                if spec is None:
                    continue  # stale: cancelled or already running
                if not self._may_start(spec, now):
                    skipped.append(tid)
                    scanned += 1
                    continue
                out.append(spec)
                self.running_by_name[spec.name] += 1
            q.extendleft(reversed(skipped))
            if len(out) >= n:
                break
        return out

    def finished(self, spec: TaskSpec) -> None:
        """A task taken by ``take`` is no longer running (done, lost, handed back)."""
        c = self.running_by_name
        c[spec.name] -= 1
        if c[spec.name] <= 0:
            del c[spec.name]
