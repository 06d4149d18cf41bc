"""Tasks imported by workers in tests/test_http_api.py (``--import tests.http_tasks``)."""

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
