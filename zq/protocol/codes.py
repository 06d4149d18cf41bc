"""Every ``ERROR``/``REJECT`` code, and the one-line messages nodes send with them."""

from __future__ import annotations

from typing import Iterable

from .commands import ERROR, REJECT
from .wire import pack

#: your message was refused (undecodable, unknown command, malformed header or row)
ERR_PROTOCOL = "protocol"
#: (V -> C) the results of ``ids`` cannot reach ``node`` at ``endpoint`` from the sender,
#: silent for ``down_for`` seconds (the client fails them past its unreachable_timeout)
ERR_UNREACHABLE = "unreachable"
#: (S -> C, answer to WATCH) the result of ``ids`` was recorded and not retained
ERR_GONE = "gone"
#: (V -> C, REJECT) the ventilator does not hold the function of ``ids``: send it again
ERR_UNKNOWN_FUNCTION = "unknown-function"

ERROR_CODES: dict[str, str] = {
    ERR_PROTOCOL: "ERROR: the message was refused",
    ERR_UNREACHABLE: "ERROR: results cannot reach a node from the sender",
    ERR_GONE: "ERROR: a watched result is no longer kept",
    ERR_UNKNOWN_FUNCTION: "REJECT: the receiver lacks the task's function",
}

#: the old name (nodes and the client compare codes with it)
UNREACHABLE = ERR_UNREACHABLE


def error_message(code: str, msg: str) -> list:
    return pack(ERROR, {"code": code, "msg": msg})


def protocol_error(exc: Exception) -> list:
    """The answer to a message that could not be read (``str(exc)`` says why)."""
    return pack(ERROR, {"code": ERR_PROTOCOL, "msg": str(exc)})


def unreachable_message(ids: list[str], node: str, endpoint: str, down_for: float, msg: str) -> list:
    return pack(ERROR, {"code": ERR_UNREACHABLE, "ids": ids, "node": node, "endpoint": endpoint,
                        "down_for": down_for, "msg": msg})


def gone_message(task_id: str) -> list:
    return pack(ERROR, {"code": ERR_GONE, "ids": [task_id],
                        "msg": f"the result of {task_id} was not retained"})


def unknown_function_message(ids: Iterable[str]) -> list:
    return pack(REJECT, {"ids": list(ids), "code": ERR_UNKNOWN_FUNCTION,
                         "msg": "the ventilator does not hold this function (it restarted?): send it again"})
