"""The ``zq`` command: one click group; each node runs in the foreground.

Exit codes: 0 after a graceful stop, 1 for a runtime failure, 2 for bad usage
(click's own), 3 for a configuration or bind error (one line, no traceback).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Optional, Sequence

import click

from zq.config import Config, load_config
from zq.errors import BindError, ConfigError, ZqError

from .common import Node

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 3

log = logging.getLogger("zq.cli")


def _fail(msg: str, code: int = EXIT_CONFIG) -> None:
    click.echo(f"zq: error: {msg}", err=True)
    sys.exit(code)


def _config(path: Optional[str], **overrides: Any) -> Config:
    try:
        return load_config(path, overrides)
    except ConfigError as exc:
        _fail(str(exc))
        raise  # unreachable


def _watch_parent(pid: int, on_gone: Callable[[], None]) -> None:
    """Call ``on_gone`` when process ``pid`` (our parent) has exited."""

    def watch() -> None:
        while True:
            if os.getppid() != pid:
                on_gone()
                return
            time.sleep(0.5)  # a poll of the parent's existence, not synchronisation

    threading.Thread(target=watch, name="zq-parent-watch", daemon=True).start()


def _install_signals(stop: Callable[[], None]) -> None:
    """First SIGINT/SIGTERM: graceful stop.  Second: exit at once."""
    state = {"n": 0}

    def handler(signum: int, frame: Any) -> None:
        state["n"] += 1
        if state["n"] > 1:
            os._exit(EXIT_FAILURE)
        stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def run_node(node: Node, exit_with_parent: Optional[int]) -> None:
    """Serve ``node`` in the foreground: READY line, signals, exit code."""
    _install_signals(node.stop)
    if exit_with_parent:
        _watch_parent(exit_with_parent, node.stop)
    # a node whose networking is stuck stops with exit code 1, even if the stop itself sticks
    node.watchdog.hard_exit = lambda: os._exit(EXIT_FAILURE)

    def ready(eps: dict[str, str]) -> None:
        items = " ".join(f"{k}={v}" for k, v in eps.items())
        click.echo(f"zq {node.role} READY {items} pid={os.getpid()}", err=True)

    try:
        node.run(ready)
    except (BindError, ConfigError) as exc:
        _fail(str(exc))
    except ZqError as exc:
        _fail(str(exc), EXIT_FAILURE)
    sys.exit(EXIT_OK)


config_opt = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                          help="TOML config file (see configs/).")
parent_opt = click.option("--exit-with-parent", type=int, default=None, hidden=True)
insecure_opt = click.option("--insecure", is_flag=True, default=None,
                            help="Bind non-loopback addresses without keys (not recommended).")
keys_opt = click.option("--keys", type=click.Path(file_okay=False), default=None,
                        help="CURVE key directory (zq keys generate); secures and encrypts the node.")
key_name_opt = click.option("--key-name", default=None,
                            help="This node's key pair in --keys (default: its role).")
policy_opt = click.option("--policy", "policies", multiple=True, metavar="MOD:NAME",
                          help="Policy class to load (repeatable).")


def metrics_opts(f: Any) -> Any:
    f = click.option("--metrics-host", default="127.0.0.1", show_default=True,
                     help="Address the --metrics-port server binds.")(f)
    return click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
                        help="Serve Prometheus metrics on this port (0: any free one; "
                             "its URL is in the READY line). Needs the web extra.")(f)


def _metrics_at(host: str, port: Optional[int]) -> Optional[tuple[str, int]]:
    if port is None:
        return None
    from .node_metrics import require

    try:
        require()
    except ImportError as exc:
        _fail(str(exc))
    return host, port


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default=os.environ.get("ZQ_LOG_LEVEL", "INFO"),
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.version_option(package_name="zq")
def cli(log_level: str) -> None:
    """zq: a brokerless task cluster for Python on ZeroMQ."""
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


@cli.command()
@config_opt
@click.option("--clients", help="Endpoint clients connect to (ROUTER).")
@click.option("--workers", help="Endpoint workers connect to (ROUTER).")
@click.option("--sink", help="The sink's endpoint (for results the ventilator decides).")
@click.option("--journal", type=click.Path(dir_okay=False), default=None,
              help="SQLite file keeping accepted tasks (and the history, and schedules) across a restart.")
@click.option("--history-retention", type=click.FloatRange(min=0, min_open=True), default=7 * 86400.0,
              show_default=True, help="Seconds finished tasks stay in the journal's history.")
@policy_opt
@metrics_opts
@keys_opt
@key_name_opt
@insecure_opt
@parent_opt
def ventilator(config_path: Optional[str], clients: Optional[str], workers: Optional[str],
               sink: Optional[str], journal: Optional[str], history_retention: float, policies: Sequence[str],
               metrics_port: Optional[int], metrics_host: str,
               keys: Optional[str], key_name: Optional[str], insecure: Optional[bool],
               exit_with_parent: Optional[int]) -> None:
    """Accept tasks from clients and dispatch them to workers by credit (on_state policies run here)."""
    from zq.policy import load_policies

    from .ventilator import Ventilator

    cfg = _config(config_path, ventilator_clients=clients, ventilator_workers=workers, sink_endpoint=sink,
                  insecure=insecure, keys=keys, key_name=key_name)
    try:
        loaded = load_policies(policies)
        node = Ventilator(cfg, journal=journal, policies=loaded, history_retention=history_retention,
                          metrics=_metrics_at(metrics_host, metrics_port))
    except ConfigError as exc:
        _fail(str(exc))
    run_node(node, exit_with_parent)


@cli.command()
@config_opt
@click.option("--endpoint", help="Endpoint workers and clients connect to.")
@click.option("--retain/--no-retain", default=None, help="Retain results by default.")
@click.option("--result-ttl", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds a retained (or undelivered) result is kept (default 3600).")
@click.option("--journal", type=click.Path(dir_okay=False), default=None,
              help="SQLite file keeping retained results and the de-duplication set across a restart.")
@policy_opt
@metrics_opts
@keys_opt
@key_name_opt
@insecure_opt
@parent_opt
def sink(config_path: Optional[str], endpoint: Optional[str], retain: Optional[bool],
         result_ttl: Optional[float], journal: Optional[str], policies: Sequence[str],
         metrics_port: Optional[int], metrics_host: str, keys: Optional[str],
         key_name: Optional[str], insecure: Optional[bool], exit_with_parent: Optional[int]) -> None:
    """Record results once, fire on_done policies, deliver and retain them."""
    from zq.policy import load_policies

    from .sink import Sink

    cfg = _config(config_path, sink_endpoint=endpoint, sink_retain=retain, sink_result_ttl=result_ttl,
                  sink_journal=journal, sink_policies=tuple(policies), insecure=insecure, keys=keys,
                  key_name=key_name)
    try:
        node = Sink(cfg, load_policies(cfg.sink_policies), metrics=_metrics_at(metrics_host, metrics_port))
    except ConfigError as exc:
        _fail(str(exc))
    run_node(node, exit_with_parent)


@cli.command()
@config_opt
@click.option("--ventilator", "vent", help="The ventilator's workers endpoint.")
@click.option("--sink", help="The sink's endpoint.")
@click.option("--executor", type=click.Choice(["thread", "process"]), default=None)
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Executor slots (default: number of CPUs).")
@click.option("--prefetch", type=click.IntRange(min=0), default=None,
              help="Tasks held beyond the free slots (default: adaptive, ~5 ms of work per slot).")
@click.option("--queue", "queues", multiple=True, help="Queue to serve (repeatable, default 'default').")
@click.option("--grace", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds running tasks may take to finish on SIGTERM.")
@click.option("--import", "imports", multiple=True, metavar="MODULE",
              help="Import MODULE: its @zq.task functions can be submitted by name (and scheduled).")
@click.option("--death-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop (gracefully) when the ventilator has been unreachable this many seconds.")
@click.option("--idle-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop (gracefully) after this many seconds without a task.")
@click.option("--async-concurrency", type=click.IntRange(min=1), default=100, show_default=True,
              help="async def tasks running at once on the worker's event loop.")
@policy_opt
@metrics_opts
@keys_opt
@key_name_opt
@parent_opt
def worker(config_path: Optional[str], vent: Optional[str], sink: Optional[str], executor: Optional[str],
           concurrency: Optional[int], prefetch: Optional[int], queues: Sequence[str], grace: float,
           imports: Sequence[str], death_timeout: Optional[float], idle_timeout: Optional[float],
           async_concurrency: int, policies: Sequence[str], metrics_port: Optional[int], metrics_host: str,
           keys: Optional[str], key_name: Optional[str], exit_with_parent: Optional[int]) -> None:
    """Run tasks from the ventilator; send results to the sink."""
    from zq.policy import load_policies

    from .worker import Worker

    cfg = _config(config_path, ventilator_workers=vent, sink_endpoint=sink, worker_executor=executor,
                  worker_concurrency=concurrency, worker_prefetch=prefetch, worker_queues=tuple(queues),
                  worker_policies=tuple(policies), keys=keys, key_name=key_name)
    try:
        load_policies(cfg.worker_policies)  # fail fast with one line, before any process starts
    except ConfigError as exc:
        _fail(str(exc))
    try:
        node = Worker(cfg, cfg.worker_policies, grace=grace, imports=imports,
                      async_concurrency=async_concurrency, death_timeout=death_timeout,
                      idle_timeout=idle_timeout, metrics=_metrics_at(metrics_host, metrics_port))
    except ImportError as exc:
        _fail(f"--import: {exc}")
    except ConfigError as exc:  # keys
        _fail(str(exc))
    run_node(node, exit_with_parent)


@cli.command()
@config_opt
@click.option("--workers", "n_workers", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--executor", type=click.Choice(["thread", "process"]), default="process", show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1), default=None)
@keys_opt
@parent_opt
def up(config_path: Optional[str], n_workers: int, executor: str, concurrency: Optional[int],
       keys: Optional[str], exit_with_parent: Optional[int]) -> None:
    """Every role on this machine, in the foreground; Ctrl-C stops all cleanly."""
    from .local import LocalCluster

    cfg = _config(config_path, keys=keys)  # validate before starting anything
    if cfg.keys:
        from zq.security import Keys

        from .common import KEYS_NEEDED

        for role, (servers, lists) in KEYS_NEEDED.items():
            try:
                Keys.load(cfg.keys, role, servers, lists)
            except ConfigError as exc:
                _fail(str(exc))
    env = {"ZQ_SECURITY_KEYS": os.path.abspath(keys)} if keys else {}
    bind = {"clients": cfg.ventilator_clients, "workers": cfg.ventilator_workers, "sink": cfg.sink_endpoint}
    cluster = LocalCluster(workers=n_workers, executor=executor, concurrency=concurrency or 0,
                           config=config_path, echo=True, exit_with_parent=True, env=env, bind=bind)
    stop = threading.Event()
    _install_signals(stop.set)
    if exit_with_parent:
        _watch_parent(exit_with_parent, stop.set)
    try:
        eps = cluster.start()
    except ZqError as exc:
        cluster.stop(kill=True)
        _fail(str(exc).splitlines()[0] + " (see the lines above)", EXIT_FAILURE)
    items = " ".join(f"{k}={v}" for k, v in eps.items())
    click.echo(f"zq up READY {items} pid={os.getpid()}", err=True)
    while not stop.wait(0.5):
        dead = [n.name for n in cluster.nodes() if not n.alive()]
        if dead and any(not n.name.startswith("worker") for n in cluster.nodes() if not n.alive()):
            log.error("node(s) %s exited: stopping", ", ".join(dead))
            break
    codes = cluster.stop()
    bad = {k: v for k, v in codes.items() if v not in (0, None)}
    if bad:
        log.warning("nodes exited with %s", bad)
    sys.exit(EXIT_OK)


@cli.command()
@config_opt
@click.option("--ventilator", "vent", help="The ventilator's clients endpoint.")
@click.option("--sink", help="The sink's endpoint.")
@click.option("--json", "as_json", is_flag=True, help="Print raw JSON.")
@click.option("--timeout", type=float, default=5.0, show_default=True)
@click.option("--watch", is_flag=True, help="A live view, refreshed every --interval seconds (Ctrl-C stops).")
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True)
@click.option("--count", type=click.IntRange(min=1), default=None, help="With --watch: stop after N refreshes.")
@keys_opt
@key_name_opt
def status(config_path: Optional[str], vent: Optional[str], sink: Optional[str], as_json: bool,
           timeout: float, watch: bool, interval: float, count: Optional[int], keys: Optional[str],
           key_name: Optional[str]) -> None:
    """Workers with their queues and load, queued/running/done counts, tasks/s."""
    from .status import fetch, render

    cfg = _config(config_path, ventilator_clients=vent, sink_endpoint=sink, keys=keys, key_name=key_name)
    if watch:
        from .status import watch as watch_view

        try:
            watch_view(cfg, interval, timeout, count)
        except ConfigError as exc:  # keys
            _fail(str(exc))
        except KeyboardInterrupt:
            pass
        return
    try:
        data = fetch(cfg, timeout)
    except ConfigError as exc:  # keys
        _fail(str(exc))
    except ZqError as exc:
        _fail(str(exc), EXIT_FAILURE)
    click.echo(json.dumps(data, indent=2, default=str) if as_json else render(data))


@cli.group()
def keys() -> None:
    """CURVE keys for a secured cluster."""


@keys.command("generate")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--name", default=None, help="Add one identity NAME instead of a whole cluster's keys.")
@click.option("--role", type=click.Choice(["client", "worker"]), default="client", show_default=True,
              help="With --name: what the new identity may do.")
def keys_generate(directory: str, name: Optional[str], role: str) -> None:
    """Create a cluster's key pairs (or one more identity) in DIRECTORY."""
    from zq.security import generate

    try:
        written = generate(directory, name, role)
    except (ConfigError, OSError) as exc:
        _fail(str(exc))
    for path in written:
        click.echo(path)
    if not written:
        click.echo(f"zq: nothing to do: the keys already exist in {directory}", err=True)


