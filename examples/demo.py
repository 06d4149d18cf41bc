"""The main job on an embedded local cluster: a few thousand tasks through zq.Client().

    python examples/demo.py [--tasks N] [--workers N] [--executor thread|process]

Starts a ventilator, a sink and workers as child processes on random loopback
ports, pushes tasks through them, prints results and timings, and stops them.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import logging
import math
import statistics
import time

import zq


def is_prime(n: int) -> bool:
    """A little CPU work per task."""
    if n < 2:
        return False
    for d in range(2, math.isqrt(n) + 1):
        if n % d == 0:
            return False
    return True


def divide(a: float, b: float) -> float:
    return a / b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--executor", choices=["thread", "process"], default="process")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    t0 = time.perf_counter()
    with zq.Client(workers=args.workers, executor=args.executor) as client:
        t_up = time.perf_counter() - t0
        print(f"embedded cluster up in {t_up:.2f}s "
              f"({args.workers} worker(s), {args.executor} executor)")

        # 1. submit() one task per number, gather as they complete
        numbers = range(1_000_000, 1_000_000 + args.tasks)
        t1 = time.perf_counter()
        futures = {client.submit(is_prime, n): n for n in numbers}
        zq.progress(futures, desc="is_prime")  # a bar: done/total, rate, ETA
        primes = sorted(futures[f] for f in cf.as_completed(futures) if f.result())
        dt = time.perf_counter() - t1
        print(f"submit: {args.tasks} tasks in {dt:.2f}s = {args.tasks / dt:,.0f} tasks/s; "
              f"{len(primes)} primes, first {primes[:5]}")

        envs = [f.envelope for f in futures]
        run = [e.run_time * 1e6 for e in envs]
        total = [e.total_time * 1e3 for e in envs]
        print(f"envelopes: run_time median {statistics.median(run):.1f} µs, "
              f"total_time median {statistics.median(total):.2f} ms, "
              f"workers {sorted({e.worker for e in envs})}, pids {sorted({e.pid for e in envs})}")

        # 2. map() with chunks, results in input order
        t2 = time.perf_counter()
        squares = list(client.map(pow, range(args.tasks), [2] * args.tasks, chunksize=256, progress=True))
        dt = time.perf_counter() - t2
        print(f"map(chunksize=256): {args.tasks} calls in {dt:.3f}s = {args.tasks / dt:,.0f} calls/s; "
              f"sum of squares {sum(squares)}")

        # 3. a failing task comes back as the original exception type
        try:
            client.submit(divide, 1, 0).result(timeout=30)
        except ZeroDivisionError as exc:
            print(f"a failing task raised {type(exc).__name__} ({exc.remote_type}: {exc.remote_message})")

        # 4. one task at a time: round-trip latency
        lat = []
        for i in range(200):
            t = time.perf_counter()
            client.submit(divide, i, 1).result(timeout=30)
            lat.append((time.perf_counter() - t) * 1e6)
        lat.sort()
        print(f"round trip one at a time: p50 {lat[len(lat) // 2]:.0f} µs, p99 {lat[int(len(lat) * .99)]:.0f} µs")
    print(f"done in {time.perf_counter() - t0:.2f}s; cluster stopped")


if __name__ == "__main__":
    main()
