"""Failed atomic replacements, remembered so that a resumed upload cannot splice onto the old file.

An atomic upload that would have replaced a file and failed leaves the previous version in
place, complete. A client that then resumes (lftp retries with SIZE, REST, STOR; ``curl -C
-`` with SIZE, APPE) believes the bytes there are the first part of its new file and sends
only the rest: the result would be the old file's head and the new file's tail, reported
as a success. This process-wide memory lets the storage refuse such a resume while the
file is still exactly the version the failed upload would have replaced.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

#: What identifies a version of a file: (size, mtime).
Version = tuple[int, int | None]


class FailedReplacements:
    """(backend user, path) -> the version a failed atomic upload left in place (bounded, thread-safe)."""

    def __init__(self, ttl: float = 3600.0, limit: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self._ttl, self._limit, self._clock = ttl, limit, clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], tuple[Version, float]] = OrderedDict()

    def remember(self, user: str, path: str, version: Version) -> None:
        """The upload of ``path`` that would have replaced ``version`` failed."""
        with self._lock:
            self._entries[(user, path)] = (version, self._clock() + self._ttl)
            self._entries.move_to_end((user, path))
            while len(self._entries) > self._limit:
                self._entries.popitem(last=False)

    def forget(self, user: str, path: str) -> None:
        """``path`` was replaced after all, or has changed since."""
        with self._lock:
            self._entries.pop((user, path), None)

    def left_in_place(self, user: str, path: str) -> Version | None:
        """The version a failed replacement of ``path`` left there lately, if any."""
        with self._lock:
            found = self._entries.get((user, path))
            if found is None:
                return None
            if found[1] < self._clock():
                del self._entries[(user, path)]
                return None
            return found[0]
