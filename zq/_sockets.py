"""Socket construction shared by the client and the nodes (options in one place)."""

from __future__ import annotations

import ipaddress
import logging
import socket as _socket
from typing import TYPE_CHECKING, Any, Optional, Sequence

import zmq

from .errors import BindError, InsecureBindError

if TYPE_CHECKING:  # pragma: no cover
    from .security import Keys

log = logging.getLogger("zq.net")

HWM = 100_000

# -- the hot path: pyzmq's Cython socket methods with int flags ---------------------------
# pyzmq's recv_multipart/send_multipart add a Python layer (enum flags, a getsockopt per
# frame) that costs a few microseconds per message on every hop; these do the same.
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_recv = zmq.backend.Socket.recv
_send = zmq.backend.Socket.send
_COPY_BELOW = 65536  # bytes: smaller frames are copied (cheaper than tracking a zero-copy one)


def recv_now(sock: zmq.Socket, small: int = 0) -> Optional[list]:
    """The next whole message on ``sock`` if one is waiting, else ``None``.

    The first ``small`` frames (routing id, protocol, command, header) come as ``bytes``,
    the rest as ``zmq.Frame`` (zero-copy: payloads may be large).  ``small=0``: every
    frame a ``zmq.Frame`` (their metadata, e.g. the CURVE User-Id, is readable).  Frames
    say themselves whether more follow: no getsockopt(RCVMORE) per frame."""
    try:
        f = _recv(sock, _NOBLOCK, False)
    except zmq.Again:
        return None
    parts = [f.bytes if small > 0 else f]
    i = 1
    while f.more:
        f = _recv(sock, _NOBLOCK, False)
        parts.append(f.bytes if i < small else f)
        i += 1
    return parts


def send_now(sock: zmq.Socket, frames: Sequence[Any]) -> None:
    """``sock.send_multipart(frames, NOBLOCK, copy=False)``; raises ``zmq.Again`` when the
    peer cannot take it (high-water mark, no connection) and then sends nothing."""
    last = len(frames) - 1
    for i, f in enumerate(frames):
        _send(sock, f, _NOBLOCK | _SNDMORE if i < last else _NOBLOCK,
              type(f) is bytes and len(f) < _COPY_BELOW)


def normalize_bind(endpoint: str) -> str:
    """``tcp://host:0`` means a random port, as ``tcp://host:*`` does in libzmq."""
    if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
        return endpoint[:-2] + ":*"
    return endpoint


