"""The ventilator's own health: how late its loop runs, and whether its results can
reach the sink.

    Ventilator.loop ── each turn ──▶ LoopLag.turn(start, end)    stats()["loop"]
    SinkLink (DEALER -> sink) ── anything heard ──▶ SinkWatch.heard
    Ventilator._tick ──▶ SinkWatch.check: silent past heartbeat_timeout = down:
        an ERROR log line (again every ERROR_EVERY s), stats()["sink_link"] (zq status),
        and to each client whose result waits in the SinkLink: ERROR {code: unreachable,
        ids, node: "sink", endpoint, down_for} every heartbeat interval; the client fails
        those futures with NodeUnreachable once down_for reaches its unreachable_timeout.

The ventilator sends the sink only the results it decides (WorkerLost after a third
lost worker, a task cancelled while queued, a function it no longer holds); a worker's
results go through the worker's own link.  A ventilator given the wrong sink endpoint
(or none: the loopback default) would otherwise hold those results silently forever.
"""

from __future__ import annotations

import logging
from typing import Iterable, Optional

from zq import protocol as P
from zq.protocol import ResultRow

log = logging.getLogger("zq.ventilator")

ERROR_EVERY = 30.0  # seconds between repeated error lines while the sink stays unreachable
NOTICE_IDS = 10_000  # task ids per notice message


class LoopLag:
    """How long the loop's turns take (poll wait excluded): the longest turn of the
    current and of the previous ``window`` seconds.  A turn is how late the loop can
    be to anything (a heartbeat, a dispatch): ``zq status`` and dashboards watch it."""

    def __init__(self, window: float = 1.0) -> None:
        self.window = window
        self.current = 0.0  # longest turn in this window
        self.previous = 0.0  # longest turn in the window before
        self.worst = 0.0  # longest turn since start
        self.turns = 0
        self._window_end = 0.0

    def turn(self, start: float, end: float) -> None:
        took = end - start
        if end >= self._window_end:
            self.previous, self.current = (self.current if end - self._window_end < self.window else 0.0), 0.0
            self._window_end = end + self.window
        if took > self.current:
            self.current = took
            if took > self.worst:
                self.worst = took
        self.turns += 1

    def recent(self) -> float:
        return max(self.current, self.previous)


class SinkWatch:
    """Is the sink reachable from here?  ``heard(now)`` on anything from it."""

    def __init__(self, endpoint: str, timeout: float, interval: float, now: float) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.interval = interval
        self.started = now
        self.last_heard: Optional[float] = None
        self.down = False
        self._next_error = 0.0
        self._next_notice = 0.0

    def heard(self, now: float) -> None:
        self.last_heard = now

    def silent(self, now: float) -> float:
        return now - (self.last_heard if self.last_heard is not None else self.started)

    def check(self, now: float, waiting: int) -> bool:
        """Update up/down (logging the changes); True while the sink is unreachable."""
        silent = self.silent(now)
        if silent <= self.timeout:
            if self.down:
                log.warning("sink %s reachable again after %.1fs", self.endpoint, silent)
                self.down = False
            return False
        if not self.down or now >= self._next_error:
            self.down = True
            self._next_error = now + ERROR_EVERY
            never = " (never heard from it: is --sink / [sink] endpoint right?)" if self.last_heard is None else ""
            log.error("sink %s unreachable from this ventilator for %.0fs%s: %d result(s) it must deliver "
                      "(WorkerLost, cancellations) wait; their clients get NodeUnreachable",
                      self.endpoint, silent, never, waiting)
        return True

    def notices(self, rows: Iterable[ResultRow], now: float, ventilator: str) -> dict[bytes, list[list]]:
        """Per client, the messages telling it which of its results cannot reach the sink
        (at most once per interval)."""
        if now < self._next_notice:
            return {}
        self._next_notice = now + self.interval
        by_client: dict[str, list[str]] = {}
        for r in rows:
            if r.client:  # "" is nobody (a schedule's slot)
                by_client.setdefault(r.client, []).append(r.task_id)
        silent = self.silent(now)
        msg = (f"the sink at {self.endpoint}, as the ventilator at {ventilator} sees it, has been "
               f"unreachable for {silent:.0f}s: the ventilator cannot deliver this task's result")
        return {client.encode(): [P.unreachable_message(ids[i:i + NOTICE_IDS], "sink", self.endpoint, silent, msg)
                                  for i in range(0, len(ids), NOTICE_IDS)]
                for client, ids in by_client.items()}

    def stats(self, now: float, waiting: int) -> dict:
        return {"endpoint": self.endpoint, "up": not self.down and self.silent(now) <= self.timeout,
                "silent": round(self.silent(now), 3), "heard": self.last_heard is not None,
                "waiting": waiting}
