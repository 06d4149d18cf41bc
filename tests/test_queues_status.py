"""Named queues, task status, cancelling queued tasks, retained results, sink memory.

A task that must stay QUEUED is put on a queue no worker serves; a task that
must be observed RUNNING waits for a gate file the test creates.  Status is
polled with a deadline (``tests.policies.wait_for``), never slept for.
"""

from __future__ import annotations

import concurrent.futures as cf
import os

import pytest

import zq
from tests.policies import rss_kb, touch, wait_file, wait_for

S = zq.TaskState


# --------------------------------------------------------------- task functions

def square(x):
    return x * x


def whoami(tag=None):
    return os.getpid()


def gated(gate, started, value):
    with open(started, "w"):
        pass
    wait_file(gate)
    return value


def gated_failure(gate, started):
    with open(started, "w"):
        pass
    wait_file(gate)
    raise RuntimeError("released into failure")


def blob(n):
    return b"r" * n


def fails():
    raise ValueError("retained failure")


# ------------------------------------------------------------------ named queues

def test_named_queues_route_only_to_workers_serving_them(start, make_client):
    cluster = start(workers=1, executor="thread", concurrency=2)  # serves "default"
    io_worker = cluster.add_worker(["--queue", "io"], wait=True)
    both = cluster.add_worker(["--queue", "io", "--queue", "cpu"], wait=True)
    default_pid = cluster.workers[0].proc.pid
    client = make_client(cluster)

    io = [client.submit_task(whoami, ("io",), queue="io") for _ in range(30)]
    cpu = [client.submit_task(whoami, ("cpu",), queue="cpu") for _ in range(10)]
    default = [client.submit(whoami, "default") for _ in range(30)]

    assert {f.result(timeout=15) for f in default} == {default_pid}
    assert {f.result(timeout=15) for f in cpu} == {both.proc.pid}
    io_pids = {f.result(timeout=15) for f in io}
    assert io_pids <= {io_worker.proc.pid, both.proc.pid} and io_pids
    assert all(f.envelope.queue == "io" for f in io)
    assert all(f.envelope.queue == "cpu" for f in cpu)
    assert all(f.envelope.queue == "default" for f in default)


def test_task_on_unserved_queue_stays_queued_until_cancelled(start, make_client):
    cluster = start(workers=1, executor="thread", concurrency=2)
    client = make_client(cluster)
    observer = make_client(cluster)
    fut = client.submit_task(square, (3,), queue="nobody-serves-this")
    # a later task on a served queue completing shows the cluster has seen and routed both
    assert client.submit(square, 2).result(timeout=10) == 4
    assert not fut.done()
    assert client.get_status(fut.task_id) is S.QUEUED
    assert observer.get_status(fut.task_id) is S.QUEUED

    assert client.cancel(fut.task_id) is True
    with pytest.raises(cf.CancelledError):
        fut.result(timeout=10)
    assert fut.cancelled()
    assert client.get_status(fut.task_id) is S.CANCELED
    assert observer.get_status(fut.task_id) is S.CANCELED
    assert client.cancel(fut.task_id) is True  # still will not run


def test_future_cancel_of_queued_tasks(start, make_client):
    """Many cancels, because a cancel once raced with the CANCELED result settling the
    same future (RuntimeError 'Future in unexpected state', about 3% of calls)."""
    cluster = start(workers=1, executor="thread", concurrency=2)
    client = make_client(cluster)
    observer = make_client(cluster)
    futs = [client.submit_task(square, (i,), queue="nobody-serves-this") for i in range(300)]
    assert client.submit(square, 2).result(timeout=10) == 4  # all 300 were routed by now
    errors = []
    for f in futs:
        try:
            assert f.cancel() is True
        except RuntimeError as exc:
            errors.append(exc)
    assert not errors, f"{len(errors)} of {len(futs)} cancel() calls raised, e.g. {errors[0]!r}"
    for f in futs:
        assert f.cancelled() and f.done()
        with pytest.raises(cf.CancelledError):
            f.result(timeout=10)
    first, last = futs[0].task_id, futs[-1].task_id
    assert client.get_status(first) is S.CANCELED and client.get_status(last) is S.CANCELED
    for tid in (first, last):
        wait_for(lambda: observer.get_status(tid) is S.CANCELED, 10, "CANCELED at the ventilator",
                 show=lambda: observer.get_status(tid))
    assert futs[0].cancel() is True  # idempotent


