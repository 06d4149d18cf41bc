"""Submit by name, task admin and history, result expiry and take-once, and
``on_state`` events from a ventilator policy.

The module cluster's ventilator loads ``tests.lifecycle_tasks:RecordStates``,
which appends every state change to a file; its worker imports
``tests.lifecycle_tasks`` so its tasks can be submitted by name.  Tests that
restart nodes or need other node flags start their own cluster.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid

import pytest

import zq
from zq.nodes.local import LocalCluster
from tests import lifecycle_tasks as T
from tests.conftest import connect, run_zq, running
from tests.lifecycle_tasks import IMPORT_ARGS, lc_env, read_lines, stays, wait_for

S = zq.TaskState
POLICY_ARGS = ["--policy", "tests.lifecycle_tasks:RecordStates"]


def uid() -> str:
    return uuid.uuid4().hex[:8]


_client = connect


@pytest.fixture(scope="module")
def adir(tmp_path_factory):
    return tmp_path_factory.mktemp("admin")


@pytest.fixture(scope="module")
def mcluster(adir):
    env = lc_env(adir, **{T.ENV_STATES: str(adir / "states.log")})
    yield from running(workers=1, executor="thread", concurrency=4, worker_args=IMPORT_ARGS,
                     ventilator_args=POLICY_ARGS, env=env)


@pytest.fixture(scope="module")
def mclient(mcluster):
    c = _client(mcluster)
    # the worker's READY line may come before the ventilator has its registry
    wait_for(lambda: "lc.greet" in c.registry()["tasks"], 10, what="the worker's tasks registered")
    yield c
    c.shutdown(wait=False, cancel_futures=True)


def conn(cluster: LocalCluster) -> list[str]:
    return ["--ventilator", cluster.endpoints["clients"], "--sink", cluster.endpoints["sink"]]


def _result_or_none(client, task_id):
    try:
        return client.get_result(task_id)
    except KeyError:
        return None


# ================================================================ submit by name

def test_submit_by_name_with_keyword_and_positional_params(mclient):
    f = mclient.submit_by_name("lc.greet", {"name": "ann"})
    assert f.result(10) == "hello ann!"
    assert f.envelope.name == "lc.greet"
    assert mclient.submit_by_name("lc.greet", ["bob", "?"]).result(10) == "hello bob?"
    assert mclient.submit_by_name("lc.add", [2, 3]).result(10) == 5
    # the context parameter is the worker's to fill, not the caller's
    r = mclient.submit_by_name("lc.greet_ctx", {"name": "cy"})
    assert r.result(10) == {"greeting": "hello cy", "task_id": r.task_id}
    assert mclient.submit_by_name("lc.ctx_first", {"day": "mon"}).result(10) == "mon x1 (lc.ctx_first)"


def test_submit_by_name_positional_params_with_the_context_first(mclient):
    assert mclient.submit_by_name("lc.ctx_first", ["tue", 2]).result(10) == "tue x2 (lc.ctx_first)"


def test_submit_by_name_with_options(mclient):
    f = mclient.submit_by_name("lc.greet", {"name": "dee"}, retain_result=True, priority="high")
    assert f.result(10) == "hello dee!"
    assert mclient.get_result(f.task_id).value == "hello dee!"
    info = mclient.registry()["tasks"]["lc.greet"]
    assert info["queue"] == "default"
    assert [p[0] for p in info["params"]] == ["name", "punct"]


def test_submit_by_name_unknown_name(mclient):
    before = mclient.count_tasks()
    with pytest.raises(zq.UnknownTask) as ei:
        mclient.submit_by_name("lc.no-such-task", {"x": 1})
    assert isinstance(ei.value, zq.ZqError) and "lc.no-such-task" in str(ei.value)
    assert mclient.count_tasks() == before


@pytest.mark.parametrize("params", [
    {"nope": 1},                                   # unknown keyword
    {},                                            # missing a required argument
    {"punct": "!"},                                # still missing one
    ["a", "b", "c"],                               # too many positional
    {"name": "a", "punct": "!", "extra": 1},       # one too many
])
def test_submit_by_name_wrong_arguments_raise_typeerror_and_send_nothing(mclient, params):
    before = mclient.count_tasks(name="lc.greet")
    with pytest.raises(TypeError):
        mclient.submit_by_name("lc.greet", params)
    # a good submission after the bad ones: if a bad one had been sent, it is counted too
    assert mclient.submit_by_name("lc.greet", {"name": "ok"}).result(10) == "hello ok!"
    assert mclient.count_tasks(name="lc.greet") == before + 1


@pytest.mark.parametrize("params", [{"name": object()}, {"name": {1, 2}}, ["x", b"bytes"], "name=x"])
def test_submit_by_name_params_must_be_json(mclient, params):
    before = mclient.count_tasks(name="lc.greet")
    with pytest.raises(TypeError):
        mclient.submit_by_name("lc.greet", params)
    assert mclient.submit_by_name("lc.greet", ["ok"]).result(10) == "hello ok!"
    assert mclient.count_tasks(name="lc.greet") == before + 1


# ======================================================================= listing

def test_list_and_count_tasks_with_filters_and_paging(mclient):
    ok_name, bad_name, q = f"lc.ok-{uid()}", f"lc.bad-{uid()}", f"unserved-{uid()}"
    first = [mclient.submit_task(T.add, (i, 0), name=ok_name) for i in range(2)]
    [f.result(10) for f in first]
    # the ventilator records a task finished when its worker says so (after the sink may have)
    wait_for(lambda: mclient.count_tasks(name=ok_name, state="SUCCESS") == 2, 5, what="2 in the history")
    since = time.time()
    later = [mclient.submit_task(T.add, (i, 0), name=ok_name) for i in range(2, 5)]
    [f.result(10) for f in later]
    bad = [mclient.submit_task(T.fail, ("x",), name=bad_name) for _ in range(2)]
    for f in bad:
        with pytest.raises(ValueError):
            f.result(10)
    waiting = [mclient.submit_task(T.add, (0, 0), name=ok_name, queue=q) for _ in range(2)]
    wait_for(lambda: mclient.count_tasks(name=bad_name, state="FAILED") == 2
             and mclient.count_tasks(name=ok_name) == 7, 5, what="everything accounted for")

    rows = mclient.list_tasks(name=ok_name, limit=None)
    assert len(rows) == 7
    ids = {f.task_id for f in first + later + waiting}
    assert {r["task_id"] for r in rows} == ids
    assert {r["state"] for r in rows if r["queue"] == q} == {"QUEUED"}
    for r in rows:
        assert set(r) >= {"task_id", "name", "queue", "state", "submitted_at", "finished_at", "attempts",
                          "worker", "error", "parent", "forgotten"}
    assert [r["task_id"] for r in mclient.list_tasks(queue=q)] == [f.task_id for f in reversed(waiting)]
    assert {r["task_id"] for r in mclient.list_tasks(name=ok_name, state="SUCCESS", limit=None)} == \
        {f.task_id for f in first + later}
    failed = mclient.list_tasks(name=bad_name, state="FAILED")
    assert {r["task_id"] for r in failed} == {f.task_id for f in bad}
    assert all(r["error"] for r in failed)
    assert mclient.list_tasks(name=ok_name, state="FAILED") == []
    # since: finished (or submitted, for unfinished tasks) at or after
    recent = {r["task_id"] for r in mclient.list_tasks(name=ok_name, since=since, limit=None)}
    assert recent == {f.task_id for f in later + waiting}
    as_dt = {r["task_id"] for r in mclient.list_tasks(name=ok_name, limit=None,
                                                       since=dt.datetime.fromtimestamp(since))}
    assert as_dt == recent
    # paging: newest first, limit/offset slice the same order
    done = mclient.list_tasks(name=ok_name, state="SUCCESS", limit=None)
    finished = [r["finished_at"] for r in done]
    assert finished == sorted(finished, reverse=True)
    assert mclient.list_tasks(name=ok_name, state="SUCCESS", limit=2) == done[:2]
    assert mclient.list_tasks(name=ok_name, state="SUCCESS", limit=2, offset=2) == done[2:4]
    assert mclient.list_tasks(name=ok_name, state="SUCCESS", limit=10, offset=4) == done[4:]
    # counts agree with the lists
    assert mclient.count_tasks(name=ok_name) == 7
    assert mclient.count_tasks(name=ok_name, state="SUCCESS") == 5
    assert mclient.count_tasks(queue=q) == 2
    assert mclient.count_tasks(name=ok_name, since=since) == 5
    with pytest.raises(ValueError):
        mclient.list_tasks(state="BOGUS")
    for f in waiting:
        assert mclient.cancel(f.task_id)


def test_show_task(mclient):
    f = mclient.submit_task(T.add, (1, 1))
    f.result(10)
    shown = wait_for(lambda: mclient.show_task(f.task_id)["state"] == "SUCCESS" and mclient.show_task(f.task_id),
                     5, what="SUCCESS in show_task")
    assert shown["task_id"] == f.task_id and shown["attempts"] == 1 and shown["error"] is None
    assert shown["args_repr"] == "1, 1"  # made by the client at submit: the ventilator never unpickles
    with pytest.raises(KeyError):
        mclient.show_task("no-such-task-id")


def test_a_tasks_arguments_are_shown_short_while_queued_and_in_lists(mcluster, mclient):
    q = f"unserved-{uid()}"
    big = mclient.submit_task(T.add, ("x" * 10_000, list(range(1000))), {"flag": {"a": {"b": {"c": {"d": 1}}}}}, queue=q)
    wait_for(lambda: mclient.count_tasks(queue=q) == 1, 5, what="queued")
    text = mclient.show_task(big.task_id)["args_repr"]
    assert text.startswith("'xxx") and "..." in text and len(text) <= 500, text
    assert "flag={'a': {'b': {'c': {...}}}}" in text and "998" not in text
    assert [r["args_repr"] for r in mclient.list_tasks(queue=q)] == [text]
    with connect(mcluster, show_args=False) as quiet:  # arguments that must not be shown (secrets)
        hidden = quiet.submit_task(T.add, ("secret", 1), queue=q)
        wait_for(lambda: mclient.count_tasks(queue=q) == 2, 5, what="queued")
        assert mclient.show_task(hidden.task_id)["args_repr"] is None
        assert mclient.cancel(hidden.task_id)
    assert mclient.cancel(big.task_id)
    assert mclient.show_task(big.task_id)["args_repr"] == text  # and in the history


# ================================================================ requeue / forget

def test_requeue_a_failed_task_runs_it_again(mclient, adir):
    flag = str(adir / f"flag-{uid()}")
    name = f"lc.requeue-{uid()}"
    f = mclient.submit_task(T.fail_first_run, (flag,), name=name)
    with pytest.raises(ValueError):
        f.result(10)
    wait_for(lambda: mclient.get_status(f.task_id) is S.FAILED, 5, what="FAILED")
    new = mclient.requeue(f.task_id)
    assert new != f.task_id
    assert mclient.future_for(new).result(10) == "second run"
    assert mclient.get_status(new) is S.SUCCESS
    shown = wait_for(lambda: (lambda s: s if s["state"] == "SUCCESS" else None)(mclient.show_task(new)), 5,
                     what="the requeued task in the history")
    assert shown["parent"] == f.task_id and shown["name"] == name
    assert mclient.get_status(f.task_id) is S.FAILED  # the original stays failed
    listed = {r["task_id"]: r["state"] for r in mclient.list_tasks(name=name)}
    assert listed == {f.task_id: "FAILED", new: "SUCCESS"}
    again = mclient.requeue(f.task_id)  # a failed task may be requeued again: another new id
    assert again not in (f.task_id, new)
    assert mclient.future_for(again).result(10) == "second run"
    with pytest.raises(zq.ZqError):
        mclient.requeue(new)  # succeeded: nothing to requeue


def test_requeue_a_cancelled_task(mclient):
    q = f"unserved-{uid()}"
    f = mclient.submit_task(T.add, (1, 2), queue=q)
    wait_for(lambda: mclient.count_tasks(queue=q) == 1, 5, what="queued at the ventilator")
    assert mclient.cancel(f.task_id)
    wait_for(lambda: mclient.get_status(f.task_id) is S.CANCELED, 5, what="CANCELED")
    new = mclient.requeue(f.task_id)
    assert mclient.get_status(new) is S.QUEUED
    assert mclient.show_task(new)["queue"] == q
    assert mclient.cancel(new)


def test_cancel_right_after_submit(mclient):
    q = f"unserved-{uid()}"
    futs = [mclient.submit_task(T.add, (i, 1), queue=q) for i in range(1)]
    outcomes = []
    for _ in range(10):
        f = mclient.submit_task(T.add, (1, 1), queue=q)
        outcomes.append(mclient.cancel(f.task_id))
        futs.append(f)
    wait_for(lambda: mclient.count_tasks(queue=q, state="CANCELED") + mclient.count_tasks(queue=q, state="QUEUED")
             == 11, 5, what="every task seen by the ventilator")
    for f in futs:  # clean up whatever was not cancelled
        mclient.cancel(f.task_id)
    assert outcomes == [True] * 10
    assert all(f.cancelled() for f in futs)


def test_forget_hides_a_finished_task(mclient):
    name = f"lc.forget-{uid()}"
    fs = [mclient.submit_task(T.fail, ("f",), name=name) for _ in range(2)]
    for f in fs:
        with pytest.raises(ValueError):
            f.result(10)
    wait_for(lambda: mclient.count_tasks(name=name, state="FAILED") == 2, 5, what="2 in the history")
    assert mclient.forget(fs[0].task_id) is True
    assert [r["task_id"] for r in mclient.list_tasks(name=name)] == [fs[1].task_id]
    assert mclient.count_tasks(name=name) == 1
    everything = {r["task_id"]: r["forgotten"] for r in mclient.list_tasks(name=name, forgotten=True)}
    assert everything == {fs[0].task_id: True, fs[1].task_id: False}
    assert mclient.count_tasks(name=name, forgotten=True) == 2
    assert mclient.forget("no-such-task") is False
    q = f"unserved-{uid()}"
    queued = mclient.submit_task(T.add, (1, 1), queue=q)
    wait_for(lambda: mclient.count_tasks(queue=q) == 1, 5, what="queued")
    with pytest.raises(zq.ZqError):
        mclient.forget(queued.task_id)  # not finished
    assert mclient.cancel(queued.task_id)


# ============================================================== zq tasks CLI

def test_tasks_cli_ls_show_requeue_cancel(mcluster, mclient, adir):
    name = f"lc.cli-{uid()}"
    flag = str(adir / f"flag-{uid()}")
    f = mclient.submit_task(T.fail_first_run, (flag,), name=name)
    with pytest.raises(ValueError):
        f.result(10)
    wait_for(lambda: mclient.get_status(f.task_id) is S.FAILED, 5, what="FAILED")
    c = conn(mcluster)

    r = run_zq("tasks", "ls", "--name", name, "--json", *c)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [(x["task_id"], x["state"]) for x in rows] == [(f.task_id, "FAILED")]
    r = run_zq("tasks", "ls", "--state", "FAILED", "--limit", "500", *c)
    assert r.returncode == 0 and f.task_id in r.stdout and "STATE" in r.stdout.splitlines()[0]

    r = run_zq("tasks", "show", f.task_id, "--json", *c)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["task_id"] == f.task_id and shown["state"] == "FAILED" and shown["name"] == name
    r = run_zq("tasks", "show", f.task_id, *c)
    assert r.returncode == 0 and f"args:        {flag!r}" in r.stdout.splitlines(), r.stdout

    r = run_zq("tasks", "requeue", f.task_id, *c)
    assert r.returncode == 0, r.stderr
    new = r.stdout.strip()
    assert new and new != f.task_id
    assert mclient.future_for(new).result(10) == "second run"

    q = f"unserved-{uid()}"
    queued = mclient.submit_task(T.add, (1, 1), queue=q)
    wait_for(lambda: mclient.count_tasks(queue=q) == 1, 5, what="queued")
    r = run_zq("tasks", "cancel", queued.task_id, *c)
    assert r.returncode == 0 and "cancelled" in r.stdout, r.stdout + r.stderr
    assert mclient.get_status(queued.task_id) is S.CANCELED

    r = run_zq("tasks", "show", "no-such-task", *c)
    assert r.returncode != 0
    assert "no-such-task" in r.stderr and "Traceback" not in r.stderr


# ========================================================= history across restarts

def test_history_survives_a_ventilator_restart_with_a_journal(make_cluster, make_client, tmp_path):
    journal = str(tmp_path / "vent.db")
    cluster = make_cluster(workers=1, executor="thread", concurrency=2, ventilator_args=["--journal", journal],
                           env=lc_env(tmp_path))
    client = make_client(cluster)
    name = f"lc.hist-{uid()}"
    flag = str(tmp_path / "flag")
    ok = client.submit_task(T.add, (1, 2), name=name)
    bad = client.submit_task(T.fail_first_run, (flag,), name=name)
    assert ok.result(10) == 3
    with pytest.raises(ValueError):
        bad.result(10)
    wait_for(lambda: client.count_tasks(name=name, state="SUCCESS") == 1
             and client.count_tasks(name=name, state="FAILED") == 1, 5, what="both in the history")
    assert client.forget(ok.task_id)
    cluster.restart("ventilator")
    wait_for(lambda: _safe(lambda: client.count_tasks(name=name, forgotten=True)) == 2, 10,
             what="the history back after the restart")
    assert [r["task_id"] for r in client.list_tasks(name=name)] == [bad.task_id], (
        client.list_tasks(name=name, forgotten=True), ok.task_id, ok.envelope)
    assert client.show_task(bad.task_id)["state"] == "FAILED"
    assert client.show_task(ok.task_id)["forgotten"] is True
    assert client.show_task(ok.task_id)["args_repr"] == "1, 2"  # kept in the journal's history
    assert client.get_status(bad.task_id) is S.FAILED
    new = client.requeue(bad.task_id)  # its arguments were kept
    assert client.future_for(new).result(10) == "second run"


def test_requeue_from_the_history_after_two_restarts(make_cluster, make_client, tmp_path):
    journal = str(tmp_path / "vent.db")
    cluster = make_cluster(workers=1, executor="thread", concurrency=2, ventilator_args=["--journal", journal],
                           env=lc_env(tmp_path))
    client = make_client(cluster)
    bad = client.submit_task(T.fail_first_run, (str(tmp_path / "flag"),))
    with pytest.raises(ValueError):
        bad.result(10)
    # the ventilator's own record (get_status answers from the client's memory first)
    wait_for(lambda: (_safe(lambda: client.show_task(bad.task_id)) or {}).get("state") == "FAILED", 5,
             what="FAILED in the ventilator's history")
    for _ in range(2):
        cluster.restart("ventilator")
        wait_for(lambda: _safe(lambda: client.show_task(bad.task_id)), 10, what="the ventilator back")
    new = client.requeue(bad.task_id)
    assert client.future_for(new).result(10) == "second run"


def _safe(fn):
    try:
        return fn()
    except (zq.ZqError, TimeoutError, KeyError):
        return None


# ======================================================== result expiry, take-once

def test_get_result_consume_takes_it_once(mclient):
    f = mclient.submit_task(T.add, (20, 22), retain_result=True)
    assert f.result(10) == 42
    assert mclient.get_result(f.task_id).value == 42
    taken = mclient.get_result(f.task_id, consume=True)
    assert taken.value == 42 and taken.task_id == f.task_id and taken.state is S.SUCCESS
    with pytest.raises(KeyError):
        mclient.get_result(f.task_id)
    with pytest.raises(KeyError):
        mclient.get_result(f.task_id, consume=True)


def test_per_task_result_ttl_expires_retained_results(mclient):
    short = mclient.submit_task(T.add, (1, 1), retain_result=True, result_ttl=1.0)
    long = mclient.submit_task(T.add, (2, 2), retain_result=True, result_ttl=60.0)
    assert short.result(10) == 2 and long.result(10) == 4
    t0 = time.monotonic()
    assert mclient.get_result(short.task_id).value == 2
    wait_for(lambda: _result_or_none(mclient, short.task_id) is None, 10, interval=0.05,
             what="the short-lived result expired")
    assert time.monotonic() - t0 > 0.5  # not before its TTL (less the client's round trips)
    assert mclient.get_result(long.task_id).value == 4
    with pytest.raises(ValueError):
        mclient.submit_task(T.add, (1, 1), result_ttl=0)


def test_sink_result_ttl_expires_retained_results(make_cluster, make_client, tmp_path):
    cluster = make_cluster(workers=1, executor="thread", concurrency=2, sink_args=["--result-ttl", "1"],
                           env=lc_env(tmp_path))
    client = make_client(cluster, retain_result=True)
    f = client.submit(T.add, 3, 4)
    keep = client.submit_task(T.add, (5, 6), result_ttl=60)  # a task's own TTL wins
    assert f.result(10) == 7 and keep.result(10) == 11
    assert client.get_result(f.task_id).value == 7
    wait_for(lambda: _result_or_none(client, f.task_id) is None, 10, interval=0.05, what="expired")
    assert client.get_result(keep.task_id).value == 11
    assert client.stats()["sink"]["counters"].get("expired", 0) >= 1


# ======================================================================== events

def transitions(adir, task_id):
    return [tuple(x[2:]) for x in map(json.loads, read_lines(adir / "states.log")) if x[0] == task_id]


def wait_transitions(adir, task_id, last):
    return wait_for(lambda: (lambda t: t if t and t[-1][1] == last else None)(transitions(adir, task_id)), 10,
                    what=f"{task_id} reaching {last}")


def test_on_state_for_a_successful_task(mclient, adir):
    f = mclient.submit(T.add, 1, 2)
    assert f.result(10) == 3
    assert wait_transitions(adir, f.task_id, "SUCCESS") == [
        ("UNKNOWN", "QUEUED"), ("QUEUED", "RESERVED"), ("RESERVED", "RUNNING"), ("RUNNING", "SUCCESS")]


def test_on_state_for_a_failed_task(mclient, adir):
    f = mclient.submit(T.fail, "x")
    with pytest.raises(ValueError):
        f.result(10)
    assert wait_transitions(adir, f.task_id, "FAILED") == [
        ("UNKNOWN", "QUEUED"), ("QUEUED", "RESERVED"), ("RESERVED", "RUNNING"), ("RUNNING", "FAILED")]


def test_on_state_for_a_retried_task(mclient, adir):
    path = str(adir / f"att-{uid()}.log")
    f = mclient.submit_task(T.fail_until, (path, 2), retries=1, retry_backoff=0.01)
    assert f.result(10)["attempt"] == 2
    assert wait_transitions(adir, f.task_id, "SUCCESS") == [
        ("UNKNOWN", "QUEUED"), ("QUEUED", "RESERVED"), ("RESERVED", "RUNNING"), ("RUNNING", "RETRYING"),
        ("RETRYING", "QUEUED"),
        ("QUEUED", "RESERVED"), ("RESERVED", "RUNNING"), ("RUNNING", "SUCCESS")]


def test_on_state_pause_resume_cancel(mclient, adir):
    q = f"unserved-{uid()}"
    f = mclient.submit_task(T.add, (1, 1), queue=q)
    wait_transitions(adir, f.task_id, "QUEUED")
    mclient.pause(q)
    wait_transitions(adir, f.task_id, "PAUSED")
    mclient.resume(q)
    wait_transitions(adir, f.task_id, "QUEUED")
    assert mclient.cancel(f.task_id)
    assert wait_transitions(adir, f.task_id, "CANCELED") == [
        ("UNKNOWN", "QUEUED"), ("QUEUED", "PAUSED"), ("PAUSED", "QUEUED"), ("QUEUED", "CANCELED")]


def test_on_state_events_chain_for_a_task_submitted_while_paused(mcluster, mclient, adir):
    q = f"prepaused-{uid()}"
    mclient.pause(q)
    f = mclient.submit_task(T.add, (2, 2), queue=q)
    wait_for(lambda: mclient.get_status(f.task_id) is S.PAUSED, 5, what="PAUSED")
    w = mcluster.add_worker(["--queue", q], wait=True)
    wait_for(lambda: any(x["pid"] == w.proc.pid for x in mclient.stats()["ventilator"]["workers"]), 10,
             what="the worker for the queue")
    mclient.resume(q)
    assert f.result(10) == 4
    ts = wait_transitions(adir, f.task_id, "SUCCESS")
    assert ts[0][0] == "UNKNOWN"
    assert all(b[0] == a[1] for a, b in zip(ts, ts[1:])), f"transitions do not chain: {ts}"
    assert "PAUSED" in [new for _, new in ts]


def test_on_state_for_a_task_whose_worker_is_lost(make_cluster, make_client, tmp_path):
    states = str(tmp_path / "states.log")
    cluster = make_cluster(workers=1, executor="thread", concurrency=1, ventilator_args=POLICY_ARGS,
                           env=lc_env(tmp_path, **{T.ENV_STATES: states}))
    client = make_client(cluster)
    started = str(tmp_path / "started")
    f = client.submit(T.gated, str(tmp_path / "gate-never"), started, "x")
    wait_for(lambda: read_lines(started), 10, what="running")
    cluster.workers[0].kill()
    cluster.add_worker(wait=True)
    (tmp_path / "gate-never").touch()
    assert f.result(15) == "x"
    ts = wait_transitions(tmp_path, f.task_id, "SUCCESS")
    assert ts == [("UNKNOWN", "QUEUED"), ("QUEUED", "RESERVED"), ("RESERVED", "RUNNING"), ("RUNNING", "QUEUED"),
                  ("QUEUED", "RESERVED"), ("RESERVED", "RUNNING"), ("RUNNING", "SUCCESS")]
    stays(lambda: transitions(tmp_path, f.task_id) == ts, 0.2, what="no more events")
