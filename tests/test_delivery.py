"""Delivery guarantees under faults: killed workers, killed executor processes,
killed and restarted sink and ventilator, graceful stop, unreachable nodes."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import time

import pytest

import zq


def slow_square(x, delay=0.05):
    time.sleep(delay)  # sleep-ok: the task's own work
    return x * x


def die_every_time():
    os.kill(os.getpid(), signal.SIGKILL)


def wait_for(cond, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)  # sleep-ok: polling a condition with a deadline
    raise AssertionError(f"timed out waiting for {what}")


def completed(futs, n):
    return sum(f.done() for f in futs) >= n


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_sigkill_worker_mid_run_loses_nothing(make_cluster, make_client, executor):
    cluster = make_cluster(workers=2, executor=executor, concurrency=2)
    client = make_client(cluster)
    futs = [client.submit(slow_square, i) for i in range(120)]
    wait_for(lambda: completed(futs, 10), what="first results")
    victim = cluster.workers[0]
    victim.kill()
    results = [f.result(timeout=60) for f in futs]
    assert results == [i * i for i in range(120)]
    retried = [f.envelope for f in futs if f.envelope.attempts >= 2]
    assert retried, "the killed worker held tasks: some must have run twice"
    assert all(e.lost and "lost" in e.lost[0] for e in retried)


def test_task_killing_its_process_fails_with_workerlost(make_cluster, make_client):
    cluster = make_cluster(workers=1, executor="process", concurrency=2)
    client = make_client(cluster)
    fut = client.submit(die_every_time)
    with pytest.raises(zq.WorkerLost) as info:
        fut.result(timeout=60)
    msg = str(info.value)
    assert "3 times" in msg and "SIGKILL" in msg
    assert fut.envelope.attempts == 3 and len(fut.envelope.lost) == 3
    assert all("SIGKILL" in cause for cause in fut.envelope.lost)
    assert client.submit(slow_square, 3).result(timeout=30) == 9  # still serving


def test_task_killing_its_worker_node_fails_after_three_losses(make_cluster, make_client):
    cluster = make_cluster(workers=3, executor="thread", concurrency=1)
    client = make_client(cluster)
    fut = client.submit(die_every_time)
    with pytest.raises(zq.WorkerLost) as info:
        fut.result(timeout=60)
    assert "no heartbeat" in str(info.value) or "closed" in str(info.value)
    assert len(fut.envelope.lost) == 3
    cluster.add_worker(wait=True)
    assert client.submit(slow_square, 4).result(timeout=30) == 16


def test_sink_sigkill_and_restart_loses_no_result(make_cluster, make_client):
    cluster = make_cluster(workers=2, executor="thread", concurrency=2)
    client = make_client(cluster)
    futs = [client.submit(slow_square, i, 0.02) for i in range(300)]
    wait_for(lambda: completed(futs, 20), what="first results")
    cluster.restart("sink")
    assert [f.result(timeout=60) for f in futs] == [i * i for i in range(300)]
    assert all(f.envelope.attempts == 1 for f in futs)


@pytest.mark.parametrize("journal", [False, True])
def test_ventilator_sigkill_and_restart(make_cluster, make_client, tmp_path, journal):
    extra = ["--journal", str(tmp_path / "journal.db")] if journal else []
    cluster = make_cluster(workers=2, executor="thread", concurrency=2, ventilator_args=extra)
    client = make_client(cluster)
    futs = [client.submit(slow_square, i, 0.02) for i in range(300)]
    wait_for(lambda: completed(futs, 20), what="first results")
    cluster.restart("ventilator")
    assert [f.result(timeout=60) for f in futs] == [i * i for i in range(300)]


def test_journal_resumes_tasks_whose_client_is_gone(make_cluster, make_client, tmp_path):
    journal = str(tmp_path / "journal.db")
    cluster = make_cluster(workers=1, executor="thread", ventilator_args=["--journal", journal])
    client = make_client(cluster)
    # the queue "later" has no worker yet: the tasks wait at the ventilator
    futs = [client.submit_task(slow_square, (i, 0.0), queue="later") for i in range(20)]
    ids = [f.task_id for f in futs]
    wait_for(lambda: client.get_status(ids[-1]) is zq.TaskState.QUEUED, what="tasks queued")
    client.shutdown(wait=False, cancel_futures=False)  # the submitter goes away
    cluster.restart("ventilator")
    cluster.add_worker(["--queue", "later"], wait=True)
    reader = make_client(cluster)

    def retained(tid):
        try:
            return reader.get_result(tid)
        except KeyError:
            return None

    wait_for(lambda: all(retained(t) is not None for t in ids), timeout=30, what="retained results")
    assert [retained(t).value for t in ids] == [i * i for i in range(20)]


def test_sigterm_worker_finishes_running_and_hands_back_the_rest(make_cluster, make_client):
    cluster = make_cluster(workers=1, executor="thread", concurrency=2, worker_args=["--grace", "20"])
    client = make_client(cluster)
    futs = [client.submit(slow_square, i, 0.3) for i in range(12)]
    wait_for(lambda: client.get_status(futs[0].task_id) is zq.TaskState.RUNNING, what="first task running")
    w = cluster.workers[0]
    w.terminate()
    assert w.wait(30) == 0
    # running tasks finished on the stopped worker; the rest were handed back and wait
    assert futs[0].result(timeout=10) == 0
    cluster.add_worker(wait=True)
    assert [f.result(timeout=60) for f in futs] == [i * i for i in range(12)]
    assert all(f.envelope.attempts == 1 for f in futs)  # handed back is not a lost attempt


def test_unreachable_ventilator_fails_pending_futures(make_cluster, tmp_path):
    cluster = make_cluster(workers=0)
    cfg = zq.load_config(None, {"ventilator_clients": cluster.endpoints["clients"],
                                "sink_endpoint": cluster.endpoints["sink"], "heartbeat_interval": 0.2})
    client = zq.Client(cfg, unreachable_timeout=2.0)
    try:
        fut = client.submit(slow_square, 2)
        cluster.ventilator.kill()
        with pytest.raises(zq.NodeUnreachable) as info:
            fut.result(timeout=20)
        assert cluster.endpoints["clients"] in str(info.value) and "ventilator" in str(info.value)
    finally:
        client.shutdown(wait=False)


def test_future_result_timeout_returns_on_time(client):
    fut = client.submit(slow_square, 2, 1.5)
    t0 = time.monotonic()
    with pytest.raises(cf.TimeoutError):
        fut.result(timeout=0.3)
    assert time.monotonic() - t0 < 1.2
    assert fut.result(timeout=20) == 4


def test_journal_keeps_paused_queues_and_disabled_names_across_a_restart(make_cluster, make_client, tmp_path):
    journal = str(tmp_path / "journal.db")
    cluster = make_cluster(workers=1, executor="thread", ventilator_args=["--journal", journal])
    client = make_client(cluster)
    name = "tests.test_delivery.die_every_time"
    client.pause("held-queue")
    client.disable_task(name)
    cluster.restart("ventilator")  # SIGKILL: what an operator held back stays held
    status = client.stats()["ventilator"]
    assert status["queues"]["held-queue"]["paused"] and name in status["disabled"]
    cluster.add_worker(["--queue", "held-queue"], wait=True)
    fut = client.submit_task(slow_square, (3, 0.0), queue="held-queue")
    wait_for(lambda: client.get_status(fut.task_id) is zq.TaskState.PAUSED, what="held")
    client.resume("held-queue")
    client.enable_task(name)
    assert fut.result(timeout=30) == 9
    cluster.restart("ventilator")
    status = client.stats()["ventilator"]
    assert "held-queue" not in status["queues"] or not status["queues"]["held-queue"]["paused"]
    assert name not in status["disabled"]
