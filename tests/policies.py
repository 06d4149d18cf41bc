"""Policy classes and helpers that node processes import as ``tests.policies:Name``.

Worker and sink policies are loaded by ``--policy MOD:NAME`` in child processes
(and, for the process executor, in every executor process).  They cannot be
given arguments, so they find their output directory in the environment
variable ``ZQ_TEST_POLICY_DIR`` (set with ``make_cluster(env=policy_env(dir))``).
Each hook call writes one small JSON file, ``<hook>-<task_id>.json``, holding the
pid of the process that ran it and what the hook saw; tests poll for those
files with a deadline.

Nothing here is a test; the module is shared by the test modules and the nodes.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Optional

import zq

ENV_DIR = "ZQ_TEST_POLICY_DIR"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def policy_env(directory: Any) -> dict[str, str]:
    """Environment for a cluster whose nodes load policies from this module.

    ``PYTHONPATH`` makes ``tests.policies`` importable by the nodes even when
    pytest was started from another directory.
    """
    path = os.environ.get("PYTHONPATH")
    return {ENV_DIR: str(directory),
            "PYTHONPATH": REPO_ROOT + (os.pathsep + path if path else "")}


def _write(hook: str, task_id: str, data: dict) -> None:
    directory = os.environ.get(ENV_DIR)
    if not directory:
        raise RuntimeError(f"{ENV_DIR} is not set in pid {os.getpid()}")
    final = os.path.join(directory, f"{hook}-{task_id}.json")
    tmp = final + f".{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"pid": os.getpid(), **data}, f)
    os.replace(tmp, final)  # readers never see a half-written file


def record_path(directory: Any, hook: str, task_id: str) -> str:
    return os.path.join(str(directory), f"{hook}-{task_id}.json")


def wait_record(directory: Any, hook: str, task_id: str, timeout: float = 10.0) -> dict:
    """The record a hook wrote for ``task_id``; AssertionError if none within ``timeout``."""
    path = record_path(directory, hook, task_id)
    wait_for(lambda: os.path.exists(path), timeout, f"{hook} record for task {task_id}")
    with open(path) as f:
        return json.load(f)


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
             interval: float = 0.01, show: Optional[Callable[[], Any]] = None) -> Any:
    """Poll ``cond`` until it returns a true value (returned); AssertionError after ``timeout``.

    ``show`` (optional) describes the state seen last, for the failure message.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f"; last seen: {show()!r}" if show is not None else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{seen}")
        time.sleep(interval)  # sleep-ok: polling interval of a deadline-bounded wait, not a sync


def wait_file(path: Any, timeout: float = 15.0) -> None:
    """Used inside task bodies: block until ``path`` exists (a gate the test opens)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(str(path)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} was not opened within {timeout:g}s")
        time.sleep(0.01)  # sleep-ok: polling a gate file inside a task body


def touch(path: Any) -> None:
    with open(str(path), "w"):
        pass


def pid_gone(pid: int) -> bool:
    """True once ``pid`` no longer names a live (non-zombie) process."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return line.split()[1] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True
    return False


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


# ---------------------------------------------------------------------- policies


def _task_view(task: Any) -> dict:
    return {"task_id": task.task_id, "name": task.name, "queue": task.queue, "attempt": task.attempt}


class Recorder(zq.Policy):
    """Writes ``running-<id>.json`` (worker) and ``done-<id>.json`` (sink)."""

    def on_running(self, task: Any) -> None:
        _write("running", task.task_id, _task_view(task))

    def on_done(self, result: Any) -> None:
        _write("done", result.task_id, {"task_id": result.task_id, "name": result.name,
                                        "state": str(result.state), "attempts": result.attempts})


class AppendDone(zq.Policy):
    """Appends one line, the task id, to ``done.log`` per ``on_done`` call: counts firings
    (``Recorder``'s one file per task cannot show a hook that fired twice)."""

    def on_done(self, result: Any) -> None:
        directory = os.environ.get(ENV_DIR)
        if not directory:
            raise RuntimeError(f"{ENV_DIR} is not set in pid {os.getpid()}")
        fd = os.open(os.path.join(directory, "done.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{result.task_id}\n".encode())  # one write: a line is never torn
        finally:
            os.close(fd)


def done_log(directory: Any) -> list[str]:
    """The task ids ``AppendDone`` wrote, one per firing."""
    try:
        with open(os.path.join(str(directory), "done.log")) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


class RaisingRunning(zq.Policy):
    """``on_running`` always raises (after recording that it was called)."""

    def on_running(self, task: Any) -> None:
        _write("raised-running", task.task_id, _task_view(task))
        raise RuntimeError(f"policy refuses {task.task_id}")


class RaisingDone(zq.Policy):
    """``on_done`` always raises (after recording that it was called)."""

    def on_done(self, result: Any) -> None:
        _write("raised-done", result.task_id, {"state": str(result.state)})
        raise RuntimeError(f"policy refuses result {result.task_id}")


class RejectSubmit(zq.Policy):
    """Client side: records every task it sees (``seen``, in submit order) and raises
    from ``on_submit`` for tasks whose first argument is ``"reject"``."""

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.rejected: list[str] = []

    def on_submit(self, task: Any) -> None:
        self.seen.append(task)
        if task.args and task.args[0] == "reject":
            self.rejected.append(task.task_id)
            raise PermissionError(f"task {task.task_id} rejected by policy")


# ---------------------------------------------------------- values for pickling tests


def explode_on_load(*args: Any) -> None:
    raise RuntimeError("this value cannot be unpickled")


class UnloadableResult:
    """Pickles fine; unpickling it raises (a result the client cannot load)."""

    def __reduce__(self) -> Any:
        return (explode_on_load, ())


def counted_failure(path: str, fail_times: int) -> int:
    """Increment the counter in ``path``; raise while it is <= ``fail_times``."""
    n = 0
    if os.path.exists(path):
        with open(path) as f:
            n = int(f.read() or 0)
    n += 1
    with open(path, "w") as f:
        f.write(str(n))
    if n <= fail_times:
        raise ValueError(f"attempt {n} fails on purpose")
    return n


class CustomError(Exception):
    """An exception class importable on both sides."""


__all__ = [
    "ENV_DIR", "REPO_ROOT", "policy_env", "record_path", "wait_record", "wait_for", "wait_file",
    "touch", "pid_gone", "rss_kb", "Recorder", "AppendDone", "done_log", "RaisingRunning", "RaisingDone",
    "RejectSubmit",
    "explode_on_load", "UnloadableResult", "counted_failure", "CustomError",
]
