"""A node's bound ROUTER and everything every such socket needs, written once: the
ventilator's two endpoints (clients, workers) and the sink's one.

    peers (DEALER) ──frames──▶ [ROUTER] ── drain(handler, budget) ──▶ handler(ident, Message)
                   ◀─ERROR─── (garbage, wrong version, over max_message_size: the node goes on)
                   ◀─send / try_send (non-blocking; never waits for a slow peer)
                   ◀─HEARTBEAT── heartbeat_peers(now) (``Peers``: every peer it heard from)
    [ROUTER monitor] ─HANDSHAKE_FAILED_*─▶ counted (handshakes_failed), logged rate-limited

The node's thread creates, reads, writes and closes it (one socket, one thread).

Oversized input is refused with an ERROR: a frame over ``max_message_size``, or a
message whose frames add up to more than ``READ_LIMIT`` (2) times it (libzmq's
MAXMSGSIZE limits each frame, not the message, so many frames under it could pile up
without end).  Why not the maximum itself for the whole message: senders keep each
frame under it and a batch's payload under half of it (``P.batch_limit``), but do not
count the batch's header row frame, so a legitimate batch may total up to about 1.5
times the maximum.  The socket reads frames up to twice the maximum, so that a single
frame over it can be answered too; beyond that libzmq disconnects the peer (an ERROR
would mean reading it).  These checks protect the handlers, not memory: libzmq hands
over a multipart message only once it is whole, so a peer can make it buffer one huge
message of small frames before we see it.  What bounds that is who may connect at all
(CURVE keys, and loopback-only binds without them).
"""

from __future__ import annotations

import errno as _errno
import logging
import os
import time
from typing import Callable, Optional

import zmq

from zq import protocol as P
from zq._sockets import recv_now, router, send_now
from zq.errors import ProtocolError
from zq.security import REFUSAL_LOG_INTERVAL, Keys, peer_role

log = logging.getLogger("zq.node")

#: the socket's per-frame limit, in multiples of max_message_size (see the module doc)
READ_LIMIT = 2

Handler = Callable[[bytes, P.Message], None]


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
        self.heard_at = 0.0  # newest of last_seen (for the watchdog)

    def seen(self, ident: bytes, now: float) -> bool:
        """Record traffic from ``ident``; True if it is new (owed a heartbeat now)."""
        new = ident not in self.last_seen
        self.last_seen[ident] = self.heard_at = now
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


