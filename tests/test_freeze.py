"""A paused node must not freeze for good.

libzmq's I/O thread writes socket-monitor events to an inproc PAIR, with a blocking send:
if the reading end of a monitor is closed while the monitor is still on, the next event
(a disconnect, a handshake) blocks that thread for good, and with it every connection of
the context.  A link must therefore be closed monitor first (disable, close the reader),
socket last.  The unit tests check that order on every owner of a monitored socket; the
node tests pause real nodes (SIGSTOP) while a peer restarts, then check they serve again.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Iterator

import pytest
import zmq

import zq
from zq.nodes.common import Node, SinkLink, io_alive
from zq._sockets import LinkMonitor, dealer
from zq.config import load_config

from .lifecycle_tasks import wait_for


# -- the close order, on every owner of a monitored socket ---------------------------------
class _Record:
    """What happened to the monitored sockets of a test (by id of the pyzmq socket)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.readers: dict[int, int] = {}  # reader id -> watched socket id
        self.monitor_on: set[int] = set()  # watched sockets whose monitor is on
        self.closed: collections.Counter[str] = collections.Counter()
        self.violations: list[str] = []


REC = _Record()


class _RecordingSocket(zmq.Socket):
    """A zmq.Socket that records monitor set-up and tear-down, and flags a monitor reader
    closed while its socket's monitor is still on (the freeze)."""

    def get_monitor_socket(self, events: Any = None, addr: Any = None) -> zmq.Socket:
        reader = super().get_monitor_socket(events, addr)
        with REC.lock:
            REC.readers[id(reader)] = id(self)
            REC.monitor_on.add(id(self))
        return reader

    def disable_monitor(self) -> None:
        super().disable_monitor()  # only a successful call turns it off
        with REC.lock:
            REC.monitor_on.discard(id(self))

    def close(self, linger: Any = None) -> None:
        with REC.lock:
            watched = REC.readers.pop(id(self), None)
            if watched is not None:
                REC.closed["reader"] += 1
                if watched in REC.monitor_on:
                    REC.violations.append("a monitor reader was closed while its monitor was on")
            elif self.type == zmq.DEALER and not self.closed:
                REC.closed["dealer"] += 1
        super().close(linger)


@pytest.fixture
def recorded(monkeypatch: Any) -> Iterator[_Record]:
    global REC
    REC = _Record()
    monkeypatch.setattr(zmq.Context, "_socket_class", _RecordingSocket)
    yield REC


@pytest.fixture
def silent_peer() -> Iterator[str]:
    """A bound ROUTER that never answers: whoever connects reconnects again and again."""
    ctx = zmq.Context()
    r = ctx.socket(zmq.ROUTER)
    r.linger = 0
    port = r.bind_to_random_port("tcp://127.0.0.1")
    yield f"tcp://127.0.0.1:{port}"
    r.close(0)
    ctx.term()


def _fast(**kw: Any) -> Any:
    return load_config(None, {"heartbeat_interval": 0.05, **kw})


def test_link_monitor_will_not_close_after_its_socket() -> None:
    """Closing a monitor whose socket is gone cannot turn the monitor off: that is an
    error to report, never to swallow."""
    ctx = zmq.Context()
    try:
        s = dealer(ctx, "tcp://127.0.0.1:9")
        mon = LinkMonitor(s)
        s.close(0)
        with pytest.raises(zmq.ZMQError):
            mon.close()
        mon.socket.close(0)
    finally:
        ctx.destroy(0)


def test_close_link_turns_the_monitor_off_first(recorded: _Record, silent_peer: str) -> None:
    from zq._sockets import close_link

    ctx = zmq.Context()
    try:
        poller = zmq.Poller()
        s = dealer(ctx, silent_peer)
        mon = LinkMonitor(s)
        poller.register(s, zmq.POLLIN)
        poller.register(mon.socket, zmq.POLLIN)
        close_link(s, mon, poller)
        assert s.closed and mon.socket.closed and not poller.sockets
        assert recorded.closed["reader"] == 1 and not recorded.violations
    finally:
        ctx.destroy(0)


def test_sink_link_reconnects_and_closes_monitor_first(recorded: _Record, silent_peer: str) -> None:
    node = Node(_fast())
    node.ctx = zmq.Context()
    try:
        link = SinkLink(node, silent_peer, b"worker-x", zmq.Poller())
        for _ in range(3):
            link.reconnect()
        link.close()
        assert recorded.closed["reader"] == 4, recorded.closed
        assert not recorded.violations, recorded.violations
        assert not link.poller.sockets  # nothing left polled
    finally:
        node.ctx.destroy(0)


