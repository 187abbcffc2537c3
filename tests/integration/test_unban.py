"""``ftp-sftp-gateway bans`` and ``unban``: the guard's bans of a running gateway (the same in
every worker process: they share failures), listed and lifted in every worker, through the
metrics listener's loopback-only /admin/."""

from __future__ import annotations

import ftplib
import re
import subprocess

from gateway.edges.httpd import Request
from gateway.edges.metrics_http import Admin, admin_response
from tests.helpers.gateway_env import CLI, base_config, write_config


def login_from(port: int, source: str, user, password: str) -> str:
    ftp = ftplib.FTP(timeout=20, source_address=(source, 0))
    try:
        ftp.connect("127.0.0.1", port)
        return ftp.login(user, password)
    except ftplib.Error as err:
        return str(err)
    finally:
        ftp.close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)


def test_workers_share_failures_and_bans_and_unban_lifts_them_in_all(process, sshd, user, tmp_path):
    doc = base_config(sshd, workers=2, guard={"max_failures": 2, "max_failures_per_address": 2})
    gw = process(doc)
    config = str(tmp_path / "gateway.yaml")
    # The kernel spreads the connections over the two workers; their guards share every
    # failure, so the third attempt is refused whichever worker takes it (each worker on
    # its own would allow 2 failures, 4 in all).
    replies = [login_from(gw.port, "127.0.0.2", user.name, f"wrong-{attempt}")[:3] for attempt in range(10)]
    assert replies == ["530", "530"] + ["421"] * 8, replies
    assert login_from(gw.port, "127.0.0.2", user.name, user.password).startswith("421")
    listed = cli("bans", "--config", config)
    assert listed.returncode == 0, listed.stderr
    assert "address 127.0.0.2:" in listed.stdout and "s left" in listed.stdout
    lifted = cli("unban", "127.0.0.2", "--config", config)
    assert lifted.returncode == 0, lifted.stderr
    assert "process 1 of 2" in lifted.stdout and "process 2 of 2" in lifted.stdout
    # Both workers held the ban; the first unban also reached the other one (1 or 2 lifted
    # by the CLI's own requests, depending on which came first).
    assert int(re.search(r"(\d+) ban\(s\) lifted in all", lifted.stdout).group(1)) >= 1
    assert listed.stdout.count("address 127.0.0.2:") == 2
    for _ in range(8):  # whichever worker takes it
        assert login_from(gw.port, "127.0.0.2", user.name, user.password).startswith("230")
    assert cli("bans", "--config", config).stdout.count(": 0 ban(s)") == 2
    assert any("unban: client_ip=127.0.0.2" in line for line in gw.lines)


def test_unban_sends_the_metrics_credentials(process, sshd, user, tmp_path, monkeypatch):
    monkeypatch.setenv("GW_TEST_METRICS_PW", "metrics-secret")
    doc = base_config(sshd, guard={"max_failures": 1, "max_failures_per_address": 1})
    doc["metrics"]["basic_auth"] = {"username": "prom", "password_env": "GW_TEST_METRICS_PW"}
    gw = process(doc)
    assert login_from(gw.port, "127.0.0.3", user.name, "wrong").startswith("530")
    assert login_from(gw.port, "127.0.0.3", user.name, user.password).startswith("421")
    lifted = cli("unban", "127.0.0.3", "--config", str(tmp_path / "gateway.yaml"))
    assert lifted.returncode == 0, lifted.stderr
    assert "1 ban(s) lifted in all" in lifted.stdout or "2 ban(s) lifted in all" in lifted.stdout
    assert login_from(gw.port, "127.0.0.3", user.name, user.password).startswith("230")


def test_unban_says_why_when_no_gateway_answers(sshd, tmp_path):
    doc = base_config(sshd)
    doc["metrics"]["port"] = 1  # nothing listens there
    result = cli("unban", "192.0.2.1", "--config", str(write_config(tmp_path, doc)))
    assert result.returncode == 1 and "is the gateway running?" in result.stderr


def test_admin_answers_clients_on_this_host_only():
    admin = Admin(bans=lambda: [("192.0.2.1", "", 600.0)], unban=lambda address: 1)
    far = admin_response(admin, Request("POST", "/admin/unban", {}, "address=192.0.2.1", peer="198.51.100.9"))
    assert far.status == 403
    near = admin_response(admin, Request("POST", "/admin/unban", {}, "address=192.0.2.1", peer="127.0.0.1"))
    assert (near.status, near.body) == (200, b'{"address": "192.0.2.1", "lifted": 1}\n')
    assert (
        admin_response(admin, Request("POST", "/admin/unban", {}, "address=nope", peer="::1")).status == 400
    )
    listed = admin_response(admin, Request("GET", "/admin/bans", {}, "", peer="127.0.0.1"))
    assert listed.body == b'{"bans": [{"source": "192.0.2.1", "user": "", "seconds_left": 600}]}\n'