def test_cancel_of_a_finished_task_is_false(client):
    fut = client.submit(square, 5)
    assert fut.result(timeout=10) == 25
    assert client.cancel(fut.task_id) is False
    assert fut.cancel() is False
    assert client.get_status(fut.task_id) is S.SUCCESS


# ------------------------------------------------------------------------ status

def test_status_moves_queued_running_success_and_failed(start, make_client, tmp_path):
    cluster = start(workers=1, executor="thread", concurrency=2)
    client = make_client(cluster)
    observer = make_client(cluster)  # sees only what the nodes report
    gate_a, gate_b = tmp_path / "gate-a", tmp_path / "gate-b"
    started_a, started_b = tmp_path / "started-a", tmp_path / "started-b"
    a = client.submit_task(gated, (str(gate_a), str(started_a), "a"), queue="late")
    b = client.submit_task(gated_failure, (str(gate_b), str(started_b)), queue="late")
    assert client.submit(square, 2).result(timeout=10) == 4  # both were routed by now

    for c in (client, observer):
        assert c.get_status(a.task_id) is S.QUEUED
        assert c.get_status(b.task_id) is S.QUEUED

    cluster.add_worker(["--queue", "late"], wait=True)  # now someone serves "late"
    wait_for(lambda: started_a.exists() and started_b.exists(), 10, "both tasks to start")
    for c in (client, observer):
        for f in (a, b):
            wait_for(lambda: c.get_status(f.task_id) is S.RUNNING, 10, "status RUNNING",
                     show=lambda: c.get_status(f.task_id))
    assert not a.done() and not b.done()

    touch(gate_a)
    assert a.result(timeout=10) == "a"
    assert client.get_status(a.task_id) is S.SUCCESS
    wait_for(lambda: observer.get_status(a.task_id) is S.SUCCESS, 10, "SUCCESS for the observer",
             show=lambda: observer.get_status(a.task_id))
    assert observer.get_status(b.task_id) is S.RUNNING  # b is still held at its gate

    touch(gate_b)
    with pytest.raises(RuntimeError):
        b.result(timeout=10)
    assert client.get_status(b.task_id) is S.FAILED
    wait_for(lambda: observer.get_status(b.task_id) is S.FAILED, 10, "FAILED for the observer",
             show=lambda: observer.get_status(b.task_id))


def test_status_of_unknown_ids_is_unknown(client):
    assert "PENDING" not in S.__members__
    assert client.get_status("no-such-task") is S.UNKNOWN
    assert client.get_status(f"{client.id}-999999") is S.UNKNOWN
    fut = client.submit(square, 3)
    assert fut.result(timeout=10) == 9
    assert client.get_status(fut.task_id) is S.SUCCESS
    assert client.get_status(fut.task_id + "-nope") is S.UNKNOWN


# -------------------------------------------------------------- retained results

