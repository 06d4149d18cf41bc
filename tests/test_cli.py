"""The ``zq`` command as installed: start, READY line, signals, status, errors.

Every node is the real console script in a child process on random loopback
ports; tests synchronise on the ``zq <role> READY k=v ...`` line (parsed with
``zq._embedded.parse_ready``) and on exit codes, never on sleeps.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from typing import Callable, Optional

import pytest

import zq
from zq._embedded import parse_ready

from .conftest import FAST_ENV, run_zq, zq_script

RANDOM = "tcp://127.0.0.1:0"
UP_ENV = {"ZQ_VENTILATOR_CLIENTS": RANDOM, "ZQ_VENTILATOR_WORKERS": RANDOM, "ZQ_SINK_ENDPOINT": RANDOM}
NO_SINK = "tcp://127.0.0.1:1"  # nothing listens there: a node may connect, never deliver


def clean_env(extra: Optional[dict] = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZQ_")}
    env.update(FAST_ENV)
    env.update(extra or {})
    return env


class Zq:
    """One ``zq ...`` child process whose stderr is collected and watched for READY."""

    def __init__(self, args: list[str], env: Optional[dict] = None, new_session: bool = False) -> None:
        self.args = args
        self.role = args[0]
        self.lines: list[str] = []
        self.endpoints: Optional[dict[str, str]] = None
        self._ready = threading.Event()
        self.proc = subprocess.Popen([zq_script(), *args], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=clean_env(env), start_new_session=new_session)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if self.endpoints is None:
                eps = parse_ready(line.strip(), self.role)
                if eps is not None:
                    self.endpoints = eps
                    self._ready.set()
        self._ready.set()

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float = 30.0) -> dict[str, str]:
        self._ready.wait(timeout)
        if self.endpoints is None:
            raise AssertionError(f"zq {' '.join(self.args)} printed no READY line "
                                 f"(exit code {self.proc.poll()}):\n{self.stderr}")
        return self.endpoints

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> Optional[int]:
        """Send ``sig``; the exit code, or None if it did not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture
def zq_proc():
    made: list[Zq] = []

    def start(*args: str, env: Optional[dict] = None, new_session: bool = False) -> Zq:
        p = Zq(list(args), env, new_session)
        made.append(p)
        return p

    yield start
    for p in made:
        p.kill()


# ------------------------------------------------------------------ process helpers


def _stat(pid: int) -> Optional[tuple[int, str, int]]:
    """(ppid, state, starttime) of ``pid`` from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    fields = data.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0], int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """Every live descendant of ``root``: pid -> starttime (to tell a reused pid apart)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _stat(int(d))
            if st is not None and st[1] != "Z":
                children.setdefault(st[0], []).append(int(d))
    out: dict[int, int] = {}
    todo = [root]
    while todo:
        for kid in children.get(todo.pop(), []):
            st = _stat(kid)
            if st is not None:
                out[kid] = st[2]
                todo.append(kid)
    return out


def still_running(procs: dict[int, int]) -> dict[int, str]:
    """Those of ``procs`` (pid -> starttime) still running (not gone, not a zombie): pid -> cmdline."""
    out = {}
    for pid, start in procs.items():
        st = _stat(pid)
        if st is not None and st[2] == start and st[1] != "Z":
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    out[pid] = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
    return out


def wait_gone(procs: dict[int, int], timeout: float = 15.0) -> dict[int, str]:
    """Poll until none of ``procs`` runs; what still runs at the deadline."""
    deadline = time.monotonic() + timeout
    left = still_running(procs)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)  # sleep-ok: a poll of process state with a deadline
        left = still_running(procs)
    return left


def assert_no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


def square(x):
    return x * x


def slow_value(seconds, value):
    import time as _t

    _t.sleep(seconds)  # sleep-ok: a task body that takes a while
    return value


