"""Per-user readiness for SFTP from the stored usage rows: the evidence and a verdict.

Verdicts (first that applies):

* ``retired``: the user's latest login was refused because the route is retired.
* ``locked out``: the user logged in before, and every login since a point after that
  failed (a password that differs on the backend after a phase flip, a host key, a ban):
  the most likely failure of a switch-over, shown first.
* ``never logged in``: only failed logins recorded (a wrong password from the start, or a
  name nobody uses).
* ``blocked``: something the SFTP path cannot do or did badly: SITE subcommands other than
  CHMOD/HELP/UMASK/UTIME, shadow copies that failed or differed, more than 5 % of transfers
  over SFTP failed.
* ``ready``: nothing blocking, and enough evidence: at least ``transfers`` clean file
  transfers over SFTP (phase sftp, or uploads replayed in phase shadow) over at least
  ``days`` days (``report.ready_after``).
* ``not proven``: nothing blocking, but not that much evidence yet.

Warnings never change the verdict: plain FTP, active mode only, TYPE A (on binary data or
at all), checksum commands (HASH, XSHA256, ...; an SFTP server such as OpenSSH computes none,
so the client must verify its transfers another way there), commands the gateway does not
implement (500/502), a few failed SFTP transfers.

Every reason and warning says when it was first and last seen. With ``since`` (the report's
``--since``) a problem last seen before it is not counted: the store keeps daily rows, and
each row keeps its problems' first and last times, so a failure of the morning does not
block a user whose afternoon, the window asked for, was clean.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import groupby

from gateway.features.usage.session import CHECKSUM_VERBS, FAILED_LOGINS, Totals
from gateway.features.usage.store import Row

#: SITE subcommands the SFTP path honours (CHMOD, UMASK and UTIME become SFTP setstats).
HONOURED_SITE = frozenset({"CHMOD", "HELP", "UMASK", "UTIME"})
#: Commands a client sends to learn what the server offers, and does without when refused:
#: lftp's AUTH TLS on a plain-FTP gateway, FEAT, OPTS, CLNT ... never "will not translate".
CAPABILITY_PROBES = frozenset({"AUTH", "PBSZ", "PROT", "CCC", "FEAT", "OPTS", "LANG", "HOST", "CLNT", "CSID"})
#: Above this share of failed transfers over SFTP, a user is blocked.
MAX_FAILURE_RATE = 0.05
VERDICTS = ("ready", "not proven", "blocked", "retired", "locked out", "never logged in")


@dataclass
class RouteUse:
    """How a user came in on one route and phase."""

    route: str
    phase: str
    backend: str
    logins: int
    last_seen: float


@dataclass
class UserReport:
    """Everything the report says about one user."""

    user: str
    first_seen: float
    last_seen: float
    phase: str  # of the latest login (or refusal)
    routes: list[RouteUse]
    client_ips: list[str]  # most logins first
    clients: dict[str, int]  # client software -> logins
    logins: int  # successful ones
    refused_logins: int  # refused: the route is retired
    failed_logins: Counter[str]  # by kind (session.FAILED_LOGINS)
    locked_out_since: float | None  # when the failing logins began (verdict "locked out")
    tls_logins: int
    totals: Totals
    sftp_transfers: int
    sftp_failed: int
    untranslatable: list[str]
    verdict: str
    reasons: list[str]
    warnings: list[str] = field(default_factory=list)

    @property
    def tls_share(self) -> float:
        """Share of logins (and refused attempts of a retired route) made over TLS."""
        attempts = self.logins + self.refused_logins
        return self.tls_logins / attempts if attempts else 0.0

    @property
    def sftp_error_rate(self) -> float:
        """Share of transfers over SFTP that failed."""
        return self.sftp_failed / self.sftp_transfers if self.sftp_transfers else 0.0


def _counted(counter: Counter[str]) -> str:
    return ", ".join(f"{name} ({n}x)" for name, n in counter.most_common())


def plural(count: int, noun: str) -> str:
    """``1 login``, ``2 logins``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _days(seconds: float) -> str:
    return plural(max(1, math.ceil(seconds / 86400)), "day")


@dataclass(frozen=True)
class Evidence:
    """What a "ready" verdict needs (``report.ready_after``)."""

    transfers: int = 1
    days: float = 0.0


def assess(
    rows: list[Row], now: float, ready_after: Evidence = Evidence(), since: float | None = None
) -> list[UserReport]:
    """One report per user in ``rows``, sorted by user name; ``since``: see the module doc."""
    if since is not None:
        rows = [dataclasses.replace(row, totals=row.totals.since(since)) for row in rows]
    ordered = sorted(rows, key=lambda r: (r.key.user, r.last_seen))
    return [
        _user(user, list(group), now, ready_after)
        for user, group in groupby(ordered, key=lambda r: r.key.user)
    ]


