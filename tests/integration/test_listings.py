"""LIST / NLST / MLSD / MLST through the gateway: formats old clients parse, sanitised names."""

from __future__ import annotations

import calendar
import contextlib
import ftplib
import os
import re

import pytest

from tests.helpers.gateway_env import seed

LS_LINE = re.compile(
    r"^(?P<mode>[-dlpscb][-rwxsStT]{9}) +\d+ +(?P<owner>\S+) +(?P<group>\S+) +(?P<size>\d+) "
    r"(?P<month>[A-Z][a-z]{2}) +(?P<day>\d{1,2}) +(?P<time>\d\d:\d\d|\d{4}) (?P<name>.+)$"
)


def list_lines(ftp, arg=""):
    lines: list[str] = []
    ftp.retrlines(f"LIST {arg}".strip(), lines.append)
    return lines


def by_name(lines):
    out = {}
    for line in lines:
        m = LS_LINE.match(line)
        assert m, f"not an ls -l line: {line!r}"
        out[m["name"]] = m
    return out


def test_list_format(ftp, user):
    small = seed(user, "small.txt", "12345")
    big = seed(user, "big.img", b"")
    os.truncate(big, 5 * 2**30 + 3)  # sparse: > 4 GiB without using the disk
    old = calendar.timegm((2019, 3, 9, 8, 5, 0))
    os.utime(small, (old, old))
    (user.home / "sub dir").mkdir()
    os.symlink("small.txt", user.home / "link")
    entries = by_name(list_lines(ftp))
    assert set(entries) == {"small.txt", "big.img", "sub dir", "link -> small.txt"}
    assert entries["small.txt"]["size"] == "5"
    assert (entries["small.txt"]["month"], entries["small.txt"]["day"], entries["small.txt"]["time"]) == (
        "Mar",
        "9",
        "2019",
    )
    owner = user.home.stat()
    assert (entries["small.txt"]["owner"], entries["small.txt"]["group"]) == (
        str(owner.st_uid),
        str(owner.st_gid),
    )
    assert entries["big.img"]["size"] == str(5 * 2**30 + 3)
    assert re.match(r"\d\d:\d\d", entries["big.img"]["time"])  # recent: time instead of year
    assert entries["sub dir"]["mode"].startswith("d")
    assert entries["link -> small.txt"]["mode"].startswith("l")


ALL = [".", "..", ".dot", "f.txt"]


@pytest.mark.parametrize(("arg", "names"), [("-la", ALL), ("-a", ALL), ("-l", ["f.txt"]), ("-aL", ALL)])
def test_list_with_ls_options(ftp, user, arg, names):
    seed(user, "f.txt", "x")
    seed(user, ".dot", "x")
    assert list(by_name(list_lines(ftp, arg))) == names


def test_list_of_a_file_and_of_a_subdir(ftp, user):
    seed(user, "d/inner.txt", "abc")
    assert list(by_name(list_lines(ftp, "d/inner.txt"))) == ["inner.txt"]
    assert list(by_name(list_lines(ftp, "-l d"))) == ["inner.txt"]
    assert list_lines(ftp, "missing") == []  # as vsftpd: an empty listing, 226


def test_nlst_variants(ftp, user):
    seed(user, "b.txt", "x")
    seed(user, "a file.txt", "x")
    seed(user, "d/c.txt", "x")
    assert ftp.nlst() == ["a file.txt", "b.txt", "d"]
    assert ftp.nlst("-1") == ["a file.txt", "b.txt", "d"]
    assert list(by_name(ftp.nlst("-l"))) == ["a file.txt", "b.txt", "d"]  # the long form, as vsftpd
    assert ftp.nlst("d") == ["d/c.txt"]
    assert ftp.nlst("-1 d") == ["d/c.txt"]