# ------------------------------------------------------------ nodes: start and stop


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_each_node_starts_serves_and_stops_cleanly(zq_proc, sig):
    sink = zq_proc("sink", "--endpoint", RANDOM)
    sink_ep = sink.wait_ready()["endpoint"]
    vent = zq_proc("ventilator", "--clients", RANDOM, "--workers", RANDOM, "--sink", sink_ep)
    veps = vent.wait_ready()
    worker = zq_proc("worker", "--ventilator", veps["workers"], "--sink", sink_ep,
                     "--executor", "thread", "--concurrency", "2")
    weps = worker.wait_ready()

    for ep in (sink_ep, veps["clients"], veps["workers"]):
        m = re.fullmatch(r"tcp://127\.0\.0\.1:(\d+)", ep)
        assert m and int(m.group(1)) > 0, ep  # a real port, not :0 or :*
    assert len({sink_ep, veps["clients"], veps["workers"]}) == 3
    assert weps["ventilator"] == veps["workers"] and weps["sink"] == sink_ep
    for p in (sink, vent, worker):
        assert re.fullmatch(r"\d+", p.endpoints["pid"]) and int(p.endpoints["pid"]) == p.proc.pid

    client = zq.Client(ventilator=veps["clients"], sink=sink_ep)
    try:
        assert list(client.map(square, range(20), timeout=30)) == [x * x for x in range(20)]
    finally:
        client.shutdown(wait=False, cancel_futures=True)

    for p in (worker, vent, sink):  # the order an operator would use
        code = p.stop(sig)
        assert code == 0, f"zq {p.role} exited with {code} on {signal.Signals(sig).name}:\n{p.stderr}"
        assert_no_traceback(p.stderr)


def test_worker_finishes_running_task_on_sigterm(zq_proc, cluster, client):
    """Graceful stop: a running task finishes and its result arrives; exit 0."""
    worker = zq_proc("worker", "--ventilator", cluster.endpoints["workers"], "--sink",
                     cluster.endpoints["sink"], "--executor", "thread", "--concurrency", "1",
                     "--queue", "cli-only")
    worker.wait_ready()
    fut = client.submit_task(slow_value, (1.0, "finished"), queue="cli-only")
    deadline = time.monotonic() + 20
    while client.get_status(fut.task_id) is not zq.TaskState.RUNNING:
        assert time.monotonic() < deadline, "the task never started"
        assert not fut.done(), fut
    code = worker.stop(signal.SIGTERM)
    assert fut.result(timeout=20) == "finished"
    assert code == 0, worker.stderr
    assert fut.envelope.pid == worker.proc.pid


# ------------------------------------------------------------------------------ up


def test_up_starts_cluster_and_leaves_nothing_behind(zq_proc):
    up = zq_proc("up", "--workers", "2", "--executor", "process", "--concurrency", "1", env=UP_ENV)
    eps = up.wait_ready(60)
    assert {"clients", "workers", "sink"} <= set(eps)
    for ep in (eps["clients"], eps["workers"], eps["sink"]):
        assert re.fullmatch(r"tcp://127\.0\.0\.1:[1-9]\d*", ep), ep

    client = zq.Client(ventilator=eps["clients"], sink=eps["sink"])
    try:
        assert list(client.map(square, range(10), timeout=30)) == [x * x for x in range(10)]
        pids = {f.envelope.pid for f in [client.submit(os.getpid) for _ in range(4)]
                if f.result(timeout=30)}
    finally:
        client.shutdown(wait=False, cancel_futures=True)

    kids = descendants(up.proc.pid)
    # sink, ventilator, 2 workers, and each worker's executor process
    assert len(kids) >= 6, still_running(kids)
    assert pids <= set(kids)

    code = up.stop(signal.SIGTERM)
    assert code == 0, f"zq up exited with {code}:\n{up.stderr}"
    assert_no_traceback(up.stderr)
    left = wait_gone(kids)
    assert not left, f"zq up left processes behind: {left}"


