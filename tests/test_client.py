"""zq.Client as a concurrent.futures.Executor against real nodes.

Volume through both executors, map order, as_completed/wait/asyncio, typed
remote exceptions, (un)picklable functions/arguments/results, the ``zq.task``
decorator, retries, timeouts and cancelling a running task.

Synchronisation is by futures (``result(timeout)``) and by gate files the test
creates, polled with a deadline (``tests.policies.wait_for``); sleeps appear
only inside task bodies (marked ``# sleep-ok``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import threading
import time

import pytest

import zq
from tests.policies import (
    CustomError,
    RejectSubmit,
    UnloadableResult,
    counted_failure,
    pid_gone,
    touch,
    wait_file,
    wait_for,
)


# --------------------------------------------------------------- task functions
# (module-level functions are shipped to the workers by value)

def square(x):
    return x * x


def whoami(x=None):
    return os.getpid()


def sleepy(seconds):
    time.sleep(seconds)  # sleep-ok: makes later inputs finish first
    return seconds


def gated(gate, value=None, started=None):
    """Write ``started`` (if given), wait for the test to create ``gate``, return ``value``."""
    if started:
        with open(started, "w") as f:
            f.write(str(os.getpid()))
    wait_file(gate)
    return value


def _inner_failure(x):
    raise ValueError(f"bad value {x}")


def fails_with_value_error(x):
    return _inner_failure(x)


def fails_with_custom_error():
    raise CustomError("custom failure")


def fails_with_local_class():
    class LocalOnlyError(Exception):
        pass

    raise LocalOnlyError("a class the client cannot import")


def fails_with_key_error():
    return {}["missing-key"]


def returns_lock():
    return threading.Lock()


def returns_unloadable():
    return UnloadableResult()


def cancel_target(started, gate, after):
    """Record our pid, wait for the gate, then leave a side effect that must never happen."""
    with open(started, "w") as f:
        f.write(str(os.getpid()))
    wait_file(gate)
    with open(after, "w") as f:
        f.write("ran past the cancel point")
    return "finished"


# ------------------------------------------------------------------ volume & map

@pytest.mark.parametrize("executor", ["thread", "process"])
def test_ten_thousand_tasks_through_two_workers(start, make_client, executor):
    cluster = start(workers=2, executor=executor, concurrency=2)
    client = make_client(cluster)
    n = 10_000
    futs = [client.submit(square, i) for i in range(n)]
    done, not_done = cf.wait(futs, timeout=18)
    assert not not_done, f"{len(not_done)} of {n} tasks unfinished"
    assert [f.result() for f in futs] == [i * i for i in range(n)]
    assert len({f.task_id for f in futs}) == n
    workers = {f.envelope.worker for f in futs}
    assert len(workers) == 2, f"expected both workers to take tasks, got {workers}"
    assert all(f.envelope.state is zq.TaskState.SUCCESS and f.envelope.attempts == 1 for f in futs)
    node_pids = {w.proc.pid for w in cluster.workers}
    task_pids = {f.envelope.pid for f in futs}
    if executor == "thread":
        assert task_pids == node_pids
    else:
        assert task_pids and not (task_pids & node_pids)
        assert len(task_pids) >= 2  # two workers, two executor processes each


def test_map_keeps_input_order_when_completions_are_out_of_order(client):
    delays = [0.3, 0.2, 0.1, 0.0]  # 4 slots: the last input finishes first
    assert list(client.map(sleepy, delays, timeout=15)) == delays


def test_map_with_chunks_and_several_iterables(client):
    xs = list(range(1000))
    assert list(client.map(square, xs, chunksize=7, timeout=15)) == [x * x for x in xs]
    assert list(client.map(pow, range(50), [3] * 50, chunksize=4, timeout=15)) == [x ** 3 for x in range(50)]
    assert list(client.map(pow, range(5), [2] * 5, timeout=15)) == [x ** 2 for x in range(5)]
    assert list(client.map(square, [], timeout=5)) == []


def test_map_timeout_raises_and_leaves_the_cluster_usable(cluster, make_client, tmp_path):
    seen = RejectSubmit()  # records the task ids map() submits
    client = make_client(cluster, policies=[seen])
    gate = tmp_path / "gate"
    it = client.map(gated, [str(gate)], timeout=0.5)
    with pytest.raises(cf.TimeoutError):
        list(it)
    touch(gate)
    [task] = seen.seen
    wait_for(lambda: client.get_status(task.task_id).finished, 10, "the gated task to finish")
    assert client.submit(square, 9).result(timeout=10) == 81


@zq.task(queue="nowhere")
def never_runs(x):
    return x


def test_map_timeout_cancels_every_unfinished_call(start, make_client):
    """As Executor.map: on timeout, the awaited call and all later ones are cancelled."""
    cluster = start(workers=1, executor="thread", concurrency=1)
    seen = RejectSubmit()
    client = make_client(cluster, policies=[seen])
    it = client.map(never_runs, [1, 2, 3], timeout=0.3)  # queue "nowhere": never served
    with pytest.raises(cf.TimeoutError):
        list(it)
    ids = [t.task_id for t in seen.seen]
    assert len(ids) == 3
    states = lambda: [client.get_status(t) for t in ids]  # noqa: E731
    wait_for(lambda: states() == [zq.TaskState.CANCELED] * 3, 5, "all three map calls to be cancelled",
             show=states)


def test_as_completed_and_wait_see_the_fast_task_first(client, tmp_path):
    gate = tmp_path / "gate"
    slow = client.submit(gated, str(gate), "slow")
    fast = client.submit(square, 5)
    first = next(cf.as_completed([slow, fast], timeout=10))
    assert first is fast and first.result() == 25
    done, not_done = cf.wait([slow, fast], timeout=10, return_when=cf.FIRST_COMPLETED)
    assert done == {fast} and not_done == {slow}
    touch(gate)
    done, not_done = cf.wait([slow, fast], timeout=10, return_when=cf.ALL_COMPLETED)
    assert done == {slow, fast} and not not_done
    assert slow.result() == "slow"


def test_wait_first_exception(client, tmp_path):
    gate = tmp_path / "gate"
    slow = client.submit(gated, str(gate), "slow")
    bad = client.submit(fails_with_value_error, 1)
    done, not_done = cf.wait([slow, bad], timeout=10, return_when=cf.FIRST_EXCEPTION)
    assert done == {bad} and not_done == {slow}
    touch(gate)
    assert slow.result(timeout=10) == "slow"


def test_futures_can_be_awaited_in_asyncio(client):
    async def main():
        one = await client.submit(square, 6)
        many = await asyncio.gather(*(client.submit(square, i) for i in range(20)))
        with pytest.raises(ValueError) as info:
            await client.submit(fails_with_value_error, 3)
        return one, many, info.value

    one, many, exc = asyncio.run(asyncio.wait_for(main(), 20))
    assert one == 36
    assert many == [i * i for i in range(20)]
    assert isinstance(exc, zq.TaskFailed) and exc.remote_type == "ValueError"


# -------------------------------------------------------------------- exceptions

def test_task_failed_is_typed_and_carries_the_remote_traceback(client):
    fut = client.submit(fails_with_value_error, 42)
    with pytest.raises(ValueError) as info:  # code written for concurrent.futures keeps working
        fut.result(timeout=10)
    exc = info.value
    assert isinstance(exc, zq.TaskFailed) and isinstance(exc, zq.ZqError)
    assert exc.remote_type == "ValueError"
    assert exc.remote_message == "bad value 42"
    assert "fails_with_value_error" in exc.remote_traceback
    assert "_inner_failure" in exc.remote_traceback  # the frame that raised
    assert "bad value 42" in exc.remote_traceback
    env = fut.envelope
    assert env.state is zq.TaskState.FAILED
    assert env.error is not None and env.error.type == "ValueError" and env.error.message == "bad value 42"
    assert isinstance(fut.exception(), ValueError)


def test_exception_classes_importable_on_the_client_are_kept(client):
    with pytest.raises(CustomError) as info:
        client.submit(fails_with_custom_error).result(timeout=10)
    assert isinstance(info.value, zq.TaskFailed)
    assert info.value.remote_type == "CustomError"
    assert info.value.remote_message == "custom failure"

    with pytest.raises(KeyError) as info2:
        client.submit(fails_with_key_error).result(timeout=10)
    assert isinstance(info2.value, zq.TaskFailed) and info2.value.remote_type == "KeyError"
    assert "fails_with_key_error" in info2.value.remote_traceback


def test_exception_class_not_importable_on_the_client_is_plain_task_failed(client):
    with pytest.raises(zq.TaskFailed) as info:
        client.submit(fails_with_local_class).result(timeout=10)
    exc = info.value
    assert exc.remote_type == "LocalOnlyError"
    assert exc.remote_message == "a class the client cannot import"
    assert "fails_with_local_class" in exc.remote_traceback
    assert not isinstance(exc, (ValueError, KeyError, CustomError))


# ------------------------------------------------------------------ serialization

def test_unpicklable_argument_raises_at_submit_and_nothing_breaks(client):
    with pytest.raises(zq.SerializationError):
        client.submit(square, threading.Lock())
    with pytest.raises(zq.SerializationError):
        client.submit_task(square, kwargs={"x": threading.Lock()})
    assert client.submit(square, 12).result(timeout=10) == 144


def test_unpicklable_function_raises_at_submit(client):
    lock = threading.Lock()
    with pytest.raises(zq.SerializationError):
        client.submit(lambda: lock.locked())
    assert client.submit(square, 3).result(timeout=10) == 9


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_unpicklable_result_raises_serialization_error_from_result(start, make_client, executor):
    cluster = start(workers=1, executor=executor, concurrency=2)
    client = make_client(cluster)
    # cannot be pickled on the worker
    fut = client.submit(returns_lock)
    with pytest.raises(zq.SerializationError):
        fut.result(timeout=15)
    assert not isinstance(fut.exception(), zq.TaskFailed)
    # pickled on the worker, cannot be unpickled on the client
    fut2 = client.submit(returns_unloadable)
    with pytest.raises(zq.SerializationError):
        fut2.result(timeout=15)
    # the cluster keeps serving
    assert list(client.map(square, range(10), timeout=15)) == [x * x for x in range(10)]


# ------------------------------------------------------------------- zq.task

@zq.task(queue="io", retries=2, timeout=10)
def flaky_io(path):
    return counted_failure(path, fail_times=2)


@zq.task(queue="io", timeout=0.5)
def slow_io(gate):
    wait_file(gate)
    return "too late"


@zq.task(name="custom.task.name")
def where_am_i():
    return os.getpid()


def test_task_decorator_delay_uses_its_defaults(start, make_client, tmp_path):
    cluster = start(workers=1, executor="thread", concurrency=2)
    io_worker = cluster.add_worker(["--queue", "io"], wait=True)
    client = make_client(cluster)
    counter = str(tmp_path / "counter")
    gate = tmp_path / "gate"
    with client:
        assert zq.current_client() is client
        fut = flaky_io.delay(counter)
        assert fut.result(timeout=15) == 3  # failed twice, retried twice
        env = fut.envelope
        assert env.queue == "io" and env.attempts == 3
        assert env.pid == io_worker.proc.pid  # only the io worker serves queue "io"
        assert env.name.endswith("flaky_io")

        slow = slow_io.delay(str(gate))
        with pytest.raises(zq.TaskFailed) as info:
            slow.result(timeout=10)
        assert info.value.remote_type == "TaskTimeout"
        assert slow.envelope.queue == "io"
        touch(gate)  # let the abandoned thread return

        named = where_am_i.delay()
        assert named.result(timeout=10) != os.getpid()
        assert named.envelope.name == "custom.task.name"
        assert named.envelope.queue == "default"
        assert named.envelope.pid == cluster.workers[0].proc.pid
    with pytest.raises(RuntimeError):
        zq.current_client()


def test_task_decorator_plain_call_runs_locally(tmp_path):
    assert where_am_i() == os.getpid()
    counter = str(tmp_path / "counter")
    with pytest.raises(ValueError):
        flaky_io(counter)  # no retries for a local call
    assert open(counter).read() == "1"


# --------------------------------------------------------------- retries, timeouts

def test_retries_rerun_a_failing_task(client, tmp_path):
    counter = str(tmp_path / "counter")
    fut = client.submit_task(counted_failure, (counter, 2), retries=2)
    assert fut.result(timeout=15) == 3
    assert fut.envelope.attempts == 3
    assert fut.envelope.state is zq.TaskState.SUCCESS
    assert open(counter).read() == "3"


def test_retries_exhausted_fail_with_the_last_error(client, tmp_path):
    counter = str(tmp_path / "counter")
    fut = client.submit_task(counted_failure, (counter, 5), retries=1)
    with pytest.raises(ValueError) as info:
        fut.result(timeout=15)
    assert "attempt 2 fails" in info.value.remote_message
    assert fut.envelope.attempts == 2
    assert open(counter).read() == "2"


def test_no_retries_by_default(client, tmp_path):
    counter = str(tmp_path / "counter")
    fut = client.submit(counted_failure, counter, 1)
    with pytest.raises(ValueError):
        fut.result(timeout=10)
    assert fut.envelope.attempts == 1
    assert open(counter).read() == "1"


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_timeout_fails_with_task_timeout(start, make_client, tmp_path, executor):
    cluster = start(workers=1, executor=executor, concurrency=2)
    client = make_client(cluster)
    gate = tmp_path / "gate"
    fut = client.submit_task(gated, (str(gate), "late"), timeout=0.5)
    with pytest.raises(zq.TaskFailed) as info:
        fut.result(timeout=10)
    assert info.value.remote_type == "TaskTimeout"
    assert fut.envelope.state is zq.TaskState.FAILED
    touch(gate)  # release the thread executor's abandoned slot
    # a generous timeout does not fire, and the worker keeps serving
    ok = client.submit_task(square, (11,), timeout=10)
    assert ok.result(timeout=10) == 121


def _cancel_running_process_task(start, make_client, tmp_path, cancel):
    cluster = start(workers=1, executor="process", concurrency=1)
    client = make_client(cluster)
    started, gate, after = (str(tmp_path / n) for n in ("started", "gate", "after"))
    fut = client.submit(cancel_target, started, gate, after)
    wait_for(lambda: os.path.exists(started) and open(started).read(), 10, "the task to start")
    task_pid = int(open(started).read())
    assert task_pid != cluster.workers[0].proc.pid
    wait_for(lambda: client.get_status(fut.task_id) is zq.TaskState.RUNNING, 10, "status RUNNING")

    assert cancel(client, fut) is True
    with pytest.raises(cf.CancelledError):
        fut.result(timeout=10)
    assert fut.cancelled()
    # the executor process running it is terminated ...
    wait_for(lambda: pid_gone(task_pid), 10, f"executor process {task_pid} to end")
    touch(gate)  # ... so opening the gate now cannot let it reach its side effect
    # the worker keeps serving (with a fresh executor process)
    assert client.submit(whoami).result(timeout=15) not in (task_pid, cluster.workers[0].proc.pid)
    assert not os.path.exists(after), "the cancelled task ran past its cancel point"
    assert client.get_status(fut.task_id) is zq.TaskState.CANCELED


def test_cancel_running_task_in_process_executor_by_id(start, make_client, tmp_path):
    _cancel_running_process_task(start, make_client, tmp_path, lambda c, f: c.cancel(f.task_id))


def test_cancel_running_task_in_process_executor_by_future(start, make_client, tmp_path):
    _cancel_running_process_task(start, make_client, tmp_path, lambda c, f: f.cancel())


def test_cancel_running_task_in_thread_executor_cancels_the_future_only(client, tmp_path):
    """As concurrent.futures: ``fut.cancel()`` cancels the future at once.  A task running in
    a thread cannot be stopped (``client.cancel(id)`` says so): it runs to its end, and its
    result neither brings the future back nor stays unacknowledged at the sink."""
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    fut = client.submit(gated, gate, "done", started)
    wait_for(lambda: os.path.exists(started), 10, "the task to start")
    wait_for(lambda: client.get_status(fut.task_id) is zq.TaskState.RUNNING, 10, "status RUNNING")
    assert fut.cancel() is True
    assert fut.cancelled() and fut.done()
    assert client.cancel(fut.task_id) is False  # the ventilator: it will run to its end
    touch(gate)
    wait_for(lambda: client.get_status(fut.task_id) is zq.TaskState.SUCCESS, 10, "the task to finish")
    # the result reached this client (it acknowledged it) and was not delivered to the future
    wait_for(lambda: client.stats()["sink"]["awaiting_ack"] == 0, 10, "the sink to get the result's ACK",
             show=lambda: client.stats()["sink"])
    assert fut.cancelled()
    with pytest.raises(cf.CancelledError):
        fut.result(timeout=0)
    assert client.submit(square, 3).result(timeout=10) == 9  # the client goes on as before
