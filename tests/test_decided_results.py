"""Results the ventilator decides itself survive its SIGKILL (``zq ventilator --journal``).

A task cancelled while queued (or failed with WorkerLost, or whose function the
ventilator no longer holds) gets its result from the ventilator, which sends it to
the sink through its SinkLink.  With a journal, that result is written in the same
commit that closes the task and stays in the journal's ``results`` table until
the sink ACKs it: a ventilator killed in between sends it again when it restarts.

Real nodes on loopback; the sink is made unreachable with SIGSTOP (its process is
frozen, its connections stay open) and resumed with SIGCONT.
"""

from __future__ import annotations

import concurrent.futures
import signal
import sqlite3
from typing import Any, Optional

import pytest

import zq

from .policies import wait_for


def identity(x):
    return x


def decided(path: str) -> Optional[list[str]]:
    """Task ids of the results in the ventilator's journal (what is committed: WAL
    readers see that); None when the journal has no such table."""
    db = sqlite3.connect(path)
    try:
        return sorted(t for (t,) in db.execute("SELECT task_id FROM results"))
    except sqlite3.OperationalError:
        return None
    finally:
        db.close()


def waiting(client: zq.Client) -> Optional[int]:
    """Results in the ventilator's SinkLink, or None while it does not answer: a request the
    client made while its link to a restarting ventilator was being replaced is lost."""
    try:
        return client._request("ventilator", "stats", {}, timeout=2)["sink_link"]["waiting"]
    except TimeoutError:
        return None


def queued_task(client: zq.Client, admin: zq.Client) -> Any:
    """A task on a queue no worker serves: it waits until it is cancelled."""
    fut = client.submit_task(identity, (1,), queue="nowhere")
    wait_for(lambda: admin.get_status(fut.task_id) is zq.TaskState.QUEUED, what="the task queued")
    return fut


def start(make_cluster: Any, tmp_path: Any) -> tuple[Any, str]:
    journal = str(tmp_path / "ventilator.db")
    return make_cluster(workers=0, ventilator_args=["--journal", journal]), journal


@pytest.mark.parametrize("kill", [True, False], ids=["sigkill", "sigterm"])
def test_a_cancellation_decided_before_a_restart_reaches_the_sink_after_it(make_cluster, make_client,
                                                                            tmp_path, kill):
    """SIGKILL: the journal's copy is all there is.  SIGTERM: the ventilator gives its
    SinkLink 2 s, the sink does not answer, and the copy stays in the journal."""
    cluster, journal = start(make_cluster, tmp_path)
    client, admin = make_client(cluster), make_client(cluster)  # admin cancels: client's future waits
    fut = queued_task(client, admin)
    cluster.sink.signal(signal.SIGSTOP)
    try:
        assert admin.cancel(fut.task_id)
        # the reply came after the commit: the result is in the journal, the sink has not ACKed it
        assert decided(journal) == [fut.task_id]
        cluster.restart("ventilator", kill=kill)  # same endpoints and journal
        wait_for(lambda: waiting(admin) == 1, 20, what="the result reloaded")
        assert not fut.done()
    finally:
        cluster.sink.signal(signal.SIGCONT)
    with pytest.raises(concurrent.futures.CancelledError):
        fut.result(timeout=20)
    assert fut.cancelled()
    wait_for(lambda: decided(journal) == [], what="the ACK committed in the journal")
    sink = admin.stats()["sink"]["counters"]
    assert sink.get("results", 0) == 1, sink
    wait_for(lambda: waiting(admin) == 0, what="nothing left in the ventilator's SinkLink")


