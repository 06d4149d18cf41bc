"""``Link``: a reliable DEALER to one peer (the zguide's Paranoid Pirate, written once).

    owner's thread ── put(key, item) ──▶ unacked (ordered) ─┐
                   ── queue(frames) ──────────────────────┼─▶ pending ── flush() ──▶ DEALER ──▶ peer
                   ── send(frames): now or never ─────────┘                          │  LinkMonitor
                   ◀── on_message(msg) ◀── handle(events) ◀── replies, ACKs, HEARTBEAT{instance}
                   ── tick(now): heartbeat when idle; peer silent > timeout: a new socket
                   ◀── on_reconnect(why) then the unacknowledged again, in order

Every connected socket of zq is one: the client's two, the worker's to the ventilator and
every ``SinkLink`` (nodes/common.py).  The thread that owns the link calls everything.

- **Heartbeat** when nothing went out for ``interval`` seconds.
- **Liveness**: a peer silent (nothing received) for more than ``timeout`` seconds gets a
  fresh socket, then again after ``backoff`` seconds, doubling up to ``BACKOFF_MAX``
  while it stays silent; anything received resets the backoff.  ``last_recv`` only ever
  moves when a message arrives: a new socket does not make the peer alive.
- **The socket monitor** (``LinkMonitor``): libzmq reconnects by itself after a drop and
  discards what was queued on the old connection; the monitor says so.  Sockets are
  closed monitor first (``close_link``), and its errors are never swallowed.
- **Peer instance**: each HEARTBEAT of the peer names its run (``instance``); a new one
  means it restarted and forgot what it had.
- **Outbox**: ``put(key, item)`` sends and keeps an item until ``ack([key])``; unkeyed
  messages (``queue``) are kept only until libzmq takes them.  Both go out in order; a
  peer that cannot take them (high-water mark, away) gets them on a later ``flush``.

On every new connection (``"connected"`` for the first, ``"replaced"`` by liveness,
``"reconnected"`` by libzmq, ``"restarted"`` peer) the owner's ``on_reconnect(why)`` runs
first (it says what the peer must hear before anything else: READY, HELLO, resubmitted
tasks), then everything unacknowledged is sent again in ``put`` order.  A peer must
therefore take a message twice without harm.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterator, Optional

import zmq

from . import protocol as P
from ._sockets import LinkMonitor, close_link, dealer, recv_now, send_now

if TYPE_CHECKING:  # pragma: no cover
    from .security import Keys

log = logging.getLogger("zq.link")

#: why the owner's ``on_reconnect`` runs
CONNECTED, REPLACED, RECONNECTED, RESTARTED = "connected", "replaced", "reconnected", "restarted"


class Link:
    """A DEALER to ``endpoint`` that heartbeats, reconnects and resends (see the module)."""

    BACKOFF_MAX = 30.0  # seconds between fresh sockets to a peer that stays silent

    def __init__(self, ctx: zmq.Context, endpoint: str, *, identity: bytes, server: str,
                 poller: zmq.Poller, heartbeat: dict, interval: float, timeout: float,
                 keys: Optional["Keys"] = None, max_message: Optional[int] = None, small: int = 3,
                 name: str = "", logger: Optional[logging.Logger] = None) -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self.identity = identity
        self.server = server  # the CURVE server whose public key we check
        self.name = name or server
        self.poller = poller
        self.keys = keys
        self.max_message = max_message
        self.interval = interval
        self.timeout = timeout
        self.small = small  # leading frames received as bytes (the rest as zmq.Frame)
        self.log = logger or log
        self._heartbeat = P.pack(P.HEARTBEAT, heartbeat)
        #: the owner's hooks (all run on the owner's thread)
        self.on_message: Callable[[P.Message], None] = lambda msg: None
        self.on_reconnect: Optional[Callable[[str], None]] = None
        self.on_acked: Optional[Callable[[list], None]] = None
        self.on_bad: Callable[[BaseException], None] = self._bad
        #: said after the warning that the peer is silent (what the owner does about it)
        self.silence_note = ""
        #: warn once per silence (later reconnections: debug), not at every fresh socket
        self.warn_once = False
        self.socket: Optional[zmq.Socket] = None
        self.monitor: Optional[LinkMonitor] = None
        #: key -> item, sent and not acknowledged yet, in ``put`` order
        self.unacked: dict[Hashable, Any] = {}
        # (key or None, item, about): what still has to go out, in order; ``about`` is
        # whatever the owner said the message concerns (``unsent``)
        self._pending: collections.deque[tuple[Optional[Hashable], Any, Any]] = collections.deque()
        now = time.monotonic()
        self.last_recv = now  # moved only by a message from the peer
        self.last_send = 0.0
        self.backoff = interval
        self.reconnect_at = 0.0
        self.heard = False  # any message from the peer yet
        self.warned = False  # the current silence was logged
        self.peer_instance: Optional[str] = None
        #: why the peer refused our handshake (keys?: ``describe_refusal``), until one succeeds
        self.refused: Optional[str] = None
        self.deferred = 0  # messages that had to wait (high-water mark, peer away)
        self.replaced = 0  # fresh sockets made for a silent peer

    # -- the socket -------------------------------------------------------------------
    @property
    def heard_at(self) -> float:
        """When the peer was last heard (monotonic), for the node's watchdog."""
        return self.last_recv

    def open(self) -> "Link":
        """Connect and run ``on_reconnect("connected")``."""
        self._connect()
        self._reconnected(CONNECTED)
        return self

    def _connect(self) -> None:
        s = dealer(self.ctx, self.endpoint, self.identity, self.max_message, keys=self.keys, server=self.server,
                   connect=False)
        self.socket = s
        self.monitor = LinkMonitor(s, self.endpoint)  # before connecting: it sees every handshake
        try:
            s.connect(self.endpoint)
        except zmq.ZMQError:
            close_link(s, self.monitor)
            self.socket = self.monitor = None
            raise
        self.poller.register(s, zmq.POLLIN)
        self.poller.register(self.monitor.socket, zmq.POLLIN)

    def reconnect(self) -> None:
        """A fresh socket (the old one goes first, monitor before socket: ``close_link``);
        what was queued on the old one is lost: the owner's hook, then the outbox, again."""
        if self.socket is not None:
            close_link(self.socket, self.monitor, self.poller)
        self.socket = self.monitor = None
        self._connect()
        self.replaced += 1
        self.peer_instance = None  # the next heartbeat names it: not a restart
        self._reconnected(REPLACED)

    def close(self, linger: int = 0) -> None:
        if self.socket is not None:
            close_link(self.socket, self.monitor, self.poller, linger)
        self.socket = self.monitor = None

    # -- receiving --------------------------------------------------------------------
    def handle(self, events: dict) -> None:
        """The owner's loop hands us its poll events."""
        if self.socket in events:
            self.drain()
        mon = self.monitor
        if mon is not None and mon.socket in events:
            back = mon.reconnected()
            self.refused = mon.refused
            if back:
                self.log.info("connection to the %s at %s re-established: sending again", self.name, self.endpoint)
                self.peer_instance = None
                self._reconnected(RECONNECTED)

    def drain(self, limit: int = 1000) -> None:
        """Handle up to ``limit`` waiting messages (``on_message``; ``on_bad`` if one fails)."""
        sock = self.socket
        for _ in range(limit):
            frames = recv_now(sock, self.small)
            if frames is None:
                return
            self.last_recv = time.monotonic()
            self.backoff = self.interval
            self.heard = True
            if self.warned:
                self.warned = False
                self.log.info("%s at %s answers again", self.name, self.endpoint)
            try:
                msg = P.unpack(frames)
                if msg.command == P.HEARTBEAT:
                    self._peer_heartbeat(msg.header.get("instance"))
                self.on_message(msg)
            except Exception as exc:
                self.on_bad(exc)

    def _peer_heartbeat(self, inst: Any) -> None:
        if self.peer_instance is not None and inst != self.peer_instance:
            self.log.warning("%s at %s restarted (new instance %s)", self.name, self.endpoint, inst)
            self.peer_instance = inst
            self._reconnected(RESTARTED)
        self.peer_instance = inst

    def _bad(self, exc: BaseException) -> None:
        self.log.warning("bad message from the %s at %s: %s", self.name, self.endpoint, exc)

    # -- sending ----------------------------------------------------------------------
    def heartbeat(self) -> bool:
        """A heartbeat now (a new connection says hello with one)."""
        return self.send(self._heartbeat)

    def send(self, frames: list) -> bool:
        """Send now or not at all (heartbeats, progress, status); False if it did not go."""
        try:
            send_now(self.socket, frames)
        except zmq.Again:
            self.deferred += 1
            return False
        self.last_send = time.monotonic()
        return True

    def queue(self, frames: list, about: Any = (), flush: bool = True) -> None:
        """Send ``frames`` after everything queued before (now if nothing waits)."""
        self._pending.append((None, frames, about))
        if flush and len(self._pending) == 1:
            self.flush()

    def put(self, key: Hashable, item: Any, flush: bool = True) -> None:
        """Send ``item`` in order and keep it until ``ack([key])``, sending it again after
        every reconnection (``on_reconnect``); a key put again replaces its item."""
        self.unacked[key] = item
        self._pending.append((key, item, ()))
        if flush and len(self._pending) == 1:
            self.flush()

    def ack(self, keys: Any) -> list:
        """The peer has these: forget them; ``on_acked`` is told the keys that were kept."""
        unacked = self.unacked
        done = [k for k in keys if unacked.pop(k, None) is not None]
        if done and self.on_acked is not None:
            self.on_acked(done)
        return done

    def clear(self) -> None:
        """Drop everything unsent and unacknowledged (nobody waits for it any more)."""
        self.unacked.clear()
        self._pending.clear()

    def unsent(self) -> Iterator[Any]:
        """What the queued messages not sent yet concern (``queue(about=...)``)."""
        return (about for key, _, about in self._pending if key is None)

    @property
    def waiting(self) -> int:
        """Messages not sent yet."""
        return len(self._pending)

    def resend(self) -> None:
        """Send everything unacknowledged again, in ``put`` order, before what is queued."""
        keep = [(k, item, about) for k, item, about in self._pending if k is None]
        self._pending = collections.deque((k, item, ()) for k, item in self.unacked.items())
        self._pending.extend(keep)
        self.flush()

    def resync(self, why: str) -> None:
        """The peer lost what we sent (``why``): the owner's hook, then the outbox."""
        self._reconnected(why)

    def _reconnected(self, why: str) -> None:
        old, self._pending = self._pending, collections.deque()
        again = [(k, item, ()) for k, item in self.unacked.items()]
        if self.on_reconnect is not None:
            self.on_reconnect(why)  # what the peer must hear first (READY, HELLO, ...)
        self._pending.extend(again)
        self._pending.extend((k, item, about) for k, item, about in old if k is None)
        self.flush()

    def _pack(self, pending: collections.deque) -> tuple[int, list]:
        """How many entries from the head of ``pending`` go as one message, and its frames."""
        return 1, pending[0][1]

    def flush(self) -> bool:
        """Send what waits, in order, until the peer cannot take more; True if all went."""
        pending = self._pending
        unacked = self.unacked
        sock = self.socket
        while pending:
            key, item, _ = pending[0]
            if key is not None and unacked.get(key) is not item:
                pending.popleft()  # acknowledged (or replaced) meanwhile
                continue
            n, frames = self._pack(pending)
            try:
                send_now(sock, frames)
            except zmq.Again:
                self.deferred += 1
                return False
            for _ in range(n):
                pending.popleft()
            self.last_send = time.monotonic()
        return True

    # -- time -------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Heartbeat when idle; a fresh socket for a silent peer (capped backoff); flush."""
        if now - self.last_send >= self.interval:
            self.send(self._heartbeat)
            self.last_send = now  # sent or not: the next try is an interval away
        silent = now - self.last_recv
        if silent <= self.timeout:
            self.backoff = self.interval
            self.reconnect_at = 0.0
        elif now >= self.reconnect_at:
            if self.warned and self.warn_once:
                self.log.debug("%s at %s silent for %.1fs: reconnecting", self.name, self.endpoint, silent)
            else:  # at every fresh socket, or once per silence (``warn_once``)
                self.warned = True
                what = ("has not answered since it was connected (wrong endpoint, or not running?)"
                        if not self.heard else f"silent for {silent:.1f}s")
                self.log.warning("%s at %s %s: reconnecting%s", self.name, self.endpoint, what, self.silence_note)
            self.reconnect_at = now + self.backoff
            self.backoff = min(self.backoff * 2, self.BACKOFF_MAX)
            self.reconnect()
        self.flush()
