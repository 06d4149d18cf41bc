"""Every row that travels in a message, or between a worker and its executor, as a record.

A record is a ``NamedTuple``: msgpack packs it as a list (the bytes on the wire are those of
the list the record replaced), pickle carries it across an executor's pipe, and code reads
it by name (``comp.result``), never by position.  What arrives from a peer is a list: a
receiver turns it into a record with the ``check_*`` function below, which raises
:class:`~zq.errors.ProtocolError` for a wrong length or type, so a malformed message gets an
``ERROR`` reply (or a log line) rather than an ``IndexError`` deep in a node.

Rows built on a hot path (one per task) are made with ``_new(Record, (...))``
(``tuple.__new__``), which costs what building the tuple costs; a record's own
constructor, with keywords, is for everywhere else.
"""

from __future__ import annotations

import math

from typing import Any, NamedTuple, Optional

from ..envelope import STATE_OF
from ..errors import ProtocolError

_new = tuple.__new__


def _num(x: Any) -> bool:
    """A number as msgpack gives it (a bool is not one)."""
    return type(x) is int or type(x) is float


def _finite(x: Any) -> bool:
    """A number that is neither NaN nor infinite (a NaN deadline would wedge a heap)."""
    return type(x) is int or (type(x) is float and math.isfinite(x))


class TaskRow(NamedTuple):
    """A task's header row (``SUBMIT``/``SPAWN``/``TASKS`` "t", the journal, the executor)."""

    task_id: str
    name: str
    queue: str
    digest: bytes          # 16 bytes; ``BY_NAME`` for a task submitted by name
    client: str            # the submitting client's id ("" for none)
    retain: Optional[bool]
    retries: int
    timeout: Optional[float]
    submitted_at: float
    attempt: int
    lost: list             # causes of earlier attempts lost with their worker
    opts: Optional[dict]   # see ``OPTS``


class ErrorRow(NamedTuple):
    """A task's error as data (``zq.envelope.ErrorInfo.to_row``)."""

    type: str
    module: str
    message: str
    traceback: str


class ResultFields(NamedTuple):
    """The fields of one result (``RESULT`` "r"), routed without its value."""

    task_id: str
    name: str
    state: str             # a ``TaskState`` value
    error: Optional[list]  # an ``ErrorRow`` or nil
    attempts: int
    worker: str
    host: str
    pid: int
    queue: str
    submitted_at: float
    started_at: float
    finished_at: float
    run_seconds: float
    client: str
    retain: Optional[bool]
    lost: list
    ttl: Optional[float]   # seconds to retain it (nil: the sink's --result-ttl)


class ChainLink(NamedTuple):
    """One call still to come in a chain (a task's ``opts["then"]``, ``CONTINUE`` "then")."""

    name: str
    digest: bytes
    fn: bytes              # the pickled function
    args: bytes            # pickled (args, kwargs); the previous link's value goes first
    queue: Optional[str]


class Continuation(NamedTuple):
    """A task goes on as another call (it returned a ``zq.Call``, or a chain goes on)."""

    name: str
    digest: bytes
    fn: bytes
    args: Any              # pickled (args, kwargs)
    queue: Optional[str]
    then: list             # the rest of the chain: ``ChainLink`` rows


class Completion(NamedTuple):
    """How one run of a task ended (``zq.runner``), as an executor hands it to its worker."""

    task_id: str
    state: str             # a ``TaskState`` value
    error: Optional[list]  # an ``ErrorRow`` or None
    payload: Any           # the pickled value (bytes, ``ArgFrames``, or one blob from a pipe)
    started_at: float
    finished_at: float
    run_seconds: float
    pid: int
    continuation: Optional[Continuation]
    attempt: int           # the attempt that ran (a later one may be running by now)


class ProgressRow(NamedTuple):
    """A progress report (``PROGRESS`` "p", worker -> ventilator -> client)."""

    task_id: str
    done: float
    total: float
    message: Optional[str]
    at: float              # time.time() of the report


class ProgressReport(NamedTuple):
    """The latest progress of a task, with its ETA (the ventilator's ``progress`` reply)."""

    done: float
    total: float
    message: Optional[str]
    at: float
    eta: Optional[float]


class ProgressEvent(NamedTuple):
    """A running task reported progress (task -> its worker's IO thread)."""

    kind: str              # "progress"
    task_id: str
    done: float
    total: float
    message: Optional[str]
    at: float


