"""Workers started as Slurm jobs: ``zq.SlurmWorkers``, as dask-jobqueue's ``SLURMCluster``.

    workers = zq.SlurmWorkers("cluster.toml", cores=8, memory="16G", walltime="02:00:00",
                              partition="cpu", account="proj")
    print(workers.job_script())      # what sbatch is given
    workers.scale(10)                # ten jobs, one zq worker of 8 slots each
    workers.adapt(minimum=0, maximum=50)   # or follow the ventilator's backlog
    ...
    workers.close()                  # cancel every job: each worker hands back what it holds

Each job runs ``srun zq worker --ventilator EP --sink EP ...`` with the cluster's endpoints,
keys and heartbeat settings written into the script, so compute nodes need the same Python
environment and the key directory (a shared filesystem), not the TOML file.  Jobs are found
again by their name and user (``squeue --name``), so the command line (``zq slurm ls|scale|
cancel``) and a new Python process see the jobs an earlier one submitted.

A job's worker stops by itself when the ventilator has been unreachable for
``death_timeout`` seconds (``zq worker --death-timeout``), and under ``adapt`` when it has
had no task for ``idle_timeout`` seconds (``--idle-timeout``), so that an allocation is not
burnt by a worker with nothing to do.  ``scancel`` sends SIGTERM, zq's graceful stop: running
tasks get ``grace`` seconds (keep it under the cluster's ``KillWait``, 30 s by default), the
rest is handed back to the ventilator; nothing accepted is lost.

Only the standard library and ``zq.config`` are imported; Slurm's own commands do the work.
"""

from __future__ import annotations

import getpass
import logging
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from .config import Config, load_config
from .errors import ConfigError, ZqError

if TYPE_CHECKING:  # pragma: no cover
    from .client import Client

log = logging.getLogger("zq.slurm")

COMMAND_TIMEOUT = 60.0  # seconds a Slurm command may take (slurmctld busy) before we give up


class SlurmError(ZqError):
    """A Slurm command failed; the message carries the command and what it printed."""


@dataclass(frozen=True)
class Job:
    job_id: str
    state: str  # Slurm's: PENDING, RUNNING, COMPLETING, ...
    name: str

    @property
    def pending(self) -> bool:
        return self.state in ("PENDING", "CONFIGURING", "REQUEUED")


def zq_command() -> str:
    """The ``zq`` console script of this Python environment (jobs run the same one)."""
    here = os.path.join(os.path.dirname(sys.executable), "zq")
    return here if os.path.exists(here) else (shutil.which("zq") or "zq")


def run(argv: Sequence[str], input: Optional[str] = None) -> str:
    """Run one Slurm command; its stdout, or a SlurmError saying what it printed."""
    try:
        r = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]}: not found (is Slurm installed on this host, and on PATH?)") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{shlex.join(argv)}: no answer within {COMMAND_TIMEOUT:.0f}s") from None
    if r.returncode != 0:
        raise SlurmError(f"{shlex.join(argv)} failed ({r.returncode}): {(r.stderr or r.stdout).strip()}")
    return r.stdout


