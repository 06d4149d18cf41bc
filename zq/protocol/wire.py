"""Frames of one message: ``[PROTOCOL, COMMAND, HEADER, *PAYLOAD]``, and header fields."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import msgpack

from ..errors import ProtocolError
from ..serialize import args_size
from .commands import COMMANDS, PROTOCOL

#: The function "digest" of a task submitted by name: workers look the name up in
#: the tasks they imported (``zq worker --import MODULE``).
BY_NAME = bytes(16)

#: Default maximum size of one message on every bound socket (libzmq MAXMSGSIZE).
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024
#: Seconds between a client's renewals of its WATCHes (the sink forgets one not renewed
#: for its ``watch_ttl``, default 600 s: a watch of an id that never finishes cannot pile up)
WATCH_RENEW = 60.0
#: Arguments and values this small travel in the header of a batch (see the docstring).
INLINE_MAX = 1024

_packb = msgpack.Packer(use_bin_type=True).pack


def _unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)


@dataclass(frozen=True)
class Message:
    command: bytes
    header: dict
    payload: list  # list of bytes-like frames


def pack(command: bytes, header: Optional[dict] = None, payload: Sequence[Any] = ()) -> list:
    """Frames for one message (without any ROUTER identity)."""
    return [PROTOCOL, command, _packb(header or {}), *payload]


def unpack(frames: Sequence[Any]) -> Message:
    """Parse frames (without identity) into a :class:`Message` or raise ProtocolError."""
    if len(frames) < 3:
        raise ProtocolError(f"message has {len(frames)} frame(s), needs at least 3")
    version = bytes(frames[0])
    if version != PROTOCOL:
        raise ProtocolError(f"unsupported protocol version {version[:16]!r}, expected {PROTOCOL!r}")
    command = bytes(frames[1])
    if command not in COMMANDS:
        raise ProtocolError(f"unknown command {command[:32]!r}")
    try:
        header = _unpackb(bytes(frames[2]))
    except Exception as exc:
        raise ProtocolError(f"undecodable {command.decode()} header: {exc}") from exc
    if not isinstance(header, dict):
        raise ProtocolError(f"{command.decode()} header is not a map")
    return Message(command, header, list(frames[3:]))


def field(header: dict, key: str, kind: type | tuple, command: bytes = b"") -> Any:
    """``header[key]``, checked to be of ``kind``; ProtocolError otherwise."""
    try:
        value = header[key]
    except KeyError:
        raise ProtocolError(f"{command.decode() or 'message'} header lacks {key!r}") from None
    if not isinstance(value, kind):
        raise ProtocolError(f"{command.decode() or 'message'} header field {key!r} has wrong type")
    return value


def str_list(header: dict, key: str, command: bytes = b"") -> list[str]:
    value = field(header, key, list, command)
    if not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"{command.decode()} header field {key!r} must hold strings")
    return value


def batch_limit(max_message: int) -> int:
    """Bytes of payload one batched message may carry: well under the peers' maximum."""
    return max(1024, min(8 * 1024 * 1024, max_message // 2))


def take_batch(items: Any, max_bytes: int, max_count: int = 5000, size: Any = None) -> int:
    """How many of ``items`` (a sequence or deque, from the left) fit in one message.

    ``size(item)`` is an item's payload size in bytes (default ``len(item.payload)``).
    Always at least one, so a single large item still travels (its size was
    checked against the maximum when it was created).
    """
    total = 0
    n = 0
    limit = min(len(items), max_count)
    while n < limit:
        item = items[n]
        total += size(item) if size else args_size(item.payload)
        if n and total > max_bytes:
            break
        n += 1
    return n


def new_instance_id() -> str:
    return os.urandom(6).hex()

