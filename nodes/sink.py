"""The sink: records each task's result once, fires ``on_done``, delivers, retains.

    workers, ventilator (DEALER) ──RESULT──▶ ┐
                                 ◀──ACK────  │ [ROUTER] one thread (Sink.loop)
    clients (DEALER) ──HELLO/REQUEST/HB──▶   │
                     ◀──RESULT/REPLY────     ┘

Policy firing and recording happen in one place, ``_record``.  Results are
routed by their header row alone (the client id travels in it); the pickled
value is never unpickled here unless an ``on_done`` policy reads ``.value``.

Memory: a result is kept only while its client has not received it (bounded
by ``result_ttl``) or when it is retained (until its TTL).  The set of task ids
already recorded, used to drop duplicates, is bounded (``DEDUP_MEMORY``).
"""

from __future__ import annotations

import collections
import heapq
import logging
import time
from typing import Any, Optional, Sequence

import zmq

from zq import protocol as P
from zq._sockets import check_bind_allowed, router
from zq.config import Config
from zq.errors import ProtocolError
from zq.policy import Policy, run_hooks
from zq.protocol import ResultRow

from .common import HOST, Node

log = logging.getLogger("zq.sink")

DEDUP_MEMORY = 200_000


class Sink(Node):
    role = "sink"

    def __init__(self, config: Config, policies: Sequence[Policy] = ()) -> None:
        super().__init__(config)
        self.policies = list(policies)
        self.recorded: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.retained: dict[str, tuple[ResultRow, float]] = {}
        self.expiry: list[tuple[float, str]] = []
        self.undelivered: dict[str, collections.deque[tuple[float, ResultRow]]] = {}
        self.rate_samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=20)

    def setup(self) -> None:
        assert self.ctx is not None
        check_bind_allowed(self.config.sink_endpoint, secured=False, insecure=self.config.insecure)
        self.sock, ep = router(self.ctx, self.config.sink_endpoint, self.config.max_message_size)
        self.endpoints = {"endpoint": ep}
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.poller.register(self._waker.fileno(), zmq.POLLIN)

    def close(self) -> None:
        if getattr(self, "sock", None) is not None:
            self.sock.close(0)

    def loop(self) -> None:
        interval = self.config.heartbeat_interval
        next_tick = 0.0
        while not self.stopping:
            events = dict(self.poller.poll(int(interval * 500) or 1))
            if self.sock in events:
                self._drain()
            if self._waker.fileno() in events:
                self._waker.drain()
            now = time.monotonic()
            if now >= next_tick:
                self._tick(now)
                next_tick = now + interval / 2

    def _drain(self, limit: int = 1000) -> None:
        for _ in range(limit):
            try:
                frames = self.sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            ident = frames[0].bytes
            try:
                self._on_message(ident, P.unpack(frames[1:]))
            except ProtocolError as exc:
                self.bad_message("endpoint", exc)
                self._send(ident, P.error_message("protocol", str(exc)))
            except Exception as exc:
                self.counters["internal_errors"] += 1
                log.exception("error handling a message: %s", exc)

    def _send(self, ident: bytes, frames: list) -> bool:
        try:
            self.sock.send_multipart([ident, *frames], flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.ZMQError:
            return False

    def _on_message(self, ident: bytes, msg: P.Message) -> None:
        cmd = msg.command
        if cmd == P.RESULT:
            rows = P.unpack_results(msg)
            self._send(ident, P.pack(P.ACK, {"ids": [r.task_id for r in rows]}))
            self._record(rows)
        elif cmd == P.HEARTBEAT or cmd == P.HELLO:
            self._send(ident, P.pack(P.HEARTBEAT, {"id": "sink", "instance": self.instance}))
            self._flush_client(ident.decode("utf-8", "replace"))
        elif cmd == P.REQUEST:
            req = P.field(msg.header, "req", int, cmd)
            op = P.field(msg.header, "op", str, cmd)
            try:
                self._request(ident, req, op, msg.header)
            except (ProtocolError, KeyError, TypeError, ValueError) as exc:
                self._send(ident, P.pack(P.REPLY, {"req": req, "ok": False, "error": f"{op}: {exc}"}))
        else:
            raise ProtocolError(f"the sink does not take {cmd.decode()}")

    # -- the one place results are recorded and policies fire ---------------------------
    def _record(self, rows: list[ResultRow]) -> None:
        by_client: dict[str, list[ResultRow]] = {}
        now = time.monotonic()
        ttl = self.config.sink_result_ttl
        for r in rows:
            tid = r.task_id
            if tid in self.recorded:
                self.counters["duplicates_dropped"] += 1
                continue
            self.recorded[tid] = None
            if len(self.recorded) > DEDUP_MEMORY:
                self.recorded.popitem(last=False)
            self.counters["results"] += 1
            if self.policies:
                run_hooks(self.policies, "on_done", r.to_result(), tid)
            retain = r.retain if r.retain is not None else self.config.sink_retain
            if retain:
                self.retained[tid] = (r, now + ttl)
                heapq.heappush(self.expiry, (now + ttl, tid))
            by_client.setdefault(r.client, []).append(r)
        for client, batch in by_client.items():
            self._deliver(client, batch)

    def _deliver(self, client: str, batch: list[ResultRow]) -> None:
        q = self.undelivered.get(client)
        if q:  # keep order: older undelivered results first
            now = time.monotonic()
            q.extend((now, r) for r in batch)
            self._flush_client(client)
            return
        for i in range(0, len(batch), 2000):
            part = batch[i:i + 2000]
            if not self._send(client.encode(), P.pack_results(part)):
                now = time.monotonic()
                self.undelivered.setdefault(client, collections.deque()).extend(
                    (now, r) for r in batch[i:])
                self.counters["delivery_deferred"] += len(batch) - i
                return
            self.counters["delivered"] += len(part)

    def _flush_client(self, client: str) -> None:
        q = self.undelivered.get(client)
        while q:
            n = min(len(q), 2000)
            part = [q[i][1] for i in range(n)]
            if not self._send(client.encode(), P.pack_results(part)):
                return
            for _ in range(n):
                q.popleft()
            self.counters["delivered"] += n
        self.undelivered.pop(client, None)

    def _request(self, ident: bytes, req: int, op: str, h: dict) -> None:
        if op == "get_result":
            tid = P.field(h, "id", str, P.REQUEST)
            hit = self.retained.get(tid)
            if hit is None:
                self._send(ident, P.pack(P.REPLY, {"req": req, "ok": True, "data": None}))
            else:
                row = hit[0]
                if h.get("consume"):
                    self.retained.pop(tid, None)
                self._send(ident, P.pack(P.REPLY, {"req": req, "ok": True, "data": row.row}, [row.payload]))
        elif op == "stats":
            self._send(ident, P.pack(P.REPLY, {"req": req, "ok": True, "data": self.stats()}))
        else:
            raise ValueError(f"unknown operation {op!r}")

    def _tick(self, now: float) -> None:
        while self.expiry and self.expiry[0][0] <= now:
            _, tid = heapq.heappop(self.expiry)
            hit = self.retained.get(tid)
            if hit is not None and hit[1] <= now:
                del self.retained[tid]
                self.counters["expired"] += 1
        ttl = self.config.sink_result_ttl
        for client in list(self.undelivered):
            q = self.undelivered[client]
            while q and now - q[0][0] > ttl:
                q.popleft()
                self.counters["undelivered_expired"] += 1
            if q:
                self._flush_client(client)
            else:
                self.undelivered.pop(client, None)
        self.rate_samples.append((now, self.counters["results"]))

    def stats(self) -> dict:
        rate = 0.0
        if len(self.rate_samples) >= 2:
            (t0, a), (t1, b) = self.rate_samples[0], self.rate_samples[-1]
            rate = (b - a) / (t1 - t0) if t1 > t0 else 0.0
        return {
            "instance": self.instance,
            "host": HOST,
            "endpoints": self.endpoints,
            "retained": len(self.retained),
            "undelivered": sum(len(q) for q in self.undelivered.values()),
            "counters": dict(self.counters),
            "results_per_second": rate,
            "policies": [type(p).__name__ for p in self.policies],
        }
