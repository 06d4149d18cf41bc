"""A self-pipe that lets any thread wake a zmq poll loop without touching its sockets."""

from __future__ import annotations

import os


class Waker:
    """``wake()`` from any thread; the loop polls ``fileno()`` and calls ``drain()``."""

    def __init__(self) -> None:
        #: set by the loop just before it blocks in poll; producers that see it False
        #: skip the system call (the loop checks its queues before blocking)
        self.sleeping = True
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._closed = False

    def fileno(self) -> int:
        return self._r

    def wake(self) -> None:
        try:
            os.write(self._w, b"x")
        except (BlockingIOError, OSError):  # pipe full (already woken) or closed
            pass

    def wake_if_sleeping(self) -> None:
        if self.sleeping:
            # once woken, the loop looks at its queues before it sleeps again: later
            # producers skip the system call (which would also hand the loop the GIL
            # once per item, and so cut a burst into one-item batches)
            self.sleeping = False
            self.wake()

    def drain(self) -> None:
        try:
            while os.read(self._r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._r)
            os.close(self._w)
