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
import dataclasses
import hashlib
import posixpath
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from gateway.core import errors, names
from gateway.core.storage import Attrs, Kind, Storage

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

    def close(self) -> None:
        """Let go of what the journal holds open."""
        ...


class Progress(Protocol):
    """What a sync reports while it runs."""

    def step(self, relative: str, action: str) -> None:
        """One file's action (copy, skip, CONFLICT, error, ...), as it happens."""
        ...

    def advance(self, nbytes: int) -> None:
        """``nbytes`` more were copied."""
        ...


@dataclass(frozen=True)
class Step:
    """What sync will do with one legacy file (or directory, whose ``relative`` ends in "/")."""

    relative: str  # below the source root, as the legacy server names it
    name: str  # below the target root: what those bytes mean in the route's encoding
    legacy: Attrs
    #: mkdir, skip, copy, update, overwrite, conflict or error.
    action: str
    #: conflict: why; error: the reply; skip: the SHA-256 if it was computed (not journalled yet).
    why: str = ""
    found: Attrs | None = None  # the SFTP file when planned (checked again before a copy)


@dataclass
class Plan:
    """Every step of one tree, and how many bytes its copies will move."""

    steps: list[Step]

    @property
    def bytes_to_copy(self) -> int:
        """The size of every file that will be copied."""
        return sum(step.legacy.size for step in self.steps if step.action in _COPIES)


_COPIES = ("copy", "update", "overwrite")


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


@dataclass(frozen=True)
class Trees:
    """The two sides of one user's sync: the legacy tree and the SFTP tree it goes to."""

    source: Storage
    source_root: str
    target: Storage
    target_root: str
    name_encoding: str | None = None  # the route's: a target name is what the source bytes mean in it

    def src(self, step: Step) -> str:
        """The step's legacy path."""
        return posixpath.join(self.source_root, step.relative.rstrip("/"))

    def dst(self, step: Step) -> str:
        """The step's SFTP path."""
        return posixpath.join(self.target_root, step.name)


def plan(trees: Trees, overwrite: bool = False, journal: Journal | None = None) -> Plan:
    """Decide, for every legacy file, whether to copy, skip or leave it (a conflict; see the
    module doc). ``overwrite``: replace conflicting files too. ``journal``: earlier copies."""
    steps = []
    for relative, legacy in walk(trees.source, trees.source_root):
        name = names.recode(relative.rstrip("/"), trees.name_encoding)
        step = Step(relative, name, legacy, "mkdir")
        if not relative.endswith("/"):
            try:
                step = _decided(trees, step, _attrs(trees.target, trees.dst(step)), journal, overwrite)
            except errors.GatewayError as err:
                step = dataclasses.replace(step, action="error", why=f"{err.code} {err.text}")
        steps.append(step)
    return Plan(steps)


def apply(
    trees: Trees,
    steps: list[Step],
    progress: Progress,
    dry_run: bool = False,
    journal: Journal | None = None,
    owner: tuple[int, int] | None = None,
    overwrite: bool = False,
) -> Summary:
    """Carry out a plan: copy, verify, rename into place, journal.

    A file whose SFTP side changed since it was planned is decided again (a partner may
    upload meanwhile). ``owner``: (uid, gid) the copies get, for a service account that
    writes into a user's tree (where the backend allows it).
    """
    summary = Summary()
    for step in steps:
        dst = trees.dst(step)
        if step.action == "mkdir":
            if not dry_run and _attrs(trees.target, dst) is None:
                trees.target.mkdir(dst)
                _chown(trees.target, dst, owner)
            continue
        summary.files += 1
        try:
            if step.action in _COPIES and not dry_run and (found := _attrs(trees.target, dst)) != step.found:
                step = _decided(trees, step, found, journal, overwrite)
            if step.action == "error":
                summary.errors.append(f"{step.relative}: {step.why}")
                progress.step(step.relative, f"error {step.why.split()[0]}")
                continue
            if step.action == "skip":
                summary.skipped += 1
                progress.step(step.relative, "skip")
                if journal is not None and step.why and not dry_run:  # matching, not yet journalled
                    journal.put(step.name, _journal_entry(step.legacy, step.why, step.found))
                continue
            if step.action == "conflict":
                summary.conflicts.append(f"{step.relative}: {step.why}")
                progress.step(step.relative, "CONFLICT, left alone")
                continue
            if dry_run:
                progress.step(step.relative, f"would {step.action}")
                progress.advance(step.legacy.size)
                summary.copied += 1
                summary.bytes_copied += step.legacy.size
                continue
            copied, digest = _copy(trees, step, progress, owner)
        except errors.GatewayError as err:
            summary.errors.append(f"{step.relative}: {err.code} {err.text}")
            progress.step(step.relative, f"error {err.code}")
            continue
        summary.bytes_copied += copied
        if digest is None:
            summary.mismatches.append(step.relative)
            continue
        summary.copied += 1
        if journal is not None:
            journal.put(step.name, _journal_entry(step.legacy, digest, _attrs(trees.target, dst)))
    return summary


