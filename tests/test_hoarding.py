"""Workers do not hoard tasks: credit is free slots plus a prefetch bounded by the measured
run time; tasks held and not started are RESERVED and go back when their queue is paused,
when they are cancelled, or when another worker sits idle.  Also: a retry that lands on
the worker where its first attempt hangs is not dropped (thread executor), and the
executors' function caches are bounded.

Clusters are real processes on loopback; the executor tests drive a real thread pool and
real child processes directly.
"""

from __future__ import annotations

import collections
import os
import time
import uuid
from typing import Any

import pytest

import zq
from zq.nodes import executor as X
from tests import lifecycle_tasks as T
from tests.lifecycle_tasks import lc_env, read_lines, stays, touch, wait_for
from zq._wake import Waker
from zq.protocol import TaskSpec
from zq.serialize import args_from_blob, function_name, loads_value, pack_args, pickle_function

S = zq.TaskState


def uid() -> str:
    return uuid.uuid4().hex[:8]


def noop(x: Any) -> Any:
    return x


def nap(seconds: float) -> int:
    time.sleep(seconds)  # sleep-ok: a task of known length
    return os.getpid()


def hang_first_attempt(gate: str, ctx: zq.TaskContext) -> str:
    """Attempt 1 blocks until ``gate`` exists (past its timeout); later attempts return."""
    if ctx.attempt == 1:
        deadline = time.monotonic() + 30
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)  # sleep-ok: a gate the test opens
        return "first"
    return "second"


def worker_row(client: zq.Client) -> list[dict]:
    return client.stats()["ventilator"]["workers"]


def burst(client: zq.Client, n: int) -> None:
    """Many no-op tasks: the workers measure a tiny run time (a deep prefetch)."""
    assert list(client.map(noop, range(n), timeout=60)) == list(range(n))


# ==================================================================== sharing

def test_long_tasks_after_a_burst_are_shared(make_cluster, make_client):
    cluster = make_cluster(workers=2, executor="thread", concurrency=2)
    client = make_client(cluster)
    wait_for(lambda: len(worker_row(client)) == 2, what="both workers registered")
    burst(client, 5000)
    for _ in range(2):
        futs = [client.submit(nap, 0.2) for _ in range(16)]
        by_worker = collections.Counter()
        for f in futs:
            f.result(timeout=30)
            by_worker[f.envelope.worker] += 1
        # an even share is 8 each: no worker takes (nearly) all because of its history
        assert len(by_worker) == 2 and min(by_worker.values()) >= 6, by_worker


def test_busy_cold_worker_takes_no_more(make_cluster, make_client, tmp_path):
    cluster = make_cluster(workers=1, executor="thread", concurrency=1)
    client = make_client(cluster)
    gate = str(tmp_path / "gate")
    first = client.submit(T.gated, gate)
    wait_for(lambda: client.get_status(first.task_id) is S.RUNNING, what="first running")
    second = client.submit(noop, 2)
    # the slot is busy and nothing was measured: the next task stays at the ventilator
    stays(lambda: client.get_status(second.task_id) is S.QUEUED
          and worker_row(client)[0]["running"] == 1, 0.5, what="second queued, not sent")
    touch(gate)
    assert second.result(timeout=10) == 2
    first.result(timeout=10)


def test_warm_worker_takes_credit_back_while_a_long_task_runs(make_cluster, make_client, tmp_path):
    cluster = make_cluster(workers=1, executor="thread", concurrency=1)
    client = make_client(cluster)
    burst(client, 2000)
    gate = str(tmp_path / "gate")
    first = client.submit(T.gated, gate)
    wait_for(lambda: client.get_status(first.task_id) is S.RUNNING, what="first running")
    # its measured run time (tiny) no longer holds: the prefetch credit is taken back
    wait_for(lambda: worker_row(client)[0]["credit"] == 0, 5, what="credit taken back")
    second = client.submit(noop, 2)
    stays(lambda: client.get_status(second.task_id) is S.QUEUED
          and worker_row(client)[0]["running"] == 1, 0.3, what="second queued, not sent")
    touch(gate)
    assert second.result(timeout=10) == 2


# ==================================================================== held tasks

@pytest.fixture
def held(make_cluster, make_client, tmp_path):
    """A 1-slot worker (prefetch 1) running a gated task of queue ``q`` and holding another
    (which records its run in ``runs``)."""
    q = f"held-{uid()}"
    cluster = make_cluster(workers=1, executor="thread", concurrency=1,
                           worker_args=["--queue", q, "--prefetch", "1"], env=lc_env(tmp_path))
    client = make_client(cluster)
    gate, runs = str(tmp_path / "gate"), str(tmp_path / "runs")
    first = client.submit_task(T.gated, (gate,), {}, queue=q)
    wait_for(lambda: client.get_status(first.task_id) is S.RUNNING, what="first running")
    second = client.submit_task(T.mark, (runs, "second"), {}, queue=q)
    wait_for(lambda: client.get_status(second.task_id) is S.RESERVED, what="second held by the worker")
    return client, q, gate, runs, first, second


