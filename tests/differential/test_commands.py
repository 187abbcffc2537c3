"""Commands legacy clients send, answered as vsftpd answers them (and where the gateway differs
on purpose, what it does instead).

TYPE A N (the RFC 959 minimum form: mainframe and Java clients) and TYPE L 8 switch the type;
OPTS UTF8 ON is accepted before login (lftp, FileZilla, Windows ftp.exe send it first); EPSV ALL
is 200; a TYPE A upload keeps a CR that ends the data (before: silently dropped).
"""

from __future__ import annotations

import ftplib
import io
import os

import pytest

from tests.differential.conftest import Server, compare, reply
from tests.helpers.gateway_env import seed


def test_type_opts_and_epsv_all_as_on_vsftpd(servers, user):
    def script(server: Server) -> dict[str, str]:
        ftp = server.connect()
        out = {"OPTS UTF8 ON before login": reply(lambda: ftp.sendcmd("OPTS UTF8 ON"))[:3]}
        ftp.login(user.name, user.password)
        for command in (
            "TYPE A N",
            "TYPE a n",
            "TYPE L 8",
            "TYPE I",
            "TYPE A",
            "TYPE E",
            "TYPE A C",
            "MODE S",
            "STRU F",
        ):
            out[command] = reply(lambda command=command: ftp.sendcmd(command))[:1]
        out["EPSV ALL"] = reply(lambda: ftp.sendcmd("EPSV ALL"))[:3]
        out["PASV after EPSV ALL"] = reply(lambda: ftp.sendcmd("PASV"))[:1]
        ftp.quit()
        return out

    outcomes = compare(servers, user, lambda: None, script)
    assert outcomes["gateway"]["TYPE A N"] == "2" and outcomes["gateway"]["EPSV ALL"] == "200"
    assert outcomes["gateway"] == outcomes["vsftpd"]


def test_type_a_n_really_switches_to_ascii(ftp, user):
    seed(user, "lines.txt", b"a\nb\n")
    ftp.voidcmd("TYPE A N")
    conn = ftp.transfercmd("RETR lines.txt")
    assert conn.makefile("rb").read() == b"a\r\nb\r\n"
    conn.close()
    ftp.voidresp()


def ascii_store(ftp: ftplib.FTP, name: str, data: bytes) -> None:
    ftp.voidcmd("TYPE A")
    conn = ftp.transfercmd(f"STOR {name}")
    conn.sendall(data)
    conn.close()
    ftp.voidresp()


def test_ascii_uploads_keep_lone_crs_as_on_vsftpd(servers, user):
    def script(server: Server) -> dict[str, bytes]:
        ftp = server.login(user)
        for name, data in (
            ("cr.txt", b"u1\ru2\r"),
            ("crlf.txt", b"a\r\nb\r\nc\r"),
            ("mixed.txt", b"x\r\ny\rz\n"),
        ):
            ascii_store(ftp, name, data)
        ftp.quit()
        return {name: (user.home / name).read_bytes() for name in ("cr.txt", "crlf.txt", "mixed.txt")}

    outcomes = compare(servers, user, lambda: None, script)
    assert outcomes["gateway"]["cr.txt"] == b"u1\ru2\r"  # the final CR was dropped before
    assert outcomes["gateway"] == outcomes["vsftpd"]


def test_rest_stor_ends_the_file_where_the_upload_ends(ftp, user):
    """Pure-FTPd's behaviour, which a resume of a changed file needs (vsftpd keeps the old tail)."""
    seed(user, "f.txt", "abcdefghijkl")
    ftp.storbinary("STOR f.txt", io.BytesIO(b"123"), rest=3)
    assert (user.home / "f.txt").read_bytes() == b"abc123"
    ftp.storbinary("STOR f.txt", io.BytesIO(b"defghijkl"), rest=3)  # a resume that goes past the end
    assert (user.home / "f.txt").read_bytes() == b"abcdefghijkl"


def test_rein_answers_220_as_rfc_959_says(ftp):
    """vsftpd does not implement REIN (502); RFC 959 gives 220, as after connecting."""
    assert ftp.sendcmd("REIN").startswith("220")
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        ftp.sendcmd("PWD")


def test_transfer_sequences_as_lftp_and_filezilla_send_them(servers, user):
    """SIZE, MDTM, PASV, RETR (the gateway stats once and reuses that for MDTM and RETR) and
    STOR then a time set: the same replies and bytes as vsftpd, also when the file is changed
    by someone else between SIZE and RETR, is a directory, or is gone; but for the one
    documented difference: an MDTM right after SIZE answers from SIZE's look at the file."""
    home = user.home

    def script(server: Server) -> dict[str, object]:
        ftp = server.login(user)
        ftp.voidcmd("TYPE I")
        out: dict[str, object] = {}
        got = bytearray()
        out["size"], out["mdtm"] = ftp.sendcmd("SIZE f.bin"), ftp.sendcmd("MDTM f.bin")
        (home / "f.bin").write_bytes(b"n" * 300_000)  # replaced between SIZE and RETR
        out["retr"] = reply(lambda: ftp.retrbinary("RETR f.bin", got.extend))[:3]
        out["bytes"] = bytes(got) == b"n" * 300_000
        out["dir"] = reply(lambda: ftp.sendcmd("SIZE d"))[:3], reply(lambda: ftp.sendcmd("MDTM d"))[:3]
        out["retr dir"] = reply(lambda: ftp.retrbinary("RETR d", got.extend))[:3]
        out["size gone"] = reply(lambda: ftp.sendcmd("SIZE f.bin"))[:3]
        (home / "f.bin").unlink()
        out["mdtm gone"] = reply(lambda: ftp.sendcmd("MDTM f.bin"))[:3]
        out["retr gone"] = reply(lambda: ftp.retrbinary("RETR f.bin", got.extend))[:3]
        out["stor"] = reply(lambda: ftp.storbinary("STOR up.bin", io.BytesIO(b"u" * 5000)))[:3]
        out["set time"] = reply(lambda: ftp.sendcmd("MDTM 20200102030405 up.bin"))[:3]
        out["read time"] = ftp.sendcmd("MDTM up.bin")
        out["size up"] = ftp.sendcmd("SIZE up.bin")
        ftp.quit()
        return out

    def setup() -> None:
        seed(user, "f.bin", b"o" * 1000)
        os.utime(home / "f.bin", (1_600_000_000, 1_600_000_000))
        (home / "d").mkdir()

    outcomes = compare(servers, user, setup, script)
    assert outcomes["gateway"]["bytes"] is True
    assert outcomes["gateway"]["read time"] == "213 20200102030405"
    # Deleted between SIZE and MDTM: vsftpd looks again (550), the gateway answers from SIZE's
    # stat (docs/user-guide.md, "Where the gateway still differs from vsftpd"); RETR then 550s.
    assert (outcomes["gateway"]["mdtm gone"], outcomes["vsftpd"]["mdtm gone"]) == ("213", "550")
    outcomes["vsftpd"]["mdtm gone"] = "213"
    assert outcomes["gateway"] == outcomes["vsftpd"]
