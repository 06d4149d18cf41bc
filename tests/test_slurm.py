"""Workers on Slurm: ``zq.SlurmWorkers`` and ``zq slurm`` against a real slurmctld/slurmd.

The cluster (ventilator, sink) runs on loopback; Slurm (tests/slurm_harness.py) starts the
workers as batch jobs on this host.  Skipped, with the reason, unless root with slurm-wlm and
munge installed.  Synchronisation polls the ventilator's stats and squeue (neither offers an
event), each poll bounded by a deadline.
"""

from __future__ import annotations

import shlex
import time
import uuid
from typing import Callable

import pytest

import zq
from zq.nodes.cli import cli
from zq.slurm import SlurmWorkers, slurm_job_of

from .conftest import run_zq
from .slurm_harness import Slurm, why_not

pytestmark = pytest.mark.timeout(240)


def test_the_job_script_runs_zq_worker_with_the_clusters_settings(tmp_path):
    cfg = zq.load_config(None, {"ventilator_workers": "tcp://10.0.0.1:7001", "sink_endpoint": "tcp://10.0.0.2:7002",
                                "heartbeat_interval": 0.25, "keys": str(tmp_path)})
    w = SlurmWorkers(cfg, cores=4, memory="8G", walltime="00:30:00", queues=("io", "cpu"), executor="thread",
                     account="proj", partition="short", extra=("--qos=low",), prologue=("module load python",),
                     death_timeout=90, idle_timeout=45)
    script = w.job_script()
    assert script.startswith("#!/usr/bin/env bash\n")
    for line in ("#SBATCH --cpus-per-task=4", "#SBATCH --mem=8G", "#SBATCH --time=00:30:00",
                 "#SBATCH --account=proj", "#SBATCH --partition=short", "#SBATCH --qos=low",
                 "module load python", "export ZQ_CLUSTER_HEARTBEAT_INTERVAL=0.25"):
        assert line in script.splitlines(), line
    srun = shlex.split(script.splitlines()[-1])
    assert srun[:2] == ["exec", "srun"]
    at = srun.index(w.command)
    assert srun[at + 1] == "worker"
    argv = srun[at + 2:]
    # the worker command line parses as `zq worker` takes it: every flag exists
    ctx = cli.commands["worker"].make_context("worker", argv)
    p = ctx.params
    assert (p["vent"], p["sink"], p["executor"], p["concurrency"]) == ("tcp://10.0.0.1:7001", "tcp://10.0.0.2:7002",
                                                                        "thread", 4)
    assert p["queues"] == ("io", "cpu") and p["keys"] == str(tmp_path)
    assert (p["death_timeout"], p["idle_timeout"]) == (90.0, 45.0)


def test_jobs_to_cancel_first_are_pending_then_idle_then_newest():
    from zq.slurm import Job
    jobs = [Job("10", "RUNNING", "w"), Job("11", "RUNNING", "w"), Job("12", "PENDING", "w"), Job("13", "RUNNING", "w")]
    assert [j.job_id for j in SlurmWorkers.surplus(jobs, 3, idle=["10"])] == ["12", "10", "13"]
    assert slurm_job_of("slurm42-host-1-abcdef") == "42" and slurm_job_of("host-1-abcdef") is None


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = why_not()
    if why:
        pytest.skip(why)
    s = Slurm(tmp_path_factory.mktemp("slurm")).start()
    yield s
    s.stop()


@pytest.fixture
def on_slurm(slurm, monkeypatch, start, make_client):
    """A loopback cluster without workers, a client of it, and SlurmWorkers that feed it."""
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    cluster = start(workers=0)
    client = make_client(cluster)
    cfg = zq.load_config(None, {"ventilator_clients": cluster.endpoints["clients"],
                                "ventilator_workers": cluster.endpoints["workers"],
                                "sink_endpoint": cluster.endpoints["sink"],
                                "heartbeat_interval": 0.2, "heartbeat_liveness": 6})
    made: list[SlurmWorkers] = []

    def workers(**kw) -> SlurmWorkers:
        w = SlurmWorkers(cfg, name=f"zqt-{uuid.uuid4().hex[:8]}", executor="thread", grace=5,
                         log_directory=str(slurm.root / "logs"), **kw)
        made.append(w)
        return w

    yield cluster, client, workers
    for w in made:
        w.close(wait=True, timeout=60)


def until(ok: Callable[[], bool], timeout: float, what: str, slurm: Slurm) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            where = f"; squeue: {slurm.squeue()}\n{slurm.logs()}" if slurm is not None else ""
            raise AssertionError(f"{what} within {timeout:.0f}s{where}")
        time.sleep(0.3)  # sleep-ok: the interval of a deadline-bounded poll (squeue has no event)


def worker_jobs(client: zq.Client) -> list[str]:
    return sorted(str(slurm_job_of(w["id"])) for w in client.stats()["ventilator"]["workers"])


