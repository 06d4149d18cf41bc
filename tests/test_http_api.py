"""The HTTP admin API (``zq http``) against a real cluster."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request

import pytest

from tests.lifecycle_tasks import wait_for
from zq._embedded import parse_ready

from .conftest import zq_script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def call(base: str, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())



@pytest.fixture
def api(make_cluster):
    cluster = make_cluster(workers=1, executor="thread", worker_args=["--import", "tests.http_tasks"],
                           env={"PYTHONPATH": REPO})
    p = subprocess.Popen([zq_script(), "http", "--ventilator", cluster.endpoints["clients"],
                          "--sink", cluster.endpoints["sink"], "--port", "0"],
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "ZQ_CLUSTER_HEARTBEAT_INTERVAL": "0.2"})
    url = None
    for line in p.stderr:
        eps = parse_ready(line, "http")
        if eps:
            url = eps["url"]
            break
    assert url, "zq http did not start"
    try:
        yield url
    finally:
        p.terminate()
        assert p.wait(20) == 0


def test_submit_list_show_result(api):
    code, body = call(api, "POST", "/tasks", {"name": "http.add", "params": {"a": 2, "b": 3}})
    assert code == 202
    tid = body["task_id"]
    res = wait_for(lambda: (lambda r: r[1] if r[0] == 200 else None)(call(api, "GET", f"/tasks/{tid}/result")))
    assert res["value"] == 5 and res["state"] == "SUCCESS"
    code, shown = call(api, "GET", f"/tasks/{tid}")
    assert code == 200 and shown["name"] == "http.add"
    code, listed = call(api, "GET", "/tasks?name=http.add")
    assert code == 200 and any(t["task_id"] == tid for t in listed)
    code, status = call(api, "GET", "/status")
    assert code == 200 and status["ventilator"]["workers"]


def test_bad_requests_get_clear_errors(api):
    assert call(api, "POST", "/tasks", {"name": "nope"})[0] == 404
    code, body = call(api, "POST", "/tasks", {"name": "http.add", "params": {"zzz": 1}})
    assert code == 400 and "argument" in body["error"]
    assert call(api, "GET", "/tasks/unknown-id")[0] == 404
    assert call(api, "GET", "/no/such/route")[0] == 404


def test_requeue_forget_pause_resume(api):
    code, body = call(api, "POST", "/tasks", {"name": "http.fail"})
    tid = body["task_id"]
    wait_for(lambda: call(api, "GET", f"/tasks/{tid}")[1].get("state") == "FAILED")
    code, body = call(api, "POST", f"/tasks/{tid}/requeue")
    assert code == 202 and body["task_id"] != tid
    assert call(api, "DELETE", f"/tasks/{tid}")[1] == {"forgotten": True}
    assert all(t["task_id"] != tid for t in call(api, "GET", "/tasks?state=FAILED")[1])
    assert call(api, "POST", "/queues/default/pause")[0] == 200
    code, body = call(api, "POST", "/tasks", {"name": "http.add", "params": [1]})
    wait_for(lambda: call(api, "GET", f"/tasks/{body['task_id']}")[1].get("state") == "PAUSED")
    assert call(api, "POST", "/queues/default/resume")[0] == 200
    wait_for(lambda: call(api, "GET", f"/tasks/{body['task_id']}")[1].get("state") == "SUCCESS")
