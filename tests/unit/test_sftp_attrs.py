"""SFTP attributes as storage attrs (gateway.backends.sftp.attrs): types from v3 mode bits
and from the v4+ type field, permission bits, missing owners, link counts from longnames."""

from __future__ import annotations

import stat

import pytest
from asyncssh import SFTPAttrs
from asyncssh import constants as fx

from gateway.backends.sftp.attrs import to_attrs
from gateway.core.storage import Kind


@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        (stat.S_IFREG | 0o644, Kind.FILE),
        (stat.S_IFDIR | 0o755, Kind.DIR),
        (stat.S_IFLNK | 0o777, Kind.SYMLINK),
        (stat.S_IFIFO | 0o600, Kind.FIFO),
        (stat.S_IFSOCK | 0o755, Kind.SOCKET),
        (stat.S_IFCHR | 0o620, Kind.CHAR_DEVICE),
        (stat.S_IFBLK | 0o660, Kind.BLOCK_DEVICE),
        (0o644, Kind.OTHER),  # no type bits: neither a file nor anything else
    ],
)
def test_the_type_comes_from_the_v3_mode_bits(mode, kind):
    attrs = to_attrs(SFTPAttrs(permissions=mode, size=5, uid=1001, gid=1002, mtime=1700000000))
    assert attrs.kind is kind
    assert attrs.mode == mode & 0o7777  # the type bits are not permission bits
    assert (attrs.size, attrs.uid, attrs.gid, attrs.mtime) == (5, 1001, 1002, 1700000000)


def test_the_v4_type_field_wins_over_the_mode_bits():
    attrs = to_attrs(SFTPAttrs(type=fx.FILEXFER_TYPE_DIRECTORY, permissions=0o4755))
    assert attrs.kind is Kind.DIR and attrs.mode == 0o4755  # setuid kept


def test_what_a_server_leaves_out_has_a_plain_default():
    attrs = to_attrs(SFTPAttrs(permissions=stat.S_IFREG | 0o600))
    assert (attrs.size, attrs.uid, attrs.gid, attrs.mtime, attrs.nlink) == (0, 0, 0, None, 1)


@pytest.mark.parametrize(
    ("longname", "links"),
    [
        ("drwxr-xr-x    5 alice    alice        4096 Dec  6 21:39 reports", 5),
        ("-rw-r--r--    1 1001     1001           10 Dec  6 21:39 a b.csv", 1),  # blanks in the name
        ("reports", 1),  # not an ls -l line: one link
        ("", 1),
    ],
)
def test_the_link_count_comes_from_an_openssh_longname(longname, links):
    assert to_attrs(SFTPAttrs(permissions=stat.S_IFDIR | 0o755), longname).nlink == links