def test_mlsd_facts(ftp, user):
    path = seed(user, "f.bin", b"x" * 300)
    when = calendar.timegm((2021, 6, 7, 8, 9, 10))
    os.utime(path, (when, when))
    os.chmod(path, 0o640)
    (user.home / "dir").mkdir()
    facts = dict(ftp.mlsd(facts=["type", "size", "modify", "perm", "unix.mode"]))
    assert set(facts) == {"f.bin", "dir"}
    assert facts["f.bin"]["type"] == "file"
    assert facts["f.bin"]["size"] == "300"
    assert facts["f.bin"]["modify"] == "20210607080910"
    assert facts["f.bin"]["unix.mode"] == "0640"
    assert set(facts["f.bin"]["perm"]) == set("adfrw")
    assert facts["dir"]["type"] == "dir"
    assert ftp.sendcmd("OPTS MLST type;size;modify;perm;unix.mode;").startswith("200")


def test_mlsd_on_a_file_is_501_and_missing_550(ftp, user):
    seed(user, "f", "x")
    with pytest.raises(ftplib.error_perm, match=r"^501"):
        list(ftp.mlsd("f"))
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        list(ftp.mlsd("missing"))


def test_mlst(ftp, user):
    seed(user, "d/f.txt", "hello")
    reply = ftp.sendcmd("MLST d/f.txt").splitlines()
    assert reply[0] == '250-Listing "/d/f.txt":'
    assert reply[1].startswith(" type=file;size=5;modify=")
    assert reply[1].endswith(" /d/f.txt")
    assert reply[-1] == "250 End MLST."
    assert ftp.sendcmd("MLST").splitlines()[1].endswith(" /")
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        ftp.sendcmd("MLST missing")


def test_utf8_names_round_trip(ftp, user):
    ftp.encoding = "utf-8"
    seed(user, "prüfung é ✓.txt", "x")
    assert ftp.nlst() == ["prüfung é ✓.txt"]
    assert list(by_name(list_lines(ftp))) == ["prüfung é ✓.txt"]
    ftp.mkd("répertoire")
    assert (user.home / "répertoire").is_dir()


def test_wildcards_in_list_and_nlst(ftp, user):
    for name in ("a.csv", "b.csv", "c.txt", "sub/d.csv", "sub/e.txt"):
        seed(user, name, "x")
    assert ftp.nlst("*.csv") == ["a.csv", "b.csv"]
    assert ftp.nlst("sub/*.csv") == ["sub/d.csv"]
    assert ftp.nlst("/sub/?.txt") == ["/sub/e.txt"]
    assert ftp.nlst("*.none") == []
    assert list(by_name(list_lines(ftp, "-l *.txt"))) == ["c.txt"]
    assert list(by_name(list_lines(ftp, "sub/[d]*"))) == ["d.csv"]  # LIST: bare names, as vsftpd
    assert ftp.nlst("missing/*.csv") == []
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        list(ftp.mlsd("*.csv"))  # RFC 3659: MLSD paths are literal


def test_a_directory_larger_than_the_sort_limit_streams_completely(ftp, user):
    from gateway.core.listing import SORT_LIMIT

    big = user.home / "big"
    big.mkdir()
    count = SORT_LIMIT + 2500
    for i in range(count):
        os.close(os.open(big / f"file-{i:06d}.dat", os.O_CREAT | os.O_WRONLY, 0o644))
    names = ftp.nlst("big")
    assert len(names) == count
    assert set(names) == {f"big/file-{i:06d}.dat" for i in range(count)}
    assert len(list_lines(ftp, "big")) == count
    assert sum(1 for _ in ftp.mlsd("big")) == count
    # A client that stops reading half way: the session goes on, the directory handle is closed.
    ftp.voidcmd("TYPE A")
    conn = ftp.transfercmd("LIST big")
    conn.recv(1000)
    conn.close()
    with contextlib.suppress(ftplib.error_temp):
        ftp.voidresp()  # 426 when the gateway noticed the early close, else 226
    assert ftp.sendcmd("NOOP").startswith("200")
