"""What the ventilator keeps per worker and per task."""

from __future__ import annotations

import collections
import time
from typing import Any, Optional, Sequence

from zq.envelope import TaskState
from zq.errors import ProtocolError
from zq.protocol import TaskSpec

MAX_BUSY = 100_000  # STARTED's busy: more slots than any worker has is a malformed message


class WorkerInfo:
    __slots__ = ("ident", "id", "queues", "credit", "inflight", "fns", "host", "pid", "executor",
                 "concurrency", "last_seen", "last_sent", "done", "registered_at", "last_done",
                 "reclaim_sent", "busy")

    def __init__(self, ident: bytes, header: dict, now: float) -> None:
        self.ident = ident
        self.id = str(header.get("id") or ident.hex())
        queues = header.get("queues")
        if not isinstance(queues, list) or not queues or not all(isinstance(q, str) and q for q in queues):
            raise ProtocolError("READY: queues must be a non-empty list of names")
        credit = header.get("credit")
        if not isinstance(credit, int) or credit < 0 or credit > 100_000:
            raise ProtocolError("READY: credit must be an int in 0..100000")
        self.queues: list[str] = queues
        self.credit = credit
        #: task id -> the number of the TASKS message that carried it (``seq``)
        self.inflight: dict[str, int] = {}
        self.fns: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self.host = str(header.get("host", ""))
        self.pid = header.get("pid", 0) if isinstance(header.get("pid"), int) else 0
        self.executor = str(header.get("executor", ""))
        self.concurrency = header.get("concurrency", 0) if isinstance(header.get("concurrency"), int) else 0
        self.last_seen = now
        self.last_sent = now
        self.done = 0
        self.registered_at = time.time()
        self.last_done = now  # the last DONE or STARTED with ids: it makes progress
        self.reclaim_sent = float("-inf")  # RECLAIM sent and not answered (RETURN) since
        #: its executor slots running a task, as it last said (STARTED's ``busy``); None until then
        self.busy: Optional[int] = None

    def set_busy(self, value: Any) -> None:
        """STARTED's ``busy``: an int in 0..MAX_BUSY, else ProtocolError (nothing changed)."""
        if type(value) is not int or not 0 <= value <= MAX_BUSY:
            raise ProtocolError(f"STARTED: busy must be an int in 0..{MAX_BUSY}")
        self.busy = value

    def slots_busy(self, tasks: Any) -> int:
        """Its slots running a task: as it said (exact); from a worker that never said (older
        than STARTED's ``busy``, or just registered), its tasks RUNNING here, at most its slots
        (a finished task stays RUNNING until its DONE, which waits for the sink's ACK)."""
        if self.busy is not None:
            return self.busy
        running = 0
        for tid in self.inflight:
            rec = tasks.get(tid)
            if rec is not None and rec.state is TaskState.RUNNING:
                running += 1
        return min(running, self.concurrency)

    def describe(self) -> str:
        return f"worker {self.id} on host {self.host} (pid {self.pid})"


class TaskRecord:
    """One active task.  Its ``state`` is read-only here: only the ventilator's
    :class:`zq.nodes.tasktable.TaskTable` changes it (``set_state``), and setting its
    ``worker`` moves it in the table's index."""

    __slots__ = ("spec", "_state", "_worker", "client", "progress", "key", "group", "table", "digest", "progress_first",
                 "started_at", "error")

    def __init__(self, spec: TaskSpec, client: bytes) -> None:
        self.spec = spec
        self._state = TaskState.UNKNOWN
        self._worker: Optional[bytes] = None
        self.client = client
        self.progress: Optional[Sequence] = None  # a zq.protocol.ProgressReport (the latest)
        self.progress_first: Optional[tuple[float, float]] = None  # the ETA's baseline
        self.key: tuple = ()  # (submitted_at, -acceptance number): the table's sort key
        self.group: Any = None  # the table's group (a SortedRecs) holding it
        self.table: Any = None  # the TaskTable holding it
        self.digest: Optional[bytes] = None  # the function digest the table counts for it
        self.started_at: Optional[float] = None  # wall time its worker said STARTED (this attempt)
        #: (type, message, traceback) of its failure, when known (DONE's errors, or decided here)
        self.error: Optional[tuple[str, str, str]] = None

    @property
    def state(self) -> TaskState:
        return self._state

    @property
    def worker(self) -> Optional[bytes]:
        return self._worker

    @worker.setter
    def worker(self, ident: Optional[bytes]) -> None:
        if ident != self._worker:
            self._worker = ident
            if self.table is not None:
                self.table.moved(self)
