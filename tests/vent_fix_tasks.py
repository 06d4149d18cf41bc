"""Tasks for tests/test_ventilator_fixes.py (imported by its workers: ``--import``).

The periodic task is defined only when ``ZQ_VF_SCHEDULE`` is set, so a cluster that
imports this module for another reason fires nothing.  Nothing here is a test.
"""

from __future__ import annotations

import os

import zq

ENV_SCHEDULE = "ZQ_VF_SCHEDULE"
IMPORT_ARGS = ["--import", "tests.vent_fix_tasks"]


def followup() -> str:
    """The client this follow-up belongs to, as its worker was told ("" for none)."""
    return zq.current_task().client_id


def kill_my_worker() -> None:
    """Ends the worker process running it (thread executor): a lost worker."""
    os._exit(17)


if os.environ.get(ENV_SCHEDULE):

    @zq.task(name="vf.spawner", every=0.5, max_runs=1)
    def spawner(ctx: zq.TaskContext) -> str:
        """A scheduled task (no client) queueing a follow-up."""
        return ctx.submit(followup, retain_result=True)
