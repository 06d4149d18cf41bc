"""A worker's busy slots as the ventilator shows them (stats ``running``, ``zq_slots_busy``):
never more than its slots.  A task stays RUNNING until its DONE, which waits for the sink's
ACK, while the worker already runs the next ones: counting RUNNING tasks said 11 busy slots
of 2.  The worker now says how many slots are busy (STARTED's ``busy``)."""

from __future__ import annotations

import time

import pytest

from tests.lifecycle_tasks import next_message, wait_for
from tests.test_observe import _raw_worker

SLOTS = 2


def _stream_and_watch(c, fn, args: list) -> tuple[int, list[int]]:
    """Submit ``fn(arg)`` for each arg and poll the worker's ``running`` until all are done:
    (the highest seen, every value seen)."""
    futs = [c.submit(fn, a) for a in args]
    seen: list[int] = []
    deadline = time.monotonic() + 60
    while not all(f.done() for f in futs):
        assert time.monotonic() < deadline, "the tasks did not finish"
        workers = c.stats()["ventilator"]["workers"]
        if workers:
            seen.append(workers[0]["running"])
    for f in futs:
        f.result(30)
    return max(seen, default=0), seen


def _next_error(sock, timeout: float = 15.0):
    from zq import protocol as P

    return next_message(sock, P.ERROR, timeout)


@pytest.mark.parametrize("task", ["nap", "noop"])
def test_running_never_exceeds_the_slots_while_tasks_stream(start, make_client, task):
    """3 ms tasks one per slot, and sub-millisecond ones the worker batches: the worker's
    ``running`` reaches its 2 slots and never goes past them."""
    from zq.bench.workloads import nap, noop

    cluster = start(workers=1, executor="thread", concurrency=SLOTS)
    c = make_client(cluster)
    # a round of 1,000 naps lasts 1.5 s; one of no-ops a few polls: several then
    fn, arg, min_rounds = (nap, 0.003, 1) if task == "nap" else (noop, 1, 10)
    for f in [c.submit(fn, arg) for _ in range(300)]:  # warm-up: the worker measures its tasks
        f.result(30)
    highest, seen, rounds = 0, [], 0
    while rounds < min_rounds or (highest < SLOTS and rounds < 50):
        h, s = _stream_and_watch(c, fn, [arg] * 1000)
        assert h <= SLOTS, f"running {h} > {SLOTS} slots (seen: {sorted(set(s))})"
        highest, seen, rounds = max(highest, h), seen + s, rounds + 1
    assert highest == SLOTS, f"never saw both slots busy in {len(seen)} polls"
    wait_for(lambda: c.stats()["ventilator"]["workers"][0]["running"] == 0, 15, what="idle again")


def test_a_bad_busy_count_is_refused_and_counted(start, make_client):
    from zq import protocol as P

    cluster = start(workers=0)
    c = make_client(cluster)
    s = _raw_worker(cluster)
    try:
        wait_for(lambda: c.stats()["ventilator"]["workers"], 15, what="the raw worker registered")
        bad = [-1, "2", 2.0, True, None, 10**9, [1]]
        for n, value in enumerate(bad, 1):
            s.send_multipart(P.pack(P.STARTED, {"ids": [], "busy": value}))
            wait_for(lambda: c.stats()["ventilator"]["counters"].get("bad_messages", 0) >= n, 15,
                     what=f"busy={value!r} refused")
            reply = _next_error(s)  # an ERROR says why
            assert "busy" in reply.header["msg"], reply.header
        assert c.stats()["ventilator"]["workers"][0]["running"] == 0
        # a good one is taken: the ventilator lives on and shows it
        s.send_multipart(P.pack(P.STARTED, {"ids": [], "busy": 1}))
        wait_for(lambda: c.stats()["ventilator"]["workers"][0]["running"] == 1, 15, what="busy=1 shown")
        s.send_multipart(P.pack(P.STARTED, {"ids": [], "busy": 0}))
        wait_for(lambda: c.stats()["ventilator"]["workers"][0]["running"] == 0, 15, what="busy=0 shown")
    finally:
        s.close(0)


def test_zq_http_metrics_take_running_as_the_busy_slots():
    """``zq http``'s /metrics: zq_slots_busy is the workers' ``running`` as they say it (no
    clamp hiding a wrong count), a worker's tasks held are its running and prefetched ones."""
    pytest.importorskip("prometheus_client")
    from prometheus_client import generate_latest

    from zq.nodes.web.metrics import registry_for

    stats = {"ventilator": {"workers": [{"id": "w1", "host": "h", "concurrency": 2, "running": 2, "prefetched": 7},
                                        {"id": "w2", "host": "h", "concurrency": 4, "running": 1, "prefetched": 0}]},
             "sink": {}}
    text = generate_latest(registry_for(lambda: stats)).decode()
    for line in ("zq_slots_busy 3.0", "zq_slots_total 6.0", 'zq_worker_tasks_held{host="h",worker="w1"} 9.0',
                 'zq_worker_tasks_held{host="h",worker="w2"} 1.0'):
        assert line in text, line


def test_started_busy_is_kept_checked_first_and_no_ids_is_no_progress():
    """WorkerSide alone (the stand-in of tests/test_worker_side.py): STARTED's busy is kept;
    a bad one changes nothing (not even the ids it came with); a STARTED with only busy is
    not progress for _rebalance (``last_done``); a worker that never said counts its RUNNING
    tasks, at most its slots."""
    from zq import protocol as P
    from zq.envelope import TaskState
    from zq.errors import ProtocolError
    from zq.nodes.vent_workers import WorkerSide
    from tests.test_worker_side import Endpoint, Tasks, held_task, msg

    tasks = Tasks()
    side = WorkerSide(tasks, Endpoint())
    side.on_message(b"w1", msg(P.READY, {"id": "w1", "queues": ["default"], "credit": 5, "concurrency": 1}))
    w = tasks.workers[b"w1"]
    a, b = held_task(tasks, w, "a"), held_task(tasks, w, "b")
    side.on_message(b"w1", msg(P.STARTED, {"ids": ["a", "b"]}))  # an older worker: no busy
    assert w.busy is None and w.slots_busy(tasks.tasks) == 1  # 2 RUNNING, 1 slot
    with pytest.raises(ProtocolError, match="busy"):
        side.on_message(b"w1", msg(P.STARTED, {"ids": [], "busy": -1}))
    assert w.busy is None
    w.last_done = 0.0
    side.on_message(b"w1", msg(P.STARTED, {"ids": [], "busy": 0}))
    assert w.busy == 0 and w.slots_busy(tasks.tasks) == 0 and w.last_done == 0.0
    c = held_task(tasks, w, "c")
    with pytest.raises(ProtocolError):
        side.on_message(b"w1", msg(P.STARTED, {"ids": ["c"], "busy": "1"}))
    assert c.state is TaskState.RESERVED and w.busy == 0 and w.last_done == 0.0
    side.on_message(b"w1", msg(P.STARTED, {"ids": ["c"], "busy": 1}))
    assert c.state is TaskState.RUNNING and w.busy == 1 and w.last_done > 0
    assert (a.state, b.state) == (TaskState.RUNNING, TaskState.RUNNING)
