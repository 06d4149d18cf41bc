"""What the ventilator tells about its workers (stats: silent, running/prefetched, lost
workers), schedules (next runs), history filters and error details — for ``zq http``."""

from __future__ import annotations

import uuid

import pytest

import zq
from tests.lifecycle_tasks import gated, next_message, touch, wait_for

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


# -- error details in the history ----------------------------------------------------------


def _raw_worker(cluster):
    import zmq

    from zq import protocol as P

    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.ROUTING_ID, b"raw-" + uuid.uuid4().hex[:6].encode())
    s.connect(cluster.endpoints["workers"])
    s.send_multipart(P.pack(P.READY, {"id": "raw", "queues": ["default"], "credit": 10, "host": "rawhost",
                                      "pid": 4242, "executor": "thread", "concurrency": 1}))
    return s


def _next_tasks(sock, timeout: float = 15.0):
    from zq import protocol as P

    return P.unpack_tasks(next_message(sock, P.TASKS, timeout))[0]


def test_a_failure_a_worker_reports_keeps_its_type_message_traceback_host_and_start(start, make_client):
    from zq import protocol as P

    cluster = start(workers=0)
    c = make_client(cluster)
    s = _raw_worker(cluster)
    try:
        fut = c.submit(pow, 2, 3)
        (spec,) = _next_tasks(s)
        s.send_multipart(P.pack(P.STARTED, {"ids": [spec.task_id]}))
        tb = "Traceback (most recent call last):\n" + "x" * 20_000 + "\nValueError: bad"
        s.send_multipart(P.pack(P.DONE, {"ids": [spec.task_id], "states": ["FAILED"], "credit": 1,
                                         "errors": {spec.task_id: ["ValueError", "bad", tb]}}))
        t = wait_for(lambda: (x := c.show_task(spec.task_id))["state"] == "FAILED" and x, 15,
                     what="the task failed in the history")
        assert t["error"] == "ValueError"
        assert t["error_type"] == "ValueError" and t["message"] == "bad"
        assert t["traceback"].endswith("ValueError: bad") and len(t["traceback"]) <= 8192
        assert (t["host"], t["pid"]) == ("rawhost", 4242)
        assert t["started_at"] is not None and t["submitted_at"] <= t["started_at"] <= t["finished_at"]
        # a DONE with a malformed errors field is refused, and the node lives on
        fut2 = c.submit(pow, 2, 4)
        (spec2,) = _next_tasks(s)
        s.send_multipart(P.pack(P.DONE, {"ids": [spec2.task_id], "states": ["FAILED"], "credit": 1,
                                         "errors": {spec2.task_id: "not a list"}}))
        wait_for(lambda: c.stats()["ventilator"]["counters"].get("bad_messages", 0) >= 1, 15,
                 what="the bad DONE counted")
        assert c.show_task(spec2.task_id)["state"] == "RESERVED"
        # one that ran from a batch (no STARTED) says when it started in DONE's "started"
        s.send_multipart(P.pack(P.DONE, {"ids": [spec2.task_id], "states": ["FAILED"], "credit": 1,
                                         "started": {spec2.task_id: "soon"}}))
        wait_for(lambda: c.stats()["ventilator"]["counters"].get("bad_messages", 0) >= 2, 15,
                 what="the DONE with a bad started counted")
        t0 = spec2.submitted_at + 0.25
        s.send_multipart(P.pack(P.DONE, {"ids": [spec2.task_id], "states": ["FAILED"], "credit": 1,
                                         "started": {spec2.task_id: t0}}))
        t = wait_for(lambda: (x := c.show_task(spec2.task_id))["state"] == "FAILED" and x, 15,
                     what="the second task failed in the history")
        assert t["started_at"] == t0
        del fut, fut2
    finally:
        s.close(0)


def test_a_task_failed_by_worker_losses_keeps_the_causes(start, make_client):
    from zq import protocol as P

    cluster = start(workers=0)
    c = make_client(cluster)
    c.submit(pow, 2, 5)
    tid = None
    for _ in range(3):  # three workers in turn take it and go silent
        s = _raw_worker(cluster)
        try:
            (spec,) = _next_tasks(s)
            tid = spec.task_id
            s.send_multipart(P.pack(P.STARTED, {"ids": [tid]}))
        finally:
            s.close(0)
        wait_for(lambda: not c.stats()["ventilator"]["workers"], 15, what="the raw worker lost")
    t = wait_for(lambda: (x := c.show_task(tid))["state"] == "FAILED" and x, 15, what="WorkerLost")
    assert t["error_type"] == "WorkerLost" and "lost its worker 3 times" in t["message"]
    assert len(t["lost"]) == 3 and all("rawhost" in cause for cause in t["lost"])


