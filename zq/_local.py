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
from .protocol import TaskSpec
from .runner import execute
from .serialize import args_blob, loads

if TYPE_CHECKING:  # pragma: no cover
    from .client import Client


def run_locally(client: "Client", fn: Callable, args: tuple, kwargs: dict, spec: TaskSpec) -> TaskFuture:
    """Run the task here, its continuations in a loop (a chain of any length needs no
    stack), then the follow-ups it (and they, in turn) queued, in the order queued."""
    fut = TaskFuture(spec.task_id, client)
    follow_ups: collections.deque[tuple] = collections.deque()
    result = _run_chain(client, fut, fn, spec, follow_ups)  # (args and kwargs are in spec.args)
    while follow_ups:  # a work list, not recursion: follow-ups of follow-ups need no stack
        _, row, fn_data, arg_bytes = follow_ups.popleft()
        child = TaskSpec.from_row(row, arg_bytes)
        _run_chain(client, TaskFuture(child.task_id, client), loads(fn_data, "task function"), child, follow_ups)
    settle(fut, result)  # last: everything it started locally has run when its caller hears of it
    return fut


def _run_chain(client: "Client", fut: TaskFuture, fn: Callable, spec: TaskSpec,
               follow_ups: "collections.deque[tuple]") -> Result:
    """Run one task and each continuation it returns (a returned ``zq.Call`` or the next link
    of a chain: same id, as the cluster would), retrying as a worker would; queue the
    follow-ups (``ctx.submit``) on ``follow_ups``.  Returns the final result (``fut`` only
    gets the progress: the caller settles it)."""
    while True:
        events: list[tuple] = []
        while True:
            comp = execute(spec.row(), spec.args, lambda f=fn: f, client.policies, 1 << 62, events.append)
            state = TaskState(comp[1])
            retries_used = spec.attempt - 1
            if state is TaskState.FAILED and comp[2] and comp[2][0] != "SerializationError" \
                    and retries_used < spec.retries:
                spec.attempt += 1
                time.sleep(retry_delay(spec.opts, retries_used))  # the retry backoff, as on a worker
                continue
            break
        follow_ups.extend(e for e in events if e[0] == "spawn")
        for event in events:
            if event[0] == "progress":
                client._set_progress(fut, event[1:])
        cont = comp[8]
        if cont is None or state is not TaskState.SUCCESS:
            break
        # a continuation (returned zq.Call or a chain): go on here, as the cluster would
        name, _digest, fn_bytes, arg_bytes, queue, then = cont
        fn = loads(fn_bytes, "task function")
        spec = TaskSpec(spec.task_id, name, queue or spec.queue, spec.digest, spec.client, spec.retain,
                        spec.retries, spec.timeout, spec.submitted_at, spec.attempt,
                        opts=dict(spec.opts or {}, then=then), args=arg_bytes)
    result = Result(
        task_id=spec.task_id, name=spec.name, state=state, error=ErrorInfo.from_row(comp[2]),
        attempts=spec.attempt, worker="local", host=socket.gethostname(), pid=os.getpid(),
        queue=spec.queue, submitted_at=spec.submitted_at, started_at=comp[4], finished_at=comp[5],
        run_seconds=comp[6], payload=args_blob(comp[3]))
    if client.policies:
        run_hooks(client.policies, "on_done", result, spec.task_id)
    client._forget(spec.task_id, state)
    return result
