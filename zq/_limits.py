"""Parsing of priorities and rate limits (shared by the client and the ventilator)."""

from __future__ import annotations

import re

PRIORITIES = {"high": 10, "normal": 0, "low": -10}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)?\s*$")
_PERIOD = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
           "h": 3600.0, "hour": 3600.0, None: 1.0}


def parse_priority(value: "str | int | None") -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"priority must be high, normal, low or an int, not {value!r}")
    if isinstance(value, str):
        try:
            return PRIORITIES[value.lower()]
        except KeyError:
            raise ValueError(f"priority must be high, normal, low or an int, not {value!r}") from None
    return value


def parse_rate(value: str) -> tuple[float, float]:
    """``"100/m"`` -> (100 tokens, per 60 s)."""
    m = _RATE.match(value or "")
    if not m:
        raise ValueError(f"rate limit must look like 100/m, 10/s or 1000/h, not {value!r}")
    n = float(m.group(1))
    if n <= 0:
        raise ValueError("a rate limit needs a positive count")
    return n, _PERIOD[m.group(2)]
