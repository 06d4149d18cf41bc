"""Task lifecycle on a real cluster: task context and follow-ups, progress,
continuations (returned calls, chains, groups), async tasks and the execute policy.

Most tests share one module cluster (two thread workers serving ``default`` and
``side``, importing ``tests.lifecycle_tasks``, with an ``on_running`` recorder);
tests that kill or need special workers start their own.  Everything waits on
futures or polls a condition with a deadline.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import time
import uuid

import pytest

import zq
from tests import lifecycle_tasks as T
from tests.conftest import connect, running
from tests.lifecycle_tasks import IMPORT_ARGS, lc_env, max_overlap, read_lines, stays, touch, wait_for
from zq.serialize import function_name

WORKER_ARGS = [*IMPORT_ARGS, "--queue", "default", "--queue", "side",
               "--policy", "tests.lifecycle_tasks:RecordRunning"]


_client = connect


@pytest.fixture(scope="module")
def lc_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("lifecycle")


@pytest.fixture(scope="module")
def mcluster(lc_dir):
    yield from running(workers=2, executor="thread", concurrency=4, worker_args=WORKER_ARGS, env=lc_env(lc_dir))


@pytest.fixture(scope="module")
def mclient(mcluster):
    c = _client(mcluster)
    # the workers' READY lines may come before the ventilator has their registries
    wait_for(lambda: "lc.a_track" in c.registry()["tasks"], 10, what="the workers' tasks registered")
    yield c
    c.shutdown(wait=False, cancel_futures=True)


@pytest.fixture
def start(make_cluster, tmp_path):
    """A cluster of one's own whose nodes import tests.lifecycle_tasks and write to tmp_path."""

    def start(**kw):
        env = {**lc_env(tmp_path), **kw.pop("env", {})}
        kw.setdefault("worker_args", WORKER_ARGS)
        return make_cluster(env=env, **kw)

    return start


def uid() -> str:
    return uuid.uuid4().hex[:8]


# ================================================================== task context

def test_context_parameter_gets_id_attempt_queue_lineage_logger(mclient):
    fut = mclient.submit_task(T.ctx_info, kwargs={"tag": "t1"}, queue="side")
    info = fut.result(10)
    assert info["task_id"] == fut.task_id
    assert info["attempt"] == 1
    assert info["queue"] == "side"
    assert info["name"] == "lc.ctx_info"
    assert info["parent_id"] is None
    assert info["root_id"] == fut.task_id  # a root task is its own root
    assert info["logger"] and info["logger_task_id"] == fut.task_id
    assert info["current"] is True  # zq.current_task() is the same object
    assert info["tag"] == "t1"


def test_current_task_without_a_context_parameter(mclient):
    fut = mclient.submit(T.via_current, "x")
    info = fut.result(10)
    assert info["task_id"] == fut.task_id and info["current"] and info["tag"] == "x"
    assert info["queue"] == "default"


def test_current_task_outside_a_task_raises():
    with pytest.raises(RuntimeError):
        zq.current_task()


def test_current_task_is_not_leaked_to_other_threads(mclient):
    assert mclient.submit(T.outside_task).result(10) == "RuntimeError"


def test_context_attempt_counts_retries(mclient, lc_dir):
    path = str(lc_dir / f"attempts-{uid()}.log")
    fut = mclient.submit_task(T.fail_until, (path, 3), retries=3, retry_backoff=0.01)
    out = fut.result(15)
    assert out == {"attempt": 3, "task_id": fut.task_id}
    assert fut.envelope.attempts == 3
    assert read_lines(path) == ["1", "2", "3"]


def test_follow_up_on_another_queue_with_lineage(mclient):
    root = mclient.submit_task(T.spawn_chain, ("side", 2))
    child_id = root.result(10)
    assert isinstance(child_id, str) and child_id != root.task_id
    child = mclient.future_for(child_id).result(10)
    assert child["task_id"] == child_id
    assert child["queue"] == "side"  # ctx.submit(..., queue="side")
    assert child["parent_id"] == root.task_id
    assert child["root_id"] == root.task_id
    grandchild_id = child["child"]
    assert grandchild_id
    # retained: readable by id with get_result (poll: it may still be running)
    res = wait_for(lambda: _result_or_none(mclient, grandchild_id), 10, what="grandchild's retained result")
    g = res.value
    assert g["parent_id"] == child_id
    assert g["root_id"] == root.task_id  # the root is the first task of the tree
    assert g["queue"] == "side"  # a follow-up stays on its parent's queue by default
    assert g["child"] is None
    # lineage in the ventilator's listings
    assert mclient.show_task(child_id)["parent"] == root.task_id
    assert mclient.show_task(grandchild_id)["parent"] == child_id
    listed = {t["task_id"]: t for t in mclient.list_tasks(name=function_name(T.spawned), limit=None)}
    assert listed[child_id]["parent"] == root.task_id
    assert listed[grandchild_id]["parent"] == child_id


