"""``zq sink --journal FILE``: recorded results survive a sink SIGKILL.

Real nodes on loopback.  A client that is "away" from the sink reaches it
through ``Relay``, a TCP relay the test cuts and restores: the sink sees the
client's connection go, exactly as when its network goes.
"""

from __future__ import annotations

import collections
import pickle
import socket
import sqlite3
import threading
import time
from typing import Any

import pytest
import zmq

import zq
from zq import protocol as P
from zq.config import load_config
from zq.protocol import ResultRow

from .conftest import run_zq
from .policies import done_log, policy_env, wait_for

APPEND = ["--policy", "tests.policies:AppendDone"]


def square(x):
    return x * x


class Relay:
    """Forwards TCP connections from its own loopback port to ``target`` (host, port);
    ``cut()`` closes them all and refuses new ones, ``restore()`` accepts again."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit("//", 1)[1].rsplit(":", 1)
        self.target = (host, int(port))
        self.port = 0
        self.listener: Any = None
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def restore(self) -> "Relay":
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(16)
        self.port = ls.getsockname()[1]
        self.listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()
        return self

    def cut(self) -> None:
        with self.lock:
            socks, self.conns = self.conns + [self.listener], []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                down, _ = ls.accept()
            except OSError:
                return  # cut
            try:
                up = socket.create_connection(self.target, timeout=5)
            except OSError:
                down.close()
                continue
            up.settimeout(None)
            with self.lock:
                self.conns += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def away_client(cluster, relay: Relay, **kw: Any) -> zq.Client:
    """A client that talks to the ventilator directly and to the sink through ``relay``."""
    cfg = zq.load_config(None, {"ventilator_clients": cluster.endpoints["clients"],
                                "sink_endpoint": relay.endpoint, "heartbeat_interval": 0.2})
    return zq.Client(cfg, **kw)


def sink_stats(client: zq.Client) -> dict:
    return client.stats()["sink"]


def result_or_none(client: zq.Client, tid: str):
    try:
        return client.get_result(tid)
    except KeyError:
        return None


@pytest.fixture
def relays():
    made: list[Relay] = []
    yield made
    for r in made:
        r.cut()


@pytest.fixture
def away(make_client, relays):
    """``away(cluster)``: a relay to the sink, cut, and a client behind it (shut down at teardown)."""
    clients: list[zq.Client] = []

    def make(cluster, **kw: Any) -> tuple[zq.Client, Relay]:
        relay = Relay(cluster.endpoints["sink"]).restore()
        relays.append(relay)
        relay.cut()  # the port is kept: restore() opens it again
        c = away_client(cluster, relay, **kw)
        clients.append(c)
        return c, relay

    yield make
    for c in clients:
        c.shutdown(wait=False, cancel_futures=True)


def journaled_expiry(path: str, tid: str):
    db = sqlite3.connect(path)
    try:
        row = db.execute("SELECT expires FROM results WHERE task_id = ?", (tid,)).fetchone()
    finally:
        db.close()
    return row[0] if row else None


def journal_rows(path: str, where: str) -> int:
    """Rows of the sink's journal matching ``where`` (what is committed: WAL readers see that)."""
    db = sqlite3.connect(path)
    try:
        return db.execute(f"SELECT count(*) FROM results WHERE {where}").fetchone()[0]
    finally:
        db.close()


# ------------------------------------------------------------------------------------


