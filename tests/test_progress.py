"""Progress bars over futures (tqdm), on a real cluster: the bar ends at total/total and
counts the failed; a bar over nothing closes at once; a timeout says how many are left."""

from __future__ import annotations

import concurrent.futures
import io
import operator
import threading

import pytest

import zq
from zq.progress import ProgressBar


def test_progress_bar_counts_every_future_and_the_failed(client):
    futs = [client.submit(operator.truediv, 1, x) for x in (1, 2, 0, 4, 5, 6, 7, 8, 9, 10)]
    out = io.StringIO()
    assert zq.progress(futs, desc="div", file=out, timeout=30) == futs
    text = out.getvalue()
    assert "div" in text and "10/10" in text and "failed=1" in text, text
    assert sum(1 for f in futs if f.exception() is not None) == 1


def test_progress_of_no_futures_returns_at_once():
    assert zq.progress([], file=io.StringIO(), timeout=1) == []
    assert ProgressBar(0, file=io.StringIO()).wait(0)


def test_progress_timeout_says_how_many_are_left(client):
    slow: concurrent.futures.Future = concurrent.futures.Future()  # never done
    quick = client.submit(abs, -1)
    with pytest.raises(TimeoutError, match="1 of 2 futures not done"):
        zq.progress([quick, slow], file=io.StringIO(), timeout=quick.result(10) and 0.5)


def test_bar_advances_from_callbacks_on_another_thread(client):
    futs = [client.submit(abs, -i) for i in range(50)]
    bar = ProgressBar(len(futs), file=io.StringIO()).attach(futs)
    assert bar.wait(30) and bar.done == 50 and bar.failed == 0


def test_map_with_progress_counts_calls_not_chunks(client, capsys):
    assert list(client.map(abs, range(-30, 0), chunksize=7, progress=True, timeout=30)) == list(range(30, 0, -1))
    err = capsys.readouterr().err
    assert "30/30" in err, err  # 5 chunks, 30 calls


def test_map_with_progress_ends_its_bar_when_left_early(client, capsys):
    results = client.map(abs, range(-5, 0), progress=True, timeout=30)
    assert next(results) == 5
    results.close()  # the calls not awaited are cancelled: they count as done, and failed
    err = capsys.readouterr().err
    assert "5/5" in err and err.endswith("\n"), err


def test_bar_closed_after_a_future_is_done_but_before_its_callback_ran_counts_it():
    """``map`` closes its bar once it has every result, but ``Future.set_result`` wakes the
    waiter before it runs the done-callbacks: the bar must still end at total/total (in
    Jupyter, not a red 0/1 bar). An earlier callback holds the future in that window."""
    fut: concurrent.futures.Future = concurrent.futures.Future()
    in_window, leave = threading.Event(), threading.Event()
    fut.add_done_callback(lambda _: (in_window.set(), leave.wait(10)))
    out = io.StringIO()
    bar = ProgressBar(1, desc="window", file=out).attach([fut])
    setter = threading.Thread(target=fut.set_result, args=(1,))
    setter.start()
    try:
        assert in_window.wait(10) and fut.done()
        bar.close()
    finally:
        leave.set()
        setter.join(10)
    assert bar.wait(0) and bar.done == 1, out.getvalue()
    assert "1/1" in out.getvalue(), out.getvalue()


def test_the_same_future_twice_counts_twice():
    fut: concurrent.futures.Future = concurrent.futures.Future()
    fut.set_result(1)
    out = io.StringIO()
    assert zq.progress([fut, fut], file=out, timeout=5) == [fut, fut]
    assert "2/2" in out.getvalue(), out.getvalue()
