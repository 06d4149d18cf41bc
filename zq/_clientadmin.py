"""Admin calls of ``zq.Client``: listing and counting tasks, history, queues and task
names.  Each is one request to the ventilator.

``Admin`` is a part of the client that uses it through three callables only: ``request``
(one round trip to a node), ``final_state`` (how a task of this client ended, if it saw
it end) and ``known_progress`` (the progress its future already holds)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, Callable, Optional, Union

from . import protocol as P
from .context import Progress
from .envelope import TaskState


def _since(value: Union[None, float, dt.datetime]) -> Optional[float]:
    if value is None:
        return None
    return value.timestamp() if isinstance(value, dt.datetime) else float(value)


class Admin:
    def __init__(self, request: Callable[..., Any], final_state: Callable[[str], Optional[TaskState]],
                 known_progress: Callable[[str], Optional[Progress]]) -> None:
        self._request = request
        self._final_state = final_state
        self._known_progress = known_progress

    def _filters(self, state: Any, queue: Optional[str], name: Optional[str], since: Any,
                 forgotten: bool, until: Any = None, parent: Optional[str] = None) -> dict:
        h: dict = {"queue": queue, "name": name, "since": _since(since), "forgotten": forgotten}
        if state is not None:
            h["state"] = TaskState(state).value
        if until is not None:
            h["until"] = _since(until)
        if parent is not None:
            h["parent"] = parent
        return h

    def list_tasks(self, *, state: "TaskState | str | None" = None, queue: Optional[str] = None,
                   name: Optional[str] = None, since: "float | dt.datetime | None" = None,
                   limit: Optional[int] = 100, offset: int = 0, forgotten: bool = False,
                   until: "float | dt.datetime | None" = None, parent: Optional[str] = None) -> list[dict]:
        """Tasks known to the ventilator, newest first: queued, running and (from its
        history) finished ones.  Each is a dict: task_id, name, queue, state, submitted_at,
        finished_at, attempts, worker, error, parent, forgotten (and progress when running).
        ``name``: ``mod.fn``, or ``fn`` for that function of any module; ``since``/``until``:
        a time range (finished, or submitted for unfinished tasks); ``parent``: its follow-ups."""
        h = self._filters(state, queue, name, since, forgotten, until, parent)
        return self._request("ventilator", "list", {**h, "limit": limit, "offset": offset})

    def count_tasks(self, *, state: "TaskState | str | None" = None, queue: Optional[str] = None,
                    name: Optional[str] = None, since: "float | dt.datetime | None" = None,
                    forgotten: bool = False, until: "float | dt.datetime | None" = None,
                    parent: Optional[str] = None) -> int:
        """How many tasks ``list_tasks`` would list with these filters (no limit)."""
        return self._request("ventilator", "count",
                             self._filters(state, queue, name, since, forgotten, until, parent))

    def show_task(self, task_id: str) -> dict:
        """One task as ``list_tasks`` describes it; KeyError if the ventilator never saw it."""
        try:
            return self._request("ventilator", "show", {"id": task_id})
        except Exception as exc:
            if "unknown task" in str(exc):
                raise KeyError(task_id) from None
            raise

    def requeue(self, task_id: str) -> str:
        """Run a failed or cancelled task again; the new task's id (its ``parent`` is the old).

        A failure can reach this client (from the sink) a moment before the ventilator
        closes the task: when this client saw it end, the ventilator is given a few seconds
        to catch up instead of answering "no failed task"."""
        deadline = time.monotonic() + 5.0
        while True:
            try:
                return self._request("ventilator", "requeue", {"id": task_id})
            except Exception as exc:
                seen = self._final_state(task_id)
                if (seen not in (TaskState.FAILED, TaskState.CANCELED) or "no failed or cancelled" not in str(exc)
                        or time.monotonic() > deadline):
                    raise
            time.sleep(0.05)  # the ventilator has not heard the task is done yet

    def forget(self, task_id: str) -> bool:
        """Hide a finished task from ``list_tasks`` (kept in the history: ``forgotten=True``)."""
        return bool(self._request("ventilator", "forget", {"id": task_id}))

    def pause(self, queue: str) -> int:
        """Stop dispatching ``queue``: its tasks stay queued (shown PAUSED); nothing is dropped.
        Returns how many tasks wait in it."""
        return self._request("ventilator", "pause", {"queue": queue})

    def resume(self, queue: str) -> int:
        return self._request("ventilator", "resume", {"queue": queue})

    def disable_task(self, name: str) -> None:
        """Tasks of this name wait (shown PAUSED) until ``enable_task``."""
        self._request("ventilator", "disable", {"name": name})

    def enable_task(self, name: str) -> None:
        self._request("ventilator", "enable", {"name": name})

    def registry(self) -> dict:
        """The tasks workers registered (``--import``) and the cluster's schedules."""
        return self._request("ventilator", "registry", {})

    def get_progress(self, task_id: str) -> Optional[Progress]:
        """The latest progress a running task reported (None if none, or not running), with
        its ETA; from any client (the ventilator keeps it)."""
        known = self._known_progress(task_id)
        if known is not None:
            return known
        # the ventilator estimates the ETA as the task's client does, from the reports it saw
        report = P.check_progress_report(self._request("ventilator", "progress", {"ids": [task_id]})[0])
        if report is None:
            return None
        return Progress(report.done, report.total, report.message, report.at, report.eta)

