"""Large buffer arguments travel out of band (pickle protocol 5): their own frames, the
caller's ``bytes`` sent without a copy, and every place that stores or forwards
arguments (ventilator, journal, history, process executor pipes) keeps them intact."""

from __future__ import annotations

import hashlib
import os

import pytest

import zq
from zq import protocol as P
from zq.errors import ProtocolError, SerializationError
from zq.serialize import OOB_MIN, ArgFrames, args_blob, args_from_blob, args_size, loads_args, pack_args

from .test_delivery import wait_for

BIG = os.urandom(OOB_MIN * 3 + 7)


def describe(*args, **kwargs):
    """What arrived: type and digest of each argument (so a corrupted byte is seen)."""
    def d(x):
        if isinstance(x, (bytes, bytearray, memoryview)):
            return [type(x).__name__, hashlib.sha256(x).hexdigest(), len(x)]
        return [type(x).__name__, repr(x)]
    return [d(a) for a in args], {k: d(v) for k, v in sorted(kwargs.items())}


def refuse(*args, **kwargs):
    raise ValueError(repr(describe(*args, **kwargs)))


def test_pack_args_sends_large_buffers_out_of_band_and_round_trips():
    small = b"tiny"
    frames = pack_args((BIG, 3, "x", bytearray(BIG), memoryview(BIG)), {"k": BIG, "s": small}, oob=True)
    assert type(frames) is ArgFrames and len(frames) == 5  # pickle + 4 buffers
    assert args_size(frames) > 4 * len(BIG) and len(frames[0]) < 1000  # the pickle is tiny
    for data in (frames, args_from_blob(args_blob(frames))):
        args, kwargs = loads_args(data)
        assert [type(a) for a in args] == [bytes, int, str, bytearray, memoryview]
        assert args[0] == BIG and args[3] == BIG and bytes(args[4]) == BIG and kwargs == {"k": BIG, "s": small}
    # small buffers, the default (oob=False) and an ambiguous (tuple, dict) pair stay one frame
    assert type(pack_args((small,), {}, oob=True)) is bytes
    assert type(pack_args((BIG,), {})) is bytes
    args, kwargs = loads_args(pack_args(((BIG,), {"a": 1}), {}, oob=True))
    assert args == ((BIG,), {"a": 1}) and kwargs == {}


def test_a_mutable_buffer_is_copied_at_submit():
    buf = bytearray(BIG)
    frames = pack_args((buf,), {}, oob=True)
    buf[:4] = b"XXXX"
    assert loads_args(frames)[0][0] == BIG


def test_multi_frame_arguments_in_a_task_message_and_bad_counts_refused():
    one = P.TaskSpec("a", "f", "q", b"d" * 16, "c", None, 0, None, 0.0, args=b"plain")
    two = P.TaskSpec("b", "f", "q", b"d" * 16, "c", None, 0, None, 0.0,
                     args=pack_args((BIG, BIG), {}, oob=True))
    frames = P.pack_tasks(P.SUBMIT, [one, two], {})
    tasks, _ = P.unpack_tasks(P.unpack(frames))
    assert bytes(tasks[0].args) == b"plain" and type(tasks[1].args) is ArgFrames
    assert loads_args(tasks[1].args) == ((BIG, BIG), {})
    msg = P.unpack(frames)
    for bad in ([1], [1, 2, 3], [0, 4], [1, "3"], [1, 2000], "x"):
        msg.header["n"] = bad
        with pytest.raises(ProtocolError):
            P.unpack_tasks(msg)


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_large_buffer_arguments_arrive_intact(start, make_client, executor):
    cluster = start(workers=1, executor=executor, concurrency=2)
    client = make_client(cluster)
    buf = bytearray(BIG)
    f = client.submit(describe, BIG, 5, buf, memoryview(BIG), key=BIG, small=b"s")
    buf[:4] = b"XXXX"  # after submit: the task has its own copy
    assert f.result(timeout=60) == describe(BIG, 5, bytearray(BIG), memoryview(BIG), key=BIG, small=b"s")
    futs = [client.submit(len, BIG) for _ in range(50)]
    assert [x.result(timeout=60) for x in futs] == [len(BIG)] * 50


