"""The storage interface on a legacy FTP server: one ftplib connection per FTP session.

Session threads are blocking already, so ftplib is used as it is. Every ftplib outcome is
translated into a gateway error here; the legacy server's reply text reaches the client
(escaped to one line) because it is what the user saw before the migration.

Over 400 lines: one control connection carries metadata, listings (MLSD, or LIST lines
parsed) and transfers, and every one of them must leave it in step with the server.
"""

from __future__ import annotations

import calendar
import contextlib
import ftplib
import secrets
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

from gateway.core import errors
from gateway.core.listing import printable
from gateway.core.storage import Attrs, Entry, Kind

# English month names as `ls -l` on FTP servers writes them (not the locale's).
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, 1)}
_BLOCK = 256 * 1024
_RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # SO_LINGER on, 0 s: close() sends a reset


#: The MLST/MLSD facts asked of the legacy server (RFC 3659 7.9; unix.mode as pyftpdlib and
#: ProFTPD send it).
_FACTS = ("type", "size", "modify", "unix.mode")


def translate(exc: BaseException) -> errors.GatewayError:
    """The gateway error for an ftplib outcome (reply codes as RFC 959 defines them)."""
    if isinstance(exc, errors.GatewayError):
        return exc
    if isinstance(exc, ftplib.Error) and str(exc)[:3].isdigit():
        code, text = int(str(exc)[:3]), printable(str(exc)[4:].strip()) or None
        by_code: dict[int, type[errors.GatewayError]] = {
            421: errors.ConnectionLost,
            425: errors.BackendFailure,
            426: errors.ConnectionLost,
            450: errors.BackendFailure,
            451: errors.BackendFailure,
            452: errors.NoSpace,
            500: errors.Unsupported,
            501: errors.BadName,
            502: errors.Unsupported,
            504: errors.Unsupported,
            530: errors.PermissionDenied,
            550: errors.NotFound,
            552: errors.QuotaExceeded,
            553: errors.BadName,
        }
        return by_code.get(code, errors.BackendFailure)(text)
    if isinstance(exc, TimeoutError | socket.timeout):
        return errors.BackendTimeout()
    if isinstance(exc, OSError | EOFError | ftplib.Error):
        return errors.ConnectionLost()
    return errors.BackendFailure()


def parse_mlsx(facts: dict[str, str]) -> Attrs:
    """Attrs from RFC 3659 MLSD/MLST facts."""
    kind_fact = facts.get("type", "").lower()
    kinds = {"file": Kind.FILE, "dir": Kind.DIR, "cdir": Kind.DIR, "pdir": Kind.DIR}
    kind = kinds.get(kind_fact, Kind.SYMLINK if "slink" in kind_fact else Kind.OTHER)
    mtime = None
    if modify := facts.get("modify"):
        with contextlib.suppress(ValueError):
            mtime = calendar.timegm(time.strptime(modify[:14], "%Y%m%d%H%M%S"))
    default = 0o755 if kind is Kind.DIR else 0o644  # servers that do not send unix.mode
    raw_mode = facts.get("unix.mode", "").lower().removeprefix("0o")  # pyftpdlib sends "0o640"
    mode = int(raw_mode, 8) & 0o7777 if raw_mode and set(raw_mode) <= set("01234567") else default
    size = int(facts["size"]) if facts.get("size", "").isdigit() else 0
    return Attrs(kind, size, mtime, mode, owner=facts.get("unix.owner"), group=facts.get("unix.group"))


_KIND_BY_LETTER = {
    "-": Kind.FILE,
    "d": Kind.DIR,
    "l": Kind.SYMLINK,
    "p": Kind.FIFO,
    "s": Kind.SOCKET,
    "c": Kind.CHAR_DEVICE,
    "b": Kind.BLOCK_DEVICE,
}


