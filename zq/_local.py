"""``Client(execute="local")``: run a task inline in the caller, as a worker would.

Same envelope, same hooks (the client's policies: ``on_running`` before the
function, ``on_done`` after), same exceptions from ``result()``, same retries.
Time limits are not enforced here (the call runs in the caller's thread).
"""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Callable

from .envelope import ErrorInfo, Result, TaskState
from .futures import TaskFuture, settle
from .policy import run_hooks
from .options import retry_delay
from .protocol import TaskSpec
from .runner import execute
from .serialize import args_blob, loads, loads_args

if TYPE_CHECKING:  # pragma: no cover
    from .client import Client


def run_locally(client: "Client", fn: Callable, args: tuple, kwargs: dict, spec: TaskSpec) -> TaskFuture:
    fut = TaskFuture(spec.task_id, client)
    events: list[tuple] = []
    while True:
        comp = execute(spec.row(), spec.args, lambda: fn, client.policies, 1 << 62, events.append)
        state = TaskState(comp[1])
        retries_used = spec.attempt - 1
        if state is TaskState.FAILED and comp[2] and comp[2][0] != "SerializationError" \
                and retries_used < spec.retries:
            spec.attempt += 1
            time.sleep(retry_delay(spec.opts, retries_used))  # the retry backoff, as on a worker
            continue
        break
    cont = comp[8]
    if cont is not None and state is TaskState.SUCCESS:
        # a continuation (returned zq.Call or a chain): go on here, as the cluster would
        name, _digest, fn_bytes, arg_bytes, queue, then = cont
        nxt_fn = loads(fn_bytes, "task function")
        a, kw = loads_args(arg_bytes)
        nxt = TaskSpec(spec.task_id, name, queue or spec.queue, spec.digest, spec.client, spec.retain,
                       spec.retries, spec.timeout, spec.submitted_at, spec.attempt,
                       opts=dict(spec.opts or {}, then=then), args=arg_bytes)
        _follow_ups(client, events)
        return run_locally(client, nxt_fn, a, kw, nxt)
    result = Result(
        task_id=spec.task_id, name=spec.name, state=state, error=ErrorInfo.from_row(comp[2]),
        attempts=spec.attempt, worker="local", host=socket.gethostname(), pid=os.getpid(),
        queue=spec.queue, submitted_at=spec.submitted_at, started_at=comp[4], finished_at=comp[5],
        run_seconds=comp[6], payload=args_blob(comp[3]))
    for event in events:
        if event[0] == "progress":
            client._set_progress(fut, event[1:])
    _follow_ups(client, events)
    if client.policies:
        run_hooks(client.policies, "on_done", result, spec.task_id)
    client._forget(spec.task_id, state)
    settle(fut, result)
    return fut


def _follow_ups(client: "Client", events: list[tuple]) -> None:
    """Run the follow-up tasks a local task queued (``ctx.submit``), here too."""
    for event in events:
        if event[0] == "spawn":
            _, row, fn_data, arg_bytes = event
            a, kw = loads_args(arg_bytes)
            spec = TaskSpec.from_row(row, arg_bytes)
            run_locally(client, loads(fn_data, "task function"), a, kw, spec)
