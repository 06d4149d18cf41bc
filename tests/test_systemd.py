"""The systemd units in configs/systemd/: checked by systemd itself, and their command lines
run for real.

``systemd-analyze verify`` reads each unit as systemd would load it (with the install path
pointed at this venv's ``zq``, since it checks that ExecStart's binary exists).  Then the
three ExecStart lines, with only their paths rewritten to a temp dir (config, keys, state),
start a CURVE-secured cluster on loopback, run a task, and stop on the unit's KillSignal well
inside its TimeoutStopSec — the worker while a task runs, finishing it within --grace.
"""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

import zq

from .conftest import free_port, run_zq, zq_script
from .lifecycle_tasks import wait_for
from .test_cli import Zq

UNITS = Path(__file__).resolve().parent.parent / "configs" / "systemd"
NAMES = ("zq-ventilator.service", "zq-sink.service", "zq-worker@.service")
INSTALLED = "/opt/zq/bin/zq"


def service(name: str) -> dict[str, str]:
    """The [Service] section of a unit, key -> value (the units set each key once)."""
    out: dict[str, str] = {}
    section = None
    for line in (UNITS / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service":
            key, _, value = line.partition("=")
            assert key not in out, f"{name}: {key} set twice"
            out[key] = value
    return out


def test_the_three_units_exist_and_share_one_layout():
    for name in NAMES:
        svc = service(name)
        assert svc["ExecStart"].startswith(INSTALLED + " "), name
        assert "--config /etc/zq/cluster.toml --keys /etc/zq/keys" in svc["ExecStart"], name
        assert svc["Restart"] == "on-failure" and svc["RestartPreventExitStatus"] == "2 3", name


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_every_unit(tmp_path):
    for name in NAMES:
        (tmp_path / name).write_text((UNITS / name).read_text().replace(INSTALLED, zq_script()))
    r = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / n) for n in NAMES)],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    ours = [ln for ln in (r.stdout + r.stderr).splitlines() if "zq-" in ln]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr


def test_worker_stop_timeout_exceeds_its_grace():
    svc = service("zq-worker@.service")
    grace = float(re.search(r"--grace (\S+)", svc["ExecStart"]).group(1))
    assert svc["KillSignal"] == "SIGTERM" and svc["KillMode"] == "mixed"
    assert float(svc["TimeoutStopSec"]) >= grace + 10  # grace, then the hand-back and last results


def command(name: str, root: Path, worker_args: str = "") -> list[str]:
    """The unit's ExecStart with its paths moved under ``root`` and $ZQ_WORKER_ARGS expanded."""
    line = service(name)["ExecStart"]
    line = (line.replace(INSTALLED, zq_script()).replace("/etc/zq", str(root / "etc"))
            .replace("/var/lib/zq", str(root / "state")))
    words = shlex.split(line)
    out: list[str] = []
    for w in words:
        out.extend(shlex.split(worker_args) if w == "$ZQ_WORKER_ARGS" else [w])
    return out


def stop_within(node: Zq, unit: str) -> None:
    svc = service(unit)
    limit = float(svc.get("TimeoutStopSec", "90"))
    started = time.monotonic()
    code = node.stop(getattr(signal, svc.get("KillSignal", "SIGTERM")), timeout=limit)
    assert code == 0, f"{unit}: exit code {code} after {time.monotonic() - started:.1f} s:\n{node.stderr}"


@pytest.mark.timeout(120)
def test_the_units_command_lines_run_a_secured_cluster_and_stop_cleanly(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "state").mkdir()
    assert run_zq("keys", "generate", str(tmp_path / "etc" / "keys")).returncode == 0
    ports = {role: free_port() for role in ("clients", "workers", "sink")}
    (tmp_path / "etc" / "cluster.toml").write_text(
        "[ventilator]\n"
        f'clients = "tcp://127.0.0.1:{ports["clients"]}"\n'
        f'workers = "tcp://127.0.0.1:{ports["workers"]}"\n'
        f'[sink]\nendpoint = "tcp://127.0.0.1:{ports["sink"]}"\n'
        "[cluster]\nheartbeat_interval = 0.2\nheartbeat_liveness = 6\n")
    nodes: list[Zq] = []

    def start(unit: str, worker_args: str = "") -> Zq:
        argv = command(unit, tmp_path, worker_args)
        node = Zq(argv[1:], env={})  # Zq runs the console script itself
        nodes.append(node)
        node.wait_ready(60)
        return node

    try:
        sink = start("zq-sink.service")
        vent = start("zq-ventilator.service")
        worker = start("zq-worker@.service", "--executor thread --concurrency 2")
        assert (tmp_path / "state" / "ventilator.db").exists() and (tmp_path / "state" / "sink.db").exists()
        with zq.Client(str(tmp_path / "etc" / "cluster.toml"), keys=str(tmp_path / "etc" / "keys"),
                       unreachable_timeout=30) as client:
            assert client.submit(pow, 2, 10).result(timeout=30) == 1024
            fut = client.submit(time.sleep, 1.5)
            wait_for(lambda: client.get_status(fut.task_id) is zq.TaskState.RUNNING, 30, what="the task started")
            stop_within(worker, "zq-worker@.service")  # finishes the running task within --grace
            assert fut.result(timeout=30) is None
            assert fut.envelope.attempts == 1
        stop_within(vent, "zq-ventilator.service")
        stop_within(sink, "zq-sink.service")
    finally:
        for node in nodes:
            node.kill()
