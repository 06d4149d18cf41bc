"""Client defects fixed together: cancel that never blocks, shutdown that never hangs on
other clients' tasks, one clear line for a node that does not answer, local execution of
long continuation chains, and the ETA in ``get_progress`` from any client.

Real nodes on loopback; synchronisation by futures, gate files and deadline polls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import signal
import socket
import threading
import time
from typing import Any

import pytest

import zq
from tests import lifecycle_tasks as T
from tests.conftest import FAST_ENV, connect, running
from tests.policies import policy_env, touch, wait_for

S = zq.TaskState


@zq.task(queue="nobody-serves-this")
def never_runs(x: Any) -> Any:
    return x


def square(x: int) -> int:
    return x * x


def relay(n: int, ctx: zq.TaskContext) -> int:
    """A follow-up (``ctx.submit``) of a follow-up ... ``n`` deep."""
    if n > 0:
        ctx.submit(relay, n - 1)
    return n


@pytest.fixture(scope="module")
def fx_cluster(tmp_path_factory):
    env = {**FAST_ENV, **policy_env(tmp_path_factory.mktemp("client-fixes"))}
    yield from running(workers=1, executor="thread", concurrency=4, env=env)


@pytest.fixture
def fx_client(fx_cluster):
    c = connect(fx_cluster)
    yield c
    c.shutdown(wait=False, cancel_futures=True)


# ================================================================ 1. cancel never blocks

def test_cancel_returns_at_once_with_the_ventilator_paused_and_reaches_it_later(start, make_client):
    """Future.cancel() (plain, on an asyncio loop, of a group) marks the future cancelled at
    once, without a round trip to a ventilator that is not answering; the cancel is sent
    when it answers again (on the new connection the client opens meanwhile)."""
    cluster = start(workers=1, executor="thread", concurrency=1)
    client = make_client(cluster)
    observer = make_client(cluster)
    plain = client.submit(never_runs, 1)
    awaited = client.submit(never_runs, 2)
    group = client.submit_group(zq.group(never_runs.s(3), never_runs.s(4)))
    kept = client.submit(never_runs, 5)
    assert client.submit(square, 2).result(timeout=10) == 4  # every task above reached the ventilator
    ids = [plain.task_id, awaited.task_id] + [m.task_id for m in group.members]

    async def cancel_awaited() -> float:
        async def waiter() -> Any:
            return await awaited

        w = asyncio.ensure_future(waiter())
        await asyncio.sleep(0)  # sleep-ok: one loop turn, so that w awaits the future
        t0 = time.monotonic()
        w.cancel()
        with pytest.raises(asyncio.CancelledError):
            await w
        return time.monotonic() - t0

    cluster.ventilator.signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        assert plain.cancel() is True
        plain_s = time.monotonic() - t0
        loop_s = asyncio.run(cancel_awaited())
        t0 = time.monotonic()
        assert group.cancel() is True
        group_s = time.monotonic() - t0
    finally:
        cluster.ventilator.signal(signal.SIGCONT)
    assert plain_s < 1.0 and loop_s < 1.0 and group_s < 1.0, (plain_s, loop_s, group_s)
    assert plain.cancelled() and awaited.cancelled() and group.cancelled()
    assert all(m.cancelled() for m in group.members)
    with pytest.raises(cf.CancelledError):
        group.result(timeout=0)
    # the ventilator got the cancels once it ran again; the task not cancelled is still queued
    states = lambda: [observer.get_status(t) for t in ids]  # noqa: E731
    wait_for(lambda: states() == [S.CANCELED] * 4, 20, "the four tasks CANCELED at the ventilator", show=states)
    assert observer.get_status(kept.task_id) is S.QUEUED
    assert not kept.done()


def test_cancel_from_a_done_callback_on_the_io_thread(fx_cluster, fx_client, tmp_path):
    """A done-callback runs on the client's IO thread: cancelling another future there
    works (it used to raise RuntimeError, swallowed by concurrent.futures)."""
    client = fx_client
    gate = str(tmp_path / "gate")
    first = client.submit(T.gated, gate, None, "first")
    target = client.submit(never_runs, 1)
    outcome: list[Any] = []

    def on_done(_f: cf.Future) -> None:
        try:
            outcome.append((threading.current_thread().name, target.cancel()))
        except Exception as exc:  # what the test reports if cancel() raises here
            outcome.append((threading.current_thread().name, exc))

    first.add_done_callback(on_done)
    touch(gate)
    assert first.result(timeout=10) == "first"
    wait_for(lambda: outcome, 10, "the done-callback to run")
    thread, result = outcome[0]
    assert thread.startswith("zq-client-"), thread  # it ran on the IO thread
    assert result is True, result
    assert target.cancelled()
    wait_for(lambda: client.get_status(target.task_id) is S.CANCELED, 10, "CANCELED at the ventilator",
             show=lambda: client.get_status(target.task_id))


# ============================================= 2. shutdown does not wait for others' tasks

def test_with_client_leaves_promptly_despite_a_watch_nobody_finishes(fx_cluster):
    """``with zq.Client()`` waits for the tasks it submitted, not for a ``future_for`` watch
    of an id nobody will finish (that one fails with ClientClosed)."""
    box: dict[str, Any] = {}

    def body() -> None:
        with connect(fx_cluster) as c:
            box["own"] = c.submit(square, 4)
            box["watch"] = c.future_for("nobody-will-finish-this-task")

    t = threading.Thread(target=body, daemon=True)
    t.start()
    wait_for(lambda: not t.is_alive(), 15, "the with block to end (shutdown(wait=True))")
    assert box["own"].result(timeout=0) == 16  # waited for: its own task
    with pytest.raises(zq.ClientClosed, match="own tasks"):
        box["watch"].result(timeout=0)


# ======================================== 3. a node that never answered: one clear line

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wrong_port_says_once_that_the_node_does_not_answer(caplog):
    """Nothing listens: one warning per node, no 'submitting ... again' for tasks never
    sent to a node that answered, and the futures fail with NodeUnreachable after
    ``unreachable_timeout``; the ``with`` block is not held up by them beyond that."""
    vent, sink = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    cfg = zq.load_config(None, {"ventilator_clients": vent, "sink_endpoint": sink, "heartbeat_interval": 0.1})
    caplog.set_level(logging.DEBUG, logger="zq.client")
    t0 = time.monotonic()
    with zq.Client(cfg, unreachable_timeout=2.5) as client:
        futs = [client.submit(square, i) for i in range(3)]
    # shutdown(wait=True) waited for its own tasks until the unreachable deadline failed them
    assert 2.0 < time.monotonic() - t0 < 15
    for f in futs:
        with pytest.raises(zq.NodeUnreachable, match="unreachable"):
            f.result(timeout=0)
    said_out = [r.getMessage() for r in caplog.records if r.name == "zq.client" and r.levelno >= logging.INFO]
    assert not [m for m in said_out if "submitting" in m], said_out
    for node, ep in (("ventilator", vent), ("sink", sink)):
        said = [m for m in said_out if m.startswith(f"{node} at {ep}") and "has not answered" in m]
        assert len(said) == 1, said_out


# ====================================== 4. local execution iterates continuations

def test_local_execution_follows_a_long_chain_of_continuations():
    with zq.Client(execute="local") as client:
        assert client.submit(T.countdown, 1500).result(timeout=0) == "liftoff after 0"


def test_local_execution_runs_deep_follow_ups_without_recursion():
    rec = T.ClientRecorder()
    with zq.Client(execute="local", policies=[rec]) as client:
        fut = client.submit(relay, 1200)
        assert fut.result(timeout=0) == 1200
        # the task and each of its 1200 nested follow-ups ran here, in submit(), once
        done = [c[1] for c in rec.calls if c[0] == "on_done"]
        assert len(done) == len(set(done)) == 1201 and done[0] == fut.task_id


# =================================== 5. get_progress from another client has the ETA

def test_get_progress_from_another_client_carries_the_eta(fx_cluster, fx_client, tmp_path):
    a = fx_client
    b = connect(fx_cluster)
    gate = str(tmp_path / "gate")
    try:
        fut = a.submit(T.progress_gated, gate)
        own = wait_for(lambda: fut.progress if fut.progress and fut.progress.done == 3 and fut.progress.eta
                       else None, 10, "progress 3/6 with an ETA on the submitter's future")
        p = wait_for(lambda: (lambda q: q if q is not None and q.done == 3 else None)(b.get_progress(fut.task_id)),
                     10, "progress 3/6 from another client")
        assert p.eta is not None and p.eta > 0, p
        # the same reports, the same estimate as the submitter's
        assert p.eta == pytest.approx(own.eta, rel=1e-6)
        assert a.show_task(fut.task_id)["progress"][:3] == [3, 6, "step 3"]
    finally:
        touch(gate)
        b.shutdown(wait=False)
    assert fut.result(timeout=10) == "finished"
