"""Fixtures: real nodes as child processes on loopback with random ports.

``make_cluster(...)`` starts a :class:`zq.nodes.local.LocalCluster` (sink, ventilator,
workers, each a ``python -m zq.nodes`` process that printed its READY line) and
stops it at teardown; ``make_client(cluster)`` returns a connected ``zq.Client``
that is shut down at teardown.  Nothing here sleeps to synchronise.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from typing import Any, Callable, Iterator

import pytest

import zq
from zq.nodes.local import LocalCluster

from .policies import policy_env

# fast failure detection in tests: heartbeat every 0.2 s, lost after 1.2 s
FAST_ENV = {"ZQ_CLUSTER_HEARTBEAT_INTERVAL": "0.2", "ZQ_CLUSTER_HEARTBEAT_LIVENESS": "6"}


@pytest.fixture
def make_cluster() -> Iterator[Callable[..., LocalCluster]]:
    made: list[LocalCluster] = []

    def make(**kw: Any) -> LocalCluster:
        env = {**FAST_ENV, **kw.pop("env", {})}
        c = LocalCluster(env=env, **kw)
        made.append(c)
        c.start()
        return c

    make.clusters = made  # type: ignore[attr-defined]  # for the node logs of a failed test
    yield make
    for c in made:
        c.stop(timeout=20)
        for n in c.nodes():
            if n.alive():
                n.kill()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Iterator[None]:
    """A failed test's report carries the last lines each of its nodes logged: a failure
    seen once in CI can be understood without reproducing it."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when != "call" or not rep.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        for c in getattr(value, "clusters", ()):
            text = "\n".join(n.log(80) for n in c.nodes())
            if text:
                rep.sections.append(("zq node logs", text))


@pytest.fixture
def make_client() -> Iterator[Callable[..., zq.Client]]:
    made: list[zq.Client] = []

    def make(cluster: LocalCluster, **kw: Any) -> zq.Client:
        cfg = zq.load_config(None, {
            "ventilator_clients": cluster.endpoints["clients"],
            "sink_endpoint": cluster.endpoints["sink"],
            "heartbeat_interval": 0.2,
        })
        c = zq.Client(cfg, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.shutdown(wait=False, cancel_futures=True)


@pytest.fixture
def start(make_cluster: Callable[..., LocalCluster], tmp_path: Any) -> Callable[..., LocalCluster]:
    """``make_cluster`` whose nodes can import ``tests.*`` (policies, task modules) whatever
    the cwd, and write policy records to ``tmp_path``."""

    def start(**kw: Any) -> LocalCluster:
        return make_cluster(env={**policy_env(tmp_path), **kw.pop("env", {})}, **kw)

    return start


@pytest.fixture
def cluster(start: Callable[..., LocalCluster]) -> LocalCluster:
    """One worker with four thread slots (cheaper to start than two, the same slots)."""
    return start(workers=1, executor="thread", concurrency=4)


@pytest.fixture
def client(cluster: LocalCluster, make_client: Callable[..., zq.Client]) -> zq.Client:
    return make_client(cluster)


def connect(cluster: LocalCluster, **kw: Any) -> zq.Client:
    """A client of ``cluster`` with the tests' fast heartbeat (the caller shuts it down)."""
    cfg = zq.load_config(None, {"ventilator_clients": cluster.endpoints["clients"],
                                "sink_endpoint": cluster.endpoints["sink"], "heartbeat_interval": 0.2})
    return zq.Client(cfg, **kw)


def running(**kw: Any) -> Iterator[LocalCluster]:
    """Body of a module-scoped cluster fixture: start, yield, stop (kill what is left)."""
    c = LocalCluster(**kw)
    c.start()
    try:
        yield c
    finally:
        c.stop(timeout=20)
        for n in c.nodes():
            if n.alive():
                n.kill()


def free_port() -> int:
    """A loopback TCP port free right now (for configs that must name a port up front)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def zq_script() -> str:
    """The installed ``zq`` console script (next to this interpreter)."""
    path = os.path.join(os.path.dirname(sys.executable), "zq")
    return path if os.path.exists(path) else (shutil.which("zq") or "zq")


def run_zq(*args: str, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run([zq_script(), *args], capture_output=True, text=True, timeout=timeout, **kw)
