"""Calls, chains and groups: tasks plus arguments, composed.

* ``add.s(1, 2)`` (or ``zq.Call(fn, args, kwargs)``) is a call not yet made.  A task
  that *returns* a Call continues as that call (a trampoline): the call runs as a
  new attempt of the same task id, and its result becomes the original future's
  result.
* ``zq.chain(a.s(1), b.s(), c.s())`` runs ``a(1)``, then ``b(result)``, then
  ``c(result)``, each on whatever worker is free; a worker lost half-way only
  re-runs the current link.  The future resolves to the last result.
* ``zq.group(a.s(1), b.s(2))`` runs calls in parallel; its future resolves to the
  list of their results in order, or fails as soon as one fails (it never hangs
  waiting for a member that failed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from .serialize import function_name, pack_args, pickle_function

if TYPE_CHECKING:  # pragma: no cover
    from .futures import TaskFuture


class Call:
    """``fn(*args, **kwargs)`` to be run as a task (``queue`` defaults to the task's)."""

    def __init__(self, fn: Callable, args: Sequence[Any] = (), kwargs: Optional[dict] = None,
                 queue: Optional[str] = None) -> None:
        self.fn = fn
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.queue = queue if queue is not None else getattr(fn, "queue", None)

    @property
    def name(self) -> str:
        return getattr(self.fn, "name", None) or function_name(self.fn)

    def link(self, prepend: tuple = ()) -> list:
        """This call as a chain link: ``[name, digest, fn bytes, arg bytes, queue]``."""
        digest, data = pickle_function(self.fn)
        return [self.name, digest, data, pack_args(prepend + self.args, self.kwargs), self.queue]

    def delay(self) -> "TaskFuture":
        from .task import current_client

        return current_client().submit_call(self)

    def __repr__(self) -> str:
        return f"<zq.Call {self.name}{self.args!r}>"


class Chain:
    """Calls run one after another, each result passed to the next as first argument."""

    def __init__(self, calls: Sequence[Call]) -> None:
        if not calls:
            raise ValueError("a chain needs at least one call")
        self.calls = list(calls)

    def delay(self) -> "TaskFuture":
        from .task import current_client

        return current_client().submit_call(self)

    def __repr__(self) -> str:
        return f"<zq.chain {' | '.join(c.name for c in self.calls)}>"


class Group:
    """Calls run in parallel; results gathered in order."""

    def __init__(self, calls: Sequence[Any]) -> None:
        self.calls = list(calls)

    def delay(self) -> Any:
        from .task import current_client

        return current_client().submit_group(self)


def chain(*calls: Call) -> Chain:
    return Chain(calls)


def group(*calls: Any) -> Group:
    return Group(calls)
