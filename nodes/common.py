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
from zq._wake import Waker
from zq.config import Config
from zq.envelope import ErrorInfo, TaskState
from zq.errors import ZqError
from zq.link import Link
from zq.protocol import ResultRow, TaskSpec
from zq.security import Authenticator, Keys
from zq.serialize import args_size

from .endpoint import Peers  # the watchdog reads every Peers of a node (Node.last_heard)

log = logging.getLogger("zq.node")

HOST = socket.gethostname()

#: per role: the servers whose public keys it needs, the key lists it admits (README "Security")
KEYS_NEEDED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ventilator": (("sink",), ("clients", "workers")),
    "sink": (("ventilator",), ("clients", "workers")),
    "worker": (("ventilator", "sink"), ()),
}


#: a node that heard from no peer for this many liveness timeouts (although some should be
#: heartbeating it) checks that its own networking still moves messages (``Watchdog``)
WATCHDOG_TIMEOUTS = 5


def io_alive(ctx: zmq.Context, timeout: float) -> bool:
    """Does ``ctx`` still move messages over TCP?  A loopback round through a ROUTER and a
    DEALER of its own: libzmq's I/O thread connects, handshakes and carries it.  A socket
    error (no port to bind, say) cannot tell: True."""
    a = ctx.socket(zmq.ROUTER)
    b = ctx.socket(zmq.DEALER)
    try:
        a.setsockopt(zmq.LINGER, 0)
        b.setsockopt(zmq.LINGER, 0)
        port = a.bind_to_random_port("tcp://127.0.0.1")
        b.connect(f"tcp://127.0.0.1:{port}")
        b.send(b"zq-watchdog", zmq.NOBLOCK)  # queued in the pipe: the I/O thread carries it
        return bool(a.poll(int(timeout * 1000)))
    except zmq.ZMQError as exc:
        log.debug("networking self-test not possible: %s", exc)
        return True
    finally:
        a.close(0)
        b.close(0)


def raise_fd_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit: a ventilator or a sink
    holds a socket per peer, and the soft default (1,024 on many systems) is a default, not
    a resource.  Returns the limit now in force."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            return want
        except (ValueError, OSError) as exc:
            log.debug("could not raise the open-file limit from %d to %d: %s", soft, want, exc)
    return soft


class Watchdog:
    """Notices a node that heard from nobody for too long, and tells why.

    Every peer of a node heartbeats it, so a node that heard from none of the peers it
    expects for ``WATCHDOG_TIMEOUTS`` liveness timeouts either lost them all (they are
    down, or the network is cut) or cannot receive at all: libzmq's I/O thread, shared by
    every socket of the node, is blocked (it was seen blocked for good in a write to a
    socket monitor).  A loopback message through the node's own context (``io_alive``)
    tells the two apart.  Peers away: a warning, and the links keep reconnecting on
    their own.  Networking stuck: an error, and the node stops with exit code 1 so that
    its supervisor starts it again; a stuck I/O thread can block the stop itself, so the
    process exits anyway ``EXIT_AFTER`` seconds later (``hard_exit``, set by the CLI).

    A thread of its own: it only reads the node's receive times and makes its own
    sockets in the node's context; ``Node.run`` joins it before closing anything.
    """

    EXIT_AFTER = 5.0
    PROBE_TIMEOUT = 2.0  # seconds (at least one liveness timeout), twice

    def __init__(self, node: "Node") -> None:
        self.node = node
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"zq-{node.role}-watchdog", daemon=True)
        self.hard_exit: Optional[Callable[[], None]] = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(10.0)

    def _run(self) -> None:
        cfg = self.node.config
        limit = WATCHDOG_TIMEOUTS * cfg.heartbeat_timeout
        probe = max(self.PROBE_TIMEOUT, cfg.heartbeat_timeout)
        next_check = 0.0
        while not self._done.wait(cfg.heartbeat_interval):
            last = self.node.last_heard()
            now = time.monotonic()
            if last is None or now - last < limit or now < next_check:
                continue
            next_check = now + limit  # one self-test per silent period
            silent = now - last
            ctx = self.node.ctx
            if ctx is None or self._done.is_set():
                return
            if io_alive(ctx, probe) or io_alive(ctx, probe):
                log.warning("%s: no message from any peer for %.0fs; its own networking works "
                            "(self-test): the peers are away or cut off", self.node.role, silent)
                continue
            msg = (f"{self.node.role}: no message from any peer for {silent:.0f}s and its networking is "
                   f"stuck (a loopback message through its own ZeroMQ context did not arrive in "
                   f"{probe:g}s): stopping so that a supervisor restarts it")
            log.error("%s", msg)
            self.node.counters["watchdog_stuck"] += 1
            self.node.stuck = msg
            self.node.stop()
            if self.hard_exit is not None and not self._done.wait(self.EXIT_AFTER):
                log.error("%s: did not stop within %gs: exiting now", self.node.role, self.EXIT_AFTER)
                self.hard_exit()
            return


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
        #: newest message from a peer outside Links and Peers (monotonic; the ventilator's
        #: workers), for the watchdog
        self.heard_at = time.monotonic()
        self.watchdog = Watchdog(self)
        self.stuck: Optional[str] = None  # why the watchdog stopped the node

    def last_heard(self) -> Optional[float]:
        """When a peer was last heard (monotonic: the newest of ``heard_at``, its Links'
        and its Peers'), or None when no peer is expected to heartbeat it: it has no
        Link (every worker and the ventilator have one) and its Peers know nobody."""
        times, expected = [self.heard_at], False
        for v in list(vars(self).values()):  # the node's own links, whatever its role
            if isinstance(v, Link) or (isinstance(v, Peers) and v.last_seen):
                times.append(v.heard_at)
                expected = True
        return max(times) if expected else None

    def start_auth(self, domains: dict[str, tuple[str, ...]]) -> None:
        """Start the ZAP authenticator (servers with keys only) before binding."""
        if self.keys is not None:
            assert self.ctx is not None
            self.counters["handshakes_refused"] = 0  # counted from the authenticator's thread

            def refused() -> None:
                self.counters["handshakes_refused"] += 1

            self.auth = Authenticator(self.ctx, self.keys, domains, on_refused=refused)
            self.auth.start()

    # -- life cycle -------------------------------------------------------------------
    def run(self, ready: Optional[Callable[[dict[str, str]], None]] = None) -> None:
        """Bind/connect, call ``ready(endpoints)``, serve until ``stop()``, close."""
        raise_fd_limit()
        self.ctx = zmq.Context()
        try:
            self.setup()
            if self.auth is not None:  # name the endpoint in refusals ("endpoint": the sink's)
                self.auth.endpoints = {d: self.endpoints.get(d, self.endpoints.get("endpoint", "?"))
                                       for d in self.auth.domains}
            if ready is not None:
                ready(dict(self.endpoints))
            self.heard_at = time.monotonic()
            self.watchdog.start()
            self.loop()
        finally:
            self.watchdog.stop()
            self.close()
            if self.auth is not None:
                self.auth.stop()
            self.ctx.destroy(linger=0)
            self._waker.close()
        if self.stuck is not None:
            raise ZqError(self.stuck)

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


