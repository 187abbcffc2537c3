"""One FTP session's fingerprint: who logged in, over which path, with what, doing what.

The FTP handler feeds a ``SessionUsage`` every command with its reply code and every
transfer. ``take()`` hands over the totals counted so far and starts afresh; the store adds
them up per day, so a session that lasts for days is recorded in pieces and nothing is
counted twice. Everything kept is bounded: command names are sanitised and capped in
number, arguments are not kept (of a CLNT text only the product name and version read from it).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.core.listing import printable
from gateway.features.usage.clients import identify

#: Distinct command names (and SITE subcommands, reply codes) kept per record; more are "OTHER".
MAX_KEYS = 64
#: Commands kept from the start of a session for telling the client software.
PROBE_LINES = 24
#: Longest user name, route, client text kept (longer ones are cut).
MAX_TEXT = 100

_VERB_JUNK = re.compile(r"[^A-Z0-9 ]")
#: The verbs that open a data connection, by mode.
PASSIVE_VERBS = frozenset({"PASV", "EPSV"})
ACTIVE_VERBS = frozenset({"PORT", "EPRT"})
#: Data commands whose bytes are a file (not a listing).
FILE_TRANSFERS = frozenset({"RETR", "STOR", "STOU", "APPE"})
#: Replies that mean "the server does not know or implement this command" (RFC 959 4.2;
#: 504, "not implemented for that parameter", answers e.g. TYPE X: not a missing command).
UNKNOWN_REPLIES = frozenset({500, 502})
_COUNTERS = ("commands", "replies", "errors", "site", "site_refused", "unknown")
#: The problems whose first and last time are kept (``Totals.seen``), besides "site SUB"
#: and "unknown VERB" per name: what the report's reasons and warnings are made of.
PROBLEMS = ("upload failed", "download failed", "shadow", "type A", "type A binary", "active", "checksum")
#: The commands that ask for a checksum (the report warns: SFTP servers compute none).
CHECKSUM_VERBS = frozenset({"HASH", "XSHA256", "XSHA1", "XSHA", "XSHA512", "XMD5", "XCRC"})
#: Why a login of a user with a route failed, as the audit line's ``result=`` says it.
FAILED_LOGINS = frozenset(
    {
        "bad_credentials",  # wrong password, or a user the backend does not know
        "banned",  # the client's address is banned by the guard
        "backend_unavailable",  # the backend did not answer or the connection broke
        "host_key_mismatch",  # the backend's host key is not the known one
        "too_many_sessions",  # the account's connection cap
        "root_unusable",  # the route's root or home is missing on the backend
        "auth_unavailable",  # the external authority did not answer
    }
)


def _bump(counter: Counter[str], key: str, amount: int = 1) -> str:
    if key not in counter and len(counter) >= MAX_KEYS:
        key = "OTHER"
    counter[key] += amount
    return key


def _mark(seen: dict[str, list[float]], problem: str, first: float, last: float | None = None) -> None:
    """Widen ``problem``'s [first, last] time span in ``seen`` to cover ``first``..``last``."""
    if problem not in seen and len(seen) >= 3 * MAX_KEYS:
        problem = "OTHER"
    span = seen.setdefault(problem, [first, last if last is not None else first])
    span[0], span[1] = min(span[0], first), max(span[1], last if last is not None else first)


def verb_name(verb: str) -> str:
    """A command name safe to store and print: A-Z, 0-9 and blanks, at most 24 characters."""
    return _VERB_JUNK.sub("?", verb.upper())[:24] or "?"


def text(value: str) -> str:
    """Client-supplied text safe to store and print (control characters escaped, cut)."""
    return printable(value)[:MAX_TEXT]


