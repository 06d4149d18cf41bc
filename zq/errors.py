"""The zq exception hierarchy: one root, ``ZqError``.

Errors raised on a remote node cross the wire as data (type, module, message,
traceback text) and come back as :class:`TaskFailed` on the client.
"""

from __future__ import annotations

from typing import Any


class ZqError(Exception):
    """Root of every error zq raises."""


class ConfigError(ZqError):
    """A configuration value is missing or invalid; the message names the key."""


class ProtocolError(ZqError):
    """A message did not follow the wire protocol (bad version, command, frames)."""

    def __init__(self, message: str, raw: Any = None) -> None:
        super().__init__(message)
        self.raw = raw


class SerializationError(ZqError):
    """A function, argument or result could not be pickled or unpickled."""


class TaskFailed(ZqError):
    """The task raised on its worker.

    ``remote_type`` is the exception's class name (``"ValueError"``),
    ``remote_message`` its ``str()``, ``remote_traceback`` the remote traceback text.
    """

    remote_type: str
    remote_message: str
    remote_traceback: str
    remote_module: str

    def __init__(
        self,
        remote_type: str = "",
        remote_message: str = "",
        remote_traceback: str = "",
        remote_module: str = "",
        task_id: str = "",
    ) -> None:
        super().__init__(f"{remote_type}: {remote_message}" if remote_type else remote_message)
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        self.remote_module = remote_module
        self.task_id = task_id

    def __str__(self) -> str:
        return f"{self.remote_type}: {self.remote_message}" if self.remote_type else self.remote_message


class WorkerLost(ZqError):
    """The task's worker died (or was cut off) on every attempt it was given."""


class UnknownTask(ZqError, KeyError):
    """``submit_by_name`` of a name no worker registered."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class NodeUnreachable(ZqError):
    """A ventilator or sink stayed unreachable past the client's deadline."""


class ClientClosed(ZqError, RuntimeError):
    """The client was shut down; no more tasks can be submitted."""


class BindError(ZqError):
    """A node could not bind one of its endpoints."""


class InsecureBindError(BindError):
    """A node was asked to bind a non-loopback address without keys."""


__all__ = [
    "ZqError",
    "ConfigError",
    "ProtocolError",
    "SerializationError",
    "TaskFailed",
    "WorkerLost",
    "NodeUnreachable",
    "UnknownTask",
    "ClientClosed",
    "BindError",
    "InsecureBindError",
]
