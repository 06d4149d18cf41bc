"""``Client(execute="local")``: run a task inline in the caller, as a worker would.

Same envelope, same hooks (the client's policies: ``on_running`` before the
function, ``on_done`` after), same exceptions from ``result()``, same retries.
Time limits are not enforced here (the call runs in the caller's thread).
"""

from __future__ import annotations

import collections
import os
import socket
import time
from typing import TYPE_CHECKING, Callable

from .envelope import ErrorInfo, Result, TaskState
from .futures import TaskFuture, settle
from .policy import run_hooks
from .options import retry_delay
from .protocol import PROGRESS_EVENT, SPAWN_EVENT, ProgressRow, SpawnEvent, TaskSpec
from .runner import execute
from .serialize import args_blob, loads

if TYPE_CHECKING:  # pragma: no cover
    from .client import Client


def run_locally(client: "Client", fn: Callable, args: tuple, kwargs: dict, spec: TaskSpec) -> TaskFuture:
    """Run the task here, its continuations in a loop (a chain of any length needs no
    stack), then the follow-ups it (and they, in turn) queued, in the order queued."""
    fut = TaskFuture(spec.task_id, client)
    follow_ups: collections.deque[SpawnEvent] = collections.deque()
    result = _run_chain(client, fut, fn, spec, follow_ups)  # (args and kwargs are in spec.args)
    while follow_ups:  # a work list, not recursion: follow-ups of follow-ups need no stack
        spawn = follow_ups.popleft()
        child = TaskSpec.from_row(spawn.row, spawn.args)
        _run_chain(client, TaskFuture(child.task_id, client), loads(spawn.fn, "task function"), child, follow_ups)
    settle(fut, result)  # last: everything it started locally has run when its caller hears of it
    return fut


def _run_chain(client: "Client", fut: TaskFuture, fn: Callable, spec: TaskSpec,
               follow_ups: "collections.deque[SpawnEvent]") -> Result:
    """Run one task and each continuation it returns (a returned ``zq.Call`` or the next link
    of a chain: same id, as the cluster would), retrying as a worker would; queue the
    follow-ups (``ctx.submit``) on ``follow_ups``.  Returns the final result (``fut`` only
    gets the progress: the caller settles it)."""
    while True:
        events: list[tuple] = []
        while True:
            comp = execute(spec.record(), spec.args, lambda f=fn: f, client.policies, 1 << 62, events.append)
            state = TaskState(comp.state)
            retries_used = spec.attempt - 1
            if state is TaskState.FAILED and comp.error and comp.error.type != "SerializationError" \
                    and retries_used < spec.retries:
                spec.attempt += 1
                time.sleep(retry_delay(spec.opts, retries_used))  # the retry backoff, as on a worker
                continue
            break
        follow_ups.extend(e for e in events if e.kind == SPAWN_EVENT)
        for e in events:
            if e.kind == PROGRESS_EVENT:
                client._set_progress(fut, ProgressRow(e.task_id, e.done, e.total, e.message, e.at))
        cont = comp.continuation
        if cont is None or state is not TaskState.SUCCESS:
            break
        # a continuation (returned zq.Call or a chain): go on here, as the cluster would
        fn = loads(cont.fn, "task function")
        spec = TaskSpec(spec.task_id, cont.name, cont.queue or spec.queue, spec.digest, spec.client,
                        spec.retain, spec.retries, spec.timeout, spec.submitted_at, spec.attempt,
                        opts=dict(spec.opts or {}, then=cont.then), args=cont.args)
    result = Result(
        task_id=spec.task_id, name=spec.name, state=state, error=ErrorInfo.from_row(comp.error),
        attempts=spec.attempt, worker="local", host=socket.gethostname(), pid=os.getpid(),
        queue=spec.queue, submitted_at=spec.submitted_at, started_at=comp.started_at,
        finished_at=comp.finished_at, run_seconds=comp.run_seconds, payload=args_blob(comp.payload))
    if client.policies:
        run_hooks(client.policies, "on_done", result, spec.task_id)
    client._forget(spec.task_id, state)
    return result
