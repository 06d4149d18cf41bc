"""Progress bars over futures: ``zq.progress(futures)`` and ``client.map(..., progress=True)``.

A tqdm bar that shows done/total, the rate and the ETA, advanced by each future's
done-callback, so that it never polls and costs nothing per task but one callback.
In a Jupyter kernel with ipywidgets it is a widget (``tqdm.notebook``); elsewhere, and in a
kernel without ipywidgets, a text bar on stderr (``tqdm.std``) -- without the "IProgress not
found" warning that ``tqdm.auto`` prints there.

    futs = [client.submit(f, x) for x in xs]
    zq.progress(futs)                 # blocks until every future is done, drawing the bar

Failed and cancelled futures count as done (the bar's postfix counts the failed ones):
a bar tells how much is left, ``result()`` tells how it went.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import threading
from typing import Any, Iterable, Optional, Sequence

__all__ = ["progress", "ProgressBar"]


def tqdm_class() -> type:
    """``tqdm.notebook.tqdm`` in a Jupyter kernel that can draw widgets, else ``tqdm.std.tqdm``.

    The test for a kernel is ``tqdm.autonotebook``'s (a qtconsole or Spyder kernel gets text).
    Without ipywidgets ``tqdm.notebook`` imports, with ``IProgress`` None: the text bar then,
    and no warning."""
    if "ipykernel.zmqshell" in sys.modules and not any(
            k == "QT_API" or k.startswith("SPYDER") for k in os.environ):
        from tqdm.notebook import IProgress, tqdm as notebook_tqdm

        if IProgress is not None:
            return notebook_tqdm
    from tqdm.std import tqdm

    return tqdm


class ProgressBar:
    """One bar over a set of futures; thread-safe (callbacks run on the client's IO thread)."""

    def __init__(self, total: int, *, desc: Optional[str] = None, file: Any = None,
                 disable: Optional[bool] = False, mininterval: float = 0.2) -> None:
        self._lock = threading.Lock()
        self.failed = 0
        self.done = 0
        self.total = total
        self._all_done = threading.Event()
        # attach order -> (future, calls it stands for), until counted (by its callback, or by
        # close()); keyed by position, not future: the same future may be passed twice
        self._uncounted: dict[int, tuple[concurrent.futures.Future, int]] = {}
        self._next_key = 0
        self.bar = tqdm_class()(total=total, desc=desc, unit="task", file=file, disable=disable,
                                mininterval=mininterval, dynamic_ncols=True)
        if total == 0:
            self._finish()

    def attach(self, futures: Iterable[concurrent.futures.Future],
               sizes: Optional[Sequence[int]] = None) -> "ProgressBar":
        """Advance by one (or ``sizes[i]``: a chunk of calls) as each future finishes."""
        for i, f in enumerate(futures):
            with self._lock:
                key = self._next_key
                self._next_key += 1
                self._uncounted[key] = (f, 1 if sizes is None else sizes[i])
            f.add_done_callback(lambda _, key=key: self._one_done(key))
        return self

    def _one_done(self, key: int) -> None:
        with self._lock:
            self._count(key)

    def _count(self, key: int) -> None:
        """Under the lock: the future attached as ``key`` (done) advances the bar, once."""
        entry = self._uncounted.pop(key, None)
        if entry is None or self._all_done.is_set():
            return
        fut, n = entry
        self.done += n
        if fut.cancelled() or fut.exception() is not None:
            self.failed += n
            self.bar.set_postfix(failed=self.failed, refresh=False)
        self.bar.update(n)
        if self.done >= self.total:
            self._finish()

    def _finish(self) -> None:
        self.bar.refresh()
        self.bar.close()
        self._all_done.set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """True once every future is done (the bar is then closed)."""
        return self._all_done.wait(timeout)

    def close(self) -> None:
        """Close the bar. Futures already done count, even when their callback has not run
        yet: ``set_result`` wakes a waiter (``map``'s last ``result()``) before it runs them."""
        with self._lock:
            for key in [k for k, (f, _) in self._uncounted.items() if f.done()]:
                self._count(key)
            if not self._all_done.is_set():
                self.bar.close()


def progress(futures: Sequence[concurrent.futures.Future], *, desc: Optional[str] = None,
             timeout: Optional[float] = None, file: Any = None) -> Sequence[concurrent.futures.Future]:
    """Draw a bar until every future is done (or ``timeout`` seconds pass); the futures."""
    futures = list(futures)
    bar = ProgressBar(len(futures), desc=desc, file=file).attach(futures)
    try:
        if not bar.wait(timeout):
            raise TimeoutError(f"{bar.total - bar.done} of {bar.total} futures not done after {timeout}s")
    finally:
        bar.close()
    return futures
