"""The zq wire protocol: the only module that knows frame layout.

Every message, after the ROUTER identity frame where there is one, is::

    [PROTOCOL, COMMAND, HEADER, *PAYLOAD]

* ``PROTOCOL`` is ``b"ZQ02"``: a node answers any other version with ``ERROR``.
  (ZQ02: arguments and values inline in batch headers, out-of-band frames, READY's
  done ids, SYNC/HELD; ZQ01 nodes are refused, not misread.)
* ``COMMAND`` is one of the byte strings below.
* ``HEADER`` is a msgpack map.  Routers read only this frame.
* ``PAYLOAD`` frames carry pickled bytes (functions, arguments, values); no
  node that merely routes a message unpickles them.

Tasks and results travel in batches: one ``SUBMIT``/``TASKS`` message holds any
number of tasks (rows in the header, one argument frame each, preceded by the
frames of the functions the receiver has not seen yet), one ``RESULT`` message
any number of results.  When every argument (value) in a batch is small
(``INLINE_MAX`` bytes or less) they ride in the header instead ("a": [bytes],
"v": [bytes]) and the message has no frame per task: a frame costs each hop a
send and a receive call, more than the bytes it carries.  Batching is
opportunistic: a sender packs whatever is ready, it never waits to fill a batch.

Who sends what (C client, V ventilator, W worker, S sink):

==========  ==========  =====================================================
command     direction   header / payload
==========  ==========  =====================================================
SUBMIT      C -> V      {"t": [task rows], "f": [digests], "req"?: int, "n"?: [ints], "a"?: [bytes]};
                        fn frames,
                        arg frames (with "req" the ventilator REPLYs the id each task goes by;
                        "n": how many argument frames each task has, when one has more than
                        one: a pickle and its out-of-band buffers, see zq.serialize)
REJECT      V -> C      {"ids": [...], "code": str, "msg": str}
CANCELED    (reserved)  cancellations travel as CANCELED results through the sink
REQUEST     C -> V/S    {"req": int, "op": str, ...}
REPLY       V/S -> C    {"req": int, "ok": bool, "data"|"error": ...} (V -> W: a SPAWN with "req"
                        was accepted)
READY       W -> V      {"id", "queues", "credit", "host", "pid", "executor", "concurrency", "tasks",
                        "done"?: [ids], "states"?: [...]} (finished here, DONE not sent yet)
TASKS       V -> W      like SUBMIT, rows carry attempt and lost causes
SYNC        V -> W      {"upto": int} (to a worker registering again) say what you hold now
HELD        W -> V      {"upto", "held": [ids], "done": [ids], "states": [...]}: the answer; the
                        ventilator queues again what it sent before that SYNC and is not held
STARTED     W -> V      {"ids": [...]}
DONE        W -> V      {"ids": [...], "states": [...], "credit": int}
RETRY       W -> V      {"id": str, "delay": float, "credit": int, "lost"?: cause}
CANCEL      V -> W      {"ids": [...], "unstarted"?: bool} stop these tasks if they run (with
                        "unstarted": drop them only if they have not started)
RECLAIM     V -> W      {"ids"?: [...], "queues"?: [...], "names"?: [...], "n"?: int} give back
                        the tasks you hold and have not started that match (at most n)
RETURN      W -> V      {"ids": [...]} the answer: tasks given back, never started
BYE         W -> V      {"ids": [...], "final"?: bool} tasks handed back (graceful stop)
UNKNOWN     V -> W      {"instance"} you are not registered: send READY again
RESULT      W/V -> S, S -> C  {"r": [result rows], "v"?: [bytes]}; one value frame per row (or
                        every value in "v")
ACK         S -> W/V, C -> S  {"ids": [...]} results safe / received: forget them
HELLO       C -> S      {"client": id} route my results to this socket
HEARTBEAT   any         {"id": node id, "instance": random id of this run, "max": max message}
ERROR       any         {"code": str, "msg": str} your message was refused; V -> C with code
                        "unreachable": {"ids", "node", "endpoint", "down_for", "msg"} the results
                        of these tasks cannot reach that node from the ventilator
PROGRESS    W -> V -> C {"p": [[task id, done, total, message, time], ...]}
SPAWN       W -> V      like SUBMIT: follow-up tasks queued by a running task
CONTINUE    W -> V      {"id", "name", "digest", "queue", "then"}; fn frame?, arg frame:
                        the task goes on as another call (trampoline, chain link)
WATCH       C -> S      {"ids": [...]} send me these results too (retained or future)
==========  ==========  =====================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

import msgpack

from .envelope import STATE_OF, ErrorInfo, Result
from .errors import ProtocolError
from .serialize import ArgFrames, args_blob, args_size

PROTOCOL = b"ZQ02"

SUBMIT = b"SUBMIT"
REJECT = b"REJECT"
CANCELED = b"CANCELED"
REQUEST = b"REQUEST"
REPLY = b"REPLY"
READY = b"READY"
TASKS = b"TASKS"
STARTED = b"STARTED"
DONE = b"DONE"
RETRY = b"RETRY"
CANCEL = b"CANCEL"
BYE = b"BYE"
UNKNOWN = b"UNKNOWN"
RESULT = b"RESULT"
ACK = b"ACK"
HELLO = b"HELLO"
HEARTBEAT = b"HEARTBEAT"
ERROR = b"ERROR"
PROGRESS = b"PROGRESS"
SPAWN = b"SPAWN"
CONTINUE = b"CONTINUE"
WATCH = b"WATCH"
SYNC = b"SYNC"
HELD = b"HELD"
RECLAIM = b"RECLAIM"
RETURN = b"RETURN"

COMMANDS = frozenset(
    {SUBMIT, REJECT, CANCELED, REQUEST, REPLY, READY, TASKS, STARTED, DONE, RETRY,
     CANCEL, BYE, UNKNOWN, RESULT, ACK, HELLO, HEARTBEAT, ERROR, PROGRESS, SPAWN, CONTINUE, WATCH,
     SYNC, HELD, RECLAIM, RETURN}
)

#: The function "digest" of a task submitted by name: workers look the name up in
#: the tasks they imported (``zq worker --import MODULE``).
BY_NAME = bytes(16)

#: Default maximum size of one message on every bound socket (libzmq MAXMSGSIZE).
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024
#: Seconds between a client's renewals of its WATCHes (the sink forgets one not renewed
#: for its ``watch_ttl``, default 600 s: a watch of an id that never finishes cannot pile up)
WATCH_RENEW = 60.0
#: Arguments and values this small travel in the header of a batch (see the docstring).
INLINE_MAX = 1024

_packb = msgpack.Packer(use_bin_type=True).pack


def _unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)


@dataclass(frozen=True)
class Message:
    command: bytes
    header: dict
    payload: list  # list of bytes-like frames


def pack(command: bytes, header: Optional[dict] = None, payload: Sequence[Any] = ()) -> list:
    """Frames for one message (without any ROUTER identity)."""
    return [PROTOCOL, command, _packb(header or {}), *payload]


def unpack(frames: Sequence[Any]) -> Message:
    """Parse frames (without identity) into a :class:`Message` or raise ProtocolError."""
    if len(frames) < 3:
        raise ProtocolError(f"message has {len(frames)} frame(s), needs at least 3")
    version = bytes(frames[0])
    if version != PROTOCOL:
        raise ProtocolError(f"unsupported protocol version {version[:16]!r}, expected {PROTOCOL!r}")
    command = bytes(frames[1])
    if command not in COMMANDS:
        raise ProtocolError(f"unknown command {command[:32]!r}")
    try:
        header = _unpackb(bytes(frames[2]))
    except Exception as exc:
        raise ProtocolError(f"undecodable {command.decode()} header: {exc}") from exc
    if not isinstance(header, dict):
        raise ProtocolError(f"{command.decode()} header is not a map")
    return Message(command, header, list(frames[3:]))


def field(header: dict, key: str, kind: type | tuple, command: bytes = b"") -> Any:
    """``header[key]``, checked to be of ``kind``; ProtocolError otherwise."""
    try:
        value = header[key]
    except KeyError:
        raise ProtocolError(f"{command.decode() or 'message'} header lacks {key!r}") from None
    if not isinstance(value, kind):
        raise ProtocolError(f"{command.decode() or 'message'} header field {key!r} has wrong type")
    return value


def str_list(header: dict, key: str, command: bytes = b"") -> list[str]:
    value = field(header, key, list, command)
    if not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"{command.decode()} header field {key!r} must hold strings")
    return value


def error_message(code: str, msg: str) -> list:
    return pack(ERROR, {"code": code, "msg": msg})


#: ERROR code (V -> C): the results of ``ids`` cannot reach ``node`` at ``endpoint`` from the
#: sender, silent for ``down_for`` seconds (the client fails them past its unreachable_timeout)
UNREACHABLE = "unreachable"


def unreachable_message(ids: list[str], node: str, endpoint: str, down_for: float, msg: str) -> list:
    return pack(ERROR, {"code": UNREACHABLE, "ids": ids, "node": node, "endpoint": endpoint,
                        "down_for": down_for, "msg": msg})


# --------------------------------------------------------------------------- tasks


class TaskSpec:
    """One task as it travels client -> ventilator -> worker (args stay pickled)."""

    __slots__ = (
        "task_id", "name", "queue", "digest", "client", "retain", "retries", "timeout",
        "submitted_at", "attempt", "lost", "opts", "args",
    )

    def __init__(
        self,
        task_id: str,
        name: str,
        queue: str,
        digest: bytes,
        client: str,
        retain: Optional[bool],
        retries: int,
        timeout: Optional[float],
        submitted_at: float,
        attempt: int = 1,
        lost: Optional[list] = None,
        opts: Optional[dict] = None,
        args: Any = b"",
    ) -> None:
        self.task_id = task_id
        self.name = name
        self.queue = queue
        self.digest = digest
        self.client = client
        self.retain = retain
        self.retries = retries
        self.timeout = timeout
        self.submitted_at = submitted_at
        self.attempt = attempt
        self.lost = lost if lost is not None else []
        self.opts = opts
        self.args = args

    def row(self) -> list:
        return [self.task_id, self.name, self.queue, self.digest, self.client, self.retain,
                self.retries, self.timeout, self.submitted_at, self.attempt, self.lost, self.opts]

    @classmethod
    def from_row(cls, row: Any, args: Any) -> "TaskSpec":
        # msgpack gives exact types, so ``type(x) is T`` (cheaper than isinstance: this runs
        # for every task at the ventilator and at the worker) loses nothing but bools posing
        # as ints
        if type(row) is not list or len(row) != 12:
            raise ProtocolError("task row must be a list of 12 fields")
        (task_id, name, queue, digest, client, retain, retries, timeout, submitted_at,
         attempt, lost, opts) = row
        if type(task_id) is not str or not 0 < len(task_id) <= 128:
            raise ProtocolError("task id must be a non-empty string of at most 128 characters")
        if type(name) is not str or type(client) is not str:
            raise ProtocolError(f"task {task_id}: name and client must be strings")
        if type(queue) is not str or not 0 < len(queue) <= 200:
            raise ProtocolError(f"task {task_id}: queue must be a non-empty string of at most 200 characters")
        if type(digest) is not bytes or len(digest) != 16:
            raise ProtocolError(f"task {task_id}: function digest must be 16 bytes")
        if retain is not None and retain is not True and retain is not False:
            raise ProtocolError(f"task {task_id}: retain must be a bool or nil")
        if type(retries) is not int or retries < 0:
            raise ProtocolError(f"task {task_id}: retries must be a non-negative int")
        if timeout is not None and (type(timeout) not in _NUMBER or timeout <= 0):
            raise ProtocolError(f"task {task_id}: timeout must be a positive number or nil")
        if type(submitted_at) not in _NUMBER or type(attempt) is not int or attempt < 1:
            raise ProtocolError(f"task {task_id}: bad submitted_at or attempt")
        if type(lost) is not list or (lost and not all(type(x) is str for x in lost)):
            raise ProtocolError(f"task {task_id}: lost must be a list of strings")
        if opts is not None:
            check_opts(task_id, opts)
        return cls(task_id, name, queue, digest, client, retain, retries,
                   float(timeout) if timeout is not None else None, float(submitted_at),
                   attempt, lost, opts, args)


_NUMBER = (int, float)
#: TaskSpec.opts keys and their types (anything else is refused)
OPTS: dict[str, Any] = {
    "backoff": _NUMBER, "backoff_max": _NUMBER, "prio": int, "key": str, "eta": _NUMBER, "ttl": _NUMBER,
    "limit": int, "rate": str, "async": bool, "then": list, "parent": str, "root": str, "hops": int,
    "slot": _NUMBER,
}


def check_opts(task_id: str, opts: Any) -> None:
    if not isinstance(opts, dict):
        raise ProtocolError(f"task {task_id}: opts must be a map")
    for k, v in opts.items():
        kind = OPTS.get(k)
        if kind is None:
            raise ProtocolError(f"task {task_id}: unknown option {k!r}")
        if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
            raise ProtocolError(f"task {task_id}: option {k!r} has the wrong type")
        if kind is _NUMBER and not (v >= 0 and v == v and v != float("inf")):
            raise ProtocolError(f"task {task_id}: option {k!r} must be a finite number >= 0")
    then = opts.get("then")
    if then is not None:
        for link in then:
            if not (isinstance(link, list) and len(link) == 5 and isinstance(link[0], str)
                    and isinstance(link[1], bytes) and len(link[1]) == 16 and isinstance(link[2], bytes)
                    and isinstance(link[3], bytes) and (link[4] is None or isinstance(link[4], str))):
                raise ProtocolError(f"task {task_id}: a chain link must be [name, digest, fn, args, queue]")


def pack_tasks(command: bytes, tasks: Iterable[TaskSpec], fns: dict[bytes, Any],
               req: Optional[int] = None) -> list:
    """A SUBMIT, SPAWN or TASKS message: ``fns`` maps digest -> pickled function to include;
    ``req``: the sender waits for a REPLY with the id each task goes by."""
    tasks = list(tasks)
    header: dict = {"t": [t.row() for t in tasks], "f": list(fns)}
    if req is not None:
        header["req"] = req
    args = [t.args for t in tasks]
    if all(type(a) is not ArgFrames and len(a) <= INLINE_MAX for a in args):
        header["a"] = [a if type(a) is bytes else bytes(a) for a in args]
        return [PROTOCOL, command, _packb(header), *fns.values()]
    if any(type(a) is ArgFrames for a in args):
        header["n"] = [len(t.args) if type(t.args) is ArgFrames else 1 for t in tasks]
        frames = [f for t in tasks for f in (t.args if type(t.args) is ArgFrames else (t.args,))]
        return [PROTOCOL, command, _packb(header), *fns.values(), *frames]
    return [PROTOCOL, command, _packb(header), *fns.values(), *(t.args for t in tasks)]


def unpack_tasks(msg: Message) -> tuple[list[TaskSpec], dict[bytes, Any]]:
    rows = field(msg.header, "t", list, msg.command)
    digests = field(msg.header, "f", list, msg.command)
    counts = msg.header.get("n")
    inline = msg.header.get("a")
    if inline is not None:
        if not (isinstance(inline, list) and len(inline) == len(rows) and counts is None
                and all(type(a) is bytes for a in inline)):
            raise ProtocolError(f"{msg.command.decode()}: a must list one argument blob per task")
        counts = [0] * len(rows)
    elif counts is not None and not (isinstance(counts, list) and len(counts) == len(rows) and all(
            isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= 1024 for c in counts)):
        raise ProtocolError(f"{msg.command.decode()}: n must list 1..1024 argument frames per task")
    n_args = sum(counts) if counts is not None else len(rows)
    if len(msg.payload) != n_args + len(digests):
        raise ProtocolError(
            f"{msg.command.decode()}: {len(rows)} task(s) ({n_args} argument frame(s)) and "
            f"{len(digests)} function(s) but {len(msg.payload)} payload frame(s)"
        )
    fns: dict[bytes, Any] = {}
    for d, frame in zip(digests, msg.payload):
        if not (isinstance(d, bytes) and len(d) == 16):
            raise ProtocolError("function digest must be 16 bytes")
        fns[d] = frame
    n = len(digests)
    if inline is not None:
        return [TaskSpec.from_row(row, a) for row, a in zip(rows, inline)], fns
    if counts is None:
        return [TaskSpec.from_row(row, msg.payload[n + i]) for i, row in enumerate(rows)], fns
    tasks = []
    for row, c in zip(rows, counts):
        tasks.append(TaskSpec.from_row(row, msg.payload[n] if c == 1 else ArgFrames(msg.payload[n:n + c])))
        n += c
    return tasks, fns


# ------------------------------------------------------------------------- results


class ResultRow:
    """A result as routed by the sink: the header row and the value frame, never unpickled."""

    __slots__ = ("row", "payload")

    def __init__(self, row: list, payload: Any) -> None:
        self.row = row
        self.payload = payload

    @property
    def task_id(self) -> str:
        return self.row[0]

    @property
    def client(self) -> str:
        return self.row[13]

    @property
    def retain(self) -> Optional[bool]:
        return self.row[14]

    @property
    def ttl(self) -> Optional[float]:
        """Seconds to retain this result (None: the sink's --result-ttl)."""
        return self.row[16]

    def to_result(self) -> Result:
        r = self.row
        return Result(
            task_id=r[0], name=r[1], state=STATE_OF[r[2]], error=ErrorInfo.from_row(r[3]),
            attempts=r[4], worker=r[5], host=r[6], pid=r[7], queue=r[8], submitted_at=r[9],
            started_at=r[10], finished_at=r[11], run_seconds=r[12],
            payload=args_blob(self.payload), lost=tuple(r[15]),
        )


def _check_result_row(row: Any) -> list:
    if not isinstance(row, list) or len(row) != 17:
        raise ProtocolError("result row must be a list of 17 fields")
    if not isinstance(row[0], str) or not isinstance(row[13], str) or not isinstance(row[1], str):
        raise ProtocolError("result row: task id, name and client must be strings")
    if type(row[2]) is not str or row[2] not in STATE_OF:
        raise ProtocolError(f"result row: unknown state {row[2]!r}")
    err = row[3]
    if err is not None and not (isinstance(err, list) and len(err) == 4 and all(isinstance(x, str) for x in err)):
        raise ProtocolError("result row: error must be nil or 4 strings")
    if not isinstance(row[4], int) or not isinstance(row[7], int):
        raise ProtocolError("result row: attempts and pid must be ints")
    if not all(isinstance(row[i], (int, float)) for i in (9, 10, 11, 12)):
        raise ProtocolError("result row: timestamps must be numbers")
    if not all(isinstance(row[i], str) for i in (5, 6, 8)) or not isinstance(row[15], list):
        raise ProtocolError("result row: worker, host, queue must be strings")
    if row[14] is not None and not isinstance(row[14], bool):
        raise ProtocolError("result row: retain must be a bool or nil")
    if row[16] is not None and (not isinstance(row[16], (int, float)) or row[16] <= 0):
        raise ProtocolError("result row: ttl must be a positive number or nil")
    return row


def pack_results(results: Sequence[ResultRow]) -> list:
    values = [r.payload for r in results]
    if all(type(v) is not ArgFrames and len(v) <= INLINE_MAX for v in values):
        return [PROTOCOL, RESULT, _packb({"r": [r.row for r in results],
                                          "v": [v if type(v) is bytes else bytes(v) for v in values]})]
    if any(type(v) is ArgFrames for v in values):  # out-of-band values: several frames each
        counts = [len(v) if type(v) is ArgFrames else 1 for v in values]
        frames = [f for v in values for f in (v if type(v) is ArgFrames else (v,))]
        return [PROTOCOL, RESULT, _packb({"r": [r.row for r in results], "n": counts}), *frames]
    return [PROTOCOL, RESULT, _packb({"r": [r.row for r in results]}), *values]


def unpack_results(msg: Message) -> list[ResultRow]:
    rows = field(msg.header, "r", list, msg.command)
    inline = msg.header.get("v")
    if inline is not None:
        if not (isinstance(inline, list) and len(inline) == len(rows) and not msg.payload
                and all(type(v) is bytes for v in inline)):
            raise ProtocolError("RESULT: v must list one value per row and come without value frames")
        return [ResultRow(_check_result_row(row), v) for row, v in zip(rows, inline)]
    counts = msg.header.get("n")
    if counts is not None:
        if not (isinstance(counts, list) and len(counts) == len(rows) and all(
                type(c) is int and 1 <= c <= 1024 for c in counts) and sum(counts) == len(msg.payload)):
            raise ProtocolError("RESULT: n must list 1..1024 value frames per row, as many as sent")
        out, i = [], 0
        for row, c in zip(rows, counts):
            value = msg.payload[i] if c == 1 else ArgFrames(msg.payload[i:i + c])
            out.append(ResultRow(_check_result_row(row), value))
            i += c
        return out
    if len(rows) != len(msg.payload):
        raise ProtocolError(f"RESULT: {len(rows)} row(s) but {len(msg.payload)} value frame(s)")
    return [ResultRow(_check_result_row(row), p) for row, p in zip(rows, msg.payload)]


def batch_limit(max_message: int) -> int:
    """Bytes of payload one batched message may carry: well under the peers' maximum."""
    return max(1024, min(8 * 1024 * 1024, max_message // 2))


def take_batch(items: Any, max_bytes: int, max_count: int = 5000, size: Any = None) -> int:
    """How many of ``items`` (a sequence or deque, from the left) fit in one message.

    ``size(item)`` is an item's payload size in bytes (default ``len(item.payload)``).
    Always at least one, so a single large item still travels (its size was
    checked against the maximum when it was created).
    """
    total = 0
    n = 0
    limit = min(len(items), max_count)
    while n < limit:
        item = items[n]
        total += size(item) if size else args_size(item.payload)
        if n and total > max_bytes:
            break
        n += 1
    return n


def new_instance_id() -> str:
    return os.urandom(6).hex()
