"""Tasks imported by the workers of the zq http tests (``--import tests.http_tasks``)."""

import os
import time

import zq


@zq.task(name="http.add")
def add(a: int, b: int = 0) -> int:
    return a + b


@zq.task(name="http.fail")
def fail(why: str = "on purpose") -> None:
    raise ValueError(why)


@zq.task(name="http.echo")
def echo(text: str = "") -> str:
    return text


@zq.task(name="http.nap")
def nap(seconds: float = 0.01) -> float:
    time.sleep(seconds)  # sleep-ok: the task's work (a steady load for the dashboard)
    return seconds


@zq.task(name="http.steps")
def steps(flag: str, ctx: zq.TaskContext) -> int:
    """Reports 1/4 then 2/4, and finishes once the file ``flag`` exists (20 s at most)."""
    ctx.progress(1, 4, "step 1")
    time.sleep(0.05)  # sleep-ok: the second report must come later (a rate, then an ETA)
    ctx.progress(2, 4, "step 2")
    deadline = time.monotonic() + 20
    while not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.01)  # sleep-ok: a poll of the test's signal, with a deadline
    return 4


@zq.task(name="http.nan")
def nan() -> float:
    return float("nan")


@zq.task(name="http.endless")
def endless(flag: str, ctx: zq.TaskContext) -> int:
    """Reports progress toward an infinite total, and finishes once ``flag`` exists."""
    ctx.progress(1, float("inf"), "no end in sight")
    deadline = time.monotonic() + 20
    while not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.01)  # sleep-ok: a poll of the test's signal, with a deadline
    return 1