def result_row(spec: TaskSpec, state: TaskState, error: Optional[ErrorInfo], *, worker: str,
               started_at: float = 0.0, finished_at: float = 0.0, run_seconds: float = 0.0,
               attempts: Optional[int] = None, pid: Optional[int] = None,
               payload: bytes = b"") -> ResultRow:
    """A result for ``spec`` as the sink will route it."""
    row = P.ResultFields._make((
        spec.task_id, spec.name, state._value_, error.to_row() if error else None,
        spec.attempt if attempts is None else attempts, worker, HOST,
        os.getpid() if pid is None else pid, spec.queue, spec.submitted_at, started_at,
        finished_at or time.time(), run_seconds, spec.client, spec.retain, list(spec.lost),
        (spec.opts or {}).get("ttl"),
    ))
    return ResultRow(row, payload)


class SinkLink(Link):
    """The ``Link`` to the sink of a worker or the ventilator: it keeps every result until
    the sink acknowledges it (``unacked``: task id -> ResultRow), sends them in batches
    (``flush``, each turn of the owner's loop) and again after a reconnection or a sink
    restart; the sink records each task id once, so resending is harmless.  The owner's
    ``on_acked(ids)`` is told the ids the sink acknowledged."""

    MAX_BATCH = 2000

    def __init__(self, node: Node, endpoint: str, identity: bytes, poller: zmq.Poller) -> None:
        assert node.ctx is not None
        cfg = node.config
        super().__init__(node.ctx, endpoint, identity=identity, server="sink", poller=poller,
                         heartbeat={"id": identity.decode(), "instance": node.instance},
                         interval=cfg.heartbeat_interval, timeout=cfg.heartbeat_timeout, keys=node.keys,
                         max_message=cfg.max_message_size, small=1 << 30, name="sink", logger=log)
        self.node = node
        self.unacked: dict[str, ResultRow] = {}  # type: ignore[assignment]
        #: told the ids of results the sink acknowledged (the worker's DONEs wait for it)
        self.on_acked: Optional[Callable[[list[str]], None]] = None  # type: ignore[assignment]
        self.on_message = self._on_sink
        self.on_bad = lambda exc: node.bad_message("sink link", exc)
        self._limit = P.batch_limit(cfg.max_message_size)
        self.open()

    @property
    def sink_instance(self) -> Optional[str]:
        return self.peer_instance

    def add(self, row: ResultRow) -> None:
        """Keep ``row`` until the sink acknowledges it; it goes with the next ``flush``."""
        self.put(row.task_id, row, flush=False)

    def resend_all(self) -> None:
        self.resend()

    def on_readable(self) -> None:
        self.drain(1 << 30)

    def _pack(self, pending: collections.deque) -> tuple[int, list]:
        n = P.take_batch(pending, self._limit, self.MAX_BATCH, size=_row_size)
        return n, P.pack_results([pending[i][1] for i in range(n)])

    def _on_sink(self, msg: P.Message) -> None:
        if msg.command == P.ACK:
            self.ack(P.str_list(msg.header, "ids", msg.command))
        elif msg.command == P.ERROR:
            log.warning("sink refused a message: %s", msg.header.get("msg"))


def _row_size(entry: tuple) -> int:
    return args_size(entry[1].payload)
