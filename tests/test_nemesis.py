"""The nemesis in CI: seeded faults against a whole secured cluster, then every promise.

A ventilator with ``--journal``, a sink with ``--retain --journal``, CURVE on every
socket, three workers (thread, process, thread); clients submit a few thousand tasks
that log each execution, and the nemesis SIGKILLs, SIGTERMs and SIGSTOPs workers,
SIGKILLs and restarts the sink and the ventilator, pauses them, kills a client (a new
one reads its results) and, as root, cuts worker links in network namespaces.  The
judge's rules are in :mod:`bench.nemesis`.  The seed is printed and in the failure
message; ``ZQ_NEMESIS_SEED=N`` reproduces a run's choices.
"""

from __future__ import annotations

import os
import random

import pytest

from zq.bench import nemesis
from zq.bench.netns import unavailable_reason

SECONDS = 35.0


@pytest.mark.timeout(180)
def test_every_promise_holds_under_a_seeded_nemesis(tmp_path):
    seed = int(os.environ.get("ZQ_NEMESIS_SEED") or random.SystemRandom().randrange(1 << 30))
    print(f"nemesis seed {seed}")
    netns = unavailable_reason() is None
    opts = nemesis.Options(seconds=SECONDS, seed=seed, tasks=int(50 * SECONDS), netns=netns, drain=40.0)
    rep = nemesis.run(opts, str(tmp_path))
    table = nemesis.format_report(rep)
    assert not rep["violations"], f"seed {seed} (ZQ_NEMESIS_SEED={seed} reproduces it):\n{table}"
    # the run really was hostile, and really did work
    assert rep["faults_total"] >= 8, table
    assert rep["tasks_accepted"] >= 0.9 * opts.tasks, table
