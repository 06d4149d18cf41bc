"""The task table's time windows (since/until), short names and parent filter: pages and
counts against a brute-force filter, with offsets across groups."""

from __future__ import annotations

import random

from zq.nodes.dispatch import Dispatch
from zq.nodes.records import TaskRecord
from zq.nodes.tasktable import TaskTable
from zq.envelope import TaskState
from zq.protocol import BY_NAME, TaskSpec
from zq.serialize import pack_args


def test_pages_and_counts_match_a_brute_force_filter():
    rng = random.Random(11)
    table = TaskTable(Dispatch(), None, lambda *a: None)
    recs = []
    for i in range(3000):
        parent = f"t{rng.randrange(i)}" if i and rng.random() < 0.2 else None
        spec = TaskSpec(f"t{i}", rng.choice(["a.f", "b.f", "a.g"]), rng.choice(["q1", "q2"]), BY_NAME, "c",
                        False, 0, None, 1000.0 + i * 0.5, opts={"parent": parent} if parent else None,
                        args=pack_args((), {}))
        rec = TaskRecord(spec, b"c")
        table.add(rec)
        table.set_state(rec, TaskState.QUEUED)
        if rng.random() < 0.3:
            rec.worker = b"w"
            table.set_state(rec, TaskState.RUNNING if rng.random() < 0.5 else TaskState.RESERVED)
        recs.append(rec)
    for rec in rng.sample(recs, 300):  # finished: gone from the table
        table.set_state(rec, TaskState.SUCCESS)
        table.remove(rec)
        recs.remove(rec)

    def brute(state=None, queue=None, name=None, since=None, until=None, parent=None):
        out = [r for r in recs
               if (state is None or table.shown(r).value == state) and (queue is None or r.spec.queue == queue)
               and (name is None or r.spec.name == name or ("." not in name and r.spec.name.endswith("." + name)))
               and (since is None or r.spec.submitted_at >= since) and (until is None or r.spec.submitted_at < until)
               and (parent is None or (r.spec.opts or {}).get("parent") == parent)]
        return [r.spec.task_id for r in sorted(out, key=lambda r: r.key, reverse=True)]

    cases = [dict(), dict(name="f"), dict(name="a.f"), dict(since=1500.0), dict(until=1800.0),
             dict(since=1200.0, until=2000.0), dict(name="f", since=1300.0, until=1900.0, queue="q1"),
             dict(state="RUNNING", until=2200.0), dict(parent="t5"), dict(parent="t40", name="f")]
    for case in cases:
        want = brute(**case)
        assert table.count(**case) == len(want), case
        for off in (0, 7, 400):
            got = [r.spec.task_id for r in table.page(offset=off, limit=30, **case)]
            assert got == want[off:off + 30], (case, off)
