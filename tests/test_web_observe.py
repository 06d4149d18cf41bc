"""``zq http`` sends the ventilator's new list/count filters (until, parent, fn names)
and shows what it now reports (lost workers, failure details)."""

from __future__ import annotations

import time

from tests.lifecycle_tasks import wait_for

from .web_harness import api, cluster  # noqa: F401 (fixtures)


def test_task_page_filters_by_until_parent_and_short_name(api):
    code, body, _ = api.call("POST", "/tasks", {"name": "http.add", "params": {"a": 1, "b": 2}})
    tid = body["task_id"]
    wait_for(lambda: api.call("GET", f"/tasks/{tid}")[1].get("state") == "SUCCESS", 15, what="done")
    code, page, _ = api.call("GET", "/api/tasks?name=add&limit=5")
    assert code == 200 and any(t["task_id"] == tid for t in page["items"]) and page["filters"]["name"] == "add"
    code, page, _ = api.call("GET", f"/api/tasks?until={time.time() - 3600}")
    assert code == 200 and page["total"] == 0 and page["items"] == []
    code, page, _ = api.call("GET", f"/api/tasks?parent={tid}")
    assert code == 200 and page["total"] == 0
    code, listed, _ = api.call("GET", "/tasks?name=add&until=2999-01-01T00:00")
    assert code == 200 and any(t["task_id"] == tid for t in listed)
    code, body, _ = api.call("GET", "/api/tasks?until=someday")
    assert code == 400 and "until" in body["error"]


def test_status_reports_worker_split_and_lost_workers(api):
    code, st, _ = api.call("GET", "/status")
    assert code == 200
    v = st["ventilator"]
    assert "lost_workers" in v and "workers_lost" in v
    assert all({"running", "prefetched", "silent"} <= set(w) for w in v["workers"])
