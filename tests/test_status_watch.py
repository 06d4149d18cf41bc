"""``zq status --watch``: a live view (rich) that refreshes, and survives a node that does
not answer; run in a pseudo-terminal, as a person would."""

from __future__ import annotations

import os
import pty
import subprocess

import pytest

from .conftest import zq_script

pytestmark = pytest.mark.timeout(60)


def run_in_pty(args: list[str], timeout: float = 40) -> tuple[int, str]:
    main, sub = pty.openpty()
    p = subprocess.Popen([zq_script(), *args], stdin=sub, stdout=sub, stderr=sub, close_fds=True,
                         env={**os.environ, "COLUMNS": "120", "TERM": "xterm"})
    os.close(sub)
    out = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    return p.wait(timeout), out.decode(errors="replace")


def test_watch_refreshes_the_live_view(cluster):
    eps = cluster.endpoints
    code, out = run_in_pty(["status", "--ventilator", eps["clients"], "--sink", eps["sink"], "--watch",
                            "--count", "3", "--interval", "0.2"])
    assert code == 0, out
    assert out.count("zq status") >= 3, out  # three frames drawn
    assert "workers (1)" in out and "default" in out and "loop lag" in out


def test_watch_shows_a_node_that_does_not_answer_and_keeps_asking(cluster):
    eps = cluster.endpoints
    code, out = run_in_pty(["status", "--ventilator", eps["clients"], "--sink", "tcp://127.0.0.1:1",
                            "--watch", "--count", "2", "--interval", "0.2", "--timeout", "0.5"])
    assert code == 0, out
    assert out.count("did not answer") >= 2 and "retrying" in out, out


def test_watch_shows_names_with_brackets_as_text(cluster, make_client):
    """Queue names come from any client: rich must not read them as markup (a review
    found ``[/x]`` crashed the view)."""
    client = make_client(cluster)
    client.submit_task(abs, (-1,), {}, queue="[/x]")
    client.submit_task(abs, (-1,), {}, queue="[bold]q")
    eps = cluster.endpoints
    code, out = run_in_pty(["status", "--ventilator", eps["clients"], "--sink", eps["sink"], "--watch",
                            "--count", "1"])
    assert code == 0, out
    assert "[/x]" in out and "[bold]q" in out, out
