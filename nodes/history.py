"""Finished tasks, for ``list_tasks``/``count_tasks``/``requeue``/``forget`` and ``zq tasks``.

In memory (bounded) by default; in the ventilator's journal (SQLite) when it has
one, kept for ``retention`` seconds.  A failed or cancelled task keeps its
arguments so that ``requeue`` can run it again.  ``forget`` is a soft delete:
the entry is hidden from lists but kept.
"""

from __future__ import annotations

import collections
import sqlite3
import time
from typing import Any, Optional

import msgpack

from zq.protocol import TaskSpec
from zq.serialize import args_blob, args_from_blob

MEMORY_LIMIT = 100_000
COLUMNS = ("task_id", "name", "queue", "state", "submitted_at", "finished_at", "attempts", "worker",
           "error", "parent", "root", "forgotten")

SCHEMA = """
CREATE TABLE IF NOT EXISTS history (
    task_id TEXT PRIMARY KEY, name TEXT, queue TEXT, state TEXT, submitted_at REAL,
    finished_at REAL, attempts INTEGER, worker TEXT, error TEXT, parent TEXT, root TEXT,
    forgotten INTEGER DEFAULT 0, row BLOB, args BLOB
);
CREATE INDEX IF NOT EXISTS history_finished ON history (finished_at);
"""


def entry(spec: TaskSpec, state: str, worker: str, error: Optional[str]) -> list:
    """A history entry in COLUMNS order (a list: one per finished task, so kept small and
    cheap to make; :func:`as_dict` is the form callers see)."""
    opts = spec.opts
    return [spec.task_id, spec.name, spec.queue, state, spec.submitted_at, time.time(), spec.attempt,
            worker, error, opts.get("parent") if opts else None,
            (opts.get("root") if opts else None) or spec.task_id, False]


def as_dict(e: Any) -> dict:
    d = dict(zip(COLUMNS, e))
    d["forgotten"] = bool(d["forgotten"])
    return d


def matches(e: dict, state: Optional[str], queue: Optional[str], name: Optional[str],
            since: Optional[float], forgotten: bool) -> bool:
    return ((state is None or e["state"] == state) and (queue is None or e["queue"] == queue)
            and (name is None or e["name"] == name)
            and (since is None or (e["finished_at"] or e["submitted_at"]) >= since)
            and (forgotten or not e["forgotten"]))


class History:
    def __init__(self, db: Optional[sqlite3.Connection] = None, retention: float = 7 * 86400.0) -> None:
        self.db = db
        self.retention = retention
        self.memory: collections.OrderedDict[str, list] = collections.OrderedDict()
        self.specs: collections.OrderedDict[str, TaskSpec] = collections.OrderedDict()
        if db is not None:
            db.executescript(SCHEMA)

    def add(self, spec: TaskSpec, state: str, worker: str, error: Optional[str]) -> None:
        e = entry(spec, state, worker, error)
        keep_args = state in ("FAILED", "CANCELED")
        if self.db is not None:
            self.db.execute(
                "INSERT OR REPLACE INTO history VALUES (?,?,?,?,?,?,?,?,?,?,?,0,?,?)",
                (*e[:-1],
                 msgpack.packb(spec.row(), use_bin_type=True) if keep_args else None,
                 args_blob(spec.args) if keep_args else None))
            return
        self.memory[spec.task_id] = e
        self.memory.move_to_end(spec.task_id)
        if keep_args:
            self.specs[spec.task_id] = spec
        while len(self.memory) > MEMORY_LIMIT:
            old, _ = self.memory.popitem(last=False)
            self.specs.pop(old, None)
        while len(self.specs) > MEMORY_LIMIT // 10:
            self.specs.popitem(last=False)

    def get(self, task_id: str) -> Optional[dict]:
        if self.db is None:
            e = self.memory.get(task_id)
            return as_dict(e) if e is not None else None
        row = self.db.execute(f"SELECT {','.join(COLUMNS)} FROM history WHERE task_id = ?",
                              (task_id,)).fetchone()
        return as_dict(row) if row is not None else None

    def __contains__(self, task_id: str) -> bool:
        if self.db is None:
            return task_id in self.memory
        return self.db.execute("SELECT 1 FROM history WHERE task_id = ?", (task_id,)).fetchone() is not None

    def spec(self, task_id: str) -> Optional[TaskSpec]:
        """The task as submitted (failed or cancelled tasks only), for requeue."""
        if self.db is None:
            return self.specs.get(task_id)
        row = self.db.execute("SELECT row, args FROM history WHERE task_id = ?", (task_id,)).fetchone()
        if row is None or row[0] is None:
            return None
        return TaskSpec.from_row(msgpack.unpackb(row[0], raw=False), args_from_blob(bytes(row[1])))

    def forget(self, task_id: str) -> bool:
        if self.db is None:
            e = self.memory.get(task_id)
            if e is None:
                return False
            e[-1] = True
            return True
        cur = self.db.execute("UPDATE history SET forgotten = 1 WHERE task_id = ?", (task_id,))
        return cur.rowcount > 0

    def query(self, state: Optional[str] = None, queue: Optional[str] = None, name: Optional[str] = None,
              since: Optional[float] = None, forgotten: bool = False) -> list[dict]:
        """Matching entries, newest first."""
        if self.db is None:
            return [d for d in map(as_dict, reversed(self.memory.values()))
                    if matches(d, state, queue, name, since, forgotten)]
        where, params = [], []
        for col, val in (("state", state), ("queue", queue), ("name", name)):
            if val is not None:
                where.append(f"{col} = ?")
                params.append(val)
        if since is not None:
            where.append("finished_at >= ?")
            params.append(since)
        if not forgotten:
            where.append("forgotten = 0")
        sql = f"SELECT {','.join(COLUMNS)} FROM history"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [as_dict(row) for row in self.db.execute(sql + " ORDER BY finished_at DESC", params)]

    def prune(self, now: Optional[float] = None) -> int:
        """Drop entries older than the retention (journal only; memory is bounded by count)."""
        if self.db is None:
            return 0
        cutoff = (now or time.time()) - self.retention
        return self.db.execute("DELETE FROM history WHERE finished_at < ?", (cutoff,)).rowcount


def page(items: list[Any], limit: Optional[int], offset: int) -> list[Any]:
    items = items[offset:] if offset else items
    return items[:limit] if limit is not None else items
