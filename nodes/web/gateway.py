"""The web process's one way to the cluster: blocking ``zq.Client`` calls run in a small
thread pool, off the event loop, each with a timeout; their errors become HTTP errors
that say what was wrong.

    request handler --await call(fn)--> pool thread --zq.Client--> ventilator / sink
                    <-- value, or ApiError(status, message)

The pool is bounded: a cluster that stops answering ties up at most ``threads`` threads
(each for at most the client's own request timeout), never the event loop.  Its threads
are daemons: a call stuck on a silent cluster does not hold up the process's exit
(``concurrent.futures.ThreadPoolExecutor`` joins its threads at exit, and
``zq.Client.shutdown`` does not fail pending admin requests).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from typing import Any, Callable, Optional, TypeVar

import zq

log = logging.getLogger("zq.http")

T = TypeVar("T")


class ApiError(Exception):
    """An HTTP error with a JSON body ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _message(exc: BaseException) -> str:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return text or type(exc).__name__


def as_api_error(exc: BaseException) -> ApiError:
    """Map what a client call raised to an HTTP status (the message is kept)."""
    msg = _message(exc)
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, KeyError):  # includes zq.UnknownTask
        return ApiError(404, msg)
    if isinstance(exc, (TypeError, ValueError)):
        return ApiError(400, msg)
    if isinstance(exc, (TimeoutError, concurrent.futures.TimeoutError)):
        return ApiError(504, msg)
    if isinstance(exc, (zq.NodeUnreachable, zq.ClientClosed)):
        return ApiError(502, msg)
    if isinstance(exc, zq.ZqError):  # the node refused the request, and said why
        if "unknown task" in msg:
            return ApiError(404, msg)
        return ApiError(409, msg)
    log.exception("unexpected error in a client call", exc_info=exc)
    return ApiError(500, f"internal error: {type(exc).__name__}: {msg}")


class DaemonPool:
    """A fixed pool of daemon threads running submitted calls (see the module's note)."""

    def __init__(self, threads: int, name: str) -> None:
        self._jobs: "queue.SimpleQueue[Optional[tuple[concurrent.futures.Future, Callable[[], Any]]]]" = \
            queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fut, fn = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 (handed to the caller)
                fut.set_exception(exc)

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((fut, fn))
        return fut

    def shutdown(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)


class Gateway:
    """Owns the ``zq.Client`` of ``zq http`` and the pool its blocking calls run in."""

    def __init__(self, client: zq.Client, timeout: float = 10.0, threads: int = 8) -> None:
        self.client = client
        self.timeout = timeout
        self.pool = DaemonPool(threads, "zq-http-call")

    async def call(self, fn: Callable[..., T], *args: Any, timeout: float | None = None, **kw: Any) -> T:
        """``fn(*args, **kw)`` in the pool; ApiError for what it raised, 504 after ``timeout``."""
        limit = self.timeout if timeout is None else timeout
        fut = asyncio.wrap_future(self.pool.submit(lambda: fn(*args, **kw)))
        try:
            return await asyncio.wait_for(fut, limit)
        except asyncio.TimeoutError:
            raise ApiError(504, f"the cluster did not answer within {limit:g}s") from None
        except ApiError:
            raise
        except Exception as exc:  # noqa: BLE001 (every error becomes an HTTP answer)
            raise as_api_error(exc) from None

    def close(self) -> None:
        self.pool.shutdown()
