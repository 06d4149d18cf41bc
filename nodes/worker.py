"""The worker: takes tasks from the ventilator by credit, runs them, sends results.

    ventilator ◀──READY/STARTED/DONE/RETRY/BYE/HB── [DEALER] ┐
               ──TASKS/CANCEL/HB/UNKNOWN────────▶            │ IO thread (Worker.loop):
    sink       ◀──RESULT/HB── [DEALER, SinkLink] ──ACK/HB──▶ │ owns every socket,
    executor   ◀──batches on free slots── ──completions──▶   ┘ never runs user code

Credit (``_wanted``): the worker wants to hold ``slots + prefetch`` tasks, i.e.
its free slots plus a prefetch.  With the default adaptive prefetch, ``prefetch``
is the number of tasks it expects to finish in ``PREFETCH_SECONDS`` per slot,
from the measured run time (the average of recent tasks, or longer: the time the
oldest running task has gone without a completion), at most ``MAX_PREFETCH``; a
cold worker (nothing measured yet) prefetches nothing.  It grants the ventilator
the difference between that target and what it holds or was already promised,
and takes promised credit back (a negative grant) as soon as the target shrinks.
Tasks it holds and has not started go back when the ventilator asks (RECLAIM,
answered by RETURN: a paused queue, another worker idle) or are cancelled.

Hand-off (``_start_tasks``): each free executor slot gets the next task, or a
batch of the next tasks when they are short, so short tasks do not pay a thread
or process hand-off each.  Results stay in the SinkLink until the sink
acknowledges them.  Both sockets are ``zq.link.Link``s: a ventilator silent for the
liveness timeout means a new socket and a fresh READY (capped exponential backoff).

Stop (SIGTERM): stop taking work, hand back unstarted tasks (BYE), let running
ones finish within ``grace`` seconds, hand back the rest, deliver results, exit.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import time
import uuid
from typing import Any, Optional, Sequence

import zmq

from zq import protocol as P
from zq.config import Config
from zq.envelope import STATE_OF, ErrorInfo, TaskState
from zq.errors import ProtocolError
from zq.link import RESTARTED, Link
from zq.options import retry_delay
from zq.policy import Policy, load_policies
from zq.protocol import TaskSpec
from zq.serialize import args_from_blob

from .common import HOST, Node, SinkLink, result_row
from .executor import AsyncRunner, ProcessExecutor, ThreadExecutor, import_tasks
from .node_metrics import Histogram, MetricsServer, worker_snapshot
from .worker_done import DoneBook
from .worker_lifetime import Lifetime

log = logging.getLogger("zq.worker")

FN_STORE = 4096
PREFETCH_SECONDS = 0.005  # adaptive prefetch: about this much work per slot beyond the slots
MAX_PREFETCH = 1000
SPAWN_MEMORY = 10_000  # follow-up tasks kept until the ventilator confirms them ...
SPAWN_BYTES = 256 * 1024 * 1024  # ... and their bytes
BATCH_MAX = 64  # tasks handed to one slot at once (short tasks only)
SHORT_TASK = 0.001  # seconds: tasks shorter than this are batched


def _size(frames: list) -> int:
    return sum(len(f) for f in frames)


class Worker(Node):
    role = "worker"

    def __init__(self, config: Config, policy_specs: Sequence[str] = (), *, grace: float = 30.0,
                 worker_id: Optional[str] = None, async_concurrency: int = 100,
                 imports: Sequence[str] = (), death_timeout: Optional[float] = None,
                 idle_timeout: Optional[float] = None, metrics: Optional[tuple[str, int]] = None) -> None:
        super().__init__(config)
        # a Slurm job's worker says which job it is (zq.SlurmWorkers scales down idle jobs)
        job = os.environ.get("SLURM_JOB_ID", "")
        prefix = f"slurm{job}-" if job.isdigit() else ""
        self.id = worker_id or f"{prefix}{HOST}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.lifetime = Lifetime(death_timeout, idle_timeout, time.monotonic())
        self.metrics_at = metrics  # --metrics-port: (host, port)
        self.metrics: Optional[MetricsServer] = None
        self.run_hist = Histogram()  # run times of the tasks run here (metrics)
        self.policy_specs = list(policy_specs)
        self.grace = grace
        self.slots = config.worker_concurrency or os.cpu_count() or 1
        self.fixed_prefetch: Optional[int] = None if config.worker_prefetch < 0 else config.worker_prefetch
        self.avg_run: Optional[float] = None  # EWMA of task run time, seconds
        self.local: collections.deque[TaskSpec] = collections.deque()
        # id -> (spec, deadline, started); insertion order = start order
        self.running: dict[str, tuple[TaskSpec, Optional[float], float]] = {}
        # (id, attempt) timed out or cancelled while running (still busy): its completion is
        # dropped, not that of a later attempt of the same task that runs here meanwhile
        self.abandoned: set[tuple[str, int]] = set()
        self.last_done = 0.0  # monotonic time of the latest completion
        self.fn_store: collections.OrderedDict[bytes, Any] = collections.OrderedDict()
        self.started_ids: list[str] = []
        self.busy_sent: Optional[int] = None  # busy slots the ventilator was last told (None: tell it)
        self.quiet: set[str] = set()  # waiting in a slot behind the first of a batch: STARTED not sent
        self.done = DoneBook()  # finished here: awaiting the sink's ACK, then owed a DONE
        # credit the ventilator holds for us (granted - taken back - received); below 0 when
        # tasks were on their way as we took credit back: the ventilator counts the same
        self.promised = 0
        self.accepting = True
        self._fds: set[int] = set()
        self.async_concurrency = async_concurrency
        self.imports = list(imports)
        self.registry = import_tasks(self.imports)  # tasks that can be submitted by name
        self.progress_out: dict[str, list] = {}  # task id -> latest progress, sent each turn
        # what the ventilator must get (RETRY, CONTINUE, SPAWN, BYE, ...) waits in order in
        # the link (``self.vent``) when it cannot go yet, with the ids each concerns; follow-up
        # tasks (SPAWN) stay in its outbox until the ventilator confirms them (REPLY to their
        # req), sent again after every READY; the ventilator ignores an id it already has
        self.spawned_bytes = 0
        self._spawn_req = 0
        self.ready_pending = False  # a READY that could not be sent yet

    # -- sockets ----------------------------------------------------------------------
    def setup(self) -> None:
        assert self.ctx is not None
        cfg = self.config
        self.poller = zmq.Poller()
        self.poller.register(self._waker.fileno(), zmq.POLLIN)
        policies: list[Policy] = load_policies(self.policy_specs)
        max_result = cfg.max_message_size - 4096
        if cfg.worker_executor == "process":
            self.executor: Any = ProcessExecutor(self.slots, self.policy_specs, max_result, self.imports)
        else:
            self.executor = ThreadExecutor(self.slots, policies, self._waker, max_result)
        self._sync_fds()
        self.aio = AsyncRunner(self.async_concurrency, policies, self._waker, max_result)
        self.sink = SinkLink(self, cfg.sink_endpoint, f"worker-{self.id}".encode(), self.poller)
        self.sink.on_acked = self.done.acked
        self.vent = Link(self.ctx, cfg.ventilator_workers, identity=self.id.encode(), server="ventilator",
                         poller=self.poller, heartbeat={"id": self.id, "instance": self.instance},
                         interval=cfg.heartbeat_interval, timeout=cfg.heartbeat_timeout, keys=self.keys,
                         max_message=cfg.max_message_size, name="ventilator", logger=log)
        self._wire_ventilator(self.vent)
        self.vent.open()
        self.endpoints = {"ventilator": cfg.ventilator_workers, "sink": cfg.sink_endpoint}
        if self.metrics_at is not None:
            self.metrics = MetricsServer("worker", *self.metrics_at)
            self.endpoints["metrics"] = self.metrics.url

    def _sync_fds(self) -> None:
        """Poll exactly the executor's current pipes (a replaced child has a new one)."""
        now = set(self.executor.fds())
        for fd in self._fds - now:
            self.poller.unregister(fd)
        for fd in now - self._fds:
            self.poller.register(fd, zmq.POLLIN)
        self._fds = now
        self.executor.fds_changed = False

    def _wire_ventilator(self, link: Link) -> None:
        link.on_message = self._on_ventilator_safely
        link.on_bad = lambda exc: self.bad_message("ventilator", exc)
        link.on_reconnect = self._vent_reconnected

    def _vent_reconnected(self, why: str) -> None:
        """A new connection to the ventilator (ours, or libzmq's after a drop: what was
        queued on the old one is gone): register again; the link then sends the unconfirmed
        follow-ups again.  A restarted ventilator that does not know us says UNKNOWN."""
        if why != RESTARTED:
            self._send_ready()

    def _send_ready(self) -> None:
        """Register (again), with the tasks that finished here whose DONE was not sent.  A
        ventilator that knew us answers SYNC (what do you hold?), see ``_on_ventilator``."""
        self.promised = 0
        self.busy_sent = None  # a new registration: tell it how many slots are busy
        credit = max(0, self._wanted(time.monotonic()))
        self.ready_pending = not self._to_vent(P.READY, {
            "id": self.id, "queues": list(self.config.worker_queues), "credit": credit, "host": HOST,
            "pid": os.getpid(), "executor": self.executor.kind, "concurrency": self.slots,
            "tasks": {name: t.describe() for name, t in self.registry.items()},
            "done": self.done.ids, "states": self.done.states,
        })
        if self.ready_pending:
            return
        self.promised = credit
        self.done.sent()

    def _held(self) -> list[str]:
        """Every task this worker has: queued here, running, abandoned, or in the outbox."""
        return [*self.running, *(s.task_id for s in self.local), *(tid for tid, _ in self.abandoned),
                *(tid for ids in self.vent.unsent() for tid in ids), *self.done.awaiting]

    def _to_vent(self, cmd: bytes, header: dict) -> bool:
        """Send now or not at all (progress, DONE kept here); False if it could not be sent."""
        return self.vent.send(P.pack(cmd, header))

    def _to_vent_surely(self, frames: list, ids: list[str]) -> None:
        """Send what must reach the ventilator: now, or in order once it can be."""
        self.vent.queue(frames, ids)

    def close(self) -> None:
        ex = getattr(self, "executor", None)
        if ex is not None:
            ex.close(1.0)
        if getattr(self, "aio", None) is not None:
            self.aio.close(1.0)
        if getattr(self, "vent", None) is not None:
            # a graceful stop waited for its last messages (_stop_step); give libzmq a moment
            self.vent.close(linger=500 if self.stopping else 0)
        if getattr(self, "sink", None) is not None:
            self.sink.close()
        if self.metrics is not None:
            self.metrics.close()

    # -- credit -----------------------------------------------------------------------
    def _busy_since(self) -> Optional[float]:
        """Since when the oldest running task (in a slot) has gone without any completion."""
        if not self.running:
            return None
        spec, _, started = next(iter(self.running.values()))  # in start order
        return None if spec.opts and spec.opts.get("async") else max(started, self.last_done)

    def _run_estimate(self, now: float) -> Optional[float]:
        """Seconds a task takes here: the average of recent ones, or longer while a running
        task has gone longer without a completion (long tasks are known to be long at once)."""
        since = self._busy_since()
        if self.avg_run is None or since is None:
            return self.avg_run
        return max(self.avg_run, now - since)

    def _prefetch(self, now: float) -> int:
        if self.fixed_prefetch is not None:
            return self.fixed_prefetch
        est = self._run_estimate(now)
        if est is None:  # cold: nothing measured, take no more than the free slots
            return 0
        return min(MAX_PREFETCH, int(PREFETCH_SECONDS * self.slots / max(est, 1e-6)))

    def _wanted(self, now: float) -> int:
        """Credit to grant: target minus what we hold and were promised; negative (at most
        what was promised) takes back credit when the target shrank well below it."""
        if not self.accepting:
            return 0
        # async tasks running on the event loop hold no slot (they are bounded by its limit)
        held = len(self.local) + len(self.running) - self.aio.running + len(self.abandoned)
        prefetch = self._prefetch(now)
        want = self.slots + prefetch - held - self.promised
        if want >= 0:
            return want
        if -want <= prefetch // 2 or self.promised <= 0:  # jitter of the estimate: not worth a message
            return 0
        return -min(-want, self.promised)

    def _revoke_due(self, now: float) -> Optional[float]:
        """When the prefetch, shrinking while a long task runs, next halves (the loop wakes
        then to take credit back); None if it will not."""
        if self.promised <= 0 or self.fixed_prefetch is not None:
            return None
        since, prefetch = self._busy_since(), self._prefetch(now)
        if since is None or prefetch <= 0:
            return None
        return since + PREFETCH_SECONDS * self.slots / max(prefetch // 2, 1)

    # -- the loop ---------------------------------------------------------------------
    def loop(self) -> None:
        interval = self.config.heartbeat_interval
        next_tick = 0.0
        waker = self._waker
        while True:
            waker.sleeping = True
            busy = self.executor.pending() or self.aio.completions or self.aio.events
            timeout = 0 if busy else int(interval * 500) or 1
            if timeout and self.promised:
                due = self._revoke_due(time.monotonic())
                if due is not None:  # wake to take credit back while a long task runs
                    timeout = max(1, min(timeout, math.ceil((due - time.monotonic()) * 1000)))
            events = dict(self.poller.poll(timeout))
            waker.sleeping = False
            self.vent.handle(events)
            self.sink.handle(events)
            if waker.fileno() in events:
                waker.drain()
            self._collect(set(events))
            now = time.monotonic()
            if now >= next_tick:
                self._tick(now)
                next_tick = now + interval / 2
            if self.stopping and not self._stop_step(now):
                break
            self.sink.flush()  # results first: they are what a client waits for
            self._start_tasks(now)
            self._report()

    def _on_ventilator_safely(self, msg: P.Message) -> None:
        try:
            self._on_ventilator(msg)
        except ProtocolError as exc:
            self.bad_message("ventilator", exc)
        except Exception as exc:
            self.counters["internal_errors"] += 1
            log.exception("error handling a ventilator message: %s", exc)

    def _on_ventilator(self, msg: P.Message) -> None:
        cmd = msg.command
        if cmd == P.TASKS:
            tasks, fns = P.unpack_tasks(msg)
            # may go below 0: credit taken back while these were on their way (the
            # ventilator's count went below 0 the same way; the next grant pays it back)
            self.promised -= len(tasks)
            for digest, frame in fns.items():
                self.fn_store[digest] = frame
            while len(self.fn_store) > FN_STORE:
                self.fn_store.popitem(last=False)
            if not self.accepting:  # stopping: give them straight back
                self._to_vent_surely(P.pack(P.BYE, {"ids": [t.task_id for t in tasks]}), [])
                return
            self.local.extend(tasks)
        elif cmd == P.CANCEL:
            unstarted = msg.header.get("unstarted") is True  # only if it has not started
            for tid in P.str_list(msg.header, "ids", cmd):
                self._cancel(tid, unstarted)
        elif cmd == P.RECLAIM:
            self._give_back(msg.header)
        elif cmd == P.UNKNOWN:
            log.info("ventilator does not know this worker (it restarted?): registering again")
            self.vent.resync("unknown")  # READY, then the unconfirmed follow-ups
        elif cmd == P.SYNC:  # everything sent before it has arrived: say what we hold
            upto = P.field(msg.header, "upto", int, cmd)
            self._to_vent_surely(P.pack(P.HELD, {"upto": upto, "held": self._held(),
                                                 "done": self.done.ids, "states": self.done.states}), [])
            self.done.sent()
        elif cmd == P.REPLY:  # a follow-up task is safe at the ventilator
            req = msg.header.get("req")
            frames = self.vent.unacked.get(req) if type(req) is int else None
            if frames is not None:
                self.vent.ack([req])
                self.spawned_bytes -= _size(frames)
        elif cmd == P.ERROR:
            log.warning("ventilator refused a message: %s", msg.header.get("msg"))
        elif cmd == P.REJECT:  # a follow-up task it could not take
            self.counters["spawn_rejected"] += 1
            log.warning("ventilator refused follow-up task(s) %s: %s", msg.header.get("ids"), msg.header.get("msg"))
        elif cmd != P.HEARTBEAT:
            raise ProtocolError(f"the ventilator may not send {cmd.decode()}")

    def _cancel(self, tid: str, unstarted: bool = False) -> None:
        for spec in self.local:
            if spec.task_id == tid:
                self.local.remove(spec)
                self._finish(spec, TaskState.CANCELED, None)
                return
        entry = self.running.get(tid)
        if entry is None or unstarted:
            return
        if not self.executor.kill(tid, "cancelled"):
            self.abandoned.add((tid, entry[0].attempt))  # started in a batch: result dropped
        self.running.pop(tid)
        self.quiet.discard(tid)
        self._finish(entry[0], TaskState.CANCELED, None)

    def _give_back(self, h: dict) -> None:
        """RECLAIM: hand back the tasks held here and not started that match (ids, queues,
        names; at most ``n``, those that would start last); RETURN says which."""
        def names(key: str) -> Optional[set]:
            return set(P.str_list(h, key, P.RECLAIM)) if key in h else None
        ids, queues, tnames = names("ids"), names("queues"), names("names")
        n = h.get("n")
        limit = n if type(n) is int and n >= 0 else len(self.local)
        out: list[str] = []
        keep: collections.deque[TaskSpec] = collections.deque()
        for spec in reversed(self.local):
            if len(out) < limit and ((ids is not None and spec.task_id in ids)
                                     or (queues is not None and spec.queue in queues)
                                     or (tnames is not None and spec.name in tnames)):
                out.append(spec.task_id)
            else:
                keep.appendleft(spec)
        self.local = keep
        self.counters["given_back"] += len(out)
        self._to_vent_surely(P.pack(P.RETURN, {"ids": out}), [])

    # -- running tasks ----------------------------------------------------------------
    def _start_tasks(self, now: float) -> None:
        if not self.accepting or not self.local:
            return
        ex = self.executor
        free = ex.free()
        short = self.avg_run is not None and self.avg_run < SHORT_TASK
        while self.local:
            head = self.local[0]
            if head.opts and head.opts.get("async"):  # coroutines: the event loop, not a slot
                if self.aio.free() <= 0:
                    break
                self.local.popleft()
                self.running[head.task_id] = (head, None, now)  # execute_async enforces its timeout
                self.started_ids.append(head.task_id)
                self.aio.start(head, self.fn_store.get(head.digest))
                continue
            if free <= 0:
                break
            n = min(BATCH_MAX, math.ceil(len(self.local) / free)) if short else 1
            batch: list[TaskSpec] = []
            while self.local and len(batch) < n:
                spec = self.local[0]
                if (spec.opts and spec.opts.get("async")) or (spec.timeout is not None and batch):
                    break  # a task with a time limit starts alone, so its clock is right
                self.local.popleft()
                batch.append(spec)
                deadline = now + spec.timeout if spec.timeout else None
                if len(batch) > 1:  # the rest of a batch waits in its slot: still RESERVED
                    self.quiet.add(spec.task_id)
                else:
                    self.started_ids.append(spec.task_id)
                self.running[spec.task_id] = (spec, deadline, now)
                if deadline is not None:
                    break
            ex.start(batch, {s.digest: self.fn_store.get(s.digest) for s in batch})
            free -= 1

    def _collect(self, readable: set) -> None:
        ex = self.executor
        comps = ex.collect(readable)
        if self.aio.completions:
            comps += self.aio.collect()
        for event in ex.take_events() + self.aio.take_events():
            self._on_event(event)
        if comps:
            self.last_done = time.monotonic()
        abandoned = self.abandoned
        for comp in comps:
            tid = comp.task_id
            if abandoned and (tid, comp.attempt) in abandoned:
                # timed out or cancelled earlier: only now is it gone (a later attempt of the
                # same task may be running here meanwhile: its completion is not this one)
                abandoned.discard((tid, comp.attempt))
                continue
            entry = self.running.get(tid)
            if entry is None or entry[0].attempt != comp.attempt:
                continue
            del self.running[tid]
            quiet = bool(self.quiet) and tid in self.quiet
            if quiet:
                self.quiet.discard(tid)
            spec = entry[0]
            run = comp.run_seconds
            self.avg_run = run if self.avg_run is None else 0.9 * self.avg_run + 0.1 * run
            self.run_hist.observe(run)
            state = STATE_OF[comp.state]
            error = ErrorInfo.from_row(comp.error)
            if comp.continuation is not None and state is TaskState.SUCCESS:
                self._continue(spec, comp.continuation)
                continue
            payload = args_from_blob(comp.payload)  # a blob (from a process's pipe) becomes frames again
            row = result_row(spec, state, error, worker=self.id, started_at=comp.started_at,
                             finished_at=comp.finished_at, run_seconds=run, pid=comp.pid, payload=payload)
            self._complete(spec, state, error, row, started_at=comp.started_at if quiet else None)
        for tid, reason in ex.lost():
            if abandoned:
                self.abandoned = abandoned = {a for a in abandoned if a[0] != tid}
            entry = self.running.pop(tid, None)
            self.quiet.discard(tid)
            if entry is None:
                continue
            spec = entry[0]
            cause = f"attempt {spec.attempt}: {reason} on worker {self.id} host {HOST}"
            spec.lost.append(cause)
            self.counters["lost_in_executor"] += 1
            if len(spec.lost) >= 3:
                msg = (f"task {spec.task_id} ({spec.name}) lost its worker {len(spec.lost)} times: "
                       + "; ".join(spec.lost))
                self._finish(spec, TaskState.FAILED, ErrorInfo("WorkerLost", msg, "", "zq.errors"))
            else:
                self._retry(spec, delay=0.0, lost=True)
        for tid in reversed(ex.handed_back()):  # never started: run them again here
            entry = self.running.pop(tid, None)
            self.quiet.discard(tid)
            if entry is not None:
                self.local.appendleft(entry[0])
        if getattr(ex, "fds_changed", False):
            self._sync_fds()

    def _on_event(self, event: tuple) -> None:
        """What a running task asked for: progress to report, a follow-up task to queue."""
        try:
            event = P.check_event(event)
        except ProtocolError as exc:  # a bad event must never stop this loop
            self.counters["event_refused"] += 1
            log.warning("event from a task refused: %s", exc)
            return
        if event.kind == P.PROGRESS_EVENT:
            self.progress_out[event.task_id] = P.ProgressRow(event.task_id, event.done, event.total,
                                                             event.message, event.at)
        elif event.kind == P.SPAWN_EVENT:
            fn_data = event.fn
            try:  # checked in the task already; a bad row must never stop this loop
                spec = TaskSpec.from_row(event.row, event.args)
            except ProtocolError as exc:
                self.counters["spawn_refused"] += 1
                log.warning("follow-up task refused: %s", exc)
                return
            self._spawn_req += 1
            frames = P.pack_tasks(P.SPAWN, [spec], {spec.digest: fn_data}, req=self._spawn_req)
            self.vent.put(self._spawn_req, frames)
            self.spawned_bytes += _size(frames)
            spawned = self.vent.unacked
            while len(spawned) > SPAWN_MEMORY or self.spawned_bytes > SPAWN_BYTES:
                req, old = next(iter(spawned.items()))
                self.vent.ack([req])
                self.spawned_bytes -= _size(old)
                self.counters["spawn_unconfirmed_dropped"] += 1
                log.error("too many follow-up tasks unconfirmed by the ventilator: the oldest "
                          "will not be sent again after a reconnect")
            self.counters["spawned"] += 1

    def _continue(self, spec: TaskSpec, cont: P.Continuation) -> None:
        """The task goes on as another call (it returned a zq.Call, or a chain goes on)."""
        cont = P.Continuation._make(cont)  # a record already (the executors check it), or its list
        header = {"id": spec.task_id, "name": cont.name, "digest": cont.digest, "queue": cont.queue,
                  "then": cont.then}
        self._to_vent_surely(P.pack(P.CONTINUE, header, [cont.fn, cont.args]), [spec.task_id])
        self.counters["continued"] += 1

    def _complete(self, spec: TaskSpec, state: TaskState, error: Optional[ErrorInfo], row: Any,
                  retryable: bool = True, started_at: Optional[float] = None) -> None:
        """A task ended here: retry it (``retries``), or send its result and free its credit
        (``started_at``: when it started, for one whose STARTED was never sent)."""
        retries_used = spec.attempt - 1 - len(spec.lost)
        if (retryable and state is TaskState.FAILED and error is not None
                and error.type != "SerializationError" and retries_used < spec.retries and self.accepting):
            self._retry(spec, delay=retry_delay(spec.opts, retries_used))  # opts checked by from_row
            return
        self.sink.add(row)
        self.done.finished(spec.task_id, state, error, started_at)

    def _retry(self, spec: TaskSpec, delay: float, lost: bool = False) -> None:
        header: dict = {"id": spec.task_id, "delay": delay}
        if lost:
            header["lost"] = spec.lost[-1]
        self._to_vent_surely(P.pack(P.RETRY, header), [spec.task_id])
        self.counters["retries"] += 1

    def _finish(self, spec: TaskSpec, state: TaskState, error: Optional[ErrorInfo],
                retryable: bool = False) -> None:
        """Finish a task that produced no completion of its own (cancel, timeout, loss)."""
        self._complete(spec, state, error, result_row(spec, state, error, worker=self.id), retryable)

    def _report(self) -> None:
        if self.ready_pending:
            self._send_ready()
        self.vent.flush()
        if self.progress_out:
            self._to_vent(P.PROGRESS, {"p": list(self.progress_out.values())})
            self.progress_out.clear()
        busy = self.busy_slots()
        if self.started_ids or busy != self.busy_sent:  # status only: may be lost
            if self._to_vent(P.STARTED, {"ids": self.started_ids, "busy": busy}):
                self.busy_sent = busy
            self.started_ids = []
        credit = self._wanted(time.monotonic())  # < 0: credit taken back
        if (self.done.ids or credit) and self._to_vent(P.DONE, self.done.header(credit)):
            self.promised += credit  # not sent: kept, and sent with the next ones (or READY)
            self.done.sent()

    def busy_slots(self) -> int:
        """Executor slots running a task now (0..slots): the ventilator's count of this worker's
        running tasks.  Not the tasks of a batch waiting behind the one running in its slot
        (``quiet``), nor async tasks (the event loop, no slot); a timed-out or cancelled thread
        task keeps its slot until it returns (``abandoned``)."""
        return self.slots - self.executor.free()

    def _tick(self, now: float) -> None:
        for tid, (spec, deadline, _) in list(self.running.items()):
            if deadline is not None and now > deadline:
                del self.running[tid]
                err = ErrorInfo("TaskTimeout", f"task {tid} ({spec.name}) ran longer than its "
                                f"timeout of {spec.timeout:g}s", "", "zq.errors")
                if not self.executor.kill(tid, "timeout"):
                    self.abandoned.add((tid, spec.attempt))  # thread: its slot stays busy until it returns
                self._finish(spec, TaskState.FAILED, err, retryable=True)
        if self.executor.kind == "process" and self.executor.fds_changed:
            self._sync_fds()
        self.vent.tick(now)  # heartbeat; a silent ventilator: a fresh socket and READY
        self.sink.tick(now)
        if self.metrics is not None:
            self.metrics.publish(worker_snapshot(self))
        if not self.stopping:  # --death-timeout / --idle-timeout
            why = self.lifetime.why_stop(now, self.vent.last_recv if self.vent.heard else None,
                                         bool(self.running or self.local))
            if why:
                log.warning("%s", why)
                self.stop()

    # -- graceful stop ----------------------------------------------------------------
    def _stop_step(self, now: float) -> bool:
        """One step of a graceful stop; False when the worker may exit."""
        if self.accepting:
            self.accepting = False
            self._stop_deadline = now + self.grace
            handed = [s.task_id for s in self.local]
            self.local.clear()
            self._to_vent_surely(P.pack(P.BYE, {"ids": handed}), [])
            log.info("stopping: handed back %d queued task(s), waiting up to %.0fs for %d running",
                     len(handed), self.grace, len(self.running))
        if self.running and now < self._stop_deadline:
            return True
        ids = list(self.running)
        if ids:
            log.warning("grace period over: handing back %d running task(s)", len(ids))
            for tid in ids:
                self.executor.kill(tid, "worker stopping")
            self.running.clear()
        self._report()
        # deliver our results to the sink (bounded); what it did not acknowledge is handed
        # back with the final BYE, to run again, rather than reported done and lost with us
        deadline = time.monotonic() + min(5.0, max(1.0, self.grace))
        while self.sink.unacked and time.monotonic() < deadline:
            self.sink.flush()
            self._report()
            if self.sink.socket.poll(20):
                self.sink.on_readable()
        unacked = list(self.done.awaiting)
        if unacked:
            log.warning("%d result(s) not acknowledged by the sink at exit: handed back to run again",
                        len(unacked))
        if self.done.ids:  # deferred DONEs go before the final BYE (it re-queues what it lists)
            self._to_vent_surely(P.pack(P.DONE, self.done.header(0)), [])
            self.done.sent()
        self._to_vent_surely(P.pack(P.BYE, {"ids": ids + unacked, "final": True}), [])
        deadline = time.monotonic() + 1.0  # and to the ventilator what it must get (bounded)
        while self.vent.waiting and time.monotonic() < deadline:
            self._report()
            if self.vent.socket.poll(20):
                self.vent.drain()
        if self.vent.waiting or self.done.ids:
            log.warning("ventilator unreachable at exit: %d message(s) not sent (it will re-queue "
                        "this worker's tasks when it declares it lost)", self.vent.waiting + bool(self.done.ids))
        return False
