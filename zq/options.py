"""Per-task options as they travel (``TaskSpec.opts``), and checks made at submit time."""

from __future__ import annotations

import datetime as dt
import inspect
import itertools
import json
import reprlib
import time
from typing import Any, Callable, Optional

from ._limits import parse_priority
from .protocol.tasks import ARGS_REPR_MAX
from .runner import is_async


def _by_name_placeholder(*args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never called
    """Stands for a task submitted by name; workers run the task they registered."""
    raise RuntimeError("a task submitted by name runs on a worker that imported it")


def task_options(t: Any, fn: Callable, priority: Any, key: Optional[str], delay: Optional[float],
                 eta: "float | dt.datetime | None", result_ttl: Optional[float],
                 backoff: Optional[float], backoff_max: Optional[float],
                 fn_is_async: Optional[bool] = None) -> Optional[dict]:
    """The ``opts`` map of a task from submit_task's arguments and the task's defaults
    (``fn_is_async``: ``is_async(fn)`` if the caller knows it already)."""
    opts: dict[str, Any] = {}
    prio = parse_priority(priority if priority is not None else (t.priority if t else None))
    if prio:
        opts["prio"] = prio
    if key is not None:
        if not isinstance(key, str) or not key:
            raise ValueError("key must be a non-empty string")
        opts["key"] = key
    if delay is not None and eta is not None:
        raise ValueError("give delay= or eta=, not both")
    if delay is not None:
        if delay < 0:
            raise ValueError("delay must be >= 0 seconds")
        opts["eta"] = time.time() + float(delay)
    elif eta is not None:
        opts["eta"] = eta.timestamp() if isinstance(eta, dt.datetime) else float(eta)
    if result_ttl is not None:
        if result_ttl <= 0:
            raise ValueError("result_ttl must be > 0 seconds")
        opts["ttl"] = float(result_ttl)
    if backoff is not None or backoff_max is not None:
        if (backoff or 0) < 0 or (backoff_max or 0) < 0:
            raise ValueError("retry_backoff and retry_backoff_max must be >= 0 seconds")
        if backoff is not None:
            opts["backoff"] = float(backoff)
        if backoff_max is not None:
            opts["backoff_max"] = float(backoff_max)
    if t is not None:
        if t.max_concurrency:
            opts["limit"] = t.max_concurrency
        if t.rate_limit:
            opts["rate"] = t.rate_limit
    if is_async(fn) if fn_is_async is None else fn_is_async:
        opts["async"] = True
    return opts or None


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 120, 120
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = 20


_PLAIN = frozenset({int, float, bool, type(None)})


def _short(value: Any, level: int = 0) -> str:
    """``reprlib``'s short repr, made faster for builtin values (this runs at every submit:
    reprlib, pure Python and general, costs ~15 µs for a small tuple, this ~2 µs)."""
    t = type(value)
    if t in _PLAIN or (t is str or t is bytes) and len(value) <= 120:
        return repr(value)
    if t is list or t is tuple:
        if level >= _REPR.maxlevel:
            return "[...]" if t is list else "(...)"
        inner = ", ".join([_short(x, level + 1) for x in value[:20]]) + (", ..." if len(value) > 20 else "")
        return f"[{inner}]" if t is list else f"({inner},)" if len(value) == 1 else f"({inner})"
    if t is dict:
        if level >= _REPR.maxlevel:
            return "{...}"
        inner = ", ".join([f"{_short(k, level + 1)}: {_short(x, level + 1)}"
                           for k, x in itertools.islice(value.items(), 20)])
        return "{" + inner + (", ..." if len(value) > 20 else "") + "}"
    return _REPR.repr1(value, _REPR.maxlevel - level)  # long strings, sets, other objects


def args_repr(args: "tuple | list", kwargs: dict) -> str:
    """A call's arguments as text, ``1, 'x', key=[1, 2, ...]``: each value's repr cut short
    (``reprlib``: long strings and containers elided), the whole cut to ``ARGS_REPR_MAX``.
    Made by the client at submit (the ventilator never unpickles arguments); never raises."""
    try:
        parts = [_short(a) for a in itertools.islice(args, 50)]
        if kwargs:
            parts += [f"{k}={_short(v)}" for k, v in itertools.islice(kwargs.items(), 50)]
        if len(args) + len(kwargs) > len(parts):
            parts.append("...")
        text = ", ".join(parts)
    except Exception as exc:  # noqa: BLE001 (reprlib catches __repr__; a broken __len__ etc. lands here)
        text = f"<arguments that cannot be shown: {type(exc).__name__}>"
    return text if len(text) <= ARGS_REPR_MAX else text[:ARGS_REPR_MAX - 1] + "…"


RETRY_BACKOFF = 0.1
RETRY_BACKOFF_MAX = 30.0


def retry_delay(opts: Optional[dict], retries_used: int) -> float:
    """Seconds before rerun ``retries_used + 1``: ``backoff * 2**k`` capped at ``backoff_max``."""
    opts = opts or {}
    base = float(opts.get("backoff", RETRY_BACKOFF))
    cap = float(opts.get("backoff_max", RETRY_BACKOFF_MAX))
    return min(cap, base * (2 ** min(retries_used, 60)))


def check_params(name: str, info: dict, params: "dict | list | tuple | None") -> tuple[tuple, dict]:
    """(args, kwargs) from JSON-able ``params``, checked against the registered signature."""
    if params is None:
        args, kwargs = (), {}
    elif isinstance(params, dict):
        args, kwargs = (), dict(params)
    elif isinstance(params, (list, tuple)):
        args, kwargs = tuple(params), {}
    else:
        raise TypeError(f"{name}: params must be a dict (keywords) or a list (positional), "
                        f"not {type(params).__name__}")
    try:
        json.dumps([args, kwargs])
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: params must be JSON-able: {exc}") from None
    spec = info.get("params")
    if spec is not None:
        sig = inspect.Signature([inspect.Parameter(p, inspect._ParameterKind(kind),
                                                   default=None if has_default else inspect.Parameter.empty)
                                 for p, kind, has_default in spec if not _is_context(p, info)])
        try:
            sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{name}{sig}: {exc}") from None
    return args, kwargs


def _is_context(param: str, info: dict) -> bool:
    return param in (info.get("context_params") or ())
