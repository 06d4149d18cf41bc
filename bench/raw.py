"""The bare pyzmq ceiling, adapted from shared/peers/raw_pipeline_ceiling.py.

Throughput (:func:`pipeline`): the same shape as zq without any of its features —
a ventilator ROUTER in this process hands tasks by credit to worker processes
(DEALER), which run ``noop`` inline and PUSH msgpack'd results to a sink
process (PULL).  ``batch=1`` sends one task per message (compare with zq's
``submit`` loop), ``batch=256`` sends 256 per message (compare with
``map(chunksize=256)``).

Changes from the peer script: the sink binds a random port (no port clash),
the ROUTER has ``ROUTER_MANDATORY`` and credit stays at 500 < HWM 1000 (the
README's note: credit at the HWM silently dropped messages), the processes
are started once and reused across repeats, a warm-up round runs first, and
every loop is bounded by a deadline.

Latency (:func:`latency`): one task at a time through the four hops a zq task
takes (client -> ventilator -> worker -> sink -> client), each a Python process
that unpacks and repacks msgpack: the floor for zq's round trip.

Payloads (:func:`payload`): the same four hops, each task carrying a ``size``-byte
argument frame that the ventilator forwards without copying (``copy=False``) and
the worker replaces with its length: the MB/s ceiling for zq's payload figures.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import time
from typing import Any, Optional

import msgpack
import zmq

from .util import latency_summary, median

log = logging.getLogger("bench.raw")

CREDIT = 500  # per worker; well below the HWM (see module docstring)
_packb = msgpack.packb
_unpackb = msgpack.unpackb


def _noop(x: Any) -> Any:
    return x


def _worker(vent: str, sink: str, credit: int) -> None:
    ctx = zmq.Context()
    d = ctx.socket(zmq.DEALER)
    d.connect(vent)
    p = ctx.socket(zmq.PUSH)
    p.connect(sink)
    d.send(_packb(["ready", credit]))
    pc = time.perf_counter
    while True:
        msg = _unpackb(d.recv())
        if msg == "stop":
            break
        out = []
        for tid, args in msg:
            t0 = pc()
            r = _noop(args)
            t1 = pc()
            out.append((tid, 0, r, t0, t1))
        p.send(_packb(out))
        d.send(_packb(["ready", len(msg)]))
    p.close(linger=-1)
    d.close(linger=-1)
    ctx.term()


def _sink(ctrl: Any, done: Any) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.PULL)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    done.put(port)
    while True:
        n = ctrl.get()
        if n is None:
            break
        done.put("armed")
        got = 0
        res = {}
        while got < n:
            for item in _unpackb(s.recv()):
                res[item[0]] = item
                got += 1
        done.put(time.perf_counter())
    s.close(0)
    ctx.term()


class Pipeline:
    """Worker and sink processes started once; :meth:`run` times one round."""

    def __init__(self, workers: int) -> None:
        self.n_workers = workers
        self.mpctx = mp.get_context("spawn")
        self.ctx = zmq.Context()
        self.r = self.ctx.socket(zmq.ROUTER)
        self.r.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.r.setsockopt(zmq.LINGER, 0)
        vp = self.r.bind_to_random_port("tcp://127.0.0.1")
        self.ctrl = self.mpctx.Queue()
        self.done = self.mpctx.Queue()
        self.sink = self.mpctx.Process(target=_sink, args=(self.ctrl, self.done), daemon=True)
        self.sink.start()
        sp = self.done.get(timeout=60)
        self.ws = [self.mpctx.Process(target=_worker, args=(f"tcp://127.0.0.1:{vp}", f"tcp://127.0.0.1:{sp}",
                                                            CREDIT), daemon=True) for _ in range(workers)]
        for w in self.ws:
            w.start()
        self.credits: dict[bytes, int] = {}
        deadline = time.monotonic() + 60
        while len(self.credits) < workers:
            if not self.r.poll(int(max(0.0, deadline - time.monotonic()) * 1000)):
                raise TimeoutError("raw pipeline workers did not say ready")
            ident, m = self.r.recv_multipart()
            self.credits[ident] = _unpackb(m)[1]
        self.tid = 0

    def run(self, n: int, batch: int, timeout: float = 120.0) -> float:
        """Send ``n`` tasks; seconds from the first send to the sink holding all ``n``."""
        self.ctrl.put(n)
        assert self.done.get(timeout=30) == "armed"
        r, credits, idents = self.r, self.credits, list(self.credits)
        deadline = time.monotonic() + timeout
        t0 = time.perf_counter()
        sent = 0
        tid = self.tid
        while sent < n:
            for ident in idents:
                c = credits[ident]
                while c > 0 and sent < n:
                    k = min(batch, c, n - sent)
                    r.send_multipart([ident, _packb([(tid + i, (1, 2)) for i in range(k)])])
                    tid += k
                    sent += k
                    c -= k
                credits[ident] = c
            if sent < n:
                if not r.poll(int(max(0.0, deadline - time.monotonic()) * 1000)):
                    raise TimeoutError(f"raw pipeline stalled after {sent}/{n} tasks")
                ident, m = r.recv_multipart()
                credits[ident] += _unpackb(m)[1]
                while r.poll(0):
                    ident, m = r.recv_multipart()
                    credits[ident] += _unpackb(m)[1]
        self.tid = tid
        t1 = self.done.get(timeout=max(1.0, deadline - time.monotonic()))
        # collect the credit the workers returned for the tail of this round
        while r.poll(50):
            ident, m = r.recv_multipart()
            credits[ident] += _unpackb(m)[1]
        return t1 - t0

    def close(self) -> None:
        for ident in self.credits:
            try:
                self.r.send_multipart([ident, _packb("stop")])
            except zmq.ZMQError:
                pass
        for w in self.ws:
            w.join(10)
            if w.is_alive():
                w.kill()
        self.ctrl.put(None)
        self.sink.join(10)
        if self.sink.is_alive():
            self.sink.kill()
        self.r.close(0)
        self.ctx.term()


def pipeline(n: int, batch: int, workers: int = 1, reps: int = 1, warmup: int = 2000,
             timeout: float = 120.0) -> dict:
    """tasks/s of the bare pipeline, median of ``reps`` rounds after a warm-up round."""
    p = Pipeline(workers)
    try:
        p.run(min(warmup, n), batch, timeout)
        samples = [n / p.run(n, batch, timeout) for _ in range(max(1, reps))]
    finally:
        p.close()
    samples_sorted = sorted(samples)
    return {"tasks_per_s": samples_sorted[(len(samples) - 1) // 2] if len(samples) % 2
            else (samples_sorted[len(samples) // 2 - 1] + samples_sorted[len(samples) // 2]) / 2,
            "samples": samples, "n": n, "batch": batch, "workers": workers, "credit": CREDIT}


# ----------------------------------------------------------------------------- latency floor


def _hop(in_ep: str, in_bind: bool, out_ep: Optional[str], out_bind: bool, ports: Any,
         name: str, work: bool, zero_copy: bool) -> None:
    """PULL -> (unpack, maybe run noop, repack) -> PUSH; reports the ports it bound.

    A message is a msgpack frame, then optionally a payload frame: forwarded as it
    is (zero-copy with ``zero_copy``, which costs small messages a little), or, by the
    worker, replaced by its length."""
    ctx = zmq.Context()
    s_in = ctx.socket(zmq.PULL)
    s_out = ctx.socket(zmq.PUSH)
    bound = {}
    if in_bind:
        bound["in"] = s_in.bind_to_random_port("tcp://127.0.0.1")
    else:
        s_in.connect(in_ep)
    if out_bind:
        bound["out"] = s_out.bind_to_random_port("tcp://127.0.0.1")
    elif out_ep:
        s_out.connect(out_ep)
    ports.put((name, bound))
    while True:
        frames = s_in.recv_multipart(copy=not zero_copy)
        obj = _unpackb(frames[0])
        if obj == "stop":
            s_out.send(_packb("stop"))
            break
        rest = frames[1:]
        if work:
            tid, args = obj
            t0 = time.perf_counter()
            r = _noop(args) if not rest else len(rest[0])
            obj = (tid, 0, r, t0, time.perf_counter())
            rest = []
        s_out.send_multipart([_packb(obj), *rest], copy=not zero_copy)
    s_in.close(0)
    s_out.close(linger=1000)
    ctx.term()


class Chain:
    """client (this process) -> ventilator -> worker -> sink -> client, each hop a process."""

    def __init__(self, zero_copy: bool = False) -> None:
        mpctx = mp.get_context("spawn")
        self.ctx = zmq.Context()
        self.back = self.ctx.socket(zmq.PULL)
        back_port = self.back.bind_to_random_port("tcp://127.0.0.1")
        ports = mpctx.Queue()
        # ventilator binds both sides; the sink binds its input and connects back to us
        vent = mpctx.Process(target=_hop, args=("", True, None, True, ports, "vent", False, zero_copy), daemon=True)
        sink = mpctx.Process(target=_hop, args=("", True, f"tcp://127.0.0.1:{back_port}", False, ports,
                                                "sink", False, zero_copy), daemon=True)
        self.procs = [vent, sink]
        vent.start()
        sink.start()
        got = dict(ports.get(timeout=60) for _ in range(2))
        worker = mpctx.Process(target=_hop, args=(f"tcp://127.0.0.1:{got['vent']['out']}", False,
                                                  f"tcp://127.0.0.1:{got['sink']['in']}", False, ports,
                                                  "worker", True, zero_copy), daemon=True)
        self.procs.append(worker)
        worker.start()
        ports.get(timeout=60)
        self.out = self.ctx.socket(zmq.PUSH)
        self.out.connect(f"tcp://127.0.0.1:{got['vent']['in']}")

    def send(self, i: int, payload: Any = None) -> None:
        if payload is None:
            self.out.send(_packb((i, (1, 2))))
        else:
            self.out.send_multipart([_packb((i, None)), payload], copy=False)

    def recv(self, timeout: float = 10.0) -> Any:
        if not self.back.poll(int(timeout * 1000)):
            raise TimeoutError("raw chain did not answer")
        return _unpackb(self.back.recv())

    def close(self) -> None:
        try:
            self.out.send(_packb("stop"))
            self.back.poll(5000)
        finally:
            for p in self.procs:
                p.join(5)
                if p.is_alive():
                    p.kill()
            self.out.close(0)
            self.back.close(0)
            self.ctx.term()


def latency(n: int, warmup: int = 50) -> dict:
    """One task at a time: client -> ventilator -> worker -> sink -> client (4 TCP hops)."""
    chain = Chain()
    samples = []
    try:
        for i in range(warmup + n):
            t0 = time.perf_counter()
            chain.send(i)
            chain.recv()
            if i >= warmup:
                samples.append(time.perf_counter() - t0)
    finally:
        chain.close()
    return {**latency_summary(samples), "hops": 4}


def payload(sizes: dict[int, int], reps: int = 1, timeout: float = 120.0) -> dict:
    """MB/s through the 4-hop chain: for each ``size: n``, ``n`` tasks sent at once, each
    carrying ``size`` bytes to the worker (which answers with the length); the median of
    ``reps`` rounds after a warm-up task.  ``{"rows": [{size, n, mb_per_s, tasks_per_s}]}``"""
    chain = Chain(zero_copy=True)
    out = []
    try:
        for size, n in sizes.items():
            data = (b"\x5a" * min(size, 1 << 16)) * (size // (1 << 16) + 1)
            data = data[:size]
            chain.send(0, data)
            chain.recv(timeout)
            rates = []
            for _ in range(max(1, reps)):
                t0 = time.perf_counter()
                for i in range(n):
                    chain.send(i, data)
                for _ in range(n):
                    got = chain.recv(timeout)
                    if got[2] != size:
                        raise RuntimeError(f"raw chain returned {got[2]} for {size} bytes")
                rates.append(n * size / (time.perf_counter() - t0))
            rate = median(rates)
            out.append({"size": size, "n": n, "mb_per_s": rate / 1e6, "tasks_per_s": rate / size,
                        "samples_mb_per_s": [r / 1e6 for r in rates]})
    finally:
        chain.close()
    return {"rows": out}
