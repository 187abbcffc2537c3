"""Which bytes a name is on the FTP wire, per route (``routes[].name_encoding``).

Pure core. By default names are bytes, as on vsftpd: a command line is decoded as UTF-8,
bytes that are not UTF-8 travel as lone surrogates (``surrogateescape``) to the backend and
back unchanged. A route with ``name_encoding: cp1252`` serves clients that write names in
that encoding to a backend whose names are UTF-8 (files converted during the move): the
wire is decoded and encoded with that codec instead, and ``recode`` gives the name a
legacy server's bytes mean, for ``sync`` and the shadow copies.
"""

from __future__ import annotations

import codecs

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
