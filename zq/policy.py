"""Policies: hooks around a task's life, each a no-op unless overridden.

``on_submit`` runs in the client before a task is sent (an exception propagates
to the caller and nothing is sent), ``on_running`` on the worker inside the
executor thread or process just before the function, ``on_done`` in the sink
when the result arrives.  Nodes run hooks through :func:`run_hooks`, which logs
a failing hook with the task id and carries on with the others.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Iterable, Sequence

from .errors import ConfigError

log = logging.getLogger("zq.policy")


class Policy:
    """Base class: every hook is a no-op."""

    def on_submit(self, task: Any) -> None:
        """Client process, before the task is sent."""

    def on_running(self, task: Any) -> None:
        """Worker, in the executor thread/process, just before the function runs."""

    def on_done(self, result: Any) -> None:
        """Sink process, when the result arrives."""

    def on_state(self, task: Any, old: Any, new: Any) -> None:
        """Ventilator process (``zq ventilator --policy``), on every state change of a task:
        ``old`` and ``new`` are ``zq.TaskState`` values (see ``zq.envelope.TRANSITIONS``)."""


class LoggingPolicy(Policy):
    """Logs every hook at INFO on the ``zq.policy`` logger."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or log

    def on_submit(self, task: Any) -> None:
        self.log.info("submit %s %s queue=%s", task.task_id, task.name, task.queue)

    def on_running(self, task: Any) -> None:
        self.log.info("running %s %s attempt=%s", task.task_id, task.name, task.attempt)

    def on_done(self, result: Any) -> None:
        self.log.info(
            "done %s %s state=%s run_time=%.6fs attempts=%s",
            result.task_id, result.name, result.state, result.run_time, result.attempts,
        )

    def on_state(self, task: Any, old: Any, new: Any) -> None:
        self.log.info("state %s %s %s -> %s", task.task_id, task.name, old, new)


def run_hooks(policies: Sequence[Policy], hook: str, obj: Any, task_id: str, *more: Any) -> int:
    """Call ``hook`` on every policy; log and count failures, never raise."""
    failures = 0
    for p in policies:
        try:
            getattr(p, hook)(obj, *more)
        except Exception:
            failures += 1
            log.exception("policy %s.%s failed for task %s", type(p).__name__, hook, task_id)
    return failures


def load_policy(spec: str) -> Policy:
    """Instantiate ``MOD:NAME`` (an importable class taking no arguments)."""
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise ConfigError(f"policy {spec!r} must look like MODULE:NAME")
    try:
        obj: Any = importlib.import_module(mod_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"policy {spec!r} cannot be loaded: {exc}") from exc
    try:
        inst = obj() if isinstance(obj, type) else obj
    except Exception as exc:
        raise ConfigError(f"policy {spec!r} could not be instantiated: {exc}") from exc
    return inst


def load_policies(specs: Iterable[str]) -> list[Policy]:
    return [load_policy(s) for s in specs]
