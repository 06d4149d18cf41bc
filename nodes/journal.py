"""The ventilator's journal: accepted tasks in SQLite (WAL), so a restart resumes them.

Writes are collected during one turn of the ventilator's loop and committed in
one transaction before that turn dispatches anything, so a task is durable
before any worker sees it.  ``synchronous=NORMAL`` in WAL mode survives a
killed process (SIGKILL), not a power cut.

The results the ventilator decides itself (a task cancelled while queued,
WorkerLost, a function it no longer holds) wait in ``results`` until the sink
ACKs them: ``put_result`` joins the commit that closes the task (its deletion
from ``tasks`` and, after ``begin``, its history entry), ``take_committed``
hands them to the SinkLink only once that commit is done, ``acked`` deletes them
in a later turn's commit, and ``load_results`` gives a restarted ventilator
what it must send again (the sink records a task id once: a resend is safe).
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any, Iterable

import msgpack

from zq.errors import ConfigError
from zq.protocol import ResultRow, TaskSpec, check_result_row
from zq.serialize import args_blob, args_from_blob

log = logging.getLogger("zq.journal")

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    row BLOB NOT NULL,
    args BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS functions (
    digest BLOB PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    task_id TEXT PRIMARY KEY,  -- decided here, not yet acknowledged by the sink
    row BLOB NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS holds (
    kind TEXT NOT NULL,  -- 'queue' (paused) or 'name' (disabled)
    name TEXT NOT NULL,
    PRIMARY KEY (kind, name)
);
"""


class Journal:
    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open journal {path}: {exc}") from None
        self._put: dict[str, TaskSpec] = {}
        self._fns: dict[bytes, Any] = {}
        self._del: set[str] = set()
        self._results: dict[str, ResultRow] = {}
        self._acked: set[str] = set()
        self._committed: list[ResultRow] = []  # decided results now durable: for the sink

    def begin(self) -> None:
        """Open this turn's transaction now, if it is not open: what is written directly to
        ``db`` from here (the history entry of a task being closed) is committed by
        ``commit`` together with the task's deletion and its result, not before them."""
        if not self.db.in_transaction:
            self.db.execute("BEGIN")

    def put(self, spec: TaskSpec) -> None:
        """Record (or update: attempt, lost causes) an accepted task."""
        self._del.discard(spec.task_id)
        self._put[spec.task_id] = spec

    def put_function(self, digest: bytes, data: Any) -> None:
        self._fns[digest] = data

    def remove(self, task_id: str) -> None:
        self._put.pop(task_id, None)
        self._del.add(task_id)

    def put_result(self, row: ResultRow) -> None:
        """A result the ventilator decided: kept until the sink acknowledges it."""
        self._results[row.task_id] = row

    def take_committed(self) -> list[ResultRow]:
        """The decided results committed since the last call: only these may go to the sink
        (one sent before its commit could be recorded there for a task a restart runs again)."""
        out, self._committed = self._committed, []
        return out

    def acked(self, task_ids: Iterable[str]) -> None:
        """The sink acknowledged these results: deleted in the next commit (before it writes
        the results decided since, so a task id decided again keeps its new row)."""
        self._acked.update(task_ids)

    def load_results(self) -> list[ResultRow]:
        """The decided results the sink has not acknowledged, in the order they were decided."""
        out = []
        for tid, row, payload in self.db.execute("SELECT task_id, row, payload FROM results ORDER BY rowid"):
            try:
                out.append(ResultRow(check_result_row(msgpack.unpackb(row, raw=False)), bytes(payload)))
            except Exception as exc:  # a damaged row must not stop the others
                log.error("journal: the result of task %s could not be read back: %s", tid, exc)
        return out

    @property
    def dirty(self) -> bool:
        return bool(self._put or self._fns or self._del or self._results or self._acked
                    or self.db.in_transaction)

    def commit(self) -> None:
        if not self.dirty:
            return
        cur = self.db.cursor()
        if not self.db.in_transaction:  # else opened by begin(): this turn's direct writes join
            cur.execute("BEGIN")
        try:
            if self._fns:
                cur.executemany("INSERT OR IGNORE INTO functions VALUES (?, ?)",
                                [(d, bytes(f)) for d, f in self._fns.items()])
            if self._put:
                # an update keeps the row (and so the task's place in acceptance order)
                cur.executemany("INSERT INTO tasks VALUES (?, ?, ?) ON CONFLICT(task_id) DO UPDATE "
                                "SET row = excluded.row, args = excluded.args",
                                [(s.task_id, msgpack.packb(s.row(), use_bin_type=True), args_blob(s.args))
                                 for s in self._put.values()])
            if self._del:
                cur.executemany("DELETE FROM tasks WHERE task_id = ?", [(t,) for t in self._del])
            if self._acked:
                cur.executemany("DELETE FROM results WHERE task_id = ?", [(t,) for t in self._acked])
            if self._results:
                cur.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?)",
                                [(tid, msgpack.packb(r.row, use_bin_type=True), bytes(r.payload))
                                 for tid, r in self._results.items()])
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        self._put.clear()
        self._fns.clear()
        self._del.clear()
        self._committed.extend(self._results.values())
        self._results.clear()
        self._acked.clear()

    def load(self) -> tuple[list[TaskSpec], dict[bytes, bytes]]:
        """Every unfinished task (in acceptance order) and the functions they need."""
        fns = {bytes(d): bytes(f) for d, f in self.db.execute("SELECT digest, data FROM functions")}
        specs = []
        for tid, row, args in self.db.execute("SELECT task_id, row, args FROM tasks ORDER BY rowid"):
            try:
                specs.append(TaskSpec.from_row(msgpack.unpackb(row, raw=False), args_from_blob(bytes(args))))
            except Exception as exc:  # a damaged row must not stop the others
                log.error("journal: task %s could not be read back: %s", tid, exc)
        return specs, fns

    def set_hold(self, kind: str, name: str, on: bool) -> None:
        """A paused queue (kind 'queue') or disabled task name (kind 'name'), kept at once:
        a restarted ventilator must not run what an operator held back."""
        if on:
            self.db.execute("INSERT OR IGNORE INTO holds VALUES (?, ?)", (kind, name))
        else:
            self.db.execute("DELETE FROM holds WHERE kind = ? AND name = ?", (kind, name))

    def holds(self, kind: str) -> set[str]:
        return {n for (n,) in self.db.execute("SELECT name FROM holds WHERE kind = ?", (kind,))}

    def prune_functions(self, keep: Iterable[bytes]) -> set[bytes]:
        """Delete every function not in ``keep``; the digests deleted."""
        keep = set(keep)
        gone = {bytes(d) for (d,) in self.db.execute("SELECT digest FROM functions")} - keep
        return self.drop_functions(gone)

    def drop_functions(self, digests: Iterable[bytes]) -> set[bytes]:
        """Delete these functions (no task in the journal may use them: the caller knows)."""
        gone = set(digests)
        if gone:
            self.commit()  # nothing of ours pending: what we delete is not about to be written
            cur = self.db.cursor()
            cur.execute("BEGIN")
            try:
                cur.executemany("DELETE FROM functions WHERE digest = ?", [(d,) for d in gone])
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return gone

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self.db.close()
