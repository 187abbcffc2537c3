"""The storage interface: the only thing the FTP side knows about where files live.

Pure core. Backends (SFTP over asyncssh, a legacy FTP server over ftplib, both in shadow) implement
``Storage``; every method is synchronous, called from an FTP session thread, takes absolute
backend paths and raises only ``gateway.core.errors.StorageError`` subclasses.
"""

from __future__ import annotations

import enum
import hashlib
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

#: An atomic upload in progress is written to ``.ftpgw-upload-<8 hex>-<name>`` in the
#: directory of its target (cut to 255 bytes) and renamed over the target at the end.
UPLOAD_TEMP_PREFIX = ".ftpgw-upload-"
#: A cut upload's data is kept as ``.ftpgw-partial-<8 hex of the user>-<name>`` until it is
#: resumed (and renamed over the target once complete) or expires (``uploads.partial_ttl``).
PARTIAL_PREFIX = ".ftpgw-partial-"
_UPLOAD_TEMP = re.compile(r"\.ftpgw-(?:upload|partial)-[0-9a-f]{8}-")
NAME_MAX = 255  # bytes in one name on POSIX file systems


def is_upload_in_progress(name: str) -> bool:
    """True if ``name`` is an atomic upload's temporary name or a kept partial (listings leave them out)."""
    return _UPLOAD_TEMP.match(name) is not None


