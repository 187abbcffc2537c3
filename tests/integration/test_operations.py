"""Operating the gateway as a process: JSON logs, audit lines, xferlog, drain on SIGTERM."""

from __future__ import annotations

import ftplib
import io
import json
import re
import signal
import socket
import time
import urllib.request

import pytest

from tests.helpers.gateway_env import base_config, connect_ftp, seed, start_upload, wait_for


def test_json_logs_audit_lines_and_xferlog(process, sshd, user, tmp_path):
    doc = base_config(sshd)
    doc["log"] = {"format": "json", "transfer_log": str(tmp_path / "xferlog")}
    gw = process(doc)
    seed(user, "report name.csv", b"a,b\n" * 1000)
    bad = connect_ftp(gw.port)
    with pytest.raises(ftplib.error_perm):
        bad.login(user.name, "wrong-password")
    bad.close()
    ftp = connect_ftp(gw.port)
    ftp.login(user.name, user.password)
    ftp.retrbinary("RETR report name.csv", lambda _: None)
    ftp.storbinary("STOR up.bin", io.BytesIO(b"x" * 5000))
    gw.proc.send_signal(signal.SIGHUP)  # a reload of the same file: nothing changes
    assert wait_for(lambda: any("reloaded" in line for line in gw.lines))
    ftp.voidcmd("NOOP")
    ftp.quit()
    assert gw.stop() == 0

    records = [json.loads(line) for line in gw.lines]  # every line is one JSON document
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    audit = [r for r in records if r["logger"] == "gateway.audit"]
    assert [re.sub(r" user=.*", "", r["message"]) for r in audit] == [
        "login failed: client_ip=127.0.0.1",
        "login ok: client_ip=127.0.0.1",
    ]
    assert f"user='{user.name}' result=bad_credentials route=route0" in audit[0]["message"]
    assert f"user='{user.name}' result=ok route=route0 backend=main" in audit[1]["message"]
    # Records from a session's thread carry its fields, the audit and backend lines too.
    in_session = [r for r in records if "session" in r]
    assert {(r["client_ip"], r["user"]) for r in in_session} == {("127.0.0.1", "-"), ("127.0.0.1", user.name)}
    assert all(r.get("user") == user.name for r in audit)
    assert {r["route"] for r in in_session} == {"-", "route0"}  # route0 once logged in
    assert len({r["session"] for r in records if "session" in r}) == 2  # two FTP sessions
    assert not any(user.password in line or "wrong-password" in line for line in gw.lines)

    xfer = [line.split() for line in (tmp_path / "xferlog").read_text().splitlines()]
    assert [len(fields) for fields in xfer] == [18, 18]  # xferlog(5): 5 date fields + 13
    assert time.strptime(" ".join(xfer[0][:5]), "%a %b %d %H:%M:%S %Y")
    name = f"{user.home}/report_name.csv"  # blanks in names become "_", as in ProFTPD
    assert xfer[0][6:] == ["127.0.0.1", "4000", name, "b", "_", "o", "r", user.name, "ftp", "0", "*", "c"]
    assert xfer[1][6:9] == ["127.0.0.1", "5000", f"{user.home}/up.bin"] and xfer[1][11] == "i"


def test_sigterm_lets_a_running_upload_finish_and_ends_idle_sessions(process, sshd, user):
    gw = process(base_config(sshd))
    idle = connect_ftp(gw.port)
    idle.login(user.name, user.password)
    uploader, data, chunk = start_upload(gw.port, user, "during-drain.bin")
    gw.proc.send_signal(signal.SIGTERM)
    # The idle session is told and closed; the port refuses new sessions.
    assert idle.getline().startswith("421 Server shutting down")
    assert wait_for(lambda: _refused(gw.port))
    metrics = f"http://127.0.0.1:{gw.metrics_port}/metrics"
    assert "ftpgw_draining 1.0" in urllib.request.urlopen(metrics, timeout=10).read().decode()
    for _ in range(8):  # the transfer goes on for a while after the signal
        time.sleep(0.1)
        data.sendall(chunk)
    data.close()
    assert uploader.voidresp().startswith("226")
    assert (user.home / "during-drain.bin").stat().st_size == 9 * len(chunk)
    assert gw.proc.wait(30) == 0  # the last session ends by itself: 421 to its next command
    assert any("drained: every session has ended" in line for line in gw.lines)


@pytest.mark.parametrize(
    ("drain_timeout", "signals", "log_line"),
    [
        (1, 1, "drain_timeout reached: closing 1 session(s)"),  # the deadline cuts it
        (300, 2, "second stop request: closing 1 session(s) now"),  # an impatient operator
    ],
)
def test_a_stuck_transfer_does_not_hold_the_shutdown(process, sshd, user, drain_timeout, signals, log_line):
    doc = base_config(sshd)
    doc["limits"]["drain_timeout"] = drain_timeout
    gw = process(doc)
    ftp = connect_ftp(gw.port)
    ftp.login(user.name, user.password)
    data = ftp.transfercmd("STOR stuck.bin")
    data.sendall(b"x" * 1000)
    for _ in range(signals):
        gw.proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: any("draining: 1 session(s) open" in line for line in gw.lines))
    assert gw.proc.wait(30) == 0  # well before a 300 s drain_timeout
    assert any(log_line in line for line in gw.lines)
    data.close()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_the_default_install_runs_the_ssh_loop_on_uvloop(process, sshd, user):
    """tests/run.sh installs the project without extras, as `pip install .` does: uvloop comes
    with it (a default dependency where it has wheels), and the start line says so."""
    gw = process(base_config(sshd))
    assert wait_for(lambda: any(" listening on " in line for line in gw.lines))
    started = next(line for line in gw.lines if " listening on " in line)
    assert "SSH on uvloop" in started, started
    ftp = connect_ftp(gw.port)
    ftp.login(user.name, user.password)
    assert ftp.nlst() == []
    ftp.quit()
