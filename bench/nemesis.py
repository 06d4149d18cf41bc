"""A nemesis against a whole zq cluster: seeded faults, then a judge of every promise.

    python -m zq.bench.nemesis --seconds 600 --seed 7          # a long soak; prints a table
    python -m zq.bench.nemesis --seconds 40 --json out.json    # as the test suite runs it

The cluster: a ventilator with ``--journal``, a sink with ``--retain`` and ``--journal``,
CURVE keys on every socket, three workers (thread, process, thread; each serves
``default`` and a queue of its own), and client processes
(:mod:`bench.nemesis_driver`) that submit tasks at a steady rate.  With ``--netns``
(root) every node runs in a network namespace of its own host, and worker links are
cut too.

For ``--seconds`` the nemesis (``random.Random(seed)``: the seed reproduces the
run's choices) injects faults, at most two at a time: SIGKILL / SIGTERM / SIGSTOP
of a worker, SIGKILL + restart and SIGSTOP of the sink and of the ventilator,
SIGKILL of the submitting client (a new one takes over the rest of the work) and
link cuts.  Then it heals everything, lets the clients finish, and a new client
reads what the killed clients never saw.  The judge (:func:`judge`) checks:

* every future of a living client resolved by its deadline, with the right value
  (or ``WorkerLost`` after three lost workers, counted); every tenth task waits in a
  queue nobody serves and is cancelled there: a result the ventilator decides, which
  must be recorded at the sink like any other;
* every task a killed client had submitted is finished with its retained result
  readable and right, except the tail that never reached the ventilator (unknown
  there and never run: that must be a suffix of what the client submitted);
* exactly one result recorded per task id: on_done may fire again for the very
  same result after a sink SIGKILL (counted as re-fired), never for two results;
* every accepted task ran at least once; every node that was not killed is alive,
  and every worker's own queue answers a probe task.
"""

from __future__ import annotations

import argparse
import collections
import heapq
import json
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from zq._embedded import NodeProcess
from zq.security import generate

from . import nemesis_driver as driver

log = logging.getLogger("bench.nemesis")

ENV = {"ZQ_CLUSTER_HEARTBEAT_INTERVAL": "0.2", "ZQ_CLUSTER_HEARTBEAT_LIVENESS": "6", "PYTHONUNBUFFERED": "1"}
EXECUTORS = ("thread", "process", "thread")
#: fault kind -> weight
FAULTS = {"worker-kill": 3, "worker-term": 2, "worker-stop": 3, "sink-kill": 2, "vent-kill": 2,
          "sink-stop": 1, "vent-stop": 1, "client-kill": 1, "link-cut": 2}


@dataclass
class Options:
    seconds: float = 40.0
    seed: int = 0
    tasks: int = 2500
    task_seconds: float = 0.03
    netns: bool = False
    sink_journal: bool = True
    drain: float = 45.0  # after the faults: how long clients may take to finish
    max_client_kills: int = 1


