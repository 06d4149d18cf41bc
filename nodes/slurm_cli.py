"""``zq slurm submit|scale|ls|cancel``: workers as Slurm jobs from the command line.

The same ``zq.SlurmWorkers`` the Python API offers; jobs are found by their name (``--name``,
default ``zq-worker``) and the user, so each command is one-shot and stateless.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional, Sequence

import click

from zq.errors import ConfigError
from zq.slurm import SlurmError, SlurmWorkers

name_opt = click.option("--name", default="zq-worker", show_default=True, help="The jobs' Slurm job name.")

job_opts = [
    click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file."),
    click.option("--ventilator", "vent", help="The ventilator's workers endpoint."),
    click.option("--sink", help="The sink's endpoint."),
    click.option("--keys", type=click.Path(file_okay=False), default=None, help="CURVE key directory."),
    click.option("--key-name", default=None, help="The workers' key pair in --keys (default: worker)."),
    click.option("--cores", type=click.IntRange(min=1), default=1, show_default=True, help="CPUs per job."),
    click.option("--memory", default=None, help="Memory per job, as sbatch --mem takes it (16G)."),
    click.option("--walltime", default="01:00:00", show_default=True, help="Time limit per job."),
    click.option("--queue", "queues", multiple=True, help="Queue to serve (repeatable, default 'default')."),
    click.option("--executor", type=click.Choice(["thread", "process"]), default="process", show_default=True),
    click.option("--concurrency", type=click.IntRange(min=1), default=None, help="Slots per worker (default: --cores)."),
    click.option("--account", default=None, help="sbatch --account."),
    click.option("--partition", default=None, help="sbatch --partition."),
    click.option("--extra", multiple=True, help="One more sbatch option, e.g. --extra=--qos=low (repeatable)."),
    click.option("--log-directory", type=click.Path(file_okay=False), default=None, help="Where job output goes."),
    click.option("--death-timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
                 help="A worker exits when the ventilator has been unreachable this long (seconds)."),
    click.option("--idle-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="A worker exits after this many seconds without a task."),
    click.option("--grace", type=click.FloatRange(min=0), default=20.0, show_default=True,
                 help="Seconds running tasks get when a job is cancelled."),
    name_opt,
]


def with_options(options: Sequence[Callable]) -> Callable:
    def wrap(f: Callable) -> Callable:
        for opt in reversed(options):
            f = opt(f)
        return f
    return wrap


def _workers(config_path: Optional[str] = None, vent: Optional[str] = None, sink: Optional[str] = None,
             queues: Sequence[str] = (), log_directory: Optional[str] = None, **kw: Any) -> SlurmWorkers:
    try:
        return SlurmWorkers(config_path, ventilator=vent, sink=sink, queues=tuple(queues) or ("default",),
                            log_directory=log_directory, **kw)
    except ConfigError as exc:
        click.echo(f"zq: error: {exc}", err=True)
        sys.exit(3)


def _slurm(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except SlurmError as exc:
        click.echo(f"zq: error: {exc}", err=True)
        sys.exit(1)


@click.group()
def slurm() -> None:
    """Workers as Slurm batch jobs (one zq worker per job)."""


@slurm.command()
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="How many jobs.")
@click.option("--print", "only_print", is_flag=True, help="Print the job script; submit nothing.")
@with_options(job_opts)
def submit(jobs: int, only_print: bool, **kw: Any) -> None:
    """Submit JOBS more worker jobs."""
    w = _workers(**kw)
    if only_print:
        click.echo(w.job_script(), nl=False)
        return
    for job_id in _slurm(lambda: w.submit(jobs)):
        click.echo(job_id)


@slurm.command()
@click.argument("n", type=click.IntRange(min=0))
@with_options(job_opts)
def scale(n: int, **kw: Any) -> None:
    """Bring the worker jobs to N (submit more, or cancel pending ones first)."""
    w = _workers(**kw)
    for job in _slurm(lambda: w.scale(n)):
        click.echo(f"{job.job_id}\t{job.state}")


@slurm.command("ls")
@name_opt
def ls(name: str) -> None:
    """List the worker jobs Slurm knows."""
    w = _workers(name=name)
    jobs = _slurm(w.jobs)
    for job in jobs:
        click.echo(f"{job.job_id}\t{job.state}\t{job.name}")
    if not jobs:
        click.echo(f"(no jobs named {name})", err=True)


@slurm.command()
@name_opt
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait until Slurm has none left (their workers handed back what they held).")
@click.option("--timeout", type=float, default=120.0, show_default=True)
def cancel(name: str, wait: bool, timeout: float) -> None:
    """Cancel every worker job of this name (a graceful stop for each worker)."""
    w = _workers(name=name)
    _slurm(lambda: w.close(wait=wait, timeout=timeout))
