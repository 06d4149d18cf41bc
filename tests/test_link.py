"""``zq.link.Link`` on real sockets: heartbeat, liveness, capped backoff, the ordered
outbox resent after the peer restarts, acknowledgements, ``on_reconnect``, and the
monitor closed before its socket.  A bound ROUTER in the test plays the peer."""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator, Optional

import pytest
import zmq

import zq
from zq import protocol as P
from zq.link import CONNECTED, REPLACED, RESTARTED, Link

from .lifecycle_tasks import wait_for

INTERVAL = 0.05
TIMEOUT = 0.3


class Peer:
    """A ROUTER on a fixed loopback port that can stop and start again (a restart)."""

    def __init__(self, ctx: zmq.Context) -> None:
        self.ctx = ctx
        self.sock: Optional[zmq.Socket] = None
        self.start()
        assert self.sock is not None
        self.endpoint = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode()

    def start(self, endpoint: str = "tcp://127.0.0.1:0") -> None:
        s = self.ctx.socket(zmq.ROUTER)
        s.linger = 0
        s.setsockopt(zmq.ROUTER_HANDOVER, 1)
        where = endpoint[:-2] + ":*" if endpoint.endswith(":0") else endpoint

        def bound() -> bool:  # the old listener is closed by libzmq's I/O thread, soon
            try:
                s.bind(where)
                return True
            except zmq.ZMQError:
                return False

        wait_for(bound, what=f"{where} bound again")
        self.sock = s

    def stop(self) -> None:
        assert self.sock is not None
        self.sock.close(0)
        self.sock = None

    def restart(self) -> None:
        self.stop()
        self.start(self.endpoint)

    def recv(self, timeout: float = 5.0) -> tuple[bytes, P.Message]:
        assert self.sock is not None
        assert self.sock.poll(int(timeout * 1000)), "the peer heard nothing"
        ident, *frames = self.sock.recv_multipart()
        return ident, P.unpack(frames)

    def recv_until(self, command: bytes, timeout: float = 5.0) -> tuple[bytes, P.Message]:
        deadline = time.monotonic() + timeout
        while True:
            ident, msg = self.recv(max(0.01, deadline - time.monotonic()))
            if msg.command == command:
                return ident, msg

    def send(self, ident: bytes, command: bytes, header: dict) -> None:
        assert self.sock is not None
        self.sock.send_multipart([ident, *P.pack(command, header)])


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.destroy(0)


def _link(ctx: zmq.Context, endpoint: str, poller: zmq.Poller, **kw: Any) -> Link:
    return Link(ctx, endpoint, identity=b"me", server="peer", poller=poller,
                heartbeat={"id": "me", "instance": "i-me"}, interval=INTERVAL, timeout=TIMEOUT, **kw)


