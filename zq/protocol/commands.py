"""Every command of the protocol, with who sends it to whom and what its header holds.

``COMMAND_TABLE`` is the one table (the package docstring prints the same); ``COMMANDS``
the set a receiver accepts.  Nodes C client, V ventilator, W worker, S sink.
"""

from __future__ import annotations

from typing import NamedTuple

PROTOCOL = b"ZQ02"


class Command(NamedTuple):
    name: bytes
    direction: str   # sender -> receiver(s)
    header: str      # what the header (and payload) holds


SUBMIT = b"SUBMIT"
REJECT = b"REJECT"
REQUEST = b"REQUEST"
REPLY = b"REPLY"
READY = b"READY"
TASKS = b"TASKS"
STARTED = b"STARTED"
DONE = b"DONE"
RETRY = b"RETRY"
CANCEL = b"CANCEL"
BYE = b"BYE"
UNKNOWN = b"UNKNOWN"
RESULT = b"RESULT"
ACK = b"ACK"
HELLO = b"HELLO"
HEARTBEAT = b"HEARTBEAT"
ERROR = b"ERROR"
PROGRESS = b"PROGRESS"
SPAWN = b"SPAWN"
CONTINUE = b"CONTINUE"
WATCH = b"WATCH"
SYNC = b"SYNC"
HELD = b"HELD"
RECLAIM = b"RECLAIM"
RETURN = b"RETURN"

COMMAND_TABLE: dict[bytes, Command] = {c.name: c for c in (
    Command(SUBMIT, "C -> V", '{"t": [TaskRow], "f": [digests], "req"?, "n"?, "a"?}; fn frames, arg frames'),
    Command(REJECT, "V -> C", '{"ids", "code": ERR_UNKNOWN_FUNCTION, "msg"}'),
    Command(REQUEST, "C -> V/S", '{"req": int, "op": str, ...}'),
    Command(REPLY, "V/S -> C, V -> W", '{"req", "ok", "data"|"error"}'),
    Command(READY, "W -> V", '{"id", "queues", "credit", "host", "pid", "executor", "concurrency", '
                             '"tasks", "done"?, "states"?}'),
    Command(TASKS, "V -> W", "like SUBMIT; rows carry attempt and lost causes"),
    Command(SYNC, "V -> W", '{"upto": int}'),
    Command(HELD, "W -> V", '{"upto", "held", "done", "states"}'),
    Command(STARTED, "W -> V", '{"ids", "busy"?: int (slots running a task; "ids" may be empty)}'),
    Command(DONE, "W -> V", '{"ids", "states", "credit": int, "errors"?: {id: [type, message, traceback]}, '
                           '"started"?: {id: time}}'),
    Command(RETRY, "W -> V", '{"id", "delay", "lost"?}'),
    Command(CANCEL, "V -> W", '{"ids", "unstarted"?}'),
    Command(RECLAIM, "V -> W", '{"ids"?, "queues"?, "names"?, "n"?}'),
    Command(RETURN, "W -> V", '{"ids"}'),
    Command(BYE, "W -> V", '{"ids", "final"?}'),
    Command(UNKNOWN, "V -> W", '{"instance"}'),
    Command(RESULT, "W/V -> S, S -> C", '{"r": [ResultFields], "v"?: [bytes], "n"?}; value frames'),
    Command(ACK, "S -> W/V, C -> S", '{"ids"}'),
    Command(HELLO, "C -> S", '{"client"}'),
    Command(HEARTBEAT, "any -> any", '{"id", "instance", "max"}'),
    Command(ERROR, "any -> any", '{"code": ERROR_CODES, "msg", ...}'),
    Command(PROGRESS, "W -> V -> C", '{"p": [ProgressRow]}'),
    Command(SPAWN, "W -> V", "like SUBMIT: follow-up tasks queued by a running task"),
    Command(CONTINUE, "W -> V", '{"id", "name", "digest", "queue", "then": [ChainLink]}; fn frame, arg frame'),
    Command(WATCH, "C -> S", '{"ids"}'),
)}

COMMANDS = frozenset(COMMAND_TABLE)