def test_a_result_the_sink_acked_before_the_sigkill_is_not_sent_again(make_cluster, make_client, tmp_path):
    cluster, journal = start(make_cluster, tmp_path)
    client, admin = make_client(cluster), make_client(cluster)
    first = queued_task(client, admin)
    assert admin.cancel(first.task_id)
    with pytest.raises(concurrent.futures.CancelledError):
        first.result(timeout=20)
    wait_for(lambda: decided(journal) == [], what="the first ACK committed in the journal")

    second = queued_task(client, admin)
    cluster.sink.signal(signal.SIGSTOP)
    try:
        assert admin.cancel(second.task_id)
        assert decided(journal) == [second.task_id]
        cluster.restart("ventilator")
        # only the unacknowledged result came back with the journal
        wait_for(lambda: waiting(admin) == 1, 20, what="the result reloaded")
    finally:
        cluster.sink.signal(signal.SIGCONT)
    with pytest.raises(concurrent.futures.CancelledError):
        second.result(timeout=20)
    wait_for(lambda: decided(journal) == [], what="the second ACK committed in the journal")
    sink = admin.stats()["sink"]["counters"]
    assert sink.get("results", 0) == 2, sink


def test_a_worker_lost_decided_before_a_sigkill_reaches_the_sink_after_the_restart(make_cluster, make_client,
                                                                                     tmp_path):
    from .lifecycle_tasks import lc_env
    from .vent_fix_tasks import kill_my_worker

    journal = str(tmp_path / "ventilator.db")
    cluster = make_cluster(workers=3, executor="thread", concurrency=1, env=lc_env(tmp_path),
                           ventilator_args=["--journal", journal])
    client, admin = make_client(cluster), make_client(cluster)
    cluster.sink.signal(signal.SIGSTOP)
    try:
        fut = client.submit(kill_my_worker)  # kills each worker it runs on: the 3rd loss is WorkerLost
        wait_for(lambda: decided(journal) == [fut.task_id], 30, what="WorkerLost decided and journaled")
        assert all(not w.alive() for w in cluster.workers)
        cluster.restart("ventilator")
        wait_for(lambda: waiting(admin) == 1, 20, what="the result reloaded")
        assert not fut.done()
    finally:
        cluster.sink.signal(signal.SIGCONT)
    with pytest.raises(zq.WorkerLost):
        fut.result(timeout=20)
    wait_for(lambda: decided(journal) == [], what="the ACK committed in the journal")
    assert admin.stats()["sink"]["counters"].get("results", 0) == 1


def committed(path: str) -> tuple[int, int, int]:
    """Rows another connection sees (tasks, history, results): what is committed."""
    db = sqlite3.connect(path)
    try:
        return tuple(db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[return-value]
                     for t in ("tasks", "history", "results"))
    finally:
        db.close()


def test_a_task_its_history_entry_and_its_result_are_closed_in_one_commit(tmp_path):
    from zq.nodes.common import result_row
    from zq.nodes.history import History
    from zq.nodes.journal import Journal
    from zq import protocol as P
    from zq.serialize import pack_args

    path = str(tmp_path / "ventilator.db")
    journal = Journal(path)
    history = History(journal.db)
    spec = P.TaskSpec("t1", "n", "q", P.BY_NAME, "c", True, 0, None, 1.0, opts={}, args=pack_args((), {}))
    journal.put(spec)
    journal.commit()
    # what Ventilator._close and _finish do
    journal.begin()
    journal.remove(spec.task_id)
    history.add(spec, "CANCELED", "ventilator", None)
    row = result_row(spec, zq.TaskState.CANCELED, None, worker="ventilator")
    journal.put_result(row)
    assert journal.dirty and journal.take_committed() == []  # nothing for the sink before the commit
    assert committed(path) == (1, 0, 0)
    journal.commit()
    assert committed(path) == (0, 1, 1)
    assert [r.task_id for r in journal.take_committed()] == ["t1"]
    assert journal.take_committed() == []
    journal.close()

    again = Journal(path)  # a restart
    [loaded] = again.load_results()
    assert (loaded.row, bytes(loaded.payload)) == (row.row, bytes(row.payload))
    again.acked(["t1"])
    again.commit()
    assert committed(path) == (0, 1, 0) and again.load_results() == []
    # decided again (a requeued task) while the sink's ACK of the old copy comes in: kept
    again.put_result(row)
    again.acked(["t1"])
    again.commit()
    assert committed(path) == (0, 1, 1)
    again.close()
