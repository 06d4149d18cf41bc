"""``zq.Client``: a ``concurrent.futures.Executor`` backed by a zq cluster.

    caller threads ──submit(): pickle, TaskSpec, future──▶ outbox deque + Waker
                                                              │
    IO thread (Client._loop) ── owns both sockets ────────────┘
        DEALER ──SUBMIT/REQUEST/HEARTBEAT──▶ ventilator (clients ROUTER)
               ◀──REPLY/REJECT/HEARTBEAT──
        DEALER ──HELLO/REQUEST/HEARTBEAT──▶ sink
               ◀──RESULT/REPLY/HEARTBEAT── ──▶ settle(future)

Both DEALERs carry the client id as routing id, so the sink routes results by
the client id in each result's header.  Arguments are pickled in the caller's
thread (an unpicklable argument raises at ``submit``); functions are pickled
once and sent to the ventilator once per digest.  Submissions are batched:
the IO thread sends everything queued since its last turn as one message.

Unfinished tasks are kept (with their pickled arguments) until their result
arrives, so they can be submitted again to a ventilator that restarted.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import logging
import os
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import zmq

from . import protocol as P
from ._sockets import dealer
from ._wake import Waker
from .config import Config, load_config
from .envelope import Result, TaskInfo, TaskState
from .errors import ClientClosed, NodeUnreachable, SerializationError, ZqError
from .futures import TaskFuture, settle
from .policy import Policy
from .protocol import ResultRow, TaskSpec
from .security import Keys
from .serialize import FunctionCache, function_name, pack_args
from .task import Task, _pop_client, _push_client

log = logging.getLogger("zq.client")

FINISHED_MEMORY = 100_000
REQUEST_TIMEOUT = 10.0


def _run_chunk(fn: Callable, items: list) -> list:
    """Runs on a worker for ``map(chunksize>1)``: one task, many calls."""
    return [fn(*args) for args in items]


class Client(concurrent.futures.Executor):
    """Submit Python callables to a zq cluster.

    ``Client()`` with no config and no endpoints starts an embedded local cluster
    (ventilator, sink, workers in child processes) and stops it on shutdown.
    """

    def __init__(
        self,
        config: "str | Config | None" = None,
        *,
        ventilator: Optional[str] = None,
        sink: Optional[str] = None,
        policies: Sequence[Policy] = (),
        retain_result: Optional[bool] = None,
        unreachable_timeout: float = 60.0,
        keys: Optional[str] = None,
        key_name: Optional[str] = None,
        workers: int = 1,
        executor: str = "process",
        concurrency: int = 0,
    ) -> None:
        self._embedded: Any = None
        if isinstance(config, Config):
            cfg = config
        else:
            overrides = {"ventilator_clients": ventilator, "sink_endpoint": sink, "keys": keys,
                          "key_name": key_name}
            cfg = load_config(config, overrides)
        if config is None and ventilator is None and sink is None:
            from ._embedded import EmbeddedCluster

            self._embedded = EmbeddedCluster(workers=workers, executor=executor, concurrency=concurrency,
                                             keys=keys)
            eps = self._embedded.start()
            cfg = load_config(None, {"ventilator_clients": eps["clients"], "sink_endpoint": eps["sink"]})
        if keys is not None or key_name is not None:
            cfg = dataclasses.replace(cfg, keys=keys or cfg.keys, key_name=key_name or cfg.key_name)
        self.config = cfg
        self._keys = Keys.load(cfg.keys, cfg.key_name or "client") if cfg.keys else None
        self.policies = list(policies)
        self.retain_result = retain_result
        self.unreachable_timeout = float(unreachable_timeout)
        self.id = os.urandom(8).hex()
        self._ids = itertools.count(1)
        self._fns = FunctionCache()
        self._fn_bytes: dict[bytes, bytes] = {}
        self._lock = threading.Lock()
        self._futures: dict[str, TaskFuture] = {}
        self._unfinished: dict[str, TaskSpec] = {}
        self._finished: collections.OrderedDict[str, TaskState] = collections.OrderedDict()
        self._outbox: collections.deque[Any] = collections.deque()
        self._requests: dict[int, concurrent.futures.Future] = {}
        self._req_ids = itertools.count(1)
        self._waker = Waker()
        #: the smallest maximum message size of this client and its nodes (from heartbeats)
        self._max_message = cfg.max_message_size
        self._peer_max: dict[str, int] = {}
        self._closed = False
        self._stop_io = False
        self._io_error: Optional[BaseException] = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._io_main, name=f"zq-client-{self.id[:6]}", daemon=True)
        self._thread.start()
        self._ready.wait(10.0)
        if self._io_error is not None:
            raise self._io_error

    # -- context manager / task stack -------------------------------------------------
    def __enter__(self) -> "Client":
        _push_client(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        _pop_client(self)
        self.shutdown(wait=True)

    # -- submitting -------------------------------------------------------------------
    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> TaskFuture:  # type: ignore[override]
        return self.submit_task(fn, args, kwargs)

    def submit_task(
        self,
        fn: Callable,
        args: Sequence[Any] = (),
        kwargs: Optional[dict] = None,
        *,
        queue: Optional[str] = None,
        retain_result: Optional[bool] = None,
        retries: Optional[int] = None,
        timeout: Optional[float] = None,
        name: Optional[str] = None,
        retry_backoff: Optional[float] = None,
        retry_backoff_max: Optional[float] = None,
    ) -> TaskFuture:
        """Submit ``fn(*args, **kwargs)`` with per-task options (defaults from a ``zq.task``).

        ``retries=N`` reruns a task that raised up to N more times, waiting
        ``retry_backoff * 2**k`` seconds (default 0.1) capped at ``retry_backoff_max``
        (default 30) before rerun k+1.
        """
        if self._closed:
            raise ClientClosed("cannot submit after shutdown()")
        is_task = isinstance(fn, Task)
        if queue is None:
            queue = fn.queue if is_task else "default"
        if retries is None:
            retries = fn.retries if is_task else 0
        if timeout is None and is_task:
            timeout = fn.timeout
        if retain_result is None:
            retain_result = fn.retain_result if is_task else None
        if retain_result is None:
            retain_result = self.retain_result
        if not isinstance(queue, str) or not queue or len(queue) > 200:
            raise ValueError("queue must be a non-empty string of at most 200 characters")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be > 0 seconds")
        digest, fn_data = self._fns.get(fn)
        args = tuple(args)
        kwargs = kwargs or {}
        payload = pack_args(args, kwargs)
        limit = self._max_message - 4096
        if len(payload) + len(fn_data) > limit:
            raise SerializationError(
                f"task is {len(payload) + len(fn_data)} bytes pickled, over the cluster's maximum "
                f"message size of {self._max_message} bytes")
        opts = None
        if retry_backoff is not None or retry_backoff_max is not None:
            if (retry_backoff or 0) < 0 or (retry_backoff_max or 0) < 0:
                raise ValueError("retry_backoff and retry_backoff_max must be >= 0 seconds")
            opts = {}
            if retry_backoff is not None:
                opts["backoff"] = float(retry_backoff)
            if retry_backoff_max is not None:
                opts["backoff_max"] = float(retry_backoff_max)
        task_id = f"{self.id}-{next(self._ids)}"
        task_name = name or (fn.name if is_task else function_name(fn))
        spec = TaskSpec(task_id, task_name, queue, digest, self.id, retain_result, retries,
                        float(timeout) if timeout is not None else None, time.time(), opts=opts,
                        args=payload)
        if self.policies:
            info = TaskInfo(task_id, task_name, queue, 1, args, kwargs, retries, timeout, retain_result)
            for p in self.policies:
                p.on_submit(info)  # an exception propagates: nothing is sent
        fut = TaskFuture(task_id, self)
        with self._lock:
            if self._closed:
                raise ClientClosed("cannot submit after shutdown()")
            self._fn_bytes.setdefault(digest, fn_data)
            self._futures[task_id] = fut
            self._unfinished[task_id] = spec
            self._outbox.append(spec)
        self._waker.wake_if_sleeping()
        return fut

    def map(self, fn: Callable, *iterables: Iterable[Any], timeout: Optional[float] = None,
            chunksize: int = 1) -> Iterator[Any]:
        """Like ``Executor.map``: results in input order; ``chunksize`` calls per task."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        deadline = None if timeout is None else time.monotonic() + timeout
        if chunksize == 1:
            futs = [self.submit(fn, *args) for args in zip(*iterables)]
        else:
            it = zip(*iterables)
            futs = []
            name = fn.name if isinstance(fn, Task) else function_name(fn)
            opts = {"queue": fn.queue} if isinstance(fn, Task) else {}
            while True:
                chunk = list(itertools.islice(it, chunksize))
                if not chunk:
                    break
                futs.append(self.submit_task(_run_chunk, (fn, chunk), name=f"{name}[chunk]", **opts))

        def results() -> Iterator[Any]:
            try:
                futs.reverse()
                while futs:
                    left = None if deadline is None else deadline - time.monotonic()
                    value = futs[-1].result(left)  # stays in futs (and is cancelled) if it raises
                    futs.pop()
                    if chunksize == 1:
                        yield value
                    else:
                        yield from value
            finally:
                pending = [f for f in futs if not f.done()]
                if pending:
                    self._cancel_futures(pending)

        return results()

    # -- queries ----------------------------------------------------------------------
    def get_status(self, task_id: str) -> TaskState:
        """The task's state: QUEUED, RUNNING, SUCCESS, ... or UNKNOWN (never PENDING)."""
        with self._lock:
            state = self._finished.get(task_id)
        if state is not None:
            return state
        states = self._request("ventilator", "status", {"ids": [task_id]})
        state = TaskState(states[0])
        if state is TaskState.UNKNOWN:
            try:
                return self.get_result(task_id).state
            except KeyError:
                pass
            with self._lock:
                if task_id in self._unfinished:  # sent, but the ventilator has not seen it yet
                    return TaskState.QUEUED
        return state

    def get_result(self, task_id: str, timeout: Optional[float] = None, *, consume: bool = False) -> Result:
        """A retained result from the sink; KeyError if the sink holds none for that id."""
        reply = self._request("sink", "get_result", {"id": task_id, "consume": consume},
                              timeout=timeout, with_payload=True)
        row, payload = reply
        if row is None:
            raise KeyError(task_id)
        return ResultRow(row, payload).to_result()

    def cancel(self, task_id: str) -> bool:
        """Cancel a task by id; True if it will not run (or was stopped while running)."""
        with self._lock:
            fut = self._futures.get(task_id)
        if fut is not None:
            return self._cancel_futures([fut])[0]
        return bool(self._request("ventilator", "cancel", {"ids": [task_id]})[0])

    def stats(self) -> dict:
        """The ventilator's and the sink's counters (what ``zq status`` prints)."""
        return {"ventilator": self._request("ventilator", "stats", {}),
                "sink": self._request("sink", "stats", {})}

    def _cancel_futures(self, futs: Sequence[TaskFuture]) -> list[bool]:
        if not futs:
            return []
        try:
            oks = self._request("ventilator", "cancel", {"ids": [f.task_id for f in futs]})
        except (ZqError, TimeoutError) as exc:
            log.warning("cancel failed: %s", exc)
            return [False] * len(futs)
        out = []
        deadline = time.monotonic() + REQUEST_TIMEOUT
        for f, ok in zip(futs, oks):
            if ok == "canceled" and f._cancel_local():
                self._forget(f.task_id, TaskState.CANCELED)
            elif ok == "requested":
                # its process is being stopped: the result (CANCELED, or the value if it
                # finished first) settles the future
                concurrent.futures.wait([f], timeout=max(0.0, deadline - time.monotonic()))
            out.append(f.cancelled())
        return out

    def _request(self, node: str, op: str, header: dict, timeout: Optional[float] = None,
                 with_payload: bool = False) -> Any:
        if threading.current_thread() is self._thread:
            raise RuntimeError("zq.Client requests cannot be made from a future's done-callback")
        if self._stop_io:
            raise ClientClosed("client is shut down")
        req = next(self._req_ids)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            self._requests[req] = fut
            self._outbox.append(("request", node, {"req": req, "op": op, **header}))
        self._waker.wake()
        try:
            data, payload = fut.result(REQUEST_TIMEOUT if timeout is None else timeout)
        except concurrent.futures.TimeoutError:
            with self._lock:
                self._requests.pop(req, None)
            ep = self.config.ventilator_clients if node == "ventilator" else self.config.sink_endpoint
            raise TimeoutError(f"{node} at {ep} did not answer {op!r} in time") from None
        return (data, payload) if with_payload else data

    # -- shutdown ---------------------------------------------------------------------
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop submitting; optionally cancel pending tasks; wait; close; stop an embedded cluster."""
        with self._lock:
            already = self._closed
            self._closed = True
        if already and self._stop_io:
            return
        if cancel_futures:
            with self._lock:
                pending = [f for f in self._futures.values() if not f.done()]
            if pending and self._thread.is_alive():
                self._cancel_futures(pending)
        if wait:
            with self._lock:
                pending = list(self._futures.values())
            concurrent.futures.wait(pending)
        self._stop_io = True
        self._waker.wake()
        self._thread.join(10.0)
        with self._lock:
            left = list(self._futures.values())
            self._futures.clear()
        for f in left:
            if not f.done():
                try:
                    f.set_exception(ClientClosed(f"client shut down before task {f.task_id} finished"))
                except concurrent.futures.InvalidStateError:
                    pass
        self._waker.close()
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None

    def close(self) -> None:
        self.shutdown(wait=False)

    def __del__(self) -> None:  # a forgotten embedded cluster must not outlive us
        emb = getattr(self, "_embedded", None)
        if emb is not None:
            try:
                emb.stop()
            except Exception:
                pass

    # -- IO thread --------------------------------------------------------------------
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
        try:
            self._io_loop()
        except Exception:
            log.exception("zq client IO thread failed")
            self._fail_all(ZqError("the client's IO thread failed; see the log"))
        finally:
            self.vsock.close(0)
            self.ssock.close(0)
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
        self.vsock = self._connect("ventilator")
        self.ssock = self._connect("sink")
        self._sent_fns: set[bytes] = set()
        self._backlog: dict[str, collections.deque[list]] = {
            "ventilator": collections.deque(), "sink": collections.deque()}

    def _connect(self, node: str) -> zmq.Socket:
        s = dealer(self.ctx, self._nodes[node]["endpoint"], self.id.encode(), keys=self._keys, server=node)
        self.poller.register(s, zmq.POLLIN)
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
            self._flush_backlog()
            self._send_outbox()
            now = time.monotonic()
            if now >= next_tick:
                self._tick(now)
                next_tick = now + interval / 2

    def _send_outbox(self) -> None:
        tasks: list[TaskSpec] = []
        while self._outbox:
            item = self._outbox.popleft()
            if isinstance(item, TaskSpec):
                tasks.append(item)
            else:
                _, node, header = item
                sock = self.vsock if node == "ventilator" else self.ssock
                self._send(sock, node, P.pack(P.REQUEST, header))
        if tasks:
            self._send_tasks(tasks)

    def _send_tasks(self, tasks: list[TaskSpec], force_fns: bool = False) -> None:
        """SUBMIT ``tasks`` in as few messages as the size limit allows."""
        limit = P.batch_limit(self._max_message)
        start = 0
        while start < len(tasks):
            # count each new function once with the first task that needs it
            seen: set[bytes] = set()

            def size(t: TaskSpec) -> int:
                extra = 0
                if (force_fns or t.digest not in self._sent_fns) and t.digest not in seen:
                    seen.add(t.digest)
                    extra = len(self._fn_bytes[t.digest])
                return len(t.args) + extra

            n = P.take_batch(tasks[start:start + 5000], limit, size=size)
            batch = tasks[start:start + n]
            start += n
            fns = {}
            for t in batch:
                if (force_fns or t.digest not in self._sent_fns) and t.digest not in fns:
                    fns[t.digest] = self._fn_bytes[t.digest]
            self._send(self.vsock, "ventilator", P.pack_tasks(P.SUBMIT, batch, fns))
            self._sent_fns.update(fns)

    def _send(self, sock: zmq.Socket, node: str, frames: list, droppable: bool = False) -> None:
        """Send without ever blocking the IO thread: a node that is away or not reading
        (high-water mark) gets the message later, in order; heartbeats are dropped."""
        backlog = self._backlog[node]
        if not backlog:
            try:
                sock.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
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
                    sock.send_multipart(backlog[0], copy=False, flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
                backlog.popleft()
                self._nodes[node]["last_send"] = time.monotonic()

    def _drain(self, sock: zmq.Socket, node: str, limit: int = 1000) -> None:
        info = self._nodes[node]
        for _ in range(limit):
            try:
                frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            info["last_recv"] = time.monotonic()
            info["backoff"] = self.config.heartbeat_interval
            try:
                self._on_message(node, P.unpack(frames))
            except Exception as exc:
                log.warning("bad message from %s: %s", node, exc)

    def _on_message(self, node: str, msg: P.Message) -> None:
        cmd = msg.command
        if cmd == P.RESULT:
            rows = P.unpack_results(msg)
            # acknowledge every result received, even one already settled (a resend):
            # only then may its worker forget it
            self._send(self.ssock, "sink", P.pack(P.ACK, {"ids": [r.task_id for r in rows]}))
            self._on_results(rows)
        elif cmd == P.REPLY:
            req = msg.header.get("req")
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
                self._max_message = min(self.config.max_message_size, *self._peer_max.values())
        elif cmd == P.REJECT:
            ids = msg.header.get("ids") or []
            if msg.header.get("code") == "unknown-function":
                with self._lock:
                    specs = [self._unfinished[i] for i in ids if i in self._unfinished]
                self._sent_fns.clear()
                if specs:
                    self._send_tasks(specs, force_fns=True)
        elif cmd == P.ERROR:
            log.warning("%s refused a message: %s", node, msg.header.get("msg"))

    def _node_restarted(self, node: str) -> None:
        if node == "ventilator":
            self._sent_fns.clear()
            with self._lock:
                specs = list(self._unfinished.values())
            if specs:
                log.warning("submitting %d unfinished task(s) again", len(specs))
            self._send_tasks(specs)
        else:
            self._send(self.ssock, "sink", P.pack(P.HELLO, {"client": self.id}))

    def _on_results(self, rows: list[ResultRow]) -> None:
        settled = []
        with self._lock:
            for r in rows:
                tid = r.task_id
                fut = self._futures.pop(tid, None)
                self._unfinished.pop(tid, None)
                if fut is not None:
                    settled.append((fut, r))
        for fut, r in settled:
            result = r.to_result()
            self._forget(fut.task_id, result.state)
            settle(fut, result)

    def _forget(self, task_id: str, state: TaskState) -> None:
        with self._lock:
            self._futures.pop(task_id, None)
            self._unfinished.pop(task_id, None)
            self._finished[task_id] = state
            if len(self._finished) > FINISHED_MEMORY:
                self._finished.popitem(last=False)

    def _tick(self, now: float) -> None:
        cfg = self.config
        for node, sock_attr in (("ventilator", "vsock"), ("sink", "ssock")):
            info = self._nodes[node]
            # heartbeat on a fixed schedule, busy or not: the nodes answer heartbeats,
            # not submissions, and their answers are how we know they are alive
            if now - info.get("last_hb", 0.0) >= cfg.heartbeat_interval:
                info["last_hb"] = now
                self._send(getattr(self, sock_attr), node,
                           P.pack(P.HEARTBEAT, {"id": self.id, "client": self.id}), droppable=True)
            silent = now - info["last_recv"]
            if silent <= cfg.heartbeat_timeout:
                info["backoff"] = cfg.heartbeat_interval
                info["reconnect_at"] = 0.0
                continue
            if now >= info.get("reconnect_at", 0.0):
                # Paranoid Pirate: a fresh socket, then wait longer (capped) before the next
                log.info("%s at %s silent for %.1fs: reconnecting", node, info["endpoint"], silent)
                info["reconnect_at"] = now + info["backoff"]
                info["backoff"] = min(info["backoff"] * 2, 30.0)
                old = getattr(self, sock_attr)
                self.poller.unregister(old)
                old.close(0)
                setattr(self, sock_attr, self._connect(node))
                if node == "ventilator" and info["instance"] is None:
                    # never heard from it: what we sent may be lost. (Otherwise its next
                    # heartbeat tells whether it restarted: see _on_message.)
                    self._node_restarted("ventilator")
            if silent > self.unreachable_timeout and (self._futures or self._requests):
                self._fail_all(NodeUnreachable(
                    f"the {node} at {info['endpoint']} has been unreachable for {silent:.0f}s "
                    f"(client unreachable_timeout={self.unreachable_timeout:g}s)"))

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
