"""Cluster configuration: one frozen dataclass, validated once.

Precedence: command-line flag > ``ZQ_<SECTION>_<KEY>`` environment variable >
TOML file > built-in default.  A bad or unknown key raises :class:`ConfigError`
naming it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_CLIENTS = "tcp://127.0.0.1:5555"
DEFAULT_WORKERS = "tcp://127.0.0.1:5556"
DEFAULT_SINK = "tcp://127.0.0.1:5557"


@dataclass(frozen=True)
class Config:
    # [ventilator]
    ventilator_clients: str = DEFAULT_CLIENTS
    ventilator_workers: str = DEFAULT_WORKERS
    # [sink]
    sink_endpoint: str = DEFAULT_SINK
    sink_retain: bool = False
    sink_result_ttl: float = 3600.0
    #: a client's interest in a result not recorded yet (WATCH) lasts this long unless the
    #: client renews it (clients renew every protocol.WATCH_RENEW seconds)
    sink_watch_ttl: float = 600.0
    sink_policies: tuple[str, ...] = ()
    #: SQLite file keeping recorded results across a sink restart (zq sink --journal); empty: none
    sink_journal: str = ""
    # [worker]
    worker_executor: str = "process"
    worker_concurrency: int = 0  # 0: os.cpu_count()
    worker_prefetch: int = -1  # -1: adaptive (about 5 ms of work per slot beyond the free slots)
    worker_queues: tuple[str, ...] = ("default",)
    worker_policies: tuple[str, ...] = ()
    # [cluster]
    heartbeat_interval: float = 0.5
    heartbeat_liveness: int = 6  # missed intervals before a peer is declared lost
    max_message_size: int = 64 * 1024 * 1024
    #: bind non-loopback addresses without CURVE keys (logged as a warning)
    insecure: bool = False
    # [security]
    keys: str = ""  # key directory (zq keys generate); empty: no CURVE
    key_name: str = ""  # own key pair's name in it; empty: the role's default

    @property
    def heartbeat_timeout(self) -> float:
        return self.heartbeat_interval * self.heartbeat_liveness


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_SECTIONS = ("ventilator", "sink", "worker", "cluster", "security")
# TOML (section, key) -> field name
_KEYS: dict[tuple[str, str], str] = {
    ("ventilator", "clients"): "ventilator_clients",
    ("ventilator", "workers"): "ventilator_workers",
    ("sink", "endpoint"): "sink_endpoint",
    ("sink", "retain"): "sink_retain",
    ("sink", "result_ttl"): "sink_result_ttl",
    ("sink", "watch_ttl"): "sink_watch_ttl",
    ("sink", "policies"): "sink_policies",
    ("sink", "journal"): "sink_journal",
    ("worker", "executor"): "worker_executor",
    ("worker", "concurrency"): "worker_concurrency",
    ("worker", "prefetch"): "worker_prefetch",
    ("worker", "queues"): "worker_queues",
    ("worker", "policies"): "worker_policies",
    ("cluster", "heartbeat_interval"): "heartbeat_interval",
    ("cluster", "heartbeat_liveness"): "heartbeat_liveness",
    ("cluster", "max_message_size"): "max_message_size",
    ("cluster", "insecure"): "insecure",
    ("security", "keys"): "keys",
    ("security", "name"): "key_name",
}


def _coerce(name: str, value: Any, where: str) -> Any:
    default = _FIELDS[name].default
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        if isinstance(default, tuple):
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError(value)
            return tuple(value)
        if isinstance(default, int):
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: invalid value {value!r} for {name}") from None


def _validate(cfg: Config) -> Config:
    for name in ("ventilator_clients", "ventilator_workers", "sink_endpoint"):
        ep = getattr(cfg, name)
        if "://" not in ep:
            raise ConfigError(f"{name}: {ep!r} is not a ZeroMQ endpoint like tcp://host:port")
    if cfg.worker_executor not in ("thread", "process"):
        raise ConfigError(f"worker.executor must be 'thread' or 'process', not {cfg.worker_executor!r}")
    if cfg.worker_concurrency < 0:
        raise ConfigError("worker.concurrency must be >= 0")
    if cfg.heartbeat_interval <= 0 or cfg.heartbeat_liveness < 1:
        raise ConfigError("cluster.heartbeat_interval must be > 0 and heartbeat_liveness >= 1")
    if cfg.sink_result_ttl <= 0:
        raise ConfigError("sink.result_ttl must be > 0 seconds")
    if cfg.sink_watch_ttl <= 0:
        raise ConfigError("sink.watch_ttl must be > 0 seconds")
    if not cfg.worker_queues:
        raise ConfigError("worker.queues must name at least one queue")
    if cfg.max_message_size < 1024:
        raise ConfigError("cluster.max_message_size must be at least 1024 bytes")
    return cfg


def read_toml(path: str) -> dict[str, Any]:
    """Fields from a TOML file; ConfigError for an unreadable file or unknown key."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    out: dict[str, Any] = {}
    for section, table in data.items():
        if section not in _SECTIONS or not isinstance(table, dict):
            raise ConfigError(f"config {path}: unknown section [{section}]")
        for key, value in table.items():
            name = _KEYS.get((section, key))
            if name is None:
                raise ConfigError(f"config {path}: unknown key {section}.{key}")
            out[name] = _coerce(name, value, f"config {path}, {section}.{key}")
    return out


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for (section, key), name in _KEYS.items():
        var = f"ZQ_{section}_{key}".upper()
        if var in env:
            out[name] = _coerce(name, env[var], f"environment {var}")
    return out


def load_config(
    path: Optional[str] = None,
    overrides: Optional[Mapping[str, Any]] = None,
    env: Optional[Mapping[str, str]] = None,
) -> Config:
    """Build a Config: defaults < TOML ``path`` < ``ZQ_*`` env < ``overrides`` (None skipped)."""
    values: dict[str, Any] = {}
    if path:
        values.update(read_toml(path))
    values.update(_from_env(os.environ if env is None else env))
    for name, value in (overrides or {}).items():
        if name not in _FIELDS:
            raise ConfigError(f"unknown setting {name}")
        if value is None or value == ():
            continue
        values[name] = _coerce(name, value, f"option {name}")
    return _validate(Config(**values))