def parse_list_line(line: str, now: float | None = None) -> Entry | None:
    """An Entry from one Unix ``ls -l`` style LIST line (what vsftpd, ProFTPD, pure-ftpd send)."""
    fields = line.split(None, 8)
    if len(fields) < 9 or fields[0][0] not in "-dlbcps" or not fields[4].isdigit():
        return None
    perms, nlink, owner, group, size, month, day, clock, name = fields
    kind = _KIND_BY_LETTER.get(perms[0], Kind.OTHER)
    target = None
    if kind is Kind.SYMLINK and " -> " in name:
        name, target = name.split(" -> ", 1)
    mtime = _list_time(month, day, clock, now or time.time())
    mode = sum(1 << (8 - i) for i, ch in enumerate(perms[1:10]) if ch not in "-STl")
    links = int(nlink) if nlink.isdigit() else 1
    attrs = Attrs(kind, int(size), mtime, mode, nlink=links, owner=owner, group=group)
    return Entry(name, attrs, target) if name not in (".", "..") else None


def _list_time(month: str, day: str, clock: str, now: float) -> int | None:
    mon = _MONTHS.get(month[:3].title())
    if mon is None or not day.isdigit():
        return None
    if ":" in clock:  # within the last six months: the year is implied
        year = time.gmtime(now).tm_year
        hour, minute = (int(x) for x in clock.split(":")[:2])
        stamp = calendar.timegm((year, mon, int(day), hour, minute, 0))
        return stamp if stamp <= now + 86400 else calendar.timegm((year - 1, mon, int(day), hour, minute, 0))
    return calendar.timegm((int(clock), mon, int(day), 0, 0, 0)) if clock.isdigit() else None


class _Transfer:
    """One data transfer on the legacy session: while it runs, the session takes no command
    (the legacy server answers them only after the transfer's final reply)."""

    def __init__(self, session: FTPStorage, path: str, command: str) -> None:
        self.session, self.name, self.closed = session, path, False
        self._command, self._offset = command, 0
        self._conn: Any = None

    def seek(self, offset: int) -> None:
        """REST before the transfer starts."""
        self._offset = offset

    def _open(self) -> Any:
        if self._conn is None:
            self._conn = self.session.start_transfer(f"{self._command} {self.name}", self._offset)
        return self._conn

    def _finish(self, *, check: bool) -> None:
        """Close the data connection and read the final reply (raised only if ``check``)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if isinstance(conn, ssl.SSLSocket):
                with contextlib.suppress(OSError, ssl.SSLError):
                    conn = conn.unwrap()  # close_notify: the end of the data is authentic
            conn.close()
            self.session.end_transfer(check=check)
        except errors.GatewayError:
            if check:
                raise


class FTPReadStream(_Transfer):
    """A download: RETR (after REST) on the legacy server, read as it arrives."""

    def __init__(self, session: FTPStorage, path: str) -> None:
        super().__init__(session, path, "RETR")
        self._ended = False

    def read(self, size: int = -1) -> bytes:
        """The next chunk; empty at the end, which only the server's 226 confirms."""
        if self.closed or self._ended:
            return b""
        try:
            data: bytes = self._open().recv(_BLOCK)
        except Exception as exc:
            self.session.fail(exc, broken=True)
            raise translate(exc) from exc
        if not data:
            # EOF on the data connection is not success by itself: a legacy server that
            # failed half-way (disk error, crash) ends it too. Its final reply decides.
            self._ended = True
            self._finish(check=True)
        return data

    def close(self) -> None:
        """End the transfer early or after the end (the reply is read either way)."""
        if not self.closed:
            self.closed = True
            self._finish(check=False)


class FTPWriteStream(_Transfer):
    """An upload: STOR/APPE (after REST) on the legacy server; the final reply decides."""

    def write(self, data: bytes) -> int:
        """Send ``data`` on the data connection."""
        conn = self._open()  # a refusal of STOR (550 ...) leaves the session in step
        try:
            conn.sendall(data)
        except Exception as exc:
            self.session.fail(exc, broken=True)
            raise translate(exc) from exc
        return len(data)

    def close(self) -> None:
        """Close the data connection and require the server's 2xx (the upload is complete)."""
        if self.closed:
            return
        self.closed = True
        self._open()
        self._finish(check=True)

    def abort(self) -> None:
        """Give up: close the data connection with a reset and read the server's verdict."""
        if self.closed:
            return
        self.closed = True
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)  # not a clean end
            self._conn.close()
            self._conn = None
            with contextlib.suppress(errors.GatewayError):
                self.session.end_transfer(check=False)


