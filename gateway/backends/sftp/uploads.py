"""Atomic uploads and resumable partials on an SFTP session: the rules in one place.

Uploads with STOR are atomic by default: the data goes to a hidden name in the same
directory (``temporary_name``) and is renamed over the final name only after the backend
confirmed the close, so a failed or aborted upload never leaves a truncated file under the
final name. The rename may replace only a file of the same owner and group that its owner
may write (``may_replace``); anything else (a symlink, special file, read-only or foreign
file, a directory that refuses new files) is written in place, as without atomic uploads.

What a failed binary upload got onto the backend is kept under a hidden name of its user
(the partial, gateway.core.storage.partial_name) for ``partial_ttl`` seconds: SIZE, REST+STOR
and APPE of that name continue it, and it is renamed over the final name once complete.
Temporary files and partials older than ``partial_ttl`` are removed when their directory
is listed. Resumed uploads without a partial, and STOU, write in place.

A failed atomic replacement leaves the previous version in place, complete. A client that
then resumes (lftp retries with SIZE, REST, STOR; ``curl -C -`` with SIZE, APPE) believes
the bytes there are the first part of its new file and sends only the rest: the result
would be the old file's head and the new file's tail, reported as a success.
``FailedReplacements`` remembers such versions (per process) so that the resume is refused
while the file is still exactly the version the failed upload would have replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import asyncssh
from asyncssh import constants as fx

from gateway.backends.sftp.attrs import kind_of, to_attrs
from gateway.backends.sftp.files import SFTPWriteStream
from gateway.backends.sftp.loop import BackgroundLoop
from gateway.core import errors, logs
from gateway.core.storage import NAME_MAX, UPLOAD_TEMP_PREFIX, Attrs, Kind, partial_name

T = TypeVar("T")
log = logging.getLogger("gateway.sftp")


def temporary_name(path: str) -> str:
    """A hidden name in the directory of ``path`` for its upload in progress."""
    directory, _, name = path.rpartition("/")
    raw = f"{UPLOAD_TEMP_PREFIX}{secrets.token_hex(4)}-{name}".encode("utf-8", "surrogateescape")
    return f"{directory}/{raw[:NAME_MAX].decode('utf-8', 'surrogateescape')}"


async def _drop(sftp: asyncssh.SFTPClient, fh: asyncssh.SFTPClientFile, temp: str) -> None:
    """Close and remove a temporary upload file (best effort)."""
    with contextlib.suppress(asyncssh.Error, OSError):
        await fh.close()
    await remove_quietly(sftp, temp)


async def remove_quietly(sftp: asyncssh.SFTPClient, path: str) -> None:
    """Remove ``path`` if it is there and may be removed (best effort)."""
    with contextlib.suppress(asyncssh.Error, OSError):
        await sftp.remove(path)


async def _absent_is_none(
    request: Awaitable[asyncssh.SFTPAttrs], hidden_too: bool = True
) -> asyncssh.SFTPAttrs | None:
    """The attributes a stat returns, None if there is no such file (or, if ``hidden_too``,
    it is not the user's to see)."""
    try:
        return await request
    except asyncssh.SFTPNoSuchFile:
        return None
    except asyncssh.SFTPPermissionDenied:
        if hidden_too:
            return None
        raise


async def _nothing() -> None:
    """An awaitable with no result (a request not sent)."""


async def _replace(sftp: asyncssh.SFTPClient, src: str, dst: str) -> None:
    """Rename ``src`` over ``dst``: atomic with posix-rename@openssh.com, else remove + rename."""
    try:
        await sftp.posix_rename(src, dst)
    except asyncssh.SFTPOpUnsupported:
        # Plain SFTPv3 RENAME refuses an existing target (not atomic, like rename()).
        with contextlib.suppress(asyncssh.SFTPNoSuchFile):
            await sftp.remove(dst)
        await sftp.rename(src, dst)


def may_replace(old: asyncssh.SFTPAttrs, new: asyncssh.SFTPAttrs) -> bool:
    """True if the new file may be renamed over ``old``: the same owner and group, and
    ``old`` writable by its owner.

    A rename needs only the directory's permission, so without this check atomic uploads
    would let a user replace a file that is not theirs or that is read-only (0644 owned by
    another account in a shared directory), and would change a replaced file's owner or
    group. In place, the backend applies its own permission check and keeps both.
    """
    if old.uid is None or new.uid is None:  # a server that does not tell owners
        return bool((old.permissions or 0) & 0o222)
    return old.uid == new.uid and old.gid == new.gid and bool((old.permissions or 0) & 0o200)


#: What identifies a version of a file: (size, mtime).
Version = tuple[int, int | None]


class FailedReplacements:
    """(backend user, path) -> the version a failed atomic upload left in place (bounded, thread-safe)."""

    def __init__(self, ttl: float = 3600.0, limit: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self._ttl, self._limit, self._clock = ttl, limit, clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], tuple[Version, float]] = OrderedDict()

    def remember(self, user: str, path: str, version: Version) -> None:
        """The upload of ``path`` that would have replaced ``version`` failed."""
        with self._lock:
            self._entries[(user, path)] = (version, self._clock() + self._ttl)
            self._entries.move_to_end((user, path))
            while len(self._entries) > self._limit:
                self._entries.popitem(last=False)

    def forget(self, user: str, path: str) -> None:
        """``path`` was replaced after all, or has changed since."""
        with self._lock:
            self._entries.pop((user, path), None)

    def left_in_place(self, user: str, path: str) -> Version | None:
        """The version a failed replacement of ``path`` left there lately, if any."""
        with self._lock:
            found = self._entries.get((user, path))
            if found is None:
                return None
            if found[1] < self._clock():
                del self._entries[(user, path)]
                return None
            return found[0]