class SlurmWorkers:
    """zq workers as Slurm batch jobs, one worker process per job."""

    def __init__(self, config: Union[str, Config, None] = None, *, ventilator: Optional[str] = None,
                 sink: Optional[str] = None, keys: Optional[str] = None, key_name: Optional[str] = None,
                 cores: int = 1, memory: Optional[str] = None, walltime: str = "01:00:00",
                 queues: Sequence[str] = ("default",), executor: str = "process",
                 concurrency: Optional[int] = None, account: Optional[str] = None,
                 partition: Optional[str] = None, extra: Sequence[str] = (), prologue: Sequence[str] = (),
                 name: str = "zq-worker", log_directory: Optional[str] = None,
                 death_timeout: float = 60.0, idle_timeout: Optional[float] = None, grace: float = 20.0,
                 command: Optional[str] = None) -> None:
        cfg = config if isinstance(config, Config) else load_config(config)
        if executor not in ("thread", "process"):
            raise ConfigError(f"executor must be 'thread' or 'process', not {executor!r}")
        if cores < 1 or (concurrency is not None and concurrency < 1):
            raise ConfigError("cores and concurrency must be at least 1")
        if not queues:
            raise ConfigError("a worker serves at least one queue")
        self.config = cfg
        self.ventilator = ventilator or cfg.ventilator_workers
        self.sink = sink or cfg.sink_endpoint
        self.keys = os.path.abspath(keys or cfg.keys) if (keys or cfg.keys) else None
        self.key_name = key_name or cfg.key_name or None
        self.cores, self.memory, self.walltime = cores, memory, walltime
        self.queues, self.executor = tuple(queues), executor
        self.concurrency = concurrency or cores
        self.account, self.partition = account, partition
        self.extra, self.prologue = tuple(extra), tuple(prologue)
        self.name = name
        self.log_directory = os.path.abspath(log_directory) if log_directory else None
        self.death_timeout, self.idle_timeout, self.grace = death_timeout, idle_timeout, grace
        self.command = command or zq_command()
        self.user = getpass.getuser()
        self._adaptive: Optional[Adaptive] = None

    # -- what a job runs ---------------------------------------------------------------
    def worker_args(self, idle_timeout: Optional[float] = None) -> list[str]:
        args = [self.command, "worker", "--ventilator", self.ventilator, "--sink", self.sink,
                "--executor", self.executor, "--concurrency", str(self.concurrency),
                "--grace", f"{self.grace:g}", "--death-timeout", f"{self.death_timeout:g}"]
        for q in self.queues:
            args += ["--queue", q]
        idle = idle_timeout if idle_timeout is not None else self.idle_timeout
        if idle is not None:
            args += ["--idle-timeout", f"{idle:g}"]
        if self.keys:
            args += ["--keys", self.keys]
            if self.key_name:
                args += ["--key-name", self.key_name]
        return args

    def job_script(self, idle_timeout: Optional[float] = None) -> str:
        """The batch script ``scale`` hands to sbatch (print it to see what runs)."""
        directives = [f"--job-name={self.name}", "--ntasks=1", f"--cpus-per-task={self.cores}",
                      f"--time={self.walltime}"]
        if self.memory:
            directives.append(f"--mem={self.memory}")
        if self.partition:
            directives.append(f"--partition={self.partition}")
        if self.account:
            directives.append(f"--account={self.account}")
        if self.log_directory:
            directives.append(f"--output={os.path.join(self.log_directory, self.name + '-%j.out')}")
        directives += [e if e.startswith("-") else f"--{e}" for e in self.extra]
        c = self.config
        env = {"ZQ_CLUSTER_HEARTBEAT_INTERVAL": f"{c.heartbeat_interval:g}",
               "ZQ_CLUSTER_HEARTBEAT_LIVENESS": str(c.heartbeat_liveness),
               "ZQ_CLUSTER_MAX_MESSAGE_SIZE": str(c.max_message_size)}
        if c.insecure:
            env["ZQ_CLUSTER_INSECURE"] = "1"
        lines = ["#!/usr/bin/env bash"]
        lines += [f"#SBATCH {d}" for d in directives]
        lines += list(self.prologue)
        lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
        # srun forwards scancel's SIGTERM to the worker: the graceful stop
        lines.append("exec srun --ntasks=1 --kill-on-bad-exit=1 " + shlex.join(self.worker_args(idle_timeout)))
        return "\n".join(lines) + "\n"

    # -- jobs ------------------------------------------------------------------------
    def jobs(self) -> list[Job]:
        """This name's jobs of this user that Slurm still knows (pending, running, ending)."""
        out = run(["squeue", "--noheader", "--user", self.user, "--name", self.name,
                   "--format=%i|%T|%j"])
        jobs = []
        for line in out.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3 and parts[2] == self.name:
                jobs.append(Job(parts[0], parts[1], parts[2]))
        return jobs

    def active(self) -> list[Job]:
        """Jobs that count towards the scale: pending or running, not already ending."""
        return [j for j in self.jobs() if j.pending or j.state == "RUNNING"]

    def submit(self, n: int = 1, idle_timeout: Optional[float] = None) -> list[str]:
        """Submit ``n`` more jobs; their ids."""
        script = self.job_script(idle_timeout)
        ids = []
        with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="zq-worker-", delete=False) as f:
            f.write(script)
            path = f.name
        try:
            for _ in range(n):
                ids.append(run(["sbatch", "--parsable", path]).strip().split(";")[0])
        finally:
            os.unlink(path)
        if ids:
            log.info("submitted %d worker job(s): %s", len(ids), ", ".join(ids))
        return ids

    def cancel(self, job_ids: Sequence[str]) -> None:
        """Cancel jobs: SIGTERM to their workers (the graceful stop), pending ones just go."""
        if job_ids:
            run(["scancel", *job_ids])
            log.info("cancelled worker job(s): %s", ", ".join(job_ids))

    def scale(self, n: int, idle_timeout: Optional[float] = None) -> list[Job]:
        """Bring the number of active jobs to ``n``: submit more, or cancel the pending first,
        then the newest running ones.  The jobs after the change."""
        if n < 0:
            raise ValueError("scale needs n >= 0")
        active = self.active()
        if len(active) < n:
            self.submit(n - len(active), idle_timeout)
        elif len(active) > n:
            self.cancel([j.job_id for j in self.surplus(active, len(active) - n)])
        return self.active()

    @staticmethod
    def surplus(active: Sequence[Job], k: int, idle: Sequence[str] = ()) -> list[Job]:
        """The ``k`` jobs to cancel first: pending (newest first), then running ones whose
        worker is idle, then the newest running."""
        def rank(j: Job) -> tuple:
            return (0 if j.pending else 1 if j.job_id in idle else 2, -_job_number(j.job_id))
        return sorted(active, key=rank)[:k]

    def adapt(self, minimum: int = 0, maximum: int = 10, *, client: Optional["Client"] = None,
              interval: float = 5.0, idle_timeout: float = 60.0, wait_count: int = 3) -> "Adaptive":
        """Follow the ventilator's backlog: jobs = ceil((queued + running) / slots per job),
        between ``minimum`` and ``maximum``.  Scaling down waits for ``wait_count`` checks in
        a row and cancels pending jobs, then jobs whose worker holds nothing; workers also
        exit after ``idle_timeout`` seconds without a task."""
        if self._adaptive is not None:
            self._adaptive.stop()
        self._adaptive = Adaptive(self, minimum, maximum, client, interval, idle_timeout, wait_count)
        return self._adaptive

    def close(self, wait: bool = True, timeout: float = 60.0) -> None:
        """Stop adapting and cancel every job of this name; with ``wait``, until Slurm has
        none left (their workers handed back what they held)."""
        if self._adaptive is not None:
            self._adaptive.stop()
            self._adaptive = None
        jobs = self.jobs()
        self.cancel([j.job_id for j in jobs if j.state not in ("COMPLETING", "CANCELLED")])
        deadline = time.monotonic() + timeout
        while wait and self.jobs():
            if time.monotonic() > deadline:
                raise SlurmError(f"jobs named {self.name} still in squeue {timeout:.0f}s after scancel")
            time.sleep(0.5)  # polling an external scheduler: squeue has no event to wait on

    def __enter__(self) -> "SlurmWorkers":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"SlurmWorkers(name={self.name!r}, cores={self.cores}, concurrency={self.concurrency}, "
                f"queues={list(self.queues)}, ventilator={self.ventilator!r})")


