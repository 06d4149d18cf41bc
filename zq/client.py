"""``zq.Client``: a ``concurrent.futures.Executor`` backed by a zq cluster.

    caller threads ──submit(): pickle, TaskSpec, future──▶ ClientIO.outbox + Waker
                                                              │
    IO thread (ClientIO, zq/_clientio.py) ── owns both links ─┘
        Link ──SUBMIT/REQUEST/HEARTBEAT──▶ ventilator (clients ROUTER)
             ◀──REPLY/REJECT/HEARTBEAT──
        Link ──HELLO/REQUEST/HEARTBEAT──▶ sink
             ◀──RESULT/REPLY/HEARTBEAT── ──▶ settle(future)

The client is built from parts: ``TaskBook`` (its tasks, shared with the IO thread
under one lock), ``ClientIO`` (the IO thread and its sockets, ``self._io``) and
``Admin`` (the admin calls, ``self._admin``, given three callables).

Both DEALERs carry the client id as routing id, so the sink routes results by
the client id in each result's header.  Arguments are pickled in the caller's
thread (an unpicklable argument raises at ``submit``); functions are pickled
once and sent to the ventilator once per digest.  Submissions are batched:
the IO thread sends everything queued since its last turn as one message.

Unfinished tasks are kept (with their pickled arguments) until their result
arrives, so they can be submitted again to a ventilator that restarted.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import functools
import itertools
import logging
import os
import time
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

from .config import Config, load_config
from .context import Progress
from .envelope import Result, TaskInfo, TaskState
from .errors import ClientClosed, SerializationError, ZqError
from .futures import TaskFuture
from .policy import Policy
from .protocol import ResultRow, TaskSpec
from .security import Keys
from .serialize import FunctionCache, args_size, function_name, pack_args
from . import protocol as P
from ._clientadmin import Admin
from ._clientio import REQUEST_TIMEOUT, ClientIO, TaskBook, set_progress
from ._local import run_locally
from .canvas import Call, Chain, Group
from .errors import UnknownTask
from .futures import GroupFuture
from .options import _by_name_placeholder, args_repr, check_params, task_options
from .task import Task, _pop_client, _push_client

log = logging.getLogger("zq.client")


def _run_chunk(fn: Callable, items: list) -> list:
    """Runs on a worker for ``map(chunksize>1)``: one task, many calls."""
    return [fn(*args) for args in items]


def _admin(name: str) -> Any:
    """A ``Client`` method that is ``Admin``'s (same signature and docstring)."""
    fn = getattr(Admin, name)

    @functools.wraps(fn)
    def call(self: "Client", *args: Any, **kwargs: Any) -> Any:
        return fn(self._admin, *args, **kwargs)

    return call


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
        execute: str = "remote",
        show_args: bool = True,
    ) -> None:
        self._embedded: Any = None
        self.show_args = show_args
        if execute not in ("remote", "local", "auto"):
            raise ValueError("execute must be 'remote', 'local' or 'auto'")
        self.execute = execute
        self._registry_cache: Optional[tuple[float, dict]] = None
        self._served_cache: dict[str, tuple[float, bool]] = {}
        if isinstance(config, Config):
            cfg = config
        else:
            overrides = {"ventilator_clients": ventilator, "sink_endpoint": sink, "keys": keys,
                          "key_name": key_name}
            cfg = load_config(config, overrides)
        if config is None and ventilator is None and sink is None and execute != "local":
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
        self._book = book = TaskBook()
        # the book's parts, by their names here (the same objects, under book.lock)
        self._lock, self._futures, self._unfinished = book.lock, book.futures, book.unfinished
        self._finished, self._fn_bytes = book.finished, book.fn_bytes
        self._closed = False
        self._io = ClientIO(cfg, self.id, self._keys, book, self.unreachable_timeout)
        self._waker = self._io.waker
        self._enqueue = self._io.outbox.append  # what submit hands the IO thread
        self._admin = Admin(self._request, self._final_state, self._known_progress)
        self._io.start()

    # -- the parts' interfaces ---------------------------------------------------------
    @property
    def _thread(self) -> Any:
        """The IO thread (done-callbacks run on it)."""
        return self._io.thread

    @property
    def _max_message(self) -> int:
        """The smallest maximum message size of this client and its nodes."""
        return self._io.max_message

    def _final_state(self, task_id: str) -> Optional[TaskState]:
        with self._lock:
            return self._finished.get(task_id)

    def _known_progress(self, task_id: str) -> Optional[Progress]:
        with self._lock:
            fut = self._futures.get(task_id)
        return fut.progress if fut is not None else None

    def _set_progress(self, fut: TaskFuture, row: P.ProgressRow) -> None:
        set_progress(fut, row)

    def _forget(self, task_id: str, state: TaskState) -> None:
        self._book.forget(task_id, state)

    def _request(self, node: str, op: str, header: dict, timeout: Optional[float] = None,
                 with_payload: bool = False, submit: Optional[TaskSpec] = None) -> Any:
        return self._io.request(node, op, header, timeout, with_payload, submit)

    # -- admin calls (zq/_clientadmin.py) -------------------------------------------------
    list_tasks = _admin("list_tasks")
    count_tasks = _admin("count_tasks")
    show_task = _admin("show_task")
    requeue = _admin("requeue")
    forget = _admin("forget")
    pause = _admin("pause")
    resume = _admin("resume")
    disable_task = _admin("disable_task")
    enable_task = _admin("enable_task")
    registry = _admin("registry")
    get_progress = _admin("get_progress")

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
        priority: "str | int | None" = None,
        key: Optional[str] = None,
        delay: Optional[float] = None,
        eta: "float | dt.datetime | None" = None,
        result_ttl: Optional[float] = None,
        _opts: Optional[dict] = None,
    ) -> TaskFuture:
        """Submit ``fn(*args, **kwargs)`` with per-task options (defaults from a ``zq.task``).

        ``retries=N`` reruns a task that raised up to N more times, waiting
        ``retry_backoff * 2**k`` seconds (default 0.1) capped at ``retry_backoff_max``
        (default 30) before rerun k+1.  ``priority``: ``"high"``, ``"normal"``, ``"low"`` or
        an int (higher first within a queue).  ``key``: while a task with this key is queued
        or running, submitting it again returns the same task (from any client).
        ``delay``/``eta``: not before that many seconds / that time.  ``result_ttl``: how
        long a retained result is kept.
        """
        if self._closed:
            raise ClientClosed("cannot submit after shutdown()")
        t: Optional[Task] = fn if isinstance(fn, Task) else None
        queue = queue if queue is not None else (t.queue if t else "default")
        retries = retries if retries is not None else (t.retries if t else 0)
        if timeout is None and t is not None:
            timeout = t.timeout
        if retain_result is None and t is not None:
            retain_result = t.retain_result
        if retain_result is None:
            retain_result = self.retain_result
        if not isinstance(queue, str) or not queue or len(queue) > 200:
            raise ValueError("queue must be a non-empty string of at most 200 characters")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be > 0 seconds")
        fn_name, fn_async = self._fns.info(fn)
        opts = task_options(t, fn, priority, key, delay, eta, result_ttl, retry_backoff, retry_backoff_max,
                            fn_async)
        if _opts:
            opts = {**(opts or {}), **_opts}
        by_name = bool(opts and opts.pop("_by_name", False))
        if by_name:
            digest, fn_data = P.BY_NAME, b""
        else:
            digest, fn_data = self._fns.get(fn)
        args = tuple(args)
        kwargs = kwargs or {}
        if self.show_args:  # the Task page's and `zq tasks show`'s "args" (the arguments stay pickled)
            opts = {**opts, "argrepr": args_repr(args, kwargs)} if opts else {"argrepr": args_repr(args, kwargs)}
        payload = pack_args(args, kwargs, oob=True)  # a large buffer argument: not copied
        limit = self._max_message - 4096
        if args_size(payload) + len(fn_data) > limit:
            raise SerializationError(
                f"task is {args_size(payload) + len(fn_data)} bytes pickled, over the cluster's maximum "
                f"message size of {self._max_message} bytes")
        task_id = f"{self.id}-{next(self._ids)}"
        task_name = name or (t.name if t else fn_name)
        spec = TaskSpec(task_id, task_name, queue, digest, self.id, retain_result, retries,
                        float(timeout) if timeout is not None else None, time.time(), opts=opts,
                        args=payload)
        if self.policies:
            info = TaskInfo(task_id, task_name, queue, 1, args, kwargs, retries, timeout, retain_result)
            for p in self.policies:
                p.on_submit(info)  # an exception propagates: nothing is sent
        if self._runs_locally(queue):
            return run_locally(self, fn, args, kwargs, spec)
        if key is not None:
            return self._submit_keyed(spec, fn_data)
        fut = TaskFuture(task_id, self)
        with self._lock:
            if self._closed:
                raise ClientClosed("cannot submit after shutdown()")
            if fn_data:
                self._fn_bytes.setdefault(digest, fn_data)
            self._futures[task_id] = fut
            self._unfinished[task_id] = spec
            self._enqueue(spec)
        self._waker.wake_if_sleeping()
        return fut

    def _submit_keyed(self, spec: TaskSpec, fn_data: bytes) -> TaskFuture:
        """A task with a de-duplication key: ask the ventilator which task it is."""
        spec.retain = True  # another client may be waiting for the same result
        with self._lock:
            if fn_data:
                self._fn_bytes.setdefault(spec.digest, fn_data)
            own = TaskFuture(spec.task_id, self)
            self._futures[spec.task_id] = own
            self._unfinished[spec.task_id] = spec
        ids = self._request("ventilator", "", {}, submit=spec)
        canonical = ids[0]
        if canonical == spec.task_id:
            return own
        with self._lock:  # a duplicate: this client's earlier future, or watch the other's
            self._futures.pop(spec.task_id, None)
            self._unfinished.pop(spec.task_id, None)
            existing = self._futures.get(canonical)
            if existing is not None:
                return existing
        return self.future_for(canonical)

    def future_for(self, task_id: str) -> TaskFuture:
        """A future for any task (submitted by anyone): it completes with the task's result."""
        with self._lock:
            fut = self._futures.get(task_id)
            if fut is None:
                fut = self._futures[task_id] = TaskFuture(task_id, self)
            self._io.watch(task_id)
        self._waker.wake()
        return fut

    def submit_call(self, call: "Call | Chain") -> TaskFuture:
        """Submit a ``zq.Call`` (``add.s(1, 2)``) or a ``zq.chain(...)``; its future resolves to
        the call's (the chain's last) result."""
        if isinstance(call, Chain):
            first, rest = call.calls[0], call.calls[1:]
            then = [c.link() for c in rest]
            return self.submit_task(first.fn, first.args, first.kwargs, queue=first.queue,
                                    _opts={"then": then} if then else None)
        return self.submit_task(call.fn, call.args, call.kwargs, queue=call.queue)

    def submit_group(self, group: Group) -> GroupFuture:
        """Run the group's calls (or chains) in parallel; a future of their results, in order."""
        return GroupFuture([self.submit_call(c) for c in group.calls])

    def submit_by_name(self, name: str, params: "dict | list | tuple | None" = None, **options: Any) -> TaskFuture:
        """Submit a task registered on the workers (``zq worker --import MODULE``) by name,
        with JSON-able parameters (a dict of keyword or a list of positional arguments).
        An unknown name raises ``zq.UnknownTask``; arguments that do not fit the task's
        signature raise ``TypeError`` here, not on a worker."""
        info = self._registry().get(name)
        if info is None:
            info = self._registry(refresh=True).get(name)
        if info is None:
            raise UnknownTask(f"no worker has registered a task named {name!r}")
        args, kwargs = check_params(name, info, params)
        opts = dict(options.pop("_opts", None) or {}, _by_name=True)
        if info.get("async"):
            opts["async"] = True
        if isinstance(info.get("max_concurrency"), int):
            opts["limit"] = info["max_concurrency"]
        if isinstance(info.get("rate_limit"), str):
            opts["rate"] = info["rate_limit"]
        if info.get("priority") and "priority" not in options:
            options["priority"] = info["priority"]
        options.setdefault("queue", info.get("queue") or "default")
        options.setdefault("retries", info.get("retries") or 0)
        if info.get("timeout") and "timeout" not in options:
            options["timeout"] = info["timeout"]
        return self.submit_task(_by_name_placeholder, args, kwargs, name=name, _opts=opts, **options)

    def _registry(self, refresh: bool = False) -> dict:
        now = time.monotonic()
        if refresh or self._registry_cache is None or now - self._registry_cache[0] > 2.0:
            self._registry_cache = (now, self._request("ventilator", "registry", {})["tasks"])
        return self._registry_cache[1]

    def _runs_locally(self, queue: str) -> bool:
        if self.execute == "local":
            return True
        if self.execute == "remote":
            return False
        now = time.monotonic()  # auto: here when no worker serves the queue
        cached = self._served_cache.get(queue)
        if cached is None or now - cached[0] > 1.0:
            served = any(queue in w["queues"] for w in self._request("ventilator", "stats", {})["workers"])
            self._served_cache[queue] = cached = (now, served)
        return not cached[1]

    def map(self, fn: Callable, *iterables: Iterable[Any], timeout: Optional[float] = None,
            chunksize: int = 1, progress: bool = False) -> Iterator[Any]:
        """Like ``Executor.map``: results in input order; ``chunksize`` calls per task;
        ``progress=True``: a progress bar over the calls (``zq.progress``)."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        deadline = None if timeout is None else time.monotonic() + timeout
        sizes: list[int] = []
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
                sizes.append(len(chunk))
                futs.append(self.submit_task(_run_chunk, (fn, chunk), name=f"{name}[chunk]", **opts))
        bar = None
        if progress:
            from .progress import ProgressBar

            bar = ProgressBar(sum(sizes) if sizes else len(futs),
                              desc=fn.name if isinstance(fn, Task) else function_name(fn))
            bar.attach(list(futs), sizes or None)

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
                for f in futs:  # as Executor.map: the calls not awaited are cancelled
                    f.cancel()
                if bar is not None:
                    bar.close()

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
        """Cancel a task by id; True if it will not run (or was stopped while running).

        Unlike ``TaskFuture.cancel()`` this asks the ventilator and waits for its answer
        (and, for a task it is stopping in a process executor, for the outcome)."""
        with self._lock:
            fut = self._futures.get(task_id)
        if fut is not None:
            return self._cancel_futures([fut])[0]
        return bool(self._request("ventilator", "cancel", {"ids": [task_id]})[0])

    def stats(self) -> dict:
        """The ventilator's and the sink's counters (what ``zq status`` prints)."""
        return {"ventilator": self._request("ventilator", "stats", {}),
                "sink": self._request("sink", "stats", {})}

    def _cancel_later(self, futs: Sequence[TaskFuture]) -> None:
        """Futures cancelled here (``TaskFuture.cancel``): forget them (a result that still
        arrives is acknowledged, not delivered) and have the IO thread ask the ventilator to
        drop or stop their tasks.  Never waits; callable from the IO thread."""
        with self._lock:
            for f in futs:
                tid = f.task_id
                if self._futures.get(tid) is f:
                    del self._futures[tid]
                    self._unfinished.pop(tid, None)  # not to be submitted again
            self._io.cancel_later([f.task_id for f in futs])
        if not self._io.stopping:  # after shutdown the waker's descriptors are closed
            self._waker.wake()

    def _cancel_futures(self, futs: Sequence[TaskFuture]) -> list[bool]:
        """``cancel(task_id)``: one round trip; True for each task that will not run."""
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

    # -- shutdown ---------------------------------------------------------------------
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop submitting; optionally cancel this client's pending tasks; wait for the
        others (a node unreachable for ``unreachable_timeout`` fails them, as always); close;
        stop an embedded cluster.  ``future_for`` watches of other clients' tasks are not
        waited for: they fail with ``ClientClosed``."""
        with self._lock:
            already = self._closed
            self._closed = True
        if already and self._io.stopping:
            return
        with self._lock:  # the tasks this client submitted (not future_for watches)
            own = [f for tid, f in self._futures.items() if tid in self._unfinished]
        if cancel_futures:
            for f in own:
                f.cancel()  # sent by the IO thread before it stops
        if wait:
            self._wait_for(own)
        self._io.stop()
        with self._lock:
            left = list(self._futures.items())
            self._futures.clear()
            mine = set(self._unfinished)
        for tid, f in left:
            if not f.done():
                why = "" if tid in mine else " (shutdown waits only for this client's own tasks)"
                try:
                    f.set_exception(ClientClosed(f"client shut down before task {tid} finished{why}"))
                except concurrent.futures.InvalidStateError:
                    pass
        self._waker.close()
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None

    def _wait_for(self, futs: list[TaskFuture]) -> None:
        """Wait for ``futs``: they finish, or the IO thread fails them (a node unreachable
        for ``unreachable_timeout``), or the IO thread is gone (nothing can finish them)."""
        pending = set(futs)
        while pending and self._io.thread.is_alive():
            pending = concurrent.futures.wait(pending, timeout=1.0).not_done

    def close(self) -> None:
        self.shutdown(wait=False)

    def __del__(self) -> None:  # a forgotten embedded cluster must not outlive us
        emb = getattr(self, "_embedded", None)
        if emb is not None:
            try:
                emb.stop()
            except Exception:
                pass
