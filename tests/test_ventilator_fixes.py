"""The ventilator's own defects: follow-ups of scheduled tasks, an unreachable sink,
the journal's function table, admin calls on a large backlog.

Real nodes on loopback (``make_cluster``); synchronised on futures and polls with
deadlines, never on sleeps.
"""

from __future__ import annotations

from types import SimpleNamespace

import zq
from tests import vent_fix_tasks as V
from tests.conftest import run_zq
from tests.lifecycle_tasks import lc_env, wait_for


def _safe(fn):
    try:
        return fn()
    except (zq.ZqError, TimeoutError, KeyError):
        return None


# ============================================== follow-ups of scheduled tasks (no client)

def test_a_followup_of_a_scheduled_task_has_no_client_and_its_result_is_kept(make_cluster, make_client,
                                                                             tmp_path):
    cluster = make_cluster(workers=1, executor="thread", concurrency=2, worker_args=V.IMPORT_ARGS,
                           env=lc_env(tmp_path, **{V.ENV_SCHEDULE: "1"}))
    client = make_client(cluster)

    def followups():
        return [t for t in client.list_tasks(limit=None)
                if (t["parent"] or "").startswith("sched:vf.spawner:") and t["state"] == "SUCCESS"]

    child = wait_for(followups, 15, what="the scheduled task's follow-up finished")[0]
    tid = child["task_id"]
    assert tid.startswith(child["parent"] + ".")
    result = wait_for(lambda: _safe(lambda: client.get_result(tid)), 5, what="the follow-up's result retained")
    assert result.ok
    # nobody submitted the chain: the follow-up ran with no client (before: the routing id of
    # the worker that spawned it, where the sink then tried to deliver its result)
    assert result.value == ""
    assert client.show_task(tid)["state"] == "SUCCESS"
    sink = client.stats()["sink"]
    assert sink["undelivered"] == 0, sink


# ====================================================== a ventilator that cannot reach its sink