@dataclass
class Node:
    """One role's current incarnation, and how it ended before."""

    name: str
    args: list[str]
    host: str
    proc: Optional[NodeProcess] = None
    signalled: bool = False  # we sent it SIGKILL/SIGTERM: its exit is ours
    stopped: bool = False  # SIGSTOPped by us
    deaths: list[str] = field(default_factory=list)  # exits nobody asked for

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Run:
    """Start the cluster, inject faults, heal, collect: one nemesis run in ``directory``."""

    def __init__(self, directory: str, opts: Options) -> None:
        self.dir = directory
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.net: Any = None
        self.nodes: dict[str, Node] = {}
        self.clients: list[tuple[str, subprocess.Popen]] = []  # (tag, process)
        self.killed_tags: list[str] = []
        self.faults: collections.Counter[str] = collections.Counter()
        self.events: list[tuple[float, int, str, Callable[[], None]]] = []
        self._seq = 0
        self.active = 0
        self.next_first = 0
        self.t0 = 0.0
        self.drained_at = float("inf")

    # -- the cluster ------------------------------------------------------------------
    def _prefix(self, host: str) -> list[str]:
        return self.net.argv(host, []) if self.net is not None else []

    def setup(self) -> None:
        keys = os.path.join(self.dir, "keys")
        generate(keys)
        if self.opts.netns:
            from .netns import VirtualNet

            self.net = VirtualNet(("core", "w0", "w1", "w2", "cli")).up()
            core = self.net.addr["core"]
            clients, workers, sink = (f"tcp://{core}:{p}" for p in (5555, 5556, 5557))
        else:
            clients, workers, sink = (f"tcp://127.0.0.1:{_free_port()}" for _ in range(3))
        self.endpoints = {"clients": clients, "workers": workers, "sink": sink}
        self.keys = keys
        sec = ["--keys", keys, "--exit-with-parent", str(os.getpid())]
        sink_args = ["sink", "--endpoint", sink, "--retain", "--policy", "bench.nemesis_driver:RecordResults", *sec]
        if self.opts.sink_journal:
            sink_args += ["--journal", os.path.join(self.dir, "sink.db")]
        self.nodes["sink"] = Node("sink", sink_args, "core")
        self.nodes["vent"] = Node("vent", ["ventilator", "--clients", clients, "--workers", workers, "--sink", sink,
                                           "--journal", os.path.join(self.dir, "vent.db"), *sec], "core")
        for i, ex in enumerate(EXECUTORS):
            self.nodes[f"w{i}"] = Node(f"w{i}", [
                "worker", "--ventilator", workers, "--sink", sink, "--executor", ex, "--concurrency", "2",
                "--queue", "default", "--queue", f"w{i}", "--grace", "2", *sec], f"w{i}")
        self.env = {**ENV, driver.ENV_DIR: self.dir}
        for name in ("sink", "vent", "w0", "w1", "w2"):
            self.start_node(name)
        for n in self.nodes.values():
            assert n.proc is not None
            n.proc.wait_ready(60)

    def start_node(self, name: str, wait: bool = False) -> None:
        n = self.nodes[name]
        n.proc = NodeProcess(n.args, self.env, name=name, prefix=self._prefix(n.host)).start()
        n.signalled = n.stopped = False
        if wait:
            n.proc.wait_ready(60)

    def _note_death(self, n: Node) -> None:
        if n.proc is not None and not n.alive() and not n.signalled:
            n.deaths.append(f"exit {n.proc.proc.poll() if n.proc.proc else '?'}: {n.proc.log(15)}")
            n.signalled = True  # counted once

    def driver(self, mode: str, extra: list[str], **kw: Any) -> subprocess.Popen:
        argv = [*self._prefix("cli"), sys.executable, "-m", "zq.bench.nemesis_driver", mode,
                "--ventilator", self.endpoints["clients"], "--sink", self.endpoints["sink"],
                "--keys", self.keys, "--dir", self.dir, *extra]
        return subprocess.Popen(argv, env={**os.environ, **self.env}, start_new_session=True, **kw)

    def start_client(self) -> None:
        tag = f"c{len(self.clients)}"
        left = self.opts.tasks - self.next_first
        if left <= 0:
            return
        spent = time.monotonic() - self.t0
        rate = max(20.0, left / max(5.0, 0.75 * self.opts.seconds - spent))
        deadline = self.opts.seconds - spent + self.opts.drain
        err = open(os.path.join(self.dir, f"client-{tag}.stderr"), "w")
        p = self.driver("submit", ["--tag", tag, "--first", str(self.next_first), "--tasks", str(left),
                                   "--rate", f"{rate:.1f}", "--task-seconds", str(self.opts.task_seconds),
                                   "--deadline", f"{deadline:.1f}"], stdout=err, stderr=err)
        self.clients.append((tag, p))
        self.next_first += left

    # -- faults -----------------------------------------------------------------------
    def at(self, delay: float, what: str, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self.events, (time.monotonic() + delay, self._seq, what, action))

    def _sig(self, name: str, sig: int) -> None:
        n = self.nodes[name]
        if n.proc is None:
            return
        if sig in (signal.SIGKILL, signal.SIGTERM):
            n.signalled = True
        n.proc.signal(sig)
        if sig == signal.SIGSTOP:
            n.stopped = True
        elif sig == signal.SIGCONT:
            n.stopped = False

    def _restart_when_gone(self, name: str, delay: float) -> None:
        n = self.nodes[name]
        if n.alive():
            self.at(0.2, "", lambda: self._restart_when_gone(name, delay))
            return
        self.at(delay, f"restart {name}", lambda: self._restarted(name))

    def _restarted(self, name: str) -> None:
        self.start_node(name)
        self.active -= 1

    def _continued(self, name: str) -> None:
        self._sig(name, signal.SIGCONT)
        self.active -= 1

    def inject(self) -> None:
        rng = self.rng
        kinds = [k for k in FAULTS if (k != "link-cut" or self.net is not None)
                 and (k != "client-kill" or len(self.killed_tags) < self.opts.max_client_kills)]
        kind = rng.choices(kinds, [FAULTS[k] for k in kinds])[0]
        workers = [f"w{i}" for i in range(len(EXECUTORS))]
        # a target that is already under a fault is left alone: choose another
        busy = {n.name for n in self.nodes.values() if n.stopped or not n.alive()}
        if kind.startswith("worker") or kind == "link-cut":
            free = [w for w in workers if w not in busy]
            if not free:
                return
            target = rng.choice(free)
        elif kind == "client-kill":
            target = self.clients[-1][0] if self.clients and self.clients[-1][1].poll() is None else ""
            if not target:
                return
        else:
            target = "sink" if kind.startswith("sink") else "vent"
            if target in busy:
                return
        self.faults[kind] += 1
        self.active += 1
        self.timeline(f"fault {kind} on {target}")
        if kind in ("worker-kill", "sink-kill", "vent-kill"):
            self._sig(target, signal.SIGKILL)
            self._restart_when_gone(target, rng.uniform(0.1, 2.0))
        elif kind == "worker-term":
            self._sig(target, signal.SIGTERM)
            self._restart_when_gone(target, rng.uniform(0.1, 1.0))
        elif kind.endswith("-stop"):
            self._sig(target, signal.SIGSTOP)
            self.at(rng.uniform(0.5, 5.0), f"cont {target}", lambda: self._continued(target))
        elif kind == "link-cut":
            self.net.link_down(target)
            self.at(rng.uniform(0.5, 4.0), f"link up {target}", lambda: self._link_up(target))
        elif kind == "client-kill":
            proc = self.clients[-1][1]
            proc.kill()
            proc.wait(10)
            self.killed_tags.append(target)
            self.next_first = self._submitted_count()
            self.start_client()
            self.active -= 1

    def timeline(self, what: str) -> None:
        """Log a fault or a heal, and keep it in faults.log (wall clock, as the records)."""
        log.info("t=%5.1fs %s", time.monotonic() - self.t0, what)
        with open(os.path.join(self.dir, "faults.log"), "a") as f:
            f.write(f"{time.time():.3f} {what}\n")

    def _link_up(self, host: str) -> None:
        self.net.link_up(host)
        self.active -= 1

    def _submitted_count(self) -> int:
        """The next task number: past everything any client recorded as submitted."""
        top = -1
        for tag, _ in self.clients:
            for i, _tid in read_submitted(self.dir, tag):
                top = max(top, i)
        return max(top + 1, 0)

    def run_faults(self) -> None:
        end = self.t0 + self.opts.seconds
        next_fault = time.monotonic() + self.rng.uniform(1.0, 3.0)
        while time.monotonic() < end or self.events:
            now = time.monotonic()
            while self.events and self.events[0][0] <= now:
                _, _, what, action = heapq.heappop(self.events)
                if what:
                    self.timeline(what)
                action()
            for n in self.nodes.values():
                self._note_death(n)
            if now >= next_fault and now < end:
                if self.active < 2:
                    self.inject()
                next_fault = now + self.rng.uniform(0.8, 3.0)
            time.sleep(0.05)  # the nemesis's own clock tick

    def heal(self) -> None:
        for n in self.nodes.values():
            if n.stopped:
                self._sig(n.name, signal.SIGCONT)
        if self.net is not None:
            for h in ("w0", "w1", "w2"):
                self.net.link_up(h)
        for name, n in self.nodes.items():
            self._note_death(n)
            if not n.alive():
                self.start_node(name, wait=True)

    # -- the run ----------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        try:
            self.setup()
            self.t0 = time.monotonic()
            self.start_client()
            self.run_faults()
            self.heal()
            for tag, p in self.clients:
                if tag not in self.killed_tags:
                    try:  # a client gives up at its own deadline (faults + drain) and says so
                        p.wait(self.opts.seconds + self.opts.drain + 15)
                    except subprocess.TimeoutExpired:
                        p.kill()
            self.drained_at = time.time()  # wall clock, like the sink's records
            for n in self.nodes.values():
                self._note_death(n)
            report = self.check()
            for n in self.nodes.values():
                self._note_death(n)
            return report
        finally:
            self.teardown()

    def check(self) -> dict[str, Any]:
        """A new client: the state and result of every id a client did not see resolve."""
        unseen = []
        for tag, _ in self.clients:
            seen = read_results(self.dir, tag)
            unseen += [(i, tid) for i, tid in read_submitted(self.dir, tag) if tid not in seen]
        out = os.path.join(self.dir, "check.json")
        with open(out, "w") as f, open(os.path.join(self.dir, "check.stderr"), "w") as err:
            p = self.driver("check", ["--deadline", "30", *sum((["--probe", q] for q in
                                                                ("default", "w0", "w1", "w2")), [])],
                            stdin=subprocess.PIPE, stdout=f, stderr=err, text=True)
            p.communicate("".join(f"{i} {tid}\n" for i, tid in unseen), timeout=90)
        try:
            with open(out) as f:
                return json.load(f)
        except ValueError:
            with open(os.path.join(self.dir, "check.stderr")) as f:
                return {"ids": {}, "probes": {}, "error": f.read()[-2000:]}

    def teardown(self) -> None:
        for _, p in self.clients:
            if p.poll() is None:
                p.kill()
        for n in self.nodes.values():
            if n.stopped:
                self._sig(n.name, signal.SIGCONT)
        for name in ("w0", "w1", "w2", "vent", "sink"):
            n = self.nodes.get(name)
            if n is not None and n.proc is not None:
                n.signalled = True
                n.proc.stop(10)
        if self.net is not None:
            self.net.down()