def test_zq_tasks_show_prints_the_error_and_times_for_people_and_json_on_request(start, make_client):
    import json

    from zq.nodes.when import local
    from tests.conftest import run_zq
    from zq import protocol as P

    cluster = start(workers=0)
    c = make_client(cluster)
    s = _raw_worker(cluster)
    try:
        c.submit(pow, 2, 3)
        (spec,) = _next_tasks(s)
        s.send_multipart(P.pack(P.STARTED, {"ids": [spec.task_id]}))
        tb = 'Traceback (most recent call last):\n  File "x.py", line 1, in f\nKeyError: \'k\''
        s.send_multipart(P.pack(P.DONE, {"ids": [spec.task_id], "states": ["FAILED"], "credit": 1,
                                         "errors": {spec.task_id: ["KeyError", "'k'", tb]}}))
        t = wait_for(lambda: (x := c.show_task(spec.task_id))["state"] == "FAILED" and x, 15, what="failed")
    finally:
        s.close(0)
    conn = ["--ventilator", cluster.endpoints["clients"], "--sink", cluster.endpoints["sink"]]
    r = run_zq("tasks", "show", spec.task_id, *conn)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "FAILED" in out and "KeyError: 'k'" in out and 'File "x.py", line 1, in f' in out
    assert local(t["submitted_at"]) in out and "rawhost" in out and "4242" in out
    assert "\\n" not in out  # the traceback as text, not a JSON string
    r = run_zq("tasks", "show", spec.task_id, "--json", *conn)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["traceback"] == tb


def test_a_batch_of_short_tasks_is_running_one_at_a_time(start, make_client, tmp_path):
    """Tasks shorter than a millisecond go to a slot in batches: only the one running is
    RUNNING, the rest of its batch stays RESERVED (it used to report the whole batch), and
    those that ran with no STARTED still tell when they started (DONE's ``started``)."""
    from zq.bench.workloads import noop

    cluster = start(workers=1, executor="thread", concurrency=1, ventilator_args=["--metrics-port", "0"])
    c = make_client(cluster)
    for _ in range(3):  # the worker learns its tasks are short: it batches them from now on
        for f in [c.submit(noop, i) for i in range(300)]:
            f.result(30)
    gate = str(tmp_path / "gate")
    fs = [c.submit(gated, gate)] + [c.submit(noop, i) for i in range(50)]  # one batch, gated first
    # (those not in its batch may wait at the ventilator: a running task shrinks the prefetch)
    wait_for(lambda: c.get_status(fs[0].task_id) is zq.TaskState.RUNNING, 15, what="the gated task running")
    assert c.count_tasks(state="RUNNING") == 1, c.count_tasks(state="RESERVED")
    touch(gate)
    for f in fs:
        f.result(30)
    pytest.importorskip("prometheus_client")
    from tests.test_node_metrics import scrape, value

    url, n = cluster.ventilator.endpoints["metrics"], 900 + 50
    m = wait_for(lambda: (x := scrape(url)) and value(x, "zq_tasks_total", state="SUCCESS", queue="default",
                                                      name="zq.bench.workloads.noop") == n and x,
                 15, what="the ventilator's metrics")
    assert value(m, "zq_task_run_seconds_count") == n + 1 and value(m, "zq_task_queue_seconds_count") == n + 1


def test_zq_status_shows_prefetched_tasks_and_lost_workers():
    from zq.nodes import status
    from zq.nodes.when import local

    data = {"ventilator": {"endpoints": {"clients": "tcp://v"}, "host": "h", "uptime": 1, "tasks_per_second": 0,
                           "queues": {}, "workers": [{"id": "w1", "host": "h", "executor": "thread", "running": 2,
                                                      "concurrency": 4, "prefetched": 3, "done": 1,
                                                      "queues": ["default"]}],
                           "lost_workers": [{"id": "w2", "host": "h2", "pid": 7, "lost_at": 1.7e9,
                                             "cause": "no heartbeat for 1.3s"}]},
            "sink": {"endpoints": {"endpoint": "tcp://s"}, "host": "h", "results_per_second": 0, "retained": 0,
                     "undelivered": 0}}
    text = status.render(data)
    assert "2/4 +3" in text
    assert f"lost: w2 on h2 (pid 7) at {local(1.7e9)}: no heartbeat for 1.3s" in text


def test_a_real_worker_sends_its_failures_details_to_the_history(start, make_client):
    """The worker's DONE carries the error of each failed task: show_task (and the dashboard,
    and zq tasks show) has its type, message and traceback without a retained result."""
    import operator

    cluster = start(workers=1, executor="thread", concurrency=2)
    c = make_client(cluster, retain_result=False)
    fut = c.submit(operator.truediv, 1, 0)
    with pytest.raises(ZeroDivisionError):
        fut.result(15)
    t = wait_for(lambda: (x := c.show_task(fut.task_id))["state"] == "FAILED" and x.get("error_type") and x,
                 15, what="the failure's details in the history")
    assert t["error_type"] == "ZeroDivisionError" and "division by zero" in t["message"]
    assert "ZeroDivisionError" in t["traceback"] and t["host"] and t["pid"]