def test_journal_and_requeue_keep_out_of_band_arguments(make_cluster, make_client, tmp_path):
    journal = str(tmp_path / "journal.db")
    cluster = make_cluster(workers=0, ventilator_args=["--journal", journal])
    client = make_client(cluster)
    fut = client.submit_task(describe, (BIG, 1), {"k": BIG}, queue="later", retain_result=True)
    wait_for(lambda: client.get_status(fut.task_id) is zq.TaskState.QUEUED, what="queued")
    cluster.restart("ventilator")  # SIGKILL: the task comes back from the journal
    cluster.add_worker(["--queue", "later"], wait=True)
    assert fut.result(timeout=60) == describe(BIG, 1, k=BIG)
    # a failed task's arguments are kept in the journal's history; requeue runs the same call
    failed = client.submit_task(refuse, (BIG,), {"k": bytearray(BIG)}, queue="later")
    with pytest.raises(zq.TaskFailed) as first:
        failed.result(timeout=60)
    # the result can reach us before the ventilator hears the task is done: requeue takes
    # a finished task, so wait for the ventilator's own record
    wait_for(lambda: client.show_task(failed.task_id)["state"] == "FAILED", what="the ventilator saw it fail")
    again = client.future_for(client.requeue(failed.task_id))
    with pytest.raises(zq.TaskFailed) as second:
        again.result(timeout=60)
    assert str(describe(BIG, k=bytearray(BIG))) in str(first.value)
    assert second.value.remote_message == first.value.remote_message


def test_an_over_limit_argument_fails_the_submit_naming_its_size(make_cluster, make_client):
    cluster = make_cluster(workers=1, env={"ZQ_CLUSTER_MAX_MESSAGE_SIZE": str(OOB_MIN * 2)})
    client = make_client(cluster)
    wait_for(lambda: client._max_message <= OOB_MIN * 2, what="the cluster's limit learned")
    with pytest.raises(SerializationError, match="bytes pickled"):
        client.submit(len, BIG)
    assert client.submit(len, b"ok").result(timeout=30) == 2


def test_recv_now_and_send_now_move_whole_messages():
    import zmq

    from zq._sockets import recv_now, send_now

    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        b.bind("inproc://frames")
        a.connect("inproc://frames")
        assert recv_now(b) is None  # nothing waiting: no exception, no blocking
        send_now(a, [b"one", b"two", BIG, memoryview(BIG)])
        assert b.poll(5000)
        got = recv_now(b, small=2)
        assert got[:2] == [b"one", b"two"] and all(isinstance(f, zmq.Frame) for f in got[2:])
        assert [bytes(f) for f in got[2:]] == [BIG, BIG]
        assert recv_now(b) is None
        c = ctx.socket(zmq.PAIR)  # never connected: the first send cannot go anywhere
        with pytest.raises(zmq.Again):
            send_now(c, [b"x", b"y"])
        c.close(0)
    finally:
        a.close(0)
        b.close(0)
        ctx.term()


def big_value(kind: str, n: int):
    data = bytes(range(256)) * (n // 256)
    return {"bytes": data, "bytearray": bytearray(data), "memoryview": memoryview(data)}[kind]


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_large_buffer_results_travel_out_of_band_and_arrive_intact(start, make_client, executor):
    cluster = start(workers=1, executor=executor, concurrency=2)
    client = make_client(cluster)
    n = OOB_MIN * 4
    expected = bytes(range(256)) * (n // 256)
    for kind in ("bytes", "bytearray", "memoryview"):
        fut = client.submit_task(big_value, (kind, n), retain_result=True)
        value = fut.result(timeout=60)
        assert type(value).__name__ == kind and bytes(value) == expected
        kept = client.get_result(fut.task_id)  # retained at the sink, fetched as one blob
        assert bytes(kept.value) == expected and type(kept.value).__name__ == kind
    small = client.submit(big_value, "bytes", 512).result(timeout=60)
    assert small == expected[:512]


def test_pack_value_round_trips_and_refuses_damage():
    from zq.serialize import loads_value, pack_value

    frames = pack_value(BIG)
    assert type(frames) is ArgFrames and len(frames) == 2 and len(frames[0]) < 200
    assert loads_value(frames) == BIG and loads_value(args_from_blob(args_blob(frames))) == BIG
    assert loads_value(pack_value(("x", 1))) == ("x", 1) and loads_value(b"") is None
    with pytest.raises(SerializationError):
        loads_value(ArgFrames([b"not a pickle", BIG]))


def test_result_messages_with_out_of_band_values_and_bad_counts_refused():
    from zq.nodes.common import result_row
    from zq.envelope import TaskState
    from zq.serialize import loads_value, pack_value

    spec = P.TaskSpec("t1", "f", "q", b"d" * 16, "c", None, 0, None, 0.0, args=b"")
    rows = [result_row(spec, TaskState.SUCCESS, None, worker="w", payload=pack_value(BIG)),
            result_row(spec, TaskState.SUCCESS, None, worker="w", payload=pack_value(7))]
    frames = P.pack_results(rows)
    got = P.unpack_results(P.unpack(frames))
    assert loads_value(got[0].payload) == BIG and loads_value(got[1].payload) == 7
    assert got[0].to_result().value == BIG  # the envelope's blob form
    msg = P.unpack(frames)
    for bad in ([1, 1], [2], [3, 1], [0, 3], ["2", 1], "x"):
        msg.header["n"] = bad
        with pytest.raises(ProtocolError):
            P.unpack_results(msg)
