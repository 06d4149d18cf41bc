"""``zq.options.args_repr``: a task's arguments as the dashboard and ``zq tasks show`` say
them, made by the client at submit (the ventilator never unpickles arguments)."""

from __future__ import annotations

import pytest

from zq.options import args_repr
from zq.protocol import ARGS_REPR_MAX

pytestmark = pytest.mark.timeout(10)


class Loud:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


class BadLen(tuple):
    def __len__(self) -> int:
        raise RuntimeError("no len")


def test_a_call_reads_as_it_was_written() -> None:
    assert args_repr((1, "a", None, 2.5, b"x", [1, 2], (3,)), {"k": True}) == \
        "1, 'a', None, 2.5, b'x', [1, 2], (3,), k=True"
    assert args_repr((), {}) == ""


def test_long_values_are_elided_and_the_whole_is_capped() -> None:
    text = args_repr(("y" * 10_000, list(range(10_000)), {"a": {"b": {"c": {"d": 1}}}}), {})
    assert "..." in text and "9999" not in text and "{'c': {...}}" in text
    many = args_repr(tuple(range(1000)), {f"k{i}": "v" * 100 for i in range(100)})
    assert len(many) == ARGS_REPR_MAX and many.endswith("…")


def test_a_value_that_cannot_be_shown_never_breaks_a_submit() -> None:
    assert args_repr((Loud(),), {}).startswith("<Loud instance at")
    assert args_repr(BadLen((1,)), {}) == "<arguments that cannot be shown: RuntimeError>"


@pytest.mark.parametrize("value", [
    (5, "abc", [1, 2, 3]), list(range(100)), {"a": {"b": {"c": {"d": 1}}}}, (), (1,), [[[[1]]]], "x" * 300,
    {1, 2}, {i: str(i) for i in range(30)}, (None, True, 2.5, b"y" * 200), [(1,), {"k": [1.5]}],
])
def test_the_fast_path_says_what_reprlib_says(value: object) -> None:
    from zq.options import _REPR, _short

    assert _short(value) == _REPR.repr(value)