def test_root_of_a_follow_up_is_visible_in_listings(mclient):
    root = mclient.submit_task(T.spawn_chain, ("default", 2))
    child_id = root.result(10)
    grandchild_id = mclient.future_for(child_id).result(10)["child"]
    wait_for(lambda: _result_or_none(mclient, grandchild_id), 10, what="the grandchild finished")
    shown = mclient.show_task(grandchild_id)
    assert shown.get("root") == root.task_id
    listed = {t["task_id"]: t for t in mclient.list_tasks(name=function_name(T.spawned), limit=None)}
    assert listed[grandchild_id].get("root") == root.task_id


def _result_or_none(client, task_id):
    try:
        return client.get_result(task_id)
    except KeyError:
        return None


def test_follow_up_queued_once_when_its_parent_is_retried(mclient, lc_dir):
    path = str(lc_dir / f"spawn-once-{uid()}.log")
    fut = mclient.submit_task(T.spawn_then_fail_once, (path, "ran"), retries=1, retry_backoff=0.01)
    child_id = fut.result(10)
    assert fut.envelope.attempts == 2
    assert mclient.future_for(child_id).result(10) == "ran"
    # the retried parent queued the same follow-up id again: it must not run twice
    stays(lambda: read_lines(path) == ["ran"], 0.5, what="the follow-up ran exactly once")


def test_follow_ups_from_every_link_of_a_chain_run(mclient, lc_dir):
    path = str(lc_dir / f"chain-spawn-{uid()}.log")
    fut = mclient.submit_call(zq.chain(zq.Call(T.spawn_link, ([], "a", path)), zq.Call(T.spawn_link, ("b", path))))
    assert fut.result(10) == ["a", "b"]
    wait_for(lambda: sorted(read_lines(path)) == ["a", "b"], 3, what="both links' follow-ups ran")


def test_follow_up_of_a_task_keeps_its_retries(mclient, lc_dir):
    path = str(lc_dir / f"flaky-{uid()}.log")
    child_id = mclient.submit(T.spawn_flaky, path, "tok").result(10)
    assert mclient.future_for(child_id).result(10) == "tok"
    assert read_lines(path) == ["tok:1", "tok:2"]


# ====================================================================== progress

def test_progress_reaches_the_future_and_get_progress_while_running(mcluster, mclient, lc_dir):
    gate = str(lc_dir / f"gate-{uid()}")
    try:
        fut = mclient.submit(T.progress_gated, gate)
        p = wait_for(lambda: fut.progress if fut.progress and fut.progress.done == 3 else None, 10,
                     what="progress 3/6 on the future")
        assert (p.done, p.total, p.message) == (3, 6, "step 3")
        assert p.fraction == 0.5 and p.percent == 50.0
        assert p.eta is not None and p.eta > 0  # from the rate between reports
        assert p.updated_at <= time.time()
        assert not fut.done()
        # another client asks the ventilator
        other = _client(mcluster)
        try:
            q = wait_for(lambda: other.get_progress(fut.task_id), 10, what="get_progress from another client")
            assert (q.done, q.total, q.message) == (3, 6, "step 3")
            assert mclient.get_progress(fut.task_id).done == 3
            assert mclient.show_task(fut.task_id)["progress"][:3] == [3, 6, "step 3"]
            assert mclient.show_task(fut.task_id)["state"] == "RUNNING"
        finally:
            other.shutdown(wait=False)
    finally:
        touch(gate)
    assert fut.result(10) == "finished"
    assert fut.progress.done in (3, 6)  # the last report may arrive after the result
    # finished: nothing running to report (once the ventilator has heard it finished)
    other = _client(mcluster)
    try:
        wait_for(lambda: other.get_progress(fut.task_id) is None, 5, what="no progress once finished")
    finally:
        other.shutdown(wait=False)


