"""Logging: text or JSON lines with the session's fields, login audit lines, the xferlog file.

* Every record logged from a session's thread carries that session's id, client IP, user
  and route (``bind_session``); JSON lines show them as keys, text lines in their prefix.
* Login attempts go to the ``gateway.audit`` logger as one line each, the client address
  first so that fail2ban-style filters cannot be fooled by a crafted user name.
* Client-controlled text (user names, paths) in any line goes through ``escape``/``quote``:
  no blanks, quotes or control characters of the client's reach a log line raw.
* Transfers can also go to a file in the classic wu-ftpd ``xferlog`` format (xferlog(5)),
  which FTP log analysers read; the file is reopened when logrotate moves it.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import sys
import threading
import time
from collections.abc import Callable

from gateway.core.listing import printable

#: The session fields a record may carry (set by SessionFields from ``bind_session``).
SESSION_FIELDS = ("session", "client_ip", "user", "route")

audit = logging.getLogger("gateway.audit")
xferlog = logging.getLogger("gateway.xferlog")
xferlog.propagate = False  # its own file only, never the main log

_context = threading.local()


def bind_session(fields: Callable[[], dict[str, str]]) -> None:
    """Attach the current thread's log records to a session (``fields`` is read per record)."""
    _context.fields = fields


class SessionFields(logging.Filter):
    """Adds the bound session's fields to records logged from its thread."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(_context, "fields", None)
        if fields is not None:
            for key, value in fields().items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        return True


class OneLineFormatter(logging.Formatter):
    """Text formatter that escapes control characters so a record never spans lines."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return "\n".join(printable(line) for line in text.split("\n")) if record.exc_info else printable(text)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the session's fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in SESSION_FIELDS:
            if (value := getattr(record, key, None)) is not None:
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=True)


def setup(level: str = "info", fmt: str = "text", transfer_log: str | None = None) -> None:
    """Configure the root logger for the gateway process (stderr) and the transfer log."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(SessionFields())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # asyncssh logs every channel open/close at INFO: keep it for debugging only.
    logging.getLogger("asyncssh").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    xferlog.handlers[:] = []
    if transfer_log:
        # WatchedFileHandler reopens the file after logrotate moved it (no signal needed);
        # every line is one write() in append mode, so worker processes do not interleave.
        file_handler = logging.handlers.WatchedFileHandler(transfer_log, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(message)s"))
        xferlog.addHandler(file_handler)
        xferlog.setLevel(logging.INFO)


def escape(text: str) -> str:
    """Client-controlled text for a log line: control characters, blanks and quotes escaped.

    Log lines are split on blanks by the tools that read them (fail2ban, xferlog
    analysers): with blanks escaped no client text can carry a second
    "login failed: client_ip=X " that a ban filter would take for the client's address
    (and ban X). Backslashes are doubled so that no two texts look alike.
    """
    escaped = printable(text.replace("\\", "\\\\"))
    return escaped.replace(" ", "\\x20").replace("'", "\\x27").replace('"', "\\x22")


def quote(text: str) -> str:
    """``escape``d client text in single quotes (user names, paths in log lines)."""
    return f"'{escape(text)}'"


def login_audit(client_ip: str, user: str, result: str, route: str, detail: str = "") -> None:
    """One audit line per login attempt: ``login ok|failed: client_ip=IP user='NAME' result=...``."""
    outcome = "ok" if result == "ok" else "failed"
    line = f"login {outcome}: client_ip={client_ip} user={quote(user)} result={result} route={route}"
    audit.info(f"{line} {detail}" if detail else line)


def xferlog_line(
    *,
    when: float,
    seconds: float,
    client_ip: str,
    nbytes: int,
    path: str,
    binary: bool,
    upload: bool,
    user: str,
    completed: bool,
) -> str:
    """One line in wu-ftpd xferlog format: 18 space-separated fields (xferlog(5))."""
    # Fields are separated by blanks and analysers split on them: whitespace inside a
    # name becomes "_" (as ProFTPD does), control characters are escaped.
    name = re.sub(r"\s", "_", printable(path)) or "_"
    return " ".join(
        (
            time.asctime(time.localtime(when)),  # "Wed Nov 25 11:04:25 2026" (5 fields)
            str(max(1, round(seconds))),  # transfer time in whole seconds
            client_ip,
            str(nbytes),
            name,
            "b" if binary else "a",  # transfer type
            "_",  # special action: none (no compression/tar)
            "i" if upload else "o",  # direction: incoming / outgoing
            "r",  # access mode: a real (authenticated) user
            re.sub(r"\s", "_", printable(user)) or "_",
            "ftp",  # service name
            "0",  # authentication method: none (no RFC 931 ident)
            "*",  # authenticated user id: not available
            "c" if completed else "i",  # completion status
        )
    )
