"""What every node shares: the run/stop life cycle, bad-input accounting and the
acknowledged link that carries results to the sink.

    node thread ── owns every socket of the node ── polls them + a Waker pipe
    other threads ── only call stop() (sets a flag, wakes the loop)
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import threading
import time
from typing import Callable, Optional

import zmq

from zq import protocol as P
from zq._sockets import LinkMonitor, dealer, recv_now, send_now
from zq._wake import Waker
from zq.config import Config
from zq.envelope import ErrorInfo, TaskState
from zq.protocol import ResultRow, TaskSpec
from zq.security import Authenticator, Keys

log = logging.getLogger("zq.node")

HOST = socket.gethostname()

#: per role: the servers whose public keys it needs, the key lists it admits (README "Security")
KEYS_NEEDED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ventilator": (("sink",), ("clients", "workers")),
    "sink": (("ventilator",), ("clients", "workers")),
    "worker": (("ventilator", "sink"), ()),
}


class Node:
    """Base of ventilator, sink and worker: the thread calling ``run`` owns all sockets."""

    role = "node"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.instance = P.new_instance_id()
        self.counters: collections.Counter[str] = collections.Counter()
        self._stopping = threading.Event()
        self._waker = Waker()
        self.ctx: Optional[zmq.Context] = None
        self.endpoints: dict[str, str] = {}
        self.started = time.time()
        servers, lists = KEYS_NEEDED.get(self.role, ((), ()))
        self.keys: Optional[Keys] = (  # every key file this node needs, checked now
            Keys.load(config.keys, config.key_name or self.role, servers, lists) if config.keys else None)
        self.auth: Optional[Authenticator] = None

    def start_auth(self, domains: dict[str, tuple[str, ...]]) -> None:
        """Start the ZAP authenticator (servers with keys only) before binding."""
        if self.keys is not None:
            assert self.ctx is not None
            self.auth = Authenticator(self.ctx, self.keys, domains)
            self.auth.start()

    # -- life cycle -------------------------------------------------------------------
    def run(self, ready: Optional[Callable[[dict[str, str]], None]] = None) -> None:
        """Bind/connect, call ``ready(endpoints)``, serve until ``stop()``, close."""
        self.ctx = zmq.Context()
        try:
            self.setup()
            if ready is not None:
                ready(dict(self.endpoints))
            self.loop()
        finally:
            self.close()
            if self.auth is not None:
                self.auth.stop()
            self.ctx.destroy(linger=0)
            self._waker.close()

    def stop(self) -> None:
        """Ask the node to stop gracefully; safe from any thread or a signal handler."""
        self._stopping.set()
        self._waker.wake()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def setup(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def loop(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        pass

    # -- bad input --------------------------------------------------------------------
    def bad_message(self, where: str, exc: BaseException) -> None:
        """Count and log (rate-limited) a refused message; the node carries on."""
        self.counters["bad_messages"] += 1
        n = self.counters["bad_messages"]
        if n <= 10 or n % 1000 == 0:
            log.warning("%s: refused message on %s (%d so far): %s", self.role, where, n, exc)


class Peers:
    """Connected peers of a ROUTER, heartbeated proactively.

    A heartbeat answered only on request sits behind whatever the peer already
    queued (thousands of submissions, say), so a busy node would look dead.
    Instead the node sends each peer it heard from a heartbeat every interval,
    from its loop; a peer silent for ``forget_after`` seconds is forgotten.
    """

    def __init__(self, interval: float, forget_after: float) -> None:
        self.interval = interval
        self.forget_after = forget_after
        self.last_seen: dict[bytes, float] = {}
        self.last_sent: dict[bytes, float] = {}

    def seen(self, ident: bytes, now: float) -> bool:
        """Record traffic from ``ident``; True if it is new (owed a heartbeat now)."""
        new = ident not in self.last_seen
        self.last_seen[ident] = now
        if new:
            self.last_sent[ident] = 0.0
        return new

    def due(self, now: float) -> list[bytes]:
        """Peers owed a heartbeat now (and forget the long-silent ones)."""
        out = []
        for ident, seen in list(self.last_seen.items()):
            if now - seen > self.forget_after:
                del self.last_seen[ident]
                self.last_sent.pop(ident, None)
            elif now - self.last_sent.get(ident, 0.0) >= self.interval:
                self.last_sent[ident] = now
                out.append(ident)
        return out


def result_row(spec: TaskSpec, state: TaskState, error: Optional[ErrorInfo], *, worker: str,
               started_at: float = 0.0, finished_at: float = 0.0, run_seconds: float = 0.0,
               attempts: Optional[int] = None, pid: Optional[int] = None,
               payload: bytes = b"") -> ResultRow:
    """A result for ``spec`` as the sink will route it."""
    row = [
        spec.task_id, spec.name, state._value_, error.to_row() if error else None,
        spec.attempt if attempts is None else attempts, worker, HOST,
        os.getpid() if pid is None else pid, spec.queue, spec.submitted_at, started_at,
        finished_at or time.time(), run_seconds, spec.client, spec.retain, list(spec.lost),
        (spec.opts or {}).get("ttl"),
    ]
    return ResultRow(row, payload)


class SinkLink:
    """A DEALER to the sink that keeps every result until the sink acknowledges it.

    Heartbeats both ways; when the sink is silent past the liveness timeout the
    socket is replaced (Paranoid Pirate) and every unacknowledged result is sent
    again.  A sink that restarted (new instance id) gets them again at once.  The
    sink records each task id once, so resending is harmless.
    """

    MAX_BATCH = 2000

    def __init__(self, node: Node, endpoint: str, identity: bytes, poller: zmq.Poller) -> None:
        self.node = node
        self.endpoint = endpoint
        self.identity = identity
        self.poller = poller
        self.unacked: dict[str, ResultRow] = {}
        self.pending: collections.deque[ResultRow] = collections.deque()
        self.sink_instance: Optional[str] = None
        self.heard = False  # any heartbeat from the sink yet
        self.socket: zmq.Socket = self._connect()
        now = time.monotonic()
        self.last_recv = now
        self.last_send = 0.0
        self.backoff = node.config.heartbeat_interval

    def _connect(self) -> zmq.Socket:
        assert self.node.ctx is not None
        s = dealer(self.node.ctx, self.endpoint, self.identity, self.node.config.max_message_size,
                   keys=self.node.keys, server="sink")
        self.poller.register(s, zmq.POLLIN)
        old = getattr(self, "monitor", None)
        if old is not None:
            self.poller.unregister(old.socket)
            old.close()
        self.monitor = LinkMonitor(s)
        self.poller.register(self.monitor.socket, zmq.POLLIN)
        return s

    def reconnect(self) -> None:
        self.poller.unregister(self.socket)
        self.socket.close(0)
        self.socket = self._connect()
        self.resend_all()

    def handle(self, events: dict) -> None:
        """The owner's loop hands us its poll events."""
        if self.socket in events:
            self.on_readable()
        if self.monitor.socket in events and self.monitor.reconnected():
            # the connection broke and came back (libzmq dropped what was queued on it)
            self.resend_all()

    def resend_all(self) -> None:
        self.pending = collections.deque(self.unacked.values())

    def add(self, row: ResultRow) -> None:
        self.unacked[row.task_id] = row
        self.pending.append(row)

    def flush(self) -> None:
        limit = P.batch_limit(self.node.config.max_message_size)
        while self.pending:
            n = P.take_batch(self.pending, limit, self.MAX_BATCH)
            batch = [self.pending[i] for i in range(n)]
            try:
                send_now(self.socket, P.pack_results(batch))
            except zmq.Again:
                return  # the sink is slow or away: keep them, try again next turn
            for _ in range(n):
                self.pending.popleft()
            self.last_send = time.monotonic()

    def on_readable(self) -> None:
        while True:
            frames = recv_now(self.socket, small=1 << 30)
            if frames is None:
                return
            self.last_recv = time.monotonic()
            self.backoff = self.node.config.heartbeat_interval
            try:
                msg = P.unpack(frames)
                if msg.command == P.ACK:
                    for tid in P.str_list(msg.header, "ids", msg.command):
                        self.unacked.pop(tid, None)
                elif msg.command == P.HEARTBEAT:
                    inst = msg.header.get("instance")
                    self.heard = True
                    if self.sink_instance is not None and inst != self.sink_instance:
                        log.info("sink %s restarted: resending %d result(s)", self.endpoint, len(self.unacked))
                        self.resend_all()
                    self.sink_instance = inst
                elif msg.command == P.ERROR:
                    log.warning("sink refused a message: %s", msg.header.get("msg"))
            except Exception as exc:
                self.node.bad_message("sink link", exc)

    def tick(self, now: float) -> None:
        cfg = self.node.config
        if now - self.last_send >= cfg.heartbeat_interval:
            try:
                self.socket.send_multipart(P.pack(P.HEARTBEAT, {"id": self.identity.decode(),
                                                              "instance": self.node.instance}),
                                           flags=zmq.NOBLOCK)
            except zmq.Again:
                pass
            self.last_send = now
        if now - self.last_recv > max(cfg.heartbeat_timeout, self.backoff):
            log.warning("sink %s silent for %.1fs: reconnecting", self.endpoint, now - self.last_recv)
            self.backoff = min(self.backoff * 2, 30.0)
            self.last_recv = now
            self.reconnect()
        self.flush()

    def close(self) -> None:
        self.monitor.close()
        self.socket.close(0)
