"""Resuming a cut upload with atomic uploads on (docs/user-guide.md, "Resuming a cut upload").

A cut binary upload's data is kept under a hidden name of its user; SIZE, REST+STOR and
APPE of that name continue it, and it replaces the final name only once complete. Real
curl (``-C - -T``) and lftp (``put -c``) are cut by a relay that resets the data
connection; the bytes they send again are counted there.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import re
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from gateway.core.passwords import hash_password
from tests.helpers.ftp_relay import FTPRelay
from tests.helpers.gateway_env import base_config, seed, start_upload, wait_for

PARTIAL = re.compile(r"^\.ftpgw-partial-[0-9a-f]{8}-(?P<name>.+)$")
OLD = b"the previous version\n" * 50_000  # ~1 MiB
CUT_AT = 3 * 2**20 + 12345  # the relay cuts the first upload there


def partials(directory: Path) -> dict[str, int]:
    """The kept partial uploads in ``directory``: name -> size."""
    return {p.name: p.stat().st_size for p in directory.iterdir() if PARTIAL.match(p.name)}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cut(ftp: ftplib.FTP, data: socket.socket) -> None:
    """End the upload under way with a TCP RST; the gateway answers 426 (or 425)."""
    data.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    data.close()
    with pytest.raises(ftplib.error_temp, match=r"^42[56]"):
        ftp.voidresp()


def uploading(directory: Path) -> bool:
    """True once an upload's data has reached its temporary file in ``directory``."""
    return any(p.name.startswith(".ftpgw-upload-") and p.stat().st_size for p in directory.iterdir())


def cut_upload(gw, user, name: str) -> bytes:
    """Start an upload of ``name``, cut it once data arrived; what was sent (256 KiB)."""
    uploader, data, chunk = start_upload(gw.port, user, name)
    assert wait_for(lambda: uploading(user.home))
    cut(uploader, data)
    uploader.quit()
    return chunk


@pytest.fixture
def relay(gw):
    relay = FTPRelay(gw.port)
    yield relay
    relay.close()


# --- the protocol, with ftplib


@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "replacement"])
def test_a_cut_upload_is_kept_hidden_and_rest_stor_finishes_it(gw, ftp, user, existing):
    if existing:
        old = seed(user, "data.bin", OLD)
        old.chmod(0o640)
    sent = cut_upload(gw, user, "data.bin")
    (kept,) = partials(user.home).items()
    assert PARTIAL.match(kept[0])["name"] == "data.bin"
    assert 0 < kept[1] <= len(sent) and (user.home / kept[0]).read_bytes() == sent[: kept[1]]
    # Everyone else still sees the last complete version (or nothing), in every listing.
    assert ftp.nlst("-a") == [".", "..", *(["data.bin"] if existing else [])]
    assert [name for name, _ in ftp.mlsd()] == (["data.bin"] if existing else [])
    if existing:
        assert (user.home / "data.bin").read_bytes() == OLD
    else:
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            ftp.retrbinary("RETR data.bin", lambda _: None)
    # The uploader's resume: SIZE says how much is there, REST + STOR sends the rest.
    ftp.voidcmd("TYPE I")
    assert ftp.size("data.bin") == kept[1]
    whole = sent + os.urandom(2**20)
    assert ftp.storbinary("STOR data.bin", io.BytesIO(whole[kept[1] :]), rest=kept[1]).startswith("226")
    assert (user.home / "data.bin").read_bytes() == whole
    assert partials(user.home) == {}
    assert ftp.size("data.bin") == len(whole)
    if existing:  # a replacement keeps the replaced file's mode, as any atomic upload
        assert stat.S_IMODE((user.home / "data.bin").stat().st_mode) == 0o640


def test_appe_continues_the_partial_and_a_short_rest_rewrites_its_end(gw, ftp, user):
    sent = cut_upload(gw, user, "log.bin")
    ftp.voidcmd("TYPE I")
    size = ftp.size("log.bin")
    # REST past what is there: refused, nothing changes.
    with pytest.raises(ftplib.error_perm, match=r"^554"):
        ftp.storbinary("STOR log.bin", io.BytesIO(b"x"), rest=size + 1)
    # A REST before the end (the client's own idea of what arrived): the partial ends there.
    assert ftp.storbinary("STOR log.bin", io.BytesIO(b""), rest=10).startswith("226")
    complete = (user.home / "log.bin").read_bytes()
    assert complete == sent[:10]
    # APPE after another cut: continues the partial at its end.
    sent = cut_upload(gw, user, "log.bin")
    size = ftp.size("log.bin")
    assert (user.home / "log.bin").read_bytes() == complete  # until the resume completes
    assert ftp.storbinary("APPE log.bin", io.BytesIO(b"-tail")).startswith("226")
    assert (user.home / "log.bin").read_bytes() == sent[:size] + b"-tail"
    assert partials(user.home) == {}


