"""Commands legacy clients send, answered as vsftpd answers them (and where the gateway differs
on purpose, what it does instead).

TYPE A N (the RFC 959 minimum form: mainframe and Java clients) and TYPE L 8 switch the type;
OPTS UTF8 ON is accepted before login (lftp, FileZilla, Windows ftp.exe send it first); EPSV ALL
is 200; a TYPE A upload keeps a CR that ends the data (before: silently dropped).
"""

from __future__ import annotations

import ftplib
import io

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
