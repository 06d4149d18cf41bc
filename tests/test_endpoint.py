"""RouterEndpoint (nodes/endpoint.py) on real sockets, loopback, random ports: bad input
is answered with one ERROR and counted, the endpoint keeps serving, a drain keeps to its
time budget, refused CURVE handshakes are counted.  The test thread owns the endpoint,
as a node's loop does."""

from __future__ import annotations

import collections
import os
import time
from typing import Iterator, Optional

import msgpack
import pytest
import zmq

from zq.nodes.endpoint import Peers, RouterEndpoint
from zq import protocol as P
from zq.errors import ProtocolError
from zq.security import Authenticator, Keys, generate

MAX = 64 * 1024
TIMEOUT = 10.0


class Owner:
    """What a node gives its endpoint: counters, bad_message, a handler that records."""

    def __init__(self) -> None:
        self.counters: collections.Counter[str] = collections.Counter()
        self.handled: list[tuple[bytes, P.Message]] = []
        self.bad: list[tuple[str, str]] = []

    def on_bad(self, where: str, exc: BaseException) -> None:
        self.counters["bad_messages"] += 1
        self.bad.append((where, str(exc)))

    def handler(self, ident: bytes, msg: P.Message) -> None:
        self.handled.append((ident, msg))


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def make_endpoint(ctx: zmq.Context, owner: Owner, **kw) -> RouterEndpoint:
    return RouterEndpoint(ctx, "tcp://127.0.0.1:0", name="test", max_message=MAX,
                          counters=owner.counters, on_bad=owner.on_bad, **kw)


def peer(ctx: zmq.Context, ep: RouterEndpoint, ident: bytes = b"peer-1") -> zmq.Socket:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.ROUTING_ID, ident)
    s.connect(ep.endpoint)
    return s


def serve_until(ep: RouterEndpoint, owner: Owner, done, timeout: float = TIMEOUT) -> None:
    """Run the owner's loop (poll + handle) until ``done()``."""
    poller = zmq.Poller()
    ep.register(poller)
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        ep.handle(dict(poller.poll(100)), owner.handler)


def reply(sock: zmq.Socket, ep: RouterEndpoint, owner: Owner) -> P.Message:
    """Serve until ``sock`` has a message; that message."""
    serve_until(ep, owner, lambda: sock.poll(0))
    return P.unpack(sock.recv_multipart())


def assert_error(msg: P.Message, *words: str) -> None:
    assert msg.command == P.ERROR, msg
    assert msg.header["code"] == "protocol"
    text = msg.header["msg"]
    assert isinstance(text, str) and text and "\n" not in text, text
    for w in words:
        assert w in text, text


def still_serving(ctx: zmq.Context, ep: RouterEndpoint, owner: Owner, sock: zmq.Socket) -> None:
    """The same peer and a fresh one are handled after whatever came before."""
    fresh = peer(ctx, ep, b"peer-2")
    before = len(owner.handled)
    sock.send_multipart(P.pack(P.HEARTBEAT, {"id": "a"}))
    fresh.send_multipart(P.pack(P.HEARTBEAT, {"id": "b"}))
    serve_until(ep, owner, lambda: len(owner.handled) >= before + 2)
    assert {i for i, _ in owner.handled[before:]} == {b"peer-1", b"peer-2"}
    fresh.close(0)


@pytest.mark.parametrize("frames, words", [
    ([b"\xff\x00garbage"], ["frame"]),
    ([P.PROTOCOL, P.HEARTBEAT, b"\xc1not msgpack"], []),
    ([P.PROTOCOL, b"NOSUCHCMD", msgpack.packb({})], ["command"]),
    ([b"ZQ01", P.HEARTBEAT, msgpack.packb({})], ["version"]),
    ([b"ZQ99", P.HEARTBEAT, msgpack.packb({})], ["version"]),
], ids=["garbage", "bad header", "unknown command", "old version", "future version"])
def test_bad_frames_get_an_error_and_the_endpoint_keeps_serving(ctx, frames, words):
    owner = Owner()
    ep = make_endpoint(ctx, owner)
    sock = peer(ctx, ep)
    try:
        sock.send_multipart(frames)
        assert_error(reply(sock, ep, owner), *words)
        assert owner.counters["bad_messages"] == 1 and owner.bad[0][0] == "test"
        assert owner.handled == []  # the handler never sees it
        still_serving(ctx, ep, owner, sock)
        assert owner.counters["internal_errors"] == 0
    finally:
        sock.close(0)
        ep.close()


