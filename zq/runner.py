"""Running one task: the single place user code is called (workers and local execution).

``execute`` unpickles the arguments, sets the task context, runs the
``on_running`` hooks, calls the function, and turns what it returned into a
completion: a pickled value, an error as data, or a continuation (the task
returned a ``zq.Call``, or it is a link of a chain).  ``execute_async`` does the
same for ``async def`` tasks on an event loop.  Neither ever raises.

A completion is a ``zq.protocol.Completion`` (its continuation a
``zq.protocol.Continuation`` or None); the task comes as its ``zq.protocol.TaskRow``.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
import traceback
from typing import Any, Awaitable, Callable, Optional, Sequence

from .canvas import Call
from .context import TaskContext, _current
from .envelope import ErrorInfo, TaskInfo, TaskState
from .policy import Policy, run_hooks
from .protocol.rows import ChainLink, Completion, Continuation, ErrorRow, TaskRow, _new
from .serialize import args_size, loads, loads_args, pack_args, pack_value

_NO_EMIT: Callable[[tuple], None] = lambda event: None  # noqa: E731

_ctx_param: dict[Any, Optional[str]] = {}


def context_param(fn: Callable) -> Optional[str]:
    """The name of ``fn``'s parameter annotated ``zq.TaskContext``, if any."""
    target = fn.fn if getattr(fn, "_zq_task", False) else fn
    try:
        return _ctx_param[target]
    except (KeyError, TypeError):
        pass
    name = None
    try:
        for p in inspect.signature(target).parameters.values():
            ann = p.annotation
            if ann is TaskContext or (isinstance(ann, str) and ann.split(".")[-1] == "TaskContext"):
                name = p.name
                break
    except (TypeError, ValueError):  # builtins without a signature
        pass
    try:
        _ctx_param[target] = name
    except TypeError:
        pass
    return name


def _positional_index(fn: Callable, pname: str) -> Optional[int]:
    """Where ``pname`` stands among ``fn``'s positional parameters (None: keyword only)."""
    target = fn.fn if getattr(fn, "_zq_task", False) else fn
    try:
        for i, p in enumerate(inspect.signature(target).parameters.values()):
            if p.name == pname:
                return i if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) else None
    except (TypeError, ValueError):
        pass
    return None


def is_async(fn: Callable) -> bool:
    target = fn.fn if getattr(fn, "_zq_task", False) else fn
    return inspect.iscoroutinefunction(target)


def load_function(cache: dict, digest: bytes, data: Any) -> Callable:
    fn = cache.get(digest)
    if fn is None:
        if data is None:
            raise LookupError("function not received")
        fn = loads(data, "task function")
        cache[digest] = fn
    return fn


def _error(exc: BaseException, tb: str = "") -> ErrorRow:
    return _new(ErrorRow, ErrorInfo.from_exception(exc, tb).to_row())


