"""``TaskFuture`` and turning a result envelope into a value or a typed exception."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import threading
from typing import TYPE_CHECKING, Any, Generator, Optional

from .envelope import Result, TaskState
from .errors import SerializationError, TaskFailed, WorkerLost, ZqError
from .serialize import loads_value

if TYPE_CHECKING:  # pragma: no cover
    from .client import Client


class RemoteTraceback(Exception):
    """Carries the remote traceback text as ``__cause__`` of a TaskFailed."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class TaskFuture(concurrent.futures.Future):
    """A ``concurrent.futures.Future`` for a zq task; awaitable in asyncio.

    ``progress`` is the latest ``zq.Progress`` the task reported (or None)."""

    def __init__(self, task_id: str, client: Optional["Client"] = None) -> None:
        super().__init__()
        self.task_id = task_id
        self._envelope: Optional[Result] = None
        self._row: Any = None  # the result's wire row: the envelope is built on first access
        self.progress: Any = None
        self._progress_first: Optional[tuple[float, float]] = None
        self._client = client

    @property
    def envelope(self) -> Optional[Result]:
        """The task's ``zq.Result`` once it finished (None before)."""
        if self._envelope is None and self._row is not None:
            self._envelope = self._row.to_result()
        return self._envelope

    @envelope.setter
    def envelope(self, value: Optional[Result]) -> None:
        self._envelope = value

    def cancel(self) -> bool:
        """Cancel this future at once, as ``concurrent.futures`` does, and ask the cluster
        (without waiting) to drop the task, or stop it if it runs in a process executor.

        True if the future was not done (it is now cancelled, whatever the task does: a
        task already running in a thread runs to its end, but its result is not delivered
        here); False if it had finished.  Never blocks: safe in a done-callback and on an
        asyncio event loop.  ``Client.cancel(task_id)`` asks and says whether the task will
        not run."""
        if self.cancelled():
            return True
        if not self._cancel_local():
            return False
        if self._client is not None:
            self._client._cancel_later([self])
        return True

    def _cancel_local(self) -> bool:
        """Cancel here (no network) and notify waiters; safe to race with another thread."""
        if self.cancelled():
            return True
        if not super().cancel():
            return False
        try:
            self.set_running_or_notify_cancel()
        except RuntimeError:  # another thread notified already
            pass
        return True

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self).__await__()

    def __repr__(self) -> str:
        return f"<TaskFuture {self.task_id} {self._state}>"


_combined: dict[type, type] = {}


def _remote_class(module: str, name: str) -> Optional[type]:
    """The exception class if already imported on this side (never imports anything)."""
    mod = sys.modules.get(module) if module else None
    if mod is None and module in ("builtins", ""):
        mod = sys.modules["builtins"]
    if mod is None:
        return None
    obj: Any = mod
    for part in name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    if isinstance(obj, type) and issubclass(obj, Exception) and not issubclass(obj, ZqError):
        return obj
    return None


def make_exception(result: Result) -> BaseException:
    """The exception a failed result raises from ``Future.result()``."""
    err = result.error
    if err is None:
        return TaskFailed("Unknown", f"task {result.task_id} failed without an error", "", "", result.task_id)
    exc: BaseException
    if err.type == "WorkerLost":
        exc = WorkerLost(err.message)
    elif err.type == "SerializationError" and err.module.startswith("zq"):
        exc = SerializationError(err.message)
    else:
        cls = _remote_class(err.module, err.type)
        exc = TaskFailed(err.type, err.message, err.traceback, err.module, result.task_id)
        if cls is not None:
            combo = _combined.get(cls)
            if combo is None:
                try:
                    combo = type(f"TaskFailed[{cls.__name__}]", (TaskFailed, cls), {
                        "__init__": TaskFailed.__init__, "__str__": TaskFailed.__str__,
                        "__module__": "zq.errors"})
                except TypeError:  # incompatible layout (e.g. OSError): plain TaskFailed
                    combo = TaskFailed
                _combined[cls] = combo
            if combo is not TaskFailed:
                exc = combo(err.type, err.message, err.traceback, err.module, result.task_id)
    if err.traceback:
        exc.__cause__ = RemoteTraceback(err.traceback)
    setattr(exc, "envelope", result)
    return exc


def settle_row(fut: TaskFuture, row: Any) -> None:
    """Complete ``fut`` from a result's wire row (a ``protocol.ResultRow``): a success is
    set from the pickled value alone; the envelope is built only if someone asks."""
    if fut.done():
        return
    if row.row.state != "SUCCESS":
        settle(fut, row.to_result())
        return
    fut._row = row
    try:
        value = loads_value(row.payload, f"result of task {fut.task_id}")
    except SerializationError as exc:
        fut.set_exception(exc)
        return
    try:
        fut.set_result(value)
    except concurrent.futures.InvalidStateError:  # raced with a local cancel
        pass


def settle(fut: TaskFuture, result: Result) -> None:
    """Complete ``fut`` from its envelope (no-op if already done, e.g. cancelled)."""
    if fut.done():
        return
    fut.envelope = result
    try:
        if result.state is TaskState.SUCCESS:
            try:
                value = result.value
            except SerializationError as exc:
                fut.set_exception(exc)
                return
            fut.set_result(value)
        elif result.state is TaskState.CANCELED:
            fut._cancel_local()
        else:
            fut.set_exception(make_exception(result))
    except concurrent.futures.InvalidStateError:  # raced with a local cancel
        pass


class GroupFuture(concurrent.futures.Future):
    """The results of a ``zq.group``'s calls, in order.  Fails as soon as one member fails
    (the others are not waited for), so a group never hangs on a failed member."""

    def __init__(self, members: list[TaskFuture]) -> None:
        super().__init__()
        self.members = members
        self._left = len(members)
        self._lock = threading.Lock()
        if not members:
            self.set_result([])
        for m in members:
            m.add_done_callback(self._member_done)

    def _member_done(self, m: concurrent.futures.Future) -> None:
        with self._lock:
            if self.done():
                return
            try:
                if m.cancelled():
                    self.set_exception(concurrent.futures.CancelledError(
                        f"group member {getattr(m, 'task_id', '')} was cancelled"))
                    return
                exc = m.exception()
                if exc is not None:
                    self.set_exception(exc)
                    return
                self._left -= 1
                if self._left == 0:
                    self.set_result([f.result() for f in self.members])
            except concurrent.futures.InvalidStateError:  # the group was cancelled meanwhile
                pass

    def cancel(self) -> bool:
        """Cancel the group and its unfinished members (without waiting for the cluster);
        False if the group had finished (a failed member finishes it: the members still
        running are cancelled all the same)."""
        ok = super().cancel()  # before the members: their callbacks must not finish the group
        if ok:
            try:
                self.set_running_or_notify_cancel()
            except RuntimeError:
                pass
        for m in self.members:
            m.cancel()
        return ok

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self).__await__()
