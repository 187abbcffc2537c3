"""Directory listings: storage attrs to ``ls -l`` LIST lines, MLSD/MLST facts, NLST names.

Pure core. Names come from the backend and are untrusted: a name holding a control
character (CR and LF above all, which would forge reply lines on the control channel or
split a listing line, cf. bpo-30119) is never emitted raw. Listings skip such entries (and
atomic uploads in progress); single-name replies and logs use ``printable``.
"""

from __future__ import annotations

import fnmatch
import itertools
import stat
import time
import unicodedata
from collections.abc import Iterable, Iterator

from gateway.core.storage import Attrs, Entry, Kind, is_upload_in_progress

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_SIX_MONTHS = 182 * 24 * 3600  # vsftpd's "six months"
#: The type letter ``ls -l`` shows: clients skip what is not "-" when they fetch wildcards.
_TYPE_CHAR = {
    Kind.FILE: "-",
    Kind.DIR: "d",
    Kind.SYMLINK: "l",
    Kind.FIFO: "p",
    Kind.SOCKET: "s",
    Kind.CHAR_DEVICE: "c",
    Kind.BLOCK_DEVICE: "b",
    Kind.OTHER: "?",
}

_MLSX_TYPE = {
    Kind.FILE: "file",
    Kind.DIR: "dir",
    Kind.SYMLINK: "OS.unix=symlink",
    Kind.FIFO: "OS.unix=fifo",
    Kind.SOCKET: "OS.unix=socket",
    Kind.CHAR_DEVICE: "OS.unix=chr",
    Kind.BLOCK_DEVICE: "OS.unix=blk",
    Kind.OTHER: "OS.unix=other",
}

#: MLST facts this gateway can produce, in the order FEAT advertises them.
FACTS = ("type", "size", "modify", "perm", "unix.mode", "unix.uid", "unix.gid")


#: Unicode categories that are control characters: C0, DEL and C1 (Cc), and the line and
#: paragraph separators (Zl, Zp), which some clients take for line ends.
_CONTROL = frozenset({"Cc", "Zl", "Zp"})


def _is_raw_byte(ch: str) -> bool:
    """True for a byte that is not UTF-8, as ``surrogateescape`` decoding carries it."""
    return 0xDC80 <= ord(ch) <= 0xDCFF


def _is_control(ch: str) -> bool:
    return unicodedata.category(ch) in _CONTROL


def is_name_text(text: str) -> bool:
    """True if ``text`` holds no control character (raw bytes of a non-UTF-8 name are fine).

    Names are bytes (SFTP v3, and vsftpd passes them through untouched): a Latin-1 or cp1252
    name arrives as raw bytes and leaves as the same bytes. Control characters are what must
    never reach a reply or a listing line as they are (CR/LF forge replies, bpo-30119; ESC
    and C1 drive terminals); everything else, a no-break space or a joiner included, is a name.
    """
    return text.isprintable() or not any(_is_control(ch) for ch in text)


def is_safe_name(name: str) -> bool:
    """True if ``name`` can be written to the control or data channel as it is."""
    return bool(name) and "/" not in name and is_name_text(name)


def _escape(ch: str) -> str:
    if _is_raw_byte(ch):
        return f"\\x{ord(ch) - 0xDC00:02x}"
    return ch.encode("unicode_escape").decode("ascii")


def wire_text(text: str) -> str:
    """``text`` for a reply line: control characters escaped (``\\x1b``), the rest as it is."""
    return text if is_name_text(text) else "".join(_escape(ch) if _is_control(ch) else ch for ch in text)


def printable(text: str) -> str:
    """Everything but printable characters escaped, raw bytes too: one line of text (logs)."""
    return text if text.isprintable() else "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def has_glob(name: str) -> bool:
    """True if ``name`` holds shell wildcards (``*``, ``?``, ``[``)."""
    return any(ch in name for ch in "*?[")


def glob_filter(entries: Iterable[Entry], pattern: str, dotfiles: bool = True) -> Iterator[Entry]:
    """Entries whose name matches a shell pattern (one path component, case-sensitive).

    Not in RFC 959, but vsftpd, ProFTPD and Pure-FTPd expand wildcards in LIST/NLST and
    legacy scripts rely on it (``mget *.csv`` sends ``NLST *.csv``). fnmatch compiles to a
    regular expression without catastrophic backtracking (CPython >= 3.9, bpo-40480).
    Without ``dotfiles``, as in a shell, a leading "." must be matched by the pattern's own
    leading "." (``*`` leaves ``.keep`` out, ``.*`` takes it).
    """
    explicit_dot = dotfiles or pattern.startswith(".")
    return (
        e
        for e in entries
        if (explicit_dot or not e.name.startswith(".")) and fnmatch.fnmatchcase(e.name, pattern)
    )


def safe_entries(entries: Iterable[Entry]) -> Iterator[Entry]:
    """The entries to list, in the order given: safe names, no upload in progress.

    An atomic upload's temporary file is left out: a consumer polling with ``NLST *.csv``
    must not fetch (or delete) a file that is still being written, which is what atomic
    uploads exist to prevent.
    """
    return (e for e in entries if is_safe_name(e.name) and not is_upload_in_progress(e.name))


