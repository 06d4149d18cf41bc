"""Where user code runs on a worker: a thread pool or a pool of long-lived processes.

Both executors have slots.  The worker's IO thread hands a free slot a *batch*
of tasks (one task when tasks are long or have a timeout, several when they
are short, so that no-op tasks do not pay a thread or process hand-off each)
and collects one completion per task.  Executor threads and child processes
never touch a socket:

    IO thread ──[batch]──▶ SimpleQueue ──▶ executor thread ── runs each task
              ◀──completions deque (+ Waker when the loop sleeps)──┘

    IO thread ──[batch] over a pipe──▶ child process ── runs each task
              ◀──one completion per task; EOF when the child died──┘

Tasks report progress and queue follow-ups through *events* (see
zq.context): the thread executor appends them to the same deque as
completions, a child process sends them down its pipe.  ``async def`` tasks
run on one event loop thread (``AsyncRunner``), many at once.  The code that
runs a task is ``zq.runner.execute`` / ``execute_async``; each completion an
executor hands back (a ``zq.protocol.Completion``) carries the attempt it ran.

Unpickled task functions are cached per executor (and per child process) in an
LRU of ``FN_CACHE`` functions.  One evicted is unpickled again from the bytes
the worker hands over with every batch (thread, async); a child process is sent
a function's bytes whenever the parent's mirror of its cache (``_Child.digests``,
the same LRU fed the same digests in the same order) says the child lacks it.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import pickle
import queue
import signal
import threading
import time
from collections import OrderedDict, deque
from typing import Any, Callable, Optional, Sequence

from zq._wake import Waker
from zq.policy import Policy, load_policies
from zq.errors import ProtocolError
from zq.protocol import BY_NAME, Completion, TaskRow, TaskSpec, check_completion, check_event
from zq.runner import execute, execute_async, load_function
from zq.serialize import ArgFrames, args_blob

log = logging.getLogger("zq.worker")

#: what a slot is given: [(task row, argument bytes, function bytes or None), ...]
Batch = list
#: functions kept unpickled per executor (and per child process), least recently used out
FN_CACHE = 1000


class FnCache:
    """Unpickled functions by digest, at most ``size``, least recently used evicted.

    ``get``/``__setitem__`` are what ``zq.runner.load_function`` uses; ``touch`` (process
    children) records the use of a digest before its task runs, keeping the function
    bytes when it is not loaded yet, so that the parent's mirror stays exact whether or
    not the task gets as far as loading its function.  Thread-safe (executor threads
    share one)."""

    def __init__(self, size: int = FN_CACHE) -> None:
        self.size = max(1, size)
        self._d: OrderedDict[bytes, Any] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._d)

    def get(self, digest: bytes) -> Optional[Callable]:
        with self._lock:
            fn = self._d.get(digest)
            if fn is None or type(fn) is _Unloaded:
                return None
            self._d.move_to_end(digest)
            return fn

    def __setitem__(self, digest: bytes, fn: Callable) -> None:
        with self._lock:
            self._d[digest] = fn
            self._d.move_to_end(digest)
            while len(self._d) > self.size:
                self._d.popitem(last=False)

    def touch(self, digest: bytes, data: Any) -> Any:
        """A task of ``digest`` is about to run, with its function's bytes or None: note the
        use (evicting the oldest); the bytes to load the function from if not loaded yet."""
        with self._lock:
            d = self._d
            have = d.get(digest)
            if have is None:
                if data is not None:
                    d[digest] = _Unloaded(data)
                    while len(d) > self.size:
                        d.popitem(last=False)
                return data
            d.move_to_end(digest)
            if type(have) is _Unloaded:
                return have.data if data is None else data
            return data


class _Unloaded:
    __slots__ = ("data",)

    def __init__(self, data: Any) -> None:
        self.data = data


class _Mirror:
    """The parent's view of a child's FnCache: which digests it holds, same LRU order."""

    __slots__ = ("size", "_d")

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._d: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._d)

    def use(self, digest: bytes) -> bool:
        """Note a task of ``digest`` sent to the child; False if the child lacks it."""
        d = self._d
        if digest in d:
            d.move_to_end(digest)
            return True
        d[digest] = None
        while len(d) > self.size:
            d.popitem(last=False)
        return False


def import_tasks(modules: Sequence[str]) -> dict:
    """Import ``modules`` (``zq worker --import``); every ``@zq.task`` they define, by name."""
    import importlib

    from zq.task import registry

    for name in modules:
        importlib.import_module(name)
    return dict(registry)


def fn_loader(cache: dict, row: TaskRow, fn_data: Any) -> Callable[[], Callable]:
    """How a task's function is found: by digest (shipped), or by name (imported)."""
    if row.digest == BY_NAME:
        name = row.name

        def by_name() -> Callable:
            from zq.task import registry

            try:
                return registry[name]
            except KeyError:
                raise LookupError(f"no task named {name!r} was imported on this worker") from None
        return by_name
    digest = row.digest
    return lambda: load_function(cache, digest, fn_data)


