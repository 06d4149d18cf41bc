"""The ventilator's answers to clients' requests (``REQUEST`` ops) and ``zq tasks``.

    status, progress, cancel, stats, list, count, show, requeue, forget,
    pause, resume, disable, enable, registry

Kept apart from the message loop so that ``nodes/ventilator.py`` reads as the
data path.  Every op takes the request header and returns plain data; a bad
argument raises ValueError/KeyError/TypeError, which becomes an error reply.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Optional

from zq import protocol as P
from zq.envelope import TaskState

from .history import page

if TYPE_CHECKING:  # pragma: no cover
    from .ventilator import Ventilator


def _opt_str(h: dict, key: str) -> Optional[str]:
    v = h.get(key)
    if v is not None and not isinstance(v, str):
        raise TypeError(f"{key} must be a string")
    return v


def _active_entry(v: "Ventilator", rec: Any) -> dict:
    s = rec.spec
    return {"task_id": s.task_id, "name": s.name, "queue": s.queue, "state": v.shown_state(rec).value,
            "submitted_at": s.submitted_at, "finished_at": None, "attempts": s.attempt,
            "worker": v.workers[rec.worker].id if rec.worker in v.workers else None, "error": None,
            "parent": (s.opts or {}).get("parent"), "root": (s.opts or {}).get("root") or s.task_id,
            "forgotten": False, "progress": rec.progress}


def _select(v: "Ventilator", h: dict) -> list[dict]:
    state, queue, name = _opt_str(h, "state"), _opt_str(h, "queue"), _opt_str(h, "name")
    since = h.get("since")
    if since is not None and not isinstance(since, (int, float)):
        raise TypeError("since must be a Unix time")
    if state is not None:
        TaskState(state)  # ValueError for a state that does not exist
    active = []
    for rec in v.tasks.values():
        e = _active_entry(v, rec)
        if ((state is None or e["state"] == state) and (queue is None or e["queue"] == queue)
                and (name is None or e["name"] == name) and (since is None or e["submitted_at"] >= since)):
            active.append(e)
    active.sort(key=lambda e: -e["submitted_at"])
    done = [] if state in ("QUEUED", "RUNNING", "PAUSED", "RETRYING") else v.history.query(
        state, queue, name, since, bool(h.get("forgotten")))
    return active + done


def handle(v: "Ventilator", ident: bytes, op: str, h: dict) -> Any:
    if op == "status":
        return [v.shown_state_of(tid).value for tid in P.str_list(h, "ids", P.REQUEST)]
    if op == "progress":
        out = []
        for tid in P.str_list(h, "ids", P.REQUEST):
            rec = v.tasks.get(tid)
            out.append(rec.progress if rec is not None else None)
        return out
    if op == "cancel":
        return [v.cancel(tid) for tid in P.str_list(h, "ids", P.REQUEST)]
    if op == "stats":
        return v.stats()
    if op in ("list", "count"):
        items = _select(v, h)
        if op == "count":
            return len(items)
        limit = h.get("limit")
        offset = h.get("offset") or 0
        if (limit is not None and not isinstance(limit, int)) or not isinstance(offset, int):
            raise TypeError("limit and offset must be ints")
        return page(items, limit, offset)
    if op == "show":
        tid = P.field(h, "id", str, P.REQUEST)
        rec = v.tasks.get(tid)
        if rec is not None:
            return _active_entry(v, rec)
        e = v.history.get(tid)
        if e is None:
            raise KeyError(f"unknown task {tid}")
        return e
    if op == "requeue":
        return v.requeue(P.field(h, "id", str, P.REQUEST))
    if op == "forget":
        tid = P.field(h, "id", str, P.REQUEST)
        if tid in v.tasks:
            raise ValueError(f"task {tid} has not finished: cancel it first")
        return v.history.forget(tid)
    if op in ("pause", "resume"):
        return v.set_paused(P.field(h, "queue", str, P.REQUEST), op == "pause")
    if op in ("disable", "enable"):
        return v.set_disabled(P.field(h, "name", str, P.REQUEST), op == "disable")
    if op == "registry":
        return {"tasks": v.registry, "schedules": v.scheduler.describe(), "time": time.time()}
    raise ValueError(f"unknown operation {op!r}")
