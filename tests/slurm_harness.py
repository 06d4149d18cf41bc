"""A real one-node Slurm for the tests: munged, slurmctld and slurmd in the foreground, a
temporary slurm.conf, its own munge key and random ports; nothing outside a temp dir.

Usable only as root with Debian's ``slurm-wlm`` and ``munge`` installed (``.ci/run`` installs
them); ``why_not()`` says what is missing otherwise.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

from .conftest import free_port

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "srun")


def why_not() -> Optional[str]:
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs"
    missing = [d for d in DAEMONS if shutil.which(d) is None and not os.path.exists(f"/usr/sbin/{d}")]
    if missing:
        return "Slurm is not installed (apt-get install slurm-wlm munge): missing " + ", ".join(missing)
    return None


def _bin(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class Slurm:
    """One controller and one compute node on this host, ``cpus`` CPUs."""

    def __init__(self, root: Path, cpus: int = 4) -> None:
        self.root = root
        self.node = socket.gethostname().split(".")[0]
        root.chmod(0o711)  # munged wants its socket's directory searchable by everyone
        for d in ("state", "spool", "logs"):
            (root / d).mkdir()
        key = root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.conf = root / "slurm.conf"
        self.conf.write_text("\n".join([
            "ClusterName=zqtest",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "SlurmUser=root", "SlurmdUser=root",
            f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'logs' / 'slurmctld.log'}", f"SlurmdLogFile={root / 'logs' / 'slurmd.log'}",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={root / 'munge.sock'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill", "SchedulerParameters=sched_interval=1",
            "ReturnToService=2", "MpiDefault=none",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "KillWait=30", "MinJobAge=2",
            # more CPUs than this machine has (jobs sleep, mostly): believe slurm.conf, not the hardware
            "SlurmdParameters=config_overrides",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4000 State=UNKNOWN",
            f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
        ]) + "\n")
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: list[subprocess.Popen] = []
        self.outs: list = []

    def _daemon(self, argv: list[str], name: str) -> None:
        out = open(self.root / "logs" / f"{name}.out", "w")
        self.outs.append(out)
        self.procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                           stdin=subprocess.DEVNULL))

    def start(self, timeout: float = 60.0) -> "Slurm":
        r = self.root
        self._daemon([_bin("munged"), "--foreground", "--force", f"--socket={r / 'munge.sock'}",
                      f"--key-file={r / 'munge.key'}", f"--log-file={r / 'logs' / 'munged.log'}",
                      f"--pid-file={r / 'munged.pid'}", f"--seed-file={r / 'munged.seed'}"], "munged")
        self._wait(lambda: (r / "munge.sock").exists(), timeout, "munged created no socket")
        self._daemon([_bin("slurmctld"), "-D", "-i", "-f", str(self.conf)], "slurmctld")
        self._daemon([_bin("slurmd"), "-D", "-N", self.node, "-f", str(self.conf)], "slurmd")
        self._wait(self._node_idle, timeout, "the node never became idle")
        return self

    def _node_idle(self) -> bool:
        r = subprocess.run([_bin("sinfo"), "--noheader", "--format=%t"], capture_output=True, text=True,
                           env=self.env, timeout=30)
        return r.returncode == 0 and r.stdout.strip() == "idle"

    def _wait(self, ok, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not ok():
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"Slurm: {what} (exited: {dead}):\n{self.logs()}")
            time.sleep(0.2)  # sleep-ok: the interval of a deadline-bounded poll (the daemons offer no event)

    def squeue(self) -> list[str]:
        r = subprocess.run([_bin("squeue"), "--noheader", "--format=%i %T %j"], capture_output=True,
                           text=True, env=self.env, timeout=30)
        return [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]

    def logs(self, lines: int = 30) -> str:
        out = []
        for f in sorted((self.root / "logs").iterdir()):
            tail = f.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {f.name}\n" + "\n".join(tail))
        return "\n".join(out)

    def stop(self) -> None:
        """Cancel every job and wait until Slurm has none (their workers stop gracefully and
        leave), then stop the daemons: no job process outlives the test."""
        subprocess.run([_bin("scancel"), "--user=root"], env=self.env, capture_output=True, timeout=30)
        try:
            self._wait(lambda: not self.squeue(), 60, "jobs still in squeue after scancel")
        except RuntimeError:
            pass  # stop the daemons anyway; the log says which job stayed
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for out in self.outs:
            out.close()
