"""Finished tasks, for ``list_tasks``/``count_tasks``/``requeue``/``forget`` and ``zq tasks``.

In memory (bounded) by default; in the ventilator's journal (SQLite) when it has
one, kept for ``retention`` seconds.  A failed or cancelled task keeps its
arguments so that ``requeue`` can run it again, and its details (``show``): when it
started, on which host and pid, its error's type, message and traceback (8 KB at
most) and the causes of its lost attempts (in memory for the newest
``DETAILS_LIMIT`` of them).  ``forget`` is a soft delete:
the entry is hidden from lists but kept.
"""

from __future__ import annotations

import collections
import sqlite3
import time
from typing import Any, Optional

import msgpack

from zq.protocol import BY_NAME, TaskSpec
from zq.serialize import args_blob, args_from_blob

from .groups import name_matches
from .histindex import HistoryIndex, last_component, page

MEMORY_LIMIT = 100_000
DETAILS_LIMIT = 10_000  # in memory: details kept for the newest failed or cancelled tasks
TRACEBACK_MAX = 8192
COLUMNS = ("task_id", "name", "queue", "state", "submitted_at", "finished_at", "attempts", "worker",
           "error", "parent", "root", "args_repr", "forgotten")
# where an in-memory entry (a list in COLUMNS order: local data, not a message row) keeps what
_ID, _NAME, _QUEUE, _STATE, _SUBMITTED, _FINISHED, _PARENT, _FORGOTTEN = (
    COLUMNS.index(c) for c in ("task_id", "name", "queue", "state", "submitted_at", "finished_at", "parent",
                               "forgotten"))

SCHEMA = """
CREATE TABLE IF NOT EXISTS history (
    task_id TEXT PRIMARY KEY, name TEXT, queue TEXT, state TEXT, submitted_at REAL,
    finished_at REAL, attempts INTEGER, worker TEXT, error TEXT, parent TEXT, root TEXT,
    forgotten INTEGER DEFAULT 0, row BLOB, args BLOB, digest BLOB, detail BLOB, fn TEXT
);
CREATE INDEX IF NOT EXISTS history_finished ON history (finished_at);
CREATE INDEX IF NOT EXISTS history_state ON history (state, finished_at);
CREATE INDEX IF NOT EXISTS history_queue ON history (queue, finished_at);
CREATE INDEX IF NOT EXISTS history_name ON history (name, finished_at);
"""
# made after the columns they index exist (journals of older versions get them added)
LATER_INDEXES = """
CREATE INDEX IF NOT EXISTS history_fn ON history (fn, finished_at);
CREATE INDEX IF NOT EXISTS history_parent ON history (parent, finished_at);
"""


def entry(spec: TaskSpec, state: str, worker: str, error: Optional[str]) -> list:
    """A history entry in COLUMNS order (a list: one per finished task, so kept small and
    cheap to make; :func:`as_dict` is the form callers see)."""
    opts = spec.opts
    return [spec.task_id, spec.name, spec.queue, state, spec.submitted_at, time.time(), spec.attempt,
            worker, error, opts.get("parent") if opts else None,
            (opts.get("root") if opts else None) or spec.task_id, opts.get("argrepr") if opts else None, False]


def details(rec: Any, worker: Any) -> Optional[dict]:
    """What ``show`` tells of a task that did not succeed beyond its entry: its start, its
    worker's host and pid (``worker``: a WorkerInfo, if still known), its error, its lost
    attempts (None for a success: nothing to explain)."""
    err = rec.error
    spec = rec.spec
    d: dict = {"started_at": rec.started_at, "lost": list(spec.lost)}
    if worker is not None:
        d["host"], d["pid"] = worker.host, worker.pid
    if err is not None:
        t, m, tb = err
        d["error_type"], d["message"] = t, m
        d["traceback"] = tb if len(tb) <= TRACEBACK_MAX else "…" + tb[-(TRACEBACK_MAX - 1):]
    return d


def as_dict(e: Any) -> dict:
    d = dict(zip(COLUMNS, e))
    d["forgotten"] = bool(d["forgotten"])
    return d