def is_loopback(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on a loopback address or localhost."""
    if not endpoint.startswith("tcp://"):
        return True
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(a[4][0]).is_loopback for a in _socket.getaddrinfo(host, None))
        except OSError:
            return False


def check_bind_allowed(endpoint: str, secured: bool, insecure: bool) -> None:
    """Refuse a non-loopback bind without keys unless ``insecure`` says so explicitly."""
    if secured or is_loopback(endpoint):
        return
    if not insecure:
        raise InsecureBindError(
            f"refusing to bind {endpoint} without keys: anyone who reaches it can run code on "
            f"the workers; use --keys DIR, or --insecure to do it anyway")
    log.warning("binding %s WITHOUT authentication or encryption (--insecure)", endpoint)


def router(ctx: zmq.Context, endpoint: str, max_message: int, mandatory: bool = True,
           keys: Optional["Keys"] = None, domain: str = "") -> tuple[zmq.Socket, str]:
    """A bound ROUTER: mandatory routing (no silent drops), handover of identities;
    a CURVE server in ZAP ``domain`` when ``keys`` are given."""
    s = ctx.socket(zmq.ROUTER)
    if keys is not None:
        keys.make_server(s, domain)
    s.setsockopt(zmq.LINGER, 0)
    if mandatory:
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)
    s.setsockopt(zmq.ROUTER_HANDOVER, 1)
    s.setsockopt(zmq.MAXMSGSIZE, max_message)
    s.setsockopt(zmq.SNDHWM, HWM)
    s.setsockopt(zmq.RCVHWM, HWM)
    try:
        s.bind(normalize_bind(endpoint))
    except zmq.ZMQError as exc:
        s.close(0)
        raise BindError(f"cannot bind {endpoint}: {exc.strerror}") from None
    return s, s.getsockopt(zmq.LAST_ENDPOINT).decode()


def dealer(ctx: zmq.Context, endpoint: str, identity: Optional[bytes] = None,
           max_message: Optional[int] = None, keys: Optional["Keys"] = None, server: str = "",
           connect: bool = True) -> zmq.Socket:
    """A connected DEALER; a CURVE client of ``server`` when ``keys`` are given.
    ``connect=False``: not connected yet (attach a ``LinkMonitor`` first, then connect, so
    that the monitor sees the first handshake: a refused one may not be retried)."""
    s = ctx.socket(zmq.DEALER)
    if keys is not None:
        keys.make_client(s, server)
    s.setsockopt(zmq.LINGER, 0)
    if identity is not None:
        s.setsockopt(zmq.ROUTING_ID, identity)
    if max_message:
        s.setsockopt(zmq.MAXMSGSIZE, max_message)
    s.setsockopt(zmq.SNDHWM, HWM)
    s.setsockopt(zmq.RCVHWM, HWM)
    s.setsockopt(zmq.RECONNECT_IVL, 100)
    s.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
    if connect:
        s.connect(endpoint)
    return s


#: the handshake failures a connecting socket's monitor reports
_REFUSALS = (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
             zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def describe_refusal(event: int, value: int) -> str:
    """What a failed handshake (a socket monitor event) says about the keys, in a phrase."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"the server refused this client's key (ZAP status {value}): is it listed there?"
    if value == getattr(zmq, "PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH", -1):
        return "one side uses CURVE keys and the other does not"
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        return "the server could not read our hello: wrong server public key?"
    return f"protocol error {value:#x} (wrong keys?)"


class LinkMonitor:
    """Tells its owner when a connected socket's connection dropped and came back, and
    when its handshake was refused.

    libzmq drops whatever was queued on a connection that breaks (a peer restarted, a
    message over the peer's size limit, a network cut) and reconnects silently; an owner
    that must not lose messages resends its unacknowledged state when ``reconnected()``
    says so.  A CURVE server that refuses our key (or a key mismatch) shows as a failed
    handshake: ``refused`` then says why, until a handshake succeeds.

    Uses the socket monitor: an inproc PAIR that libzmq's I/O thread writes to and the
    owning thread reads.  The I/O thread's writes block, so the reading end must never be
    closed while the monitor is on: close the link with ``close_link`` (monitor off, then
    the reader, then the socket), never the socket first.
    """

    EVENTS = zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
    REFUSED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
               | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)

    def __init__(self, sock: zmq.Socket, endpoint: Optional[str] = None) -> None:
        self.socket = sock.get_monitor_socket(self.EVENTS | self.REFUSED)
        self._watched = sock
        self.endpoint = endpoint or sock.getsockopt(zmq.LAST_ENDPOINT).decode(errors="replace")
        self._dropped = False
        #: why the last handshake failed (see ``describe_refusal``); None once one succeeds
        self.refused: Optional[str] = None
        self.closed = False

    def reconnected(self) -> bool:
        """Read pending events; True if a connection was re-established after a drop."""
        from zmq.utils.monitor import recv_monitor_message

        back = False
        while self.socket.poll(0):
            try:
                msg = recv_monitor_message(self.socket, zmq.NOBLOCK)
            except (zmq.Again, ValueError):
                break
            event = msg["event"]
            if event == zmq.EVENT_DISCONNECTED:
                self._dropped = True
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.refused = None
                if self._dropped:
                    self._dropped = False
                    back = True
            elif event in _REFUSALS:
                why = describe_refusal(event, int(msg["value"]))
                if why != self.refused:  # once per cause and socket (libzmq may retry often)
                    log.warning("handshake with %s refused (keys?): %s", self.endpoint, why)
                self.refused = why
        return back

    def close(self) -> None:
        """Turn the monitor off, then close its reading end.  The watched socket must still
        be open: libzmq would otherwise keep writing events (from its I/O thread, blocking)
        to a reader that is gone, and the whole context would stop moving messages."""
        if self.closed:
            return
        self._watched.disable_monitor()  # raises (ENOTSOCK) if the socket was closed first
        self.socket.close(0)
        self.closed = True


def close_link(sock: zmq.Socket, monitor: Optional[LinkMonitor], poller: Optional[zmq.Poller] = None,
               linger: int = 0) -> None:
    """Close a monitored connected socket in the only safe order: out of ``poller``, the
    monitor off and its reader closed, then the socket (with ``linger`` ms)."""
    if poller is not None:
        for s in (sock, monitor.socket if monitor is not None else None):
            if s is not None:
                try:
                    poller.unregister(s)
                except KeyError:
                    pass
    if monitor is not None:
        monitor.close()
    sock.close(linger)