def _batch(specs: Sequence[TaskSpec], fns: dict[bytes, Any]) -> Batch:
    return [(s.record(), s.args, fns.get(s.digest)) for s in specs]


class _InProcess:
    """What the in-process runners share: completions and events handed to the IO thread
    through deques, with a wake-up only when its loop sleeps."""

    def __init__(self, policies: Sequence[Policy], waker: Waker, max_result: int) -> None:
        self.policies = list(policies)
        self.waker = waker
        self.max_result = max_result
        self.completions: deque[Any] = deque()
        self.events: deque[tuple] = deque()
        self._fns = FnCache(FN_CACHE)

    def _emit(self, event: tuple) -> None:
        self.events.append(event)
        self.waker.wake_if_sleeping()

    def take_events(self) -> list[tuple]:
        out = []
        while self.events:
            out.append(self.events.popleft())
        return out


class ThreadExecutor(_InProcess):
    """``slots`` threads; a task that overran its timeout keeps its slot until it returns."""

    kind = "thread"

    def __init__(self, slots: int, policies: Sequence[Policy], waker: Waker, max_result: int) -> None:
        super().__init__(policies, waker, max_result)
        self.slots = slots
        self.busy = 0  # completions hold (completion, whether it frees its slot)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._run, name=f"zq-exec-{i}", daemon=True)
                         for i in range(slots)]
        for t in self._threads:
            t.start()

    def fds(self) -> list:
        return []

    def free(self) -> int:
        return self.slots - self.busy

    def pending(self) -> bool:
        return bool(self.completions or self.events)

    def start(self, specs: Sequence[TaskSpec], fns: dict[bytes, Any]) -> None:
        self.busy += 1
        self._inbox.put(_batch(specs, fns))

    def _run(self) -> None:
        out = self.completions
        while True:
            batch = self._inbox.get()
            if batch is None:
                return
            last = len(batch) - 1
            for i, (row, args, fn_data) in enumerate(batch):
                comp = execute(row, args, fn_loader(self._fns, row, fn_data), self.policies,
                               self.max_result, self._emit)
                # the last completion of a batch also frees the slot (see collect)
                out.append((comp, i == last))
                self.waker.wake_if_sleeping()

    def collect(self, readable: set) -> list[Completion]:
        out = []
        while self.completions:
            comp, frees = self.completions.popleft()
            out.append(comp)
            if frees:
                self.busy -= 1
        return out

    def kill(self, task_id: str, reason: str = "") -> bool:
        return False  # a thread cannot be stopped; see README "Guarantees"

    def lost(self) -> list[tuple[str, str]]:
        return []

    def handed_back(self) -> list[str]:
        return []

    def close(self, wait: float) -> None:
        for _ in self._threads:
            self._inbox.put(None)
        deadline = time.monotonic() + wait
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))


