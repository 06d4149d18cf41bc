"""A worker that registers again on a fresh connection loses nothing, and leaves nothing
stuck: whatever the old connection carried may be gone (libzmq drops a closed socket's
queue), so READY says which tasks finished there (DONEs not yet sent) and which it still
holds; the ventilator queues again anything else it thought that worker had.

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

    def ready(self, credit: int, **extra) -> None:
        header = {"id": "fake", "queues": ["default"], "credit": credit, "host": "fakehost", "pid": 1,
                  "executor": "thread", "concurrency": 1, "tasks": {}, **extra}
        self.sock.send_multipart(P.pack(P.READY, header))

    def take(self, n: int, timeout: float = 20.0) -> list[P.TaskSpec]:
        got: list[P.TaskSpec] = []
        self.seqs: list[int] = []
        while len(got) < n:
            assert self.sock.poll(int(timeout * 1000)), f"only {len(got)} of {n} tasks arrived"
            msg = P.unpack(self.sock.recv_multipart(copy=False))
            if msg.command == P.TASKS:
                got.extend(P.unpack_tasks(msg)[0])
                self.seqs.append(msg.header["seq"])
        return got

    def wait_heartbeat(self, timeout: float = 20.0) -> None:
        """The ventilator answers a READY with a heartbeat: it has handled the READY."""
        while True:
            assert self.sock.poll(int(timeout * 1000)), "no heartbeat from the ventilator"
            if P.unpack(self.sock.recv_multipart()).command == P.HEARTBEAT:
                return

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
        fake.ready(credit=0, held=[second], done=[first], states=["SUCCESS"])
        wait_for(lambda: client.get_status(first) is zq.TaskState.SUCCESS, what="first recorded as done")
        wait_for(lambda: client.get_status(third) is zq.TaskState.QUEUED, what="third queued again")
        assert client.get_status(second) is zq.TaskState.RUNNING  # still the fake worker's
        cluster.add_worker(wait=True)
        assert futs[2].result(timeout=30) == 4  # the lost one ran on the real worker
        fake.sock.send_multipart(P.pack(P.DONE, {"ids": [second], "states": ["SUCCESS"], "credit": 0}))
        wait_for(lambda: client.get_status(second) is zq.TaskState.SUCCESS, what="second reported done")
        assert client.stats()["ventilator"]["counters"]["requeued_on_reconnect"] == 1
    finally:
        fake.close()


def test_ready_does_not_requeue_tasks_still_on_their_way(make_cluster, make_client):
    """A READY built before a TASKS message arrived (a repeated READY after a ventilator
    restart, a reconnect racing a dispatch) must not re-queue that message's tasks."""
    cluster = make_cluster(workers=0)
    client = make_client(cluster)
    fake = FakeWorker(cluster.endpoints["workers"])
    try:
        fake.ready(credit=2)
        futs = [client.submit(square, i) for i in (3, 4)]
        fake.take(2)
        assert fake.seqs == sorted(fake.seqs) and len(set(fake.seqs)) == len(fake.seqs)
        last = fake.seqs[-1]

        def requeued():
            return client.stats()["ventilator"]["counters"].get("requeued_on_reconnect", 0)

        fake.ready(credit=0, held=[], seen=0)  # "built before any TASKS arrived"
        fake.wait_heartbeat()
        assert requeued() == 0
        fake.ready(credit=0, held=[], seen=last)  # it got them, and holds none: lost
        fake.wait_heartbeat()
        assert requeued() == 2
        cluster.add_worker(wait=True)
        assert [f.result(timeout=30) for f in futs] == [9, 16]
    finally:
        fake.close()


def test_reregistering_worker_with_a_bad_done_list_is_refused_and_the_ventilator_serves_on(
        make_cluster, make_client):
    cluster = make_cluster(workers=1)
    client = make_client(cluster)
    fake = FakeWorker(cluster.endpoints["workers"])
    try:
        fake.ready(credit=0)
        fake.ready(credit=0, held=[], done=["x"], states=["NOT-A-STATE"])
        assert fake.sock.poll(10_000)
        replies = []
        while fake.sock.poll(2000):
            replies.append(P.unpack(fake.sock.recv_multipart()).command)
            if P.ERROR in replies:
                break
        assert P.ERROR in replies
        assert client.submit(square, 7).result(timeout=30) == 49
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


def test_worker_keeps_what_it_could_not_send_and_sends_it_in_order(monkeypatch):
    from types import SimpleNamespace

    from nodes.worker import Worker

    monkeypatch.setattr("nodes.worker.send_now", lambda sock, frames: sock.send_multipart(frames))
    w = Worker(zq.load_config(None, {}), worker_id="w")
    w.vent = FlakySocket()
    w.aio = SimpleNamespace(running=0)
    w.accepting = False  # no credit to grant: only what we queue below is sent
    spec = P.TaskSpec("t-retry", "f", "default", b"d" * 16, "", None, 1, None, 0.0, args=b"")
    w._retry(spec, delay=0.5)
    w.done_ids, w.done_states = ["t-done"], ["SUCCESS"]
    w._report()  # link full: nothing goes, nothing is dropped
    assert w.vent.sent == [] and len(w.outbox) == 1 and w.done_ids == ["t-done"]
    w._continue(spec, ["g", b"e" * 16, b"", b"", "default", []])
    w.vent.full = False
    w._report()
    assert [m.command for m in w.vent.sent] == [P.RETRY, P.CONTINUE, P.DONE]
    assert w.vent.sent[2].header["ids"] == ["t-done"]
    assert not w.outbox and not w.done_ids


def test_worker_ready_on_a_fresh_connection_says_what_it_finished_and_holds(monkeypatch):
    from types import SimpleNamespace

    from nodes.worker import Worker

    monkeypatch.setattr("nodes.worker.send_now", lambda sock, frames: sock.send_multipart(frames))
    w = Worker(zq.load_config(None, {}), worker_id="w")
    w.vent = FlakySocket()
    w.aio = SimpleNamespace(running=0)
    w.executor = SimpleNamespace(kind="thread")
    spec = P.TaskSpec("t-retry", "f", "default", b"d" * 16, "", None, 1, None, 0.0, args=b"")
    w._retry(spec, delay=0.5)  # stays in the outbox: the link is full
    w.running["t-run"] = (spec, None)
    w.done_ids, w.done_states = ["t-done"], ["FAILED"]
    w.vent.full = False
    w._send_ready()
    ready = w.vent.sent[0]
    assert ready.command == P.READY
    assert sorted(ready.header["held"]) == ["t-retry", "t-run"]
    assert (ready.header["done"], ready.header["states"]) == (["t-done"], ["FAILED"])
    assert ready.header["seen"] == 0
    assert not w.done_ids  # reported by READY, not again by DONE
    # a follow-up task sent lately goes again after the next READY (the old link may have lost it)
    w._flush_outbox()
    child = P.TaskSpec("t-child", "f", "default", b"d" * 16, "", None, 0, None, 0.0, args=b"")
    w._on_event(("spawn", child.row(), b"fn", b""))
    w.vent.sent.clear()
    w._send_ready()
    w._flush_outbox()
    assert [m.command for m in w.vent.sent] == [P.READY, P.SPAWN]