#: Directories up to this many entries are listed sorted by name (RFC 959 recommends it);
#: larger ones stream in the backend's order, so memory stays bounded.
SORT_LIMIT = 10_000


def sorted_if_small(entries: Iterable[Entry], limit: int = SORT_LIMIT) -> Iterator[Entry]:
    """Sorted by name if there are at most ``limit`` entries, else streamed as they come.

    Reads up to ``limit + 1`` entries before returning, so a backend error on the first
    batch surfaces now (before the FTP 150 reply), not in the middle of the transfer.
    """
    it = iter(entries)
    head = list(itertools.islice(it, limit + 1))
    if len(head) <= limit:
        return iter(sorted(head, key=lambda e: e.name))
    return itertools.chain(head, it)


def _mode_string(attrs: Attrs) -> str:
    mode = attrs.mode
    bits = []
    for who in range(2, -1, -1):
        r, w, x = (mode >> (who * 3 + 2)) & 1, (mode >> (who * 3 + 1)) & 1, (mode >> (who * 3)) & 1
        special = (stat.S_ISUID, stat.S_ISGID, stat.S_ISVTX)[2 - who] & mode
        exec_char = "x" if x else "-"
        if special:
            exec_char = ("t" if who == 0 else "s") if x else ("T" if who == 0 else "S")
        bits.append(("r" if r else "-") + ("w" if w else "-") + exec_char)
    return _TYPE_CHAR[attrs.kind] + "".join(bits)


def _ls_date(mtime: int | None, now: float) -> str:
    """``Mon DD HH:MM`` for the past six months, else ``Mon DD  YYYY``, UTC.

    A time in the future shows its year too, as vsftpd and GNU ls do: clients that read
    ``Mon DD HH:MM`` as this year or the last (ftputil) would date it a year back.
    """
    ts = 0 if mtime is None else mtime
    t = time.gmtime(ts)
    month = _MONTHS[t.tm_mon - 1]
    if 0 <= now - ts < _SIX_MONTHS:
        return f"{month} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}"
    return f"{month} {t.tm_mday:2d}  {t.tm_year}"


def list_line(entry: Entry, now: float, prefix: str = "") -> str:
    """One ``ls -l`` style LIST line (without CRLF); ``prefix`` goes before the name."""
    a = entry.attrs
    owner = a.owner if a.owner and is_safe_name(a.owner) and " " not in a.owner else str(a.uid)
    group = a.group if a.group and is_safe_name(a.group) and " " not in a.group else str(a.gid)
    name = prefix + entry.name
    if a.kind is Kind.SYMLINK and entry.link_target and is_name_text(entry.link_target):
        name = f"{name} -> {entry.link_target}"
    return (
        f"{_mode_string(a)} {a.nlink:3d} {owner:<8} {group:<8} {a.size:>12d} {_ls_date(a.mtime, now)} {name}"
    )


def list_lines(entries: Iterable[Entry], now: float | None = None, prefix: str = "") -> Iterator[str]:
    """LIST lines for the safe entries."""
    when = time.time() if now is None else now
    for entry in safe_entries(entries):
        yield list_line(entry, when, prefix)


def mlsx_facts(entry: Entry, perm: str, facts: Iterable[str]) -> str:
    """RFC 3659 fact string (``type=file;size=3;...;``) for one entry, in the requested facts."""
    a = entry.attrs
    wanted = set(facts)
    out = []
    if "type" in wanted:
        out.append(f"type={_MLSX_TYPE[a.kind]}")
    if "size" in wanted:
        out.append(f"size={a.size}")
    if "modify" in wanted and a.mtime is not None:
        out.append("modify=" + time.strftime("%Y%m%d%H%M%S", time.gmtime(a.mtime)))
    if "perm" in wanted:
        out.append(f"perm={_mlsx_perm(a.kind, perm)}")
    if "unix.mode" in wanted:
        out.append(f"unix.mode=0{a.mode & 0o7777:o}")
    if "unix.uid" in wanted:
        out.append(f"unix.uid={a.uid}")
    if "unix.gid" in wanted:
        out.append(f"unix.gid={a.gid}")
    return "".join(f"{fact};" for fact in out)


# RFC 3659 7.5.5: which perm-fact letter each FTP-level permission letter grants.
_DIR_PERM = (("c", "w"), ("d", "d"), ("e", "e"), ("l", "l"), ("m", "m"), ("p", "w"))
_FILE_PERM = (("a", "a"), ("d", "d"), ("f", "f"), ("r", "r"), ("w", "w"))


def _mlsx_perm(kind: Kind, perm: str) -> str:
    """RFC 3659 perm fact from the FTP-level permission letters of the user."""
    table = _DIR_PERM if kind is Kind.DIR else _FILE_PERM
    return "".join(fact for fact, needed in table if needed in perm)


def mlsd_lines(entries: Iterable[Entry], perm: str, facts: Iterable[str]) -> Iterator[str]:
    """MLSD lines (facts, a space, the name) for the safe entries."""
    wanted = tuple(facts)
    for entry in safe_entries(entries):
        yield f"{mlsx_facts(entry, perm, wanted)} {entry.name}"


def nlst_names(entries: Iterable[Entry], prefix: str = "") -> Iterator[str]:
    """NLST lines: names of the safe entries, after ``prefix``."""
    for entry in safe_entries(entries):
        yield prefix + entry.name
