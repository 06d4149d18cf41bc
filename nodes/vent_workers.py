"""What workers tell the ventilator: READY, DONE, STARTED, RETRY, BYE, RETURN, PROGRESS,
SPAWN, CONTINUE — and what a lost worker means for the tasks it held.

    workers (DEALER) ──▶ [workers RouterEndpoint] ──▶ WorkerSide.on_message
                     ◀── UNKNOWN, SYNC, REPLY, HEARTBEAT ── WorkerSide (same endpoint)
    WorkerSide ── TaskSide (the Ventilator: task table, requeue, close, journal) ──▶

A part of :class:`zq.nodes.ventilator.Ventilator`, which holds one (``workers_side``) and
hands it every message of its workers endpoint; it reaches the ventilator only through
``TaskSide``.  Every method runs on the ventilator's one thread.

A worker that registers again on a fresh connection (it was cut off, or missed our
heartbeats) says in READY which tasks finished there without being reported and which
it still holds.  Whatever else we thought it held went down with the old connection —
a DONE lost in a closed socket, say — and is queued again; if it did run, the sink keeps
one result.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any, Optional, Protocol

from zq import protocol as P
from zq.context import progress_eta
from zq.envelope import STATE_OF, ErrorInfo, TaskState
from zq.errors import ProtocolError

from .dispatch import Dispatch
from .endpoint import RouterEndpoint
from .records import TaskRecord, WorkerInfo
from .scheduler import Scheduler
from .tasktable import TaskTable

log = logging.getLogger("zq.ventilator")

MAX_LOST_ATTEMPTS = 3
LOST_TTL = 3600.0  # seconds a lost worker stays listed (stats "lost_workers")
LOST_KEPT = 200  # at most this many listed
_FINAL_STATES = frozenset(s.value for s in (TaskState.SUCCESS, TaskState.FAILED, TaskState.CANCELED))


class TaskSide(Protocol):
    """What ``WorkerSide`` uses of the ventilator (``zq.nodes.ventilator.Ventilator``)."""

    instance: str
    counters: collections.Counter
    tasks: TaskTable
    dispatch: Dispatch
    workers: dict[bytes, WorkerInfo]
    registry: dict[str, dict]
    scheduler: Scheduler
    tasks_seq: int
    heard_at: float

    def heartbeat(self) -> list: ...
    def requeue(self, rec: TaskRecord, delay: float = 0.0) -> None: ...
    def close_task(self, rec: TaskRecord, state: TaskState, worker: str, error: Optional[str]) -> None: ...
    def finish_task(self, rec: TaskRecord, state: TaskState, error: Optional[ErrorInfo]) -> None: ...
    def make_durable(self) -> None: ...
    def accept_batch(self, ident: bytes, msg: P.Message, ep: Optional[RouterEndpoint] = None) -> list[str]: ...
    def hold_function(self, digest: bytes, fn: Any) -> None: ...
    def send_client(self, client: bytes, frames: list) -> bool: ...


class WorkerSide:
    """The ventilator's side of its workers: registration, reports, losses."""

    def __init__(self, tasks: TaskSide, endpoint: RouterEndpoint) -> None:
        self.v = tasks
        self.ep = endpoint
        #: workers lost (not those that left): newest last, pruned by ``lost_workers``
        self.lost: collections.deque[dict] = collections.deque(maxlen=LOST_KEPT)
        self.lost_by_cause: collections.Counter[str] = collections.Counter()

    def lost_workers(self, now: Optional[float] = None) -> list[dict]:
        """The workers lost in the last ``LOST_TTL`` seconds (older ones are dropped)."""
        cutoff = (time.time() if now is None else now) - LOST_TTL
        while self.lost and self.lost[0]["lost_at"] < cutoff:
            self.lost.popleft()
        return list(self.lost)

    def on_message(self, ident: bytes, msg: P.Message) -> None:
        cmd = msg.command
        now = self.v.heard_at = time.monotonic()  # heard_at: for the watchdog (nodes/common.py)
        w = self.v.workers.get(ident)
        if cmd == P.READY:
            self._register(ident, msg.header, now)
            return
        if w is None:
            # not registered (we restarted, or it was declared lost): ask it to say READY
            self.ep.send(ident, P.pack(P.UNKNOWN, {"instance": self.v.instance}))
            return
        w.last_seen = now
        h = msg.header
        if cmd == P.DONE:
            ids = P.str_list(h, "ids", cmd)
            self._on_done(w, ids, P.str_list(h, "states", cmd), P.check_done_errors(h), P.check_done_started(h))
            if ids:
                w.last_done = now
            # credit granted, or (negative) taken back: below 0 when tasks we sent were on their
            # way as the worker took it back (it counts the same; its next grants pay it back)
            w.credit = max(-100_000, min(100_000, w.credit + P.field(h, "credit", int, cmd)))
        elif cmd == P.STARTED:
            ids = P.str_list(h, "ids", cmd)
            if "busy" in h:  # its slots running a task now (checked before anything changes)
                w.set_busy(h["busy"])
            if ids:  # progress (_rebalance); a STARTED with only busy is not
                w.last_done = now
            wall = time.time()
            for tid in ids:
                rec = self.v.tasks.get(tid)
                if rec is not None and rec.worker == ident and rec.state is TaskState.RESERVED:
                    rec.started_at = wall
                    self.v.tasks.set_state(rec, TaskState.RUNNING)
        elif cmd == P.RETURN:  # unstarted tasks given back (RECLAIM): queued again, at the front
            ids = P.str_list(h, "ids", cmd)
            if ids:  # answered: another may follow (an empty answer: wait RECLAIM_WAIT first)
                w.reclaim_sent = float("-inf")
            for tid in ids:
                w.inflight.pop(tid, None)
                rec = self.v.tasks.get(tid)
                if rec is not None and rec.worker == ident:
                    self.v.counters["given_back"] += 1
                    self.v.requeue(rec)
        elif cmd == P.RETRY:
            tid = P.field(h, "id", str, cmd)
            delay = float(P.field(h, "delay", (int, float), cmd))
            w.inflight.pop(tid, None)
            rec = self.v.tasks.get(tid)
            if rec is not None and rec.worker == ident:
                lost = h.get("lost")
                if isinstance(lost, str):  # its executor process died, not a retry of an error
                    rec.spec.lost.append(lost)
                    self.v.counters["lost_attempts"] += 1
                else:
                    self.v.counters["retried"] += 1
                    self.v.tasks.set_state(rec, TaskState.RETRYING)
                rec.spec.attempt += 1
                self.v.requeue(rec, delay=delay)
        elif cmd == P.BYE:
            for tid in P.str_list(h, "ids", cmd):
                w.inflight.pop(tid, None)
                rec = self.v.tasks.get(tid)
                if rec is not None and rec.worker == ident:
                    self.v.requeue(rec)
            if h.get("final"):
                log.info("%s left", w.describe())
                self.drop(w, cause=None)
            else:
                w.credit = 0  # a stopping worker takes nothing more
        elif cmd == P.HELD:
            self._on_held(w, h)
        elif cmd == P.PROGRESS:
            self._on_progress(h)
        elif cmd == P.SPAWN:
            req = h.get("req")
            try:
                self.v.accept_batch(ident, msg, self.ep)
            finally:  # the worker keeps a follow-up until we say we have it (or refused it)
                if type(req) is int:
                    self.v.make_durable()
                    self.ep.send(ident, P.pack(P.REPLY, {"req": req, "ok": True}))
        elif cmd == P.CONTINUE:
            self._on_continue(w, msg)
        elif cmd != P.HEARTBEAT:
            raise ProtocolError(f"workers may not send {cmd.decode()}")

    def _on_done(self, w: WorkerInfo, ids: list[str], states: list[str],
                 errors: Optional[dict[str, P.DoneError]] = None,
                 started: Optional[dict[str, float]] = None) -> None:
        if len(ids) != len(states) or not all(st in _FINAL_STATES for st in states):
            raise ProtocolError("DONE: ids and final states must pair up")
        for tid, st in zip(ids, states):
            w.inflight.pop(tid, None)
            rec = self.v.tasks.get(tid)
            if rec is not None and rec.worker == w.ident:
                err = errors.get(tid) if errors and st != "SUCCESS" else None
                if err is not None:  # the history keeps it (nodes/history.py)
                    rec.error = tuple(err)
                if started and rec.started_at is None:  # ran from a batch: no STARTED came
                    rec.started_at = started.get(tid)
                self.v.close_task(rec, STATE_OF[st], w.id,
                                  None if st == "SUCCESS" else (err.type if err else st))
                self.v.counters["done"] += 1
                w.done += 1

    def _on_progress(self, h: dict) -> None:
        by_client: dict[bytes, list] = {}
        for row in P.progress_rows(h):
            rec = self.v.tasks.get(row.task_id)
            if rec is not None:  # kept with its ETA for get_progress from any client
                rec.progress_first, eta = progress_eta(rec.progress_first, row.done, row.total, row.at)
                rec.progress = P.ProgressReport(row.done, row.total, row.message, row.at, eta)
                if rec.spec.client:  # scheduled and follow-up tasks may have no one waiting
                    by_client.setdefault(rec.spec.client.encode(), []).append(row)
        for client, prows in by_client.items():
            self.v.send_client(client, P.pack(P.PROGRESS, {"p": prows}))

    def _on_continue(self, w: WorkerInfo, msg: P.Message) -> None:
        """The task goes on as another call: same id, new function and arguments."""
        h = msg.header
        tid = P.field(h, "id", str, P.CONTINUE)
        digest = P.field(h, "digest", bytes, P.CONTINUE)
        then = [P.check_chain_link(link) for link in P.field(h, "then", list, P.CONTINUE)]
        if len(msg.payload) != 2 or len(digest) != 16:
            raise ProtocolError("CONTINUE carries a 16-byte digest, a function frame and an argument frame")
        w.inflight.pop(tid, None)
        rec = self.v.tasks.get(tid)
        if rec is None or rec.worker != w.ident:
            return
        self.v.dispatch.finished(rec.spec)  # under its old name (limits count by name)
        rec.worker = None
        fn = msg.payload[0]
        self.v.hold_function(digest, fn if len(fn) else None)  # (journaled at respec's turn)
        spec = rec.spec
        spec.name = str(h.get("name") or spec.name)
        spec.digest = digest
        queue = h.get("queue")
        if isinstance(queue, str) and queue:
            spec.queue = queue
        spec.args = msg.payload[1]
        spec.opts = dict(spec.opts or {}, then=then, hops=(spec.opts or {}).get("hops", 0) + 1)
        self.v.tasks.respec(rec)  # indexed by queue and name; counted by function
        self.v.counters["continued"] += 1
        self.v.requeue(rec)

    def _done_lists(self, header: dict, cmd: bytes) -> tuple[list[str], list[str]]:
        done = P.str_list(header, "done", cmd) if "done" in header else []
        states = P.str_list(header, "states", cmd) if "done" in header else []
        if len(done) != len(states) or not all(st in _FINAL_STATES for st in states):
            raise ProtocolError(f"{cmd.decode()}: done ids and final states must pair up")
        return done, states

    def _on_held(self, w: WorkerInfo, h: dict) -> None:
        """The answer to our SYNC: everything we sent before it has reached the worker or
        was lost with an old connection; what it does not hold (or report done) was lost."""
        upto = h.get("upto")
        if type(upto) is not int:
            raise ProtocolError("HELD: upto must be an int")
        held = set(P.str_list(h, "held", P.HELD))
        done, states = self._done_lists(h, P.HELD)
        self._on_done(w, done, states)
        for tid, seq in list(w.inflight.items()):
            if seq > upto or tid in held:  # sent after the SYNC, or still there
                continue
            del w.inflight[tid]
            rec = self.v.tasks.get(tid)
            if rec is not None and rec.worker == w.ident:
                self.v.counters["requeued_on_reconnect"] += 1
                self.v.requeue(rec)

    def _register(self, ident: bytes, header: dict, now: float) -> None:
        new = WorkerInfo(ident, header, now)
        done, states = self._done_lists(header, P.READY)  # finished there, DONE not sent yet
        old = self.v.workers.get(ident)
        self.v.workers[ident] = new
        if old is not None:
            # the same worker on a fresh connection (or a new process with its id): what the
            # old connection carried may be lost; SYNC asks what it holds, and everything we
            # sent before the SYNC arrives before it (HELD, _on_held)
            new.inflight = old.inflight
            self._on_done(new, done, states)
            self.ep.send(ident, P.pack(P.SYNC, {"upto": self.v.tasks_seq}))
        else:
            log.info("%s joined, queues=%s credit=%d", new.describe(), ",".join(new.queues), new.credit)
        tasks = header.get("tasks")
        if isinstance(tasks, dict):
            for name, info in tasks.items():
                if isinstance(name, str) and isinstance(info, dict):
                    self.v.registry[name] = info
                    if isinstance(info.get("schedule"), dict):
                        self.v.scheduler.register(name, str(info.get("queue") or "default"), info["schedule"])
        self.ep.send(ident, self.v.heartbeat())

    def drop(self, w: WorkerInfo, cause: Optional[str]) -> None:
        """Forget a worker; re-queue what it held (a loss when ``cause`` is given)."""
        self.v.workers.pop(w.ident, None)
        if cause is not None:
            kind = "heartbeat" if cause.startswith("no heartbeat") else "connection"
            self.lost_by_cause[kind] += 1
            self.lost.append({"id": w.id, "host": w.host, "pid": w.pid, "cause": cause, "kind": kind,
                              "lost_at": time.time(), "tasks": len(w.inflight)})
        for tid in list(w.inflight):
            rec = self.v.tasks.get(tid)
            if rec is None or rec.worker != w.ident:
                continue
            if cause is None:
                self.v.requeue(rec)
                continue
            spec = rec.spec
            spec.lost.append(f"attempt {spec.attempt}: {w.describe()} lost: {cause}")
            self.v.counters["lost_attempts"] += 1
            if len(spec.lost) >= MAX_LOST_ATTEMPTS:
                msg = (f"task {tid} ({spec.name}) lost its worker {len(spec.lost)} times: "
                       + "; ".join(spec.lost))
                self.v.finish_task(rec, TaskState.FAILED, ErrorInfo("WorkerLost", msg, "", "zq.errors"))
            else:
                spec.attempt += 1
                self.v.requeue(rec)
        w.inflight.clear()

