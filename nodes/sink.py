"""The sink: records each task's result once, fires ``on_done``, delivers, retains.

    workers, ventilator (DEALER) ──RESULT──▶ ┐
                                 ◀──ACK────  │ [ROUTER] one thread (Sink.loop)
    clients (DEALER) ──HELLO/REQUEST/HB──▶   │
                     ◀──RESULT/REPLY────     ┘

The ROUTER is a ``RouterEndpoint`` (``nodes/endpoint.py``: budgeted drains, ERROR
replies to bad input, heartbeats to every peer, refused handshakes, each sender's
ZAP role).  Policy firing and recording happen in one place, ``_record``.  Results are
routed by their header row alone (the client id travels in it); the pickled
value is never unpickled here unless an ``on_done`` policy reads ``.value``.

Memory: a result is kept only until its client has acknowledged it (bounded by
``result_ttl``; sent again when the client connects anew before its ACK: a delivery can
go down with a dying connection) or when it is retained (until its TTL).  The set of task ids
already recorded, used to drop duplicates, is bounded (``DEDUP_MEMORY``).

With ``sink.journal`` (``zq sink --journal FILE``) the recorded ids, which
client has not acknowledged each result yet, and retained results are also
kept in SQLite (``SinkJournal``).  Each loop turn then ends in ``_settle``:
commit, then fire that turn's ``on_done`` hooks, deliver, and ACK senders, so
a sender forgets a result only once the sink's copy is durable and a hook never
fires twice for one task id, even across a SIGKILL.
"""

from __future__ import annotations

import collections
import heapq
import logging
import time
from typing import Any, Optional, Sequence

import zmq

from zq import protocol as P
from zq._sockets import check_bind_allowed
from zq.config import Config
from zq.errors import ProtocolError
from zq.serialize import ArgFrames, args_blob, args_size
from zq.policy import Policy, run_hooks
from zq.protocol import ResultRow

from .common import HOST, Node
from .endpoint import Peers, RouterEndpoint
from .node_metrics import sink_snapshot
from .sink_journal import SinkJournal

log = logging.getLogger("zq.sink")

DEDUP_MEMORY = 200_000


def _size(r: ResultRow) -> int:
    """Bytes of a result's value (what retaining it costs, roughly)."""
    return args_size(r.payload) if r.payload is not None else 0


