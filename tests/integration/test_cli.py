"""The command line as an operator uses it: check-config, run, demo (real processes)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess

import pytest

from tests.helpers.gateway_env import CLI, base_config, seed, write_config
from tests.helpers.sshd import free_port, wait_port


def test_check_config_ok(sshd, tmp_path):
    path = write_config(tmp_path, base_config(sshd))
    result = subprocess.run([*CLI, "check-config", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_check_config_lists_every_problem_and_fails(sshd, tmp_path):
    doc = base_config(sshd)
    doc["backends"]["main"]["known_hosts"] = "/nonexistent/known_hosts"
    doc["listen"]["passive_ports"] = [10, 5]
    doc["routes"][0]["backend"] = "typo"
    doc["listen"]["prot"] = 1
    path = write_config(tmp_path, doc)
    result = subprocess.run([*CLI, "check-config", str(path)], capture_output=True, text=True)
    assert result.returncode == 2
    err = result.stderr
    assert "4 problem(s)" in err
    assert "backends.main.known_hosts: file not found: /nonexistent/known_hosts" in err
    assert "listen.passive_ports:" in err
    assert "routes[0].backend: unknown backend 'typo'" in err
    assert "listen.prot: unknown key" in err


def test_check_config_needs_a_key_for_the_backend_itself(sshd, tmp_path):
    doc = base_config(sshd)
    other_port = sshd.port + 1
    doc["backends"]["main"]["port"] = other_port  # known_hosts only has [127.0.0.1]:sshd.port
    garbage = tmp_path / "not-known-hosts"
    garbage.write_text("this is not a known_hosts file\n")
    doc["backends"]["second"] = {"host": "127.0.0.1", "known_hosts": str(garbage)}
    path = write_config(tmp_path, doc)
    result = subprocess.run([*CLI, "check-config", str(path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert f"backends.main.known_hosts: no host key for [127.0.0.1]:{other_port}" in result.stderr
    assert "backends.second.known_hosts: no host key for 127.0.0.1 in" in result.stderr
    assert "ssh-keyscan" in result.stderr


def test_run_refuses_a_broken_config(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("listen: {port: 21}\n")
    result = subprocess.run([*CLI, "run", "--config", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "backends:" in result.stderr and "routes:" in result.stderr


def test_run_serves_and_stops_on_sigterm(sshd, user, tmp_path):
    port = free_port()
    doc = base_config(sshd)
    doc["listen"]["port"] = port
    path = write_config(tmp_path, doc)
    seed(user, "served.txt", "served by run\n")
    proc = subprocess.Popen([*CLI, "run", "--config", str(path)], stderr=subprocess.PIPE, text=True)
    try:
        wait_port("127.0.0.1", port)
        out = subprocess.run(
            ["curl", "-sS", "-u", f"{user.name}:{user.password}", f"ftp://127.0.0.1:{port}/served.txt"],
            capture_output=True,
            timeout=30,
        )
        assert out.stdout == b"served by run\n", out.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    logs = proc.stderr.read()
    assert user.password not in logs
    assert "login ok" in logs


def test_demo_serves_a_real_transfer_with_curl(tmp_path):
    port, metrics = free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    demo = ["demo", "--port", str(port), "--data", "demo-data", "--metrics-port", str(metrics)]
    proc = subprocess.Popen(
        [*CLI, *demo, "--passive-ports", "31000-31009"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        wait_port("127.0.0.1", port, timeout=30)
        url = f"ftp://demo:demo@127.0.0.1:{port}/"
        listing = subprocess.run(["curl", "-sS", url], capture_output=True, text=True, timeout=30)
        assert "welcome.txt" in listing.stdout, listing.stderr
        upload = tmp_path / "upload.txt"
        upload.write_text("uploaded through the demo\n")
        subprocess.run(["curl", "-sS", "-T", str(upload), url], check=True, timeout=30)
        assert (tmp_path / "demo-data" / "upload.txt").read_text() == "uploaded through the demo\n"
        wrong = subprocess.run(["curl", "-sS", f"ftp://demo:nope@127.0.0.1:{port}/"], capture_output=True)
        assert wrong.returncode == 67  # curl: login denied
        pasv = subprocess.run(["curl", "-sS", "-v", url], capture_output=True, text=True, timeout=30).stderr
        data_port = int(re.search(r"229 Entering extended passive mode \(\|\|\|(\d+)\|\)", pasv).group(1))
        assert 31000 <= data_port <= 31009
        scraped = subprocess.run(
            ["curl", "-sS", f"http://127.0.0.1:{metrics}/metrics"], capture_output=True, text=True
        )
        assert "ftpgw_sessions_active" in scraped.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
    output = proc.stdout.read()
    assert f"curl ftp://demo:demo@127.0.0.1:{port}/" in output
    assert (
        f"Metrics: curl http://127.0.0.1:{metrics}/metrics" in output
        and "passive ports 31000-31009" in output
    )
    assert list((tmp_path / "tmp").iterdir()) == []  # the embedded SFTP server's keys are gone


@pytest.mark.parametrize(
    ("busy", "named"),
    [("ftp", "(FTP): the port is in use"), ("metrics", "(metrics): the port is in use")],
)
def test_a_busy_port_is_named_with_the_key_to_change(sshd, tmp_path, busy, named):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        doc = base_config(sshd)
        if busy == "ftp":
            doc["listen"]["port"] = port
        else:
            doc["metrics"] = {"enabled": True, "address": "127.0.0.1", "port": port}
        result = subprocess.run(
            [*CLI, "run", "--config", str(write_config(tmp_path, doc))],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1 port {port} {named}" in result.stderr
    assert ("listen.port" if busy == "ftp" else "metrics.port") in result.stderr
    assert "Traceback" not in result.stderr and "None" not in result.stderr
