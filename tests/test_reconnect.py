"""A worker that registers again on a fresh connection loses nothing, and leaves nothing
stuck: whatever the old connection carried may be gone (libzmq drops a closed socket's
queue).  READY says which tasks finished there (DONEs not yet sent); a ventilator that
knew the worker answers SYNC, and the worker's HELD lists what it holds: everything the
ventilator sent before the SYNC has arrived by then, so what is not held was lost and is
queued again, while tasks sent after the SYNC are left alone.

A raw DEALER plays the worker here so the test decides exactly what was "lost".
"""

from __future__ import annotations

import zmq

import zq
from zq import protocol as P

from .test_delivery import wait_for


def square(x):
    return x * x


class FakeWorker:
    def __init__(self, endpoint: str, ident: bytes = b"fake-worker") -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, ident)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.extra: list[P.TaskSpec] = []

    def ready(self, credit: int, **extra) -> None:
        header = {"id": "fake", "queues": ["default"], "credit": credit, "host": "fakehost", "pid": 1,
                  "executor": "thread", "concurrency": 1, "tasks": {}, **extra}
        self.sock.send_multipart(P.pack(P.READY, header))

    def take(self, n: int, timeout: float = 20.0) -> list[P.TaskSpec]:
        got: list[P.TaskSpec] = []
        while len(got) < n:
            assert self.sock.poll(int(timeout * 1000)), f"only {len(got)} of {n} tasks arrived"
            msg = P.unpack(self.sock.recv_multipart(copy=False))
            if msg.command == P.TASKS:
                got.extend(P.unpack_tasks(msg)[0])
        return got

    def wait_for(self, command: bytes, timeout: float = 20.0) -> P.Message:
        """The next message with this command (TASKS in between are kept in self.extra)."""
        while True:
            assert self.sock.poll(int(timeout * 1000)), f"no {command.decode()} from the ventilator"
            msg = P.unpack(self.sock.recv_multipart())
            if msg.command == command:
                return msg
            if msg.command == P.TASKS:
                self.extra.extend(P.unpack_tasks(msg)[0])

    def held(self, upto: int, held: list, done: tuple = ((), ())) -> None:
        self.sock.send_multipart(P.pack(P.HELD, {"upto": upto, "held": held, "done": list(done[0]),
                                                 "states": list(done[1])}))

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def test_reregistering_worker_reports_unsent_dones_and_lost_tasks_run_again(make_cluster, make_client):
    cluster = make_cluster(workers=0)
    client = make_client(cluster)
    fake = FakeWorker(cluster.endpoints["workers"])
    try:
        fake.ready(credit=3)
        futs = [client.submit(square, i) for i in range(3)]
        specs = fake.take(3)
        ids = {s.task_id for s in specs}
        assert ids == {f.task_id for f in futs}
        first, second, third = (f.task_id for f in futs)
        fake.sock.send_multipart(P.pack(P.STARTED, {"ids": [first, second, third]}))
        wait_for(lambda: all(client.get_status(t) is zq.TaskState.RUNNING for t in ids), what="running")
        # "reconnected": the first one finished here (its DONE never went out), the second
        # still runs here, the third went down with the old connection
        fake.ready(credit=0, done=[first], states=["SUCCESS"])
        sync = fake.wait_for(P.SYNC)
        wait_for(lambda: client.get_status(first) is zq.TaskState.SUCCESS, what="first recorded as done")
        assert client.get_status(third) is zq.TaskState.RUNNING  # nothing moves before HELD
        fake.held(sync.header["upto"], [second])
        wait_for(lambda: client.get_status(third) is zq.TaskState.QUEUED, what="third queued again")
        assert client.get_status(second) is zq.TaskState.RUNNING  # still the fake worker's
        cluster.add_worker(wait=True)
        assert futs[2].result(timeout=30) == 4  # the lost one ran on the real worker
        fake.sock.send_multipart(P.pack(P.DONE, {"ids": [second], "states": ["SUCCESS"], "credit": 0}))
        wait_for(lambda: client.get_status(second) is zq.TaskState.SUCCESS, what="second reported done")
        assert client.stats()["ventilator"]["counters"]["requeued_on_reconnect"] == 1
    finally:
        fake.close()


def test_held_answers_only_for_tasks_sent_before_its_sync(make_cluster, make_client):
    """Tasks dispatched after the SYNC (the READY that asked for it granted credit) are on
    their way when HELD comes back: they are not taken for lost."""
    cluster = make_cluster(workers=0)
    client = make_client(cluster)
    fake = FakeWorker(cluster.endpoints["workers"])
    try:
        fake.ready(credit=2)
        futs = [client.submit(square, i) for i in (3, 4)]
        fake.take(2)

        def requeued():
            return client.stats()["ventilator"]["counters"].get("requeued_on_reconnect", 0)

        fake.ready(credit=1)  # registers again, with room for one more
        sync = fake.wait_for(P.SYNC)
        futs.append(client.submit(square, 5))  # dispatched after the SYNC
        fake.take(1)
        fake.held(sync.header["upto"], [])  # the first two were lost with the "old link"
        wait_for(lambda: requeued() == 2, what="the two lost tasks queued again")
        # the third is still the fake's: its STARTED counts (it would not, had it been re-queued)
        fake.sock.send_multipart(P.pack(P.STARTED, {"ids": [futs[2].task_id]}))
        wait_for(lambda: client.get_status(futs[2].task_id) is zq.TaskState.RUNNING, what="third running")
        assert requeued() == 2
        fake.ready(credit=0)  # now it loses the third one too
        fake.held(fake.wait_for(P.SYNC).header["upto"], [])
        wait_for(lambda: requeued() == 3, what="the third queued again")
        cluster.add_worker(wait=True)
        assert [f.result(timeout=30) for f in futs] == [9, 16, 25]
    finally:
        fake.close()


