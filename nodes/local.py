"""A whole cluster on this machine: one process per node (used by ``zq up`` and tests).

    LocalCluster ── NodeProcess("sink") ──────── its READY line gives its endpoint
                 ── NodeProcess("ventilator") ── then this, told the sink's endpoint
                 ── NodeProcess("worker") × N ── then these, told both

Stop order: workers first (they hand back what they have not started and
deliver what they finished), then the ventilator, then the sink last so that
every result still in flight reaches it.
"""

from __future__ import annotations

import os
import signal
from typing import Optional, Sequence

from zq._embedded import NodeProcess


class LocalCluster:
    def __init__(
        self,
        *,
        workers: int = 1,
        executor: str = "thread",
        concurrency: int = 0,
        config: Optional[str] = None,
        host: str = "127.0.0.1",
        ventilator_args: Sequence[str] = (),
        sink_args: Sequence[str] = (),
        worker_args: Sequence[str] = (),
        env: Optional[dict[str, str]] = None,
        echo: bool = False,
        exit_with_parent: bool = True,
        bind: Optional[dict[str, str]] = None,
    ) -> None:
        """``bind``: the endpoints to bind (``clients``, ``workers``, ``sink``); by default
        random ports on ``host``."""
        self.n_workers = workers
        self.executor = executor
        self.concurrency = concurrency
        self.config = config
        self.host = host
        self.ventilator_args = list(ventilator_args)
        self.sink_args = list(sink_args)
        self.worker_args = list(worker_args)
        self.env = dict(env or {})
        self.echo = echo
        self.parent = ["--exit-with-parent", str(os.getpid())] if exit_with_parent else []
        self.ventilator: Optional[NodeProcess] = None
        self.sink: Optional[NodeProcess] = None
        self.workers: list[NodeProcess] = []
        self.endpoints: dict[str, str] = {}
        self.bind = bind

    def _cfg(self) -> list[str]:
        return ["--config", self.config] if self.config else []

    def start(self, timeout: float = 60.0) -> dict[str, str]:
        try:
            return self._start(timeout)
        except BaseException:
            self.stop(kill=True)
            raise

    def _start(self, timeout: float) -> dict[str, str]:
        rnd = f"tcp://{self.host}:0"
        b = self.bind or {"clients": rnd, "workers": rnd, "sink": rnd}
        vent = ["ventilator", *self._cfg(), "--clients", b["clients"], "--workers", b["workers"]]
        sink = ["sink", *self._cfg(), "--endpoint", b["sink"]]
        self.sink = NodeProcess([*sink, *self.sink_args, *self.parent], self.env, self.echo, "sink").start()
        sink_eps = self.sink.wait_ready(timeout)
        self.ventilator = NodeProcess([*vent, "--sink", sink_eps["endpoint"], *self.ventilator_args,
                                       *self.parent], self.env, self.echo, "ventilator").start()
        vent_eps = self.ventilator.wait_ready(timeout)
        self.endpoints = {"clients": vent_eps["clients"], "workers": vent_eps["workers"],
                          "sink": sink_eps["endpoint"]}
        for _ in range(self.n_workers):
            self.add_worker()
        for w in self.workers:
            w.wait_ready(timeout)
        return self.endpoints

    def worker_command(self, extra: Sequence[str] = ()) -> list[str]:
        args = ["worker", *self._cfg(), "--ventilator", self.endpoints["workers"],
                "--sink", self.endpoints["sink"], "--executor", self.executor]
        if self.concurrency:
            args += ["--concurrency", str(self.concurrency)]
        return [*args, *self.worker_args, *extra, *self.parent]

    def add_worker(self, extra: Sequence[str] = (), wait: bool = False, timeout: float = 60.0) -> NodeProcess:
        w = NodeProcess(self.worker_command(extra), self.env, self.echo, f"worker{len(self.workers)}").start()
        self.workers.append(w)
        if wait:
            w.wait_ready(timeout)
        return w

    def restart(self, role: str, *, kill: bool = True, extra: Sequence[str] = (),
                timeout: float = 60.0) -> NodeProcess:
        """Stop (SIGKILL by default) the ventilator or the sink and start it again on the
        same endpoints; ``extra`` arguments are added (e.g. ``--journal FILE``)."""
        old = getattr(self, role)
        if old is not None:
            if kill:
                old.kill()
            else:
                old.stop()
        self.start_node(role, extra, timeout)
        return getattr(self, role)

    def start_node(self, role: str, extra: Sequence[str] = (), timeout: float = 60.0) -> NodeProcess:
        """Start the ventilator or the sink on the cluster's known endpoints."""
        eps = self.endpoints
        if role == "sink":
            args = ["sink", *self._cfg(), "--endpoint", eps["sink"], *self.sink_args]
        elif role == "ventilator":
            args = ["ventilator", *self._cfg(), "--clients", eps["clients"], "--workers", eps["workers"],
                    "--sink", eps["sink"], *self.ventilator_args]
        else:
            raise ValueError(f"cannot start {role!r} this way")
        node = NodeProcess([*args, *extra, *self.parent], self.env, self.echo, role).start()
        setattr(self, role, node)
        node.wait_ready(timeout)
        return node

    def nodes(self) -> list[NodeProcess]:
        return [n for n in (*self.workers, self.ventilator, self.sink) if n is not None]

    def stop(self, kill: bool = False, timeout: float = 40.0) -> dict[str, Optional[int]]:
        """Stop every node (workers, ventilator, sink in that order); their exit codes."""
        codes: dict[str, Optional[int]] = {}
        if kill:
            for n in self.nodes():
                n.kill()
                codes[n.name] = n.wait(5)
            return codes
        for w in self.workers:
            w.terminate()
        for w in self.workers:  # one signal each: a second one means "stop at once"
            codes[w.name] = w.stop(timeout, signal_first=False)
        for n in (self.ventilator, self.sink):
            if n is not None:
                codes[n.name] = n.stop(timeout)
        return codes

    def signal_all(self, sig: int = signal.SIGTERM) -> None:
        for n in self.nodes():
            n.signal(sig)

    def __enter__(self) -> "LocalCluster":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