class SpawnEvent(NamedTuple):
    """A running task queued a follow-up task (task -> its worker's IO thread)."""

    kind: str              # "spawn"
    row: TaskRow
    fn: bytes              # the pickled function
    args: bytes            # pickled (args, kwargs)


PROGRESS_EVENT = "progress"
SPAWN_EVENT = "spawn"

#: Every record, for the tests (each must pack as the list it replaced)
RECORDS = (TaskRow, ErrorRow, ResultFields, ChainLink, Continuation, Completion, ProgressRow,
           ProgressReport, ProgressEvent, SpawnEvent)


# ----------------------------------------------------------------------- checkers


def _arity(obj: Any, n: int, what: str) -> None:
    if (type(obj) is not list and not isinstance(obj, tuple)) or len(obj) != n:
        raise ProtocolError(f"{what} must be a list of {n} fields")


def check_error_row(obj: Any) -> Optional[ErrorRow]:
    """An error row from a peer (nil: no error)."""
    if obj is None:
        return None
    if not (type(obj) is list or type(obj) is ErrorRow) or len(obj) != 4 \
            or not all(type(x) is str for x in obj):
        raise ProtocolError("an error must be nil or 4 strings")
    return _new(ErrorRow, obj)


#: What a DONE's optional ``errors`` field may hold per task, at most (longer is cut)
DONE_ERROR_MAX = (256, 4096, 8192)  # type, message, traceback (characters)


class DoneError(NamedTuple):
    """A failure a worker reports with DONE: ``errors: {task id: [type, message, traceback]}``."""

    type: str
    message: str
    traceback: str


def check_done_errors(header: dict) -> dict[str, DoneError]:
    """DONE's optional ``errors`` field: task id -> :class:`DoneError` (each string cut to
    ``DONE_ERROR_MAX``; a traceback keeps its end, where the exception is)."""
    obj = header.get("errors")
    if obj is None:
        return {}
    if type(obj) is not dict:
        raise ProtocolError("DONE errors must be a map of task id to [type, message, traceback]")
    out: dict[str, DoneError] = {}
    for tid, err in obj.items():
        if type(tid) is not str or type(err) is not list or len(err) != 3 \
                or not all(type(x) is str for x in err):
            raise ProtocolError("DONE errors must be a map of task id to [type, message, traceback]")
        t, m, tb = err
        cap_t, cap_m, cap_tb = DONE_ERROR_MAX
        out[tid] = DoneError(t[:cap_t], m[:cap_m], tb if len(tb) <= cap_tb else "…" + tb[-(cap_tb - 1):])
    return out


def check_done_started(header: dict) -> dict[str, float]:
    """DONE's optional ``started`` field: task id -> the wall time it started (for tasks
    whose STARTED was never sent: those that waited in a slot behind the first of a batch)."""
    obj = header.get("started")
    if obj is None:
        return {}
    if type(obj) is not dict or not all(type(k) is str and type(t) in (float, int) and math.isfinite(t)
                                        for k, t in obj.items()):
        raise ProtocolError("DONE started must be a map of task id to a finite time")
    return obj


def check_chain_link(obj: Any) -> ChainLink:
    if not ((type(obj) is list or type(obj) is ChainLink) and len(obj) == 5
            and type(obj[0]) is str and type(obj[1]) is bytes and len(obj[1]) == 16
            and type(obj[2]) is bytes and type(obj[3]) is bytes
            and (obj[4] is None or type(obj[4]) is str)):
        raise ProtocolError("a chain link must be [name, digest, fn, args, queue]")
    return _new(ChainLink, obj)


def check_task_row(obj: Any) -> TaskRow:
    """A task row from a peer (``TaskSpec.from_row`` checks the values)."""
    # msgpack gives exact types: ``type(x) is list`` is cheaper than isinstance (per task)
    if (type(obj) is not list and type(obj) is not TaskRow) or len(obj) != 12:
        raise ProtocolError("task row must be a list of 12 fields")
    return _new(TaskRow, obj)