def test_retained_results_survive_a_sink_sigkill_and_none_is_recorded_twice(make_cluster, make_client, tmp_path):
    journal = str(tmp_path / "sink.db")
    cluster = make_cluster(workers=2, executor="thread", concurrency=2, env=policy_env(tmp_path),
                           sink_args=["--journal", journal, "--retain", *APPEND])
    client = make_client(cluster)
    n = 300
    futs = [client.submit(square, i) for i in range(n)]
    wait_for(lambda: sum(f.done() for f in futs) >= n // 3, 30, what="a third of the results")
    cluster.restart("sink")  # SIGKILL while results are in flight; same port and journal
    assert [f.result(timeout=60) for f in futs] == [i * i for i in range(n)]
    cluster.restart("sink")  # SIGKILL again, now that every sender forgot its copies
    reader = make_client(cluster)
    assert [reader.get_result(f.task_id).value for f in futs] == [i * i for i in range(n)]
    fired = collections.Counter(done_log(tmp_path))
    assert not [t for t, k in fired.items() if k > 1], "on_done fired twice for a task id"
    assert set(fired) <= {f.task_id for f in futs}


def test_on_done_fires_once_for_results_recorded_before_a_restart(make_cluster, make_client, away, tmp_path):
    """Recorded, hooks fired, the client away: the senders still hold their copies and
    send them again to the restarted sink, which delivers them without recording them
    (nor firing on_done) a second time."""
    cluster = make_cluster(workers=1, executor="thread", concurrency=2, env=policy_env(tmp_path),
                           sink_args=["--journal", str(tmp_path / "sink.db"), *APPEND])
    client, relay = away(cluster)
    n = 30
    futs = [client.submit(square, i) for i in range(n)]  # not retained
    wait_for(lambda: len(done_log(tmp_path)) >= n, 20, what="on_done for every result")
    cluster.restart("sink")
    monitor = make_client(cluster)
    # the worker sent its unacknowledged copies again: delivered anew, not recorded anew
    wait_for(lambda: sink_stats(monitor)["counters"].get("duplicates_dropped", 0) >= n, 20,
             what="the copies sent again", show=lambda: sink_stats(monitor)["counters"])
    relay.restore()
    assert [f.result(timeout=30) for f in futs] == [i * i for i in range(n)]
    fired = done_log(tmp_path)
    assert sorted(fired) == sorted(f.task_id for f in futs)  # each exactly once
    assert sink_stats(monitor)["counters"].get("results", 0) == 0  # nothing recorded twice


def late_copy(endpoint: str, tid: str, client_id: str) -> list[str]:
    """Post a result for ``tid`` as a worker would that ran the task too and sends its copy
    late (it was cut off, its task re-queued and run elsewhere); the ids the sink ACKs."""
    row = [tid, "square", "SUCCESS", None, 1, "late-worker", "host", 1, "default", 0.0, 0.0, 0.0, 0.0,
           client_id, None, [], None]
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, b"worker-late")
    sock.connect(endpoint)
    try:
        sock.send_multipart(P.pack_results([ResultRow(row, pickle.dumps(49))]))
        deadline = time.monotonic() + 20
        while sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            msg = P.unpack(sock.recv_multipart())
            if msg.command == P.ACK:
                return P.str_list(msg.header, "ids", msg.command)
        raise AssertionError("the sink did not acknowledge the late copy")
    finally:
        sock.close(0)


def test_a_late_duplicate_after_a_restart_is_not_recorded_again(start, make_client, tmp_path):
    """A task recorded before a sink restart; a late copy of its result (a second run of
    the task) arrives after it: the restarted sink drops it, its de-duplication set came
    back with the journal, and on_done does not fire again."""
    cluster = start(workers=1, executor="thread", concurrency=1,
                    sink_args=["--journal", str(tmp_path / "sink.db"), *APPEND])
    client = make_client(cluster)
    fut = client.submit(square, 7)
    assert fut.result(timeout=20) == 49
    wait_for(lambda: done_log(tmp_path) == [fut.task_id], 10, what="on_done")
    cluster.restart("sink")
    assert late_copy(cluster.endpoints["sink"], fut.task_id, client.id) == [fut.task_id]
    counters = sink_stats(client)["counters"]
    # (the worker may have sent its own copy again too, if the restart came before its ACK)
    assert counters.get("duplicates_dropped", 0) >= 1 and counters.get("results", 0) == 0, counters
    assert done_log(tmp_path) == [fut.task_id]


def test_a_retained_result_for_an_away_client_survives_sink_and_worker_sigkill(make_cluster, make_client,
                                                                               away, tmp_path):
    """The sink cannot reach the client, keeps the result in its journal and ACKs the
    worker; then the sink and the worker die: the journal's copy reaches the client when
    it comes back."""
    journal = str(tmp_path / "sink.db")
    cluster = make_cluster(workers=1, executor="thread", concurrency=2, sink_args=["--journal", journal])
    client, relay = away(cluster)
    monitor = make_client(cluster)
    futs = [client.submit_task(square, (i,), retain_result=True) for i in range(5)]
    # undeliverable and retained: the worker was acknowledged (nothing awaits it)
    wait_for(lambda: (lambda s: s["undelivered"] == 5 and s["awaiting_ack"] == 0)(sink_stats(monitor)), 20,
             what="results retained for the away client", show=lambda: sink_stats(monitor))
    cluster.workers[0].kill()
    cluster.restart("sink")
    assert [monitor.get_result(f.task_id).value for f in futs] == [i * i for i in range(5)]
    relay.restore()
    assert [f.result(timeout=30) for f in futs] == [i * i for i in range(5)]
    # the client acknowledged them (committed): a further restart does not send them again
    wait_for(lambda: journal_rows(journal, "client != ''") == 0, 10, what="the client's ACKs in the journal")
    cluster.restart("sink")
    assert sink_stats(monitor)["undelivered"] == 0 and sink_stats(monitor)["retained"] == 5


def test_without_a_journal_the_worker_keeps_a_result_its_client_has_not_received(make_cluster, make_client,
                                                                                 away):
    """No journal: a retained result whose client is away is not acknowledged to its
    worker, so a sink SIGKILL before the client comes back does not lose it."""
    cluster = make_cluster(workers=1, executor="thread", concurrency=2)
    client, relay = away(cluster)
    monitor = make_client(cluster)
    futs = [client.submit_task(square, (i,), retain_result=True) for i in range(5)]
    wait_for(lambda: sink_stats(monitor)["undelivered"] == 5, 20, what="results waiting for the away client",
             show=lambda: sink_stats(monitor))
    assert sink_stats(monitor)["awaiting_ack"] == 5  # the worker still holds them
    cluster.restart("sink")
    relay.restore()
    assert [f.result(timeout=30) for f in futs] == [i * i for i in range(5)]