def test_client_retain_result_is_readable_from_another_client(cluster, make_client):
    producer = make_client(cluster, retain_result=True)
    reader = make_client(cluster)
    ok = producer.submit(square, 4)
    bad = producer.submit(fails)
    assert ok.result(timeout=10) == 16
    with pytest.raises(ValueError):
        bad.result(timeout=10)

    r = reader.get_result(ok.task_id, timeout=5)
    assert isinstance(r, zq.Result)
    assert r.task_id == ok.task_id and r.state is S.SUCCESS and r.value == 16
    assert r.name == ok.envelope.name and r.attempts == 1
    rb = reader.get_result(bad.task_id, timeout=5)
    assert rb.state is S.FAILED and rb.error.type == "ValueError" and rb.error.message == "retained failure"
    # reading does not consume
    assert reader.get_result(ok.task_id, timeout=5).value == 16
    # a per-task override wins over the client's default
    not_kept = producer.submit_task(square, (5,), retain_result=False)
    assert not_kept.result(timeout=10) == 25
    with pytest.raises(KeyError):
        reader.get_result(not_kept.task_id, timeout=5)


def test_submit_task_retain_result_and_unretained_results(client, cluster, make_client):
    reader = make_client(cluster)
    kept = client.submit_task(square, (3,), retain_result=True)
    dropped = client.submit(square, 3)
    assert kept.result(timeout=10) == 9 and dropped.result(timeout=10) == 9
    assert reader.get_result(kept.task_id, timeout=5).value == 9
    assert client.get_result(kept.task_id, timeout=5).value == 9
    with pytest.raises(KeyError):
        reader.get_result(dropped.task_id, timeout=5)
    with pytest.raises(KeyError):
        reader.get_result("no-such-task", timeout=5)


def test_get_result_consume_removes_it(client, cluster, make_client):
    reader = make_client(cluster)
    kept = client.submit_task(square, (7,), retain_result=True)
    assert kept.result(timeout=10) == 49
    assert reader.get_result(kept.task_id, timeout=5, consume=True).value == 49
    with pytest.raises(KeyError):
        reader.get_result(kept.task_id, timeout=5)
    with pytest.raises(KeyError):
        client.get_result(kept.task_id, timeout=5, consume=True)


def test_sink_retain_flag_retains_by_default(start, make_client):
    cluster = start(workers=1, executor="thread", concurrency=2, sink_args=["--retain"])
    client = make_client(cluster)  # no retain_result given: the sink decides
    reader = make_client(cluster)
    fut = client.submit(square, 6)
    opted_out = client.submit_task(square, (8,), retain_result=False)
    assert fut.result(timeout=10) == 36 and opted_out.result(timeout=10) == 64
    assert reader.get_result(fut.task_id, timeout=5).value == 36
    with pytest.raises(KeyError):
        reader.get_result(opted_out.task_id, timeout=5)


# ------------------------------------------------------------------- sink memory

def test_sink_memory_does_not_grow_with_unretained_results(start, make_client):
    """Two rounds of 20,000 tasks, each returning 2 KB: the second must not grow the sink.

    Keeping the results would cost over 3 KB a task (60 MB a round).  What the sink
    may keep is its bounded set of recorded task ids (for dropping duplicates),
    about 200 bytes a task until it holds 200,000 ids; so the bound is 600 bytes a
    task (12 MB a round), not a flat 5 MB.  Tasks go in waves of 2,000 so that the
    results in flight at once (transient buffers, which the allocator may keep)
    stay small and alike in both rounds.
    """
    cluster = start(workers=2, executor="thread", concurrency=2)
    client = make_client(cluster)
    sink_pid = cluster.sink.proc.pid
    n, wave, size = 20_000, 2_000, 2048

    def one_round():
        for _ in range(n // wave):
            futs = [client.submit(blob, size) for _ in range(wave)]
            _, not_done = cf.wait(futs, timeout=15)
            assert not not_done, f"{len(not_done)} of {wave} tasks unfinished"
            assert all(len(f.result()) == size for f in futs)

    one_round()  # warm up: allocator arenas, socket buffers, caches
    before = rss_kb(sink_pid)
    one_round()
    growth = (rss_kb(sink_pid) - before) * 1024
    assert growth / n < 600, (f"the sink grew by {growth / 2**20:.1f} MB ({growth / n:.0f} bytes a task) "
                              f"over {n} unretained results")
