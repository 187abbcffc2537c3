"""The readiness report as text: a table for people, JSON and CSV for programs.

The JSON layout is described by ``report.schema.json`` next to this file (version 2); the
CSV has one row per user and the header ``CSV_COLUMNS``. Every string in them came through
``usage.session.text`` (client-supplied text is escaped before it is stored).
"""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any

from gateway.features.usage.readiness import UserReport, plural

#: 2: failed_logins, locked_out_since and the verdicts "locked out" and "never logged in".
SCHEMA_VERSION = 2
CSV_COLUMNS = (
    "user",
    "verdict",
    "reasons",
    "warnings",
    "phase",
    "routes",
    "first_seen",
    "last_seen",
    "logins",
    "refused_logins",
    "failed_logins",
    "locked_out_since",
    "tls_share",
    "clients",
    "client_ips",
    "passive",
    "active",
    "uploads",
    "downloads",
    "failed_transfers",
    "bytes_up",
    "bytes_down",
    "type_a_transfers",
    "sftp_transfers",
    "sftp_failed",
    "sftp_error_rate",
    "untranslatable",
)


def timestamp(when: float) -> str:
    """``when`` as ISO 8601 UTC to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def as_data(report: UserReport) -> dict[str, Any]:
    """One user's report as plain data (the JSON schema's ``users`` item)."""
    t = report.totals
    return {
        "user": report.user,
        "verdict": report.verdict,
        "reasons": report.reasons,
        "warnings": report.warnings,
        "phase": report.phase,
        "first_seen": timestamp(report.first_seen),
        "last_seen": timestamp(report.last_seen),
        "routes": [
            {
                "route": u.route,
                "phase": u.phase,
                "backend": u.backend,
                "logins": u.logins,
                "last_seen": timestamp(u.last_seen),
            }
            for u in report.routes
        ],
        "logins": report.logins,
        "refused_logins": report.refused_logins,
        "failed_logins": dict(report.failed_logins.most_common()),
        "locked_out_since": _maybe(report.locked_out_since),
        "tls_share": round(report.tls_share, 4),
        "clients": report.clients,
        "client_ips": report.client_ips,
        "data_connections": {"passive": t.passive, "active": t.active},
        "transfers": {
            "uploads": t.uploads,
            "uploads_failed": t.uploads_failed,
            "downloads": t.downloads,
            "downloads_failed": t.downloads_failed,
            "bytes_up": t.bytes_up,
            "bytes_down": t.bytes_down,
            "type_a": t.type_a,
            "type_a_binary": t.type_a_binary,
        },
        "sftp_path": {
            "transfers": report.sftp_transfers,
            "failed": report.sftp_failed,
            "error_rate": round(report.sftp_error_rate, 4),
            "shadow_problems": t.shadow_problems,
        },
        "commands": dict(t.commands.most_common()),
        "site_commands": dict(t.site.most_common()),
        "reply_classes": dict(sorted(t.replies.items())),
        "error_replies": dict(sorted(t.errors.items())),
        "untranslatable": report.untranslatable,
    }


def _maybe(when: float | None) -> str | None:
    return timestamp(when) if when is not None else None


def to_json(reports: list[UserReport], since: float | None, now: float) -> str:
    """The whole report as JSON (``report.schema.json``)."""
    document = {
        "schema_version": SCHEMA_VERSION,
        "generated": timestamp(now),
        "since": timestamp(since) if since is not None else None,
        "users": [as_data(r) for r in reports],
    }
    return json.dumps(document, indent=2) + "\n"


def _cell(value: object) -> object:
    # CSV injection (OWASP): user names and CLNT texts are the client's to choose, and a
    # spreadsheet runs a cell starting with = + - @ as a formula: such text gets a leading '.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def to_csv(reports: list[UserReport]) -> str:
    """One row per user under the ``CSV_COLUMNS`` header (lists joined with "; ")."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in reports:
        d = as_data(r)
        row: dict[str, object] = {
            **{k: d[k] for k in ("user", "verdict", "phase", "first_seen", "last_seen", "logins")},
            "refused_logins": r.refused_logins,
            "failed_logins": "; ".join(f"{kind} {n}" for kind, n in r.failed_logins.most_common()),
            "locked_out_since": d["locked_out_since"] or "",
            "reasons": "; ".join(r.reasons),
            "warnings": "; ".join(r.warnings),
            "routes": "; ".join(f"{u.route} ({u.phase})" for u in r.routes),
            "tls_share": d["tls_share"],
            "clients": "; ".join(r.clients),
            "client_ips": "; ".join(r.client_ips),
            **d["data_connections"],
            "uploads": r.totals.uploads,
            "downloads": r.totals.downloads,
            "failed_transfers": r.totals.uploads_failed + r.totals.downloads_failed,
            "bytes_up": r.totals.bytes_up,
            "bytes_down": r.totals.bytes_down,
            "type_a_transfers": r.totals.type_a,
            "sftp_transfers": r.sftp_transfers,
            "sftp_failed": r.sftp_failed,
            "sftp_error_rate": d["sftp_path"]["error_rate"],
            "untranslatable": "; ".join(r.untranslatable),
        }
        writer.writerow({name: _cell(value) for name, value in row.items()})
    return out.getvalue()


def _short(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(when))


def _logins(r: UserReport) -> str:
    """The LOGINS cell: successful logins, then refused (retired route) and failed ones."""
    failed = sum(r.failed_logins.values())
    return (
        f"{r.logins}"
        + (f" +{r.refused_logins} refused" if r.refused_logins else "")
        + (f" +{failed} failed" if failed else "")
    )


def to_table(reports: list[UserReport], since: float | None, now: float) -> str:
    """A table for a terminal: one line per user, then the verdict's reasons and warnings."""
    if not reports:
        window = f"since {_short(since)} UTC" if since is not None else "in the usage database"
        return f"No FTP sessions {window}.\n"
    header = (
        "USER",
        "VERDICT",
        "PHASE",
        "LAST SEEN (UTC)",
        "LOGINS",
        "TLS",
        "TRANSFERS",
        "CLIENTS",
        "ADDRESSES",
    )
    lines = []
    for r in reports:
        t = r.totals
        failed = t.uploads_failed + t.downloads_failed
        lines.append(
            (
                r.user,
                r.verdict,
                r.phase,
                _short(r.last_seen),
                _logins(r),
                f"{r.tls_share:.0%}",
                f"{t.uploads + t.downloads - failed} ok, {failed} failed",
                ", ".join(r.clients),
                ", ".join(r.client_ips[:3]) + (f" +{len(r.client_ips) - 3}" if len(r.client_ips) > 3 else ""),
            )
        )
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    out = [  # the switch-over's most likely failure, first
        f"LOCKED OUT: {r.user} since {_short(r.locked_out_since)} UTC, see below"
        for r in reports
        if r.locked_out_since is not None
    ]
    if out:
        out.append("")
    for row, report in zip([header, *lines], [None, *reports], strict=True):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if report is not None:
            out += [f"    {report.verdict}: {reason}" for reason in report.reasons]
            out += [f"    warning: {warning}" for warning in report.warnings]
            if report.untranslatable:
                out.append(f"    will not translate cleanly: {', '.join(report.untranslatable)}")
            seen = ", ".join(f"{u.route}/{u.phase} {plural(u.logins, 'login')}" for u in report.routes)
            out.append(f"    routes (latest first): {seen}")
    window = f"since {_short(since)} UTC" if since is not None else "all retained days"
    out.append(f"\n{plural(len(reports), 'user')}, {window}; generated {_short(now)} UTC.")
    return "\n".join(out) + "\n"