@dataclass
class Totals:
    """Additive counts of one session piece, or of many added up."""

    logins: int = 0
    uploads: int = 0
    uploads_failed: int = 0
    downloads: int = 0
    downloads_failed: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    type_a: int = 0  # file transfers in ASCII mode (TYPE A)
    type_a_binary: int = 0  # ... of which the data had NUL bytes: binary data, altered in transit
    passive: int = 0  # PASV/EPSV accepted
    active: int = 0  # PORT/EPRT accepted
    shadow_problems: int = 0  # shadow phase: SFTP copies that failed or differed
    commands: Counter[str] = field(default_factory=Counter)
    replies: Counter[str] = field(default_factory=Counter)  # "2xx" ... "5xx"
    errors: Counter[str] = field(default_factory=Counter)  # 4xx/5xx reply codes
    site: Counter[str] = field(default_factory=Counter)  # SITE subcommands
    site_refused: Counter[str] = field(default_factory=Counter)  # ... answered 5xx
    unknown: Counter[str] = field(default_factory=Counter)  # answered 500/502/504
    #: problem -> [first, last] time it happened (PROBLEMS, "site SUB", "unknown VERB").
    seen: dict[str, list[float]] = field(default_factory=dict)

    def add(self, other: Totals) -> None:
        """Add ``other``'s counts to these (and widen the problems' time spans)."""
        for f in dataclasses.fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, Counter):
                for key, amount in theirs.items():
                    _bump(mine, key, amount)
            elif isinstance(mine, dict):
                for problem, (first, last) in theirs.items():
                    _mark(mine, problem, first, last)
            else:
                setattr(self, f.name, mine + theirs)

    def since(self, since: float) -> Totals:
        """A copy without the problems last seen before ``since`` (a day's row holds the
        whole day; a problem of its morning is not one of an evening ``--since``)."""
        out = Totals.from_json(self.to_json())
        stale = {problem for problem, (_, last) in out.seen.items() if last < since}
        for problem in stale:
            del out.seen[problem]
            kind, _, name = problem.partition(" ")
            if kind == "site":
                out.site.pop(name, None)
                out.site_refused.pop(name, None)
            elif kind == "unknown":
                out.unknown.pop(name, None)
        if "upload failed" in stale:  # those transfers are outside the window altogether
            out.uploads -= out.uploads_failed
        if "download failed" in stale:
            out.downloads -= out.downloads_failed
        for problem, count in _PROBLEM_COUNTS.items():
            if problem in stale:
                setattr(out, count, 0)
        if "checksum" in stale:
            for verb in CHECKSUM_VERBS:
                out.commands.pop(verb, None)
        return out

    def to_json(self) -> dict[str, Any]:
        """Plain data for the store (json.dumps-able)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {name: dict(v) if isinstance(v, Counter) else v for name, v in values.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Totals:
        """The inverse of ``to_json`` (unknown keys from a newer version are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        totals = cls()
        for name, value in data.items():
            if name == "seen":
                totals.seen = {str(k): [float(v[0]), float(v[1])] for k, v in value.items()}
            elif name in names:
                setattr(totals, name, Counter(value) if name in _COUNTERS else int(value))
        return totals


#: The counts a stale problem takes out of a row (Totals.since).
_PROBLEM_COUNTS = {
    "upload failed": "uploads_failed",
    "download failed": "downloads_failed",
    "shadow": "shadow_problems",
    "type A": "type_a",
    "type A binary": "type_a_binary",
    "active": "active",
}


@dataclass(frozen=True)
class Key:
    """What a day's totals are kept under: one row per distinct key and day."""

    day: str  # YYYY-MM-DD, UTC
    user: str
    route: str
    phase: str  # legacy | shadow | sftp | retired
    backend: str  # the backend that served the session (the legacy one in phase legacy/shadow)
    client_ip: str
    tls: bool
    client: str  # "lftp 4.9.2", "curl", "unknown"
    #: ok (logged in) | retired (refused: the route is retired) | a failed login's kind
    #: (FAILED_LOGINS: bad_credentials, banned, backend_unavailable, host_key_mismatch, ...)
    outcome: str


@dataclass(frozen=True)
class Record:
    """One session piece: its key, when it ran, what it did."""

    key: Key
    first_seen: float
    last_seen: float
    totals: Totals


@dataclass(frozen=True)
class _Who:
    user: str
    route: str
    phase: str
    backend: str
    tls: bool
    outcome: str


class SessionUsage:
    """The running fingerprint of one FTP session (used by that session's thread only)."""

    def __init__(self, client_ip: str, clock: Callable[[], float] = time.time) -> None:
        self.client_ip = client_ip
        self._clock = clock
        self._lines: list[tuple[str, str]] = []
        self._clnt = ""
        self._client: str | None = None  # fixed at the first take(): rows do not split
        self._who: _Who | None = None
        self._totals = Totals()
        self._since = clock()
        self._ready: list[Record] = []
        self._binary = False
        self.last_take = self._since

    # --- what the handler reports

    def command(self, verb: str, arg: str, code: int) -> None:
        """One command and the code of its (final or preliminary) reply."""
        if verb.upper().startswith("SITE "):  # mainframe style: SITE RECFM=FB LRECL=80
            verb = verb.split("=", 1)[0]
        name = verb_name(verb)
        if len(self._lines) < PROBE_LINES:
            self._lines.append((name, "" if name == "PASS" else text(arg)))
        if name in ("CLNT", "CSID") and arg and not self._clnt:
            self._clnt = arg[: 2 * MAX_TEXT]  # clients.from_clnt keeps only safe words of it
        t, now = self._totals, self._clock()
        _bump(t.commands, name)
        _bump(t.replies, f"{code // 100}xx")
        if code >= 400:
            _bump(t.errors, str(code))
        if name.startswith("SITE "):
            _mark(t.seen, "site " + _bump(t.site, name[5:]), now)
            if code >= 500:
                _bump(t.site_refused, name[5:])
        elif code in UNKNOWN_REPLIES and name not in ("USER", "PASS"):
            _mark(t.seen, "unknown " + _bump(t.unknown, name), now)
        if name in CHECKSUM_VERBS:
            _mark(t.seen, "checksum", now)
        if 200 <= code < 300 and name in PASSIVE_VERBS:
            t.passive += 1
        elif 200 <= code < 300 and name in ACTIVE_VERBS:
            t.active += 1
            _mark(t.seen, "active", now)

    def binary_in_ascii(self) -> None:
        """The running ASCII-mode transfer carries NUL bytes: it is binary data."""
        self._binary = True

    def transfer(self, upload: bool, completed: bool, nbytes: int, ascii: bool) -> None:
        """One file transfer ended (listings are not file transfers)."""
        t, now = self._totals, self._clock()
        if upload:
            t.uploads += 1
            t.uploads_failed += not completed
            t.bytes_up += nbytes
        else:
            t.downloads += 1
            t.downloads_failed += not completed
            t.bytes_down += nbytes
        if not completed:
            _mark(t.seen, "upload failed" if upload else "download failed", now)
        if ascii:
            t.type_a += 1
            t.type_a_binary += self._binary
            _mark(t.seen, "type A binary" if self._binary else "type A", now)
        self._binary = False

    def shadow_problems(self, count: int) -> None:
        """``count`` more SFTP copies failed or differed (shadow phase)."""
        self._totals.shadow_problems += count
        if count:
            _mark(self._totals.seen, "shadow", self._clock())

    def logged_in(self, user: str, route: str, phase: str, backend: str, tls: bool) -> None:
        """A login succeeded."""
        self._begin(_Who(text(user), text(route), phase, text(backend), tls, "ok"))

    def refused(self, user: str, route: str, phase: str, outcome: str, tls: bool) -> None:
        """A login of a user of ``route`` was refused: ``outcome`` says why ("retired": FTP
        is off for them; else a kind of FAILED_LOGINS)."""
        self._begin(_Who(text(user), text(route), phase, "-", tls, outcome))

    def _begin(self, who: _Who) -> None:
        if self._who is not None and self._who != who:
            self._finish_piece()  # REIN / USER as someone else: the old identity's piece ends
        self._who = who
        self._totals.logins += 1

    # --- what the store gets

    def due(self, every: float) -> bool:
        """True when a long session should hand over what it counted (every ``every`` seconds)."""
        return self._who is not None and self._clock() - self.last_take >= every

    def take(self, logout: bool = False) -> list[Record]:
        """The pieces counted since the last take (none before a login or refusal).

        ``logout``: the login ends here (REIN, or USER again); what follows belongs to the next.
        """
        self._finish_piece()
        if logout:
            self._who = None
        ready, self._ready = self._ready, []
        return ready

    def _finish_piece(self) -> None:
        now = self._clock()
        # Counts before the first login (FEAT, USER, AUTH ...) belong to its piece; a piece
        # with nothing counted (an idle session's periodic take) is not recorded.
        if self._who is not None and self._totals != Totals():
            if self._client is None:
                self._client = identify(self._lines, self._clnt)
            day = time.strftime("%Y-%m-%d", time.gmtime(now))
            key = Key(day=day, client_ip=self.client_ip, client=self._client, **dataclasses.asdict(self._who))
            self._ready.append(Record(key, self._since, now, self._totals))
            self._totals = Totals()
        if self._who is not None:
            self._since = now  # the next piece starts here (an idle stretch is no one's)
        self.last_take = now
