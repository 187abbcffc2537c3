"""``MemoryStorage``: the storage interface held in memory.

Pure core. It is what ``tests/contract/`` runs the storage contract over besides the real
backends, and what unit tests of ``shadow``, ``sync`` and the FTP side use instead of an SSH
server: no root, no sshd, no network. It behaves as an SFTP server with atomic uploads does
("w" replaces the file when the upload closes, "a" and "r+" write in place), with the
errors of ``gateway.core.errors`` a POSIX file system gives.
"""

from __future__ import annotations

import dataclasses
import itertools
import posixpath
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from gateway.core import errors
from gateway.core.storage import Attrs, Entry, Kind

_MAX_LINKS = 40  # symlinks followed before ELOOP, as Linux


@dataclass
class _Node:
    kind: Kind
    data: bytearray = field(default_factory=bytearray)
    mode: int = 0o644
    mtime: int = 0
    uid: int = 1000
    gid: int = 1000
    target: str | None = None  # a symlink's

    def attrs(self) -> Attrs:
        size = len(self.data) if self.kind is Kind.FILE else len(self.target or "") if self.target else 4096
        return Attrs(self.kind, size, self.mtime, self.mode, self.uid, self.gid)


class MemoryStorage:
    """A logged-in session on a file system in memory (implements ``Storage``)."""

    def __init__(self, home: str = "/home/user", clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._nodes: dict[str, _Node] = {"/": _Node(Kind.DIR, mode=0o755, mtime=self._now())}
        self._home = posixpath.normpath(home)
        self._unique = itertools.count(1)
        self._alive = True
        parts = self._home.strip("/").split("/")
        for depth in range(1, len(parts) + 1):
            self._nodes["/" + "/".join(parts[:depth])] = _Node(Kind.DIR, mode=0o755, mtime=self._now())

    def _now(self) -> int:
        return int(self._clock())

    # --- for tests: what the interface cannot make

    def symlink(self, target: str, path: str) -> None:
        """Create a symlink ``path`` pointing at ``target``."""
        self._parent(path)
        if path in self._nodes:
            raise errors.AlreadyExists()
        self._nodes[self._norm(path)] = _Node(Kind.SYMLINK, mode=0o777, mtime=self._now(), target=target)

    def read_bytes(self, path: str) -> bytes:
        """The content of a file (for assertions)."""
        return bytes(self._file(path).data)

    # --- the Storage interface

    @property
    def alive(self) -> bool:
        """False once closed."""
        return self._alive

    def home(self) -> str:
        """The login directory."""
        return self._home

    def stat(self, path: str) -> Attrs:
        """Attributes of ``path``, following symlinks."""
        return self._node(path, follow=True).attrs()

    def lstat(self, path: str) -> Attrs:
        """Attributes of ``path`` itself."""
        return self._node(path, follow=False).attrs()

    def list_dir(self, path: str) -> Iterator[Entry]:
        """Entries of a directory (sorted by name), without "." and ".."."""
        directory = self._resolve(path)
        if self._node(directory, follow=False).kind is not Kind.DIR:
            raise errors.NotADirectory()
        prefix = directory.rstrip("/") + "/"
        children = sorted(
            p for p in self._nodes if p.startswith(prefix) and "/" not in p[len(prefix) :] and p != "/"
        )
        return iter(
            [Entry(p[len(prefix) :], self._nodes[p].attrs(), self._nodes[p].target) for p in children]
        )

    def open_read(self, path: str, known: Attrs | None = None) -> _Reader:
        """Open a regular file for download."""
        node = self._node(path, follow=True)
        if node.kind is not Kind.FILE:
            raise errors.NotRegularFile()
        return _Reader(self._norm(path), bytes(node.data))

    def open_write(self, path: str, mode: str, resumable: bool = False, told: int | None = None) -> _Writer:
        """ "w": the file is replaced when the upload closes; "a" appends; "r+" writes in place
        from the offset given by seek (the file ends where the data ends)."""
        path = self._resolve(path)
        self._parent(path)
        existing = self._nodes.get(path)
        if existing is not None and existing.kind is Kind.DIR:
            raise errors.IsADirectory()
        if mode == "r+" and existing is None:
            raise errors.NotFound()
        if mode in ("a", "r+") and existing is None:
            existing = self._nodes[path] = _Node(Kind.FILE, mtime=self._now())
        start = len(existing.data) if mode == "a" and existing is not None else 0
        return _Writer(self, path, mode, start)

    def stat_for_resume(self, path: str) -> tuple[Attrs | None, int | None]:
        """The attributes of ``path`` (None if absent); never a kept partial (none are kept)."""
        try:
            return self.stat(path), None
        except errors.NotFound:
            return None, None

    def create_unique(self, directory: str, prefix: str) -> _Writer:
        """A new file named ``prefix`` plus a number, in ``directory``."""
        directory = self._resolve(directory)
        while True:
            path = posixpath.join(directory, f"{prefix}{next(self._unique)}")
            if path not in self._nodes:
                return self.open_write(path, "w")

    def mkdir(self, path: str) -> None:
        """Create a directory."""
        path = self._norm(path)
        self._parent(path)
        if path in self._nodes:
            raise errors.AlreadyExists()
        self._nodes[path] = _Node(Kind.DIR, mode=0o755, mtime=self._now())

    def rmdir(self, path: str) -> None:
        """Remove an empty directory."""
        path = self._norm(path)
        if self._node(path, follow=False).kind is not Kind.DIR:
            raise errors.NotADirectory()
        if any(p.startswith(path.rstrip("/") + "/") for p in self._nodes):
            raise errors.NotEmpty()
        del self._nodes[path]

    def remove(self, path: str) -> None:
        """Remove a file or symlink."""
        path = self._norm(path)
        if self._node(path, follow=False).kind is Kind.DIR:
            raise errors.IsADirectory()
        del self._nodes[path]

    def rename(self, src: str, dst: str) -> None:
        """Rename, replacing an existing ``dst`` file (a directory moves with its contents)."""
        src, dst = self._norm(src), self._norm(dst)
        node = self._node(src, follow=False)
        self._parent(dst)
        found = self._nodes.get(dst)
        if found is not None and found.kind is Kind.DIR and src != dst:
            raise errors.AlreadyExists() if node.kind is Kind.DIR else errors.IsADirectory()
        if node.kind is Kind.DIR and dst.startswith(src.rstrip("/") + "/"):
            raise errors.BadName()  # into itself
        moved = {p: n for p, n in self._nodes.items() if p == src or p.startswith(src.rstrip("/") + "/")}
        for old in moved:
            del self._nodes[old]
        for old, moved_node in moved.items():
            self._nodes[dst + old[len(src) :]] = moved_node

    def chmod(self, path: str, mode: int) -> None:
        """Set permission bits."""
        self._node(path, follow=True).mode = mode & 0o7777

    def set_mtime(self, path: str, mtime: int) -> None:
        """Set the modification time."""
        self._node(path, follow=True).mtime = mtime

    def chown(self, path: str, uid: int, gid: int) -> None:
        """Set owner and group."""
        node = self._node(path, follow=True)
        node.uid, node.gid = uid, gid

    def close(self) -> None:
        """End the session."""
        self._alive = False

    # --- internals

    def _norm(self, path: str) -> str:
        if not self._alive:
            raise errors.ConnectionLost()
        return posixpath.normpath("/" + path.lstrip("/"))

    def _resolve(self, path: str) -> str:
        """``path`` with every symlink along it followed."""
        path = self._norm(path)
        for _ in range(_MAX_LINKS):
            parts = path.strip("/").split("/") if path != "/" else []
            current = "/"
            for index, part in enumerate(parts):
                current = posixpath.join(current, part)
                node = self._nodes.get(current)
                if node is not None and node.kind is Kind.SYMLINK and node.target is not None:
                    rest = "/".join(parts[index + 1 :])
                    target = posixpath.join(posixpath.dirname(current), node.target)
                    path = self._norm(posixpath.join(target, rest) if rest else target)
                    break
            else:
                return path
        raise errors.BackendFailure("Too many levels of symbolic links.")

    def _node(self, path: str, follow: bool) -> _Node:
        if follow:
            found = self._nodes.get(self._resolve(path))
        else:
            path = self._norm(path)
            parent = self._resolve(posixpath.dirname(path))
            found = self._nodes.get(posixpath.join(parent, posixpath.basename(path)) if path != "/" else "/")
        if found is None:
            raise errors.NotFound()
        return found

    def _parent(self, path: str) -> None:
        parent = self._nodes.get(self._resolve(posixpath.dirname(self._norm(path))))
        if parent is None:
            raise errors.NotFound()
        if parent.kind is not Kind.DIR:
            raise errors.NotADirectory()

    def _file(self, path: str) -> _Node:
        node = self._node(path, follow=True)
        if node.kind is not Kind.FILE:
            raise errors.NotRegularFile()
        return node

    def _commit(self, path: str, data: bytes, mode: str, offset: int) -> None:
        """A writer's data, at its close ("w") or as it goes ("a", "r+")."""
        node = self._nodes.get(path)
        if mode == "w" or node is None:
            keep = dataclasses.replace(node, data=bytearray()) if node is not None else None
            node = self._nodes[path] = keep or _Node(Kind.FILE)
            node.data[:] = data
        else:
            node.data[offset : offset + len(data)] = data
        node.mtime = self._now()

    def _truncate(self, path: str, size: int) -> None:
        node = self._nodes.get(path)
        if node is not None:
            del node.data[size:]


class _Reader:
    """A download from memory."""

    def __init__(self, name: str, data: bytes) -> None:
        self.name, self.closed = name, False
        self._data, self._offset = data, 0

    def read(self, size: int = -1) -> bytes:
        """The next chunk (``size`` bytes at most; all that is left with -1)."""
        end = len(self._data) if size < 0 else self._offset + size
        chunk, self._offset = self._data[self._offset : end], min(end, len(self._data))
        return chunk

    def seek(self, offset: int) -> None:
        """Start reading at ``offset``."""
        self._offset = offset

    def close(self) -> None:
        """Nothing to release."""
        self.closed = True


class _Writer:
    """An upload into memory ("w": applied at close; "a", "r+": applied as it goes)."""

    def __init__(self, storage: MemoryStorage, path: str, mode: str, start: int) -> None:
        self.name, self.closed = path, False
        self._storage, self._mode = storage, mode
        self._buffer = bytearray()
        self._offset = self._start = start

    def write(self, data: bytes) -> int:
        """Write ``data`` (kept until close for a "w" upload)."""
        if self._mode == "w":
            self._buffer += data
        else:
            self._storage._commit(self.name, bytes(data), self._mode, self._offset)
        self._offset += len(data)
        return len(data)

    def seek(self, offset: int) -> None:
        """Start writing at ``offset`` (before the first write)."""
        self._offset = self._start = offset

    def close(self) -> None:
        """Complete the upload."""
        if self.closed:
            return
        self.closed = True
        if self._mode == "w":
            self._storage._commit(self.name, bytes(self._buffer), "w", 0)
        elif self._mode == "r+":
            self._storage._truncate(self.name, self._offset)  # the file ends with the data

    def abort(self) -> None:
        """Give up: a "w" upload leaves nothing; "a" and "r+" keep what was written."""
        self.closed = True
