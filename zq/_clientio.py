"""The client's IO thread: the only code that touches the client's sockets.

    caller threads ──submit(): TaskSpec──▶ ClientIO.outbox deque + Waker ──┐
                                                                            ▼
    ClientIO._loop ── Link ──SUBMIT/REQUEST/HEARTBEAT──▶ ventilator
                   │       ◀──REPLY/REJECT/PROGRESS/HEARTBEAT──
                   └─ Link ──HELLO/ACK/WATCH/REQUEST/HEARTBEAT──▶ sink
                           ◀──RESULT/REPLY/HEARTBEAT── ──▶ settle(future)

Both sockets are ``zq.link.Link``s: sends never block (a node that is away or not
reading gets its messages later, in order), heartbeats go out when a link is idle, a
node silent past the liveness timeout gets a fresh socket (capped exponential backoff),
and one silent past the client's ``unreachable_timeout`` fails every pending future
with NodeUnreachable.  A request (admin calls, status, a keyed submit, a cancel) stays
in its link's outbox until it is answered, so a node that restarted or a socket that
was replaced gets it again; a ventilator that restarted also gets the unfinished tasks
again (``_resync``).

``TaskBook`` is what the caller threads and the IO thread share (under its lock); the
client owns the rest of its state, the IO thread everything here.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Optional, Sequence

import zmq

from . import protocol as P
from ._wake import Waker
from .context import Progress, progress_eta
from .envelope import STATE_OF, TaskState
from .errors import ClientClosed, NodeUnreachable, SerializationError, ZqError
from .futures import settle_row
from .link import CONNECTED, REPLACED, Link
from .protocol import ResultRow, TaskSpec
from .serialize import args_size

if TYPE_CHECKING:  # pragma: no cover
    from .config import Config
    from .futures import TaskFuture
    from .security import Keys

log = logging.getLogger("zq.client")

FINISHED_MEMORY = 100_000
REQUEST_TIMEOUT = 10.0


class TaskBook:
    """The client's tasks, shared by the caller threads and the IO thread (``lock``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.futures: dict[str, "TaskFuture"] = {}
        #: specs (with pickled arguments) until their result arrives, to submit again
        self.unfinished: dict[str, TaskSpec] = {}
        #: the final states of the latest FINISHED_MEMORY tasks (``get_status`` without a round trip)
        self.finished: collections.OrderedDict[str, TaskState] = collections.OrderedDict()
        self.fn_bytes: dict[bytes, bytes] = {}  # digest -> pickled function

    def remember(self, task_id: str, state: TaskState) -> None:
        with self.lock:
            self.finished[task_id] = state
            if len(self.finished) > FINISHED_MEMORY:
                self.finished.popitem(last=False)

    def forget(self, task_id: str, state: TaskState) -> None:
        with self.lock:
            self.futures.pop(task_id, None)
            self.unfinished.pop(task_id, None)
        self.remember(task_id, state)


def set_progress(fut: "TaskFuture", row: P.ProgressRow) -> None:
    """``row``: a task's progress as it reported it."""
    fut._progress_first, eta = progress_eta(fut._progress_first, row.done, row.total, row.at)
    fut.progress = Progress(row.done, row.total, row.message, row.at, eta)