def test_progress_while_running_on_a_process_worker(start, make_client, tmp_path):
    cluster = start(workers=1, executor="process", concurrency=1, worker_args=[])
    client = make_client(cluster)
    gate = str(tmp_path / "gate")
    try:
        fut = client.submit(T.progress_gated, gate)
        p = wait_for(lambda: client.get_progress(fut.task_id) if fut.progress and fut.progress.done == 3 else None,
                     10, what="progress 3/6 from a process worker")
        assert (p.done, p.total, p.message) == (3, 6, "step 3")
        assert fut.progress.eta is not None
    finally:
        touch(gate)
    assert fut.result(10) == "finished"
    assert fut.envelope.pid != cluster.workers[0].proc.pid  # it ran in an executor process


def test_first_progress_report_is_forwarded_promptly(start, make_client, tmp_path):
    env = {"ZQ_CLUSTER_HEARTBEAT_INTERVAL": "1.0"}  # the default: the worker polls every 0.5 s
    cluster = start(workers=1, executor="thread", concurrency=2, worker_args=[], env=env)
    client = make_client(cluster)
    delays = []
    for i in range(8):
        gate = str(tmp_path / f"gate-prompt-{i}")
        try:
            fut = client.submit(T.progress_once_gated, gate)
            p = wait_for(lambda: fut.progress, 5, interval=0.002, what="the first progress report")
            delays.append(time.time() - p.updated_at)
        finally:
            touch(gate)
        assert fut.result(5) == "released"
    assert max(delays) < 0.2, f"progress reached the client after {[round(x, 3) for x in delays]} s"


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_progress_then_result_the_result_arrives(start, make_client, executor):
    cluster = start(workers=1, executor=executor, concurrency=2, worker_args=IMPORT_ARGS)
    client = make_client(cluster)
    futs = [client.submit(T.progress_then_return, i, 20) for i in range(30)]
    done, not_done = cf.wait(futs, timeout=15)
    assert not not_done, f"{len(not_done)} of 30 results never arrived after progress reports"
    assert [f.result() for f in futs] == list(range(30))
    # by name, too (the task is found in the executor's imported registry)
    T.wait_registered(client, "lc.greet_ctx")
    f = client.submit_by_name("lc.greet_ctx", {"name": executor})
    assert f.result(10)["greeting"] == f"hello {executor}"


def test_progress_then_failure_is_typed(mclient):
    with pytest.raises(KeyError) as ei:
        mclient.submit(T.progress_then_fail).result(10)
    assert isinstance(ei.value, zq.TaskFailed)


# ================================================================= continuations

def test_returned_call_trampolines_through_several_hops(mclient):
    fut = mclient.submit(T.hop, 5)
    assert fut.result(15) == [5, 4, 3, 2, 1, 0]
    assert fut.envelope.task_id == fut.task_id
    assert fut.envelope.state is zq.TaskState.SUCCESS


def test_returned_task_signature_continues(mclient):
    assert mclient.submit(T.countdown, 3).result(15) == "liftoff after 0"
    assert mclient.submit(T.hop_then, 2, 40).result(10) == 42


def test_chain_passes_each_result_on(mclient):
    fut = mclient.submit_call(zq.chain(T.add.s(1, 2), T.mul.s(10), T.add.s(5)))
    assert fut.result(15) == 35


def test_chain_link_on_another_queue(mclient):
    fut = mclient.submit_call(zq.chain(T.add.s(1, 2), zq.Call(T.mul, (3,), queue="side")))
    assert fut.result(10) == 9
    assert fut.envelope.queue == "side"


def test_chain_with_a_failing_link_fails_the_future(mclient):
    fut = mclient.submit_call(zq.chain(T.add.s(1, 2), T.fail.s(), T.add.s(100)))
    with pytest.raises(ValueError) as ei:
        fut.result(10)
    assert isinstance(ei.value, zq.TaskFailed) and ei.value.remote_type == "ValueError"


def test_group_gathers_results_in_order(mclient):
    # later members finish first
    g = mclient.submit_group(zq.group(*[zq.Call(T.sleepy_value, (i, 0.3 - 0.05 * i)) for i in range(6)]))
    assert g.result(10) == list(range(6))


def test_group_of_chains_and_calls(mclient):
    g = mclient.submit_group(zq.group(zq.chain(T.add.s(1, 1), T.mul.s(5)), T.add.s(2, 2), T.countdown.s(1)))
    assert g.result(10) == [10, 4, "liftoff after 0"]


