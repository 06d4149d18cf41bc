"""The ventilator's own defects: follow-ups of scheduled tasks, an unreachable sink,
the journal's function table, admin calls on a large backlog.

Real nodes on loopback (``make_cluster``); synchronised on futures and polls with
deadlines, never on sleeps.
"""

from __future__ import annotations

import pytest

import zq
from tests import vent_fix_tasks as V
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
