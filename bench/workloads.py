"""Task functions used by the benchmarks.

They live in an installed package so workers import them by reference (zq
pickles functions from ``bench`` by reference, not by value).
"""

from __future__ import annotations

from typing import Any


def noop(x: Any) -> Any:
    """The no-op task: returns its argument."""
    return x


def nbytes(x: Any) -> int:
    """Consume a payload, return only its length (one-way transfer)."""
    return len(x) if not isinstance(x, memoryview) else x.nbytes


def nap(seconds: float) -> float:
    """A task that waits: ``seconds`` of wall time, no CPU (the 10 ms tasks of --scale)."""
    import time

    time.sleep(seconds)
    return seconds
