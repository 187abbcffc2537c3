"""Live reload (SIGHUP): new logins follow the new routes, running sessions keep going, a
broken file is refused and the running config stays."""

from __future__ import annotations

import ftplib
import signal
import time
import urllib.request

import pytest
import yaml

from tests.helpers.gateway_env import base_config, connect_ftp, start_upload, wait_for


def sample(gw, line: str) -> float:
    """The value of the series whose exposition line starts with ``line``."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/metrics", timeout=10).read().decode()
    return float(next(row for row in text.splitlines() if row.startswith(line)).split()[-1])


def reloads(gw, result: str) -> float:
    return sample(gw, f'ftpgw_config_reloads_total{{result="{result}"}} ')


def phase_changed(gw, route: str) -> float:
    return sample(gw, f'ftpgw_route_phase_changed_timestamp_seconds{{route="{route}"}} ')


def test_retiring_a_user_needs_no_restart_and_drops_no_session(process, sshd, user, user2, tmp_path):
    doc = base_config(sshd)
    doc["routes"][0]["name"] = "everyone"
    gw = process(doc)
    started = phase_changed(gw, "everyone")
    assert sample(gw, "ftpgw_passive_ports ") == len(range(*doc["listen"]["passive_ports"])) + 1
    uploader, data, chunk = start_upload(gw.port, user, "long.bin")
    # The operator retires gwtest2 from FTP.
    doc["routes"].insert(0, {
        "name": "moved", "match": {"user": user2.name}, "backend": "main", "phase": "retired",
        "notice": "FTP is off for you: use sftp://files.example.com",
    })  # fmt: skip
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(doc))
    flipped = time.time()
    gw.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: any("reloaded" in line for line in gw.lines))
    assert any("reload: route moved: phase (new) -> retired" in line for line in gw.lines)
    assert phase_changed(gw, "moved") >= int(flipped)  # for the alert on failed logins after a flip
    assert phase_changed(gw, "everyone") == started  # unchanged: still the start
    retired = connect_ftp(gw.port)
    with pytest.raises(ftplib.error_perm, match=r"^530 FTP is off for you: use sftp://files.example.com"):
        retired.login(user2.name, user2.password)
    for _ in range(4):  # the upload that started before the reload goes on
        data.sendall(chunk)
    data.close()
    assert uploader.voidresp().startswith("226")
    assert (user.home / "long.bin").stat().st_size == 5 * len(chunk)
    again = connect_ftp(gw.port)  # other users are unaffected
    again.login(user.name, user.password)
    again.quit()
    uploader.quit()
    assert reloads(gw, "ok") == 1
    assert gw.stop() == 0


@pytest.mark.parametrize(
    "broken",
    [
        "routes: [this is: not: valid\n",  # not YAML
        b"listen: {port: 21}\n# caf\xe9\n",  # not UTF-8
        "backends: {main: {host: h, known_hosts: kh}}\nroutes: [{backend: main, legacy: [x], match: {}}]\n",
    ],
)
def test_a_broken_config_is_refused_and_the_running_one_stays(process, sshd, user, tmp_path, broken):
    gw = process(base_config(sshd))
    path = tmp_path / "gateway.yaml"
    path.write_bytes(broken) if isinstance(broken, bytes) else path.write_text(broken)
    gw.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: any("reload refused, the running config stays" in line for line in gw.lines))
    ftp = connect_ftp(gw.port)
    ftp.login(user.name, user.password)
    ftp.quit()
    assert reloads(gw, "failed") == 1 and reloads(gw, "ok") == 0
    assert gw.proc.poll() is None
    assert gw.stop() == 0


def test_sighup_to_the_supervisor_reloads_every_worker(process, sshd, user, user2, tmp_path):
    doc = base_config(sshd, workers=2)
    gw = process(doc)
    # The port is open before the workers are ready; a SIGHUP before a worker took the
    # signal over would be ignored by it.
    assert wait_for(lambda: sum(" listening on " in line for line in gw.lines) == 2)
    doc["routes"].insert(0, {"match": {"user": user2.name}, "backend": "main", "phase": "retired"})
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(doc))
    gw.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: sum("reloaded" in line for line in gw.lines) == 2)
    for _ in range(4):  # whichever worker the kernel hands the connection to
        ftp = connect_ftp(gw.port)
        with pytest.raises(ftplib.error_perm, match=r"^530 FTP is no longer available"):
            ftp.login(user2.name, user2.password)
        ftp.close()
    assert gw.stop() == 0
