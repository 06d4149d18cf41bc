"""Plain-data views the routes return: a result as JSON, a task's detail, schedules with
their next run, query filters parsed from strings.  No I/O here."""

from __future__ import annotations

import datetime as dt
import json
import math
import reprlib
from typing import Any, Optional

from zq.envelope import TaskState

REPR_LIMIT = 2000


def jsonable(value: Any) -> Any:
    """``value`` if JSON can carry it exactly (NaN and infinities cannot), else its repr."""
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError):
        return repr(value)


def finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float (a task's progress, say) as None: JSON has none."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def short_repr(value: Any, limit: int = REPR_LIMIT) -> str:
    r = reprlib.Repr()
    r.maxstring = r.maxother = limit
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = 50
    text = r.repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def result_body(r: Any) -> dict:
    """A ``zq.Result`` as the JSON API has always answered it (a value that cannot be
    unpickled here is said, not raised)."""
    value = None
    if r.ok:
        try:
            value = jsonable(r.value)
        except Exception as exc:  # noqa: BLE001 (an unimportable class must not break the API)
            value = f"<cannot unpickle here: {type(exc).__name__}: {exc}>"
    return {"task_id": r.task_id, "state": r.state.value,
            "value": value,
            "error": r.error.__dict__ if r.error else None,
            "attempts": r.attempts, "worker": r.worker, "run_time": r.run_time}


def result_detail(r: Any) -> dict:
    """A retained result for the Task page: timings, error with traceback, lost attempts,
    the value's repr (truncated; a value that cannot be unpickled here says why)."""
    value: Optional[str] = None
    if r.ok:
        try:
            value = short_repr(r.value)
        except Exception as exc:  # noqa: BLE001 (an unimportable class must not break the page)
            value = f"<cannot show the value here: {type(exc).__name__}: {exc}>"
    return {"state": r.state.value, "worker": r.worker, "host": r.host, "pid": r.pid,
            "attempts": r.attempts, "submitted_at": r.submitted_at, "started_at": r.started_at,
            "finished_at": r.finished_at, "run_time": r.run_time, "queue_time": r.queue_time,
            "total_time": r.total_time, "lost": list(r.lost), "value_repr": value,
            "error": r.error.__dict__ if r.error else None}


# -- filters ---------------------------------------------------------------------------
def parse_state(value: Optional[str]) -> Optional[str]:
    if value in (None, ""):
        return None
    try:
        return TaskState(value.upper()).value
    except ValueError:
        known = ", ".join(s.value for s in TaskState)
        raise ValueError(f"unknown state {value!r} (one of {known})") from None


def parse_time(value: Optional[str], what: str = "since") -> Optional[float]:
    """A Unix time, or an ISO 8601 date/time (local time when it names no zone)."""
    if value in (None, ""):
        return None
    try:
        t = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(t):
            raise ValueError(f"{what} must be a finite time, not {value!r}")
        return t
    try:
        d = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{what} must be a Unix time or an ISO date such as 2026-12-03T09:30, "
                         f"not {value!r}") from None
    return d.timestamp()  # naive: local time


def filters(state: Optional[str], queue: Optional[str], name: Optional[str],
            since: Optional[str], until: Optional[str] = None, parent: Optional[str] = None) -> dict:
    """The ventilator's list/count filters from query strings (``name``: ``mod.fn``, or
    ``fn`` for any module's; ``since``/``until``: a time range; ``parent``: follow-ups)."""
    out: dict[str, Any] = {}
    s = parse_state(state)
    if s:
        out["state"] = s
    if queue:
        out["queue"] = queue
    if name:
        out["name"] = name
    t = parse_time(since)
    if t is not None:
        out["since"] = t
    u = parse_time(until, "until")
    if u is not None:
        out["until"] = u
    if parent:
        out["parent"] = parent
    return out


# -- schedules -------------------------------------------------------------------------
def next_run(s: dict, now: float) -> Optional[float]:
    """The next slot of a schedule from an older ventilator's ``registry()["schedules"]``,
    which does not send its ``next_run`` (the every-grid is taken from the epoch, its
    default, and the jitter is not added)."""
    if s.get("max_runs") is not None and (s.get("runs") or 0) >= s["max_runs"]:
        return None
    every = s.get("every")
    if isinstance(every, (int, float)) and every > 0:
        return (math.floor(now / every) + 1) * every
    cron = s.get("cron")
    if isinstance(cron, str):
        from zoneinfo import ZoneInfo

        from croniter import croniter

        try:
            base = dt.datetime.fromtimestamp(now, ZoneInfo(s.get("tz") or "UTC"))
            return float(croniter(cron, base).get_next(float))
        except Exception:  # noqa: BLE001 (a bad schedule shows no next run; the ventilator logged it)
            return None
    return None


def schedules(registry: dict, now: float) -> list[dict]:
    """The ventilator's schedules; each says its ``next_run`` (computed here only for a
    ventilator that does not)."""
    return [s if "next_run" in s else {**s, "next_run": next_run(s, now)}
            for s in registry.get("schedules") or []]