def test_worker_reconnects_and_closes_monitors_first(recorded: _Record, silent_peer: str) -> None:
    """A worker whose ventilator and sink are silent reconnects both (Paranoid Pirate)."""
    from zq.nodes.worker import Worker

    w = Worker(_fast(ventilator_workers=silent_peer, sink_endpoint=silent_peer, worker_executor="thread",
                     worker_concurrency=1), (), grace=0.0)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        # the first reconnects come after a timeout of 0.3 s, then 0.1, 0.2, ...
        wait_for(lambda: recorded.closed["reader"] >= 4, timeout=20, what="four reconnects")
    finally:
        w.stop()
        t.join(10)
    assert not t.is_alive()
    assert not recorded.violations, recorded.violations


def test_client_reconnects_and_closes_monitors_first(recorded: _Record, silent_peer: str) -> None:
    c = zq.Client(_fast(ventilator_clients=silent_peer, sink_endpoint=silent_peer))
    try:
        wait_for(lambda: recorded.closed["reader"] >= 4, timeout=20, what="four reconnects")
    finally:
        c.shutdown(wait=False)
    assert recorded.closed["reader"] >= 6  # and the last two at shutdown
    assert not recorded.violations, recorded.violations


# -- real nodes: paused (SIGSTOP) while a peer restarts, then serving again -----------------
ROUNDS = 3
DEADLINE = 15.0  # seconds a resumed node has to serve again


def echo(x: Any) -> Any:
    return x


def _vent_workers(cluster: Any) -> "list[dict] | None":
    """The ventilator's workers (its own ``stats``, asked on a fresh socket), None if it is away."""
    from zq.nodes.status import _ask
    from zq.errors import ZqError

    ctx = zmq.Context()
    try:
        return _ask(ctx, cluster.endpoints["clients"], "ventilator", 1.0)["workers"]
    except ZqError:
        return None
    finally:
        ctx.destroy(0)


def _status_answers(cluster: Any) -> dict:
    """``zq status``'s question to both nodes; raises if either does not answer."""
    from zq.nodes.status import fetch

    return fetch(load_config(None, {"ventilator_clients": cluster.endpoints["clients"],
                                    "sink_endpoint": cluster.endpoints["sink"]}), timeout=DEADLINE)


class _Log:
    """New lines a node logs that contain ``text`` (counted from now on)."""

    def __init__(self, node: Any, text: str) -> None:
        self.node, self.text = node, text
        self.before = self.count()

    def count(self) -> int:
        return sum(self.text in line for line in list(self.node.lines))

    def seen(self) -> bool:
        return self.count() > self.before


def _paused(node: Any) -> Any:
    class Paused:
        def __enter__(self) -> None:
            node.signal(19)  # SIGSTOP

        def __exit__(self, *exc: Any) -> None:
            node.signal(18)  # SIGCONT

    return Paused()


def test_worker_paused_while_the_sink_restarts_serves_again(make_cluster: Any, make_client: Any) -> None:
    cluster = make_cluster(workers=0, executor="thread")
    paused = cluster.add_worker(["--queue", "paused"], wait=True)
    client = make_client(cluster)
    for r in range(ROUNDS):
        assert client.submit_task(echo, (r,), queue="paused").result(timeout=DEADLINE) == r
        with _paused(paused):
            cluster.restart("sink")
            # paused past the liveness timeout: the ventilator gives up on it, and on waking
            # it finds the sink silent too and replaces that link
            wait_for(lambda: _vent_workers(cluster) == [], timeout=DEADLINE, what="the worker declared lost")
        assert client.submit_task(echo, ((r, "after"),), queue="paused").result(timeout=DEADLINE) == (r, "after")
        assert _status_answers(cluster)["ventilator"]["workers"]
    assert paused.alive()


def test_ventilator_paused_while_the_sink_restarts_serves_again(make_cluster: Any, make_client: Any) -> None:
    import concurrent.futures

    cluster = make_cluster(workers=1, executor="thread")
    client = make_client(cluster)
    vent = cluster.ventilator
    for r in range(ROUNDS):
        assert client.submit(echo, r).result(timeout=DEADLINE) == r
        silent = _Log(cluster.workers[0], "silent for")
        with _paused(vent):
            cluster.restart("sink")
            # paused past the liveness timeout (the worker noticed): on waking the
            # ventilator finds its sink silent and replaces that link
            wait_for(silent.seen, timeout=DEADLINE, what="the worker finds the ventilator silent")
        assert _status_answers(cluster)["ventilator"]["counters"]
        assert client.submit(echo, (r, "after")).result(timeout=DEADLINE) == (r, "after")
        # a result the ventilator decides itself goes over its own link to the sink
        fut = client.submit_task(echo, (r,), queue="nobody", retain_result=True)
        assert fut.cancel()
        with pytest.raises(concurrent.futures.CancelledError):
            client.future_for(fut.task_id).result(timeout=DEADLINE)
    assert vent.alive() and cluster.ventilator is vent


