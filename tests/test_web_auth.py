"""``zq http`` is safe by default: the bind rule, the token, the login form, CSRF, TLS."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import urllib.parse
import urllib.request
from typing import Iterator

import pytest

from tests.lifecycle_tasks import wait_for

from .conftest import run_zq
from .web_harness import WebNode, browser_opener, token_file, web_cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator:
    yield from web_cluster()


@pytest.fixture(scope="module")
def secured(cluster, tmp_path_factory) -> Iterator[tuple[WebNode, str]]:
    """zq http on every address (0.0.0.0), with a token."""
    path, token = token_file(tmp_path_factory.mktemp("token"))
    w = WebNode(cluster, "--host", "0.0.0.0", "--token-file", path).start()
    w.url = w.url.replace("0.0.0.0", "127.0.0.1")
    yield w, token
    assert w.stop() == 0, w.node.log()


def test_non_loopback_bind_needs_a_token(cluster, tmp_path):
    eps = ["--ventilator", cluster.endpoints["clients"], "--sink", cluster.endpoints["sink"], "--port", "0"]
    r = run_zq("http", *eps, "--host", "0.0.0.0")
    assert r.returncode == 3 and "--token-file" in r.stderr and "without authentication" in r.stderr
    short = tmp_path / "short"
    short.write_text("abc\n")
    r = run_zq("http", *eps, "--host", "0.0.0.0", "--token-file", str(short))
    assert r.returncode == 3 and "at least 16 characters" in r.stderr
    r = run_zq("http", *eps, "--token-file", str(tmp_path / "missing"))
    assert r.returncode == 3 and "missing" in r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = run_zq("http", *eps[:4], "--port", str(busy.getsockname()[1]))
    assert r.returncode == 3 and "cannot serve on 127.0.0.1" in r.stderr and "in use" in r.stderr


def test_insecure_serves_open_and_says_so(cluster):
    w = WebNode(cluster, "--host", "0.0.0.0", "--insecure").start()
    try:
        w.url = w.url.replace("0.0.0.0", "127.0.0.1")
        assert w.call("GET", "/status")[0] == 200
        assert any("no authentication" in line for line in w.node.lines)
        assert w.call("GET", "/api/overview")[1]["security"]["insecure"] is True
    finally:
        assert w.stop() == 0


def test_api_needs_the_bearer_token(secured):
    w, token = secured
    for method, path in [("GET", "/status"), ("GET", "/tasks"), ("GET", "/metrics"), ("GET", "/api/overview"),
                         ("POST", "/queues/default/pause"), ("DELETE", "/tasks/x"), ("GET", "/openapi.json")]:
        code, body, headers = w.call(method, path)
        assert code == 401 and "Bearer" in body["error"] and headers["www-authenticate"] == "Bearer", path
        assert w.call(method, path, token="wrong-" + token)[0] == 401
    assert not w.call("GET", "/status", token=token)[1]["ventilator"]["queues"]["default"]["paused"]
    code, body, _ = w.call("POST", "/names/http.echo/enable", token=token)
    assert code == 200 and body == {"name": "http.echo", "enabled": True}  # a bearer call needs no CSRF token
    assert w.call("GET", "/metrics", token=token)[0] == 200
    assert w.call("GET", "/static/app.js")[0] == 200  # the assets are public
    # a bind on every address answers whatever Host it is given (the token guards it)
    assert w.call("GET", "/status", token=token, headers={"Host": "zq.example:80"})[0] == 200


def test_browser_login_session_and_csrf(secured):
    w, token = secured
    opener, jar = browser_opener()
    html = {"Accept": "text/html"}
    code, _, headers = w.call("GET", "/", headers=html, opener=opener)
    assert code == 303 and headers["location"] == "/login"
    code, page, headers = w.call("GET", "/login", headers=html, opener=opener)
    assert code == 200 and 'name="token"' in page and "zq_csrf=" in headers["set-cookie"]
    csrf = next(c.value for c in jar if c.name == "zq_csrf")
    assert f'value="{csrf}"' in page

    def login(tok: str, form_csrf: str) -> tuple:
        body = urllib.parse.urlencode({"token": tok, "csrf_token": form_csrf}).encode()
        return w.call("POST", "/login", raw=body, opener=opener, headers={
            "Content-Type": "application/x-www-form-urlencoded", "Origin": w.url})

    code, page, _ = login(token, "forged")
    assert code == 403 and "CSRF" in page
    code, page, _ = login("wrong-" + token, csrf)
    assert code == 401 and "Wrong token" in page
    code, _, headers = login(token, csrf)
    assert code == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert "zq_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    # logged in: pages and reads work with the cookie alone
    assert w.call("GET", "/", headers=html, opener=opener)[0] == 200
    assert w.call("GET", "/api/overview", opener=opener)[0] == 200
    # an action riding the cookie needs the page's CSRF token too
    code, body, _ = w.call("POST", "/names/http.echo/enable", opener=opener)
    assert code == 403 and "CSRF" in body["error"]
    assert w.call("POST", "/names/http.echo/enable", opener=opener, headers={"X-CSRF-Token": csrf})[0] == 200
    # a forged session cookie is no session
    forged, _ = browser_opener()
    assert w.call("GET", "/api/overview", headers={"Cookie": "zq_session=9999999999.00.bad"}, opener=forged)[0] == 401
    # log out: the form needs its CSRF token; then the cookie is gone
    body = urllib.parse.urlencode({"csrf_token": csrf}).encode()
    code, _, headers = w.call("POST", "/logout", raw=body, opener=opener,
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert code == 303 and headers["location"] == "/login"
    assert w.call("GET", "/api/overview", opener=opener)[0] == 401


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl (the command) is not installed")
def test_tls_through_uvicorn_options(cluster, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    path, token = token_file(tmp_path)
    w = WebNode(cluster, "--token-file", path, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)).start()
    try:
        assert w.url.startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx))
        code, body, _ = w.call("GET", "/status", token=token, opener=opener)
        assert code == 200 and body["ventilator"]["workers"]
        assert w.call("GET", "/api/overview", token=token, opener=opener)[1]["security"]["tls"] is True
        assert run_zq("http", "--ssl-certfile", str(cert)).returncode == 3  # the key goes with it
    finally:
        assert w.stop() == 0


def test_a_secured_cluster_through_keys(make_cluster, tmp_path):
    from zq.security import generate

    keys = str(tmp_path / "keys")
    generate(keys)
    cluster = make_cluster(workers=1, executor="thread", concurrency=1, env={"ZQ_SECURITY_KEYS": keys})
    w = WebNode(cluster, "--keys", keys).start()
    try:
        code, status, _ = w.call("GET", "/status")
        assert code == 200 and status["ventilator"]["secured"] and status["sink"]["secured"]
        assert 'zq_node_secured{node="ventilator"} 1.0' in w.call("GET", "/metrics")[1]
    finally:
        assert w.stop() == 0


def test_actions_and_refusals_are_logged(secured):
    w, token = secured
    assert w.call("POST", "/names/http.add/enable", token=token)[0] == 200
    assert w.call("GET", "/status")[0] == 401
    wait_for(lambda: any("POST /names/http.add/enable -> 200" in line for line in w.node.lines)
             and any("GET /status -> 401" in line for line in w.node.lines), what="the audit lines")
    assert not any("GET /api/overview -> 200" in line for line in w.node.lines)  # polling is not logged