def test_pause_gives_back_a_held_task(held):
    client, q, gate, runs, first, second = held
    client.pause(q)
    wait_for(lambda: client.get_status(second.task_id) is S.PAUSED, what="second back, paused")
    assert worker_row(client)[0]["running"] == 1
    touch(gate)
    first.result(timeout=10)
    stays(lambda: not read_lines(runs) and client.get_status(second.task_id) is S.PAUSED, 0.5,
          what="second does not run while paused")
    client.resume(q)
    assert second.result(timeout=10) == "second"
    assert read_lines(runs) == ["second"]


def test_disabling_its_name_gives_back_a_held_task(held):
    client, q, gate, runs, first, second = held
    name = function_name(T.mark)
    client.disable_task(name)
    try:
        wait_for(lambda: client.get_status(second.task_id) is S.PAUSED, what="second back, paused")
        touch(gate)
        first.result(timeout=10)
        stays(lambda: not read_lines(runs), 0.3, what="second does not run while disabled")
    finally:
        client.enable_task(name)
    assert second.result(timeout=10) == "second"


def test_cancel_of_a_held_task(held):
    client, q, gate, runs, first, second = held
    assert second.cancel()  # returns at once; the cancel reaches the ventilator, then the worker
    assert second.cancelled()
    wait_for(lambda: client.show_task(second.task_id)["state"] == "CANCELED", what="the held task cancelled")
    touch(gate)
    first.result(timeout=10)
    stays(lambda: not read_lines(runs), 0.3, what="the cancelled task never runs")


# ==================================================================== retries

def test_retry_on_the_worker_where_the_first_attempt_hangs(make_cluster, make_client, tmp_path):
    cluster = make_cluster(workers=1, executor="thread", concurrency=2)
    client = make_client(cluster)
    gate = str(tmp_path / "gate")
    fut = client.submit_task(hang_first_attempt, (gate,), {}, timeout=0.5, retries=1)
    try:
        # attempt 1 times out (its thread keeps running); attempt 2 runs on the other slot
        # of the same worker and returns first: its result is the task's
        assert fut.result(timeout=15) == "second"
        assert fut.envelope.attempts == 2
    finally:
        touch(gate)


# ==================================================================== function caches

def _specs(n: int, distinct: int) -> tuple[list[TaskSpec], dict[bytes, bytes]]:
    """``n`` tasks calling ``distinct`` different functions, cycling through them."""
    fns: dict[bytes, bytes] = {}
    digests = []
    for i in range(distinct):
        def f(x: int, i: int = i) -> int:
            return x * 1000 + i
        digest, data = pickle_function(f)
        fns[digest] = data
        digests.append(digest)
    specs = [TaskSpec(f"t{k}", "f", "default", digests[k % distinct], "c", None, 0, None, time.time(),
                      args=pack_args((k,), {})) for k in range(n)]
    return specs, fns


def _run_all(ex: Any, specs: list[TaskSpec], fns: dict[bytes, bytes], per_batch: int) -> dict:
    out: dict = {}
    pending = list(specs)
    while pending or len(out) < len(specs):
        if pending and ex.free():
            batch, pending = pending[:per_batch], pending[per_batch:]
            ex.start(batch, {s.digest: fns[s.digest] for s in batch})
        for comp in ex.collect(set(ex.fds())):
            assert comp[1] == "SUCCESS", comp[2]
            out[comp[0]] = loads_value(args_from_blob(comp[3]))
        if not ex.free():
            time.sleep(0.001)  # sleep-ok: polling a pool this test drives itself
    return out


def expected(specs: list[TaskSpec], distinct: int) -> dict:
    return {s.task_id: k * 1000 + k % distinct for k, s in enumerate(specs)}


def test_thread_executor_function_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(X, "FN_CACHE", 5)
    waker = Waker()
    ex = X.ThreadExecutor(2, [], waker, 1 << 20)
    try:
        specs, fns = _specs(60, 12)
        assert _run_all(ex, specs, fns, 4) == expected(specs, 12)
        assert len(ex._fns) == 5
    finally:
        ex.close(2.0)
        waker.close()


def child_cache_size() -> int:
    import zq.nodes.executor as e

    return len(e._child_fns)


def test_process_executor_function_cache_is_bounded():
    ex = X.ProcessExecutor(1, [], 1 << 20, fn_cache=5)
    try:
        specs, fns = _specs(60, 12)
        # the parent sends a function only when its mirror of the child's cache lacks it:
        # every task succeeding means an evicted function was sent again
        assert _run_all(ex, specs, fns, 7) == expected(specs, 12)
        assert len(ex.children[0].digests) == 5
        digest, data = pickle_function(child_cache_size)
        probe = TaskSpec("probe", "probe", "default", digest, "c", None, 0, None, time.time(),
                         args=pack_args((), {}))
        assert _run_all(ex, [probe], {digest: data}, 1) == {"probe": 5}
    finally:
        ex.close(2.0)