def _child_main(conn: Any, policy_specs: Sequence[str], max_result: int, imports: Sequence[str] = (),
                fn_cache: int = FN_CACHE) -> None:
    """A long-lived executor process: run the batches sent down ``conn``, one task at a time,
    sending each completion back as soon as it is ready."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when children stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        policies = load_policies(policy_specs)
    except Exception:
        log.exception("policies could not be loaded in the executor process")
        policies = []
    try:
        import_tasks(imports)
    except Exception:
        log.exception("task modules could not be imported in the executor process")
    global _child_fns
    fns = _child_fns = FnCache(fn_cache)

    def emit(event: tuple) -> None:
        conn.send_bytes(pickle.dumps(("event", event), protocol=5))

    while True:
        try:
            msg = conn.recv_bytes()
        except (EOFError, OSError):
            return
        batch = pickle.loads(msg)
        if batch is None:
            return
        for row, args, fn_data in batch:
            if row.digest != BY_NAME:  # in step with the parent's mirror (_Mirror.use), task by task
                fn_data = fns.touch(row.digest, fn_data)
            comp = execute(row, args, fn_loader(fns, row, fn_data), policies, max_result, emit)
            if type(comp.payload) is ArgFrames:  # out-of-band frames cross the pipe as one blob
                comp = comp._replace(payload=args_blob(comp.payload))
            # a plain tuple (the parent checks it and makes it a Completion again)
            conn.send_bytes(pickle.dumps(("done", tuple(comp)), protocol=5))


#: a child process's function cache (for inspection by tasks and tests)
_child_fns: Optional[FnCache] = None


def oom_kills() -> Optional[int]:
    """The cgroup's count of OOM kills (v2 ``memory.events``, v1 ``memory.oom_control``)."""
    candidates = []
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                path = path.rstrip("/")
                if controllers == "":
                    candidates.append(f"/sys/fs/cgroup{path}/memory.events")
                elif "memory" in controllers.split(","):
                    candidates.append(f"/sys/fs/cgroup/memory{path}/memory.oom_control")
    except (OSError, ValueError):
        return None
    candidates += ["/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"]
    for path in candidates:
        try:
            with open(path) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return None


class _Child:
    __slots__ = ("proc", "conn", "tasks", "digests", "oom_at_start")

    def __init__(self, proc: Any, conn: Any, fn_cache: int) -> None:
        self.proc = proc
        self.conn = conn
        self.tasks: deque[str] = deque()  # ids sent and not completed, in order
        self.digests = _Mirror(fn_cache)  # the functions the child holds (its FnCache)
        self.oom_at_start = oom_kills()