def check_result_row(obj: Any, states: Any = STATE_OF) -> ResultFields:
    """A result row from a peer (or a journal); ``states``: the valid state names."""
    if (type(obj) is not list and type(obj) is not ResultFields) or len(obj) != 17:
        raise ProtocolError("result row must be a list of 17 fields")
    r = _new(ResultFields, obj)
    if type(r.task_id) is not str or type(r.client) is not str or type(r.name) is not str:
        raise ProtocolError("result row: task id, name and client must be strings")
    if type(r.state) is not str or r.state not in states:
        raise ProtocolError(f"result row: unknown state {r.state!r}")
    err = r.error
    if err is not None and not (isinstance(err, (list, tuple)) and len(err) == 4
                                and all(isinstance(x, str) for x in err)):
        raise ProtocolError("result row: error must be nil or 4 strings")
    if type(r.attempts) is not int or type(r.pid) is not int:
        raise ProtocolError("result row: attempts and pid must be ints")
    if not (_finite(r.submitted_at) and _finite(r.started_at) and _finite(r.finished_at)
            and _finite(r.run_seconds)):
        raise ProtocolError("result row: timestamps must be finite numbers")
    if not (type(r.worker) is str and type(r.host) is str and type(r.queue) is str) \
            or not isinstance(r.lost, list):
        raise ProtocolError("result row: worker, host, queue must be strings")
    if r.retain is not None and type(r.retain) is not bool:
        raise ProtocolError("result row: retain must be a bool or nil")
    if r.ttl is not None and (not _finite(r.ttl) or r.ttl <= 0):
        raise ProtocolError("result row: ttl must be a positive finite number or nil")
    return r


def check_progress_row(obj: Any) -> ProgressRow:
    """A ``PROGRESS`` row from a peer: [task id, done, total, message, time] (done, total and
    time are numbers when a task reported them through ``TaskContext.progress``; any
    other value is passed on and gives no ETA)."""
    if not (type(obj) is list or type(obj) is ProgressRow) or len(obj) != 5 or type(obj[0]) is not str:
        raise ProtocolError("PROGRESS rows are [id, done, total, message, time]")
    return _new(ProgressRow, obj)


def progress_rows(header: dict) -> list[ProgressRow]:
    """The rows of a ``PROGRESS`` header ("p"), checked."""
    rows = header.get("p")
    if type(rows) is not list:
        raise ProtocolError("PROGRESS header lacks a list 'p'")
    return [check_progress_row(row) for row in rows]


def check_progress_report(obj: Any) -> Optional[ProgressReport]:
    """The ventilator's answer for one id: nil, or [done, total, message, time, eta]
    (an older ventilator sends no ETA)."""
    if obj is None:
        return None
    if not isinstance(obj, (list, tuple)) or len(obj) not in (4, 5):
        raise ProtocolError("a progress report is [done, total, message, time, eta]")
    eta = obj[4] if len(obj) == 5 and _num(obj[4]) else None
    return _new(ProgressReport, (obj[0], obj[1], obj[2], obj[3], eta))


def check_continuation(obj: Any) -> Continuation:
    """A continuation (``CONTINUE``, or from an executor child)."""
    _arity(obj, 6, "a continuation")
    name, digest, fn, args, queue, then = obj
    if type(name) is not str or type(digest) is not bytes or len(digest) != 16 \
            or (queue is not None and type(queue) is not str) or not isinstance(then, list):
        raise ProtocolError("a continuation is [name, 16-byte digest, fn, args, queue, then]")
    return _new(Continuation, (name, digest, fn, args, queue, [check_chain_link(x) for x in then]))


def check_completion(obj: Any) -> Completion:
    """A completion from an executor child (a crashed or foreign one sends anything)."""
    _arity(obj, 10, "a completion")
    c = _new(Completion, obj)
    if type(c.task_id) is not str or type(c.state) is not str or type(c.attempt) is not int \
            or not (_num(c.started_at) and _num(c.finished_at) and _num(c.run_seconds)):
        raise ProtocolError("a completion has a task id, a state, times and an attempt")
    if c.error is not None and type(c.error) is not ErrorRow:
        c = c._replace(error=check_error_row(c.error))
    if c.continuation is not None and type(c.continuation) is not Continuation:
        c = c._replace(continuation=check_continuation(c.continuation))
    return c


def check_event(obj: Any) -> Any:
    """An event from a running task (a ``ProgressEvent`` or a ``SpawnEvent``)."""
    if isinstance(obj, tuple) and obj:
        if obj[0] == PROGRESS_EVENT and len(obj) == 6 and type(obj[1]) is str:
            return _new(ProgressEvent, obj)
        if obj[0] == SPAWN_EVENT and len(obj) == 4:
            return _new(SpawnEvent, obj)
    raise ProtocolError("an event is a progress or a spawn record")
