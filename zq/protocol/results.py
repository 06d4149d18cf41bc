"""Results on the wire: ``ResultRow`` (fields and value) and batches of them."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from ..envelope import STATE_OF, ErrorInfo, Result
from ..errors import ProtocolError
from ..serialize import ArgFrames, args_blob
from .commands import RESULT
from .rows import ResultFields, _new, check_result_row
from .wire import INLINE_MAX, PROTOCOL, Message, _packb, field

class ResultRow:
    """A result as routed by the sink: its fields and its value frame(s), never unpickled."""

    __slots__ = ("row", "payload")

    def __init__(self, row: Any, payload: Any) -> None:
        #: the fields (a list given here becomes a ``ResultFields``: it is read by name)
        self.row: ResultFields = row if type(row) is ResultFields else _new(ResultFields, row)
        self.payload = payload

    @property
    def task_id(self) -> str:
        return self.row.task_id

    @property
    def state(self) -> str:
        return self.row.state

    @property
    def client(self) -> str:
        return self.row.client

    @property
    def retain(self) -> Optional[bool]:
        return self.row.retain

    @property
    def ttl(self) -> Optional[float]:
        """Seconds to retain this result (None: the sink's --result-ttl)."""
        return self.row.ttl

    def to_result(self) -> Result:
        r = self.row
        return Result(
            task_id=r.task_id, name=r.name, state=STATE_OF[r.state], error=ErrorInfo.from_row(r.error),
            attempts=r.attempts, worker=r.worker, host=r.host, pid=r.pid, queue=r.queue,
            submitted_at=r.submitted_at, started_at=r.started_at, finished_at=r.finished_at,
            run_seconds=r.run_seconds, payload=args_blob(self.payload), lost=tuple(r.lost),
        )


#: the old name (``check_result_row``)
_check_result_row = check_result_row


def pack_results(results: Sequence[ResultRow]) -> list:
    values = [r.payload for r in results]
    if all(type(v) is not ArgFrames and len(v) <= INLINE_MAX for v in values):
        return [PROTOCOL, RESULT, _packb({"r": [r.row for r in results],
                                          "v": [v if type(v) is bytes else bytes(v) for v in values]})]
    if any(type(v) is ArgFrames for v in values):  # out-of-band values: several frames each
        counts = [len(v) if type(v) is ArgFrames else 1 for v in values]
        frames = [f for v in values for f in (v if type(v) is ArgFrames else (v,))]
        return [PROTOCOL, RESULT, _packb({"r": [r.row for r in results], "n": counts}), *frames]
    return [PROTOCOL, RESULT, _packb({"r": [r.row for r in results]}), *values]


def unpack_results(msg: Message) -> list[ResultRow]:
    rows = field(msg.header, "r", list, msg.command)
    inline = msg.header.get("v")
    if inline is not None:
        if not (isinstance(inline, list) and len(inline) == len(rows) and not msg.payload
                and all(type(v) is bytes for v in inline)):
            raise ProtocolError("RESULT: v must list one value per row and come without value frames")
        return [ResultRow(_check_result_row(row), v) for row, v in zip(rows, inline)]
    counts = msg.header.get("n")
    if counts is not None:
        if not (isinstance(counts, list) and len(counts) == len(rows) and all(
                type(c) is int and 1 <= c <= 1024 for c in counts) and sum(counts) == len(msg.payload)):
            raise ProtocolError("RESULT: n must list 1..1024 value frames per row, as many as sent")
        out, i = [], 0
        for row, c in zip(rows, counts):
            value = msg.payload[i] if c == 1 else ArgFrames(msg.payload[i:i + c])
            out.append(ResultRow(_check_result_row(row), value))
            i += c
        return out
    if len(rows) != len(msg.payload):
        raise ProtocolError(f"RESULT: {len(rows)} row(s) but {len(msg.payload)} value frame(s)")
    return [ResultRow(_check_result_row(row), p) for row, p in zip(rows, msg.payload)]