def test_appe_continues_a_partial_only_at_the_size_size_gave(gw, ftp, user):
    """APPE names no offset: the client sends from the size it was told. A SIZE answered
    before the cut session had kept its data (the old size) must not lead to the new file's
    tail being appended to the partial, nor an APPE without SIZE to the whole file."""
    seed(user, "r.bin", OLD)
    ftp.voidcmd("TYPE I")
    assert ftp.size("r.bin") == len(OLD)  # the old version: no partial yet
    sent = cut_upload(gw, user, "r.bin")
    ((name, size),) = partials(user.home).items()
    with pytest.raises(ftplib.error_perm, match=r"^550 Resume refused: the kept upload .* has changed"):
        ftp.storbinary("APPE r.bin", io.BytesIO(sent[len(OLD) :]))
    fresh = gw.login(user)
    fresh.voidcmd("TYPE I")
    with pytest.raises(ftplib.error_perm, match=r"^550 Resume refused"):
        fresh.storbinary("APPE r.bin", io.BytesIO(sent))  # no SIZE at all
    assert partials(user.home) == {name: size} and (user.home / "r.bin").read_bytes() == OLD
    assert fresh.size("r.bin") == size
    assert fresh.storbinary("APPE r.bin", io.BytesIO(b"-end")).startswith("226")
    assert (user.home / "r.bin").read_bytes() == sent[:size] + b"-end"
    fresh.quit()


def test_a_rest_past_the_end_leaves_the_file_whole(ftp, user):
    """pyftpdlib checks the REST position after opening the file and then closes it, which
    for a resumed upload had cut the file at 0 (a 554 reply, an empty file)."""
    seed(user, "whole.bin", b"0123456789")
    ftp.voidcmd("TYPE I")
    with pytest.raises(ftplib.error_perm, match=r"^554 REST position \(11\) > file size \(10\)"):
        ftp.storbinary("STOR whole.bin", io.BytesIO(b"x"), rest=11)
    assert (user.home / "whole.bin").read_bytes() == b"0123456789"


def test_a_whole_new_upload_drops_the_partial(gw, ftp, user):
    cut_upload(gw, user, "f.bin")
    assert len(partials(user.home)) == 1
    assert ftp.storbinary("STOR f.bin", io.BytesIO(b"complete")).startswith("226")
    assert partials(user.home) == {}
    assert ftp.size("f.bin") == len(b"complete")


def test_a_cut_ascii_upload_keeps_nothing(gw, ftp, user):
    """TYPE A changes line ends: the bytes stored are not the client's, a resume from their
    count would corrupt the file."""
    uploader = gw.login(user)
    uploader.voidcmd("TYPE A")
    data = uploader.transfercmd("STOR text.txt")
    data.sendall(b"line\r\n" * 500_000)
    assert wait_for(lambda: any(p.stat().st_size for p in user.home.iterdir()))
    cut(uploader, data)
    uploader.quit()
    assert wait_for(lambda: os.listdir(user.home) == [])


def test_partials_are_per_login_and_stale_ones_go(gateway_factory, sshd, user, tmp_path):
    """Two FTP logins mapped to one backend account: neither continues the other's partial
    (their files may differ). Partials nobody resumed within uploads.partial_ttl, and
    temporary files a dead backend left, are removed."""
    (tmp_path / "backend.pw").write_text(user.password + "\n")
    doc = base_config(sshd)
    doc["routes"][0]["auth"] = "mapped"
    account = {"backend_user": user.name, "backend_password_file": str(tmp_path / "backend.pw")}
    doc["users"] = {
        name: {"password_hash": hash_password("pw-" + name), **account} for name in ("ann", "bob")
    }
    doc["uploads"] = {"partial_ttl": 3600}
    gw = gateway_factory(doc)
    ann, bob = gw.connect(), gw.connect()
    ann.login("ann", "pw-ann")
    bob.login("bob", "pw-bob")
    for ftp in (ann, bob):
        ftp.voidcmd("TYPE I")
    data = ann.transfercmd("STOR mine.bin")
    data.sendall(os.urandom(256 * 1024))
    assert wait_for(lambda: uploading(user.home))
    cut(ann, data)
    ((name, size),) = partials(user.home).items()
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        bob.size("mine.bin")  # no such file, and ann's partial is not bob's
    assert ann.size("mine.bin") == size
    bob.quit()
    ftp = ann
    left = seed(user, ".ftpgw-upload-0123abcd-crashed.bin", b"x" * 1000)  # a dead backend's
    two_hours_ago = time.time() - 7200
    for path in (user.home / name, left):
        os.utime(path, (two_hours_ago, two_hours_ago))
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        ftp.size("mine.bin")  # expired: removed when looked up
    ftp.nlst()  # a listing removes what expired in the directory
    assert os.listdir(user.home) == []
    ftp.quit()


