"""When a worker leaves by itself: ``zq worker --death-timeout S`` and ``--idle-timeout S``.

Batch jobs (Slurm, ``zq.SlurmWorkers``) must not burn an allocation: a worker whose
ventilator has been unreachable for ``death_timeout`` seconds, or that has held no task for
``idle_timeout`` seconds, stops the way SIGTERM stops it (hand back what it holds, deliver
its results, exit 0).  The worker asks :meth:`Lifetime.why_stop` once per tick.
"""

from __future__ import annotations

from typing import Optional


class Lifetime:
    def __init__(self, death_timeout: Optional[float], idle_timeout: Optional[float], now: float) -> None:
        for name, value in (("death_timeout", death_timeout), ("idle_timeout", idle_timeout)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 seconds, not {value!r}")
        self.death_timeout = death_timeout
        self.idle_timeout = idle_timeout
        self.started = now
        self.idle_since: Optional[float] = now

    def why_stop(self, now: float, ventilator_heard: Optional[float], busy: bool) -> Optional[str]:
        """A one-line reason to stop now, or None.  ``ventilator_heard``: monotonic time the
        ventilator was last heard from (None: never); ``busy``: a task is held or running."""
        if self.death_timeout is not None:
            silent = now - (ventilator_heard if ventilator_heard is not None else self.started)
            if silent > self.death_timeout:
                what = "unreachable" if ventilator_heard is not None else "never reached"
                return (f"the ventilator has been {what} for {silent:.0f}s "
                        f"(--death-timeout {self.death_timeout:g}): stopping")
        if busy:
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = now
        if self.idle_timeout is not None and self.idle_since is not None \
                and now - self.idle_since > self.idle_timeout:
            return f"no task for {now - self.idle_since:.0f}s (--idle-timeout {self.idle_timeout:g}): stopping"
        return None
