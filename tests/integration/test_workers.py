"""``workers: N``: several processes on one port, each with its own passive ports; restarts."""

from __future__ import annotations

import ftplib
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers.gateway_env import base_config, seed, wait_for
from tests.helpers.sshd import free_port, wait_port


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.fixture
def workers_gateway(sshd, tmp_path: Path):
    port = free_port()
    doc = base_config(sshd)
    doc["listen"]["port"] = port
    doc["workers"] = 2
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(cfg)])
    wait_port("127.0.0.1", port)
    assert wait_for(lambda: len(children_of(proc.pid)) == 2)
    yield proc, port
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def transfer_round_trip(port: int, user, name: str) -> int:
    """Log in, upload and download ``name``; returns the PASV port the session got."""
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", port, timeout=20)
    ftp.login(user.name, user.password)
    pasv_port = ftplib.parse227(ftp.sendcmd("PASV"))[1]
    ftp.sendcmd("ABOR")
    data = os.urandom(300_000)
    ftp.storbinary(f"STOR {name}", io.BytesIO(data))
    got = io.BytesIO()
    ftp.retrbinary(f"RETR {name}", got.write)
    assert got.getvalue() == data
    ftp.quit()
    return pasv_port


def test_transfers_work_whichever_worker_takes_the_session(workers_gateway, user):
    proc, port = workers_gateway
    assert len(children_of(proc.pid)) == 2
    seed(user, "x", "x")
    ports = [transfer_round_trip(port, user, f"f{i}.bin") for i in range(12)]
    # Each worker announces only ports of its own slice, so every data connection reaches
    # the process that announced it (the slices: tests/unit/test_workers.py).
    assert all(41000 <= p <= 41199 for p in ports)


def test_a_dead_worker_is_replaced_and_sigterm_stops_all(workers_gateway, user):
    proc, port = workers_gateway
    first, second = children_of(proc.pid)
    os.kill(first, signal.SIGKILL)

    def replaced() -> bool:  # one look at the children: two looks could straddle the reaping
        now = children_of(proc.pid)
        return len(now) == 2 and first not in now

    assert wait_for(replaced, 15)
    now = children_of(proc.pid)
    assert len(now) == 2 and first not in now and second in now
    for i in range(4):
        transfer_round_trip(port, user, f"after-restart-{i}.bin")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert children_of(proc.pid) == []


def test_sigterm_right_after_a_worker_died_stops_everything(workers_gateway):
    proc, _ = workers_gateway
    first, second = children_of(proc.pid)
    os.kill(first, signal.SIGKILL)
    # Reaped (no longer a zombie child): the supervisor is now waiting to restart it.
    assert wait_for(lambda: first not in children_of(proc.pid))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert wait_for(lambda: not os.path.exists(f"/proc/{second}"))


def test_workers_need_enough_passive_ports(sshd):
    from gateway import config

    doc = base_config(sshd)
    doc["workers"] = 3
    doc["listen"]["passive_ports"] = [50000, 50001]
    with pytest.raises(config.ConfigError) as exc:
        config.parse(doc)
    assert exc.value.problems == [
        "workers: 3 workers need at least as many passive ports (listen.passive_ports)"
    ]


def test_workers_report_a_busy_port_cleanly(sshd, tmp_path):
    import socket as socketmod

    with socketmod.create_server(("127.0.0.1", 0)) as busy:
        doc = base_config(sshd)
        doc["listen"]["port"] = busy.getsockname()[1]
        doc["workers"] = 2
        cfg = tmp_path / "gateway.yaml"
        cfg.write_text(yaml.safe_dump(doc))
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "run", "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert "cannot listen on 127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr
