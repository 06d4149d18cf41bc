"""WorkerSide (nodes/vent_workers.py) is a part the ventilator holds, reaching it only
through the TaskSide protocol: the Ventilator provides every member of it, and a small
stand-in is enough to drive WorkerSide directly."""

from __future__ import annotations

import collections
import inspect
from typing import Any, Optional

import zq
from zq.nodes.dispatch import Dispatch
from zq.nodes.records import TaskRecord, WorkerInfo
from zq.nodes.scheduler import Scheduler
from zq.nodes.tasktable import TaskTable
from zq.nodes.vent_workers import MAX_LOST_ATTEMPTS, TaskSide, WorkerSide
from zq.nodes.ventilator import Ventilator
from zq import protocol as P
from zq.envelope import ErrorInfo, TaskState
from zq.protocol import TaskSpec


def task_side_members() -> tuple[set[str], set[str]]:
    fields = set(TaskSide.__annotations__)
    methods = {n for n, f in vars(TaskSide).items() if inspect.isfunction(f) and not n.startswith("_")}
    return fields, methods


def test_the_ventilator_provides_every_member_of_task_side():
    v = Ventilator(zq.load_config(None, {}))
    try:
        fields, methods = task_side_members()
        assert fields and methods
        for name in fields:
            assert hasattr(v, name), name
        for name in methods:
            assert callable(getattr(v, name, None)), name
            want = list(inspect.signature(getattr(TaskSide, name)).parameters)[1:]
            assert list(inspect.signature(getattr(v, name)).parameters) == want, name
    finally:
        v._waker.close()


class Tasks:
    """A stand-in for the ventilator: records what WorkerSide asks of it."""

    def __init__(self) -> None:
        self.instance = "vent-1"
        self.counters: collections.Counter = collections.Counter()
        self.dispatch = Dispatch()
        self.tasks = TaskTable(self.dispatch, None, lambda *a: None)
        self.workers: dict[bytes, WorkerInfo] = {}
        self.registry: dict[str, dict] = {}
        self.scheduler = Scheduler()
        self.tasks_seq = 7
        self.heard_at = 0.0
        self.calls: list[tuple] = []

    def heartbeat(self) -> list:
        return P.pack(P.HEARTBEAT, {"id": "ventilator", "instance": self.instance})

    def requeue(self, rec: TaskRecord, delay: float = 0.0) -> None:
        self.calls.append(("requeue", rec.spec.task_id))
        rec.worker = None

    def close_task(self, rec: TaskRecord, state: TaskState, worker: str, error: Optional[str]) -> None:
        self.calls.append(("close", rec.spec.task_id, state))
        self.tasks.remove(rec)

    def finish_task(self, rec: TaskRecord, state: TaskState, error: Optional[ErrorInfo]) -> None:
        self.calls.append(("finish", rec.spec.task_id, state, error.type if error else None))
        self.tasks.remove(rec)

    def make_durable(self) -> None:
        self.calls.append(("durable",))

    def accept_batch(self, ident: bytes, msg: P.Message, ep: Any = None) -> list[str]:
        self.calls.append(("accept", ident))
        return []

    def hold_function(self, digest: bytes, fn: Any) -> None:
        self.calls.append(("fn", digest))

    def send_client(self, client: bytes, frames: list) -> bool:
        self.calls.append(("client", client, P.unpack(frames).command))
        return True


class Endpoint:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, P.Message]] = []

    def send(self, ident: bytes, frames: list) -> bool:
        self.sent.append((ident, P.unpack(frames)))
        return True


def msg(cmd: bytes, header: dict) -> P.Message:
    return P.unpack(P.pack(cmd, header))


def held_task(tasks: Tasks, w: WorkerInfo, tid: str) -> TaskRecord:
    rec = TaskRecord(TaskSpec(tid, "f", "default", P.BY_NAME, "client-1", None, 0, None, 0.0), b"client-1")
    tasks.tasks.add(rec)
    tasks.tasks.set_state(rec, TaskState.QUEUED)
    rec.worker = w.ident
    tasks.tasks.set_state(rec, TaskState.RESERVED)
    w.inflight[tid] = 1
    return rec