class _Run:
    """One task's run: timing, context, and turning the outcome into a completion."""

    def __init__(self, row: TaskRow, emit: Callable[[tuple], None], max_result: int) -> None:
        self.row = row
        self.max_result = max_result
        self.started_at = time.time()
        self.t0 = time.monotonic()
        self.ctx = TaskContext(row, emit, self.started_at)

    def done(self, state: TaskState, err: Optional[ErrorRow], payload: bytes = b"",
             cont: Optional[Continuation] = None) -> Completion:
        row = self.row
        return _new(Completion, (row.task_id, state.value, err, payload, self.started_at, time.time(),
                                 time.monotonic() - self.t0, os.getpid(), cont, row.attempt))

    def prepare(self, fn_getter: Callable[[], Callable], args_data: Any,
                policies: Sequence[Policy]) -> tuple[Callable, tuple, dict]:
        fn = fn_getter()
        args, kwargs = loads_args(args_data)
        pname = context_param(fn)
        if pname is not None and pname not in kwargs:
            pos = _positional_index(fn, pname)
            if pos is not None and pos <= len(args):
                args = (*args[:pos], self.ctx, *args[pos:])  # the caller's arguments skip it
            else:
                kwargs[pname] = self.ctx
        if policies:
            row = self.row
            info = TaskInfo(task_id=row.task_id, name=row.name, queue=row.queue, attempt=row.attempt,
                            args=args, kwargs=kwargs, retries=row.retries, timeout=row.timeout,
                            retain_result=row.retain)
            run_hooks(policies, "on_running", info, row.task_id)
        return fn, args, kwargs

    def outcome(self, value: Any) -> Completion:
        task_id = self.row.task_id
        then = (self.row.opts or {}).get("then") or []
        try:
            if isinstance(value, Call):  # trampoline: continue as that call, chain kept
                name, digest, data, args, queue = value.link()
                return self.done(TaskState.SUCCESS, None, b"", Continuation(name, digest, data, args, queue, then))
            if then:  # a chain link: the next call gets this value first
                link = _new(ChainLink, then[0])
                args, kwargs = loads_args(link.args)
                return self.done(TaskState.SUCCESS, None, b"", Continuation(
                    link.name, link.digest, link.fn, pack_args((value, *args), kwargs), link.queue, then[1:]))
            payload = pack_value(value, f"result of task {task_id}")
        except Exception as exc:
            return self.done(TaskState.FAILED, _error(exc))
        if args_size(payload) > self.max_result:
            return self.done(TaskState.FAILED, ErrorRow(
                "SerializationError", "zq.errors",
                f"result of task {task_id} is {args_size(payload)} bytes pickled, over the cluster's "
                f"maximum message size of {self.max_result} bytes", ""))
        return self.done(TaskState.SUCCESS, None, payload)

    def failure(self, exc: BaseException) -> Completion:
        return self.done(TaskState.FAILED, _error(exc, traceback.format_exc()))


def execute(row: TaskRow, args_data: Any, fn_getter: Callable[[], Callable], policies: Sequence[Policy],
            max_result: int, emit: Callable[[tuple], None] = _NO_EMIT) -> Completion:
    """Run one task (``row``: ``TaskSpec.record()``); never raises."""
    run = _Run(row, emit, max_result)
    token = _current.set(run.ctx)
    try:
        try:
            fn, args, kwargs = run.prepare(fn_getter, args_data, policies)
        except Exception as exc:
            return run.done(TaskState.FAILED, _error(exc))
        try:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):  # an async task on a sync path: run it here
                value = asyncio.run(_await(value))
        except BaseException as exc:  # SystemExit from a task is a failure, not an exit
            return run.failure(exc)
        return run.outcome(value)
    finally:
        _current.reset(token)


async def _await(aw: Awaitable) -> Any:
    return await aw


async def execute_async(row: TaskRow, args_data: Any, fn_getter: Callable[[], Callable],
                        policies: Sequence[Policy], max_result: int,
                        emit: Callable[[tuple], None] = _NO_EMIT) -> Completion:
    """``execute`` for ``async def`` tasks, on the caller's event loop; a time limit
    cancels the coroutine."""
    run = _Run(row, emit, max_result)
    token = _current.set(run.ctx)
    try:
        try:
            fn, args, kwargs = run.prepare(fn_getter, args_data, policies)
        except Exception as exc:
            return run.done(TaskState.FAILED, _error(exc))
        timeout = row.timeout
        try:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await (asyncio.wait_for(value, timeout) if timeout else value)
        except asyncio.TimeoutError:
            return run.done(TaskState.FAILED, ErrorRow("TaskTimeout", "zq.errors",
                                                       f"task {row.task_id} ({row.name}) ran longer than "
                                                       f"its timeout of {timeout:g}s (cancelled)", ""))
        except BaseException as exc:
            return run.failure(exc)
        return run.outcome(value)
    finally:
        _current.reset(token)