def _job_number(job_id: str) -> int:
    head = job_id.split("_")[0]
    return int(head) if head.isdigit() else 0


def slurm_job_of(worker_id: str) -> Optional[str]:
    """The Slurm job id in a worker's id (``slurm<JOB>-host-pid-xxxxxx``), if any."""
    if worker_id.startswith("slurm"):
        head = worker_id[5:].split("-", 1)[0]
        return head if head.isdigit() else None
    return None


class Adaptive:
    """The thread behind ``SlurmWorkers.adapt``: one decision every ``interval`` seconds."""

    def __init__(self, workers: SlurmWorkers, minimum: int, maximum: int, client: Optional["Client"],
                 interval: float, idle_timeout: float, wait_count: int) -> None:
        if not 0 <= minimum <= maximum:
            raise ValueError("adapt needs 0 <= minimum <= maximum")
        self.workers, self.minimum, self.maximum = workers, minimum, maximum
        self.interval, self.idle_timeout, self.wait_count = interval, idle_timeout, wait_count
        self._own_client = client is None
        if client is None:
            from .client import Client
            client = Client(workers.config, keys=workers.keys, key_name=workers.key_name)
        self.client = client
        self.last_error: Optional[str] = None
        self.decisions = 0
        self._below = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zq-slurm-adapt", daemon=True)
        self._thread.start()

    def target(self, stats: dict) -> tuple[int, list[str]]:
        """Jobs wanted now, and the jobs whose workers hold no task."""
        queues = stats.get("ventilator", stats).get("queues", {})
        served = set(self.workers.queues)
        backlog = sum(q.get("queued", 0) + q.get("running", 0) for name, q in queues.items() if name in served)
        wanted = min(self.maximum, max(self.minimum, math.ceil(backlog / self.workers.concurrency)))
        idle = []
        for w in stats.get("ventilator", stats).get("workers", []):
            job = slurm_job_of(str(w.get("id", "")))
            if job and not w.get("running"):  # running counts every task it holds
                idle.append(job)
        return wanted, idle

    def step(self) -> None:
        wanted, idle = self.target(self.client.stats())
        active = self.workers.active()
        if wanted > len(active):
            self._below = 0
            # jobs that fill the minimum stay (no --idle-timeout): an idle one would leave,
            # be submitted again, and wait in Slurm's queue once work comes
            floor = max(0, self.minimum - len(active))
            if floor:
                self.workers.submit(floor)
            if wanted - len(active) - floor > 0:
                self.workers.submit(wanted - len(active) - floor, self.idle_timeout)
        elif wanted < len(active):
            self._below += 1
            if self._below >= self.wait_count:
                self._below = 0
                k = len(active) - wanted
                cut = [j for j in SlurmWorkers.surplus(active, k, idle) if j.pending or j.job_id in idle]
                self.workers.cancel([j.job_id for j in cut])
        else:
            self._below = 0
        self.decisions += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
                self.last_error = None
            except Exception as exc:  # a failed squeue or an unreachable ventilator: try again
                if str(exc) != self.last_error:
                    log.warning("adapt: %s", exc)
                self.last_error = str(exc)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(COMMAND_TIMEOUT + self.interval)
        if self._own_client:
            self.client.shutdown(wait=False, cancel_futures=False)
