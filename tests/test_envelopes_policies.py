"""Result envelopes (timestamps, run time, where a task ran) and policy hooks.

Worker and sink policies come from ``tests.policies`` (loaded by the nodes with
``--policy tests.policies:Name``); each hook writes a JSON record with the pid
of the process it ran in, into a directory passed by environment variable.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

import zq
from tests.policies import (
    RejectSubmit,
    wait_for,
    wait_record,
)

WORKER_POLICY = "tests.policies:{}"


def policy_args(*names):
    out = []
    for n in names:
        out += ["--policy", WORKER_POLICY.format(n)]
    return out


# --------------------------------------------------------------- task functions

def sleep_and_report(seconds):
    time.sleep(seconds)  # sleep-ok: the run time under test
    return os.getpid()


def whoami():
    return os.getpid()


def fail_after(seconds):
    time.sleep(seconds)  # sleep-ok: the run time under test
    raise ValueError("failing on purpose")


def leave_mark(flag, path):
    with open(path, "w") as f:
        f.write(flag)
    return flag


# --------------------------------------------------------------------- envelopes

@pytest.mark.parametrize("executor", ["thread", "process"])
def test_envelope_of_a_successful_task(start, make_client, executor):
    cluster = start(workers=1, executor=executor, concurrency=2)
    client = make_client(cluster)
    before = time.time()
    fut = client.submit(sleep_and_report, 0.2)
    task_pid = fut.result(timeout=15)
    after = time.time()
    env = fut.envelope
    assert isinstance(env, zq.Result)
    assert env.task_id == fut.task_id
    assert env.state is zq.TaskState.SUCCESS and env.error is None
    assert env.value == task_pid
    assert env.attempts == 1
    assert env.queue == "default"
    assert env.name.endswith("sleep_and_report")
    # timestamps (one host, so the clocks agree)
    assert before <= env.submitted_at <= env.started_at <= env.finished_at <= after
    assert 0.2 <= env.run_time < 1.0
    assert env.finished_at - env.started_at >= 0.2 - 0.01
    assert env.queue_time == pytest.approx(env.started_at - env.submitted_at)
    assert env.total_time == pytest.approx(env.finished_at - env.submitted_at)
    assert env.total_time >= env.run_time - 0.01
    # where it ran
    assert env.host == socket.gethostname()
    assert isinstance(env.worker, str) and env.worker
    assert env.pid == task_pid
    node_pid = cluster.workers[0].proc.pid
    if executor == "thread":
        assert env.pid == node_pid
    else:
        assert env.pid != node_pid  # a child process of the worker node
        assert env.pid != os.getpid()
    # a second task on the same (only) worker names the same worker
    again = client.submit(whoami)
    again.result(timeout=10)
    assert again.envelope.worker == env.worker


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_envelope_of_a_failed_task(start, make_client, executor):
    cluster = start(workers=1, executor=executor, concurrency=1)
    client = make_client(cluster)
    fut = client.submit(fail_after, 0.2)
    with pytest.raises(ValueError):
        fut.result(timeout=15)
    env = fut.envelope
    assert env.state is zq.TaskState.FAILED
    assert env.error.type == "ValueError" and env.error.message == "failing on purpose"
    assert "fail_after" in env.error.traceback
    assert env.submitted_at <= env.started_at <= env.finished_at
    assert 0.2 <= env.run_time < 1.0
    assert env.pid > 0 and env.host == socket.gethostname() and env.worker


# ---------------------------------------------------------------------- policies

@pytest.mark.parametrize("executor", ["thread", "process"])
def test_on_running_in_executor_and_on_done_in_sink(start, make_client, tmp_path, executor):
    cluster = start(workers=1, executor=executor, concurrency=2,
                    worker_args=policy_args("Recorder"), sink_args=policy_args("Recorder"))
    client = make_client(cluster)
    fut = client.submit(whoami)
    task_pid = fut.result(timeout=15)

    running = wait_record(tmp_path, "running", fut.task_id)
    assert running["pid"] == task_pid == fut.envelope.pid  # the process (and for threads
    node_pid = cluster.workers[0].proc.pid                 # the node) that ran the task
    if executor == "process":
        assert running["pid"] != node_pid
    else:
        assert running["pid"] == node_pid
    assert running["task_id"] == fut.task_id
    assert running["name"] == fut.envelope.name
    assert running["queue"] == "default"
    assert running["attempt"] == 1

    done = wait_record(tmp_path, "done", fut.task_id)
    assert done["pid"] == cluster.sink.proc.pid
    assert done["state"] == "SUCCESS" and done["attempts"] == 1

    bad = client.submit(fail_after, 0)
    with pytest.raises(ValueError):
        bad.result(timeout=15)
    assert wait_record(tmp_path, "done", bad.task_id)["state"] == "FAILED"
    assert wait_record(tmp_path, "running", bad.task_id)["pid"] == bad.envelope.pid


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_raising_policies_lose_no_task(start, make_client, tmp_path, executor):
    # each raising policy is followed by a recording one: the hooks carry on after a failure
    cluster = start(workers=1, executor=executor, concurrency=2,
                    worker_args=policy_args("RaisingRunning", "Recorder"),
                    sink_args=policy_args("RaisingDone", "Recorder"))
    client = make_client(cluster)
    futs = [client.submit(pow, i, 2) for i in range(20)]
    assert [f.result(timeout=15) for f in futs] == [i * i for i in range(20)]
    for f in futs:
        assert f.envelope.state is zq.TaskState.SUCCESS and f.envelope.attempts == 1
        wait_record(tmp_path, "raised-running", f.task_id)  # the raising hooks did run ...
        wait_record(tmp_path, "raised-done", f.task_id)
        wait_record(tmp_path, "running", f.task_id)  # ... and so did the ones after them
        wait_record(tmp_path, "done", f.task_id)
    assert all(n.alive() for n in cluster.nodes()), "a raising policy killed a node"
    # the nodes keep serving
    assert client.submit(whoami).result(timeout=10) > 0


def test_on_submit_raising_propagates_and_nothing_is_sent(start, make_client, tmp_path):
    cluster = start(workers=1, executor="thread", concurrency=1)
    policy = RejectSubmit()
    client = make_client(cluster, policies=[policy])
    observer = make_client(cluster)
    rejected_mark = str(tmp_path / "rejected-ran")

    with pytest.raises(PermissionError, match="rejected by policy"):
        client.submit(leave_mark, "reject", rejected_mark)
    [rejected_id] = policy.rejected
    seen = policy.seen[0]
    assert seen.task_id == rejected_id
    assert seen.name.endswith("leave_mark") and seen.queue == "default" and seen.attempt == 1

    # a later task on the same single-slot worker (FIFO) runs; the rejected one never did
    ok_mark = str(tmp_path / "ok-ran")
    ok = client.submit(leave_mark, "ok", ok_mark)
    assert ok.result(timeout=10) == "ok"
    assert os.path.exists(ok_mark)
    assert not os.path.exists(rejected_mark)
    assert [t.task_id for t in policy.seen] == [rejected_id, ok.task_id]
    # nobody knows the rejected task: not the ventilator, not the sink, not the client
    assert observer.get_status(rejected_id) is zq.TaskState.UNKNOWN
    assert client.get_status(rejected_id) is zq.TaskState.UNKNOWN
    # and the client holds no future for it: shutdown(wait=True) returns at once
    t = threading.Thread(target=client.shutdown, kwargs={"wait": True}, daemon=True)
    t.start()
    wait_for(lambda: not t.is_alive(), 10, "shutdown(wait=True) to return")


def test_client_policy_on_submit_sees_every_task(start, make_client):
    cluster = start(workers=1, executor="thread", concurrency=2)
    policy = RejectSubmit()
    client = make_client(cluster, policies=[policy])
    futs = [client.submit(pow, 2, i) for i in range(5)]
    futs.append(client.submit_task(pow, (3, 2), queue="default", retries=1))
    assert [f.result(timeout=10) for f in futs] == [1, 2, 4, 8, 16, 9]
    assert [t.task_id for t in policy.seen] == [f.task_id for f in futs]
    assert policy.seen[-1].args == (3, 2)