def _decided(trees: Trees, step: Step, found: Attrs | None, journal: Journal | None, overwrite: bool) -> Step:
    """``step`` with what to do with it, the SFTP side being ``found``."""
    last = journal.get(step.name) if journal is not None else None
    action, why = _decide(trees, step, found, last, overwrite)
    return dataclasses.replace(step, action=action, why=why, found=found)


def _decide(
    trees: Trees, step: Step, found: Attrs | None, last: Copied | None, overwrite: bool
) -> tuple[str, str]:
    """What to do with one file: ("skip", SHA-256 if it was computed else ""), ("copy" or
    "update" or "overwrite", ""), or ("conflict", why)."""
    legacy = step.legacy
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
    if found.size == legacy.size and (digest := sha256_of(trees.source, trees.src(step))) == sha256_of(
        trees.target, trees.dst(step)
    ):
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


def _chown(storage: Storage, path: str, owner: tuple[int, int] | None) -> None:
    """Give ``path`` to ``owner`` where the backend allows it (a service account writing
    into a user's tree would otherwise leave files the user may not replace)."""
    if owner is not None:
        with contextlib.suppress(errors.GatewayError):
            storage.chown(path, *owner)


def _copy(
    trees: Trees, step: Step, progress: Progress, owner: tuple[int, int] | None
) -> tuple[int, str | None]:
    """Copy via the partial file (resuming it), verify, keep the legacy file's time and
    mode, rename: (bytes copied, the SHA-256 if the copy verified)."""
    source, target, src, dst, legacy = (
        trees.source,
        trees.target,
        trees.src(step),
        trees.dst(step),
        step.legacy,
    )
    partial = posixpath.join(posixpath.dirname(dst), f".{posixpath.basename(dst)}{PARTIAL_SUFFIX}")
    try:
        offset = target.stat(partial).size
    except errors.NotFound:
        offset = 0
    progress.step(step.relative, f"{step.action}, resuming at byte {offset}" if offset else step.action)
    progress.advance(offset)
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
    # Straight to the partial, not through an atomic upload's own temporary name: the
    # partial is the temporary name, and what reached it survives a killed run.
    writer = target.open_write(partial, "a")
    writer.seek(offset)
    copied = 0
    try:
        while chunk := reader.read(_BLOCK):
            data = bytes(chunk)
            digest.update(data)
            writer.write(data)
            copied += len(data)
            progress.advance(len(data))
    except BaseException:
        writer.abort()
        raise
    finally:
        reader.close()
    writer.close()
    expected = source.stat(src).size
    if offset + copied != expected or sha256_of(target, partial) != digest.hexdigest():
        target.remove(partial)  # the next run copies it afresh
        progress.step(step.relative, "MISMATCH after copy")
        return copied, None
    if legacy.mtime is not None:
        target.set_mtime(partial, legacy.mtime)
    with contextlib.suppress(errors.GatewayError):  # where the backend allows it
        target.chmod(partial, legacy.mode)
    _chown(target, partial, owner)
    target.rename(partial, dst)
    return copied, digest.hexdigest()
