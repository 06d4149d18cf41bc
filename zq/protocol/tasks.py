"""Tasks on the wire: ``TaskSpec``, its row (``rows.TaskRow``) and options, batches of them."""

from __future__ import annotations

from typing import Any, Iterable, Optional

from ..errors import ProtocolError
from ..serialize import ArgFrames
from .rows import TaskRow, _new, check_chain_link
from .wire import INLINE_MAX, PROTOCOL, Message, _packb, field


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
        """The task's row as it travels (a list: the form a peer's msgpack gives)."""
        return [self.task_id, self.name, self.queue, self.digest, self.client, self.retain,
                self.retries, self.timeout, self.submitted_at, self.attempt, self.lost, self.opts]

    def record(self) -> TaskRow:
        """The same row as a record, read by name (what an executor runs)."""
        return _new(TaskRow, (self.task_id, self.name, self.queue, self.digest, self.client, self.retain,
                              self.retries, self.timeout, self.submitted_at, self.attempt, self.lost,
                              self.opts))

    @classmethod
    def from_row(cls, row: Any, args: Any) -> "TaskSpec":
        """A task from a peer's row (a list, or a ``TaskRow``); ProtocolError if malformed."""
        # msgpack gives exact types, so ``type(x) is T`` (cheaper than isinstance: this runs
        # for every task at the ventilator and at the worker) loses nothing but bools posing
        # as ints; the row is unpacked, not made a TaskRow (that would cost an object per task)
        if (type(row) is not list and type(row) is not TaskRow) or len(row) != 12:
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
    "slot": _NUMBER, "argrepr": str,
}
ARGS_REPR_MAX = 500  # characters: a task's arguments as text (option "argrepr", made by its client)


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
    argrepr = opts.get("argrepr")
    if argrepr is not None and len(argrepr) > ARGS_REPR_MAX:
        raise ProtocolError(f"task {task_id}: option 'argrepr' is over {ARGS_REPR_MAX} characters")
    then = opts.get("then")
    if then is not None:
        for link in then:
            try:
                check_chain_link(link)
            except ProtocolError:
                raise ProtocolError(f"task {task_id}: a chain link must be [name, digest, fn, args, queue]") from None


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


