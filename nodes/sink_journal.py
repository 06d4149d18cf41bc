"""The sink's journal: recorded results in SQLite (WAL), so a restarted sink keeps them.

One row per recorded task id, in recording order: the de-duplication set.  A
row also says which client has not acknowledged the result yet (``client``,
'' once it has, or when there is none) and, for a retained result, its row,
its value and when it expires (wall-clock seconds: a monotonic clock does not
survive the process).  The sink clears ``client`` on the client's ACK only for
retained results (one write less per result): for the others a stale mark
costs at most one duplicate delivery, when a sender sends the result again.

Writes are collected during one turn of the sink's loop and committed in one
transaction before that turn fires ``on_done`` hooks, delivers, or ACKs any
sender, so a sender forgets a result only once the sink's copy is durable.
``synchronous=NORMAL`` in WAL mode survives a killed process (SIGKILL), not a
power cut.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import NamedTuple, Optional

import msgpack

from zq.errors import ConfigError
from zq.protocol import ResultRow, check_result_row
from zq.serialize import args_blob, args_from_blob

log = logging.getLogger("zq.sink.journal")

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    task_id TEXT PRIMARY KEY,
    client TEXT NOT NULL,  -- the client that has not acknowledged it yet; '' if none
    expires REAL,          -- wall-clock expiry of the retained copy; NULL: not retained
    row BLOB,              -- retained only: the msgpack result row
    payload BLOB           -- retained only: the value (serialize.args_blob)
);
"""



class _Put:
    """A result's row to write at the next commit (``client`` "": acknowledged)."""

    __slots__ = ("client", "expires", "row")

    def __init__(self, client: str, expires: Optional[float], row: Optional[ResultRow]) -> None:
        self.client = client
        self.expires = expires
        self.row = row

class Stored(NamedTuple):
    """A journaled result as read back: ``row`` is None when it was not retained."""

    task_id: str
    client: str
    expires: Optional[float]  # wall clock
    row: Optional[ResultRow]


class SinkJournal:
    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            self.db.execute("BEGIN IMMEDIATE")  # fails now, not at the first commit, if read-only
            self.db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open journal {path}: {exc}") from None
        # task id -> [client, expires, ResultRow if retained]: pending inserts, changed in place
        self._put: dict[str, _Put] = {}
        self._acked: list[tuple[str, str]] = []  # (task id, client): that client has it
        self._strip: set[str] = set()  # no longer retained, still remembered
        self._del: set[str] = set()  # forgotten

    def record(self, r: ResultRow, client: str, expires: Optional[float]) -> None:
        """A newly recorded result; ``expires`` (wall clock) when it is retained."""
        self._del.discard(r.task_id)
        self._put[r.task_id] = _Put(client, expires, r if expires is not None else None)

    def acked(self, task_id: str, client: str) -> None:
        """``client`` acknowledged (or will never take) ``task_id``."""
        p = self._put.get(task_id)
        if p is None:
            self._acked.append((task_id, client))
        elif p.client == client:
            p.client = ""

    def unretain(self, task_id: str) -> None:
        """The retained copy expired or was consumed; the id stays in the de-duplication set."""
        p = self._put.get(task_id)
        if p is None:
            self._strip.add(task_id)
        else:
            p.expires = p.row = None

    def forget(self, task_id: str) -> None:
        self._put.pop(task_id, None)
        self._strip.discard(task_id)
        self._del.add(task_id)

    @property
    def dirty(self) -> bool:
        return bool(self._put or self._acked or self._strip or self._del)

    def commit(self) -> None:
        if not self.dirty:
            return
        cur = self.db.cursor()
        cur.execute("BEGIN")
        try:
            if self._put:
                cur.executemany(
                    "INSERT INTO results VALUES (?, ?, ?, ?, ?) ON CONFLICT(task_id) DO UPDATE SET "
                    "client = excluded.client, expires = excluded.expires, row = excluded.row, "
                    "payload = excluded.payload",
                    [(tid, p.client, p.expires,
                      None if p.row is None else msgpack.packb(p.row.row, use_bin_type=True),
                      None if p.row is None else args_blob(p.row.payload))
                     for tid, p in self._put.items()])
            if self._acked:
                cur.executemany("UPDATE results SET client = '' WHERE task_id = ? AND client = ?", self._acked)
            if self._strip:
                cur.executemany("UPDATE results SET expires = NULL, row = NULL, payload = NULL "
                                "WHERE task_id = ?", [(t,) for t in self._strip])
            if self._del:
                cur.executemany("DELETE FROM results WHERE task_id = ?", [(t,) for t in self._del])
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        self._put.clear()
        self._acked.clear()
        self._strip.clear()
        self._del.clear()

    def load(self, now: Optional[float] = None) -> list[Stored]:
        """Every journaled result in recording order; retained copies past their expiry
        are stripped first (the ids stay, for de-duplication)."""
        now = time.time() if now is None else now
        try:
            self.db.execute("UPDATE results SET expires = NULL, row = NULL, payload = NULL "
                            "WHERE expires <= ?", (now,))
            rows = self.db.execute("SELECT task_id, client, expires, row, payload FROM results "
                                   "ORDER BY rowid").fetchall()
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot read journal {self.path}: {exc}") from None
        out = []
        for tid, client, expires, row, payload in rows:
            stored: Optional[ResultRow] = None
            if row is not None and expires is not None:
                try:
                    stored = ResultRow(check_result_row(msgpack.unpackb(row, raw=False)),
                                       args_from_blob(bytes(payload)))
                except Exception as exc:  # a damaged row must not stop the others
                    log.error("journal: the result of %s could not be read back: %s", tid, exc)
            out.append(Stored(tid, client, expires if stored is not None else None, stored))
        return out

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self.db.close()
