"""The ventilator's active tasks: one table that alone changes a task's state, with
the indexes admin calls need, so that a count or a page never scans the backlog.

    TaskTable ── by id: dict task id -> TaskRecord
              ── groups: (kind, queue, name) -> SortedRecs (ordered by submitted_at, seq)
                   kind: "W" queued and waiting (shown PAUSED while its queue is paused
                         or its name disabled), "S" queued and sent to a worker,
                         "RUNNING", "RETRYING"
              ── digest -> number of tasks using that function (journal pruning)

Every state change goes through :meth:`TaskTable.set_state`: checked against
``zq.envelope.TRANSITIONS`` on the states a user sees (PAUSED included) and
reported to ``on_state``.  A task's group follows its state, its worker (the
record's ``worker`` setter) and its spec (:meth:`respec`, a continuation).

Counts sum group sizes (O(groups)); a page walks the matching groups newest
first from the requested offset, which :func:`skip_counts` finds without
visiting the skipped tasks: an admin call costs O(groups + page), not O(tasks).
"""

from __future__ import annotations

import bisect
import collections
import heapq
import itertools
import operator
from typing import Any, Callable, Iterator, Optional

from zq.envelope import TRANSITIONS, TaskState
from zq.protocol import BY_NAME

from .groups import name_matches, skip_counts
from .records import TaskRecord

BLOCK = 512  # records per block of a SortedRecs (split at twice that)

_Q, _P, _R, _RT = TaskState.QUEUED, TaskState.PAUSED, TaskState.RUNNING, TaskState.RETRYING
_RS = TaskState.RESERVED
Key = tuple  # (submitted_at, -seq): newest last; unique per record


_key = operator.attrgetter("key")


class SortedRecs:
    """Records in ascending key order, in blocks: appending the newest is O(1), any other
    insert or removal O(block); position queries are O(log n) (cumulative sizes cached
    until the next change)."""

    __slots__ = ("blocks", "maxes", "n", "_cum", "gkey")

    def __init__(self, gkey: tuple = ()) -> None:
        self.gkey = gkey  # the (kind, queue, name) of the group it holds
        self.blocks: list[list[TaskRecord]] = []
        self.maxes: list[Key] = []
        self.n = 0
        self._cum: Optional[list[int]] = None  # _cum[i]: records in blocks before block i

    def __len__(self) -> int:
        return self.n

    def add(self, rec: TaskRecord) -> None:
        key = rec.key
        blocks, maxes = self.blocks, self.maxes
        self.n += 1
        self._cum = None
        if not blocks:
            blocks.append([rec])
            maxes.append(key)
            return
        if key > maxes[-1]:  # the newest: the usual case
            i = len(blocks) - 1
            blk = blocks[i]
            blk.append(rec)
            maxes[i] = key
        else:
            i = bisect.bisect_left(maxes, key)
            blk = blocks[i]
            blk.insert(bisect.bisect_left(blk, key, key=_key), rec)
        if len(blk) > 2 * BLOCK:
            blocks[i:i + 1] = [blk[:BLOCK], blk[BLOCK:]]
            maxes[i:i + 1] = [blk[BLOCK - 1].key, blk[-1].key]

    def remove(self, rec: TaskRecord) -> None:
        blocks = self.blocks
        blk = blocks[0]
        if blk[0] is rec:  # the oldest: the usual case (queues are FIFO)
            i, j = 0, 0
        else:
            key = rec.key
            i = bisect.bisect_left(self.maxes, key)
            blk = blocks[i]
            j = bisect.bisect_left(blk, key, key=_key)
            assert blk[j] is rec, "a record's key changed while it was indexed"
        del blk[j]
        self.n -= 1
        self._cum = None
        if not blk:
            del blocks[i]
            del self.maxes[i]
        elif j == len(blk):
            self.maxes[i] = blk[-1].key

    def _cumulative(self) -> list[int]:
        if self._cum is None:
            self._cum = [0, *itertools.accumulate(len(b) for b in self.blocks)]
        return self._cum

    def count_below(self, key: Key) -> int:
        """How many records have a key < ``key``."""
        i = bisect.bisect_left(self.maxes, key)
        if i == len(self.blocks):
            return self.n
        return self._cumulative()[i] + bisect.bisect_left(self.blocks[i], key, key=_key)

    def at(self, pos: int) -> TaskRecord:
        """The record at ascending position ``pos``."""
        cum = self._cumulative()
        i = bisect.bisect_right(cum, pos) - 1
        return self.blocks[i][pos - cum[i]]

    def newest(self, skip: int = 0) -> Iterator[TaskRecord]:
        """Newest first, after the ``skip`` newest (which are not visited)."""
        pos = self.n - 1 - skip
        if pos < 0:
            return
        cum = self._cumulative()
        i = bisect.bisect_right(cum, pos) - 1
        j = pos - cum[i]
        while i >= 0:
            blk = self.blocks[i]
            while j >= 0:
                yield blk[j]
                j -= 1
            i -= 1
            if i >= 0:
                j = len(self.blocks[i]) - 1