def test_a_resume_never_replaces_a_file_that_is_not_the_users(gw, ftp, user):
    """Someone else's file appeared under the name meanwhile: the rename would replace it
    against its permissions (as a plain STOR does not), so the resume is refused."""
    cut_upload(gw, user, "shared.bin")
    theirs = seed(user, "shared.bin", b"not yours\n")
    os.chown(theirs, 0, 0)
    ftp.voidcmd("TYPE I")
    size = ftp.size("shared.bin")
    with pytest.raises(ftplib.error_perm, match=r"^554 Resume refused"):
        ftp.storbinary("STOR shared.bin", io.BytesIO(b"rest"), rest=size)
    assert theirs.read_bytes() == b"not yours\n"
    assert partials(user.home) == {}


# --- real clients, cut by a relay that resets the data connection


def require(tool: str) -> None:
    assert shutil.which(tool), f"{tool} is not installed (tests/run.sh installs it)"


def client_run(cmd: list[str], ok: bool) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert (result.returncode == 0) is ok, (
        cmd,
        result.returncode,
        result.stdout[-2000:],
        result.stderr[-3000:],
    )
    return result


def prepare(user, tmp_path: Path, existing: bool) -> bytes:
    if existing:
        seed(user, "big.bin", OLD)
    new = os.urandom(8 * 2**20 + 777)
    (tmp_path / "big.bin").write_bytes(new)
    return new


def check_resumed(user, relay: FTPRelay, new: bytes, existing: bool, kept: int) -> None:
    """The final file is the new one, the partial is gone, and only the missing part was sent again."""
    assert sha((user.home / "big.bin").read_bytes()) == sha(new)
    assert partials(user.home) == {}
    assert relay.cuts == 1 and kept > 0
    first, *later = relay.uploaded
    assert first == CUT_AT
    assert sum(later) == len(new) - kept, (relay.uploaded, kept)


@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "replacement"])
def test_curl_resumes_a_cut_upload(gw, relay, user, tmp_path, existing):
    require("curl")
    new = prepare(user, tmp_path, existing)
    url = f"ftp://127.0.0.1:{relay.port}/big.bin"
    creds = f"{user.name}:{user.password}"
    relay.cut_upload_after(CUT_AT)
    client_run(["curl", "-sS", "-u", creds, "-T", str(tmp_path / "big.bin"), url], ok=False)
    assert wait_for(lambda: len(partials(user.home)) == 1)
    assert (user.home / "big.bin").read_bytes() == OLD if existing else not (user.home / "big.bin").exists()
    ((_, kept),) = partials(user.home).items()
    relay.reopen()
    client_run(["curl", "-sS", "-u", creds, "-C", "-", "-T", str(tmp_path / "big.bin"), url], ok=True)
    check_resumed(user, relay, new, existing, kept)


@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "replacement"])
def test_lftp_put_c_resumes_a_cut_upload(gw, relay, user, tmp_path, existing):
    require("lftp")
    new = prepare(user, tmp_path, existing)
    retry = "set net:max-retries 1; set net:reconnect-interval-base 1"  # give up at once
    login = f"{retry}; open -u {user.name},{user.password} -p {relay.port} 127.0.0.1"
    relay.cut_upload_after(CUT_AT)
    client_run(["lftp", "-c", f"{login}; put {tmp_path / 'big.bin'} -o big.bin"], ok=False)
    assert wait_for(lambda: len(partials(user.home)) == 1)
    ((_, kept),) = partials(user.home).items()
    relay.reopen()
    client_run(["lftp", "-c", f"{login}; put -c {tmp_path / 'big.bin'} -o big.bin"], ok=True)
    check_resumed(user, relay, new, existing, kept)
