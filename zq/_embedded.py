"""Child node processes: start one, wait for its READY line, stop it.

``zq.Client()`` with no endpoints uses :class:`EmbeddedCluster`, which runs
``python -m zq.nodes up`` (every role on random loopback ports) in a child process
that exits with its parent.  This module starts that process; it never
imports ``nodes``.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Optional, Sequence

from .errors import ZqError

log = logging.getLogger("zq.embedded")

_KV = re.compile(r"(\w+)=(\S+)")


def parse_ready(line: str, role: str = r"\w+") -> Optional[dict[str, str]]:
    """``{"clients": "tcp://…", …}`` from ``zq ROLE READY k=v …``, or None for another line."""
    m = re.match(rf"zq {role} READY\b(.*)$", line)
    if m is None:
        return None
    return dict(_KV.findall(m.group(1)))


class NodeProcess:
    """A ``python -m zq.nodes ROLE ...`` child whose stderr is watched for READY."""

    def __init__(self, args: Sequence[str], env: Optional[dict[str, str]] = None,
                 echo: bool = False, name: str = "", prefix: Sequence[str] = ()) -> None:
        """``prefix``: a command to run it under (e.g. ``ip netns exec NS`` in tests)."""
        self.args = [*prefix, sys.executable, "-m", "zq.nodes", *args]
        self.role = args[0]
        self.name = name or args[0]
        self.env = {**os.environ, **(env or {})}
        self.echo = echo
        self.lines: collections.deque[str] = collections.deque(maxlen=300)
        self.endpoints: Optional[dict[str, str]] = None
        self._ready = threading.Event()
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "NodeProcess":
        # a session of its own: Ctrl-C in a terminal reaches only the parent, which stops
        # its nodes in order (one SIGTERM each); they exit with their parent regardless
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=self.env, text=True, bufsize=1,
                                     start_new_session=True)
        threading.Thread(target=self._read, name=f"zq-{self.name}-stderr", daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            self.lines.append(line)
            if self.echo:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
            else:
                log.debug("[%s] %s", self.name, line)
            if self.endpoints is None:
                eps = parse_ready(line, self.role)
                if eps is not None:
                    self.endpoints = eps
                    self._ready.set()
        self._ready.set()  # EOF: the process ended

    def wait_ready(self, timeout: float = 60.0) -> dict[str, str]:
        if not self._ready.wait(timeout) or self.endpoints is None:
            tail = "\n".join(list(self.lines)[-20:])
            code = self.proc.poll() if self.proc else None
            self.kill()
            raise ZqError(f"{self.name} did not become ready (exit code {code}):\n{tail}")
        return self.endpoints

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self, n: int = 60) -> str:
        """The last ``n`` lines it wrote to stderr, each prefixed with its name."""
        return "\n".join(f"    [{self.name}] {line}" for line in list(self.lines)[-n:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 15.0, signal_first: bool = True) -> Optional[int]:
        """SIGTERM (unless already sent), wait up to ``timeout``, then SIGKILL.  The exit code."""
        if self.proc is None:
            return None
        if signal_first:
            self.terminate()
        code = self.wait(timeout)
        if code is None:
            self.kill()
            code = self.proc.poll()
        return code


class EmbeddedCluster:
    """``python -m zq.nodes up`` on random loopback ports, tied to this process's life."""

    def __init__(self, workers: int = 1, executor: str = "process", concurrency: int = 0,
                 keys: Optional[str] = None) -> None:
        args = ["up", "--workers", str(workers), "--executor", executor,
                "--exit-with-parent", str(os.getpid())]
        if concurrency:
            args += ["--concurrency", str(concurrency)]
        env = {
            "ZQ_VENTILATOR_CLIENTS": "tcp://127.0.0.1:0",
            "ZQ_VENTILATOR_WORKERS": "tcp://127.0.0.1:0",
            "ZQ_SINK_ENDPOINT": "tcp://127.0.0.1:0",
        }
        if keys:
            env["ZQ_SECURITY_KEYS"] = os.path.abspath(keys)
        self.node = NodeProcess(args, env=env, name="embedded cluster")

    def start(self, timeout: float = 60.0) -> dict[str, str]:
        t0 = time.monotonic()
        self.node.start()
        eps = self.node.wait_ready(timeout)
        log.debug("embedded cluster ready in %.2fs: %s", time.monotonic() - t0, eps)
        return eps

    def stop(self) -> None:
        self.node.stop(20.0)
