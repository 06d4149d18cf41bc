"""zq measurements against a real local cluster (:class:`zq.nodes.local.LocalCluster`).

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
from zq.nodes.local import LocalCluster

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
    meter = c.meter().start()
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
    cpu = meter.stop(max(1, len(samples)))
    out = latency_summary(samples)
    out["cpu"] = cpu
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


def _held(client: Any, timeout: float = 60.0) -> int:
    """The ventilator's count of accepted submissions (one O(tasks) stats call)."""
    return int(client._request("ventilator", "stats", {}, timeout=timeout)["counters"].get("submitted", 0))


def _holds(client: Any, task_id: str) -> bool:
    """True once the ventilator knows ``task_id`` (an O(1) status request).

    Uses the client's request channel directly: ``Client.get_status`` answers QUEUED
    for a task the client has sent even when the ventilator never received it.
    """
    try:
        state = client._request("ventilator", "status", {"ids": [task_id]}, timeout=30)[0]
    except TimeoutError:
        return False
    return state != "UNKNOWN"


def memory(n: int, drain_workers: int, drain_concurrency: int, timeout: float, progress: Any = None,
           pace: int = 50_000, stall: float = 30.0) -> dict:
    """Ventilator and sink RSS with ``n`` no-op tasks queued (no worker yet), then drained.

    The cluster starts with no workers; ``n`` tasks are submitted -- in chunks of
    ``pace``, each time waiting until the ventilator holds everything sent so far
    (``pace=0``: one unpaced burst) -- and the ventilator's counters are polled until
    it holds them all (RSS "queued").  Then ``drain_workers`` workers (``--concurrency
    drain_concurrency``) join and run them (RSS "drained").  Bytes per queued task =
    (queued - idle) / tasks held.  If the ventilator's count stops growing for
    ``stall`` seconds the tasks it never received are reported as lost.
    """
    c = Cluster(workers=0, executor="thread")
    with c:
        lc = c.local
        vpid, spid = lc.ventilator.proc.pid, lc.sink.proc.pid
        client = c.client
        base = _held(client)
        time.sleep(0.2)  # let RSS settle after start-up; not a synchronisation
        idle = {"ventilator": rss_bytes(vpid), "sink": rss_bytes(spid), "client": rss_bytes(os.getpid())}
        deadline = Deadline(timeout)

        def wait_held(fut: Any) -> bool:
            """Wait until the ventilator holds ``fut``'s task (so every earlier one: FIFO).

            Gives up when the ventilator's count has not grown for ``stall`` seconds.
            """
            last, since, checked = -1, time.monotonic(), time.monotonic()
            while not deadline.expired():
                if _holds(client, fut.task_id):
                    return True
                now = time.monotonic()
                if now - checked > 5.0:  # an O(tasks) call: seldom
                    checked = now
                    try:
                        count = _held(client)
                    except TimeoutError:
                        count = last
                    if count != last:
                        last, since = count, now
                    if progress is not None:
                        progress.note(f"memory: ventilator holds {count - base:,}/{n:,}")
                if now - since > stall:
                    return False
                time.sleep(0.1)  # polling the ventilator
            return False

        t0 = time.perf_counter()
        fs: list = []
        submit_s = 0.0
        step = pace if pace > 0 else n
        complete = True
        for lo in range(0, n, step):
            ts = time.perf_counter()
            fs.extend(client.submit(noop, i) for i in range(lo, min(n, lo + step)))
            submit_s += time.perf_counter() - ts
            if progress is not None:
                progress.note(f"memory: submitted {len(fs):,}/{n:,}, waiting for the ventilator to hold them")
            if pace > 0 and not wait_held(fs[-1]):
                complete = False
                break
        if complete and pace <= 0:
            complete = wait_held(fs[-1])
        t_held = time.perf_counter()
        held = _held(client) - base
        queued = {"ventilator": rss_bytes(vpid), "sink": rss_bytes(spid), "client": rss_bytes(os.getpid())}
        out: dict[str, Any] = {
            "n": n, "held": held, "paced_by": pace or None, "rss_idle": idle, "rss_queued": queued,
            "submit_s": submit_s, "ingest_s": t_held - t0,
            "submit_tasks_per_s": len(fs) / submit_s if submit_s > 0 else None,
            "ingest_tasks_per_s": held / (t_held - t0) if t_held > t0 else None,
        }
        for role in ("ventilator", "sink", "client"):
            if queued[role] is not None and idle[role] is not None and held:
                out.setdefault("bytes_per_queued_task", {})[role] = (queued[role] - idle[role]) / held
        if held < n or not complete:
            out["error"] = (f"the ventilator received only {held:,} of {len(fs):,} submitted tasks "
                            f"(the last one unknown to it after {stall:.0f}s): the rest were lost between "
                            "client and ventilator")
        # drain: start workers now
        t1 = time.perf_counter()
        for _ in range(drain_workers):
            lc.add_worker(extra=["--concurrency", str(drain_concurrency)], wait=True)
        remaining = list(fs)
        last_done, since = 0, time.monotonic()
        while remaining and not deadline.expired():
            done, pending = wait(remaining, timeout=min(2.0, deadline.left()))
            remaining = list(pending)
            finished = len(fs) - len(remaining)
            if progress is not None:
                progress.note(f"memory: drained {finished:,}/{held:,}")
            if finished >= held:
                break
            if finished != last_done:
                last_done, since = finished, time.monotonic()
            elif time.monotonic() - since > stall:
                break
        t2 = time.perf_counter()
        finished = len(fs) - len(remaining)
        drained = {"ventilator": rss_bytes(vpid), "sink": rss_bytes(spid), "client": rss_bytes(os.getpid())}
        out["rss_drained"] = drained
        out["drain_s"] = t2 - t1
        out["drained"] = finished
        out["drain_tasks_per_s"] = finished / (t2 - t1)
        out["drain_workers"] = drain_workers
        out["drain_concurrency"] = drain_concurrency
        if finished < held and "error" not in out:
            out["error"] = f"drain stopped with {held - finished:,} of {held:,} tasks unfinished"
        elif "error" not in out:
            bad = _failures(fs[:1000])
            if bad:
                out["error"] = f"{bad} of the first 1000 tasks failed"
        del fs, remaining  # unfinished futures fail with ClientClosed at shutdown
    return out
