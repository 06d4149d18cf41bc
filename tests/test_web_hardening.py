"""``zq http`` against what a review found: values JSON cannot carry (NaN, infinities) and
a chunked body without a length on the public login route."""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit

from tests.lifecycle_tasks import wait_for

from .test_http_api import state_of, submit
from .web_harness import WebNode, api, cluster, token_file  # noqa: F401 (api, cluster: fixtures)


def test_a_nan_result_and_an_infinite_progress_do_not_break_the_api(api, tmp_path):
    tid = submit(api, "http.nan")
    res = wait_for(lambda: (lambda r: r[1] if r[0] == 200 else None)(api.call("GET", f"/tasks/{tid}/result")))
    assert res["state"] == "SUCCESS" and res["value"] == "nan"  # its repr: JSON has no NaN
    flag = tmp_path / "go"
    running = submit(api, "http.endless", {"flag": str(flag)})
    wait_for(lambda: (api.call("GET", f"/api/tasks/{running}")[1].get("progress") or {}).get("message")
             == "no end in sight", 20, what="the progress reached the dashboard")
    for path in ("/tasks?limit=50", "/api/tasks?limit=50", f"/api/tasks/{running}", f"/tasks/{running}"):
        code, body, _ = api.call("GET", path)
        assert code == 200, (path, body)
    flag.write_text("")
    wait_for(lambda: state_of(api, running) == "SUCCESS", 20, what="the task finished")


def test_a_non_finite_time_filter_is_a_bad_request(api):
    for value in ("nan", "inf", "-inf"):
        code, body, _ = api.call("GET", f"/tasks?since={value}")
        assert code == 400 and "finite" in body["error"], body


def test_a_chunked_body_without_length_is_refused_before_it_is_read(cluster, tmp_path):
    path, _ = token_file(tmp_path)
    w = WebNode(cluster, "--token-file", path, name="http-token").start()
    try:
        u = urlsplit(w.url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=15)
        conn.putrequest("POST", "/login")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.putheader("Content-Type", "application/x-www-form-urlencoded")
        conn.endheaders()
        conn.send(b"5\r\ntoken\r\n")  # a body that would never end
        r = conn.getresponse()
        assert r.status == 411 and b"Content-Length" in r.read()
        conn.close()
    finally:
        assert w.stop() == 0, w.node.log()
