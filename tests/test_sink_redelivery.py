"""A result the sink delivered can go down with its client's dying connection (a ROUTER
routes to the old pipe until it learns of the new one: seen as a future that never
resolved after a sink SIGSTOP, about one run in ten of test_decided_results).  The sink
keeps each result until its client ACKs it, and sends it again when that client says
HELLO on a new connection."""

from __future__ import annotations

import time
import uuid

import pytest
import zmq

from zq import protocol as P
from zq.protocol import ResultRow

from tests.lifecycle_tasks import next_message

pytestmark = pytest.mark.timeout(60)


def _dealer(identity: bytes, endpoint: str) -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.ROUTING_ID, identity)
    s.connect(endpoint)
    return s


def _row(task_id: str, client: str) -> ResultRow:
    now = time.time()
    return ResultRow([task_id, "mod.fn", "SUCCESS", None, 1, "w-raw", "host", 1, "default", now, now, now,
                      0.0, client, None, [], None], b"value")


def test_a_result_not_acknowledged_is_sent_again_on_the_clients_new_connection(make_cluster):
    cluster = make_cluster(workers=0)
    endpoint = cluster.endpoints["sink"]
    client_id = "c-" + uuid.uuid4().hex[:8]
    first = _dealer(client_id.encode(), endpoint)
    worker = _dealer(b"w-" + uuid.uuid4().hex[:6].encode(), endpoint)
    try:
        first.send_multipart(P.pack(P.HELLO, {"id": client_id, "client": client_id}))
        next_message(first, P.HEARTBEAT)  # the sink knows this connection
        worker.send_multipart(P.pack_results([_row("t-1", client_id)]))
        got = P.unpack_results(next_message(first, P.RESULT))
        assert [r.task_id for r in got] == ["t-1"]
        first.close(0)  # gone before its ACK: as if the delivery had died with the connection
        again = _dealer(client_id.encode(), endpoint)
        try:
            again.send_multipart(P.pack(P.HELLO, {"id": client_id, "client": client_id}))
            got = P.unpack_results(next_message(again, P.RESULT))
            assert [r.task_id for r in got] == ["t-1"]
            again.send_multipart(P.pack(P.ACK, {"ids": ["t-1"]}))
            assert P.str_list(next_message(worker, P.ACK).header, "ids", P.ACK) == ["t-1"]  # now its sender may forget it
            # acknowledged: a third connection gets nothing again
            again.close(0)
            third = _dealer(client_id.encode(), endpoint)
            try:
                third.send_multipart(P.pack(P.HELLO, {"id": client_id, "client": client_id}))
                seen = []
                while seen.count(P.HEARTBEAT) < 2:  # what the sink sends until its second heartbeat
                    assert third.poll(15_000), "the sink went silent"
                    seen.append(P.unpack(third.recv_multipart()).command)
                assert P.RESULT not in seen, seen
            finally:
                third.close(0)
        finally:
            again.close(0)
    finally:
        first.close(0)
        worker.close(0)
