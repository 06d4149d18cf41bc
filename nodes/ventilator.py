"""The ventilator: accepts tasks from clients and hands them to workers by credit.

    clients (DEALER) ──SUBMIT/REQUEST──▶ [clients ROUTER] ┐
                     ◀──REPLY/REJECT───                   │  one thread owns
    workers (DEALER) ◀──TASKS/CANCEL─── [workers ROUTER]  ├─ all three sockets
                     ──READY/STARTED/DONE/RETRY/BYE──▶    │  (Ventilator.loop)
    sink (ROUTER)    ◀──RESULT (cancelled, WorkerLost)─ [DEALER, SinkLink]

Dispatch (``_dispatch``) is by credit: a worker announces how many tasks it can
take (READY) and gets more credit back with every DONE; the ventilator never
sends more than the credit, so no worker hoards a backlog and the ROUTER never
reaches its high-water mark.  Each queue is FIFO; a task handed back after a
lost worker or for a retry goes to the front of its queue.

A worker silent for ``heartbeat_timeout`` is lost: every task it held is queued
again with the cause recorded; after 3 losses the task fails with WorkerLost.
"""

from __future__ import annotations

import collections
import heapq
import logging
import time
from typing import Any, Optional

import zmq

from zq import protocol as P
from zq._sockets import check_bind_allowed, router
from zq.config import Config
from zq.envelope import ErrorInfo, TaskState
from zq.errors import ProtocolError
from zq.protocol import TaskSpec

from .common import HOST, Node, Peers, SinkLink, result_row
from .journal import Journal

log = logging.getLogger("zq.ventilator")

MAX_LOST_ATTEMPTS = 3
FINISHED_MEMORY = 100_000  # finished task states remembered for get_status
FN_MEMORY = 10_000
FN_STORE_PER_WORKER = 4096  # = nodes.worker.FN_STORE


_FINAL_STATES = frozenset(s.value for s in (TaskState.SUCCESS, TaskState.FAILED, TaskState.CANCELED))


class WorkerInfo:
    __slots__ = ("ident", "id", "queues", "credit", "inflight", "fns", "host", "pid", "executor",
                 "concurrency", "last_seen", "last_sent", "done", "registered_at")

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
        self.inflight: set[str] = set()
        self.fns: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self.host = str(header.get("host", ""))
        self.pid = header.get("pid", 0) if isinstance(header.get("pid"), int) else 0
        self.executor = str(header.get("executor", ""))
        self.concurrency = header.get("concurrency", 0) if isinstance(header.get("concurrency"), int) else 0
        self.last_seen = now
        self.last_sent = now
        self.done = 0
        self.registered_at = time.time()

    def describe(self) -> str:
        return f"worker {self.id} on host {self.host} (pid {self.pid})"


class TaskRecord:
    __slots__ = ("spec", "state", "worker", "client")

    def __init__(self, spec: TaskSpec, client: bytes) -> None:
        self.spec = spec
        self.state = TaskState.QUEUED
        self.worker: Optional[bytes] = None
        self.client = client


