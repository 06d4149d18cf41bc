"""Periodic tasks: one scheduler per cluster, in the ventilator.

Workers started with ``--import MODULE`` announce the ``@zq.task(every=..., cron=...)``
tasks they can run; the ventilator's scheduler fires each schedule's *slots*:

* ``every=S``: slots at ``start + k*S`` (``start`` defaults to the Unix epoch, so the
  slots are the same whichever ventilator computes them);
* ``cron="*/5 * * * *"`` (croniter) in the task's time zone ``tz`` (default UTC).

A slot fires once: it becomes a task whose id is ``sched:NAME:SLOT``, and the
last fired slot is kept in the journal, so a restarted ventilator neither
fires a slot twice nor replays the slots it missed while down (it fires the
latest missed one, once).  ``jitter`` delays each firing by a pseudo-random
fraction of it, the same for a given slot; ``end`` and ``max_runs`` stop a
schedule.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import sqlite3
import time
from typing import Any, Optional

log = logging.getLogger("zq.scheduler")

SCHEMA = "CREATE TABLE IF NOT EXISTS schedules (name TEXT PRIMARY KEY, last_slot REAL, runs INTEGER)"


class Schedule:
    def __init__(self, name: str, queue: str, info: dict) -> None:
        self.name = name
        self.queue = queue
        self.every: Optional[float] = info.get("every")
        self.cron: Optional[str] = info.get("cron")
        self.tz: str = info.get("tz") or "UTC"
        self.jitter: float = float(info.get("jitter") or 0.0)
        self.start: float = float(info.get("start") or 0.0)
        self.end: Optional[float] = info.get("end")
        self.max_runs: Optional[int] = info.get("max_runs")
        if (self.every is None) == (self.cron is None):
            raise ValueError(f"schedule {name}: exactly one of every= and cron= is needed")
        if self.every is not None and self.every <= 0:
            raise ValueError(f"schedule {name}: every must be > 0 seconds")
        if self.cron is not None:
            from croniter import croniter

            if not croniter.is_valid(self.cron):
                raise ValueError(f"schedule {name}: invalid cron expression {self.cron!r}")
        self.last_slot: Optional[float] = None
        self.runs = 0

    def latest_slot(self, now: float) -> Optional[float]:
        """The latest slot at or before ``now`` (None before ``start``)."""
        if now < self.start:
            return None
        if self.every is not None:
            return self.start + math.floor((now - self.start) / self.every) * self.every
        from zoneinfo import ZoneInfo

        from croniter import croniter

        base = dt.datetime.fromtimestamp(now, ZoneInfo(self.tz))
        it = croniter(self.cron, base + dt.timedelta(microseconds=1))
        slot = it.get_prev(float)
        return slot if slot >= self.start else None

    def jitter_for(self, slot: float) -> float:
        if not self.jitter:
            return 0.0
        h = hashlib.blake2b(f"{self.name}:{slot}".encode(), digest_size=8).digest()
        return self.jitter * int.from_bytes(h, "big") / 2.0**64

    def next_slot(self, now: float) -> Optional[float]:
        """The first slot after ``now`` (None when there is none)."""
        if now < self.start:
            if self.every is not None:
                return self.start
            now = self.start - 1e-6
        if self.every is not None:
            return self.start + (math.floor((now - self.start) / self.every) + 1) * self.every
        from zoneinfo import ZoneInfo

        from croniter import croniter

        return float(croniter(self.cron, dt.datetime.fromtimestamp(now, ZoneInfo(self.tz))).get_next(float))

    def next_run(self, now: float) -> Optional[float]:
        """When it fires next (its jitter included): a slot come and not fired yet, else the
        next one; None once ``end`` or ``max_runs`` stopped it."""
        if self.max_runs is not None and self.runs >= self.max_runs:
            return None
        slot = self.latest_slot(now)
        if slot is None or (self.last_slot is not None and slot <= self.last_slot):
            slot = self.next_slot(now)
        if slot is None or (self.end is not None and slot > self.end):
            return None
        return slot + self.jitter_for(slot)

    def due(self, now: float) -> Optional[float]:
        """The slot to fire now, if any (and record it as fired)."""
        if self.max_runs is not None and self.runs >= self.max_runs:
            return None
        slot = self.latest_slot(now)
        if slot is None or (self.end is not None and slot > self.end):
            return None
        if self.last_slot is not None and slot <= self.last_slot:
            return None
        if now < slot + self.jitter_for(slot):
            return None
        self.last_slot = slot
        self.runs += 1
        return slot


class Scheduler:
    def __init__(self, db: Optional[sqlite3.Connection] = None) -> None:
        self.db = db
        self.schedules: dict[str, Schedule] = {}
        if db is not None:
            db.execute(SCHEMA)

    def register(self, name: str, queue: str, info: dict) -> None:
        """Add a schedule announced by a worker (the first announcement wins)."""
        if name in self.schedules:
            return
        try:
            s = Schedule(name, queue, info)
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("ignoring schedule of %s: %s", name, exc)
            return
        if self.db is not None:
            row = self.db.execute("SELECT last_slot, runs FROM schedules WHERE name = ?", (name,)).fetchone()
            if row is not None:
                s.last_slot, s.runs = row
        self.schedules[name] = s
        log.info("schedule %s registered (%s)", name, f"every {s.every:g}s" if s.every else f"cron {s.cron}")

    def due(self, now: float) -> list[tuple[str, str, float]]:
        """(name, queue, slot) for every schedule with a slot to fire now."""
        out = []
        for s in self.schedules.values():
            slot = s.due(now)
            if slot is not None:
                out.append((s.name, s.queue, slot))
                if self.db is not None:
                    self.db.execute("INSERT OR REPLACE INTO schedules VALUES (?, ?, ?)", (s.name, slot, s.runs))
        return out

    def describe(self, now: Optional[float] = None) -> list[dict]:
        """Every schedule, with its next run (Unix seconds, jitter included; None: no more)."""
        t = time.time() if now is None else now
        out = []
        for s in self.schedules.values():
            try:
                nxt = s.next_run(t)
            except Exception:  # noqa: BLE001 (a schedule croniter cannot step shows no next run)
                nxt = None
            out.append({"name": s.name, "queue": s.queue, "every": s.every, "cron": s.cron, "tz": s.tz,
                        "start": s.start, "end": s.end, "jitter": s.jitter, "last_slot": s.last_slot,
                        "runs": s.runs, "max_runs": s.max_runs, "next_run": nxt})
        return out


def slot_task(name: str, queue: str, slot: float, info: dict) -> Any:
    """The task a schedule's slot fires: by name, with a deterministic id (never twice);
    ``info``: what the workers said of the task (retries, timeout, options)."""
    from zq import protocol as P
    from zq.serialize import pack_args

    from .dispatch import registry_opts

    opts: dict = {"slot": slot}
    opts.update(registry_opts(info))
    return P.TaskSpec(f"sched:{name}:{slot:.3f}", name, queue, P.BY_NAME, "", True,
                      int(info.get("retries") or 0), info.get("timeout"), time.time(), opts=opts,
                      args=pack_args((), {}))