class ClientIO:
    """The IO thread of a ``zq.Client`` and what it owns.  Callers use ``outbox`` (append,
    then ``waker``), ``request``, ``cancel_later`` and ``watch``; the rest runs on the thread."""

    def __init__(self, config: "Config", client_id: str, keys: Optional["Keys"], book: TaskBook,
                 unreachable_timeout: float) -> None:
        self.config = config
        self.id = client_id
        self.keys = keys
        self.book = book
        self.unreachable_timeout = unreachable_timeout
        #: what callers ask the IO thread to send, in their order
        self.outbox: collections.deque[Any] = collections.deque()
        self.waker = Waker()
        self.requests: dict[int, concurrent.futures.Future] = {}
        self._req_ids = itertools.count(1)
        #: the smallest maximum message size of this client and its nodes (from heartbeats)
        self.max_message = config.max_message_size
        self._peer_max: dict[str, int] = {}
        self._next_rewatch = 0.0  # when to renew WATCHes (protocol.WATCH_RENEW)
        self.stopping = False
        self._error: Optional[BaseException] = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._main, name=f"zq-client-{client_id[:6]}", daemon=True)

    # -- the callers' side ------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()
        self._ready.wait(10.0)
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Send what is queued (cancels), close the sockets, end the thread."""
        self.stopping = True
        self.waker.wake()
        self.thread.join(10.0)

    def request(self, node: str, op: str, header: dict, timeout: Optional[float] = None,
                with_payload: bool = False, submit: Optional[TaskSpec] = None) -> Any:
        """One request to ``node``, answered (or raising) within ``timeout`` seconds."""
        if threading.current_thread() is self.thread:
            raise RuntimeError("zq.Client requests cannot be made from a future's done-callback")
        if self.stopping:
            raise ClientClosed("client is shut down")
        req = next(self._req_ids)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self.book.lock:
            self.requests[req] = fut
            if submit is not None:  # a SUBMIT that waits for its answer
                self.outbox.append(("submit", req, submit))
            else:
                self.outbox.append(("request", node, {"req": req, "op": op, **header}))
        self.waker.wake()
        try:
            data, payload = fut.result(REQUEST_TIMEOUT if timeout is None else timeout)
        except concurrent.futures.TimeoutError:
            with self.book.lock:
                self.requests.pop(req, None)  # the IO thread drops it from the outbox
            ep = self.config.ventilator_clients if node == "ventilator" else self.config.sink_endpoint
            raise TimeoutError(f"{node} at {ep} did not answer {op!r} in time") from None
        return (data, payload) if with_payload else data

    def cancel_later(self, task_ids: Sequence[str]) -> None:
        """Ask the ventilator to drop or stop these tasks (callers hold ``book.lock``)."""
        self.outbox.extend(("cancel", tid) for tid in task_ids)

    def watch(self, task_id: str) -> None:
        """Ask the sink for this task's result (callers hold ``book.lock``)."""
        self.outbox.append(("watch", task_id))

    # -- the thread -------------------------------------------------------------------
    def _main(self) -> None:
        ctx = zmq.Context()
        try:
            self._setup(ctx)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            ctx.destroy(0)
            return
        self._ready.set()
        linger = 0
        try:
            self._loop()
            # what shutdown queued last (cancels of pending tasks) still goes out
            self._send_outbox()
            self.vent.flush()
            self.sink.flush()
            if self._cancelling:
                linger = 500  # ms: let the cancels reach a ventilator that is there
        except Exception:
            log.exception("zq client IO thread failed")
            self._fail_all(ZqError("the client's IO thread failed; see the log"))
        finally:
            self.vent.close(linger)
            self.sink.close()
            ctx.destroy(0)

    def _setup(self, ctx: zmq.Context) -> None:
        self.poller = zmq.Poller()
        self.poller.register(self.waker.fileno(), zmq.POLLIN)
        self._sent_fns: set[bytes] = set()
        #: ids of futures cancelled here whose cancel the ventilator has not answered yet,
        #: and the requests carrying them (in the ventilator link's outbox until answered)
        self._cancelling: dict[str, None] = {}
        self._cancel_reqs: dict[int, list[str]] = {}
        self.links: dict[str, Link] = {}
        self.vent = self._link(ctx, "ventilator", self.config.ventilator_clients)
        self.sink = self._link(ctx, "sink", self.config.sink_endpoint)

    def _link(self, ctx: zmq.Context, node: str, endpoint: str) -> Link:
        cfg = self.config
        link = Link(ctx, endpoint, identity=self.id.encode(), server=node, poller=self.poller,
                    heartbeat={"id": self.id, "client": self.id}, interval=cfg.heartbeat_interval,
                    timeout=cfg.heartbeat_timeout, keys=self.keys, name=node, logger=log)
        link.warn_once = True  # one line per silence, whatever the number of new sockets
        link.silence_note = f"; pending tasks fail with NodeUnreachable after {self.unreachable_timeout:g}s"
        link.on_message = lambda msg: self._on_message(node, msg)
        link.on_reconnect = lambda why: self._resync(node, why)
        self.links[node] = link
        return link.open()

    def _loop(self) -> None:
        interval = self.config.heartbeat_interval
        next_tick = 0.0
        waker = self.waker
        while not self.stopping:
            waker.sleeping = True
            # submitters skip the wake-up system call unless we sleep, so look at the
            # outbox after announcing it and before blocking
            events = dict(self.poller.poll(0 if self.outbox else int(interval * 500) or 1))
            waker.sleeping = False
            if waker.fileno() in events:
                waker.drain()
            for node, link in self.links.items():
                link.handle(events)
                if link.refused:
                    self._note_refusal(node, link.refused)
            self.vent.flush()
            self.sink.flush()
            self._send_outbox()
            now = time.monotonic()
            if now >= next_tick:
                self._tick(now)
                next_tick = now + interval / 2

    def _send_outbox(self) -> None:
        tasks: list[TaskSpec] = []
        cancels: list[str] = []
        outbox = self.outbox
        while outbox:
            item = outbox.popleft()
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
                self.links[node].put(header["req"], P.pack(P.REQUEST, header))
            elif item[0] == "watch":
                self.sink.queue(P.pack(P.WATCH, {"ids": [item[1]]}))
            elif item[0] == "submit":  # keyed: with its function, whatever the ventilator holds
                _, req, spec = item
                self._request_to(req, "ventilator")
                fns = {} if spec.digest == P.BY_NAME else {spec.digest: self.book.fn_bytes[spec.digest]}
                self.vent.put(req, P.pack_tasks(P.SUBMIT, [spec], fns, req))
                self._sent_fns.update(fns)
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
            self.vent.put(req, P.pack(P.REQUEST, {"req": req, "op": "cancel", "ids": part}))

    def _request_to(self, req: int, node: str) -> None:
        """Remember which node a request went to (a refused handshake fails it at once)."""
        with self.book.lock:
            fut = self.requests.get(req)
        if fut is not None:
            fut.zq_node = node  # type: ignore[attr-defined]

    def _note_refusal(self, node: str, why: str) -> None:
        """The node's CURVE handshake failed (``why``): the requests waiting for it fail
        now, saying so, rather than time out as unanswered."""
        with self.book.lock:
            mine = [r for r, f in self.requests.items() if getattr(f, "zq_node", None) == node]
            futs = [self.requests.pop(r) for r in mine]
        ep = self.links[node].endpoint
        for f in futs:
            if not f.done():
                f.set_exception(NodeUnreachable(f"the {node} at {ep} refused the handshake (keys?): {why}"))

    def _send_tasks(self, tasks: list[TaskSpec], force_fns: bool = False) -> None:
        """SUBMIT ``tasks`` in as few messages as the size limit allows."""
        limit = P.batch_limit(self.max_message)
        fn_bytes = self.book.fn_bytes
        start = 0
        while start < len(tasks):
            # count each new function once, with the first task that needs it
            seen: set[bytes] = set()

            def size(t: TaskSpec) -> int:
                if (t.digest != P.BY_NAME and (force_fns or t.digest not in self._sent_fns)
                        and t.digest not in seen):
                    seen.add(t.digest)
                    return args_size(t.args) + len(fn_bytes[t.digest])
                return args_size(t.args)

            n = P.take_batch(tasks[start:start + 5000], limit, size=size)
            batch = tasks[start:start + n]
            start += n
            fns = {d: fn_bytes[d] for d in seen if any(t.digest == d for t in batch)}
            self.vent.queue(P.pack_tasks(P.SUBMIT, batch, fns))
            self._sent_fns.update(fns)

    def _on_message(self, node: str, msg: P.Message) -> None:
        cmd = msg.command
        if cmd == P.RESULT:
            rows = P.unpack_results(msg)
            self._on_results(rows)  # the waiting callers first, then the acknowledgement
            # acknowledge every result received, even one already settled (a resend):
            # only then may its worker forget it
            self.sink.queue(P.pack(P.ACK, {"ids": [r.task_id for r in rows]}))
        elif cmd == P.REPLY:
            self._on_reply(node, msg)
        elif cmd == P.HEARTBEAT:
            peer_max = msg.header.get("max")
            if isinstance(peer_max, int) and peer_max >= 1024:
                self._peer_max[node] = peer_max
                before = self.max_message
                self.max_message = min(self.config.max_message_size, *self._peer_max.values())
                if self.max_message < before:
                    self._limit_lowered()
        elif cmd == P.PROGRESS:
            for row in P.progress_rows(msg.header):
                with self.book.lock:
                    fut = self.book.futures.get(row.task_id)
                if fut is not None:
                    set_progress(fut, row)
        elif cmd == P.REJECT:
            ids = msg.header.get("ids") or []
            if msg.header.get("code") == P.ERR_UNKNOWN_FUNCTION:
                with self.book.lock:
                    specs = [self.book.unfinished[i] for i in ids if i in self.book.unfinished]
                self._sent_fns.clear()
                if specs:
                    self._send_tasks(specs, force_fns=True)
        elif cmd == P.ERROR and msg.header.get("code") == P.ERR_UNREACHABLE:
            self._unreachable_elsewhere(msg.header)
        elif cmd == P.ERROR and msg.header.get("code") == P.ERR_GONE:
            for tid in msg.header.get("ids") or ():  # future_for() a result nobody kept
                with self.book.lock:
                    fut = self.book.futures.pop(tid, None)
                if fut is not None and not fut.done():
                    fut.set_exception(ZqError(str(msg.header.get("msg"))))
        elif cmd == P.ERROR:
            log.warning("%s refused a message: %s", node, msg.header.get("msg"))

    def _on_reply(self, node: str, msg: P.Message) -> None:
        req = msg.header.get("req")
        if type(req) is not int:
            return
        self.links[node].ack([req])  # answered: not to be sent again
        cancelled = self._cancel_reqs.pop(req, None)
        if cancelled is not None:
            answers = msg.header.get("data") if msg.header.get("ok") else None
            if not isinstance(answers, list) or len(answers) != len(cancelled):
                log.warning("the ventilator did not cancel %d task(s): %s", len(cancelled),
                            msg.header.get("error"))
                answers = [""] * len(cancelled)
            for tid, answer in zip(cancelled, answers):
                self._cancelling.pop(tid, None)
                if answer == "canceled":
                    self.book.remember(tid, TaskState.CANCELED)
            return
        with self.book.lock:
            fut = self.requests.pop(req, None)
        if fut is None:
            return
        if msg.header.get("ok"):
            fut.set_result((msg.header.get("data"), msg.payload[0].bytes if msg.payload else b""))
        else:
            fut.set_exception(ZqError(str(msg.header.get("error"))))

    def _unreachable_elsewhere(self, h: dict) -> None:
        """The ventilator cannot get these tasks' results (WorkerLost, cancellations it
        decided) to the sink it was given: fail them as if that sink were ours, once it has
        been silent for our unreachable_timeout (the ventilator says so again meanwhile)."""
        down_for = h.get("down_for")
        if not isinstance(down_for, (int, float)) or down_for < self.unreachable_timeout:
            return
        exc = NodeUnreachable(f"{h.get('msg')} (client unreachable_timeout={self.unreachable_timeout:g}s)")
        failed = []
        with self.book.lock:
            for tid in h.get("ids") or ():
                fut = self.book.futures.pop(tid, None) if isinstance(tid, str) else None
                if fut is not None:
                    self.book.unfinished.pop(tid, None)
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
        limit = self.max_message - 4096
        too_big = []
        book = self.book
        with book.lock:
            for tid, spec in list(book.unfinished.items()):
                if args_size(spec.args) + len(book.fn_bytes.get(spec.digest, b"")) > limit:
                    del book.unfinished[tid]
                    fut = book.futures.pop(tid, None)
                    if fut is not None:
                        too_big.append((fut, args_size(spec.args)))
        for fut, size in too_big:
            try:
                fut.set_exception(SerializationError(
                    f"task {fut.task_id} is {size} bytes pickled, over the cluster's maximum message "
                    f"size of {self.max_message} bytes"))
            except concurrent.futures.InvalidStateError:
                pass
        self.vent.resync("limit lowered")

    def _resync(self, node: str, why: str) -> None:
        """A new connection to ``node`` (``why``: see ``zq.link``): say hello, and send again
        what it may have lost; its link then sends the unanswered requests again."""
        link = self.links[node]
        if node == "ventilator":
            link.heartbeat()  # it answers with its instance and limit
            if why == CONNECTED:
                return
            self._sent_fns.clear()
            with self.book.lock:
                specs = list(self.book.unfinished.values())
            if specs:  # a routine resend when we replaced the socket of a silent node
                (log.debug if why == REPLACED else log.warning)(
                    "submitting %d unfinished task(s) again", len(specs))
                self._send_tasks(specs)
        else:
            link.queue(P.pack(P.HELLO, {"id": self.id, "client": self.id}))
            if why != CONNECTED:
                self._rewatch()

    def _rewatch(self) -> None:
        """Tell the sink (again) which other clients' results we wait for: after it
        restarted, and every WATCH_RENEW seconds (it forgets watches not renewed)."""
        with self.book.lock:
            watched = [tid for tid in self.book.futures if tid not in self.book.unfinished]
        if watched:
            self.sink.queue(P.pack(P.WATCH, {"ids": watched}))

    def _on_results(self, rows: list[ResultRow]) -> None:
        settled = []
        states = STATE_OF
        book = self.book
        with book.lock:
            finished = book.finished
            futures, unfinished = book.futures, book.unfinished
            for r in rows:
                tid = r.task_id
                fut = futures.pop(tid, None)
                unfinished.pop(tid, None)
                if fut is not None:
                    settled.append((fut, r))
                    finished[tid] = states[r.state]
            while len(finished) > FINISHED_MEMORY:
                finished.popitem(last=False)
        for fut, r in settled:
            settle_row(fut, r)

    def _tick(self, now: float) -> None:
        if now >= self._next_rewatch:
            if self._next_rewatch:
                self._rewatch()
            self._next_rewatch = now + P.WATCH_RENEW
        with self.book.lock:
            waiting = set(self.requests)
            pending = bool(self.book.futures or self.requests)
        for node, link in self.links.items():
            # requests nobody waits for any more (timed out, failed) leave the outbox
            stale = [r for r in link.unacked if r not in waiting and r not in self._cancel_reqs]
            if stale:
                link.ack(stale)
            if link.refused:
                self._note_refusal(node, link.refused)  # requests made since
            link.tick(now)
            silent = now - link.last_recv
            if silent > self.unreachable_timeout and pending:
                why = f"; it refused the handshake (keys?): {link.refused}" if link.refused else ""
                self._fail_all(NodeUnreachable(
                    f"the {node} at {link.endpoint} has been unreachable for {silent:.0f}s "
                    f"(client unreachable_timeout={self.unreachable_timeout:g}s){why}"))
                pending = False

    def _fail_all(self, exc: ZqError) -> None:
        for link in getattr(self, "links", {}).values():
            link.clear()  # nobody waits for these any more
        with self.book.lock:
            futs = list(self.book.futures.values())
            self.book.futures.clear()
            self.book.unfinished.clear()
            reqs = list(self.requests.values())
            self.requests.clear()
        for f in futs + reqs:
            if not f.done():
                try:
                    f.set_exception(exc)
                except concurrent.futures.InvalidStateError:
                    pass