def _dead_endpoint() -> str:
    """A loopback endpoint where nothing listens."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def test_a_ventilator_that_cannot_reach_its_sink_says_so(make_cluster, make_client, tmp_path):
    dead = _dead_endpoint()
    # three workers (and the client) use the real sink; the ventilator was given another
    cluster = make_cluster(workers=3, executor="thread", concurrency=1, ventilator_args=["--sink", dead],
                           env=lc_env(tmp_path))
    client = make_client(cluster, unreachable_timeout=3.0)
    fut = client.submit(V.kill_my_worker)  # kills each worker it runs on: the 3rd loss is WorkerLost
    wait_for(lambda: all(not w.alive() for w in cluster.workers), 20, what="the three workers dead")
    # the ventilator finished it FAILED (WorkerLost): a result only it can send, to a dead sink
    wait_for(lambda: (_safe(lambda: client.show_task(fut.task_id)) or {}).get("state") == "FAILED", 10,
             what="WorkerLost decided")
    # the sink has been silent for longer than the client's unreachable_timeout by now: within
    # an interval or two the client hears it and fails the future, naming the ventilator's sink
    exc = fut.exception(timeout=3.0 + 2.0)
    assert isinstance(exc, zq.NodeUnreachable), repr(exc)
    assert dead in str(exc) and "ventilator" in str(exc)
    # the client's own nodes are fine: only the futures that depend on that link fail
    other = client.submit_task(abs, (-2,), queue="unserved")
    assert client.get_status(other.task_id) in (zq.TaskState.QUEUED, zq.TaskState.PAUSED) and not other.done()
    link = client.stats()["ventilator"]["sink_link"]
    assert link["endpoint"] == dead and not link["up"] and link["waiting"] >= 1, link
    out = run_zq("status", "--ventilator", cluster.endpoints["clients"], "--sink", cluster.endpoints["sink"])
    assert out.returncode == 0, out.stderr
    assert f"sink link ventilator -> {dead}  DOWN" in out.stdout, out.stdout
    assert any(" ERROR " in line and dead in line for line in cluster.ventilator.lines), \
        "no error-level log line naming the sink"


# ================================================ the journal's function table is pruned

def _journal_functions(path: str) -> int:
    import sqlite3

    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)  # read-only, beside the ventilator
    try:
        return db.execute("SELECT COUNT(*) FROM functions").fetchone()[0]
    finally:
        db.close()


def _adder(n: int):
    return lambda x: x + n  # a closure: each n pickles to another function (another digest)


def test_the_journal_forgets_functions_no_task_uses(make_cluster, make_client, tmp_path):
    journal = str(tmp_path / "vent.db")
    cluster = make_cluster(workers=1, executor="thread", concurrency=4, ventilator_args=["--journal", journal])
    client = make_client(cluster)
    blocked = client.submit_task(_adder(-1), (1,), queue="unserved")  # still queued: its function stays
    futs = [client.submit(_adder(n), 1) for n in range(40)]
    assert [f.result(20) for f in futs] == [n + 1 for n in range(40)]
    assert _journal_functions(journal) >= 1
    # finished tasks' functions go (within FN_PRUNE_INTERVAL, 2 s); the queued task's stays
    wait_for(lambda: _journal_functions(journal) == 1, 15, what="the journal's unused functions deleted")
    assert client.stats()["ventilator"]["counters"]["functions_pruned"] >= 40
    # a restarted ventilator still runs the queued task: its function was kept
    cluster.restart("ventilator")
    cluster.add_worker(["--queue", "unserved"], wait=True)
    assert blocked.result(20) == 0


# ================================================ admin calls on a large backlog: O(page)

BACKLOG = 200_000


def _submit_raw(endpoint: str, queue: str, names: list[str], n: int, batch: int = 5000) -> list[str]:
    """Queue ``n`` by-name tasks straight through the clients socket (the protocol's SUBMIT,
    5,000 a message): a backlog in seconds, where submit() calls would take minutes."""
    import os
    import time

    import zmq

    from zq import protocol as P
    from zq._sockets import dealer
    from zq.serialize import pack_args

    cid = os.urandom(8).hex()
    args = pack_args((), {})
    t0 = time.time()
    ctx = zmq.Context()
    sock = dealer(ctx, endpoint, cid.encode())
    ids = []
    try:
        for start in range(0, n, batch):
            # distinct submission times, in order: the order list_tasks shows (newest first)
            specs = [P.TaskSpec(f"{cid}-{i}", names[i % len(names)], queue, P.BY_NAME, cid, None, 0, None,
                                t0 + i * 1e-5, args=args) for i in range(start, min(n, start + batch))]
            ids += [s.task_id for s in specs]
            sock.send_multipart(P.pack_tasks(P.SUBMIT, specs, {}))
        # a SUBMIT with "req" is answered once the ventilator has read everything before it
        sock.send_multipart(P.pack_tasks(P.SUBMIT, [], {}, req=1))
        assert sock.poll(120_000), "the ventilator did not answer"
        while P.unpack(sock.recv_multipart()).command != P.REPLY:
            assert sock.poll(120_000)
    finally:
        sock.close(0)
        ctx.term()
    return ids


def test_admin_calls_on_a_large_backlog_read_only_their_page(make_cluster, make_client):
    cluster = make_cluster(workers=0)
    client = make_client(cluster)
    q = "backlog"
    client.pause(q)  # nothing runs: every task stays PAUSED
    ids = _submit_raw(cluster.endpoints["clients"], q, ["vf.one", "vf.two"], BACKLOG)

    def vstats():
        return client.stats()["ventilator"]

    # the loop's turns without admin calls (the submission burst out of the window)
    idle = wait_for(lambda: (lambda st: st if st["loop"]["lag"] < 0.2 else None)(vstats()), 20,
                    what="the ventilator's loop idle again")["loop"]["lag"]
    read_before = vstats()["admin_records_read"]
    for _ in range(5):
        assert client.count_tasks(queue=q) == BACKLOG
        assert client.count_tasks(state="PAUSED", name="vf.two") == BACKLOG // 2
        assert client.count_tasks(state="QUEUED") == 0
        page = client.list_tasks(limit=50)
        assert [t["task_id"] for t in page] == ids[::-1][:50]
        assert {t["state"] for t in page} == {"PAUSED"}
        deep = client.list_tasks(queue=q, limit=50, offset=100_000)  # two groups (names) merged
        assert [t["task_id"] for t in deep] == ids[::-1][100_000:100_050]
        assert [t["task_id"] for t in client.list_tasks(name="vf.one", limit=3, offset=7)] == \
            ids[-2::-2][7:10]
    st = vstats()
    read = st["admin_records_read"] - read_before
    # each round returned 103 tasks; finding offset 100,000 among two groups reads a few
    # dozen more: O(page), where the whole backlog is 200,000 per call
    assert read <= 5 * (103 + 150), read
    # the loop's longest turn with these calls stays of the order of an idle one
    # (reading 200,000 tasks per call took ~0.4 s of the loop each)
    assert st["loop"]["lag"] < max(0.25, 4 * idle), (st["loop"], idle)


def test_the_task_table_counts_and_pages_like_a_full_scan(monkeypatch):
    """TaskTable against the obvious computation (filter all, sort newest first, slice),
    through random adds, dispatches, starts, finishes and pauses; small blocks, so that
    splits and multi-block offsets happen."""
    import random

    import zq.nodes.tasktable as TT
    from zq.nodes.records import TaskRecord
    from zq.envelope import TaskState as St
    from zq.protocol import BY_NAME, TaskSpec

    monkeypatch.setattr(TT, "BLOCK", 4)
    holds = SimpleNamespace(paused=set(), disabled=set())
    paused = holds.paused
    reports: list = []
    odd: list = []
    table = TT.TaskTable(holds, lambda r, a, b: reports.append((a, b)), lambda r, a, b: odd.append((a, b)))
    live: list[TaskRecord] = []
    rnd = random.Random(7)
    for i in range(2500):
        op = rnd.random()
        if op < 0.5 or not live:
            spec = TaskSpec(f"t{i}", rnd.choice("ab"), rnd.choice("xyz"), BY_NAME, "c", None, 0, None,
                            rnd.choice([1.0, 2.0, 3.0]) + rnd.choice([1, -1]) * i * 1e-4)
            rec = TaskRecord(spec, b"c")
            table.add(rec)
            table.set_state(rec, St.QUEUED)
            live.append(rec)
        elif op < 0.6:
            rec = rnd.choice(live)
            if rec.state is St.QUEUED:
                rec.worker = b"w" if rec.worker is None else None
        elif op < 0.7:
            rec = rnd.choice(live)
            if rec.state is St.QUEUED and rec.worker is not None:
                table.set_state(rec, St.RUNNING)
        elif op < 0.8:
            rec = rnd.choice(live)
            if rec.worker is not None or rec.state is St.RUNNING:
                table.set_state(rec, St.SUCCESS if rec.state is St.RUNNING else St.CANCELED)
                table.remove(rec)
                live.remove(rec)
        elif op < 0.85:
            q = rnd.choice("xyz")
            (paused.discard if q in paused else paused.add)(q)
        else:
            st = rnd.choice([None, "QUEUED", "PAUSED", "RUNNING"])
            q, n, since = rnd.choice([None, "x", "y"]), rnd.choice([None, "a", "b"]), rnd.choice([None, 2.0, 2.5])
            want = [r for r in live if (st is None or table.shown(r).value == st)
                    and (q is None or r.spec.queue == q) and (n is None or r.spec.name == n)
                    and (since is None or r.spec.submitted_at >= since)]
            want.sort(key=lambda r: -r.spec.submitted_at)  # the old order: stable, ties oldest first
            assert table.count(st, q, n, since) == len(want)
            offset, limit = rnd.randint(0, len(want) + 2), rnd.choice([None, 0, 1, 5, 50])
            got = table.page(st, q, n, since, offset, limit)
            assert [r.spec.task_id for r in got] == [r.spec.task_id for r in want[offset:][:limit]]
    assert not odd, odd[:5]
    assert len(table) == len(live)
