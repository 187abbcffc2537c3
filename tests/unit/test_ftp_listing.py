"""Reading a legacy FTP server's answers: LIST lines, MLSx facts, reply codes."""

from __future__ import annotations

import calendar
import ftplib

from gateway.backends.ftp.storage import parse_list_line, parse_mlsx, translate
from gateway.core import errors
from gateway.core.storage import Kind

NOW = calendar.timegm((2026, 11, 25, 12, 0, 0))


def test_unix_list_lines():
    entry = parse_list_line("-rw-r--r--    1 1000  1000   4000 Nov 25 11:04 report name.csv", NOW)
    assert entry is not None and entry.name == "report name.csv"
    assert (entry.attrs.kind, entry.attrs.size, entry.attrs.mode) == (Kind.FILE, 4000, 0o644)
    assert entry.attrs.mtime == calendar.timegm((2026, 11, 25, 11, 4, 0))
    link = parse_list_line("lrwxrwxrwx 1 0 0 7 Jan  3  2020 link -> target", NOW)
    assert link is not None and (link.name, link.link_target, link.attrs.kind) == (
        "link",
        "target",
        Kind.SYMLINK,
    )
    assert link.attrs.mtime == calendar.timegm((2020, 1, 3, 0, 0, 0))
    # "Dec 31 23:00" seen in November is last year's December.
    old = parse_list_line("drwxr-xr-x 2 ftp ftp 4096 Dec 31 23:00 sub", NOW)
    assert old is not None and old.attrs.kind is Kind.DIR
    assert old.attrs.mtime == calendar.timegm((2025, 12, 31, 23, 0, 0))
    assert parse_list_line("total 12", NOW) is None
    assert parse_list_line("drwxr-xr-x 2 ftp ftp 4096 Dec 31 23:00 ..", NOW) is None


def test_mlsx_facts():
    attrs = parse_mlsx({"type": "file", "size": "12", "modify": "20261125110400", "unix.mode": "0640"})
    assert (attrs.kind, attrs.size, attrs.mode) == (Kind.FILE, 12, 0o640)
    assert parse_mlsx({"type": "OS.unix=slink:/x"}).kind is Kind.SYMLINK
    assert parse_mlsx({"type": "file", "unix.mode": "0o600"}).mode == 0o600  # pyftpdlib's form
    assert parse_mlsx({"type": "file", "unix.mode": "rw-"}).mode == 0o644  # not a number: the default


def test_reply_codes_become_gateway_errors_with_the_servers_text():
    err = translate(ftplib.error_perm("550 No such file or directory."))
    assert isinstance(err, errors.NotFound) and err.reply() == "550 No such file or directory."
    assert isinstance(translate(ftplib.error_temp("452 Insufficient storage")), errors.NoSpace)
    assert isinstance(translate(ftplib.error_temp("421 Bye")), errors.ConnectionLost)
    assert isinstance(translate(EOFError()), errors.ConnectionLost)