class Ventilator(Node):
    role = "ventilator"

    def __init__(self, config: Config, journal: Optional[str] = None) -> None:
        super().__init__(config)
        self.journal_path = journal
        self.journal: Optional[Journal] = None
        self._journaled_fns: set[bytes] = set()
        self.tasks: dict[str, TaskRecord] = {}
        self.queues: dict[str, collections.deque[str]] = collections.defaultdict(collections.deque)
        self.delayed: list[tuple[float, str]] = []  # (monotonic not-before, task id)
        self.fns: collections.OrderedDict[bytes, Any] = collections.OrderedDict()
        self.workers: dict[bytes, WorkerInfo] = {}
        self.finished: collections.OrderedDict[str, TaskState] = collections.OrderedDict()
        self.rate_samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=20)
        self.client_peers = Peers(config.heartbeat_interval, max(60.0, 10 * config.heartbeat_timeout))

    # -- sockets ----------------------------------------------------------------------
    def setup(self) -> None:
        assert self.ctx is not None
        cfg = self.config
        for ep in (cfg.ventilator_clients, cfg.ventilator_workers):
            check_bind_allowed(ep, secured=self.keys is not None, insecure=cfg.insecure)
        # separate key lists: a client key cannot register as a worker, nor a worker key submit
        self.start_auth({"clients": ("clients",), "workers": ("workers",)})
        self.clients, ep_c = router(self.ctx, cfg.ventilator_clients, cfg.max_message_size,
                                    keys=self.keys, domain="clients")
        self.wsock, ep_w = router(self.ctx, cfg.ventilator_workers, cfg.max_message_size,
                                  keys=self.keys, domain="workers")
        self.endpoints = {"clients": ep_c, "workers": ep_w}
        self.poller = zmq.Poller()
        self.poller.register(self.clients, zmq.POLLIN)
        self.poller.register(self.wsock, zmq.POLLIN)
        self.poller.register(self._waker.fileno(), zmq.POLLIN)
        self.sink = SinkLink(self, cfg.sink_endpoint, f"ventilator-{self.instance}".encode(), self.poller)
        if self.journal_path:
            self._resume(self.journal_path)

    def _resume(self, path: str) -> None:
        """Open the journal and queue again every task it holds (results retained)."""
        self.journal = Journal(path)
        specs, fns = self.journal.load()
        self.fns.update(fns)
        self._journaled_fns.update(fns)
        for spec in specs:
            spec.retain = True  # its client may be gone: keep the result at the sink
            self.tasks[spec.task_id] = TaskRecord(spec, spec.client.encode())
            self.queues[spec.queue].append(spec.task_id)
            self.journal.put(spec)
        self.journal.prune_functions(s.digest for s in specs)
        self.journal.commit()
        if specs:
            log.info("journal %s: resumed %d task(s)", path, len(specs))
    def close(self) -> None:
        for s in ("clients", "wsock"):
            sock = getattr(self, s, None)
            if sock is not None:
                sock.close(0)
        if getattr(self, "sink", None) is not None:
            self.sink.close()
        if self.journal is not None:
            self.journal.close()

    # -- the loop ---------------------------------------------------------------------
    def loop(self) -> None:
        interval_ms = int(self.config.heartbeat_interval * 1000 / 2) or 1
        next_tick = 0.0
        while not self.stopping:
            events = dict(self.poller.poll(interval_ms))
            if self.wsock in events:
                self._drain(self.wsock, self._on_worker)
            if self.clients in events:
                self._drain(self.clients, self._on_client)
            if self.sink.socket in events:
                self.sink.on_readable()
            if self._waker.fileno() in events:
                self._waker.drain()
            now = time.monotonic()
            if now >= next_tick:
                self._tick(now)
                next_tick = now + self.config.heartbeat_interval / 2
            if self.journal is not None and self.journal.dirty:
                self.journal.commit()  # durable before any worker sees a task
            self._dispatch()
            self.sink.flush()
        self._shutdown()

    def _drain(self, sock: zmq.Socket, handler: Any, limit: int = 1000) -> None:
        for _ in range(limit):
            try:
                frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            ident = frames[0].bytes
            try:
                msg = P.unpack(frames[1:])
                handler(ident, msg)
            except ProtocolError as exc:
                self.bad_message("clients" if sock is self.clients else "workers", exc)
                self._send(sock, ident, P.error_message("protocol", str(exc)))
            except Exception as exc:  # a bug must not kill the node; it is counted and logged
                self.counters["internal_errors"] += 1
                log.exception("error handling a message: %s", exc)

    def _send(self, sock: zmq.Socket, ident: bytes, frames: list) -> bool:
        return self._try_send(sock, ident, frames) == 0

    def _try_send(self, sock: zmq.Socket, ident: bytes, frames: list) -> int:
        """0 if sent, else the errno: EHOSTUNREACH (peer gone) or EAGAIN (peer not reading)."""
        try:
            sock.send_multipart([ident, *frames], flags=zmq.NOBLOCK, copy=False)
            return 0
        except zmq.ZMQError as exc:
            self.counters["undeliverable"] += 1
            log.debug("cannot send to %r: %s", ident, exc)
            return exc.errno

    # -- clients ----------------------------------------------------------------------
    def _heartbeat(self) -> list:
        return P.pack(P.HEARTBEAT, {"id": "ventilator", "instance": self.instance,
                                    "max": self.config.max_message_size})

    def _on_client(self, ident: bytes, msg: P.Message) -> None:
        cmd = msg.command
        if self.client_peers.seen(ident, time.monotonic()):
            self._send(self.clients, ident, self._heartbeat())  # a new client learns our instance
        if cmd == P.SUBMIT:
            self._on_submit(ident, msg)
        elif cmd == P.REQUEST:
            req = P.field(msg.header, "req", int, cmd)
            op = P.field(msg.header, "op", str, cmd)
            try:
                data = self._request(ident, op, msg.header)
                reply = {"req": req, "ok": True, "data": data}
            except (ProtocolError, KeyError, TypeError, ValueError) as exc:
                reply = {"req": req, "ok": False, "error": f"{op}: {exc}"}
            self._send(self.clients, ident, P.pack(P.REPLY, reply))
        elif cmd == P.HEARTBEAT:
            pass  # liveness only: we heartbeat our clients from _tick
        else:
            raise ProtocolError(f"clients may not send {cmd.decode()}")

    def _on_submit(self, ident: bytes, msg: P.Message) -> None:
        tasks, fns = P.unpack_tasks(msg)
        for digest, frame in fns.items():
            self.fns[digest] = frame
            self.fns.move_to_end(digest)
        while len(self.fns) > FN_MEMORY:
            self.fns.popitem(last=False)
        missing: list[str] = []
        for spec in tasks:
            if spec.digest not in self.fns:
                missing.append(spec.task_id)
                continue
            rec = self.tasks.get(spec.task_id)
            if rec is not None:  # a resubmission (client reconnected): keep the one we have
                rec.client = ident
                continue
            if spec.task_id in self.finished:
                continue  # already ran; its result is at the sink
            spec.client = spec.client or ident.decode("utf-8", "replace")
            self.tasks[spec.task_id] = TaskRecord(spec, ident)
            if self.journal is not None:
                self.journal.put(spec)
                if spec.digest not in self._journaled_fns:
                    self.journal.put_function(spec.digest, self.fns[spec.digest])
                    self._journaled_fns.add(spec.digest)
            self.queues[spec.queue].append(spec.task_id)
            self.counters["submitted"] += 1
        if missing:
            self._send(self.clients, ident, P.pack(P.REJECT, {
                "ids": missing, "code": "unknown-function",
                "msg": "the ventilator does not hold this function (it restarted?): send it again"}))

    def _request(self, ident: bytes, op: str, h: dict) -> Any:
        if op == "status":
            return [self.state_of(tid).value for tid in P.str_list(h, "ids", P.REQUEST)]
        if op == "cancel":
            return [self._cancel(tid) for tid in P.str_list(h, "ids", P.REQUEST)]
        if op == "stats":
            return self.stats()
        raise ValueError(f"unknown operation {op!r}")

    def state_of(self, task_id: str) -> TaskState:
        rec = self.tasks.get(task_id)
        if rec is not None:
            return rec.state
        return self.finished.get(task_id, TaskState.UNKNOWN)

    def _cancel(self, task_id: str) -> str:
        """``"canceled"`` (it will not run), ``"requested"`` (its process worker was asked to
        stop it: the outcome arrives as its result, CANCELED or not), or ``""`` (too late,
        or it runs in a thread, which cannot be stopped)."""
        rec = self.tasks.get(task_id)
        if rec is None:
            return "canceled" if self.finished.get(task_id) is TaskState.CANCELED else ""
        if rec.state is TaskState.QUEUED and rec.worker is None:
            try:
                self.queues[rec.spec.queue].remove(task_id)
            except ValueError:  # waiting in the retry heap
                self.delayed = [(t, i) for t, i in self.delayed if i != task_id]
                heapq.heapify(self.delayed)
            self._finish(rec, TaskState.CANCELED, None)
            self.counters["canceled"] += 1
            return "canceled"
        w = self.workers.get(rec.worker) if rec.worker is not None else None
        if w is not None and w.executor == "process":
            # the worker drops it if not started, or terminates the process running it,
            # and reports CANCELED; a thread cannot be stopped, so those say False
            self._send(self.wsock, w.ident, P.pack(P.CANCEL, {"ids": [task_id]}))
            return "requested"
        return ""

    def _finish(self, rec: TaskRecord, state: TaskState, error: Optional[ErrorInfo]) -> None:
        """Finish a task that no worker will report on: the result goes to the sink."""
        spec = rec.spec
        self._forget_task(spec.task_id)
        self._remember(spec.task_id, state)
        self.sink.add(result_row(spec, state, error, worker="ventilator", attempts=spec.attempt))

    def _forget_task(self, task_id: str) -> None:
        self.tasks.pop(task_id, None)
        if self.journal is not None:
            self.journal.remove(task_id)

    def _remember(self, task_id: str, state: TaskState) -> None:
        self.finished[task_id] = state
        if len(self.finished) > FINISHED_MEMORY:
            self.finished.popitem(last=False)

    # -- workers ----------------------------------------------------------------------
    def _on_worker(self, ident: bytes, msg: P.Message) -> None:
        cmd = msg.command
        now = time.monotonic()
        w = self.workers.get(ident)
        if cmd == P.READY:
            self._register(ident, msg.header, now)
            return
        if w is None:
            # not registered (we restarted, or it was declared lost): ask it to say READY
            self._send(self.wsock, ident, P.pack(P.UNKNOWN, {"instance": self.instance}))
            return
        w.last_seen = now
        if cmd == P.DONE:
            ids = P.str_list(msg.header, "ids", cmd)
            states = P.str_list(msg.header, "states", cmd)
            credit = P.field(msg.header, "credit", int, cmd)
            if len(ids) != len(states) or not all(st in _FINAL_STATES for st in states):
                raise ProtocolError("DONE: ids and final states must pair up")
            for tid, st in zip(ids, states):
                w.inflight.discard(tid)
                rec = self.tasks.get(tid)
                if rec is not None and rec.worker == ident:
                    self._forget_task(tid)
                    self._remember(tid, TaskState(st))
                    self.counters["done"] += 1
                    w.done += 1
            w.credit = max(0, min(100_000, w.credit + credit))
        elif cmd == P.STARTED:
            for tid in P.str_list(msg.header, "ids", cmd):
                rec = self.tasks.get(tid)
                if rec is not None and rec.worker == ident and rec.state is TaskState.QUEUED:
                    rec.state = TaskState.RUNNING
        elif cmd == P.RETRY:
            tid = P.field(msg.header, "id", str, cmd)
            delay = float(P.field(msg.header, "delay", (int, float), cmd))
            w.credit += max(0, P.field(msg.header, "credit", int, cmd))
            w.inflight.discard(tid)
            rec = self.tasks.get(tid)
            if rec is not None and rec.worker == ident:
                lost = msg.header.get("lost")
                if isinstance(lost, str):  # its executor process died, not a retry of an error
                    rec.spec.lost.append(lost)
                    self.counters["lost_attempts"] += 1
                else:
                    self.counters["retried"] += 1
                rec.spec.attempt += 1
                self._requeue(rec, delay=delay)
        elif cmd == P.BYE:
            for tid in P.str_list(msg.header, "ids", cmd):
                w.inflight.discard(tid)
                rec = self.tasks.get(tid)
                if rec is not None and rec.worker == ident:
                    self._requeue(rec)
            if msg.header.get("final"):
                log.info("%s left", w.describe())
                self._drop_worker(w, cause=None)
            else:
                w.credit = 0  # a stopping worker takes nothing more
        elif cmd == P.HEARTBEAT:
            pass
        else:
            raise ProtocolError(f"workers may not send {cmd.decode()}")

    def _register(self, ident: bytes, header: dict, now: float) -> None:
        new = WorkerInfo(ident, header, now)
        old = self.workers.get(ident)
        if old is not None:
            # the same worker reconnected: it still runs what it held
            new.inflight = old.inflight
        else:
            log.info("%s joined, queues=%s credit=%d", new.describe(), ",".join(new.queues), new.credit)
        self.workers[ident] = new
        self._send(self.wsock, ident, self._heartbeat())

    def _requeue(self, rec: TaskRecord, delay: float = 0.0) -> None:
        rec.state = TaskState.QUEUED
        rec.worker = None
        if self.journal is not None:
            self.journal.put(rec.spec)  # attempt and lost causes changed
        if delay > 0:
            heapq.heappush(self.delayed, (time.monotonic() + delay, rec.spec.task_id))
        else:
            self.queues[rec.spec.queue].appendleft(rec.spec.task_id)

    def _drop_worker(self, w: WorkerInfo, cause: Optional[str]) -> None:
        """Forget a worker; re-queue what it held (a loss when ``cause`` is given)."""
        self.workers.pop(w.ident, None)
        for tid in list(w.inflight):
            rec = self.tasks.get(tid)
            if rec is None or rec.worker != w.ident:
                continue
            if cause is None:
                self._requeue(rec)
                continue
            spec = rec.spec
            spec.lost.append(f"attempt {spec.attempt}: {w.describe()} lost: {cause}")
            self.counters["lost_attempts"] += 1
            if len(spec.lost) >= MAX_LOST_ATTEMPTS:
                msg = (f"task {tid} ({spec.name}) lost its worker {len(spec.lost)} times: "
                       + "; ".join(spec.lost))
                self._finish(rec, TaskState.FAILED, ErrorInfo("WorkerLost", msg, "", "zq.errors"))
            else:
                spec.attempt += 1
                self._requeue(rec)
        w.inflight.clear()

    def _tick(self, now: float) -> None:
        cfg = self.config
        for w in list(self.workers.values()):
            if now - w.last_seen > cfg.heartbeat_timeout:
                log.warning("%s missed heartbeats for %.1fs: declared lost, re-queueing %d task(s)",
                            w.describe(), now - w.last_seen, len(w.inflight))
                self._drop_worker(w, cause=f"no heartbeat for {now - w.last_seen:.1f}s")
                continue
            if now - w.last_sent >= cfg.heartbeat_interval:
                w.last_sent = now
                self._send(self.wsock, w.ident, self._heartbeat())
        for ident in self.client_peers.due(now):
            self._send(self.clients, ident, self._heartbeat())
        while self.delayed and self.delayed[0][0] <= now:
            _, tid = heapq.heappop(self.delayed)
            rec = self.tasks.get(tid)
            if rec is not None and rec.state is TaskState.QUEUED and rec.worker is None:
                self.queues[rec.spec.queue].appendleft(tid)
        self.rate_samples.append((now, self.counters["done"]))
        self.sink.tick(now)

    # -- dispatch ---------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Hand queued tasks to workers with credit, FIFO per queue, most credit first."""
        if not self.workers:
            return
        for qname, q in self.queues.items():
            if not q:
                continue
            ready = [w for w in self.workers.values() if w.credit > 0 and qname in w.queues]
            if not ready:
                continue
            ready.sort(key=lambda w: -w.credit)
            for w in ready:
                if not q:
                    break
                self._send_tasks(w, q)

    def _send_tasks(self, w: WorkerInfo, q: collections.deque[str]) -> None:
        batch: list[TaskSpec] = []
        fns: dict[bytes, Any] = {}
        n = min(w.credit, len(q))
        limit = P.batch_limit(self.config.max_message_size)
        size = 0
        for _ in range(n):
            if size > limit:
                break
            tid = q.popleft()
            rec = self.tasks.get(tid)
            if rec is None or rec.state is not TaskState.QUEUED or rec.worker is not None:
                continue  # cancelled or already dispatched: a stale entry
            spec = rec.spec
            if spec.digest not in w.fns:
                fn = self.fns.get(spec.digest)
                if fn is None:  # evicted: cannot run it any more
                    self._finish(rec, TaskState.FAILED, ErrorInfo(
                        "SerializationError", "the task's function is no longer held by the ventilator",
                        "", "zq.errors"))
                    continue
                fns[spec.digest] = fn
                size += len(fn)
            batch.append(spec)
            size += len(spec.args)
        if not batch:
            return
        err = self._try_send(self.wsock, w.ident, P.pack_tasks(P.TASKS, batch, fns))
        if err:
            for spec in reversed(batch):  # not sent: put the batch back
                q.appendleft(spec.task_id)
            if err == zmq.EHOSTUNREACH:  # the worker's connection is gone
                self._drop_worker(w, cause="its connection was closed")
            return
        for d in fns:  # kept in step with the worker's function store (same order, same cap)
            w.fns[d] = None
        while len(w.fns) > FN_STORE_PER_WORKER:
            w.fns.popitem(last=False)
        w.credit -= len(batch)
        w.last_sent = time.monotonic()
        for spec in batch:
            rec = self.tasks[spec.task_id]
            rec.worker = w.ident
            w.inflight.add(spec.task_id)
        self.counters["dispatched"] += len(batch)

    # -- stats / stop -----------------------------------------------------------------
    def stats(self) -> dict:
        rate = 0.0
        if len(self.rate_samples) >= 2:
            (t0, d0), (t1, d1) = self.rate_samples[0], self.rate_samples[-1]
            if t1 > t0:
                rate = (d1 - d0) / (t1 - t0)
        queued = collections.Counter()
        running = collections.Counter()
        for rec in self.tasks.values():
            if rec.state is TaskState.RUNNING:
                running[rec.spec.queue] += 1
            else:
                queued[rec.spec.queue] += 1
        served = {q for w in self.workers.values() for q in w.queues}
        return {
            "instance": self.instance,
            "host": HOST,
            "endpoints": self.endpoints,
            "uptime": time.time() - self.started,
            "secured": self.keys is not None,
            "workers": [
                {"id": w.id, "host": w.host, "pid": w.pid, "queues": w.queues, "executor": w.executor,
                 "concurrency": w.concurrency, "running": len(w.inflight), "credit": w.credit,
                 "done": w.done}
                for w in self.workers.values()
            ],
            "queues": {q: {"queued": queued[q], "running": running[q], "served": q in served}
                       for q in sorted(set(queued) | set(running) | served)},
            "counters": dict(self.counters),
            "tasks_per_second": rate,
        }

    def _shutdown(self) -> None:
        """On stop: tell workers nothing (they detect it) but get pending results to the sink."""
        deadline = time.monotonic() + 2.0
        while self.sink.unacked and time.monotonic() < deadline:
            self.sink.flush()
            if self.sink.socket.poll(100):
                self.sink.on_readable()
