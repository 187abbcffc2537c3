"""Brute-force guard: failed logins scored per client address and user, and bans.

Consulted before any backend attempt. With password passthrough every failed FTP login is
a failed SSH login *from the gateway's address* on the backend; OpenSSH >= 9.8 penalises
such a source (PerSourcePenalties), so an attacker guessing passwords through the gateway
would lock every user out. The guard stops the guessing at the gateway instead.

Failures are scored twice within ``window`` seconds. Per (address, user): after
``max_failures`` that user's logins from that address are refused for ``ban_time`` (a
partner's job with a wrong password locks out itself, not the other partners behind the
same NAT address). Per address, over all users: after ``max_failures_per_address`` the
address is banned and its connections refused (guessing across many user names). Each ban
is doubled for each earlier one still remembered, up to ``max_ban_time``. Networks in
``allow`` are never scored or banned.

Addresses are counted by ``source``: an IPv6 /64 is one client. ``SourceCounts`` counts open
sessions that way, for the guard's not-logged-in caps and the server's per-address limit.

With ``workers: N`` every worker process has a guard, and each tells the others of every
failure and unban (``publish``; gateway.edges.workers carries the events). Each guard scores the
same failures, so all reach the same bans: a client spread over the workers by the kernel
gets ``max_failures`` attempts in all, not N times as many. Attempts in flight stay per
worker (a burst of parallel first attempts may exceed the limit by up to N - 1).
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.config import GuardConfig

#: An event for the other workers' guards: {"op": "fail", "source": ..., "user": ...} or
#: {"op": "unban", "source": ...}.
Event = dict[str, str]

#: Addresses tracked at most (failures, bans); the least recently seen are forgotten first,
#: so a flood of spoofed-looking sources cannot grow memory without bound.
MAX_TRACKED = 100_000


@dataclass
class _Record:
    failures: deque[float] = field(default_factory=deque)
    banned_until: float = 0.0
    bans: int = 0  # earlier bans, for the escalation
    last_ban: float = 0.0
    in_flight: int = 0  # login attempts admitted, result not known yet


class Guard:
    """Per-address failure scores, bans and login attempts in flight (thread-safe)."""

    def __init__(
        self,
        cfg: GuardConfig,
        clock: Callable[[], float] = time.monotonic,
        publish: Callable[[Event], None] | None = None,
    ) -> None:
        self.cfg, self._clock, self._publish = cfg, clock, publish
        #: By (source, user), and by (source, "") for the address as a whole.
        self._records: OrderedDict[tuple[str, str], _Record] = OrderedDict()
        self._lock = threading.Lock()
        self._turn = threading.Condition(self._lock)
        self._unauthenticated = SourceCounts()
        self._allow = cfg.allow

    def _exempt(self, address: str) -> bool:
        """True when the guard is off or ``address`` is in an allowed network."""
        if not self.cfg.enabled:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._allow)

    def ban_remaining(self, address: str, user: str = "") -> float:
        """Seconds ``address`` stays banned, or (with ``user``) that user from it; 0 if not."""
        if self._exempt(address):
            return 0.0
        now = self._clock()
        with self._lock:
            keys = [(source(address), "")] + ([(source(address), user)] if user else [])
            records = [r for key in keys if (r := self._records.get(key)) is not None]
            return max((max(0.0, r.banned_until - now) for r in records), default=0.0)

    def begin_attempt(self, address: str, user: str, wait: float = 30.0) -> bool:
        """Admit one login attempt of ``user`` from ``address``; False if the address or
        the pair is (or becomes) banned.

        Attempts in flight count like failures already made, so parallel sessions cannot
        try more passwords than the limits allow before the first results are known; an
        attempt beyond that waits (up to ``wait`` seconds) for one to finish.
        """
        if self._exempt(address):
            return True
        key = source(address)
        deadline = self._clock() + wait
        with self._turn:
            while True:
                pair, whole = self._record((key, user)), self._record((key, ""))
                now = self._clock()
                if pair.banned_until > now or whole.banned_until > now:
                    return False
                self._expire(pair, now)
                self._expire(whole, now)
                if (
                    len(pair.failures) + pair.in_flight < self.cfg.max_failures
                    and len(whole.failures) + whole.in_flight < self.cfg.max_failures_per_address
                ):
                    pair.in_flight += 1
                    whole.in_flight += 1
                    return True
                if now >= deadline:
                    return False
                self._turn.wait(timeout=min(1.0, deadline - now))

    def end_attempt(self, address: str, user: str, failed: bool) -> float:
        """Finish an attempt admitted by ``begin_attempt``; the ban it caused, else 0."""
        if self._exempt(address):
            return 0.0
        key = source(address)
        with self._turn:
            banned_for = 0.0
            for record, limit in (
                (self._record((key, user)), self.cfg.max_failures),
                (self._record((key, "")), self.cfg.max_failures_per_address),
            ):
                record.in_flight = max(0, record.in_flight - 1)
                if failed:
                    banned_for = max(banned_for, self._fail(record, limit))
            self._turn.notify_all()
        if failed and self._publish is not None:
            self._publish({"op": "fail", "source": key, "user": user})
        return banned_for

    def apply(self, event: Event, age: float = 0.0) -> None:
        """Another worker's or instance's failure or unban (see the module doc), which happened
        ``age`` seconds ago; malformed events are ignored."""
        key, op = event.get("source"), event.get("op")
        if not isinstance(key, str) or self._exempt(key.split("/")[0]):
            return
        if op == "unban":
            self._lift(key)
            return
        user = event.get("user")
        if op != "fail" or not isinstance(user, str):
            return
        at = self._clock() - max(0.0, age)
        with self._turn:
            self._fail(self._record((key, user)), self.cfg.max_failures, at)
            self._fail(self._record((key, "")), self.cfg.max_failures_per_address, at)
            self._turn.notify_all()

    def _expire(self, record: _Record, now: float) -> None:
        while record.failures and record.failures[0] <= now - self.cfg.window:
            record.failures.popleft()

    def _fail(self, record: _Record, limit: int, at: float | None = None) -> float:
        now = self._clock() if at is None else at
        record.failures.append(now)
        self._expire(record, now)
        if len(record.failures) < limit or record.banned_until > now:
            return 0.0
        if now - record.last_ban > self.cfg.forget_after:
            record.bans = 0  # a ban long ago: start over
        length = min(self.cfg.ban_time * float(2**record.bans), self.cfg.max_ban_time)
        record.banned_until, record.last_ban = now + length, now
        record.bans += 1
        record.failures.clear()
        return length

    def bans(self) -> list[tuple[str, str, float]]:
        """The bans in force: (source, user or "" for the whole address, seconds left)."""
        now = self._clock()
        with self._lock:
            return [
                (key[0], key[1], record.banned_until - now)
                for key, record in self._records.items()
                if record.banned_until > now
            ]

    def unban(self, address: str) -> int:
        """Lift every ban of ``address``'s source (its own and its users') and forget its
        failures; the number of bans lifted."""
        key = source(address)
        lifted = self._lift(key)
        if self._publish is not None:
            self._publish({"op": "unban", "source": key})
        return lifted

    def _lift(self, key: str) -> int:
        now = self._clock()
        with self._turn:
            lifted = 0
            for record in [r for k, r in self._records.items() if k[0] == key]:
                lifted += record.banned_until > now
                record.banned_until, record.bans = 0.0, 0
                record.failures.clear()
            self._turn.notify_all()
            return lifted

    def _record(self, key: tuple[str, str]) -> _Record:
        record = self._records.pop(key, None) or _Record()
        self._records[key] = record  # most recently seen last
        while len(self._records) > MAX_TRACKED:
            self._records.popitem(last=False)
        return record

    def enter_unauthenticated(self, address: str) -> bool:
        """Admit one more not-yet-logged-in session, within the total and per-source caps."""
        cfg = self.cfg
        return (
            self._unauthenticated.enter(address, cfg.max_unauthenticated_per_ip, cfg.max_unauthenticated)
            is not None
        )

    def leave_unauthenticated(self, address: str) -> None:
        """A session admitted by ``enter_unauthenticated`` logged in or ended."""
        self._unauthenticated.leave(source(address))


class SourceCounts:
    """Things open now (sessions) per client source, under caps given at each entry (thread-safe)."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._total = 0
        self._lock = threading.Lock()

    def enter(self, address: str, per_source: int, total: int | None = None) -> str | None:
        """Count one more for ``address``'s source: its key, or None if a cap is reached."""
        key = source(address)
        with self._lock:
            count = self._counts.get(key, 0)
            if count >= per_source or (total is not None and self._total >= total):
                return None
            self._counts[key], self._total = count + 1, self._total + 1
            return key

    def leave(self, key: str) -> None:
        """One less for the source ``key`` (as ``enter`` returned it)."""
        with self._lock:
            left = self._counts.get(key, 0) - 1
            if left > 0:
                self._counts[key] = left
            else:
                self._counts.pop(key, None)
            self._total -= 1


def source(address: str) -> str:
    """What the guard counts by: the IPv4 address, or the IPv6 /64 (one end site's prefix)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
