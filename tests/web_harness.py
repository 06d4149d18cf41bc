"""Helpers of the ``zq http`` tests: start the web node on a cluster, make HTTP requests.

``WebNode`` runs ``python -m zq.nodes http ...`` (READY line, like every node) and answers
``call(method, path, ...)`` with ``(status, body, headers)``; the body is parsed JSON
when the answer is JSON.  Nothing sleeps: tests wait with ``wait_for``.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import secrets
import urllib.error
import urllib.request
from typing import Any, Iterator, Optional

import pytest

from zq.nodes.local import LocalCluster
from zq._embedded import NodeProcess

from .conftest import FAST_ENV, running

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytest.importorskip("fastapi", reason="zq http needs the web extra: pip install -e '.[test]'")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kw: Any) -> None:
        return None


class WebNode:
    def __init__(self, cluster: LocalCluster, *args: str, name: str = "http") -> None:
        self.node = NodeProcess(["http", "--ventilator", cluster.endpoints["clients"],
                                 "--sink", cluster.endpoints["sink"], "--port", "0", *args],
                                env=FAST_ENV, name=name)
        self.url = ""

    def start(self) -> "WebNode":
        self.node.start()
        self.url = self.node.wait_ready(30)["url"]
        return self

    def stop(self) -> Optional[int]:
        return self.node.stop(20)

    def call(self, method: str, path: str, body: Any = None, headers: Optional[dict] = None,
             token: Optional[str] = None, raw: Optional[bytes] = None,
             opener: Optional[urllib.request.OpenerDirector] = None) -> tuple[int, Any, dict]:
        h = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        op = opener or urllib.request.build_opener(_NoRedirect)
        try:
            with op.open(req, timeout=15) as r:
                return r.status, _decode(r), _headers(r)
        except urllib.error.HTTPError as e:
            return e.code, _decode(e), _headers(e)


def _headers(r: Any) -> dict[str, str]:
    """Lower-case names; repeated headers (Set-Cookie) joined with '; '."""
    out: dict[str, str] = {}
    for k, v in r.headers.items():
        k = k.lower()
        out[k] = f"{out[k]}; {v}" if k in out else v
    return out


def _decode(r: Any) -> Any:
    data = r.read()
    if "json" in (r.headers.get("Content-Type") or ""):
        return json.loads(data)
    return data.decode("utf-8", "replace")


def browser_opener() -> tuple[urllib.request.OpenerDirector, http.cookiejar.CookieJar]:
    """An opener that keeps cookies and does not follow redirects (a browser, by hand)."""
    jar = http.cookiejar.CookieJar()
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), _NoRedirect), jar


def web_cluster(**kw: Any) -> Iterator[LocalCluster]:
    """A module-scoped cluster whose worker imports tests.http_tasks (thread slots)."""
    imports = ["tests.http_tasks", *kw.pop("imports", ())]
    yield from running(workers=1, executor="thread", concurrency=kw.pop("concurrency", 4),
                       worker_args=[a for m in imports for a in ("--import", m)],
                       env={**FAST_ENV, "PYTHONPATH": REPO, **kw.pop("env", {})}, **kw)


def token_file(tmp_path: Any) -> tuple[str, str]:
    token = secrets.token_urlsafe(24)
    path = os.path.join(str(tmp_path), "token")
    with open(path, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    return path, token


# module-scoped fixtures shared by the web test modules (imported there: each module gets its
# own cluster and zq http)
@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    yield from web_cluster()


@pytest.fixture(scope="module")
def api(cluster: LocalCluster) -> Iterator[WebNode]:
    w = WebNode(cluster).start()
    yield w
    assert w.stop() == 0, w.node.log()
