"""Times as people type and read them, for the command line and the dashboard.

``parse_since("1h")`` / ``"30m"`` / ``"2d"`` / ``"90s"`` (that long ago), an ISO date or
date-time in local time (``2026-12-03``, ``2026-12-03T08:30``, ``2026-12-03 08:30:00+01:00``)
or Unix seconds -> Unix seconds.  ``local(ts)`` and ``duration(s)`` format them back.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Optional

_AGO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_since(text: str, now: Optional[float] = None) -> float:
    """Unix seconds for ``text``; ValueError with an example of what is accepted."""
    m = _AGO.match(text)
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a time: use 30m, 1h, 2d, an ISO date like 2026-12-03 or "
                         "2026-12-03T08:30, or Unix seconds") from None
    return when.timestamp()  # naive: local time


def local(ts: Optional[float]) -> str:
    """``2026-12-03 08:30:12`` in local time ("-" for none)."""
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def duration(seconds: Optional[float]) -> str:
    """``850 ms``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
