"""Every FTP command, driven with ftplib through the gateway against the real OpenSSH backend."""

from __future__ import annotations

import calendar
import ftplib
import io
import os
import stat
import threading
import time

from tests.helpers.gateway_env import seed


def reply_code(func, *args):
    """Run an ftplib call and return the reply code, also for error replies."""
    try:
        return func(*args)[:3]
    except ftplib.all_errors as err:
        return str(err)[:3]


def test_banner_syst_noop_quit(gw, user):
    ftp = gw.connect()
    assert ftp.getwelcome().startswith("220 ")
    ftp.login(user.name, user.password)
    assert ftp.sendcmd("SYST") == "215 UNIX Type: L8"
    assert ftp.sendcmd("NOOP").startswith("200")
    assert ftp.quit().startswith("221")


def test_feat_advertises_what_works(ftp):
    feat = ftp.sendcmd("FEAT").splitlines()
    features = {line.strip() for line in feat[1:-1]}
    for needed in ("UTF8", "SIZE", "MDTM", "MFMT", "REST STREAM", "EPSV", "EPRT", "TVFS"):
        assert needed in features
    mlst = next(f for f in features if f.startswith("MLST "))
    assert mlst.split(" ", 1)[1] == "type*;size*;modify*;perm*;unix.mode*;unix.uid;unix.gid;"
    assert "unique" not in mlst


def test_opts(ftp):
    assert ftp.sendcmd("OPTS UTF8 ON").startswith("200")
    assert ftp.sendcmd("OPTS MLST type;size;").startswith("200 MLST OPTS type;size;")
    assert reply_code(ftp.sendcmd, "OPTS NOSUCH") == "501"


def test_help_and_site_help(ftp):
    assert ftp.sendcmd("HELP").startswith("214")
    assert ftp.sendcmd("HELP RETR").startswith("214")
    assert ftp.sendcmd("SITE HELP").startswith("214")


def test_stat_server_and_path(ftp, user):
    seed(user, "dir/file.txt", "x")
    status = ftp.sendcmd("STAT")
    assert status.startswith("211-") and f"Logged in as: {user.name}" in status
    listing = ftp.sendcmd("STAT /dir")
    assert listing.startswith('213-Status of "/dir":')
    assert [line.split()[-1] for line in listing.splitlines()[1:-1]] == [".", "..", "file.txt"]  # as vsftpd
    assert reply_code(ftp.sendcmd, "STAT /missing") == "550"


def test_pwd_cwd_cdup_and_x_forms(ftp, user):
    seed(user, "a/b/c.txt", "x")
    assert ftp.pwd() == "/"
    assert ftp.cwd("a").startswith("250")
    assert ftp.sendcmd("XCWD b").startswith("250")
    assert ftp.sendcmd("XPWD") == '257 "/a/b" is the current directory.'
    assert ftp.sendcmd("CDUP").startswith("250")
    assert ftp.pwd() == "/a"
    assert ftp.sendcmd("XCUP").startswith("250")
    assert ftp.pwd() == "/"
    assert reply_code(ftp.cwd, "missing") == "550"
    assert reply_code(ftp.cwd, "a/b/c.txt") == "550"
    assert ftp.pwd() == "/"


def test_mkd_rmd_and_x_forms(ftp, user):
    assert ftp.sendcmd("MKD new dir") == '257 "/new dir" directory created.'
    assert (user.home / "new dir").is_dir()
    assert ftp.sendcmd('XMKD q"uote').startswith('257 "/q""uote"')
    assert reply_code(ftp.mkd, "new dir") == "550"  # exists
    seed(user, "full/f", "x")
    assert reply_code(ftp.rmd, "full") == "550"  # not empty
    assert (user.home / "full").is_dir()
    assert ftp.rmd("new dir").startswith("250")
    assert ftp.sendcmd('XRMD q"uote').startswith("250")
    assert not (user.home / "new dir").exists()
    assert reply_code(ftp.rmd, "missing") == "550"
    assert reply_code(ftp.rmd, "/") == "550"


def test_dele(ftp, user):
    seed(user, "f.txt", "x")
    seed(user, "d/x", "x")
    assert ftp.delete("f.txt").startswith("250")
    assert not (user.home / "f.txt").exists()
    assert reply_code(ftp.delete, "f.txt") == "550"
    assert reply_code(ftp.delete, "d") == "550"
    assert (user.home / "d").is_dir()


def test_rename_replaces_existing_target(ftp, user):
    seed(user, "src.txt", "new contents")
    seed(user, "dst.txt", "old")
    assert ftp.rename("src.txt", "dst.txt").startswith("250")
    assert (user.home / "dst.txt").read_text() == "new contents"
    assert not (user.home / "src.txt").exists()
    assert reply_code(ftp.sendcmd, "RNFR missing") == "550"
    assert reply_code(ftp.sendcmd, "RNTO x") == "503"
    seed(user, "d1/f", "x")
    ftp.rename("d1", "d2")
    assert (user.home / "d2" / "f").exists()


def test_size_mdtm_mfmt(ftp, user):
    path = seed(user, "f.bin", b"\0" * 1234)
    when = calendar.timegm((2020, 1, 2, 3, 4, 5))
    os.utime(path, (when, when))
    assert reply_code(ftp.size, "f.bin") == "550"  # RFC 3659: SIZE in TYPE A would need a scan
    ftp.voidcmd("TYPE I")
    assert ftp.size("f.bin") == 1234
    assert ftp.sendcmd("MDTM f.bin") == "213 20200102030405"
    assert ftp.sendcmd("MFMT 20211231235958 f.bin").startswith("213 Modify=20211231235958")
    assert int(path.stat().st_mtime) == calendar.timegm((2021, 12, 31, 23, 59, 58))
    assert reply_code(ftp.size, "missing") == "550"
    seed(user, "dir/x", "x")
    assert reply_code(ftp.size, "dir") == "550"
    assert reply_code(ftp.sendcmd, "MDTM missing") == "550"