class ProcessExecutor:
    """``slots`` long-lived child processes, each running its batch one task at a time.

    When a child dies, the task it was running (the first not completed) is lost
    with the cause; the rest of its batch never started and is handed back.
    """

    kind = "process"

    def __init__(self, slots: int, policy_specs: Sequence[str], max_result: int,
                 imports: Sequence[str] = (), fn_cache: int = FN_CACHE) -> None:
        self.slots = slots
        self.fn_cache = fn_cache
        self.policy_specs = list(policy_specs)
        self.imports = list(imports)
        self.max_result = max_result
        self._mp = multiprocessing.get_context("spawn")
        self.children: list[_Child] = [self._spawn() for _ in range(slots)]
        self._lost: list[tuple[str, str]] = []
        self._handed_back: list[str] = []
        self._events: list[tuple] = []
        self.fds_changed = False

    def _spawn(self) -> _Child:
        parent, child = self._mp.Pipe(duplex=True)
        proc = self._mp.Process(target=_child_main, args=(child, self.policy_specs, self.max_result,
                                                          self.imports, self.fn_cache),
                                daemon=True, name="zq-exec")
        proc.start()
        child.close()
        return _Child(proc, parent, self.fn_cache)

    def fds(self) -> list:
        return [c.conn.fileno() for c in self.children]

    def free(self) -> int:
        return sum(1 for c in self.children if not c.tasks)

    def pending(self) -> bool:
        return False

    def start(self, specs: Sequence[TaskSpec], fns: dict[bytes, Any]) -> None:
        child = next(c for c in self.children if not c.tasks)
        items = []
        for s in specs:
            fn = None
            if s.digest != BY_NAME and not child.digests.use(s.digest):
                fn = fns.get(s.digest)
                fn = bytes(fn) if fn is not None else None
            items.append((s.record(), args_blob(s.args), fn))
            child.tasks.append(s.task_id)
        child.conn.send_bytes(pickle.dumps(items, protocol=5))

    def collect(self, readable: set) -> list[Completion]:
        out = []
        for i, c in enumerate(self.children):
            if c.conn.fileno() not in readable:
                continue
            try:
                while c.conn.poll():
                    kind, item = pickle.loads(c.conn.recv_bytes())
                    if kind == "event":
                        try:
                            self._events.append(check_event(item))
                        except ProtocolError as exc:
                            log.error("executor process %d sent a malformed event: %s", c.proc.pid, exc)
                        continue
                    try:
                        comp = check_completion(item)
                    except ProtocolError as exc:  # never fail the loop: the task is lost, with why
                        self._replace(i, f"executor process {c.proc.pid} sent a malformed completion ({exc})")
                        break
                    if c.tasks and c.tasks[0] == comp.task_id:
                        c.tasks.popleft()
                    out.append(comp)
            except (EOFError, OSError):
                self._replace(i, None)
        return out

    def _describe_exit(self, child: _Child) -> str:
        proc = child.proc
        proc.join(2.0)
        code = proc.exitcode
        if code is None:
            return f"executor process {proc.pid} stopped answering"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            why = f"executor process {proc.pid} killed by {name}"
            if -code == signal.SIGKILL:
                now = oom_kills()
                if now is not None and child.oom_at_start is not None and now > child.oom_at_start:
                    why += " (out of memory: the kernel's OOM killer, per the cgroup's memory counters)"
                else:
                    why += " (by an operator, a supervisor or the kernel)"
            return why
        return f"executor process {proc.pid} exited with code {code}"

    def _replace(self, i: int, reason: Optional[str]) -> None:
        c = self.children[i]
        if reason is None:
            reason = self._describe_exit(c)
        else:
            c.proc.kill()
            c.proc.join(2.0)
        c.conn.close()
        if c.tasks:
            self._lost.append((c.tasks.popleft(), reason))
            self._handed_back.extend(c.tasks)
        log.warning("%s; starting a new one", reason)
        self.children[i] = self._spawn()
        self.fds_changed = True

    def take_events(self) -> list[tuple]:
        out, self._events = self._events, []
        return out

    def lost(self) -> list[tuple[str, str]]:
        """Tasks whose process died while running them since the last call, with the cause."""
        out, self._lost = self._lost, []
        return out

    def handed_back(self) -> list[str]:
        """Tasks of a dead process's batch that had not started: to be run again, not lost."""
        out, self._handed_back = self._handed_back, []
        return out

    def kill(self, task_id: str, reason: str = "cancelled") -> bool:
        """Terminate the process running ``task_id`` if it is running it now."""
        for i, c in enumerate(self.children):
            if c.tasks and c.tasks[0] == task_id:
                self._replace(i, f"executor process {c.proc.pid} terminated: {reason}")
                self._lost = [(t, r) for t, r in self._lost if t != task_id]
                return True
        return False

    def close(self, wait: float) -> None:
        for c in self.children:
            try:
                c.conn.send_bytes(pickle.dumps(None))
            except OSError:
                pass
        deadline = time.monotonic() + wait
        for c in self.children:
            c.proc.join(max(0.0, deadline - time.monotonic()))
            if c.proc.is_alive():
                c.proc.kill()
                c.proc.join(1.0)
            c.conn.close()


class AsyncRunner(_InProcess):
    """``async def`` tasks: one event loop thread in the worker, up to ``limit`` at once.

    Async code waits on IO rather than the CPU, so these tasks do not take executor
    slots; their time limits cancel the coroutine.
    """

    kind = "async"

    def __init__(self, limit: int, policies: Sequence[Policy], waker: Waker, max_result: int) -> None:
        super().__init__(policies, waker, max_result)
        self.limit = limit
        self.running = 0
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="zq-async", daemon=True)
        self._thread.start()

    def free(self) -> int:
        return self.limit - self.running

    def start(self, spec: TaskSpec, fn_data: Any) -> None:
        self.running += 1
        row, args = spec.record(), spec.args
        coro = execute_async(row, args, fn_loader(self._fns, row, fn_data), self.policies,
                             self.max_result, self._emit)
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        fut.add_done_callback(self._done)

    def _done(self, fut: Any) -> None:
        try:
            self.completions.append(fut.result())
        except BaseException as exc:  # execute_async never raises; belt and braces
            log.error("async task runner failed: %r", exc)
            return
        self.waker.wake_if_sleeping()

    def collect(self) -> list[Completion]:
        out = []
        while self.completions:
            out.append(self.completions.popleft())
            self.running -= 1
        return out

    def close(self, wait: float) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(wait)

