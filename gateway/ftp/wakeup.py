"""Wake an FTP session's thread from another thread: a pipe in the session's pyftpdlib IOLoop.

The session thread sleeps in its IOLoop's poll(); a call scheduled here wakes it at once
and runs on it, in order, like any other event of the session.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("gateway.ftp")


class Wakeup:
    """Runs callables on the thread of ``ioloop``, scheduled from any thread, until closed.

    Registered in the IOLoop while open: a session thread runs while its IOLoop has
    something registered, so ``close`` must follow, on the IOLoop's thread.
    """

    def __init__(self, ioloop: Any) -> None:
        self._ioloop = ioloop
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._calls: deque[Callable[[], None]] = deque()
        # Held while writing to the pipe and while closing it: a late call from another
        # thread must never write to a descriptor number that was closed and reused.
        self._lock = threading.Lock()
        self._closed = False
        ioloop.register(self._read_fd, self, ioloop.READ)

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the IOLoop's thread soon (any thread); dropped once closed."""
        with self._lock:
            if self._closed:
                return
            self._calls.append(fn)
            with contextlib.suppress(BlockingIOError):  # the pipe is full of wake-ups already
                os.write(self._write_fd, b"\0")

    def close(self) -> None:
        """Unregister and release the pipe; pending calls are dropped."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._ioloop.unregister(self._read_fd)
            os.close(self._read_fd)
            os.close(self._write_fd)
            self._calls.clear()

    # The IOLoop's dispatcher interface (pyftpdlib polls it like an asyncore channel).

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def handle_read_event(self) -> None:
        with self._lock:
            if self._closed:
                return
            with contextlib.suppress(BlockingIOError):
                os.read(self._read_fd, 512)
        while self._calls:
            self._calls.popleft()()

    def handle_close(self) -> None:
        self.close()

    def handle_error(self) -> None:
        log.exception("a call woken on the session thread failed")