def test_registration_reports_and_losses_through_task_side():
    tasks, ep = Tasks(), Endpoint()
    side = WorkerSide(tasks, ep)
    side.on_message(b"w1", msg(P.DONE, {"ids": [], "states": [], "credit": 1}))
    assert ep.sent[-1][1].command == P.UNKNOWN and ep.sent[-1][1].header["instance"] == "vent-1"

    side.on_message(b"w1", msg(P.READY, {"id": "w1", "queues": ["default"], "credit": 2}))
    w = tasks.workers[b"w1"]
    assert ep.sent[-1][1].command == P.HEARTBEAT and tasks.heard_at > 0
    a, b = held_task(tasks, w, "a"), held_task(tasks, w, "b")

    side.on_message(b"w1", msg(P.STARTED, {"ids": ["a"]}))
    assert a.state is TaskState.RUNNING
    side.on_message(b"w1", msg(P.DONE, {"ids": ["a"], "states": ["SUCCESS"], "credit": 1}))
    assert ("close", "a", TaskState.SUCCESS) in tasks.calls and w.credit == 3 and tasks.counters["done"] == 1

    # the same worker on a fresh connection: SYNC up to the last TASKS sent
    side.on_message(b"w1", msg(P.READY, {"id": "w1", "queues": ["default"], "credit": 2}))
    assert [m.command for _, m in ep.sent[-2:]] == [P.SYNC, P.HEARTBEAT] and ep.sent[-2][1].header["upto"] == 7

    w = tasks.workers[b"w1"]
    for attempt in range(1, MAX_LOST_ATTEMPTS + 1):
        side.drop(w, cause="no heartbeat")
        if attempt < MAX_LOST_ATTEMPTS:
            assert tasks.calls[-1] == ("requeue", "b") and b.spec.attempt == attempt + 1
            tasks.workers[w.ident] = w
            b.worker = w.ident
            w.inflight["b"] = 1
    assert tasks.calls[-1] == ("finish", "b", TaskState.FAILED, "WorkerLost")
    assert b"w1" not in tasks.workers and tasks.counters["lost_attempts"] == MAX_LOST_ATTEMPTS


def test_spawn_is_accepted_and_acknowledged_durably():
    tasks, ep = Tasks(), Endpoint()
    side = WorkerSide(tasks, ep)
    side.on_message(b"w1", msg(P.READY, {"id": "w1", "queues": ["default"], "credit": 2}))
    side.on_message(b"w1", msg(P.SPAWN, {"req": 3, "t": [], "f": []}))
    assert tasks.calls[-2:] == [("accept", b"w1"), ("durable",)]
    assert ep.sent[-1][1].command == P.REPLY and ep.sent[-1][1].header == {"req": 3, "ok": True}


def test_malformed_continue_and_progress_are_refused_before_they_touch_a_task():
    """CONTINUE's chain and PROGRESS rows are checked when they arrive (a bad chain link was
    once refused only later, at the worker that ran it)."""
    import pytest

    from zq.errors import ProtocolError

    tasks, ep = Tasks(), Endpoint()
    side = WorkerSide(tasks, ep)
    side.on_message(b"w1", msg(P.READY, {"id": "w1", "queues": ["default"], "credit": 2}))
    w = tasks.workers[b"w1"]
    rec = held_task(tasks, w, "a")
    head = {"id": "a", "name": "g", "digest": b"d" * 16, "queue": "default"}
    bad = P.Message(P.CONTINUE, {**head, "then": [["h", b"short", b"", b"", None]]}, [b"fn", b"args"])
    with pytest.raises(ProtocolError, match="chain link"):
        side.on_message(b"w1", bad)
    assert rec.worker == w.ident and "a" in tasks.tasks  # untouched
    with pytest.raises(ProtocolError, match="PROGRESS"):
        side.on_message(b"w1", msg(P.PROGRESS, {"p": [["a", 1, 2]]}))
    side.on_message(b"w1", msg(P.PROGRESS, {"p": [["a", 1, 4, "a quarter", 10.0]]}))
    assert rec.progress.done == 1 and rec.progress.total == 4 and rec.progress.message == "a quarter"
