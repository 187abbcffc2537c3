"""Names are bytes: Latin-1 and cp1252 names work through every command, as on vsftpd.

A name written by an old Windows or European system (``r\\xe9sum\\xe9.txt`` in Latin-1) is not
UTF-8. vsftpd passes its bytes through untouched; so does the gateway now (before, such files
were missing from every listing and every command naming one got ``501 Can't decode``).
The ftplib clients here use the Latin-1 codec, which maps bytes 1:1: what they send and read
is the bytes on the wire.
"""

from __future__ import annotations

import ftplib
import io
import os
import subprocess

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.differential.conftest import Server, compare, reply
from tests.helpers.gateway_env import base_config, seed

LATIN = "r\xe9sum\xe9.txt"  # as ftplib with encoding="latin-1" sends b"r\xe9sum\xe9.txt"


def disk(user) -> list[bytes]:
    """The names in the user's home, as bytes, recursively."""
    root = os.fsencode(user.home)
    return sorted(
        os.path.relpath(os.path.join(base, name), root)
        for base, dirs, files in os.walk(root)
        for name in dirs + files
    )


def seed_bytes(user) -> None:
    for name, data in (
        (b"r\xe9sum\xe9.txt", b"latin\n"),
        (b"caf\xc3\xa9.txt", b"utf8\n"),
        (b"plain.txt", b"p\n"),
    ):
        path = os.path.join(os.fsencode(user.home), name)
        with open(path, "wb") as f:
            f.write(data)
        os.chown(path, user.home.stat().st_uid, user.home.stat().st_gid)


def every_command(server: Server, user) -> dict[str, object]:
    ftp = server.login(user, encoding="latin-1")
    ftp.voidcmd("TYPE I")
    out: dict[str, object] = {"nlst": sorted(ftp.nlst())}
    out["list names"] = sorted(line.split(None, 8)[-1] for line in _lines(ftp, "LIST"))
    got = io.BytesIO()
    ftp.retrbinary(f"RETR {LATIN}", got.write)
    out["retr"] = got.getvalue()
    out["size"] = reply(lambda: ftp.sendcmd(f"SIZE {LATIN}"))
    out["mdtm"] = reply(lambda: ftp.sendcmd(f"MDTM {LATIN}"))[:3]
    out["stor"] = reply(lambda: ftp.storbinary("STOR rapport_\xe9t\xe9.txt", io.BytesIO(b"new\n")))[:3]
    out["rename"] = reply(lambda: ftp.rename(LATIN, "r\xe9sum\xe9-2.txt"))[:3]
    out["mkd"] = reply(lambda: ftp.mkd("d\xe9p\xf4t"))[:3]
    out["cwd"] = reply(lambda: ftp.cwd("d\xe9p\xf4t"))[:3]
    out["pwd"] = ftp.pwd()
    ftp.cwd("/")
    out["dele"] = reply(lambda: ftp.delete("caf\xc3\xa9.txt"))[:3]
    out["rmd"] = reply(lambda: ftp.rmd("d\xe9p\xf4t"))[:3]
    out["glob"] = sorted(ftp.nlst("*.txt"))
    ftp.quit()
    out["disk"] = disk(user)
    return out


def _lines(ftp: ftplib.FTP, command: str) -> list[str]:
    lines: list[str] = []
    ftp.retrlines(command, lines.append)
    return lines


def test_non_utf8_names_through_every_command_as_on_vsftpd(servers, user):
    outcomes = compare(servers, user, lambda: seed_bytes(user), lambda server: every_command(server, user))
    gateway = outcomes["gateway"]
    assert gateway["nlst"] == sorted([LATIN, "caf\xc3\xa9.txt", "plain.txt"])  # the bytes as they are
    assert gateway["retr"] == b"latin\n"
    assert gateway["pwd"] == "/d\xe9p\xf4t"
    assert b"rapport_\xe9t\xe9.txt" in gateway["disk"] and b"r\xe9sum\xe9-2.txt" in gateway["disk"]
    assert gateway == outcomes["vsftpd"]


def test_lftp_with_a_latin1_charset_uploads_and_lists_as_on_vsftpd(servers, user, tmp_path):
    local = tmp_path / "rapport_été.txt"  # a UTF-8 name here; lftp sends it in Latin-1
    local.write_text("data\n")

    charset = "set ftp:use-utf8 no; set ftp:charset iso-8859-1; set ftp:ssl-allow no"

    def script(server: Server) -> tuple[int, list[bytes], str]:
        out = subprocess.run(
            [
                "lftp",
                "-u",
                f"{user.name},{user.password}",
                "-e",
                f"{charset}; put {local}; cls -1; bye",
                server.url,
            ],
            capture_output=True,
            timeout=60,
        )
        return out.returncode, disk(user), out.stdout.decode()

    outcomes = compare(servers, user, lambda: None, script)
    assert outcomes["gateway"] == outcomes["vsftpd"]
    code, names, listed = outcomes["gateway"]
    assert code == 0 and names == [b"rapport_\xe9t\xe9.txt"] and listed.strip() == "rapport_été.txt"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.binary(min_size=1, max_size=24).filter(
        lambda b: not set(b) & set(b"/\r\n\0") and b not in (b".", b"..")
    )
)
def test_any_byte_name_round_trips_or_is_refused_as_a_control_character(ftp_latin, raw):
    name = raw.decode("latin-1")
    try:
        ftp_latin.storbinary(f"STOR {name}", io.BytesIO(raw))
    except ftplib.error_perm as err:
        assert str(err).startswith("553 ")  # a control character: refused, never created
        return
    assert name in ftp_latin.nlst("-a")  # -a: a name may start with "."
    got = io.BytesIO()
    ftp_latin.retrbinary(f"RETR {name}", got.write)
    assert got.getvalue() == raw
    ftp_latin.delete(name)


def test_seeded_names_with_control_characters_are_not_listed_but_latin1_ones_are(ftp_latin, user):
    seed(user, "evil\x1b[2J.txt", "x")
    seed_bytes(user)
    assert sorted(ftp_latin.nlst()) == sorted([LATIN, "caf\xc3\xa9.txt", "plain.txt"])


def test_non_utf8_names_through_the_legacy_phase_on_a_vsftpd_backend(gateway_factory, sshd, vsftpd, user):
    """In phase legacy the gateway speaks FTP to the old server: the bytes go through unchanged."""
    doc = base_config(sshd)
    doc["backends"]["old-ftp"] = {"type": "ftp", "host": "127.0.0.1", "port": vsftpd.port}
    route = {"match": {"user": user.name}, "backend": "main", "legacy": "old-ftp", "phase": "legacy"}
    doc["routes"].insert(0, route)
    gw = gateway_factory(doc)
    direct, through = Server("vsftpd", "127.0.0.1", vsftpd.port), Server("legacy", gw.host, gw.port)
    outcomes = compare([direct, through], user, lambda: seed_bytes(user), lambda s: every_command(s, user))
    assert outcomes["legacy"]["nlst"] == sorted([LATIN, "caf\xc3\xa9.txt", "plain.txt"])
    assert outcomes["legacy"] == outcomes["vsftpd"]
