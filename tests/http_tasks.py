"""Tasks imported by the workers of the zq http tests (``--import tests.http_tasks``)."""

import time

import zq


@zq.task(name="http.add")
def add(a: int, b: int = 0) -> int:
    return a + b


@zq.task(name="http.fail")
def fail() -> None:
    raise ValueError("on purpose")


@zq.task(name="http.echo")
def echo(text: str = "") -> str:
    return text


@zq.task(name="http.nap")
def nap(seconds: float = 0.01) -> float:
    time.sleep(seconds)  # sleep-ok: the task's work (a steady load for the dashboard)
    return seconds