def test_reregistering_worker_with_a_bad_done_list_is_refused_and_the_ventilator_serves_on(
        make_cluster, make_client):
    cluster = make_cluster(workers=1)
    client = make_client(cluster)
    fake = FakeWorker(cluster.endpoints["workers"])
    try:
        fake.ready(credit=0)
        bad = [P.pack(P.READY, {"id": "fake", "queues": ["default"], "credit": 0, "done": ["x"],
                                "states": ["NOT-A-STATE"]}),
               P.pack(P.HELD, {"upto": "7", "held": []}),
               P.pack(P.HELD, {"upto": 7, "held": [[1]]}),
               P.pack(P.HELD, {"upto": 7, "held": [], "done": ["a", "b"], "states": ["SUCCESS"]})]
        for frames in bad:
            fake.sock.send_multipart(frames)
            fake.wait_for(P.ERROR)  # refused, with a reason, and nothing else changed
        assert client.submit(square, 7).result(timeout=30) == 49
        assert cluster.ventilator.alive()
    finally:
        fake.close()


class FlakySocket:
    """Stands in for the worker's DEALER: EAGAIN while ``full``, else records each message."""

    def __init__(self) -> None:
        self.full = True
        self.sent: list[P.Message] = []

    def send_multipart(self, frames, flags=0, copy=True):
        if self.full:
            raise zmq.Again()
        self.sent.append(P.unpack([bytes(f) for f in frames]))


def _worker_on_a_flaky_link(monkeypatch):
    """A Worker whose ventilator Link sends into a FlakySocket (no loop, no sockets)."""
    from types import SimpleNamespace

    from zq.nodes.worker import Worker
    from zq.link import Link

    monkeypatch.setattr("zq.link.send_now", lambda sock, frames: sock.send_multipart(frames))
    w = Worker(zq.load_config(None, {}), worker_id="w")
    w.vent = Link(None, "tcp://127.0.0.1:9", identity=b"w", server="ventilator", poller=None,
                  heartbeat={"id": "w"}, interval=0.5, timeout=3.0)
    w._wire_ventilator(w.vent)
    w.vent.socket = FlakySocket()
    w.aio = SimpleNamespace(running=0)
    w.executor = SimpleNamespace(kind="thread", free=lambda: w.slots)  # no task in a slot
    return w, w.vent.socket


def test_worker_keeps_what_it_could_not_send_and_sends_it_in_order(monkeypatch):
    w, sock = _worker_on_a_flaky_link(monkeypatch)
    w.accepting = False  # no credit to grant: only what we queue below is sent
    spec = P.TaskSpec("t-retry", "f", "default", b"d" * 16, "", None, 1, None, 0.0, args=b"")
    w._retry(spec, delay=0.5)
    w.done.ids, w.done.states = ["t-done"], ["SUCCESS"]
    w._report()  # link full: nothing goes, nothing is dropped
    assert sock.sent == [] and w.vent.waiting == 1 and w.done.ids == ["t-done"]
    assert "t-retry" in w._held()  # not sent yet: still ours
    w._continue(spec, ["g", b"e" * 16, b"", b"", "default", []])
    sock.full = False
    w._report()
    sent = [m for m in sock.sent if m.command != P.STARTED]  # STARTED {busy}: status only
    assert [m.command for m in sent] == [P.RETRY, P.CONTINUE, P.DONE]
    assert sent[2].header["ids"] == ["t-done"]
    assert not w.vent.waiting and not w.done.ids


def test_worker_ready_says_what_it_finished_and_held_says_what_it_holds(monkeypatch):
    w, sock = _worker_on_a_flaky_link(monkeypatch)
    spec = P.TaskSpec("t-retry", "f", "default", b"d" * 16, "", None, 1, None, 0.0, args=b"")
    w._retry(spec, delay=0.5)  # stays queued: the link is full
    w._send_ready()
    assert w.ready_pending  # could not go: sent again by the next turn's _report
    w.running["t-run"] = (spec, None, 0.0)  # (spec, deadline, started)
    w.done.ids, w.done.states = ["t-done"], ["FAILED"]
    sock.full = False
    w._report()
    ready = sock.sent[0]
    assert ready.command == P.READY and not w.ready_pending
    assert (ready.header["done"], ready.header["states"]) == (["t-done"], ["FAILED"])
    assert not w.done.ids  # reported by READY, not again by DONE
    sock.sent.clear()
    w.done.ids, w.done.states = ["t-late"], ["SUCCESS"]
    w._on_ventilator(P.unpack(P.pack(P.SYNC, {"upto": 7})))
    held = sock.sent[-1]
    assert held.command == P.HELD and held.header["upto"] == 7
    assert sorted(held.header["held"]) == ["t-run"] and held.header["done"] == ["t-late"]
    # a follow-up task is kept (and sent again after each READY) until the ventilator confirms it
    child = P.TaskSpec("t-child", "f", "default", b"d" * 16, "", None, 0, None, 0.0, args=b"")
    w._on_event(("spawn", child.row(), b"fn", b""))
    req = sock.sent[-1].header["req"]
    sock.sent.clear()
    w._on_ventilator(P.unpack(P.pack(P.UNKNOWN, {})))  # a ventilator that forgot us
    assert [m.command for m in sock.sent] == [P.READY, P.SPAWN]
    w._on_ventilator(P.unpack(P.pack(P.REPLY, {"req": req, "ok": True})))
    sock.sent.clear()
    w.vent.resync("reconnected")
    assert [m.command for m in sock.sent] == [P.READY] and not w.vent.unacked and w.spawned_bytes == 0
