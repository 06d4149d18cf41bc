"""Two queries shared by the task table and the history index: which tasks a name filter
matches, and how many of each ordered group's newest entries are among the ``k`` newest of
them all (a page's offset, found by bisection, not walked).

A group here is anything with ``len()``, ``at(i)`` (its i-th oldest, with a ``key``) and
``count_below(key)``: ``tasktable.SortedRecs`` and the history's sorted groups.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence


def name_matches(pattern: Optional[str]) -> Callable[[str], bool]:
    """``mod.fn`` matches that name; a name without a dot matches the last component of
    a dotted one too (``fn`` matches ``mod.fn`` and ``pkg.mod.fn``)."""
    if pattern is None:
        return lambda n: True
    if "." in pattern:
        return lambda n: n == pattern
    tail = "." + pattern
    return lambda n: n == pattern or n.endswith(tail)


def skip_counts(groups: Sequence[Any], k: int, probe: Callable[[], None]) -> list[int]:
    """How many of each group's newest records are among the ``k`` newest of them all,
    found by bisecting on keys (O(groups² · log n) position queries, no walk)."""
    n = len(groups)
    lo = [0] * n
    hi = [min(len(g), k) for g in groups]
    while True:
        i = max(range(n), key=lambda j: hi[j] - lo[j])
        if hi[i] - lo[i] <= 0:
            return lo
        mid = (lo[i] + hi[i]) // 2
        g = groups[i]
        pivot = g.at(len(g) - 1 - mid).key  # the mid-th newest of group i
        probe()
        newer = [len(h) - h.count_below(pivot) for h in groups]  # keys >= pivot (pivot included)
        newer[i] -= 1  # strictly newer than the pivot in its own group: mid of them
        if sum(newer) < k:  # the pivot is among the k newest, and so is all that is newer
            for j in range(n):
                lo[j] = max(lo[j], newer[j])
            lo[i] = max(lo[i], mid + 1)
        else:  # it is not: nor is anything older
            for j in range(n):
                hi[j] = min(hi[j], newer[j])
            hi[i] = min(hi[i], mid)
