"""The client's IO thread: the only code that touches the client's sockets.

    caller threads ──submit(): TaskSpec──▶ outbox deque + Waker ──┐
                                                                   ▼
    ClientIO._io_loop ── DEALER ──SUBMIT/REQUEST/HEARTBEAT──▶ ventilator
                      │          ◀──REPLY/REJECT/PROGRESS/HEARTBEAT──
                      └─ DEALER ──HELLO/ACK/WATCH/REQUEST/HEARTBEAT──▶ sink
                                 ◀──RESULT/REPLY/HEARTBEAT── ──▶ settle(future)

Sends never block: a node that is away or not reading (high-water mark) gets
its messages later, in order, from a backlog.  Heartbeats go out on a fixed
schedule; a node silent past the liveness timeout gets a fresh socket (capped
exponential backoff, Paranoid Pirate), and one silent past the client's
``unreachable_timeout`` fails every pending future with NodeUnreachable.
A node that restarted (new instance id) gets the unfinished tasks again.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import time
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

import zmq

from . import protocol as P
from ._sockets import LinkMonitor, close_link, dealer, recv_now, send_now
from .context import Progress, progress_eta
from .envelope import STATE_OF, TaskState
from .errors import NodeUnreachable, SerializationError, ZqError
from .futures import settle_row
from .protocol import ResultRow, TaskSpec
from .serialize import args_size

if TYPE_CHECKING:  # pragma: no cover
    from .futures import TaskFuture

log = logging.getLogger("zq.client")

FINISHED_MEMORY = 100_000


class ClientIO:
    """Mixin of ``zq.Client``: its IO thread.  Everything here runs on that thread."""

    _futures: dict[str, "TaskFuture"]
    _unfinished: dict[str, TaskSpec]
    _requests: dict[int, concurrent.futures.Future]
    _req_ids: Iterator[int]

    def _io_main(self) -> None:
        ctx = zmq.Context()
        try:
            self._io_setup(ctx)
        except BaseException as exc:
            self._io_error = exc
            self._ready.set()
            ctx.destroy(0)
            return
        self._ready.set()
        linger = 0
        try:
            self._io_loop()
            # what shutdown queued last (cancels of pending tasks) still goes out
            self._send_outbox()
            self._flush_backlog()
            if self._cancelling:
                linger = 500  # ms: let the cancels reach a ventilator that is there
        except Exception:
            log.exception("zq client IO thread failed")
            self._fail_all(ZqError("the client's IO thread failed; see the log"))
        finally:
            close_link(self.vsock, self._monitors.get("ventilator"), linger=linger)
            close_link(self.ssock, self._monitors.get("sink"))
            ctx.destroy(0)

    def _io_setup(self, ctx: zmq.Context) -> None:
        self.ctx = ctx
        self.poller = zmq.Poller()
        self.poller.register(self._waker.fileno(), zmq.POLLIN)
        now = time.monotonic()
        self._nodes = {
            "ventilator": {"endpoint": self.config.ventilator_clients, "last_recv": now, "last_send": 0.0,
                           "instance": None, "backoff": self.config.heartbeat_interval},
            "sink": {"endpoint": self.config.sink_endpoint, "last_recv": now, "last_send": 0.0,
                     "instance": None, "backoff": self.config.heartbeat_interval},
        }
        self._monitors: dict[str, LinkMonitor] = {}
        self.vsock = self._connect("ventilator")
        self.ssock = self._connect("sink")
        self._sent_fns: set[bytes] = set()
        self._backlog: dict[str, collections.deque[list]] = {
            "ventilator": collections.deque(), "sink": collections.deque()}
        #: ids of futures cancelled here whose cancel the ventilator has not answered yet
        #: (sent again to a ventilator that restarted), and the requests carrying them
        self._cancelling: dict[str, None] = {}
        self._cancel_reqs: dict[int, list[str]] = {}

    def _connect(self, node: str) -> zmq.Socket:
        s = dealer(self.ctx, self._nodes[node]["endpoint"], self.id.encode(), keys=self._keys, server=node)
        self.poller.register(s, zmq.POLLIN)
        mon = self._monitors[node] = LinkMonitor(s)
        self.poller.register(mon.socket, zmq.POLLIN)
        try:
            s.send_multipart(P.pack(P.HELLO if node == "sink" else P.HEARTBEAT,
                                    {"id": self.id, "client": self.id}), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # our regular heartbeat follows
        self._nodes[node]["last_send"] = time.monotonic()
        return s

    def _io_loop(self) -> None:
        interval = self.config.heartbeat_interval
        next_tick = 0.0
        waker = self._waker
        while not self._stop_io:
            waker.sleeping = True
            # submitters skip the wake-up system call unless we sleep, so look at the
            # outbox after announcing it and before blocking
            events = dict(self.poller.poll(0 if self._outbox else int(interval * 500) or 1))
            waker.sleeping = False
            if waker.fileno() in events:
                waker.drain()
            if self.vsock in events:
                self._drain(self.vsock, "ventilator")
            if self.ssock in events:
                self._drain(self.ssock, "sink")
            for node, mon in self._monitors.items():
                if mon.socket in events:
                    if mon.reconnected():
                        # the connection broke and came back: what was queued on it is gone
                        log.info("connection to the %s re-established: sending again", node)
                        self._node_restarted(node)
                    self._note_refusal(node, mon.refused)
            self._flush_backlog()
            self._send_outbox()
            now = time.monotonic()
            if now >= next_tick:
                self._tick(now)
                next_tick = now + interval / 2

    def _send_outbox(self) -> None:
        tasks: list[TaskSpec] = []
        cancels: list[str] = []
        while self._outbox:
            item = self._outbox.popleft()
            if isinstance(item, TaskSpec):
                if cancels:
                    self._send_cancels(cancels)
                    cancels = []
                tasks.append(item)
                continue
            if tasks:  # keep the caller's order: a cancel right after a submit follows it
                self._send_tasks(tasks)
                tasks = []
            if item[0] == "cancel":  # consecutive cancels (a group, shutdown) as one request
                cancels.append(item[1])
                continue
            if cancels:
                self._send_cancels(cancels)
                cancels = []
            if item[0] == "request":
                _, node, header = item
                self._request_to(header["req"], node)
                sock = self.vsock if node == "ventilator" else self.ssock
                self._send(sock, node, P.pack(P.REQUEST, header))
            elif item[0] == "watch":
                self._send(self.ssock, "sink", P.pack(P.WATCH, {"ids": [item[1]]}))
            elif item[0] == "submit":
                self._request_to(item[1], "ventilator")
                self._send_tasks([item[2]], req=item[1])
        if tasks:
            self._send_tasks(tasks)
        if cancels:
            self._send_cancels(cancels)

    def _send_cancels(self, ids: list[str]) -> None:
        """Ask the ventilator to cancel ``ids`` (futures already cancelled here); its answer
        is only bookkeeping (``_cancel_reqs``): nobody waits for it."""
        for i in range(0, len(ids), 10000):
            part = ids[i:i + 10000]
            req = next(self._req_ids)
            self._cancel_reqs[req] = part
            self._cancelling.update(dict.fromkeys(part))
            self._send(self.vsock, "ventilator", P.pack(P.REQUEST, {"req": req, "op": "cancel", "ids": part}))

    def _request_to(self, req: int, node: str) -> None:
        """Remember which node a request went to (a refused handshake fails it at once)."""
        with self._lock:
            fut = self._requests.get(req)
        if fut is not None:
            fut.zq_node = node  # type: ignore[attr-defined]

    def _note_refusal(self, node: str, why: Optional[str]) -> None:
        """The node's CURVE handshake failed (``why``), or succeeded (None): the requests
        waiting for it fail now, saying so, rather than time out as unanswered."""
        info = self._nodes[node]
        info["refused"] = why
        if why is None:
            return
        with self._lock:
            mine = [r for r, f in self._requests.items() if getattr(f, "zq_node", None) == node]
            futs = [self._requests.pop(r) for r in mine]
        for f in futs:
            if not f.done():
                f.set_exception(NodeUnreachable(f"the {node} at {info['endpoint']} refused the handshake "
                                                f"(keys?): {why}"))

    def _send_tasks(self, tasks: list[TaskSpec], force_fns: bool = False, req: Optional[int] = None) -> None:
        """SUBMIT ``tasks`` in as few messages as the size limit allows."""
        limit = P.batch_limit(self._max_message)
        start = 0
        while start < len(tasks):
            # count each new function once, with the first task that needs it
            seen: set[bytes] = set()

            def new_fn(t: TaskSpec) -> bool:
                return (t.digest != P.BY_NAME and (force_fns or t.digest not in self._sent_fns)
                        and t.digest not in seen)

            def size(t: TaskSpec) -> int:
                if new_fn(t):
                    seen.add(t.digest)
                    return args_size(t.args) + len(self._fn_bytes[t.digest])
                return args_size(t.args)

            n = P.take_batch(tasks[start:start + 5000], limit, size=size)
            batch = tasks[start:start + n]
            start += n
            fns = {d: self._fn_bytes[d] for d in seen if any(t.digest == d for t in batch)}
            self._send(self.vsock, "ventilator", P.pack_tasks(P.SUBMIT, batch, fns, req))
            self._sent_fns.update(fns)

    def _send(self, sock: zmq.Socket, node: str, frames: list, droppable: bool = False) -> None:
        """Send without ever blocking the IO thread: a node that is away or not reading
        (high-water mark) gets the message later, in order; heartbeats are dropped."""
        backlog = self._backlog[node]
        if not backlog:
            try:
                send_now(sock, frames)
                self._nodes[node]["last_send"] = time.monotonic()
                return
            except zmq.Again:
                pass
        if not droppable:
            backlog.append(frames)

    def _flush_backlog(self) -> None:
        for node, sock in (("ventilator", self.vsock), ("sink", self.ssock)):
            backlog = self._backlog[node]
            while backlog:
                try:
                    send_now(sock, backlog[0])
                except zmq.Again:
                    break
                backlog.popleft()
                self._nodes[node]["last_send"] = time.monotonic()

    def _drain(self, sock: zmq.Socket, node: str, limit: int = 1000) -> None:
        info = self._nodes[node]
        for _ in range(limit):
            frames = recv_now(sock, small=3)
            if frames is None:
                return
            info["last_recv"] = time.monotonic()
            info["backoff"] = self.config.heartbeat_interval
            if info.get("warned"):
                info["warned"] = False
                log.info("%s at %s answers again", node, info["endpoint"])
            info["heard"] = True
            try:
                self._on_message(node, P.unpack(frames))
            except Exception as exc:
                log.warning("bad message from %s: %s", node, exc)

    def _on_message(self, node: str, msg: P.Message) -> None:
        cmd = msg.command
        if cmd == P.RESULT:
            rows = P.unpack_results(msg)
            self._on_results(rows)  # the waiting callers first, then the acknowledgement
            # acknowledge every result received, even one already settled (a resend):
            # only then may its worker forget it
            self._send(self.ssock, "sink", P.pack(P.ACK, {"ids": [r.task_id for r in rows]}))
        elif cmd == P.REPLY:
            req = msg.header.get("req")
            cancelled = self._cancel_reqs.pop(req, None) if type(req) is int else None
            if cancelled is not None:
                answers = msg.header.get("data") if msg.header.get("ok") else None
                if not isinstance(answers, list) or len(answers) != len(cancelled):
                    log.warning("the ventilator did not cancel %d task(s): %s", len(cancelled),
                                msg.header.get("error"))
                    answers = [""] * len(cancelled)
                for tid, answer in zip(cancelled, answers):
                    self._cancelling.pop(tid, None)
                    if answer == "canceled":
                        self._remember(tid, TaskState.CANCELED)
                return
            with self._lock:
                fut = self._requests.pop(req, None)
            if fut is None:
                return
            if msg.header.get("ok"):
                fut.set_result((msg.header.get("data"), msg.payload[0].bytes if msg.payload else b""))
            else:
                fut.set_exception(ZqError(str(msg.header.get("error"))))
        elif cmd == P.HEARTBEAT:
            info = self._nodes[node]
            inst = msg.header.get("instance")
            if info["instance"] is not None and inst != info["instance"]:
                log.warning("%s restarted (new instance %s)", node, inst)
                self._node_restarted(node)
            info["instance"] = inst
            peer_max = msg.header.get("max")
            if isinstance(peer_max, int) and peer_max >= 1024:
                self._peer_max[node] = peer_max
                before = self._max_message
                self._max_message = min(self.config.max_message_size, *self._peer_max.values())
                if self._max_message < before:
                    self._limit_lowered()
        elif cmd == P.PROGRESS:
            for row in msg.header.get("p") or ():
                with self._lock:
                    fut = self._futures.get(row[0])
                if fut is not None:
                    self._set_progress(fut, row)
        elif cmd == P.REJECT:
            ids = msg.header.get("ids") or []
            if msg.header.get("code") == "unknown-function":
                with self._lock:
                    specs = [self._unfinished[i] for i in ids if i in self._unfinished]
                self._sent_fns.clear()
                if specs:
                    self._send_tasks(specs, force_fns=True)
        elif cmd == P.ERROR and msg.header.get("code") == P.UNREACHABLE:
            self._unreachable_elsewhere(msg.header)
        elif cmd == P.ERROR and msg.header.get("code") == "gone":
            for tid in msg.header.get("ids") or ():  # future_for() a result nobody kept
                with self._lock:
                    fut = self._futures.pop(tid, None)
                if fut is not None and not fut.done():
                    fut.set_exception(ZqError(str(msg.header.get("msg"))))
        elif cmd == P.ERROR:
            log.warning("%s refused a message: %s", node, msg.header.get("msg"))

    def _unreachable_elsewhere(self, h: dict) -> None:
        """The ventilator cannot get these tasks' results (WorkerLost, cancellations it
        decided) to the sink it was given: fail them as if that sink were ours, once it has
        been silent for our unreachable_timeout (the ventilator says so again meanwhile)."""
        down_for = h.get("down_for")
        if not isinstance(down_for, (int, float)) or down_for < self.unreachable_timeout:
            return
        exc = NodeUnreachable(f"{h.get('msg')} (client unreachable_timeout={self.unreachable_timeout:g}s)")
        failed = []
        with self._lock:
            for tid in h.get("ids") or ():
                fut = self._futures.pop(tid, None) if isinstance(tid, str) else None
                if fut is not None:
                    self._unfinished.pop(tid, None)
                    failed.append(fut)
        for fut in failed:
            try:
                fut.set_exception(exc)
            except concurrent.futures.InvalidStateError:
                pass

    def _limit_lowered(self) -> None:
        """A node takes smaller messages than we assumed: fail the tasks over the limit (the
        node may have dropped our connection for them, and what followed) and send the
        others again (duplicates are ignored by the ventilator)."""
        limit = self._max_message - 4096
        too_big = []
        with self._lock:
            for tid, spec in list(self._unfinished.items()):
                if args_size(spec.args) + len(self._fn_bytes.get(spec.digest, b"")) > limit:
                    del self._unfinished[tid]
                    fut = self._futures.pop(tid, None)
                    if fut is not None:
                        too_big.append((fut, args_size(spec.args)))
        for fut, size in too_big:
            try:
                fut.set_exception(SerializationError(
                    f"task {fut.task_id} is {size} bytes pickled, over the cluster's maximum message "
                    f"size of {self._max_message} bytes"))
            except concurrent.futures.InvalidStateError:
                pass
        self._node_restarted("ventilator")

    def _node_restarted(self, node: str, quiet: bool = False) -> None:
        """Send ``node`` again what it may have lost: it restarted or our connection (and
        what was queued on it) was replaced.  ``quiet``: a reconnection to a node that is not
        answering, where the resend is routine (logged once by ``_tick``)."""
        if node == "ventilator":
            self._sent_fns.clear()
            with self._lock:
                specs = list(self._unfinished.values())
            if specs:
                (log.debug if quiet else log.warning)("submitting %d unfinished task(s) again", len(specs))
            self._send_tasks(specs)
            self._cancel_reqs.clear()  # their answers will not come: ask again
            if self._cancelling:
                self._send_cancels(list(self._cancelling))
        else:
            self._send(self.ssock, "sink", P.pack(P.HELLO, {"client": self.id}))
            self._rewatch()

    def _rewatch(self) -> None:
        """Tell the sink (again) which other clients' results we wait for: after it
        restarted, and every WATCH_RENEW seconds (it forgets watches not renewed)."""
        with self._lock:
            watched = [tid for tid in self._futures if tid not in self._unfinished]
        if watched:
            self._send(self.ssock, "sink", P.pack(P.WATCH, {"ids": watched}))

    def _on_results(self, rows: list[ResultRow]) -> None:
        settled = []
        states = STATE_OF
        with self._lock:
            finished = self._finished
            for r in rows:
                tid = r.row[0]
                fut = self._futures.pop(tid, None)
                self._unfinished.pop(tid, None)
                if fut is not None:
                    settled.append((fut, r))
                    finished[tid] = states[r.row[2]]
            while len(finished) > FINISHED_MEMORY:
                finished.popitem(last=False)
        for fut, r in settled:
            settle_row(fut, r)

    def _set_progress(self, fut: "TaskFuture", row: Sequence[Any]) -> None:
        """``row``: [task id, done, total, message, time] as a task reported it."""
        _, done, total, message, ts = row[:5]
        fut._progress_first, eta = progress_eta(fut._progress_first, done, total, ts)
        fut.progress = Progress(done, total, message, ts, eta)

    def _forget(self, task_id: str, state: TaskState) -> None:
        with self._lock:
            self._futures.pop(task_id, None)
            self._unfinished.pop(task_id, None)
        self._remember(task_id, state)

    def _remember(self, task_id: str, state: TaskState) -> None:
        """The final state of a task of ours, for ``get_status`` without a round trip."""
        with self._lock:
            self._finished[task_id] = state
            if len(self._finished) > FINISHED_MEMORY:
                self._finished.popitem(last=False)

    def _tick(self, now: float) -> None:
        cfg = self.config
        if now >= self._next_rewatch:
            if self._next_rewatch:
                self._rewatch()
            self._next_rewatch = now + P.WATCH_RENEW
        for node, sock_attr in (("ventilator", "vsock"), ("sink", "ssock")):
            info = self._nodes[node]
            # heartbeat on a fixed schedule, busy or not: the nodes answer heartbeats,
            # not submissions, and their answers are how we know they are alive
            if now - info.get("last_hb", 0.0) >= cfg.heartbeat_interval:
                info["last_hb"] = now
                self._send(getattr(self, sock_attr), node,
                           P.pack(P.HEARTBEAT, {"id": self.id, "client": self.id}), droppable=True)
            silent = now - info["last_recv"]
            if info.get("refused"):
                self._note_refusal(node, info["refused"])  # requests made since
            if silent <= cfg.heartbeat_timeout:
                info["backoff"] = cfg.heartbeat_interval
                info["reconnect_at"] = 0.0
                continue
            if now >= info.get("reconnect_at", 0.0):
                # Paranoid Pirate: a fresh socket, then wait longer (capped) before the next
                if info.get("warned"):
                    log.debug("%s at %s silent for %.1fs: reconnecting", node, info["endpoint"], silent)
                else:  # once per silence, whatever the number of reconnections
                    info["warned"] = True
                    what = ("has not answered since the client started (wrong endpoint, or not running?)"
                            if not info.get("heard") else f"silent for {silent:.1f}s")
                    log.warning("%s at %s %s: reconnecting; pending tasks fail with NodeUnreachable "
                                "after %gs", node, info["endpoint"], what, self.unreachable_timeout)
                info["reconnect_at"] = now + info["backoff"]
                info["backoff"] = min(info["backoff"] * 2, 30.0)
                # monitor first, then the socket (see close_link); closing drops what was
                # still queued on it: hence the resend below
                close_link(getattr(self, sock_attr), self._monitors.pop(node), self.poller)
                setattr(self, sock_attr, self._connect(node))
                self._node_restarted(node, quiet=True)
            if silent > self.unreachable_timeout and (self._futures or self._requests):
                why = f"; it refused the handshake (keys?): {info['refused']}" if info.get("refused") else ""
                self._fail_all(NodeUnreachable(
                    f"the {node} at {info['endpoint']} has been unreachable for {silent:.0f}s "
                    f"(client unreachable_timeout={self.unreachable_timeout:g}s){why}"))

    def _fail_all(self, exc: ZqError) -> None:
        for backlog in self._backlog.values():
            backlog.clear()  # nobody waits for these any more
        with self._lock:
            futs = list(self._futures.values())
            self._futures.clear()
            self._unfinished.clear()
            reqs = list(self._requests.values())
            self._requests.clear()
        for f in futs + reqs:
            if not f.done():
                try:
                    f.set_exception(exc)
                except concurrent.futures.InvalidStateError:
                    pass
