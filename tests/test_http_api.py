"""The JSON API of ``zq http`` against a real cluster: every route, its errors, the
OpenAPI description, and the open (loopback) mode's Host and CSRF guards."""

from __future__ import annotations

import http.client
import json
import time
from urllib.parse import urlsplit

from tests.lifecycle_tasks import wait_for

from .web_harness import WebNode, api, browser_opener, cluster  # noqa: F401 (api, cluster: fixtures)


def state_of(api: WebNode, tid: str) -> str:
    return api.call("GET", f"/tasks/{tid}")[1].get("state")


def submit(api: WebNode, name: str, params=None, **opts) -> str:
    code, body, _ = api.call("POST", "/tasks", {"name": name, "params": params, **opts})
    assert code == 202, body
    return body["task_id"]


def test_submit_list_show_result_status(api):
    tid = submit(api, "http.add", {"a": 2, "b": 3})
    res = wait_for(lambda: (lambda r: r[1] if r[0] == 200 else None)(api.call("GET", f"/tasks/{tid}/result")))
    assert res["value"] == 5 and res["state"] == "SUCCESS" and res["attempts"] == 1
    code, shown, _ = api.call("GET", f"/tasks/{tid}")
    assert code == 200 and shown["name"] == "http.add" and shown["task_id"] == tid
    code, listed, _ = api.call("GET", "/tasks?name=http.add&limit=5")
    assert code == 200 and any(t["task_id"] == tid for t in listed) and len(listed) <= 5
    code, status, _ = api.call("GET", "/status")
    assert code == 200 and status["ventilator"]["workers"] and "retained" in status["sink"]


def test_bad_requests_get_clear_errors(api):
    code, body, _ = api.call("POST", "/tasks", {"name": "nope"})
    assert code == 404 and "nope" in body["error"]
    code, body, _ = api.call("POST", "/tasks", {"name": "http.add", "params": {"zzz": 1}})
    assert code == 400 and "argument" in body["error"]
    code, body, _ = api.call("POST", "/tasks", {"params": []})
    assert code == 400 and "name" in body["error"] and "required" in body["error"]
    code, body, _ = api.call("POST", "/tasks", raw=b"{not json", headers={"Content-Type": "application/json"})
    assert code == 400 and body["error"]
    code, body, _ = api.call("GET", "/tasks/unknown-id")
    assert (code, body) == (404, {"error": "unknown task id unknown-id"})
    code, body, _ = api.call("GET", "/tasks/unknown-id/result")
    assert code == 404 and "unknown-id" in body["error"]
    code, body, _ = api.call("GET", "/api/tasks/unknown-id")
    assert (code, body) == (404, {"error": "unknown task id unknown-id"})
    assert api.call("GET", "/no/such/route")[1:2] == ({"error": "no route GET /no/such/route"},)
    code, body, _ = api.call("GET", "/tasks?limit=lots")
    assert code == 400 and "limit" in body["error"]
    code, body, _ = api.call("GET", "/tasks?limit=100000")
    assert code == 400 and "limit must be between 0 and 1000" in body["error"]
    code, body, _ = api.call("GET", "/tasks?state=DONE")
    assert code == 400 and "unknown state 'DONE'" in body["error"]
    code, body, _ = api.call("GET", "/tasks?since=yesterday")
    assert code == 400 and "since" in body["error"]
    code, body, _ = api.call("PUT", "/tasks")
    assert code == 405 and "PUT" in body["error"]
    code, body, _ = api.call("POST", "/tasks/unknown-id/requeue")
    assert code in (404, 409) and "unknown-id" in body["error"]
    # an announced body over 1 MiB is refused before it is read
    conn = http.client.HTTPConnection(urlsplit(api.url).netloc, timeout=10)
    conn.putrequest("POST", "/tasks")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(2 << 20))
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413 and "1 MiB" in json.loads(r.read())["error"]
    conn.close()


def test_requeue_forget_pause_resume(api):
    tid = submit(api, "http.fail")
    wait_for(lambda: state_of(api, tid) == "FAILED")
    code, body, _ = api.call("POST", f"/tasks/{tid}/requeue")
    assert code == 202 and body["task_id"] != tid
    assert api.call("GET", f"/tasks/{body['task_id']}")[1]["parent"] == tid
    assert api.call("DELETE", f"/tasks/{tid}")[1] == {"forgotten": True}
    assert all(t["task_id"] != tid for t in api.call("GET", "/tasks?state=FAILED")[1])
    code, body, _ = api.call("POST", "/queues/default/pause")
    assert code == 200 and body["queue"] == "default"
    try:
        paused = submit(api, "http.add", [1])
        wait_for(lambda: state_of(api, paused) == "PAUSED")
        code, body, _ = api.call("DELETE", f"/tasks/{paused}")
        assert code == 409 and "has not finished" in body["error"]
    finally:
        assert api.call("POST", "/queues/default/resume")[0] == 200
    wait_for(lambda: state_of(api, paused) == "SUCCESS")