class Sink(Node):
    role = "sink"

    def __init__(self, config: Config, policies: Sequence[Policy] = (),
                 metrics: Optional[tuple[str, int]] = None) -> None:
        super().__init__(config)
        self.metrics_at = metrics  # (host, port) of --metrics-port (nodes/node_metrics.py)
        self.metrics: Optional[Any] = None
        self.policies = list(policies)
        self.recorded: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.retained: dict[str, tuple[ResultRow, float]] = {}
        self.retained_bytes = 0  # the values' bytes of what is retained (stats, metrics)
        self.expiry: list[tuple[float, str]] = []
        self.undelivered: dict[str, collections.deque[tuple[float, ResultRow]]] = {}
        # task id -> (client id, senders to ACK once it is safe, monotonic time recorded, the
        # result: sent again if its client connects anew before it ACKed, see _on_hello)
        self.awaiting: dict[str, tuple[str, set[bytes], float, Optional[ResultRow]]] = {}
        self._acks: dict[bytes, list[str]] = {}
        # task id -> {client that wants its result too: when it last said so (WATCH)}
        self.watchers: dict[str, dict[str, float]] = {}
        self.started_mono = time.monotonic()
        self._next_stale_scan = 0.0
        self.peers = Peers(config.heartbeat_interval, max(60.0, 10 * config.heartbeat_timeout))
        self.rate_samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=20)
        self.journal: Optional[SinkJournal] = None
        # with a journal: what this turn recorded waits for the commit (see _settle)
        self._due_hooks: list[ResultRow] = []
        self._due_delivery: dict[str, list[ResultRow]] = {}

    def setup(self) -> None:
        assert self.ctx is not None
        check_bind_allowed(self.config.sink_endpoint, secured=self.keys is not None,
                           insecure=self.config.insecure)
        if self.config.sink_journal:
            self._resume(self.config.sink_journal)
        self.start_auth({"sink": ("clients", "workers", "ventilator")})
        if self.config.sink_watch_ttl < 2 * P.WATCH_RENEW:
            log.warning("sink.watch_ttl %gs is below twice the clients' renewal interval (%gs): "
                        "a waiting client's watch may lapse between renewals",
                        self.config.sink_watch_ttl, P.WATCH_RENEW)
        self.sock = RouterEndpoint(self.ctx, self.config.sink_endpoint, name="endpoint", domain="sink",
                                   max_message=self.config.max_message_size, counters=self.counters,
                                   on_bad=self.bad_message, keys=self.keys, peers=self.peers,
                                   heartbeat=self._heartbeat, roles=True, count_undeliverable=False)
        self.endpoints = {"endpoint": self.sock.endpoint}
        if self.metrics_at is not None:
            from .node_metrics import MetricsServer

            self.metrics = MetricsServer("sink", *self.metrics_at)
            self.endpoints["metrics"] = self.metrics.url
        self.poller = zmq.Poller()
        self.sock.register(self.poller)
        self.poller.register(self._waker.fileno(), zmq.POLLIN)

    def _resume(self, path: str) -> None:
        """Open the journal and take back what it holds: the de-duplication set, retained
        results (with the time left to live) and who has not acknowledged which result."""
        self.journal = journal = SinkJournal(path)
        now, wall = time.monotonic(), time.time()
        n = 0
        for s in journal.load(wall):
            # a pending client on an id whose value we lack: a copy arriving is delivered again
            self.recorded[s.task_id] = s.client or None
            if s.row is not None and s.expires is not None:
                until = now + (s.expires - wall)
                self.retained[s.task_id] = (s.row, until)
                self.retained_bytes += _size(s.row)
                heapq.heappush(self.expiry, (until, s.task_id))
                if s.client:  # its client may not have it: sent when it comes back
                    self.recorded[s.task_id] = None
                    self.awaiting[s.task_id] = (s.client, set(), now, s.row)
                    self.undelivered.setdefault(s.client, collections.deque()).append((now, s.row))
            n += 1
        while len(self.recorded) > DEDUP_MEMORY:
            self._forget_oldest()
        journal.commit()
        log.info("journal %s: %d recorded result(s), %d retained, %d for clients to receive",
                 path, n, len(self.retained), sum(len(q) for q in self.undelivered.values()))

    def close(self) -> None:
        if getattr(self, "sock", None) is not None:
            self.sock.close()
        if self.journal is not None:
            self.journal.close()
        if self.metrics is not None:
            self.metrics.close()

    def loop(self) -> None:
        interval = self.config.heartbeat_interval
        next_tick = 0.0
        while not self.stopping:
            events = dict(self.poller.poll(int(interval * 500) or 1))
            if self.sock.handle(events, self._on_message):
                self._settle()
            if self._waker.fileno() in events:
                self._waker.drain()
            now = time.monotonic()
            if now >= next_tick:
                self._tick(now)
                next_tick = now + interval / 2

    def _send(self, ident: bytes, frames: list) -> bool:
        return self.sock.send(ident, frames)

    def _heartbeat(self) -> list:
        return P.pack(P.HEARTBEAT, {"id": "sink", "instance": self.instance,
                                    "max": self.config.max_message_size})

    def _on_message(self, ident: bytes, msg: P.Message) -> None:
        cmd = msg.command  # (the endpoint recorded the peer in self.peers)
        if cmd == P.RESULT:
            role = self.sock.role
            if self.keys is not None and role not in ("worker", "ventilator"):
                raise ProtocolError(f"a {role or 'unknown'} key may not post results")
            self._record(ident, P.unpack_results(msg))
        elif cmd == P.ACK:  # a client received these results: release their senders
            ids = P.str_list(msg.header, "ids", cmd)
            for tid in ids:
                self._release(tid, by_client=ident)
            if self.journal is not None:  # (a stale mark on an unretained id costs a resend
                client = ident.decode("utf-8", "replace")  # at most one duplicate delivery)
                for tid in ids:
                    if tid in self.retained:
                        self.journal.acked(tid, client)
        elif cmd == P.WATCH:  # send me these results too: now if retained, else when recorded
            client = ident.decode("utf-8", "replace")
            for tid in P.str_list(msg.header, "ids", cmd):
                hit = self.retained.get(tid)
                if hit is not None:
                    self._deliver(client, [hit[0]])
                elif tid not in self.recorded:
                    self.watchers.setdefault(tid, {})[client] = time.monotonic()
                else:  # recorded, delivered, not retained: nothing left to send
                    self._send(ident, P.gone_message(tid))
        elif cmd == P.HEARTBEAT:
            self._flush_client(ident.decode("utf-8", "replace"))
        elif cmd == P.HELLO:
            self._on_hello(ident.decode("utf-8", "replace"))
        elif cmd == P.REQUEST:
            req = P.field(msg.header, "req", int, cmd)
            op = P.field(msg.header, "op", str, cmd)
            try:
                self._request(ident, req, op, msg.header)
            except (ProtocolError, KeyError, TypeError, ValueError) as exc:
                self._send(ident, P.pack(P.REPLY, {"req": req, "ok": False, "error": f"{op}: {exc}"}))
        else:
            raise ProtocolError(f"the sink does not take {cmd.decode()}")

    # -- acknowledgements -------------------------------------------------------------
    # A worker (or the ventilator) keeps a result until the sink ACKs it.  The sink
    # ACKs only once the result is safe without that copy: the client acknowledged
    # it, or it is retained here (client gone), or it expired undelivered.  So a
    # sink killed between receiving and delivering loses nothing: the sender
    # resends to the next sink.
    def _ack_later(self, r: ResultRow, sender: bytes) -> None:
        self.awaiting[r.task_id] = (r.client, {sender}, time.monotonic(), r if r.client else None)

    def _on_hello(self, client: str) -> None:
        """A client connected (again): what was sent to it and not acknowledged may have gone
        down with its old connection (a ROUTER routes to the old pipe until it learns of
        the new one), so it is sent again, then whatever waits for it.  A client takes a
        result twice without harm; its senders hold their copies until its ACK."""
        again = [row for owner, _, _, row in self.awaiting.values() if owner == client and row is not None]
        queued = {r.task_id for _, r in self.undelivered.get(client, ())}
        again = [r for r in again if r.task_id not in queued]
        if again:
            self.counters["redelivered"] += len(again)
            self._deliver(client, again)
        else:
            self._flush_client(client)

    def _release(self, tid: str, by_client: Optional[bytes] = None) -> None:
        """ACK ``tid`` to everyone who sent it; ``by_client``: only if it is the task's client."""
        entry = self.awaiting.get(tid)
        if entry is None or (by_client is not None and by_client.decode("utf-8", "replace") != entry[0]):
            return
        del self.awaiting[tid]
        for sender in entry[1]:
            self._acks.setdefault(sender, []).append(tid)

    def _settle(self) -> None:
        """End of a loop turn.  With a journal: commit what the turn recorded, then fire
        its hooks, deliver it, and only then ACK senders (a sender's copy is given up
        only for a durable one).  Without: send the turn's ACKs."""
        if self.journal is not None:
            self.journal.commit()
            if self._due_hooks:
                hooks, self._due_hooks = self._due_hooks, []
                for r in hooks:
                    run_hooks(self.policies, "on_done", r.to_result(), r.task_id)
            if self._due_delivery:
                due, self._due_delivery = self._due_delivery, {}
                for client, batch in due.items():
                    self._deliver(client, batch)
        self._flush_acks()

    def _give_up(self, tid: str, client: str) -> None:
        """Its client will not take it: release its senders (and say so in the journal)."""
        self._release(tid)
        if self.journal is not None:
            self.journal.acked(tid, client)

    def _unretain(self, tid: str) -> None:
        hit = self.retained.pop(tid, None)
        if hit is not None:
            self.retained_bytes -= _size(hit[0])
        if hit is not None and self.journal is not None:
            if tid in self.recorded:
                self.journal.unretain(tid)
            else:
                self.journal.forget(tid)

    def _forget_oldest(self) -> None:
        old, _ = self.recorded.popitem(last=False)
        if self.journal is not None and old not in self.retained:
            self.journal.forget(old)

    def _flush_acks(self) -> None:
        for sender, ids in self._acks.items():
            for i in range(0, len(ids), 20000):
                self._send(sender, P.pack(P.ACK, {"ids": ids[i:i + 20000]}))
        self._acks.clear()

    # -- the one place results are recorded and policies fire ---------------------------
    def _record(self, sender: bytes, rows: list[ResultRow]) -> None:
        journal = self.journal
        # with a journal, hooks and deliveries wait for this turn's commit (_settle)
        by_client: dict[str, list[ResultRow]] = {} if journal is None else self._due_delivery
        now = time.monotonic()
        ttl = self.config.sink_result_ttl
        for r in rows:
            tid = r.task_id
            if tid in self.recorded:
                self.counters["duplicates_dropped"] += 1
                if tid in self.awaiting:
                    self.awaiting[tid][1].add(sender)  # still on its way: ACK both senders later
                elif self.recorded[tid]:  # recorded before a restart, its client's receipt unknown
                    client = self.recorded[tid]
                    self.recorded[tid] = None
                    self.awaiting[tid] = (client, {sender}, now, r)
                    by_client.setdefault(client, []).append(r)  # again, without recording it again
                else:
                    self._acks.setdefault(sender, []).append(tid)
                continue
            self.recorded[tid] = None
            if len(self.recorded) > DEDUP_MEMORY:
                self._forget_oldest()
            self.counters["results"] += 1
            if self.policies:
                if journal is None:
                    run_hooks(self.policies, "on_done", r.to_result(), tid)
                else:
                    self._due_hooks.append(r)
            retain = r.retain if r.retain is not None else self.config.sink_retain
            watchers = self.watchers.pop(tid, None)
            keep = 0.0
            if retain or watchers:
                keep = r.ttl or ttl
                self.retained[tid] = (r, now + keep)
                self.retained_bytes += _size(r)
                heapq.heappush(self.expiry, (now + keep, tid))
            if journal is not None:
                journal.record(r, r.client, time.time() + keep if keep else None)
            for w in watchers or ():
                if w != r.client:
                    by_client.setdefault(w, []).append(r)
            self._ack_later(r, sender)
            if r.client:
                by_client.setdefault(r.client, []).append(r)
            else:  # nobody submitted it (a schedule's slot): recorded (and retained) is all
                self._release(tid)
        if journal is None:
            for client, batch in by_client.items():
                self._deliver(client, batch)

    def _deliver(self, client: str, batch: list[ResultRow]) -> None:
        q = self.undelivered.get(client)
        now = time.monotonic()
        if q is None:
            q = self.undelivered[client] = collections.deque()
        q.extend((now, r) for r in batch)
        self._flush_client(client)

    def _flush_client(self, client: str) -> None:
        """Send a client what waits for it, oldest first; keep the rest if it is away."""
        q = self.undelivered.get(client)
        limit = P.batch_limit(self.config.max_message_size)
        while q:
            n = P.take_batch(q, limit, 2000, size=lambda item: args_size(item[1].payload))
            part = [q[i][1] for i in range(n)]
            if not self._send(client.encode(), P.pack_results(part)):
                self._undeliverable(client, q)
                return
            for _ in range(n):
                q.popleft()
            self.counters["delivered"] += n
        self.undelivered.pop(client, None)

    def _undeliverable(self, client: str, q: collections.deque) -> None:
        """The client is not connected (or not reading): a retained result in the journal is
        safe here, so its senders may forget it.  Without a journal they keep their copies
        until the client has it: a sink killed before the client comes back would lose it."""
        if self.journal is None:
            return
        for _, r in q:
            if r.task_id in self.retained:
                self._release(r.task_id)

    def _request(self, ident: bytes, req: int, op: str, h: dict) -> None:
        if op == "get_result":
            tid = P.field(h, "id", str, P.REQUEST)
            hit = self.retained.get(tid)
            if hit is None:
                self._send(ident, P.pack(P.REPLY, {"req": req, "ok": True, "data": None}))
            else:
                row = hit[0]
                if h.get("consume"):
                    self._unretain(tid)
                    if self.journal is not None:
                        self.journal.commit()  # taken once: never back after a restart
                value = row.payload if type(row.payload) is not ArgFrames else args_blob(row.payload)
                self._send(ident, P.pack(P.REPLY, {"req": req, "ok": True, "data": row.row}, [value]))
        elif op == "stats":
            self._send(ident, P.pack(P.REPLY, {"req": req, "ok": True, "data": self.stats()}))
        else:
            raise ValueError(f"unknown operation {op!r}")

    def _tick(self, now: float) -> None:
        self.sock.heartbeat_peers(now)
        while self.expiry and self.expiry[0][0] <= now:
            _, tid = heapq.heappop(self.expiry)
            hit = self.retained.get(tid)
            if hit is not None and hit[1] <= now:
                self._unretain(tid)
                self.counters["expired"] += 1
        ttl = self.config.sink_result_ttl
        for client in list(self.undelivered):
            q = self.undelivered[client]
            # a client gone for good (silent past Peers.forget_after) will not take them:
            # what is not retained is dropped now rather than held for the whole TTL
            gone = client.encode() not in self.peers.last_seen and now - self.started_mono > self.peers.forget_after
            while q and (gone or now - q[0][0] > ttl):
                _, r = q.popleft()
                self._give_up(r.task_id, client)  # its sender may forget it too
                self.counters["undelivered_expired"] += 1
            if q:
                self._flush_client(client)
            else:
                self.undelivered.pop(client, None)
        # a client that received a result but never acknowledged it (it died): give up
        # after the result TTL so that neither we nor its sender hold it forever
        if now >= self._next_stale_scan:
            self._next_stale_scan = now + 5.0
            for tid, client in [(t, c) for t, (c, _, since, _) in self.awaiting.items() if now - since > ttl]:
                self._give_up(tid, client)
            self._expire_watches(now)
        self._settle()
        self.rate_samples.append((now, self.counters["results"]))
        if self.metrics is not None:
            self.metrics.publish(sink_snapshot(self))

    def _expire_watches(self, now: float) -> None:
        """Forget watches not renewed within ``watch_ttl`` (their client is gone, or the id
        will never finish): interest in results nobody may read must not pile up."""
        cutoff = now - self.config.sink_watch_ttl
        for tid in [t for t, w in self.watchers.items() if min(w.values()) < cutoff]:
            w = self.watchers[tid]
            for client in [c for c, seen in w.items() if seen < cutoff]:
                del w[client]
                self.counters["watches_expired"] += 1
            if not w:
                del self.watchers[tid]

    def stats(self) -> dict:
        rate = 0.0
        if len(self.rate_samples) >= 2:
            (t0, a), (t1, b) = self.rate_samples[0], self.rate_samples[-1]
            rate = (b - a) / (t1 - t0) if t1 > t0 else 0.0
        return {
            "instance": self.instance,
            "host": HOST,
            "endpoints": self.endpoints,
            "secured": self.keys is not None,
            "journal": self.config.sink_journal or None,
            "retained": len(self.retained),
            "retained_bytes": self.retained_bytes,
            "undelivered": sum(len(q) for q in self.undelivered.values()),
            "awaiting_ack": len(self.awaiting),
            "watched": len(self.watchers),
            "counters": dict(self.counters),
            "results_per_second": rate,
            "policies": [type(p).__name__ for p in self.policies],
        }
