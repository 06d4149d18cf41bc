"""The ``@zq.task`` decorator.

A task is a plain callable with per-task defaults (queue, retries, timeout,
retain_result, priority, cluster-wide ``max_concurrency`` and ``rate_limit``)
and a name; ``add(1, 2)`` runs it here, ``add.delay(1, 2)`` submits it to the
innermost active client, ``add.s(1, 2)`` is a ``zq.Call`` for chains and groups.
``every=``/``cron=`` make it periodic: workers that import its module
(``zq worker --import MODULE``) announce it, and the ventilator fires it.

Every decorated task is registered by name in ``registry``, which is how a
worker started with ``--import`` finds the tasks that can be submitted by name.
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import threading
from typing import TYPE_CHECKING, Any, Callable, Generic, Optional, TypeVar, Union, overload

from ._limits import parse_priority, parse_rate
from .canvas import Call

if TYPE_CHECKING:  # pragma: no cover
    from .client import Client, TaskFuture

R = TypeVar("R")

_global_stack: list["Client"] = []
_stack_lock = threading.Lock()

#: name -> Task, every task decorated in this process
registry: dict[str, "Task"] = {}


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


def _seconds(value: Union[None, float, dt.timedelta]) -> Optional[float]:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


def _timestamp(value: Union[None, float, dt.datetime]) -> Optional[float]:
    if value is None:
        return None
    return value.timestamp() if isinstance(value, dt.datetime) else float(value)


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
        priority: Union[str, int, None] = None,
        max_concurrency: Optional[int] = None,
        rate_limit: Optional[str] = None,
        schedule: Optional[dict] = None,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be > 0 seconds")
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if rate_limit is not None:
            parse_rate(rate_limit)  # ValueError now, not on the cluster
        parse_priority(priority)
        self.fn = fn
        self.name = name or f"{fn.__module__}.{fn.__qualname__}"
        self.queue = queue
        self.retries = retries
        self.timeout = float(timeout) if timeout is not None else None
        self.retain_result = retain_result
        self.priority = priority
        self.max_concurrency = max_concurrency
        self.rate_limit = rate_limit
        self.schedule = schedule
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        return self.fn(*args, **kwargs)

    def delay(self, *args: Any, **kwargs: Any) -> "TaskFuture":
        """Submit to the current client with this task's defaults."""
        return current_client().submit(self, *args, **kwargs)

    def s(self, *args: Any, **kwargs: Any) -> Call:
        """This task with arguments, not yet called: for returning, ``chain`` and ``group``."""
        return Call(self, args, kwargs)

    def describe(self) -> dict:
        """What a worker announces about this task (submit by name, schedules)."""
        params = []
        try:
            for p in inspect.signature(self.fn).parameters.values():
                params.append([p.name, int(p.kind), p.default is not inspect.Parameter.empty])
        except (TypeError, ValueError):
            params = None  # no signature: accept anything
        from .runner import context_param

        ctx = context_param(self.fn)
        return {"queue": self.queue, "params": params, "retries": self.retries, "timeout": self.timeout,
                "schedule": self.schedule, "async": inspect.iscoroutinefunction(self.fn),
                "context_params": [ctx] if ctx else [], "max_concurrency": self.max_concurrency,
                "rate_limit": self.rate_limit, "priority": parse_priority(self.priority)}

    def __repr__(self) -> str:
        return f"<zq.task {self.name} queue={self.queue}>"

    def __reduce__(self) -> Any:
        return (Task, (self.fn, self.name, self.queue, self.retries, self.timeout, self.retain_result,
                       self.priority, self.max_concurrency, self.rate_limit, self.schedule))


@overload
def task(fn: Callable[..., R]) -> Task[R]: ...


@overload
def task(fn: None = None, **options: Any) -> Callable[[Callable[..., R]], Task[R]]: ...


def task(
    fn: Optional[Callable[..., R]] = None,
    *,
    name: Optional[str] = None,
    queue: str = "default",
    retries: int = 0,
    timeout: Optional[float] = None,
    retain_result: Optional[bool] = None,
    priority: Union[str, int, None] = None,
    max_concurrency: Optional[int] = None,
    rate_limit: Optional[str] = None,
    every: Union[None, float, dt.timedelta] = None,
    cron: Optional[str] = None,
    tz: Optional[str] = None,
    jitter: Union[None, float, dt.timedelta] = None,
    start: Union[None, float, dt.datetime] = None,
    end: Union[None, float, dt.datetime] = None,
    max_runs: Optional[int] = None,
) -> Any:
    """Decorate a function as a zq task (``@zq.task`` or ``@zq.task(queue="io", ...)``).

    ``every``/``cron`` (with ``tz``, ``jitter``, ``start``, ``end``, ``max_runs``) make it
    periodic; see ``nodes/scheduler.py`` for the exact semantics.
    """
    schedule = None
    if every is not None or cron is not None:
        if every is not None and cron is not None:
            raise ValueError("give every= or cron=, not both")
        schedule = {"every": _seconds(every), "cron": cron, "tz": tz, "jitter": _seconds(jitter),
                    "start": _timestamp(start), "end": _timestamp(end), "max_runs": max_runs}
        if cron is not None:
            from croniter import croniter

            if not croniter.is_valid(cron):
                raise ValueError(f"invalid cron expression {cron!r}")
        elif schedule["every"] is not None and schedule["every"] <= 0:
            raise ValueError("every must be a positive interval")

    def wrap(f: Callable[..., R]) -> Task[R]:
        t = Task(f, name=name, queue=queue, retries=retries, timeout=timeout, retain_result=retain_result,
                 priority=priority, max_concurrency=max_concurrency, rate_limit=rate_limit,
                 schedule=schedule)
        registry[t.name] = t
        return t

    return wrap(fn) if fn is not None else wrap
