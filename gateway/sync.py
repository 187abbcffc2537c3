"""``ftp-sftp-gateway sync``: copy a user's tree from the legacy FTP server to SFTP.

What an operator runs before flipping a route from ``shadow`` to ``sftp``. Files whose SFTP
copy already matches (size and SHA-256) are skipped; others are copied to a temporary name
next to the target (``.NAME.ftpgw-sync``), resumed from there after an interruption,
verified (SHA-256 of the SFTP copy against the bytes read from the legacy server) and only
then renamed into place. Works on the storage interface only: any two backends will do.
"""

from __future__ import annotations

import functools
import hashlib
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from gateway import errors, names
from gateway.storage import Kind, Storage

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


#: Called for every file with (number, of how many, relative path, what happens).
Progress = Callable[[int, int, str, str], None]


def walk(storage: Storage, root: str, relative: str = "") -> Iterator[tuple[str, int]]:
    """(relative path, size) of every regular file below ``root``, directories first."""
    for entry in sorted(
        storage.list_dir(posixpath.join(root, relative) if relative else root), key=lambda e: e.name
    ):
        path = posixpath.join(relative, entry.name) if relative else entry.name
        if entry.attrs.kind is Kind.DIR:
            yield path + "/", 0
            yield from walk(storage, root, path)
        elif entry.attrs.kind is Kind.FILE and not entry.name.endswith(PARTIAL_SUFFIX):
            yield path, entry.attrs.size


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
) -> Summary:
    """Copy every file of ``source_root`` that ``target_root`` lacks or has differently.

    ``name_encoding``: the route's; a target name is what the source name's bytes mean in it.
    """
    summary = Summary()
    tree = list(walk(source, source_root))
    total = sum(1 for relative, _ in tree if not relative.endswith("/"))

    def report(relative: str, action: str) -> None:
        progress(summary.files, total, relative, action)

    for relative, size in tree:
        dst = posixpath.join(target_root, names.recode(relative.rstrip("/"), name_encoding))
        if relative.endswith("/"):
            if not dry_run and _kind(target, dst) is None:
                target.mkdir(dst)
            continue
        summary.files += 1
        src = posixpath.join(source_root, relative)
        try:
            if _matches(source, src, target, dst, size):
                summary.skipped += 1
                report(relative, "skip")
                continue
            if dry_run:
                report(relative, "would copy")
                summary.copied += 1
                summary.bytes_copied += size
                continue
            copied, ok = _copy(source, src, target, dst, functools.partial(report, relative))
        except errors.GatewayError as err:
            summary.errors.append(f"{relative}: {err.code} {err.text}")
            report(relative, f"error {err.code}")
            continue
        summary.bytes_copied += copied
        if ok:
            summary.copied += 1
        else:
            summary.mismatches.append(relative)
    return summary


def _kind(storage: Storage, path: str) -> Kind | None:
    try:
        return storage.stat(path).kind
    except errors.NotFound:
        return None


def _matches(source: Storage, src: str, target: Storage, dst: str, size: int) -> bool:
    try:
        attrs = target.stat(dst)
    except errors.NotFound:
        return False
    return attrs.kind is Kind.FILE and attrs.size == size and sha256_of(target, dst) == sha256_of(source, src)


def _copy(
    source: Storage, src: str, target: Storage, dst: str, progress: Callable[[str], None]
) -> tuple[int, bool]:
    """Copy via the partial file (resuming it), verify, rename: (bytes copied, verified)."""
    partial = posixpath.join(posixpath.dirname(dst), f".{posixpath.basename(dst)}{PARTIAL_SUFFIX}")
    try:
        offset = target.stat(partial).size
    except errors.NotFound:
        offset = 0
    progress(f"resume at byte {offset}" if offset else "copy")
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
        return copied, False
    target.rename(partial, dst)
    return copied, True
