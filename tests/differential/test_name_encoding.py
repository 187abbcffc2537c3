"""routes[].name_encoding: cp1252 clients keep their names after the files became UTF-8.

The organisation's old server (vsftpd) has the names as the clients wrote them, cp1252
bytes; on the SFTP backend they were converted to UTF-8 during the move. A cp1252 client
script must see the same names and replies on both. ``sync`` and the shadow phase convert
names the same way when they copy from the legacy server.
"""

from __future__ import annotations

import ftplib
import io
import os
import shutil
import subprocess

import pytest
import yaml

from tests.differential.conftest import Server, reply
from tests.helpers.gateway_env import CLI, base_config, seed
from tests.helpers.sshd import reset_home

# (name as cp1252 clients write it, content); on vsftpd its cp1252 bytes, on SFTP UTF-8.
FILES = [("café.txt", b"cafe\n"), ("€uro.csv", b"1,2\n"), ("plain.txt", b"p\n")]


def cp1252_route(sshd, **route) -> dict:
    doc = base_config(sshd)
    doc["routes"][0]["name_encoding"] = "cp1252"
    doc["routes"][0].update(route)
    return doc


def session(server: Server, user) -> dict[str, object]:
    """A cp1252 client's script: list, fetch, store, make a directory, rename."""
    ftp = server.login(user, encoding="cp1252")
    out: dict[str, object] = {"NLST": sorted(ftp.nlst())}
    lines: list[str] = []
    ftp.retrlines("LIST", lines.append)
    out["LIST names"] = sorted(line.split(None, 8)[-1] for line in lines)
    got = io.BytesIO()
    out["RETR"] = reply(lambda: ftp.retrbinary("RETR café.txt", got.write))[:3], got.getvalue()
    out["SIZE"] = reply(lambda: ftp.sendcmd("SIZE €uro.csv"))
    out["STOR"] = reply(lambda: ftp.storbinary("STOR naïve.txt", io.BytesIO(b"new\n")))[:3]
    out["MKD"] = reply(lambda: ftp.mkd("Größe"))
    out["CWD"] = reply(lambda: ftp.cwd("Größe"))[:3], ftp.pwd()
    out["RNFR"] = reply(lambda: ftp.rename("/naïve.txt", "/Größe/naïve-2.txt"))[:3]
    out["NLST sub"] = ftp.nlst()
    ftp.quit()
    return out


def test_a_cp1252_client_sees_the_same_names_as_on_the_legacy_server(gateway_factory, sshd, vsftpd, user):
    gw = gateway_factory(cp1252_route(sshd))
    outcomes, disks = {}, {}
    on_disk = {"vsftpd": "cp1252", "gateway": "utf-8"}
    for server in (Server("vsftpd", "127.0.0.1", vsftpd.port), Server("gateway", gw.host, gw.port)):
        encoding = on_disk[server.name]
        reset_home(user.home, user.name)
        for name, content in FILES:
            seed(user, os.fsdecode(name.encode(encoding)), content)
        outcomes[server.name] = session(server, user)
        disks[server.name] = sorted(os.fsencode(p.relative_to(user.home)) for p in user.home.rglob("*"))
    assert outcomes["gateway"] == outcomes["vsftpd"]
    assert outcomes["gateway"]["RETR"][1] == b"cafe\n"
    # The same client bytes, stored as cp1252 by vsftpd and as UTF-8 names on SFTP:
    assert b"Gr\xf6\xdfe/na\xefve-2.txt" in disks["vsftpd"]
    assert "Größe/naïve-2.txt".encode() in disks["gateway"]


def test_clients_that_announce_utf8_keep_utf8_names_on_a_cp1252_route(gateway_factory, sshd, user, tmp_path):
    """lftp (and FileZilla) send OPTS UTF8 ON because FEAT lists UTF8, then write UTF-8
    names: read as cp1252 they would be stored as mojibake (``rapport_Ã©tÃ©.txt``). A
    client that announces UTF-8 yet sends cp1252 bytes still reaches its names."""
    seed(user, "café.txt", b"cafe\n")
    gw = gateway_factory(cp1252_route(sshd))
    local = tmp_path / "rapport_été.txt"
    local.write_text("data\n")
    out = subprocess.run(
        [
            "lftp",
            "-u",
            f"{user.name},{user.password}",
            "-e",
            f"put {local}; cls -1; bye",
            f"ftp://{gw.host}:{gw.port}",
        ],
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.decode().split()) == ["café.txt", "rapport_été.txt"]
    assert (user.home / "rapport_été.txt").read_bytes() == b"data\n"
    ftp = Server("gateway", gw.host, gw.port).login(user, "cp1252")
    assert ftp.sendcmd("OPTS UTF8 ON").startswith("200")
    assert ftp.storbinary("STOR naïve.txt", io.BytesIO(b"n\n")).startswith("226")  # cp1252 bytes
    ftp.encoding = "utf-8"
    assert sorted(ftp.nlst()) == ["café.txt", "naïve.txt", "rapport_été.txt"]
    ftp.quit()
    assert (user.home / "naïve.txt").read_bytes() == b"n\n"


def test_a_name_the_client_encoding_cannot_write_is_listed_with_question_marks(gateway_factory, sshd, user):
    seed(user, "日本.txt", b"x")
    seed(user, os.fsdecode(b"raw-\x81.bin"), b"y")  # not UTF-8 on the backend: its byte as it is
    gw = gateway_factory(cp1252_route(sshd))
    ftp = Server("gateway", gw.host, gw.port).login(user, "latin-1")
    assert sorted(ftp.nlst()) == ["??.txt", "raw-\x81.bin"]
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        ftp.size("??.txt")
    ftp.voidcmd("TYPE I")
    assert ftp.size("raw-\x81.bin") == 1
    ftp.quit()


def test_shadow_copies_and_sync_convert_legacy_names(gateway_factory, sshd, vsftpd, user, tmp_path):
    """vsftpd serves the legacy tree (the home), SFTP the route root ``~/sftp``."""
    seed(user, os.fsdecode("old-€.txt".encode("cp1252")), b"old\n")
    (user.home / "sftp").mkdir()
    shutil.chown(user.home / "sftp", user.name, user.name)
    doc = base_config(sshd)
    doc["backends"]["old-ftp"] = {"type": "ftp", "host": "127.0.0.1", "port": vsftpd.port}
    route = {"match": {"user": user.name}, "backend": "main", "legacy": "old-ftp", "phase": "shadow"}
    doc["routes"].insert(0, {**route, "root": "~/sftp", "name_encoding": "cp1252"})
    ftp = Server("gateway", "127.0.0.1", gateway_factory(doc).port).login(user, "cp1252")
    assert ftp.storbinary("STOR café.txt", io.BytesIO(b"shadowed\n")).startswith("226")
    ftp.quit()
    assert (user.home / os.fsdecode("café.txt".encode("cp1252"))).read_bytes() == b"shadowed\n"  # legacy
    assert (user.home / "sftp" / "café.txt").read_bytes() == b"shadowed\n"  # its SFTP copy, UTF-8
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "GW_PW": user.password}
    cmd = [*CLI, "sync", "--config", str(config), "--user", user.name, "--password-env", "GW_PW"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (user.home / "sftp" / "old-€.txt").read_bytes() == b"old\n"