# -- the records ------------------------------------------------------------------------
def _lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return [line for line in f.read().split("\n") if line]
    except FileNotFoundError:
        return []


def read_submitted(d: str, tag: str) -> list[tuple[int, str]]:
    rows = []
    for line in _lines(os.path.join(d, f"submitted-{tag}")):
        parts = line.split()
        if len(parts) == 2:
            rows.append((int(parts[0]), parts[1]))
    return rows


def read_results(d: str, tag: str) -> dict[str, str]:
    out = {}
    for line in _lines(os.path.join(d, f"results-{tag}")):
        a, b = line.split(" ", 1)
        if a == "UNRESOLVED":
            out[b] = "UNRESOLVED"
        else:
            out[a] = b
    return out


#: violations that mean a task's result did not reach whoever was owed it
_LOST = re.compile(r"expected |unresolved|never recorded its future|no result recorded")


def _outcome_of(row: dict[str, Any]) -> str:
    """What the checking client learnt, in the words of the clients' result lines."""
    state = row.get("state")
    if state == "SUCCESS" and "value" in row:
        return f"ok {row['value']}"
    if state == "CANCELED":
        return "err CancelledError"
    if state == "FAILED" and row.get("error"):
        return f"err {row['error']}"
    return f"state {state} {row.get('error', '')}".strip()