class History:
    def __init__(self, db: Optional[sqlite3.Connection] = None, retention: float = 7 * 86400.0) -> None:
        self.db = db
        self.retention = retention
        self.memory: collections.OrderedDict[str, list] = collections.OrderedDict()
        self.specs: collections.OrderedDict[str, TaskSpec] = collections.OrderedDict()
        self.details: collections.OrderedDict[str, dict] = collections.OrderedDict()
        # per (state, queue, name, forgotten), ordered by finish time: counts read no entry
        self.index = HistoryIndex(with_entries=db is None)
        self.touched = 0  # entries (rows) admin queries read: a counter for stats
        if db is not None:
            db.executescript(SCHEMA)
            self._add_digest_column(db)
            self._add_later_columns(db)
            self._load_index(db)

    @staticmethod
    def _add_digest_column(db: sqlite3.Connection) -> None:
        """Journals written before the history kept its function digests get the column,
        filled from the rows kept for requeue (the journal keeps those functions)."""
        if "digest" not in [r[1] for r in db.execute("PRAGMA table_info(history)")]:
            db.execute("ALTER TABLE history ADD COLUMN digest BLOB")
            for tid, row in db.execute("SELECT task_id, row FROM history WHERE row IS NOT NULL").fetchall():
                try:
                    digest = TaskSpec.from_row(msgpack.unpackb(row, raw=False), b"").digest
                except Exception:  # a damaged row keeps no function
                    continue
                db.execute("UPDATE history SET digest = ? WHERE task_id = ?", (digest, tid))
        db.execute("CREATE INDEX IF NOT EXISTS history_digest ON history (digest) WHERE digest IS NOT NULL")

    @staticmethod
    def _add_later_columns(db: sqlite3.Connection) -> None:
        have = [r[1] for r in db.execute("PRAGMA table_info(history)")]
        if "detail" not in have:
            db.execute("ALTER TABLE history ADD COLUMN detail BLOB")
        if "args_repr" not in have:  # journals written before tasks carried their arguments' repr
            db.execute("ALTER TABLE history ADD COLUMN args_repr TEXT")
        if "fn" not in have:
            db.execute("ALTER TABLE history ADD COLUMN fn TEXT")
            db.executemany("UPDATE history SET fn = ? WHERE name = ?",
                           [(last_component(n or ""), n) for (n,) in db.execute("SELECT DISTINCT name FROM history")])
        db.executescript(LATER_INDEXES)

    def _load_index(self, db: sqlite3.Connection) -> None:
        """The finish times of a journal's history, grouped (read once, at start)."""
        for st, q, nm, fg, t in db.execute(
                "SELECT state, queue, name, forgotten, finished_at FROM history ORDER BY finished_at"):
            self.index.add((st, q, nm, bool(fg)), t or 0.0)

    def add(self, spec: TaskSpec, state: str, worker: str, error: Optional[str],
            detail: Optional[dict] = None) -> None:
        """``detail``: see :func:`details` (kept for tasks that did not succeed)."""
        e = entry(spec, state, worker, error)
        keep_args = state in ("FAILED", "CANCELED")
        if state == "SUCCESS":
            detail = None
        if self.db is not None:
            values = (*e[:-1],
                      msgpack.packb(spec.row(), use_bin_type=True) if keep_args else None,
                      args_blob(spec.args) if keep_args else None,
                      spec.digest if keep_args and spec.digest != BY_NAME else None,
                      msgpack.packb(detail, use_bin_type=True) if detail else None, last_component(spec.name))
            sql = (f"INTO history ({','.join(COLUMNS)}, row, args, digest, detail, fn) "
                   "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,0,?,?,?,?,?)")
            try:
                self.db.execute("INSERT " + sql, values)
            except sqlite3.IntegrityError:  # a task id seen again (after a restart): replaced
                old = self.db.execute("SELECT state, queue, name, forgotten, finished_at FROM history "
                                      "WHERE task_id = ?", (spec.task_id,)).fetchone()
                if old is not None:
                    self.index.remove((old[0], old[1], old[2], bool(old[3])), old[4] or 0.0)
                self.db.execute("INSERT OR REPLACE " + sql, values)
            self.index.add(_group(e), e[_FINISHED])
            return
        if detail:
            self.details[spec.task_id] = detail
            self.details.move_to_end(spec.task_id)
            while len(self.details) > DETAILS_LIMIT:
                self.details.popitem(last=False)
        replaced = self.memory.get(spec.task_id)
        if replaced is not None:
            self._unindex(replaced)
        self.memory[spec.task_id] = e
        self.memory.move_to_end(spec.task_id)
        self._reindex(e)
        if keep_args:
            self.specs[spec.task_id] = spec
        while len(self.memory) > MEMORY_LIMIT:
            old, gone = self.memory.popitem(last=False)
            self._unindex(gone)
            self.specs.pop(old, None)
            self.details.pop(old, None)
        while len(self.specs) > MEMORY_LIMIT // 10:
            self.specs.popitem(last=False)

    def get(self, task_id: str) -> Optional[dict]:
        """The entry, with its details (started_at, host, pid, error_type, message,
        traceback, lost: None where unknown)."""
        if self.db is None:
            e = self.memory.get(task_id)
            if e is None:
                return None
            d, detail = as_dict(e), self.details.get(task_id)
        else:
            row = self.db.execute(f"SELECT {','.join(COLUMNS)}, detail FROM history WHERE task_id = ?",
                                  (task_id,)).fetchone()
            if row is None:
                return None
            d = as_dict(row[:-1])
            detail = msgpack.unpackb(row[-1], raw=False) if row[-1] is not None else None
        for k in ("started_at", "host", "pid", "error_type", "message", "traceback"):
            d[k] = None
        d["lost"] = []
        d.update(detail or {})
        return d

    def __contains__(self, task_id: str) -> bool:
        if self.db is None:
            return task_id in self.memory
        return self.db.execute("SELECT 1 FROM history WHERE task_id = ?", (task_id,)).fetchone() is not None

    def spec(self, task_id: str) -> Optional[TaskSpec]:
        """The task as submitted (failed or cancelled tasks only), for requeue."""
        if self.db is None:
            return self.specs.get(task_id)
        hit = self.db.execute("SELECT row, args FROM history WHERE task_id = ?", (task_id,)).fetchone()
        if hit is None or hit[0] is None:
            return None
        row, args = hit
        return TaskSpec.from_row(msgpack.unpackb(row, raw=False), args_from_blob(bytes(args)))

    def forget(self, task_id: str) -> bool:
        if self.db is None:
            e = self.memory.get(task_id)
            if e is None:
                return False
            self._unindex(e)
            e[_FORGOTTEN] = True
            self._reindex(e)
            return True
        old = self.db.execute("SELECT state, queue, name, forgotten, finished_at FROM history "
                              "WHERE task_id = ?", (task_id,)).fetchone()
        if old is None:
            return False
        if not old[3]:
            self.index.remove((old[0], old[1], old[2], False), old[4] or 0.0)
            self.index.add((old[0], old[1], old[2], True), old[4] or 0.0)
        self.db.execute("UPDATE history SET forgotten = 1 WHERE task_id = ?", (task_id,))
        return True

    def _unindex(self, e: list) -> None:
        self.index.remove(_group(e), e[_FINISHED], e)
        self.index.remove_child(e[_PARENT], e[_ID])

    def _reindex(self, e: list) -> None:
        self.index.add(_group(e), e[_FINISHED], e)
        self.index.add_child(e[_PARENT], e[_ID])

    @staticmethod
    def _where(state: Optional[str], queue: Optional[str], name: Optional[str], since: Optional[float],
               until: Optional[float], parent: Optional[str], forgotten: bool) -> tuple[str, list]:
        where, params = [], []
        name_col = "fn" if name is not None and "." not in name else "name"
        for col, val in (("state", state), ("queue", queue), (name_col, name), ("parent", parent)):
            if val is not None:
                where.append(f"{col} = ?")
                params.append(val)
        if since is not None:
            where.append("finished_at >= ?")
            params.append(since)
        if until is not None:
            where.append("finished_at < ?")
            params.append(until)
        if not forgotten:
            where.append("forgotten = 0")
        return (" WHERE " + " AND ".join(where)) if where else "", params

    def count(self, state: Optional[str] = None, queue: Optional[str] = None, name: Optional[str] = None,
              since: Optional[float] = None, forgotten: bool = False, until: Optional[float] = None,
              parent: Optional[str] = None) -> int:
        """How many entries match: from the index (O(groups · log n), no entry read), or
        for ``parent`` from the follow-ups of that task (those are read)."""
        if parent is None:
            return self.index.count(state, queue, name, since, until, forgotten)
        if self.db is None:
            n = sum(1 for _ in self._children(state, queue, name, since, until, parent, forgotten))
        else:
            where, params = self._where(state, queue, name, since, until, parent, forgotten)
            n = self.db.execute("SELECT COUNT(*) FROM history" + where, params).fetchone()[0]
        self.touched += n
        return n

    def _children(self, state: Optional[str], queue: Optional[str], name: Optional[str], since: Optional[float],
                  until: Optional[float], parent: str, forgotten: bool) -> list:
        """The in-memory follow-ups of ``parent`` that match, newest finished first."""
        match = name_matches(name)
        out = []
        for tid in self.index.children.get(parent, ()):
            e = self.memory.get(tid)
            if e is None:
                continue
            self.touched += 1
            if ((state is None or e[_STATE] == state) and (queue is None or e[_QUEUE] == queue)
                    and match(e[_NAME]) and (forgotten or not e[_FORGOTTEN])
                    and (since is None or e[_FINISHED] >= since) and (until is None or e[_FINISHED] < until)):
                out.append(e)
        out.sort(key=lambda e: e[_FINISHED], reverse=True)
        return out

    def query(self, state: Optional[str] = None, queue: Optional[str] = None, name: Optional[str] = None,
              since: Optional[float] = None, forgotten: bool = False, offset: int = 0,
              limit: Optional[int] = None, until: Optional[float] = None,
              parent: Optional[str] = None) -> list[dict]:
        """Matching entries, newest finished first, ``offset`` and ``limit`` applied (the
        entries before ``offset`` are walked, not converted)."""
        if self.db is None:
            if parent is not None:
                found = self._children(state, queue, name, since, until, parent, forgotten)
                rows = found[offset:None if limit is None else offset + limit]
            else:
                rows = page(self.index.newest(state, queue, name, since, until, forgotten, offset), 0, limit)
                self.touched += len(rows)
            return [as_dict(e) for e in rows]
        where, params = self._where(state, queue, name, since, until, parent, forgotten)
        sql = f"SELECT {','.join(COLUMNS)} FROM history{where} ORDER BY finished_at DESC LIMIT ? OFFSET ?"
        out = [as_dict(row) for row in self.db.execute(sql, [*params, -1 if limit is None else limit, offset])]
        self.touched += offset + len(out)
        return out

    def functions(self, digests: Optional[set[bytes]] = None) -> set[bytes]:
        """The function digests entries kept for requeue use (of ``digests``, if given):
        the journal keeps those functions (journal only)."""
        if self.db is None:
            return set()
        if digests is None:
            return {bytes(d) for (d,) in self.db.execute(
                "SELECT DISTINCT digest FROM history WHERE digest IS NOT NULL")}
        found: set[bytes] = set()
        ds = list(digests)
        for i in range(0, len(ds), 500):  # under SQLite's limit on parameters
            part = ds[i:i + 500]
            found.update(bytes(d) for (d,) in self.db.execute(
                f"SELECT DISTINCT digest FROM history WHERE digest IN ({','.join('?' * len(part))})", part))
        return found

    def prune(self, now: Optional[float] = None) -> set[bytes]:
        """Drop entries older than the retention (journal only; memory is bounded by count);
        the function digests the dropped entries used."""
        if self.db is None:
            return set()
        cutoff = (now or time.time()) - self.retention
        freed = {bytes(d) for (d,) in self.db.execute(
            "SELECT DISTINCT digest FROM history WHERE finished_at < ? AND digest IS NOT NULL", (cutoff,))}
        self.db.execute("DELETE FROM history WHERE finished_at < ?", (cutoff,))
        self.index.drop_before(cutoff)
        return freed


def _group(e: list) -> tuple:
    return (e[_STATE], e[_QUEUE], e[_NAME], bool(e[_FORGOTTEN]))
