"""The processes a nemesis run starts besides the nodes, and what they record.

    python -m zq.bench.nemesis_driver submit ...   a client: submits tasks, records each
                                                 submission and each resolved future
    python -m zq.bench.nemesis_driver check ...    a new client after the faults: asks the
                                                 cluster for what the old clients never
                                                 saw, and probes every worker's own queue

Every record is a line appended to a file of the run's directory (``O_APPEND``
writes of one line, so concurrent writers never interleave within a line):

    exec.log       "TASK_ID ATTEMPT PID TIME" each time the task body starts (workers)
    done.log       one JSON object each time the sink's on_done fires (RecordResults)
    submitted-TAG  "SEQ TASK_ID" once ``submit`` returned, in submission order
    results-TAG    "TASK_ID ok VALUE" / "TASK_ID err TYPE" as futures resolve;
                   "UNRESOLVED TASK_ID" for a future still pending at the deadline

Nothing here asserts: :mod:`bench.nemesis` reads the files and judges.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
from typing import Any, Optional

import zq

ENV_DIR = "ZQ_NEMESIS_DIR"


def expected(i: int) -> int:
    """The value task ``i`` must return."""
    return 2 * i + 1


def parked(i: int) -> bool:
    """Every tenth task goes to a queue no worker serves and is cancelled there: a result
    the ventilator decides (CANCELED), which must reach the sink like any other."""
    return i % 10 == 5


PARKED_QUEUE = "parked"


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def work(i: int, directory: str, seconds: float) -> int:
    """The task: log that it runs, take ``seconds``, return ``expected(i)``."""
    ctx = zq.current_task()
    tid, attempt = (ctx.task_id, ctx.attempt) if ctx is not None else ("?", 0)
    _append(os.path.join(directory, "exec.log"), f"{tid} {attempt} {os.getpid()} {time.time():.3f}\n")
    if seconds > 0:
        time.sleep(seconds)  # sleep-ok: the task's work
    return expected(i)


class RecordResults(zq.Policy):
    """Sink policy: one line in ``$ZQ_NEMESIS_DIR/done.log`` per on_done."""

    def __init__(self) -> None:
        self.path = os.path.join(os.environ[ENV_DIR], "done.log")

    def on_done(self, result: Any) -> None:
        row = {"id": result.task_id, "attempts": result.attempts, "worker": result.worker,
               "state": str(result.state), "sink_pid": os.getpid(), "t": time.time()}
        _append(self.path, json.dumps(row) + "\n")


def _client(ns: argparse.Namespace) -> zq.Client:
    cfg = zq.load_config(None, {"ventilator_clients": ns.ventilator, "sink_endpoint": ns.sink,
                                "heartbeat_interval": ns.heartbeat})
    return zq.Client(cfg, keys=ns.keys, unreachable_timeout=ns.unreachable_timeout)


def _outcome(fut: Any) -> str:
    try:
        return f"ok {fut.result(timeout=0)}"
    except BaseException as exc:  # a documented zq error, or a bug the judge will flag
        return f"err {type(exc).__name__}"


def submit(ns: argparse.Namespace) -> int:
    """Submit ``ns.tasks`` tasks at ``ns.rate`` per second, record everything, wait."""
    d = ns.dir
    sub_path = os.path.join(d, f"submitted-{ns.tag}")
    res_path = os.path.join(d, f"results-{ns.tag}")
    lock = threading.Lock()
    pending: dict[str, Any] = {}
    client = _client(ns)

    def resolved(fut: Any) -> None:
        _append(res_path, f"{fut.task_id} {_outcome(fut)}\n")
        with lock:
            pending.pop(fut.task_id, None)

    to_cancel: "queue.Queue[str]" = queue.Queue()

    def canceller() -> None:  # cancels may wait for a ventilator that is away
        while True:
            tid = to_cancel.get()
            _cancel(client, tid, time.monotonic() + ns.deadline)

    threading.Thread(target=canceller, daemon=True).start()
    batch = max(1, int(ns.rate / 20))
    t0 = time.monotonic()
    for start in range(0, ns.tasks, batch):
        lines = []
        for i in range(ns.first + start, ns.first + min(ns.tasks, start + batch)):
            fut = client.submit_task(work, (i, d, ns.task_seconds), retain_result=True, retries=ns.retries,
                                     queue=PARKED_QUEUE if parked(i) else None)
            with lock:
                pending[fut.task_id] = fut
            lines.append(f"{i} {fut.task_id}\n")
            fut.add_done_callback(resolved)
            if parked(i):
                to_cancel.put(fut.task_id)
        _append(sub_path, "".join(lines))
        ahead = (start + batch) / ns.rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)  # pacing the submissions over the run
    _append(sub_path, "ALL\n")
    deadline = time.monotonic() + ns.deadline
    while time.monotonic() < deadline:
        with lock:
            left = list(pending.values())
        if not left:
            break
        try:
            left[0].exception(timeout=max(0.0, deadline - time.monotonic()))
        except Exception:
            pass
    with lock:
        for tid in pending:
            _append(res_path, f"UNRESOLVED {tid}\n")
    client.shutdown(wait=False, cancel_futures=True)
    return 0


def _cancel(client: zq.Client, tid: str, deadline: float) -> None:
    """Cancel a parked task (it never runs: False means the ventilator did not answer)."""
    while time.monotonic() < deadline:
        try:
            if client.cancel(tid):
                return
        except (zq.ZqError, TimeoutError):
            pass
        time.sleep(0.2)  # the ventilator is away: ask again


def _poll_final(client: zq.Client, tid: str, deadline: float) -> str:
    state = client.get_status(tid)
    while not state.finished and state is not zq.TaskState.UNKNOWN and time.monotonic() < deadline:
        time.sleep(0.1)  # polling the cluster with a deadline
        state = client.get_status(tid)
    return str(state)


def check(ns: argparse.Namespace) -> int:
    """For every id given on stdin, its state and retained result; probe each queue."""
    client = _client(ns)
    deadline = time.monotonic() + ns.deadline
    report: dict[str, Any] = {"ids": {}, "probes": {}}
    for line in sys.stdin:
        if not line.strip():
            continue
        i, tid = line.split()
        if parked(int(i)):  # its client died before cancelling it
            _cancel(client, tid, deadline)
        state = _poll_final(client, tid, deadline)
        row: dict[str, Any] = {"i": int(i), "state": state}
        if state in ("SUCCESS", "FAILED"):
            try:
                res = client.get_result(tid, timeout=5.0)
                if res.error is None:
                    row["value"] = res.value
                else:
                    row["error"] = res.error.type
            except Exception as exc:
                row["error"] = f"get_result: {type(exc).__name__}: {exc}"
        report["ids"][tid] = row
    for q in ns.probe:
        t0 = time.monotonic()
        fut = client.submit_task(work, (-1, ns.dir, 0.0), queue=q)
        try:
            ok: Optional[Any] = fut.result(timeout=max(1.0, deadline - time.monotonic())) == expected(-1)
        except Exception as exc:
            ok = f"{type(exc).__name__}: {exc}"
        report["probes"][q] = {"ok": ok, "seconds": round(time.monotonic() - t0, 3)}
    json.dump(report, sys.stdout)
    sys.stdout.flush()
    client.shutdown(wait=False, cancel_futures=True)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zq.bench.nemesis_driver")
    p.add_argument("mode", choices=["submit", "check"])
    p.add_argument("--ventilator", required=True)
    p.add_argument("--sink", required=True)
    p.add_argument("--keys", default=None)
    p.add_argument("--dir", required=True)
    p.add_argument("--tag", default="c0")
    p.add_argument("--first", type=int, default=0, help="the first task's number")
    p.add_argument("--tasks", type=int, default=1000)
    p.add_argument("--rate", type=float, default=200.0, help="submissions per second")
    p.add_argument("--task-seconds", type=float, default=0.005)
    p.add_argument("--retries", type=int, default=2)
    p.add_argument("--deadline", type=float, default=60.0)
    p.add_argument("--heartbeat", type=float, default=0.2)
    p.add_argument("--unreachable-timeout", type=float, default=120.0)
    p.add_argument("--probe", action="append", default=[], help="queue to probe (check)")
    ns = p.parse_args(argv)
    return submit(ns) if ns.mode == "submit" else check(ns)


if __name__ == "__main__":
    sys.exit(main())
