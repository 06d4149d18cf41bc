"""What a worker owes the ventilator about its finished tasks (``Worker.done``).

A finished task's result goes to the sink first; only once the sink has ACKed it
(``acked``) may the ventilator close the task, with a DONE that lists it (``ids`` /
``states``, plus ``errors``: a failure's type, message and traceback for the ventilator's
history, and ``started``: when a task started that waited in its slot behind the first of a
batch, whose STARTED was never sent).  Until then the task is ``awaiting``: a worker lost meanwhile has it re-run, not
lost.  READY and HELD carry the same lists when a DONE could not be sent.
"""

from __future__ import annotations

import collections
from typing import Optional

from zq import protocol as P
from zq.envelope import ErrorInfo, TaskState


class DoneBook:
    def __init__(self) -> None:
        self.awaiting: dict[str, str] = {}  # task id -> final state, result not ACKed by the sink
        self.ids: list[str] = []  # ACKed by the sink, DONE not sent yet
        self.states: list[str] = []
        self.errors: dict[str, list[str]] = {}  # task id -> [type, message, traceback]
        self.started: dict[str, float] = {}  # task id -> wall time it started (STARTED not sent)
        self.by_state: collections.Counter[str] = collections.Counter()  # finished here (metrics)

    def finished(self, task_id: str, state: TaskState, error: Optional[ErrorInfo],
                 started_at: Optional[float] = None) -> None:
        """Its result went to the sink: wait for the sink's ACK."""
        self.awaiting[task_id] = state._value_  # (not .value: an Enum property call)
        self.by_state[state._value_] += 1
        if error is not None:
            _, cap_m, cap_tb = P.DONE_ERROR_MAX
            self.errors[task_id] = [error.type, error.message[:cap_m], error.traceback[-cap_tb:]]
        if started_at is not None:
            self.started[task_id] = started_at

    def acked(self, ids: list[str]) -> None:
        """The sink has these results: their DONE may go."""
        for tid in ids:
            state = self.awaiting.pop(tid, None)
            if state is not None:
                self.ids.append(tid)
                self.states.append(state)

    def header(self, credit: int) -> dict:
        """A DONE for what is owed, with the failures' errors."""
        header: dict = {"ids": self.ids, "states": self.states, "credit": credit}
        errors = {tid: self.errors[tid] for tid in self.ids if tid in self.errors}
        if errors:
            header["errors"] = errors
        if self.started:
            started = {tid: self.started[tid] for tid in self.ids if tid in self.started}
            if started:
                header["started"] = started
        return header

    def sent(self) -> None:
        """A DONE (or a READY or HELD) carried what was owed."""
        for tid in self.ids:
            self.errors.pop(tid, None)
            self.started.pop(tid, None)
        self.ids, self.states = [], []
