"""SFTP attributes as the core's storage attrs: file types (v3 mode bits or the v4+ type
field), permission bits, owners and the link count of OpenSSH's ``ls -l`` longnames."""

from __future__ import annotations

import stat as statmod

import asyncssh
from asyncssh import constants as fx

from gateway.core.storage import Attrs, Kind

KIND_BY_TYPE = {
    fx.FILEXFER_TYPE_REGULAR: Kind.FILE,
    fx.FILEXFER_TYPE_DIRECTORY: Kind.DIR,
    fx.FILEXFER_TYPE_SYMLINK: Kind.SYMLINK,
    fx.FILEXFER_TYPE_SOCKET: Kind.SOCKET,
    fx.FILEXFER_TYPE_CHAR_DEVICE: Kind.CHAR_DEVICE,
    fx.FILEXFER_TYPE_BLOCK_DEVICE: Kind.BLOCK_DEVICE,
    fx.FILEXFER_TYPE_FIFO: Kind.FIFO,
}


def kind_of(a: asyncssh.SFTPAttrs) -> Kind:
    """File type from the v4+ type field, else from the S_IFMT bits of the v3 permissions."""
    if a.type in KIND_BY_TYPE:
        return KIND_BY_TYPE[a.type]
    mode = a.permissions or 0
    for test, kind in (
        (statmod.S_ISREG, Kind.FILE),
        (statmod.S_ISDIR, Kind.DIR),
        (statmod.S_ISLNK, Kind.SYMLINK),
        (statmod.S_ISFIFO, Kind.FIFO),
        (statmod.S_ISSOCK, Kind.SOCKET),
        (statmod.S_ISCHR, Kind.CHAR_DEVICE),
        (statmod.S_ISBLK, Kind.BLOCK_DEVICE),
    ):
        if test(mode):
            return kind
    return Kind.OTHER


def to_attrs(a: asyncssh.SFTPAttrs, longname: str = "") -> Attrs:
    """Storage attrs from SFTP attrs; the link count from an OpenSSH ``ls -l`` longname (v3 has none)."""
    fields = longname.split(None, 8)
    links = fields[1] if len(fields) == 9 and fields[1].isdigit() else "1"
    return Attrs(
        kind=kind_of(a),
        size=a.size or 0,
        mtime=a.mtime,
        mode=(a.permissions or 0) & 0o7777,
        uid=a.uid or 0,
        gid=a.gid or 0,
        nlink=a.nlink or int(links),
    )
