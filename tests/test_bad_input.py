"""Bad input never kills a node.

A raw DEALER sends each bound endpoint (ventilator clients, ventilator workers,
sink) thousands of seeded random malformed messages -- random frames, truncated
messages, a wrong protocol version, unknown commands, garbage msgpack headers,
headers with wrong field types, SUBMIT/RESULT with mismatched frame counts,
task and result rows with wrong types -- plus one frame bigger than the
cluster's maximum message size.  Afterwards a normal job must complete, every
node process must still run, and ``zq status`` must count the bad messages.

Every message here is invalid by construction (checked against the rules in
``zq/protocol.py``'s docstring, not against its code), so every one must get a
reply: ``ERROR`` from the clients and sink endpoints, ``ERROR`` or ``UNKNOWN``
(an unregistered worker) from the workers endpoint.  Messages are sent one at
a time so a missing reply names the exact message.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import time
from typing import Any, Callable, Optional

import cloudpickle
import msgpack
import pytest
import zmq

import zq
from zq.nodes.common import result_row
from zq.nodes.local import LocalCluster
from zq import protocol as P

from .conftest import FAST_ENV, run_zq

MAX = 1024 * 1024
SMALL_ENV = {"ZQ_CLUSTER_MAX_MESSAGE_SIZE": str(MAX)}
N_FUZZ = 3000
REPLY_TIMEOUT_MS = 5000


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def square(x):
    return x * x


# -------------------------------------------------------------------- valid shapes


def valid_task_row(rng: random.Random) -> list:
    """A well-formed task row, built by the protocol module so it tracks the current format."""
    return P.TaskSpec(task_id=f"fuzz-{rng.getrandbits(48):x}", name="fuzz.fn", queue="fuzz-queue",
                      digest=rng.randbytes(16), client="fuzz-client", retain=None, retries=0, timeout=None,
                      submitted_at=time.time()).row()


def valid_result_row(rng: random.Random) -> list:
    spec = P.TaskSpec(task_id=f"fuzz-{rng.getrandbits(48):x}", name="fuzz.fn", queue="default",
                      digest=rng.randbytes(16), client="fuzz-client", retain=None, retries=0, timeout=None,
                      submitted_at=1.0)
    return result_row(spec, zq.TaskState.SUCCESS, None, worker="w", started_at=2.0, finished_at=3.0,
                      run_seconds=1.0).row


# what the leading fields of a row must be (the table in zq/protocol.py); a wrong value is
# anything else.  Fields added after these are left alone.
_STR, _BYTES16, _INT, _NUM, _LIST, _BOOL_NONE, _NUM_NONE, _DICT_NONE = range(8)
TASK_FIELDS = [_STR, _STR, _STR, _BYTES16, _STR, _BOOL_NONE, _INT, _NUM_NONE, _NUM, _INT, _LIST, _DICT_NONE]
RESULT_FIELDS = ["state", "err", _INT, _STR, _STR, _INT, _STR, _NUM, _NUM, _NUM, _NUM, _STR, _BOOL_NONE,
                 _LIST]
RESULT_FIELDS = [_STR, _STR] + RESULT_FIELDS  # task id, name


def wrong_value(rng: random.Random, kind: Any) -> Any:
    pool: dict[Any, list] = {
        _STR: [None, 1, 2.5, b"bytes", [], {}, True],
        _BYTES16: [None, 1, "a" * 16, b"short", b"x" * 17, [], {}],
        _INT: [None, "1", 2.5, b"1", [], {}],
        _NUM: [None, "1.0", b"1", [], {}],
        _LIST: [None, 1, "x", b"x", {}],
        _BOOL_NONE: [1, "yes", 2.5, b"", [], {}],
        _NUM_NONE: ["1", b"1", [], {}, -1, 0],
        _DICT_NONE: [1, "x", b"x", [1]],
        "state": [None, 1, "NOT_A_STATE", b"SUCCESS"],
        "err": [1, "boom", ["only", "three", "strings"], [1, 2, 3, 4], {}],
    }
    return rng.choice(pool[kind])


def wrong_row(rng: random.Random, row: list, fields: list) -> list:
    row = list(row)
    if rng.random() < 0.15:  # wrong arity or not a list at all
        return rng.choice([row[:-1], row + [None], [], "row", {"0": row[0]}, None])
    i = rng.randrange(len(fields))
    row[i] = wrong_value(rng, fields[i])
    return row


def not_a_map(rng: random.Random) -> bytes:
    """Bytes that are not a msgpack map: undecodable, truncated or another type."""
    choice = rng.randrange(4)
    if choice == 0:
        return rng.randbytes(rng.randrange(0, 40)) + b"\xc1"  # 0xc1 is never valid msgpack
    if choice == 1:
        full = packb({"t": [valid_task_row(rng)], "f": []})
        return full[: rng.randrange(1, len(full))]  # truncated
    if choice == 2:
        return packb(rng.choice([1, "map", [1, 2], None, b"\x00", 2.5, True]))
    return packb({"a": 1}) + b"\x00trailing"


# ---------------------------------------------------------------------- generators

NODE_ONLY = [P.TASKS, P.READY, P.DONE, P.STARTED, P.RETRY, P.BYE, P.CANCEL, P.UNKNOWN, P.ACK, P.RESULT,
             P.REJECT, P.REPLY, b"CANCELED"]  # never valid from a client to the ventilator
NOT_FOR_SINK = [P.SUBMIT, P.TASKS, P.READY, P.DONE, P.STARTED, P.RETRY, P.BYE, P.CANCEL, P.UNKNOWN,
                P.REJECT, P.REPLY, b"CANCELED"]


def envelope_garbage(rng: random.Random) -> tuple[str, list[bytes]]:
    """Invalid for every endpoint: fails before any command is looked at."""
    kind = rng.randrange(5)
    if kind == 0:
        frames = [rng.randbytes(rng.randrange(0, 64)) for _ in range(rng.randrange(1, 7))]
        if frames[0] == P.PROTOCOL:
            frames[0] = b"ZQ00"
        return "random frames", frames
    if kind == 1:
        full = [P.PROTOCOL, rng.choice(sorted(P.COMMANDS)), packb({})]
        return "truncated", full[: rng.randrange(0, 3)] or [b""]
    if kind == 2:
        version = rng.choice([b"ZQ00", b"ZQ01", b"zq02", b"ZQ2", b"ZQ02\x00", b"", rng.randbytes(4)])
        if version == P.PROTOCOL:
            version = b"ZQ99"
        return "wrong version", [version, P.HEARTBEAT, packb({"id": "x"})]
    if kind == 3:
        cmd = rng.choice([b"", b"SUBMITX", b"submit", b"HELLO ", b"\x00", rng.randbytes(rng.randrange(1, 12))])
        if cmd in P.COMMANDS:
            cmd = b"NOPE"
        return "unknown command", [P.PROTOCOL, cmd, packb({})]
    return "garbage header", [P.PROTOCOL, rng.choice(sorted(P.COMMANDS)), not_a_map(rng)]


def clients_garbage(rng: random.Random) -> tuple[str, list[bytes]]:
    kind = rng.randrange(8)
    if kind < 3:
        return envelope_garbage(rng)
    if kind == 3:  # SUBMIT, header fields of the wrong type
        header = rng.choice([{"t": "rows", "f": []}, {"t": [], "f": "digests"}, {"f": []}, {"t": []},
                             {"t": None, "f": None}, {"t": [], "f": [b"short"]}, {"t": 5, "f": [1]}])
        return "SUBMIT bad header", [P.PROTOCOL, P.SUBMIT, packb(header)]
    if kind == 4:  # SUBMIT, a task row with a wrong field
        row = wrong_row(rng, valid_task_row(rng), TASK_FIELDS)
        digest = row[3] if isinstance(row, list) and len(row) > 3 and isinstance(row[3], bytes) else b"d" * 16
        f = [digest] if len(digest) == 16 else []
        return "SUBMIT bad row", [P.PROTOCOL, P.SUBMIT, packb({"t": [row], "f": f}), *(b"fn" for _ in f), b"args"]
    if kind == 5:  # SUBMIT, valid rows, the wrong number of frames
        rows = [valid_task_row(rng) for _ in range(rng.randrange(1, 4))]
        digests = sorted({r[3] for r in rows})
        need = len(rows) + len(digests)
        n = rng.choice([k for k in range(0, need + 4) if k != need])
        return "SUBMIT frame count", [P.PROTOCOL, P.SUBMIT, packb({"t": rows, "f": digests}),
                                      *(rng.randbytes(8) for _ in range(n))]
    if kind == 6:  # REQUEST without a proper req/op
        header = rng.choice([{"req": "1", "op": "stats"}, {"req": 1, "op": 5}, {"op": "stats"}, {"req": 1},
                             {"req": None, "op": None}, {"req": 1.5, "op": "stats"}, {"req": [], "op": b"stats"}])
        return "REQUEST bad header", [P.PROTOCOL, P.REQUEST, packb(header)]
    cmd = rng.choice(NODE_ONLY)  # a command clients may not send, with a plausible header
    header = rng.choice([{}, {"ids": ["a"]}, {"r": []}, {"id": "w", "queues": ["q"], "credit": 1}])
    return f"{cmd.decode()} from a client", [P.PROTOCOL, cmd, packb(header)]


def workers_garbage(rng: random.Random) -> tuple[str, list[bytes]]:
    """Never a valid READY, so the fuzzing socket stays an unknown worker."""
    kind = rng.randrange(6)
    if kind < 3:
        return envelope_garbage(rng)
    if kind == 3:
        header = rng.choice([{"id": "w"}, {"queues": "default", "credit": 1}, {"queues": [], "credit": 1},
                             {"queues": [1], "credit": 1}, {"queues": [""], "credit": 1},
                             {"queues": ["q"], "credit": -1}, {"queues": ["q"], "credit": "1"},
                             {"queues": ["q"], "credit": 10**9}, {"queues": ["q"], "credit": 1.5},
                             {"queues": None, "credit": None}])
        return "READY bad header", [P.PROTOCOL, P.READY, packb(header)]
    # anything else from an unregistered worker: answered UNKNOWN (or ERROR)
    cmd = rng.choice([P.DONE, P.STARTED, P.RETRY, P.BYE, P.HEARTBEAT, P.SUBMIT, P.RESULT])
    header = rng.choice([{}, {"ids": 5}, {"ids": ["x"], "states": [1], "credit": "x"}, {"id": 1, "delay": "x"}])
    return f"{cmd.decode()} from an unknown worker", [P.PROTOCOL, cmd, packb(header),
                                                       *(rng.randbytes(4) for _ in range(rng.randrange(3)))]


def sink_garbage(rng: random.Random) -> tuple[str, list[bytes]]:
    kind = rng.randrange(8)
    if kind < 3:
        return envelope_garbage(rng)
    if kind == 3:  # RESULT, a row of the wrong type
        row = wrong_row(rng, valid_result_row(rng), RESULT_FIELDS)
        return "RESULT bad row", [P.PROTOCOL, P.RESULT, packb({"r": [row]}), b"value"]
    if kind == 4:  # RESULT, valid rows, the wrong number of value frames
        rows = [valid_result_row(rng) for _ in range(rng.randrange(0, 4))]
        n = rng.choice([k for k in range(0, len(rows) + 4) if k != len(rows)])
        return "RESULT frame count", [P.PROTOCOL, P.RESULT, packb({"r": rows}),
                                      *(rng.randbytes(8) for _ in range(n))]
    if kind == 5:
        header = rng.choice([{"r": "rows"}, {}, {"r": None}, {"r": {"a": 1}}])
        return "RESULT bad header", [P.PROTOCOL, P.RESULT, packb(header)]
    if kind == 6:
        header = rng.choice([{"ids": "a"}, {"ids": [1, 2]}, {}, {"ids": None}, {"ids": [b"a"]}])
        cmd = rng.choice([P.ACK, P.REQUEST])
        if cmd == P.REQUEST:
            header = rng.choice([{"req": "1", "op": "stats"}, {"req": 1, "op": 5}, {"op": "stats"}])
        return f"{cmd.decode()} bad header", [P.PROTOCOL, cmd, packb(header)]
    cmd = rng.choice(NOT_FOR_SINK)
    return f"{cmd.decode()} to the sink", [P.PROTOCOL, cmd, packb({"ids": ["a"], "t": [], "f": []})]


GENERATORS: dict[str, Callable[[random.Random], tuple[str, list[bytes]]]] = {
    "clients": clients_garbage, "workers": workers_garbage, "sink": sink_garbage}
ALLOWED_REPLIES = {"clients": {P.ERROR}, "workers": {P.ERROR, P.UNKNOWN}, "sink": {P.ERROR}}
SEEDS = {"clients": 1001, "workers": 2002, "sink": 3003}


# ------------------------------------------------------------------------- sockets


def raw_dealer(ctx: zmq.Context, endpoint: str, identity: Optional[bytes] = None) -> zmq.Socket:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.ROUTING_ID, identity or b"fuzz-" + os.urandom(6).hex().encode())
    s.connect(endpoint)
    return s


def recv(sock: zmq.Socket, timeout_ms: int = REPLY_TIMEOUT_MS,
         skip: tuple = (P.HEARTBEAT,)) -> Optional[P.Message]:
    """The next message not in ``skip`` (nodes heartbeat any peer they know), or None."""
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        left = int((deadline - time.monotonic()) * 1000)
        if left <= 0 or not sock.poll(left):
            return None
        msg = P.unpack(sock.recv_multipart())
        if msg.command not in skip:
            return msg


def node_alive_check(cluster) -> None:
    dead = {n.name: n.proc.poll() for n in cluster.nodes() if not n.alive()}
    assert not dead, "node(s) died: " + "; ".join(
        f"{name} exit {code}:\n" + "\n".join(list(n.lines)[-15:])
        for n in cluster.nodes() for name, code in dead.items() if n.name == name)


def zq_status(cluster) -> dict:
    r = run_zq("status", "--ventilator", cluster.endpoints["clients"], "--sink", cluster.endpoints["sink"],
               "--json", timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def fuzz(cluster, which: str, n: int = N_FUZZ) -> collections.Counter:
    """Send ``n`` seeded invalid messages to one endpoint, one at a time; check every reply."""
    ep = cluster.endpoints[which]
    rng = random.Random(SEEDS[which])
    ctx = zmq.Context()
    sock = raw_dealer(ctx, ep)
    seen: collections.Counter = collections.Counter()
    try:
        for i in range(n):
            category, frames = GENERATORS[which](rng)
            sock.send_multipart(frames)
            reply = recv(sock)
            where = f"{which} message #{i} (seed {SEEDS[which]}, {category}): {frames!r:.300}"
            if reply is None:
                node_alive_check(cluster)
                pytest.fail(f"no reply within {REPLY_TIMEOUT_MS} ms to {where}")
            assert reply.command in ALLOWED_REPLIES[which], f"{reply.command!r} {reply.header} for {where}"
            if reply.command == P.ERROR:
                assert reply.header.get("code") == "protocol", (reply.header, where)
                assert isinstance(reply.header.get("msg"), str) and reply.header["msg"], (reply.header, where)
            seen[(category, reply.command)] += 1
    finally:
        sock.close(0)
        ctx.destroy(0)
    return seen


def send_oversized(cluster, which: str) -> None:
    """One 2 MiB frame (twice the maximum) on a socket of its own; libzmq drops that peer."""
    ctx = zmq.Context()
    try:
        big = raw_dealer(ctx, cluster.endpoints[which])
        big.send_multipart([P.PROTOCOL, P.SUBMIT if which == "clients" else P.RESULT,
                            packb({"t": [], "f": [], "r": []}), b"\0" * (2 * MAX)])
        big.send(b"x" * (2 * MAX))
        # then the node still answers a fresh peer
        probe = raw_dealer(ctx, cluster.endpoints[which])
        probe.send_multipart(P.pack(P.HEARTBEAT, {"id": "probe", "instance": "probe"}))
        reply = recv(probe, 10_000, skip=())
        if reply is None:
            node_alive_check(cluster)
        assert reply is not None and reply.command in (P.HEARTBEAT, P.UNKNOWN), reply
    finally:
        ctx.destroy(0)


@pytest.fixture(scope="module")
def shared_cluster():
    """One cluster for the tests that must leave it running (saves a start per test)."""
    c = LocalCluster(env={**FAST_ENV, **SMALL_ENV}, workers=1, executor="thread", concurrency=2)
    c.start()
    yield c
    c.stop(timeout=20)
    for n in c.nodes():
        if n.alive():
            n.kill()


@pytest.fixture
def small_cluster(shared_cluster):
    node_alive_check(shared_cluster)  # a node an earlier test killed fails that test, not this one
    return shared_cluster


# ---------------------------------------------------------------------------- fuzz


@pytest.mark.parametrize("which", ["clients", "workers", "sink"])
def test_fuzzed_endpoint_keeps_serving(small_cluster, make_client, which):
    cluster = small_cluster
    seen = fuzz(cluster, which)
    # the generators really covered the categories
    categories = {c for c, _ in seen}
    assert {"random frames", "truncated", "wrong version", "unknown command", "garbage header"} <= categories
    assert sum(seen.values()) == N_FUZZ
    if which == "workers":  # READY with bad fields is refused, other commands get UNKNOWN
        assert seen[("READY bad header", P.ERROR)] > 0 and seen[("READY bad header", P.UNKNOWN)] == 0
    send_oversized(cluster, which)
    node_alive_check(cluster)

    client = make_client(cluster)
    assert list(client.map(square, range(30), timeout=30)) == [x * x for x in range(30)]
    node_alive_check(cluster)

    data = zq_status(cluster)
    node = "sink" if which == "sink" else "ventilator"
    counters = data[node]["counters"]
    refused = sum(n for (c, cmd), n in seen.items() if cmd == P.ERROR)
    assert counters.get("bad_messages", 0) >= refused > 0, counters
    assert counters.get("internal_errors", 0) == 0, counters  # every refusal was a ProtocolError
    text = run_zq("status", "--ventilator", cluster.endpoints["clients"], "--sink", cluster.endpoints["sink"])
    assert text.returncode == 0, text.stderr
    v_bad, s_bad = data["ventilator"]["counters"].get("bad_messages", 0), data["sink"]["counters"].get(
        "bad_messages", 0)
    assert f"bad messages: ventilator {v_bad}  sink {s_bad}" in text.stdout, text.stdout


def test_clients_endpoint_answers_each_kind_of_garbage_with_error(small_cluster):
    """Hand-written cases, one per kind, each answered ERROR on the clients endpoint."""
    row = valid_task_row(random.Random(7))
    cases = {
        "empty frame": [b""],
        "version only": [P.PROTOCOL],
        "no header": [P.PROTOCOL, P.SUBMIT],
        "wrong version": [b"ZQ01", P.SUBMIT, packb({"t": [], "f": []})],  # the old protocol
        "unknown command": [P.PROTOCOL, b"EXPLODE", packb({})],
        "garbage msgpack": [P.PROTOCOL, P.SUBMIT, b"\xc1\xc1\xc1"],
        "header not a map": [P.PROTOCOL, P.SUBMIT, packb([1, 2, 3])],
        "t not a list": [P.PROTOCOL, P.SUBMIT, packb({"t": "x", "f": []})],
        "row too short": [P.PROTOCOL, P.SUBMIT, packb({"t": [row[:5]], "f": []}), b"args"],
        "retries a string": [P.PROTOCOL, P.SUBMIT, packb({"t": [row[:6] + ["3"] + row[7:]], "f": [row[3]]}),
                             b"fn", b"args"],
        "digest too short": [P.PROTOCOL, P.SUBMIT, packb({"t": [], "f": [b"abc"]}), b"fn"],
        "frames missing": [P.PROTOCOL, P.SUBMIT, packb({"t": [row], "f": [row[3]]}), b"fn"],
        "frames extra": [P.PROTOCOL, P.SUBMIT, packb({"t": [row], "f": [row[3]]}), b"fn", b"args", b"more"],
        "req not an int": [P.PROTOCOL, P.REQUEST, packb({"req": "1", "op": "stats"})],
        "worker command": [P.PROTOCOL, P.DONE, packb({"ids": [], "states": [], "credit": 1})],
        "result from a client": [P.PROTOCOL, P.RESULT, packb({"r": []})],
    }
    ctx = zmq.Context()
    sock = raw_dealer(ctx, small_cluster.endpoints["clients"])
    try:
        for name, frames in cases.items():
            sock.send_multipart(frames)
            reply = recv(sock)
            assert reply is not None, f"no reply to {name}"
            assert reply.command == P.ERROR, (name, reply)
            assert reply.header["code"] == "protocol" and reply.header["msg"], (name, reply.header)
        # and a well-formed request on the same socket is still served
        sock.send_multipart(P.pack(P.REQUEST, {"req": 9, "op": "stats"}))
        reply = recv(sock)
        assert reply is not None and reply.command == P.REPLY and reply.header["req"] == 9
        assert reply.header["data"]["counters"]["bad_messages"] >= len(cases)
    finally:
        ctx.destroy(0)
    node_alive_check(small_cluster)


# ------------------------------------------- well-formed messages with hostile values


def _fn_frame(fn: Callable) -> tuple[bytes, bytes]:
    data = cloudpickle.dumps(fn)
    return os.urandom(16), data


def failing():
    raise ValueError("fails on purpose")


def _wait(pred: Callable[[], bool], timeout: float, cluster) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        if any(not n.alive() for n in cluster.nodes()):
            return False
        time.sleep(0.02)  # sleep-ok: a poll with a deadline
    return True


@pytest.mark.parametrize("opts, lost", [
    ({"backoff": "abc", "backoff_max": [1]}, []),  # once killed a worker when the task failed
    (None, [1, {"x": 2}]),  # once killed the ventilator when the task's worker was lost
    ({"no-such-option": 1}, []),
    ({"then": [["x", b"short", b"", b"", None]]}, []),
])
def test_hostile_task_fields_are_refused_with_an_error(make_cluster, make_client, opts, lost):
    """Task rows are checked field by field before anything uses them: the sender gets an
    ERROR, nothing is queued, and every node keeps serving."""
    cluster = make_cluster(workers=1, executor="thread", concurrency=1)
    digest, fn = _fn_frame(failing)
    row = ["hostile-1", "failing", "default", digest, "hostile-client", None, 2, None, time.time(), 1, lost,
           opts]
    ctx = zmq.Context()
    try:
        sub = raw_dealer(ctx, cluster.endpoints["clients"], b"hostile-client")
        sub.send_multipart([P.PROTOCOL, P.SUBMIT, packb({"t": [row], "f": [digest]}), fn,
                            cloudpickle.dumps(())])
        reply = recv(sub)
        assert reply is not None and reply.command == P.ERROR and reply.header["code"] == "protocol"
    finally:
        ctx.destroy(0)
    client = make_client(cluster)
    assert client.get_status("hostile-1") is zq.TaskState.UNKNOWN
    assert client.submit(square, 3).result(timeout=20) == 9
    node_alive_check(cluster)


# ------------------------------------------------------------------- size limits


def big_result(n):
    return b"r" * n


def test_too_large_arguments_raise_at_submit(small_cluster, make_client):
    client = make_client(small_cluster)
    assert client.submit(square, 2).result(timeout=20) == 4  # the client has heard the nodes' maximum
    with pytest.raises(zq.SerializationError):
        client.submit(len, b"a" * (2 * MAX))
    with pytest.raises(zq.SerializationError):
        client.submit_task(len, (), {"data": b"a" * (MAX + 1)})
    assert client.submit(len, b"a" * (MAX // 4)).result(timeout=20) == MAX // 4  # below the limit: fine
    node_alive_check(small_cluster)


def test_too_large_arguments_before_the_client_heard_the_cluster(make_cluster, make_client):
    """Nodes paused while the client starts, so it cannot know their limit when submit() runs."""
    small_cluster = make_cluster(workers=1, executor="thread", concurrency=2, env=SMALL_ENV)
    nodes = [small_cluster.ventilator, small_cluster.sink]
    for n in nodes:
        n.signal(signal.SIGSTOP)
    try:
        client = make_client(small_cluster)
        try:
            fut = client.submit(len, b"a" * (2 * MAX))
        except zq.SerializationError:
            return  # refused at once: fine
    finally:
        for n in nodes:
            n.signal(signal.SIGCONT)
    small = client.submit(square, 6)  # other tasks of this client are not held up
    assert small.result(timeout=15) == 36
    with pytest.raises(zq.SerializationError):
        fut.result(timeout=3)


def test_too_large_result_fails_the_task_and_worker_keeps_serving(small_cluster, make_client):
    client = make_client(small_cluster)
    fut = client.submit(big_result, 2 * MAX)
    with pytest.raises(zq.SerializationError):
        fut.result(timeout=30)
    assert fut.envelope.state is zq.TaskState.FAILED
    worker_pid = small_cluster.workers[0].proc.pid
    ok = client.submit(big_result, 1000)
    assert ok.result(timeout=20) == b"r" * 1000
    assert ok.envelope.pid == worker_pid
    node_alive_check(small_cluster)
