"""Brute-force guard: failed logins scored per client address across connections, and bans.

Consulted before any backend attempt. With password passthrough every failed FTP login is
a failed SSH login *from the gateway's address* on the backend; OpenSSH >= 9.8 penalises
such a source (PerSourcePenalties), so an attacker guessing passwords through the gateway
would lock every user out. The guard stops the guessing at the gateway instead: after
``max_failures`` failures within ``window`` seconds an address is banned for ``ban_time``,
doubled for each earlier ban still remembered, up to ``max_ban_time``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.config import GuardConfig

#: Addresses tracked at most (failures, bans); the least recently seen are forgotten first,
#: so a flood of spoofed-looking sources cannot grow memory without bound.
MAX_TRACKED = 100_000


@dataclass
class _Record:
    failures: deque[float] = field(default_factory=deque)
    banned_until: float = 0.0
    bans: int = 0  # earlier bans, for the escalation
    last_ban: float = 0.0


class Guard:
    """Per-address failure scores and bans (thread-safe)."""

    def __init__(self, cfg: GuardConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg, self._clock = cfg, clock
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._lock = threading.Lock()
        self._unauthenticated = 0

    def ban_remaining(self, address: str) -> float:
        """Seconds ``address`` stays banned (0 when it is not)."""
        if not self.cfg.enabled:
            return 0.0
        with self._lock:
            record = self._records.get(address)
            return max(0.0, record.banned_until - self._clock()) if record else 0.0

    def failure(self, address: str) -> float:
        """Count a failed login from ``address``; the length of the ban it caused, else 0."""
        if not self.cfg.enabled:
            return 0.0
        now = self._clock()
        with self._lock:
            record = self._record(address)
            record.failures.append(now)
            while record.failures and record.failures[0] <= now - self.cfg.window:
                record.failures.popleft()
            if len(record.failures) < self.cfg.max_failures or record.banned_until > now:
                return 0.0
            if now - record.last_ban > self.cfg.forget_after:
                record.bans = 0  # a ban long ago: start over
            length = min(self.cfg.ban_time * float(2**record.bans), self.cfg.max_ban_time)
            record.banned_until, record.last_ban = now + length, now
            record.bans += 1
            record.failures.clear()
            return length

    def _record(self, address: str) -> _Record:
        record = self._records.pop(address, None) or _Record()
        self._records[address] = record  # most recently seen last
        while len(self._records) > MAX_TRACKED:
            self._records.popitem(last=False)
        return record

    def enter_unauthenticated(self) -> bool:
        """Admit one more not-yet-logged-in session, unless ``max_unauthenticated`` are open."""
        with self._lock:
            if self._unauthenticated >= self.cfg.max_unauthenticated:
                return False
            self._unauthenticated += 1
            return True

    def leave_unauthenticated(self) -> None:
        """A session admitted by ``enter_unauthenticated`` logged in or ended."""
        with self._lock:
            self._unauthenticated -= 1