def test_result_ttls_and_consumed_results_hold_across_a_restart(make_cluster, make_client, tmp_path):
    journal = str(tmp_path / "sink.db")
    cluster = make_cluster(workers=1, executor="thread", concurrency=2, sink_args=["--journal", journal])
    client = make_client(cluster)
    t_submit, wall = time.monotonic(), time.time()
    short = client.submit_task(square, (2,), retain_result=True, result_ttl=3.0)
    long = client.submit_task(square, (3,), retain_result=True, result_ttl=120.0)
    taken = client.submit_task(square, (4,), retain_result=True, result_ttl=120.0)
    assert [short.result(10), long.result(10), taken.result(10)] == [4, 9, 16]
    t_done = time.monotonic()
    assert client.get_result(taken.task_id, consume=True).value == 16
    # kept as wall-clock times: a monotonic clock does not survive the process
    expires = journaled_expiry(journal, short.task_id)
    assert expires is not None and wall + 3.0 - 0.5 <= expires <= time.time() + 3.0 + 0.5
    cluster.restart("sink")
    t_restarted = time.monotonic()
    reader = make_client(cluster)
    with pytest.raises(KeyError):
        reader.get_result(taken.task_id)  # consumed stays consumed
    assert reader.get_result(long.task_id).value == 9
    seen = []  # times the short-lived result was still there
    wait_for(lambda: result_or_none(reader, short.task_id) is None or seen.append(time.monotonic()), 10,
             interval=0.05, what="the short-lived result to expire")
    gone = time.monotonic()
    assert all(t < t_done + 3.0 + 1.0 for t in seen), (seen, t_done)  # not kept past its TTL ...
    assert gone >= t_submit + 3.0 - 0.3, (gone, t_submit)  # ... nor dropped before it
    assert gone <= max(t_done + 3.0, t_restarted) + 2.0, (gone, t_done, t_restarted)
    assert reader.get_result(long.task_id).value == 9


@pytest.mark.parametrize("content", [b"this is not an SQLite database" * 100, None])
def test_a_bad_journal_file_stops_the_sink_with_one_line(tmp_path, content):
    path = tmp_path / "sink.db"
    if content is None:
        path = tmp_path / "no-such-directory" / "sink.db"
    else:
        path.write_bytes(content)
    proc = run_zq("sink", "--endpoint", "tcp://127.0.0.1:0", "--journal", str(path))
    assert proc.returncode == 3
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zq: error: cannot open journal"), proc.stderr


def test_the_journal_is_a_sink_setting(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[sink]\njournal = "/var/lib/zq/sink.db"\n')
    assert load_config(str(toml), env={}).sink_journal == "/var/lib/zq/sink.db"
    assert load_config(None, env={"ZQ_SINK_JOURNAL": "s.db"}).sink_journal == "s.db"
    assert load_config(None, env={}).sink_journal == ""


def test_journal_read_back_strips_expired_copies_and_skips_a_damaged_row(tmp_path, caplog):
    """SinkJournal alone: what a restarted sink reads back."""
    from zq.nodes.sink_journal import SinkJournal
    from zq.protocol import ResultRow

    def row(tid: str) -> ResultRow:
        return ResultRow([tid, "f", "SUCCESS", None, 1, "w", "h", 1, "default", 0.0, 0.0, 0.0, 0.0,
                          "client-1", True, [], None], b"value-" + tid.encode())

    path = str(tmp_path / "sink.db")
    j = SinkJournal(path)
    now = time.time()
    j.record(row("kept"), "client-1", now + 60)
    j.record(row("expired"), "", now - 1)
    j.record(row("damaged"), "", now + 60)
    j.record(row("plain"), "client-1", None)  # not retained: its id only
    j.acked("kept", "someone-else")  # not its client: changes nothing
    j.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE results SET row = ? WHERE task_id = 'damaged'", (b"\xc1 not msgpack",))
    db.commit()
    db.close()
    j = SinkJournal(path)
    with caplog.at_level("ERROR", logger="zq.sink.journal"):
        got = {s.task_id: s for s in j.load(now)}
    assert list(got) == ["kept", "expired", "damaged", "plain"]  # recording order
    assert got["kept"].row is not None and got["kept"].row.payload == b"value-kept"
    assert got["kept"].client == "client-1" and abs(got["kept"].expires - (now + 60)) < 1e-3
    assert got["expired"].row is None and got["expired"].expires is None
    assert got["damaged"].row is None and "damaged" in caplog.text
    assert got["plain"].row is None and got["plain"].client == "client-1"
    j.acked("kept", "client-1")
    j.unretain("kept")
    j.forget("plain")
    j.commit()
    got = {s.task_id: s for s in j.load(now)}
    assert "plain" not in got and got["kept"].row is None and got["kept"].client == ""
    j.close()
