"""Serve the app with uvicorn on a socket bound here (so ``--port 0`` can report its
port in the READY line), TLS through uvicorn's own ssl options, our own signal handling
(first SIGINT/SIGTERM: graceful stop; second: exit at once)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from typing import Any, Callable, Iterator, Optional

import uvicorn

log = logging.getLogger("zq.http")


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises a captured signal after its graceful exit (killing us with it);
        # zq nodes exit 0 after a graceful stop instead.
        def handler(signum: int, frame: Any) -> None:
            if self.should_exit:
                os._exit(1)
            self.should_exit = True

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    async def startup(self, sockets: Optional[list] = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._on_ready()


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.set_inheritable(True)
    return sock


def serve(app: Any, host: str, port: int, ready: Callable[[str], None],
          ssl_certfile: Optional[str] = None, ssl_keyfile: Optional[str] = None,
          stop: Optional[threading.Event] = None) -> None:
    """Block serving ``app`` until a signal (or ``stop`` is set); ``ready(url)`` once it
    accepts connections."""
    sock = bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    scheme = "https" if ssl_certfile else "http"
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    config = uvicorn.Config(app, log_config=None, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
                            timeout_graceful_shutdown=5, server_header=False, lifespan="on",
                            access_log=False)  # app.py logs actions and refusals (polling at DEBUG)
    server = _Server(config, lambda: ready(f"{scheme}://{shown}:{bound_port}"))
    if stop is not None:
        def watch() -> None:
            stop.wait()
            server.should_exit = True

        threading.Thread(target=watch, name="zq-http-stop", daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