def test_site_chmod(ftp, user):
    path = seed(user, "script.sh", "#!/bin/sh\n")
    assert ftp.sendcmd("SITE CHMOD 750 script.sh").startswith("200")
    assert stat.S_IMODE(path.stat().st_mode) == 0o750
    assert reply_code(ftp.sendcmd, "SITE CHMOD 755 missing") == "550"
    assert reply_code(ftp.sendcmd, "SITE CHMOD 9z9 script.sh") == "501"


def test_type_mode_stru_allo(ftp):
    assert ftp.sendcmd("TYPE A").startswith("200")
    assert ftp.sendcmd("TYPE I").startswith("200")
    assert reply_code(ftp.sendcmd, "TYPE X") == "504"
    assert ftp.sendcmd("MODE S").startswith("200")
    assert reply_code(ftp.sendcmd, "MODE B") == "504"
    assert ftp.sendcmd("STRU F").startswith("200")
    assert reply_code(ftp.sendcmd, "STRU R") == "504"
    assert ftp.sendcmd("ALLO 1000").startswith("202")


def test_commands_need_login(gw):
    ftp = gw.connect()
    for cmd in ("PWD", "LIST", "RETR x", "MKD x", "SIZE x"):
        assert reply_code(ftp.sendcmd, cmd) == "530"


def test_errors_do_not_end_the_session(ftp):
    for cmd in ("RETR missing", "DELE missing", "CWD missing", "SIZE missing"):
        assert reply_code(ftp.sendcmd, cmd) == "550"
    assert ftp.sendcmd("NOOP").startswith("200")


def test_retr_of_directory_is_550_before_any_150(ftp, user):
    seed(user, "dir/x", "x")
    ftp.voidcmd("TYPE I")
    ftp.sendcmd("PASV")
    # RETR on a directory must fail at once, with no preliminary 150.
    assert reply_code(ftp.sendcmd, "RETR dir") == "550"
    assert ftp.sendcmd("NOOP").startswith("200")


def test_changes_by_other_backend_users_are_visible_at_once(ftp, user):
    assert ftp.nlst() == []
    seed(user, "appeared.txt", "x")
    assert ftp.nlst() == ["appeared.txt"]
    (user.home / "appeared.txt").write_text("longer now")
    ftp.voidcmd("TYPE I")  # ftplib's nlst() switched to TYPE A; SIZE needs TYPE I
    assert ftp.size("appeared.txt") == 10
    (user.home / "appeared.txt").unlink()
    assert ftp.nlst() == []
    assert reply_code(ftp.size, "appeared.txt") == "550"


def test_rein_and_user_switch(gw, user, user2):
    ftp = gw.login(user)
    seed(user2, "only-user2.txt", "x")
    assert ftp.sendcmd("REIN").startswith("220")
    assert reply_code(ftp.sendcmd, "PWD") == "530"
    ftp.login(user2.name, user2.password)
    assert ftp.nlst() == ["only-user2.txt"]
    ftp.quit()


def test_many_sequential_sessions_leave_no_threads_behind(gw, user):
    seed(user, "f", "x")
    gw.login(user).quit()
    baseline = threading.active_count()
    for _ in range(10):
        ftp = gw.login(user)
        assert ftp.nlst() == ["f"]
        ftp.quit()
    deadline = time.monotonic() + 10
    while threading.active_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
    assert threading.active_count() <= baseline


def _backend_ops(gw, op: str) -> float:
    registry = gw.gateway.metrics.registry
    return (
        registry.get_sample_value("ftpgw_backend_op_duration_seconds_count", {"backend": "main", "op": op})
        or 0
    )


def test_a_transfer_sequence_stats_once_and_still_sees_other_users_changes(gw, user):
    """lftp's SIZE, MDTM, PASV, RETR stat the file once (MDTM and RETR reuse SIZE's answer),
    and STOR, MFMT need no stat at all; a file changed by someone else in between is still
    sent whole, and any other command asks the backend afresh."""
    path = seed(user, "f.bin", b"old")
    ftp = gw.login(user)
    ftp.voidcmd("TYPE I")
    before = _backend_ops(gw, "stat")
    assert ftp.sendcmd("SIZE f.bin") == "213 3"
    mdtm = ftp.sendcmd("MDTM f.bin")
    new = os.urandom(300_000)  # another SFTP user replaces it between SIZE and RETR
    path.write_bytes(new)
    os.utime(path, (1_600_000_000, 1_600_000_000))
    got = bytearray()
    ftp.retrbinary("RETR f.bin", got.extend)
    assert bytes(got) == new  # the whole new file: SIZE's answer was only a read-ahead hint
    assert _backend_ops(gw, "stat") - before == 1
    ftp.voidcmd("NOOP")  # not part of a transfer: the next MDTM asks the backend
    assert ftp.sendcmd("MDTM f.bin") == "213 20200913122640" != mdtm
    before = _backend_ops(gw, "stat")
    ftp.storbinary("STOR up.bin", io.BytesIO(b"data"))
    assert ftp.sendcmd("MFMT 20200101000000 up.bin") == "213 Modify=20200101000000; /up.bin."
    assert _backend_ops(gw, "stat") == before
    assert os.stat(user.home / "up.bin").st_mtime == calendar.timegm((2020, 1, 1, 0, 0, 0))
    ftp.quit()
