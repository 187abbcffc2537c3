"""Which bytes a name is on the FTP wire, per route (``routes[].name_encoding``).

Pure core. By default names are bytes, as on vsftpd: a command line is decoded as UTF-8,
bytes that are not UTF-8 travel as lone surrogates (``surrogateescape``) to the backend and
back unchanged. A route with ``name_encoding: cp1252`` serves clients that write names in
that encoding to a backend whose names are UTF-8 (files converted during the move): the
wire is decoded and encoded with that codec instead (``wire``), and ``recode`` gives the
name a legacy server's bytes mean, for ``sync`` and the shadow copies.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable

#: The default: names are bytes (UTF-8 where they are UTF-8).
DEFAULT_ENCODING = "utf8"
DEFAULT_ERRORS = "surrogateescape"
#: The codec error handler of a route with name_encoding (see ``_wire_errors``).
WIRE_ERRORS = "ftpgw-names"
_PRINTABLE_ASCII = bytes(range(0x20, 0x7F))


def _wire_errors(err: UnicodeError) -> tuple[str | bytes, int]:
    """Bytes the codec does not map stay raw bytes (surrogateescape, both ways); a
    character the client's encoding cannot write is sent as "?" (it cannot be named back)."""
    if isinstance(err, UnicodeEncodeError):
        char = err.object[err.start]
        if "\udc80" <= char <= "\udcff":
            return bytes([ord(char) - 0xDC00]), err.start + 1
        return "?", err.start + 1
    if isinstance(err, UnicodeDecodeError):
        return codecs.lookup_error(DEFAULT_ERRORS)(err)
    raise err


codecs.register_error(WIRE_ERRORS, _wire_errors)


def wire(name_encoding: str | None, utf8: bool) -> tuple[str, str]:
    """The (encoding, errors) of a session's command lines and replies.

    ``utf8``: the client announced UTF-8 (``OPTS UTF8 ON``; lftp, FileZilla and WinSCP send
    it when FEAT lists UTF8, which the gateway always does). Such a session speaks UTF-8
    even on a route with a name_encoding (the backend's names are UTF-8 there), and bytes
    in its commands that are not UTF-8 are read in the route's codec: a client that
    announces UTF-8 yet types names in its code page still reaches its files.
    """
    if name_encoding is None:
        return DEFAULT_ENCODING, DEFAULT_ERRORS
    if not utf8:
        return name_encoding, WIRE_ERRORS
    errors = f"{WIRE_ERRORS}-utf8-or-{codecs.lookup(name_encoding).name}"
    try:
        codecs.lookup_error(errors)
    except LookupError:
        codecs.register_error(errors, _utf8_or(name_encoding))
    return DEFAULT_ENCODING, errors


def _utf8_or(name_encoding: str) -> Callable[[UnicodeError], tuple[str | bytes, int]]:
    """An error handler for UTF-8: bytes that are not UTF-8 are read in ``name_encoding``."""

    def handler(err: UnicodeError) -> tuple[str | bytes, int]:
        if isinstance(err, UnicodeDecodeError):
            return err.object[err.start : err.end].decode(name_encoding, WIRE_ERRORS), err.end
        return _wire_errors(err)

    return handler


def encoding_problem(name: str) -> str | None:
    """Why ``name`` cannot be a route's name_encoding, or None if it can."""
    try:
        codecs.lookup(name)
    except LookupError:
        return f"unknown encoding {name!r}: use a Python codec name such as cp1252, latin-1 or iso8859-15"
    try:
        ascii_safe = _PRINTABLE_ASCII.decode(name) == _PRINTABLE_ASCII.decode("ascii")
    except UnicodeDecodeError:
        ascii_safe = False
    if not ascii_safe or "\r\n".encode(name) != b"\r\n":
        return f"{name!r} does not keep ASCII as it is (FTP commands are ASCII): use cp1252 or latin-1"
    return None


def recode(name: str, encoding: str | None) -> str:
    """The name a legacy server's bytes mean in ``encoding`` (None: the bytes as they are).

    ``name`` carries the bytes as the gateway reads every name: UTF-8 with surrogateescape.
    """
    if encoding is None:
        return name
    return name.encode(DEFAULT_ENCODING, DEFAULT_ERRORS).decode(encoding, DEFAULT_ERRORS)