def test_workers_on_slurm_run_tasks_scale_down_and_leave_no_job(on_slurm, slurm):
    cluster, client, workers = on_slurm
    w = workers(cores=1)
    jobs = w.scale(2)
    assert len(jobs) == 2
    ids = sorted(j.job_id for j in jobs)
    until(lambda: worker_jobs(client) == ids, 90, "both jobs' workers registered", slurm)
    assert list(client.map(abs, range(-20, 0), timeout=60)) == list(range(20, 0, -1))
    w.scale(1)  # one running job is cancelled: its worker stops gracefully
    until(lambda: len(w.active()) == 1 and len(worker_jobs(client)) == 1, 60, "one job left", slurm)
    assert list(client.map(abs, range(-5, 0), timeout=60)) == [5, 4, 3, 2, 1]
    w.close(wait=True, timeout=60)
    assert w.jobs() == []
    until(lambda: worker_jobs(client) == [], 30, "the last worker said goodbye", slurm)


def test_a_cancelled_job_hands_back_its_running_task(on_slurm, slurm):
    cluster, client, workers = on_slurm
    w = workers(cores=1)
    [job] = w.scale(1)
    until(lambda: worker_jobs(client) == [job.job_id], 90, "the worker registered", slurm)
    fut = client.submit_task(time.sleep, (30,), {}, timeout=60)
    until(lambda: client.get_status(fut.task_id) is zq.TaskState.RUNNING, 30, "the task started", slurm)
    w.cancel([job.job_id])  # SIGTERM; grace 5 s < 30 s of sleep: the task is handed back, not lost
    until(lambda: w.jobs() == [], 60, "the job ended", slurm)
    assert client.get_status(fut.task_id) in (zq.TaskState.QUEUED, zq.TaskState.RETRYING)
    [job2] = w.scale(1)  # a new job takes the task over and runs it from the start
    until(lambda: client.get_status(fut.task_id) is zq.TaskState.RUNNING, 90, "the task ran again", slurm)
    client.cancel(fut.task_id)


def test_adapt_follows_the_backlog(on_slurm, slurm):
    cluster, client, workers = on_slurm
    w = workers(cores=1)
    ad = w.adapt(minimum=0, maximum=2, client=client, interval=0.5, idle_timeout=3, wait_count=2)
    futs = [client.submit(time.sleep, 0.5) for _ in range(12)]
    until(lambda: len(worker_jobs(client)) == 2, 120, "adapt grew to two workers", slurm)
    for f in futs:
        f.result(timeout=120)
    until(lambda: w.jobs() == [], 90, "adapt shrank to nothing once idle", slurm)
    assert ad.decisions > 0 and ad.last_error is None


def test_zq_slurm_command_line(on_slurm, slurm):
    cluster, client, workers = on_slurm
    eps = cluster.endpoints
    name = f"zqt-cli-{uuid.uuid4().hex[:6]}"
    common = ["--ventilator", eps["workers"], "--sink", eps["sink"], "--executor", "thread", "--name", name,
              "--log-directory", str(slurm.root / "logs")]  # not slurm-N.out in the cwd
    r = run_zq("slurm", "submit", "--jobs", "1", *common, timeout=60)
    assert r.returncode == 0 and r.stdout.strip().isdigit(), r.stderr
    job = r.stdout.strip()
    r = run_zq("slurm", "ls", "--name", name, timeout=60)
    assert r.returncode == 0 and r.stdout.split()[0] == job, r.stdout + r.stderr
    until(lambda: worker_jobs(client) == [job], 90, "the CLI's job registered", slurm)
    assert client.submit(pow, 3, 3).result(timeout=60) == 27
    r = run_zq("slurm", "scale", "2", *common, timeout=60)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2, r.stdout + r.stderr
    r = run_zq("slurm", "cancel", "--name", name, "--timeout", "60", timeout=90)
    assert r.returncode == 0, r.stderr
    assert run_zq("slurm", "ls", "--name", name, timeout=60).stdout == ""


def test_adapt_keeps_its_minimum_without_idle_timeout():
    """Jobs that only fill ``minimum`` would leave when idle and be submitted again, forever:
    they get no --idle-timeout; jobs for the backlog above it do."""
    from zq.slurm import Adaptive

    class Fleet:
        queues, concurrency = ("default",), 1

        def __init__(self) -> None:
            self.submitted: list[tuple[int, object]] = []

        def active(self) -> list:
            return []

        def submit(self, n: int, idle_timeout=None) -> list:
            self.submitted.append((n, idle_timeout))
            return []

    class Stats:
        def stats(self) -> dict:
            return {"ventilator": {"queues": {"default": {"queued": 3, "running": 0}}, "workers": []}}

    fleet = Fleet()
    ad = Adaptive(fleet, 2, 5, Stats(), interval=3600, idle_timeout=60, wait_count=3)  # type: ignore[arg-type]
    try:
        until(lambda: ad.decisions >= 1, 10, "the first decision", None)  # type: ignore[arg-type]
    finally:
        ad.stop()
    assert fleet.submitted == [(2, None), (1, 60)]
