"""The measuring client of ``python -m zq.bench --scale``, run as its own process so that it can
live in a network namespace (``ip netns exec NS python -m zq.bench.scale_client VENT SINK``).

It reads one JSON command per line on stdin and answers one JSON line on stdout:

    {"op": "workers", "n": 200, "timeout": 120}  -> {"seconds": ..., "workers": 200}
    {"op": "run", "kind": "noop"|"sleep", "n": 20000, "sleep": 0.01, "timeout": 300}
                                                  -> {"seconds": ..., "ok": n, "failed": 0, "lost": 0}
    {"op": "stats"}                               -> the ventilator's stats
    {"op": "quit"}
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import zq
from zq.bench.workloads import nap, noop


def wait_workers(client: zq.Client, n: int, timeout: float) -> dict:
    t0 = time.monotonic()
    seen = 0
    while time.monotonic() - t0 < timeout:
        seen = len(client.stats()["ventilator"]["workers"])
        if seen == n:
            return {"seconds": time.monotonic() - t0, "workers": seen}
        time.sleep(0.05)  # polling the ventilator's stats: registration has no event for us
    return {"seconds": None, "workers": seen, "error": f"only {seen} of {n} workers after {timeout:.0f}s"}


def run(client: zq.Client, kind: str, n: int, sleep: float, timeout: float) -> dict:
    t0 = time.perf_counter()
    if kind == "noop":
        futs = [client.submit(noop, i) for i in range(n)]
    else:
        futs = [client.submit(nap, sleep) for _ in range(n)]
    ok = failed = lost = 0
    deadline = time.monotonic() + timeout
    for f in futs:
        try:
            f.result(timeout=max(0.0, deadline - time.monotonic()))
            ok += 1
        except zq.TaskFailed:
            failed += 1
        except Exception:  # timeout or unreachable: not delivered by the deadline
            lost += 1
    return {"seconds": time.perf_counter() - t0, "ok": ok, "failed": failed, "lost": lost}


def main(argv: list[str]) -> int:
    vent, sink = argv[0], argv[1]
    cfg = zq.load_config(None, {"ventilator_clients": vent, "sink_endpoint": sink, "insecure": True})
    with zq.Client(cfg, unreachable_timeout=300) as client:
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            cmd: dict[str, Any] = json.loads(line)
            op = cmd["op"]
            if op == "quit":
                break
            try:
                if op == "workers":
                    out = wait_workers(client, cmd["n"], cmd.get("timeout", 120.0))
                elif op == "run":
                    out = run(client, cmd["kind"], cmd["n"], cmd.get("sleep", 0.01), cmd.get("timeout", 600.0))
                elif op == "stats":
                    out = client.stats()["ventilator"]
                else:
                    out = {"error": f"unknown op {op!r}"}
            except Exception as exc:
                out = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(out, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