def test_cancel_and_names(api):
    held = submit(api, "http.add", [1], queue="nobody-serves-this")
    assert state_of(api, held) == "QUEUED"
    assert api.call("POST", f"/tasks/{held}/cancel")[1] == {"cancelled": True}
    wait_for(lambda: state_of(api, held) == "CANCELED")
    assert api.call("POST", "/names/http.echo/disable")[1] == {"name": "http.echo", "enabled": False}
    try:
        tid = submit(api, "http.echo", {"text": "hi"})
        wait_for(lambda: state_of(api, tid) == "PAUSED")
    finally:
        assert api.call("POST", "/names/http.echo/enable")[1] == {"name": "http.echo", "enabled": True}
    wait_for(lambda: state_of(api, tid) == "SUCCESS")


def test_dashboard_reads(api):
    ok = submit(api, "http.echo", {"text": "x" * 5000})
    bad = submit(api, "http.fail")
    wait_for(lambda: state_of(api, bad) == "FAILED" and state_of(api, ok) == "SUCCESS")
    code, page, _ = api.call("GET", "/api/tasks?state=FAILED&limit=1")
    assert code == 200 and len(page["items"]) == 1 and page["total"] >= 1 and page["items"][0]["task_id"] == bad
    code, page, _ = api.call("GET", "/api/tasks?name=http.echo&since=2000-01-01T00:00")
    assert code == 200 and ok in [t["task_id"] for t in page["items"]] and page["filters"]["since"] > 0
    code, d, _ = api.call("GET", f"/api/tasks/{bad}")
    err = d["result"]["error"]
    assert code == 200 and err["type"] == "ValueError" and "on purpose" in err["traceback"]
    assert d["result"]["started_at"] >= d["task"]["submitted_at"] and d["result"]["run_time"] >= 0
    code, d, _ = api.call("GET", f"/api/tasks/{ok}")
    assert len(d["result"]["value_repr"]) <= 2001 and "..." in d["result"]["value_repr"]
    ov = wait_for(lambda: (lambda o: o if o["stats"] and "FAILED" in o["counts"] else None)(
        api.call("GET", "/api/overview")[1]))
    assert set(ov["counts"]) == {"QUEUED", "PAUSED", "RESERVED", "RUNNING", "RETRYING", "SUCCESS", "FAILED",
                                 "CANCELED"}
    assert ov["security"] == {"auth": "none", "tls": False, "loopback_only": True, "insecure": False}
    assert len(ov["stats"]["ventilator"]["workers"]) == 1 and ov["series"]
    code, sch, _ = api.call("GET", "/api/schedules")
    assert code == 200 and sch["schedules"] == [] and "http.add" in sch["tasks"]


def test_docs_and_openapi(api):
    code, spec, _ = api.call("GET", "/openapi.json")
    paths = spec["paths"]
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, method in [("/status", "get"), ("/tasks", "get"), ("/tasks", "post"), ("/tasks/{task_id}", "get"),
                         ("/tasks/{task_id}", "delete"), ("/tasks/{task_id}/result", "get"),
                         ("/tasks/{task_id}/cancel", "post"), ("/tasks/{task_id}/requeue", "post"),
                         ("/queues/{queue}/pause", "post"), ("/queues/{queue}/resume", "post"),
                         ("/names/{name}/disable", "post"), ("/names/{name}/enable", "post"),
                         ("/api/overview", "get"), ("/api/tasks", "get"), ("/api/tasks/{task_id}", "get"),
                         ("/api/schedules", "get"), ("/metrics", "get")]:
        assert method in paths.get(path, {}), (method, path)
    code, page, _ = api.call("GET", "/docs")
    assert code == 200 and "/static/vendor/swagger-ui/swagger-ui-bundle.js" in page and "cdn" not in page.lower()
    assert api.call("GET", "/static/vendor/swagger-ui/swagger-ui-bundle.js")[0] == 200