def refusal_cause(event: int, value: int) -> str:
    """Why a bound CURVE socket refused a handshake, in a phrase (its monitor does not
    say who the peer was: the ZAP handler logs a refused key with the peer's address)."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"a key its ZAP handler does not list (status {value})"
    if value == getattr(zmq, "PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC", -1):
        return "a client that does not have this server's public key (its hello does not decrypt)"
    if value == getattr(zmq, "PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH", -1):
        return "a client without CURVE keys"
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:  # the value is an errno
        return f"the connection failed during the handshake ({os.strerror(value)})"
    return f"protocol error {value:#x} (wrong keys?)"


class HandshakeMonitor:
    """Refused handshakes on a bound CURVE socket (its socket monitor): a key the ZAP
    handler does not list (``_AUTH``), a client with a wrong server key or without keys
    (``_PROTOCOL`` / ``_NO_DETAIL``).  Counted, and logged at most once per cause every
    ``REFUSAL_LOG_INTERVAL`` with the number since, naming the bound endpoint (a bound
    socket's monitor does not name the peer; the ZAP handler logs a refused key with the
    peer's address: ``Authenticator``, ``handshakes_refused``).

    libzmq's I/O thread writes the events with a blocking send: the reader is polled by
    the node's loop, its pipe has no high-water mark, and it is closed only after the
    monitor is off (``close``)."""

    EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
              | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)

    def __init__(self, sock: zmq.Socket, endpoint: str, counters: dict) -> None:
        self._watched = sock
        self.endpoint = endpoint
        self.counters = counters
        self.counters["handshakes_failed"] = 0
        # the reader's RCVHWM 0 makes the inproc pipe unbounded: a flood of failed handshakes
        # while the loop is busy costs memory, never a blocked I/O thread
        addr = f"inproc://zq-handshakes-{id(self):x}"
        sock.monitor(addr, self.EVENTS)
        self.socket = sock.context.socket(zmq.PAIR)
        self.socket.setsockopt(zmq.RCVHWM, 0)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(addr)
        self._logged: dict[str, list] = {}  # cause -> [failures since logged, when logged]
        self.closed = False

    def read(self, now: Optional[float] = None) -> int:
        """Take the pending events; the number of failed handshakes among them."""
        from zmq.utils.monitor import recv_monitor_message

        n = 0
        while True:
            try:
                ev = recv_monitor_message(self.socket, zmq.NOBLOCK)
            except (zmq.Again, ValueError):
                break
            if not ev["event"] & self.EVENTS:
                continue
            n += 1
            self.counters["handshakes_failed"] += 1
            self._log(refusal_cause(ev["event"], int(ev["value"])), time.monotonic() if now is None else now)
        return n

    def _log(self, cause: str, now: float) -> None:
        entry = self._logged.get(cause)
        if entry is not None and now - entry[1] < REFUSAL_LOG_INTERVAL:
            entry[0] += 1
            return
        more = f" ({entry[0]} more since the last report)" if entry is not None and entry[0] else ""
        log.warning("%s: refused a handshake: %s%s", self.endpoint, cause, more)
        self._logged[cause] = [0, now]

    def close(self) -> None:
        """Monitor off first, then its reader (never the reverse: see LinkMonitor.close)."""
        if self.closed:
            return
        self._watched.disable_monitor()
        self.socket.close(0)
        self.closed = True


class RouterEndpoint:
    """One bound ROUTER of a node: receive in time-budgeted drains, refuse bad input with an
    ERROR, send without blocking, heartbeat its ``Peers``, watch refused handshakes.

    ``name`` names it in logs and ``bad_message`` ("clients", "workers", "endpoint");
    ``on_bad(name, exc)`` counts and logs a refused message (``Node.bad_message``);
    ``peers`` with ``heartbeat``: every peer heard from is recorded, a new one heartbeated
    at once (it learns the node's instance), all of them from ``heartbeat_peers``;
    ``roles``: read the ZAP role of each message's sender into ``role`` (CURVE only);
    ``count_undeliverable``: count failed sends in ``counters["undeliverable"]``.
    """

    def __init__(self, ctx: zmq.Context, endpoint: str, *, name: str, max_message: int,
                 counters: dict, on_bad: Callable[[str, BaseException], None],
                 keys: Optional[Keys] = None, domain: str = "", peers: Optional[Peers] = None,
                 heartbeat: Optional[Callable[[], list]] = None, roles: bool = False,
                 count_undeliverable: bool = True) -> None:
        self.name = name
        self.max_message = max_message
        self.counters = counters
        self.on_bad = on_bad
        self.peers = peers
        self.heartbeat = heartbeat
        self.roles = roles and keys is not None
        self.count_undeliverable = count_undeliverable
        self.role = ""  # the ZAP role of the message being handled (``roles``)
        self.socket, self.endpoint = router(ctx, endpoint, READ_LIMIT * max_message, keys=keys, domain=domain)
        self.monitor: Optional[HandshakeMonitor] = None
        if keys is not None:  # without CURVE there is no handshake to refuse
            self.monitor = HandshakeMonitor(self.socket, self.endpoint, counters)
        # with roles, frames stay zmq.Frames: their metadata says who sent them
        self._small = 0 if self.roles else 4

    def register(self, poller: zmq.Poller) -> None:
        poller.register(self.socket, zmq.POLLIN)
        if self.monitor is not None:
            poller.register(self.monitor.socket, zmq.POLLIN)

    def handle(self, events: dict, handler: Handler, budget: float = 0.02) -> bool:
        """The owner's loop hands us its poll events; True if the socket was drained."""
        if self.monitor is not None and self.monitor.socket in events:
            self.monitor.read()
        if self.socket in events:
            self.drain(handler, budget)
            return True
        return False

    # -- receiving --------------------------------------------------------------------
    def drain(self, handler: Handler, budget: float = 0.02) -> int:
        """Handle what the socket has, for at most ``budget`` seconds (the loop must come
        round to heartbeats and dispatch however large a burst peers send); the number of
        messages taken.  A ``ProtocolError`` (from the endpoint's checks or the handler)
        is answered with ERROR and counted; any other exception is a bug: counted as
        ``internal_errors`` and logged.  The node carries on either way."""
        deadline = time.monotonic() + budget
        sock, small, limit, peers = self.socket, self._small, self.max_message, self.peers
        n = 0
        while True:
            # the clock after every message: one SUBMIT may carry 5,000 tasks (~50 ms), so
            # checking every 16th let one drain hold the loop for most of a second
            if n and time.monotonic() > deadline:
                return n
            frames = recv_now(sock, small)
            if frames is None:
                return n
            n += 1
            ident = bytes(frames[0])
            try:
                size = sum(map(len, frames)) - len(ident)
                if size > limit:  # (when not, no frame is either)
                    self._check_size(frames, size)
                if self.roles:
                    self.role = peer_role(frames[1]) if len(frames) > 1 else ""
                msg = P.unpack(frames[1:])
                if peers is not None and peers.seen(ident, time.monotonic()) and self.heartbeat is not None:
                    self.send(ident, self.heartbeat())  # a new peer learns our instance at once
                handler(ident, msg)
            except ProtocolError as exc:
                self.on_bad(self.name, exc)
                self.send(ident, P.protocol_error(exc))
            except Exception as exc:  # a bug must not kill the node; it is counted and logged
                self.counters["internal_errors"] += 1
                log.exception("error handling a message on %s: %s", self.name, exc)

    def _check_size(self, frames: list, size: int) -> None:
        limit = self.max_message
        big = max(map(len, frames[1:]))
        if big > limit:
            raise ProtocolError(f"a frame of {big} bytes is over the maximum message size of {limit} bytes")
        if size > READ_LIMIT * limit:
            raise ProtocolError(f"a message of {size} bytes in {len(frames) - 1} frames is over "
                                f"{READ_LIMIT} times the maximum message size of {limit} bytes")

    # -- sending ----------------------------------------------------------------------
    def send(self, ident: bytes, frames: list) -> bool:
        """Send now or not at all; True if sent."""
        return self.try_send(ident, frames) == 0

    def try_send(self, ident: bytes, frames: list) -> int:
        """0 if sent, else the errno: EHOSTUNREACH (peer gone) or EAGAIN (peer not reading)."""
        try:
            send_now(self.socket, [ident, *frames])
            return 0
        except zmq.ZMQError as exc:
            if self.count_undeliverable:
                self.counters["undeliverable"] += 1
            log.debug("%s: cannot send to %r: %s", self.name, ident, exc)
            return exc.errno or _errno.EAGAIN

    def heartbeat_peers(self, now: float) -> None:
        """A heartbeat to every peer owed one (and forget the long-silent ones)."""
        if self.peers is None or self.heartbeat is None:
            return
        for ident in self.peers.due(now):
            self.send(ident, self.heartbeat())

    def close(self) -> None:
        """Monitor first (off, then its reader), then the socket; safe twice."""
        if self.monitor is not None:
            self.monitor.close()
        self.socket.close(0)
