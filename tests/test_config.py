"""Configuration: precedence flag > ZQ_* env > TOML > default, errors naming the key.

Unit tests call ``zq.config.load_config`` with ``env=`` passed explicitly so the
test process's own environment never leaks in; one test checks the same order
end to end through the ``zq sink`` command (its READY line shows what it bound).
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import Optional

import pytest

from zq._embedded import parse_ready
from zq.config import Config, load_config
from zq.errors import ConfigError

from .conftest import zq_script

REPO = Path(__file__).resolve().parent.parent
DEFAULTS = Config()


def write(tmp_path: Path, text: str, name: str = "zq.toml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


TOML = """
[ventilator]
clients = "tcp://127.0.0.1:6001"
workers = "tcp://127.0.0.1:6002"

[sink]
endpoint = "tcp://127.0.0.1:6003"
retain = true
result_ttl = 10.0

[worker]
executor = "thread"
concurrency = 3
queues = ["a", "b"]

[cluster]
heartbeat_interval = 0.25
heartbeat_liveness = 4
max_message_size = 2048
"""


# ----------------------------------------------------------------------- precedence


def test_defaults_without_file_env_or_flags():
    cfg = load_config(None, {}, env={})
    assert cfg == DEFAULTS
    assert cfg.ventilator_clients.startswith("tcp://127.0.0.1:")
    assert cfg.sink_result_ttl == 3600.0
    assert cfg.worker_queues == ("default",)


def test_toml_overrides_defaults(tmp_path):
    cfg = load_config(write(tmp_path, TOML), {}, env={})
    assert cfg.ventilator_clients == "tcp://127.0.0.1:6001"
    assert cfg.ventilator_workers == "tcp://127.0.0.1:6002"
    assert cfg.sink_endpoint == "tcp://127.0.0.1:6003"
    assert cfg.sink_retain is True
    assert cfg.sink_result_ttl == 10.0
    assert cfg.worker_executor == "thread"
    assert cfg.worker_concurrency == 3
    assert cfg.worker_queues == ("a", "b")
    assert cfg.heartbeat_interval == 0.25
    assert cfg.heartbeat_liveness == 4
    assert cfg.max_message_size == 2048
    # a key the file does not set keeps its default
    assert cfg.worker_prefetch == DEFAULTS.worker_prefetch


def test_env_overrides_toml(tmp_path):
    env = {
        "ZQ_SINK_RESULT_TTL": "20",
        "ZQ_WORKER_CONCURRENCY": "5",
        "ZQ_WORKER_QUEUES": "x, y ,z",
        "ZQ_SINK_RETAIN": "no",
        "ZQ_VENTILATOR_CLIENTS": "tcp://127.0.0.1:7001",
        "ZQ_CLUSTER_MAX_MESSAGE_SIZE": "4096",
    }
    cfg = load_config(write(tmp_path, TOML), {}, env=env)
    assert cfg.sink_result_ttl == 20.0
    assert cfg.worker_concurrency == 5
    assert cfg.worker_queues == ("x", "y", "z")
    assert cfg.sink_retain is False
    assert cfg.ventilator_clients == "tcp://127.0.0.1:7001"
    assert cfg.max_message_size == 4096
    # keys the environment does not set still come from the file
    assert cfg.ventilator_workers == "tcp://127.0.0.1:6002"
    assert cfg.heartbeat_interval == 0.25


def test_flag_overrides_env_and_toml(tmp_path):
    env = {"ZQ_SINK_RESULT_TTL": "20", "ZQ_WORKER_CONCURRENCY": "5",
           "ZQ_VENTILATOR_CLIENTS": "tcp://127.0.0.1:7001"}
    overrides = {"sink_result_ttl": 30.0, "worker_concurrency": 7,
                 "ventilator_clients": "tcp://127.0.0.1:8001", "worker_queues": ("q",)}
    cfg = load_config(write(tmp_path, TOML), overrides, env=env)
    assert cfg.sink_result_ttl == 30.0
    assert cfg.worker_concurrency == 7
    assert cfg.ventilator_clients == "tcp://127.0.0.1:8001"
    assert cfg.worker_queues == ("q",)
    assert cfg.sink_endpoint == "tcp://127.0.0.1:6003"  # from the file: nobody overrode it


def test_unset_flags_do_not_override(tmp_path):
    """A flag the user did not give (None, or an empty multiple option) leaves env/TOML alone."""
    env = {"ZQ_SINK_RESULT_TTL": "20"}
    cfg = load_config(write(tmp_path, TOML), {"sink_result_ttl": None, "worker_queues": (),
                                              "sink_endpoint": None}, env=env)
    assert cfg.sink_result_ttl == 20.0
    assert cfg.worker_queues == ("a", "b")
    assert cfg.sink_endpoint == "tcp://127.0.0.1:6003"


def test_flag_false_overrides_true(tmp_path):
    """--no-retain (False) is a real value, not "unset"."""
    cfg = load_config(write(tmp_path, TOML), {"sink_retain": False}, env={"ZQ_SINK_RETAIN": "yes"})
    assert cfg.sink_retain is False


def test_explicit_env_replaces_process_environment(monkeypatch):
    monkeypatch.setenv("ZQ_SINK_RESULT_TTL", "99")
    assert load_config(None, {}, env={}).sink_result_ttl == DEFAULTS.sink_result_ttl
    assert load_config(None, {}, env=None).sink_result_ttl == 99.0  # None: os.environ
    assert load_config(None, {}, env={"ZQ_SINK_RESULT_TTL": "5"}).sink_result_ttl == 5.0


@pytest.mark.parametrize("value,expected", [("1", True), ("true", True), ("YES", True), ("on", True),
                                            ("0", False), ("false", False), ("No", False), ("off", False)])
def test_env_booleans(value, expected):
    assert load_config(None, {}, env={"ZQ_SINK_RETAIN": value}).sink_retain is expected


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("text,names", [
    ("[ventilator]\nbogus = 1\n", ["ventilator.bogus"]),
    ("[nosuchsection]\nx = 1\n", ["nosuchsection"]),
    ("[sink]\nresult_ttl = \"soon\"\n", ["sink.result_ttl"]),
    ("[worker]\nconcurrency = \"many\"\n", ["worker.concurrency"]),
    ("[ventilator]\nclients = 5555\n", ["ventilator.clients"]),
    ("[sink]\nretain = \"perhaps\"\n", ["sink.retain"]),
    ("[worker]\nqueues = [1, 2]\n", ["worker.queues"]),
    ("[cluster]\nmax_message_size = true\n", ["cluster.max_message_size"]),
    ("[ventilator\nclients = 1\n", ["not valid TOML"]),
    ("clients = 'tcp://127.0.0.1:1'\n", ["clients"]),  # a top-level key: no section
])
def test_bad_toml_raises_config_error_naming_it(tmp_path, text, names):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, {}, env={})
    msg = str(info.value)
    assert path in msg
    for n in names:
        assert n in msg


def test_missing_file_names_path(tmp_path):
    path = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="nope.toml"):
        load_config(path, {}, env={})


def test_non_utf8_file_is_a_config_error(tmp_path):
    p = tmp_path / "latin1.toml"
    p.write_bytes(b'[ventilator]\nclients = "tcp://caf\xe9:5555"\n')
    with pytest.raises(ConfigError, match="latin1.toml"):
        load_config(str(p), {}, env={})


@pytest.mark.parametrize("var,value", [
    ("ZQ_WORKER_CONCURRENCY", "lots"),
    ("ZQ_SINK_RESULT_TTL", "x"),
    ("ZQ_SINK_RETAIN", "maybe"),
    ("ZQ_CLUSTER_HEARTBEAT_LIVENESS", "1.5"),
])
def test_bad_env_value_names_variable(var, value):
    with pytest.raises(ConfigError, match=var):
        load_config(None, {}, env={var: value})


@pytest.mark.parametrize("overrides,word", [
    ({"sink_result_ttl": 0}, "result_ttl"),
    ({"sink_result_ttl": -1}, "result_ttl"),
    ({"worker_executor": "nope"}, "executor"),
    ({"worker_concurrency": -1}, "concurrency"),
    ({"max_message_size": 10}, "max_message_size"),
    ({"heartbeat_interval": 0}, "heartbeat"),
    ({"ventilator_clients": "localhost-5555"}, "ventilator_clients"),
    ({"no_such_setting": 1}, "no_such_setting"),
])
def test_invalid_values_are_refused(overrides, word):
    with pytest.raises(ConfigError, match=word):
        load_config(None, overrides, env={})


def test_validation_applies_to_merged_result(tmp_path):
    """A bad value from any layer is refused, and a good flag rescues a bad env value."""
    path = write(tmp_path, "[sink]\nresult_ttl = 5.0\n")
    with pytest.raises(ConfigError, match="result_ttl"):
        load_config(path, {}, env={"ZQ_SINK_RESULT_TTL": "-3"})
    assert load_config(path, {"worker_executor": "thread"},
                       env={"ZQ_WORKER_EXECUTOR": "nope"}).worker_executor == "thread"


# --------------------------------------------------------------------- shipped configs


@pytest.mark.parametrize("name", ["local.toml", "cluster.example.toml"])
def test_shipped_config_parses(name):
    path = REPO / "configs" / name
    if not path.exists():
        pytest.skip(f"configs/{name} does not exist yet (being written by someone else)")
    cfg = load_config(str(path), {}, env={})
    for ep in (cfg.ventilator_clients, cfg.ventilator_workers, cfg.sink_endpoint):
        assert ep.startswith("tcp://")
    assert cfg.worker_executor in ("thread", "process")
    if name == "local.toml":  # every node on this machine
        assert "127.0.0.1" in cfg.ventilator_clients and "127.0.0.1" in cfg.sink_endpoint


# ------------------------------------------------------ precedence through the command


def _sink_endpoint(args: list[str], env: dict[str, str], timeout: float = 30.0) -> str:
    """Start ``zq sink ARGS``, read the endpoint from its READY line, stop it (exit 0)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ZQ_")}
    full_env.update(env)
    proc = subprocess.Popen([zq_script(), "sink", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=full_env)
    found: dict[str, Optional[dict]] = {"eps": None}
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            eps = parse_ready(line.strip(), "sink")
            if eps is not None and found["eps"] is None:
                found["eps"] = eps
                ready.set()
        ready.set()

    t = threading.Thread(target=read, daemon=True)
    t.start()
    try:
        ready.wait(timeout)
        assert found["eps"] is not None, f"sink did not print READY:\n{''.join(lines)}"
        return found["eps"]["endpoint"]
    finally:
        proc.terminate()
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            code = None
        t.join(5)
        assert code == 0, f"sink exited with {code}:\n{''.join(lines)}"


def test_command_precedence_flag_env_toml(tmp_path):
    """Loopback aliases tell the layers apart: TOML 127.0.0.2, env 127.0.0.3, flag 127.0.0.4."""
    path = write(tmp_path, '[sink]\nendpoint = "tcp://127.0.0.2:0"\n')
    env = {"ZQ_SINK_ENDPOINT": "tcp://127.0.0.3:0"}
    assert _sink_endpoint(["--config", path, "--endpoint", "tcp://127.0.0.4:0"], env).startswith(
        "tcp://127.0.0.4:")
    assert _sink_endpoint(["--config", path], env).startswith("tcp://127.0.0.3:")
    assert _sink_endpoint(["--config", path], {}).startswith("tcp://127.0.0.2:")