class Window:
    """The records of a SortedRecs submitted in [since, until), with SortedRecs' position
    queries (``skip_counts``, ``TaskTable.page``) on that slice."""

    __slots__ = ("recs", "lo", "hi")

    def __init__(self, recs: SortedRecs, since: Optional[float], until: Optional[float]) -> None:
        self.recs = recs
        self.lo = 0 if since is None else recs.count_below((since, float("-inf")))
        self.hi = len(recs) if until is None else recs.count_below((until, float("-inf")))
        self.hi = max(self.lo, self.hi)

    def __len__(self) -> int:
        return self.hi - self.lo

    def count_below(self, key: Key) -> int:
        return min(self.hi, max(self.lo, self.recs.count_below(key))) - self.lo

    def at(self, pos: int) -> TaskRecord:
        return self.recs.at(self.lo + pos)

    def newest(self, skip: int = 0) -> Iterator[TaskRecord]:
        return itertools.islice(self.recs.newest(skip + len(self.recs) - self.hi), max(0, len(self) - skip))


class TaskTable:
    """Active tasks by id, grouped by (kind, queue, name); see the module docstring.

    ``holds``: what holds tasks back (``paused`` queues, ``disabled`` names: the
    ventilator's Dispatch), so a waiting task is shown PAUSED; ``report(rec, old, new)``:
    called for every change of a shown state (policies), if given; ``odd(rec, old, new)``:
    for a change that ``TRANSITIONS`` does not list.
    """

    def __init__(self, holds: Any, report: Optional[Callable[[TaskRecord, TaskState, TaskState], None]],
                 odd: Callable[[TaskRecord, TaskState, TaskState], None]) -> None:
        self.holds = holds
        self.reporter = report
        self._odd = odd
        self.by_id: dict[str, TaskRecord] = {}
        self.groups: dict[tuple[str, str, str], SortedRecs] = {}
        self.digests: dict[bytes, int] = {}  # function digest -> tasks using it
        self.unused_digests: set[bytes] = set()  # no task uses them any more (journal pruning)
        self.touched = 0  # records an admin query visited (a counter for stats)
        self.children: dict[str, dict[str, TaskRecord]] = {}  # parent task id -> active follow-ups
        self._seq = itertools.count(1)

    # -- the mapping ----------------------------------------------------------------------
    def get(self, task_id: str) -> Optional[TaskRecord]:
        return self.by_id.get(task_id)

    def __getitem__(self, task_id: str) -> TaskRecord:
        return self.by_id[task_id]

    def __contains__(self, task_id: object) -> bool:
        return task_id in self.by_id

    def __len__(self) -> int:
        return len(self.by_id)

    def values(self) -> Iterator[TaskRecord]:
        """Every active task (a copy: O(tasks), not for anything a loop turn does often)."""
        return iter(list(self.by_id.values()))

    # -- membership -----------------------------------------------------------------------
    def add(self, rec: TaskRecord) -> None:
        """A new task (state UNKNOWN until ``set_state``)."""
        spec = rec.spec
        rec.key = (spec.submitted_at, -next(self._seq))
        self.by_id[spec.task_id] = rec
        rec.table = self
        parent = spec.opts.get("parent") if spec.opts else None
        if parent:
            self.children.setdefault(parent, {})[spec.task_id] = rec
        d = spec.digest
        if d != BY_NAME:
            self._use_digest(rec, d)

    def remove(self, rec: TaskRecord) -> None:
        """A finished task (after its final ``set_state``)."""
        if rec.group is not None:
            self._unindex(rec)
        rec.table = None
        self.by_id.pop(rec.spec.task_id, None)
        parent = rec.spec.opts.get("parent") if rec.spec.opts else None
        kids = self.children.get(parent) if parent else None
        if kids is not None:
            kids.pop(rec.spec.task_id, None)
            if not kids:
                del self.children[parent]
        if rec.digest is not None:
            self._use_digest(rec, None)

    def _use_digest(self, rec: TaskRecord, digest: Optional[bytes]) -> None:
        old = rec.digest
        if old == digest:
            return
        counts = self.digests
        if old is not None:
            n = counts[old] - 1
            if n:
                counts[old] = n
            else:
                del counts[old]
                self.unused_digests.add(old)
        rec.digest = digest
        if digest is not None:
            counts[digest] = counts.get(digest, 0) + 1
            self.unused_digests.discard(digest)

    # -- state ----------------------------------------------------------------------------
    def held(self, queue: str, name: str) -> bool:
        h = self.holds
        return queue in h.paused or name in h.disabled

    def shown(self, rec: TaskRecord) -> TaskState:
        state = rec._state
        if state is _Q and rec._worker is None:
            spec, h = rec.spec, self.holds
            if spec.queue in h.paused or spec.name in h.disabled:
                return _P
        return state

    def report(self, rec: TaskRecord, old: TaskState, new: TaskState) -> None:
        if new not in TRANSITIONS[old]:  # counted and logged, not refused
            self._odd(rec, old, new)
        if self.reporter is not None:
            self.reporter(rec, old, new)

    def set_state(self, rec: TaskRecord, new: TaskState) -> None:
        """The one place a task changes state (on every task's path: kept flat)."""
        old = rec._state
        waiting = rec._worker is None
        held = False
        if waiting and (old is _Q or new is _Q):
            spec, h = rec.spec, self.holds
            held = spec.queue in h.paused or spec.name in h.disabled
            if held and old is _Q:
                old = _P
        rec._state = new
        if rec.table is self:
            self._reindex(rec)
        now = _P if held and new is _Q else new
        if now is _P and old is not _P and _P not in TRANSITIONS[old]:
            # queued again into a paused queue (a lost worker, a retry come due)
            self.report(rec, old, _Q)
            self.report(rec, _Q, _P)
            return
        if now not in TRANSITIONS[old]:  # counted and logged, not refused
            self._odd(rec, old, now)
        if self.reporter is not None:
            self.reporter(rec, old, now)

    def moved(self, rec: TaskRecord) -> None:
        """Its worker changed (the record's setter calls this)."""
        self._reindex(rec)

    def respec(self, rec: TaskRecord) -> None:
        """Its spec's name, queue or function changed (a continuation)."""
        self._reindex(rec)
        d = rec.spec.digest
        self._use_digest(rec, None if d == BY_NAME else d)

    def hold_changed(self, queue: Optional[str] = None, name: Optional[str] = None,
                     before: Optional[Callable[[str, str], bool]] = None) -> None:
        """A queue was paused or resumed, a name disabled or enabled: report the waiting
        tasks whose shown state changed (``before``: the hold test before the change)."""
        assert before is not None
        for (kind, q, n), g in list(self.groups.items()):
            if kind != "W" or (queue is not None and q != queue) or (name is not None and n != name):
                continue
            was, now = before(q, n), self.held(q, n)
            if was != now:
                old, new = (_Q, _P) if now else (_P, _Q)
                for rec in list(g.newest()):
                    self.report(rec, old, new)

    # -- the index ------------------------------------------------------------------------
    def _unindex(self, rec: TaskRecord) -> None:
        recs = rec.group
        blk = recs.blocks[0]
        if blk[0] is rec and len(blk) > 1:  # the oldest of its group: the usual case
            del blk[0]
            recs.n -= 1
            recs._cum = None
        else:
            recs.remove(rec)
            if not recs.n:
                del self.groups[recs.gkey]
        rec.group = None

    def _reindex(self, rec: TaskRecord) -> None:
        state = rec._state
        if state is _Q:
            kind = "W" if rec._worker is None else "S"
        elif state is _R or state is _RT or state is _RS:
            kind = state._value_
        else:  # UNKNOWN or final: not indexed
            if rec.group is not None:
                self._unindex(rec)
            return
        spec = rec.spec
        g = (kind, spec.queue, spec.name)
        recs = rec.group
        if recs is not None:
            if recs.gkey == g:
                return
            self._unindex(rec)
        recs = self.groups.get(g)
        if recs is None:
            recs = self.groups[g] = SortedRecs(g)
        key = rec.key
        blocks = recs.blocks
        if blocks and key > recs.maxes[-1] and len(blocks[-1]) < 2 * BLOCK:  # the newest
            blocks[-1].append(rec)
            recs.maxes[-1] = key
            recs.n += 1
            recs._cum = None
        else:
            recs.add(rec)
        rec.group = recs

    def _group_state(self, g: tuple[str, str, str]) -> TaskState:
        kind, q, n = g
        if kind == "W":
            return _P if self.held(q, n) else _Q
        return _Q if kind == "S" else TaskState(kind)

    def _matching(self, state: Optional[str], queue: Optional[str], name: Optional[str]) -> list[SortedRecs]:
        """The groups matching (``name``: ``mod.fn``, or ``fn`` for any module's)."""
        match = name_matches(name)
        return [recs for g, recs in self.groups.items()
                if (queue is None or g[1] == queue) and match(g[2])
                and (state is None or self._group_state(g).value == state)]

    # -- queries --------------------------------------------------------------------------
    def count(self, state: Optional[str] = None, queue: Optional[str] = None, name: Optional[str] = None,
              since: Optional[float] = None, until: Optional[float] = None, parent: Optional[str] = None) -> int:
        """Active tasks matching (``since``/``until``: submitted in [since, until)), without
        visiting them (but the follow-ups of ``parent``, when given)."""
        if parent is not None:
            return len(self._children(state, queue, name, since, until, parent))
        if since is None and until is None:
            return sum(len(g) for g in self._matching(state, queue, name))
        return sum(len(w) for w in self._windows(state, queue, name, since, until))

    def _windows(self, state: Optional[str], queue: Optional[str], name: Optional[str],
                 since: Optional[float], until: Optional[float]) -> list["Window"]:
        return [Window(g, since, until) for g in self._matching(state, queue, name)]

    def _children(self, state: Optional[str], queue: Optional[str], name: Optional[str],
                  since: Optional[float], until: Optional[float], parent: str) -> list[TaskRecord]:
        match = name_matches(name)
        out = []
        for rec in self.children.get(parent, {}).values():
            self.touched += 1
            s = rec.spec
            if ((state is None or self.shown(rec).value == state) and (queue is None or s.queue == queue)
                    and match(s.name) and (since is None or s.submitted_at >= since)
                    and (until is None or s.submitted_at < until) and rec.group is not None):
                out.append(rec)
        out.sort(key=_key, reverse=True)
        return out

    def page(self, state: Optional[str] = None, queue: Optional[str] = None, name: Optional[str] = None,
             since: Optional[float] = None, offset: int = 0, limit: Optional[int] = None,
             until: Optional[float] = None, parent: Optional[str] = None) -> list[TaskRecord]:
        """Matching active tasks, newest submitted first, ``offset`` and ``limit`` applied;
        visits the returned tasks only (and O(log n) others per group to find the offset)."""
        if parent is not None:
            found = self._children(state, queue, name, since, until, parent)
            return found[offset:None if limit is None else offset + limit]
        groups: list[Any] = self._windows(state, queue, name, since, until)
        sizes = [len(g) for g in groups]
        total = sum(sizes)
        if offset >= total or limit == 0:
            return []
        want = total - offset if limit is None else min(limit, total - offset)
        if len(groups) == 1:
            skips = [offset]
        else:
            skips = skip_counts(groups, offset, self._probe) if offset else [0] * len(groups)
        iters = [itertools.islice(g.newest(s), max(0, size - s)) for g, s, size in zip(groups, skips, sizes)]
        merged = iters[0] if len(iters) == 1 else heapq.merge(*iters, key=_key, reverse=True)
        out = list(itertools.islice(merged, want))
        # what was read: the page, and what a merge looked at beyond it (one per group)
        self.touched += len(out) + (len(iters) if len(iters) > 1 else 0)
        return out

    def _probe(self) -> None:
        self.touched += 1

    def by_queue(self) -> tuple[collections.Counter[str], collections.Counter[str]]:
        """(queued, running) per queue, as ``zq status`` shows them (O(groups))."""
        queued: collections.Counter[str] = collections.Counter()
        running: collections.Counter[str] = collections.Counter()
        for (kind, q, _), recs in self.groups.items():
            (running if kind == "RUNNING" else queued)[q] += len(recs)
        return queued, running