class AtomicUploads:
    """The upload rules of ``SFTPStorage``, on the session's state (mixed into it)."""

    _sftp: asyncssh.SFTPClient
    _loop: BackgroundLoop
    _atomic: bool
    _failed: FailedReplacements
    _owner: str  # whose partials this session continues (the FTP login)
    _user: str  # the backend account (FailedReplacements is keyed on it)
    _partial_ttl: float
    #: SFTPStorage._writer: the write stream over an open handle (commit, discard: see files.py).
    _writer: Callable[..., SFTPWriteStream]

    if TYPE_CHECKING:

        def _run(self, op: str, make: Callable[[], Awaitable[T]], retry: bool = True) -> T: ...

        def _lstat_or_none(self, path: str) -> Attrs | None: ...

    # --- partials: a failed upload's data, kept for a resume

    def _partial(self, path: str) -> str | None:
        """Where this user's partial of ``path`` is kept (None: partials are not kept here)."""
        return partial_name(path, self._owner) if self._atomic else None

    def _expired(self, attrs: Attrs | asyncssh.SFTPAttrs) -> bool:
        """True if an upload's file has not been written to for ``partial_ttl`` seconds."""
        return attrs.mtime is not None and attrs.mtime < time.time() - self._partial_ttl

    def stat_for_resume(self, path: str) -> tuple[Attrs | None, int | None]:
        """The attributes of ``path`` and the size of this user's partial of it, both
        requests in one round trip (SIZE asks for both: a partial is rare, SIZE is not).
        An expired partial is removed and counts as none."""
        kept = self._partial(path)

        async def both() -> tuple[asyncssh.SFTPAttrs | None, asyncssh.SFTPAttrs | None]:
            sftp = self._sftp
            found, partial = await asyncio.gather(
                _absent_is_none(sftp.stat(path)),
                _absent_is_none(sftp.lstat(kept)) if kept is not None else _nothing(),
            )
            if partial is not None and kept is not None and self._expired(partial):
                await remove_quietly(sftp, kept)
                partial = None
            return found, partial

        found, partial = self._run("stat", both)
        size = (partial.size or 0) if partial is not None and kind_of(partial) is Kind.FILE else None
        return (to_attrs(found) if found is not None else None), size

    def _continue_partial(
        self, path: str, mode: str, resumable: bool, told: int | None
    ) -> SFTPWriteStream | None:
        """A resume (REST+STOR: "r+", APPE: "a") of this user's partial of ``path``, renamed
        over ``path`` once complete; None if there is no partial to resume.

        The file now at ``path`` must be one the rename may replace, as for any atomic
        upload (``may_replace``); if it is not (someone else's file appeared meanwhile),
        the partial is dropped and the resume refused: the client sends the whole file.

        REST names its offset; APPE does not, the client sends from the size it was told.
        An APPE therefore continues the partial only if SIZE gave this session exactly its
        size (``told``): a SIZE answered just before the failed upload's session had kept
        it (the client sees the old size or none) would otherwise append the whole file, or
        its tail from the old size, to the partial. A resume of a partial that SIZE showed
        and that is gone since (completed elsewhere, expired) is refused too.
        """
        kept = self._partial(path)
        code = 554 if mode == "r+" else 550
        if kept is None:
            return None

        async def opened() -> tuple[asyncssh.SFTPClientFile, int] | None:
            sftp = self._sftp
            partial, target = await asyncio.gather(
                _absent_is_none(sftp.lstat(kept), hidden_too=False),
                _absent_is_none(sftp.lstat(path), hidden_too=False),
            )
            if partial is not None and kind_of(partial) is not Kind.FILE:
                partial = None
            elif partial is not None and self._expired(partial):
                await remove_quietly(sftp, kept)
                partial = None
            if partial is None:
                if told is not None:
                    raise errors.ResumeRefused(errors.RESUME_UNKNOWN, code=code)
                return None
            if mode == "a" and told != partial.size:
                raise errors.ResumeRefused(errors.RESUME_UNKNOWN, code=code)
            if target is not None and (kind_of(target) is not Kind.FILE or not may_replace(target, partial)):
                await remove_quietly(sftp, kept)
                raise errors.ResumeRefused(code=code)
            fh = await sftp.open(kept, fx.FXF_WRITE, encoding=None, block_size=None)
            return fh, (partial.size or 0) if mode == "a" else 0

        found = self._run("open", opened)
        if found is None:
            return None
        fh, offset = found
        sftp, user, failed = self._sftp, self._user, self._failed

        async def commit() -> None:
            await _replace(sftp, kept, path)
            failed.forget(user, path)

        def discard(keep: int | None, stalled: bool) -> None:
            if keep is not None:
                self._dispose(stalled, "setstat", lambda: self._sftp.truncate(kept, keep))
            else:
                self._dispose(stalled, "remove", lambda: remove_quietly(self._sftp, kept))

        return self._writer(fh, path, offset, commit, discard, truncate=mode == "r+", resumable=resumable)

    def _dispose(self, stalled: bool, op: str, make: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run a failed upload's clean-up: on a new connection if the old one was lost; not
        waited for if it stalled (the client hears of its failed upload at once)."""
        if stalled:
            self._loop.submit(make())
            return
        with contextlib.suppress(errors.GatewayError):
            self._run(op, make, retry=False)

    def _check_resume(self, path: str, mode: str) -> None:
        """Refuse a resume onto the version a failed atomic upload of ``path`` left there.

        With atomic uploads a failed STOR leaves the previous version whole, where a plain
        FTP server leaves the partial new file; a client resuming from SIZE would append
        the rest of the new file to the old one (FailedReplacements, above).
        554 makes lftp send the whole file again ("Switching to NOREST mode").
        """
        left = self._failed.left_in_place(self._user, path)
        if left is None:
            return
        found = self._lstat_or_none(path)
        if found is not None and (found.size, found.mtime) == left:
            raise errors.ResumeRefused(code=554 if mode == "r+" else 550)
        self._failed.forget(self._user, path)  # changed since: whatever is there now is meant

    def _open_atomic(self, path: str, resumable: bool) -> SFTPWriteStream | None:
        """A write stream to a temporary name renamed to ``path`` on close, or None when the
        upload has to go straight to ``path`` (a symlink, special file, read-only file or
        file of another owner or group there, or a directory the user may not create files
        in)."""
        write_new = fx.FXF_WRITE | fx.FXF_CREAT | fx.FXF_EXCL

        async def opened() -> tuple[asyncssh.SFTPClientFile | None, str, Version | None]:
            temp = temporary_name(path)
            sftp = self._sftp
            # Both requests go out at once: one round trip.
            found, fh = await asyncio.gather(
                sftp.lstat(path),
                sftp.open(temp, write_new, encoding=None, block_size=None),
                return_exceptions=True,
            )
            if isinstance(fh, BaseException):
                raise fh
            try:
                if isinstance(found, asyncssh.SFTPNoSuchFile):
                    return fh, temp, None
                if isinstance(found, BaseException):
                    raise found
                kind = kind_of(found)
                if kind is Kind.DIR:
                    raise errors.IsADirectory()
                if kind is Kind.FILE:
                    mode = (found.permissions or 0o644) & 0o7777
                    # The new file keeps the old one's permission bits; the temporary file
                    # shows whose it would be (the login's uid, its group or the directory's).
                    mine, _ = await asyncio.gather(fh.stat(), fh.chmod(mode))
                    if may_replace(found, mine):
                        return fh, temp, (found.size or 0, found.mtime)
            except BaseException:
                await _drop(sftp, fh, temp)
                raise
            # A symlink, special file, or a file the rename must not replace: in place.
            await _drop(sftp, fh, temp)
            return None, temp, None

        try:
            fh, temp, replaced = self._run("open", opened)
        except errors.PermissionDenied:
            # The directory refuses new files (the existing file may still be writable):
            # write in place, as without atomic uploads.
            log.info("atomic upload not possible here (no permission to create files): writing in place")
            return None
        if fh is None:
            return None
        sftp = self._sftp  # the connection the data goes over; it must also do the rename
        user, failed, kept = self._user, self._failed, self._partial(path)
        only_copy = False  # the target is gone and the rename did not happen: keep the data

        async def commit() -> None:
            nonlocal only_copy
            # The whole file is stored: a partial of an earlier attempt is obsolete (SIZE
            # would show its size). Its removal goes out with the rename: one round trip.
            obsolete = remove_quietly(sftp, kept) if kept is not None else _nothing()
            try:
                await asyncio.gather(sftp.posix_rename(temp, path), obsolete)
            except asyncssh.SFTPOpUnsupported:
                # Plain SFTPv3 RENAME refuses an existing target (not atomic, like rename()).
                with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                    await sftp.remove(path)
                only_copy = True
                await sftp.rename(temp, path)
                only_copy = False
            failed.forget(user, path)

        def discard(keep: int | None, stalled: bool) -> None:
            if replaced is not None:
                # Also when the partial is kept: should it go (expired, removed), a
                # resume must still not glue the new file's end to the old version.
                failed.remember(user, path, replaced)
            if only_copy:
                log.error(
                    "upload of %s: old file removed, rename failed: the new data is in %s",
                    logs.quote(path),
                    logs.quote(temp),
                )
            elif kept is not None and keep:
                self._dispose(stalled, "rename", lambda: self._keep(temp, kept, keep))
            else:
                self._dispose(stalled, "remove", lambda: self._forget_upload(temp, kept))

        return self._writer(fh, path, 0, commit, discard, resumable=resumable)

    async def _keep(self, temp: str, kept: str, size: int) -> None:
        """Keep the first ``size`` bytes of a failed upload as its partial (replacing an older one)."""
        sftp = self._sftp
        await sftp.truncate(temp, size)
        await _replace(sftp, temp, kept)

    async def _forget_upload(self, temp: str, kept: str | None) -> None:
        """Remove a failed upload's temporary file and the partial of an earlier attempt."""
        await asyncio.gather(
            remove_quietly(self._sftp, temp),
            remove_quietly(self._sftp, kept) if kept is not None else _nothing(),
        )
