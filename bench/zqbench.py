"""zq measurements against a real local cluster (:class:`nodes.local.LocalCluster`).

Every measurement:

* runs against a cluster that is already up and warmed (functions shipped to the
  workers, sockets connected) -- start-up is never timed;
* is bounded by a deadline and reports ``{"error": ...}`` instead of hanging;
* also reports the CPU seconds each process spent (client caller thread, client IO
  thread, ventilator, sink, workers), per task and as % of the wall time, which
  says which process bounds the figure.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import wait
from typing import Any, Optional

import zq
from nodes.local import LocalCluster

from .util import CpuMeter, Deadline, latency_summary, rss_bytes
from .workloads import nbytes, noop

log = logging.getLogger("bench.zq")


class Cluster:
    """A LocalCluster plus a connected client; ``with Cluster(...) as c: c.client.submit(...)``."""

    def __init__(self, workers: int = 1, executor: str = "thread", concurrency: int = 0,
                 env: Optional[dict[str, str]] = None, worker_args: tuple = ()) -> None:
        self.local = LocalCluster(workers=workers, executor=executor, concurrency=concurrency,
                                  env=env, worker_args=list(worker_args))
        self.executor = executor
        self.n_workers = workers
        self.client: Any = None

    def __enter__(self) -> "Cluster":
        eps = self.local.start()
        cfg = zq.load_config(None, {"ventilator_clients": eps["clients"], "sink_endpoint": eps["sink"]})
        try:
            self.client = zq.Client(cfg)
        except BaseException:
            self.local.stop(kill=True)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.shutdown(wait=False, cancel_futures=False)
            except Exception as e:  # pragma: no cover - best effort
                log.warning("client shutdown: %s", e)
            self.client = None
        codes = self.local.stop(timeout=20)
        bad = {k: v for k, v in codes.items() if v not in (0, None)}
        if bad:
            log.debug("node exit codes: %s", codes)

    # -- pids / meters ------------------------------------------------------------------
    def pids(self) -> dict[str, list[int]]:
        lc = self.local
        return {
            "ventilator": [lc.ventilator.proc.pid] if lc.ventilator and lc.ventilator.proc else [],
            "sink": [lc.sink.proc.pid] if lc.sink and lc.sink.proc else [],
            "workers": [w.proc.pid for w in lc.workers if w.proc is not None],
        }

    def meter(self) -> CpuMeter:
        io = getattr(getattr(self.client, "_thread", None), "native_id", None)
        return CpuMeter(self.pids(), io)

    def warm(self, n: int = 200, timeout: float = 60.0) -> None:
        fs = [self.client.submit(noop, i) for i in range(n)]
        done, pending = wait(fs, timeout=timeout)
        if pending:
            raise TimeoutError(f"warm-up: {len(pending)}/{n} tasks unfinished after {timeout:.0f}s")
        list(self.client.map(noop, range(2 * 256), chunksize=256, timeout=timeout))


def _failures(fs: list) -> int:
    return sum(1 for f in fs if f.exception() is not None)


def submit_loop(c: Cluster, n: int, timeout: float) -> dict:
    """``n`` × ``submit(noop, i)``; from the first submit until every future is done."""
    client = c.client
    meter = c.meter().start()
    t0 = time.perf_counter()
    fs = [client.submit(noop, i) for i in range(n)]
    t_sub = time.perf_counter()
    done, pending = wait(fs, timeout=timeout)
    t1 = time.perf_counter()
    cpu = meter.stop(n)
    if pending:
        for f in pending:
            f.cancel()
        return {"error": f"timed out after {timeout:.0f}s with {len(done)}/{n} done", "n": n}
    bad = _failures(fs)
    out = {"tasks_per_s": n / (t1 - t0), "submit_only_tasks_per_s": n / (t_sub - t0), "n": n,
           "seconds": t1 - t0, "cpu": cpu}
    if bad:
        out["error"] = f"{bad} task(s) failed: {fs[0].exception()!r}"
    elif fs[-1].result() != n - 1:
        out["error"] = "wrong result"
    return out


def map_chunked(c: Cluster, n: int, chunksize: int, timeout: float) -> dict:
    """``list(map(noop, range(n), chunksize=chunksize))``."""
    meter = c.meter().start()
    t0 = time.perf_counter()
    out = list(c.client.map(noop, range(n), chunksize=chunksize, timeout=timeout))
    t1 = time.perf_counter()
    cpu = meter.stop(n)
    res = {"tasks_per_s": n / (t1 - t0), "n": n, "chunksize": chunksize, "seconds": t1 - t0,
           "zq_tasks": -(-n // chunksize), "cpu": cpu}
    if len(out) != n or out[-1] != n - 1:
        res["error"] = "wrong result"
    return res


def round_trip(c: Cluster, n: int, warmup: int, timeout: float) -> dict:
    """One task at a time: ``submit(noop, 1).result()``, p50/p99 over ``n`` samples.

    Also splits the mean into: submit -> worker start, run, worker finish -> future
    done (from the envelope's wall-clock stamps; one host, so one clock).
    """
    client = c.client
    deadline = Deadline(timeout)
    for _ in range(warmup):
        client.submit(noop, 1).result(timeout=max(0.1, deadline.left()))
    samples = []
    to_start = []
    run = []
    to_client = []
    pc = time.perf_counter
    for _ in range(n):
        if deadline.expired():
            break
        t0 = pc()
        f = client.submit(noop, 1)
        f.result(timeout=max(0.1, deadline.left()))
        t1 = pc()
        now = time.time()
        samples.append(t1 - t0)
        env = f.envelope
        if env is not None and env.started_at:
            to_start.append(env.started_at - env.submitted_at)
            run.append(env.finished_at - env.started_at)
            to_client.append(now - env.finished_at)
    out = latency_summary(samples)
    if to_start:
        k = len(to_start)
        out["breakdown_mean_us"] = {
            "submit_to_worker_start": 1e6 * sum(to_start) / k,
            "run": 1e6 * sum(run) / k,
            "worker_finish_to_future": 1e6 * sum(to_client) / k,
        }
    if len(samples) < n:
        out["error"] = f"deadline: only {len(samples)}/{n} samples"
    return out


def payload(c: Cluster, size: int, kind: str, n: int, timeout: float) -> dict:
    """``n`` tasks each carrying a ``size``-byte argument of ``kind``; the task returns len()."""
    raw = os.urandom(min(size, 1 << 16)) * (size // (1 << 16) + 1)
    raw = raw[:size]
    if kind == "bytes":
        arg: Any = raw
    elif kind == "bytearray":
        arg = bytearray(raw)
    elif kind == "memoryview":
        arg = memoryview(bytearray(raw))
    else:
        raise ValueError(kind)
    client = c.client
    try:  # warm-up (and the error, if this kind cannot be sent)
        client.submit(nbytes, arg).result(timeout=timeout)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "size": size, "kind": kind, "n": n}
    meter = c.meter().start()
    t0 = time.perf_counter()
    fs = [client.submit(nbytes, arg) for _ in range(n)]
    done, pending = wait(fs, timeout=timeout)
    t1 = time.perf_counter()
    cpu = meter.stop(n)
    if pending:
        for f in pending:
            f.cancel()
        return {"error": f"timed out after {timeout:.0f}s with {len(done)}/{n} done", "size": size,
                "kind": kind, "n": n}
    res = {"mb_per_s": n * size / (t1 - t0) / 1e6, "tasks_per_s": n / (t1 - t0), "size": size, "kind": kind,
           "n": n, "seconds": t1 - t0, "cpu": cpu}
    bad = _failures(fs)
    if bad:
        res["error"] = f"{bad} task(s) failed: {next(f.exception() for f in fs if f.exception())!r}"
    elif fs[-1].result() != size:
        res["error"] = "wrong result"
    return res


# ----------------------------------------------------------------------------- memory


def memory(n: int, drain_workers: int, drain_concurrency: int, timeout: float, progress: Any = None,
           batch: int = 50_000) -> dict:
    """Ventilator and sink RSS with ``n`` no-op tasks queued (no worker yet), then drained.

    The cluster starts with no workers; ``n`` tasks are submitted and the ventilator
    is asked for its counters until it holds them all (RSS "queued"); then
    ``drain_workers`` workers (``--concurrency drain_concurrency``) join and run them
    all (RSS "drained").  Bytes per queued task = (queued - idle) / n.
    """
    c = Cluster(workers=0, executor="thread")
    with c:
        lc = c.local
        vpid, spid = lc.ventilator.proc.pid, lc.sink.proc.pid
        client = c.client
        # warm the client side (pickled function cache, first batch) without workers: cancel
        f = client.submit(noop, 0)
        f.cancel()
        time.sleep(0.2)  # let RSS settle after start-up; not a synchronisation
        idle = {"ventilator": rss_bytes(vpid), "sink": rss_bytes(spid), "client": rss_bytes(os.getpid())}
        deadline = Deadline(timeout)
        t0 = time.perf_counter()
        fs = []
        for i in range(n):
            fs.append(client.submit(noop, i))
            if progress is not None and i and i % batch == 0:
                progress.note(f"memory: submitted {i:,}/{n:,}")
        t_sub = time.perf_counter()
        held = 0
        while not deadline.expired():
            held = client.stats()["ventilator"]["counters"].get("submitted", 0)
            if progress is not None:
                progress.note(f"memory: ventilator holds {held:,}/{n:,}")
            if held >= n:
                break
            time.sleep(0.5)  # polling the ventilator's counter
        t_held = time.perf_counter()
        queued = {"ventilator": rss_bytes(vpid), "sink": rss_bytes(spid), "client": rss_bytes(os.getpid())}
        out: dict[str, Any] = {
            "n": n, "rss_idle": idle, "rss_queued": queued,
            "submit_s": t_sub - t0, "ingest_s": t_held - t0,
            "submit_tasks_per_s": n / (t_sub - t0) if t_sub > t0 else None,
        }
        if held < n:
            out["error"] = f"ventilator held only {held}/{n} tasks before the deadline"
            for f in fs:
                f.cancel()
            return out
        # drain: start workers now
        t1 = time.perf_counter()
        for _ in range(drain_workers):
            lc.add_worker(extra=["--concurrency", str(drain_concurrency)], wait=True)
        remaining = list(fs)
        while remaining and not deadline.expired():
            done, pending = wait(remaining, timeout=min(2.0, deadline.left()))
            remaining = list(pending)
            if progress is not None:
                progress.note(f"memory: drained {n - len(remaining):,}/{n:,}")
        t2 = time.perf_counter()
        drained = {"ventilator": rss_bytes(vpid), "sink": rss_bytes(spid), "client": rss_bytes(os.getpid())}
        out["rss_drained"] = drained
        out["drain_s"] = t2 - t1
        out["drain_tasks_per_s"] = (n - len(remaining)) / (t2 - t1)
        out["drain_workers"] = drain_workers
        out["drain_concurrency"] = drain_concurrency
        for role in ("ventilator", "sink", "client"):
            if queued[role] is not None and idle[role] is not None:
                out.setdefault("bytes_per_queued_task", {})[role] = (queued[role] - idle[role]) / n
        if remaining:
            out["error"] = f"drain timed out with {len(remaining)}/{n} unfinished"
            for f in remaining:
                f.cancel()
        else:
            bad = _failures(fs[:1000])
            if bad:
                out["error"] = f"{bad} of the first 1000 tasks failed"
        del fs, remaining
    return out
