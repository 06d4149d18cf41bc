"""Regressions found in review: states during a retry backoff, limits across
continuations, hostile follow-ups, watching a result nobody kept."""

from __future__ import annotations

import pytest

import zq
from tests.lifecycle_tasks import wait_for


def fail_once_then(path, value):
    import os

    if not os.path.exists(path):
        open(path, "w").close()
        raise RuntimeError("first attempt fails")
    return value


def bad_follow_up(ctx: zq.TaskContext):
    try:
        ctx.submit(len, "x", queue="q" * 300)
    except zq.ProtocolError as exc:
        return f"refused: {exc}"
    return "accepted"


def identity(x):
    return x



def test_retrying_is_visible_during_the_backoff(cluster, client, tmp_path):
    fut = client.submit_task(fail_once_then, (str(tmp_path / "flag"), 7), retries=1, retry_backoff=2.0)
    wait_for(lambda: client.get_status(fut.task_id) is zq.TaskState.RETRYING)
    assert [t["task_id"] for t in client.list_tasks(state="RETRYING")] == [fut.task_id]
    assert fut.result(timeout=20) == 7 and fut.envelope.attempts == 2


def test_a_follow_up_with_a_bad_queue_fails_in_the_task_not_the_worker(cluster, client):
    assert client.submit(bad_follow_up).result(timeout=15).startswith("refused:")
    worker = cluster.workers[0]
    assert worker.alive()
    assert client.submit(identity, 3).result(timeout=15) == 3


def test_future_for_a_result_nobody_kept_fails_instead_of_hanging(cluster, client, make_client):
    fut = client.submit(identity, 5)  # not retained
    assert fut.result(timeout=15) == 5
    other = make_client(cluster)
    with pytest.raises(zq.ZqError, match="not retained"):
        other.future_for(fut.task_id).result(timeout=15)


@zq.task(max_concurrency=1)
def limited(x):
    return zq.Call(identity, (x,))  # continues as another call, under another name


def test_concurrency_limit_is_released_when_a_task_continues(cluster, client):
    # with a leaked count the second task of the limited name would never start
    assert [client.submit(limited, i).result(timeout=15) for i in range(3)] == [0, 1, 2]


def test_watches_of_results_that_never_come_are_forgotten(make_cluster, make_client):
    cluster = make_cluster(workers=0, env={"ZQ_SINK_WATCH_TTL": "0.5"})
    client, other = make_client(cluster), make_client(cluster)
    queued = client.submit_task(identity, (1,), retain_result=True)  # no worker yet: it waits
    watcher = other.future_for(queued.task_id)
    for n in range(3):  # ids that will never finish anywhere
        other.future_for(f"no-such-task-{n}")

    def sink_counters():
        s = other.stats()["sink"]
        return s["watched"], s["counters"].get("watches_expired", 0)

    wait_for(lambda: sink_counters()[1] >= 4, what="watches expired")
    assert sink_counters()[0] == 0
    cluster.add_worker(wait=True)
    assert queued.result(timeout=30) == 1
    # the watching client renews its watches on a schedule (every WATCH_RENEW seconds, made
    # due at once here): a renewal after the watch lapsed still finds the retained result
    def renewed_and_done():
        other._io._next_rewatch = 1.0
        return watcher.done()

    wait_for(renewed_and_done, what="the watcher's result after a renewal")
    assert watcher.result() == 1
