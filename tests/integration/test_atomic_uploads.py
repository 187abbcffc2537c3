"""Atomic uploads (backends.NAME.atomic_uploads, on by default): a STOR writes a hidden
temporary file in the same directory (``.ftpgw-upload-<8 hex>-<name>``) and renames it over
the final name only after the backend confirmed the close. Until then the final name shows
nothing or the previous version; an aborted or cut upload leaves neither (its data is kept
hidden for a resume: tests/integration/test_resume.py). Resumed uploads without such a
partial (REST+STOR, APPE) write in place, as do uploads where a rename cannot be used,
except onto the previous version that a failed upload left in place.
"""

from __future__ import annotations

import ftplib
import io
import os
import re
import socket
import stat

import pytest

from tests.helpers.gateway_env import base_config, seed, start_upload, wait_for

TEMP = re.compile(r"^\.ftpgw-upload-[0-9a-f]{8}-(?P<name>.+)$")
PARTIAL = re.compile(r"^\.ftpgw-partial-[0-9a-f]{8}-(?P<name>.+)$")


def temps(directory) -> dict[str, int]:
    """The temporary upload files in ``directory``: name -> size."""
    return {p.name: p.stat().st_size for p in directory.iterdir() if TEMP.match(p.name)}


def finish(ftp: ftplib.FTP, data: socket.socket) -> str:
    """End the upload cleanly; the final reply."""
    data.close()
    return ftp.voidresp()


def reset(data: socket.socket) -> None:
    """End the data connection with a TCP RST (a cut upload)."""
    data.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    data.close()


def test_a_new_file_appears_only_complete(gw, user):
    ftp, data, chunk = start_upload(gw.port, user, "new.bin")
    assert wait_for(lambda: sum(temps(user.home).values()) > 0)  # data arrives there
    assert not (user.home / "new.bin").exists()  # nothing under the final name meanwhile
    (temp,) = temps(user.home)
    assert TEMP.match(temp)["name"] == "new.bin"
    assert finish(ftp, data).startswith("226")
    assert (user.home / "new.bin").read_bytes() == chunk
    assert temps(user.home) == {}
    ftp.quit()


def test_an_upload_in_progress_is_in_no_listing(gw, ftp, user):
    """A consumer polling with ``mget *.csv`` (NLST *.csv) must not fetch, or delete, a file
    still being written: the temporary file is left out of every listing."""
    seed(user, "done.csv", b"complete\n")
    uploader, data, chunk = start_upload(gw.port, user, "incoming.csv")
    assert wait_for(lambda: sum(temps(user.home).values()) > 0)
    assert ftp.nlst() == ["done.csv"]
    assert ftp.nlst("*.csv") == ["done.csv"]
    lines: list[str] = []
    ftp.retrlines("LIST -a", lines.append)
    assert [line.split()[-1] for line in lines] == [".", "..", "done.csv"]
    assert [name for name, _ in ftp.mlsd()] == ["done.csv"]
    assert finish(uploader, data).startswith("226")
    assert ftp.nlst("*.csv") == ["done.csv", "incoming.csv"]
    assert (user.home / "incoming.csv").read_bytes() == chunk
    uploader.quit()


def test_a_replaced_file_keeps_its_old_content_until_the_end_and_its_mode(gw, user):
    old = seed(user, "report.csv", b"old version\n")
    old.chmod(0o640)
    ftp, data, chunk = start_upload(gw.port, user, "report.csv")
    assert wait_for(lambda: sum(temps(user.home).values()) > 0)  # data arrives there
    assert old.read_bytes() == b"old version\n"
    assert finish(ftp, data).startswith("226")
    assert old.read_bytes() == chunk
    assert stat.S_IMODE(old.stat().st_mode) == 0o640
    assert temps(user.home) == {}
    ftp.quit()


@pytest.mark.parametrize("how", ["ABOR", "reset"])
def test_an_aborted_or_cut_upload_leaves_nothing_under_the_final_name(gw, user, how):
    """What arrived is kept hidden, as the user's partial; listings show the old state."""
    seed(user, "kept.txt", b"previous\n")
    for name in ("fresh.bin", "kept.txt"):
        ftp, data, _ = start_upload(gw.port, user, name)
        assert wait_for(lambda: sum(temps(user.home).values()) > 0)  # data reached the backend
        if how == "ABOR":
            # 426 for the transfer, then 226; or 225 alone when no data had arrived yet.
            reply = ftp.abort()
            if reply.startswith("426"):
                assert ftp.getresp().startswith("226")
            reset(data)
        else:
            reset(data)
            # 426; or 425 when the reset came before the gateway had taken the connection.
            with pytest.raises(ftplib.error_temp, match=r"^42[56]"):
                ftp.voidresp()
        assert ftp.sendcmd("NOOP").startswith("200")
        ftp.quit()
        assert wait_for(lambda: temps(user.home) == {}), temps(user.home)
    assert not (user.home / "fresh.bin").exists()
    assert (user.home / "kept.txt").read_bytes() == b"previous\n"
    kept = [PARTIAL.match(name)["name"] for name in os.listdir(user.home) if PARTIAL.match(name)]
    assert sorted(kept) == ["fresh.bin", "kept.txt"]
    assert gw.login(user).nlst("-a") == [".", "..", "kept.txt"]


def test_resumed_uploads_write_in_place(ftp, user):
    seed(user, "log.txt", b"0123456789")
    ftp.voidcmd("TYPE I")
    assert ftp.storbinary("APPE log.txt", io.BytesIO(b"abc")).startswith("226")
    assert (user.home / "log.txt").read_bytes() == b"0123456789abc"
    assert ftp.storbinary("STOR log.txt", io.BytesIO(b"XY"), rest=4).startswith("226")
    assert (user.home / "log.txt").read_bytes() == b"0123XY"  # in place, ending with the upload
    assert temps(user.home) == {}