def test_empty_group(mclient):
    assert mclient.submit_group(zq.group()).result(1) == []


def test_group_fails_fast_when_one_member_fails(mclient, lc_dir):
    gate = str(lc_dir / f"gate-{uid()}")
    try:
        g = mclient.submit_group(zq.group(zq.Call(T.gated, (gate, None, "slow")), T.fail.s("member")))
        with pytest.raises(ValueError, match="member"):
            g.result(8)  # must not wait for the gated member
        assert not g.members[0].done()
    finally:
        touch(gate)
    assert g.members[0].result(10) == "slow"


def test_chain_completes_when_a_worker_is_killed_mid_chain(start, make_client, tmp_path):
    cluster = start(workers=2, executor="thread", concurrency=1, worker_args=[])
    client = make_client(cluster)
    d = str(tmp_path)
    links = [zq.Call(T.slow_link, ([], 1, 0.4, d))] + [zq.Call(T.slow_link, (i, 0.4, d)) for i in (2, 3, 4)]
    fut = client.submit_call(zq.chain(*links))
    log = os.path.join(d, "links.log")

    def link2_pid():
        rows = [json.loads(line) for line in read_lines(log)]
        return next((pid for i, pid, _ in rows if i == 2), None)

    pid = wait_for(link2_pid, 10, what="link 2 started")
    victim = next(w for w in cluster.workers if w.proc.pid == pid)
    victim.kill()  # SIGKILL while link 2 sleeps
    assert fut.result(15) == [1, 2, 3, 4]
    rows = [json.loads(line) for line in read_lines(log)]
    link2 = [p for i, p, _ in rows if i == 2]
    assert len(link2) == 2 and link2[0] == pid and link2[1] != pid  # ran again elsewhere
    assert [i for i, _, _ in rows].count(1) == 1  # finished links are not run again
    assert fut.envelope.attempts == 2


# =================================================================== async tasks

def test_many_async_tasks_run_at_once(mclient):
    batch = f"many-{uid()}"
    t0 = time.monotonic()
    futs = [mclient.submit_by_name("lc.a_track", [batch, 0.2]) for _ in range(50)]
    out = [f.result(15) for f in futs]
    elapsed = time.monotonic() - t0
    peak = max(r["peak"] for r in out)
    assert peak > 1, "async tasks never overlapped"
    assert max_overlap([(r["start"], r["end"]) for r in out]) >= 4
    assert elapsed < 50 * 0.2, f"50 x 0.2 s async sleeps took {elapsed:.1f}s: they ran one at a time"


def test_async_tasks_do_not_take_executor_slots(start, make_client):
    """AsyncRunner: 'these tasks do not take executor slots' - one slot, up to
    --async-concurrency (default 100) coroutines at once."""
    cluster = start(workers=1, executor="thread", concurrency=1, worker_args=IMPORT_ARGS)
    client = make_client(cluster)
    batch = f"slots-{uid()}"
    T.wait_registered(client, "lc.a_track")
    futs = [client.submit_by_name("lc.a_track", [batch, 0.3]) for _ in range(12)]
    out = [f.result(20) for f in futs]
    peak = max(r["peak"] for r in out)
    assert peak >= 8, f"at most {peak} async tasks ran at once on a worker with one executor slot"


def test_async_task_timeout(mclient):
    t0 = time.monotonic()
    fut = mclient.submit_task(T.a_sleep, (30,), timeout=0.5)
    with pytest.raises(zq.TaskFailed) as ei:
        fut.result(10)
    assert ei.value.remote_type == "TaskTimeout"
    assert time.monotonic() - t0 < 8
    # the event loop is not blocked by the cancelled coroutine
    assert mclient.submit(T.a_sleep, 0.01).result(10) == 0.01


def test_async_failure_is_typed_and_retried(mclient):
    fut = mclient.submit_task(T.a_fail, ("async boom",), retries=1, retry_backoff=0.01)
    with pytest.raises(ValueError, match="async boom") as ei:
        fut.result(10)
    assert isinstance(ei.value, zq.TaskFailed)
    assert ei.value.envelope.attempts == 2


