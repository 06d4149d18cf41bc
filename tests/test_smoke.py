"""The main path end to end: submit, map, errors, against real nodes."""

import concurrent.futures as cf

import pytest

import zq


def square(x):
    return x * x


def test_submit_and_map(client):
    assert client.submit(square, 7).result(timeout=20) == 49
    assert list(client.map(square, range(100), timeout=30)) == [x * x for x in range(100)]
    assert list(client.map(square, range(100), chunksize=7, timeout=30)) == [x * x for x in range(100)]


def test_exception_is_typed(client):
    def boom():
        return 1 / 0

    fut = client.submit(boom)
    with pytest.raises(ZeroDivisionError) as info:
        fut.result(timeout=20)
    assert isinstance(info.value, zq.TaskFailed)
    assert info.value.remote_type == "ZeroDivisionError"
    assert "boom" in info.value.remote_traceback
    assert fut.envelope.state is zq.TaskState.FAILED


def test_as_completed_and_wait(client):
    futs = [client.submit(square, i) for i in range(50)]
    assert sorted(f.result() for f in cf.as_completed(futs, timeout=30)) == [i * i for i in range(50)]
    done, not_done = cf.wait(futs, timeout=30)
    assert len(done) == 50 and not not_done