def _user(user: str, rows: list[Row], now: float, ready_after: Evidence) -> UserReport:
    totals, sftp = Totals(), Totals()
    routes: dict[tuple[str, str, str], RouteUse] = {}
    ips: Counter[str] = Counter()
    clients: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    refused = tls = 0
    sftp_transfers = sftp_failed = 0
    sftp_since = now
    for row in rows:
        key, t = row.key, row.totals
        if key.outcome in FAILED_LOGINS:
            failed[key.outcome] += t.logins
            ips.setdefault(key.client_ip, 0)  # listed, after the addresses that logged in
            continue
        totals.add(t)
        ips[key.client_ip] += t.logins
        clients[key.client] += t.logins
        tls += t.logins if key.tls else 0
        use = routes.setdefault(
            (key.route, key.phase, key.backend), RouteUse(key.route, key.phase, key.backend, 0, 0)
        )
        use.logins += t.logins
        use.last_seen = max(use.last_seen, row.last_seen)
        if key.outcome == "retired":
            refused += t.logins
        elif key.phase == "sftp":
            sftp.add(t)
            sftp_transfers += t.uploads + t.downloads
            sftp_failed += t.uploads_failed + t.downloads_failed
        elif key.phase == "shadow":  # uploads are replayed on SFTP; downloads come from legacy
            # Replays that failed or differed are their own blocker (shadow_problems), not
            # also failed transfers: one problem is counted once.
            sftp_transfers += max(0, t.uploads - t.uploads_failed - t.shadow_problems)
        if key.outcome == "ok" and key.phase in ("sftp", "shadow"):
            sftp_since = min(sftp_since, row.first_seen)
    latest = rows[-1]
    report = UserReport(
        user=user,
        first_seen=min(r.first_seen for r in rows),
        last_seen=latest.last_seen,
        phase=latest.key.phase,
        routes=sorted(routes.values(), key=lambda u: -u.last_seen),
        client_ips=[ip for ip, _ in ips.most_common()],
        clients=dict(clients.most_common()),
        logins=totals.logins - refused,
        refused_logins=refused,
        failed_logins=failed,
        locked_out_since=_locked_out_since(rows),
        tls_logins=tls,
        totals=totals,
        sftp_transfers=sftp_transfers,
        sftp_failed=sftp_failed,
        untranslatable=[],
        verdict="",
        reasons=[],
    )
    _judge(report, rows, sftp_since, now, ready_after)
    return report


def _locked_out_since(rows: list[Row]) -> float | None:
    """When the failing logins that followed the last successful one began, if the latest
    attempt failed too (rows are sorted by last_seen); None otherwise."""
    if rows[-1].key.outcome not in FAILED_LOGINS:
        return None
    last_ok = max((r.last_seen for r in rows if r.key.outcome == "ok"), default=None)
    if last_ok is None:
        return None
    since = [r.first_seen for r in rows if r.key.outcome in FAILED_LOGINS and r.last_seen > last_ok]
    # Rows are daily totals: failures of the day of the last success may have begun before it.
    return max(min(since), last_ok)


def _lockout(r: UserReport, rows: list[Row]) -> str:
    """The locked-out reason: since when, how many of which kind, before and after."""
    assert r.locked_out_since is not None
    since = r.locked_out_since
    failing = [row for row in rows if row.key.outcome in FAILED_LOGINS and row.last_seen >= since]
    kinds: Counter[str] = Counter()
    for row in failing:
        kinds[row.key.outcome] += row.totals.logins
    last_ok = max((row for row in rows if row.key.outcome == "ok"), key=lambda row: row.last_seen)
    latest = rows[-1].key
    before = last_ok.key.phase
    moved = f", after the move from {before} to {latest.phase}" if before != latest.phase else ""
    return (
        f"every login since {_short(since)} UTC failed{moved}: {_counted(kinds)}; the last successful "
        f"one was {_short(last_ok.last_seen)} UTC (phase {before}); last attempt from {latest.client_ip} "
        f"(client: {latest.client}) at {_short(rows[-1].last_seen)} UTC"
    )


def _short(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(when))


def _span(seen: dict[str, list[float]], problems: list[str]) -> str:
    """ " (first ..., last ... UTC)" of ``problems``, from the times kept with the counts."""
    spans = [seen[p] for p in problems if p in seen]
    if not spans:
        return ""
    return _between(min(s[0] for s in spans), max(s[1] for s in spans))


def _rows_span(rows: list[Row]) -> str:
    """ " (first ..., last ... UTC)" of the sessions counted in ``rows``."""
    return _between(min(row.first_seen for row in rows), max(row.last_seen for row in rows))


def _between(first: float, last: float) -> str:
    return f" (first {_short(first)}, last {_short(last)} UTC)"