def test_open_mode_guards_host_and_csrf(api):
    code, body, _ = api.call("GET", "/status", headers={"Host": "attacker.example:8080"})
    assert code == 403 and "Host" in body["error"]
    # a cross-site form post from a browser: refused, and nothing paused
    code, body, _ = api.call("POST", "/queues/default/pause", headers={"Origin": "http://attacker.example"})
    assert code == 403 and "CSRF" in body["error"]
    assert not api.call("GET", "/status")[1]["ventilator"]["queues"]["default"]["paused"]
    # the dashboard's own request: the page's token, equal to its cookie
    opener, jar = browser_opener()
    code, page, headers = api.call("GET", "/", opener=opener, headers={"Accept": "text/html"})
    assert code == 200 and "zq_csrf=" in headers.get("set-cookie", "") and 'src="/static/app.js"' in page
    csrf = next(c.value for c in jar if c.name == "zq_csrf")
    assert f'content="{csrf}"' in page
    hdr = {"Origin": api.url}
    assert api.call("POST", "/names/http.echo/enable", headers={**hdr, "X-CSRF-Token": "wrong"}, opener=opener)[0] == 403
    assert api.call("POST", "/names/http.echo/enable", headers={**hdr, "X-CSRF-Token": csrf}, opener=opener)[0] == 200


def test_task_detail_shows_progress_with_eta(api, tmp_path):
    flag = tmp_path / "go"
    tid = submit(api, "http.steps", {"flag": str(flag)})
    try:
        d = wait_for(lambda: (lambda d: d if (d.get("progress") or {}).get("done") == 2 else None)(
            api.call("GET", f"/api/tasks/{tid}")[1]), what="the second progress report")
        p = d["progress"]
        assert d["task"]["state"] == "RUNNING" and p["total"] == 4 and p["percent"] == 50 and p["message"] == "step 2"
        assert p["eta"] is not None and p["eta"] >= 0
        listed = api.call("GET", "/api/tasks?name=http.steps&state=RUNNING")[1]["items"]
        assert [t["progress"][:2] for t in listed if t["task_id"] == tid] == [[2, 4]]
    finally:
        flag.write_text("go")
    wait_for(lambda: state_of(api, tid) == "SUCCESS")


def test_a_cluster_that_does_not_answer_gets_504_not_a_hang(tmp_path):
    from .conftest import free_port
    from .web_harness import WebNode

    class Nowhere:
        endpoints = {"clients": f"tcp://127.0.0.1:{free_port()}", "sink": f"tcp://127.0.0.1:{free_port()}"}

    w = WebNode(Nowhere(), "--timeout", "0.5").start()
    try:
        code, body, _ = w.call("GET", "/status")
        assert code == 504 and "did not answer within 0.5s" in body["error"]
        assert w.call("GET", "/api/tasks")[0] == 504
        ov = wait_for(lambda: (lambda o: o if o["error"] else None)(w.call("GET", "/api/overview")[1]))
        assert ov["stats"] is None and "0.5s" in ov["error"]
        assert w.call("GET", "/", headers={"Accept": "text/html"})[0] == 200  # the page still loads
    finally:
        assert w.stop() == 0


def test_requeue_every_failed_task_matching_a_filter(api):
    since = f"{time.time() - 0.001:.3f}"  # only this test's failures
    ids = [submit(api, "http.fail") for _ in range(3)]
    wait_for(lambda: all(state_of(api, t) == "FAILED" for t in ids))
    code, body, _ = api.call("POST", f"/api/tasks/requeue?state=SUCCESS&since={since}")
    assert code == 400 and "FAILED or CANCELED" in body["error"]
    code, body, _ = api.call("POST", f"/api/tasks/requeue?state=FAILED&name=http.fail&since={since}&limit=2")
    first = set(body["requeued"])
    assert code == 200 and body["errors"] == {} and len(first) == 2 and first < set(ids)  # the 2 newest
    for old, new in body["requeued"].items():
        assert api.call("GET", f"/tasks/{new}")[1]["parent"] == old
        assert api.call("GET", f"/tasks/{old}")[1]["forgotten"] is True
    # the originals are forgotten: pressing again requeues only what is left (and the new failures)
    wait_for(lambda: all(state_of(api, t) == "FAILED" for t in body["requeued"].values()))
    code, again, _ = api.call("POST", f"/api/tasks/requeue?state=FAILED&name=http.fail&since={since}")
    rest = set(ids) - first
    assert code == 200 and rest < set(again["requeued"]) and not set(again["requeued"]) & first