def test_worker_paused_while_the_ventilator_restarts_serves_again(make_cluster: Any, make_client: Any) -> None:
    cluster = make_cluster(workers=1, executor="thread")  # the bystander tells the time
    paused = cluster.add_worker(["--queue", "paused"], wait=True)
    client = make_client(cluster)
    for r in range(ROUNDS):
        assert client.submit_task(echo, (r,), queue="paused").result(timeout=DEADLINE) == r
        silent = _Log(cluster.workers[0], "silent for")
        with _paused(paused):
            assert cluster.ventilator is not None
            cluster.ventilator.kill()
            wait_for(silent.seen, timeout=DEADLINE, what="the bystander finds the ventilator silent")
            cluster.start_node("ventilator")
        assert client.submit_task(echo, ((r, "after"),), queue="paused").result(timeout=DEADLINE) == (r, "after")
        assert _status_answers(cluster)["ventilator"]["workers"]
    assert paused.alive()


# -- the watchdog: a node that hears from nobody checks its own networking ------------------
def _sink_in_thread(monkeypatch: Any) -> tuple[Any, threading.Thread, list]:
    from zq.nodes.common import Watchdog
    from zq.nodes.sink import Sink

    monkeypatch.setattr(Watchdog, "PROBE_TIMEOUT", 0.5)
    sink = Sink(_fast(sink_endpoint="tcp://127.0.0.1:0"), [])
    errors: list = []

    def run() -> None:
        try:
            sink.run()
        except Exception as exc:  # what a stuck node's run raises
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    wait_for(lambda: sink.endpoints, what="the sink bound")
    return sink, t, errors


def _heartbeat_once(endpoint: str) -> tuple[zmq.Context, zmq.Socket]:
    """A peer that says one heartbeat (so the sink expects more), then falls silent."""
    from zq import protocol as P

    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.connect(endpoint)
    s.send_multipart(P.pack(P.HEARTBEAT, {"id": "peer", "instance": "x"}))
    assert s.poll(5000)  # the sink's first heartbeat: it knows us
    return ctx, s


def test_watchdog_stops_a_node_whose_networking_is_stuck(monkeypatch: Any, caplog: Any) -> None:
    """libzmq's I/O thread blocked for good (a monitor's reader closed, then an event): the
    node hears from nobody, its self-test fails, it stops, saying why (exit 1 in the CLI)."""
    sink, t, errors = _sink_in_thread(monkeypatch)
    peer_ctx, peer = _heartbeat_once(sink.endpoints["endpoint"])
    # freeze the sink's context the way the reconnect paths used to
    other = zmq.Context()
    r = other.socket(zmq.ROUTER)
    r.linger = 0
    port = r.bind_to_random_port("tcp://127.0.0.1")
    assert sink.ctx is not None
    d = sink.ctx.socket(zmq.DEALER)
    d.linger = 0
    reader = d.get_monitor_socket(zmq.EVENT_ALL)
    d.connect(f"tcp://127.0.0.1:{port}")
    d.send(b"x")
    assert r.poll(5000)
    reader.close(0)  # the reading end goes while the monitor is on...
    r.close(0)  # ...and the next event (a disconnect, a reconnect attempt) blocks the I/O thread
    try:
        wait_for(lambda: not io_alive(sink.ctx, 0.2), what="the sink's I/O thread is stuck")
        t.join(20)
        assert not t.is_alive(), "the stuck sink kept running"
        assert errors and "stuck" in str(errors[0]), errors
        assert any(rec.levelname == "ERROR" and "stuck" in rec.getMessage() for rec in caplog.records)
        assert sink.counters["watchdog_stuck"] == 1
    finally:
        peer.close(0)
        peer_ctx.term()
        other.term()


def test_watchdog_leaves_a_healthy_node_alone(monkeypatch: Any, caplog: Any) -> None:
    """Peers away but networking fine: a warning, and the node carries on."""
    import logging

    caplog.set_level(logging.WARNING, logger="zq.node")
    sink, t, errors = _sink_in_thread(monkeypatch)
    peer_ctx, peer = _heartbeat_once(sink.endpoints["endpoint"])
    peer.close(0)
    try:
        wait_for(lambda: "its own networking works" in caplog.text, timeout=15, what="the watchdog's self-test")
        assert t.is_alive() and not errors and not sink.counters["watchdog_stuck"]
    finally:
        sink.stop()
        t.join(10)
        peer_ctx.term()
    assert not t.is_alive() and not errors