def partial_name(path: str, owner: str) -> str | None:
    """Where ``owner``'s cut upload of ``path`` is kept; None if the name is too long for it.

    The name is never cut: two long names sharing their first 231 bytes would share one
    partial, and a resume of one would continue the other.
    """
    directory, _, name = path.rpartition("/")
    tag = hashlib.sha256(owner.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    kept = f"{PARTIAL_PREFIX}{tag}-{name}"
    if len(kept.encode("utf-8", "surrogateescape")) > NAME_MAX:
        return None
    return f"{directory}/{kept}"


class Kind(enum.Enum):
    """File type as the FTP listings need it."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    FIFO = "fifo"
    SOCKET = "socket"
    CHAR_DEVICE = "char"
    BLOCK_DEVICE = "block"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Attrs:
    """What a listing or SIZE/MDTM needs to know about one file."""

    kind: Kind
    size: int = 0
    mtime: int | None = None  # seconds since the epoch, UTC
    mode: int = 0o644  # permission bits only
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    #: Owner and group names, where the backend gives them as its listings show them (a
    #: legacy FTP server's); None: the numbers are shown, as vsftpd does by default.
    owner: str | None = None
    group: str | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    """One directory entry: the name as the backend returned it, its lstat attrs."""

    name: str
    attrs: Attrs
    link_target: str | None = None


class ReadStream(Protocol):
    """A file being downloaded: sequential reads from a start offset."""

    name: str
    closed: bool

    def read(self, size: int = -1) -> bytes | memoryview:
        """Return the next chunk of data; an empty one at end of file."""
        ...

    def seek(self, offset: int) -> None:
        """Start reading at ``offset`` (only before the first read)."""
        ...

    def close(self) -> None:
        """Release the backend handle."""
        ...


#: Told once, on the storage's own thread, when a ``Sender`` ends: the bytes sent, and what
#: ended it early (a ``GatewayError`` from the backend, an ``OSError`` from the data
#: connection) or None when the whole file was sent.
Delivered = Callable[[int, Exception | None], None]


class Delivery(Protocol):
    """A download a storage is sending into a data connection by itself."""

    sent: int  # bytes sent so far: progress, read from other threads

    def cancel(self) -> None:
        """Stop sending (any thread); the ``Delivered`` callback is then not called."""
        ...


class Sender(Protocol):
    """A ReadStream that can send the rest of its file into a socket without the caller's thread."""

    def send_to(self, sock: socket.socket, done: Delivered) -> Delivery:
        """Send from the current offset to the end into ``sock`` (connected, non-blocking; the
        sender closes it), then call ``done``; the stream is released when it ends either way."""
        ...


class WriteStream(Protocol):
    """A file being uploaded: sequential writes from a start offset."""

    name: str
    closed: bool

    def write(self, data: bytes) -> int:
        """Queue ``data``; raise the first backend error seen so far."""
        ...

    def seek(self, offset: int) -> None:
        """Start writing at ``offset`` (only before the first write)."""
        ...

    def close(self) -> None:
        """Flush, close on the backend and raise if the file is not complete there."""
        ...

    def abort(self) -> None:
        """Give up the upload: release the handle without claiming success."""
        ...


@runtime_checkable
class Passthrough(Protocol):
    """A legacy FTP session that relays listings and SITE commands as its server answers them.

    In the legacy and shadow phases the user is still served by the organisation's FTP
    server: its LIST lines and its SITE commands (``SITE RECFM=FB``) are what scripts rely on.
    """

    def site(self, command: str) -> tuple[int, list[str]]:
        """``SITE command`` on the legacy server: its reply code and lines, as they came."""
        ...

    def raw_listing(self, command: str, directory: str) -> list[str]:
        """The lines of ``command`` (LIST or NLST with the client's options and path) run in ``directory``."""
        ...


class Storage(Protocol):
    """A logged-in backend session for one FTP user."""

    @property
    def alive(self) -> bool:
        """False once the session cannot go on with this backend (421 to the client); an
        implementation that can reconnect stays alive when only its connection was lost."""
        ...

    def home(self) -> str:
        """The backend's idea of the login directory (absolute)."""
        ...

    def stat(self, path: str) -> Attrs:
        """Attributes of ``path``, following symlinks."""
        ...

    def lstat(self, path: str) -> Attrs:
        """Attributes of ``path`` itself."""
        ...

    def list_dir(self, path: str) -> Iterator[Entry]:
        """Entries of a directory, without "." and ".."; symlink targets filled in."""
        ...

    def open_read(self, path: str, known: Attrs | None = None) -> ReadStream:
        """Open a regular file for download; NotRegularFile for anything else.

        ``known``: the file's attributes as the same command sequence just fetched them (a
        SIZE or MDTM before the RETR); a storage may open it without asking again.
        """
        ...

    def open_write(
        self, path: str, mode: str, resumable: bool = False, told: int | None = None
    ) -> WriteStream:
        """Open for upload: "w" truncates, "a" appends, "r+" resumes (seek follows; ends with the data).

        ``resumable``: the bytes sent are the client's file as it is (a binary upload): if
        the upload fails, what reached the backend may be kept for a resume. "a" and "r+"
        continue this user's kept partial of ``path`` when there is one; ``told`` is its
        size as SIZE gave it to the client in this session, if it did: APPE continues the
        partial only at the size the client knows (ResumeRefused otherwise).
        """
        ...

    def stat_for_resume(self, path: str) -> tuple[Attrs | None, int | None]:
        """Attributes of ``path`` (None if it is absent or hidden from this user) and the
        size of this user's kept partial upload of it (None: none), in one round trip."""
        ...

    def create_unique(self, directory: str, prefix: str) -> WriteStream:
        """Create a new file with a unique name in ``directory`` (STOU)."""
        ...

    def mkdir(self, path: str) -> None:
        """Create a directory."""
        ...

    def rmdir(self, path: str) -> None:
        """Remove an empty directory."""
        ...

    def remove(self, path: str) -> None:
        """Remove a file or symlink."""
        ...

    def rename(self, src: str, dst: str) -> None:
        """Rename, replacing an existing ``dst`` file."""
        ...

    def chmod(self, path: str, mode: int) -> None:
        """Set permission bits."""
        ...

    def set_mtime(self, path: str, mtime: int) -> None:
        """Set the modification time (seconds since the epoch, UTC)."""
        ...

    def chown(self, path: str, uid: int, gid: int) -> None:
        """Set the owner and group (a privileged account only; Unsupported elsewhere)."""
        ...

    def close(self) -> None:
        """End the backend session."""
        ...


class ShadowProblems:
    """What went wrong with a shadow login's SFTP copies: added by the shadow storage (any
    thread), taken by the session's usage record (thread-safe)."""

    def __init__(self) -> None:
        self._ops: list[str] = []
        self._lock = threading.Lock()

    def add(self, op: str) -> None:
        """One copy operation (upload, mkdir, ...) that failed or differed."""
        with self._lock:
            self._ops.append(op)

    def take(self) -> list[str]:
        """The problems added since the last take."""
        with self._lock:
            taken, self._ops = self._ops, []
            return taken


@dataclass(frozen=True, slots=True)
class Login:
    """A successful login: the storage session and the backend root that is "/"."""

    storage: Storage
    root: str
    route_name: str
    backend_name: str = ""
    banner: str | None = None
    read_only: bool = False  # the route's permissions: no command that changes anything
    commands: frozenset[str] | None = None  # the FTP verbs the route allows (None: all)
    phase: str = "sftp"  # the route's migration phase (config.PHASES)
    #: Shadow phase: one entry per SFTP copy that failed or differed (the usage report counts them).
    shadow_problems: ShadowProblems = field(default_factory=ShadowProblems)
    #: The backend directory a session starts in (inside ``root``; "": ``root`` itself).
    home: str = ""
    #: The codec of names on the FTP wire (gateway.core.names); None: names are bytes as they are.
    name_encoding: str | None = None


#: Told (result, route, phase) when the login of a user with a route is refused; result is
#: the audit line's (``retired``, ``bad_credentials``, ``banned``, ...).
Refused = Callable[[str, str, str], None]


class Authenticate(Protocol):
    """How the FTP side logs a user in: (user, password, client address, TLS) -> Login.

    Raises LoginRefused for bad credentials and BackendUnavailable for a dead backend;
    ``refused`` hears why a login of a user with a route was refused.
    """

    def __call__(
        self, user: str, password: str, client_ip: str, tls: bool, refused: Refused | None = None
    ) -> Login: ...