class Owner:
    """Runs a link's loop turns in the test thread: poll, handle, tick."""

    def __init__(self, link: Link, poller: zmq.Poller) -> None:
        self.link, self.poller = link, poller
        self.reconnects: list[str] = []
        self.messages: list[P.Message] = []
        self.acked: list[Any] = []
        link.on_reconnect = self.reconnects.append
        link.on_message = self.messages.append
        link.on_acked = self.acked.extend

    def turn(self) -> None:
        events = dict(self.poller.poll(10))
        self.link.handle(events)
        self.link.tick(time.monotonic())

    def until(self, cond: Any, timeout: float = 10.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            self.turn()


def test_heartbeat_when_idle_and_the_peer_instance_is_learned(ctx: zmq.Context) -> None:
    peer = Peer(ctx)
    poller = zmq.Poller()
    link = _link(ctx, peer.endpoint, poller)
    o = Owner(link, poller)
    link.open()
    assert o.reconnects == [CONNECTED]
    try:
        got: list[P.Message] = []

        def heard() -> bool:
            if peer.sock is not None and peer.sock.poll(0):
                got.append(P.unpack(peer.sock.recv_multipart()[1:]))
            return len(got) >= 3

        o.until(heard, what="three heartbeats")
        assert all(m.command == P.HEARTBEAT and m.header["id"] == "me" for m in got)
        peer.send(b"me", P.HEARTBEAT, {"instance": "a"})
        o.until(lambda: link.peer_instance == "a", what="the peer's instance")
        assert link.heard and o.messages[-1].command == P.HEARTBEAT
        peer.send(b"me", P.HEARTBEAT, {"instance": "b"})  # a new run of the peer
        o.until(lambda: RESTARTED in o.reconnects, what="the restart noticed")
        assert link.replaced == 0  # the same socket: a restart is not a silence
    finally:
        link.close()
        peer.stop()


def test_silent_peer_gets_fresh_sockets_with_capped_backoff(ctx: zmq.Context, monkeypatch: Any) -> None:
    monkeypatch.setattr(Link, "BACKOFF_MAX", 4 * INTERVAL)
    peer = Peer(ctx)  # never answers
    poller = zmq.Poller()
    link = _link(ctx, peer.endpoint, poller)
    o = Owner(link, poller)
    link.open()
    try:
        start = link.last_recv
        o.until(lambda: link.replaced >= 6, what="six fresh sockets")
        assert o.reconnects[0] == CONNECTED and set(o.reconnects[1:]) == {REPLACED}
        assert link.backoff == 4 * INTERVAL  # doubled, then capped
        assert link.last_recv == start  # a new socket does not make the peer alive
        assert len(poller.sockets) == 2  # the socket and its monitor, the old ones gone

        def answered() -> bool:  # it answers (again, while the link may be replacing its socket)
            peer.send(b"me", P.HEARTBEAT, {"instance": "a"})
            return link.last_recv > start

        o.until(answered, what="the answer")
        o.turn()
        assert link.backoff == INTERVAL and not link.warned
    finally:
        link.close()
        peer.stop()


def test_outbox_resent_in_order_after_the_peer_restarts_until_acknowledged(ctx: zmq.Context) -> None:
    peer = Peer(ctx)
    poller = zmq.Poller()
    link = _link(ctx, peer.endpoint, poller)
    o = Owner(link, poller)
    link.on_reconnect = lambda why: (o.reconnects.append(why), link.send(P.pack(P.HELLO, {"why": why})))
    link.open()
    try:
        ident, hello = peer.recv_until(P.HELLO)
        assert hello.header["why"] == CONNECTED
        peer.send(ident, P.HEARTBEAT, {"instance": "run-1"})
        o.until(lambda: link.peer_instance == "run-1", what="the first run's heartbeat")
        for i in range(5):
            link.put(i, P.pack(P.REQUEST, {"req": i}))
        seen = [peer.recv_until(P.REQUEST)[1].header["req"] for _ in range(5)]
        assert seen == [0, 1, 2, 3, 4]
        assert link.ack([1, 3, 99]) == [1, 3] and o.acked == [1, 3]
        peer.restart()  # everything it had is gone
        peer.send(ident, P.HEARTBEAT, {"instance": "run-2"})  # may be lost while it reconnects

        def resent() -> bool:
            o.turn()
            return peer.sock is not None and peer.sock.poll(0)

        o.until(resent, what="the restarted peer to hear from the link")
        first: list[P.Message] = []
        while len([m for m in first if m.command == P.REQUEST]) < 3:
            first.append(peer.recv()[1])
            o.turn()
        kinds = [m.command for m in first if m.command != P.HEARTBEAT]
        assert kinds[0] == P.HELLO  # the owner's hook first, then the outbox, in order
        assert [m.header["req"] for m in first if m.command == P.REQUEST] == [0, 2, 4]
        assert o.reconnects[0] == CONNECTED and len(o.reconnects) >= 2
    finally:
        link.close()
        peer.stop()


def test_queued_messages_wait_in_order_while_the_peer_cannot_take_them(ctx: zmq.Context,
                                                                       monkeypatch: Any) -> None:
    import zq.link as L

    full = [True]
    sent: list[list] = []

    def send_now(sock: Any, frames: list) -> None:
        if full[0]:
            raise zmq.Again()
        sent.append(frames)

    monkeypatch.setattr(L, "send_now", send_now)
    peer = Peer(ctx)
    poller = zmq.Poller()
    link = _link(ctx, peer.endpoint, poller).open()
    try:
        link.queue([b"a"], about=["t1"])
        link.put("k", [b"b"])
        link.queue([b"c"])
        assert not link.send([b"now"])  # now or never
        assert link.waiting == 3 and list(link.unsent()) == [["t1"], ()]
        full[0] = False
        assert link.flush()
        assert sent == [[b"a"], [b"b"], [b"c"]] and link.waiting == 0 and "k" in link.unacked
    finally:
        link.close()
        peer.stop()


def test_close_turns_the_monitor_off_before_the_socket(ctx: zmq.Context, monkeypatch: Any) -> None:
    order: list[str] = []
    peer = Peer(ctx)
    poller = zmq.Poller()
    link = _link(ctx, peer.endpoint, poller).open()
    assert link.socket is not None and link.monitor is not None
    sock_cls = type(link.socket)
    real_disable, real_close = sock_cls.disable_monitor, sock_cls.close

    def disable(self: Any) -> None:
        order.append("monitor off")
        real_disable(self)

    def close(self: Any, linger: Any = None) -> None:
        order.append("reader" if self is mon_reader else "socket" if self is sock else "other")
        real_close(self, linger)

    sock, mon_reader = link.socket, link.monitor.socket
    monkeypatch.setattr(sock_cls, "disable_monitor", disable)
    monkeypatch.setattr(sock_cls, "close", close)
    link.reconnect()  # the old socket goes first, monitor first
    assert order == ["monitor off", "reader", "socket"], order
    monkeypatch.undo()
    link.close()
    assert not poller.sockets
    peer.stop()


# -- a client's request survives a ventilator restart ------------------------------------
def test_a_request_sent_while_the_ventilator_restarts_is_answered(make_cluster: Any, make_client: Any) -> None:
    """The request reaches a ventilator that is paused and then killed: it was never
    answered, so the client sends it again to the ventilator that replaces it."""
    cluster = make_cluster(workers=0)
    client = make_client(cluster)
    assert client.count_tasks() == 0
    box: dict[str, Any] = {}
    vent = cluster.ventilator
    vent.signal(19)  # SIGSTOP: the request is delivered to its socket and never read
    try:
        t = threading.Thread(target=lambda: box.update(n=client._request("ventilator", "count", {}, timeout=60)),
                             daemon=True)
        t.start()
        wait_for(lambda: client._io.vent.unacked, what="the request sent")
    finally:
        vent.kill()
    cluster.start_node("ventilator")
    t.join(60)
    assert box.get("n") == 0, box
    assert not client._io.vent.unacked  # answered: gone from the outbox


def test_client_uses_two_links_and_an_admin_part(make_cluster: Any, make_client: Any) -> None:
    cluster = make_cluster(workers=0)
    client = make_client(cluster)
    assert isinstance(client._io.vent, Link) and isinstance(client._io.sink, Link)
    assert not isinstance(client, zq._clientio.ClientIO)
    assert client.list_tasks() == [] and client.list_tasks.__doc__
