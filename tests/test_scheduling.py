"""Queues and time: priorities, pause/resume (also across a worker restart and from
the CLI), per-name concurrency and rate limits, disabled names, de-duplication
keys, delays and ETAs, periodic schedules (every=, cron=) and a scheduler restart.

Tests that need a worker of their own add one to the module cluster on a queue
nobody else uses.  ``zq.nodes.scheduler.Schedule`` and ``Scheduler`` are also tested
directly with explicit ``now`` values (and a real SQLite journal file).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import threading
import time
import uuid

import pytest

import zq
from zq.nodes.journal import Journal
from zq.nodes.local import LocalCluster
from zq.nodes.scheduler import Schedule, Scheduler
from tests import lifecycle_tasks as T
from tests.conftest import connect, run_zq
from tests.conftest import running as cluster_running
from tests.lifecycle_tasks import IMPORT_ARGS, lc_env, max_overlap, read_lines, stays, touch, wait_for

S = zq.TaskState
UTC = dt.timezone.utc


def uid() -> str:
    return uuid.uuid4().hex[:8]


_client = connect


@pytest.fixture(scope="module")
def sdir(tmp_path_factory):
    return tmp_path_factory.mktemp("scheduling")


@pytest.fixture(scope="module")
def mcluster(sdir):
    yield from cluster_running(workers=2, executor="thread", concurrency=3, worker_args=IMPORT_ARGS,
                               env=lc_env(sdir))


@pytest.fixture(scope="module")
def mclient(mcluster):
    c = _client(mcluster)
    yield c
    c.shutdown(wait=False, cancel_futures=True)


def own_worker(cluster: LocalCluster, queue: str, *extra: str):
    """A worker serving only ``queue`` (one slot, no prefetch unless ``extra`` says otherwise)."""
    return cluster.add_worker(["--queue", queue, "--concurrency", "1", "--prefetch", "0", *extra], wait=True)


def wait_served(client: zq.Client, queue: str, pid: int) -> None:
    wait_for(lambda: any(w["pid"] == pid and queue in w["queues"]
                         for w in client.stats()["ventilator"]["workers"]), 10,
             what=f"worker {pid} registered for {queue}")


def states(client: zq.Client, futs) -> list:
    return [client.get_status(f.task_id) for f in futs]


# ==================================================================== priorities

def test_high_priority_runs_first(mcluster, mclient):
    q = f"prio-{uid()}"
    w = own_worker(mcluster, q)
    wait_served(mclient, q, w.proc.pid)
    mclient.pause(q)
    order = ["low", "normal", "high", "low", "normal", "high", "low", "high"]
    futs = [mclient.submit_task(T.stamp, (f"{p}{i}",), queue=q, priority=p) for i, p in enumerate(order)]
    wait_for(lambda: all(s is S.PAUSED for s in states(mclient, futs)), 10, what="all PAUSED")
    mclient.resume(q)
    outs = [f.result(15) for f in futs]
    ran = [o["tag"] for o in sorted(outs, key=lambda o: o["start"])]
    assert ran == ["high2", "high5", "high7", "normal1", "normal4", "low0", "low3", "low6"]
    # the envelopes agree with the tasks' own clocks
    by_env = [f.result()["tag"] for f in sorted(futs, key=lambda f: f.envelope.started_at)]
    assert by_env == ran


def test_integer_priorities(mcluster, mclient):
    q = f"iprio-{uid()}"
    w = own_worker(mcluster, q)
    wait_served(mclient, q, w.proc.pid)
    mclient.pause(q)
    futs = [mclient.submit_task(T.stamp, (p,), queue=q, priority=p) for p in (1, -3, 0, 5, 1)]
    wait_for(lambda: all(s is S.PAUSED for s in states(mclient, futs)), 10, what="all PAUSED")
    mclient.resume(q)
    outs = sorted((f.result(15) for f in futs), key=lambda o: o["start"])
    assert [o["tag"] for o in outs] == [5, 1, 1, 0, -3]


def test_bad_priority_is_refused_at_submit(mclient):
    with pytest.raises(ValueError):
        mclient.submit_task(T.stamp, (1,), priority="urgent")


# ================================================================ pause / resume

def test_pause_holds_tasks_paused_and_resume_drops_nothing(mcluster, mclient, sdir):
    q = f"pause-{uid()}"
    w = own_worker(mcluster, q, "--concurrency", "4")
    wait_served(mclient, q, w.proc.pid)
    assert mclient.pause(q) == 0
    log = str(sdir / f"{q}.log")
    futs = [mclient.submit_task(T.mark, (log, str(i)), queue=q) for i in range(10)]
    wait_for(lambda: all(s is S.PAUSED for s in states(mclient, futs)), 10, what="all PAUSED")
    assert mclient.count_tasks(queue=q, state="PAUSED") == 10
    assert {t["state"] for t in mclient.list_tasks(queue=q)} == {"PAUSED"}
    assert mclient.stats()["ventilator"]["queues"][q]["paused"] is True
    # other queues keep going
    assert mclient.submit(T.add, 1, 1).result(10) == 2
    stays(lambda: read_lines(log) == [], 0.3, what="nothing ran while paused")
    assert mclient.resume(q) == 10
    assert sorted(int(f.result(10)) for f in futs) == list(range(10))
    assert sorted(int(x) for x in read_lines(log)) == list(range(10))  # each ran once
    assert mclient.stats()["ventilator"]["queues"][q]["paused"] is False


def test_pause_and_resume_from_the_cli(mcluster, mclient, sdir):
    q = f"clipause-{uid()}"
    w = own_worker(mcluster, q)
    wait_served(mclient, q, w.proc.pid)
    conn = ["--ventilator", mcluster.endpoints["clients"], "--sink", mcluster.endpoints["sink"]]
    r = run_zq("tasks", "pause", q, *conn)
    assert r.returncode == 0, r.stderr
    assert "paused" in r.stdout and q in r.stdout
    futs = [mclient.submit_task(T.stamp, (i,), queue=q) for i in range(3)]
    wait_for(lambda: all(s is S.PAUSED for s in states(mclient, futs)), 10, what="all PAUSED")
    r = run_zq("tasks", "resume", q, *conn)
    assert r.returncode == 0, r.stderr
    assert "resumed" in r.stdout and "3 task(s)" in r.stdout
    assert [f.result(10)["tag"] for f in futs] == [0, 1, 2]


def test_pause_then_worker_restart_nothing_runs_until_resume_nothing_lost(mcluster, mclient, sdir):
    q = f"prestart-{uid()}"
    log = str(sdir / f"{q}.log")
    gate = str(sdir / f"{q}.gate")
    w = own_worker(mcluster, q, "--concurrency", "2")
    wait_served(mclient, q, w.proc.pid)
    try:
        running = mclient.submit_task(T.mark, (log, "first", gate), queue=q)
        wait_for(lambda: read_lines(log) == ["first"], 10, what="the first task running")
        mclient.pause(q)
        futs = [mclient.submit_task(T.mark, (log, f"b{i}"), queue=q) for i in range(4)]
        wait_for(lambda: all(s is S.PAUSED for s in states(mclient, futs)), 10, what="queued tasks PAUSED")
        assert mclient.get_status(running.task_id) is S.RUNNING
        w.kill()  # the worker dies holding a running task
        w2 = own_worker(mcluster, q, "--concurrency", "2")
        wait_served(mclient, q, w2.proc.pid)
        # its task is handed back to the paused queue, not to the new worker
        wait_for(lambda: mclient.get_status(running.task_id) is S.PAUSED, 10,
                 what="the lost worker's task back in the paused queue")
        stays(lambda: read_lines(log) == ["first"]
              and all(s is S.PAUSED for s in states(mclient, [running, *futs])), 0.5,
              what="nothing runs while the queue is paused")
        touch(gate)
        mclient.resume(q)
        assert running.result(10) == "first"
        assert running.envelope.attempts == 2
        assert [f.result(10) for f in futs] == [f"b{i}" for i in range(4)]
    finally:
        touch(gate)
    lines = read_lines(log)
    assert sorted(lines) == sorted(["first", "first", "b0", "b1", "b2", "b3"])


# ===================================================== concurrency and rate limits

def test_max_concurrency_holds_across_two_workers(mclient):
    futs = [mclient.submit(T.limited, i, 0.3) for i in range(8)]
    outs = [f.result(20) for f in futs]
    peak = max_overlap([(o["start"], o["end"]) for o in outs])
    assert peak <= 2, f"{peak} lc.limited tasks ran at once (max_concurrency=2)"
    assert peak == 2  # and the limit is not a serialisation
    assert all(f.envelope.state is S.SUCCESS for f in futs)


def test_max_concurrency_applies_to_tasks_submitted_by_name(make_cluster, make_client, tmp_path):
    cluster = make_cluster(workers=1, executor="thread", concurrency=4, worker_args=IMPORT_ARGS,
                           env=lc_env(tmp_path))
    client = make_client(cluster)
    T.wait_registered(client, "lc.limited")
    futs = [client.submit_by_name("lc.limited", [i, 0.3]) for i in range(6)]
    outs = [f.result(15) for f in futs]
    peak = max_overlap([(o["start"], o["end"]) for o in outs])
    assert peak <= 2, f"{peak} lc.limited tasks ran at once (max_concurrency=2)"


def test_rate_limited_tasks_wait_and_do_not_fail(mclient):
    n = 10
    futs = [mclient.submit(T.rated, i) for i in range(n)]
    outs = [f.result(20) for f in futs]
    assert sorted(o["tag"] for o in outs) == list(range(n))
    starts = sorted(o["start"] for o in outs)
    # 5 at once (the bucket's burst), then one every 0.2 s
    assert starts[-1] - starts[0] >= (n - 5) / 5 - 0.35, f"spread {starts[-1] - starts[0]:.2f}s for 5/s"


def test_disabled_task_name_waits_until_enabled(mcluster, mclient, sdir):
    name = f"lc.disabled-{uid()}"
    log = str(sdir / f"{name}.log")
    mclient.disable_task(name)
    assert name in mclient.stats()["ventilator"]["disabled"]
    fut = mclient.submit_task(T.mark, (log, "ran"), name=name)
    wait_for(lambda: mclient.get_status(fut.task_id) is S.PAUSED, 10, what="disabled task PAUSED")
    assert mclient.submit(T.add, 2, 3).result(10) == 5  # other names run
    stays(lambda: mclient.get_status(fut.task_id) is S.PAUSED and not read_lines(log), 0.3,
          what="the disabled task waits")
    conn = ["--ventilator", mcluster.endpoints["clients"], "--sink", mcluster.endpoints["sink"]]
    r = run_zq("tasks", "enable", name, *conn)
    assert r.returncode == 0 and "enabled" in r.stdout, r.stderr
    assert fut.result(10) == "ran"
    assert read_lines(log) == ["ran"]


# ================================================================ de-duplication

def test_duplicate_key_returns_the_same_task_while_running(mclient, sdir):
    key = f"invoice-{uid()}"
    log = str(sdir / f"{key}.log")
    gate = str(sdir / f"{key}.gate")
    try:
        f1 = mclient.submit_task(T.mark, (log, "one", gate), key=key)
        wait_for(lambda: read_lines(log), 10, what="the keyed task running")
        f2 = mclient.submit_task(T.mark, (log, "two", gate), key=key)
        assert f2 is f1 and f2.task_id == f1.task_id
    finally:
        touch(gate)
    assert f1.result(10) == "one"
    assert read_lines(log) == ["one"]
    # finished (as the ventilator knows it: the result can reach us before its DONE does):
    # the key is free again
    wait_for(lambda: mclient.show_task(f1.task_id)["state"] == "SUCCESS", 10, what="the ventilator saw it finish")
    f3 = mclient.submit_task(T.mark, (log, "three"), key=key)
    assert f3.task_id != f1.task_id
    assert f3.result(10) == "three"


def test_duplicate_key_while_queued(mcluster, mclient, sdir):
    q = f"dedupq-{uid()}"
    key = f"k-{uid()}"
    log = str(sdir / f"{key}.log")
    mclient.pause(q)
    f1 = mclient.submit_task(T.mark, (log, "a"), queue=q, key=key)
    f2 = mclient.submit_task(T.mark, (log, "b"), queue=q, key=key)
    assert f1.task_id == f2.task_id
    assert mclient.count_tasks(queue=q) == 1
    w = own_worker(mcluster, q)
    wait_served(mclient, q, w.proc.pid)
    mclient.resume(q)
    assert f1.result(10) == f2.result(10) == "a"
    assert read_lines(log) == ["a"]


def test_duplicate_key_from_two_clients_at_once_runs_one_task(mcluster, sdir):
    key = f"race-{uid()}"
    name = f"lc.dedup-{uid()}"
    log = str(sdir / f"{key}.log")
    gate = str(sdir / f"{key}.gate")
    clients = [_client(mcluster), _client(mcluster)]
    barrier = threading.Barrier(2)
    futs: list = [None, None]
    errors: list = []

    def go(i: int) -> None:
        try:
            barrier.wait(5)
            futs[i] = clients[i].submit_task(T.mark, (log, f"client{i}", gate), key=key, name=name)
        except BaseException as exc:  # reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        assert not errors, errors
        assert futs[0].task_id == futs[1].task_id
        touch(gate)
        r0, r1 = futs[0].result(10), futs[1].result(10)
        assert r0 == r1 and r0 in ("client0", "client1")
        assert read_lines(log) == [r0]  # the task ran once
        assert clients[0].count_tasks(name=name) == 1
    finally:
        touch(gate)
        for c in clients:
            c.shutdown(wait=False, cancel_futures=True)


# ========================================================================= delays

def test_delay_starts_no_earlier(mclient):
    fut = mclient.submit_task(T.stamp, ("late",), delay=0.8)
    assert mclient.get_status(fut.task_id) in (S.QUEUED, S.PAUSED)
    out = fut.result(10)
    env = fut.envelope
    assert env.started_at >= env.submitted_at + 0.8 - 0.05
    assert out["start"] >= env.submitted_at + 0.8 - 0.05


def test_eta_starts_no_earlier(mclient):
    eta = dt.datetime.now(UTC) + dt.timedelta(seconds=0.8)
    fut = mclient.submit_task(T.stamp, ("eta",), eta=eta)
    fut.result(10)
    assert fut.envelope.started_at >= eta.timestamp() - 0.05
    past = mclient.submit_task(T.stamp, ("past",), eta=time.time() - 60)
    assert past.result(10)["tag"] == "past"


def test_delayed_task_does_not_block_the_queue_and_can_be_cancelled(mclient, sdir):
    log = str(sdir / f"delayed-{uid()}.log")
    late = mclient.submit_task(T.mark, (log, "late"), delay=1.0)
    assert mclient.submit(T.add, 1, 2).result(5) == 3
    assert not late.done()
    assert mclient.cancel(late.task_id) is True
    assert late.cancelled()
    wait_for(lambda: mclient.get_status(late.task_id) is S.CANCELED, 5, what="CANCELED")
    stays(lambda: read_lines(log) == [], 1.3, what="a cancelled delayed task never runs")


def test_bad_delay_options_are_refused(mclient):
    with pytest.raises(ValueError):
        mclient.submit_task(T.stamp, delay=-1)
    with pytest.raises(ValueError):
        mclient.submit_task(T.stamp, delay=1, eta=time.time() + 1)


# ============================================== schedules: Schedule and Scheduler

def ts(*args) -> float:
    return dt.datetime(*args, tzinfo=UTC).timestamp()


def test_every_slots_are_aligned_and_fire_once():
    s = Schedule("n", "q", {"every": 10.0})
    assert s.latest_slot(1005.0) == 1000.0
    assert s.due(1005.0) == 1000.0
    assert s.due(1009.9) is None  # same slot
    assert s.due(1010.0) == 1010.0
    assert s.due(1100.5) == 1100.0  # missed slots: only the latest, once
    assert s.due(1100.6) is None
    assert s.runs == 3


def test_every_with_start_end_and_max_runs():
    s = Schedule("n", "q", {"every": 10.0, "start": 1003.0, "end": 1025.0})
    assert s.due(1000.0) is None  # before start
    assert s.due(1003.0) == 1003.0
    assert s.due(1014.0) == 1013.0
    assert s.due(1030.0) == 1023.0
    assert s.due(1040.0) is None  # 1033 is after end
    m = Schedule("m", "q", {"every": 1.0, "max_runs": 2})
    assert [m.due(t) for t in (10.0, 11.0, 12.0, 13.0)] == [10.0, 11.0, None, None]


def test_cron_in_a_time_zone_gives_five_minute_slots():
    s = Schedule("c", "q", {"cron": "*/5 * * * *", "tz": "Europe/Paris"})
    now = ts(2025, 7, 1, 12, 3, 27)
    slot = s.latest_slot(now)
    assert slot == ts(2025, 7, 1, 12, 0) and slot % 300 == 0
    assert s.due(now) == slot
    assert s.due(now + 60) is None
    nxt = s.due(ts(2025, 7, 1, 12, 5, 0))
    assert nxt == ts(2025, 7, 1, 12, 5)
    fired = [s.due(ts(2025, 7, 1, 12, m, 30)) for m in range(6, 30)]
    assert [f for f in fired if f is not None] == [ts(2025, 7, 1, 12, m) for m in range(10, 30, 5)]


def test_cron_follows_the_time_zone_and_daylight_saving():
    s = Schedule("d", "q", {"cron": "0 9 * * *", "tz": "Europe/Paris"})
    assert s.latest_slot(ts(2025, 7, 1, 12, 0)) == ts(2025, 7, 1, 7, 0)  # CEST = UTC+2
    assert s.latest_slot(ts(2025, 1, 15, 12, 0)) == ts(2025, 1, 15, 8, 0)  # CET = UTC+1
    assert s.latest_slot(ts(2025, 7, 1, 6, 0)) == ts(2025, 6, 30, 7, 0)  # before today's 09:00
    k = Schedule("k", "q", {"cron": "0 * * * *", "tz": "Asia/Kolkata"})  # UTC+5:30
    assert k.latest_slot(ts(2025, 7, 1, 12, 10)) == ts(2025, 7, 1, 11, 30)
    u = Schedule("u", "q", {"cron": "*/5 * * * *"})  # default UTC
    assert u.latest_slot(ts(2025, 7, 1, 12, 3)) == ts(2025, 7, 1, 12, 0)


def test_cron_with_start_and_max_runs():
    start = ts(2025, 7, 1, 12, 7)
    s = Schedule("c", "q", {"cron": "*/5 * * * *", "start": start, "max_runs": 2})
    assert s.due(ts(2025, 7, 1, 12, 6)) is None
    assert s.due(ts(2025, 7, 1, 12, 8)) is None  # the 12:05 slot is before start
    assert s.due(ts(2025, 7, 1, 12, 10)) == ts(2025, 7, 1, 12, 10)
    assert s.due(ts(2025, 7, 1, 12, 15)) == ts(2025, 7, 1, 12, 15)
    assert s.due(ts(2025, 7, 1, 12, 20)) is None  # max_runs


def test_jitter_is_deterministic_per_slot_and_delays_the_firing():
    a = Schedule("j", "q", {"every": 60.0, "jitter": 10.0})
    b = Schedule("j", "q", {"every": 60.0, "jitter": 10.0})
    slots = [6000.0 + 60 * k for k in range(6)]
    ja = [a.jitter_for(x) for x in slots]
    assert ja == [b.jitter_for(x) for x in slots]  # the same on any ventilator
    assert all(0 <= j < 10 for j in ja)
    assert len(set(ja)) > 1  # it varies with the slot
    j = ja[0]
    assert a.due(slots[0] + j - 0.01) is None
    assert a.due(slots[0] + j + 0.01) == slots[0]
    other = Schedule("other-name", "q", {"every": 60.0, "jitter": 10.0})
    assert [other.jitter_for(x) for x in slots] != ja
    cron = Schedule("cj", "q", {"cron": "*/5 * * * *", "jitter": 30.0})
    slot = ts(2025, 7, 1, 12, 0)
    jc = cron.jitter_for(slot)
    assert cron.due(slot + jc - 0.01) is None and cron.due(slot + jc + 0.01) == slot


def test_invalid_schedules_are_refused():
    with pytest.raises(ValueError):
        Schedule("x", "q", {"cron": "not a cron"})
    with pytest.raises(ValueError):
        Schedule("x", "q", {"every": 0})
    with pytest.raises(ValueError):
        Schedule("x", "q", {"every": 1.0, "cron": "* * * * *"})
    with pytest.raises(ValueError):
        zq.task(every=1.0, cron="* * * * *")
    with pytest.raises(ValueError):
        zq.task(cron="61 * * * *")


def test_scheduler_restart_with_a_journal_file_never_fires_a_slot_twice(tmp_path):
    path = str(tmp_path / "journal.db")
    j = Journal(path)
    s = Scheduler(j.db)
    s.register("n", "q", {"every": 10.0})
    s.register("m", "q", {"every": 10.0, "max_runs": 2})
    assert sorted(s.due(1005.0)) == [("m", "q", 1000.0), ("n", "q", 1000.0)]
    assert s.due(1008.0) == []
    j.close()  # the ventilator stops (or dies) ...
    j2 = Journal(path)  # ... and starts again on the same file
    s2 = Scheduler(j2.db)
    s2.register("n", "q", {"every": 10.0})
    s2.register("m", "q", {"every": 10.0, "max_runs": 2})
    assert s2.due(1009.0) == []  # slot 1000 fired before the restart
    assert sorted(s2.due(1010.0)) == [("m", "q", 1010.0), ("n", "q", 1010.0)]
    assert s2.due(1055.0) == [("n", "q", 1050.0)]  # m reached max_runs; n skips missed slots
    assert {d["name"]: d["runs"] for d in s2.describe()} == {"n": 3, "m": 2}
    j2.close()
    s3 = Scheduler(Journal(path).db)
    s3.register("m", "q", {"every": 10.0, "max_runs": 2})
    assert s3.due(2000.0) == []  # max_runs survives restarts too


# ===================================================== schedules on a real cluster

def sched_log(directory, name):
    return [json.loads(line)[0] for line in read_lines(os.path.join(str(directory), f"{name}.log"))]


def slot_of(task_id: str) -> float:
    return float(task_id.rsplit(":", 1)[1])


def test_every_second_with_max_runs_runs_exactly_that_many(make_cluster, make_client, tmp_path):
    cluster = make_cluster(workers=1, executor="thread", concurrency=2, worker_args=IMPORT_ARGS,
                           env=lc_env(tmp_path, **{T.ENV_SCHEDULES: "lc.one"}))
    client = make_client(cluster)
    ids = wait_for(lambda: len(sched_log(tmp_path, "lc.one")) >= 2 and sched_log(tmp_path, "lc.one"), 8,
                   what="two runs of lc.one")
    assert all(i.startswith("sched:lc.one:") for i in ids)
    assert slot_of(ids[1]) - slot_of(ids[0]) == 1.0
    sched = {s["name"]: s for s in client.registry()["schedules"]}["lc.one"]
    assert sched["runs"] == 2 and sched["max_runs"] == 2
    listed = [t["task_id"] for t in client.list_tasks(name="lc.one", limit=None)]
    assert sorted(listed) == sorted(ids)
    stays(lambda: len(sched_log(tmp_path, "lc.one")) == 2, 1.3, what="no third run")


def test_every_half_second_with_max_runs_3_runs_exactly_3(make_cluster, make_client, tmp_path):
    cluster = make_cluster(workers=1, executor="thread", concurrency=2, worker_args=IMPORT_ARGS,
                           env=lc_env(tmp_path, **{T.ENV_SCHEDULES: "lc.half"}))
    client = make_client(cluster)
    wait_for(lambda: {s["name"]: s for s in client.registry()["schedules"]}.get("lc.half", {}).get("runs") == 3,
             8, what="the scheduler fired 3 slots")
    ids = wait_for(lambda: len(sched_log(tmp_path, "lc.half")) >= 3 and sched_log(tmp_path, "lc.half"), 3,
                   what="three runs of lc.half")
    assert len(ids) == len(set(ids)) == 3
    assert all(i.startswith("sched:lc.half:") for i in ids)
    slots = sorted(slot_of(i) for i in ids)
    assert [b - a for a, b in zip(slots, slots[1:])] == [0.5, 0.5]


def test_scheduler_restart_never_fires_a_slot_twice(make_cluster, make_client, tmp_path):
    journal = str(tmp_path / "vent.db")
    cluster = make_cluster(workers=1, executor="thread", concurrency=2, worker_args=IMPORT_ARGS,
                           ventilator_args=["--journal", journal],
                           env=lc_env(tmp_path, **{T.ENV_SCHEDULES: "lc.tick"}))
    client = make_client(cluster)

    def done_ids():
        return {t["task_id"] for t in client.list_tasks(name="lc.tick", state="SUCCESS", limit=None)}

    before = wait_for(lambda: len(sched_log(tmp_path, "lc.tick")) >= 2 and sched_log(tmp_path, "lc.tick"), 8,
                      what="two runs before the restart")
    wait_for(lambda: before[-1] in done_ids(), 5, what="the latest run finished")
    # right after a slot fired and finished: the restarted ventilator comes back within that slot
    cluster.restart("ventilator")
    last = slot_of(before[-1])
    after = wait_for(lambda: (lambda ids: ids if sum(slot_of(i) > last for i in ids) >= 2 else None)(
        sched_log(tmp_path, "lc.tick")), 10, what="two runs after the restart")
    assert len(after) == len(set(after)), f"a slot ran twice: {after}"
    slots = [slot_of(i) for i in after]
    assert slots == sorted(slots) and all(b - a >= 1.0 for a, b in zip(slots, slots[1:]))
    listed = [t["task_id"] for t in client.list_tasks(name="lc.tick", limit=None)]
    assert len(listed) == len(set(listed))
    assert set(before) <= set(listed)  # the history came back with the journal


def journaled(path: str, task_id: str) -> bool:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT 1 FROM tasks WHERE task_id = ?", (task_id,)).fetchone() is not None
    except sqlite3.OperationalError:  # not created yet
        return False
    finally:
        db.close()


def test_delayed_keyed_task_survives_a_ventilator_restart(make_cluster, make_client, tmp_path):
    journal = str(tmp_path / "vent.db")
    cluster = make_cluster(workers=1, executor="thread", concurrency=2, ventilator_args=["--journal", journal],
                           env=lc_env(tmp_path))
    client = make_client(cluster)
    log = str(tmp_path / "delayed.log")
    key = f"delayed-{uid()}"
    fut = client.submit_task(T.mark, (log, "once"), delay=1.5, key=key)
    wait_for(lambda: journaled(journal, fut.task_id), 5, what="the task in the journal")
    cluster.restart("ventilator")
    # the restarted ventilator still knows the key (from its journal)
    again = wait_for(lambda: _try(lambda: client.submit_task(T.mark, (log, "twice"), key=key)), 10,
                     what="a keyed submit answered after the restart")
    assert again.task_id == fut.task_id
    assert fut.result(10) == "once"
    assert fut.envelope.started_at >= fut.envelope.submitted_at + 1.5 - 0.05
    stays(lambda: read_lines(log) == ["once"], 0.3, what="ran once")


def test_keyed_submit_is_durable_once_answered(make_cluster, make_client, tmp_path):
    journal = str(tmp_path / "vent.db")
    cluster = make_cluster(workers=1, executor="thread", concurrency=2, ventilator_args=["--journal", journal],
                           env=lc_env(tmp_path))
    client = make_client(cluster)
    log = str(tmp_path / "keyed.log")
    key = f"durable-{uid()}"
    big = b"x" * (16 << 20)  # a large task: its journal commit takes a while
    fut = client.submit_task(T.mark_padded, (log, "once", big), delay=1.0, key=key)
    cluster.restart("ventilator")  # killed right after it answered
    again = wait_for(lambda: _try(lambda: client.submit_task(T.mark_padded, (log, "twice", b""), key=key)), 10,
                     what="a keyed submit answered after the restart")
    assert again.task_id == fut.task_id
    assert fut.result(10) == len(big)
    stays(lambda: read_lines(log) == ["once"], 0.5, what="the keyed task ran once")


def _try(fn):
    try:
        return fn()
    except (zq.ZqError, TimeoutError):
        return None