def _judge(r: UserReport, rows: list[Row], sftp_since: float, now: float, ready_after: Evidence) -> None:
    latest = rows[-1]
    t = r.totals
    seen = t.seen
    site = Counter({sub: n for sub, n in t.site.items() if sub not in HONOURED_SITE})
    unknown = Counter({verb: n for verb, n in t.unknown.items() if verb not in CAPABILITY_PROBES})
    r.untranslatable = [f"SITE {sub}" for sub in site]
    if t.type_a_binary:
        r.untranslatable.append("TYPE A on binary data")
    if t.active and not t.passive:
        r.untranslatable.append("active mode only")
    r.untranslatable += list(unknown)

    blockers = []
    if site:
        named = Counter({f"SITE {sub}": n for sub, n in site.items()})
        when = _span(seen, [f"site {sub}" for sub in site])
        blockers.append(f"uses {_counted(named)}: SFTP has no equivalent{when}")
    if t.shadow_problems:
        when = _span(seen, ["shadow"])
        blockers.append(
            f"shadow phase: {t.shadow_problems} SFTP copies failed or differed from the legacy's{when}"
        )
    failed = (
        f"{r.sftp_failed} of {r.sftp_transfers} transfers over sftp failed ({r.sftp_error_rate:.0%})"
        + _span(seen, ["upload failed", "download failed"])
    )
    if r.sftp_error_rate > MAX_FAILURE_RATE:
        blockers.append(failed)
    elif r.sftp_failed:
        r.warnings.append(failed)
    plain = r.logins + r.refused_logins - r.tls_logins
    if plain:
        clear = [row for row in rows if not row.key.tls and row.key.outcome not in FAILED_LOGINS]
        when = _rows_span(clear)
        r.warnings.append(f"{plain} of {r.logins + r.refused_logins} logins in plain FTP (no TLS){when}")
    if t.active and not t.passive:
        r.warnings.append(
            "active mode only (PORT/EPRT): the gateway must be able to connect to the client"
            + _span(seen, ["active"])
        )
    if t.type_a_binary:
        binary = plural(t.type_a_binary, "transfer")
        when = _span(seen, ["type A binary"])
        r.warnings.append(f"TYPE A on binary data ({binary}): bytes altered in transit{when}")
    elif t.type_a:
        text = plural(t.type_a, "transfer")
        when = _span(seen, ["type A"])
        r.warnings.append(f"TYPE A used ({text}): line endings converted; an SFTP client would not{when}")
    if unknown:
        when = _span(seen, [f"unknown {verb}" for verb in unknown])
        r.warnings.append(f"commands the gateway does not implement: {_counted(unknown)}{when}")
    sums = Counter({verb: n for verb in sorted(CHECKSUM_VERBS) if (n := t.commands.get(verb, 0))})
    if sums:
        r.warnings.append(
            f"verifies transfers with checksums ({_counted(sums)}): an SFTP server (OpenSSH) computes "
            f"none, so over SFTP the client must check its files another way{_span(seen, ['checksum'])}"
        )

    attempts = sum(r.failed_logins.values())
    failing = [row for row in rows if row.key.outcome in FAILED_LOGINS]
    if attempts and r.locked_out_since is None and r.logins:
        when = _rows_span(failing)
        r.warnings.append(f"{plural(attempts, 'failed login')}: {_counted(r.failed_logins)}{when}")

    if latest.key.outcome == "retired":
        r.verdict = "retired"
        refused = [row for row in rows if row.key.outcome == "retired"]
        when = _rows_span(refused)
        r.reasons = [
            f"FTP is off for route {latest.key.route}, yet {plural(r.refused_logins, 'refused login')}, "
            f"the last from {latest.key.client_ip} (client: {latest.key.client}){when}"
        ]
    elif r.locked_out_since is not None:
        r.verdict, r.reasons = "locked out", [_lockout(r, rows)]
    elif not r.logins and not r.refused_logins:
        r.verdict = "never logged in"
        r.reasons = [
            f"{plural(attempts, 'failed login')} ({_counted(r.failed_logins)}) and none successful, "
            f"the last from {latest.key.client_ip} at {_short(latest.last_seen)} UTC"
        ]
    elif blockers:
        r.verdict, r.reasons = "blocked", blockers
    elif r.sftp_transfers:
        clean = r.sftp_transfers - r.sftp_failed
        evidence = f"{plural(clean, 'clean transfer')} over sftp in {_days(now - sftp_since)}"
        if clean >= ready_after.transfers and now - sftp_since >= ready_after.days * 86400:
            r.verdict, r.reasons = "ready", [evidence]
        else:
            needed = f"{plural(ready_after.transfers, 'clean transfer')} over {ready_after.days:g} days"
            r.verdict, r.reasons = "not proven", [f"{evidence}; ready after {needed} (report.ready_after)"]
    elif r.phase == "legacy":
        r.verdict = "not proven"
        r.reasons = ["no transfers over sftp yet (phase legacy): move the route to shadow or sftp to test"]
    else:
        r.verdict = "not proven"
        r.reasons = [f"{plural(r.logins, 'login')} but no file transfer over sftp yet"]
