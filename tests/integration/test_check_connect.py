"""``check-config --connect``: a valid config can still point at a backend that is not there
or shows another host key; --connect finds out before the partners do."""

from __future__ import annotations

import os
import subprocess

import yaml

from tests.helpers.gateway_env import CLI, PASSWORD, base_config, legacy_config


def check(tmp_path, doc, *args, env=None):
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc))
    return subprocess.run(
        [*CLI, "check-config", str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_every_backend_answers(sshd, legacy_ftp, tmp_path):
    doc = legacy_config(sshd, legacy_ftp)
    result = check(tmp_path, doc, "--connect")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ok   backends.main (sftp 127.0.0.1:{sshd.port}): answers, host key verified" in result.stdout
    assert f"ok   backends.old-ftp (ftp 127.0.0.1:{legacy_ftp.port}): greets with 220" in result.stdout
    assert "every backend answered" in result.stdout


def test_a_wrong_host_key_passes_the_plain_check_and_fails_connect(sshd, tmp_path):
    doc = base_config(sshd)
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = tmp_path / "known_hosts"
    kind, key = (other.with_suffix(".pub")).read_text().split()[:2]
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {kind} {key}\n")
    doc["backends"]["main"]["known_hosts"] = str(wrong)
    assert check(tmp_path, doc).returncode == 0  # the file is fine: only a connection tells
    result = check(tmp_path, doc, "--connect")
    assert result.returncode == 1
    assert f"FAIL backends.main (sftp 127.0.0.1:{sshd.port}): host key SHA256:" in result.stdout
    assert "is not in known_hosts nor pinned" in result.stdout
    assert "1 connection check(s) failed" in result.stdout


def test_a_legacy_server_that_is_gone(sshd, legacy_ftp, tmp_path):
    doc = legacy_config(sshd, legacy_ftp)
    legacy_ftp.stop()
    result = check(tmp_path, doc, "--connect")
    assert result.returncode == 1
    assert f"FAIL backends.old-ftp (ftp 127.0.0.1:{legacy_ftp.port}): unreachable" in result.stdout


def test_a_user_logs_in_through_their_route(sshd, user, tmp_path):
    doc = base_config(sshd)
    good = check(
        tmp_path, doc, "--connect", "--user", user.name, "--password-env", "PW", env={"PW": PASSWORD}
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert (
        f"ok   user {user.name} (route route0, phase sftp): logged in on backend main, root {user.home}"
        in (good.stdout)
    )
    bad = check(tmp_path, doc, "--connect", "--user", user.name, "--password-env", "PW", env={"PW": "wrong"})
    assert bad.returncode == 1
    assert f"FAIL user {user.name} (route route0, phase sftp): 530 Login incorrect." in bad.stdout
    unset = check(tmp_path, doc, "--connect", "--user", user.name, "--password-env", "GW_UNSET_PW")
    assert unset.returncode == 2 and "GW_UNSET_PW: that variable is not set" in unset.stderr
