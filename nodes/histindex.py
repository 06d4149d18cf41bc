"""The history's index: finished tasks grouped by (state, queue, name, forgotten), each
group ordered by finish time, so that a count with a time range is two bisections per
group and a page walks only what it returns (``nodes/history.py``).

    HistoryIndex ── groups: (state, queue, name, forgotten) -> Group
                         Group.times   finish times, ascending (array of doubles)
                         Group.entries the entries, same order (in memory only; a
                                       journal's history reads its rows from SQLite)
                 ── children: parent task id -> its follow-ups' ids (in memory only)

A group drops its oldest from the front (eviction, retention) in amortised O(1): the
dropped prefix is cut off in one go once it is large.  An entry that changes group
(``forget``) or is replaced is removed by bisection (O(log n) to find, a memmove to cut).
"""

from __future__ import annotations

import array
import bisect
import heapq
import itertools
from typing import Any, Iterator, Optional

from .groups import name_matches, skip_counts

COMPACT_AT = 4096  # a group cuts off its dropped prefix once it is this long (and half of it)

GroupKey = tuple  # (state, queue, name, forgotten)


def last_component(name: str) -> str:
    return name.rsplit(".", 1)[-1]


class Group:
    __slots__ = ("times", "entries", "head")

    def __init__(self, with_entries: bool) -> None:
        self.times = array.array("d")
        self.entries: Optional[list] = [] if with_entries else None
        self.head = 0  # positions before it are dropped

    def __len__(self) -> int:
        return len(self.times) - self.head

    def add(self, t: float, e: Any = None) -> None:
        times = self.times
        if not times or t >= times[-1] or len(times) == self.head:
            times.append(t)
            if self.entries is not None:
                self.entries.append(e)
            return
        i = bisect.bisect_right(times, t, self.head)  # the clock went back: keep the order
        times.insert(i, t)
        if self.entries is not None:
            self.entries.insert(i, e)

    def _position(self, t: float, e: Any) -> Optional[int]:
        times, i = self.times, bisect.bisect_left(self.times, t, self.head)
        while i < len(times) and times[i] == t:
            if self.entries is None or self.entries[i] is e:
                return i
            i += 1
        return None

    def remove(self, t: float, e: Any = None) -> bool:
        """Drop one entry (``e``; in a times-only group, one at time ``t``)."""
        i = self._position(t, e)
        if i is None:
            return False
        if i == self.head:
            self._drop_head()
            return True
        del self.times[i]
        if self.entries is not None:
            del self.entries[i]
        return True

    def _drop_head(self) -> None:
        if self.entries is not None:
            self.entries[self.head] = None  # let it go now
        self.head += 1
        if self.head >= COMPACT_AT and 2 * self.head >= len(self.times):
            del self.times[:self.head]
            if self.entries is not None:
                del self.entries[:self.head]
            self.head = 0

    def drop_before(self, t: float) -> int:
        """Drop every entry finished before ``t`` (retention); how many."""
        k = bisect.bisect_left(self.times, t, self.head) - self.head
        for _ in range(k):
            self._drop_head()
        return k

    def window(self, since: Optional[float], until: Optional[float]) -> tuple[int, int]:
        """Positions [lo, hi) of the entries finished in [since, until)."""
        lo = self.head if since is None else bisect.bisect_left(self.times, since, self.head)
        hi = len(self.times) if until is None else bisect.bisect_left(self.times, until, self.head)
        return lo, max(lo, hi)

    def newest(self, lo: int, hi: int) -> Iterator[tuple[float, Any]]:
        times, entries = self.times, self.entries
        assert entries is not None
        for i in range(hi - 1, lo - 1, -1):
            yield times[i], entries[i]