class FTPStorage:
    """A logged-in session on a legacy FTP server (implements gateway.core.storage.Storage)."""

    def __init__(self, ftp: ftplib.FTP) -> None:
        self.ftp = ftp
        self._alive = True
        self._transferring = False
        self._home = self._call(ftp.pwd)
        try:
            features = ftp.sendcmd("FEAT").upper()
        except ftplib.Error:  # a server too old for FEAT (RFC 2389)
            features = ""
        self._mlst = "MLST" in features
        self._mfmt = "MFMT" in features
        if self._mlst:  # MLST (stat) reports only the server's default facts until asked for more
            with contextlib.suppress(ftplib.Error):
                ftp.sendcmd(f"OPTS MLST {';'.join(_FACTS)};")

    # --- plumbing

    def fail(self, exc: BaseException, broken: bool = False) -> None:
        """Note a failure. A lost connection, or any failure while a reply is still owed
        (``broken``: a timeout, a transfer cut off), leaves the control connection out of
        step with the server: the session is unusable from then on (421 to the client)."""
        if broken or isinstance(translate(exc), errors.ConnectionLost | errors.BackendTimeout):
            self._alive = False

    def _call(self, fn: Any, *args: Any) -> Any:
        if not self._alive:
            raise errors.ConnectionLost()
        if self._transferring:
            # pyftpdlib runs SIZE, MDTM, STAT, DELE ... while a transfer is open; the legacy
            # server would answer only after the transfer.
            raise errors.BackendFailure("A transfer is in progress; try again after it.", code=450)
        try:
            return fn(*args)
        except Exception as exc:
            self.fail(exc)
            raise translate(exc) from exc

    def start_transfer(self, command: str, offset: int) -> Any:
        """Open the data connection for ``command`` (after REST ``offset``)."""
        conn = self._call(self.ftp.transfercmd, command, offset or None)
        self._transferring = True
        return conn

    def end_transfer(self, *, check: bool) -> None:
        """Read the transfer's final reply; raise it unless it is 2xx (when ``check``)."""
        self._transferring = False
        try:
            self.ftp.voidresp()
        except ftplib.error_reply as exc:  # 1xx/3xx where the end was due: out of step
            self.fail(exc, broken=True)
            raise translate(exc) from exc
        except (ftplib.error_temp, ftplib.error_perm) as exc:  # the server's verdict (426, 451, 552 ...)
            if check:
                raise translate(exc) from exc
        except Exception as exc:
            self.fail(exc, broken=True)
            raise translate(exc) from exc

    @property
    def alive(self) -> bool:
        """False once the legacy server's connection is gone."""
        return self._alive

    def home(self) -> str:
        """The FTP login directory on the legacy server."""
        return str(self._home)

    # --- pass-through (gateway.core.storage.Passthrough): the legacy server's own answers

    def site(self, command: str) -> tuple[int, list[str]]:
        """``SITE command`` as the legacy server answers it (any code: its reply is the answer)."""
        try:
            reply = self._call(self.ftp.sendcmd, f"SITE {command}")
        except errors.GatewayError as err:
            if not isinstance(err.__cause__, ftplib.error_reply | ftplib.error_temp | ftplib.error_perm):
                raise
            reply = str(err.__cause__)
        lines = reply.splitlines()
        return int(lines[-1][:3]), lines

    def raw_listing(self, command: str, directory: str) -> list[str]:
        """The lines of LIST/NLST ``command`` run in ``directory``, as the legacy server sends them."""
        self._call(self.ftp.cwd, directory)  # relative arguments as the client wrote them
        try:
            self._call(self.ftp.voidcmd, "TYPE A")
            lines: list[str] = []
            self._call(self.ftp.retrlines, command, lines.append)
            return lines
        finally:
            with contextlib.suppress(errors.GatewayError):
                self._call(self.ftp.cwd, self._home)

    # --- metadata

    def stat(self, path: str) -> Attrs:
        """Attributes (MLST where offered; else SIZE/MDTM, and CWD for directories)."""
        if self._mlst:
            reply = self._call(self.ftp.sendcmd, f"MLST {path}")
            facts_line = next((line for line in reply.splitlines()[1:] if line.startswith(" ")), "")
            facts = dict(f.split("=", 1) for f in facts_line.strip().split(" ", 1)[0].split(";") if "=" in f)
            return parse_mlsx({k.lower(): v for k, v in facts.items()})
        try:
            size = self._call(self.ftp.size, path)
        except errors.StorageError:
            self._call(self.ftp.cwd, path)  # NotFound if it is not a directory either
            self._call(self.ftp.cwd, self._home)
            return Attrs(Kind.DIR, mode=0o755)
        mtime = None
        with contextlib.suppress(errors.StorageError):
            mdtm = self._call(self.ftp.sendcmd, f"MDTM {path}").split()[-1]
            mtime = calendar.timegm(time.strptime(mdtm[:14], "%Y%m%d%H%M%S"))
        return Attrs(Kind.FILE, int(size or 0), mtime)

    def lstat(self, path: str) -> Attrs:
        """FTP has no lstat: the same as ``stat``."""
        return self.stat(path)

    def list_dir(self, path: str) -> Iterator[Entry]:
        """Entries from MLSD where offered, else parsed from LIST."""
        if self._mlst:
            for name, facts in self._call(lambda: list(self.ftp.mlsd(path, facts=list(_FACTS)))):
                if name not in (".", "..") and facts.get("type", "").lower() not in ("cdir", "pdir"):
                    yield Entry(name, parse_mlsx({k.lower(): v for k, v in facts.items()}))
            return
        lines: list[str] = []
        self._call(self.ftp.retrlines, f"LIST -a {path}", lines.append)
        now = time.time()
        for line in lines:
            if (entry := parse_list_line(line, now)) is not None:
                yield entry

    # --- files

    def open_read(self, path: str, known: Attrs | None = None) -> FTPReadStream:
        """Open for download (550 from the legacy server for what it cannot send)."""
        if (known or self.stat(path)).kind is not Kind.FILE:
            raise errors.NotRegularFile()
        self._call(self.ftp.voidcmd, "TYPE I")
        return FTPReadStream(self, path)

    def open_write(
        self, path: str, mode: str, resumable: bool = False, told: int | None = None
    ) -> FTPWriteStream:
        """Open for upload: "w" STOR, "a" APPE, "r+" STOR after REST (the legacy server keeps
        a cut upload under its final name, ``resumable`` or not)."""
        self._call(self.ftp.voidcmd, "TYPE I")
        return FTPWriteStream(self, path, "APPE" if mode == "a" else "STOR")

    def create_unique(self, directory: str, prefix: str) -> FTPWriteStream:
        """A new file with a unique name (checked with SIZE first: STOU's reply is not parseable)."""
        for _ in range(10):
            path = f"{directory.rstrip('/')}/{prefix}{secrets.token_hex(4)}"
            try:
                self.stat(path)
            except errors.NotFound:
                return self.open_write(path, "w")
        raise errors.AlreadyExists("No usable unique file name found.")

    # --- namespace

    def mkdir(self, path: str) -> None:
        """MKD."""
        self._call(self.ftp.mkd, path)

    def rmdir(self, path: str) -> None:
        """RMD."""
        self._call(self.ftp.rmd, path)

    def remove(self, path: str) -> None:
        """DELE."""
        self._call(self.ftp.delete, path)

    def rename(self, src: str, dst: str) -> None:
        """RNFR + RNTO."""
        self._call(self.ftp.rename, src, dst)

    def stat_for_resume(self, path: str) -> tuple[Attrs | None, int | None]:
        """The file's attributes; never a partial: a legacy server keeps a cut upload under
        its final name, where SIZE finds it."""
        try:
            return self.stat(path), None
        except (errors.NotFound, errors.PermissionDenied):
            return None, None

    def chmod(self, path: str, mode: int) -> None:
        """SITE CHMOD (where the legacy server has it)."""
        self._call(self.ftp.voidcmd, f"SITE CHMOD {mode:o} {path}")

    def set_mtime(self, path: str, mtime: int) -> None:
        """MFMT (where the legacy server has it)."""
        if not self._mfmt:
            raise errors.Unsupported()
        self._call(self.ftp.voidcmd, f"MFMT {time.strftime('%Y%m%d%H%M%S', time.gmtime(mtime))} {path}")

    def chown(self, path: str, uid: int, gid: int) -> None:
        """FTP has no command for it."""
        raise errors.Unsupported()

    def close(self) -> None:
        """QUIT (or just close when the connection is gone)."""
        if self._alive:
            with contextlib.suppress(Exception):
                self.ftp.quit()
        self._alive = False
        with contextlib.suppress(Exception):
            self.ftp.close()