def test_up_ctrl_c_to_process_group_stops_gracefully(zq_proc):
    """SIGINT to `zq up` and, as Ctrl-C in a terminal does, to its whole process group: a
    running task still finishes, exit 0, no node needed a hard stop, nothing left behind."""
    up = zq_proc("up", "--workers", "1", "--executor", "thread", "--concurrency", "1", env=UP_ENV,
                 new_session=True)
    eps = up.wait_ready(60)
    kids = descendants(up.proc.pid)
    client = zq.Client(ventilator=eps["clients"], sink=eps["sink"])
    try:
        fut = client.submit(slow_value, 1.0, "done")
        deadline = time.monotonic() + 20
        while client.get_status(fut.task_id) is not zq.TaskState.RUNNING:
            assert time.monotonic() < deadline, "the task never started"
        os.killpg(up.proc.pid, signal.SIGINT)
        assert fut.result(timeout=20) == "done"
    finally:
        client.shutdown(wait=False, cancel_futures=True)
    try:
        code = up.proc.wait(30)
    except subprocess.TimeoutExpired:
        code = None
    assert code == 0, up.stderr
    assert "exited with" not in up.stderr, up.stderr  # no node needed a hard stop
    assert not wait_gone(kids)


def test_up_with_config_file(zq_proc, tmp_path):
    cfg = tmp_path / "cluster.toml"
    cfg.write_text(f"""
[ventilator]
clients = "{RANDOM}"
workers = "{RANDOM}"

[sink]
endpoint = "{RANDOM}"
retain = true

[worker]
executor = "thread"
queues = ["default", "from-config"]

[cluster]
heartbeat_interval = 0.2
""")
    up = zq_proc("up", "--config", str(cfg), "--workers", "1", "--executor", "thread", "--concurrency", "2")
    eps = up.wait_ready(60)
    kids = descendants(up.proc.pid)
    client = zq.Client(ventilator=eps["clients"], sink=eps["sink"])
    try:
        # only a worker that read the file serves "from-config"; the sink retains by default
        fut = client.submit_task(square, (12,), queue="from-config", retain_result=None)
        assert fut.result(timeout=30) == 144
        assert client.get_result(fut.task_id, timeout=10).value == 144
    finally:
        client.shutdown(wait=False, cancel_futures=True)
    assert up.stop() == 0, up.stderr
    assert not wait_gone(kids)


# --------------------------------------------------------------------------- status


def test_status_prints_workers_queues_counts_rate(cluster, client):
    assert list(client.map(square, range(10), timeout=30)) == [x * x for x in range(10)]
    eps = cluster.endpoints
    args = ["status", "--ventilator", eps["clients"], "--sink", eps["sink"]]

    deadline = time.monotonic() + 20
    while True:  # the ventilator counts a task done when the worker's DONE arrives
        r = run_zq(*args, "--json")
        assert r.returncode == 0, r.stderr
        data = json.loads(r.stdout)
        if data["ventilator"]["counters"].get("done", 0) >= 10 or time.monotonic() > deadline:
            break
    v, s = data["ventilator"], data["sink"]
    assert v["counters"]["submitted"] == 10 and v["counters"]["done"] == 10
    assert s["counters"]["results"] == 10
    assert isinstance(v["tasks_per_second"], (int, float))
    assert {w["pid"] for w in v["workers"]} == {w.proc.pid for w in cluster.workers}
    for w in v["workers"]:
        assert w["queues"] == ["default"] and w["executor"] == "thread" and w["concurrency"] == 4
    assert v["queues"]["default"]["served"] is True

    r = run_zq(*args)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "tasks/s" in out and re.search(r"\d+\.\d+ tasks/s", out), out
    assert re.search(r"submitted 10\b", out) and re.search(r"done 10\b", out), out
    assert re.search(r"^default\s+0\s+0\s+yes", out, re.M), out
    for w in v["workers"]:
        assert w["id"] in out
    assert re.search(r"bad messages: ventilator 0\s+sink 0", out), out