class HistoryIndex:
    def __init__(self, with_entries: bool) -> None:
        self.with_entries = with_entries
        self.groups: dict[GroupKey, Group] = {}
        self.children: dict[str, list[str]] = {}

    def add(self, key: GroupKey, t: float, e: Any = None) -> None:
        g = self.groups.get(key)
        if g is None:
            g = self.groups[key] = Group(self.with_entries)
        g.add(t, e)

    def remove(self, key: GroupKey, t: float, e: Any = None) -> None:
        g = self.groups.get(key)
        if g is not None and g.remove(t, e) and not len(g):
            del self.groups[key]

    def add_child(self, parent: Optional[str], task_id: str) -> None:
        if parent:
            self.children.setdefault(parent, []).append(task_id)

    def remove_child(self, parent: Optional[str], task_id: str) -> None:
        kids = self.children.get(parent) if parent else None
        if kids is not None:
            try:
                kids.remove(task_id)
            except ValueError:
                pass
            if not kids:
                del self.children[parent]  # type: ignore[arg-type]

    def drop_before(self, t: float) -> None:
        for key, g in list(self.groups.items()):
            g.drop_before(t)
            if not len(g):
                del self.groups[key]

    def matching(self, state: Optional[str], queue: Optional[str], name: Optional[str],
                 forgotten: bool) -> list[Group]:
        match = name_matches(name)
        return [g for (st, q, nm, fg), g in self.groups.items()
                if (state is None or st == state) and (queue is None or q == queue) and match(nm)
                and (forgotten or not fg)]

    def count(self, state: Optional[str], queue: Optional[str], name: Optional[str], since: Optional[float],
              until: Optional[float], forgotten: bool) -> int:
        """O(groups · log n): no entry is read."""
        n = 0
        for g in self.matching(state, queue, name, forgotten):
            if since is None and until is None:
                n += len(g)
            else:
                lo, hi = g.window(since, until)
                n += hi - lo
        return n

    def newest(self, state: Optional[str], queue: Optional[str], name: Optional[str], since: Optional[float],
               until: Optional[float], forgotten: bool, offset: int = 0) -> Iterator[Any]:
        """Matching entries, newest finished first, after the ``offset`` newest (found by
        bisection, not walked: see :func:`zq.nodes.groups.skip_counts`); in memory only."""
        wins = []
        for g in self.matching(state, queue, name, forgotten):
            lo, hi = g.window(since, until)
            if hi > lo:
                wins.append(_Window(g, lo, hi, len(wins)))
        if not wins:
            return iter(())
        if len(wins) == 1:
            skips = [offset]
        else:
            skips = skip_counts(wins, offset, lambda: None) if offset else [0] * len(wins)  # type: ignore[arg-type]
        its = [w.newest(k) for w, k in zip(wins, skips)]
        merged = its[0] if len(its) == 1 else heapq.merge(*its, key=lambda ke: ke[0], reverse=True)
        return (e for _, e in merged)


class _Window:
    """Positions [lo, hi) of a group, with the position queries ``skip_counts`` needs;
    keys (time, group number, position) are unique and order ties between groups."""

    __slots__ = ("g", "lo", "hi", "gid")

    def __init__(self, g: Group, lo: int, hi: int, gid: int) -> None:
        self.g, self.lo, self.hi, self.gid = g, lo, hi, gid

    def __len__(self) -> int:
        return self.hi - self.lo

    def at(self, pos: int) -> "_Keyed":
        p = self.lo + pos
        return _Keyed((self.g.times[p], self.gid, p))

    def count_below(self, key: tuple) -> int:
        t, gid, pos = key
        times, lo, hi = self.g.times, self.lo, self.hi
        if gid < self.gid:  # this group's entries at time t come after the key's
            c = bisect.bisect_left(times, t, lo, hi)
        elif gid > self.gid:
            c = bisect.bisect_right(times, t, lo, hi)
        else:
            c = min(max(pos, lo), hi)
        return c - lo

    def newest(self, skip: int) -> Iterator[tuple[tuple, Any]]:
        times, entries, gid = self.g.times, self.g.entries, self.gid
        assert entries is not None
        for i in range(self.hi - 1 - skip, self.lo - 1, -1):
            yield (times[i], gid, i), entries[i]


class _Keyed:
    __slots__ = ("key",)

    def __init__(self, key: tuple) -> None:
        self.key = key


def page(entries: Iterator[Any], offset: int, limit: Optional[int]) -> list:
    return list(itertools.islice(entries, offset, None if limit is None else offset + limit))
