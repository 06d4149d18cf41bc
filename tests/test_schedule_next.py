"""``registry()["schedules"]``: each schedule says when it runs next (jitter included),
and its start, end and jitter, so the dashboard computes nothing itself."""

from __future__ import annotations

import datetime as dt

from zq.nodes.scheduler import Scheduler


def describe(info: dict, now: float, fire_at: tuple = ()) -> dict:
    s = Scheduler()
    s.register("t", "default", info)
    for t in fire_at:
        s.due(t)
    (d,) = s.describe(now)
    return d


def test_every_runs_next_on_its_grid_from_start():
    d = describe({"every": 60.0, "start": 30.0}, now=1000.0, fire_at=(1000.0,))
    assert d["next_run"] == 1050.0 and d["start"] == 30.0 and d["end"] is None and d["jitter"] == 0.0
    assert describe({"every": 60.0}, now=1000.0, fire_at=(1000.0,))["next_run"] == 1020.0
    # a slot come and not fired yet (the ventilator was down): it fires at once
    assert describe({"every": 60.0}, now=1000.0)["next_run"] == 960.0
    assert describe({"every": 60.0, "start": 5000.0}, now=1000.0)["next_run"] == 5000.0


def test_a_due_slot_not_fired_yet_is_the_next_run_and_jitter_is_added():
    d = describe({"every": 60.0, "jitter": 10.0}, now=1000.0)
    assert 960.0 <= d["next_run"] <= 970.0  # slot 960 waits out its jitter
    d = describe({"every": 60.0, "jitter": 10.0}, now=1100.0, fire_at=(1100.0,))
    assert d["last_slot"] == 1080.0 and 1140.0 <= d["next_run"] <= 1150.0 and d["jitter"] == 10.0


def test_end_and_max_runs_stop_the_next_run():
    assert describe({"every": 60.0, "end": 1010.0}, now=1000.0, fire_at=(1000.0,))["next_run"] is None
    assert describe({"every": 60.0, "end": 1020.0}, now=1000.0, fire_at=(1000.0,))["next_run"] == 1020.0
    assert describe({"every": 60.0, "max_runs": 1}, now=1100.0, fire_at=(1100.0,))["next_run"] is None


def test_cron_runs_next_in_its_time_zone():
    now = dt.datetime(2026, 12, 3, 8, 7, 0, tzinfo=dt.timezone.utc).timestamp()
    d = describe({"cron": "*/15 * * * *", "tz": "UTC"}, now=now, fire_at=(now,))
    assert d["next_run"] == dt.datetime(2026, 12, 3, 8, 15, tzinfo=dt.timezone.utc).timestamp()