def test_status_of_absent_cluster_fails_with_one_line():
    r = run_zq("status", "--ventilator", NO_SINK, "--sink", NO_SINK, "--timeout", "0.5")
    assert r.returncode != 0
    assert_no_traceback(r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "did not answer" in lines[0], r.stderr


# --------------------------------------------------------------------- usage errors
#
# Each case is a short-lived process; the cases of one test run concurrently and
# every failing case is reported, not just the first.


def run_cases(cases: list[tuple[str, list[str], dict, Callable[[subprocess.CompletedProcess], None]]]) -> None:
    """Run ``zq ARGS`` for each (label, args, env, check) concurrently; fail listing every bad case."""

    def one(case):
        label, args, env, check = case
        r = run_zq(*args, timeout=30, env=clean_env(env))
        try:
            check(r)
        except AssertionError as exc:
            return f"{label}: zq {' '.join(args)} -> exit {r.returncode}: {exc}\n  stderr: {r.stderr!r}"
        return None

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        problems = [p for p in pool.map(one, cases) if p]
    assert not problems, "\n".join(problems)


def usage_error(*names: str) -> Callable[[subprocess.CompletedProcess], None]:
    def check(r: subprocess.CompletedProcess) -> None:
        assert r.returncode != 0, "exit code 0"
        assert "Traceback" not in r.stderr, "a traceback"
        assert len(r.stderr.strip().splitlines()) <= 4, "more than a short message"  # usage, hint, error
        for n in names:
            assert n in r.stderr, f"{n!r} not named"
        assert "READY" not in r.stderr, "it started"
    return check


def one_line_error(*names: str) -> Callable[[subprocess.CompletedProcess], None]:
    def check(r: subprocess.CompletedProcess) -> None:
        assert r.returncode != 0, "exit code 0"
        assert "Traceback" not in r.stderr, "a traceback"
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, f"{len(lines)} lines, not one"
        assert "READY" not in r.stderr, "it started"
        for n in names:
            assert n in lines[0], f"{n!r} not named"
    return check


def test_bad_flags_exit_nonzero_without_traceback():
    run_cases([
        ("bad executor", ["worker", "--executor", "nope"], {}, usage_error("--executor", "nope")),
        ("negative ttl", ["sink", "--result-ttl", "-1"], {}, usage_error("--result-ttl")),
        ("zero ttl", ["sink", "--result-ttl", "0"], {}, usage_error("--result-ttl")),
        ("zero concurrency", ["worker", "--concurrency", "0"], {}, usage_error("--concurrency")),
        ("unknown option", ["ventilator", "--no-such-option"], {}, usage_error("--no-such-option")),
        ("non-numeric", ["up", "--workers", "many"], {}, usage_error("--workers")),
        ("up executor", ["up", "--executor", "nope"], {}, usage_error("--executor")),
        ("unknown command", ["no-such-command"], {}, usage_error("no-such-command")),
    ])


def test_config_errors_give_one_line(tmp_path):
    absent = str(tmp_path / "absent.toml")
    a_file = tmp_path / "file"
    a_file.write_text("")
    through_file = str(a_file / "zq.toml")  # cannot be opened, even by root
    bad = {}
    for name, text in [("bogus_key", "[ventilator]\nbogus = 1\n"), ("bad_section", "[nosuch]\nx = 1\n"),
                       ("bad_value", "[worker]\nconcurrency = \"many\"\n"), ("bad_toml", "[sink\n"),
                       ("typo", "[worker]\nconcurency = 2\n")]:
        bad[name] = str(tmp_path / f"{name}.toml")
        (tmp_path / f"{name}.toml").write_text(text)
    cases = [
        ("missing file", ["up", "--config", absent], UP_ENV, one_line_error(absent)),
        ("missing file", ["status", "--config", absent], {}, one_line_error(absent)),
        ("unreadable", ["sink", "--config", through_file], {}, one_line_error(through_file)),
        ("unknown key", ["ventilator", "--config", bad["bogus_key"]], {},
         one_line_error(bad["bogus_key"], "ventilator.bogus")),
        ("unknown key", ["up", "--config", bad["typo"]], UP_ENV, one_line_error("worker.concurency")),
        ("unknown section", ["sink", "--config", bad["bad_section"]], {}, one_line_error("nosuch")),
        ("bad value", ["worker", "--config", bad["bad_value"]], {}, one_line_error("worker.concurrency")),
        ("not TOML", ["sink", "--config", bad["bad_toml"]], {}, one_line_error(bad["bad_toml"], "TOML")),
        ("bad env", ["worker"], {"ZQ_WORKER_CONCURRENCY": "lots"}, one_line_error("ZQ_WORKER_CONCURRENCY")),
    ]
    if os.geteuid() != 0:  # root reads a mode-000 file anyway
        locked = tmp_path / "locked.toml"
        locked.write_text("[sink]\n")
        locked.chmod(0)
        cases.append(("mode 000", ["sink", "--config", str(locked)], {}, one_line_error(str(locked))))
    run_cases(cases)


def test_non_utf8_config_file(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[ventilator]\nclients = "tcp://caf\xe9:1"\n')
    run_cases([("non-UTF-8", ["ventilator", "--config", str(path)], {}, one_line_error(str(path)))])


# ------------------------------------------------------------------------ bind errors


@pytest.fixture
def taken_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    yield s.getsockname()[1]
    s.close()


def test_endpoint_in_use_gives_one_line_error(taken_port):
    ep = f"tcp://127.0.0.1:{taken_port}"
    run_cases([
        ("clients", ["ventilator", "--clients", ep, "--workers", RANDOM, "--sink", NO_SINK], {},
         one_line_error(ep, "bind")),
        ("workers", ["ventilator", "--clients", RANDOM, "--workers", ep, "--sink", NO_SINK], {},
         one_line_error(ep, "bind")),
        ("sink", ["sink", "--endpoint", ep], {}, one_line_error(ep, "bind")),
        ("sink via env", ["sink"], {"ZQ_SINK_ENDPOINT": ep}, one_line_error(ep, "bind")),
    ])


def _free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_up_honours_env_endpoints(zq_proc):
    """ZQ_* endpoints outrank the defaults for `zq up` as for every node."""
    port = _free_port()
    up = zq_proc("up", "--workers", "0", env={**UP_ENV, "ZQ_SINK_ENDPOINT": f"tcp://127.0.0.1:{port}"})
    eps = up.wait_ready(60)
    assert eps["sink"] == f"tcp://127.0.0.1:{port}"
    assert up.stop() == 0


def test_up_with_endpoint_in_use_fails_and_leaves_nothing(zq_proc, taken_port):
    up = zq_proc("up", "--workers", "1", "--executor", "thread",
                 env={**UP_ENV, "ZQ_SINK_ENDPOINT": f"tcp://127.0.0.1:{taken_port}"})
    up._ready.wait(60)  # set by a READY line or by the end of its stderr
    kids = descendants(up.proc.pid)
    assert up.endpoints is None, f"zq up bound something else and started:\n{up.stderr}"
    code = up.proc.wait(30)
    assert code not in (0, None)
    assert_no_traceback(up.stderr)
    lines = up.stderr.splitlines()
    assert lines[-1].startswith("zq: error:"), up.stderr
    assert any(f"127.0.0.1:{taken_port}" in line and "bind" in line for line in lines), up.stderr
    assert not wait_gone(kids)


# -------------------------------------------------------------------- embedded client


def test_embedded_client_runs_a_task_and_cleans_up():
    me = os.getpid()
    before = descendants(me)
    client = zq.Client()
    try:
        during = {p: s for p, s in descendants(me).items() if p not in before}
        assert len(during) >= 3, during  # at least ventilator, sink, worker (and `up` itself)
        assert client.submit(pow, 2, 10).result(timeout=30) == 1024
        fut = client.submit(square, 9)
        assert fut.result(timeout=30) == 81
        assert fut.envelope.pid in during
        during.update({p: s for p, s in descendants(me).items() if p not in before})
    finally:
        client.shutdown()
    left = wait_gone(during)
    assert not left, f"zq.Client() left processes behind: {left}"
