"""Progress bars over futures: ``zq.progress(futures)`` and ``client.map(..., progress=True)``.

A tqdm bar (``tqdm.auto``: a text bar in a terminal, a widget in Jupyter) that shows
done/total, the rate and the ETA, advanced by each future's done-callback, so that it never
polls and costs nothing per task but one callback.

    futs = [client.submit(f, x) for x in xs]
    zq.progress(futs)                 # blocks until every future is done, drawing the bar

Failed and cancelled futures count as done (the bar's postfix counts the failed ones):
a bar tells how much is left, ``result()`` tells how it went.
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any, Iterable, Optional, Sequence

__all__ = ["progress", "ProgressBar"]


class ProgressBar:
    """One bar over a set of futures; thread-safe (callbacks run on the client's IO thread)."""

    def __init__(self, total: int, *, desc: Optional[str] = None, file: Any = None,
                 disable: Optional[bool] = False, mininterval: float = 0.2) -> None:
        from tqdm.auto import tqdm

        self._lock = threading.Lock()
        self.failed = 0
        self.done = 0
        self.total = total
        self._all_done = threading.Event()
        self.bar = tqdm(total=total, desc=desc, unit="task", file=file, disable=disable,
                        mininterval=mininterval, dynamic_ncols=True)
        if total == 0:
            self._finish()

    def attach(self, futures: Iterable[concurrent.futures.Future],
               sizes: Optional[Sequence[int]] = None) -> "ProgressBar":
        """Advance by one (or ``sizes[i]``: a chunk of calls) as each future finishes."""
        for i, f in enumerate(futures):
            n = 1 if sizes is None else sizes[i]
            f.add_done_callback(lambda fut, n=n: self._one_done(fut, n))
        return self

    def _one_done(self, fut: concurrent.futures.Future, n: int = 1) -> None:
        with self._lock:
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
        with self._lock:
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
