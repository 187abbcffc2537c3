"""``ftp-sftp-gateway sync``: copy a user's tree from the legacy FTP server to SFTP.

What an operator runs before flipping a route from ``shadow`` to ``sftp``. Files whose SFTP
copy already matches (size and SHA-256) are skipped; others are copied to a temporary name
next to the target (``.NAME.ftpgw-sync``), resumed from there after an interruption,
verified (SHA-256 of the SFTP copy against the bytes read from the legacy server), given
the legacy file's modification time and mode, and only then renamed into place. Works on
the storage interface only: any two backends will do.

sync never loses data written on the SFTP side. An SFTP file that differs from the legacy
one is replaced only if it is still exactly what sync wrote there (the journal remembers
the size and time of every copy), so the legacy file changed since; a file someone else
wrote or changed (a partner uploading in the ``sftp`` phase) is a conflict: reported and
left alone unless ``overwrite``. Without a journal every difference is a conflict; so is
a file sync copied and someone deleted on SFTP since.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import posixpath
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from gateway import errors, names
from gateway.storage import Attrs, Kind, Storage

_BLOCK = 256 * 1024
PARTIAL_SUFFIX = ".ftpgw-sync"


@dataclass
class Summary:
    """What a sync did (or, with dry_run, would do)."""

    files: int = 0
    copied: int = 0
    skipped: int = 0
    bytes_copied: int = 0
    mismatches: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: Files left alone because the SFTP side changed them: "path: why".
    conflicts: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Copied:
    """What the journal remembers of one file sync copied: the legacy version it read and
    the SFTP file it left (size and modification time of each)."""

    legacy_size: int
    legacy_mtime: int | None
    sha256: str
    sftp_size: int
    sftp_mtime: int | None


class Journal(Protocol):
    """Per target path (relative to the route's SFTP root), what sync last copied there."""

    def get(self, path: str) -> Copied | None:
        """The last copy to ``path``, None if sync never copied it."""
        ...

    def put(self, path: str, copied: Copied) -> None:
        """Remember a copy to ``path`` (one that sync made, or found already matching)."""
        ...


#: Called for every file with (number, of how many, relative path, what happens).
Progress = Callable[[int, int, str, str], None]


def walk(storage: Storage, root: str, relative: str = "") -> Iterator[tuple[str, Attrs]]:
    """(relative path, attrs) of every regular file below ``root``, directories first
    (their paths end in "/")."""
    for entry in sorted(
        storage.list_dir(posixpath.join(root, relative) if relative else root), key=lambda e: e.name
    ):
        path = posixpath.join(relative, entry.name) if relative else entry.name
        if entry.attrs.kind is Kind.DIR:
            yield path + "/", entry.attrs
            yield from walk(storage, root, path)
        elif entry.attrs.kind is Kind.FILE and not entry.name.endswith(PARTIAL_SUFFIX):
            yield path, entry.attrs


def sha256_of(storage: Storage, path: str) -> str:
    """SHA-256 of a file, read through ``storage``."""
    digest = hashlib.sha256()
    stream = storage.open_read(path)
    try:
        while chunk := stream.read(_BLOCK):
            digest.update(chunk)
    finally:
        stream.close()
    return digest.hexdigest()


def sync(
    source: Storage,
    source_root: str,
    target: Storage,
    target_root: str,
    dry_run: bool,
    progress: Progress,
    name_encoding: str | None = None,
    overwrite: bool = False,
    journal: Journal | None = None,
) -> Summary:
    """Copy every file of ``source_root`` that ``target_root`` lacks or has differently,
    except where the target changed since sync wrote it (a conflict; see the module doc).

    ``name_encoding``: the route's; a target name is what the source name's bytes mean in it.
    ``overwrite``: replace conflicting files too. ``journal``: what earlier runs copied.
    """
    summary = Summary()
    tree = list(walk(source, source_root))
    total = sum(1 for relative, _ in tree if not relative.endswith("/"))

    def report(relative: str, action: str) -> None:
        progress(summary.files, total, relative, action)

    for relative, legacy in tree:
        name = names.recode(relative.rstrip("/"), name_encoding)
        dst = posixpath.join(target_root, name)
        if relative.endswith("/"):
            if not dry_run and _attrs(target, dst) is None:
                target.mkdir(dst)
            continue
        summary.files += 1
        src = posixpath.join(source_root, relative)
        try:
            last = journal.get(name) if journal is not None else None
            action, why = _decide(source, src, legacy, target, dst, last, overwrite)
            if action == "skip":
                summary.skipped += 1
                report(relative, "skip")
                if journal is not None and why and not dry_run:  # matching, not yet journalled
                    journal.put(name, _journal_entry(legacy, why, _attrs(target, dst)))
                continue
            if action == "conflict":
                summary.conflicts.append(f"{relative}: {why}")
                report(relative, "CONFLICT, left alone")
                continue
            if dry_run:
                report(relative, f"would {action}")
                summary.copied += 1
                summary.bytes_copied += legacy.size
                continue
            copied, digest = _copy(
                source, src, legacy, target, dst, action, functools.partial(report, relative)
            )
        except errors.GatewayError as err:
            summary.errors.append(f"{relative}: {err.code} {err.text}")
            report(relative, f"error {err.code}")
            continue
        summary.bytes_copied += copied
        if digest is None:
            summary.mismatches.append(relative)
            continue
        summary.copied += 1
        if journal is not None:
            journal.put(name, _journal_entry(legacy, digest, _attrs(target, dst)))
    return summary


def _decide(
    source: Storage, src: str, legacy: Attrs, target: Storage, dst: str, last: Copied | None, overwrite: bool
) -> tuple[str, str]:
    """What to do with one file: ("skip", SHA-256 if it was computed else ""), ("copy" or
    "update" or "overwrite", ""), or ("conflict", why)."""
    found = _attrs(target, dst)
    if found is None:
        if last is not None and not overwrite:
            return "conflict", "deleted on SFTP since sync copied it (--overwrite copies it again)"
        return "copy", ""
    if found.kind is not Kind.FILE:
        return "conflict", "not a regular file on SFTP"
    if last is not None and (found.size, found.mtime) == (last.sftp_size, last.sftp_mtime):
        # Still what sync wrote: the legacy file decides.
        if (legacy.size, legacy.mtime) == (last.legacy_size, last.legacy_mtime):
            return "skip", ""
        return "update", ""
    if found.size == legacy.size and (digest := sha256_of(source, src)) == sha256_of(target, dst):
        return "skip", digest
    if overwrite:
        return "overwrite", ""
    how = (
        "differs on SFTP and sync did not write it"
        if last is None
        else "changed on SFTP since sync copied it"
    )
    return "conflict", f"{how} ({_versions(legacy, found)}; --overwrite replaces it)"


def _versions(legacy: Attrs, found: Attrs) -> str:
    """The two versions of a conflict, for the operator."""
    sftp = f"SFTP {found.size} bytes of {_when(found.mtime)}"
    return f"{sftp}, legacy {legacy.size} bytes of {_when(legacy.mtime)}"


def _when(mtime: int | None) -> str:
    """A modification time as the conflict lines show it."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(mtime)) if mtime is not None else "unknown time"


def _journal_entry(legacy: Attrs, digest: str, written: Attrs | None) -> Copied:
    return Copied(
        legacy.size,
        legacy.mtime,
        digest,
        written.size if written is not None else legacy.size,
        written.mtime if written is not None else None,
    )


def _attrs(storage: Storage, path: str) -> Attrs | None:
    try:
        return storage.stat(path)
    except errors.NotFound:
        return None


def _copy(
    source: Storage,
    src: str,
    legacy: Attrs,
    target: Storage,
    dst: str,
    action: str,
    progress: Callable[[str], None],
) -> tuple[int, str | None]:
    """Copy via the partial file (resuming it), verify, keep the legacy file's time and
    mode, rename: (bytes copied, the SHA-256 if the copy verified)."""
    partial = posixpath.join(posixpath.dirname(dst), f".{posixpath.basename(dst)}{PARTIAL_SUFFIX}")
    try:
        offset = target.stat(partial).size
    except errors.NotFound:
        offset = 0
    progress(f"{action}, resuming at byte {offset}" if offset else action)
    digest = hashlib.sha256()
    if offset:  # the bytes already there count towards the checksum as the legacy has them
        head = source.open_read(src)
        try:
            remaining = offset
            while remaining > 0 and (chunk := head.read(min(_BLOCK, remaining))):
                digest.update(chunk[:remaining])
                remaining -= len(chunk)
        finally:
            head.close()
    reader = source.open_read(src)
    reader.seek(offset)
    writer = target.open_write(partial, "r+" if offset else "w")
    writer.seek(offset)
    copied = 0
    try:
        while chunk := reader.read(_BLOCK):
            data = bytes(chunk)
            digest.update(data)
            writer.write(data)
            copied += len(data)
    except BaseException:
        writer.abort()
        raise
    finally:
        reader.close()
    writer.close()
    expected = source.stat(src).size
    if offset + copied != expected or sha256_of(target, partial) != digest.hexdigest():
        target.remove(partial)  # the next run copies it afresh
        progress("MISMATCH after copy")
        return copied, None
    if legacy.mtime is not None:
        target.set_mtime(partial, legacy.mtime)
    with contextlib.suppress(errors.GatewayError):  # where the backend allows it
        target.chmod(partial, legacy.mode)
    target.rename(partial, dst)
    return copied, digest.hexdigest()