from .tasks_cli import tasks as _tasks  # noqa: E402

cli.add_command(_tasks)

from .slurm_cli import slurm as _slurm  # noqa: E402

cli.add_command(_slurm)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                               "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: Sequence[str]) -> None:
    """Benchmark zq on a local cluster (same as ``python -m zq.bench``; --help for options)."""
    from zq.bench.cli import main as bench_main

    sys.exit(bench_main(list(args)))


@cli.command()
@config_opt
@click.option("--ventilator", "vent", help="The ventilator's clients endpoint.")
@click.option("--sink", help="The sink's endpoint.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; any non-loopback address needs --token-file (or --insecure).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="File holding the access token: API calls send 'Authorization: Bearer TOKEN', "
                   "browsers log in with it.")
@click.option("--ssl-certfile", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Serve HTTPS with this certificate (PEM), as uvicorn's option.")
@click.option("--ssl-keyfile", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The certificate's private key (PEM).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Seconds one request may wait for the cluster (then 504).")
@click.option("--sample-interval", type=click.FloatRange(min=0.05), default=1.0, hidden=True,
              help="Seconds between the dashboard's samples of the cluster (tests use less).")
@keys_opt
@key_name_opt
@click.option("--insecure", is_flag=True, default=None,
              help="Serve a non-loopback address without a token (not recommended).")
@parent_opt
def http(config_path: Optional[str], vent: Optional[str], sink: Optional[str], host: str, port: int,
         token_file: Optional[str], ssl_certfile: Optional[str], ssl_keyfile: Optional[str], timeout: float,
         sample_interval: float, keys: Optional[str], key_name: Optional[str], insecure: Optional[bool],
         exit_with_parent: Optional[int]) -> None:
    """The web dashboard, JSON admin API (/docs) and Prometheus /metrics of the cluster."""
    from .web import auth  # stdlib only: a refused bind fails fast

    if bool(ssl_certfile) != bool(ssl_keyfile):
        _fail("--ssl-certfile and --ssl-keyfile go together")
    try:
        token = auth.read_token(token_file) if token_file else None
        auth.check_bind(host, token, bool(insecure))
    except ZqError as exc:
        _fail(str(exc))
    try:
        from .web.app import build
        from .web.server import serve
    except ImportError as exc:
        _fail(f"zq http needs the web extra ({exc.name} is missing): pip install 'zq[web]'")
    import zq
    cfg = _config(config_path, ventilator_clients=vent, sink_endpoint=sink, keys=keys, key_name=key_name)
    stop = threading.Event()
    if exit_with_parent:
        _watch_parent(exit_with_parent, stop.set)
    try:
        client = zq.Client(cfg, unreachable_timeout=30.0)
    except ConfigError as exc:  # keys
        _fail(str(exc))
    if token is None and not auth.is_loopback(host):
        log.warning("zq http serves %s with no authentication (--insecure)", host)
    app = build(client, token, host, tls=bool(ssl_certfile), insecure=bool(insecure), timeout=timeout,
                sample_interval=sample_interval)
    try:
        serve(app, host, port, lambda url: click.echo(f"zq http READY url={url} pid={os.getpid()}", err=True),
              ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, stop=stop)
    except OSError as exc:
        _fail(f"cannot serve on {host}:{port}: {exc.strerror or exc}")
    finally:
        app.state.gateway.close()
        client.shutdown(wait=False)
    sys.exit(EXIT_OK)


def main() -> None:
    cli(prog_name="zq")


if __name__ == "__main__":
    main()
