"""The JSON routes of ``zq http``: the admin API (same paths and bodies as the stdlib
server it replaced) and the reads the dashboard polls (``/api/...``).

Every handler awaits ``Gateway.call``: the blocking client call runs in the pool with a
timeout; errors come back as ``{"error": "..."}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import time
from typing import Any, Optional, Union

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from .gateway import ApiError, Gateway
from .sampler import Sampler
from .views import filters, result_body, result_detail, schedules

router = APIRouter()
MAX_PAGE = 1000
# a page's total is counted at most this often per filter, whoever asks (a count reads
# no record in the ventilator, but every request is a turn of its loop)
TOTAL_TTL = 3.0


def gw(request: Request) -> Gateway:
    return request.app.state.gateway


def poke(request: Request) -> None:
    sampler: Optional[Sampler] = getattr(request.app.state, "sampler", None)
    if sampler is not None:
        sampler.poke()


class Submit(BaseModel):
    """A task registered on the workers (``zq worker --import``), by name."""

    model_config = ConfigDict(extra="forbid")
    name: str
    params: Union[dict[str, Any], list[Any], None] = Field(
        None, description="keyword arguments (an object) or positional ones (an array)")
    queue: Optional[str] = None
    priority: Union[int, str, None] = Field(None, description='"high", "normal", "low" or an int')
    key: Optional[str] = Field(None, description="de-duplication key")
    delay: Optional[float] = Field(None, description="seconds before it may run")
    retries: Optional[int] = None
    timeout: Optional[float] = None


def _page(limit: int, offset: int) -> None:
    if limit < 0 or limit > MAX_PAGE:
        raise ApiError(400, f"limit must be between 0 and {MAX_PAGE}, not {limit}")
    if offset < 0:
        raise ApiError(400, f"offset must not be negative, not {offset}")


def _filters(state: Optional[str], queue: Optional[str], name: Optional[str], since: Optional[str],
             until: Optional[str] = None, parent: Optional[str] = None) -> dict:
    try:
        return filters(state, queue, name, since, until, parent)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


def list_tasks_of(c: Any, limit: int, offset: int = 0, **kw: Any) -> list[dict]:
    return c.list_tasks(limit=limit, offset=offset, **kw)


def count_tasks_of(c: Any, **kw: Any) -> int:
    return c.count_tasks(**kw)


StateQ = Query(None, description="QUEUED, PAUSED, RESERVED, RUNNING, RETRYING, SUCCESS, FAILED, CANCELED")
SinceQ = Query(None, description="submitted (finished, for finished tasks) at or after: a Unix time "
                                 "or an ISO date (local time)")
UntilQ = Query(None, description="... and before: the end of the time range")
NameQ = Query(None, description="mod.fn, or fn: that function of any module")
ParentQ = Query(None, description="only the follow-ups of this task (requeued or spawned by it)")


# -- the admin API ---------------------------------------------------------------------
@router.get("/status", tags=["admin"], summary="The ventilator's and the sink's stats")
async def status(request: Request) -> Any:
    return await gw(request).call(gw(request).client.stats)


@router.get("/tasks", tags=["admin"], summary="Tasks, newest first (list_tasks)")
async def list_tasks(request: Request, state: Optional[str] = StateQ, queue: Optional[str] = None,
                     name: Optional[str] = NameQ, since: Optional[str] = SinceQ, limit: int = 100,
                     offset: int = 0, until: Optional[str] = UntilQ, parent: Optional[str] = ParentQ) -> Any:
    _page(limit, offset)
    kw = _filters(state, queue, name, since, until, parent)
    return await gw(request).call(list_tasks_of, gw(request).client, limit, offset, **kw)


@router.post("/tasks", tags=["admin"], status_code=202, summary="Submit a registered task by name")
async def submit(request: Request, body: Submit) -> Any:
    opts = body.model_dump(exclude_none=True, exclude={"name", "params"})
    g = gw(request)
    fut = await g.call(g.client.submit_by_name, body.name, body.params, retain_result=True, **opts)
    poke(request)
    return {"task_id": fut.task_id}


async def call_or_404(g: Any, missing: str, fn: Any, *args: Any) -> Any:
    """``g.call(fn, *args)``, a 404 said as ``missing`` (which id, where it was looked for)."""
    try:
        return await g.call(fn, *args)
    except ApiError as exc:
        if exc.status == 404:
            raise ApiError(404, missing) from None
        raise


@router.get("/tasks/{task_id}", tags=["admin"], summary="One task (show_task)")
async def show_task(request: Request, task_id: str) -> Any:
    g = gw(request)
    return await call_or_404(g, f"unknown task id {task_id}", g.client.show_task, task_id)


@router.get("/tasks/{task_id}/result", tags=["admin"], summary="A result retained at the sink")
async def get_result(request: Request, task_id: str) -> Any:
    g = gw(request)
    # unpickling and encoding a value (up to max_message_size) stay off the event loop
    return await call_or_404(g, f"the sink holds no result for task {task_id}",
                             lambda: result_body(g.client.get_result(task_id, timeout=g.timeout)))


@router.post("/tasks/{task_id}/cancel", tags=["actions"], summary="Cancel a task")
async def cancel(request: Request, task_id: str) -> Any:
    out = {"cancelled": await gw(request).call(gw(request).client.cancel, task_id)}
    poke(request)
    return out


@router.post("/tasks/{task_id}/requeue", tags=["actions"], status_code=202,
             summary="Run a failed or cancelled task again (a new task id)")
async def requeue(request: Request, task_id: str) -> Any:
    out = {"task_id": await gw(request).call(gw(request).client.requeue, task_id)}
    poke(request)
    return out


@router.delete("/tasks/{task_id}", tags=["actions"], summary="Forget a finished task")
async def forget(request: Request, task_id: str) -> Any:
    return {"forgotten": await gw(request).call(gw(request).client.forget, task_id)}


@router.post("/queues/{queue}/pause", tags=["actions"], summary="Stop dispatching a queue")
async def pause(request: Request, queue: str) -> Any:
    n = await gw(request).call(gw(request).client.pause, queue)
    poke(request)
    return {"queue": queue, "waiting": n}


@router.post("/queues/{queue}/resume", tags=["actions"], summary="Dispatch a paused queue again")
async def resume(request: Request, queue: str) -> Any:
    n = await gw(request).call(gw(request).client.resume, queue)
    poke(request)
    return {"queue": queue, "waiting": n}


@router.post("/names/{name}/disable", tags=["actions"], summary="Hold tasks of this name (PAUSED)")
async def disable(request: Request, name: str) -> Any:
    await gw(request).call(gw(request).client.disable_task, name)
    poke(request)
    return {"name": name, "enabled": False}


@router.post("/names/{name}/enable", tags=["actions"], summary="Run tasks of this name again")
async def enable(request: Request, name: str) -> Any:
    await gw(request).call(gw(request).client.enable_task, name)
    poke(request)
    return {"name": name, "enabled": True}


# -- what the dashboard polls ----------------------------------------------------------
@router.get("/api/overview", tags=["dashboard"], summary="The latest sample: stats, counts, throughput")
async def overview(request: Request, series: bool = Query(True, description="include the charts' samples")) -> Any:
    s: Sampler = request.app.state.sampler
    return {"stats": s.latest, "counts": s.counts, "sampled_at": s.sampled_at, "error": s.error,
            "series": list(s.series) if series else [], "interval": s.interval,
            "security": request.app.state.guard.describe(), "now": time.time()}


@router.get("/api/tasks", tags=["dashboard"], summary="A page of tasks and the total that match")
async def task_page(request: Request, state: Optional[str] = StateQ, queue: Optional[str] = None,
                    name: Optional[str] = NameQ, since: Optional[str] = SinceQ, limit: int = 50,
                    offset: int = 0, until: Optional[str] = UntilQ, parent: Optional[str] = ParentQ) -> Any:
    _page(limit, offset)
    kw = _filters(state, queue, name, since, until, parent)
    c = gw(request).client

    totals: dict = request.app.state.totals
    key = tuple(sorted(kw.items()))

    def read() -> dict:
        items = list_tasks_of(c, limit, offset, **kw)
        cached = totals.get(key)
        now = time.monotonic()
        if cached is None or now - cached[0] > TOTAL_TTL:
            if len(totals) > 1000:
                totals.clear()
            cached = totals[key] = (now, count_tasks_of(c, **kw))
        return {"items": items, "total": max(cached[1], offset + len(items))}

    page = await gw(request).call(read)
    return {**page, "limit": limit, "offset": offset, "filters": kw}


@router.post("/api/tasks/requeue", tags=["actions"],
             summary="Requeue every failed (or cancelled) task matching the filters, newest first")
async def requeue_matching(request: Request, state: str = Query(..., description="FAILED or CANCELED"),
                           queue: Optional[str] = None, name: Optional[str] = NameQ,
                           since: Optional[str] = SinceQ, limit: int = 100, until: Optional[str] = UntilQ,
                           parent: Optional[str] = ParentQ) -> Any:
    """Each is requeued (a new task whose parent is the old one), then the old one is
    forgotten (kept in the history, hidden from lists), so pressing twice does not run a
    task twice; at most ``limit`` tasks per call."""
    _page(limit, 0)
    kw = _filters(state, queue, name, since, until, parent)
    if kw.get("state") not in ("FAILED", "CANCELED"):
        raise ApiError(400, "state must be FAILED or CANCELED")
    c = gw(request).client

    def run() -> dict:
        done: dict[str, str] = {}
        errors: dict[str, str] = {}
        for t in list_tasks_of(c, limit, **kw):
            tid = t["task_id"]
            try:
                done[tid] = c.requeue(tid)
                c.forget(tid)
            except Exception as exc:  # noqa: BLE001 (one task's refusal does not stop the others)
                errors[tid] = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        return {"requeued": done, "errors": errors}

    out = await gw(request).call(run, timeout=max(gw(request).timeout, 0.2 * limit))
    request.app.state.totals.clear()
    poke(request)
    return out


@router.get("/api/tasks/{task_id}", tags=["dashboard"],
            summary="A task with its retained result (timings, traceback, lost attempts) and progress")
async def task_detail(request: Request, task_id: str) -> Any:
    g = gw(request)
    c = g.client

    def read() -> dict:
        task = c.show_task(task_id)
        try:
            result = result_detail(c.get_result(task_id, timeout=g.timeout))
        except KeyError:
            result = None
        progress = None
        if task.get("state") == "RUNNING":
            p = c.get_progress(task_id)
            if p is not None:
                progress = {"done": p.done, "total": p.total, "message": p.message,
                            "percent": p.percent, "eta": p.eta}
        return {"task": task, "result": result, "progress": progress}

    return await call_or_404(g, f"unknown task id {task_id}", read)


@router.get("/api/schedules", tags=["dashboard"], summary="Schedules with their next run; task names")
async def schedule_list(request: Request) -> Any:
    reg = await gw(request).call(gw(request).client.registry)
    now = reg.get("time") or time.time()  # the ventilator's clock: next runs are its times
    return {"schedules": schedules(reg, now), "tasks": reg.get("tasks") or {}, "now": now}


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse({"error": exc.message}, status_code=exc.status)
