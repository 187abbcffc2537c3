"""Real FTP clients (curl, lftp, ncftp) against the gateway, as users would run them."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest

from tests.helpers.gateway_env import seed


def run(*cmd, timeout=60):
    result = subprocess.run(cmd, capture_output=True, timeout=timeout)
    assert result.returncode == 0, (cmd, result.stdout[-2000:], result.stderr[-2000:])
    return result.stdout


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def creds(user):
    return f"{user.name}:{user.password}"


def require(tool):
    assert shutil.which(tool), f"{tool} is not installed (tests/run.sh installs it)"


def test_curl_list_get_put_delete(gw, user, creds, tmp_path):
    require("curl")
    seed(user, "hello.txt", "hello from sftp\n")
    listing = run("curl", "-sS", "-u", creds, f"{gw.url}/").decode()
    assert listing.rstrip().endswith(" hello.txt")
    assert run("curl", "-sS", "-u", creds, f"{gw.url}/hello.txt") == b"hello from sftp\n"
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(3 * 2**20 + 5))
    run("curl", "-sS", "-u", creds, "--ftp-create-dirs", "-T", str(payload), f"{gw.url}/in/deep/")
    assert sha((user.home / "in/deep/payload.bin").read_bytes()) == sha(payload.read_bytes())
    got = run("curl", "-sS", "-u", creds, f"{gw.url}/in/deep/payload.bin")
    assert sha(got) == sha(payload.read_bytes())
    run("curl", "-sS", "-u", creds, f"{gw.url}/", "-Q", "DELE in/deep/payload.bin")
    assert not (user.home / "in/deep/payload.bin").exists()


def test_curl_active_mode_resume_and_append(gw, user, creds, tmp_path):
    require("curl")
    data = os.urandom(2 * 2**20)
    seed(user, "f.bin", data)
    assert sha(run("curl", "-sS", "-P", "-", "-u", creds, f"{gw.url}/f.bin")) == sha(data)
    # resume a download from byte 1 MiB
    tail = run("curl", "-sS", "-C", str(2**20), "-u", creds, f"{gw.url}/f.bin")
    assert tail == data[2**20 :]
    # resume an upload: the server has the first half
    src = tmp_path / "up.bin"
    src.write_bytes(data)
    seed(user, "up.bin", data[: 2**20])
    run("curl", "-sS", "-C", "-", "-T", str(src), "-u", creds, f"{gw.url}/up.bin")
    assert sha((user.home / "up.bin").read_bytes()) == sha(data)
    # append
    extra = tmp_path / "extra.txt"
    extra.write_bytes(b"more")
    run("curl", "-sS", "--append", "-T", str(extra), "-u", creds, f"{gw.url}/up.bin")
    assert (user.home / "up.bin").read_bytes() == data + b"more"


def test_curl_reports_missing_file(gw, user, creds):
    require("curl")
    result = subprocess.run(["curl", "-sS", "-u", creds, f"{gw.url}/missing.txt"], capture_output=True)
    assert result.returncode == 78  # curl: RETR response 550, remote file not found


def test_lftp_mirror_both_ways(gw, user, tmp_path):
    require("lftp")
    local = tmp_path / "local"
    (local / "sub dir").mkdir(parents=True)
    (local / "a.txt").write_text("alpha\n")
    (local / "sub dir" / "b.bin").write_bytes(os.urandom(500_000))
    (local / "ümlaut.txt").write_text("utf-8 name\n")
    script = (
        "set ftp:passive-mode on; set net:max-retries 1; set net:timeout 20; "
        f"open -u {user.name},{user.password} -p {gw.port} {gw.host}; "
        f"mirror -R {local} /up; mkdir /made; mv /up/a.txt /made/a.txt; "
        f"mirror /up {tmp_path / 'back'}; rm /made/a.txt; rmdir /made; bye"
    )
    run("lftp", "-c", script)
    assert (user.home / "up" / "sub dir" / "b.bin").read_bytes() == (local / "sub dir" / "b.bin").read_bytes()
    assert (user.home / "up" / "ümlaut.txt").read_text() == "utf-8 name\n"
    assert not (user.home / "made").exists()
    back = tmp_path / "back"
    assert (back / "sub dir" / "b.bin").read_bytes() == (local / "sub dir" / "b.bin").read_bytes()


def test_lftp_active_mode_and_ls(gw, user):
    require("lftp")
    seed(user, "x.txt", "x")
    script = (
        "set ftp:passive-mode off; set ftp:use-mlsd off; set net:max-retries 1; set net:timeout 20; "
        f"open -u {user.name},{user.password} -p {gw.port} {gw.host}; cls -l; cat x.txt; bye"
    )
    out = run("lftp", "-c", script).decode()
    assert "x.txt" in out and out.rstrip().endswith("x")


def test_ncftp_put_get_ls(gw, user, tmp_path):
    for tool in ("ncftpput", "ncftpget", "ncftpls"):
        require(tool)
    src = tmp_path / "n.bin"
    src.write_bytes(os.urandom(1_000_000))
    login = ["-u", user.name, "-p", user.password, "-P", str(gw.port)]
    run("ncftpput", *login, "-m", gw.host, "/ncftp", str(src))
    assert (user.home / "ncftp" / "n.bin").read_bytes() == src.read_bytes()
    listing = run("ncftpls", *login, "-l", f"ftp://{gw.host}/ncftp/").decode()
    assert "n.bin" in listing
    dest = tmp_path / "dl"
    dest.mkdir()
    run("ncftpget", *login, gw.host, str(dest), "/ncftp/n.bin")
    assert (dest / "n.bin").read_bytes() == src.read_bytes()


def test_classic_ftp_client_mget_mput_with_wildcards(gw, user, tmp_path):
    require("ftp")
    seed(user, "a.csv", "a")
    seed(user, "b.csv", "b")
    seed(user, "c.txt", "c")
    seed(user, "sub/d.csv", "d")
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "e.dat").write_text("e")
    (work / "f.dat").write_text("f")
    script = (
        f"user {user.name} {user.password}\nbinary\nmget *.csv\nmget sub/*.csv\n"
        "mkdir up\ncd up\nmput *.dat\nbye\n"
    )
    result = subprocess.run(
        ["ftp", "-i", "-n", "-p", "-v", gw.host, str(gw.port)],
        input=script.encode(),
        cwd=work,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in work.glob("*.csv")) == ["a.csv", "b.csv"]
    assert (work / "sub" / "d.csv").read_text() == "d"
    assert sorted(p.name for p in (user.home / "up").iterdir()) == ["e.dat", "f.dat"]