def test_async_on_running_hook_and_envelope(mclient, mcluster, lc_dir):
    fut = mclient.submit(T.a_sleep, 0.2)
    assert fut.result(10) == 0.2
    env = fut.envelope
    assert env.state is zq.TaskState.SUCCESS and env.attempts == 1
    assert env.name == function_name(T.a_sleep)
    assert env.queue == "default"
    assert env.submitted_at <= env.started_at <= env.finished_at
    assert env.run_time >= 0.18
    assert env.pid in {w.proc.pid for w in mcluster.workers}
    rec = lc_dir / f"running-{fut.task_id}-1.json"
    data = json.loads(wait_for(lambda: rec.exists() and rec.read_text(), 5, what="on_running record"))
    assert data["pid"] == env.pid and data["name"] == env.name and data["attempt"] == 1


def test_async_task_context(mclient):
    fut = mclient.submit(T.a_ctx, "a")
    info = fut.result(10)
    assert info["task_id"] == fut.task_id and info["current"] and info["attempt"] == 1
    assert info["root_id"] == fut.task_id and info["tag"] == "a"


def test_async_task_by_name_and_returning_a_call(mclient):
    assert mclient.submit_by_name("lc.async_double", [21]).result(10) == 42
    assert mclient.submit(T.a_then_call, 2).result(10) == [2, 1, 0]


# ============================================================ execute policy

def test_execute_local_runs_inline_with_hooks_and_envelope():
    rec = T.ClientRecorder()
    with zq.Client(execute="local", policies=[rec]) as client:
        fut = client.submit(T.local_info)
        info = fut.result(0)  # already done: it ran in submit()
        env = fut.envelope
        assert env.worker == "local" and env.pid == os.getpid()
        assert env.state is zq.TaskState.SUCCESS and env.attempts == 1
        assert info["task_id"] == fut.task_id and info["current"] and info["pid"] == os.getpid()
        assert fut.progress is not None and (fut.progress.done, fut.progress.total) == (1, 1)
        assert [c[0] for c in rec.calls if c[1] == fut.task_id] == ["on_submit", "on_running", "on_done"]
        assert client.get_status(fut.task_id) is zq.TaskState.SUCCESS


def test_execute_local_exceptions_typed_and_retries():
    rec = T.ClientRecorder()
    with zq.Client(execute="local", policies=[rec]) as client:
        with pytest.raises(ValueError, match="nope") as ei:
            client.submit(T.fail, "nope").result()
        assert isinstance(ei.value, zq.TaskFailed) and ei.value.remote_type == "ValueError"
        assert ei.value.envelope.worker == "local"
        key = f"flaky-{uid()}"
        fut = client.submit_task(T.flaky, (key, 2), retries=2, retry_backoff=0.01)
        assert fut.result() == 3
        assert fut.envelope.attempts == 3
        assert [c[2] for c in rec.calls if c[0] == "on_running" and c[1] == fut.task_id] == [1, 2, 3]
        with pytest.raises(ConnectionError):
            client.submit_task(T.flaky, (f"flaky-{uid()}", 5), retries=1).result()


def test_execute_local_chains_groups_and_calls():
    with zq.Client(execute="local") as client:
        assert client.submit_call(zq.chain(T.add.s(1, 2), T.mul.s(10), T.add.s(5))).result() == 35
        assert client.submit(T.hop, 3).result() == [3, 2, 1, 0]
        assert client.submit_group(zq.group(T.add.s(1, 1), T.countdown.s(2))).result() == [2, "liftoff after 0"]


def test_execute_auto_local_when_unserved_remote_when_served(mcluster):
    client = _client(mcluster, execute="auto")
    queue = f"auto-{uid()}"
    try:
        remote = client.submit_task(T.pid_of, queue="default")
        assert remote.result(10) != os.getpid() and remote.envelope.worker != "local"
        local = client.submit_task(T.pid_of, queue=queue)
        assert local.result(0) == os.getpid() and local.envelope.worker == "local"
        mcluster.add_worker(["--queue", queue], wait=True)
        # once a worker serves it (the client re-checks within about a second), it runs there
        fut = wait_for(lambda: (lambda f: f if f.result(10) != os.getpid() else None)(
            client.submit_task(T.pid_of, queue=queue)), 10, interval=0.1, what="a remote run on the new queue")
        assert fut.envelope.worker != "local" and fut.envelope.queue == queue
    finally:
        client.shutdown(wait=False, cancel_futures=True)


def test_context_parameter_first_with_positional_arguments(mclient):
    fut = mclient.submit(T.ctx_first, 1, 2)
    assert fut.result(10) == {"sum": 3, "task_id": fut.task_id}
