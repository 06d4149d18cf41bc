"""The ventilator: accepts tasks from clients and hands them to workers by credit.

    clients (DEALER) ──SUBMIT/REQUEST/HB──▶ [clients ROUTER] ┐
                     ◀──REPLY/REJECT/PROGRESS/HB──           │  one thread owns
    workers (DEALER) ◀──TASKS/CANCEL/HB── [workers ROUTER]   ├─ all three sockets
                     ──READY/STARTED/DONE/RETRY/BYE/         │  (Ventilator.loop)
                       PROGRESS/SPAWN/CONTINUE/HB──▶         │
    sink (ROUTER)    ◀──RESULT (cancelled, WorkerLost)─ [DEALER, SinkLink]

Dispatch (``_dispatch``) is by credit: a worker announces how many tasks it can
take (READY) and gets more credit back with every DONE (or takes some back); the
ventilator never sends more than the credit, so the ROUTER never reaches its
high-water mark.  Free slots are served first, then the prefetch is shared evenly
among the workers of a queue, so no worker takes a backlog because it announced
the most credit.  A task sent and not started is RESERVED; it comes back
(RECLAIM, answered by RETURN) when its queue is paused or its name disabled, and
when a worker of its queue sits idle while the holder makes no progress
(``_rebalance``).  *Which* task goes next (priorities, paused queues,
disabled names, concurrency and rate limits, delays) is decided in
``nodes/dispatch.py``.  Every state change goes through ``_set_state`` (the task
table, ``nodes/tasktable.py``, indexed for admin calls), checked against
``zq.envelope.TRANSITIONS`` and reported to ``on_state`` policies.  How late the
loop runs and whether the sink is reachable: ``nodes/vent_health.py``.

Both ROUTERs are ``RouterEndpoint``s (``nodes/endpoint.py``: budgeted drains, ERROR
replies to bad input, heartbeats to clients, refused handshakes).  What workers say,
and what losing one means, is in ``nodes/vent_workers.py`` (``WorkerSide``): a
worker silent for ``heartbeat_timeout`` is lost, every task it held is queued
again with the cause recorded; after 3 losses the task fails with WorkerLost.
Results the ventilator decides itself (WorkerLost, a queued task cancelled, a
function it no longer holds) are journaled with the task's closing, in one commit,
and kept until the sink ACKs them (``nodes/journal.py``): a SIGKILL between the
two sends them again at the next start.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any, Optional, Sequence

import zmq

from zq import protocol as P
from zq._sockets import check_bind_allowed
from zq.config import Config
from zq.envelope import ErrorInfo, TaskInfo, TaskState
from zq.errors import ProtocolError
from zq.policy import Policy, run_hooks
from zq.protocol import TaskSpec
from zq.serialize import args_size

from . import admin
from .common import Node, SinkLink, result_row
from .dispatch import Dispatch
from .endpoint import Peers, RouterEndpoint
from .history import History, details
from .journal import Journal
from .records import TaskRecord, WorkerInfo
from .scheduler import Scheduler, slot_task
from .tasktable import TaskTable
from .node_metrics import ventilator_snapshot
from .vent_health import LoopLag, SinkWatch
from .vent_workers import WorkerSide

log = logging.getLogger("zq.ventilator")

FINISHED_MEMORY = 100_000  # finished task states remembered for get_status
FN_MEMORY = 10_000
FN_STORE_PER_WORKER = 4096  # = nodes.worker.FN_STORE
FN_PRUNE_INTERVAL = 2.0  # seconds between deletions of the journal's unused functions
REBALANCE_EVERY = 0.02  # seconds between looks for idle workers (``_rebalance``)
STALLED_AFTER = 0.05  # a worker that reported nothing for this long may give tasks back
RECLAIM_WAIT = 1.0  # a RECLAIM unanswered for this long may be sent again


class Ventilator(Node):
    role = "ventilator"

    def __init__(self, config: Config, journal: Optional[str] = None, policies: Sequence[Policy] = (),
                 history_retention: float = 7 * 86400.0, metrics: Optional[tuple[str, int]] = None) -> None:
        super().__init__(config)
        self.journal_path = journal
        self.journal: Optional[Journal] = None
        self.policies = list(policies)
        self.history_retention = history_retention
        self._journaled_fns: set[bytes] = set()
        self.dispatch = Dispatch()
        self.tasks = TaskTable(self.dispatch, self._on_state if self.policies else None, self._odd_transition)
        self.fns: collections.OrderedDict[bytes, Any] = collections.OrderedDict()
        self.workers: dict[bytes, WorkerInfo] = {}
        self.finished: collections.OrderedDict[str, TaskState] = collections.OrderedDict()
        self.keyed: dict[str, str] = {}  # de-duplication key -> task id, while queued or running
        self.registry: dict[str, dict] = {}  # task name -> what workers said about it (--import)
        self.rate_samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=20)
        self.client_peers = Peers(config.heartbeat_interval, max(60.0, 10 * config.heartbeat_timeout))
        self.history = History()
        self.scheduler = Scheduler()
        self._next_prune = 0.0
        self._next_fn_prune = 0.0
        self.tasks_seq = 0  # TASKS messages sent in this run (each carries its number)
        self.lag = LoopLag()
        self._next_rebalance = 0.0
        self.metrics_at = metrics  # (host, port) of --metrics-port (nodes/node_metrics.py)
        self.metrics: Optional[Any] = None  # its MetricsServer, and what it counts (TaskCounts)
        self.task_counts: Optional[Any] = None

    # -- sockets ----------------------------------------------------------------------
    def setup(self) -> None:
        assert self.ctx is not None
        cfg = self.config
        for ep in (cfg.ventilator_clients, cfg.ventilator_workers):
            check_bind_allowed(ep, secured=self.keys is not None, insecure=cfg.insecure)
        # separate key lists: a client key cannot register as a worker, nor a worker key submit
        self.start_auth({"clients": ("clients",), "workers": ("workers",)})
        # the two RouterEndpoints (nodes/endpoint.py); clients are heartbeated by client_peers
        self.clients = RouterEndpoint(self.ctx, cfg.ventilator_clients, name="clients", domain="clients",
                                      peers=self.client_peers, heartbeat=self._heartbeat, **self._ep_args())
        self.wsock = RouterEndpoint(self.ctx, cfg.ventilator_workers, name="workers", domain="workers",
                                    **self._ep_args())
        self.workers_side = WorkerSide(self, self.wsock)
        self.endpoints = {"clients": self.clients.endpoint, "workers": self.wsock.endpoint}
        self.poller = zmq.Poller()
        self.clients.register(self.poller)
        self.wsock.register(self.poller)
        self.poller.register(self._waker.fileno(), zmq.POLLIN)
        self.sink = SinkLink(self, cfg.sink_endpoint, f"ventilator-{self.instance}".encode(), self.poller)
        self.sink_watch = SinkWatch(cfg.sink_endpoint, cfg.heartbeat_timeout, cfg.heartbeat_interval,
                                    time.monotonic())
        if self.journal_path:
            self._resume(self.journal_path)
        if self.metrics_at is not None:
            from .node_metrics import MetricsServer, TaskCounts

            self.task_counts = TaskCounts()
            self.metrics = MetricsServer("ventilator", *self.metrics_at)
            self.endpoints["metrics"] = self.metrics.url

    def _resume(self, path: str) -> None:
        """Open the journal and queue again every task it holds (results retained)."""
        self.journal = Journal(path)
        self.history = History(self.journal.db, self.history_retention)
        self.scheduler = Scheduler(self.journal.db)
        self.dispatch.paused |= self.journal.holds("queue")
        self.dispatch.disabled |= self.journal.holds("name")
        specs, fns = self.journal.load()
        self.fns.update(fns)
        for spec in specs:
            spec.retain = True  # its client may be gone: keep the result at the sink
            self._accept(spec, spec.client.encode(), journal=False)
        # keep the functions of these tasks and of failed ones (requeue); forget the others
        gone = self.journal.prune_functions(set(self.tasks.digests) | self.history.functions())
        self._journaled_fns.update(d for d in fns if d not in gone)
        self.tasks.unused_digests.clear()
        results = self.journal.load_results()  # decided here, never acknowledged: send them again
        for row in results:
            self.sink.add(row)
        self.sink.on_acked = self.journal.acked  # deleted from the journal in the turn's commit
        if specs or gone or results:
            log.info("journal %s: resumed %d task(s) and %d unacknowledged result(s), dropped %d unused "
                     "function(s)", path, len(specs), len(results), len(gone))

    def _prune_functions(self) -> None:
        """Delete from the journal the functions no task uses any more (nor a failed or
        cancelled one in its history, for requeue): without this the table only grows."""
        unused = self.tasks.unused_digests
        if not unused:
            return
        self.tasks.unused_digests = set()
        if self.journal is None:
            return
        candidates = {d for d in unused if d in self._journaled_fns and d not in self.tasks.digests}
        candidates -= self.history.functions(candidates)
        if candidates:
            self.journal.drop_functions(candidates)
            self._journaled_fns -= candidates
            self.counters["functions_pruned"] += len(candidates)

    def _ep_args(self) -> dict:
        return dict(max_message=self.config.max_message_size, counters=self.counters,
                    on_bad=self.bad_message, keys=self.keys)

    def close(self) -> None:
        for s in ("clients", "wsock"):
            ep = getattr(self, s, None)
            if ep is not None:
                ep.close()
        if getattr(self, "sink", None) is not None:
            self.sink.close()
        if self.journal is not None:
            self.journal.close()
        if self.metrics is not None:
            self.metrics.close()

    # -- the loop ---------------------------------------------------------------------
    def loop(self) -> None:
        interval_ms = int(self.config.heartbeat_interval * 1000 / 2) or 1
        next_tick = 0.0
        while not self.stopping:
            events = dict(self.poller.poll(interval_ms))
            turn_start = time.monotonic()
            self.wsock.handle(events, self.workers_side.on_message)
            self.clients.handle(events, self._on_client)
            heard = self.sink.last_recv
            self.sink.handle(events)
            if self.sink.last_recv != heard:  # the sink said something: it is reachable
                self.sink_watch.heard(self.sink.last_recv)
            if self._waker.fileno() in events:
                self._waker.drain()
            now = time.monotonic()
            if now >= next_tick:
                self._tick(now)
                next_tick = now + self.config.heartbeat_interval / 2
            self._make_durable()  # before any worker sees a task
            self._dispatch()
            if now >= self._next_rebalance:
                self._next_rebalance = now + REBALANCE_EVERY
                self._rebalance(now)
            self.sink.flush()
            self.lag.turn(turn_start, time.monotonic())
        self._shutdown()

    def _send(self, ep: RouterEndpoint, ident: bytes, frames: list) -> bool:
        return ep.try_send(ident, frames) == 0

    def _heartbeat(self) -> list:
        return P.pack(P.HEARTBEAT, {"id": "ventilator", "instance": self.instance,
                                    "max": self.config.max_message_size})

    # -- task states ------------------------------------------------------------------
    def _set_state(self, rec: TaskRecord, new: TaskState) -> None:
        """Every state change: the task table checks it against TRANSITIONS (on the states
        users see: PAUSED is a queued task of a paused queue or disabled name) and reports
        it to ``on_state`` policies (``_on_state``)."""
        self.tasks.set_state(rec, new)

    def _odd_transition(self, rec: TaskRecord, old: TaskState, new: TaskState) -> None:
        self.counters["odd_transitions"] += 1
        log.warning("task %s: unexpected transition %s -> %s", rec.spec.task_id, old, new)

    def _on_state(self, rec: TaskRecord, old: TaskState, new: TaskState) -> None:
        s = rec.spec
        info = TaskInfo(s.task_id, s.name, s.queue, s.attempt, retries=s.retries, timeout=s.timeout,
                        retain_result=s.retain)
        run_hooks(self.policies, "on_state", info, s.task_id, old, new)

    def shown_state(self, rec: TaskRecord) -> TaskState:
        return self.tasks.shown(rec)

    def shown_state_of(self, task_id: str) -> TaskState:
        rec = self.tasks.get(task_id)
        if rec is not None:
            return self.shown_state(rec)
        state = self.finished.get(task_id)
        if state is None:
            e = self.history.get(task_id)
            state = TaskState(e["state"]) if e else TaskState.UNKNOWN
        return state

    # -- clients ----------------------------------------------------------------------
    def _on_client(self, ident: bytes, msg: P.Message) -> None:
        cmd = msg.command  # (the endpoint recorded the client in client_peers)
        if cmd == P.SUBMIT:
            ids = self.accept_batch(ident, msg)
            req = msg.header.get("req")
            if isinstance(req, int):  # a submit waiting for its answer (de-duplication keys)
                self._make_durable()  # before we say which task it is
                self._send(self.clients, ident, P.pack(P.REPLY, {"req": req, "ok": True, "data": ids}))
        elif cmd == P.REQUEST:
            req = P.field(msg.header, "req", int, cmd)
            op = P.field(msg.header, "op", str, cmd)
            try:
                reply = {"req": req, "ok": True, "data": admin.handle(self, ident, op, msg.header)}
            except (ProtocolError, KeyError, TypeError, ValueError) as exc:
                reply = {"req": req, "ok": False, "error": f"{op}: {exc}"}
            # whatever the answer shows (a task QUEUED, requeued, cancelled) must survive a
            # SIGKILL right after it: what this turn wrote, and what the request itself did
            self._make_durable()
            self._send(self.clients, ident, P.pack(P.REPLY, reply))
        elif cmd != P.HEARTBEAT:  # heartbeats: liveness only (we heartbeat clients from _tick)
            raise ProtocolError(f"clients may not send {cmd.decode()}")

    def _make_durable(self) -> None:
        if self.journal is not None:
            if self.journal.dirty:
                self.journal.commit()
            for row in self.journal.take_committed():  # the results decided: durable now
                self.sink.add(row)

    def accept_batch(self, ident: bytes, msg: P.Message, ep: Optional[RouterEndpoint] = None) -> list[str]:
        """Accept a batch; the id each task goes by (a de-duplicated one: the existing task).
        ``ep``: where the sender is (clients; a worker's SPAWN comes on the workers endpoint)."""
        tasks, fns = P.unpack_tasks(msg)
        for digest, frame in fns.items():
            self.fns[digest] = frame
            self.fns.move_to_end(digest)
        while len(self.fns) > FN_MEMORY:
            self.fns.popitem(last=False)
        missing: list[str] = []
        ids: list[str] = []
        for spec in tasks:
            if spec.digest != P.BY_NAME and spec.digest not in self.fns:
                missing.append(spec.task_id)
                ids.append(spec.task_id)
                continue
            # a follow-up (SPAWN) belongs to its parent's client, "" (none) for a scheduled
            # parent: never to the worker that sent it, whose routing id is no client's
            ids.append(self._accept(spec, ident if ep is None else spec.client.encode()))
        if missing:
            self._send(ep if ep is not None else self.clients, ident, P.unknown_function_message(missing))
        return ids

    def _accept(self, spec: TaskSpec, ident: bytes, journal: bool = True) -> str:
        rec = self.tasks.get(spec.task_id)
        if rec is not None:  # a resubmission (client reconnected): keep the one we have
            rec.client = ident
            return spec.task_id
        if spec.task_id in self.finished or spec.task_id in self.history:
            return spec.task_id  # already ran; its result is at the sink
        key = (spec.opts or {}).get("key")
        if isinstance(key, str):
            existing = self.keyed.get(key)
            if existing is not None and existing in self.tasks:
                self.counters["deduplicated"] += 1
                return existing
            self.keyed[key] = spec.task_id
        # a client's task without its own client field goes to the client that sent it;
        # "" is "no client" (a schedule's slot and its follow-ups): recorded at the sink only
        spec.client = spec.client or ident.decode("utf-8", "replace")
        rec = TaskRecord(spec, ident)
        self.tasks.add(rec)
        if journal and self.journal is not None:
            self.journal.put(spec)
            if spec.digest != P.BY_NAME and spec.digest not in self._journaled_fns:
                self.journal.put_function(spec.digest, self.fns[spec.digest])
                self._journaled_fns.add(spec.digest)
        now = time.monotonic()
        self.dispatch.learn(spec, now)
        self._set_state(rec, TaskState.QUEUED)  # shown PAUSED if its queue is paused
        eta = (spec.opts or {}).get("eta")
        if isinstance(eta, (int, float)) and eta > time.time():
            self.dispatch.push_later(spec.task_id, now + (eta - time.time()))
        else:
            self.dispatch.push(spec)
        self.counters["submitted"] += 1
        return spec.task_id

    def cancel(self, task_id: str) -> str:
        """``"canceled"`` (it will not run), ``"requested"`` (its process worker was asked to
        stop it: the outcome arrives as its result, CANCELED or not), or ``""`` (too late,
        or it runs in a thread, which cannot be stopped)."""
        rec = self.tasks.get(task_id)
        if rec is None:
            return "canceled" if self.shown_state_of(task_id) is TaskState.CANCELED else ""
        if rec.worker is None:  # queued, paused or waiting out a retry delay
            self.dispatch.remove(rec.spec)
            self._finish(rec, TaskState.CANCELED, None)
            self.counters["canceled"] += 1
            return "canceled"
        w = self.workers.get(rec.worker)
        if w is not None and w.executor == "process":
            # the worker drops it if not started, or terminates the process running it,
            # and reports CANCELED; a thread cannot be stopped, so those say no
            self._send(self.wsock, w.ident, P.pack(P.CANCEL, {"ids": [task_id]}))
            return "requested"
        if w is not None and rec.state is TaskState.RESERVED:
            # held by a thread worker, not started: it drops it and reports CANCELED (if it
            # started meanwhile, it runs and its result settles the future)
            self._send(self.wsock, w.ident, P.pack(P.CANCEL, {"ids": [task_id], "unstarted": True}))
            return "requested"
        return ""

    def _finish(self, rec: TaskRecord, state: TaskState, error: Optional[ErrorInfo]) -> None:
        """Finish a task that no worker will report on: the result goes to the sink."""
        spec = rec.spec
        if error is not None:
            rec.error = (error.type, error.message, error.traceback)
        self._close(rec, state, "ventilator", error.type if error else None)
        row = result_row(spec, state, error, worker="ventilator", attempts=spec.attempt)
        if self.journal is not None:  # committed with the task's closing, then sent (_make_durable)
            self.journal.put_result(row)
        else:
            self.sink.add(row)

    def _close(self, rec: TaskRecord, state: TaskState, worker: str, error: Optional[str]) -> None:
        """A task is finished: forget it here, remember its state and history."""
        spec = rec.spec
        if rec.worker is not None:
            self.dispatch.finished(spec)
        self._set_state(rec, state)
        self.tasks.remove(rec)
        key = (spec.opts or {}).get("key")
        if key is not None and self.keyed.get(key) == spec.task_id:
            del self.keyed[key]
        if self.journal is not None:
            self.journal.begin()  # the history entry below joins the commit that deletes the task
            self.journal.remove(spec.task_id)
        self.finished[spec.task_id] = state
        if len(self.finished) > FINISHED_MEMORY:
            self.finished.popitem(last=False)
        more = None if state is TaskState.SUCCESS else details(rec, self.workers.get(rec.worker))
        self.history.add(spec, state.value, worker, error, more)
        if self.task_counts is not None:
            self.task_counts.finished(state.value, spec.queue, spec.name, spec.submitted_at, rec.started_at,
                                      time.time())

    # -- workers: what they say is handled in nodes/vent_workers.py (WorkerSide) --------

    def requeue(self, rec: TaskRecord, delay: float = 0.0) -> None:
        """Back to its queue (front), or after ``delay`` (a retry waits out its backoff as
        RETRYING; ``_tick`` queues it when due)."""
        if rec.worker is not None:
            self.dispatch.finished(rec.spec)
        rec.worker = None
        rec.started_at = None
        if not (delay > 0 and rec.state is TaskState.RETRYING):
            self._set_state(rec, TaskState.QUEUED)
        if self.journal is not None:
            self.journal.put(rec.spec)  # attempt, lost causes or the call changed
        if delay > 0:
            self.dispatch.push_later(rec.spec.task_id, time.monotonic() + delay)
        else:
            self.dispatch.push(rec.spec, front=True)

    # what WorkerSide may use besides the public fields (vent_workers.TaskSide)
    heartbeat, close_task, finish_task, make_durable = _heartbeat, _close, _finish, _make_durable

    def send_client(self, client: bytes, frames: list) -> bool:
        return self._send(self.clients, client, frames)

    def hold_function(self, digest: bytes, fn: Optional[Any]) -> None:
        """Keep (``fn``, if given) and journal the function ``digest`` names."""
        if fn is not None:
            self.fns[digest] = fn
        if self.journal is not None and digest not in self._journaled_fns and digest in self.fns:
            self.journal.put_function(digest, self.fns[digest])
            self._journaled_fns.add(digest)

    def _drop_worker(self, w: WorkerInfo, cause: Optional[str]) -> None:
        self.workers_side.drop(w, cause)

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
        for tid in self.dispatch.due(now):
            rec = self.tasks.get(tid)
            if rec is not None and rec.worker is None:
                if rec.state is TaskState.RETRYING:
                    self._set_state(rec, TaskState.QUEUED)
                self.dispatch.push(rec.spec, front=rec.spec.attempt > 1)
        for name, queue, slot in self.scheduler.due(time.time()):
            self._fire(name, queue, slot)
        if now >= self._next_prune:
            self._next_prune = now + 60.0
            # --history-retention (journal only); the functions dropped entries kept may go
            self.tasks.unused_digests |= self.history.prune()
        if now >= self._next_fn_prune:
            self._next_fn_prune = now + FN_PRUNE_INTERVAL
            self._prune_functions()
        self.rate_samples.append((now, self.counters["done"]))
        if self.metrics is not None:
            self.metrics.publish(ventilator_snapshot(self, self.task_counts))
        self.sink.tick(now)
        if self.sink_watch.check(now, len(self.sink.unacked)):
            # the results we decided cannot reach the sink: tell the clients waiting for them
            notices = self.sink_watch.notices(self.sink.unacked.values(), now, self.endpoints["clients"])
            for client, messages in notices.items():
                for frames in messages:
                    self._send(self.clients, client, frames)

    def _fire(self, name: str, queue: str, slot: float) -> None:
        """A schedule's slot: a by-name task with a deterministic id (never twice)."""
        self.counters["scheduled"] += 1
        self._accept(slot_task(name, queue, slot, self.registry.get(name, {})), b"")

    # -- dispatch ---------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Hand queued tasks to workers with credit: free slots first, then the prefetch,
        each worker an even share of what waits; what is left to those with credit left."""
        if not self.workers:
            return
        for qname in self.dispatch.names_with_work():
            ready = [w for w in self.workers.values() if w.credit > 0 and qname in w.queues]
            if not ready:
                continue
            if len(ready) == 1:
                self._send_tasks(ready[0], qname, ready[0].credit)
                continue
            free = {w.ident: max(0, w.concurrency - len(w.inflight)) for w in ready}
            waiting = self.dispatch.waiting(qname)
            share = -(-max(0, waiting - sum(free.values())) // len(ready))
            ready.sort(key=lambda w: (-free[w.ident], -w.credit))
            more = True
            for w in ready:
                if not self._send_tasks(w, qname, min(w.credit, free[w.ident] + share)):
                    more = False
                    break
            if more:
                for w in sorted(ready, key=lambda w: -w.credit):
                    if w.credit > 0 and not self._send_tasks(w, qname, w.credit):
                        break

    def _rebalance(self, now: float) -> None:
        """A worker with an idle slot while another, which reported nothing for a while,
        holds more tasks than slots of a queue the idle one serves: ask that one to give
        back (RECLAIM) up to half its surplus, as many as the idle slots."""
        idle = [w for w in self.workers.values() if w.credit > 0 and len(w.inflight) < w.concurrency]
        if not idle:
            return
        for h in self.workers.values():
            surplus = len(h.inflight) - h.concurrency
            if (surplus <= 0 or now - h.last_done < STALLED_AFTER
                    or now - h.reclaim_sent < RECLAIM_WAIT):
                continue
            queues = {q for w in idle if w is not h for q in w.queues} & set(h.queues)
            if not queues:
                continue
            slots = sum(w.concurrency - len(w.inflight) for w in idle
                        if w is not h and not queues.isdisjoint(w.queues))
            h.reclaim_sent = now
            self.counters["reclaims"] += 1
            self._send(self.wsock, h.ident, P.pack(P.RECLAIM, {
                "queues": sorted(queues), "n": min(slots, (surplus + 1) // 2)}))

    def _lookup(self, tid: str) -> Optional[TaskSpec]:
        rec = self.tasks.get(tid)
        if rec is None or rec.state is not TaskState.QUEUED or rec.worker is not None:
            return None  # cancelled or already dispatched: a stale entry
        return rec.spec

    def _send_tasks(self, w: WorkerInfo, qname: str, n: int) -> bool:
        """Send ``w`` up to ``n`` tasks of ``qname`` (within its credit); False when the queue
        has nothing more."""
        if n <= 0:
            return True
        limit = P.batch_limit(self.config.max_message_size)
        batch = self.dispatch.take(qname, min(n, w.credit, 5000), self._lookup)
        if not batch:
            return False
        fns: dict[bytes, Any] = {}
        keep: list[TaskSpec] = []
        size = 0
        for i, spec in enumerate(batch):
            if size > limit:  # the rest waits for the next message
                for s in reversed(batch[i:]):
                    self.dispatch.finished(s)
                    self.dispatch.push(s, front=True)
                break
            if spec.digest != P.BY_NAME and spec.digest not in w.fns and spec.digest not in fns:
                fn = self.fns.get(spec.digest)
                if fn is None:  # evicted: cannot run it any more
                    rec = self.tasks[spec.task_id]
                    rec.worker = w.ident  # taken by take(): released by _close
                    self._finish(rec, TaskState.FAILED, ErrorInfo(
                        "SerializationError", "the task's function is no longer held by the ventilator",
                        "", "zq.errors"))
                    continue
                fns[spec.digest] = fn
                size += len(fn)
            keep.append(spec)
            size += args_size(spec.args)
        if not keep:
            return True
        # numbered (in this run) so that a SYNC can say "everything sent before me"
        seq = self.tasks_seq + 1
        err = self.wsock.try_send(w.ident, P.pack_tasks(P.TASKS, keep, fns))
        if err:
            for spec in reversed(keep):  # not sent: put them back
                self.dispatch.finished(spec)
                self.dispatch.push(spec, front=True)
            if err == zmq.EHOSTUNREACH:  # the worker's connection is gone
                self._drop_worker(w, cause="its connection was closed")
            return True
        for d in fns:  # kept in step with the worker's function store (same order, same cap)
            w.fns[d] = None
        while len(w.fns) > FN_STORE_PER_WORKER:
            w.fns.popitem(last=False)
        w.credit -= len(keep)
        w.last_sent = time.monotonic()
        self.tasks_seq = seq
        for spec in keep:
            rec = self.tasks[spec.task_id]
            rec.worker = w.ident
            self._set_state(rec, TaskState.RESERVED)
            w.inflight[spec.task_id] = seq
        self.counters["dispatched"] += len(keep)
        return True

    # -- stats / stop -----------------------------------------------------------------
    def _shutdown(self) -> None:
        """On stop: tell workers nothing (they detect it) but get pending results to the sink."""
        deadline = time.monotonic() + 2.0
        while self.sink.unacked and time.monotonic() < deadline:
            self.sink.flush()
            if self.sink.socket.poll(100):
                self.sink.on_readable()