@pytest.mark.parametrize("shape", ["one frame", "many frames", "big header"])
def test_oversized_messages_get_an_error(ctx, shape):
    """A frame over max_message_size (up to the socket's read limit), or frames each under
    it adding up to more than twice it (libzmq's MAXMSGSIZE is per frame), are refused
    with an ERROR; the peer stays connected."""
    owner = Owner()
    ep = make_endpoint(ctx, owner)
    sock = peer(ctx, ep)
    try:
        if shape == "big header":
            frames = P.pack(P.SUBMIT, {"t": ["x" * (MAX + 1)], "f": []})
        else:
            payload = [b"x" * (MAX + 1)] if shape == "one frame" else [b"x" * (MAX // 3)] * 7
            frames = P.pack(P.SUBMIT, {"t": [], "f": []}, payload)
        sock.send_multipart(frames)
        assert_error(reply(sock, ep, owner), "maximum message size", str(MAX))
        assert owner.counters["bad_messages"] == 1 and owner.handled == []
        # a message just under the maximum is still taken, and a batch over it whose frames
        # are each under it and add up to less than twice it (its header row is not counted
        # by senders in their batch limit)
        sock.send_multipart(P.pack(P.HEARTBEAT, {}, [b"y" * (MAX - 1024)]))
        sock.send_multipart(P.pack(P.HEARTBEAT, {"rows": "h" * (MAX - 1024)}, [b"y" * (MAX // 2)]))
        serve_until(ep, owner, lambda: len(owner.handled) == 2)
        still_serving(ctx, ep, owner, sock)
        assert owner.counters["bad_messages"] == 1
    finally:
        sock.close(0)
        ep.close()


def test_handler_protocol_errors_and_bugs_are_counted_not_fatal(ctx):
    owner = Owner()
    ep = make_endpoint(ctx, owner)
    sock = peer(ctx, ep)

    def handler(ident: bytes, msg: P.Message) -> None:
        if msg.header.get("bad"):
            raise ProtocolError("you may not")
        if msg.header.get("bug"):
            raise RuntimeError("a bug")
        owner.handled.append((ident, msg))

    poller = zmq.Poller()
    ep.register(poller)
    try:
        sock.send_multipart(P.pack(P.HEARTBEAT, {"bad": 1}))
        sock.send_multipart(P.pack(P.HEARTBEAT, {"bug": 1}))
        sock.send_multipart(P.pack(P.HEARTBEAT, {}))
        deadline = time.monotonic() + TIMEOUT
        while not owner.handled:
            assert time.monotonic() < deadline
            ep.handle(dict(poller.poll(100)), handler)
        assert_error(P.unpack(sock.recv_multipart()), "you may not")
        assert owner.counters["bad_messages"] == 1 and owner.counters["internal_errors"] == 1
    finally:
        sock.close(0)
        ep.close()


def test_drain_keeps_to_its_time_budget_under_a_flood(ctx):
    owner = Owner()
    ep = make_endpoint(ctx, owner)
    sock = peer(ctx, ep)
    n = 2000
    try:
        for i in range(n):
            sock.send_multipart(P.pack(P.HEARTBEAT, {"i": i}))
        # messages arrive far faster (microseconds each) than this handler takes them
        assert ep.socket.poll(int(TIMEOUT * 1000))

        def slow(ident: bytes, msg: P.Message) -> None:  # ~1 ms of work per message
            end = time.monotonic() + 0.001
            while time.monotonic() < end:
                pass
            owner.handled.append((ident, msg))

        budget = 0.05
        start = time.monotonic()
        took = ep.drain(slow, budget)
        elapsed = time.monotonic() - start
        assert 0 < took < n, took  # stopped early: the loop gets its turn
        assert elapsed >= budget and ep.socket.poll(0), elapsed  # by the clock, not for want of work
        assert took == len(owner.handled)
        assert elapsed < budget + 0.5, elapsed  # (~1 ms over, far from the ~2 s of all of them)
        # later drains take the rest, in order
        deadline = time.monotonic() + 30
        while len(owner.handled) < n:
            assert time.monotonic() < deadline
            if ep.socket.poll(1000):
                ep.drain(slow, budget)
        assert [m.header["i"] for _, m in owner.handled] == list(range(n))
    finally:
        sock.close(0)
        ep.close()


def test_try_send_says_why_and_counts(ctx):
    owner = Owner()
    ep = make_endpoint(ctx, owner)
    try:
        assert ep.try_send(b"nobody", P.pack(P.HEARTBEAT, {})) == zmq.EHOSTUNREACH
        assert not ep.send(b"nobody", P.pack(P.HEARTBEAT, {}))
        assert owner.counters["undeliverable"] == 2
    finally:
        ep.close()


def test_new_peers_get_a_heartbeat_at_once_then_every_interval(ctx):
    owner = Owner()
    peers = Peers(interval=0.0, forget_after=60.0)
    ep = make_endpoint(ctx, owner, peers=peers, heartbeat=lambda: P.pack(P.HEARTBEAT, {"id": "node"}))
    sock = peer(ctx, ep)
    try:
        sock.send_multipart(P.pack(P.HELLO, {}))
        first = reply(sock, ep, owner)
        assert first.command == P.HEARTBEAT and first.header["id"] == "node"
        assert set(peers.last_seen) == {b"peer-1"} and owner.handled[0][1].command == P.HELLO
        ep.heartbeat_peers(time.monotonic())
        assert sock.poll(int(TIMEOUT * 1000))
        assert P.unpack(sock.recv_multipart()).command == P.HEARTBEAT
        sock.send_multipart([b"garbage"])  # a peer that says nothing valid is not recorded
        fresh = peer(ctx, ep, b"peer-3")
        fresh.send_multipart([b"garbage"])
        assert_error(reply(fresh, ep, owner))
        assert set(peers.last_seen) == {b"peer-1"}
        fresh.close(0)
    finally:
        sock.close(0)
        ep.close()


# ---------------------------------------------------------------------------- CURVE


@pytest.fixture
def keydir(tmp_path) -> str:
    d = str(tmp_path / "keys")
    generate(d)
    generate(d, name="mallory", role="client")
    os.remove(os.path.join(d, "clients", "mallory.key"))  # a key nobody listed
    return d


def curve_client(ctx: zmq.Context, ep: RouterEndpoint, keydir: str, name: str,
                 server_key: Optional[bytes] = None) -> zmq.Socket:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    Keys.load(keydir, name, ("sink",)).make_client(s, "sink")
    if server_key is not None:
        s.curve_serverkey = server_key
    s.connect(ep.endpoint)
    return s


@pytest.mark.parametrize("who", ["unlisted key", "wrong server key", "no key"])
def test_refused_handshakes_are_counted(ctx, keydir, who):
    owner = Owner()
    keys = Keys.load(keydir, "sink", ("ventilator",), ("clients", "workers"))
    auth = Authenticator(ctx, keys, {"sink": ("clients", "workers", "ventilator")})
    auth.start()
    ep = make_endpoint(ctx, owner, keys=keys, domain="sink", roles=True)
    assert owner.counters["handshakes_failed"] == 0
    bad = good = None
    try:
        if who == "unlisted key":
            bad = curve_client(ctx, ep, keydir, "mallory")
        elif who == "wrong server key":
            bad = curve_client(ctx, ep, keydir, "client", server_key=zmq.curve_keypair()[0])
        else:
            bad = peer(ctx, ep)
        bad.send_multipart(P.pack(P.HEARTBEAT, {"id": "bad"}))
        serve_until(ep, owner, lambda: owner.counters["handshakes_failed"] >= 1)
        assert owner.handled == []
        # a listed key still gets through, and its role is known
        good = curve_client(ctx, ep, keydir, "worker")
        good.send_multipart(P.pack(P.HEARTBEAT, {"id": "good"}))
        serve_until(ep, owner, lambda: len(owner.handled) == 1)
        assert ep.role == "worker" and owner.handled[0][1].header["id"] == "good"
    finally:
        for s in (bad, good):
            if s is not None:
                s.close(0)
        ep.close()
        auth.stop()
