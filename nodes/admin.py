"""The ventilator's answers to clients' requests (``REQUEST`` ops) and ``zq tasks``.

    status, progress, cancel, stats, list, count, show, requeue, forget,
    pause, resume, disable, enable, registry

Kept apart from the message loop so that ``nodes/ventilator.py`` reads as the
data path.  Every op takes the request header and returns plain data; a bad
argument raises ValueError/KeyError/TypeError, which becomes an error reply.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

from zq import protocol as P
from zq.envelope import TaskState
from zq.protocol import TaskSpec

from .common import HOST

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
            "args_repr": (s.opts or {}).get("argrepr"), "forgotten": False, "progress": rec.progress}


_ACTIVE_STATES = frozenset({"QUEUED", "RESERVED", "RUNNING", "PAUSED", "RETRYING"})


class Filters(NamedTuple):
    """What list and count select by (the request header's fields, checked)."""

    state: Optional[str]
    queue: Optional[str]
    name: Optional[str]  # "mod.fn", or "fn": any module's fn
    since: Optional[float]  # active tasks: submitted at or after; finished ones: finished
    until: Optional[float]  # ... before (the end of the range)
    parent: Optional[str]  # the follow-ups of this task (requeued, spawned)
    forgotten: bool


def _time(h: dict, key: str) -> Optional[float]:
    v = h.get(key)
    if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
        raise TypeError(f"{key} must be a Unix time")
    return v


def _filters(h: dict) -> Filters:
    state = _opt_str(h, "state")
    if state is not None:
        TaskState(state)  # ValueError for a state that does not exist
    return Filters(state, _opt_str(h, "queue"), _opt_str(h, "name"), _time(h, "since"), _time(h, "until"),
                   _opt_str(h, "parent"), bool(h.get("forgotten")))


def count(v: "Ventilator", h: dict) -> int:
    """Active tasks (from the task table's index, none visited) and finished ones (from
    the history's index, none read): O(groups), whatever the number of tasks."""
    f = _filters(h)
    n = v.tasks.count(f.state, f.queue, f.name, f.since, f.until, f.parent)
    if f.state not in _ACTIVE_STATES:
        n += v.history.count(f.state, f.queue, f.name, f.since, f.forgotten, f.until, f.parent)
    return n


def list_page(v: "Ventilator", h: dict) -> list[dict]:
    """Active tasks newest submitted first, then finished ones newest finished first;
    ``offset``/``limit`` slice that order, and only the returned tasks are read."""
    f = _filters(h)
    limit = h.get("limit")
    offset = h.get("offset") or 0
    if (limit is not None and not isinstance(limit, int)) or not isinstance(offset, int):
        raise TypeError("limit and offset must be ints")
    if offset < 0 or (limit is not None and limit < 0):
        raise ValueError("limit and offset must not be negative")
    items = [_active_entry(v, rec)
             for rec in v.tasks.page(f.state, f.queue, f.name, f.since, offset, limit, f.until, f.parent)]
    if f.state in _ACTIVE_STATES or (limit is not None and len(items) >= limit):
        return items
    skip = max(0, offset - v.tasks.count(f.state, f.queue, f.name, f.since, f.until, f.parent))
    rest = None if limit is None else limit - len(items)
    return items + v.history.query(f.state, f.queue, f.name, f.since, f.forgotten, skip, rest, f.until, f.parent)


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
        return stats(v)
    if op == "count":
        return count(v, h)
    if op == "list":
        return list_page(v, h)
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
        return requeue(v, P.field(h, "id", str, P.REQUEST))
    if op == "forget":
        tid = P.field(h, "id", str, P.REQUEST)
        if tid in v.tasks:
            raise ValueError(f"task {tid} has not finished: cancel it first")
        return v.history.forget(tid)
    if op in ("pause", "resume"):
        return set_paused(v, P.field(h, "queue", str, P.REQUEST), op == "pause")
    if op in ("disable", "enable"):
        return set_disabled(v, P.field(h, "name", str, P.REQUEST), op == "disable")
    if op == "registry":
        return {"tasks": v.registry, "schedules": v.scheduler.describe(), "time": time.time()}
    raise ValueError(f"unknown operation {op!r}")


def requeue(v: "Ventilator", task_id: str) -> str:
    """Run a failed or cancelled task again, as a new task (returned) with the same call."""
    old = v.history.spec(task_id)
    if old is None:
        raise KeyError(f"no failed or cancelled task {task_id} with its arguments in the history")
    n = 1
    while f"{task_id}~{n}" in v.tasks or v.shown_state_of(f"{task_id}~{n}") is not TaskState.UNKNOWN:
        n += 1
    opts = dict(old.opts or {}, parent=task_id, root=(old.opts or {}).get("root") or task_id)
    opts.pop("key", None)
    spec = TaskSpec(f"{task_id}~{n}", old.name, old.queue, old.digest, old.client, True, old.retries,
                    old.timeout, time.time(), opts=opts, args=old.args)
    if spec.digest != P.BY_NAME and spec.digest not in v.fns:
        raise KeyError(f"the function of {task_id} is no longer held here")
    return v._accept(spec, old.client.encode())

def set_paused(v: "Ventilator", queue: str, paused: bool) -> int:
    """Pause or resume a queue; the number of its waiting tasks (shown PAUSED or QUEUED)."""
    before = _holds(v)
    (v.dispatch.paused.add if paused else v.dispatch.paused.discard)(queue)
    if v.journal is not None:
        v.journal.set_hold("queue", queue, paused)
    if v.policies:  # on_state: the waiting tasks of the queue are shown PAUSED (or QUEUED again)
        v.tasks.hold_changed(queue=queue, before=before)
    if paused:  # what workers hold and have not started comes back, to wait here
        reclaim(v, lambda s: s.queue == queue, {"queues": [queue]})
    return v.dispatch.waiting(queue)


def set_disabled(v: "Ventilator", name: str, disabled: bool) -> bool:
    before = _holds(v)
    (v.dispatch.disabled.add if disabled else v.dispatch.disabled.discard)(name)
    if v.journal is not None:
        v.journal.set_hold("name", name, disabled)
    if v.policies:
        v.tasks.hold_changed(name=name, before=before)
    if disabled:
        reclaim(v, lambda s: s.name == name, {"names": [name]})
    return disabled


def reclaim(v: "Ventilator", which: Any, header: dict) -> int:
    """Ask the workers holding unstarted tasks for which ``which(spec)`` holds to give them
    back (``header``: what RECLAIM says); the number of such tasks."""
    n = 0
    for w in v.workers.values():
        held = 0
        for tid in w.inflight:
            rec = v.tasks.get(tid)
            if rec is not None and rec.state is TaskState.RESERVED and which(rec.spec):
                held += 1
        if held:
            n += held
            v.wsock.try_send(w.ident, P.pack(P.RECLAIM, header))
    return n


def _holds(v: "Ventilator") -> Any:
    """The hold test as it is now (for announcing what a change of holds changed)."""
    paused, disabled = frozenset(v.dispatch.paused), frozenset(v.dispatch.disabled)
    return lambda q, n: q in paused or n in disabled


def _worker(v: "Ventilator", w: Any, now: float) -> dict:
    """One worker as stats shows it: ``running`` its executor slots running a task (as it
    says, STARTED's ``busy``: never more than its slots), ``prefetched`` the rest of what it
    holds (waiting, in a batch behind the running task, async on its event loop, finished
    and awaiting the sink's ACK), ``silent`` seconds since it last said anything."""
    running = w.slots_busy(v.tasks)
    return {"id": w.id, "host": w.host, "pid": w.pid, "queues": w.queues, "executor": w.executor,
            "concurrency": w.concurrency, "running": running,
            "prefetched": max(0, len(w.inflight) - running),  # a timed-out thread task keeps its slot
            "credit": w.credit, "done": w.done, "silent": round(max(0.0, now - w.last_seen), 3),
            "registered_at": w.registered_at}


def stats(v: "Ventilator") -> dict:
    rate = 0.0
    if len(v.rate_samples) >= 2:
        (t0, d0), (t1, d1) = v.rate_samples[0], v.rate_samples[-1]
        if t1 > t0:
            rate = (d1 - d0) / (t1 - t0)
    queued, running = v.tasks.by_queue()
    served = {q for w in v.workers.values() for q in w.queues}
    d = v.dispatch
    mono = time.monotonic()
    return {
        "instance": v.instance, "host": HOST, "endpoints": v.endpoints,
        "uptime": time.time() - v.started, "secured": v.keys is not None,
        "journal": v.journal_path,
        "workers": [_worker(v, w, mono) for w in v.workers.values()],
        "lost_workers": v.workers_side.lost_workers(),
        "workers_lost": dict(v.workers_side.lost_by_cause),
        "queues": {q: {"queued": queued[q], "running": running[q], "served": q in served,
                       "paused": q in d.paused}
                   for q in sorted(set(queued) | set(running) | served | d.paused)},
        "disabled": sorted(d.disabled),
        "counters": dict(v.counters),
        "tasks_per_second": rate,
        # the longest turn of the loop over the last 1-2 s, and since start (seconds)
        "loop": {"lag": v.lag.recent(), "lag_max": v.lag.worst, "turns": v.lag.turns},
        # task records and history entries admin queries have read (a list reads its page,
        # a count none; the follow-ups of a ``parent``, those)
        "admin_records_read": v.tasks.touched + v.history.touched,
        # the ventilator's own link to the sink (its endpoint as the ventilator was told)
        "sink_link": v.sink_watch.stats(time.monotonic(), len(v.sink.unacked)),
    }
