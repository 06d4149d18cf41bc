"""Task functions, policies and helpers for the task-lifecycle tests.

Worker processes import this module with ``--import tests.lifecycle_tasks`` (so its
``@zq.task`` functions can be submitted by name), the ventilator loads
``tests.lifecycle_tasks:RecordStates`` with ``--policy``, and the test modules
submit its plain functions.  zq ships functions of modules outside site-packages
by value, so a task body cannot share module state with the worker's copy of
this module: tasks that count things per process (``lc.a_track``) are
submitted by name.  :func:`lc_env` puts the repository root on ``PYTHONPATH`` so
that every node can import ``tests``.

Side effects go to the directory named by ``ZQ_LC_DIR``; state changes to the
file named by ``ZQ_LC_STATES``.  Periodic tasks are defined only when
``ZQ_LC_SCHEDULES`` names them (a comma-separated list), so that a cluster that
imports this module for other reasons does not fire schedules.

Nothing here is a test.  Sleeps inside task bodies are marked ``# sleep-ok``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import threading
import time
from typing import Any, Callable, Optional

import zq

ENV_DIR = "ZQ_LC_DIR"
ENV_STATES = "ZQ_LC_STATES"
ENV_SCHEDULES = "ZQ_LC_SCHEDULES"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# fast failure detection: heartbeat every 0.2 s, a peer is lost after 1.2 s
FAST_ENV = {"ZQ_CLUSTER_HEARTBEAT_INTERVAL": "0.2", "ZQ_CLUSTER_HEARTBEAT_LIVENESS": "6"}
IMPORT_ARGS = ["--import", "tests.lifecycle_tasks"]


# ------------------------------------------------------------------ test helpers

def lc_env(directory: Any, **more: str) -> dict[str, str]:
    """Environment for nodes that import this module and write into ``directory``."""
    path = os.environ.get("PYTHONPATH")
    return {**FAST_ENV, ENV_DIR: str(directory),
            "PYTHONPATH": REPO_ROOT + (os.pathsep + path if path else ""), **more}


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> Any:
    """Poll ``cond`` until it returns something truthy (returned); AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = cond()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or cond} (last: {last!r})")
        time.sleep(interval)  # sleep-ok: a poll interval with a deadline


def next_message(sock: Any, command: bytes, timeout: float = 15.0) -> Any:
    """The next message with that command a raw socket receives (others skipped: heartbeats
    and the like); AssertionError at the deadline."""
    from zq import protocol as P

    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {command.decode()} within {timeout}s")
        if sock.poll(int(left * 1000) + 1):
            msg = P.unpack(sock.recv_multipart())
            if msg.command == command:
                return msg


def stays(cond: Callable[[], Any], duration: float, interval: float = 0.05, what: str = "") -> None:
    """Assert ``cond`` holds at every poll for ``duration`` seconds (a negative check)."""
    end = time.monotonic() + duration
    while True:
        value = cond()
        assert value, f"{what or cond} stopped holding (got {value!r})"
        if time.monotonic() > end:
            return
        time.sleep(interval)  # sleep-ok: a poll interval with a deadline


def wait_registered(client: zq.Client, name: str, timeout: float = 10.0) -> None:
    """Until the ventilator knows task ``name`` (a worker's READY line may come first)."""
    wait_for(lambda: name in client.registry()["tasks"], timeout, what=f"task {name} registered")


def touch(path: Any) -> None:
    with open(path, "a"):
        pass


def wait_file(path: str, timeout: float = 30.0) -> None:
    """In a task: block until ``path`` exists (a gate the test opens)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} never opened")
        time.sleep(0.01)  # sleep-ok


def read_lines(path: Any) -> list[str]:
    try:
        with open(path) as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    except FileNotFoundError:
        return []


def _out(name: str) -> str:
    directory = os.environ.get(ENV_DIR)
    if not directory:
        raise RuntimeError(f"{ENV_DIR} is not set in pid {os.getpid()}")
    return os.path.join(directory, name)


def append_line(path: str, line: str) -> None:
    """Append one line atomically (O_APPEND, one write) - safe across processes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The largest number of [start, end) intervals that contain one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals],
                    key=lambda ev: (ev[0], ev[1]))  # an end before a start at the same instant
    cur = peak = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    return peak