def test_a_resume_onto_the_version_a_failed_upload_left_is_refused(gw, ftp, user):
    """A plain FTP server leaves the partial new file after a cut STOR; the gateway leaves the
    old one, and keeps no partial of a TYPE A upload (its line ends were changed). A resume
    from SIZE would glue the new file's tail to the old head: refused (554 after REST, 550
    for APPE), from any session, until the file has changed."""
    old = seed(user, "big.csv", b"old,version\n" * 1000).read_bytes()
    uploader = gw.login(user)
    uploader.voidcmd("TYPE A")
    data = uploader.transfercmd("STOR big.csv")
    data.sendall(b"new,version\r\n" * 100_000)
    assert wait_for(lambda: sum(temps(user.home).values()) > 0)
    reset(data)
    with pytest.raises(ftplib.error_temp, match=r"^42[56]"):
        uploader.voidresp()
    uploader.quit()
    assert wait_for(lambda: temps(user.home) == {})
    ftp.voidcmd("TYPE I")
    size = ftp.size("big.csv")
    assert size == len(old)
    new = os.urandom(3 * size)
    with pytest.raises(ftplib.error_perm, match=r"^554 Resume refused"):
        ftp.storbinary("STOR big.csv", io.BytesIO(new[size:]), rest=size)
    with pytest.raises(ftplib.error_perm, match=r"^550 Resume refused"):
        ftp.storbinary("APPE big.csv", io.BytesIO(new[size:]))
    assert (user.home / "big.csv").read_bytes() == old
    # The whole file again; from then on the file is the client's and resumes are allowed.
    assert ftp.storbinary("STOR big.csv", io.BytesIO(new[:size])).startswith("226")
    assert ftp.storbinary("STOR big.csv", io.BytesIO(new[size:]), rest=size).startswith("226")
    assert (user.home / "big.csv").read_bytes() == new


def test_a_read_only_file_is_not_replaced(ftp, user):
    ro = seed(user, "ro.txt", b"read only\n")
    ro.chmod(0o444)
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        ftp.storbinary("STOR ro.txt", io.BytesIO(b"overwritten"))
    assert ro.read_bytes() == b"read only\n"
    assert temps(user.home) == {}


def test_a_file_of_another_owner_is_written_in_place_under_the_backends_permissions(ftp, user):
    """A rename needs only the directory's permission: replacing someone else's file that
    way would bypass its permissions and change its owner."""
    theirs = seed(user, "theirs.txt", b"not yours\n")
    os.chown(theirs, 0, 0)
    theirs.chmod(0o644)
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        ftp.storbinary("STOR theirs.txt", io.BytesIO(b"overwritten"))
    assert theirs.read_bytes() == b"not yours\n"
    shared = seed(user, "shared.txt", b"everyone may write\n")
    os.chown(shared, 0, 0)
    shared.chmod(0o666)
    assert ftp.storbinary("STOR shared.txt", io.BytesIO(b"new content")).startswith("226")
    assert shared.read_bytes() == b"new content"
    assert (shared.stat().st_uid, shared.stat().st_gid) == (0, 0)
    assert temps(user.home) == {}


def test_without_permission_to_create_files_a_writable_file_is_written_in_place(ftp, user):
    shared = user.home / "shared"
    shared.mkdir()
    target = seed(user, "shared/data.txt", b"before")
    shared.chmod(0o555)  # no new files here, but data.txt itself is writable
    try:
        assert ftp.storbinary("STOR shared/data.txt", io.BytesIO(b"after")).startswith("226")
        assert target.read_bytes() == b"after"
    finally:
        shared.chmod(0o755)


def test_an_upload_through_a_symlink_writes_its_target(ftp, user):
    target = seed(user, "real.txt", b"before")
    (user.home / "link.txt").symlink_to("real.txt")
    assert ftp.storbinary("STOR link.txt", io.BytesIO(b"through the link")).startswith("226")
    assert (user.home / "link.txt").is_symlink()
    assert target.read_bytes() == b"through the link"


def test_a_long_name_still_uploads(ftp, user):
    name = "n" * 250  # the temporary name is cut to the 255-byte limit
    assert ftp.storbinary(f"STOR {name}", io.BytesIO(b"long")).startswith("226")
    assert (user.home / name).read_bytes() == b"long"
    assert temps(user.home) == {}


def test_atomic_uploads_off_writes_in_place(gateway_factory, sshd, user):
    doc = base_config(sshd)
    doc["backends"]["main"]["atomic_uploads"] = False
    gw = gateway_factory(doc)
    ftp, data, chunk = start_upload(gw.port, user, "direct.bin")
    # In place: the final name grows while the upload runs.
    assert wait_for(lambda: (user.home / "direct.bin").exists())
    assert temps(user.home) == {}
    assert finish(ftp, data).startswith("226")
    assert (user.home / "direct.bin").read_bytes() == chunk
    ftp.quit()


def test_two_uploads_of_the_same_name_do_not_mix(gw, user):
    first, data1, chunk1 = start_upload(gw.port, user, "same.bin")
    second, data2, chunk2 = start_upload(gw.port, user, "same.bin")
    assert wait_for(lambda: len(temps(user.home)) == 2)
    assert finish(second, data2).startswith("226")
    assert (user.home / "same.bin").read_bytes() == chunk2
    assert finish(first, data1).startswith("226")
    assert (user.home / "same.bin").read_bytes() == chunk1  # the last one to finish wins, whole
    for ftp in (first, second):
        ftp.quit()
    assert os.listdir(user.home) == ["same.bin"]