def _verdict(i: int, outcome: str, runs: int) -> tuple[list[str], bool]:
    """What is wrong with task ``i``'s outcome (and whether it ended in WorkerLost)."""
    if driver.parked(i):
        bad = [] if outcome == "err CancelledError" else [f"parked and cancelled, yet {outcome!r}"]
        return bad + ([f"cancelled while queued, yet ran {runs} times"] if runs else []), False
    if outcome == "err WorkerLost":  # lost its worker three times: documented, counted
        return [], True
    if outcome != f"ok {driver.expected(i)}":
        return [f"expected {driver.expected(i)}, got {outcome!r}"], False
    return ([] if runs else ["succeeded, never ran"]), False


def judge(run: Run, check: dict[str, Any]) -> dict[str, Any]:
    """Every promise, checked against the records; ``violations`` empty when all hold."""
    d = run.dir
    violations: list[str] = []
    execs: collections.Counter[str] = collections.Counter(
        line.split()[0] for line in _lines(os.path.join(d, "exec.log")))
    done: dict[str, set] = collections.defaultdict(set)
    fired: collections.Counter[str] = collections.Counter()
    times = []
    for line in _lines(os.path.join(d, "done.log")):
        row = json.loads(line)
        done[row["id"]].add((row["attempts"], row["worker"], row["state"]))
        fired[row["id"]] += 1
        times.append(row["t"])
    accepted = never_accepted = worker_lost = 0
    ids = check.get("ids", {})
    for tag, _ in run.clients:
        results = read_results(d, tag)
        subs = read_submitted(d, tag)
        unknown_from: Optional[int] = None
        for pos, (i, tid) in enumerate(subs):
            outcome = results.get(tid)
            row = ids.get(tid, {})
            if outcome is None or outcome == "UNRESOLVED":
                if outcome == "UNRESOLVED":
                    violations.append(f"{tid} (task {i}, client {tag}): future unresolved at its deadline; "
                                      f"the cluster says {row.get('state')}")
                if tag not in run.killed_tags and outcome is None:
                    violations.append(f"{tid} (task {i}): the living client {tag} never recorded its future")
                if row.get("state") == "UNKNOWN" and execs[tid] == 0 and tag in run.killed_tags:
                    never_accepted += 1
                    unknown_from = pos if unknown_from is None else unknown_from
                    continue
                if unknown_from is not None:
                    violations.append(f"{tid} (task {i}): known to the cluster after an unknown earlier task of "
                                      f"the killed client {tag}: the unknown ones are not a lost tail")
                outcome = _outcome_of(row)
            accepted += 1
            bad, lost = _verdict(i, outcome, execs[tid])
            worker_lost += lost
            violations += [f"{tid} (task {i}, client {tag}): {b}" for b in bad]
            if not done.get(tid):  # a cancelled (parked) task too: its result is in the journal
                violations.append(f"{tid} (task {i}): no result recorded at the sink (on_done never fired)")
            elif len(done[tid]) > 1:
                violations.append(f"{tid} (task {i}): {len(done[tid])} different results recorded: "
                                  f"{sorted(done[tid], key=str)}")
    for name, n in run.nodes.items():
        for death in n.deaths:
            violations.append(f"node {name} died on its own: {death}")
    for q, probe in check.get("probes", {}).items():
        if probe.get("ok") is not True:
            violations.append(f"probe on queue {q!r} failed: {probe}")
    if "error" in check:
        violations.append(f"the checking client failed: {check['error']}")
    times = sorted(t for t in times if t <= run.drained_at)  # not the probes after it
    stall = max((b - a for a, b in zip(times, times[1:])), default=0.0)
    return {
        "seed": run.opts.seed, "seconds": run.opts.seconds, "netns": run.net is not None,
        "faults": dict(sorted(run.faults.items())), "faults_total": sum(run.faults.values()),
        "tasks_submitted": sum(len(read_submitted(d, t)) for t, _ in run.clients),
        "tasks_accepted": accepted, "never_accepted_killed_client_tail": never_accepted,
        "worker_lost": worker_lost,
        "results_lost": len({v.split()[0] for v in violations if _LOST.search(v)}),
        "results_duplicated": len({v.split()[0] for v in violations if "different results" in v}),
        "on_done_refired": sum(c - 1 for c in fired.values() if c > 1),
        "re_executions": sum(c - 1 for c in execs.values() if c > 1),
        "longest_stall_seconds": round(stall, 2),
        "violations": violations,
    }