# --------------------------------------------------------------------- policies

class RecordStates(zq.Policy):
    """Ventilator policy: one JSON line ``[task_id, name, old, new]`` per state change."""

    def on_state(self, task: Any, old: Any, new: Any) -> None:
        path = os.environ.get(ENV_STATES)
        if path:
            append_line(path, json.dumps([task.task_id, task.name, str(getattr(old, "value", old)),
                                          str(getattr(new, "value", new))]))


class RecordRunning(zq.Policy):
    """Worker policy: ``running-<task_id>-<attempt>.json`` just before a task runs."""

    def on_running(self, task: Any) -> None:
        with open(_out(f"running-{task.task_id}-{task.attempt}.json"), "w") as f:
            json.dump({"pid": os.getpid(), "thread": threading.current_thread().name,
                       "name": task.name, "queue": task.queue, "attempt": task.attempt}, f)


class ClientRecorder(zq.Policy):
    """Client policy for local execution: hooks seen, in order, in this process."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []

    def on_submit(self, task: Any) -> None:
        self.calls.append(("on_submit", task.task_id, task.attempt))

    def on_running(self, task: Any) -> None:
        self.calls.append(("on_running", task.task_id, task.attempt))

    def on_done(self, result: Any) -> None:
        self.calls.append(("on_done", result.task_id, result.attempts))


# ----------------------------------------------------------------- simple tasks

@zq.task(name="lc.add")
def add(a: Any, b: Any) -> Any:
    return a + b


@zq.task(name="lc.mul")
def mul(a: Any, b: Any) -> Any:
    return a * b


@zq.task(name="lc.greet")
def greet(name: str, punct: str = "!") -> str:
    return f"hello {name}{punct}"


@zq.task(name="lc.greet_ctx")
def greet_ctx(name: str, ctx: zq.TaskContext = None) -> dict:  # type: ignore[assignment]
    return {"greeting": f"hello {name}", "task_id": ctx.task_id if ctx else None}


@zq.task(name="lc.fail")
def fail(msg: str = "boom") -> None:
    raise ValueError(msg)


def stamp(tag: Any = None, seconds: float = 0.0) -> dict:
    start = time.time()
    if seconds:
        time.sleep(seconds)  # sleep-ok
    return {"tag": tag, "start": start, "end": time.time(), "pid": os.getpid()}


@zq.task(name="lc.limited", max_concurrency=2)
def limited(tag: Any, seconds: float) -> dict:
    return stamp(tag, seconds)


@zq.task(name="lc.rated", rate_limit="5/s")
def rated(tag: Any) -> dict:
    return stamp(tag)


def mark(path: str, token: str, gate: Optional[str] = None, result: Any = None) -> Any:
    """Append ``token`` to ``path`` (a run happened), then optionally wait for ``gate``."""
    append_line(path, token)
    if gate:
        wait_file(gate)
    return token if result is None else result


def gated(gate: str, started: Optional[str] = None, value: Any = None) -> Any:
    if started:
        append_line(started, str(os.getpid()))
    wait_file(gate)
    return value


def fail_until(path: str, good_attempt: int, ctx: zq.TaskContext) -> dict:
    """Fails on attempts before ``good_attempt``; records each attempt in ``path``."""
    append_line(path, str(ctx.attempt))
    if ctx.attempt < good_attempt:
        raise RuntimeError(f"attempt {ctx.attempt} fails on purpose")
    return {"attempt": ctx.attempt, "task_id": ctx.task_id}


def fail_first_run(flag: str) -> str:
    """Fails while ``flag`` does not exist (creating it), succeeds afterwards."""
    if not os.path.exists(flag):
        touch(flag)
        raise ValueError("first run fails")
    return "second run"


# ---------------------------------------------------------------- task context

def describe(ctx: zq.TaskContext) -> dict:
    return {"task_id": ctx.task_id, "name": ctx.name, "queue": ctx.queue, "attempt": ctx.attempt,
            "parent_id": ctx.parent_id, "root_id": ctx.root_id,
            "logger": isinstance(ctx.logger, (logging.Logger, logging.LoggerAdapter)),
            "logger_task_id": getattr(ctx.logger, "extra", {}).get("task_id"),
            "current": zq.current_task() is ctx, "pid": os.getpid()}


@zq.task(name="lc.ctx_info")
def ctx_info(ctx: zq.TaskContext, tag: Any = None) -> dict:
    ctx.logger.info("ctx_info running (tag %s)", tag)
    return {**describe(ctx), "tag": tag}


def ctx_first(ctx: zq.TaskContext, a: Any, b: Any) -> dict:
    """The context parameter first, the arguments after it (given positionally)."""
    return {"sum": a + b, "task_id": ctx.task_id}


@zq.task(name="lc.ctx_first")
def ctx_first_named(ctx: zq.TaskContext, day: str, times: int = 1) -> str:
    return f"{day} x{times} ({ctx.name})"


def via_current(tag: Any = None) -> dict:
    """No context parameter: zq.current_task() only."""
    return {**describe(zq.current_task()), "tag": tag}


def outside_task() -> str:
    """zq.current_task() in a plain thread started by a task: no task runs there."""
    box: list[str] = []

    def probe() -> None:
        try:
            zq.current_task()
            box.append("no error")
        except RuntimeError:
            box.append("RuntimeError")

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return box[0]


def spawn_chain(queue: str, depth: int, ctx: zq.TaskContext) -> str:
    """Queue a follow-up (on ``queue``, result retained) that queues the next ... ``depth`` deep.
    Each returns its own description plus the id of the follow-up it queued."""
    return ctx.submit(spawned, depth - 1, queue=queue, retain_result=True)


def spawned(depth: int, ctx: zq.TaskContext) -> dict:
    child = ctx.submit(spawned, depth - 1, retain_result=True) if depth > 0 else None
    return {**describe(ctx), "child": child}


def spawn_then_fail_once(path: str, token: str, ctx: zq.TaskContext) -> str:
    cid = ctx.submit(mark, path, token, retain_result=True)
    if ctx.attempt == 1:
        raise RuntimeError("fails after queueing its follow-up")
    return cid


# -------------------------------------------------------------------- progress

def progress_gated(gate: str, ctx: zq.TaskContext) -> str:
    for k in (1, 2, 3):
        ctx.progress(k, 6, f"step {k}")
        time.sleep(0.05)  # sleep-ok: reports at different times give an ETA
    wait_file(gate)
    ctx.progress(6, 6, "done")
    return "finished"


def progress_then_return(i: int, steps: int = 5, ctx: zq.TaskContext = None) -> int:  # type: ignore[assignment]
    for k in range(steps):
        ctx.progress(k + 1, steps, f"{i}:{k + 1}")
    return i


def progress_then_fail(ctx: zq.TaskContext) -> None:
    ctx.progress(1, 2, "half")
    raise KeyError("after progress")


# ---------------------------------------------------------------- continuations

def hop(n: int, trail: tuple = ()) -> Any:
    """Trampoline: returns a call of itself until n reaches 0."""
    trail = [*trail, n]
    if n <= 0:
        return trail
    return zq.Call(hop, (n - 1, trail))


@zq.task(name="lc.countdown")
def countdown(n: int) -> Any:
    return f"liftoff after {n}" if n <= 0 else countdown.s(n - 1)


def hop_then(n: int, then_value: Any) -> Any:
    """A trampoline whose last hop is a task (via .s)."""
    return add.s(n, then_value)


def slow_link(acc: list, i: int, seconds: float, directory: str) -> list:
    """A chain link: records (link, pid, time) and sleeps, so a worker can be killed mid-link."""
    append_line(os.path.join(directory, "links.log"), json.dumps([i, os.getpid(), time.time()]))
    time.sleep(seconds)  # sleep-ok
    return [*acc, i]


def sleepy_value(v: Any, seconds: float) -> Any:
    time.sleep(seconds)  # sleep-ok
    return v


def pid_of(_: Any = None) -> int:
    return os.getpid()


# ------------------------------------------------------------------ async tasks

_active: collections.Counter = collections.Counter()
_peak: collections.Counter = collections.Counter()
_lock = threading.Lock()


@zq.task(name="lc.a_track")
async def a_track(batch: str, seconds: float) -> dict:
    """Counts how many tasks of ``batch`` run at once in this process (module state)."""
    start = time.time()
    with _lock:
        _active[batch] += 1
        _peak[batch] = max(_peak[batch], _active[batch])
    try:
        await asyncio.sleep(seconds)  # sleep-ok
    finally:
        with _lock:
            _active[batch] -= 1
    return {"start": start, "end": time.time(), "peak": _peak[batch], "pid": os.getpid(),
            "thread": threading.current_thread().name}


async def a_sleep(seconds: float) -> float:
    await asyncio.sleep(seconds)  # sleep-ok
    return seconds


async def a_fail(msg: str) -> None:
    await asyncio.sleep(0)
    raise ValueError(msg)


async def a_ctx(tag: Any, ctx: zq.TaskContext) -> dict:
    ctx.progress(1, 2, "half")
    await asyncio.sleep(0.01)  # sleep-ok
    return {**describe(ctx), "tag": tag}


async def a_then_call(n: int) -> Any:
    await asyncio.sleep(0)
    return zq.Call(hop, (n,))


@zq.task(name="lc.async_double")
async def async_double(x: int) -> int:
    await asyncio.sleep(0.01)  # sleep-ok
    return 2 * x


# --------------------------------------------------------------- local execution

_flaky_calls: collections.Counter = collections.Counter()


def flaky(key: str, fails: int) -> int:
    """Fails ``fails`` times per ``key`` (counted in this process), then returns the call count."""
    _flaky_calls[key] += 1
    if _flaky_calls[key] <= fails:
        raise ConnectionError(f"{key}: call {_flaky_calls[key]} fails")
    return _flaky_calls[key]


def local_info(ctx: zq.TaskContext) -> dict:
    ctx.progress(1, 1, "all")
    return {**describe(ctx), "thread": threading.get_ident()}


# ------------------------------------------------------------ periodic tasks

def _periodic(name: str) -> Any:
    def run(ctx: zq.TaskContext) -> str:
        append_line(_out(f"{name}.log"), json.dumps([ctx.task_id, time.time()]))
        return ctx.task_id

    run.__name__ = run.__qualname__ = name.replace(".", "_")
    return run


_SCHEDULES = {
    # every 0.5 s, three runs: sub-second slots
    "lc.half": dict(every=0.5, max_runs=3),
    # every second, two runs
    "lc.one": dict(every=1.0, max_runs=2),
    # every second, no end (scheduler restart test)
    "lc.tick": dict(every=1.0),
}

for _name in filter(None, (os.environ.get(ENV_SCHEDULES) or "").split(",")):
    zq.task(name=_name, **_SCHEDULES[_name])(_periodic(_name))


# ------------------------------------------------------------------ more tasks

def progress_once_gated(gate: str, ctx: zq.TaskContext) -> str:
    ctx.progress(1, 2, "started")
    wait_file(gate)
    return "released"


@zq.task(name="lc.flaky_once", retries=1)
def flaky_once(path: str, token: str, ctx: zq.TaskContext) -> str:
    """Fails on its first attempt (a task whose defaults say retries=1)."""
    append_line(path, f"{token}:{ctx.attempt}")
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return token


def spawn_flaky(path: str, token: str, ctx: zq.TaskContext) -> str:
    return ctx.submit(flaky_once, path, token, retain_result=True)


def spawn_link(acc: list, token: str, path: str, ctx: zq.TaskContext) -> list:
    """A chain link that queues a follow-up of its own."""
    ctx.submit(mark, path, token, retain_result=True)
    return [*acc, token]


def mark_padded(path: str, token: str, pad: bytes) -> int:
    """``mark`` with a large argument (a task whose journal write takes a while)."""
    append_line(path, token)
    return len(pad)
