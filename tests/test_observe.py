"""What the ventilator tells about its workers (stats: silent, running/prefetched, lost
workers), schedules (next runs), history filters and error details — for ``zq http``."""

from __future__ import annotations

import os
import uuid

import pytest

import zq
from tests.lifecycle_tasks import IMPORT_ARGS, gated, touch, wait_for

S = zq.TaskState


def uid() -> str:
    return uuid.uuid4().hex[:8]


def test_stats_split_running_from_prefetched_and_say_how_long_a_worker_is_silent(start, make_client, tmp_path):
    cluster = start(workers=1, executor="thread", concurrency=2, worker_args=["--prefetch", "3"])
    c = make_client(cluster)
    gate = str(tmp_path / "gate")
    futs = [c.submit(gated, gate) for _ in range(5)]
    # 2 run, 3 wait on the worker (prefetched): RESERVED, not RUNNING
    wait_for(lambda: c.count_tasks(state="RUNNING") == 2 and c.count_tasks(state="RESERVED") == 3,
             15, what="2 running, 3 reserved")
    w = c.stats()["ventilator"]["workers"][0]
    assert (w["running"], w["prefetched"]) == (2, 3)
    assert 0 <= w["silent"] < 5
    touch(gate)
    for f in futs:
        f.result(30)


def test_a_lost_worker_is_listed_with_its_cause_and_counted(start, make_client):
    cluster = start(workers=1, executor="thread", concurrency=1)
    c = make_client(cluster)
    wait_for(lambda: c.stats()["ventilator"]["workers"], 15, what="the worker registered")
    w = c.stats()["ventilator"]["workers"][0]
    cluster.workers[0].kill()
    st = wait_for(lambda: (s := c.stats()["ventilator"])["lost_workers"] and s, 15, what="the worker lost")
    lost = st["lost_workers"][0]
    assert (lost["id"], lost["host"], lost["pid"]) == (w["id"], w["host"], w["pid"])
    assert "heartbeat" in lost["cause"] and lost["lost_at"] > 0
    assert st["workers_lost"] == {"heartbeat": 1}
    assert st["workers"] == []