def run(opts: Options, directory: Optional[str] = None) -> dict[str, Any]:
    """One run; the judged report (``violations`` lists every broken promise)."""
    d = directory or tempfile.mkdtemp(prefix="zq-nemesis-")
    r = Run(d, opts)
    check = r.execute()
    report = judge(r, check)
    report["directory"] = d
    return report


def format_report(rep: dict[str, Any]) -> str:
    rows = [("seed", rep["seed"]), ("seconds of faults", rep["seconds"]), ("network namespaces", rep["netns"])]
    rows += [(f"faults: {k}", v) for k, v in rep["faults"].items()]
    rows += [(k.replace("_", " "), rep[k]) for k in (
        "faults_total", "tasks_submitted", "tasks_accepted", "never_accepted_killed_client_tail", "worker_lost",
        "results_lost", "results_duplicated", "on_done_refired", "re_executions", "longest_stall_seconds")]
    width = max(len(str(k)) for k, _ in rows)
    lines = ["| what | value |", "| --- | --- |"] + [f"| {k:<{width}} | {v} |" for k, v in rows]
    lines.append(f"violations: {len(rep['violations'])}")
    lines += [f"  - {v}" for v in rep["violations"][:50]]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zq.bench.nemesis", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="how long faults are injected")
    p.add_argument("--seed", type=int, default=None, help="reproduces a run's choices (default: random)")
    p.add_argument("--tasks", type=int, default=None, help="tasks to submit (default: 60 a second of faults)")
    p.add_argument("--netns", action="store_true", help="one network namespace per host, link cuts (root)")
    p.add_argument("--no-sink-journal", action="store_true", help="run the sink without --journal")
    p.add_argument("--json", default=None, help="write the report here too")
    p.add_argument("--dir", default=None, help="keep the run's files here")
    ns = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    seed = ns.seed if ns.seed is not None else random.SystemRandom().randrange(1 << 30)
    print(f"nemesis seed {seed}", flush=True)
    opts = Options(seconds=ns.seconds, seed=seed, netns=ns.netns, sink_journal=not ns.no_sink_journal,
                   tasks=ns.tasks or int(60 * ns.seconds))
    rep = run(opts, ns.dir)
    print(format_report(rep))
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(rep, f, indent=2)
    return 1 if rep["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
