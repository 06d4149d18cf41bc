"""Lifetime: the rule behind ``zq worker --death-timeout/--idle-timeout`` (clock passed in).
The end-to-end behaviour (a worker that really leaves) is in tests/test_slurm.py and
tests/test_lifecycle.py."""

import pytest

from zq.nodes.worker_lifetime import Lifetime


def test_death_timeout_counts_from_the_last_word_of_the_ventilator_or_from_start():
    life = Lifetime(death_timeout=10, idle_timeout=None, now=100.0)
    assert life.why_stop(109.0, None, busy=True) is None
    assert "never reached" in life.why_stop(111.0, None, busy=True)
    assert life.why_stop(111.0, 105.0, busy=True) is None
    assert "unreachable for 11s" in life.why_stop(116.0, 105.0, busy=False)


def test_idle_timeout_restarts_with_every_task():
    life = Lifetime(death_timeout=None, idle_timeout=5, now=0.0)
    assert life.why_stop(4.0, 4.0, busy=False) is None
    assert life.why_stop(4.5, 4.5, busy=True) is None  # a task came
    assert life.why_stop(9.0, 9.0, busy=False) is None  # idle again since 9.0
    assert life.why_stop(13.9, 13.9, busy=False) is None
    assert "no task for 5s" in life.why_stop(14.1, 14.1, busy=False)


def test_no_timeouts_never_stop_and_bad_values_are_refused():
    life = Lifetime(None, None, now=0.0)
    assert life.why_stop(1e9, None, busy=False) is None
    with pytest.raises(ValueError, match="death_timeout"):
        Lifetime(0, None, now=0.0)
