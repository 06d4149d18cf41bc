"""Times typed on the command line (``--since``) and shown back."""

import datetime as dt

import pytest

from zq.nodes.when import duration, local, parse_since


def test_relative_times_count_back_from_now():
    assert parse_since("30m", now=10_000.0) == 10_000.0 - 1800
    assert parse_since("1h", now=10_000.0) == 10_000.0 - 3600
    assert parse_since("2d", now=1e6) == 1e6 - 2 * 86400
    assert parse_since("1.5h", now=1e6) == 1e6 - 5400


def test_iso_dates_are_local_time_and_unix_seconds_pass_through():
    assert parse_since("2026-12-03") == dt.datetime(2026, 12, 3).timestamp()
    assert parse_since("2026-12-03T08:30") == dt.datetime(2026, 12, 3, 8, 30).timestamp()
    assert parse_since("2026-12-03T08:30:00+00:00") == dt.datetime(2026, 12, 3, 8, 30,
                                                                    tzinfo=dt.timezone.utc).timestamp()
    assert parse_since("1796284329.5") == 1796284329.5


def test_a_mistake_says_what_is_accepted():
    with pytest.raises(ValueError, match="use 30m, 1h, 2d, an ISO date"):
        parse_since("yesterday")


def test_formats():
    assert local(None) == "-" and local(dt.datetime(2026, 12, 3, 8, 30, 12).timestamp()) == "2026-12-03 08:30:12"
    assert [duration(x) for x in (None, 0.85, 12.34, 245, 7380)] == ["-", "850 ms", "12.3 s", "4 min 05 s",
                                                                    "2 h 03 min"]
