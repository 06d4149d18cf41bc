"""The running task's context: lineage, a logger, progress and follow-up tasks.

A task gets it by taking a parameter annotated ``zq.TaskContext`` or by calling
``zq.current_task()``.  ``progress()`` and ``submit()`` never block on the
network: they hand an event to the worker's IO thread (through a deque in the
thread executor, the child's pipe in the process executor).
"""

from __future__ import annotations

import contextvars
import hashlib
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .protocol.rows import PROGRESS_EVENT, SPAWN_EVENT, ProgressEvent, SpawnEvent, TaskRow
from .serialize import function_name, pack_args, pickle_function

_current: contextvars.ContextVar[Optional["TaskContext"]] = contextvars.ContextVar("zq_task", default=None)


@dataclass(frozen=True)
class Progress:
    """How far a task says it got: ``done`` of ``total``, an optional message, an ETA."""

    done: float
    total: float
    message: Optional[str]
    updated_at: float
    #: seconds left, estimated from the rate so far (None until it can be)
    eta: Optional[float] = None

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    @property
    def percent(self) -> float:
        return 100.0 * self.fraction


def estimate_eta(done: float, total: float, started: float, now: float) -> Optional[float]:
    if done <= 0 or total <= 0 or now <= started:
        return None
    rate = done / (now - started)
    return max(0.0, (total - done) / rate) if rate > 0 else None


def progress_eta(first: Optional[tuple[float, float]], done: Any, total: Any,
                 ts: Any) -> tuple[Optional[tuple[float, float]], Optional[float]]:
    """The ETA of a progress report from the rate since the first one, and the baseline to
    keep (``first``: that report's time and ``done``).  The task's client and the ventilator
    (``get_progress`` from any client) both estimate this way.  A report going backwards (a
    re-run) starts a new baseline; reports that are not numbers give no ETA."""
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (done, total, ts)):
        return first, None
    if first is not None:
        t0, d0 = first
    if first is None or done < d0 or ts < t0:
        first = (float(ts), float(done))
    t0, d0 = first
    return first, (estimate_eta(done - d0, total - d0, t0, ts) if ts > t0 else None)


class TaskContext:
    """What a running task knows about itself and can do."""

    def __init__(self, row: TaskRow, emit: Callable[[tuple], None], started_at: float) -> None:
        opts = row.opts or {}
        self.task_id: str = row.task_id
        self.name: str = row.name
        self.queue: str = row.queue
        self.attempt: int = row.attempt
        self.parent_id: Optional[str] = opts.get("parent")
        self.root_id: str = opts.get("root") or row.task_id
        self.client_id: str = row.client
        self._hops: int = opts.get("hops", 0)
        self.retain: Optional[bool] = row.retain
        self.started_at = started_at
        self._logger: Optional[logging.LoggerAdapter] = None
        self._emit = emit
        self._children = itertools.count(1)

    @property
    def logger(self) -> logging.LoggerAdapter:
        """A logger named after the task, carrying its id (``extra={"task_id": ...}``)."""
        if self._logger is None:
            self._logger = logging.LoggerAdapter(logging.getLogger(f"zq.task.{self.name}"),
                                                 {"task_id": self.task_id})
        return self._logger

    def progress(self, done: float, total: float, message: Optional[str] = None) -> None:
        """Report progress; the client sees it as ``future.progress`` (never blocks)."""
        self._emit(ProgressEvent(PROGRESS_EVENT, self.task_id, float(done), float(total),
                                 None if message is None else str(message)[:1000], time.time()))

    def submit(self, fn: Callable, /, *args: Any, queue: Optional[str] = None,
               retain_result: Optional[bool] = None, **kwargs: Any) -> str:
        """Queue a follow-up task (any queue); returns its id without waiting for it.

        Its id is derived from this task's, so a re-run of this task does not queue
        the follow-up twice.  Its result is retained like this task's."""
        from .options import args_repr, task_options
        from .protocol import TaskSpec

        digest, data = pickle_function(fn)
        n = next(self._children)
        # one id per (link of a chain, follow-up): a re-run of this task does not queue it twice
        child_id = f"{self.task_id}.{n}" if not self._hops else f"{self.task_id}.h{self._hops}.{n}"
        if len(child_id) > 100:  # deep lineage: a stable short id, still unique per parent and n
            child_id = f"{self.root_id[:40]}.{hashlib.blake2b(child_id.encode(), digest_size=12).hexdigest()}"
        t = fn if getattr(fn, "_zq_task", False) else None
        name = t.name if t else function_name(fn)
        q = queue or (t.queue if t else None) or self.queue
        opts = {**(task_options(t, fn, None, None, None, None, None, None, None) or {}),
                "parent": self.task_id, "root": self.root_id, "argrepr": args_repr(args, kwargs)}
        retain = self.retain if retain_result is None else retain_result
        spec = TaskSpec(child_id, name, q, digest, self.client_id, retain, t.retries if t else 0,
                        t.timeout if t else None, time.time(), opts=opts)
        TaskSpec.from_row(spec.record(), b"")  # a bad queue name etc. fails here, in the task
        self._emit(SpawnEvent(SPAWN_EVENT, spec.record(), data, pack_args(args, kwargs)))
        return child_id


def current_task() -> TaskContext:
    """The context of the task running in this thread or coroutine."""
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError("zq.current_task() called outside a running zq task")
    return ctx
