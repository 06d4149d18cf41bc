"""What the ventilator keeps per worker and per task."""

from __future__ import annotations

import collections
import time
from typing import Optional

from zq.envelope import TaskState
from zq.errors import ProtocolError
from zq.protocol import TaskSpec


class WorkerInfo:
    __slots__ = ("ident", "id", "queues", "credit", "inflight", "fns", "host", "pid", "executor",
                 "concurrency", "last_seen", "last_sent", "done", "registered_at", "last_done",
                 "reclaim_sent")

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

    def describe(self) -> str:
        return f"worker {self.id} on host {self.host} (pid {self.pid})"


class TaskRecord:
    __slots__ = ("spec", "state", "worker", "client", "progress")

    def __init__(self, spec: TaskSpec, client: bytes) -> None:
        self.spec = spec
        self.state = TaskState.UNKNOWN
        self.worker: Optional[bytes] = None
        self.client = client
        self.progress: Optional[list] = None  # [done, total, message, time]
