"""Credential modes: gateway-local users mapped to a backend account (password or key)."""

from __future__ import annotations

import ftplib
import subprocess

import pytest

from gateway.core.passwords import hash_password, verify_password
from tests.helpers.gateway_env import CLI, base_config, seed
from tests.helpers.sshd import BASE, OpenSSHServer


def failed_passwords(sshd, name: str) -> int:
    return sshd.log.read_text(errors="replace").count(f"Failed password for {name}")


def mapped_config(sshd, tmp_path, backend_user, **user):
    (tmp_path / "backend.pw").write_text(backend_user.password + "\n")
    doc = base_config(sshd)
    doc["routes"][0]["auth"] = "mapped"
    doc["users"] = {
        "partner-a": {
            "password_hash": hash_password("ftp-side-secret"),
            "backend_user": backend_user.name,
            **(user or {"backend_password_file": str(tmp_path / "backend.pw")}),
        }
    }
    return doc


def test_mapped_user_logs_in_as_the_backend_account(gateway_factory, sshd, user, tmp_path):
    seed(user, "hello.txt", b"mapped\n")
    gw = gateway_factory(mapped_config(sshd, tmp_path, user))
    ftp = gw.connect()
    ftp.login("partner-a", "ftp-side-secret")
    got = []
    ftp.retrlines("RETR hello.txt", got.append)
    assert got == ["mapped"]
    ftp.quit()


@pytest.mark.parametrize(("name", "password"), [("partner-a", "wrong"), ("nobody", "ftp-side-secret")])
def test_wrong_mapped_credentials_never_reach_the_backend(
    gateway_factory, sshd, user, tmp_path, name, password
):
    gw = gateway_factory(mapped_config(sshd, tmp_path, user))
    before = failed_passwords(sshd, user.name)
    ftp = gw.connect()
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        ftp.login(name, password)
    assert failed_passwords(sshd, user.name) == before
    m = gw.gateway.metrics.registry
    assert m.get_sample_value("ftpgw_backend_connects_total", {"backend": "main", "result": "ok"}) == 0


def test_mapped_user_with_a_private_key(gateway_factory, user, tmp_path):
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    # sshd reads authorized keys as the user: outside root's private pytest tmp dir.
    keys = BASE / "authorized_keys"
    keys.mkdir(mode=0o755, parents=True, exist_ok=True)
    (keys / user.name).write_text((tmp_path / "id_ed25519.pub").read_text())
    (keys / user.name).chmod(0o644)
    keyed = OpenSSHServer(
        tmp_path / "sshd-keys",
        extra_config=(
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            f"AuthorizedKeysFile {keys}/%u",
        ),
    ).start()
    try:
        seed(user, "via-key.txt", b"key\n")
        gw = gateway_factory(mapped_config(keyed, tmp_path, user, backend_key_file=str(key)))
        ftp = gw.connect()
        ftp.login("partner-a", "ftp-side-secret")
        assert "via-key.txt" in ftp.nlst()
        ftp.quit()
    finally:
        keyed.stop()


def test_hash_password_command(tmp_path):
    result = subprocess.run([*CLI, "hash-password"], input="pipe-secret\n", capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    encoded = result.stdout.strip()
    assert encoded.startswith("scrypt$16384$8$1$")
    assert verify_password("pipe-secret", encoded) and not verify_password("pipe-secre", encoded)
    assert "pipe-secret" not in result.stdout


def test_check_config_names_a_bad_hash_and_an_unusable_key(sshd, user, tmp_path):
    import yaml

    (tmp_path / "not-a-key").write_text("garbage\n")
    doc = mapped_config(sshd, tmp_path, user, backend_key_file=str(tmp_path / "not-a-key"))
    doc["users"]["partner-a"]["password_hash"] = "md5$abc"
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = subprocess.run([*CLI, "check-config", str(path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "users.partner-a.password_hash: not a scrypt$N$r$p$salt$hash string" in result.stderr
    doc["users"]["partner-a"]["password_hash"] = hash_password("x")
    path.write_text(yaml.safe_dump(doc))
    result = subprocess.run([*CLI, "check-config", str(path)], capture_output=True, text=True)
    assert "users.partner-a.backend_key_file: cannot use the private key" in result.stderr


def test_check_config_print_names_every_secret_source_and_check_config_accepts_it(
    sshd, user, tmp_path, monkeypatch
):
    import yaml

    monkeypatch.setenv("GW_TEST_METRICS_PW", "metrics-secret-value")
    doc = mapped_config(sshd, tmp_path, user)
    doc["metrics"]["basic_auth"] = {"username": "prom", "password_env": "GW_TEST_METRICS_PW"}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = subprocess.run([*CLI, "check-config", str(path), "--print"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    partner = printed["users"]["partner-a"]
    assert "backend_password" not in partner and "backend_key_file" not in partner
    given = doc["users"]["partner-a"]["backend_password_file"]
    assert partner["backend_password_file"] == str(tmp_path / given)
    assert partner["password_hash"] == doc["users"]["partner-a"]["password_hash"]  # as in the file
    assert printed["metrics"]["basic_auth"] == {"username": "prom", "password_env": "GW_TEST_METRICS_PW"}
    assert printed["guard"]["max_failures"] == 5  # defaults filled in
    for secret in (user.password, "metrics-secret-value"):
        assert secret not in result.stdout
    elsewhere = tmp_path / "printed"
    elsewhere.mkdir()
    (elsewhere / "gateway.yaml").write_text(result.stdout)
    again = subprocess.run(
        [*CLI, "check-config", str(elsewhere / "gateway.yaml")], capture_output=True, text=True
    )
    assert again.returncode == 0 and "OK" in again.stdout, again.stderr
