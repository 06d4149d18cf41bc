"""Task states, the result envelope and the task view handed to policies.

The envelope (:class:`Result`) is what every finished task produces: value or
error, attempts, where it ran and when.  On the wire it is a msgpack row plus
the pickled value in its own frame (see :mod:`zq.protocol`); the value is
unpickled lazily, so nodes that only route a result never unpickle it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Optional

from .serialize import loads_value


class TaskState(str, enum.Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    PAUSED = "PAUSED"
    UNKNOWN = "UNKNOWN"
    #: a failed attempt waiting out its retry backoff
    RETRYING = "RETRYING"
    #: sent to a worker that holds it (prefetched) and has not started it yet
    RESERVED = "RESERVED"

    def __str__(self) -> str:  # "SUCCESS", not "TaskState.SUCCESS"
        return self.value

    @property
    def finished(self) -> bool:
        return self in _FINISHED


_FINISHED = frozenset({TaskState.SUCCESS, TaskState.FAILED, TaskState.CANCELED})
#: value -> TaskState: a dict lookup, where ``TaskState(value)`` costs an Enum call
STATE_OF: dict[str, TaskState] = {s.value: s for s in TaskState}

#: The legal transitions, in one table (the ventilator checks every change against
#: it and fires ``Policy.on_state``).  QUEUED -> QUEUED and RUNNING -> QUEUED are
#: re-queues (a lost worker, a graceful stop, a continuation); PAUSED is how a queued
#: task of a paused queue or disabled task name is shown; FAILED -> QUEUED is an
#: explicit ``requeue``.  RESERVED: a worker holds it, not started (prefetched); it goes
#: RUNNING when the worker says it started, or back to QUEUED when given back (a paused
#: queue, another worker idle, a lost worker); it can end without a STARTED seen.
TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.UNKNOWN: frozenset({TaskState.QUEUED, TaskState.PAUSED}),
    TaskState.QUEUED: frozenset(
        {TaskState.QUEUED, TaskState.RESERVED, TaskState.RUNNING, TaskState.PAUSED, TaskState.CANCELED,
         TaskState.FAILED}),
    TaskState.RESERVED: frozenset(
        {TaskState.QUEUED, TaskState.RUNNING, TaskState.RETRYING, TaskState.SUCCESS, TaskState.FAILED,
         TaskState.CANCELED}),
    TaskState.PAUSED: frozenset({TaskState.QUEUED, TaskState.CANCELED, TaskState.FAILED}),
    TaskState.RUNNING: frozenset(
        {TaskState.QUEUED, TaskState.RETRYING, TaskState.SUCCESS, TaskState.FAILED, TaskState.CANCELED}),
    TaskState.RETRYING: frozenset({TaskState.QUEUED, TaskState.CANCELED, TaskState.FAILED}),
    TaskState.SUCCESS: frozenset(),
    TaskState.FAILED: frozenset({TaskState.QUEUED}),
    TaskState.CANCELED: frozenset(),
}


def can_transition(old: TaskState, new: TaskState) -> bool:
    return new in TRANSITIONS[old]


@dataclass(frozen=True)
class ErrorInfo:
    """A remote exception as data: class name, module, message, traceback text."""

    type: str
    message: str
    traceback: str = ""
    module: str = ""

    def to_row(self) -> list[str]:
        return [self.type, self.module, self.message, self.traceback]

    @classmethod
    def from_row(cls, row: Optional[list]) -> Optional["ErrorInfo"]:
        if row is None:
            return None
        type_, module, message, tb = row
        return cls(type=str(type_), message=str(message), traceback=str(tb), module=str(module))

    @classmethod
    def from_exception(cls, exc: BaseException, tb_text: str = "") -> "ErrorInfo":
        t = type(exc)
        try:
            message = str(exc)
        except Exception:  # a broken __str__ must not lose the error
            message = f"<unprintable {t.__name__}>"
        return cls(type=t.__name__, message=message, traceback=tb_text, module=t.__module__)


_MISSING: Any = object()


@dataclass(frozen=True, eq=False)
class Result:
    """The envelope of a finished task.

    ``run_time`` is measured on the worker with a monotonic clock; ``queue_time``
    and ``total_time`` compare the clocks of two hosts.
    """

    task_id: str
    name: str
    state: TaskState
    error: Optional[ErrorInfo]
    attempts: int
    worker: str
    host: str
    pid: int
    queue: str
    submitted_at: float
    started_at: float
    finished_at: float
    run_seconds: float = 0.0
    #: pickled value (or b"" for none; a large buffer value: zq.serialize's multi-frame
    #: blob); unpickled on first access of ``value``
    payload: bytes = field(default=b"", repr=False)
    #: why earlier attempts were lost, one line each (see WorkerLost)
    lost: tuple[str, ...] = ()
    _value: Any = field(default=_MISSING, repr=False, compare=False)

    @property
    def value(self) -> Any:
        if self._value is _MISSING:
            v = loads_value(self.payload, f"result of task {self.task_id}")  # b"": None
            object.__setattr__(self, "_value", v)
        return self._value

    @property
    def ok(self) -> bool:
        return self.state is TaskState.SUCCESS

    @property
    def queue_time(self) -> float:
        return max(0.0, self.started_at - self.submitted_at) if self.started_at else 0.0

    @property
    def run_time(self) -> float:
        return self.run_seconds

    @property
    def total_time(self) -> float:
        return max(0.0, self.finished_at - self.submitted_at) if self.finished_at else 0.0


@dataclass
class TaskInfo:
    """What policies see of a task: at least ``task_id``, ``name``, ``queue``, ``attempt``."""

    task_id: str
    name: str
    queue: str
    attempt: int = 1
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    retries: int = 0
    timeout: Optional[float] = None
    retain_result: Optional[bool] = None


__all__ = ["TaskState", "TRANSITIONS", "can_transition", "ErrorInfo", "Result", "TaskInfo"]
