"""The ``@zq.task`` decorator.

A task is a plain callable with per-task defaults (queue, retries, timeout,
retain_result) and a name; ``add(1, 2)`` runs it here, ``add.delay(1, 2)``
submits it to the innermost active client (the innermost ``with zq.Client()``).
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING, Any, Callable, Generic, Optional, TypeVar, overload

if TYPE_CHECKING:  # pragma: no cover
    from .client import Client, TaskFuture

R = TypeVar("R")

_local = threading.local()
_global_stack: list["Client"] = []
_stack_lock = threading.Lock()


def _push_client(client: "Client") -> None:
    with _stack_lock:
        _global_stack.append(client)


def _pop_client(client: "Client") -> None:
    with _stack_lock:
        for i in range(len(_global_stack) - 1, -1, -1):
            if _global_stack[i] is client:
                del _global_stack[i]
                break


def current_client() -> "Client":
    """The innermost active client (``with zq.Client(...)``)."""
    with _stack_lock:
        if not _global_stack:
            raise RuntimeError("no active zq.Client: use `with zq.Client(...):` around .delay()")
        return _global_stack[-1]


class Task(Generic[R]):
    """A function with task defaults.  Calling it runs it locally."""

    _zq_task = True

    def __init__(
        self,
        fn: Callable[..., R],
        name: Optional[str] = None,
        queue: str = "default",
        retries: int = 0,
        timeout: Optional[float] = None,
        retain_result: Optional[bool] = None,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be > 0 seconds")
        self.fn = fn
        self.name = name or f"{fn.__module__}.{fn.__qualname__}"
        self.queue = queue
        self.retries = retries
        self.timeout = float(timeout) if timeout is not None else None
        self.retain_result = retain_result
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        return self.fn(*args, **kwargs)

    def delay(self, *args: Any, **kwargs: Any) -> "TaskFuture":
        """Submit to the current client with this task's defaults."""
        return current_client().submit(self, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<zq.task {self.name} queue={self.queue}>"

    def __reduce__(self) -> Any:
        return (Task, (self.fn, self.name, self.queue, self.retries, self.timeout, self.retain_result))


@overload
def task(fn: Callable[..., R]) -> Task[R]: ...


@overload
def task(
    fn: None = None, *, name: Optional[str] = None, queue: str = "default", retries: int = 0,
    timeout: Optional[float] = None, retain_result: Optional[bool] = None,
) -> Callable[[Callable[..., R]], Task[R]]: ...


def task(
    fn: Optional[Callable[..., R]] = None,
    *,
    name: Optional[str] = None,
    queue: str = "default",
    retries: int = 0,
    timeout: Optional[float] = None,
    retain_result: Optional[bool] = None,
) -> Any:
    """Decorate a function as a zq task (``@zq.task`` or ``@zq.task(queue="io")``)."""

    def wrap(f: Callable[..., R]) -> Task[R]:
        return Task(f, name=name, queue=queue, retries=retries, timeout=timeout,
                    retain_result=retain_result)

    return wrap(fn) if fn is not None else wrap
