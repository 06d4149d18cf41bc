"""A real multi-host cluster: one network namespace per host, on one virtual bridge.

    ventilator 10.231.X.1   sink 10.231.X.2   worker1 .3   worker2 .4   client .5

Each node is ``ip netns exec NS python -m zq.nodes ROLE …``; the client is a script
(``CLIENT_SCRIPT``) run in the client namespace, driven by commands on its stdin
and answering with lines on its stdout.  Cutting worker1 off (its port on the
bridge, or its own interface) exercises the heartbeat-based loss detection of
API.md "Delivery", and bringing it back, the worker's reconnection.

These tests run wherever ``ip netns`` is usable (CI runs as root); elsewhere they
skip with the reason.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import textwrap
import time
from typing import Any, Iterator, Optional

import pytest

from zq.security import generate

from zq.bench.netns import LineReader, NsNodeProcess, VirtualNet, unavailable_reason

pytestmark = pytest.mark.timeout(60)

#: extra arguments of the nodes that bind a non-loopback address (ventilator, sink);
#: the "curve" variant of the ``security`` fixture empties it and sets ZQ_SECURITY_KEYS
SECURITY_ARGS: list[str] = ["--insecure"]
#: ... and of those that only connect (workers, ``zq status``); the client script's
#: Config will need the matching keys too
CONNECT_SECURITY_ARGS: list[str] = []

HEARTBEAT = 0.2
LIVENESS = 6  # a worker silent for 1.2 s is lost
ENV = {"ZQ_CLUSTER_HEARTBEAT_INTERVAL": str(HEARTBEAT), "ZQ_CLUSTER_HEARTBEAT_LIVENESS": str(LIVENESS),
       "PYTHONUNBUFFERED": "1"}
CONCURRENCY = 4  # thread slots per worker
PREFETCH = 4  # tasks held beyond the slots: a worker holds at most 8, some not yet started
HOSTS = ("vent", "sink", "w1", "w2", "cli")

CLIENT_SCRIPT = textwrap.dedent('''
    """Runs in the client namespace.  stdin: RUN TAG N DELAY TIMEOUT | CANCEL TAG TIMEOUT |
    LOST TAG TIMEOUT | QUIT.  stdout: SUBMITTED TAG N, PROGRESS TAG DONE WORKER (one per
    result), BATCH TAG JSON; TASK TAG ID, OUTCOME TAG JSON."""
    import concurrent.futures as cf
    import json
    import os
    import sys
    import time

    import zq

    def slow_square(x, delay):
        time.sleep(delay)  # sleep-ok: the task's work
        return (x, x * x, os.getpid())

    def say(*parts):
        print(*parts, flush=True)

    def run_batch(client, tag, n, delay, timeout):
        futs = [client.submit(slow_square, i, delay) for i in range(n)]
        say("SUBMITTED", tag, n)
        done = 0
        for f in cf.as_completed(futs, timeout=timeout):
            done += 1
            say("PROGRESS", tag, done, f.envelope.worker)
        rows = []
        for i, f in enumerate(futs):
            e = f.envelope
            try:
                value, error = list(f.result(timeout=0)), None
            except Exception as exc:
                value, error = None, repr(exc)
            rows.append({"i": i, "value": value, "error": error, "state": e.state.value,
                         "worker": e.worker, "attempts": e.attempts, "pid": e.pid, "lost": list(e.lost)})
        say("BATCH", tag, json.dumps(rows))

    def outcome(client, fut, timeout):
        """How ``fut`` ended, as the client sees it (the ventilator decided it)."""
        try:
            value, error = fut.result(timeout=timeout), None
        except cf.CancelledError:
            value, error = None, "CancelledError"
        except cf.TimeoutError:
            value, error = None, "TimeoutError"
        except Exception as exc:
            value, error = None, type(exc).__name__
        env = fut.envelope if fut.done() and not fut.cancelled() else None
        return {"value": value, "error": error, "status": client.get_status(fut.task_id).value,
                "lost": list(env.lost) if env is not None else None,
                "message": str(env.error.message) if env is not None and env.error else None}

    def cancel_queued(client, tag, timeout):
        """A task no worker serves, cancelled while queued: the ventilator sends its result."""
        fut = client.submit_task(slow_square, (1, 0.0), queue="nobody", retain_result=True)
        say("TASK", tag, fut.task_id)
        while client.get_status(fut.task_id).value != "QUEUED":
            pass  # accepted before it is cancelled
        cancelled = fut.cancel()
        watched = client.future_for(fut.task_id)  # comes from the sink, retained
        say("OUTCOME", tag, json.dumps({"cancelled": cancelled, **outcome(client, watched, timeout)}))

    def lose(client, tag, timeout):
        """One long task, no retries: the test kills each worker that takes it."""
        fut = client.submit_task(slow_square, (2, 120.0), retries=0)
        say("TASK", tag, fut.task_id)
        say("OUTCOME", tag, json.dumps(outcome(client, fut, timeout)))

    cfg = zq.load_config(None, {"ventilator_clients": sys.argv[1], "sink_endpoint": sys.argv[2],
                                "heartbeat_interval": float(sys.argv[3])})
    with zq.Client(cfg) as client:
        say("CLIENT-READY")
        for line in sys.stdin:
            cmd = line.split()
            if cmd and cmd[0] == "RUN":
                run_batch(client, cmd[1], int(cmd[2]), float(cmd[3]), float(cmd[4]))
            elif cmd and cmd[0] == "CANCEL":
                cancel_queued(client, cmd[1], float(cmd[2]))
            elif cmd and cmd[0] == "LOST":
                lose(client, cmd[1], float(cmd[2]))
            elif cmd and cmd[0] == "QUIT":
                break
    say("BYE")
''')


class Cluster:
    """The nodes of one test, and what the test needs to drive and inspect them."""

    def __init__(self, net: VirtualNet, tmp_path: Any) -> None:
        self.net = net
        self.tmp_path = tmp_path
        a = net.addr
        self.clients_ep = f"tcp://{a['vent']}:5555"
        self.workers_ep = f"tcp://{a['vent']}:5556"
        self.sink_ep = f"tcp://{a['sink']}:5557"
        self.nodes: dict[str, NsNodeProcess] = {}
        self.worker_ids: dict[str, str] = {}  # "w1" -> the worker's id (envelope.worker)
        self.client: Optional[subprocess.Popen] = None
        self.client_out: Optional[LineReader] = None
        self.client_err = tmp_path / "client.stderr"

    def start(self) -> None:
        net = self.net
        parent = ["--exit-with-parent", str(os.getpid())]
        self.nodes["sink"] = net.node("sink", ["sink", "--endpoint", self.sink_ep, *SECURITY_ARGS, *parent],
                                      ENV, name="sink")
        self.nodes["vent"] = net.node("vent", ["ventilator", "--clients", self.clients_ep, "--workers",
                                               self.workers_ep, "--sink", self.sink_ep, *SECURITY_ARGS,
                                               *parent], ENV, name="ventilator")
        for w in ("w1", "w2"):
            self.start_worker(w, w)
        for n in self.nodes.values():
            n.wait_ready(30)
        # both workers registered with the ventilator across the network
        status = self.wait_workers(2, deadline=time.monotonic() + 20)
        pids = {self.nodes[key].pid: key for key in ("w1", "w2")}
        for w in status["ventilator"]["workers"]:
            if w["pid"] in pids:
                self.worker_ids[pids[w["pid"]]] = w["id"]
        if set(self.worker_ids) != {"w1", "w2"}:
            pytest.fail(f"workers {pids} not found in status {json.dumps(status)}\n{self.logs()}")

    def start_worker(self, host: str, key: str) -> NsNodeProcess:
        """A worker in ``host``'s namespace, known as ``self.nodes[key]`` (not waited for)."""
        parent = ["--exit-with-parent", str(os.getpid())]
        self.nodes[key] = self.net.node(host, ["worker", "--ventilator", self.workers_ep, "--sink", self.sink_ep,
                                               "--executor", "thread", "--concurrency", str(CONCURRENCY),
                                               "--prefetch", str(PREFETCH),
                                               *CONNECT_SECURITY_ARGS, *parent], ENV, name=f"worker-{key}")
        return self.nodes[key]

    # -- inspection ---------------------------------------------------------------------
    def logs(self) -> str:
        """The last stderr lines of every node and of the client script."""
        parts = [n.log() for n in self.nodes.values()]
        if self.client_err.exists():
            parts.append("\n".join(f"    [client] {line}" for line in
                                   self.client_err.read_text().splitlines()[-40:]))
        return "\n".join(parts)

    def status(self) -> Optional[dict]:
        """``zq status --json`` run in the client's namespace; None if it did not answer."""
        r = self.net.run("cli", [sys.executable, "-m", "zq.nodes", "status", "--ventilator", self.clients_ep,
                                 "--sink", self.sink_ep, "--json", "--timeout", "2",
                                 *CONNECT_SECURITY_ARGS], env=self._env(), timeout=20)
        if r.returncode != 0:
            return None
        return json.loads(r.stdout)

    def wait_workers(self, n: int, deadline: float, must_include: Optional[str] = None) -> dict:
        last: Optional[dict] = None
        while time.monotonic() < deadline:
            last = self.status()
            if last is not None:
                ids = {w["id"] for w in last["ventilator"]["workers"]}
                if len(ids) == n and (must_include is None or must_include in ids):
                    return last
        pytest.fail(f"the ventilator did not list {n} workers (incl. {must_include}) in time; "
                    f"last status: {json.dumps(last)[:2000]}\n{self.logs()}")

    def _env(self) -> dict[str, str]:
        return {**os.environ, **ENV}

    # -- the client script --------------------------------------------------------------
    def start_client(self) -> None:
        script = self.tmp_path / "client.py"
        script.write_text(CLIENT_SCRIPT)
        err = open(self.client_err, "w")
        self.client = self.net.popen("cli", [sys.executable, str(script), self.clients_ep, self.sink_ep,
                                             str(HEARTBEAT)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                     bufsize=1, env=self._env())
        err.close()
        self.client_out = LineReader(self.client.stdout, "client")
        self.expect("CLIENT-READY", time.monotonic() + 20)

    def send(self, line: str) -> None:
        assert self.client is not None and self.client.stdin is not None
        self.client.stdin.write(line + "\n")
        self.client.stdin.flush()

    def expect(self, word: str, deadline: float) -> list[str]:
        """The next line that starts with ``word``, split; fails with the logs otherwise."""
        assert self.client_out is not None
        try:
            while True:
                line = self.client_out.next(deadline)
                if line is None:
                    pytest.fail(f"the client script ended before {word!r} "
                                f"(exit {self.client.poll() if self.client else None})\n{self.logs()}")
                parts = line.split(" ", 3 if word == "PROGRESS" else 2)
                if parts[0] == word:
                    return parts
        except TimeoutError:
            pytest.fail(f"no {word!r} line from the client script in time\n{self.logs()}")

    def run_batch(self, tag: str, n: int, delay: float, timeout: float,
                  on_progress: Any = None) -> list[dict]:
        """Submit ``n`` tasks from the client; every row once all futures are done."""
        deadline = time.monotonic() + timeout + 10
        self.send(f"RUN {tag} {n} {delay} {timeout}")
        self.expect("SUBMITTED", deadline)
        assert self.client_out is not None
        while True:
            try:
                line = self.client_out.next(deadline)
            except TimeoutError:
                pytest.fail(f"batch {tag} did not finish in time\n{self.logs()}")
            if line is None:
                pytest.fail(f"the client script ended during batch {tag}\n{self.logs()}")
            if line.startswith("PROGRESS ") and on_progress is not None:
                _, _, done, worker = line.split(" ", 3)
                on_progress(int(done), worker)
            elif line.startswith("BATCH "):
                _, got_tag, payload = line.split(" ", 2)
                assert got_tag == tag
                return json.loads(payload)

    def quit_client(self) -> None:
        self.send("QUIT")
        self.expect("BYE", time.monotonic() + 20)
        assert self.client is not None
        assert self.client.wait(20) == 0, self.logs()


@pytest.fixture
def net() -> Iterator[VirtualNet]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    vnet = VirtualNet(HOSTS)
    vnet.up()
    try:
        yield vnet
    finally:
        problems = vnet.down()
        assert not problems, problems


@pytest.fixture(params=["insecure", "curve"])
def security(request: Any, tmp_path: Any, monkeypatch: Any) -> str:
    """Every multi-host test runs twice: nodes bound with ``--insecure``, and a cluster
    secured with CURVE keys (``ZQ_SECURITY_KEYS``: nodes, ``zq status`` and the client
    script all read it)."""
    if request.param == "curve":
        keys = str(tmp_path / "keys")
        generate(keys)
        monkeypatch.setattr(sys.modules[__name__], "SECURITY_ARGS", [])
        monkeypatch.setitem(ENV, "ZQ_SECURITY_KEYS", keys)
    return request.param


@pytest.fixture
def cluster(net: VirtualNet, tmp_path: Any, security: str) -> Iterator[Cluster]:
    c = Cluster(net, tmp_path)
    try:
        c.start()
        c.start_client()
        yield c
    finally:
        # graceful stop first (workers, ventilator, sink), then the net fixture kills what is left
        if c.client is not None and c.client.poll() is None:
            c.client.kill()
        for key in ("w1", "w2", "vent", "sink"):
            if key in c.nodes:
                c.nodes[key].terminate()
        for key in ("w1", "w2", "vent", "sink"):
            if key in c.nodes:
                c.nodes[key].wait(5)


def check_values(rows: list[dict], n: int, logs: str) -> None:
    """Every task succeeded with its own value, computed in the process that reported it."""
    bad = [r for r in rows if r["state"] != "SUCCESS" or r["value"] is None
           or r["value"][:2] != [r["i"], r["i"] * r["i"]] or r["value"][2] != r["pid"]]
    if len(rows) != n or bad:
        pytest.fail(f"{len(rows)} rows for {n} tasks, {len(bad)} wrong, e.g. {bad[:3]}\n{logs}")


def test_job_spans_hosts(cluster: Cluster, security: str) -> None:
    st = cluster.status()
    assert st is not None and st["ventilator"]["secured"] is (security == "curve")
    assert st["sink"]["secured"] is (security == "curve")
    rows = cluster.run_batch("spread", 200, 0.01, timeout=40)
    check_values(rows, 200, cluster.logs())
    by_worker = collections.Counter(r["worker"] for r in rows)
    assert set(by_worker) == set(cluster.worker_ids.values()), f"{by_worker} {cluster.worker_ids}"
    # thread executors: the worker processes themselves ran the tasks
    assert {r["pid"] for r in rows} == {cluster.nodes[w].pid for w in ("w1", "w2")}
    assert all(r["attempts"] == 1 and not r["lost"] for r in rows)
    cluster.quit_client()


@pytest.mark.parametrize("side", ["bridge", "host"])
def test_worker_cut_off_then_rejoins(cluster: Cluster, side: str) -> None:
    """``bridge``: worker1's switch port goes down (its packets vanish); ``host``: its own
    interface goes down (it loses its route).  Either way the ventilator stops hearing it."""
    w1, w2 = cluster.worker_ids["w1"], cluster.worker_ids["w2"]
    seen = {"w1": 0, "cut_at": 0}

    def on_progress(done: int, worker: str) -> None:
        seen["w1"] += worker == w1
        # worker1 has finished some tasks and most of the queue is left: it holds 4 running
        # and 4 prefetched tasks (those it has had for a while, so they are not in flight)
        if not seen["cut_at"] and seen["w1"] >= 12:
            cluster.net.link_down("w1", side)
            seen["cut_at"] = done

    rows = cluster.run_batch("cut", 200, 0.1, timeout=40, on_progress=on_progress)
    logs = cluster.logs()
    assert 0 < seen["cut_at"] < 100, f"the link was cut after {seen['cut_at']} results"
    check_values(rows, 200, logs)
    retried = [r for r in rows if r["attempts"] >= 2]
    # worker1 stayed unreachable until the batch ended: what it held finished on worker2,
    # at the second attempt, with the loss recorded; never more than its credit
    assert retried, f"no task ran twice: worker1 held nothing when cut?\n{logs}"
    assert {r["worker"] for r in retried} == {w2}, f"{retried[:3]}\n{logs}"
    assert all(r["attempts"] == 2 and len(r["lost"]) == 1 and w1 in r["lost"][0] for r in retried), \
        f"{retried[:3]}\n{logs}"
    assert len(retried) <= CONCURRENCY + PREFETCH, f"{len(retried)} retried\n{logs}"
    assert {r["worker"] for r in rows} == {w1, w2}

    # cable back: worker1 reconnects with a fresh socket, registers again and takes work
    cluster.net.link_up("w1", side)
    cluster.wait_workers(2, deadline=time.monotonic() + 25, must_include=w1)
    rows2 = cluster.run_batch("back", 80, 0.05, timeout=30)
    check_values(rows2, 80, cluster.logs())
    by_worker = collections.Counter(r["worker"] for r in rows2)
    assert w1 in by_worker, f"worker1 took no work after it rejoined: {by_worker}\n{cluster.logs()}"
    cluster.quit_client()

    # what worker1 finished while cut off reaches the sink late, and is recorded once
    deadline = time.monotonic() + 15
    st: Optional[dict] = None
    while time.monotonic() < deadline:
        st = cluster.status()
        if st and st["sink"]["counters"].get("duplicates_dropped", 0) >= 1:
            break
    sink = st["sink"]["counters"] if st else {}
    vent = st["ventilator"]["counters"] if st else {}
    assert sink.get("duplicates_dropped", 0) >= 1 and sink.get("results") == 280, \
        f"sink counters {sink}\n{cluster.logs()}"
    # a task whose DONE was on the wire when the cable went is re-run too (its first result
    # wins at the sink): at least every retried task was counted as a lost attempt
    assert vent.get("lost_attempts", 0) >= len(retried), f"ventilator counters {vent}\n{cluster.logs()}"


def test_results_the_ventilator_decides_reach_the_client(cluster: Cluster) -> None:
    """The ventilator sends the sink the results it decides itself: a queued task cancelled,
    and WorkerLost.  With CURVE the sink must admit the ventilator's key (it is in neither
    clients/ nor workers/); otherwise the client never hears of either."""
    deadline = time.monotonic() + 25
    cluster.send("CANCEL c1 15")
    cluster.expect("TASK", deadline)
    out = json.loads(cluster.expect("OUTCOME", deadline)[2])
    assert out["cancelled"] is True, f"{out}\n{cluster.logs()}"
    assert out["error"] == "CancelledError" and out["status"] == "CANCELED", f"{out}\n{cluster.logs()}"

    # WorkerLost: each worker that takes the (long) task is SIGKILLed; the third loss
    # fails it, whatever its retries (0), by the ventilator's own decision
    cluster.send("LOST l1 40")
    task_id = cluster.expect("TASK", time.monotonic() + 10)[2]
    killed: list[int] = []
    spare = 0
    for _ in range(3):
        holder = None
        deadline = time.monotonic() + 20
        while holder is None and time.monotonic() < deadline:
            st = cluster.status()
            if st is None:
                continue
            workers = st["ventilator"]["workers"]
            busy = [w["pid"] for w in workers if w["running"] and w["pid"] not in killed]
            if busy:
                holder = next(n for n in cluster.nodes.values() if n.pid == busy[0])
            elif not any(n.alive() for k, n in cluster.nodes.items() if k not in ("vent", "sink")):
                spare += 1  # every worker was killed: a fresh one takes the task again
                cluster.start_worker("w1", f"spare{spare}").wait_ready(30)
        if holder is None:
            pytest.fail(f"no worker took task {task_id} again (killed {killed})\n{cluster.logs()}")
        killed.append(holder.pid)
        holder.kill()
    out = json.loads(cluster.expect("OUTCOME", time.monotonic() + 30)[2])
    assert out["error"] == "WorkerLost" and out["status"] == "FAILED", f"{out}\n{cluster.logs()}"
    assert len(out["lost"]) == 3, f"{out}\n{cluster.logs()}"
    cluster.quit_client()
