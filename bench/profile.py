"""``python -m zq.bench.profile``: where each zq process spends its time during a submit loop.

Starts a cluster (1 worker), warms it, measures the submit-loop rate and CPU per
process without a profiler, then runs ``py-spy record`` (sampling, non-blocking) on
the client (caller thread and IO thread), the ventilator, the sink and the worker
(and its executor children with ``--executor process``) while the same loop
runs, and prints for each process and thread: CPU µs per task, % of samples busy
(not blocked in poll/recv/wait), and the top functions by self time and by
inclusive time.

    pip install py-spy
    python -m zq.bench.profile [--seconds 8] [--executor thread|process] [--batch 2000] [--out DIR]
    python -m zq.bench.profile --batch 0      # one task at a time: where the round trip goes

Needs ptrace rights over the child processes (root, or kernel.yama.ptrace_scope=0).
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import wait
from typing import Any, Optional

from .util import children
from .workloads import noop
from .zqbench import Cluster

log = logging.getLogger("bench.profile")

#: leaf functions where a thread is blocked, not working
IDLE_LEAVES = {"poll", "select", "wait", "recv", "sleep", "acquire", "get", "_wait_for_tstate_lock",
               "read", "readline", "epoll", "recv_bytes", "_recv", "_recv_bytes", "join", "accept",
               "watch"}
_LINE = re.compile(r"^thread \((\d+)\): ([^;]*);(.*) (\d+)$")
_FRAME = re.compile(r"^(.*) \((.*?)(?::(\d+))?\)$")


def parse(path: str) -> dict[str, dict]:
    """``{thread name: {"samples", "idle", "self": Counter, "incl": Counter}}`` from py-spy raw.

    py-spy records only threads that are running (not blocked in a system call);
    a sample whose leaf is a known blocking call is still counted as idle.
    """
    threads: dict[str, dict] = {}
    with open(path) as f:
        for line in f:
            m = _LINE.match(line.rstrip("\n"))
            if not m:
                continue
            tname, stack, count = m.group(2) or m.group(1), m.group(3), int(m.group(4))
            frames = []
            for fr in stack.split(";"):
                fm = _FRAME.match(fr)
                if fm:
                    frames.append((fm.group(1), fm.group(2)))
                else:
                    frames.append((fr, ""))
            t = threads.setdefault(tname, {"samples": 0, "idle": 0, "self": collections.Counter(),
                                           "incl": collections.Counter()})
            t["samples"] += count
            leaf = frames[-1][0] if frames else "?"
            if leaf.split(".")[-1] in IDLE_LEAVES:
                t["idle"] += count
                continue
            t["self"][_fname(frames[-1])] += count
            for fr in set(_fname(x) for x in frames):
                t["incl"][fr] += count
    return threads


def _fname(fr: tuple[str, str]) -> str:
    name, where = fr
    short = where.split("site-packages/")[-1]
    for prefix in ("/work/main/",):
        short = short.replace(prefix, "")
    return f"{name} ({short})" if short else name


def _spy(pid: int, seconds: float, rate: int, out: str, spy: str) -> subprocess.Popen:
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", str(rate), "--duration",
                             str(int(seconds) + 1), "--format", "raw", "--output", out, "--threads",
                             "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def loop(client: Any, seconds: float, batch: int) -> int:
    """``batch`` > 0: submit ``batch`` tasks, wait for all, repeat.  0: one at a time."""
    t0 = time.perf_counter()
    n = 0
    if batch <= 0:
        while time.perf_counter() - t0 < seconds:
            client.submit(noop, 1).result(timeout=60)
            n += 1
        return n
    while time.perf_counter() - t0 < seconds:
        fs = [client.submit(noop, i) for i in range(batch)]
        wait(fs, timeout=120)
        n += batch
    return n


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m zq.bench.profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--executor", default="thread", choices=("thread", "process"))
    ap.add_argument("--concurrency", type=int, default=0)
    ap.add_argument("--batch", type=int, default=2000,
                    help="submit this many, wait, repeat (0: one task at a time, the round-trip workload)")
    ap.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--out", default=None, help="keep the raw py-spy files here")
    opts = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("zq").setLevel(logging.ERROR)
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(spy):
        log.error("py-spy not found: pip install py-spy")
        return 2
    out_dir = opts.out or tempfile.mkdtemp(prefix="zq-profile-")
    os.makedirs(out_dir, exist_ok=True)
    lines: list[str] = []
    w = lines.append
    with Cluster(workers=1, executor=opts.executor, concurrency=opts.concurrency) as c:
        c.warm()
        meter = c.meter().start()
        n = loop(c.client, opts.seconds, opts.batch)
        cpu = meter.stop(n)
        rate = n / cpu["wall_s"]
        what = f"batches of {opts.batch}" if opts.batch > 0 else "one at a time"
        w(f"submit loop without profiler: {rate:,.0f} tasks/s ({n:,} tasks, {what}, "
          f"{opts.executor} executor; mean {1e6 / rate:,.0f} us per task)")
        w("CPU us per task: " + ", ".join(f"{k} {v:,.1f}" for k, v in cpu["us_per_task"].items()))
        w("CPU % of wall:   " + ", ".join(f"{k} {v:.0f}%" for k, v in cpu["util_pct"].items()))
        pids = c.pids()
        targets = {"client": os.getpid(), "ventilator": pids["ventilator"][0], "sink": pids["sink"][0],
                   "worker": pids["workers"][0]}
        for i, ch in enumerate(children(pids["workers"][0])):
            targets[f"worker-child{i}"] = ch
        spies = {name: _spy(pid, opts.seconds, opts.rate, os.path.join(out_dir, f"{name}.txt"), spy)
                 for name, pid in targets.items()}
        time.sleep(0.5)  # let py-spy attach before the loop starts
        n2 = loop(c.client, opts.seconds, opts.batch)
        for name, p in spies.items():
            _, err = p.communicate(timeout=60)
            if p.returncode not in (0, None) and not os.path.exists(os.path.join(out_dir, f"{name}.txt")):
                w(f"py-spy on {name} failed: {err.strip()[-300:]}")
        w(f"submit loop under py-spy: {n2 / opts.seconds:,.0f} tasks/s")
        w(f"raw py-spy files: {out_dir}")
    expected = opts.rate * opts.seconds
    for name in targets:
        path = os.path.join(out_dir, f"{name}.txt")
        if not os.path.exists(path):
            continue
        for tname, t in sorted(parse(path).items(), key=lambda kv: -kv[1]["samples"]):
            busy = t["samples"] - t["idle"]
            if busy < 0.02 * expected:
                continue
            w("")
            w(f"== {name} / thread {tname}: running in ~{min(100.0, 100 * busy / expected):.0f}% of samples "
              f"({busy} of ~{expected:.0f}; {t['idle']} more in poll/recv, i.e. woken and waiting for a CPU)")
            w("   top self time (% of this thread's busy samples):")
            for fn, k in t["self"].most_common(opts.top):
                w(f"   {100 * k / busy:5.1f}%  {fn}")
            w("   top inclusive, zq code:")
            shown = 0
            for fn, k in t["incl"].most_common():
                if ("zq/" in fn or "nodes/" in fn) and shown < opts.top:
                    w(f"   {100 * k / busy:5.1f}%  {fn}")
                    shown += 1
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
