"""The history's filters (until, a name without its module, parent) and its index:
counts read no entry (in memory and in a journal), pages read only what they return."""

from __future__ import annotations

import datetime

import random
import sqlite3
import time
import uuid

import pytest

from zq.nodes.history import COLUMNS, History
from zq.protocol import BY_NAME, TaskSpec
from zq.serialize import pack_args
from tests.lifecycle_tasks import wait_for

NAMES = ["app.jobs.resize", "app.jobs.crop", "other.resize", "plain"]
STATES = ["SUCCESS", "FAILED", "CANCELED"]


def spec(i: int, name: str, queue: str, parent: str | None) -> TaskSpec:
    opts = {"parent": parent} if parent else None
    return TaskSpec(f"t{i}", name, queue, BY_NAME, "c", False, 0, None, 1000.0 + i, opts=opts,
                    args=pack_args((), {}))


def fill(h: History, n: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    clock = [5000.0]
    real = time.time
    made = []
    try:
        for i in range(n):
            clock[0] += rng.choice([0.25, 0.5, 1.0])  # no two alike: one order
            time.time = lambda: clock[0]  # entry() stamps finished_at with time.time()
            parent = f"t{rng.randrange(i)}" if i and rng.random() < 0.2 else None
            s = spec(i, rng.choice(NAMES), rng.choice(["q1", "q2"]), parent)
            st = rng.choice(STATES)
            h.add(s, st, "w", None if st == "SUCCESS" else st)
            made.append({"task_id": s.task_id, "name": s.name, "queue": s.queue, "state": st,
                         "finished_at": clock[0], "parent": parent, "forgotten": False})
    finally:
        time.time = real
    return made


def brute(made: list[dict], state=None, queue=None, name=None, since=None, until=None, parent=None,
          forgotten=False) -> list[str]:
    def ok(e: dict) -> bool:
        nm = e["name"]
        return ((state is None or e["state"] == state) and (queue is None or e["queue"] == queue)
                and (name is None or nm == name or ("." not in name and nm.endswith("." + name)))
                and (since is None or e["finished_at"] >= since) and (until is None or e["finished_at"] < until)
                and (parent is None or e["parent"] == parent) and (forgotten or not e["forgotten"]))
    hits = [e for e in made if ok(e)]
    hits.sort(key=lambda e: e["finished_at"], reverse=True)
    return [e["task_id"] for e in hits]


CASES = [dict(), dict(state="FAILED"), dict(name="resize"), dict(name="app.jobs.resize"), dict(name="plain"),
         dict(since=5200.0), dict(until=5300.0), dict(since=5100.0, until=5400.0, state="SUCCESS", queue="q2"),
         dict(name="crop", since=5050.0), dict(parent="t3"), dict(parent="t10", state="FAILED")]


@pytest.mark.parametrize("journal", [False, True])
def test_counts_and_pages_match_a_brute_force_filter(journal, tmp_path):
    db = sqlite3.connect(str(tmp_path / "h.db"), isolation_level=None) if journal else None
    h = History(db)
    made = fill(h, 1500)
    for tid in ("t5", "t77", "t300"):  # forgotten: hidden unless asked for
        h.forget(tid)
        next(e for e in made if e["task_id"] == tid)["forgotten"] = True
    for case in [*CASES, dict(forgotten=True), dict(forgotten=True, state="FAILED")]:
        want = brute(made, **case)
        args = dict(case)
        forgotten = args.pop("forgotten", False)
        assert h.count(forgotten=forgotten, **args) == len(want), case
        for off in (3, 700):  # a deep offset across groups: found by bisection, not walked
            got = [e["task_id"] for e in h.query(forgotten=forgotten, offset=off, limit=40, **args)]
            assert got == want[off:off + 40], (case, off)
    # a journal's history reopened: the index is rebuilt from it
    if journal:
        again = History(db)
        for case in CASES:
            assert again.count(**case) == len(brute(made, **case)), case


def test_a_count_reads_no_entry_and_a_page_only_its_own(tmp_path):
    h = History()
    fill(h, 20_000, seed=3)
    before = h.touched
    for case in CASES[:-2]:
        h.count(**case)
    assert h.touched == before
    h.query(state="FAILED", since=5100.0, until=9000.0, offset=0, limit=50)
    assert h.touched - before <= 50
    h.query(offset=15_000, limit=50)  # deep: the skipped entries are not read
    assert h.touched - before <= 100


def test_memory_eviction_keeps_the_index_in_step(monkeypatch):
    import zq.nodes.history as hist

    monkeypatch.setattr(hist, "MEMORY_LIMIT", 5000)
    h = History()
    made = fill(h, 12_000, seed=5)
    kept = made[-5000:]
    assert h.count() == 5000
    for case in CASES[:-2]:
        assert h.count(**case) == len(brute(kept, **case)), case
    assert sum(len(g) for g in h.index.groups.values()) == 5000


# -- on a real ventilator ----------------------------------------------------------------------


def _journal_with_history(path: str, n: int) -> float:
    """A ventilator journal holding ``n`` finished tasks (1 s apart, ending now)."""
    from zq.nodes.journal import Journal

    j = Journal(path)
    History(j.db)
    end = time.time()
    rows = [(f"old-{i}", NAMES[i % 4], "q1" if i % 3 else "q2", STATES[i % 3], end - n + i - 5, end - n + i,
             1, "w", None if i % 3 == 0 else STATES[i % 3], None, f"old-{i}", None, 0, NAMES[i % 4].rsplit(".", 1)[-1])
            for i in range(n)]
    j.db.execute("BEGIN")
    j.db.executemany(f"INSERT INTO history ({','.join(COLUMNS)}, fn) VALUES ({','.join('?' * 14)})", rows)
    j.db.execute("COMMIT")
    j.close()
    return end


def test_counts_on_200000_finished_tasks_read_no_record_and_barely_touch_the_loop(start, make_client, tmp_path):
    journal = str(tmp_path / "vent.db")
    n = 200_000
    end = _journal_with_history(journal, n)
    cluster = start(workers=0, ventilator_args=["--journal", journal])
    c = make_client(cluster)
    vent = c.stats()["ventilator"]
    read0 = vent["admin_records_read"]

    def count(**h):
        return c._request("ventilator", "count", {"forgotten": False, **h})

    assert count() == n
    assert count(since=end - 1000) == 1000
    assert count(since=end - 100_000, until=end - 50_000) == 50_000
    assert count(state="FAILED", since=end - 3000, until=end) == 1000
    assert count(name="resize") == n // 2
    assert count(name="app.jobs.resize", until=end - n + 4) == 1
    for _ in range(50):  # a dashboard polling its totals
        count(since=end - 3600, until=end, state="SUCCESS")
    vent = c.stats()["ventilator"]
    assert vent["admin_records_read"] == read0  # counted from the index: no row read
    assert vent["loop"]["lag_max"] < 0.5  # (the start-up load of the index included)
    page = c._request("ventilator", "list", {"since": end - 10, "until": end - 5, "limit": 3, "offset": 1})
    assert [t["task_id"] for t in page] == [f"old-{n - 7}", f"old-{n - 8}", f"old-{n - 9}"]
    assert c.stats()["ventilator"]["admin_records_read"] - read0 <= 4


def test_list_and_count_follow_ups_of_a_task_and_names_without_module(start, make_client):
    from tests.lifecycle_tasks import IMPORT_ARGS, wait_registered

    cluster = start(workers=1, executor="thread", concurrency=2, worker_args=IMPORT_ARGS)
    c = make_client(cluster)
    wait_registered(c, "lc.fail")
    tag = uuid.uuid4().hex[:6]
    f = c.submit_by_name("lc.fail", [f"boom-{tag}"])
    with pytest.raises(Exception):
        f.result(15)
    wait_for(lambda: c.show_task(f.task_id)["state"] == "FAILED", 10, what="failed in the history")
    kids = {c.requeue(f.task_id) for _ in range(2)}
    for k in kids:
        with pytest.raises(Exception):
            c.future_for(k).result(15)
    wait_for(lambda: c.count_tasks(parent=f.task_id) == 2, 10, what="2 follow-ups")
    listed = c.list_tasks(parent=f.task_id, limit=10)
    assert {t["task_id"] for t in listed} == kids
    assert c.count_tasks(name="fail", parent=f.task_id) == 2
    assert c.count_tasks(name="lc.fail") == c.count_tasks(name="fail") >= 3
    assert c.count_tasks(name="ail") == 0
    assert c.count_tasks(until=1.0) == 0 and c.count_tasks(until=datetime.datetime(1970, 1, 2)) == 0
    assert c.count_tasks(since=0, until=time.time() + 60) >= 3
    with pytest.raises(Exception, match="until must be a Unix time"):
        c._request("ventilator", "count", {"until": "yesterday"})
